//! The embedded MQTT broker (rumqttd) that `pentrace serve` runs in-process
//! when no external broker is configured, so a laptop, a demo or a single
//! clinic needs nothing installed (issue 7).
//!
//! What it enforces, next to the production Mosquitto
//! (`deploy/mosquitto/`):
//!
//! - It listens on 127.0.0.1 only: it has no authentication and no topic
//!   ACL (rumqttd 0.20 can check a username/password, but cannot restrict
//!   the topics a client publishes to), so nothing beyond this machine may
//!   reach it.
//! - Size limit: a packet larger than `max_message_bytes` plus
//!   [`TOPIC_ALLOWANCE`] closes the publisher's connection before it is
//!   read (no PUBACK, nothing queued), like Mosquitto's
//!   `message_size_limit`; a payload just over `max_message_bytes` reaches
//!   the consumer, which refuses it as `oversized` and acknowledges it.
//! - Topic rules: not enforced by the broker. A local client may publish
//!   on any device's `up` topic and read any `down` or flags topic; the
//!   server still refuses a payload whose device id differs from the
//!   topic's (`device_mismatch`, intake.rs), but cannot tell which client
//!   published it.
//! - Delivery: QoS 1 from pens (PUBACK once the broker holds the message
//!   for the consumer, whose session exists from the start),
//!   QoS 1 to the consumer with at most 100 unacknowledged messages in
//!   flight (fixed in rumqttd), PUBACKs accepted only in order (which is
//!   how the consumer sends them), and a persistent session for the
//!   consumer: what it did not acknowledge is sent again when it
//!   reconnects.
//! - Memory, not disk: the broker's state dies with the process. Messages
//!   the broker acknowledged to a pen but the server had not committed are
//!   lost at a restart; pens resend whatever the server has not acked on
//!   their `down` topic (and the per-device seq shows any loss as a
//!   `DATA_GAP`).
//! - Backlog: rumqttd keeps each subscription filter's messages in an
//!   in-memory log of bounded size ([`UP_LOG_BYTES`] for the devices' `up`
//!   topics). A consumer lagging further behind than that loses the oldest
//!   messages, as with Mosquitto's `max_queued_bytes`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use rumqttd::local::LinkBuilder;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{
    Disconnect, DisconnectReasonCode, Filter, Packet, QoS, RetainForwardRule, Subscribe,
};
use rumqttd::{
    ConnectionSettings, LinkType, Router, RouterConfig, SegmentConfig, Server, ServerSettings,
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::PLAIN_SUBSCRIPTION;

/// The embedded broker listens on the loopback interface only: it has no
/// authentication or ACL (see the module documentation).
pub const LISTEN_IP: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Bytes of an MQTT PUBLISH besides its payload that the size limit allows
/// for: the topic (with its length) and the packet id. Device topics are
/// far shorter.
pub const TOPIC_ALLOWANCE: usize = 1024;

/// Bytes of the devices' `up` messages the broker keeps in memory: room for
/// a consumer that lags behind (a slow store), bounded so a long-running
/// broker does not grow without end.
pub const UP_LOG_BYTES: usize = UP_SEGMENT_BYTES * UP_SEGMENTS;
const UP_SEGMENT_BYTES: usize = 8 * 1024 * 1024;
const UP_SEGMENTS: usize = 32;

/// Every other filter (a pen's `down` topic, a clinic's flags): acks and
/// commands are small and read at once, so a short log per filter keeps
/// memory low with thousands of pens.
const OTHER_SEGMENT_BYTES: usize = 32 * 1024;
const OTHER_SEGMENTS: usize = 4;

/// Connections the broker accepts at once.
const MAX_CONNECTIONS: usize = 10_000;

/// How long rumqttd's thread must still run once the port is seen held
/// before the broker counts as listening: a failed bind ends it at once
/// (see [`listen`]).
const BIND_GRACE: Duration = Duration::from_millis(50);

/// What the embedded broker needs.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Port on [`LISTEN_IP`]; 0 = any free port.
    pub port: u16,
    /// The server's largest device message, bytes.
    pub max_message_bytes: usize,
    /// Client id of the consumer, whose session the broker creates before
    /// it accepts anyone (see [`EmbeddedBroker::start`]).
    pub consumer_client_id: String,
}

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "the embedded MQTT broker cannot listen on {addr}: {source}. Choose another port with \
         --mqtt-port PORT (0 = any free port; setting mqtt.embedded_port), use an external \
         broker with --mqtt-url, or turn MQTT off with --no-mqtt"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the embedded MQTT broker did not start: {0}")]
    Start(String),
}

