//! Sources: the vendors' audit logs audithook pulls (LaunchDarkly, Terraform Cloud, Carbon
//! Black Cloud). Each source has a client for its API, a normaliser to the store's event,
//! and a poller that `backfill --source` and `serve` share. What every poller needs is
//! here, written once: HTTP with pacing, rate-limit waits and retries ([`Fetcher`]), bounded
//! reads, the lease that lets one instance of several poll ([`lease_loop`]), and saved
//! positions (the store's `source_runs`).

pub mod cbc;
pub mod launchdarkly;
pub mod tfc;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

use crate::event::Source;
use crate::metrics::{Metrics, SourceLabel};
use crate::now_ms;
use crate::store::{Store, StoreError};

/// Largest answer read from a vendor: a page is at most a few MB.
pub const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;
/// Longest wait a rate-limit header can ask for: the headers are untrusted input.
pub const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// Attempts for one request on 5xx, 408, timeouts, dropped connections and answers that
/// are not the documented JSON.
pub const MAX_ATTEMPTS: u32 = 10;
/// 429s waited out for one request before giving up.
const MAX_RATE_LIMIT_WAITS: u32 = 100;
/// Longest backoff between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why pulling from a source stopped. Every message names the source; request failures
/// name the URL path too (never the query's secrets or the credential).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{vendor}: {path}: the API rejected {variable} ({status}): {message}")]
    Unauthorized {
        vendor: Source,
        path: String,
        variable: &'static str,
        status: u16,
        message: String,
    },
    #[error("{vendor}: {path}: the API rejected the request ({status}): {message}")]
    Rejected {
        vendor: Source,
        path: String,
        status: u16,
        message: String,
    },
    #[error("{vendor}: {path}: no usable answer after {attempts} attempts: {last}")]
    GaveUp {
        vendor: Source,
        path: String,
        attempts: u32,
        last: String,
    },
    #[error("{vendor}: {path}: answer larger than {MAX_ANSWER_BYTES} bytes; refusing to read it into memory")]
    TooLarge { vendor: Source, path: String },
    #[error("{vendor}: {message}")]
    Other { vendor: Source, message: String },
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl SourceError {
    /// An error about `vendor` with a message.
    pub fn other(vendor: Source, message: impl Into<String>) -> Self {
        SourceError::Other {
            vendor,
            message: message.into(),
        }
    }
}

/// Counters of one source's requests in one run.
#[derive(Debug, Default)]
pub struct FetchStats {
    pub requests: AtomicU64,
    pub rate_limited: AtomicU64,
    pub retries: AtomicU64,
}

/// Keeps requests under an API's limit of `limit` requests in any window of `per`, the way
/// such a limit is counted (a sliding window): up to `limit` go at once, and each later
/// one waits until the one `limit` places before it is `per` (plus a margin) old. After a
/// 429 it holds every request back until the API's reset. Shared by every task of a run.
#[derive(Debug)]
pub struct Pacer {
    limit: Option<(usize, Duration)>,
    state: Mutex<PacerState>,
}

#[derive(Debug)]
struct PacerState {
    /// Send times of the last `limit` requests.
    sent: std::collections::VecDeque<tokio::time::Instant>,
    blocked_until: tokio::time::Instant,
}

/// Added to the window, so requests counted at slightly different times on the server
/// (network jitter) stay under the limit.
const PACER_MARGIN: Duration = Duration::from_millis(25);

impl Pacer {
    /// At most `limit` requests in any `per` (`None`: unpaced; 429s still respected).
    pub fn new(limit: Option<(usize, Duration)>) -> Self {
        Self {
            limit: limit.filter(|(n, per)| *n > 0 && !per.is_zero()),
            state: Mutex::new(PacerState {
                sent: std::collections::VecDeque::new(),
                blocked_until: tokio::time::Instant::now(),
            }),
        }
    }

    /// Waits for this request's slot.
    pub async fn acquire(&self) {
        let at = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = tokio::time::Instant::now();
            let mut at = now.max(s.blocked_until);
            if let Some((limit, per)) = self.limit {
                if s.sent.len() >= limit {
                    let oldest = s.sent[s.sent.len() - limit];
                    at = at.max(oldest + per + PACER_MARGIN);
                }
                s.sent.push_back(at);
                while s.sent.len() > limit {
                    s.sent.pop_front();
                }
            }
            at
        };
        tokio::time::sleep_until(at).await;
    }

    /// Holds every request back for `wait`.
    pub fn block_for(&self, wait: Duration) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let until = tokio::time::Instant::now() + wait;
        s.blocked_until = s.blocked_until.max(until);
    }
}

