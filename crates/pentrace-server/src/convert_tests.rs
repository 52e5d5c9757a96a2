//! The boundary of issue 12: what is refused (only what cannot be
//! attributed to a device), and that everything else becomes a storable
//! domain message the rules can judge.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::TimeZone;
use pentrace_domain::FlagKind;
use pentrace_domain::policy::Policy;
use pentrace_domain::rules::{self, Facts};
use pentrace_domain::time::{DEVICE_TIME_MAX, DEVICE_TIME_MIN};
use proptest::prelude::*;

use super::*;

const SESSION: &str = "2f1c8a56-6f0a-4f3e-9a57-2b1f0c6d7e01";
const UDI: &str = "(01)09506000134352(17)301231(10)LOT1(21)SN1";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap()
}

fn wire_context(session_id: &str, udi: &str) -> pb::SessionContext {
    pb::SessionContext {
        session_id: session_id.into(),
        cartridge: Some(pb::Cartridge {
            udi: udi.into(),
            chip_uid: String::new(),
        }),
        area: pb::TreatmentArea::Cheeks as i32,
        skin: pb::SkinThickness::Thick as i32,
        patient_ref: "p1".into(),
        started_at: Some(timestamp(now())),
    }
}

fn wire_start(context: Option<pb::SessionContext>) -> pb::DeviceMessage {
    pb::DeviceMessage {
        device_id: "pen-1".into(),
        seq: 1,
        sent_at: Some(timestamp(now())),
        body: Some(pb::device_message::Body::SessionStart(pb::SessionStart {
            session: context,
            operator_ref: "op".into(),
            firmware: "1.0".into(),
        })),
    }
}

fn wire_batch(samples: Vec<pb::StrokeSample>) -> pb::DeviceMessage {
    pb::DeviceMessage {
        body: Some(pb::device_message::Body::StrokeBatch(pb::StrokeBatch {
            session: Some(wire_context(SESSION, UDI)),
            started_at: Some(timestamp(now())),
            samples,
        })),
        ..wire_start(None)
    }
}

fn refusal(m: pb::DeviceMessage) -> String {
    device_message(m, now()).unwrap_err().0
}

fn judged(msg: &DeviceMessage) -> rules::Judgement {
    let ident = msg
        .session()
        .map(|c| rules::identify(&c.cartridge, now().date_naive()));
    rules::judge(
        msg,
        ident.as_ref(),
        &Facts::default(),
        &Policy::default(),
        now(),
    )
}

fn kinds(msg: &DeviceMessage) -> Vec<FlagKind> {
    let mut k: Vec<_> = judged(msg).verdicts.iter().map(|v| v.kind).collect();
    k.sort();
    k
}

fn context_of(msg: &DeviceMessage) -> &SessionContext {
    msg.session().unwrap()
}

// ------------------------------------------------------------- refusals

#[test]
fn only_unattributable_messages_are_refused_each_with_its_reason() {
    let with_id = |id: &str| pb::DeviceMessage {
        device_id: id.into(),
        ..wire_start(None)
    };
    assert_eq!(refusal(with_id("")), "device_id is empty");
    assert_eq!(
        refusal(with_id(&"p".repeat(65))),
        "device_id is 65 bytes; at most 64"
    );
    assert!(device_message(with_id(&"p".repeat(64)), now()).is_ok());
    // Bytes, not characters: 33 two-byte characters are 66 bytes.
    assert_eq!(
        refusal(with_id(&"é".repeat(33))),
        "device_id is 66 bytes; at most 64"
    );
    assert_eq!(
        refusal(with_id("pen\0")),
        "device_id contains control character U+0000"
    );
    assert_eq!(
        refusal(with_id("pen\u{9f}")),
        "device_id contains control character U+009F"
    );
    for c in ['/', '+', '#'] {
        assert_eq!(
            refusal(with_id(&format!("pen{c}1"))),
            format!("device_id contains {c:?}, which MQTT topics reserve (/ + #)")
        );
    }
    let with_seq = |seq| pb::DeviceMessage {
        seq,
        ..wire_start(None)
    };
    assert_eq!(
        refusal(with_seq(0)),
        "seq of device pen-1 is 0; seqs start at 1"
    );
    assert_eq!(
        refusal(with_seq(i64::MAX as u64 + 1)),
        "seq 9223372036854775808 of device pen-1 is above 9223372036854775807: \
         it cannot be stored as an idempotency key"
    );
    assert!(device_message(with_seq(i64::MAX as u64), now()).is_ok());
    let no_body = pb::DeviceMessage {
        body: None,
        ..wire_start(None)
    };
    assert_eq!(refusal(no_body), "message has no body");
}

