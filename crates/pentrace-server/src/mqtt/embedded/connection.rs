//! One device connection: CONNECT authenticated with the device secret,
//! then the same per-stream structure as `Telemetry.Ingest`
//! (`grpc/telemetry.rs`): publishes in, submitted to the pipeline; outcomes
//! back as PUBACKs in arrival order plus acks and rejections on the
//! device's `down` topic; `RejectCartridge` for the devices it speaks for.
//!
//! Downlinks are published with QoS 0 (and subscriptions granted with
//! QoS 0): the server holds no session, so a QoS 1 downlink lost with its
//! connection would not be sent again anyway. What a lost ack covered the
//! pen resends (on reconnect), and the resend is acknowledged again as a
//! duplicate; a lost `RejectCartridge` is lost as with a clean-session
//! client of Mosquitto.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use pentrace_ingest::metrics::Label;
use pentrace_ingest::{Disposition, Envelope, IngestHandle, Outcome};
use pentrace_proto::v1::device_downlink::Body;
use pentrace_store::FlagRecord;
use prost::Message;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, Publish, SubAck, Subscribe,
    SubscribeReasonCode, UnsubAck, Unsubscribe,
};
use rumqttc::mqttbytes::{Protocol, QoS};
use tokio::net::TcpStream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::access::{self, FilterRequest, Grant};
use super::wire::{PacketReader, PacketWriter, WireError};
use super::{Sessions, TRANSPORT};
use crate::device_auth::{AuthFailure, DeviceAuthenticator, DeviceIdentity, Permit};
use crate::downlink::{self, AckRound, downlink};
use crate::mqtt::MqttMetrics;
use crate::mqtt::down_topic;
use crate::mqtt::order::{ArrivalOrder, Settled};
use crate::mqtt::uplink;

/// A connection that has not sent its CONNECT by then is closed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest packet before authentication (CONNECT: ids, credentials, a
/// will): a stranger cannot make the server buffer a megabyte.
const CONNECT_PACKET_BYTES: usize = 64 * 1024;

/// Publishes taken from one connection and not yet acknowledged: past
/// either limit the connection's socket is not read until outcomes come
/// back. Far above a client's in-flight window (rumqttc: 100, Mosquitto's
/// clients: 20), so only a client that ignores its own window waits.
const MAX_UNSETTLED: usize = 1000;
const MAX_UNSETTLED_BYTES: usize = 16 * 1024 * 1024;

/// How long a closed connection waits for the peer to close its side
/// (see [`PacketReader::drain`]).
const LINGER: Duration = Duration::from_secs(2);

/// How often a connected credential is checked again (revoked → closed):
/// as often as a gRPC stream's.
pub(super) const RECHECK_INTERVAL: Duration = crate::device_auth::REVALIDATE_EVERY;

/// What every connection shares.
#[derive(Debug)]
pub(super) struct Shared {
    pub ingest: IngestHandle,
    pub auth: DeviceAuthenticator,
    pub metrics: MqttMetrics,
    pub sessions: Sessions,
    pub max_message_bytes: usize,
    /// Largest packet read once authenticated (remaining length).
    pub max_packet_bytes: usize,
    pub recheck_interval: Duration,
    pub shutdown: CancellationToken,
}

/// Why a connection ended.
#[derive(Debug)]
enum Close {
    Wire(WireError),
    /// The client sent DISCONNECT.
    Disconnect,
    /// Another connection with the same client id took over.
    TakenOver,
    /// The credential is no longer valid.
    Revoked,
    /// A PUBLISH on a topic the identity may not use (MQTT 3.1.1 §3.3.5).
    Denied,
    /// Whether a gateway may send for a device could not be checked (the
    /// store is away): not a denial; the pen resends what was not PUBACKed.
    Unavailable,
    /// No packet for 1.5 × the keep-alive.
    KeepAlive,
    /// A packet a client must not send (QoS 2 flows, a second CONNECT, a
    /// server's packet).
    Protocol(&'static str),
    /// The pipeline is gone (the server is stopping).
    PipelineGone,
    /// Shutdown: everything taken is settled.
    Drained,
}

impl Close {
    fn label(&self) -> &'static str {
        match self {
            Close::Wire(e) => e.label(),
            Close::Disconnect => "disconnect",
            Close::TakenOver => "taken_over",
            Close::Revoked => "revoked",
            Close::Denied => "denied",
            Close::Unavailable => "store_unavailable",
            Close::KeepAlive => "keep_alive",
            Close::Protocol(why) => why,
            Close::PipelineGone | Close::Drained => "shutdown",
        }
    }
}

