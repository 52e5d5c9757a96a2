//! `Telemetry.Ingest`: pens stream messages in, acks of committed seqs
//! stream out. A bad message ends the stream with a clear status, but only
//! after every message before it has been committed and acknowledged.

use std::pin::Pin;

use chrono::Utc;
use pentrace_ingest::{Disposition, Envelope, IngestHandle, Outcome, RejectReason};
use pentrace_proto::v1 as pb;
use pentrace_proto::v1::telemetry_server::Telemetry;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, Streaming};

use super::acks::AckTracker;
use crate::convert;

/// The Telemetry service.
#[derive(Debug, Clone)]
pub struct TelemetryService {
    ingest: IngestHandle,
    shutdown: CancellationToken,
}

impl TelemetryService {
    pub fn new(ingest: IngestHandle, shutdown: CancellationToken) -> Self {
        TelemetryService { ingest, shutdown }
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::IngestAck, Status>> + Send>>;

#[tonic::async_trait]
impl Telemetry for TelemetryService {
    type IngestStream = AckStream;

    async fn ingest(
        &self,
        request: Request<Streaming<pb::DeviceMessage>>,
    ) -> Result<Response<AckStream>, Status> {
        let (tx, rx) = mpsc::channel(256);
        let stream = IngestStream {
            inbound: request.into_inner(),
            ingest: self.ingest.clone(),
            out: tx,
            acks: AckTracker::default(),
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(stream.run());
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One client stream.
struct IngestStream {
    inbound: Streaming<pb::DeviceMessage>,
    ingest: IngestHandle,
    out: mpsc::Sender<Result<pb::IngestAck, Status>>,
    acks: AckTracker,
    shutdown: CancellationToken,
}

impl IngestStream {
    async fn run(mut self) {
        let (reply, mut outcomes) = mpsc::unbounded_channel();
        let mut end: Option<Status> = None;
        let mut reading = true;
        loop {
            if (!reading || end.is_some()) && self.acks.unresolved() == 0 {
                break;
            }
            tokio::select! {
                next = self.inbound.message(), if reading && end.is_none() => {
                    match next {
                        Ok(Some(m)) => end = self.submit(m, &reply).await,
                        Ok(None) => reading = false,
                        Err(status) => end = Some(self.inbound_error(status)),
                    }
                }
                Some(outcome) = outcomes.recv() => {
                    self.settle(outcome, &mut end);
                    while let Ok(more) = outcomes.try_recv() {
                        self.settle(more, &mut end);
                    }
                    if !self.send_acks().await {
                        reading = false; // the client is gone
                    }
                }
                _ = self.shutdown.cancelled(), if reading && end.is_none() => {
                    end = Some(Status::unavailable("server is shutting down; reconnect and resend unacknowledged messages"));
                }
            }
        }
        if let Some(status) = end {
            let _ = self.out.send(Err(status)).await;
        }
    }

    /// Validates and queues one message; a status ends the stream.
    async fn submit(
        &mut self,
        m: pb::DeviceMessage,
        reply: &mpsc::UnboundedSender<Outcome>,
    ) -> Option<Status> {
        let received_at = Utc::now();
        let message = match convert::device_message(m, received_at) {
            Ok(message) => message,
            Err(e) => {
                self.ingest.metrics().reject("invalid_message");
                return Some(Status::invalid_argument(e.to_string()));
            }
        };
        self.acks.received(&message.device_id, message.seq);
        let envelope = Envelope {
            message,
            received_at,
            reply: reply.clone(),
        };
        match self.ingest.submit(envelope).await {
            Ok(()) => None,
            Err(_) => Some(Status::unavailable("server is shutting down")),
        }
    }

    /// Maps a transport-level error of the inbound stream to what the client
    /// is told, and counts it.
    fn inbound_error(&self, status: Status) -> Status {
        let metrics = self.ingest.metrics();
        match status.code() {
            Code::OutOfRange => {
                metrics.reject("oversized");
                Status::out_of_range(status.message().to_owned())
            }
            // tonic reports undecodable protobuf as INTERNAL.
            Code::Internal if status.message().contains("decode") => {
                metrics.reject("undecodable");
                Status::invalid_argument(format!("undecodable message: {}", status.message()))
            }
            _ => status,
        }
    }

    fn settle(&mut self, o: Outcome, end: &mut Option<Status>) {
        let stored = o.disposition.is_stored();
        if let Disposition::Rejected(reason) = &o.disposition
            && end.is_none()
        {
            *end = Some(rejection_status(&o, reason));
        }
        self.acks.resolved(&o.device_id, o.seq, stored);
    }

    async fn send_acks(&mut self) -> bool {
        for (device_id, committed_seq) in self.acks.take_acks() {
            let ack = pb::IngestAck {
                device_id,
                committed_seq,
            };
            if self.out.send(Ok(ack)).await.is_err() {
                return false;
            }
        }
        true
    }
}

fn rejection_status(o: &Outcome, reason: &RejectReason) -> Status {
    match reason {
        RejectReason::UnknownDevice => Status::failed_precondition(format!(
            "device {:?} is not registered (register it with Registry.RegisterDevice, \
             or run the server with --auto-register)",
            o.device_id
        )),
        RejectReason::StoreRejected(why) => Status::invalid_argument(format!(
            "message seq {} of device {:?} was refused by the store: {why}",
            o.seq, o.device_id
        )),
        RejectReason::ShuttingDown => Status::unavailable(
            "server is shutting down; reconnect and resend unacknowledged messages",
        ),
    }
}
