//! The ingest pipeline (docs/architecture.md, "A message's path" and
//! "Delivery"): bounded queue in, batches closed by size or age, facts
//! loaded per batch, rules judged by the domain, one transaction per batch,
//! outcomes reported only after commit.
//!
//! Transports (gRPC, MQTT) submit [`Envelope`]s through an [`IngestHandle`]
//! and ack what comes back on their reply channel. The queue is bounded:
//! when the store is slow, `submit` waits, so transports stop reading rather
//! than drop.
//!
//! Devices are spread over `writers` independent writers (each its own queue
//! and connection), always the same writer for the same device, so one
//! device's messages stay in order while one writer's transaction commits
//! and the other's is judged. What two writers may race on (a cartridge
//! claimed from two devices, a lot recalled meanwhile) the store detects as
//! a conflict, and the batch is judged again, as between two processes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pentrace_domain::message::DeviceMessage;
use pentrace_domain::policy::Policy;
use pentrace_store::{FlagRecord, Store};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod gaps;
mod judge;
pub mod metrics;
mod writer;

pub use metrics::IngestMetrics;

/// Pipeline settings.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// A batch closes when it holds this many messages...
    pub batch_max_messages: usize,
    /// ...or when its first message has waited this long.
    pub batch_max_age: Duration,
    /// Messages the queue holds before `submit` waits (over all writers).
    pub queue_capacity: usize,
    /// Writers committing in parallel, devices spread over them.
    pub writers: usize,
    /// Register unknown devices to this clinic instead of rejecting them.
    pub auto_register_clinic: Option<String>,
    /// How often open seq holes are checked for `DATA_GAP`.
    pub gap_check_interval: Duration,
    pub policy: Policy,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            // Measured (100 gRPC pens, 2 cores): 500 → 162k samples/s,
            // 2000 → 262k, 5000 → 279k; 20 ms bounds the wait at light load.
            batch_max_messages: 2000,
            batch_max_age: Duration::from_millis(20),
            queue_capacity: 10_000,
            writers: 2,
            auto_register_clinic: None,
            gap_check_interval: Duration::from_secs(30),
            policy: Policy::default(),
        }
    }
}

/// A message as a transport received it, with where to report its outcome.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub message: DeviceMessage,
    /// Server clock at receipt.
    pub received_at: DateTime<Utc>,
    /// The protobuf bytes as received (kept for quarantine).
    pub payload: bytes::Bytes,
    /// `grpc` or `mqtt`.
    pub transport: &'static str,
    pub reply: mpsc::UnboundedSender<Outcome>,
}

/// What became of one submitted message. Sent only once it is final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub device_id: String,
    pub seq: u64,
    pub disposition: Disposition,
    /// The device's stored watermark as of this outcome: every seq from 1
    /// through it is stored (0 when nothing is known, e.g. for an unknown
    /// device).
    pub stored_through: u64,
}

/// Final state of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Committed by this batch.
    Committed,
    /// Already stored (a redelivery): safe to ack.
    Duplicate,
    /// Could not be processed; kept in quarantine with the error. Its key is
    /// stored, so it is acknowledged like a stored message.
    Quarantined(String),
    /// Not stored; the transport must tell the sender.
    Rejected(RejectReason),
}

impl Disposition {
    /// Whether the message's key is stored and it may be acknowledged.
    pub fn is_stored(&self) -> bool {
        matches!(
            self,
            Disposition::Committed | Disposition::Duplicate | Disposition::Quarantined(_)
        )
    }
}

/// Why the pipeline refused a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    /// The device is not registered (and auto-registration is off).
    UnknownDevice,
    /// Neither storing nor quarantining the message worked (the database
    /// refuses even the quarantine row): not stored, resending it will fail
    /// the same way.
    StoreRejected(String),
    /// The server is stopping and the store is unreachable: not stored, the
    /// sender must retry.
    ShuttingDown,
}

impl RejectReason {
    /// The metric label of the reason.
    pub fn label(&self) -> &'static str {
        match self {
            RejectReason::UnknownDevice => "unknown_device",
            RejectReason::StoreRejected(_) => "store_rejected",
            RejectReason::ShuttingDown => "shutting_down",
        }
    }

    /// Whether the same message may be stored if sent again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RejectReason::ShuttingDown)
    }
}

