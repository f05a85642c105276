//! Forwarding: every stored event delivered to each configured destination, at least once,
//! in arrival order, with a cursor on `seq` that moves only after the receiver accepted.
//!
//! Each destination runs on its own task, in whichever instance holds its lease
//! (`deliver:NAME`), and reads the store, never a side channel: a destination that is down
//! holds its own cursor and nothing else. A read batch is filtered (sources, policy), cut
//! into requests of `batch` events, and each request is sent until every event in it is
//! delivered or refused: 408, 429, 5xx (not 501), 401/403, timeouts and connection errors
//! retry with exponential backoff and full jitter (at least `Retry-After`), up to
//! `max_backoff` between probes; other 4xx send the event to the dead letters with the
//! status and the first 20 KB of the answer. Then the cursor moves past the request, in
//! the same transaction as its dead letters.

pub mod config;
pub mod elasticsearch;
pub mod http;
pub mod launchdarkly;
pub mod splunk;
pub mod syslog;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use config::{Destination, Kind, Start};

use crate::event::Source;
use crate::metrics::{DestinationFailureLabels, DestinationLabel, Metrics};
use crate::now_ms;
use crate::store::{DeadLetterIn, Settle, Store, StoredEvent};

/// Bytes of a receiver's answer kept with a dead letter or an error.
pub const BODY_KEPT: usize = 20 * 1024;

/// Events read from the store at once, at most (then cut into requests of `batch`).
const READ_EVENTS: usize = 2000;
/// Bytes of events read from the store at once, at most (at least one event).
const READ_BYTES: usize = 8 * 1024 * 1024;
/// How often an idle destination looks for new events.
pub const IDLE_INTERVAL: Duration = Duration::from_millis(500);
/// First retry wait (before jitter).
const BASE_BACKOFF: Duration = Duration::from_millis(200);

/// What happened to an event (or a whole request) on one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Try again later.
    Retry {
        class: &'static str,
        status: Option<u16>,
        retry_after: Option<Duration>,
        error: String,
        body: String,
    },
    /// Refused for good: a dead letter.
    Refused {
        class: &'static str,
        status: Option<u16>,
        error: String,
        body: String,
    },
}

impl Outcome {
    pub fn retry(class: &'static str, status: Option<u16>, error: String) -> Self {
        Outcome::Retry {
            class,
            status,
            retry_after: None,
            error,
            body: String::new(),
        }
    }
}

/// The first [`BODY_KEPT`] bytes of an answer as text (cut at a character boundary).
pub fn kept_body(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(BODY_KEPT)];
    match std::str::from_utf8(cut) {
        Ok(s) => s.to_owned(),
        Err(e) if e.error_len().is_none() => {
            String::from_utf8_lossy(&cut[..e.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(cut).into_owned(),
    }
}

/// Reads at most `limit` bytes of an answer (the rest is dropped with the connection).
pub async fn read_body(resp: &mut reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit.saturating_sub(out.len());
                out.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
            Ok(None) => return Ok(out),
            Err(e) => return Err(format!("reading the answer failed: {e}")),
        }
    }
}

/// `Retry-After` in seconds (HTTP dates are read too), capped at an hour.
pub(crate) fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    let secs = match v.trim().parse::<u64>() {
        Ok(s) => s,
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(v.trim()).ok()?;
            (at.timestamp() - chrono::Utc::now().timestamp()).max(0) as u64
        }
    };
    Some(Duration::from_secs(secs.min(3600)))
}

/// Classifies a non-2xx answer as the design says: 408, 429 and 5xx but 501 retry; 401 and
/// 403 retry too (a credential the operator must fix: every event would be refused
/// otherwise); any other status is a refusal.
pub async fn classify_failure(mut resp: reqwest::Response) -> Outcome {
    let status = resp.status().as_u16();
    let after = retry_after(&resp);
    let body = kept_body(&read_body(&mut resp, BODY_KEPT).await.unwrap_or_default());
    let error = format!("the receiver answered {status}");
    let class = match status {
        408 => "http_408",
        429 => "http_429",
        401 | 403 => "auth",
        501 => "refused",
        500..=599 => "http_5xx",
        100..=399 => "http_other",
        _ => "refused",
    };
    if class == "refused" {
        Outcome::Refused {
            class,
            status: Some(status),
            error,
            body,
        }
    } else {
        Outcome::Retry {
            class,
            status: Some(status),
            retry_after: after,
            error,
            body,
        }
    }
}

