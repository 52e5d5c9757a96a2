//! The single writer: closes batches by size or age, commits each in one
//! transaction, retries what can be retried, and reports outcomes only after
//! the commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use pentrace_store::{CommitOutcome, Store, StoreError, StoredFacts};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use crate::judge::{self, Plan};
use crate::metrics::Label;
use crate::{Disposition, Envelope, Feed, IngestConfig, Outcome, RejectReason};

/// Conflicts (another process won a race) are resolved by judging again
/// against fresh facts; more than this many in a row means something else
/// is wrong, and the batch is split to isolate it.
const MAX_CONFLICTS: u32 = 8;

pub(crate) async fn run(
    store: Arc<dyn Store>,
    config: IngestConfig,
    mut rx: mpsc::Receiver<Envelope>,
    feed: Feed,
    shutdown: CancellationToken,
) {
    let writer = Writer {
        store,
        config,
        feed,
        shutdown,
    };
    while let Some(batch) = writer.next_batch(&mut rx).await {
        let span = info_span!("batch", messages = batch.len());
        writer.process(batch).instrument(span).await;
    }
}

struct Writer {
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

impl Writer {
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
    /// an unavailable store, and split a batch the store refuses so one bad
    /// message cannot sink the good ones.
    async fn process(&self, batch: Vec<Envelope>) {
        let mut pending = vec![batch];
        while let Some(batch) = pending.pop() {
            match self.commit_with_retries(&batch).await {
                Ok(()) => {}
                Err(e) if batch.len() > 1 => {
                    warn!(error = %e, messages = batch.len(), "store refused a batch; splitting it");
                    let mut batch = batch;
                    let tail = batch.split_off(batch.len() / 2);
                    pending.push(tail);
                    pending.push(batch);
                }
                Err(e) => {
                    warn!(error = %e, "store refused a message; rejecting it");
                    let reason = match e {
                        StoreError::Unavailable(_) => RejectReason::ShuttingDown,
                        other => RejectReason::StoreRejected(other.to_string()),
                    };
                    self.reject_all(&batch, reason);
                }
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
            }
        } else {
            self.store
                .commit(&plan.write)
                .await
                .map_err(Failure::Store)?
        };
        match outcome {
            CommitOutcome::Conflict { detail } => Err(Failure::Conflict(detail)),
            CommitOutcome::Committed { new_flags } => {
                self.feed
                    .metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.report(batch, &plan);
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
            };
            facts.devices.insert(id.clone(), state);
        }
        Ok(())
    }

    fn report(&self, batch: &[Envelope], plan: &Plan) {
        let m = &self.feed.metrics;
        m.batches.inc();
        m.samples.inc_by(plan.samples);
        for &i in &plan.committed {
            let kind = plan_kind(&batch[i]);
            m.messages.get_or_create(&Label { name: kind }).inc();
            send(&batch[i], Disposition::Committed);
        }
        for &i in &plan.duplicates {
            m.duplicates.inc();
            send(&batch[i], Disposition::Duplicate);
        }
        for (i, reason) in &plan.rejected {
            m.reject(reason.label());
            send(&batch[*i], Disposition::Rejected(reason.clone()));
        }
    }

    fn reject_all(&self, batch: &[Envelope], reason: RejectReason) {
        for env in batch {
            self.feed.metrics.reject(reason.label());
            send(env, Disposition::Rejected(reason.clone()));
        }
    }
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

fn send(env: &Envelope, disposition: Disposition) {
    let outcome = Outcome {
        device_id: env.message.device_id.clone(),
        seq: env.message.seq,
        disposition,
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
