//! Catch-up inside `serve`: with `LD_API_TOKEN` set, pull from the newest stored entry minus
//! an overlap every interval, so events the hook missed while audithook was down arrive.
//! Duplicates are absorbed by the store.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let newest = store.newest_date().await?;
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

/// Runs catch-up now and then every `interval` until `stop` is cancelled.
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
        "catch-up from LaunchDarkly enabled"
    );
    loop {
        let pass = run_once(&store, &base_url, &token, overlap, &metrics);
        let outcome = tokio::select! {
            r = pass => Some(r),
            _ = stop.cancelled() => None,
        };
        match outcome {
            None => return,
            Some(Ok(s)) => tracing::info!(
                new = s.new,
                duplicates = s.duplicates,
                requests = s.requests,
                "catch-up done: {s}"
            ),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "catch-up failed; retrying at the next interval")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}
