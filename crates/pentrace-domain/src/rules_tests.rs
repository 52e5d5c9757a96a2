//! Every flag kind (docs/architecture.md, "Flags") at its boundaries.

#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};

use super::*;
use crate::message::{
    Heartbeat, SessionEnd, SessionStart, SkinThickness, StrokeSample, TimeFault, TimeField,
    TreatmentArea, WireTime,
};

const GTIN: &str = "09506000134352";
/// The cartridge id of `udi("A", …)`.
const CART_A: &str = "09506000134352:A";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap()
}

fn udi(serial: &str, expiry: &str) -> String {
    format!("(01){GTIN}(17){expiry}(10)LOT1(21){serial}")
}

fn ctx(session: &str, udi: &str, started_at: DateTime<Utc>) -> SessionContext {
    SessionContext {
        session_id: session.into(),
        cartridge: CartridgeRef {
            udi: udi.into(),
            chip_uid: String::new(),
        },
        area: TreatmentArea::Cheeks,
        skin: SkinThickness::Thick,
        patient_ref: Some("p1".into()),
        started_at,
        raw_session_id: None,
    }
}

fn start(device: &str, ctx: SessionContext, sent_at: DateTime<Utc>) -> DeviceMessage {
    DeviceMessage {
        time_faults: Vec::new(),
        device_id: device.into(),
        seq: 1,
        sent_at,
        body: Body::SessionStart(SessionStart {
            session: ctx,
            operator_ref: "op".into(),
            firmware: "1.0".into(),
        }),
    }
}

fn batch(ctx: SessionContext, depths: &[u32], strokes: u32) -> DeviceMessage {
    let started_at = ctx.started_at;
    let samples = depths
        .iter()
        .enumerate()
        .map(|(i, d)| StrokeSample {
            offset_ms: 100 * i as u32,
            strokes,
            depth_um: *d,
            speed_hz: 100,
        })
        .collect();
    DeviceMessage {
        time_faults: Vec::new(),
        device_id: "pen-1".into(),
        seq: 2,
        sent_at: started_at,
        body: Body::StrokeBatch(StrokeBatch {
            session: ctx,
            started_at,
            samples,
        }),
    }
}

fn known_facts() -> Facts {
    Facts {
        product: Some(ProductFacts {
            max_depth_um: 0,
            rated_strokes: 0,
            max_active_ms: 0,
            shelf_life_days: 0,
        }),
        lot: Some(LotFacts::default()),
        ..Facts::default()
    }
}

fn run(msg: &DeviceMessage, facts: &Facts, received_at: DateTime<Utc>) -> Judgement {
    let ident = msg
        .session()
        .map(|c| identify(&c.cartridge, received_at.date_naive()));
    judge(msg, ident.as_ref(), facts, &Policy::default(), received_at)
}

fn kinds(j: &Judgement) -> Vec<FlagKind> {
    let mut k: Vec<_> = j.verdicts.iter().map(|v| v.kind).collect();
    k.sort();
    k
}

fn bound(session: &str, device: &str, last: DateTime<Utc>) -> Binding {
    Binding {
        session_id: session.into(),
        device_id: device.into(),
        // The judged device's (Facts::default()'s) clinic.
        clinic_id: String::new(),
        patient_ref: Some("p1".into()),
        last_activity_at: last,
        strokes: 0,
        active_ms: 0,
    }
}

#[test]
fn first_session_claims_the_cartridge_without_flags() {
    let msg = start("pen-1", ctx("s1", &udi("A", "301231"), t0()), t0());
    let j = run(&msg, &known_facts(), t0());
    assert_eq!(kinds(&j), vec![]);
    assert_eq!(j.decided, Some(CartridgeRelation::Owner));
}

#[test]
fn owner_session_stays_owner() {
    let msg = start("pen-1", ctx("s1", &udi("A", "301231"), t0()), t0());
    let facts = Facts {
        binding: Some(bound("s1", "pen-1", t0())),
        ..known_facts()
    };
    let j = run(&msg, &facts, t0());
    assert_eq!(j.decided, Some(CartridgeRelation::Owner));
    assert!(j.verdicts.is_empty());
}

#[test]
fn resume_window_boundary() {
    let window = Policy::default().resume_window;
    let last = t0();
    let facts = Facts {
        binding: Some(bound("s1", "pen-1", last)),
        ..known_facts()
    };
    let inside = last + window - Duration::seconds(1);
    let j = run(
        &start("pen-1", ctx("s2", &udi("A", "301231"), inside), inside),
        &facts,
        inside,
    );
    assert_eq!(kinds(&j), vec![FlagKind::SessionResumed]);
    assert_eq!(
        j.decided,
        Some(CartridgeRelation::Resumed {
            owner_session_id: "s1".into()
        })
    );

    let exactly = last + window;
    let j = run(
        &start("pen-1", ctx("s2", &udi("A", "301231"), exactly), exactly),
        &facts,
        exactly,
    );
    assert_eq!(kinds(&j), vec![FlagKind::SessionResumed]);

    let outside = last + window + Duration::seconds(1);
    let j = run(
        &start("pen-1", ctx("s2", &udi("A", "301231"), outside), outside),
        &facts,
        outside,
    );
    assert_eq!(kinds(&j), vec![FlagKind::CartridgeReused]);
    assert_eq!(
        j.decided,
        Some(CartridgeRelation::Reused {
            owner_session_id: "s1".into()
        })
    );
}

