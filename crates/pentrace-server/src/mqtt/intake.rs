//! From broker to pipeline and back: validates each publish, queues it for
//! ingest, and PUBACKs in arrival order once its outcome is final — a later
//! message's PUBACK waits for every earlier one.
//!
//! After a reconnect the broker redelivers whatever was not acknowledged,
//! under the same packet ids; entries from an earlier connection are then
//! never acknowledged (their redelivered copies are), so one packet id is
//! never acknowledged twice.

use std::collections::{HashMap, VecDeque};

use chrono::Utc;
use pentrace_ingest::{Disposition, Envelope, IngestHandle, Outcome, RejectReason};
use pentrace_proto::v1 as pb;
use prost::Message;
use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{device_of_topic, down_topic};
use crate::convert;
use crate::grpc::acks::AckTracker;

/// What the poll loop hands over, in arrival order.
#[derive(Debug)]
pub enum Inbound {
    Publish(Publish),
    /// A (re)connection: earlier packet ids are void.
    Connected,
}

/// Messages validated but not yet in the pipeline's queue; past this the
/// intake stops taking publishes (the broker holds the rest).
const MAX_WAITING: usize = 10_000;

/// Final state of one received publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Outcome not known yet.
    Waiting,
    /// Acknowledge: stored, or refused for good (counted).
    Ack,
    /// Do not acknowledge: the broker must deliver it again.
    Hold,
}

#[derive(Debug)]
struct Entry {
    publish: Publish,
    connection: u64,
    state: State,
}

/// The intake task's state.
#[derive(Debug)]
pub struct Intake {
    client: AsyncClient,
    ingest: IngestHandle,
    max_message_bytes: usize,
    connection: u64,
    /// Received publishes in arrival order; `first_id` is the id of the front.
    entries: VecDeque<Entry>,
    first_id: u64,
    /// Entry ids waiting for the outcome of `(device_id, seq)`.
    waiting: HashMap<(String, u64), Vec<u64>>,
    to_submit: VecDeque<Envelope>,
    acks: AckTracker,
}

impl Intake {
    pub fn new(client: AsyncClient, ingest: IngestHandle, max_message_bytes: usize) -> Self {
        Intake {
            client,
            ingest,
            max_message_bytes,
            connection: 0,
            entries: VecDeque::new(),
            first_id: 0,
            waiting: HashMap::new(),
            to_submit: VecDeque::new(),
            acks: AckTracker::default(),
        }
    }

    /// Runs until `shutdown`, then until everything taken is settled.
    pub async fn run(mut self, mut events: mpsc::Receiver<Inbound>, shutdown: CancellationToken) {
        let (reply, mut outcomes) = mpsc::unbounded_channel();
        let mut accepting = true;
        loop {
            if !accepting && self.to_submit.is_empty() && self.waiting.is_empty() {
                break;
            }
            let ingest = self.ingest.clone();
            let next_writer = self
                .to_submit
                .front()
                .map(|e| ingest.writer_of(&e.message.device_id));
            tokio::select! {
                biased;
                Some(outcome) = outcomes.recv() => {
                    self.settle(outcome);
                    while let Ok(more) = outcomes.try_recv() {
                        self.settle(more);
                    }
                    for (device_id, seq) in self.acks.take_acks() {
                        self.publish_ack(&device_id, seq).await;
                    }
                    self.flush().await;
                }
                slot = ingest.reserve(next_writer.unwrap_or_default()), if next_writer.is_some() => {
                    match (slot, self.to_submit.pop_front()) {
                        (Ok(slot), Some(envelope)) => slot.send(envelope),
                        _ => return, // pipeline gone: unacked messages will be redelivered
                    }
                }
                event = events.recv(), if accepting && self.to_submit.len() < MAX_WAITING => match event {
                    Some(Inbound::Publish(p)) => { self.receive(p, &reply); self.flush().await; }
                    Some(Inbound::Connected) => self.connection += 1,
                    None => accepting = false,
                },
                _ = shutdown.cancelled(), if accepting => accepting = false,
            }
        }
        self.flush().await;
    }

