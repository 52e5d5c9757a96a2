//! The rules of issue 14 against the real binary over gRPC: no reuse hidden
//! by upload order, overuse per cartridge over a resumed chain, each
//! message judged for the cartridge it names, expiry from the shelf life.

use std::collections::BTreeSet;

use chrono::{Duration as Span, Utc};
use pentrace_proto::v1 as pb;
use pentrace_proto::v1::device_message::Body;

use crate::helpers::{Backend, TestApp, register, spawn_app};
use crate::ingest::{Pen, Session, stream, udi};

crate::both_stores!(
    a_backlog_uploaded_in_any_order_flags_the_same_reused_cartridges,
    overuse_adds_up_over_a_resume_and_a_redelivery_counts_once,
    a_batch_naming_another_cartridge_is_judged_for_that_cartridge,
    without_an_expiry_the_shelf_life_from_the_production_date_applies,
    a_session_shows_the_corrected_times_and_the_pens_own,
);

const GTIN: &str = "09506000134352";

pub(crate) fn product(rated_strokes: u64, shelf_life_days: u32) -> pb::Product {
    pb::Product {
        gtin: GTIN.into(),
        name: "Nano 12".into(),
        max_depth_um: 0,
        rated_strokes,
        max_active_s: 0,
        shelf_life_days,
    }
}

pub(crate) fn lot(name: &str) -> pb::Lot {
    pb::Lot {
        gtin: GTIN.into(),
        lot: name.into(),
        ..Default::default()
    }
}

pub(crate) async fn flags_of(app: &TestApp, device: &str) -> Vec<pb::Flag> {
    app.compliance()
        .await
        .list_flags(pb::ListFlagsRequest {
            device_id: device.into(),
            ..Default::default()
        })
        .await
        .expect("list flags")
        .into_inner()
        .flags
}

pub(crate) fn of_kind(flags: &[pb::Flag], kind: pb::FlagKind) -> Vec<&pb::Flag> {
    flags.iter().filter(|f| f.kind == kind as i32).collect()
}

async fn a_backlog_uploaded_in_any_order_flags_the_same_reused_cartridges(backend: Backend) {
    let app = spawn_app(backend, &["--no-mqtt"]).await;
    let orders: [(&str, Vec<usize>); 3] = [
        ("pen-in-order", (0..7).collect()),
        ("pen-reversed", (0..7).rev().collect()),
        ("pen-shuffled", vec![4, 0, 6, 2, 5, 1, 3]),
    ];
    let devices: Vec<(&str, u32)> = orders.iter().map(|(p, _)| (*p, 0)).collect();
    register(&app, "clinic-a", &devices, &[product(0, 0)], &[lot("L1")]).await;
    // Five days offline: A on days 1 and 3, C on days 2, 4 and 5, B and D
    // once. Every pen uploads the same sessions (its own cartridges), in
    // its own order, with an honest clock.
    let day = Span::days(1);
    let t0 = Utc::now() - Span::days(6);
    let plan = [
        ("A", t0),
        ("C", t0 + day),
        ("A", t0 + day * 2),
        ("B", t0 + day * 2 + Span::hours(2)),
        ("C", t0 + day * 3),
        ("D", t0 + day * 3 + Span::hours(1)),
        ("C", t0 + day * 4),
    ];
    let expiry = "301231";
    for (pen_id, order) in &orders {
        let sessions: Vec<Session> = plan
            .iter()
            .map(|(serial, at)| {
                Session::new(&udi(GTIN, expiry, "L1", &format!("{pen_id}-{serial}")), *at)
            })
            .collect();
        let mut pen = Pen::new(pen_id);
        for &i in order {
            pen.session(&sessions[i], 2, 800, Span::zero());
        }
        let acked = stream(&app, pen.sent.clone()).await;
        assert_eq!(acked[*pen_id], pen.seq, "{pen_id}: everything stored");
    }
    let mut reused_per_pen = Vec::new();
    for (pen_id, _) in &orders {
        let flags = flags_of(&app, pen_id).await;
        let reused: BTreeSet<String> = of_kind(&flags, pb::FlagKind::CartridgeReused)
            .iter()
            .map(|f| f.cartridge_id.replace(&format!("{pen_id}-"), ""))
            .collect();
        assert!(
            of_kind(&flags, pb::FlagKind::SessionResumed).is_empty(),
            "{pen_id}: days apart is never a resume: {flags:?}"
        );
        reused_per_pen.push((pen_id, reused));
    }
    let expected: BTreeSet<String> = [format!("{GTIN}:A"), format!("{GTIN}:C")].into();
    for (pen_id, reused) in &reused_per_pen {
        assert_eq!(reused, &expected, "{pen_id}");
    }
}