#[test]
fn another_device_is_always_reuse() {
    let facts = Facts {
        binding: Some(bound("s1", "pen-1", t0())),
        ..known_facts()
    };
    let at = t0() + Duration::seconds(1);
    let j = run(
        &start("pen-2", ctx("s2", &udi("A", "301231"), at), at),
        &facts,
        at,
    );
    assert_eq!(kinds(&j), vec![FlagKind::CartridgeReused]);
}

#[test]
fn another_patient_is_always_reuse_but_a_missing_one_is_not() {
    let facts = Facts {
        binding: Some(bound("s1", "pen-1", t0())),
        ..known_facts()
    };
    let at = t0() + Duration::seconds(1);
    let mut other = ctx("s2", &udi("A", "301231"), at);
    other.patient_ref = Some("p2".into());
    let j = run(&start("pen-1", other.clone(), at), &facts, at);
    assert_eq!(kinds(&j), vec![FlagKind::CartridgeReused]);

    other.patient_ref = None;
    let j = run(&start("pen-1", other, at), &facts, at);
    assert_eq!(kinds(&j), vec![FlagKind::SessionResumed]);
}

#[test]
fn a_decided_session_is_not_judged_again() {
    let facts = Facts {
        binding: Some(bound("s1", "pen-1", t0())),
        session: SessionFacts {
            relation: Some(CartridgeRelation::Reused {
                owner_session_id: "s1".into(),
            }),
            cartridge_id: Some(CART_A.into()),
            ..SessionFacts::default()
        },
        ..known_facts()
    };
    let j = run(
        &batch(ctx("s2", &udi("A", "301231"), t0()), &[500], 10),
        &facts,
        t0(),
    );
    assert!(j.verdicts.is_empty());
    assert_eq!(j.decided, None);
    assert_eq!(j.swapped, None);
}

#[test]
fn expiry_is_judged_through_the_whole_expiry_day() {
    let on_day = Utc.with_ymd_and_hms(2026, 11, 30, 23, 59, 59).unwrap();
    let msg = start("pen-1", ctx("s1", &udi("A", "261100"), on_day), on_day);
    assert_eq!(kinds(&run(&msg, &known_facts(), on_day)), vec![]);

    let next_day = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
    let msg = start("pen-1", ctx("s1", &udi("A", "261100"), next_day), next_day);
    let j = run(&msg, &known_facts(), next_day);
    assert_eq!(kinds(&j), vec![FlagKind::CartridgeExpired]);
    // Day 00 is the month's last day.
    assert_eq!(j.verdicts[0].evidence["expiry"], "2026-11-30");
}

#[test]
fn lot_registry_expiry_applies_when_earlier() {
    let lot = LotFacts {
        expiry: NaiveDate::from_ymd_opt(2026, 11, 24),
        recalled_at: None,
    };
    let facts = Facts {
        lot: Some(lot),
        ..known_facts()
    };
    let msg = start("pen-1", ctx("s1", &udi("A", "301231"), t0()), t0());
    assert_eq!(
        kinds(&run(&msg, &facts, t0())),
        vec![FlagKind::CartridgeExpired]
    );
}

/// A product with a shelf life, the rest of its limits off.
fn shelf_life(days: u32) -> Facts {
    Facts {
        product: Some(ProductFacts {
            shelf_life_days: days,
            ..Default::default()
        }),
        ..known_facts()
    }
}

#[test]
fn without_any_expiry_the_production_date_and_shelf_life_apply() {
    // Produced 2024-11-25, 730 days of shelf life: expired 2026-11-25, so
    // usable through that day and expired on the next.
    let made = format!("(01){GTIN}(11)241125(10)LOT1(21)A");
    let on_day = start("pen-1", ctx("s1", &made, t0()), t0());
    assert_eq!(kinds(&run(&on_day, &shelf_life(730), t0())), vec![]);
    let next = t0() + Duration::days(1);
    let after = start("pen-1", ctx("s1", &made, next), next);
    let j = run(&after, &shelf_life(730), next);
    assert_eq!(kinds(&j), vec![FlagKind::CartridgeExpired]);
    assert_eq!(j.verdicts[0].evidence["expiry"], "2026-11-25");
    // A shelf life of 0 is "none given": no expiry is known.
    assert_eq!(kinds(&run(&after, &shelf_life(0), next)), vec![]);
    // The longest shelf life the wire can carry does not overflow.
    assert_eq!(kinds(&run(&after, &shelf_life(u32::MAX), next)), vec![]);
}

#[test]
fn the_shelf_life_yields_to_the_udi_and_lot_expiry() {
    // Long expired by its shelf life, but (17) or the lot says otherwise.
    let labelled = format!("(01){GTIN}(11)200101(17)301231(10)LOT1(21)A");
    let msg = start("pen-1", ctx("s1", &labelled, t0()), t0());
    assert_eq!(kinds(&run(&msg, &shelf_life(30), t0())), vec![]);
    let unlabelled = format!("(01){GTIN}(11)200101(10)LOT1(21)B");
    let msg = start("pen-1", ctx("s2", &unlabelled, t0()), t0());
    let lot = LotFacts {
        expiry: NaiveDate::from_ymd_opt(2030, 12, 31),
        recalled_at: None,
    };
    let facts = Facts {
        lot: Some(lot),
        ..shelf_life(30)
    };
    assert_eq!(kinds(&run(&msg, &facts, t0())), vec![]);
}