/// Whether the pipeline can currently commit (for `/readyz`).
#[derive(Debug, Default)]
pub struct Health {
    store_down: AtomicBool,
    /// Writers not running (panicked, waiting to be restarted).
    writers_down: AtomicUsize,
    /// Per writer: when its current batch was taken (ms since the epoch),
    /// 0 while it waits for messages.
    busy_since_ms: std::sync::Mutex<Vec<u64>>,
}

/// A writer busy with one batch for longer than this is stalled: a batch
/// commits in milliseconds, and a store outage is reported on its own.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);

impl Health {
    /// True while commits succeed, every writer runs and none is stalled.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why the pipeline is not ready, if it is not.
    pub fn not_ready_reason(&self) -> Option<String> {
        if self.store_down.load(Ordering::Relaxed) {
            return Some("the store is unavailable".into());
        }
        let down = self.writers_down.load(Ordering::Relaxed);
        if down > 0 {
            return Some(format!("{down} ingest writer(s) are being restarted"));
        }
        let now = now_ms();
        let busy = self
            .busy_since_ms
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default();
        let limit = STALL_LIMIT.as_millis() as u64;
        busy.iter()
            .position(|&since| since != 0 && now.saturating_sub(since) > limit)
            .map(|w| {
                format!(
                    "ingest writer {w} has been on one batch for over {} s",
                    limit / 1000
                )
            })
    }

    fn set_store_down(&self, down: bool) {
        self.store_down.store(down, Ordering::Relaxed);
    }

    fn set_busy(&self, writer: usize, busy: bool) {
        if let Ok(mut b) = self.busy_since_ms.lock() {
            if b.len() <= writer {
                b.resize(writer + 1, 0);
            }
            b[writer] = if busy { now_ms().max(1) } else { 0 };
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The pipeline is gone (server stopping).
#[derive(Debug, thiserror::Error)]
#[error("the ingest pipeline has stopped")]
pub struct Closed;

/// How transports talk to the pipeline; cheap to clone.
#[derive(Debug, Clone)]
pub struct IngestHandle {
    /// One queue per writer; a device always goes to the same one.
    queues: Arc<[mpsc::Sender<Envelope>]>,
    flags: broadcast::Sender<Arc<FlagRecord>>,
    health: Arc<Health>,
    metrics: IngestMetrics,
}

impl IngestHandle {
    /// Queues a message; waits while the queue is full (back-pressure).
    pub async fn submit(&self, envelope: Envelope) -> Result<(), Closed> {
        self.metrics.queue_depth.inc();
        let sent = self
            .queue_of(&envelope.message.device_id)
            .send(envelope)
            .await;
        if sent.is_err() {
            self.metrics.queue_depth.dec();
        }
        sent.map_err(|_| Closed)
    }

    /// Waits for room in the queue of writer `writer` (see
    /// [`IngestHandle::writer_of`]); the returned slot queues exactly one
    /// message of a device of that writer. Lets a transport wait for room
    /// inside a `select!` while it keeps acknowledging.
    pub async fn reserve(&self, writer: usize) -> Result<Slot<'_>, Closed> {
        let queue = self.queues.get(writer).ok_or(Closed)?;
        let permit = queue.reserve().await.map_err(|_| Closed)?;
        Ok(Slot {
            permit,
            metrics: &self.metrics,
        })
    }

    /// The writer that commits `device_id`'s messages.
    pub fn writer_of(&self, device_id: &str) -> usize {
        writer_index(device_id, self.queues.len())
    }

    fn queue_of(&self, device_id: &str) -> &mpsc::Sender<Envelope> {
        &self.queues[self.writer_of(device_id)]
    }

    /// Flags as they are committed (for `WatchFlags` and MQTT publishing).
    pub fn subscribe_flags(&self) -> broadcast::Receiver<Arc<FlagRecord>> {
        self.flags.subscribe()
    }

    /// Sender side of the flag feed, for flags raised outside the pipeline
    /// (registry recalls).
    pub fn flag_feed(&self) -> &broadcast::Sender<Arc<FlagRecord>> {
        &self.flags
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    pub fn metrics(&self) -> &IngestMetrics {
        &self.metrics
    }
}

/// Room for one message in the pipeline's queue.
#[derive(Debug)]
pub struct Slot<'a> {
    permit: mpsc::Permit<'a, Envelope>,
    metrics: &'a IngestMetrics,
}

impl Slot<'_> {
    /// Queues the message.
    pub fn send(self, envelope: Envelope) {
        self.metrics.queue_depth.inc();
        self.permit.send(envelope);
    }
}

/// The running pipeline's tasks.
#[derive(Debug)]
pub struct Pipeline {
    writers: Vec<JoinHandle<()>>,
    gaps: JoinHandle<()>,
    stop_gaps: CancellationToken,
}

impl Pipeline {
    /// Starts the writer and the data-gap checker. `shutdown` cancels store
    /// retries once the server is stopping.
    pub fn start(
        store: Arc<dyn Store>,
        config: IngestConfig,
        shutdown: CancellationToken,
    ) -> (Pipeline, IngestHandle) {
        let count = config.writers.max(1);
        let capacity = (config.queue_capacity / count).max(1);
        let (queues, receivers): (Vec<_>, Vec<_>) =
            (0..count).map(|_| mpsc::channel(capacity)).unzip();
        let (flags, _) = broadcast::channel(4096);
        let handle = IngestHandle {
            queues: queues.into(),
            flags,
            health: Arc::new(Health::default()),
            metrics: IngestMetrics::default(),
        };
        let stop_gaps = CancellationToken::new();
        let gaps = tokio::spawn(gaps::run(
            store.clone(),
            config.clone(),
            handle.clone_feed(),
            stop_gaps.clone(),
        ));
        let writers = receivers
            .into_iter()
            .enumerate()
            .map(|(index, rx)| {
                tokio::spawn(writer::supervise(
                    index,
                    store.clone(),
                    config.clone(),
                    rx,
                    handle.clone_feed(),
                    shutdown.clone(),
                ))
            })
            .collect();
        (
            Pipeline {
                writers,
                gaps,
                stop_gaps,
            },
            handle,
        )
    }

