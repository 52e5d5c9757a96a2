//! One pen: carries out its actions paced by virtual time, keeps every
//! unacknowledged message, and after any reconnect resends them all.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use chrono::Utc;
use pentrace_proto::v1 as pb;
use tokio::sync::mpsc::OwnedPermit;
use tokio::sync::watch;
use tokio::time::{Duration, Instant, sleep, sleep_until};

use super::inflight::Inflight;
use super::link::{Event, Link, backoff};
use super::{Connector, Counters, Shared, grpc, mqtt};
use crate::error::SimError;
use crate::profile::mix;
use crate::scenario::{Action, PenPlan};
use crate::wire;

/// What a pen reports when it is done.
#[derive(Debug, Clone, Default)]
pub(crate) struct PenOutcome {
    /// Microseconds from each message's first send to its ack.
    pub latencies_us: Vec<u32>,
    pub rejects: Vec<Reject>,
}

/// A `RejectCartridge` command a pen received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub device_id: String,
    pub session_id: String,
    /// The flag kind that caused it.
    pub reason: String,
}

/// Runs pen `index` of the shared scenario to the end: every message sent
/// and acknowledged.
pub(crate) async fn run_pen(shared: Arc<Shared>, index: usize) -> Result<PenOutcome, SimError> {
    let scenario = Arc::clone(&shared.scenario);
    let Some(plan) = scenario.pens.get(index) else {
        return Ok(PenOutcome::default());
    };
    Pen::new(&shared, plan).run().await
}

/// A message waiting to go out, and why it goes out.
#[derive(Debug, Clone, Copy)]
struct Outgoing {
    index: usize,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    First,
    Dup,
    Resend,
}

/// What the pen waits for before its next action.
#[derive(Debug, Clone, Copy)]
enum Goal {
    /// The real time of the next message.
    Until(Instant),
    /// Room in the in-flight window.
    Window,
    /// Everything queued handed to the connection.
    Flushed,
    /// Another pen acknowledged up to a seq.
    Peer(usize, u64),
    /// Everything sent and acknowledged.
    AllAcked,
}

/// What woke the pen up.
enum Step {
    Event(Option<Event>),
    Permit(Option<OwnedPermit<pb::DeviceMessage>>),
    Timer,
    /// An uncovered message is due to be sent again.
    Resend,
    Stall,
}

struct Pen<'a> {
    shared: &'a Shared,
    plan: &'a PenPlan,
    link: Option<Link>,
    /// The connection can take messages (MQTT: connected and subscribed).
    ready: bool,
    outbox: VecDeque<Outgoing>,
    inflight: Inflight,
    sent_once: Vec<bool>,
    /// Last ack progress (or start of waiting for one).
    last_progress: Instant,
    /// A stall already forced a reconnect since the last progress.
    stall_forced: bool,
    /// Consecutive failed connection attempts.
    attempts: u32,
    /// Real time of the latest planned message so far.
    pace: Instant,
    jitter: f64,
    outcome: PenOutcome,
}

