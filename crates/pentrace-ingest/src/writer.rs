//! The writers: each closes batches by size or age, commits each in one
//! transaction, retries what can be retried, and reports outcomes only after
//! the commit.
//!
//! Nothing a message carries may stop a writer. Each batch runs in a task of
//! its own, so a panic while judging or committing it ends only that task;
//! the batch is then processed one message at a time, and a message that
//! fails alone (a panic, or a store that refuses it) goes to quarantine with
//! its raw bytes: acknowledged, counted, audited, never looping. A writer
//! that dies anyway is restarted by its supervisor, and the server is not
//! ready meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use pentrace_store::{
    CommitOutcome, FactsQuery, MessageRow, QuarantineRow, Store, StoreError, StoredFacts,
    Watermarks,
};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info_span, warn};

use crate::judge::{self, Plan};
use crate::metrics::Label;
use crate::{Disposition, Envelope, Feed, IngestConfig, Outcome, RejectReason};

/// Conflicts (another process won a race) are resolved by judging again
/// against fresh facts; more than this many in a row means something else
/// is wrong, and the batch is split to isolate it.
const MAX_CONFLICTS: u32 = 8;

/// Runs writer `index` until its queue is closed and drained, restarting it
/// if it dies.
pub(crate) async fn supervise(
    index: usize,
    store: Arc<dyn Store>,
    config: IngestConfig,
    rx: mpsc::Receiver<Envelope>,
    feed: Feed,
    shutdown: CancellationToken,
) {
    let rx = Arc::new(Mutex::new(rx));
    let writer = Arc::new(Writer {
        index,
        store,
        config,
        feed,
        shutdown,
    });
    let mut restarts = backoff();
    loop {
        match tokio::spawn(writer.clone().run(rx.clone())).await {
            Ok(()) => return,
            Err(e) => {
                writer
                    .feed
                    .health
                    .writers_down
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                error!(writer = index, error = %panic_text(e), "ingest writer died; restarting it");
                writer
                    .feed
                    .metrics
                    .retries
                    .get_or_create(&Label {
                        name: "writer_restart",
                    })
                    .inc();
                let wait = restarts.next().unwrap_or(Duration::from_secs(5));
                tokio::time::sleep(wait).await;
                writer
                    .feed
                    .health
                    .writers_down
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

struct Writer {
    index: usize,
    store: Arc<dyn Store>,
    config: IngestConfig,
    feed: Feed,
    shutdown: CancellationToken,
}

/// Why one attempt at a batch failed.
enum Failure {
    Conflict(String),
    Store(StoreError),
}

/// Why a batch was not committed as a whole.
enum Refusal {
    /// The store refused it (or kept conflicting).
    Store(StoreError),
    /// Processing it panicked.
    Panic(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Store(e) => write!(f, "{e}"),
            Refusal::Panic(p) => write!(f, "processing it panicked: {p}"),
        }
    }
}

impl Writer {
    async fn run(self: Arc<Self>, rx: Arc<Mutex<mpsc::Receiver<Envelope>>>) {
        let mut rx = rx.lock().await;
        while let Some(batch) = self.next_batch(&mut rx).await {
            self.feed.health.set_busy(self.index, true);
            let span = info_span!("batch", messages = batch.len());
            self.process(batch).instrument(span).await;
            self.feed.health.set_busy(self.index, false);
        }
    }

    /// Waits for a first message, then gathers more until the batch is full
    /// or the first has waited `batch_max_age`. `None` once the queue is
    /// closed and empty.
    async fn next_batch(&self, rx: &mut mpsc::Receiver<Envelope>) -> Option<Vec<Envelope>> {
        let first = rx.recv().await?;
        let deadline = tokio::time::Instant::now() + self.config.batch_max_age;
        let mut batch = Vec::with_capacity(self.config.batch_max_messages);
        batch.push(first);
        while batch.len() < self.config.batch_max_messages {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(env)) => batch.push(env),
                Ok(None) | Err(_) => break,
            }
        }
        self.feed.metrics.queue_depth.dec_by(batch.len() as i64);
        Some(batch)
    }

    /// Commits a batch, whatever it takes: re-judge on conflicts, wait out
    /// an unavailable store, and split a batch that fails so one bad
    /// message cannot sink the good ones; a message that fails alone is
    /// quarantined.
    async fn process(self: &Arc<Self>, batch: Vec<Envelope>) {
        let mut pending = vec![Arc::new(batch)];
        while let Some(batch) = pending.pop() {
            let refusal = match self.guarded(batch.clone()).await {
                Ok(()) => continue,
                Err(refusal) => refusal,
            };
            if let Refusal::Store(StoreError::Unavailable(e)) = &refusal {
                // Only once the server is stopping: not stored, resend.
                warn!(error = %e, "store unavailable while stopping; rejecting for a resend");
                self.reject_all(&batch, RejectReason::ShuttingDown);
                continue;
            }
            if batch.len() > 1 {
                warn!(error = %refusal, messages = batch.len(), "a batch failed; splitting it");
                let mid = batch.len() / 2;
                pending.push(Arc::new(batch[mid..].to_vec()));
                pending.push(Arc::new(batch[..mid].to_vec()));
                continue;
            }
            self.quarantine(&batch, refusal.to_string()).await;
        }
    }

    /// Commits the batch in a task of its own, so that a panic while
    /// processing it ends only that task.
    async fn guarded(self: &Arc<Self>, batch: Arc<Vec<Envelope>>) -> Result<(), Refusal> {
        let me = self.clone();
        match tokio::spawn(async move { me.commit_with_retries(&batch).await }).await {
            Ok(result) => result.map_err(Refusal::Store),
            Err(e) => {
                self.feed
                    .metrics
                    .retries
                    .get_or_create(&Label { name: "panic" })
                    .inc();
                Err(Refusal::Panic(panic_text(e)))
            }
        }
    }

    /// Retries until committed; returns the error only for a refusal (or an
    /// outage once the server is stopping).
    async fn commit_with_retries(&self, batch: &[Envelope]) -> Result<(), StoreError> {
        let idents = judge::identify_all(batch);
        let mut backoff = backoff();
        let mut conflicts = 0;
        loop {
            match self.attempt(batch, &idents).await {
                Ok(()) => {
                    self.feed.health.set_store_down(false);
                    return Ok(());
                }
                Err(Failure::Conflict(detail)) if conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                    self.feed
                        .metrics
                        .retries
                        .get_or_create(&Label { name: "conflict" })
                        .inc();
                    tracing::debug!(%detail, "lost a race to another writer; judging again");
                }
                Err(Failure::Conflict(detail)) => {
                    return Err(StoreError::Invalid(format!("repeated conflicts: {detail}")));
                }
                Err(Failure::Store(e)) if e.is_transient() => {
                    self.feed.health.set_store_down(true);
                    self.feed
                        .metrics
                        .retries
                        .get_or_create(&Label {
                            name: "unavailable",
                        })
                        .inc();
                    if self.shutdown.is_cancelled() {
                        return Err(e);
                    }
                    let wait = backoff.next().unwrap_or(Duration::from_secs(5));
                    warn!(error = %e, ?wait, "store unavailable; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.shutdown.cancelled() => {}
                    }
                }
                Err(Failure::Store(e)) => return Err(e),
            }
        }
    }

    /// One attempt: load facts, judge, commit, report.
    async fn attempt(
        &self,
        batch: &[Envelope],
        idents: &[Option<pentrace_domain::rules::Identified>],
    ) -> Result<(), Failure> {
        let query = judge::facts_query(batch, idents);
        let mut facts = self
            .store
            .load_facts(&query)
            .await
            .map_err(Failure::Store)?;
        self.auto_register(batch, &mut facts)
            .await
            .map_err(Failure::Store)?;
        let plan = judge::plan(batch, idents, &facts, &self.config.policy);
        let started = Instant::now();
        let outcome = if plan.committed.is_empty() {
            CommitOutcome::Committed {
                new_flags: Vec::new(),
                watermarks: Watermarks::new(),
            }
        } else {
            self.store
                .commit(&plan.write)
                .await
                .map_err(Failure::Store)?
        };
        match outcome {
            CommitOutcome::Conflict { detail } => Err(Failure::Conflict(detail)),
            CommitOutcome::Committed {
                new_flags,
                watermarks,
            } => {
                self.feed
                    .metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                let watermark = |device_id: &str| {
                    watermarks
                        .get(device_id)
                        .or_else(|| facts.devices.get(device_id).map(|d| &d.stored_through))
                        .copied()
                        .unwrap_or(0)
                };
                self.report(batch, &plan, watermark);
                for flag in new_flags {
                    self.feed
                        .metrics
                        .flags
                        .get_or_create(&Label {
                            name: flag.kind.as_str(),
                        })
                        .inc();
                    // No subscriber is fine: flags are stored either way.
                    let _ = self.feed.flags.send(Arc::new(flag));
                }
                Ok(())
            }
        }
    }

    /// Registers unknown devices to the default clinic when so configured.
    async fn auto_register(
        &self,
        batch: &[Envelope],
        facts: &mut StoredFacts,
    ) -> Result<(), StoreError> {
        let Some(clinic) = &self.config.auto_register_clinic else {
            return Ok(());
        };
        for env in batch {
            let id = &env.message.device_id;
            if facts.devices.contains_key(id) {
                continue;
            }
            self.store.auto_register_device(id, clinic).await?;
            tracing::info!(device_id = %id, clinic_id = %clinic, "auto-registered device");
            let state = pentrace_store::DeviceState {
                clinic_id: clinic.clone(),
                max_depth_um: 0,
                max_seq: 0,
                stored_through: 0,
            };
            facts.devices.insert(id.clone(), state);
        }
        Ok(())
    }

    fn report(&self, batch: &[Envelope], plan: &Plan, watermark: impl Fn(&str) -> u64) {
        let m = &self.feed.metrics;
        m.batches.inc();
        m.samples.inc_by(plan.samples);
        let out = |i: usize, disposition: Disposition| {
            let env = &batch[i];
            send(env, disposition, watermark(&env.message.device_id));
        };
        for &i in &plan.committed {
            let kind = plan_kind(&batch[i]);
            m.messages.get_or_create(&Label { name: kind }).inc();
            out(i, Disposition::Committed);
        }
        for &i in &plan.duplicates {
            m.duplicates.inc();
            out(i, Disposition::Duplicate);
        }
        for (i, reason) in &plan.rejected {
            m.reject(reason.label());
            out(*i, Disposition::Rejected(reason.clone()));
        }
    }

    fn reject_all(&self, batch: &[Envelope], reason: RejectReason) {
        for env in batch {
            self.feed.metrics.reject(reason.label());
            send(env, Disposition::Rejected(reason.clone()), 0);
        }
    }

    /// Sets aside messages that failed alone: key, raw bytes and error in
    /// one transaction, retried while the store is unavailable. A device
    /// that is not registered has no record to keep them in: rejected.
    async fn quarantine(&self, batch: &[Envelope], error: String) {
        let mut backoff = backoff();
        loop {
            match self.try_quarantine(batch, &error).await {
                Ok(()) => return,
                Err(e) if e.is_transient() && !self.shutdown.is_cancelled() => {
                    self.feed.health.set_store_down(true);
                    let wait = backoff.next().unwrap_or(Duration::from_secs(5));
                    warn!(error = %e, ?wait, "store unavailable for the quarantine; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.shutdown.cancelled() => {}
                    }
                }
                Err(e) if e.is_transient() => {
                    return self.reject_all(batch, RejectReason::ShuttingDown);
                }
                Err(e) => {
                    error!(error = %e, cause = %error, "the store refused even the quarantine of a message");
                    return self.reject_all(batch, RejectReason::StoreRejected(error.clone()));
                }
            }
        }
    }

    async fn try_quarantine(&self, batch: &[Envelope], error: &str) -> Result<(), StoreError> {
        let query = FactsQuery {
            device_ids: batch.iter().map(|e| e.message.device_id.clone()).collect(),
            ..FactsQuery::default()
        };
        let facts = self.store.load_facts(&query).await?;
        let mut rows = Vec::new();
        let mut unknown = Vec::new();
        for env in batch {
            match facts.devices.get(&env.message.device_id) {
                Some(device) => rows.push(quarantine_row(env, &device.clinic_id, error)),
                None => unknown.push(env.clone()),
            }
        }
        let watermarks = self.store.quarantine(&rows).await?;
        self.feed.health.set_store_down(false);
        for env in batch {
            if unknown
                .iter()
                .any(|u| u.message.device_id == env.message.device_id)
            {
                continue;
            }
            warn!(device_id = %env.message.device_id, seq = env.message.seq, %error, "message quarantined");
            self.feed.metrics.reject("quarantined");
            let through = watermarks.get(&env.message.device_id).copied().unwrap_or(0);
            send(env, Disposition::Quarantined(error.to_owned()), through);
        }
        self.reject_all(&unknown, RejectReason::UnknownDevice);
        Ok(())
    }
}