// ----------------------------------------------------------------- times

#[test]
fn an_extreme_sent_at_is_judged_at_receive_time_and_flagged() {
    // Issue 12's fuzz finding: seconds = -8.33e12 passed and then panicked.
    let mut m = wire_start(Some(wire_context(SESSION, UDI)));
    m.sent_at = Some(Timestamp {
        seconds: -8_330_000_000_000,
        nanos: 0,
    });
    let msg = device_message(m, now()).unwrap();
    assert_eq!(msg.sent_at, now());
    assert_eq!(
        msg.time_faults,
        vec![TimeFault {
            field: TimeField::SentAt,
            raw: Some(WireTime {
                seconds: -8_330_000_000_000,
                nanos: 0
            }),
            used: now(),
        }]
    );
    let j = judged(&msg);
    let skew = j
        .verdicts
        .iter()
        .find(|v| v.kind == FlagKind::ClockSkew)
        .unwrap();
    assert!(
        skew.detail.starts_with(
            "sent_at out of range (seconds -8330000000000, nanos 0); judged at receive time"
        ),
        "{}",
        skew.detail
    );
    assert_eq!(
        skew.dedupe_key,
        format!("device:pen-1:session:{SESSION}:CLOCK_SKEW")
    );
}

#[test]
fn missing_and_out_of_range_times_are_replaced_and_recorded() {
    let sent = now() - chrono::Duration::seconds(30);
    let mut m = wire_batch(vec![pb::StrokeSample::default()]);
    m.sent_at = Some(timestamp(sent));
    let Some(pb::device_message::Body::StrokeBatch(b)) = &mut m.body else {
        unreachable!()
    };
    b.started_at = Some(Timestamp {
        seconds: i64::MAX,
        nanos: 0,
    });
    b.session.as_mut().unwrap().started_at = None;
    let msg = device_message(m, now()).unwrap();
    assert_eq!(msg.sent_at, sent);
    let Body::StrokeBatch(batch) = &msg.body else {
        unreachable!()
    };
    assert_eq!(batch.started_at, sent);
    assert_eq!(batch.session.started_at, sent);
    let fields: Vec<_> = msg.time_faults.iter().map(|f| f.field).collect();
    assert_eq!(
        fields,
        vec![TimeField::SessionStartedAt, TimeField::BatchStartedAt]
    );
    assert_eq!(msg.time_faults[0].raw, None);
    assert!(kinds(&msg).contains(&FlagKind::ClockSkew));

    let mut m = wire_start(None);
    m.sent_at = None;
    let msg = device_message(m, now()).unwrap();
    assert_eq!(
        msg.time_faults[0].describe(),
        "sent_at missing; judged at receive time"
    );
}

#[test]
fn nanos_outside_a_second_and_times_outside_the_range_are_faults() {
    let bad = [
        (now().timestamp(), -1),
        (now().timestamp(), 1_000_000_000),
        (DEVICE_TIME_MIN.timestamp() - 1, 0),
        (DEVICE_TIME_MAX.timestamp(), 1),
        (i64::MIN, i32::MIN),
    ];
    for (seconds, nanos) in bad {
        let mut m = wire_start(None);
        m.sent_at = Some(Timestamp { seconds, nanos });
        let msg = device_message(m, now()).unwrap();
        assert_eq!(msg.sent_at, now(), "{seconds} {nanos}");
        assert_eq!(msg.time_faults[0].field, TimeField::SentAt);
    }
    for t in [DEVICE_TIME_MIN, DEVICE_TIME_MAX] {
        let mut m = wire_start(Some(wire_context(SESSION, UDI)));
        m.sent_at = Some(timestamp(t));
        let msg = device_message(m, now()).unwrap();
        assert_eq!(msg.sent_at, t);
        assert!(msg.time_faults.is_empty());
    }
}

