//! Prometheus metrics, rendered as text by `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a rejected hook request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// One of the standard methods, or `other`: label values come from a fixed set, so a
    /// client inventing methods cannot grow the metric without bound.
    pub method: &'static str,
    pub route: String,
    pub status: u16,
}

/// Labels of a destination.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabel {
    pub destination: String,
}

/// Labels of a destination's failed attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationFailureLabels {
    pub destination: String,
    /// `http_5xx`, `http_429`, `http_408`, `auth`, `timeout`, `connect`, `tls`,
    /// `bad_response`, `refused` (a dead letter), `render`.
    pub class: &'static str,
}

/// Labels of a catch-up run.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Labels of a per-source metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

/// Labels of a per-source poll.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceResultLabels {
    pub source: &'static str,
    pub result: &'static str,
}

/// Every metric audithook exports.
pub struct Metrics {
    registry: Registry,
    pub events_received: Counter,
    pub events_stored: Counter,
    pub events_duplicate: Counter,
    pub events_rejected: Family<ReasonLabel, Counter>,
    pub commit_group_size: Histogram,
    pub request_duration: Family<RequestLabels, Histogram>,
    pub catchup_runs: Family<ResultLabel, Counter>,
    pub catchup_new_events: Counter,
    pub catchup_last_success: Gauge,
    pub catchup_lease_held: Gauge,
    pub catchup_newest_event: Gauge,
    pub ld_requests: Counter,
    pub ld_rate_limited: Counter,
    pub search_unindexed: Gauge,
    pub renders_running: Gauge,
    pub source_requests: Family<SourceLabel, Counter>,
    pub source_rate_limited: Family<SourceLabel, Counter>,
    pub source_events_new: Family<SourceLabel, Counter>,
    pub source_last_success: Family<SourceLabel, Gauge>,
    pub source_lag: Family<SourceLabel, Gauge>,
    pub source_polls: Family<SourceResultLabels, Counter>,
    pub source_lease_held: Family<SourceLabel, Gauge>,
    pub destination_delivered: Family<DestinationLabel, Counter>,
    pub destination_attempts: Family<DestinationLabel, Counter>,
    pub destination_failures: Family<DestinationFailureLabels, Counter>,
    pub destination_dead_letters: Family<DestinationLabel, Counter>,
    pub destination_lag_events: Family<DestinationLabel, Gauge>,
    pub destination_lag_seconds: Family<DestinationLabel, Gauge>,
    pub destination_lease_held: Family<DestinationLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("audithook");
        let events_received = Counter::default();
        let events_stored = Counter::default();
        let events_duplicate = Counter::default();
        let events_rejected = Family::<ReasonLabel, Counter>::default();
        let commit_group_size = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        let request_duration = Family::<RequestLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0005, 2.0, 14))) as fn() -> Histogram,
        );
        registry.register(
            "events_received",
            "Hook requests carrying an event",
            events_received.clone(),
        );
        registry.register(
            "events_stored",
            "Events newly stored",
            events_stored.clone(),
        );
        registry.register(
            "events_duplicate",
            "Events received that were already stored",
            events_duplicate.clone(),
        );
        registry.register(
            "events_rejected",
            "Hook requests rejected, by reason",
            events_rejected.clone(),
        );
        registry.register(
            "commit_group_size",
            "Events committed together in one transaction",
            commit_group_size.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            request_duration.clone(),
        );
        let catchup_runs = Family::<ResultLabel, Counter>::default();
        let catchup_new_events = Counter::default();
        let catchup_last_success = Gauge::default();
        let catchup_lease_held = Gauge::default();
        registry.register(
            "catchup_lease_held",
            "1 while this instance holds the catch-up lease (one instance of several runs catch-up)",
            catchup_lease_held.clone(),
        );
        let catchup_newest_event = Gauge::default();
        let ld_requests = Counter::default();
        let ld_rate_limited = Counter::default();
        let search_unindexed = Gauge::default();
        let renders_running = Gauge::default();
        registry.register(
            "preview_renders_running",
            "Preview renders running now (each stops at its time limit, when its client goes away, or at shutdown)",
            renders_running.clone(),
        );
        registry.register(
            "search_unindexed_events",
            "Stored events not yet in the text-search index (they are scanned instead)",
            search_unindexed.clone(),
        );
        registry.register(
            "catchup_runs",
            "Catch-up runs against LaunchDarkly's API, by result",
            catchup_runs.clone(),
        );
        registry.register(
            "catchup_new_events",
            "Events catch-up stored that the hook had missed",
            catchup_new_events.clone(),
        );
        registry.register(
            "catchup_last_success_timestamp_seconds",
            "When the last catch-up run succeeded (Unix seconds)",
            catchup_last_success.clone(),
        );
        registry.register(
            "newest_event_timestamp_seconds",
            "Date of the newest stored event when catch-up last ran (Unix seconds)",
            catchup_newest_event.clone(),
        );
        registry.register(
            "ld_requests",
            "Requests sent to LaunchDarkly's API",
            ld_requests.clone(),
        );
        registry.register(
            "ld_rate_limited",
            "LaunchDarkly API requests answered 429",
            ld_rate_limited.clone(),
        );
        let source_requests = Family::<SourceLabel, Counter>::default();
        let source_rate_limited = Family::<SourceLabel, Counter>::default();
        let source_events_new = Family::<SourceLabel, Counter>::default();
        let source_last_success = Family::<SourceLabel, Gauge>::default();
        let source_lag = Family::<SourceLabel, Gauge>::default();
        let source_polls = Family::<SourceResultLabels, Counter>::default();
        let source_lease_held = Family::<SourceLabel, Gauge>::default();
        registry.register(
            "source_requests",
            "Requests sent to a source's API (launchdarkly, tfc, cbc)",
            source_requests.clone(),
        );
        registry.register(
            "source_rate_limited",
            "Requests to a source's API answered 429",
            source_rate_limited.clone(),
        );
        registry.register(
            "source_events_new",
            "Events a source's poller stored that were not stored before",
            source_events_new.clone(),
        );
        registry.register(
            "source_last_success_timestamp_seconds",
            "When a source's last poll succeeded (Unix seconds)",
            source_last_success.clone(),
        );
        registry.register(
            "source_lag_seconds",
            "Now minus the time of the source's newest stored event, at its last successful poll",
            source_lag.clone(),
        );
        registry.register(
            "source_polls",
            "Polls of a source, by result (ok, error, lease_lost)",
            source_polls.clone(),
        );
        registry.register(
            "source_lease_held",
            "1 while this instance holds the source's polling lease",
            source_lease_held.clone(),
        );
        let destination_delivered = Family::<DestinationLabel, Counter>::default();
        let destination_attempts = Family::<DestinationLabel, Counter>::default();
        let destination_failures = Family::<DestinationFailureLabels, Counter>::default();
        let destination_dead_letters = Family::<DestinationLabel, Counter>::default();
        let destination_lag_events = Family::<DestinationLabel, Gauge>::default();
        let destination_lag_seconds = Family::<DestinationLabel, Gauge>::default();
        let destination_lease_held = Family::<DestinationLabel, Gauge>::default();
        registry.register(
            "destination_delivered",
            "Events a destination's receiver accepted",
            destination_delivered.clone(),
        );
        registry.register(
            "destination_attempts",
            "Requests (or syslog writes) sent to a destination",
            destination_attempts.clone(),
        );
        registry.register(
            "destination_failures",
            "Failed deliveries to a destination, by class",
            destination_failures.clone(),
        );
        registry.register(
            "destination_dead_letters",
            "Events a destination's receiver refused (sent to its dead letters)",
            destination_dead_letters.clone(),
        );
        registry.register(
            "destination_lag_events",
            "Stored events not yet settled for a destination",
            destination_lag_events.clone(),
        );
        registry.register(
            "destination_lag_seconds",
            "How long the oldest event not yet settled for a destination has been stored",
            destination_lag_seconds.clone(),
        );
        registry.register(
            "destination_lease_held",
            "1 while this instance delivers the destination (one instance of several does)",
            destination_lease_held.clone(),
        );
        Self {
            destination_delivered,
            destination_attempts,
            destination_failures,
            destination_dead_letters,
            destination_lag_events,
            destination_lag_seconds,
            destination_lease_held,
            source_requests,
            source_rate_limited,
            source_events_new,
            source_last_success,
            source_lag,
            source_polls,
            source_lease_held,
            catchup_runs,
            catchup_new_events,
            catchup_last_success,
            catchup_lease_held,
            catchup_newest_event,
            ld_requests,
            ld_rate_limited,
            search_unindexed,
            renders_running,
            registry,
            events_received,
            events_stored,
            events_duplicate,
            events_rejected,
            commit_group_size,
            request_duration,
        }
    }

    /// Counts a rejected hook request.
    pub fn reject(&self, reason: &'static str) {
        self.events_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
