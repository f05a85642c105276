//! Prometheus metrics, rendered as text by `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
    pub method: String,
    pub route: String,
    pub status: u16,
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
        Self {
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