/// Serves one TCP connection until it ends.
pub(super) async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut reader = PacketReader::new(read, CONNECT_PACKET_BYTES);
    let mut writer = PacketWriter::new(write);
    let Some((identity, connect)) = handshake(&mut reader, &mut writer, peer, &shared).await else {
        writer.close().await;
        reader.drain(LINGER).await;
        return;
    };
    reader.set_max_packet_bytes(shared.max_packet_bytes);
    // Before the take-over, so that two live connections of one credential
    // are seen (and reported) by the authenticator.
    let guard = shared.auth.connected(&identity, TRANSPORT);
    let ticket = shared.sessions.take_over(&connect.client_id);
    if ticket.replaced {
        shared.metrics.takeovers.inc();
        tracing::info!(client_id = %connect.client_id, %peer, "mqtt connection taken over by a new one");
    }
    shared.metrics.connections.inc();
    tracing::debug!(client_id = %connect.client_id, %peer, "mqtt device connected");
    let keep_alive = (connect.keep_alive > 0)
        .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
    let connection = Connection {
        reader,
        writer,
        flags: shared.ingest.subscribe_flags(),
        flags_open: true,
        identity,
        peer,
        keep_alive,
        last_packet: Instant::now(),
        grants: Vec::new(),
        speaks_for: HashSet::new(),
        order: ArrivalOrder::default(),
        held_bytes: 0,
        to_submit: VecDeque::new(),
        round: AckRound::default(),
        shared: shared.clone(),
    };
    let (close, reader, writer) = connection.run(ticket.kicked.clone()).await;
    shared
        .metrics
        .disconnects
        .get_or_create(&Label {
            name: close.label(),
        })
        .inc();
    tracing::debug!(client_id = %connect.client_id, %peer, reason = ?close, "mqtt device disconnected");
    shared.sessions.leave(&connect.client_id, ticket.id);
    shared.metrics.connections.dec();
    drop(guard);
    writer.close().await;
    reader.drain(LINGER).await;
}

/// Reads the CONNECT and answers it; the identity when it is accepted.
async fn handshake(
    reader: &mut PacketReader,
    writer: &mut PacketWriter,
    peer: SocketAddr,
    shared: &Shared,
) -> Option<(DeviceIdentity, Connect)> {
    let first = tokio::select! {
        first = tokio::time::timeout(CONNECT_TIMEOUT, reader.next()) => first,
        _ = shared.shutdown.cancelled() => return None,
    };
    let refuse = |label: &'static str| {
        shared
            .metrics
            .refused_connects
            .get_or_create(&Label { name: label })
            .inc();
        tracing::debug!(%peer, reason = label, "mqtt connection refused");
    };
    let connect = match first {
        Ok(Ok(Packet::Connect(connect))) => connect,
        Ok(Ok(_)) => {
            refuse("not_connect");
            return None;
        }
        Ok(Err(e)) => {
            refuse(e.label());
            return None;
        }
        Err(_) => {
            refuse("connect_timeout");
            return None;
        }
    };
    let answer = |code| Packet::ConnAck(ConnAck::new(code, false));
    if connect.protocol != Protocol::V4 {
        // Only MQTT 3.1.1 (§3.1.2.2: answer 0x01 and close).
        refuse("protocol_version");
        writer.queue(&answer(ConnectReturnCode::RefusedProtocolVersion));
        return None;
    }
    let identity = match authenticate(&shared.auth, &connect).await {
        Ok(identity) => identity,
        Err(failure) => {
            refuse(failure.reason());
            // A store outage is no attempt to record (and could not be).
            if failure != AuthFailure::Unavailable {
                shared.auth.refused(&failure, TRANSPORT, Some(peer)).await;
            }
            tracing::info!(%peer, client_id = %connect.client_id, %failure, "mqtt connection refused");
            writer.queue(&answer(connack_code(&failure)));
            return None;
        }
    };
    if shared.shutdown.is_cancelled() {
        refuse("shutting_down");
        writer.queue(&answer(ConnectReturnCode::ServiceUnavailable));
        return None;
    }
    // No session is kept: session_present is always false, whatever the
    // clean-session flag asked (MQTT 3.1.1 §3.2.2.2), and a will is never
    // published (nobody but the server subscribes to anything).
    writer.queue(&answer(ConnectReturnCode::Success));
    if let Err(e) = writer.flush().await {
        tracing::debug!(%peer, error = %e, "mqtt connection lost before its CONNACK");
        return None;
    }
    Some((identity, connect))
}

