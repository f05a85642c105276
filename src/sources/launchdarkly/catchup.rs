//! Catch-up inside `serve`: with `LD_API_TOKEN` set, pull from the newest stored entry minus
//! an overlap every interval, so events the hook missed while audithook was down arrive.
//! Duplicates are absorbed by the store.

use std::time::Duration;

use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use super::client::LdClient;
use super::{run, BackfillError, Options, Summary};
use crate::metrics::{Metrics, ResultLabel};
use crate::store::Store;

/// One catch-up pass: `(newest stored - overlap, now)`; an empty store starts at
/// `now - overlap` (history is the `backfill` command's job).
pub async fn run_once(
    store: &Store,
    base_url: &str,
    token: &SecretString,
    overlap: Duration,
    metrics: &Metrics,
) -> Result<Summary, BackfillError> {
    let client = LdClient::new(base_url, token.clone())?;
    let now = crate::now_ms();
    let newest = store
        .newest_date(crate::event::Source::LaunchDarkly)
        .await?;
    let from = newest.unwrap_or(now) - overlap.as_millis() as i64;
    let opts = Options {
        after: Some(from.max(0)),
        before: None,
        concurrency: 4,
        persist: false,
        ..Options::default()
    };
    let result = run(store, &client, opts).await;
    let label = crate::metrics::SourceLabel {
        source: "launchdarkly",
    };
    metrics.source_requests.get_or_create(&label).inc_by(
        client
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    metrics.source_rate_limited.get_or_create(&label).inc_by(
        client
            .stats
            .rate_limited
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    metrics.ld_requests.inc_by(
        client
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    metrics.ld_rate_limited.inc_by(
        client
            .stats
            .rate_limited
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    if let Some(n) = newest {
        metrics.catchup_newest_event.set(n / 1000);
    }
    match &result {
        Ok(s) => {
            metrics
                .catchup_runs
                .get_or_create(&ResultLabel { result: "ok" })
                .inc();
            metrics.catchup_new_events.inc_by(s.new);
            metrics.catchup_last_success.set(now / 1000);
            crate::sources::record_pass(store, metrics, crate::event::Source::LaunchDarkly, s.new)
                .await;
        }
        Err(_) => {
            metrics
                .catchup_runs
                .get_or_create(&ResultLabel { result: "error" })
                .inc();
        }
    }
    result
}

/// The lease that makes one instance of several run catch-up.
const LEASE: &str = "catchup";

/// How long the catch-up lease lasts unless renewed (see [`crate::sources::lease_ttl`]).
pub fn lease_ttl(interval: Duration) -> Duration {
    crate::sources::lease_ttl(interval)
}

/// Lease-loop events reported as catch-up metrics.
struct CatchupEvents<'a>(&'a Metrics);

impl crate::sources::LoopEvents for CatchupEvents<'_> {
    fn lease(&self, held: bool) {
        self.0.catchup_lease_held.set(i64::from(held));
        self.0
            .source_lease_held
            .get_or_create(&crate::metrics::SourceLabel {
                source: "launchdarkly",
            })
            .set(i64::from(held));
    }

    fn pass_lost(&self) {
        self.0
            .catchup_runs
            .get_or_create(&ResultLabel {
                result: "lease_lost",
            })
            .inc();
    }
}

/// Runs catch-up every `interval` until `stop` is cancelled, in whichever instance holds the
/// catch-up lease: instances sharing one database do not multiply the traffic to
/// LaunchDarkly. The others wait as standbys and take over when the holder stops renewing.
pub async fn run_loop(
    store: Store,
    base_url: String,
    token: SecretString,
    interval: Duration,
    overlap: Duration,
    metrics: std::sync::Arc<Metrics>,
    stop: CancellationToken,
) {
    tracing::info!(
        interval_s = interval.as_secs(),
        overlap_s = overlap.as_secs(),
        lease_s = lease_ttl(interval).as_secs(),
        "catch-up from LaunchDarkly enabled"
    );
    let events = CatchupEvents(&metrics);
    crate::sources::lease_loop(&store, LEASE, interval, &stop, &events, || async {
        let s = run_once(&store, &base_url, &token, overlap, &metrics).await?;
        tracing::info!(
            new = s.new,
            duplicates = s.duplicates,
            requests = s.requests,
            "catch-up done: {s}"
        );
        Ok::<(), BackfillError>(())
    })
    .await;
}
