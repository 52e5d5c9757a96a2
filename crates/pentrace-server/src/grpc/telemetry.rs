//! `Telemetry.Ingest`: pens (or a gateway for many pens) stream messages
//! in; the device downlink streams out — acks of stored seqs, a rejection
//! for each message that is not stored, and `RejectCartridge` for the
//! sessions of the devices on the stream. A bad message is answered and
//! the stream goes on; it ends only on a transport error (an undecodable
//! or oversized frame is one: tonic cannot read past it) or at shutdown.
//!
//! Every stream is a device's (issue 13): a pen's client certificate
//! (mTLS) or secret (`authorization: Bearer pds_…`), or a gateway's secret.
//! A stream without a valid credential is refused (UNAUTHENTICATED); a
//! message for a device the credential may not speak for is answered with
//! a PERMISSION_DENIED rejection and nothing of it is stored. A credential
//! revoked meanwhile ends the stream within [`REVALIDATE_EVERY`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use chrono::Utc;
use pentrace_ingest::{Envelope, IngestHandle, Outcome};
use pentrace_proto::v1 as pb;
use pentrace_proto::v1::device_downlink::Body;
use pentrace_proto::v1::telemetry_server::Telemetry;
use pentrace_store::FlagRecord;
use prost::Message;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::convert;
use crate::device_auth::{
    AuthFailure, ConnectionGuard, DeviceAuthenticator, DeviceIdentity, Permit, REVALIDATE_EVERY,
};
use crate::downlink::{self, AckRound, downlink};

/// The Telemetry service.
#[derive(Debug, Clone)]
pub struct TelemetryService {
    ingest: IngestHandle,
    auth: DeviceAuthenticator,
    shutdown: CancellationToken,
}

impl TelemetryService {
    pub fn new(
        ingest: IngestHandle,
        auth: DeviceAuthenticator,
        shutdown: CancellationToken,
    ) -> Self {
        TelemetryService {
            ingest,
            auth,
            shutdown,
        }
    }

    /// The device a stream belongs to: its client certificate when it
    /// presented one, else the secret in its metadata.
    async fn identify<T>(&self, request: &Request<T>) -> Result<DeviceIdentity, AuthFailure> {
        if let Some(leaf) = request.peer_certs().as_deref().and_then(|c| c.first()) {
            return self.auth.by_certificate(leaf.as_ref()).await;
        }
        let secret = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(AuthFailure::Missing)?;
        self.auth.by_secret(secret).await
    }
}

fn refusal_status(failure: &AuthFailure) -> Status {
    match failure {
        AuthFailure::Unavailable => Status::unavailable(failure.to_string()),
        f if f.is_unauthenticated() => Status::unauthenticated(f.to_string()),
        f => Status::permission_denied(f.to_string()),
    }
}

type DownlinkStream = Pin<Box<dyn Stream<Item = Result<pb::DeviceDownlink, Status>> + Send>>;

#[tonic::async_trait]
impl Telemetry for TelemetryService {
    type IngestStream = DownlinkStream;