#[test]
fn a_backfilled_session_is_judged_when_it_happened() {
    // Cartridge expired 2026-11-20; the session ran on the 19th with an
    // honest clock and was uploaded six days later: not expired.
    let session_at = Utc.with_ymd_and_hms(2026, 11, 19, 9, 0, 0).unwrap();
    let msg = start("pen-1", ctx("s1", &udi("A", "261120"), session_at), t0());
    assert_eq!(kinds(&run(&msg, &known_facts(), t0())), vec![]);
}

#[test]
fn a_pen_whose_clock_is_a_year_behind_cannot_hide_an_expired_cartridge() {
    let year = Duration::days(365);
    let device_now = t0() - year;
    let msg = start(
        "pen-1",
        ctx("s1", &udi("A", "261120"), device_now),
        device_now,
    );
    let j = run(&msg, &known_facts(), t0());
    assert_eq!(
        kinds(&j),
        vec![FlagKind::CartridgeExpired, FlagKind::ClockSkew]
    );
}

#[test]
fn skew_inside_the_window_does_not_correct_times() {
    let skew = Policy::default().skew_window;
    let device_now = Utc.with_ymd_and_hms(2026, 11, 20, 23, 57, 0).unwrap();
    let received = device_now + skew;
    let msg = start(
        "pen-1",
        ctx("s1", &udi("A", "261120"), device_now),
        device_now,
    );
    assert_eq!(kinds(&run(&msg, &known_facts(), received)), vec![]);
}

#[test]
fn clock_skew_boundary() {
    let window = Policy::default().skew_window;
    let hb = |sent_at| DeviceMessage {
        time_faults: Vec::new(),
        device_id: "pen-1".into(),
        seq: 9,
        sent_at,
        body: Body::Heartbeat(Heartbeat {
            battery_pct: 50,
            firmware: "1".into(),
        }),
    };
    assert!(
        run(&hb(t0() - window), &known_facts(), t0())
            .verdicts
            .is_empty()
    );
    assert!(
        run(&hb(t0() + window), &known_facts(), t0())
            .verdicts
            .is_empty()
    );
    let late = run(
        &hb(t0() - window - Duration::seconds(1)),
        &known_facts(),
        t0(),
    );
    assert_eq!(kinds(&late), vec![FlagKind::ClockSkew]);
    let early = run(
        &hb(t0() + window + Duration::seconds(1)),
        &known_facts(),
        t0(),
    );
    assert_eq!(kinds(&early), vec![FlagKind::ClockSkew]);
}

#[test]
fn recall_before_session_is_recalled_and_after_is_exposure() {
    let before = LotFacts {
        expiry: None,
        recalled_at: Some(t0() - Duration::seconds(1)),
    };
    let facts = Facts {
        lot: Some(before),
        ..known_facts()
    };
    let msg = start("pen-1", ctx("s1", &udi("A", "301231"), t0()), t0());
    assert_eq!(
        kinds(&run(&msg, &facts, t0())),
        vec![FlagKind::CartridgeRecalled]
    );

    let after = LotFacts {
        expiry: None,
        recalled_at: Some(t0() + Duration::seconds(1)),
    };
    let facts = Facts {
        lot: Some(after),
        ..known_facts()
    };
    assert_eq!(
        kinds(&run(&msg, &facts, t0())),
        vec![FlagKind::RecallExposure]
    );
}

#[test]
fn unknown_gtin_is_flagged() {
    let facts = Facts {
        product: None,
        lot: None,
        ..Facts::default()
    };
    let msg = start("pen-1", ctx("s1", &udi("A", "301231"), t0()), t0());
    assert_eq!(
        kinds(&run(&msg, &facts, t0())),
        vec![FlagKind::CartridgeUnknown]
    );
}

#[test]
fn invalid_udi_is_flagged_and_leaves_the_cartridge_unidentified() {
    let bad = "(01)09506000134353(17)301231(10)LOT1(21)A";
    let msg = start("pen-1", ctx("s1", bad, t0()), t0());
    let j = run(&msg, &known_facts(), t0());
    assert_eq!(kinds(&j), vec![FlagKind::UdiInvalid]);
    assert_eq!(j.decided, Some(CartridgeRelation::Unidentified));
    assert!(
        j.verdicts[0].detail.contains("check digit"),
        "{}",
        j.verdicts[0].detail
    );
}

#[test]
fn a_udi_without_serial_is_invalid_unless_a_chip_identifies_it() {
    let no_serial = format!("(01){GTIN}(17)301231(10)LOT1");
    let msg = start("pen-1", ctx("s1", &no_serial, t0()), t0());
    assert_eq!(
        kinds(&run(&msg, &known_facts(), t0())),
        vec![FlagKind::UdiInvalid]
    );

    let mut with_chip = ctx("s1", &no_serial, t0());
    with_chip.cartridge.chip_uid = "04AB".into();
    let j = run(&start("pen-1", with_chip, t0()), &known_facts(), t0());
    assert_eq!(kinds(&j), vec![]);
    assert_eq!(j.decided, Some(CartridgeRelation::Owner));
}

