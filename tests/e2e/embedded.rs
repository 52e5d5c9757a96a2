//! The embedded MQTT broker (pentrace's own front end): `pentrace serve`
//! with no MQTT configuration (but a free port) takes pens' messages over
//! it, authenticated by each pen's secret, with the same refusals as behind
//! Mosquitto; a pen can use only its own topics (a gateway those of its
//! clinic's pens), anonymous and borrowed identities are refused, and a
//! revoked credential is disconnected. A port in use stops start-up with a
//! message naming the way out.

use std::time::{Duration, Instant};

use chrono::Utc;
use pentrace_proto::v1 as pb;
use pentrace_proto::v1::device_message::Body;
use prost::Message;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, Incoming, MqttOptions, QoS,
    SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::mpsc;

use crate::helpers::{
    Backend, Server, TestApp, TestStore, eventually, pentrace_run, register, register_on,
    spawn_app, ts,
};
use crate::ingest::http_get;
use crate::mqtt::{covers, heartbeat, rejection_codes, session_start};

crate::both_stores!(
    serve_without_mqtt_configuration_takes_pens_over_the_embedded_broker,
    anonymous_unknown_and_borrowed_identities_are_refused_at_connect,
    a_pen_publishing_on_another_pens_or_any_other_topic_is_disconnected_and_nothing_is_stored,
    a_pen_may_subscribe_only_to_its_own_down_topic,
    a_new_pen_connects_at_once_and_a_revoked_one_is_disconnected_and_refused,
    a_second_connection_with_the_same_client_id_takes_over_and_is_reported,
    a_gateway_speaks_for_its_clinics_pens_only,
    a_taken_port_stops_start_up_with_the_flags_to_change_it_and_no_mqtt_turns_it_off,
    the_simulator_with_every_fault_is_judged_exactly_over_the_embedded_broker,
    a_graceful_stop_acknowledges_what_it_took_once_stored_and_in_order,
    silent_connections_are_closed_after_the_connect_timeout_and_one_and_a_half_keep_alives,
);

/// The port of `embedded:127.0.0.1:PORT` on the start-up line.
fn embedded_port(mqtt: &str) -> u16 {
    mqtt.strip_prefix("embedded:127.0.0.1:")
        .unwrap_or_else(|| panic!("not the embedded broker: mqtt={mqtt}"))
        .parse()
        .expect("port")
}

fn up(device: &str) -> String {
    format!("pentrace/v1/devices/{device}/up")
}

fn down(device: &str) -> String {
    format!("pentrace/v1/devices/{device}/down")
}

async fn revoke(app: &TestApp, credential_id: &str) {
    app.registry()
        .await
        .revoke_device_credential(pb::RevokeDeviceCredentialRequest {
            credential_id: credential_id.into(),
            reason: "test".into(),
        })
        .await
        .expect("revoke");
}

/// One MQTT connection to the embedded broker, driven by rumqttc without
/// reconnecting: `incoming` ends when the server closes the connection.
struct Device {
    id: String,
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    /// Packets received and not yet looked at.
    seen: Vec<Incoming>,
    closed: bool,
}

/// Connects as `client_id` with `login` (username, password); the CONNACK
/// code when the server refuses.
async fn connect(
    port: u16,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> Result<Device, ConnectReturnCode> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    // An in-flight window wider than any test sends, so that packet ids
    // are not reused: 1 for the SUBSCRIBE of `pen`, then seq + 1.
    options
        .set_max_packet_size(8 << 20, 8 << 20)
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(1000);
    if let Some((username, password)) = login {
        options.set_credentials(username, password);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let connack = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("a CONNACK within 10 s");
    match connack {
        Ok(()) => {}
        Err(ConnectionError::ConnectionRefused(code)) => return Err(code),
        Err(e) => panic!("{client_id}: no CONNACK: {e}"),
    }
    let (tx, incoming) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(i)) => {
                    if tx.send(i).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // Closed: stop here (polling again would reconnect).
                Err(_) => return,
            }
        }
    });
    Ok(Device {
        id: client_id.into(),
        client,
        incoming,
        seen: Vec::new(),
        closed: false,
    })
}

/// A pen connected with its own secret and subscribed to its `down` topic.
async fn pen(port: u16, device: &str, secret: &str) -> Device {
    let mut d = connect(port, device, Some((device, secret)))
        .await
        .unwrap_or_else(|code| panic!("{device} refused: {code:?}"));
    let codes = d.subscribe(&[&down(device)]).await;
    assert_eq!(codes, vec![SubscribeReasonCode::Success(QoS::AtMostOnce)]);
    d
}

