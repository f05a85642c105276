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
    let newest = store.newest_date(crate::event::Source::LaunchDarkly).await?;
    let from = newest.unwrap_or(now) - overlap.as_millis() as i64;
    let opts = Options {
        after: Some(from.max(0)),
        before: None,
        concurrency: 4,
        persist: false,
        ..Options::default()
    };
    let result = run(store, &client, opts).await;
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

/// How a catch-up pass ended.
enum Pass {
    Done(Result<Summary, BackfillError>),
    Stopped,
    LeaseLost(String),
}

/// The lease that makes one instance of several run catch-up.
const LEASE: &str = "catchup";

/// How long the catch-up lease lasts unless renewed: three intervals, between 3 s and 60 s.
/// The holder renews it every third of that, so a standby takes over within one lease time
/// of the holder's death.
pub fn lease_ttl(interval: Duration) -> Duration {
    (interval * 3).clamp(Duration::from_secs(3), Duration::from_secs(60))
}

/// This process's name as a lease holder: host, pid and a random part.
fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
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
    let holder = instance_id();
    let ttl = lease_ttl(interval);
    let renew = ttl / 3;
    tracing::info!(
        interval_s = interval.as_secs(),
        overlap_s = overlap.as_secs(),
        lease_s = ttl.as_secs(),
        holder = %holder,
        "catch-up from LaunchDarkly enabled"
    );
    let mut held = false;
    let mut next_pass = tokio::time::Instant::now();
    loop {
        let now_held = match store.lease_acquire(LEASE, &holder, ttl).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the catch-up lease");
                false
            }
        };
        if now_held != held {
            if now_held {
                tracing::info!("took the catch-up lease: this instance runs catch-up");
            } else {
                tracing::info!("catch-up lease held elsewhere: this instance stands by");
            }
            held = now_held;
            metrics.catchup_lease_held.set(i64::from(held));
        }
        if held && tokio::time::Instant::now() >= next_pass {
            let pass = run_once(&store, &base_url, &token, overlap, &metrics);
            tokio::pin!(pass);
            let mut ticker = tokio::time::interval(renew);
            ticker.tick().await;
            let outcome = loop {
                tokio::select! {
                    r = &mut pass => break Pass::Done(r),
                    _ = stop.cancelled() => break Pass::Stopped,
                    _ = ticker.tick() => {
                        // A long pass keeps the lease, and stops at once when it cannot:
                        // another instance may take it over, and two passes must not run.
                        match store.lease_acquire(LEASE, &holder, ttl).await {
                            Ok(true) => {}
                            Ok(false) => break Pass::LeaseLost("another instance holds it".into()),
                            Err(e) => break Pass::LeaseLost(e.to_string()),
                        }
                    }
                }
            };
            match outcome {
                Pass::Stopped => break,
                Pass::LeaseLost(why) => {
                    tracing::warn!(reason = %why, "lost the catch-up lease mid-pass; stopped the pass");
                    held = false;
                    metrics.catchup_lease_held.set(0);
                    metrics
                        .catchup_runs
                        .get_or_create(&ResultLabel {
                            result: "lease_lost",
                        })
                        .inc();
                    next_pass = tokio::time::Instant::now();
                }
                Pass::Done(Ok(s)) => tracing::info!(
                    new = s.new,
                    duplicates = s.duplicates,
                    requests = s.requests,
                    "catch-up done: {s}"
                ),
                Pass::Done(Err(e)) => {
                    tracing::warn!(error = %e, "catch-up failed; retrying at the next interval")
                }
            }
            if held {
                next_pass = tokio::time::Instant::now() + interval;
            }
        }
        let wake = if held {
            next_pass.min(tokio::time::Instant::now() + renew)
        } else {
            tokio::time::Instant::now() + renew
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = stop.cancelled() => break,
        }
    }
    if held {
        // Hand over at once rather than after the lease runs out.
        let _ = store.lease_release(LEASE, &holder).await;
        metrics.catchup_lease_held.set(0);
    }
}