#[test]
fn depth_limit_boundary_default_device_and_product() {
    let decided = Facts {
        session: SessionFacts {
            relation: Some(CartridgeRelation::Owner),
            cartridge_id: Some(CART_A.into()),
            ..Default::default()
        },
        ..known_facts()
    };
    let mut c = ctx("s1", &udi("A", "301231"), t0());
    c.area = TreatmentArea::Unspecified; // no area guidance: the limit alone
    let at_limit = run(&batch(c.clone(), &[1000, 2000], 10), &decided, t0());
    assert_eq!(kinds(&at_limit), vec![]);
    let over = run(&batch(c.clone(), &[2001], 10), &decided, t0());
    assert_eq!(kinds(&over), vec![FlagKind::DepthExceeded]);

    let device = Facts {
        device_max_depth_um: 1500,
        ..decided.clone()
    };
    assert_eq!(
        kinds(&run(&batch(c.clone(), &[1501], 10), &device, t0())),
        vec![FlagKind::DepthExceeded]
    );
    let product = Facts {
        product: Some(ProductFacts {
            max_depth_um: 1200,
            ..Default::default()
        }),
        ..decided
    };
    assert_eq!(
        kinds(&run(&batch(c.clone(), &[1200], 10), &product, t0())),
        vec![]
    );
    assert_eq!(
        kinds(&run(&batch(c, &[1201], 10), &product, t0())),
        vec![FlagKind::DepthExceeded]
    );
}

#[test]
fn depth_above_area_guidance_boundary() {
    let decided = Facts {
        session: SessionFacts {
            relation: Some(CartridgeRelation::Owner),
            cartridge_id: Some(CART_A.into()),
            ..Default::default()
        },
        ..known_facts()
    };
    let mut c = ctx("s1", &udi("A", "301231"), t0());
    c.area = TreatmentArea::Forehead;
    c.skin = SkinThickness::Thin;
    assert_eq!(
        kinds(&run(&batch(c.clone(), &[500], 10), &decided, t0())),
        vec![]
    );
    assert_eq!(
        kinds(&run(&batch(c.clone(), &[501], 10), &decided, t0())),
        vec![FlagKind::DepthAboveAreaGuidance]
    );
    // Both limits at once are two facts, two flags.
    assert_eq!(
        kinds(&run(&batch(c, &[2100], 10), &decided, t0())),
        vec![FlagKind::DepthExceeded, FlagKind::DepthAboveAreaGuidance]
    );
}

#[test]
fn overuse_boundary_on_strokes_and_active_time() {
    let product = ProductFacts {
        max_depth_um: 0,
        rated_strokes: 1000,
        max_active_ms: 0,
        shelf_life_days: 0,
    };
    let before = |strokes, active_ms| Facts {
        product: Some(product.clone()),
        session: SessionFacts {
            relation: Some(CartridgeRelation::Owner),
            cartridge_id: Some(CART_A.into()),
            strokes,
            active_ms,
        },
        ..known_facts()
    };
    let c = ctx("s1", &udi("A", "301231"), t0());
    // 10 samples × 10 strokes = 100 strokes in the batch.
    assert_eq!(
        kinds(&run(
            &batch(c.clone(), &[500; 10], 10),
            &before(900, 0),
            t0()
        )),
        vec![]
    );
    assert_eq!(
        kinds(&run(
            &batch(c.clone(), &[500; 10], 10),
            &before(901, 0),
            t0()
        )),
        vec![FlagKind::CartridgeOverused]
    );

    let timed = ProductFacts {
        max_depth_um: 0,
        rated_strokes: 0,
        max_active_ms: 60_000,
        shelf_life_days: 0,
    };
    let facts = |active_ms| Facts {
        product: Some(timed.clone()),
        session: SessionFacts {
            relation: Some(CartridgeRelation::Owner),
            cartridge_id: Some(CART_A.into()),
            strokes: 0,
            active_ms,
        },
        ..known_facts()
    };
    // 10 samples of 100 ms = 1,000 ms active.
    assert_eq!(
        kinds(&run(
            &batch(c.clone(), &[500; 10], 10),
            &facts(59_000),
            t0()
        )),
        vec![]
    );
    assert_eq!(
        kinds(&run(&batch(c, &[500; 10], 10), &facts(59_001), t0())),
        vec![FlagKind::CartridgeOverused]
    );
}

#[test]
fn data_gap_boundary() {
    let hole = SeqHole {
        device_id: "pen-1".into(),
        first: 5,
        last: 7,
        detected_at: t0(),
    };
    let window = Policy::default().gap_window;
    let p = Policy::default();
    assert_eq!(
        judge_gap(&hole, t0() + window - Duration::seconds(1), &p),
        None
    );
    let v = judge_gap(&hole, t0() + window, &p).unwrap();
    assert_eq!(v.kind, FlagKind::DataGap);
    assert_eq!(v.evidence["missing"], 3);
}

#[test]
fn session_end_and_batch_report_activity_time() {
    let c = ctx("s1", &udi("A", "301231"), t0());
    let end_at = t0() + Duration::minutes(20);
    let msg = DeviceMessage {
        time_faults: Vec::new(),
        device_id: "pen-1".into(),
        seq: 3,
        sent_at: end_at,
        body: Body::SessionEnd(SessionEnd {
            session: c.clone(),
            ended_at: end_at,
            total_strokes: 0,
            reason: crate::message::EndReason::Completed,
        }),
    };
    assert_eq!(run(&msg, &known_facts(), end_at).activity_at, Some(end_at));
    let b = batch(c, &[500; 10], 10);
    assert_eq!(
        run(&b, &known_facts(), t0()).activity_at,
        Some(t0() + Duration::milliseconds(900))
    );
}

#[test]
fn every_kind_has_a_verdict_key_scoped_to_its_subject() {
    let a = recall_exposure("s1", GTIN, "L", t0());
    let b = recall_exposure("s2", GTIN, "L", t0());
    assert_ne!(a.dedupe_key, b.dedupe_key);
    assert_eq!(a.severity, crate::flag::Severity::Critical);
}

// ------------------------------------------------- hostile input (issue 12)

