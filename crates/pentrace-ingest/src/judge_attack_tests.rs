//! Attacks on the issue-14 rules as the pipeline applies them (an
//! independent review): each test is one way a reuse or an overuse could
//! be hidden, or a legitimate use wrongly flagged; all failed before the
//! fixes they came with.

#![allow(clippy::unwrap_used)]

use chrono::{Duration, TimeZone};
use pentrace_domain::FlagKind;
use pentrace_domain::message::{
    CartridgeRef, SessionStart, SkinThickness, StrokeBatch, StrokeSample, TreatmentArea,
};
use tokio::sync::mpsc;

use super::*;

const GTIN: &str = "09506000134352";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap()
}

fn udi(serial: &str) -> String {
    format!("(01){GTIN}(17)301231(10)LOT1(21){serial}")
}

fn cart(serial: &str) -> String {
    format!("{GTIN}:{serial}")
}

fn envelope(message: DeviceMessage) -> Envelope {
    Envelope {
        received_at: message.sent_at,
        message,
        payload: bytes::Bytes::new(),
        transport: "grpc",
        reply: mpsc::unbounded_channel().0,
    }
}

fn ctx(session: &str, cartridge: CartridgeRef, started_at: DateTime<Utc>) -> SessionContext {
    SessionContext {
        session_id: session.into(),
        raw_session_id: None,
        cartridge,
        area: TreatmentArea::Cheeks,
        skin: SkinThickness::Thick,
        patient_ref: Some("p1".into()),
        started_at,
    }
}

fn printed(serial: &str) -> CartridgeRef {
    CartridgeRef {
        udi: udi(serial),
        chip_uid: String::new(),
    }
}

fn start_msg(device: &str, seq: u64, c: SessionContext) -> DeviceMessage {
    let at = c.started_at;
    DeviceMessage::new(
        device.into(),
        seq,
        at,
        Body::SessionStart(SessionStart {
            session: c,
            operator_ref: "op".into(),
            firmware: "1.0".into(),
        }),
    )
}

/// A batch of 10 samples × 10 strokes (100 strokes) starting at `at`.
fn batch_msg(device: &str, seq: u64, c: SessionContext, at: DateTime<Utc>) -> DeviceMessage {
    let samples = (0..10)
        .map(|i| StrokeSample {
            offset_ms: i * 100,
            strokes: 10,
            depth_um: 500,
            speed_hz: 100,
        })
        .collect();
    DeviceMessage::new(
        device.into(),
        seq,
        at,
        Body::StrokeBatch(StrokeBatch {
            session: c,
            started_at: at,
            samples,
        }),
    )
}

fn device(clinic: &str) -> DeviceState {
    DeviceState {
        clinic_id: clinic.into(),
        max_depth_um: 0,
        max_seq: 0,
        stored_through: 0,
    }
}

fn facts_with(rated_strokes: u64) -> StoredFacts {
    let mut facts = StoredFacts::default();
    facts.devices.insert("pen-1".into(), device("c1"));
    facts.devices.insert("pen-2".into(), device("c1"));
    facts.products.insert(
        GTIN.into(),
        pentrace_domain::rules::ProductFacts {
            rated_strokes,
            ..Default::default()
        },
    );
    facts
}

fn binding(session: &str, device: &str, last: DateTime<Utc>, strokes: u64) -> Binding {
    Binding {
        session_id: session.into(),
        device_id: device.into(),
        clinic_id: "c1".into(),
        patient_ref: Some("p1".into()),
        last_activity_at: last,
        strokes,
        active_ms: 0,
    }
}

fn run(msgs: Vec<DeviceMessage>, facts: &StoredFacts) -> Plan {
    let envs: Vec<Envelope> = msgs.into_iter().map(envelope).collect();
    let idents = identify_all(&envs);
    plan(&envs, &idents, facts, &Policy::default())
}