    /// Validates one publish; a refused one is counted and acknowledged so
    /// it is not redelivered forever.
    fn receive(&mut self, publish: Publish, reply: &mpsc::UnboundedSender<Outcome>) {
        let id = self.first_id + self.entries.len() as u64;
        let validated = self.validate(&publish);
        let state = match validated {
            Ok(message) => {
                tracing::trace!(device_id = %message.device_id, seq = message.seq, "mqtt message received");
                let key = (message.device_id.clone(), message.seq);
                self.waiting.entry(key).or_default().push(id);
                self.acks.received(&message.device_id, message.seq);
                let envelope = Envelope {
                    message,
                    received_at: Utc::now(),
                    reply: reply.clone(),
                };
                self.to_submit.push_back(envelope);
                State::Waiting
            }
            Err(reason) => {
                self.ingest.metrics().reject(reason);
                tracing::debug!(topic = %publish.topic, reason, "mqtt message refused");
                State::Ack
            }
        };
        self.entries.push_back(Entry {
            publish,
            connection: self.connection,
            state,
        });
    }

    fn validate(
        &self,
        p: &Publish,
    ) -> Result<pentrace_domain::message::DeviceMessage, &'static str> {
        let topic_device = device_of_topic(&p.topic).ok_or("bad_topic")?;
        if p.payload.len() > self.max_message_bytes {
            return Err("oversized");
        }
        let wire = pb::DeviceMessage::decode(p.payload.as_ref()).map_err(|_| "undecodable")?;
        // The topic is what the broker authenticated (ACL); a payload naming
        // another device is spoofing.
        if wire.device_id != topic_device {
            return Err("device_mismatch");
        }
        convert::device_message(wire).map_err(|_| "invalid_message")
    }

    fn settle(&mut self, o: Outcome) {
        let state = match &o.disposition {
            Disposition::Committed | Disposition::Duplicate => State::Ack,
            Disposition::Rejected(RejectReason::ShuttingDown) => State::Hold,
            Disposition::Rejected(_) => State::Ack,
        };
        tracing::trace!(device_id = %o.device_id, seq = o.seq, disposition = ?o.disposition, "mqtt message settled");
        self.acks
            .resolved(&o.device_id, o.seq, o.disposition.is_stored());
        let key = (o.device_id, o.seq);
        let Some(ids) = self.waiting.get_mut(&key) else {
            return;
        };
        if !ids.is_empty() {
            let id = ids.remove(0);
            if let Some(e) = id
                .checked_sub(self.first_id)
                .and_then(|i| self.entries.get_mut(i as usize))
            {
                e.state = state;
            }
        }
        if ids.is_empty() {
            self.waiting.remove(&key);
        }
    }

    /// PUBACKs every settled entry at the front, in order.
    async fn flush(&mut self) {
        while self
            .entries
            .front()
            .is_some_and(|e| e.state != State::Waiting)
        {
            let Some(entry) = self.entries.pop_front() else {
                break;
            };
            self.first_id += 1;
            let current = entry.connection == self.connection;
            if entry.state == State::Ack
                && current
                && let Err(e) = self.client.ack(&entry.publish).await
            {
                tracing::warn!(error = %e, "cannot queue a PUBACK; the broker will redeliver");
            }
        }
    }

    async fn publish_ack(&self, device_id: &str, committed_seq: u64) {
        tracing::trace!(device_id, committed_seq, "mqtt ack published");
        let ack = pb::IngestAck {
            device_id: device_id.to_owned(),
            committed_seq,
        };
        let down = pb::DeviceDownlink {
            body: Some(pb::device_downlink::Body::Ack(ack)),
        };
        let payload = down.encode_to_vec();
        if let Err(e) = self
            .client
            .publish(down_topic(device_id), QoS::AtLeastOnce, false, payload)
            .await
        {
            tracing::warn!(error = %e, device_id, "cannot publish an ack downlink");
        }
    }
}