impl Device {
    /// The next packet within `within`; None once closed or on time-out.
    async fn next(&mut self, within: Duration) -> Option<Incoming> {
        if self.closed {
            return None;
        }
        match tokio::time::timeout(within, self.incoming.recv()).await {
            Ok(Some(i)) => Some(i),
            Ok(None) => {
                self.closed = true;
                None
            }
            Err(_) => None,
        }
    }

    /// Subscribes and returns the SUBACK's codes.
    async fn subscribe(&mut self, filters: &[&str]) -> Vec<SubscribeReasonCode> {
        let filters = filters
            .iter()
            .map(|f| SubscribeFilter::new((*f).to_owned(), QoS::AtLeastOnce));
        self.client
            .subscribe_many(filters)
            .await
            .expect("subscribe");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.next(Duration::from_millis(200)).await {
                Some(Incoming::SubAck(ack)) => return ack.return_codes,
                Some(other) => self.seen.push(other),
                None if self.closed => panic!("{}: closed before the SUBACK", self.id),
                None => {}
            }
        }
        panic!("{}: no SUBACK within 10 s", self.id);
    }

    async fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }

    async fn send(&self, msg: &pb::DeviceMessage) {
        self.publish(&up(&msg.device_id), msg.encode_to_vec()).await;
    }

    /// Waits for an ack of `device`'s `seq` on `device`'s `down` topic;
    /// returns the downlinks seen before it.
    async fn wait_ack(&mut self, device: &str, seq: u64) -> Vec<pb::DeviceDownlink> {
        let mut others = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(
                Instant::now() < deadline,
                "{}: no ack of {device}/{seq}",
                self.id
            );
            let Some(i) = self.next(Duration::from_millis(200)).await else {
                assert!(
                    !self.closed,
                    "{}: closed waiting for {device}/{seq}",
                    self.id
                );
                continue;
            };
            let Incoming::Publish(p) = &i else {
                self.seen.push(i);
                continue;
            };
            let d = pb::DeviceDownlink::decode(p.payload.as_ref()).expect("a downlink");
            match &d.body {
                Some(pb::device_downlink::Body::Ack(a))
                    if p.topic == down(device) && a.device_id == device && covers(a, seq) =>
                {
                    self.seen.push(i);
                    return others;
                }
                _ => {
                    others.push(d);
                    self.seen.push(i);
                }
            }
        }
    }

    /// Waits until the server closes the connection.
    async fn wait_closed(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(i) = self.next(Duration::from_millis(200)).await {
                self.seen.push(i);
            } else if self.closed {
                return true;
            }
        }
        false
    }

    /// Topics of every PUBLISH received so far.
    async fn topics_received(&mut self) -> Vec<String> {
        while let Some(i) = self.next(Duration::from_millis(10)).await {
            self.seen.push(i);
        }
        self.seen
            .iter()
            .filter_map(|i| match i {
                Incoming::Publish(p) => Some(p.topic.clone()),
                _ => None,
            })
            .collect()
    }
}

async fn metrics(app: &TestApp) -> String {
    http_get(&format!("{}/metrics", app.http))
        .await
        .expect("metrics")
}

fn context(session: &str, udi: &str) -> pb::SessionContext {
    pb::SessionContext {
        session_id: session.into(),
        cartridge: Some(pb::Cartridge {
            udi: udi.into(),
            chip_uid: String::new(),
        }),
        area: pb::TreatmentArea::Cheeks as i32,
        skin: pb::SkinThickness::Thick as i32,
        patient_ref: "p".into(),
        started_at: Some(ts(Utc::now())),
    }
}