/// An error before any answer (connection, timeout) as a retry.
pub fn transport_failure(e: &reqwest::Error) -> Outcome {
    let class = if e.is_timeout() { "timeout" } else { "connect" };
    // reqwest's message names the URL; strip any credentials it may hold.
    let msg = match e.url() {
        Some(u) => e
            .to_string()
            .replace(u.as_str(), &crate::config::redact_url(u.as_str())),
        None => e.to_string(),
    };
    let mut chain = msg;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    Outcome::retry(class, None, chain)
}

/// The wait before attempt `attempt` (1-based): full jitter over an exponential ceiling
/// capped at `max`, and never less than the receiver's `Retry-After` (itself capped at an
/// hour when read).
pub fn backoff(attempt: u32, max: Duration, retry_after: Option<Duration>) -> Duration {
    let ceiling = BASE_BACKOFF
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)))
        .min(max);
    let jittered = ceiling.mul_f64(rand::random::<f64>());
    match retry_after {
        Some(r) => jittered.max(r),
        None => jittered,
    }
}

/// Why a receiver refused an event: its status, the error, the first 20 KB of its answer.
type Refusal = (Option<u16>, String, String);

/// What `/api/destinations` shows of a destination beyond its stored row.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// Whether this instance delivers it now (holds its lease).
    pub delivering: bool,
    /// Events waiting for a retry now.
    pub retrying: usize,
    /// Failed attempts in a row.
    pub failures_in_a_row: u32,
    /// When the next attempt is due (epoch ms), while retrying.
    pub next_attempt_at: Option<i64>,
    pub last_error: Option<LastError>,
    /// When the receiver last accepted something (epoch ms).
    pub last_success_at: Option<i64>,
}

/// The last failure of a destination.
#[derive(Debug, Clone)]
pub struct LastError {
    pub at: i64,
    pub class: &'static str,
    pub status: Option<u16>,
    pub message: String,
    pub body: String,
}

/// One destination and its live state.
pub struct Runner {
    pub dest: Destination,
    pub live: Mutex<Live>,
    /// Wakes the destination (a replay was asked for).
    pub wake: tokio::sync::Notify,
}

impl Runner {
    /// A copy of the live state.
    pub fn live(&self) -> Live {
        self.live.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn update(&self, f: impl FnOnce(&mut Live)) {
        if let Ok(mut l) = self.live.lock() {
            f(&mut l);
        }
    }
}

/// Every configured destination.
#[derive(Default)]
pub struct Forwarding {
    pub runners: Vec<Arc<Runner>>,
}

impl Forwarding {
    pub fn new(dests: Vec<Destination>) -> Self {
        Self {
            runners: dests
                .into_iter()
                .map(|dest| {
                    Arc::new(Runner {
                        dest,
                        live: Mutex::new(Live::default()),
                        wake: tokio::sync::Notify::new(),
                    })
                })
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Runner>> {
        self.runners.iter().find(|r| r.dest.name == name)
    }

    /// Creates each destination's row, so its start point is fixed when the service starts,
    /// not when it first delivers.
    pub async fn open(&self, store: &Store) -> anyhow::Result<()> {
        for runner in &self.runners {
            let d = &runner.dest;
            let start = match d.start {
                Start::Now => None,
                Start::At(t) => Some(t),
            };
            let row = store
                .destination_open(&d.name, start)
                .await
                .map_err(|e| anyhow::anyhow!("destination {}: {e}", d.name))?;
            tracing::info!(
                destination = %d.name,
                kind = d.kind.name(),
                target = %d.kind.target(),
                cursor = row.position,
                "forwarding enabled"
            );
        }
        Ok(())
    }

    /// Starts each destination's delivery task.
    pub fn start(
        &self,
        store: &Store,
        metrics: &Arc<Metrics>,
        ld_base_url: &str,
        stop: &CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        self.runners
            .iter()
            .map(|runner| {
                tokio::spawn(run(
                    runner.clone(),
                    store.clone(),
                    metrics.clone(),
                    ld_base_url.to_owned(),
                    stop.clone(),
                ))
            })
            .collect()
    }
}

/// Delivers one destination until `stop`, in whichever instance holds its lease.
async fn run(
    runner: Arc<Runner>,
    store: Store,
    metrics: Arc<Metrics>,
    ld_base_url: String,
    stop: CancellationToken,
) {
    let name = runner.dest.name.clone();
    let label = DestinationLabel {
        destination: name.clone(),
    };
    let events = LeaseEvents {
        runner: &runner,
        metrics: &metrics,
        label: &label,
    };
    let lease = format!("deliver:{name}");
    let sender = tokio::sync::Mutex::new(Sender::new(&runner.dest, &ld_base_url));
    crate::sources::lease_loop(&store, &lease, IDLE_INTERVAL, &stop, &events, || {
        let (runner, store, metrics, label, sender, stop) =
            (&runner, &store, &metrics, &label, &sender, &stop);
        async move {
            let mut sender = sender.lock().await;
            let mut d = Delivery {
                runner,
                store,
                metrics,
                label,
                sender: &mut sender,
                stop,
            };
            match d.drain().await {
                // Stopping is not a failure: what was in flight goes again next time.
                Err(PassError::Stopped) => Ok(()),
                other => other,
            }
        }
    })
    .await;
}

struct LeaseEvents<'a> {
    runner: &'a Runner,
    metrics: &'a Metrics,
    label: &'a DestinationLabel,
}

impl crate::sources::LoopEvents for LeaseEvents<'_> {
    fn lease(&self, held: bool) {
        self.runner.update(|l| l.delivering = held);
        self.metrics
            .destination_lease_held
            .get_or_create(self.label)
            .set(i64::from(held));
    }