fn quarantine_row(env: &Envelope, clinic_id: &str, error: &str) -> QuarantineRow {
    QuarantineRow {
        id: uuid::Uuid::new_v4(),
        clinic_id: clinic_id.to_owned(),
        message: MessageRow {
            device_id: env.message.device_id.clone(),
            seq: env.message.seq,
            kind: plan_kind(env),
            session_id: None,
            sent_at: env.message.sent_at,
            received_at: env.received_at,
        },
        transport: env.transport,
        error: error.to_owned(),
        payload: env.payload.to_vec(),
    }
}

/// What a panicked task said.
fn panic_text(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

fn plan_kind(env: &Envelope) -> &'static str {
    use pentrace_domain::message::Body;
    match env.message.body {
        Body::SessionStart(_) => "session_start",
        Body::StrokeBatch(_) => "stroke_batch",
        Body::SessionEnd(_) => "session_end",
        Body::Heartbeat(_) => "heartbeat",
    }
}

fn send(env: &Envelope, disposition: Disposition, stored_through: u64) {
    let outcome = Outcome {
        device_id: env.message.device_id.clone(),
        seq: env.message.seq,
        disposition,
        stored_through,
    };
    // The transport may have gone (client disconnected); the message is
    // stored regardless and a redelivery will be recognised as a duplicate.
    let _ = env.reply.send(outcome);
}

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}