async fn serve_without_mqtt_configuration_takes_pens_over_the_embedded_broker(backend: Backend) {
    // No MQTT flag but the free port the helper adds.
    let mut app = spawn_app(backend, &[]).await;
    let port = embedded_port(&app.server.mqtt);
    assert_ne!(port, 0);
    let gtin = "09506000134352";
    let product = pb::Product {
        gtin: gtin.into(),
        name: "n".into(),
        ..Default::default()
    };
    register(
        &app,
        "clinic-a",
        &[("pen-a", 0), ("pen-b", 0)],
        &[product],
        &[],
    )
    .await;
    let secret_a = app.pen_secret("pen-a").await;
    let secret_b = app.pen_secret("pen-b").await;
    let mut a = pen(port, "pen-a", &secret_a).await;

    for seq in 1..=3 {
        a.send(&heartbeat("pen-a", seq)).await;
    }
    a.wait_ack("pen-a", 3).await;
    assert_eq!(app.stored("pen-a").await, 3);

    // A whole session: start, ten samples, end.
    let session = uuid::Uuid::new_v4().to_string();
    let udi = format!("(01){gtin}(17)301231(10)L1(21)SER-1");
    a.send(&session_start("pen-a", 4, &session, &udi)).await;
    let samples = (0..10)
        .map(|i| pb::StrokeSample {
            offset_ms: i * 100,
            strokes: 10,
            depth_um: 800,
            speed_hz: 100,
        })
        .collect();
    a.send(&pb::DeviceMessage {
        device_id: "pen-a".into(),
        seq: 5,
        sent_at: Some(ts(Utc::now())),
        body: Some(Body::StrokeBatch(pb::StrokeBatch {
            session: Some(context(&session, &udi)),
            started_at: Some(ts(Utc::now())),
            samples,
        })),
    })
    .await;
    a.send(&pb::DeviceMessage {
        device_id: "pen-a".into(),
        seq: 6,
        sent_at: Some(ts(Utc::now())),
        body: Some(Body::SessionEnd(pb::SessionEnd {
            session: Some(context(&session, &udi)),
            ended_at: Some(ts(Utc::now())),
            total_strokes: 100,
            reason: pb::EndReason::Completed as i32,
        })),
    })
    .await;
    a.wait_ack("pen-a", 6).await;
    let sessions = app.sessions_of("pen-a").await;
    assert!(
        sessions
            .iter()
            .any(|s| s.session_id == session && s.ended_at.is_some()),
        "the session ended: {sessions:?}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM stroke_samples WHERE device_id = 'pen-a'")
            .await,
        10
    );

    // pen-a's topic, a payload claiming pen-b: refused, as with Mosquitto.
    a.publish(&up("pen-a"), heartbeat("pen-b", 1).encode_to_vec())
        .await;
    // Over max_message_bytes (1 MiB) but within the allowance for the
    // topic: refused and answered, and the connection goes on.
    let mut big = heartbeat("pen-a", 7);
    big.body = Some(Body::Heartbeat(pb::Heartbeat {
        battery_pct: 1,
        firmware: "x".repeat(1024 * 1024),
    }));
    a.send(&big).await;
    a.send(&heartbeat("pen-a", 8)).await;
    let seen = a.wait_ack("pen-a", 8).await;
    let codes = rejection_codes(&seen);
    for code in [pb::RejectCode::DeviceMismatch, pb::RejectCode::Oversized] {
        assert!(codes.contains(&code), "{code:?} not answered: {seen:?}");
    }
    // Far over: the connection is closed before the packet is read.
    let secret_huge = {
        register(&app, "clinic-a", &[("pen-huge", 0)], &[], &[]).await;
        app.pen_secret("pen-huge").await
    };
    let mut huge = pen(port, "pen-huge", &secret_huge).await;
    huge.publish(&up("pen-huge"), vec![0x42; 3 * 1024 * 1024])
        .await;
    assert!(
        huge.wait_closed(Duration::from_secs(10)).await,
        "an oversized packet did not close its connection"
    );
    assert!(
        !huge.seen.iter().any(|i| matches!(i, Incoming::PubAck(_))),
        "the oversized packet was acknowledged"
    );
    assert_eq!(app.stored("pen-a").await, 7);
    assert_eq!(app.stored("pen-b").await, 0);
    assert_eq!(app.stored("pen-huge").await, 0);
    let text = metrics(&app).await;
    for reason in ["device_mismatch", "oversized"] {
        assert!(
            text.contains(&format!("name=\"{reason}\"")),
            "{reason} not counted:\n{text}"
        );
    }
    assert!(
        text.contains("pentrace_mqtt_disconnects_total{name=\"oversized_packet\"} 1"),
        "{text}"
    );

    // Cartridge rejections come back over the embedded broker.
    let mut b = pen(port, "pen-b", &secret_b).await;
    let second = uuid::Uuid::new_v4().to_string();
    b.send(&session_start("pen-b", 1, &second, &udi)).await;
    let mut seen = b.wait_ack("pen-b", 1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen
        .iter()
        .any(|d| matches!(d.body, Some(pb::device_downlink::Body::RejectCartridge(_))))
    {
        assert!(Instant::now() < deadline, "no RejectCartridge: {seen:?}");
        if let Some(Incoming::Publish(p)) = b.next(Duration::from_millis(200)).await {
            seen.push(pb::DeviceDownlink::decode(p.payload.as_ref()).expect("downlink"));
        }
    }
    // pen-a, subscribed to its own topic only, heard nothing of pen-b's.
    assert!(
        a.topics_received()
            .await
            .iter()
            .all(|t| *t == down("pen-a")),
        "pen-a received another pen's topic"
    );

    // SIGTERM: drains, closes the connections and exits promptly.
    let asked = Instant::now();
    assert!(app.stop().success());
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "took {:?} to stop",
        asked.elapsed()
    );
    assert!(a.wait_closed(Duration::from_secs(5)).await);
    // The port is free again.
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("port released");
}

