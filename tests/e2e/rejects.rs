//! Bad input gets a clear status, never a panic, and never costs the
//! messages sent before it.

use chrono::Utc;
use pentrace_proto::v1 as pb;
use pentrace_proto::v1::device_message::Body;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::helpers::{TestApp, register, spawn_app, ts};

fn heartbeat(device: &str, seq: u64) -> pb::DeviceMessage {
    pb::DeviceMessage {
        device_id: device.into(),
        seq,
        sent_at: Some(ts(Utc::now())),
        body: Some(Body::Heartbeat(pb::Heartbeat {
            battery_pct: 80,
            firmware: "1.0".into(),
        })),
    }
}

/// Streams the messages; returns the last ack and the status that ended
/// the stream (`Ok` when it ended cleanly).
async fn stream(
    app: &TestApp,
    messages: Vec<pb::DeviceMessage>,
) -> (u64, Result<(), tonic::Status>) {
    let mut client = app
        .telemetry()
        .await
        .max_encoding_message_size(4 * 1024 * 1024);
    let mut inbound = client
        .ingest(tokio_stream::iter(messages))
        .await
        .expect("ingest")
        .into_inner();
    let mut last = 0;
    while let Some(item) = inbound.next().await {
        match item {
            Ok(ack) => last = ack.committed_seq,
            Err(status) => return (last, Err(status)),
        }
    }
    (last, Ok(()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_clear_status_after_the_good_messages() {
    let app = spawn_app(&[]).await;
    register(&app, "clinic-a", &[("pen-1", 0)], &[], &[]).await;

    // An unregistered device.
    let (acked, end) = stream(
        &app,
        vec![
            heartbeat("pen-1", 1),
            heartbeat("pen-1", 2),
            heartbeat("ghost", 1),
        ],
    )
    .await;
    let status = end.expect_err("unknown device must end the stream");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("ghost") && status.message().contains("not registered"),
        "{status:?}"
    );
    assert_eq!(
        acked, 2,
        "messages before the bad one are committed and acked"
    );

    // An invalid message: seq 0 cannot be an idempotency key. (Bad content,
    // such as a session id that is not a UUID, is stored and flagged: only
    // what cannot be attributed to a device is refused.)
    let bad = heartbeat("pen-1", 0);
    let (acked, end) = stream(&app, vec![heartbeat("pen-1", 3), bad]).await;
    let status = end.expect_err("invalid message must end the stream");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("seq"), "{status:?}");
    assert_eq!(acked, 3);

    // A message over 1 MiB.
    let mut huge = heartbeat("pen-1", 6);
    huge.body = Some(Body::Heartbeat(pb::Heartbeat {
        battery_pct: 1,
        firmware: "x".repeat(2 * 1024 * 1024),
    }));
    let (acked, end) = stream(&app, vec![heartbeat("pen-1", 5), huge]).await;
    let status = end.expect_err("oversized message must end the stream");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        acked == 5 || acked == 0,
        "an ack, if any, covers only the good message: {acked}"
    );

    // The server is still serving, and stored exactly the good messages.
    let (acked, end) = stream(&app, vec![heartbeat("pen-1", 7)]).await;
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(acked, 7);
    assert_eq!(
        app.count("SELECT count(*) FROM device_messages WHERE device_id = 'pen-1'")
            .await,
        5
    );
    assert_eq!(
        app.count("SELECT count(*) FROM device_messages WHERE device_id = 'ghost'")
            .await,
        0
    );
    let metrics = crate::ingest::http_get(&format!("{}/metrics", app.http))
        .await
        .expect("metrics");
    for reason in ["unknown_device", "invalid_message", "oversized"] {
        assert!(
            metrics.contains(&format!("name=\"{reason}\"")),
            "{reason} not counted:\n{metrics}"
        );
    }
}

/// Issue 12: hostile content that used to refuse (or panic on) a message is
/// stored, with its samples, and flagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_content_is_stored_and_flagged_not_refused() {
    let app = spawn_app(&[]).await;
    register(&app, "clinic-a", &[("pen-1", 0)], &[], &[]).await;
    let far = prost_types::Timestamp {
        seconds: -8_330_000_000_000,
        nanos: 0,
    };
    let context = pb::SessionContext {
        session_id: "session\u{0}seven".into(),
        cartridge: Some(pb::Cartridge {
            udi: "(01)09506000134352(21)SN\u{0}1".into(),
            chip_uid: String::new(),
        }),
        area: 17,
        skin: 9,
        patient_ref: "p\u{7}1".into(),
        started_at: Some(far),
    };
    let sample = pb::StrokeSample {
        offset_ms: u32::MAX,
        strokes: u32::MAX,
        depth_um: u32::MAX,
        speed_hz: u32::MAX,
    };
    let mut start = heartbeat("pen-1", 1);
    start.sent_at = Some(far);
    start.body = Some(Body::SessionStart(pb::SessionStart {
        session: Some(context.clone()),
        operator_ref: "op\u{0}".into(),
        firmware: "1\u{1b}[0m".into(),
    }));
    let mut batch = heartbeat("pen-1", 2);
    batch.body = Some(Body::StrokeBatch(pb::StrokeBatch {
        session: Some(context),
        started_at: Some(prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: -1,
        }),
        samples: vec![sample; 10],
    }));
    let (acked, end) = stream(&app, vec![start, batch]).await;
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(acked, 2);
    assert_eq!(
        app.count(
            "SELECT count(*) FROM sessions WHERE device_id = 'pen-1' AND area = 'unknown(17)'"
        )
        .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM stroke_samples WHERE depth_um = 2147483647")
            .await,
        10
    );
    for kind in ["CLOCK_SKEW", "UDI_INVALID", "DEPTH_EXCEEDED"] {
        assert_eq!(
            app.count(&format!(
                "SELECT count(*) FROM flags WHERE device_id = 'pen-1' AND kind = '{kind}'"
            ))
            .await,
            1,
            "{kind}"
        );
    }
    assert_eq!(
        app.count(
            "SELECT count(*) FROM flags WHERE kind = 'UDI_INVALID' \
             AND evidence->>'raw_session_id' = 'session\u{fffd}seven'"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_register_accepts_unknown_devices_into_the_default_clinic() {
    let app = spawn_app(&["--auto-register"]).await;
    let (acked, end) = stream(&app, vec![heartbeat("new-pen", 1)]).await;
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(acked, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM devices WHERE id = 'new-pen' AND clinic_id = 'default'")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let mut app = spawn_app(&[]).await;
    register(&app, "clinic-a", &[("pen-1", 0)], &[], &[]).await;
    let (acked, _) = stream(&app, (1..=50).map(|s| heartbeat("pen-1", s)).collect()).await;
    assert_eq!(acked, 50);
    let status = app.stop();
    assert!(status.success(), "exit status {status:?}");
}