#[test]
fn a_session_end_without_its_end_time_ends_at_sent_at() {
    let mut m = wire_start(None);
    m.body = Some(pb::device_message::Body::SessionEnd(pb::SessionEnd {
        session: Some(wire_context(SESSION, UDI)),
        ended_at: None,
        total_strokes: u64::MAX,
        reason: 42,
    }));
    let msg = device_message(m, now()).unwrap();
    let Body::SessionEnd(e) = &msg.body else {
        unreachable!()
    };
    assert_eq!(e.ended_at, now());
    assert_eq!(e.total_strokes, u64::MAX);
    assert_eq!(e.reason, EndReason::Unknown(42));
    assert_eq!(msg.time_faults[0].field, TimeField::SessionEndedAt);
}

// ------------------------------------------------------------------ text

#[test]
fn a_control_character_in_the_udi_is_stored_and_flagged_not_refused() {
    let udi = format!("{UDI}\0");
    let msg = device_message(wire_start(Some(wire_context(SESSION, &udi))), now()).unwrap();
    let c = context_of(&msg);
    assert_eq!(c.session_id, SESSION);
    assert_eq!(c.cartridge.udi, format!("{UDI}\u{fffd}"));
    assert_eq!(kinds(&msg), vec![FlagKind::UdiInvalid]);
    for ch in ['\n', '\u{7f}', '\u{85}', '\t'] {
        let udi = format!("(01)09506000134352(21)S{ch}N");
        let msg = device_message(wire_start(Some(wire_context(SESSION, &udi))), now()).unwrap();
        assert_eq!(kinds(&msg), vec![FlagKind::UdiInvalid], "{ch:?}");
    }
}

#[test]
fn gs_is_kept_inside_a_udi_and_only_there() {
    let raw = "]d201095060001343521730123110LOT1\u{1d}21SN1";
    let mut c = wire_context(SESSION, raw);
    c.patient_ref = "p\u{1d}1".into();
    let msg = device_message(wire_start(Some(c)), now()).unwrap();
    let c = context_of(&msg);
    assert_eq!(c.cartridge.udi, raw);
    assert_eq!(c.patient_ref.as_deref(), Some("p\u{fffd}1"));
    assert_eq!(kinds(&msg), vec![FlagKind::CartridgeUnknown]);
}

#[test]
fn control_characters_in_free_text_become_replacement_characters() {
    let mut m = wire_start(Some(wire_context(SESSION, UDI)));
    if let Some(pb::device_message::Body::SessionStart(s)) = &mut m.body {
        s.operator_ref = "op\0erator".into();
        s.firmware = "2.4\r\n".into();
    }
    let msg = device_message(m, now()).unwrap();
    let Body::SessionStart(s) = &msg.body else {
        unreachable!()
    };
    assert_eq!(s.operator_ref, "op\u{fffd}erator");
    assert_eq!(s.firmware, "2.4\u{fffd}\u{fffd}");
}

#[test]
fn over_long_text_is_cut_at_a_character_boundary_and_marked() {
    for long in [
        "x".repeat(300),
        "é".repeat(300),
        "€".repeat(100),
        "\0".repeat(100),
    ] {
        let cut = text(long.clone());
        assert!(cut.len() <= MAX_TEXT, "{} bytes", cut.len());
        assert!(cut.len() > MAX_TEXT - 4 - REPLACEMENT.len_utf8());
        assert!(cut.ends_with(REPLACEMENT));
    }
    assert_eq!(text("x".repeat(MAX_TEXT)), "x".repeat(MAX_TEXT));
    // Cut without a mark, this would parse: the parser trims the spaces left.
    let udi = format!("(01)09506000134352(21)SN1{}", " ".repeat(300));
    let msg = device_message(wire_start(Some(wire_context(SESSION, &udi))), now()).unwrap();
    assert!(context_of(&msg).cartridge.udi.len() <= MAX_TEXT);
    assert_eq!(kinds(&msg), vec![FlagKind::UdiInvalid]);
}

// ----------------------------------------------------------- session ids

#[test]
fn a_session_id_that_is_not_a_uuid_gets_a_stable_derived_one() {
    let msg = |device: &str, session: &str| {
        let m = pb::DeviceMessage {
            device_id: device.into(),
            ..wire_start(Some(wire_context(session, UDI)))
        };
        device_message(m, now()).unwrap()
    };
    let a = msg("pen-1", "session 7");
    let c = context_of(&a);
    assert!(uuid::Uuid::parse_str(&c.session_id).is_ok());
    assert_eq!(c.raw_session_id.as_deref(), Some("session 7"));
    assert_eq!(
        context_of(&msg("pen-1", "session 7")).session_id,
        c.session_id
    );
    assert_ne!(
        context_of(&msg("pen-2", "session 7")).session_id,
        c.session_id
    );
    let upper = msg("pen-1", &SESSION.to_uppercase());
    assert_eq!(context_of(&upper).session_id, SESSION);
    assert_eq!(context_of(&upper).raw_session_id, None);
    let bad = msg("pen-1", "s\0");
    assert_eq!(
        context_of(&bad).raw_session_id.as_deref(),
        Some("s\u{fffd}")
    );
}