#[test]
fn extreme_device_times_never_panic() {
    // The fuzz finding of issue 12: a sent_at near chrono's minimum (seconds
    // -8.33e12) made `corrected` overflow; a batch start near the maximum made
    // `batch_end` and the sample times overflow.
    let far_past = DateTime::from_timestamp(-8_330_000_000_000, 0).unwrap();
    let far_future = DateTime::<Utc>::MAX_UTC;
    let c = ctx("s1", &udi("A", "301231"), far_past);
    let mut msg = batch(c, &[500; 3], 10);
    msg.sent_at = far_past;
    if let Body::StrokeBatch(b) = &mut msg.body {
        b.started_at = far_future;
        b.samples[2].offset_ms = u32::MAX;
    }
    let j = run(&msg, &known_facts(), t0());
    assert!(kinds(&j).contains(&FlagKind::ClockSkew));
    assert_eq!(j.activity_at, Some(DateTime::<Utc>::MAX_UTC));
    let at = corrected(far_future, far_past, t0(), &Policy::default());
    assert_eq!(at, DateTime::<Utc>::MAX_UTC);
    let at = corrected(far_past, far_future, t0(), &Policy::default());
    assert_eq!(at, DateTime::<Utc>::MIN_UTC);
}

fn fault(field: TimeField, raw: Option<WireTime>, used: DateTime<Utc>) -> TimeFault {
    TimeFault { field, raw, used }
}

#[test]
fn a_replaced_device_time_raises_clock_skew_with_the_reason() {
    let mut msg = start("pen-1", ctx("s1", &udi("A", "301231"), t0()), t0());
    msg.time_faults = vec![
        fault(TimeField::SentAt, None, t0()),
        fault(
            TimeField::SessionStartedAt,
            Some(WireTime {
                seconds: -8_330_000_000_000,
                nanos: -1,
            }),
            t0(),
        ),
    ];
    let j = run(&msg, &known_facts(), t0());
    assert_eq!(kinds(&j), vec![FlagKind::ClockSkew]);
    let v = &j.verdicts[0];
    assert_eq!(v.severity, crate::flag::Severity::Warning);
    // The same key as a measured skew of the session: one flag per session.
    assert_eq!(v.dedupe_key, "device:pen-1:session:s1:CLOCK_SKEW");
    assert_eq!(
        v.detail,
        "sent_at missing; judged at receive time; session.started_at out of range \
         (seconds -8330000000000, nanos -1); judged at the message's sent_at (message seq 1)"
    );
    let faults = v.evidence["time_faults"].as_array().unwrap();
    assert_eq!(faults[0]["field"], "sent_at");
    assert_eq!(faults[0]["problem"], "missing");
    assert_eq!(
        faults[0]["reason"],
        "sent_at missing; judged at receive time"
    );
    assert_eq!(faults[0]["seconds"], serde_json::Value::Null);
    assert_eq!(faults[1]["field"], "session.started_at");
    assert_eq!(faults[1]["seconds"], -8_330_000_000_000i64);
    assert_eq!(faults[1]["nanos"], -1);
    assert_eq!(faults[1]["judged_at"], t0().to_rfc3339());
}

#[test]
fn a_replaced_time_and_a_measured_skew_share_one_verdict() {
    let late = t0() + Duration::hours(1);
    let mut msg = batch(ctx("s1", &udi("A", "301231"), t0()), &[500], 1);
    msg.time_faults = vec![fault(TimeField::BatchStartedAt, None, t0())];
    let j = run(&msg, &known_facts(), late);
    let skews: Vec<_> = j
        .verdicts
        .iter()
        .filter(|v| v.kind == FlagKind::ClockSkew)
        .collect();
    assert_eq!(skews.len(), 1);
    assert!(
        skews[0]
            .detail
            .starts_with("stroke_batch.started_at missing; judged at the message's sent_at; device clock differs from server time by 3600 s"),
        "{}",
        skews[0].detail
    );
    assert_eq!(skews[0].evidence["skew_s"], 3600);
}

#[test]
fn a_heartbeat_with_a_replaced_sent_at_is_flagged_per_device_and_day() {
    let mut msg = DeviceMessage::new(
        "pen-1".into(),
        4,
        t0(),
        Body::Heartbeat(Heartbeat {
            battery_pct: 50,
            firmware: String::new(),
        }),
    );
    msg.time_faults = vec![fault(TimeField::SentAt, None, t0())];
    let j = run(&msg, &known_facts(), t0());
    assert_eq!(kinds(&j), vec![FlagKind::ClockSkew]);
    assert_eq!(
        j.verdicts[0].dedupe_key,
        "device:pen-1:day:2026-11-25:CLOCK_SKEW"
    );
}

#[test]
fn a_derived_session_id_shows_the_raw_one_in_every_verdict() {
    let mut c = ctx("", "", t0());
    c.session_id = crate::message::derived_session_id("pen-1", "not a uuid");
    c.raw_session_id = Some("not a uuid".into());
    let j = run(&start("pen-1", c, t0()), &known_facts(), t0());
    assert_eq!(kinds(&j), vec![FlagKind::UdiInvalid]);
    assert_eq!(j.verdicts[0].evidence["raw_session_id"], "not a uuid");
}