async fn anonymous_unknown_and_borrowed_identities_are_refused_at_connect(backend: Backend) {
    let app = spawn_app(backend, &[]).await;
    let port = embedded_port(&app.server.mqtt);
    register(&app, "clinic-a", &[("pen-a", 0), ("pen-b", 0)], &[], &[]).await;
    let secret_a = app.pen_secret("pen-a").await;
    let _secret_b = app.pen_secret("pen-b").await;

    let refused = |r: Result<Device, ConnectReturnCode>| r.err();
    assert_eq!(
        refused(connect(port, "pen-a", None).await),
        Some(ConnectReturnCode::NotAuthorized),
        "anonymous"
    );
    assert_eq!(
        refused(connect(port, "pen-a", Some(("pen-a", "pds_not-a-secret"))).await),
        Some(ConnectReturnCode::BadUserNamePassword),
        "a wrong secret"
    );
    // pen-a's secret presented as pen-b, or as the consumer of old.
    assert_eq!(
        refused(connect(port, "pen-b", Some(("pen-a", &secret_a))).await),
        Some(ConnectReturnCode::BadClientId),
        "client id of another pen"
    );
    assert_eq!(
        refused(connect(port, "pen-b", Some(("pen-b", &secret_a))).await),
        Some(ConnectReturnCode::NotAuthorized),
        "username of another pen"
    );
    assert_eq!(
        refused(connect(port, "pentrace-1", Some(("pen-a", &secret_a))).await),
        Some(ConnectReturnCode::BadClientId),
        "the consumer's client id"
    );
    assert_eq!(
        refused(connect(port, "pentrace-1", Some(("pentrace-1", &secret_a))).await),
        Some(ConnectReturnCode::NotAuthorized),
        "the consumer's username"
    );

    // pen-a itself is served, and nothing of the refused ones was stored.
    let mut a = pen(port, "pen-a", &secret_a).await;
    a.send(&heartbeat("pen-a", 1)).await;
    a.wait_ack("pen-a", 1).await;
    assert_eq!(app.stored("pen-b").await, 0);

    let text = metrics(&app).await;
    for reason in ["missing", "unknown", "denied"] {
        assert!(
            text.contains(&format!(
                "pentrace_mqtt_refused_connects_total{{name=\"{reason}\"}}"
            )),
            "{reason} not counted:\n{text}"
        );
        assert!(
            text.contains(&format!(
                "pentrace_device_auth_refused_total{{name=\"{reason}\"}}"
            )),
            "{reason} not reported to the authenticator:\n{text}"
        );
    }
    // The attempts are evidence (rate-limited per reason and peer).
    eventually(Duration::from_secs(10), "refusals audited", || async {
        app.count("SELECT count(*) FROM audit_events WHERE action = 'device.auth_refused'")
            .await
            >= 3
    })
    .await;
}

async fn a_pen_publishing_on_another_pens_or_any_other_topic_is_disconnected_and_nothing_is_stored(
    backend: Backend,
) {
    let app = spawn_app(backend, &[]).await;
    let port = embedded_port(&app.server.mqtt);
    register(&app, "clinic-a", &[("pen-a", 0), ("pen-b", 0)], &[], &[]).await;
    let secret_a = app.pen_secret("pen-a").await;
    let secret_b = app.pen_secret("pen-b").await;
    let mut b = pen(port, "pen-b", &secret_b).await;

    for topic in [
        up("pen-b"),
        down("pen-b"),
        "pentrace/v1/clinics/clinic-a/flags".to_owned(),
        "$SYS/broker/x".to_owned(),
        "anything".to_owned(),
    ] {
        let mut a = pen(port, "pen-a", &secret_a).await;
        // A payload that would be stored if the topic were allowed.
        a.publish(&topic, heartbeat("pen-b", 1).encode_to_vec())
            .await;
        assert!(
            a.wait_closed(Duration::from_secs(10)).await,
            "publishing on {topic} did not close the connection"
        );
        assert!(
            !a.seen.iter().any(|i| matches!(i, Incoming::PubAck(_))),
            "publish on {topic} acknowledged"
        );
    }
    // Nothing stored for pen-b, which heard nothing of it either.
    b.send(&heartbeat("pen-b", 2)).await;
    let seen = b.wait_ack("pen-b", 2).await;
    assert!(seen.is_empty(), "pen-b heard something else: {seen:?}");
    assert_eq!(app.stored("pen-b").await, 1);
    assert_eq!(app.stored("pen-a").await, 0);
    let text = metrics(&app).await;
    assert!(
        text.contains("pentrace_mqtt_denials_total{name=\"publish\"} 5"),
        "{text}"
    );
}