#[test]
fn a_session_message_without_its_context_is_stored_with_an_empty_one() {
    let msg = device_message(wire_start(None), now()).unwrap();
    let c = context_of(&msg);
    assert_eq!(c.raw_session_id.as_deref(), Some(""));
    assert_eq!(c.session_id, derived_session_id("pen-1", ""));
    assert_eq!(c.cartridge, CartridgeRef::default());
    assert_eq!(c.started_at, now());
    let j = judged(&msg);
    let udi = j
        .verdicts
        .iter()
        .find(|v| v.kind == FlagKind::UdiInvalid)
        .unwrap();
    assert_eq!(udi.evidence["raw_session_id"], "");
    assert!(j.verdicts.iter().any(|v| v.kind == FlagKind::ClockSkew));
}

// ---------------------------------------------------- enums and numbers

#[test]
fn unknown_enum_values_keep_their_number() {
    let mut c = wire_context(SESSION, UDI);
    c.area = 17;
    c.skin = -4;
    let msg = device_message(wire_start(Some(c)), now()).unwrap();
    let c = context_of(&msg);
    assert_eq!(c.area, TreatmentArea::Unknown(17));
    assert_eq!(c.skin, SkinThickness::Unknown(-4));
    assert_eq!(c.area.name(), "unknown(17)");
    assert_eq!(area_to_wire(&c.area.name()), 17);
    assert_eq!(area(0), TreatmentArea::Unspecified);
    assert_eq!(skin(0), SkinThickness::Thin);
    for a in 0..=8 {
        assert_eq!(area_to_wire(&area(a).name()), a);
    }
}

#[test]
fn numbers_keep_their_true_values_and_batteries_are_capped() {
    let big = pb::StrokeSample {
        offset_ms: u32::MAX,
        strokes: u32::MAX,
        depth_um: u32::MAX,
        speed_hz: u32::MAX,
    };
    let msg = device_message(wire_batch(vec![big; 20_000]), now()).unwrap();
    assert_eq!(msg.samples().len(), 20_000);
    assert_eq!(msg.samples()[0].depth_um, u32::MAX);
    let j = judged(&msg);
    let deep = j
        .verdicts
        .iter()
        .find(|v| v.kind == FlagKind::DepthExceeded)
        .unwrap();
    assert_eq!(deep.evidence["depth_um"], u64::from(u32::MAX));

    let mut m = wire_start(None);
    m.body = Some(pb::device_message::Body::Heartbeat(pb::Heartbeat {
        battery_pct: u32::MAX,
        firmware: String::new(),
    }));
    let msg = device_message(m, now()).unwrap();
    assert!(matches!(
        msg.body,
        Body::Heartbeat(Heartbeat {
            battery_pct: 100,
            ..
        })
    ));
}

// ------------------------------------------------------------ properties

fn any_text() -> BoxedStrategy<String> {
    let odd = prop::sample::select(vec![
        '\0', '\u{1d}', '\u{7f}', '\u{85}', '\n', '/', '+', '#', 'é', '€', '(', ')', '0', '1',
    ]);
    prop_oneof![
        prop::collection::vec(any::<char>(), 0..80).prop_map(String::from_iter),
        prop::collection::vec(odd, 0..80).prop_map(String::from_iter),
        prop::collection::vec(any::<char>(), 250..300).prop_map(String::from_iter),
        "[ -~]{0,40}",
    ]
    .boxed()
}

fn any_device_id() -> BoxedStrategy<String> {
    prop_oneof![
        Just("pen-1".to_owned()),
        "[a-z0-9-]{1,64}",
        "[a-z0-9-]{65,70}",
        Just(String::new()),
        any_text(),
    ]
    .boxed()
}

fn any_seq() -> BoxedStrategy<u64> {
    prop_oneof![
        any::<u64>(),
        1u64..1000,
        Just(0),
        Just(i64::MAX as u64),
        Just(i64::MAX as u64 + 1),
        Just(u64::MAX),
    ]
    .boxed()
}