#[test]
fn depths_and_counts_at_u32_max_are_judged_on_their_true_values() {
    let mut facts = known_facts();
    facts.product = Some(ProductFacts {
        max_depth_um: 0,
        rated_strokes: 1,
        max_active_ms: 0,
        shelf_life_days: 0,
    });
    facts.session.relation = Some(CartridgeRelation::Owner);
    facts.session.cartridge_id = Some(CART_A.into());
    facts.session.strokes = u64::MAX - 1;
    facts.session.active_ms = u64::MAX;
    let j = run(
        &batch(
            ctx("s1", &udi("A", "301231"), t0()),
            &[u32::MAX; 2],
            u32::MAX,
        ),
        &facts,
        t0(),
    );
    let deep = j
        .verdicts
        .iter()
        .find(|v| v.kind == FlagKind::DepthExceeded)
        .unwrap();
    assert_eq!(deep.evidence["depth_um"], u64::from(u32::MAX));
    let over = j
        .verdicts
        .iter()
        .find(|v| v.kind == FlagKind::CartridgeOverused)
        .unwrap();
    assert_eq!(over.evidence["strokes"], u64::MAX);
}

#[test]
fn an_unknown_area_is_judged_without_guidance_and_keeps_its_number() {
    let mut c = ctx("s1", &udi("A", "301231"), t0());
    c.area = TreatmentArea::Unknown(17);
    let j = run(&batch(c, &[1999], 1), &known_facts(), t0());
    assert_eq!(kinds(&j), vec![]);
    assert_eq!(TreatmentArea::Unknown(17).name(), "unknown(17)");
    assert_eq!(
        TreatmentArea::parse("unknown(17)"),
        TreatmentArea::Unknown(17)
    );
    assert_eq!(
        TreatmentArea::parse("unknown(-3)"),
        TreatmentArea::Unknown(-3)
    );
    for a in TreatmentArea::ALL {
        assert_eq!(TreatmentArea::parse(&a.name()), a);
    }
    assert_eq!(TreatmentArea::parse("nonsense"), TreatmentArea::Unspecified);
}

#[test]
fn derived_session_ids_are_stable_uuids_per_device_and_raw_id() {
    use crate::message::derived_session_id;
    let a = derived_session_id("pen-1", "abc");
    assert_eq!(a, derived_session_id("pen-1", "abc"));
    assert_ne!(a, derived_session_id("pen-2", "abc"));
    assert_ne!(a, derived_session_id("pen-1", "abd"));
    assert_ne!(
        derived_session_id("pen-1", "1abc"),
        derived_session_id("pen-11", "abc")
    );
    let parsed = uuid::Uuid::parse_str(&a).unwrap();
    assert_eq!(parsed.to_string(), a);
    assert_eq!(parsed.get_version_num(), 8);
}

#[test]
fn a_reuse_in_another_clinic_says_when_but_not_where() {
    let last = t0();
    let later = last + Duration::days(2);
    let msg = start("pen-a9", ctx("sess-a", &udi("A", "301231"), later), later);
    let owner = Binding {
        clinic_id: "clinic-b".into(),
        ..bound("sess-b-owner", "pen-b7", last)
    };
    let text = |j: &Judgement| {
        j.verdicts
            .iter()
            .map(|v| format!("{} {}", v.detail, v.evidence))
            .collect::<String>()
    };
    // Same clinic: the owner is named.
    let same = Facts {
        binding: Some(Binding {
            clinic_id: "clinic-a".into(),
            ..owner.clone()
        }),
        clinic_id: "clinic-a".into(),
        ..known_facts()
    };
    let j = run(&msg, &same, later);
    assert_eq!(kinds(&j), vec![FlagKind::CartridgeReused]);
    assert!(text(&j).contains("sess-b-owner") && text(&j).contains("pen-b7"));
    // Another clinic: still a reuse, with when, never the device or session.
    let other = Facts {
        binding: Some(owner),
        clinic_id: "clinic-a".into(),
        ..known_facts()
    };
    let j = run(&msg, &other, later);
    assert_eq!(kinds(&j), vec![FlagKind::CartridgeReused]);
    let said = text(&j);
    assert!(
        !said.contains("sess-b-owner") && !said.contains("pen-b7") && !said.contains("clinic-b"),
        "{said}"
    );
    assert!(
        said.contains("another clinic") && said.contains(&last.to_rfc3339()),
        "{said}"
    );
}

// ---- issue 14: resumes only forward, overuse per cartridge, each message
// ---- judged alone, expiry from the shelf life

/// Starts `s2` on pen-1 with cartridge A at `at`, the cartridge last active
/// at `last` in `s1` on the same pen.
fn resume_attempt(last: DateTime<Utc>, at: DateTime<Utc>) -> Judgement {
    let facts = Facts {
        binding: Some(bound("s1", "pen-1", last)),
        ..known_facts()
    };
    run(
        &start("pen-1", ctx("s2", &udi("A", "301231"), at), at),
        &facts,
        at,
    )
}

#[test]
fn a_resume_starts_after_the_last_activity_give_or_take_the_tolerance() {
    let p = Policy::default();
    let last = t0();
    let s = Duration::seconds(1);
    // The backward edge: up to the tolerance before the last activity.
    for at in [
        last,
        last - p.resume_tolerance + s,
        last - p.resume_tolerance,
    ] {
        assert_eq!(
            kinds(&resume_attempt(last, at)),
            vec![FlagKind::SessionResumed],
            "{at}"
        );
    }
    for at in [
        last - p.resume_tolerance - s,
        last - Duration::hours(1),
        last - Duration::days(2),
    ] {
        let j = resume_attempt(last, at);
        assert_eq!(kinds(&j), vec![FlagKind::CartridgeReused], "{at}");
        assert_eq!(
            j.decided,
            Some(CartridgeRelation::Reused {
                owner_session_id: "s1".into()
            })
        );
    }
    // The forward edge: the window, inclusive.
    assert_eq!(
        kinds(&resume_attempt(last, last + p.resume_window)),
        vec![FlagKind::SessionResumed]
    );
    assert_eq!(
        kinds(&resume_attempt(last, last + p.resume_window + s)),
        vec![FlagKind::CartridgeReused]
    );
}