async fn a_pen_may_subscribe_only_to_its_own_down_topic(backend: Backend) {
    let app = spawn_app(backend, &[]).await;
    let port = embedded_port(&app.server.mqtt);
    register(&app, "clinic-a", &[("pen-a", 0), ("pen-b", 0)], &[], &[]).await;
    let secret_a = app.pen_secret("pen-a").await;
    let secret_b = app.pen_secret("pen-b").await;
    let mut a = connect(port, "pen-a", Some(("pen-a", &secret_a)))
        .await
        .expect("pen-a connects");
    let (down_a, down_b) = (down("pen-a"), down("pen-b"));
    let filters = [
        down_b.as_str(),
        "#",
        "$share/pentrace/pentrace/v1/devices/+/up",
        "pentrace/v1/devices/+/up",
        "pentrace/v1/devices/+/down",
        "pentrace/v1/clinics/clinic-a/flags",
        "$SYS/#",
        down_a.as_str(),
    ];
    let codes = a.subscribe(&filters).await;
    let mut want = vec![SubscribeReasonCode::Failure; filters.len() - 1];
    want.push(SubscribeReasonCode::Success(QoS::AtMostOnce));
    assert_eq!(codes, want);

    // pen-b's traffic: stored and acked to pen-b, never seen by pen-a.
    let mut b = pen(port, "pen-b", &secret_b).await;
    for seq in 1..=3 {
        b.send(&heartbeat("pen-b", seq)).await;
    }
    b.wait_ack("pen-b", 3).await;
    a.send(&heartbeat("pen-a", 1)).await;
    a.wait_ack("pen-a", 1).await;
    let topics = a.topics_received().await;
    assert!(
        topics.iter().all(|t| *t == down("pen-a")),
        "pen-a received {topics:?}"
    );
    assert_eq!(app.stored("pen-b").await, 3);
    let text = metrics(&app).await;
    assert!(
        text.contains("pentrace_mqtt_denials_total{name=\"subscribe\"} 7"),
        "{text}"
    );
}