fn any_timestamp() -> BoxedStrategy<Option<Timestamp>> {
    let in_range = (
        DEVICE_TIME_MIN.timestamp()..=DEVICE_TIME_MAX.timestamp(),
        0..1_000_000_000,
    );
    prop::option::weighted(
        0.9,
        prop_oneof![
            (any::<i64>(), any::<i32>()),
            in_range,
            (1_700_000_000i64..1_900_000_000, -2i32..1_000_000_002),
            Just((-8_330_000_000_000, 0)),
        ]
        .prop_map(|(seconds, nanos)| Timestamp { seconds, nanos }),
    )
    .boxed()
}

fn any_enum() -> BoxedStrategy<i32> {
    prop_oneof![0i32..10, any::<i32>()].boxed()
}

fn any_udi() -> BoxedStrategy<String> {
    prop_oneof![
        Just(UDI.to_owned()),
        any_text(),
        any_text().prop_map(|junk| format!("{UDI}{junk}")),
        any_text().prop_map(|junk| format!("https://id.example/{junk}/01/09506000134352/21/SN")),
    ]
    .boxed()
}

fn any_context() -> BoxedStrategy<Option<pb::SessionContext>> {
    let context = (
        prop_oneof![Just(SESSION.to_owned()), any_text()],
        prop::option::of((any_udi(), any_text())),
        any_enum(),
        any_enum(),
        any_text(),
        any_timestamp(),
    )
        .prop_map(
            |(session_id, cartridge, area, skin, patient_ref, started_at)| pb::SessionContext {
                session_id,
                cartridge: cartridge.map(|(udi, chip_uid)| pb::Cartridge { udi, chip_uid }),
                area,
                skin,
                patient_ref,
                started_at,
            },
        );
    prop::option::weighted(0.9, context).boxed()
}

fn any_u32() -> BoxedStrategy<u32> {
    prop_oneof![any::<u32>(), 0u32..3000, Just(u32::MAX)].boxed()
}

fn any_body() -> BoxedStrategy<Option<pb::device_message::Body>> {
    use pb::device_message::Body as B;
    let sample = (any_u32(), any_u32(), any_u32(), any_u32()).prop_map(
        |(offset_ms, strokes, depth_um, speed_hz)| pb::StrokeSample {
            offset_ms,
            strokes,
            depth_um,
            speed_hz,
        },
    );
    let body = prop_oneof![
        (any_context(), any_text(), any_text()).prop_map(|(session, operator_ref, firmware)| {
            B::SessionStart(pb::SessionStart {
                session,
                operator_ref,
                firmware,
            })
        }),
        (
            any_context(),
            any_timestamp(),
            prop::collection::vec(sample, 0..300)
        )
            .prop_map(
                |(session, started_at, samples)| B::StrokeBatch(pb::StrokeBatch {
                    session,
                    started_at,
                    samples
                })
            ),
        (any_context(), any_timestamp(), any::<u64>(), any_enum()).prop_map(
            |(session, ended_at, total_strokes, reason)| B::SessionEnd(pb::SessionEnd {
                session,
                ended_at,
                total_strokes,
                reason,
            })
        ),
        (any_u32(), any_text()).prop_map(|(battery_pct, firmware)| B::Heartbeat(pb::Heartbeat {
            battery_pct,
            firmware
        })),
    ];
    prop::option::weighted(0.95, body).boxed()
}

fn any_wire_message() -> BoxedStrategy<pb::DeviceMessage> {
    (any_device_id(), any_seq(), any_timestamp(), any_body())
        .prop_map(|(device_id, seq, sent_at, body)| pb::DeviceMessage {
            device_id,
            seq,
            sent_at,
            body,
        })
        .boxed()
}

/// The refusal rule, stated independently of the code under test.
fn must_refuse(m: &pb::DeviceMessage) -> bool {
    let id = &m.device_id;
    id.is_empty()
        || id.len() > 64
        || id
            .chars()
            .any(|c| c.is_control() || matches!(c, '/' | '+' | '#'))
        || m.seq == 0
        || m.seq > i64::MAX as u64
        || m.body.is_none()
}

fn storable_text(s: &str, udi: bool) -> bool {
    s.len() <= MAX_TEXT && !s.chars().any(|c| c.is_control() && !(udi && c == '\u{1d}'))
}