/// A pen's sessions, each a start and one batch, fed through `judge` the
/// way the pipeline applies it (bind-once, activity moved only by the
/// owner's procedure); the cartridges flagged as reused.
fn reused_cartridges(sessions: &[(String, &str, DateTime<Utc>)]) -> Vec<String> {
    use std::collections::{BTreeSet, HashMap};
    let mut bindings: HashMap<String, Binding> = HashMap::new();
    let mut relations: HashMap<String, CartridgeRelation> = HashMap::new();
    let mut reused = BTreeSet::new();
    for (session, serial, at) in sessions {
        let c = ctx(session, &udi(serial, "301231"), *at);
        let end = *at + Duration::minutes(20);
        for msg in [start("pen-1", c.clone(), *at), batch(c.clone(), &[500], 1)] {
            let cartridge = format!("{GTIN}:{serial}");
            let facts = Facts {
                binding: bindings.get(&cartridge).cloned(),
                session: SessionFacts {
                    relation: relations.get(session.as_str()).cloned(),
                    cartridge_id: Some(cartridge.clone()),
                    ..SessionFacts::default()
                },
                ..known_facts()
            };
            let j = run(&msg, &facts, *at);
            if j.verdicts
                .iter()
                .any(|v| v.kind == FlagKind::CartridgeReused)
            {
                reused.insert(cartridge.clone());
            }
            if let Some(r) = j.decided {
                if r == CartridgeRelation::Owner {
                    bindings.insert(cartridge.clone(), bound(session, "pen-1", *at));
                }
                relations.insert(session.clone(), r);
            }
            let r = &relations[session.as_str()];
            if let Some(b) = bindings
                .get_mut(&cartridge)
                .filter(|b| r.continues(session, b))
            {
                b.last_activity_at = b.last_activity_at.max(end);
            }
        }
    }
    reused.into_iter().collect()
}

#[test]
fn a_backlog_gives_the_same_reuses_in_any_upload_order() {
    let day = Duration::days(1);
    // Five days offline: A used on days 1 and 3 (a reuse), B once, C on
    // days 2, 4 and 5 (reused twice, one cartridge), D once.
    let backlog: Vec<(String, &str, DateTime<Utc>)> = [
        ("s1", "A", t0()),
        ("s2", "C", t0() + day),
        ("s3", "A", t0() + day * 2),
        ("s4", "B", t0() + day * 2 + Duration::hours(2)),
        ("s5", "C", t0() + day * 3),
        ("s6", "D", t0() + day * 3 + Duration::hours(1)),
        ("s7", "C", t0() + day * 4),
    ]
    .into_iter()
    .map(|(s, c, at)| (s.to_owned(), c, at))
    .collect();
    let in_order = reused_cartridges(&backlog);
    assert_eq!(in_order, vec![format!("{GTIN}:A"), format!("{GTIN}:C")]);
    let mut reversed = backlog.clone();
    reversed.reverse();
    assert_eq!(reused_cartridges(&reversed), in_order, "reversed");
    // Every rotation and a few interleavings stand in for "shuffled".
    for k in 1..backlog.len() {
        let mut rotated = backlog.clone();
        rotated.rotate_left(k);
        assert_eq!(reused_cartridges(&rotated), in_order, "rotated by {k}");
    }
    let shuffled: Vec<_> = [4, 0, 6, 2, 5, 1, 3]
        .iter()
        .map(|&i| backlog[i].clone())
        .collect();
    assert_eq!(reused_cartridges(&shuffled), in_order, "shuffled");
}

fn rated(strokes: u64) -> ProductFacts {
    ProductFacts {
        max_depth_um: 0,
        rated_strokes: strokes,
        max_active_ms: 0,
        shelf_life_days: 0,
    }
}

#[test]
fn overuse_adds_up_over_a_resumed_chain_and_is_flagged_once_per_cartridge() {
    // s2 resumes s1; together they used `chain` strokes before this batch
    // of 100 (10 samples × 10), s2 alone only 50.
    let facts = |chain: u64| Facts {
        binding: Some(Binding {
            strokes: chain,
            ..bound("s1", "pen-1", t0())
        }),
        product: Some(rated(1000)),
        session: SessionFacts {
            relation: Some(CartridgeRelation::Resumed {
                owner_session_id: "s1".into(),
            }),
            cartridge_id: Some(CART_A.into()),
            strokes: 50,
            active_ms: 0,
        },
        ..known_facts()
    };
    let b = batch(ctx("s2", &udi("A", "301231"), t0()), &[500; 10], 10);
    assert_eq!(kinds(&run(&b, &facts(900), t0())), vec![]);
    let j = run(&b, &facts(901), t0());
    assert_eq!(kinds(&j), vec![FlagKind::CartridgeOverused]);
    let v = &j.verdicts[0];
    assert_eq!(
        v.dedupe_key,
        format!("cartridge:{CART_A}:CARTRIDGE_OVERUSED")
    );
    assert_eq!(v.evidence["strokes"], 1001);
    assert_eq!(v.evidence["counted_per"], "cartridge");
    // A reuse of the cartridge is judged on its own strokes: the owner's
    // chain is not its procedure.
    let mut reuse = facts(5000);
    reuse.session.relation = Some(CartridgeRelation::Reused {
        owner_session_id: "s1".into(),
    });
    assert_eq!(kinds(&run(&b, &reuse, t0())), vec![]);
    reuse.session.strokes = 901;
    let j = run(&b, &reuse, t0());
    assert_eq!(j.verdicts[0].evidence["counted_per"], "session");
    assert_eq!(j.verdicts[0].dedupe_key, "session:s2:CARTRIDGE_OVERUSED");
}