fn flagged(p: &Plan, kind: FlagKind) -> Vec<&NewFlag> {
    p.write.flags.iter().filter(|f| f.kind == kind).collect()
}

const S: &str = "11111111-1111-4111-8111-111111111111";
const S3: &str = "33333333-3333-4333-8333-333333333333";
const OWNER: &str = "00000000-0000-4000-8000-0000000000aa";

/// a session whose own cartridge is unidentified (or another one)
/// and which then names a cartridge it *resumes* is judged on the
/// cartridge's procedure sum (`usage_before` uses the swapped relation,
/// `Resumed`), but `record_activity` asks the session's *own* relation
/// (`Unidentified`), which does not `continue` the binding: none of its
/// strokes are added to the cartridge. Every batch is judged against the
/// same stale sum, so overuse is never flagged.
///
/// B: owned by pen-1's session OWNER, 50 strokes, rated 250, last active
/// t0. S starts on pen-1 at t0+1 min with an unreadable UDI (UDI_INVALID),
/// then 3 batches of 100 strokes name B. The procedure used 350 > 250.
#[test]
fn swap_into_a_resumed_cartridge_counts_its_strokes_toward_overuse() {
    let mut facts = facts_with(250);
    facts
        .bindings
        .insert(cart("B"), binding(OWNER, "pen-1", t0(), 50));
    let started = t0() + Duration::minutes(1);
    let unreadable = CartridgeRef {
        udi: "garbage".into(),
        chip_uid: String::new(),
    };
    let mut msgs = vec![start_msg("pen-1", 10, ctx(S, unreadable, started))];
    for i in 0..3u64 {
        let at = started + Duration::minutes(1 + i as i64);
        msgs.push(batch_msg(
            "pen-1",
            11 + i,
            ctx(S, printed("B"), started),
            at,
        ));
    }
    let p = run(msgs, &facts);
    assert_eq!(p.committed.len(), 4);
    // (One verdict per message; the store dedupes them by key.)
    assert!(
        !flagged(&p, FlagKind::SessionResumed).is_empty(),
        "S resumes OWNER's use of B: {:?}",
        p.write.flags
    );
    assert_eq!(
        flagged(&p, FlagKind::CartridgeOverused).len(),
        1,
        "50 + 300 strokes on a cartridge rated 250: {:?}",
        p.write.flags
    );
    let on_b: u64 = p
        .write
        .activity
        .iter()
        .filter(|a| a.cartridge_id == cart("B"))
        .map(|a| a.add_strokes)
        .sum();
    assert_eq!(on_b, 300, "S's strokes on B are B's procedure's usage");
}

/// The same cause: the resumed cartridge's last activity is not
/// moved by the session that resumed it through a swap, so the pen's next
/// reboot a minute after that session's last sample is judged against the
/// owner's old last activity and flagged CARTRIDGE_REUSED (a RejectCartridge
/// goes to the pen mid-treatment).
#[test]
fn a_resume_after_a_swap_resume_is_not_a_reuse() {
    let mut facts = facts_with(0);
    facts
        .bindings
        .insert(cart("B"), binding(OWNER, "pen-1", t0(), 0));
    let started = t0() + Duration::minutes(1);
    let unreadable = CartridgeRef {
        udi: "garbage".into(),
        chip_uid: String::new(),
    };
    let mut msgs = vec![start_msg("pen-1", 10, ctx(S, unreadable, started))];
    // S uses B for 20 minutes, a batch every 4 minutes.
    for i in 0..6u64 {
        let at = started + Duration::minutes(4 * i as i64);
        msgs.push(batch_msg(
            "pen-1",
            11 + i,
            ctx(S, printed("B"), started),
            at,
        ));
    }
    // Reboot: S3 with B a minute after S's last sample (t0+21 min).
    let again = started + Duration::minutes(21);
    msgs.push(start_msg("pen-1", 20, ctx(S3, printed("B"), again)));
    let p = run(msgs, &facts);
    let reused: Vec<_> = flagged(&p, FlagKind::CartridgeReused);
    assert!(
        reused.is_empty(),
        "S3 starts 1 min after B's last use (by S): {reused:?}"
    );
}

