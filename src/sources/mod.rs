//! Sources: the vendors' audit logs audithook pulls (LaunchDarkly, Terraform Cloud, Carbon
//! Black Cloud). Each source has a client for its API, a normaliser to the store's event,
//! and a poller that `backfill --source` and `serve` share; what every poller needs
//! (pacing, retries, bounded reads, the lease, saved positions) is here, written once.

pub mod launchdarkly;