/// Up to `max_ms` of random jitter.
pub fn jitter(max_ms: u64) -> Duration {
    Duration::from_millis(rand::thread_rng().gen_range(0..=max_ms))
}

/// Capped exponential backoff with jitter for the `attempt`th retry (1-based).
pub fn backoff(attempt: u32) -> Duration {
    let full = Duration::from_millis(200 * 2u64.pow(attempt.min(10))).min(MAX_BACKOFF);
    full / 2 + jitter(full.as_millis() as u64 / 2)
}

/// A numeric header as seconds (float allowed, as Terraform Cloud sends `1.203`); `None`
/// when absent, negative or not a finite number.
pub fn header_seconds(h: &HeaderMap, name: &str) -> Option<Duration> {
    let v: f64 = h.get(name)?.to_str().ok()?.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| Duration::from_secs_f64(v.min(1e9)))
}

/// The body, read chunk by chunk up to [`MAX_ANSWER_BYTES`]: `Err(None)` past that,
/// whatever `Content-Length` says (it may be absent or wrong).
pub async fn read_bounded(mut resp: reqwest::Response) -> Result<Vec<u8>, Option<reqwest::Error>> {
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(Some)? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The start of an error answer, as text for a message.
async fn error_text(mut resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > 16 * 1024 {
            break;
        }
    }
    snippet(&body)
}

/// At most 300 characters of `body`, on one line.
pub fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .take(300)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// An HTTP client for one source's API: paced, retrying, bounded.
#[derive(Clone)]
pub struct Fetcher {
    pub http: reqwest::Client,
    pub source: Source,
    /// The variable holding the credential, named when the API rejects it.
    pub credential: &'static str,
    pub pacer: Arc<Pacer>,
    pub stats: Arc<FetchStats>,
    /// Longest rate-limit wait accepted.
    pub max_wait: Duration,
    /// Longest backoff between attempts (tests shorten it).
    pub max_backoff: Duration,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher for `source` keeping under `limit` requests per window (`None`: unpaced).
    pub fn new(
        source: Source,
        credential: &'static str,
        limit: Option<(usize, Duration)>,
    ) -> Result<Self, SourceError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("audithook/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| SourceError::other(source, e.to_string()))?;
        Ok(Self {
            http,
            source,
            credential,
            pacer: Arc::new(Pacer::new(limit)),
            stats: Arc::default(),
            max_wait: MAX_RATE_LIMIT_WAIT,
            max_backoff: MAX_BACKOFF,
        })
    }

    /// How long a 429 asks to wait: the later of `X-RateLimit-Reset` (seconds from now,
    /// possibly fractional) and `Retry-After` (seconds), one second when neither is
    /// given, at most `max_wait` (the headers are untrusted).
    fn rate_limit_wait(&self, headers: &HeaderMap) -> Duration {
        let asked = header_seconds(headers, "x-ratelimit-reset")
            .into_iter()
            .chain(header_seconds(headers, "retry-after"))
            .max()
            .unwrap_or(Duration::from_secs(1));
        if asked > self.max_wait {
            tracing::warn!(
                source = %self.source,
                asked_ms = asked.as_millis() as u64,
                "the API asked for a longer rate-limit wait than audithook accepts; waiting at most {}s",
                self.max_wait.as_secs()
            );
        }
        asked.min(self.max_wait)
    }