    fn pass_lost(&self) {}
}

/// A kind's sender.
pub enum Sender {
    Http(http::Sender),
    Elasticsearch(elasticsearch::Sender),
    Splunk(splunk::Sender),
    Syslog(syslog::Sender),
    LaunchDarkly(http::IntegrationSender),
}

impl Sender {
    fn new(d: &Destination, ld_base_url: &str) -> Self {
        match &d.kind {
            Kind::Http { url, headers } => {
                Sender::Http(http::Sender::new(url.clone(), headers.clone(), d.timeout))
            }
            Kind::Elasticsearch {
                url,
                index,
                headers,
            } => Sender::Elasticsearch(elasticsearch::Sender::new(
                url,
                index.clone(),
                headers.clone(),
                d.timeout,
            )),
            Kind::SplunkHec {
                url,
                token,
                index,
                headers,
            } => Sender::Splunk(splunk::Sender::new(
                url,
                token,
                index.clone(),
                headers.clone(),
                d.timeout,
            )),
            Kind::Syslog {
                address,
                tls,
                facility,
                hostname,
            } => Sender::Syslog(syslog::Sender::new(
                address.clone(),
                tls.clone(),
                *facility,
                hostname.clone(),
                d.timeout,
            )),
            Kind::LaunchDarkly(i) => Sender::LaunchDarkly(http::IntegrationSender::new(
                i.clone(),
                ld_base_url.to_owned(),
                d.timeout,
            )),
        }
    }

    /// Sends `events` in one request (or one write); one outcome per event.
    async fn send(&mut self, events: &[&StoredEvent]) -> Vec<Outcome> {
        let whole = |o: Outcome| vec![o; events.len()];
        match self {
            Sender::Http(s) => whole(s.send(events).await),
            Sender::Elasticsearch(s) => s.send(events).await,
            Sender::Splunk(s) => s.send(events).await,
            Sender::Syslog(s) => whole(s.send(events).await),
            Sender::LaunchDarkly(s) => s.send(events).await,
        }
    }
}

struct Delivery<'a> {
    runner: &'a Runner,
    store: &'a Store,
    metrics: &'a Metrics,
    label: &'a DestinationLabel,
    sender: &'a mut Sender,
    stop: &'a CancellationToken,
}

/// Why a pass ended early.
#[derive(Debug)]
enum PassError {
    Store(crate::store::StoreError),
    Stopped,
}

impl std::fmt::Display for PassError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PassError::Store(e) => write!(f, "store: {e}"),
            PassError::Stopped => f.write_str("stopped"),
        }
    }
}

impl From<crate::store::StoreError> for PassError {
    fn from(e: crate::store::StoreError) -> Self {
        PassError::Store(e)
    }
}