/// The identity of a CONNECT: the password is the device secret; username
/// and client id must both be the identity's principal (its device id, or
/// the gateway's name), so no one can take another's client id.
async fn authenticate(
    auth: &DeviceAuthenticator,
    connect: &Connect,
) -> Result<DeviceIdentity, AuthFailure> {
    let Some(login) = connect.login.as_ref().filter(|l| !l.password.is_empty()) else {
        return Err(AuthFailure::Missing);
    };
    let identity = auth.by_secret(&login.password).await?;
    if login.username != identity.principal() {
        return Err(denied(
            &identity,
            format!("MQTT username {:?} is not the credential's", login.username),
        ));
    }
    if connect.client_id != identity.principal() {
        return Err(denied(
            &identity,
            format!(
                "MQTT client id {:?} is not the credential's principal",
                connect.client_id
            ),
        ));
    }
    Ok(identity)
}

/// The CONNACK return code of a refused CONNECT (MQTT 3.1.1 §3.2.2.3).
fn connack_code(failure: &AuthFailure) -> ConnectReturnCode {
    match failure {
        AuthFailure::Unknown => ConnectReturnCode::BadUserNamePassword,
        AuthFailure::Unavailable => ConnectReturnCode::ServiceUnavailable,
        // Authenticated, but with another client id.
        AuthFailure::Denied { what, .. } if what.contains("client id") => {
            ConnectReturnCode::BadClientId
        }
        _ => ConnectReturnCode::NotAuthorized,
    }
}

/// A refusal by this transport's own rules.
fn denied(identity: &DeviceIdentity, what: String) -> AuthFailure {
    AuthFailure::Denied {
        credential_id: Some(identity.credential_id()),
        principal: identity.principal().to_owned(),
        clinic_id: Some(identity.clinic_id().to_owned()),
        what,
    }
}

/// A publish taken and not yet acknowledged.
#[derive(Debug)]
struct Pending {
    /// None for QoS 0 (nothing to acknowledge).
    pkid: Option<u16>,
    bytes: usize,
}

/// An authenticated connection.
struct Connection {
    reader: PacketReader,
    writer: PacketWriter,
    flags: broadcast::Receiver<Arc<FlagRecord>>,
    flags_open: bool,
    identity: DeviceIdentity,
    peer: SocketAddr,
    /// 1.5 × the client's keep-alive; None when it asked for none.
    keep_alive: Option<Duration>,
    last_packet: Instant,
    /// Subscriptions granted.
    grants: Vec<Grant>,
    /// Devices the authenticator let this connection send for; asked again
    /// after every re-check of the credential.
    speaks_for: HashSet<String>,
    /// Publishes taken, in arrival order, until acknowledged.
    order: ArrivalOrder<Pending>,
    /// Payload bytes of `order`.
    held_bytes: usize,
    /// Validated, waiting for room in the pipeline's queue.
    to_submit: VecDeque<Envelope>,
    round: AckRound,
    shared: Arc<Shared>,
}

/// The connection must end.
type Step = Result<(), Close>;

