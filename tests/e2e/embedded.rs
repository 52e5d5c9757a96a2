//! The embedded MQTT broker: `pentrace serve` with no MQTT configuration
//! (but a free port) takes pens' messages over its own broker, with the
//! same refusals as behind Mosquitto; a port in use stops start-up with a
//! message naming the way out.

use std::time::{Duration, Instant};

use chrono::Utc;
use pentrace_proto::v1 as pb;
use pentrace_proto::v1::device_message::Body;
use prost::Message;

use crate::helpers::{Server, TestDb, eventually, pentrace_run, register, spawn_app, ts};
use crate::ingest::http_get;
use crate::mqtt::{MqttPen, heartbeat, session_start};

/// The port of `embedded:127.0.0.1:PORT` on the start-up line.
fn embedded_port(mqtt: &str) -> u16 {
    mqtt.strip_prefix("embedded:127.0.0.1:")
        .unwrap_or_else(|| panic!("not the embedded broker: mqtt={mqtt}"))
        .parse()
        .expect("port")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_mqtt_configuration_takes_pens_over_the_embedded_broker() {
    // No MQTT flag but the free port the helper adds.
    let mut app = spawn_app(&[]).await;
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
    let mut a = MqttPen::connect_port(port, "pen-a").await;

    for seq in 1..=3 {
        a.send(&heartbeat("pen-a", seq)).await;
    }
    a.wait_ack(3).await;
    assert_eq!(
        app.count("SELECT count(*) FROM device_messages WHERE device_id = 'pen-a'")
            .await,
        3
    );

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
    let batch = pb::DeviceMessage {
        device_id: "pen-a".into(),
        seq: 5,
        sent_at: Some(ts(Utc::now())),
        body: Some(Body::StrokeBatch(pb::StrokeBatch {
            session: Some(context(&session, &udi)),
            started_at: Some(ts(Utc::now())),
            samples,
        })),
    };
    a.send(&batch).await;
    let end = pb::DeviceMessage {
        device_id: "pen-a".into(),
        seq: 6,
        sent_at: Some(ts(Utc::now())),
        body: Some(Body::SessionEnd(pb::SessionEnd {
            session: Some(context(&session, &udi)),
            ended_at: Some(ts(Utc::now())),
            total_strokes: 100,
            reason: pb::EndReason::Completed as i32,
        })),
    };
    a.send(&end).await;
    a.wait_ack(6).await;
    let stored = format!(
        "SELECT count(*) FROM sessions WHERE session_id = '{session}' AND ended_at IS NOT NULL"
    );
    assert_eq!(app.count(&stored).await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM stroke_samples WHERE device_id = 'pen-a'")
            .await,
        10
    );

    // pen-a's topic, a payload claiming pen-b: refused, as with Mosquitto.
    a.publish_raw("pen-a", heartbeat("pen-b", 1).encode_to_vec())
        .await;
    // Over max_message_bytes (1 MiB) but within the broker's allowance
    // for the topic: the consumer refuses it and goes on.
    let mut big = heartbeat("pen-a", 7);
    big.body = Some(Body::Heartbeat(pb::Heartbeat {
        battery_pct: 1,
        firmware: "x".repeat(1024 * 1024),
    }));
    a.send(&big).await;
    // Far over: the broker closes that pen's connection before reading it.
    let huge_pen = MqttPen::connect_port(port, "pen-huge").await;
    huge_pen
        .publish_raw("pen-huge", vec![0x42; 3 * 1024 * 1024])
        .await;
    a.send(&heartbeat("pen-a", 8)).await;
    a.wait_ack(8).await;
    assert_eq!(
        app.count("SELECT count(*) FROM device_messages WHERE device_id = 'pen-a'")
            .await,
        7
    );
    assert_eq!(
        app.count("SELECT count(*) FROM device_messages WHERE device_id = 'pen-b'")
            .await,
        0
    );
    let metrics = http_get(&format!("{}/metrics", app.http))
        .await
        .expect("metrics");
    for reason in ["device_mismatch", "oversized"] {
        assert!(
            metrics.contains(&format!("name=\"{reason}\"")),
            "{reason} not counted:\n{metrics}"
        );
    }

    // Flags and cartridge rejections come back over the embedded broker.
    let mut b = MqttPen::connect_port(port, "pen-b").await;
    let second = uuid::Uuid::new_v4().to_string();
    b.send(&session_start("pen-b", 1, &second, &udi)).await;
    let mut seen = b.wait_ack(1).await;
    eventually(Duration::from_secs(10), "a RejectCartridge", || {
        while let Ok(d) = b.downlinks.try_recv() {
            seen.push(d);
        }
        let found = seen
            .iter()
            .any(|d| matches!(d.body, Some(pb::device_downlink::Body::RejectCartridge(_))));
        async move { found }
    })
    .await;
    drop(huge_pen);

    // SIGTERM: drains, stops the broker and exits promptly.
    let asked = Instant::now();
    assert!(app.stop().success());
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "took {:?} to stop",
        asked.elapsed()
    );
    // The port is free again.
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("port released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_stops_start_up_with_the_flags_to_change_it_and_no_mqtt_turns_it_off() {
    let db = TestDb::create().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let (code, output) = pentrace_run(
        &db,
        &[
            "serve",
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

    let server = Server::start(&db, &["--no-mqtt"], &[]).await;
    assert_eq!(server.mqtt, "off");
}