impl Delivery<'_> {
    /// Whether the destination takes `row` (its sources, its kind, its policy).
    fn wants(&self, row: &StoredEvent) -> bool {
        let d = &self.runner.dest;
        let source = Source::parse(&row.source);
        if !d.sources.is_empty() && !source.is_some_and(|s| d.sources.contains(&s)) {
            return false;
        }
        let ld = source == Some(Source::LaunchDarkly);
        let policy = match &d.kind {
            Kind::LaunchDarkly(i) => {
                if !ld {
                    return false;
                }
                d.policy.as_ref().or(i.default_policy.as_ref())
            }
            _ => d.policy.as_ref(),
        };
        match policy {
            Some(p) if ld => p.keeps(&crate::event::parse_stored(&row.raw)),
            _ => true,
        }
    }

    /// Delivers everything past the cursor (and any dead letters marked for replay), then
    /// returns.
    async fn drain(&mut self) -> Result<(), PassError> {
        let name = self.runner.dest.name.clone();
        loop {
            if self.stop.is_cancelled() {
                return Err(PassError::Stopped);
            }
            let Some(row) = self.store.destination_get(&name).await? else {
                return Ok(());
            };
            // Dead letters asked for again go first.
            let replaying = self
                .store
                .dead_letters_replaying(&name, self.runner.dest.batch)
                .await?;
            if !replaying.is_empty() {
                let events: Vec<&StoredEvent> = replaying.iter().map(|(_, e)| e).collect();
                let outcomes = self.deliver(&events).await?;
                let mut settle = Settle {
                    from: row.position,
                    to: row.position,
                    ..Settle::default()
                };
                for ((id, e), o) in replaying.iter().zip(outcomes) {
                    match o {
                        Some(dead) => settle.replayed_dead.push((*id, dead_letter(e, dead))),
                        None => settle.replayed_ok.push(*id),
                    }
                }
                let ok = settle.replayed_ok.len() as u64;
                let refused = settle.replayed_dead.len() as u64;
                if self.store.destination_settle(&name, settle).await? {
                    self.count(ok, refused);
                }
                continue;
            }
            let events = self
                .store
                .destination_read(&row, READ_EVENTS, READ_BYTES)
                .await?;
            let Some(last) = events.last().map(|e| e.seq) else {
                self.record_lag(0, None);
                return Ok(());
            };
            let wanted: Vec<&StoredEvent> = events.iter().filter(|e| self.wants(e)).collect();
            let mut from = row.position;
            let chunks: Vec<&[&StoredEvent]> = wanted.chunks(self.runner.dest.batch).collect();
            if chunks.is_empty() {
                // Nothing here for this destination: move past it.
                let settle = Settle {
                    from,
                    to: last,
                    ..Settle::default()
                };
                self.store.destination_settle(&name, settle).await?;
                continue;
            }
            let n = chunks.len();
            for (i, chunk) in chunks.into_iter().enumerate() {
                let outcomes = self.deliver(chunk).await?;
                let to = if i + 1 == n {
                    last
                } else {
                    chunk.last().map_or(from, |e| e.seq)
                };
                let mut settle = Settle {
                    from,
                    to,
                    ..Settle::default()
                };
                for (e, o) in chunk.iter().zip(outcomes) {
                    match o {
                        Some(dead) => settle.dead.push(dead_letter(e, dead)),
                        None => settle.delivered += 1,
                    }
                }
                let (ok, refused) = (settle.delivered as u64, settle.dead.len() as u64);
                if !self.store.destination_settle(&name, settle).await? {
                    // A replay moved the cursor: start again from there.
                    break;
                }
                self.count(ok, refused);
                from = to;
            }
            if let Some(stats) = self.store.destination_stats(&name).await? {
                self.record_lag(stats.lag_events, stats.oldest_pending_at);
            }
        }
    }

    fn record_lag(&self, events: i64, oldest: Option<i64>) {
        self.metrics
            .destination_lag_events
            .get_or_create(self.label)
            .set(events);
        self.metrics
            .destination_lag_seconds
            .get_or_create(self.label)
            .set(oldest.map_or(0, |o| (now_ms() - o).max(0) / 1000));
    }

    fn count(&self, delivered: u64, refused: u64) {
        self.metrics
            .destination_delivered
            .get_or_create(self.label)
            .inc_by(delivered);
        self.metrics
            .destination_dead_letters
            .get_or_create(self.label)
            .inc_by(refused);
    }

    /// Sends `events` until each is delivered (`None`) or refused (`Some`), retrying the
    /// rest alone with backoff.
    async fn deliver(
        &mut self,
        events: &[&StoredEvent],
    ) -> Result<Vec<Option<Refusal>>, PassError> {
        let mut results: Vec<Option<Option<Refusal>>> = vec![None; events.len()];
        let mut pending: Vec<usize> = (0..events.len()).collect();
        let mut attempt = 0u32;
        loop {
            let batch: Vec<&StoredEvent> = pending.iter().map(|&i| events[i]).collect();
            self.metrics
                .destination_attempts
                .get_or_create(self.label)
                .inc();
            let outcomes = tokio::select! {
                o = self.sender.send(&batch) => o,
                _ = self.stop.cancelled() => return Err(PassError::Stopped),
            };
            let mut still = Vec::new();
            let mut wait_hint: Option<Duration> = None;
            let mut failure: Option<LastError> = None;
            for (&i, o) in pending.iter().zip(outcomes) {
                match o {
                    Outcome::Delivered => results[i] = Some(None),
                    Outcome::Refused {
                        class,
                        status,
                        error,
                        body,
                    } => {
                        self.fail(class);
                        tracing::warn!(
                            destination = %self.runner.dest.name,
                            source = %events[i].source,
                            id = %events[i].id,
                            status,
                            error = %error,
                            "the receiver refused an event: dead letter"
                        );
                        results[i] = Some(Some((status, error, body)));
                    }
                    Outcome::Retry {
                        class,
                        status,
                        retry_after,
                        error,
                        body,
                    } => {
                        if failure.is_none() {
                            self.fail(class);
                            failure = Some(LastError {
                                at: now_ms(),
                                class,
                                status,
                                message: error,
                                body,
                            });
                        }
                        if let Some(r) = retry_after {
                            wait_hint = Some(wait_hint.map_or(r, |w| w.max(r)));
                        }
                        still.push(i);
                    }
                }
            }
            if still.len() < pending.len() {
                self.runner.update(|l| l.last_success_at = Some(now_ms()));
            }
            pending = still;
            if pending.is_empty() {
                self.runner.update(|l| {
                    l.retrying = 0;
                    l.failures_in_a_row = 0;
                    l.next_attempt_at = None;
                });
                return Ok(results.into_iter().map(|r| r.unwrap_or(None)).collect());
            }
            attempt = attempt.saturating_add(1);
            let wait = backoff(attempt, self.runner.dest.max_backoff, wait_hint);
            if let Some(f) = &failure {
                tracing::warn!(
                    destination = %self.runner.dest.name,
                    class = f.class,
                    status = f.status,
                    error = %f.message,
                    events = pending.len(),
                    attempt,
                    retry_in_ms = wait.as_millis() as u64,
                    "delivery failed; retrying"
                );
            }
            let (n, at) = (pending.len(), now_ms() + wait.as_millis() as i64);
            self.runner.update(|l| {
                l.retrying = n;
                l.failures_in_a_row = attempt;
                l.next_attempt_at = Some(at);
                if failure.is_some() {
                    l.last_error = failure;
                }
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.runner.wake.notified() => {}
                _ = self.stop.cancelled() => return Err(PassError::Stopped),
            }
        }
    }

    fn fail(&self, class: &'static str) {
        self.metrics
            .destination_failures
            .get_or_create(&DestinationFailureLabels {
                destination: self.runner.dest.name.clone(),
                class,
            })
            .inc();
    }
}