    /// Sends the request `build` makes (again for each attempt) and parses a 2xx answer
    /// with `parse`. 429s wait for the API's reset; 5xx, 408, timeouts, dropped
    /// connections and answers `parse` refuses (an HTML error page, a truncated body, a
    /// field of the wrong type) are retried with capped backoff; 401/403 stop with an
    /// error naming the credential's variable; other 4xx stop. `path` names the request
    /// in messages.
    pub async fn fetch<T>(
        &self,
        path: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        parse: impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<T, SourceError> {
        let mut attempts = 0;
        let mut waits_429 = 0;
        loop {
            self.pacer.acquire().await;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let failure = match build(&self.http).send().await {
                Ok(resp) => {
                    let status = resp.status();
                    match status {
                        s if s.is_success() => match read_bounded(resp).await {
                            Ok(body) => match parse(&body) {
                                Ok(v) => return Ok(v),
                                Err(problem) => format!(
                                    "the answer is not the documented JSON ({problem}); it began: {}",
                                    snippet(&body[..body.len().min(200)])
                                ),
                            },
                            Err(None) => {
                                return Err(SourceError::TooLarge {
                                    vendor: self.source,
                                    path: path.to_owned(),
                                })
                            }
                            Err(Some(e)) => format!("reading the answer: {e}"),
                        },
                        StatusCode::TOO_MANY_REQUESTS => {
                            self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                            waits_429 += 1;
                            if waits_429 > MAX_RATE_LIMIT_WAITS {
                                return Err(SourceError::GaveUp {
                                    vendor: self.source,
                                    path: path.to_owned(),
                                    attempts: waits_429,
                                    last: "429 Too Many Requests".into(),
                                });
                            }
                            let wait = self.rate_limit_wait(resp.headers());
                            self.pacer.block_for(wait + jitter(50));
                            tracing::debug!(source = %self.source, wait_ms = wait.as_millis() as u64, "rate limited (429); waiting");
                            continue;
                        }
                        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                            return Err(SourceError::Unauthorized {
                                vendor: self.source,
                                path: path.to_owned(),
                                variable: self.credential,
                                status: status.as_u16(),
                                message: error_text(resp).await,
                            });
                        }
                        s if (s.is_server_error() && s != StatusCode::NOT_IMPLEMENTED)
                            || s == StatusCode::REQUEST_TIMEOUT =>
                        {
                            format!("HTTP {s}")
                        }
                        s => {
                            return Err(SourceError::Rejected {
                                vendor: self.source,
                                path: path.to_owned(),
                                status: s.as_u16(),
                                message: error_text(resp).await,
                            })
                        }
                    }
                }
                Err(e) => format!("request failed: {}", without_url(&e)),
            };
            attempts += 1;
            if attempts >= MAX_ATTEMPTS {
                return Err(SourceError::GaveUp {
                    vendor: self.source,
                    path: path.to_owned(),
                    attempts,
                    last: failure,
                });
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(source = %self.source, path, attempt = attempts, error = %failure, "retrying");
            tokio::time::sleep(backoff(attempts).min(self.max_backoff)).await;
        }
    }

    /// Moves the counters gathered since the last call into the per-source metrics.
    pub fn record(&self, metrics: &Metrics) {
        let label = SourceLabel {
            source: self.source.as_str(),
        };
        metrics
            .source_requests
            .get_or_create(&label)
            .inc_by(self.stats.requests.swap(0, Ordering::Relaxed));
        metrics
            .source_rate_limited
            .get_or_create(&label)
            .inc_by(self.stats.rate_limited.swap(0, Ordering::Relaxed));
    }
}

/// A reqwest error's text without its URL (which may carry query parameters).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the connection dropped while reading"
    } else {
        "failed"
    };
    let mut text = kind.to_owned();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Parses `base` as a source's base URL, naming `variable` when it is not one.
pub fn base_url(variable: &str, base: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(base)
        .map_err(|e| format!("{variable} is not a URL ({e}): {base:?}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "{variable} must be an http:// or https:// URL, got {base:?}"
        ));
    }
    Ok(url)
}

/// How long a poller's lease lasts unless renewed: three intervals, between 3 s and 60 s.
/// The holder renews it every third of that, so a standby takes over within one lease time
/// of the holder's death.
pub fn lease_ttl(interval: Duration) -> Duration {
    (interval * 3).clamp(Duration::from_secs(3), Duration::from_secs(60))
}

/// This process's name as a lease holder: host, pid and a random part.
pub fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// How one pass of a lease loop ended.
pub enum Pass<E> {
    Done(Result<(), E>),
    Stopped,
    LeaseLost(String),
}

/// What a lease loop reports as it goes.
pub trait LoopEvents {
    /// The lease was taken (`true`) or given up / lost (`false`).
    fn lease(&self, held: bool);
    /// A pass ended (not called when stopping).
    fn pass_lost(&self);
}