async fn a_new_pen_connects_at_once_and_a_revoked_one_is_disconnected_and_refused(
    backend: Backend,
) {
    let app = spawn_app(backend, &[]).await;
    let port = embedded_port(&app.server.mqtt);
    // Registered and issued while the server runs.
    register(&app, "clinic-a", &[("pen-new", 0)], &[], &[]).await;
    let issued = app
        .issue(pb::CredentialKind::PenSecret, "pen-new", "")
        .await;
    let (credential, secret) = (
        issued.credential.expect("credential").credential_id,
        issued.secret,
    );
    let mut p = pen(port, "pen-new", &secret).await;
    p.send(&heartbeat("pen-new", 1)).await;
    p.wait_ack("pen-new", 1).await;
    assert_eq!(app.stored("pen-new").await, 1);

    revoke(&app, &credential).await;
    assert!(
        p.wait_closed(Duration::from_secs(20)).await,
        "a revoked pen stayed connected"
    );
    assert_eq!(
        connect(port, "pen-new", Some(("pen-new", &secret)))
            .await
            .err(),
        Some(ConnectReturnCode::NotAuthorized)
    );
    let text = metrics(&app).await;
    assert!(
        text.contains("pentrace_mqtt_disconnects_total{name=\"revoked\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("pentrace_mqtt_refused_connects_total{name=\"revoked\"} 1"),
        "{text}"
    );
}

async fn a_second_connection_with_the_same_client_id_takes_over_and_is_reported(backend: Backend) {
    let app = spawn_app(backend, &[]).await;
    let port = embedded_port(&app.server.mqtt);
    register(&app, "clinic-a", &[("pen-a", 0)], &[], &[]).await;
    let secret = app.pen_secret("pen-a").await;
    let mut first = pen(port, "pen-a", &secret).await;
    let mut second = pen(port, "pen-a", &secret).await;
    assert!(
        first.wait_closed(Duration::from_secs(10)).await,
        "the first connection stayed open"
    );
    second.send(&heartbeat("pen-a", 1)).await;
    second.wait_ack("pen-a", 1).await;
    let text = metrics(&app).await;
    assert!(text.contains("pentrace_mqtt_takeovers_total 1"), "{text}");
    assert!(
        text.contains("pentrace_device_auth_shared_total 1"),
        "{text}"
    );
}

async fn a_gateway_speaks_for_its_clinics_pens_only(backend: Backend) {
    let app = spawn_app(backend, &[]).await;
    let port = embedded_port(&app.server.mqtt);
    register(&app, "clinic-a", &[("pen-a1", 0), ("pen-a2", 0)], &[], &[]).await;
    register(&app, "clinic-b", &[("pen-b1", 0)], &[], &[]).await;
    let secret = app.gateway_secret("clinic-a").await;
    // A gateway's client id and username are its name.
    assert_eq!(
        connect(port, "pen-a1", Some(("gw-clinic-a", &secret)))
            .await
            .err(),
        Some(ConnectReturnCode::BadClientId)
    );
    let mut gw = connect(port, "gw-clinic-a", Some(("gw-clinic-a", &secret)))
        .await
        .expect("the gateway connects");
    let codes = gw
        .subscribe(&["pentrace/v1/devices/+/down", &down("pen-b1"), "#"])
        .await;
    assert_eq!(
        codes,
        vec![
            SubscribeReasonCode::Success(QoS::AtMostOnce),
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Failure
        ]
    );
    gw.send(&heartbeat("pen-a1", 1)).await;
    gw.send(&heartbeat("pen-a2", 1)).await;
    gw.wait_ack("pen-a1", 1).await;
    gw.wait_ack("pen-a2", 1).await;
    assert_eq!(app.stored("pen-a1").await, 1);
    assert_eq!(app.stored("pen-a2").await, 1);

    // A device registered nowhere: the pipeline's answer (UNKNOWN_DEVICE),
    // heard through `+/down`; the connection goes on.
    gw.send(&heartbeat("pen-nowhere", 1)).await;
    gw.send(&heartbeat("pen-a1", 2)).await;
    let mut seen = gw.wait_ack("pen-a1", 2).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rejection_codes(&seen).contains(&pb::RejectCode::UnknownDevice) {
        assert!(Instant::now() < deadline, "no UNKNOWN_DEVICE: {seen:?}");
        if let Some(Incoming::Publish(p)) = gw.next(Duration::from_millis(200)).await {
            seen.push(pb::DeviceDownlink::decode(p.payload.as_ref()).expect("downlink"));
        }
    }
    assert_eq!(app.stored("pen-nowhere").await, 0);

    // Another clinic's pen: nothing stored, the gateway disconnected.
    gw.send(&heartbeat("pen-b1", 1)).await;
    assert!(
        gw.wait_closed(Duration::from_secs(10)).await,
        "the gateway stayed connected"
    );
    assert_eq!(app.stored("pen-b1").await, 0);
}

async fn a_taken_port_stops_start_up_with_the_flags_to_change_it_and_no_mqtt_turns_it_off(
    backend: Backend,
) {
    let store = TestStore::create(backend).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let (code, output) = pentrace_run(
        &store,
        &[
            "serve",
            "--plaintext",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--mqtt-port",
            &port,
        ],
    );
    assert_ne!(code, 0, "{output}");
    for needle in [
        format!("127.0.0.1:{port}"),
        "--mqtt-port".into(),
        "--mqtt-url".into(),
        "--no-mqtt".into(),
    ] {
        assert!(output.contains(&needle), "{needle} missing in:\n{output}");
    }

    let server = Server::start(&store, &["--no-mqtt"], &[]).await;
    assert_eq!(server.mqtt, "off");
}

async fn the_simulator_with_every_fault_is_judged_exactly_over_the_embedded_broker(
    backend: Backend,
) {
    let app = spawn_app(backend, &[]).await;
    let port = embedded_port(&app.server.mqtt);
    let truth = crate::sim::truth_file();
    let url = format!("mqtt://127.0.0.1:{port}");
    // `--setup` issues each pen its own secret, its MQTT password. The
    // scenario of `sim::fifty_pens_with_every_fault_over_mqtt_…` (behind
    // Mosquitto), which injects every fault kind.
    let extra = [
        "--devices",
        "50",
        "--sessions",
        "4",
        "--batches",
        "5",
        "--compression",
        "600",
        "--faults",
        crate::sim::EVERY_FAULT,
        "--mqtt-url",
        &url,
    ];
    let mut cmd = crate::sim::sim_command_at(
        &app.grpc,
        &app.admin_token,
        "mqtt",
        "sim-clinic",
        None,
        &truth,
        &extra,
    );
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run sim");
    let report = crate::sim::text(&out);
    assert!(out.status.success(), "sim --verify failed:\n{report}");
    crate::sim::assert_verified(&report);
    crate::sim::assert_every_fault_injected(&truth);
    assert_eq!(app.rows().await.doubled().await, 0);
    let text = metrics(&app).await;
    assert!(!text.contains("pentrace_mqtt_denials_total{"), "{text}");
    let _ = std::fs::remove_file(&truth);
}

async fn a_graceful_stop_acknowledges_what_it_took_once_stored_and_in_order(backend: Backend) {
    use bytes::BytesMut;
    use rumqttc::mqttbytes::v4::{Packet, Publish};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut app = spawn_app(backend, &[]).await;
    let port = embedded_port(&app.server.mqtt);
    register(&app, "clinic-a", &[("pen-a", 0)], &[], &[]).await;
    let secret = app.pen_secret("pen-a").await;
    // Raw packets (a client library may drop what arrives with the close):
    // packet id n is seq n.
    let mut stream = raw_connect(port, "pen-a", &secret, 30).await;
    let total: u16 = 300;
    let mut out = BytesMut::new();
    for seq in 1..=total {
        let mut p = Publish::new(
            up("pen-a"),
            QoS::AtLeastOnce,
            heartbeat("pen-a", u64::from(seq)).encode_to_vec(),
        );
        p.pkid = seq;
        Packet::Publish(p).write(&mut out, 1 << 20).expect("encode");
    }
    stream.write_all(&out).await.expect("publish");
    // Stop while they are in flight.
    eventually(Duration::from_secs(10), "some stored", || async {
        app.stored("pen-a").await > 0
    })
    .await;
    assert!(app.stop().success());
    let mut bytes = BytesMut::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while stream.read_buf(&mut bytes).await.is_ok_and(|n| n > 0) {}
    })
    .await
    .expect("closed within 10 s");
    let mut acked = Vec::new();
    while let Ok(packet) = Packet::read(&mut bytes, 1 << 20) {
        if let Packet::PubAck(ack) = packet {
            acked.push(i64::from(ack.pkid));
        }
    }
    let stored_seqs: Vec<i64> = app
        .rows()
        .await
        .fetch::<(i64,)>("SELECT seq FROM device_messages WHERE device_id = 'pen-a' ORDER BY seq")
        .await
        .into_iter()
        .map(|(seq,)| seq)
        .collect();
    // Everything taken before the stop was settled: each stored one
    // acknowledged, in arrival order, and nothing else.
    assert!(!acked.is_empty(), "nothing acknowledged");
    assert_eq!(acked, stored_seqs);
    assert_eq!(acked, (1..=acked.len() as i64).collect::<Vec<_>>());
}

