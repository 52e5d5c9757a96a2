//! Ingest metrics, rendered as Prometheus text by the server.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label with one value: the reason, kind or outcome counted.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Label {
    pub name: &'static str,
}

/// Counters and gauges of the pipeline.
#[derive(Debug, Clone)]
pub struct IngestMetrics {
    /// Messages committed, by message kind.
    pub messages: Family<Label, Counter>,
    /// Redelivered messages recognised by their `(device_id, seq)`.
    pub duplicates: Counter,
    /// Samples committed.
    pub samples: Counter,
    /// Rejected messages, by reason (every rejection is counted).
    pub rejects: Family<Label, Counter>,
    /// Flags raised, by kind.
    pub flags: Family<Label, Counter>,
    /// Committed batches.
    pub batches: Counter,
    /// Retries of a batch, by cause.
    pub retries: Family<Label, Counter>,
    /// Seconds from batch close to commit.
    pub commit_seconds: Histogram,
    /// Messages waiting in the queue.
    pub queue_depth: Gauge,
}

impl Default for IngestMetrics {
    fn default() -> Self {
        IngestMetrics {
            messages: Family::default(),
            duplicates: Counter::default(),
            samples: Counter::default(),
            rejects: Family::default(),
            flags: Family::default(),
            batches: Counter::default(),
            retries: Family::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            queue_depth: Gauge::default(),
        }
    }
}

impl IngestMetrics {
    /// Registers every metric under the `pentrace_ingest` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("pentrace_ingest");
        r.register(
            "messages",
            "Messages committed, by kind",
            self.messages.clone(),
        );
        r.register(
            "duplicates",
            "Redelivered messages ignored",
            self.duplicates.clone(),
        );
        r.register("samples", "Stroke samples committed", self.samples.clone());
        r.register(
            "rejects",
            "Messages rejected, by reason",
            self.rejects.clone(),
        );
        r.register("flags", "Flags raised, by kind", self.flags.clone());
        r.register("batches", "Batches committed", self.batches.clone());
        r.register("retries", "Batch retries, by cause", self.retries.clone());
        r.register(
            "commit_seconds",
            "Batch commit latency",
            self.commit_seconds.clone(),
        );
        r.register(
            "queue_depth",
            "Messages waiting to be batched",
            self.queue_depth.clone(),
        );
    }

    /// Counts one rejection.
    pub fn reject(&self, reason: &'static str) {
        self.rejects.get_or_create(&Label { name: reason }).inc();
    }
}