fn check_context(c: &SessionContext) -> Result<(), TestCaseError> {
    prop_assert!(uuid::Uuid::parse_str(&c.session_id).is_ok());
    // The receive times drawn below are inside the range, so every
    // substitute is too.
    prop_assert!(time::in_device_range(c.started_at));
    prop_assert!(storable_text(&c.cartridge.udi, true));
    prop_assert!(storable_text(&c.cartridge.chip_uid, false));
    for t in c.patient_ref.iter().chain(&c.raw_session_id) {
        prop_assert!(storable_text(t, false));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn any_wire_message_is_refused_only_for_the_listed_reasons(
        m in any_wire_message(),
        received_at in prop_oneof![
            Just(now()),
            (DEVICE_TIME_MIN.timestamp()..=DEVICE_TIME_MAX.timestamp())
                .prop_filter_map("range", |s| DateTime::from_timestamp(s, 0)),
        ],
    ) {
        let refuse = must_refuse(&m);
        let (seq, device_id) = (m.seq, m.device_id.clone());
        let wire_samples = match &m.body {
            Some(pb::device_message::Body::StrokeBatch(b)) => b.samples.clone(),
            _ => Vec::new(),
        };
        let msg = match device_message(m, received_at) {
            Err(e) => {
                prop_assert!(refuse, "refused: {e}");
                return Ok(());
            }
            Ok(msg) => msg,
        };
        prop_assert!(!refuse, "accepted a message that must be refused");
        prop_assert_eq!(msg.seq, seq);
        prop_assert_eq!(&msg.device_id, &device_id);
        prop_assert!(time::in_device_range(msg.sent_at));
        for f in &msg.time_faults {
            let expected = match f.field {
                TimeField::SentAt => received_at,
                _ => msg.sent_at,
            };
            prop_assert_eq!(f.used, expected);
        }
        let samples: Vec<StrokeSample> = wire_samples.iter().map(sample).collect();
        prop_assert_eq!(msg.samples(), samples.as_slice());
        match &msg.body {
            Body::SessionStart(s) => {
                check_context(&s.session)?;
                prop_assert!(storable_text(&s.operator_ref, false));
                prop_assert!(storable_text(&s.firmware, false));
            }
            Body::StrokeBatch(b) => {
                check_context(&b.session)?;
                prop_assert!(time::in_device_range(b.started_at));
            }
            Body::SessionEnd(e) => {
                check_context(&e.session)?;
                prop_assert!(time::in_device_range(e.ended_at));
            }
            Body::Heartbeat(h) => {
                prop_assert!(h.battery_pct <= 100);
                prop_assert!(storable_text(&h.firmware, false));
            }
        }
        // Whatever was accepted can be judged.
        let ident = msg
            .session()
            .map(|c| rules::identify(&c.cartridge, received_at.date_naive()));
        let j = rules::judge(&msg, ident.as_ref(), &Facts::default(), &Policy::default(), received_at);
        if !msg.time_faults.is_empty() {
            prop_assert!(j.verdicts.iter().any(|v| v.kind == FlagKind::ClockSkew));
        }
        if let Some(c) = msg.session()
            && c.cartridge.udi.chars().any(|ch| ch == REPLACEMENT)
        {
            prop_assert!(j.verdicts.iter().any(|v| v.kind == FlagKind::UdiInvalid));
        }
    }
}

#[test]
fn a_query_bound_is_a_time_both_stores_hold_or_refused_by_name() {
    let at = |seconds, nanos| Some(Timestamp { seconds, nanos });
    assert_eq!(query_time("from", None), Ok(None));
    assert_eq!(
        query_time("from", at(now().timestamp(), 0)),
        Ok(Some(now()))
    );
    assert_eq!(
        query_time("from", at(QUERY_TIME_MIN.timestamp(), 0)),
        Ok(Some(QUERY_TIME_MIN))
    );
    let last = QUERY_TIME_END.timestamp() - 1;
    assert!(query_time("to", at(last, 999_999_999)).is_ok());
    for (seconds, nanos) in [
        (0, -1),
        (0, 1_000_000_000),
        (QUERY_TIME_END.timestamp(), 0),
        (QUERY_TIME_MIN.timestamp() - 1, 0),
        (i64::MAX, 0),
        (i64::MIN, 0),
    ] {
        let refused = query_time("to", at(seconds, nanos)).expect_err("refused");
        assert!(refused.0.starts_with("to "), "{refused}");
    }
}