impl Connection {
    async fn run(mut self, kicked: CancellationToken) -> (Close, PacketReader, PacketWriter) {
        let (reply, mut outcomes) = mpsc::unbounded_channel();
        let every = self.shared.recheck_interval;
        let mut recheck = tokio::time::interval_at(Instant::now() + every, every);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reading = true;
        let close = loop {
            if let Err(close) = self.take_buffered(reading, &reply).await {
                break close;
            }
            if let Err(e) = self.writer.flush().await {
                break Close::Wire(e);
            }
            if !reading && self.to_submit.is_empty() && self.order.waiting() == 0 {
                break Close::Drained;
            }
            if !self.has_room() {
                // The server is not reading: the client cannot be late.
                self.last_packet = Instant::now();
            }
            let listening = reading && self.has_room();
            let deadline = self
                .keep_alive
                .map(|k| self.last_packet + k)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let ingest = self.shared.ingest.clone();
            let next_writer = self
                .to_submit
                .front()
                .map(|e| ingest.writer_of(&e.message.device_id));
            let step: Step = tokio::select! {
                biased;
                _ = kicked.cancelled() => Err(Close::TakenOver),
                Some(outcome) = outcomes.recv() => {
                    self.settle(outcome);
                    while let Ok(more) = outcomes.try_recv() {
                        self.settle(more);
                    }
                    for ack in self.round.take() {
                        let device_id = ack.device_id.clone();
                        self.deliver(&device_id, Body::Ack(ack));
                    }
                    self.acknowledge();
                    Ok(())
                }
                slot = ingest.reserve(next_writer.unwrap_or_default()), if next_writer.is_some() => {
                    match (slot, self.to_submit.pop_front()) {
                        (Ok(slot), Some(envelope)) => {
                            slot.send(envelope);
                            Ok(())
                        }
                        _ => Err(Close::PipelineGone),
                    }
                }
                read = self.reader.fill(), if listening => read.map_err(Close::Wire),
                flag = self.flags.recv(), if self.flags_open => {
                    self.on_flag(flag);
                    Ok(())
                }
                _ = recheck.tick() => self.recheck().await,
                _ = tokio::time::sleep_until(deadline), if listening && self.keep_alive.is_some() => {
                    Err(Close::KeepAlive)
                }
                _ = self.shared.shutdown.cancelled(), if reading => {
                    // Stop taking publishes; settle what was taken.
                    reading = false;
                    Ok(())
                }
            };
            if let Err(close) = step {
                break close;
            }
        };
        (close, self.reader, self.writer)
    }

    /// Whether another publish may be taken.
    fn has_room(&self) -> bool {
        self.order.len() < MAX_UNSETTLED && self.held_bytes < MAX_UNSETTLED_BYTES
    }

    /// Handles the packets already read, while there is room for them.
    async fn take_buffered(
        &mut self,
        reading: bool,
        reply: &mpsc::UnboundedSender<Outcome>,
    ) -> Step {
        while reading && self.has_room() {
            let Some(packet) = self.reader.buffered().map_err(Close::Wire)? else {
                return Ok(());
            };
            self.last_packet = Instant::now();
            self.on_packet(packet, reply).await?;
        }
        Ok(())
    }