/// A running embedded broker; stopped by [`EmbeddedBroker::stop`] or when
/// dropped.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    stop: CancellationToken,
    stopped: Option<oneshot::Receiver<Result<(), String>>>,
}

impl EmbeddedBroker {
    /// Starts the broker on 127.0.0.1:`port` and returns once it listens.
    ///
    /// The consumer's persistent session, subscribed to every device's `up`
    /// topic, is created before the port opens: rumqttd keeps messages for
    /// a subscription only from the moment it exists, so a pen publishing
    /// before the consumer has connected would otherwise get a PUBACK for
    /// a message nobody ever receives.
    pub async fn start(config: &EmbeddedConfig) -> Result<EmbeddedBroker, EmbeddedError> {
        // A port in use fails here, before any thread is started.
        let mut port = probe(config.port)?;
        let router_tx = Router::new(0, router_config()).spawn();
        // The session, as the consumer would create it: clean_session=false,
        // QoS 1, then a DISCONNECT so the router keeps it for the consumer.
        // (`build` waits on the router's answer, a blocking call: the router
        // has just started and answers at once.)
        let (mut link, _link_rx, _ack) =
            LinkBuilder::new(&config.consumer_client_id, router_tx.clone())
                .clean_session(false)
                .build()
                .map_err(|e| {
                    EmbeddedError::Start(format!("cannot create the consumer's session: {e}"))
                })?;
        let subscribe = Subscribe {
            pkid: 1,
            filters: vec![Filter {
                path: PLAIN_SUBSCRIPTION.to_owned(),
                qos: QoS::AtLeastOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: RetainForwardRule::Never,
            }],
        };
        let disconnect = Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        };
        // Both packets before one notification: the router handles them
        // together (a second notification would name a connection already
        // gone).
        link.buffer().push_back(Packet::Subscribe(subscribe, None));
        link.send(Packet::Disconnect(disconnect, None))
            .await
            .map_err(|e| {
                EmbeddedError::Start(format!("cannot create the consumer's session: {e}"))
            })?;

        let limit = config.max_message_bytes.saturating_add(TOPIC_ALLOWANCE);
        // Between the probe and rumqttd's own bind another process may take
        // the port: probe again (a port taken for good then fails with the
        // clear message; port 0 gets another free port).
        let mut attempts = 3;
        loop {
            let addr = SocketAddr::from((LISTEN_IP, port));
            let tx = router_tx.clone();
            let alive = router_tx.clone();
            let running = listen(
                addr,
                move || Server::new(server_settings(addr, limit), tx.clone(), V4),
                move || !alive.is_disconnected(),
            )
            .await;
            attempts -= 1;
            match running {
                Ok(broker) => {
                    tracing::info!(%addr, max_packet_bytes = limit, "embedded mqtt broker listening");
                    return Ok(broker);
                }
                Err(e) if attempts > 0 => {
                    tracing::debug!(error = %e, "embedded mqtt broker lost its port; trying again");
                    port = probe(config.port)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `mqtt://127.0.0.1:PORT`, for the consumer.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    /// Closes the port and every connection, and waits until they are
    /// closed. rumqttd's router (one thread, in-memory state) has no stop
    /// API: it stays parked, with nobody able to reach it, until the process
    /// exits.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(stopped) = self.stopped.take() {
            match tokio::time::timeout(Duration::from_secs(5), stopped).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "embedded mqtt broker failed"),
                Ok(_) => tracing::info!("embedded mqtt broker stopped"),
                Err(_) => tracing::warn!("embedded mqtt broker did not stop within 5 s"),
            }
        }
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A free port (`port` 0) or `port` if it is free, on [`LISTEN_IP`].
fn probe(port: u16) -> Result<u16, EmbeddedError> {
    let addr = SocketAddr::from((LISTEN_IP, port));
    // Both this listener and rumqttd's set SO_REUSEADDR (std and tokio do
    // on Unix), so closing this one leaves the port free to bind at once.
    let listener =
        TcpListener::bind(addr).map_err(|source| EmbeddedError::Listen { addr, source })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| EmbeddedError::Listen { addr, source })
}

