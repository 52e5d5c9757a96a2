//! MQTT ingest against a real Mosquitto: acks after commit, spoofing and bad
//! payloads refused without stopping the consumer, cartridge rejections and
//! flags published, and nothing lost across a server restart.

use std::time::Duration;

use chrono::Utc;
use pentrace_proto::v1 as pb;
use pentrace_proto::v1::device_message::Body;
use prost::Message;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::sync::mpsc;

use crate::broker::Broker;
use crate::helpers::{Backend, eventually, register, spawn_app_with, ts};
use crate::ingest::http_get;

crate::both_stores!(
    mqtt_acks_after_commit_and_refuses_spoofing_and_bad_payloads,
    messages_published_while_the_server_is_down_are_stored_after_restart,
);

/// A pen talking MQTT: publishes on its `up` topic, reads its `down` topic.
pub(crate) struct MqttPen {
    id: String,
    client: AsyncClient,
    pub(crate) downlinks: mpsc::UnboundedReceiver<pb::DeviceDownlink>,
}

impl MqttPen {
    pub(crate) async fn connect(broker: &Broker, id: &str) -> MqttPen {
        MqttPen::connect_port(broker.port, id).await
    }

    /// Connects to a broker on 127.0.0.1:`port`.
    pub(crate) async fn connect_port(port: u16, id: &str) -> MqttPen {
        MqttPen::connect_with(port, id, None).await
    }

