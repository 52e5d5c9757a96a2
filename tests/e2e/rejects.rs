//! Bad input gets a clear answer, never a panic, and never costs another
//! message: a message that cannot be stored is rejected with its reason on
//! the stream, which goes on; only a frame tonic cannot read ends it.

use chrono::Utc;
use pentrace_proto::v1 as pb;
use pentrace_proto::v1::device_message::Body;
use tonic::Code;

use crate::helpers::{Backend, Downlinks, TestApp, exchange, register, spawn_app, ts};

crate::both_stores!(
    a_refused_message_is_answered_and_the_stream_goes_on,
    bad_content_is_stored_and_flagged_not_refused,
    auto_register_accepts_unknown_devices_into_the_default_clinic,
    sigterm_drains_and_exits_cleanly,
);

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

/// Streams the messages on one stream and returns every downlink.
async fn stream(app: &TestApp, messages: Vec<pb::DeviceMessage>) -> Downlinks {
    let mut client = app
        .telemetry_for("clinic-a")
        .await
        .max_encoding_message_size(4 * 1024 * 1024);
    exchange(&mut client, messages).await
}

async fn a_refused_message_is_answered_and_the_stream_goes_on(backend: Backend) {
    let app = spawn_app(backend, &[]).await;
    register(&app, "clinic-a", &[("pen-1", 0)], &[], &[]).await;

    // An unregistered device between good messages, and a seq of 0 (no
    // idempotency key): each answered, nothing else held back.
    let mut no_key = heartbeat("pen-1", 0);
    no_key.seq = 0;
    let down = stream(
        &app,
        vec![
            heartbeat("pen-1", 1),
            heartbeat("ghost", 1),
            heartbeat("pen-1", 2),
            no_key,
            heartbeat("pen-1", 3),
        ],
    )
    .await;
    assert!(
        down.end.is_ok(),
        "a rejection never ends the stream: {:?}",
        down.end
    );
    let ghost = down
        .rejection("ghost", 1)
        .expect("the unknown device is answered");
    assert_eq!(
        ghost.code,
        pb::RejectCode::UnknownDevice as i32,
        "{ghost:?}"
    );
    assert!(!ghost.retry);
    assert!(ghost.detail.contains("not registered"), "{ghost:?}");
    let zero = down.rejection("pen-1", 0).expect("seq 0 is answered");
    assert_eq!(zero.code, pb::RejectCode::Invalid as i32, "{zero:?}");
    assert!(zero.detail.contains("seq"), "{zero:?}");
    assert_eq!(down.watermark("pen-1"), 3, "every good message acked");
    assert!(
        !down.covers("ghost", 1),
        "a rejected message is never acked"
    );

    // A message over 1 MiB: a frame tonic refuses to read ends the stream.
    let mut huge = heartbeat("pen-1", 6);
    huge.body = Some(Body::Heartbeat(pb::Heartbeat {
        battery_pct: 1,
        firmware: "x".repeat(2 * 1024 * 1024),
    }));
    let down = stream(&app, vec![heartbeat("pen-1", 5), huge]).await;
    let status = down
        .end
        .as_ref()
        .expect_err("an oversized frame ends the stream");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        !down.covers("pen-1", 6),
        "an ack covers only the good message"
    );

    // The server is still serving, and stored exactly the good messages.
    let down = stream(&app, vec![heartbeat("pen-1", 4), heartbeat("pen-1", 5)]).await;
    assert!(down.end.is_ok(), "{:?}", down.end);
    assert_eq!(down.watermark("pen-1"), 5);
    assert_eq!(app.stored("pen-1").await, 5);
    assert_eq!(app.stored("ghost").await, 0);
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
async fn bad_content_is_stored_and_flagged_not_refused(backend: Backend) {
    let app = spawn_app(backend, &[]).await;
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
    let down = stream(&app, vec![start, batch]).await;
    assert!(down.end.is_ok(), "{:?}", down.end);
    assert!(down.rejections.is_empty(), "{:?}", down.rejections);
    assert_eq!(down.watermark("pen-1"), 2);
    let sessions = app.sessions_of("pen-1").await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].area, 17, "an unknown area keeps its number");
    assert_eq!(
        app.count("SELECT count(*) FROM stroke_samples WHERE depth_um = 2147483647")
            .await,
        10
    );
    let flags = crate::rules::flags_of(&app, "pen-1").await;
    for kind in [
        pb::FlagKind::ClockSkew,
        pb::FlagKind::UdiInvalid,
        pb::FlagKind::DepthExceeded,
    ] {
        assert_eq!(
            crate::rules::of_kind(&flags, kind).len(),
            1,
            "{kind:?}: {flags:?}"
        );
    }
    let invalid = crate::rules::of_kind(&flags, pb::FlagKind::UdiInvalid)[0];
    let evidence: serde_json::Value =
        serde_json::from_str(&invalid.evidence_json).expect("evidence");
    assert_eq!(
        evidence["raw_session_id"], "session\u{fffd}seven",
        "{evidence}"
    );
}

async fn auto_register_accepts_unknown_devices_into_the_default_clinic(backend: Backend) {
    let app = spawn_app(backend, &["--auto-register"]).await;
    // An unregistered pen has no credential of its own: a gateway of the
    // default clinic speaks for it.
    register(&app, "default", &[], &[], &[]).await;
    let mut client = app.telemetry_for("default").await;
    let down = exchange(&mut client, vec![heartbeat("new-pen", 1)]).await;
    assert!(down.end.is_ok(), "{:?}", down.end);
    assert_eq!(down.watermark("new-pen"), 1);
    let devices = app
        .fleet()
        .await
        .list_devices(pb::ListDevicesRequest::default())
        .await
        .expect("devices")
        .into_inner()
        .devices;
    let registered: Vec<(String, String)> = devices
        .into_iter()
        .filter_map(|d| d.device)
        .map(|d| (d.device_id, d.clinic_id))
        .collect();
    assert_eq!(registered, [("new-pen".to_owned(), "default".to_owned())]);
}

async fn sigterm_drains_and_exits_cleanly(backend: Backend) {
    let mut app = spawn_app(backend, &[]).await;
    register(&app, "clinic-a", &[("pen-1", 0)], &[], &[]).await;
    let down = stream(&app, (1..=50).map(|s| heartbeat("pen-1", s)).collect()).await;
    assert_eq!(down.watermark("pen-1"), 50);
    let status = app.stop();
    assert!(status.success(), "exit status {status:?}");
}