/// the session facts are looked up by session id alone
/// (`SessionState::device_id` is never compared). A pen that repeats a
/// session id (a firmware that sends the nil UUID, or keeps one id across
/// sessions) has every later session judged as the first: a reuse of the
/// same cartridge the next day is never judged.
#[test]
fn a_repeated_session_id_does_not_hide_a_reuse_on_the_same_pen() {
    let nil = "00000000-0000-0000-0000-000000000000";
    let mut facts = facts_with(0);
    facts
        .bindings
        .insert(cart("A"), binding(nil, "pen-1", t0(), 100));
    facts.sessions.insert(
        nil.into(),
        SessionState {
            device_id: "pen-1".into(),
            relation: CartridgeRelation::Owner,
            cartridge_id: Some(cart("A")),
            device_started_at: Some(t0()),
            strokes: 100,
            active_ms: 1000,
        },
    );
    let next_day = t0() + Duration::days(1);
    let mut second = ctx(nil, printed("A"), next_day);
    second.patient_ref = Some("p2".into());
    let p = run(vec![start_msg("pen-1", 50, second)], &facts);
    assert_eq!(
        flagged(&p, FlagKind::CartridgeReused).len(),
        1,
        "cartridge A used again a day later on another patient: {:?}",
        p.write.flags
    );
}

/// Across devices: another pen's message naming
/// pen-1's session id joins pen-1's session: its cartridge, bound to that
/// session, is not judged (no reuse), and its strokes are written into
/// pen-1's session row (another clinic's, see the e2e test).
#[test]
fn another_pens_message_with_the_same_session_id_is_judged_as_its_own() {
    let nil = "00000000-0000-0000-0000-000000000000";
    let mut facts = facts_with(0);
    facts
        .bindings
        .insert(cart("A"), binding(nil, "pen-1", t0(), 100));
    facts.sessions.insert(
        nil.into(),
        SessionState {
            device_id: "pen-1".into(),
            relation: CartridgeRelation::Owner,
            cartridge_id: Some(cart("A")),
            device_started_at: Some(t0()),
            strokes: 100,
            active_ms: 1000,
        },
    );
    let later = t0() + Duration::hours(3);
    let p = run(
        vec![
            start_msg("pen-2", 1, ctx(nil, printed("A"), later)),
            batch_msg("pen-2", 2, ctx(nil, printed("A"), later), later),
        ],
        &facts,
    );
    assert_eq!(
        flagged(&p, FlagKind::CartridgeReused).len(),
        1,
        "pen-2 uses pen-1's cartridge three hours later: {:?}",
        p.write.flags
    );
    assert!(
        p.write.activity.is_empty(),
        "pen-2's use must not extend pen-1's procedure: {:?}",
        p.write.activity
    );
}

/// One overuse, one flag: when the first message
/// of an owner session to arrive is a batch (its start comes later, or was
/// lost), the binding does not exist yet when the batch is judged, so an
/// overuse in it is keyed per *session* (`counted_per: "session"`); the
/// next batch, judged against the binding, is keyed per *cartridge*. Two
/// CARTRIDGE_OVERUSED flags for one cartridge and one session; the domain
/// promises one per cartridge.
#[test]
fn an_owner_whose_first_message_is_an_overusing_batch_is_flagged_once() {
    let facts = facts_with(50);
    let started = t0();
    let p = run(
        vec![
            batch_msg("pen-1", 2, ctx(S, printed("A"), started), started),
            batch_msg(
                "pen-1",
                3,
                ctx(S, printed("A"), started),
                started + Duration::seconds(1),
            ),
        ],
        &facts,
    );
    let keys: std::collections::BTreeSet<&str> = flagged(&p, FlagKind::CartridgeOverused)
        .iter()
        .map(|f| f.dedupe_key.as_str())
        .collect();
    assert_eq!(
        keys.len(),
        1,
        "one overuse of cartridge A, one dedupe key: {keys:?}"
    );
}

