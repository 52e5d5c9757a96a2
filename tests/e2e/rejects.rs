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

    // An invalid message (session id that is not a UUID).
    let mut bad = heartbeat("pen-1", 4);
    bad.body = Some(Body::SessionStart(pb::SessionStart {
        session: Some(pb::SessionContext {
            session_id: "not-a-uuid".into(),
            started_at: Some(ts(Utc::now())),
            ..Default::default()
        }),
        ..Default::default()
    }));
    let (acked, end) = stream(&app, vec![heartbeat("pen-1", 3), bad]).await;
    let status = end.expect_err("invalid message must end the stream");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("session_id"), "{status:?}");
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