    /// Connects with its credential, if any (username = device id).
    pub(crate) async fn connect_with(port: u16, id: &str, secret: Option<&str>) -> MqttPen {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_max_packet_size(8 << 20, 8 << 20);
        if let Some(secret) = secret {
            options.set_credentials(id, secret);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        client
            .subscribe(format!("pentrace/v1/devices/{id}/down"), QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let (tx, downlinks) = mpsc::unbounded_channel();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        if let Some(r) = ready_tx.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        if let Ok(d) = pb::DeviceDownlink::decode(p.payload.as_ref()) {
                            let _ = tx.send(d);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .expect("suback")
            .expect("suback");
        MqttPen {
            id: id.into(),
            client,
            downlinks,
        }
    }

    pub(crate) async fn publish_raw(&self, topic_device: &str, payload: Vec<u8>) {
        let topic = format!("pentrace/v1/devices/{topic_device}/up");
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }

    pub(crate) async fn send(&self, msg: &pb::DeviceMessage) {
        self.publish_raw(&self.id, msg.encode_to_vec()).await;
    }

    /// Waits for an ack covering `seq`; returns the other downlinks seen.
    pub(crate) async fn wait_ack(&mut self, seq: u64) -> Vec<pb::DeviceDownlink> {
        let mut others = Vec::new();
        loop {
            let d = tokio::time::timeout(Duration::from_secs(20), self.downlinks.recv())
                .await
                .unwrap_or_else(|_| panic!("no ack of seq {seq} for {}", self.id))
                .expect("downlink channel");
            match &d.body {
                Some(pb::device_downlink::Body::Ack(a)) if covers(a, seq) => return others,
                _ => others.push(d),
            }
        }
    }
}

/// Whether an ack covers the seq (the pen's side of the contract).
pub(crate) fn covers(ack: &pb::IngestAck, seq: u64) -> bool {
    (1..=ack.committed_seq).contains(&seq)
        || ack.stored.iter().any(|r| r.first <= seq && seq <= r.last)
}

/// The reject codes among downlinks.
pub(crate) fn rejection_codes(downlinks: &[pb::DeviceDownlink]) -> Vec<pb::RejectCode> {
    downlinks
        .iter()
        .filter_map(|d| match &d.body {
            Some(pb::device_downlink::Body::Rejection(r)) => {
                Some(pb::RejectCode::try_from(r.code).unwrap_or_default())
            }
            _ => None,
        })
        .collect()
}

pub(crate) fn heartbeat(device: &str, seq: u64) -> pb::DeviceMessage {
    pb::DeviceMessage {
        device_id: device.into(),
        seq,
        sent_at: Some(ts(Utc::now())),
        body: Some(Body::Heartbeat(pb::Heartbeat {
            battery_pct: 50,
            firmware: "1.0".into(),
        })),
    }
}

pub(crate) fn session_start(device: &str, seq: u64, session: &str, udi: &str) -> pb::DeviceMessage {
    pb::DeviceMessage {
        device_id: device.into(),
        seq,
        sent_at: Some(ts(Utc::now())),
        body: Some(Body::SessionStart(pb::SessionStart {
            session: Some(pb::SessionContext {
                session_id: session.into(),
                cartridge: Some(pb::Cartridge {
                    udi: udi.into(),
                    chip_uid: String::new(),
                }),
                area: pb::TreatmentArea::Cheeks as i32,
                skin: pb::SkinThickness::Thick as i32,
                patient_ref: "p".into(),
                started_at: Some(ts(Utc::now())),
            }),
            operator_ref: "op".into(),
            firmware: "1.0".into(),
        })),
    }
}

async fn mqtt_acks_after_commit_and_refuses_spoofing_and_bad_payloads(backend: Backend) {
    let broker = Broker::start();
    let args = [
        "--mqtt-url",
        broker.url.as_str(),
        "--mqtt-client-id",
        "pentrace-test",
    ];
    // A message limit below the broker's, so an oversized payload reaches
    // the consumer and must be refused there without stopping it.
    let app = spawn_app_with(backend, &args, &[("PENTRACE_MAX_MESSAGE_BYTES", "4096")]).await;
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
    let mut a = MqttPen::connect(&broker, "pen-a").await;
    let mut b = MqttPen::connect(&broker, "pen-b").await;

    for seq in 1..=3 {
        a.send(&heartbeat("pen-a", seq)).await;
    }
    a.wait_ack(3).await;
    assert_eq!(app.stored("pen-a").await, 3);

    // pen-a's topic, payload claiming pen-b: spoofing.
    a.publish_raw("pen-a", heartbeat("pen-b", 1).encode_to_vec())
        .await;
    // Oversized, undecodable, and a topic that is not a device topic.
    let mut big = heartbeat("pen-a", 4);
    big.body = Some(Body::Heartbeat(pb::Heartbeat {
        battery_pct: 1,
        firmware: "x".repeat(200) + &"y".repeat(8000),
    }));
    a.send(&big).await;
    a.publish_raw("pen-a", vec![0xff, 0x00, 0x13, 0x37]).await;
    // The consumer goes on: the next good message is committed and acked;
    // the ack does not cover the refused seq 4, and each refusal is
    // answered with its reason.
    a.send(&heartbeat("pen-a", 5)).await;
    let seen = a.wait_ack(5).await;
    let codes = rejection_codes(&seen);
    for code in [
        pb::RejectCode::DeviceMismatch,
        pb::RejectCode::Oversized,
        pb::RejectCode::Undecodable,
    ] {
        assert!(codes.contains(&code), "{code:?} not answered: {seen:?}");
    }
    assert!(
        seen.iter()
            .all(|d| !matches!(&d.body, Some(pb::device_downlink::Body::Ack(a)) if covers(a, 4))),
        "the refused seq 4 was acknowledged: {seen:?}"
    );
    assert_eq!(app.stored("pen-a").await, 4);
    assert_eq!(app.stored("pen-b").await, 0);
    let metrics = http_get(&format!("{}/metrics", app.http))
        .await
        .expect("metrics");
    for reason in ["device_mismatch", "oversized", "undecodable"] {
        assert!(
            metrics.contains(&format!("name=\"{reason}\"")),
            "{reason} not counted:\n{metrics}"
        );
    }

    // A cartridge presented by pen-b after pen-a used it: pen-b is told to
    // stop using it.
    let udi = format!("(01){gtin}(17)301231(10)L1(21)SER-9");
    let first = uuid::Uuid::new_v4().to_string();
    let second = uuid::Uuid::new_v4().to_string();
    a.send(&session_start("pen-a", 6, &first, &udi)).await;
    a.wait_ack(6).await;
    b.send(&session_start("pen-b", 1, &second, &udi)).await;
    let mut seen = b.wait_ack(1).await;
    while !seen
        .iter()
        .any(|d| matches!(d.body, Some(pb::device_downlink::Body::RejectCartridge(_))))
    {
        let d = tokio::time::timeout(Duration::from_secs(10), b.downlinks.recv())
            .await
            .expect("reject")
            .expect("open");
        seen.push(d);
    }
    let reject = seen
        .iter()
        .find_map(|d| match &d.body {
            Some(pb::device_downlink::Body::RejectCartridge(r)) => Some(r.clone()),
            _ => None,
        })
        .expect("reject");
    assert_eq!(reject.session_id, second);
    assert_eq!(reject.reason, "CARTRIDGE_REUSED");
    assert_eq!(reject.cartridge_id, format!("{gtin}:SER-9"));
}

async fn messages_published_while_the_server_is_down_are_stored_after_restart(backend: Backend) {
    let broker = Broker::start();
    let args = [
        "--mqtt-url",
        broker.url.as_str(),
        "--mqtt-client-id",
        "pentrace-restart",
    ];
    // A rolling restart: the same client id comes straight back, so the
    // session (and what the broker queues for it meanwhile) is kept.
    let keep = [("PENTRACE_MQTT__KEEP_SESSION_ON_SHUTDOWN", "true")];
    let mut app = spawn_app_with(backend, &args, &keep).await;
    register(&app, "clinic-a", &[("pen-a", 0)], &[], &[]).await;
    let mut a = MqttPen::connect(&broker, "pen-a").await;
    a.send(&heartbeat("pen-a", 1)).await;
    a.wait_ack(1).await;

    assert!(app.stop().success());
    // The broker keeps the persistent session's messages meanwhile.
    for seq in 2..=200 {
        a.send(&heartbeat("pen-a", seq)).await;
    }
    app.restart(&args, &keep).await;
    a.wait_ack(200).await;
    eventually(Duration::from_secs(10), "all stored", || async {
        app.stored("pen-a").await == 200
    })
    .await;
}