/// The same, entered from an owner session: a
/// session that owns cartridge A and later names B, the cartridge its pen's
/// previous session used a minute before the reboot, resumes B (judged on
/// B's sum) but its relation to A (`Owner`) does not `continue` B's
/// binding: B's strokes never grow and overuse of B is never flagged.
#[test]
fn an_owner_naming_the_cartridge_it_resumes_counts_its_strokes() {
    let mut facts = facts_with(250);
    facts
        .bindings
        .insert(cart("B"), binding(OWNER, "pen-1", t0(), 50));
    let started = t0() + Duration::minutes(1);
    let mut msgs = vec![start_msg("pen-1", 10, ctx(S, printed("A"), started))];
    for i in 0..3u64 {
        let at = started + Duration::minutes(1 + i as i64);
        msgs.push(batch_msg(
            "pen-1",
            11 + i,
            ctx(S, printed("B"), started),
            at,
        ));
    }
    let p = run(msgs, &facts);
    assert_eq!(
        flagged(&p, FlagKind::CartridgeOverused).len(),
        1,
        "50 + 300 strokes on B, rated 250: {:?}",
        p.write.flags
    );
}

/// Checked sound: a cartridge
/// swapped into a session and claimed by it, then used by the pen's next
/// session after a reboot, is a resume of that session, and the resume's
/// strokes count toward the swapped cartridge's procedure.
#[test]
fn a_swapped_in_cartridge_resumed_after_a_reboot() {
    let facts = facts_with(250);
    let started = t0();
    let p = run(
        vec![
            start_msg("pen-1", 1, ctx(S, printed("A"), started)),
            batch_msg(
                "pen-1",
                2,
                ctx(S, printed("B"), started),
                started + Duration::minutes(1),
            ),
            start_msg(
                "pen-1",
                3,
                ctx(S3, printed("B"), started + Duration::minutes(3)),
            ),
            batch_msg(
                "pen-1",
                4,
                ctx(S3, printed("B"), started + Duration::minutes(3)),
                started + Duration::minutes(4),
            ),
            batch_msg(
                "pen-1",
                5,
                ctx(S3, printed("B"), started + Duration::minutes(3)),
                started + Duration::minutes(5),
            ),
        ],
        &facts,
    );
    assert!(
        flagged(&p, FlagKind::CartridgeReused).is_empty(),
        "{:?}",
        p.write.flags
    );
    assert!(!flagged(&p, FlagKind::SessionResumed).is_empty());
    let overused = flagged(&p, FlagKind::CartridgeOverused);
    assert_eq!(overused.len(), 1, "100 + 200 on B, rated 250");
    assert_eq!(
        overused[0].dedupe_key,
        format!("cartridge:{}:CARTRIDGE_OVERUSED", cart("B"))
    );
}

/// A stored session's start comes back from the store at microseconds; the
/// pen's next message carries nanoseconds. Still its own session (the
/// demo's simulator found this one).
#[test]
fn a_start_at_nanoseconds_is_the_stored_start_at_microseconds() {
    let mut facts = facts_with(0);
    let started = t0() + Duration::nanoseconds(252_765_414);
    facts.sessions.insert(
        S.into(),
        SessionState {
            device_id: "pen-1".into(),
            relation: CartridgeRelation::Owner,
            cartridge_id: Some(cart("A")),
            device_started_at: Some(t0() + Duration::microseconds(252_765)),
            strokes: 0,
            active_ms: 0,
        },
    );
    let p = run(
        vec![batch_msg(
            "pen-1",
            2,
            ctx(S, printed("A"), started),
            started,
        )],
        &facts,
    );
    assert_eq!(p.write.messages[0].session_id.as_deref(), Some(S));
    assert!(p.write.flags.is_empty(), "{:?}", p.write.flags);
}