async fn overuse_adds_up_over_a_resume_and_a_redelivery_counts_once(backend: Backend) {
    let app = spawn_app(backend, &["--no-mqtt"]).await;
    // Rated 250 strokes; each batch is 100.
    register(
        &app,
        "clinic-a",
        &[("pen-1", 0)],
        &[product(250, 0)],
        &[lot("L1")],
    )
    .await;
    let now = Utc::now();
    let first = Session::new(&udi(GTIN, "301231", "L1", "R-1"), now - Span::minutes(30));
    // A reboot: the same cartridge, patient and pen, a minute after the
    // first session's last sample.
    let resumed = Session::new(&first.udi, now - Span::minutes(30) + Span::seconds(62));
    let mut pen = Pen::new("pen-1");
    pen.session(&first, 2, 800, Span::zero());
    pen.session(&resumed, 1, 800, Span::zero());
    let all = pen.sent.clone();
    stream(&app, all.clone()).await;
    // The whole upload again: every message a duplicate.
    stream(&app, all).await;
    let flags = flags_of(&app, "pen-1").await;
    let overused = of_kind(&flags, pb::FlagKind::CartridgeOverused);
    assert_eq!(overused.len(), 1, "{flags:?}");
    assert_eq!(
        overused[0].session_id, resumed.id,
        "the session that crossed in sum"
    );
    let evidence: serde_json::Value =
        serde_json::from_str(&overused[0].evidence_json).expect("json");
    assert_eq!(evidence["strokes"], 300);
    assert_eq!(evidence["counted_per"], "cartridge");
    assert_eq!(of_kind(&flags, pb::FlagKind::SessionResumed).len(), 1);
    let stored = app
        .count(&format!(
            "SELECT strokes FROM cartridges WHERE cartridge_id = '{GTIN}:R-1'"
        ))
        .await;
    assert_eq!(stored, 300, "the redelivery added nothing");
}

/// A stroke batch of `s` that names `udi` instead of the session's own.
fn batch_naming(pen: &mut Pen, s: &Session, udi: &str) {
    let mut named = s.clone();
    named.udi = udi.into();
    let samples = (0..10)
        .map(|i| pb::StrokeSample {
            offset_ms: i * 100,
            strokes: 10,
            depth_um: 800,
            speed_hz: 100,
        })
        .collect();
    pen.samples += 10;
    pen.push(
        Utc::now(),
        Body::StrokeBatch(pb::StrokeBatch {
            session: Some(named.context()),
            started_at: Some(crate::helpers::ts(s.started_at + Span::seconds(30))),
            samples,
        }),
    );
}

async fn a_batch_naming_another_cartridge_is_judged_for_that_cartridge(backend: Backend) {
    let app = spawn_app(backend, &["--no-mqtt"]).await;
    register(
        &app,
        "clinic-a",
        &[("pen-1", 0), ("pen-2", 0)],
        &[product(0, 0)],
        &[lot("L1")],
    )
    .await;
    let now = Utc::now();
    let a = udi(GTIN, "301231", "L1", "A");
    let b = udi(GTIN, "301231", "L1", "B");
    let c = udi(GTIN, "301231", "L1", "C");
    // pen-2 used B earlier today.
    let mut pen2 = Pen::new("pen-2");
    let earlier = Session::new(&b, now - Span::hours(3));
    pen2.session(&earlier, 1, 800, Span::zero());
    stream(&app, pen2.sent.clone()).await;
    // pen-1's session starts with A, then a batch names B (bound to pen-2)
    // and another names C (nobody's).
    let mut pen1 = Pen::new("pen-1");
    let session = Session::new(&a, now - Span::minutes(20));
    pen1.session(&session, 1, 800, Span::zero());
    batch_naming(&mut pen1, &session, &b);
    batch_naming(&mut pen1, &session, &c);
    stream(&app, pen1.sent.clone()).await;
    let flags = flags_of(&app, "pen-1").await;
    let reused = of_kind(&flags, pb::FlagKind::CartridgeReused);
    assert_eq!(reused.len(), 1, "{flags:?}");
    assert_eq!(reused[0].session_id, session.id);
    assert_eq!(reused[0].cartridge_id, format!("{GTIN}:B"));
    let evidence: serde_json::Value = serde_json::from_str(&reused[0].evidence_json).expect("json");
    assert_eq!(evidence["cartridge_changed_in_session"], true);
    assert_eq!(evidence["session_cartridge_id"], format!("{GTIN}:A"));
    // C was claimed by pen-1's session: pen-2 using it next is a reuse.
    let later = Session::new(&c, now - Span::minutes(5));
    pen2.session(&later, 1, 800, Span::zero());
    stream(&app, pen2.sent.clone()).await;
    let flags = flags_of(&app, "pen-2").await;
    let reused = of_kind(&flags, pb::FlagKind::CartridgeReused);
    assert_eq!(reused.len(), 1, "{flags:?}");
    assert_eq!(reused[0].session_id, later.id);
}