/// Session s1 on pen-1 started with cartridge A (owner); its later message
/// names cartridge B.
fn swapped(msg_body: &str, b_binding: Option<Binding>, b_udi: &str) -> Judgement {
    let c = ctx("s1", b_udi, t0());
    let msg = match msg_body {
        "batch" => batch(c, &[500], 1),
        _ => DeviceMessage {
            time_faults: Vec::new(),
            device_id: "pen-1".into(),
            seq: 3,
            sent_at: t0(),
            body: Body::SessionEnd(SessionEnd {
                session: c,
                ended_at: t0() + Duration::minutes(5),
                total_strokes: 1,
                reason: crate::message::EndReason::Completed,
            }),
        },
    };
    let facts = Facts {
        binding: b_binding,
        session: SessionFacts {
            relation: Some(CartridgeRelation::Owner),
            cartridge_id: Some(CART_A.into()),
            ..SessionFacts::default()
        },
        ..known_facts()
    };
    run(&msg, &facts, t0())
}

#[test]
fn a_message_naming_another_cartridge_is_judged_for_the_one_it_names() {
    let b = udi("B", "301231");
    // B bound to another pen's session: a reuse, saying the cartridge
    // changed inside the session, from a batch or from an end.
    for body in ["batch", "end"] {
        let j = swapped(body, Some(bound("s9", "pen-2", t0())), &b);
        assert_eq!(kinds(&j), vec![FlagKind::CartridgeReused], "{body}");
        let v = &j.verdicts[0];
        assert_eq!(v.evidence["cartridge_changed_in_session"], true);
        assert_eq!(v.evidence["session_cartridge_id"], CART_A);
        assert_eq!(v.evidence["named_cartridge_id"], format!("{GTIN}:B"));
        assert_eq!(
            v.dedupe_key,
            format!("session:s1:cartridge:{GTIN}:B:CARTRIDGE_REUSED")
        );
        assert!(
            v.detail.contains("cartridge changed inside the session"),
            "{}",
            v.detail
        );
        assert_eq!(j.decided, None);
        assert!(matches!(j.swapped, Some(CartridgeRelation::Reused { .. })));
    }
    // B unused: the session claims it too, nothing to flag.
    let j = swapped("batch", None, &b);
    assert_eq!(kinds(&j), vec![]);
    assert_eq!(j.swapped, Some(CartridgeRelation::Owner));
    // Already claimed by this session: nothing new.
    let j = swapped("batch", Some(bound("s1", "pen-1", t0())), &b);
    assert_eq!(
        (kinds(&j), j.swapped),
        (vec![], Some(CartridgeRelation::Owner))
    );
    // An expired B is expired, whatever A was.
    let j = swapped("end", None, &udi("B", "200101"));
    assert_eq!(kinds(&j), vec![FlagKind::CartridgeExpired]);
    // The session's own cartridge again: not judged again.
    let j = swapped(
        "batch",
        Some(bound("s9", "pen-2", t0())),
        &udi("A", "301231"),
    );
    assert_eq!((kinds(&j), j.swapped), (vec![], None));
}

#[test]
fn without_an_expiry_the_production_date_plus_the_shelf_life_applies() {
    let made = "(01)09506000134352(11)240101(10)LOT1(21)A";
    let facts = |shelf_life_days, lot_expiry| Facts {
        product: Some(ProductFacts {
            shelf_life_days,
            ..rated(0)
        }),
        lot: Some(LotFacts {
            expiry: lot_expiry,
            recalled_at: None,
        }),
        ..Facts::default()
    };
    let on = |y, m, d| Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap();
    let session = |at| start("pen-1", ctx("s1", made, at), at);
    // 2024-01-01 + 365 days = 2024-12-31, usable through that day.
    let last_day = on(2024, 12, 31);
    assert_eq!(
        kinds(&run(&session(last_day), &facts(365, None), last_day)),
        vec![]
    );
    let after = on(2025, 1, 1);
    let j = run(&session(after), &facts(365, None), after);
    assert_eq!(kinds(&j), vec![FlagKind::CartridgeExpired]);
    assert_eq!(j.verdicts[0].evidence["expiry"], "2024-12-31");
    assert_eq!(j.verdicts[0].evidence["expiry_source"], "shelf_life");
    // No shelf life: no expiry at all.
    assert_eq!(kinds(&run(&session(after), &facts(0, None), after)), vec![]);
    // A registered lot expiry wins over the shelf life.
    let lot = NaiveDate::from_ymd_opt(2030, 1, 1);
    assert_eq!(
        kinds(&run(&session(after), &facts(365, lot), after)),
        vec![]
    );
    // And so does the UDI's own (17).
    let dated = "(01)09506000134352(17)301231(11)240101(10)LOT1(21)A";
    let msg = start("pen-1", ctx("s1", dated, after), after);
    assert_eq!(kinds(&run(&msg, &facts(365, None), after)), vec![]);
}
