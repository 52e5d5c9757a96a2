//! Poison messages — extreme times, huge counts, control characters, every
//! field at its limits — interleaved with good ones, over gRPC and MQTT:
//! every good message is stored and acknowledged, every bad one is stored
//! and flagged, or answered with a rejection; nothing panics and the server
//! is ready afterwards.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use pentrace_proto::v1 as pb;
use pentrace_proto::v1::device_message::Body;
use prost_types::Timestamp;

use crate::broker::Broker;
use crate::helpers::{Backend, TestApp, exchange, register, spawn_app_with, ts};
use crate::ingest::http_get;
use crate::mqtt::{MqttPen, covers, heartbeat};

crate::both_stores!(
    poison_over_grpc_is_stored_and_flagged_or_answered_and_good_messages_pass,
    poison_over_mqtt_is_stored_and_flagged_or_answered_and_good_messages_pass,
);

/// What the server must do with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Stored (and acknowledged), flagged where the content is bad.
    Stored,
    /// Not stored: answered with a rejection.
    Refused,
}

fn at(seconds: i64, nanos: i32) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos })
}

fn context(udi: &str, started_at: Option<Timestamp>) -> pb::SessionContext {
    pb::SessionContext {
        session_id: uuid::Uuid::new_v4().to_string(),
        cartridge: Some(pb::Cartridge {
            udi: udi.into(),
            chip_uid: String::new(),
        }),
        area: pb::TreatmentArea::Cheeks as i32,
        skin: pb::SkinThickness::Thick as i32,
        patient_ref: "p".into(),
        started_at,
    }
}

fn with(
    device: &str,
    seq: u64,
    sent_at: Option<Timestamp>,
    body: Option<Body>,
) -> pb::DeviceMessage {
    pb::DeviceMessage {
        device_id: device.into(),
        seq,
        sent_at,
        body,
    }
}

fn batch(
    ctx: pb::SessionContext,
    started_at: Option<Timestamp>,
    samples: Vec<pb::StrokeSample>,
) -> Body {
    Body::StrokeBatch(pb::StrokeBatch {
        session: Some(ctx),
        started_at,
        samples,
    })
}

/// The poison, seqs from `first` on, each followed by a good heartbeat.
fn poison(device: &str, first: u64) -> Vec<(pb::DeviceMessage, Expect)> {
    let now = Some(ts(Utc::now()));
    let good_udi = "(01)09506000134352(17)301231(10)L1(21)P1";
    let max = pb::StrokeSample {
        offset_ms: u32::MAX,
        strokes: u32::MAX,
        depth_um: u32::MAX,
        speed_hz: u32::MAX,
    };
    let extremes = [i64::MIN, i64::MAX, -8_330_000_000_000, 253_402_300_800];
    let beat = || Some(Body::Heartbeat(pb::Heartbeat::default()));
    let mut bad: Vec<(u64, Option<Timestamp>, Option<Body>, Expect)> = Vec::new();
    for s in extremes {
        bad.push((1, at(s, 0), beat(), Expect::Stored));
        let b = batch(context(good_udi, at(s, -1)), at(s, i32::MAX), vec![max; 10]);
        bad.push((1, now, Some(b), Expect::Stored));
    }
    let odd_beat = Body::Heartbeat(pb::Heartbeat {
        battery_pct: u32::MAX,
        firmware: "\u{0}".repeat(300),
    });
    bad.push((1, None, Some(odd_beat), Expect::Stored));
    let start = Body::SessionStart(pb::SessionStart {
        session: Some(context("(01)09506000134352(21)S\u{0}\u{7}\u{1b}", now)),
        operator_ref: "x".repeat(5000),
        firmware: "ü".repeat(400),
    });
    bad.push((1, now, Some(start), Expect::Stored));
    let huge = batch(context(good_udi, now), now, vec![max; 10_000]);
    bad.push((1, now, Some(huge), Expect::Stored));
    let mut ctx = context(good_udi, now);
    ctx.session_id = "'; DROP TABLE sessions; --".into();
    ctx.area = i32::MAX;
    ctx.skin = -1;
    let end = Body::SessionEnd(pb::SessionEnd {
        session: Some(ctx),
        ended_at: at(i64::MAX, 0),
        total_strokes: u64::MAX,
        reason: 99,
    });
    bad.push((1, now, Some(end), Expect::Stored));
    bad.push((
        1,
        now,
        Some(Body::SessionStart(pb::SessionStart::default())),
        Expect::Stored,
    ));
    // What cannot be keyed or attributed (seq 0 = "seq 0", u64::MAX = "seq
    // above i64::MAX").
    bad.push((0, now, beat(), Expect::Refused));
    bad.push((u64::MAX, now, beat(), Expect::Refused));
    bad.push((1, now, None, Expect::Refused));
    let mut out = Vec::new();
    let mut seq = first;
    for (kind, sent_at, body, expect) in bad {
        let key = match kind {
            1 => {
                seq += 1;
                seq - 1
            }
            fixed => fixed,
        };
        out.push((with(device, key, sent_at, body), expect));
        seq += 1;
        out.push((heartbeat(device, seq - 1), Expect::Stored));
    }
    out
}