    async fn on_packet(&mut self, packet: Packet, reply: &mpsc::UnboundedSender<Outcome>) -> Step {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish, reply).await,
            Packet::Subscribe(subscribe) => {
                self.on_subscribe(subscribe).await;
                Ok(())
            }
            Packet::Unsubscribe(unsubscribe) => {
                self.on_unsubscribe(unsubscribe);
                Ok(())
            }
            Packet::PingReq => {
                self.writer.queue(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect => Err(Close::Disconnect),
            // Downlinks are QoS 0: nothing to acknowledge, nothing to do.
            Packet::PubAck(_) => Ok(()),
            Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => {
                Err(Close::Protocol("qos2"))
            }
            Packet::Connect(_) => Err(Close::Protocol("second_connect")),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(Close::Protocol("server_packet"))
            }
        }
    }

    /// A publish on an `up` topic the identity may send for is validated
    /// and queued for the pipeline (or refused and answered, and then
    /// acknowledged so it is not resent forever); any other topic closes
    /// the connection.
    async fn on_publish(&mut self, p: Publish, reply: &mpsc::UnboundedSender<Outcome>) -> Step {
        if p.qos == QoS::ExactlyOnce {
            // Not supported: a pen publishes with QoS 1.
            return Err(Close::Protocol("qos2"));
        }
        let Some(device_id) = access::up_device(&p.topic) else {
            let failure = self.not_permitted(format!("publish on {:?}", p.topic));
            self.deny("publish", &failure).await;
            return Err(Close::Denied);
        };
        match self.may_send_for(device_id).await {
            Ok(_) => {}
            Err(AuthFailure::Unavailable) => return Err(Close::Unavailable),
            Err(failure) => {
                self.deny("publish", &failure).await;
                return Err(Close::Denied);
            }
        }
        let received_at = Utc::now();
        let pending = Pending {
            pkid: (p.qos == QoS::AtLeastOnce).then_some(p.pkid),
            bytes: p.payload.len(),
        };
        self.held_bytes += pending.bytes;
        match uplink::message(
            device_id,
            &p.payload,
            self.shared.max_message_bytes,
            received_at,
        ) {
            Ok(message) => {
                tracing::trace!(device_id = %message.device_id, seq = message.seq, "mqtt message received");
                let key = (message.device_id.clone(), message.seq);
                self.to_submit.push_back(Envelope {
                    message,
                    received_at,
                    payload: p.payload,
                    transport: TRANSPORT,
                    reply: reply.clone(),
                });
                self.order.push_waiting(key, pending);
            }
            Err(refused) => {
                self.shared.ingest.metrics().reject(refused.label);
                tracing::debug!(topic = %p.topic, reason = refused.label, "mqtt message refused");
                if let Some(answer) = refused.answer {
                    let device_id = answer.device_id.clone();
                    self.deliver(&device_id, Body::Rejection(answer));
                }
                self.order.push_settled(pending, Settled::Ack);
                self.acknowledge();
            }
        }
        Ok(())
    }

    /// Grants each filter that names `down` topics of devices the identity
    /// speaks for; refuses (0x80) and reports every other.
    async fn on_subscribe(&mut self, subscribe: Subscribe) {
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        for filter in &subscribe.filters {
            let granted = match access::filter_request(&filter.path) {
                FilterRequest::Down(device_id) => match self.may_send_for(device_id).await {
                    Ok(Permit::Registered) => Ok(Grant::Device(device_id.to_owned())),
                    // Nothing to hear yet; once registered to the clinic,
                    // subscribe again.
                    Ok(Permit::Unregistered) => Err(self.not_permitted(format!(
                        "subscribe to {:?}: not a registered pen of its clinic",
                        filter.path
                    ))),
                    Err(failure) => Err(failure),
                },
                FilterRequest::EveryDown if access::may_subscribe_every_down(&self.identity) => {
                    Ok(Grant::EveryDevice)
                }
                FilterRequest::EveryDown | FilterRequest::Other => {
                    Err(self.not_permitted(format!("subscribe to {:?}", filter.path)))
                }
            };
            match granted {
                Ok(grant) => {
                    if !self.grants.contains(&grant) {
                        self.grants.push(grant);
                    }
                    codes.push(SubscribeReasonCode::Success(QoS::AtMostOnce));
                }
                Err(failure) => {
                    self.deny("subscribe", &failure).await;
                    codes.push(SubscribeReasonCode::Failure);
                }
            }
        }
        self.writer
            .queue(&Packet::SubAck(SubAck::new(subscribe.pkid, codes)));
    }

    fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        self.grants
            .retain(|g| !unsubscribe.topics.contains(&g.filter()));
        self.writer
            .queue(&Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)));
    }

    /// Whether the identity may send for `device_id`, asking the
    /// authenticator once per registered device between re-checks. A
    /// gateway may send for a device registered nowhere (the pipeline
    /// answers UNKNOWN_DEVICE, or registers it), which is asked every time:
    /// it may be registered to another clinic meanwhile.
    async fn may_send_for(&mut self, device_id: &str) -> Result<Permit, AuthFailure> {
        if self.speaks_for.contains(device_id) {
            return Ok(Permit::Registered);
        }
        let permit = self
            .shared
            .auth
            .may_send_for(&self.identity, device_id)
            .await?;
        if permit == Permit::Registered {
            self.speaks_for.insert(device_id.to_owned());
        }
        Ok(permit)
    }

    fn not_permitted(&self, what: String) -> AuthFailure {
        denied(&self.identity, format!("may not {what}"))
    }

    /// Counts and reports a denied publish or subscription (a store outage
    /// is no denial: nothing is reported).
    async fn deny(&self, what: &'static str, failure: &AuthFailure) {
        if matches!(failure, AuthFailure::Unavailable) {
            return;
        }
        self.shared
            .metrics
            .denials
            .get_or_create(&Label { name: what })
            .inc();
        tracing::info!(principal = self.identity.principal(), peer = %self.peer, %failure, "mqtt {what} denied");
        self.shared
            .auth
            .refused(failure, TRANSPORT, Some(self.peer))
            .await;
    }

    /// Records one outcome; a rejection is answered at once.
    fn settle(&mut self, o: Outcome) {
        let state = match &o.disposition {
            Disposition::Rejected(reason) if reason.is_retryable() => Settled::Hold,
            _ => Settled::Ack,
        };
        tracing::trace!(device_id = %o.device_id, seq = o.seq, disposition = ?o.disposition, "mqtt message settled");
        if let Some(rejection) = self.round.add(&o) {
            self.deliver(&o.device_id, Body::Rejection(rejection));
        }
        self.order.settle(&(o.device_id, o.seq), state);
    }

    /// PUBACKs every settled publish at the front, in order; one the server
    /// may store later (it is stopping) is not acknowledged, and the pen
    /// sends it again.
    fn acknowledge(&mut self) {
        while let Some((pending, state)) = self.order.pop_settled() {
            self.held_bytes = self.held_bytes.saturating_sub(pending.bytes);
            if let (Settled::Ack, Some(pkid)) = (state, pending.pkid) {
                self.writer.queue(&Packet::PubAck(PubAck::new(pkid)));
            }
        }
    }

    /// Tells a device this connection speaks for to stop using a cartridge.
    fn on_flag(&mut self, flag: Result<Arc<FlagRecord>, RecvError>) {
        let flag = match flag {
            Ok(flag) => flag,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "an mqtt connection fell behind the flag feed");
                return;
            }
            Err(RecvError::Closed) => {
                self.flags_open = false;
                return;
            }
        };
        if !self.speaks_for_flag(&flag) {
            return;
        }
        if let Some(command) = downlink::reject_cartridge(&flag) {
            self.deliver(&flag.device_id, Body::RejectCartridge(command));
        }
    }

    /// A pen: its own flags; a gateway: its clinic's (and those of any
    /// device the authenticator let it send for).
    fn speaks_for_flag(&self, flag: &FlagRecord) -> bool {
        match &self.identity {
            DeviceIdentity::Pen { device_id, .. } => *device_id == flag.device_id,
            DeviceIdentity::Gateway { clinic_id, .. } => {
                *clinic_id == flag.clinic_id || self.speaks_for.contains(&flag.device_id)
            }
        }
    }

    /// Publishes a downlink on `device_id`'s `down` topic, if this
    /// connection subscribed to it (QoS 0, see the module documentation).
    fn deliver(&mut self, device_id: &str, body: Body) {
        if !access::hears(&self.grants, device_id) {
            return;
        }
        tracing::trace!(device_id, ?body, "mqtt downlink published");
        let payload = downlink(body).encode_to_vec();
        let publish = Publish::new(down_topic(device_id), QoS::AtMostOnce, payload);
        self.writer.queue(&Packet::Publish(publish));
    }

    /// Asks the authenticator whether the credential is still valid.
    async fn recheck(&mut self) -> Step {
        match self.shared.auth.still_valid(&self.identity).await {
            Ok(()) => {
                // Which devices a gateway speaks for may have changed.
                self.speaks_for.clear();
                Ok(())
            }
            // The store is away: keep what was proven; checked again later.
            Err(AuthFailure::Unavailable) => Ok(()),
            Err(failure) => {
                tracing::info!(principal = self.identity.principal(), peer = %self.peer, %failure, "mqtt credential no longer valid; disconnecting");
                self.shared
                    .auth
                    .refused(&failure, TRANSPORT, Some(self.peer))
                    .await;
                Err(Close::Revoked)
            }
        }
    }
}