async fn without_an_expiry_the_shelf_life_from_the_production_date_applies(backend: Backend) {
    let app = spawn_app(backend, &["--no-mqtt"]).await;
    register(
        &app,
        "clinic-a",
        &[("pen-1", 0)],
        &[product(0, 30)],
        &[lot("L1")],
    )
    .await;
    let today = Utc::now().date_naive();
    let made = |days_ago: i64| (today - Span::days(days_ago)).format("%y%m%d").to_string();
    // Made 31 days ago with 30 days of shelf life: expired yesterday. Made
    // 29 days ago: still good.
    let old = Session::new(
        &format!("(01){GTIN}(11){}(10)L1(21)OLD", made(31)),
        Utc::now(),
    );
    let fresh = Session::new(
        &format!("(01){GTIN}(11){}(10)L1(21)NEW", made(29)),
        Utc::now(),
    );
    let mut pen = Pen::new("pen-1");
    pen.session(&old, 1, 800, Span::zero());
    pen.session(&fresh, 1, 800, Span::zero());
    stream(&app, pen.sent.clone()).await;
    let flags = flags_of(&app, "pen-1").await;
    let expired = of_kind(&flags, pb::FlagKind::CartridgeExpired);
    assert_eq!(expired.len(), 1, "{flags:?}");
    assert_eq!(expired[0].session_id, old.id);
    let evidence: serde_json::Value =
        serde_json::from_str(&expired[0].evidence_json).expect("json");
    assert_eq!(evidence["expiry_source"], "shelf_life");
    assert_eq!(evidence["expiry"], (today - Span::days(1)).to_string());
    // The session records the expiry that applied.
    let sessions = app.sessions_of("pen-1").await;
    let stored = sessions
        .iter()
        .find(|s| s.session_id == old.id)
        .expect("old session");
    assert_eq!(stored.expiry, (today - Span::days(1)).to_string());
}

async fn a_session_shows_the_corrected_times_and_the_pens_own(backend: Backend) {
    let app = spawn_app(backend, &["--no-mqtt"]).await;
    register(
        &app,
        "clinic-a",
        &[("pen-1", 0)],
        &[product(0, 0)],
        &[lot("L1")],
    )
    .await;
    // The pen's clock is an hour behind: its session start reads an hour
    // ago, and so does every sent_at.
    let behind = Span::hours(1);
    let pen_now = Utc::now() - behind;
    let session = Session::new(&udi(GTIN, "301231", "L1", "S-1"), pen_now);
    let mut pen = Pen::new("pen-1");
    pen.session(&session, 1, 800, behind);
    stream(&app, pen.sent.clone()).await;
    let sessions = app.sessions_of("pen-1").await;
    let s = &sessions[0];
    let secs =
        |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| t.seconds).unwrap_or_default();
    assert_eq!(secs(&s.device_started_at), session.started_at.timestamp());
    let corrected = secs(&s.started_at) - secs(&s.device_started_at);
    assert!(
        (3590..=3610).contains(&corrected),
        "corrected by {corrected} s"
    );
    let end = secs(&s.ended_at) - secs(&s.device_ended_at);
    assert!((3590..=3610).contains(&end), "end corrected by {end} s");
    let flags = flags_of(&app, "pen-1").await;
    assert_eq!(
        of_kind(&flags, pb::FlagKind::ClockSkew).len(),
        1,
        "{flags:?}"
    );
}