/// Runs rumqttd's listener on a thread of its own and waits until it
/// listens.
///
/// Its own thread and runtime, as rumqttd's `Broker` does, because its
/// connection tasks make blocking calls to the router (flume `send` and
/// `recv`) that must not stall the server's runtime; and stopping is then
/// dropping that runtime, which closes the port and every connection.
///
/// rumqttd binds inside `Server::start` and does not report the result, so
/// a port in use shows only as the thread ending at once. Listening is
/// therefore: something holds the port and the thread is still running a
/// moment later.
async fn listen(
    addr: SocketAddr,
    server: impl FnOnce() -> Server<V4> + Send + 'static,
    router_alive: impl Fn() -> bool + Send + 'static,
) -> Result<EmbeddedBroker, EmbeddedError> {
    let stop = CancellationToken::new();
    let (done_tx, mut done) = oneshot::channel();
    let thread_stop = stop.clone();
    std::thread::Builder::new()
        .name("pentrace-mqtt".into())
        .spawn(move || {
            let outcome = run_listener(server(), thread_stop, router_alive);
            let _ = done_tx.send(outcome);
        })
        .map_err(|e| EmbeddedError::Start(format!("cannot start its thread: {e}")))?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut listening_since = None;
    // rumqttd binds within a millisecond or so; probing only after that
    // keeps the probe from meeting its bind where SO_REUSEADDR is strict
    // (BSD, macOS).
    tokio::time::sleep(Duration::from_millis(10)).await;
    loop {
        match done.try_recv() {
            Ok(Err(e)) => {
                return Err(EmbeddedError::Listen {
                    addr,
                    source: std::io::Error::other(e),
                });
            }
            Ok(Ok(())) | Err(oneshot::error::TryRecvError::Closed) => {
                return Err(EmbeddedError::Start("its listener stopped at once".into()));
            }
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        let held = listened_on(addr);
        match (held, listening_since) {
            (true, Some(since)) if tokio::time::Instant::now() >= since + BIND_GRACE => {
                return Ok(EmbeddedBroker {
                    addr,
                    stop,
                    stopped: Some(done),
                });
            }
            (true, None) => listening_since = Some(tokio::time::Instant::now()),
            (true, Some(_)) => {}
            (false, _) => listening_since = None,
        }
        if tokio::time::Instant::now() >= deadline {
            stop.cancel();
            return Err(EmbeddedError::Start(format!(
                "it was not listening on {addr} after 5 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether a socket listens on `addr`.
///
/// Found by binding without listening, with SO_REUSEADDR like rumqttd's
/// listener: on Linux that fails only when a socket already listens there,
/// and never stops rumqttd from binding at the same moment (a listening
/// probe could; elsewhere a failed bind is retried, see
/// [`EmbeddedBroker::start`]).
fn listened_on(addr: SocketAddr) -> bool {
    let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
        return false;
    };
    if socket.set_reuseaddr(true).is_err() {
        return false;
    }
    matches!(socket.bind(addr), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
}

/// The listener thread's body: serves until `stop`, or until rumqttd's
/// listener or router ends (an error).
fn run_listener(
    mut server: Server<V4>,
    stop: CancellationToken,
    router_alive: impl Fn() -> bool,
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start its runtime: {e}"))?;
    let outcome = runtime.block_on(async {
        let watchdog = async {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            while router_alive() {
                every.tick().await;
            }
        };
        tokio::select! {
            r = server.start(LinkType::Remote) => Err(match r {
                Err(e) => e.to_string(),
                Ok(()) => "its listener stopped".to_owned(),
            }),
            _ = watchdog => {
                // Without the router no MQTT message moves: say so loudly.
                tracing::error!(
                    "the embedded mqtt broker's router stopped; \
                     MQTT ingest is down until pentrace restarts"
                );
                Err("its router stopped".to_owned())
            }
            _ = stop.cancelled() => Ok(()),
        }
    });
    // Dropping the runtime closes the listener and every connection task.
    drop(runtime);
    outcome
}

fn router_config() -> RouterConfig {
    let up = SegmentConfig {
        max_segment_size: UP_SEGMENT_BYTES,
        max_segment_count: UP_SEGMENTS,
    };
    RouterConfig {
        max_connections: MAX_CONNECTIONS,
        // Only bounds QoS 0 reads; QoS 1 reads are bounded by rumqttd's
        // fixed in-flight window of 100.
        max_outgoing_packet_count: 200,
        max_segment_size: OTHER_SEGMENT_BYTES,
        max_segment_count: OTHER_SEGMENTS,
        custom_segment: Some(HashMap::from([(PLAIN_SUBSCRIPTION.to_owned(), up)])),
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    }
}

fn server_settings(listen: SocketAddr, max_packet_bytes: usize) -> ServerSettings {
    ServerSettings {
        name: "pentrace-embedded".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 5_000,
            max_payload_size: max_packet_bytes,
            // Packets read from one connection before they are handed to
            // the router (not an MQTT in-flight limit).
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: false,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Publish, QoS};
    use tokio::sync::mpsc;

    use super::*;

    fn config(port: u16, consumer: &str) -> EmbeddedConfig {
        EmbeddedConfig {
            port,
            max_message_bytes: 4096,
            consumer_client_id: consumer.into(),
        }
    }

    /// A client whose events arrive on a channel; `clean` = clean session.
    fn client(
        broker: &EmbeddedBroker,
        id: &str,
        clean: bool,
        manual_acks: bool,
    ) -> (AsyncClient, EventLoop) {
        let mut o = MqttOptions::new(id, "127.0.0.1", broker.addr().port());
        o.set_clean_session(clean)
            .set_manual_acks(manual_acks)
            .set_max_packet_size(1 << 20, 1 << 20);
        AsyncClient::new(o, 100)
    }

    /// A client's incoming packets; dropping it closes the connection.
    struct Events {
        rx: mpsc::UnboundedReceiver<Incoming>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Events {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn pump(mut eventloop: EventLoop) -> Events {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(i)) => {
                        if tx.send(i).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        Events { rx, task }
    }

    async fn next_publish(events: &mut Events) -> Publish {
        loop {
            let i = tokio::time::timeout(Duration::from_secs(5), events.rx.recv())
                .await
                .expect("a publish within 5 s")
                .expect("connection open");
            if let Incoming::Publish(p) = i {
                return p;
            }
        }
    }

    async fn connack(events: &mut Events) -> bool {
        loop {
            let i = tokio::time::timeout(Duration::from_secs(5), events.rx.recv())
                .await
                .expect("a connack within 5 s")
                .expect("connection open");
            if let Incoming::ConnAck(a) = i {
                return a.session_present;
            }
        }
    }

    async fn publish(pen: &AsyncClient, device: &str, body: &str) {
        pen.publish(
            format!("pentrace/v1/devices/{device}/up"),
            QoS::AtLeastOnce,
            false,
            body.as_bytes().to_vec(),
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn the_consumer_gets_what_pens_sent_before_it_connected_and_again_what_it_did_not_ack() {
        let broker = EmbeddedBroker::start(&config(0, "consumer")).await.unwrap();
        let (pen, pen_loop) = client(&broker, "pen-1", true, false);
        let _pen_events = pump(pen_loop);
        for i in 1..=5 {
            publish(&pen, "pen-1", &format!("m{i}")).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;

        // The session exists before the consumer first connects.
        let (consumer, consumer_loop) = client(&broker, "consumer", false, true);
        let mut events = pump(consumer_loop);
        assert!(connack(&mut events).await, "session present");
        let mut got = Vec::new();
        for _ in 1..=5 {
            got.push(next_publish(&mut events).await);
        }
        let bodies: Vec<_> = got.iter().map(|p| p.payload.to_vec()).collect();
        assert_eq!(
            bodies,
            (1..=5)
                .map(|i| format!("m{i}").into_bytes())
                .collect::<Vec<_>>()
        );
        // Late, in-order acks of the first two only, then the connection
        // drops without a DISCONNECT.
        consumer.ack(&got[0]).await.unwrap();
        consumer.ack(&got[1]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(events);
        drop(consumer);
        tokio::time::sleep(Duration::from_millis(200)).await;

        let (consumer, consumer_loop) = client(&broker, "consumer", false, true);
        let mut events = pump(consumer_loop);
        assert!(
            connack(&mut events).await,
            "session present after reconnect"
        );
        let mut again = Vec::new();
        for _ in 3..=5 {
            let p = next_publish(&mut events).await;
            consumer.ack(&p).await.unwrap();
            again.push(p.payload.to_vec());
        }
        assert_eq!(again, vec![b"m3".to_vec(), b"m4".to_vec(), b"m5".to_vec()]);
        // And new messages flow on.
        publish(&pen, "pen-1", "m6").await;
        let p = next_publish(&mut events).await;
        assert_eq!(p.payload.as_ref(), b"m6");
        broker.stop().await;
    }

    #[tokio::test]
    async fn an_oversized_publish_closes_only_its_publishers_connection() {
        let broker = EmbeddedBroker::start(&config(0, "consumer")).await.unwrap();
        let (consumer, consumer_loop) = client(&broker, "consumer", false, true);
        let mut events = pump(consumer_loop);
        connack(&mut events).await;

        let (big, big_loop) = client(&broker, "pen-big", true, false);
        let mut big_events = pump(big_loop);
        connack(&mut big_events).await;
        big.publish(
            "pentrace/v1/devices/pen-big/up",
            QoS::AtLeastOnce,
            false,
            vec![0u8; 4096 + TOPIC_ALLOWANCE + 1],
        )
        .await
        .unwrap();
        // The broker closes the connection: the pump ends.
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(i) = big_events.rx.recv().await {
                assert!(
                    !matches!(i, Incoming::PubAck(_)),
                    "oversized publish acknowledged"
                );
            }
        })
        .await;
        assert!(closed.is_ok(), "the oversized publisher stays connected");

        // Just under the broker's limit still reaches the consumer (which
        // refuses it itself as over max_message_bytes).
        let (pen, pen_loop) = client(&broker, "pen-ok", true, false);
        let _pen_events = pump(pen_loop);
        pen.publish(
            "pentrace/v1/devices/pen-ok/up",
            QoS::AtLeastOnce,
            false,
            vec![1u8; 4096 + 100],
        )
        .await
        .unwrap();
        publish(&pen, "pen-ok", "after").await;
        let p = next_publish(&mut events).await;
        assert_eq!(p.payload.len(), 4096 + 100);
        consumer.ack(&p).await.unwrap();
        let p = next_publish(&mut events).await;
        assert_eq!(p.payload.as_ref(), b"after");
        broker.stop().await;
    }

    /// Why the consumer does not use the shared subscription here: this
    /// test documents rumqttd 0.20's behaviour; when it fails, a newer
    /// rumqttd may allow `MqttSettings::shared_subscription` for the
    /// embedded broker again.
    #[tokio::test]
    async fn rumqttd_breaks_when_a_shared_persistent_subscriber_leaves_messages_unacked() {
        let broker = EmbeddedBroker::start(&config(0, "consumer")).await.unwrap();
        let (shared, shared_loop) = client(&broker, "shared", false, true);
        let mut events = pump(shared_loop);
        connack(&mut events).await;
        shared
            .subscribe(super::super::SUBSCRIPTION, QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (pen, pen_loop) = client(&broker, "pen-1", true, false);
        let _pen_events = pump(pen_loop);
        publish(&pen, "pen-1", "m1").await;
        next_publish(&mut events).await;
        // Gone without acknowledging: rumqttd's router panics ("group must
        // exists") and the broker is dead for everyone.
        drop(events);
        drop(shared);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_late, late_loop) = client(&broker, "late", true, false);
        let mut late = pump(late_loop);
        // A dead router answers nothing (or closes the connection); only a
        // ConnAck would mean it survived.
        let answer = tokio::time::timeout(Duration::from_secs(5), late.rx.recv()).await;
        assert!(
            !matches!(answer, Ok(Some(Incoming::ConnAck(_)))),
            "rumqttd survived: shared subscriptions may work now"
        );
    }

    #[tokio::test]
    async fn a_port_in_use_is_named_with_the_flags_to_change_it() {
        let taken = TcpListener::bind((LISTEN_IP, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = EmbeddedBroker::start(&config(port, "c")).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        for flag in ["--mqtt-port", "--mqtt-url", "--no-mqtt"] {
            assert!(text.contains(flag), "{text}");
        }
    }

    #[tokio::test]
    async fn stopping_frees_the_port() {
        let broker = EmbeddedBroker::start(&config(0, "c")).await.unwrap();
        let addr = broker.addr();
        assert!(TcpListener::bind(addr).is_err());
        broker.stop().await;
        TcpListener::bind(addr).expect("port free after stop");
    }
}