/// Runs `pass` every `interval` until `stop` is cancelled, in whichever instance holds lease
/// `lease`: instances sharing one database do not multiply the traffic to a vendor. The
/// others stand by and take over when the holder stops renewing. A long pass keeps the
/// lease, and stops at once when it cannot keep it (two passes must never run at once).
pub async fn lease_loop<P, F, E>(
    store: &Store,
    lease: &str,
    interval: Duration,
    stop: &CancellationToken,
    events: &(dyn LoopEvents + Sync),
    mut pass: P,
) where
    P: FnMut() -> F,
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let holder = instance_id();
    let ttl = lease_ttl(interval);
    let renew = ttl / 3;
    let mut held = false;
    let mut next_pass = tokio::time::Instant::now();
    loop {
        let now_held = match store.lease_acquire(lease, &holder, ttl).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(lease, error = %e, "cannot renew the lease");
                false
            }
        };
        if now_held != held {
            if now_held {
                tracing::info!(lease, "took the lease: this instance runs it");
            } else {
                tracing::info!(lease, "lease held elsewhere: this instance stands by");
            }
            held = now_held;
            events.lease(held);
        }
        if held && tokio::time::Instant::now() >= next_pass {
            let run = pass();
            tokio::pin!(run);
            let mut ticker = tokio::time::interval(renew);
            ticker.tick().await;
            let outcome = loop {
                tokio::select! {
                    r = &mut run => break Pass::Done(r),
                    _ = stop.cancelled() => break Pass::Stopped,
                    _ = ticker.tick() => {
                        match store.lease_acquire(lease, &holder, ttl).await {
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
                    tracing::warn!(lease, reason = %why, "lost the lease mid-pass; stopped the pass");
                    held = false;
                    events.lease(false);
                    events.pass_lost();
                    next_pass = tokio::time::Instant::now();
                }
                Pass::Done(Ok(())) => {}
                Pass::Done(Err(e)) => {
                    tracing::warn!(lease, error = %e, "pass failed; retrying at the next interval")
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
        let _ = store.lease_release(lease, &holder).await;
        events.lease(false);
    }
}

/// Records a finished pass of `source`'s poller in the per-source metrics: new events, the
/// time of this success, and the lag (now minus the newest stored event's time).
pub async fn record_pass(store: &Store, metrics: &Metrics, source: Source, new: u64) {
    let label = SourceLabel {
        source: source.as_str(),
    };
    metrics.source_events_new.get_or_create(&label).inc_by(new);
    let now = now_ms();
    metrics
        .source_last_success
        .get_or_create(&label)
        .set(now / 1000);
    if let Ok(Some(newest)) = store.newest_date(source).await {
        metrics
            .source_lag
            .get_or_create(&label)
            .set((now - newest).max(0) / 1000);
    }
}

/// How far before its saved position a poll of Terraform Cloud or Carbon Black Cloud starts
/// reading again: events the vendor lists late are still read, and rereading is free.
pub const POLL_OVERLAP: Duration = Duration::from_secs(5 * 60);

/// Lease-loop events reported as per-source metrics.
struct SourceEvents<'a> {
    metrics: &'a Metrics,
    source: Source,
}

impl LoopEvents for SourceEvents<'_> {
    fn lease(&self, held: bool) {
        self.metrics
            .source_lease_held
            .get_or_create(&SourceLabel {
                source: self.source.as_str(),
            })
            .set(i64::from(held));
    }

    fn pass_lost(&self) {
        self.metrics
            .source_polls
            .get_or_create(&crate::metrics::SourceResultLabels {
                source: self.source.as_str(),
                result: "lease_lost",
            })
            .inc();
    }
}

/// Polls `source` every `interval` in whichever instance holds its lease (`poll:SOURCE`),
/// recording each pass in the per-source metrics. `pass` returns the events it stored new.
pub async fn run_poller<P, F>(
    store: &Store,
    source: Source,
    fetcher: &Fetcher,
    interval: Duration,
    metrics: &Metrics,
    stop: &CancellationToken,
    mut pass: P,
) where
    P: FnMut() -> F,
    F: Future<Output = Result<u64, SourceError>>,
{
    tracing::info!(source = %source, interval_s = interval.as_secs(), "polling enabled");
    let events = SourceEvents { metrics, source };
    let lease = format!("poll:{source}");
    lease_loop(store, &lease, interval, stop, &events, || {
        let run = pass();
        async move {
            let result = run.await;
            fetcher.record(metrics);
            let label = crate::metrics::SourceResultLabels {
                source: source.as_str(),
                result: if result.is_ok() { "ok" } else { "error" },
            };
            metrics.source_polls.get_or_create(&label).inc();
            match result {
                Ok(new) => {
                    record_pass(store, metrics, source, new).await;
                    tracing::info!(source = %source, new, "poll done");
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
    })
    .await;
}

/// Stores a page's events in one request (all or nothing); returns (new, duplicates).
pub async fn store_events(
    store: &Store,
    events: &[crate::event::NewEvent],
) -> Result<(u64, u64), SourceError> {
    if events.is_empty() {
        return Ok((0, 0));
    }
    let outcomes = store.insert_many(events.to_vec()).await?;
    let new = outcomes
        .iter()
        .filter(|o| **o == crate::store::Inserted::Stored)
        .count() as u64;
    Ok((new, outcomes.len() as u64 - new))
}

/// A run's progress saved as JSON, only after what it covers is committed.
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}