    /// Waits until every queued message is committed (or rejected). Call it
    /// once every [`IngestHandle`] is dropped: the queue closes then.
    pub async fn drained(self) {
        for writer in self.writers {
            if let Err(e) = writer.await {
                tracing::error!(error = %e, "ingest writer task failed");
            }
        }
        self.stop_gaps.cancel();
        let _ = self.gaps.await;
    }
}

/// What the background tasks need of a handle, without keeping the queue
/// open (a task holding a sender would stop the queue from ever closing).
#[derive(Debug, Clone)]
pub(crate) struct Feed {
    pub flags: broadcast::Sender<Arc<FlagRecord>>,
    pub health: Arc<Health>,
    pub metrics: IngestMetrics,
}

impl IngestHandle {
    fn clone_feed(&self) -> Feed {
        Feed {
            flags: self.flags.clone(),
            health: self.health.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// Which of `writers` writers commits `device_id`'s messages: the same one
/// for as long as the process runs (the hash need not be stable across
/// builds; the queues are not persisted).
fn writer_index(device_id: &str, writers: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    device_id.hash(&mut h);
    (h.finish() % writers.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::writer_index;

    #[test]
    fn a_device_always_has_the_same_writer_and_devices_are_spread() {
        let ids: Vec<String> = (0..100).map(|i| format!("pen-{i:04}")).collect();
        let first: Vec<usize> = ids.iter().map(|id| writer_index(id, 2)).collect();
        let again: Vec<usize> = ids.iter().map(|id| writer_index(id, 2)).collect();
        assert_eq!(first, again);
        let on_first = first.iter().filter(|&&w| w == 0).count();
        assert!(
            (25..=75).contains(&on_first),
            "{on_first} of 100 on writer 0"
        );
        assert!(ids.iter().all(|id| writer_index(id, 1) == 0));
    }
}
