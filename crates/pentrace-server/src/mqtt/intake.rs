//! From broker to pipeline and back: validates each publish, queues it for
//! ingest, and PUBACKs in arrival order once its outcome is final — a later
//! message's PUBACK waits for every earlier one. The device hears of each
//! outcome on its `down` topic: acks of stored seqs (see
//! [`crate::downlink`]) and a rejection, with its reason, for every message
//! that is not stored. A message the server may store later (it is
//! stopping) is not acknowledged to the broker, which delivers it again.
//!
//! After a reconnect the broker redelivers whatever was not acknowledged,
//! under the same packet ids; entries from an earlier connection are then
//! never acknowledged (their redelivered copies are), so one packet id is
//! never acknowledged twice.

use std::collections::{HashMap, VecDeque};

use chrono::Utc;
use pentrace_ingest::{Disposition, Envelope, IngestHandle, Outcome};
use pentrace_proto::v1 as pb;
use pentrace_proto::v1::device_downlink::Body;
use prost::Message;
use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{device_of_topic, down_topic};
use crate::convert;
use crate::downlink::{self, AckRound, downlink};

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
    round: AckRound,
}

/// A publish refused before the pipeline: counted under `label`, answered
/// on the topic's device's `down` topic when there is one.
struct Refused {
    label: &'static str,
    answer: Option<pb::Rejection>,
}

impl Refused {
    fn silent(label: &'static str) -> Refused {
        Refused {
            label,
            answer: None,
        }
    }

    fn answered(
        label: &'static str,
        device_id: &str,
        seq: u64,
        code: pb::RejectCode,
        detail: String,
    ) -> Refused {
        Refused {
            label,
            answer: Some(downlink::refusal(device_id, seq, code, detail)),
        }
    }
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
            round: AckRound::default(),
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
                    self.settle(outcome).await;
                    while let Ok(more) = outcomes.try_recv() {
                        self.settle(more).await;
                    }
                    for ack in self.round.take() {
                        let device_id = ack.device_id.clone();
                        self.publish_down(&device_id, Body::Ack(ack)).await;
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
                    Some(Inbound::Publish(p)) => { self.receive(p, &reply).await; self.flush().await; }
                    Some(Inbound::Connected) => self.connection += 1,
                    None => accepting = false,
                },
                _ = shutdown.cancelled(), if accepting => accepting = false,
            }
        }
        self.flush().await;
    }

    /// Validates one publish; a refused one is counted, answered and
    /// acknowledged so it is not redelivered forever.
    async fn receive(&mut self, publish: Publish, reply: &mpsc::UnboundedSender<Outcome>) {
        let id = self.first_id + self.entries.len() as u64;
        let received_at = Utc::now();
        let state = match self.validate(&publish, received_at) {
            Ok(message) => {
                tracing::trace!(device_id = %message.device_id, seq = message.seq, "mqtt message received");
                let key = (message.device_id.clone(), message.seq);
                self.waiting.entry(key).or_default().push(id);
                let envelope = Envelope {
                    message,
                    received_at,
                    payload: publish.payload.clone(),
                    transport: "mqtt",
                    reply: reply.clone(),
                };
                self.to_submit.push_back(envelope);
                State::Waiting
            }
            Err(refused) => {
                self.ingest.metrics().reject(refused.label);
                tracing::debug!(topic = %publish.topic, reason = refused.label, "mqtt message refused");
                if let Some(answer) = refused.answer {
                    let device_id = answer.device_id.clone();
                    self.publish_down(&device_id, Body::Rejection(answer)).await;
                }
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
        received_at: chrono::DateTime<Utc>,
    ) -> Result<pentrace_domain::message::DeviceMessage, Refused> {
        use pb::RejectCode as C;
        let topic_device = device_of_topic(&p.topic).ok_or(Refused::silent("bad_topic"))?;
        if p.payload.len() > self.max_message_bytes {
            let detail = format!(
                "message of {} bytes; at most {}",
                p.payload.len(),
                self.max_message_bytes
            );
            return Err(Refused::answered(
                "oversized",
                topic_device,
                0,
                C::Oversized,
                detail,
            ));
        }
        let wire = pb::DeviceMessage::decode(p.payload.as_ref()).map_err(|e| {
            let detail = format!("not a DeviceMessage: {e}");
            Refused::answered("undecodable", topic_device, 0, C::Undecodable, detail)
        })?;
        // The topic is what the broker authenticated (ACL); a payload naming
        // another device is spoofing. Answered to the topic's device only.
        if wire.device_id != topic_device {
            let detail = format!(
                "the payload names device {:?}, the topic device {topic_device:?}",
                wire.device_id
            );
            return Err(Refused::answered(
                "device_mismatch",
                topic_device,
                wire.seq,
                C::DeviceMismatch,
                detail,
            ));
        }
        let seq = wire.seq;
        convert::device_message(wire, received_at).map_err(|e| {
            Refused::answered(
                "invalid_message",
                topic_device,
                seq,
                C::Invalid,
                e.to_string(),
            )
        })
    }

    async fn settle(&mut self, o: Outcome) {
        let state = match &o.disposition {
            Disposition::Rejected(reason) if reason.is_retryable() => State::Hold,
            _ => State::Ack,
        };
        tracing::trace!(device_id = %o.device_id, seq = o.seq, disposition = ?o.disposition, "mqtt message settled");
        if let Some(rejection) = self.round.add(&o) {
            self.publish_down(&o.device_id, Body::Rejection(rejection))
                .await;
        }
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

    async fn publish_down(&self, device_id: &str, body: Body) {
        tracing::trace!(device_id, ?body, "mqtt downlink published");
        let payload = downlink(body).encode_to_vec();
        if let Err(e) = self
            .client
            .publish(down_topic(device_id), QoS::AtLeastOnce, false, payload)
            .await
        {
            tracing::warn!(error = %e, device_id, "cannot publish a downlink");
        }
    }
}
