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

use std::collections::VecDeque;

use chrono::Utc;
use pentrace_ingest::{Disposition, Envelope, IngestHandle, Outcome};
use pentrace_proto::v1::device_downlink::Body;
use prost::Message;
use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::order::{ArrivalOrder, Settled};
use super::uplink::{self, Refused};
use super::{device_of_topic, down_topic};
use crate::downlink::{AckRound, downlink};

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

/// A received publish and the connection it came on.
#[derive(Debug)]
struct Entry {
    publish: Publish,
    connection: u64,
}

/// The intake task's state.
#[derive(Debug)]
pub struct Intake {
    client: AsyncClient,
    ingest: IngestHandle,
    max_message_bytes: usize,
    connection: u64,
    /// Received publishes in arrival order, with their outcome once known.
    order: ArrivalOrder<Entry>,
    to_submit: VecDeque<Envelope>,
    round: AckRound,
}

impl Intake {
    pub fn new(client: AsyncClient, ingest: IngestHandle, max_message_bytes: usize) -> Self {
        Intake {
            client,
            ingest,
            max_message_bytes,
            connection: 0,
            order: ArrivalOrder::default(),
            to_submit: VecDeque::new(),
            round: AckRound::default(),
        }
    }

    /// Runs until `shutdown`, then until everything taken is settled.
    pub async fn run(mut self, mut events: mpsc::Receiver<Inbound>, shutdown: CancellationToken) {
        let (reply, mut outcomes) = mpsc::unbounded_channel();
        let mut accepting = true;
        loop {
            if !accepting && self.to_submit.is_empty() && self.order.waiting() == 0 {
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
        let received_at = Utc::now();
        let checked = device_of_topic(&publish.topic)
            .ok_or(Refused::silent("bad_topic"))
            .and_then(|device| {
                uplink::message(
                    device,
                    &publish.payload,
                    self.max_message_bytes,
                    received_at,
                )
            });
        let entry = Entry {
            publish,
            connection: self.connection,
        };
        match checked {
            Ok(message) => {
                tracing::trace!(device_id = %message.device_id, seq = message.seq, "mqtt message received");
                let key = (message.device_id.clone(), message.seq);
                let envelope = Envelope {
                    message,
                    received_at,
                    payload: entry.publish.payload.clone(),
                    transport: "mqtt",
                    reply: reply.clone(),
                };
                self.to_submit.push_back(envelope);
                self.order.push_waiting(key, entry);
            }
            Err(refused) => {
                self.ingest.metrics().reject(refused.label);
                tracing::debug!(topic = %entry.publish.topic, reason = refused.label, "mqtt message refused");
                if let Some(answer) = refused.answer {
                    let device_id = answer.device_id.clone();
                    self.publish_down(&device_id, Body::Rejection(answer)).await;
                }
                self.order.push_settled(entry, Settled::Ack);
            }
        }
    }

    async fn settle(&mut self, o: Outcome) {
        let state = match &o.disposition {
            Disposition::Rejected(reason) if reason.is_retryable() => Settled::Hold,
            _ => Settled::Ack,
        };
        tracing::trace!(device_id = %o.device_id, seq = o.seq, disposition = ?o.disposition, "mqtt message settled");
        if let Some(rejection) = self.round.add(&o) {
            self.publish_down(&o.device_id, Body::Rejection(rejection))
                .await;
        }
        self.order.settle(&(o.device_id, o.seq), state);
    }

    /// PUBACKs every settled entry at the front, in order.
    async fn flush(&mut self) {
        while let Some((entry, state)) = self.order.pop_settled() {
            let current = entry.connection == self.connection;
            if state == Settled::Ack
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