    async fn ingest(
        &self,
        request: Request<Streaming<pb::DeviceMessage>>,
    ) -> Result<Response<DownlinkStream>, Status> {
        let peer = request.remote_addr();
        let identity = match self.identify(&request).await {
            Ok(identity) => identity,
            Err(failure) => {
                if !matches!(failure, AuthFailure::Unavailable) {
                    self.auth.refused(&failure, "grpc", peer).await;
                }
                return Err(refusal_status(&failure));
            }
        };
        let (tx, rx) = mpsc::channel(256);
        let connection = self.auth.connected(&identity, "grpc");
        let stream = IngestStream {
            permitted: HashSet::new(),
            identity,
            peer,
            auth: self.auth.clone(),
            _connection: connection,
            inbound: request.into_inner(),
            flags: self.ingest.subscribe_flags(),
            flags_open: true,
            ingest: self.ingest.clone(),
            out: tx,
            round: AckRound::default(),
            devices: HashSet::new(),
            unresolved: 0,
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(stream.run());
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One client stream.
struct IngestStream {
    identity: DeviceIdentity,
    peer: Option<SocketAddr>,
    auth: DeviceAuthenticator,
    /// Devices the identity was found to speak for (a gateway's lookups).
    permitted: HashSet<String>,
    _connection: ConnectionGuard,
    inbound: Streaming<pb::DeviceMessage>,
    flags: broadcast::Receiver<Arc<FlagRecord>>,
    flags_open: bool,
    ingest: IngestHandle,
    out: mpsc::Sender<Result<pb::DeviceDownlink, Status>>,
    round: AckRound,
    /// Devices that sent on this stream: their cartridge rejections go here.
    devices: HashSet<String>,
    /// Messages submitted whose outcome has not arrived.
    unresolved: usize,
    shutdown: CancellationToken,
}

/// The client went away: stop.
struct Gone;

impl IngestStream {
    async fn run(mut self) {
        let (reply, mut outcomes) = mpsc::unbounded_channel();
        let mut end: Option<Status> = None;
        let mut reading = true;
        let mut revalidate = tokio::time::interval(REVALIDATE_EVERY);
        revalidate.tick().await;
        loop {
            if !reading && self.unresolved == 0 {
                break;
            }
            let step = tokio::select! {
                next = self.inbound.message(), if reading => match next {
                    Ok(Some(m)) => self.submit(m, &reply).await,
                    Ok(None) => { reading = false; Ok(()) }
                    Err(status) => {
                        end = Some(self.inbound_error(status));
                        reading = false;
                        Ok(())
                    }
                },
                Some(outcome) = outcomes.recv() => {
                    self.settle(outcome).await.and({
                        let mut more = Ok(());
                        while let Ok(o) = outcomes.try_recv() {
                            more = more.and(self.settle(o).await);
                        }
                        more
                    })
                    .and(self.send_acks().await)
                }
                flag = self.flags.recv(), if self.flags_open => self.on_flag(flag).await,
                _ = revalidate.tick(), if reading => {
                    // A store outage does not end a stream of a valid pen.
                    if let Err(failure @ (AuthFailure::Revoked { .. } | AuthFailure::Expired { .. } | AuthFailure::Unknown)) =
                        self.auth.still_valid(&self.identity).await
                    {
                        self.auth.refused(&failure, "grpc", self.peer).await;
                        end = Some(refusal_status(&failure));
                        reading = false;
                    }
                    Ok(())
                }
                _ = self.shutdown.cancelled(), if reading => {
                    end = Some(Status::unavailable(
                        "server is shutting down; reconnect and resend what is not acknowledged",
                    ));
                    reading = false;
                    Ok(())
                }
            };
            if step.is_err() {
                // The client is gone; what it sent is stored or not, and
                // what is not acknowledged it resends.
                return;
            }
        }
        if let Some(status) = end {
            let _ = self.out.send(Err(status)).await;
        }
    }

    /// Validates and queues one message; a message that cannot be keyed is
    /// answered with a rejection.
    async fn submit(
        &mut self,
        m: pb::DeviceMessage,
        reply: &mpsc::UnboundedSender<Outcome>,
    ) -> Result<(), Gone> {
        let received_at = Utc::now();
        let (device_id, seq) = (m.device_id.clone(), m.seq);
        if let Err(failure) = self.permit(&device_id).await {
            // A store outage is no denial: resend later.
            let retry = matches!(failure, AuthFailure::Unavailable);
            let (label, code) = if retry {
                ("unavailable", pb::RejectCode::Unavailable)
            } else {
                ("permission_denied", pb::RejectCode::PermissionDenied)
            };
            self.ingest.metrics().reject(label);
            if !retry {
                self.auth.refused(&failure, "grpc", self.peer).await;
            }
            let mut r = downlink::refusal(&device_id, seq, code, failure.to_string());
            r.retry = retry;
            return self.send(Body::Rejection(r)).await;
        }
        let payload = bytes::Bytes::from(m.encode_to_vec());
        let message = match convert::device_message(m, received_at) {
            Ok(message) => message,
            Err(e) => {
                self.ingest.metrics().reject("invalid_message");
                let r = downlink::refusal(&device_id, seq, pb::RejectCode::Invalid, e.to_string());
                return self.send(Body::Rejection(r)).await;
            }
        };
        self.devices.insert(message.device_id.clone());
        let envelope = Envelope {
            message,
            received_at,
            payload,
            transport: "grpc",
            reply: reply.clone(),
        };
        match self.ingest.submit(envelope).await {
            Ok(()) => self.unresolved += 1,
            Err(_) => {
                // The pipeline is gone: the server is stopping.
                let r = pb::Rejection {
                    device_id,
                    seq,
                    code: pb::RejectCode::Unavailable as i32,
                    detail: "not stored: the server is stopping; resend it".into(),
                    retry: true,
                };
                return self.send(Body::Rejection(r)).await;
            }
        }
        Ok(())
    }

    /// Whether the stream's identity may send for the device.
    async fn permit(&mut self, device_id: &str) -> Result<(), AuthFailure> {
        if self.permitted.contains(device_id) {
            return Ok(());
        }
        if self.auth.may_send_for(&self.identity, device_id).await? == Permit::Registered {
            // Bounded by the devices a gateway's clinic has.
            self.permitted.insert(device_id.to_owned());
        }
        Ok(())
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

    async fn settle(&mut self, o: Outcome) -> Result<(), Gone> {
        self.unresolved = self.unresolved.saturating_sub(1);
        match self.round.add(&o) {
            Some(rejection) => self.send(Body::Rejection(rejection)).await,
            None => Ok(()),
        }
    }

    async fn send_acks(&mut self) -> Result<(), Gone> {
        for ack in self.round.take() {
            self.send(Body::Ack(ack)).await?;
        }
        Ok(())
    }

    /// Tells a device on this stream to stop using a cartridge.
    async fn on_flag(&mut self, flag: Result<Arc<FlagRecord>, RecvError>) -> Result<(), Gone> {
        let flag = match flag {
            Ok(flag) => flag,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "a telemetry stream fell behind the flag feed");
                return Ok(());
            }
            // The pipeline is gone; nothing more will come.
            Err(RecvError::Closed) => {
                self.flags_open = false;
                return Ok(());
            }
        };
        if !self.devices.contains(&flag.device_id) {
            return Ok(());
        }
        match downlink::reject_cartridge(&flag) {
            Some(command) => self.send(Body::RejectCartridge(command)).await,
            None => Ok(()),
        }
    }

    async fn send(&self, body: Body) -> Result<(), Gone> {
        self.out.send(Ok(downlink(body))).await.map_err(|_| Gone)
    }
}