impl<'a> Pen<'a> {
    fn new(shared: &'a Shared, plan: &'a PenPlan) -> Pen<'a> {
        let base = plan.messages.first().map_or(0, |m| m.seq.saturating_sub(1));
        Pen {
            shared,
            plan,
            link: None,
            ready: false,
            outbox: VecDeque::new(),
            inflight: Inflight::new(base),
            sent_once: vec![false; plan.messages.len()],
            last_progress: Instant::now(),
            stall_forced: false,
            attempts: 0,
            pace: shared.start,
            jitter: (mix(plan.index as u64, &[0x717]) % 1000) as f64 / 1000.0,
            outcome: PenOutcome::default(),
        }
    }

    fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    async fn run(mut self) -> Result<PenOutcome, SimError> {
        let plan = self.plan;
        for action in &plan.actions {
            match *action {
                Action::Send(i) => self.send(i).await?,
                Action::Disconnect => self.drop_link(),
                Action::AwaitAck { pen, seq } => self.drive(Goal::Peer(pen, seq)).await?,
            }
        }
        self.drive(Goal::AllAcked).await?;
        if let Some(link) = self.link.take() {
            link.close().await;
        }
        Ok(self.outcome)
    }

    /// Sends message `i` at its time, within the in-flight window.
    async fn send(&mut self, i: usize) -> Result<(), SimError> {
        let Some(message) = self.plan.messages.get(i) else {
            return Ok(());
        };
        self.pace = self.pace.max(self.shared.real(message.at));
        self.drive(Goal::Until(self.pace)).await?;
        self.drive(Goal::Window).await?;
        let kind = if self.sent_once[i] {
            Kind::Dup
        } else {
            self.sent_once[i] = true;
            Kind::First
        };
        self.outbox.push_back(Outgoing { index: i, kind });
        self.drive(Goal::Flushed).await
    }

    /// Serves the connection (acks, reconnects, queued sends) until the
    /// goal is reached.
    async fn drive(&mut self, goal: Goal) -> Result<(), SimError> {
        let mut peer = match goal {
            Goal::Peer(p, _) => self.shared.watermarks.get(p).map(watch::Sender::subscribe),
            _ => None,
        };
        loop {
            if self.reached(goal, peer.as_ref()) {
                return Ok(());
            }
            if self.link.is_none() {
                self.connect().await?;
                continue;
            }
            let step = self.next_step(goal, peer.as_mut()).await;
            self.on_step(step)?;
        }
    }

    fn reached(&self, goal: Goal, peer: Option<&watch::Receiver<u64>>) -> bool {
        match goal {
            Goal::Until(t) => Instant::now() >= t,
            Goal::Window => self.inflight.len() < self.shared.max_inflight,
            Goal::Flushed => self.outbox.is_empty(),
            Goal::Peer(_, seq) => peer.is_none_or(|rx| *rx.borrow() >= seq),
            Goal::AllAcked => self.outbox.is_empty() && self.inflight.is_empty(),
        }
    }

    async fn next_step(&mut self, goal: Goal, peer: Option<&mut watch::Receiver<u64>>) -> Step {
        let can_send = self.ready && !self.outbox.is_empty();
        let stall = self.stall_deadline();
        let until = match goal {
            Goal::Until(t) => Some(t),
            _ => None,
        };
        let has_peer = peer.is_some();
        let resend = self.inflight.next_resend().filter(|_| self.ready);
        let Some(link) = self.link.as_mut() else {
            return Step::Timer;
        };
        let tx = link.tx.clone();
        tokio::select! {
            event = link.events.recv() => Step::Event(event),
            permit = tx.reserve_owned(), if can_send => Step::Permit(permit.ok()),
            _ = sleep_until(until.unwrap_or(stall)), if until.is_some() => Step::Timer,
            _ = changed(peer), if has_peer => Step::Timer,
            _ = sleep_until(resend.unwrap_or(stall)), if resend.is_some() => Step::Resend,
            _ = sleep_until(stall) => Step::Stall,
        }
    }

    fn on_step(&mut self, step: Step) -> Result<(), SimError> {
        match step {
            Step::Event(Some(event)) => self.on_event(event)?,
            Step::Event(None) | Step::Permit(None) => self.drop_link(),
            Step::Permit(Some(permit)) => self.transmit(permit),
            Step::Timer => {}
            Step::Resend => self.resend_due(),
            Step::Stall => self.on_stall()?,
        }
        Ok(())
    }

    fn on_event(&mut self, event: Event) -> Result<(), SimError> {
        match event {
            Event::Ready => {
                tracing::trace!(device_id = %self.plan.device_id, "pen ready");
                // Not progress: only acks are. A server that never acks must
                // time the pen out however often it reconnects.
                self.ready = true;
                self.requeue();
            }
            Event::Down(_) => {
                if self.ready {
                    Counters::add(&self.counters().reconnects, 1);
                }
                self.ready = false;
            }
            Event::Closed { reason, fatal } => {
                if fatal {
                    return Err(SimError::Refused {
                        device_id: self.plan.device_id.clone(),
                        reason,
                    });
                }
                self.drop_link();
            }
            Event::Ack(ack) => self.on_ack(&ack),
            Event::Rejected(r) => self.on_rejected(r)?,
            Event::Reject { session_id, reason } => self.outcome.rejects.push(Reject {
                device_id: self.plan.device_id.clone(),
                session_id,
                reason,
            }),
        }
        Ok(())
    }

    /// Hands the next queued message to the connection.
    fn transmit(&mut self, permit: OwnedPermit<pb::DeviceMessage>) {
        let Some(out) = self.outbox.pop_front() else {
            return;
        };
        let Some(message) = self.plan.messages.get(out.index) else {
            return;
        };
        let now = Instant::now();
        if self.inflight.is_empty() {
            // Waiting for an ack starts now, not at the last progress.
            self.last_progress = now;
        }
        tracing::trace!(device_id = %self.plan.device_id, seq = message.seq, kind = ?out.kind, "pen sent");
        permit.send(wire::build(self.plan, message, Utc::now()));
        let samples = message.samples();
        self.inflight.sent(message.seq, out.index, samples, now);
        let c = self.counters();
        Counters::add(&c.transmissions, 1);
        match out.kind {
            Kind::First => {
                Counters::add(&c.messages, 1);
                Counters::add(&c.samples, samples);
            }
            Kind::Dup => Counters::add(&c.duplicates, 1),
            Kind::Resend => {}
        }
    }

    fn on_ack(&mut self, ack: &pb::IngestAck) {
        let covered = self.inflight.ack(ack, Instant::now());
        tracing::trace!(
            device_id = %self.plan.device_id,
            committed_seq = ack.committed_seq,
            stored = ?ack.stored,
            covered = covered.messages,
            "pen ack"
        );
        if covered.messages == 0 {
            return;
        }
        self.progress();
        let c = self.counters();
        Counters::add(&c.acked, covered.messages);
        Counters::add(&c.samples_acked, covered.samples);
        self.outcome.latencies_us.extend(
            covered
                .latencies
                .iter()
                .map(|d| u32::try_from(d.as_micros()).unwrap_or(u32::MAX)),
        );
        if let Some(w) = self.shared.watermarks.get(self.plan.index) {
            w.send_replace(self.inflight.watermark());
        }
    }

    /// A message the server did not store: resent later when it may be
    /// stored then; otherwise the server refuses this pen's data, which the
    /// reference pen treats as the end of its run.
    fn on_rejected(&mut self, r: pb::Rejection) -> Result<(), SimError> {
        tracing::debug!(device_id = %self.plan.device_id, seq = r.seq, code = r.code, retry = r.retry, detail = %r.detail, "pen message rejected");
        Counters::add(&self.counters().rejections, 1);
        if r.retry {
            // The resend timer sends it again.
            return Ok(());
        }
        self.inflight.forget(r.seq);
        Err(SimError::Refused {
            device_id: self.plan.device_id.clone(),
            reason: format!("seq {}: {}", r.seq, r.detail),
        })
    }

    /// Queues every message that has gone uncovered for too long, on the
    /// same connection: a message lost between pen and server (a broker
    /// restart, a consumer gone) is sent again.
    fn resend_due(&mut self) {
        let indexes = self.inflight.due(Instant::now());
        if indexes.is_empty() {
            return;
        }
        tracing::debug!(device_id = %self.plan.device_id, messages = indexes.len(), "pen resends uncovered messages");
        Counters::add(&self.counters().resends, indexes.len() as u64);
        let queued: HashSet<usize> = self.outbox.iter().map(|o| o.index).collect();
        let mut outbox: VecDeque<Outgoing> = indexes
            .into_iter()
            .filter(|i| !queued.contains(i))
            .map(|index| Outgoing {
                index,
                kind: Kind::Resend,
            })
            .collect();
        outbox.extend(self.outbox.drain(..));
        self.outbox = outbox;
    }

    fn progress(&mut self) {
        self.last_progress = Instant::now();
        self.stall_forced = false;
    }

    /// After a (re)connect: everything unacknowledged goes out first, in
    /// seq order, then what was queued and never sent.
    fn requeue(&mut self) {
        let indexes = self.inflight.requeue();
        if indexes.is_empty() {
            return;
        }
        Counters::add(&self.counters().resends, indexes.len() as u64);
        let resent: HashSet<usize> = indexes.iter().copied().collect();
        let mut outbox: VecDeque<Outgoing> = indexes
            .into_iter()
            .map(|index| Outgoing {
                index,
                kind: Kind::Resend,
            })
            .collect();
        outbox.extend(self.outbox.drain(..).filter(|o| !resent.contains(&o.index)));
        self.outbox = outbox;
    }

    /// When waiting for acks (or for a connection to send on) has lasted
    /// too long: half the ack timeout forces a reconnect, the whole fails.
    fn stall_deadline(&self) -> Instant {
        let waiting = !self.inflight.is_empty() || (!self.ready && !self.outbox.is_empty());
        if !waiting {
            return far_future();
        }
        let limit = if self.stall_forced {
            self.shared.ack_timeout
        } else {
            self.shared.ack_timeout / 2
        };
        self.last_progress + limit
    }

    fn on_stall(&mut self) -> Result<(), SimError> {
        if !self.stall_forced {
            // A lost ack or a half-dead connection: start over and resend.
            self.stall_forced = true;
            self.drop_link();
            return Ok(());
        }
        Err(SimError::AckTimeout {
            device_id: self.plan.device_id.clone(),
            timeout_s: self.shared.ack_timeout.as_secs(),
            unacked: self.inflight.len(),
            lowest_seq: self.inflight.lowest().unwrap_or_default(),
        })
    }

    /// Drops the connection at once (no goodbye), as a pen losing power or
    /// network would; the next step reconnects.
    fn drop_link(&mut self) {
        tracing::trace!(device_id = %self.plan.device_id, "pen link dropped");
        if self.link.take().is_some() {
            Counters::add(&self.counters().reconnects, 1);
        }
        self.ready = false;
    }

    async fn connect(&mut self) -> Result<(), SimError> {
        let since = Instant::now();
        loop {
            let secret = self.shared.secrets.get(&self.plan.device_id);
            let attempt = match &self.shared.connector {
                Connector::Grpc { url, ca_pem } => {
                    let secret = secret.map(String::as_str).unwrap_or_default();
                    grpc::connect(url, ca_pem.as_deref(), &self.plan.device_id, secret).await
                }
                Connector::Mqtt(target) => Ok(mqtt::connect(
                    target,
                    &self.plan.device_id,
                    secret,
                    self.jitter,
                )),
            };
            match attempt {
                Ok(link) => {
                    self.link = Some(link);
                    self.attempts = 0;
                    return Ok(());
                }
                Err(reason) => {
                    self.attempts += 1;
                    if since.elapsed() > self.shared.ack_timeout {
                        return Err(SimError::Connect {
                            url: self.url(),
                            reason,
                        });
                    }
                    sleep(backoff(self.attempts, self.jitter)).await;
                }
            }
        }
    }

    fn url(&self) -> String {
        match &self.shared.connector {
            Connector::Grpc { url, .. } => url.clone(),
            Connector::Mqtt(t) => format!("mqtt://{}:{}", t.host, t.port),
        }
    }
}

/// Resolves when the other pen's watermark moves (never, if it cannot).
async fn changed(peer: Option<&mut watch::Receiver<u64>>) {
    if let Some(rx) = peer
        && rx.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