fn dead_letter(
    e: &StoredEvent,
    (status, error, body): (Option<u16>, String, String),
) -> DeadLetterIn {
    DeadLetterIn {
        seq: e.seq,
        status,
        error,
        body,
    }
}

/// Renders one request per LaunchDarkly-integration destination for `destinations check`.
pub fn sample(d: &Destination, ld_base_url: &str) -> Option<Result<String, String>> {
    let Kind::LaunchDarkly(i) = &d.kind else {
        return None;
    };
    let raw = launchdarkly::SAMPLE_EVENT;
    let row = StoredEvent {
        seq: 0,
        id: "6565f0a1b2c3d4e5f6a7b8c9".into(),
        date: 1_700_000_000_123,
        raw: raw.into(),
        source: "launchdarkly".into(),
        actor: String::new(),
        action: String::new(),
        resource: String::new(),
        summary: String::new(),
    };
    Some(i.render(&row, ld_base_url).map(|r| {
        let mut out = format!(
            "{} {}\n",
            r.method,
            i.mask(&crate::config::redact_url(&r.url))
        );
        for (name, value) in &r.headers {
            out.push_str(&format!("{name}: {}\n", i.mask(value)));
        }
        out.push('\n');
        out.push_str(&r.body);
        out
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_under_an_exponential_cap_and_honours_retry_after() {
        let max = Duration::from_secs(300);
        for attempt in 1..=30 {
            let ceiling = (BASE_BACKOFF * 2u32.pow((attempt - 1).min(20))).min(max);
            for _ in 0..50 {
                assert!(backoff(attempt, max, None) <= ceiling);
            }
        }
        assert!(backoff(1, max, Some(Duration::from_secs(7))) >= Duration::from_secs(7));
        // Waits spread out: not every draw is the ceiling.
        let draws: std::collections::HashSet<u128> = (0..20)
            .map(|_| backoff(10, max, None).as_micros())
            .collect();
        assert!(draws.len() > 10);
    }

    #[test]
    fn kept_bodies_stop_at_20_kb_on_a_character_boundary() {
        let body = "é".repeat(20_000);
        let kept = kept_body(body.as_bytes());
        assert_eq!(kept.len(), BODY_KEPT);
        assert!(kept.chars().all(|c| c == 'é'));
    }
}