/// A raw MQTT 3.1.1 connection (rumqttc's codec), for what a client
/// library would not do: go silent.
async fn raw_connect(
    port: u16,
    client_id: &str,
    secret: &str,
    keep_alive: u16,
) -> tokio::net::TcpStream {
    use bytes::BytesMut;
    use rumqttc::mqttbytes::v4::{Connect, Packet};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut connect = Connect::new(client_id);
    connect.keep_alive = keep_alive;
    connect.set_login(client_id, secret);
    let mut out = BytesMut::new();
    Packet::Connect(connect)
        .write(&mut out, 1 << 20)
        .expect("encode");
    stream.write_all(&out).await.expect("write");
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.expect("a CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0], "accepted");
    stream
}

/// Reads until the server closes; how long that took.
async fn until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut buf = [0u8; 64];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

async fn silent_connections_are_closed_after_the_connect_timeout_and_one_and_a_half_keep_alives(
    backend: Backend,
) {
    let app = spawn_app(backend, &[]).await;
    let port = embedded_port(&app.server.mqtt);
    register(&app, "clinic-a", &[("pen-a", 0)], &[], &[]).await;
    let secret = app.pen_secret("pen-a").await;

    // Keep-alive 2 s, then nothing: closed after 3 s.
    let mut quiet = raw_connect(port, "pen-a", &secret, 2).await;
    let took = until_closed(&mut quiet, Duration::from_secs(10))
        .await
        .expect("closed within 10 s");
    assert!(
        took >= Duration::from_millis(2900),
        "closed after {took:?}, before 1.5 keep-alives"
    );
    // No CONNECT at all: closed after the connect time-out (5 s).
    let mut mute = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    assert!(
        until_closed(&mut mute, Duration::from_secs(10))
            .await
            .is_some(),
        "a connection without CONNECT stayed open"
    );
    let text = metrics(&app).await;
    assert!(
        text.contains("pentrace_mqtt_disconnects_total{name=\"keep_alive\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("pentrace_mqtt_refused_connects_total{name=\"connect_timeout\"} 1"),
        "{text}"
    );
}

// PostgreSQL only: it stops a private PostgreSQL cluster (an embedded
// SQLite file cannot go away while its server runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_away_a_connection_is_not_read_past_its_cap_and_nothing_is_lost() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use bytes::BytesMut;
    use pentrace_proto::v1::registry_client::RegistryClient;
    use rumqttc::mqttbytes::v4::{Packet, Publish};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::helpers::pentrace_cli_at;
    use crate::pgcluster::PgCluster;
    use crate::rss::RssSampler;

    let mut pg = PgCluster::create();
    let url = pg.url();
    let server = Server::start_at(&url, "pentrace_front_outage", &[], &[]).await;
    let port = embedded_port(&server.mqtt);
    pentrace_cli_at(&url, &["user", "add", "--name", "Ada", "--role", "admin"]);
    let token = pentrace_cli_at(&url, &["token", "issue", "--user", "Ada"]);
    let channel = tonic::transport::Channel::from_shared(server.grpc.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut registry = RegistryClient::with_interceptor(channel, TestApp::bearer(token.trim()));
    register_on(&mut registry, "clinic-a", &[("pen-a", 0)], &[], &[]).await;
    let secret = registry
        .issue_device_credential(pb::IssueDeviceCredentialRequest {
            kind: pb::CredentialKind::PenSecret as i32,
            principal: "pen-a".into(),
            clinic_id: String::new(),
            replace: false,
        })
        .await
        .expect("secret")
        .into_inner()
        .secret;
    let in_db = || {
        let url = url.clone();
        async move {
            match sqlx::PgPool::connect(&url).await {
                Ok(pool) => sqlx::query_scalar::<_, i64>("SELECT count(*) FROM device_messages")
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(-1),
                Err(_) => -1,
            }
        }
    };

    let stream = raw_connect(port, "pen-a", &secret, 600).await;
    let (mut read, mut write) = stream.into_split();
    let acked = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn({
        let acked = acked.clone();
        async move {
            let mut bytes = BytesMut::new();
            while read.read_buf(&mut bytes).await.is_ok_and(|n| n > 0) {
                while let Ok(packet) = Packet::read(&mut bytes, 1 << 20) {
                    if let Packet::PubAck(_) = packet {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    });
    // ~4 KiB messages, packet id = seq (at most 65,535).
    let publish = |seq: u16| {
        let mut m = heartbeat("pen-a", u64::from(seq));
        m.body = Some(Body::Heartbeat(pb::Heartbeat {
            battery_pct: 50,
            firmware: "f".repeat(4000),
        }));
        let mut p = Publish::new(up("pen-a"), QoS::AtLeastOnce, m.encode_to_vec());
        p.pkid = seq;
        let mut out = BytesMut::new();
        Packet::Publish(p).write(&mut out, 1 << 20).expect("encode");
        out
    };
    write.write_all(&publish(1)).await.expect("publish");
    eventually(Duration::from_secs(15), "the first stored", || async {
        in_db().await == 1
    })
    .await;

    pg.stop_immediate();
    const BACKLOG: u16 = 20_000; // ~80 MiB
    let written = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn({
        let written = written.clone();
        async move {
            for seq in 2..=BACKLOG + 1 {
                write.write_all(&publish(seq)).await.expect("publish");
                written.fetch_add(1, Ordering::Relaxed);
            }
            write
        }
    });
    let sampler = RssSampler::start(server.pid(), Duration::from_millis(100));
    // The server stops reading once 1,000 (or 16 MiB) are unsettled: the
    // writer gets no further than that plus what the sockets buffer.
    crate::rss::wait_steady(
        server.pid(),
        Duration::from_secs(2),
        512,
        Duration::from_secs(30),
    )
    .await;
    let stuck_at = written.load(Ordering::Relaxed);
    let curve = sampler.finish();
    if std::env::var_os("TEST_LOG").is_some() {
        println!(
            "{stuck_at} of {BACKLOG} publishes written with the database away; RSS +{} KiB",
            curve.growth_kib()
        );
    }
    assert!(
        stuck_at < 5_000,
        "{stuck_at} of {BACKLOG} publishes written with the database away"
    );
    assert!(
        curve.growth_kib() < 40 * 1024,
        "RSS grew by {} KiB:\n{curve}",
        curve.growth_kib()
    );
    assert_eq!(acked.load(Ordering::Relaxed), 1, "acked while not stored");

    pg.start();
    let all = i64::from(BACKLOG) + 1;
    eventually(
        Duration::from_secs(60),
        "the whole backlog stored",
        || async { in_db().await == all },
    )
    .await;
    eventually(Duration::from_secs(20), "every publish acked", || async {
        acked.load(Ordering::Relaxed) == all as u64
    })
    .await;
    drop(writer.await.expect("writer"));
    reader.abort();
}