/// Flags the poison must have raised, and the server's health afterwards.
async fn check_server(app: &TestApp, device: &str) {
    let flags = crate::rules::flags_of(app, device).await;
    for kind in [
        pb::FlagKind::ClockSkew,
        pb::FlagKind::UdiInvalid,
        pb::FlagKind::DepthExceeded,
    ] {
        assert!(
            !crate::rules::of_kind(&flags, kind).is_empty(),
            "no {kind:?} flag for {device}: {flags:?}"
        );
    }
    let metrics = http_get(&format!("{}/metrics", app.http))
        .await
        .expect("metrics");
    for l in metrics.lines() {
        if l.starts_with("pentrace_ingest_retries_total")
            && (l.contains("\"panic\"") || l.contains("\"writer_restart\""))
        {
            assert!(l.ends_with(" 0"), "{l}");
        }
    }
    assert!(
        http_get(&format!("{}/readyz", app.http)).await.is_some(),
        "the server is ready after the poison"
    );
}

async fn stored(app: &TestApp, device: &str, seq: u64) -> bool {
    app.count(&format!(
        "SELECT count(*) FROM device_messages WHERE device_id = '{device}' AND seq = {seq}"
    ))
    .await
        == 1
}

async fn poison_over_grpc_is_stored_and_flagged_or_answered_and_good_messages_pass(
    backend: Backend,
) {
    let app = spawn_app_with(backend, &["--no-mqtt"], &[]).await;
    register(&app, "clinic-a", &[("pen-g", 0)], &[], &[]).await;
    let messages = poison("pen-g", 1);
    let mut client = app
        .telemetry_for("clinic-a")
        .await
        .max_encoding_message_size(4 << 20);
    let down = exchange(
        &mut client,
        messages.iter().map(|(m, _)| m.clone()).collect(),
    )
    .await;
    assert!(
        down.end.is_ok(),
        "a poison message ended the stream: {:?}",
        down.end
    );
    for (m, expect) in &messages {
        match expect {
            Expect::Stored => {
                assert!(
                    down.covers("pen-g", m.seq),
                    "seq {} not acknowledged",
                    m.seq
                );
                assert!(
                    stored(&app, "pen-g", m.seq).await,
                    "seq {} not stored",
                    m.seq
                );
            }
            Expect::Refused => {
                let r = down
                    .rejection("pen-g", m.seq)
                    .unwrap_or_else(|| panic!("seq {} not answered: {:?}", m.seq, down.rejections));
                assert_eq!(r.code, pb::RejectCode::Invalid as i32, "{r:?}");
                assert!(!r.retry);
            }
        }
    }
    check_server(&app, "pen-g").await;
}

async fn poison_over_mqtt_is_stored_and_flagged_or_answered_and_good_messages_pass(
    backend: Backend,
) {
    let broker = Broker::start();
    let args = [
        "--mqtt-url",
        broker.url.as_str(),
        "--mqtt-client-id",
        "pentrace-poison",
    ];
    let app = spawn_app_with(backend, &args, &[]).await;
    register(&app, "clinic-a", &[("pen-m", 0)], &[], &[]).await;
    let mut pen = MqttPen::connect(&broker, "pen-m").await;
    let messages = poison("pen-m", 1);
    for (m, _) in &messages {
        pen.send(m).await;
    }
    // Raw garbage on the pen's topic: answered, not stored.
    pen.publish_raw("pen-m", vec![0xff; 64]).await;
    let stored_seqs: BTreeSet<u64> = messages
        .iter()
        .filter(|(_, e)| *e == Expect::Stored)
        .map(|(m, _)| m.seq)
        .collect();
    let refused = messages
        .iter()
        .filter(|(_, e)| *e == Expect::Refused)
        .count()
        + 1;
    let mut covered = BTreeSet::new();
    let mut rejections = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while covered.len() < stored_seqs.len() || rejections.len() < refused {
        let d = tokio::time::timeout_at(deadline, pen.downlinks.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "answers missing: covered {covered:?} of {stored_seqs:?}, rejections {rejections:?}"
                )
            })
            .expect("downlinks");
        match d.body {
            Some(pb::device_downlink::Body::Ack(a)) => {
                covered.extend(stored_seqs.iter().copied().filter(|s| covers(&a, *s)));
            }
            Some(pb::device_downlink::Body::Rejection(r)) => rejections.push(r),
            _ => {}
        }
    }
    for s in &stored_seqs {
        assert!(stored(&app, "pen-m", *s).await, "seq {s} not stored");
    }
    assert!(
        rejections
            .iter()
            .any(|r| r.code == pb::RejectCode::Undecodable as i32),
        "{rejections:?}"
    );
    check_server(&app, "pen-m").await;
}
