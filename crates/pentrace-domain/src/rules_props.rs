//! Properties of the rules over the whole input space: whatever a message
//! holds and whatever the facts say, the rules return verdicts and never
//! panic.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;
use crate::gaps::track_seq;
use crate::testing::{
    any_context, any_date, any_facts, any_message, any_policy, any_time, any_u64, any_udi_text,
};

fn check_judgement(
    msg: &DeviceMessage,
    facts: &Facts,
    policy: &Policy,
    received_at: DateTime<Utc>,
    today: NaiveDate,
) -> Result<(), TestCaseError> {
    let ident = msg.session().map(|c| identify(&c.cartridge, today));
    let j = judge(msg, ident.as_ref(), facts, policy, received_at);
    for v in &j.verdicts {
        prop_assert_eq!(v.severity, v.kind.severity());
        prop_assert!(v.dedupe_key.ends_with(v.kind.as_str()), "{}", v.dedupe_key);
        if j.swapped.is_some()
            && !matches!(v.kind, FlagKind::ClockSkew)
            && v.evidence.get("cartridge_changed_in_session").is_none()
        {
            // Only the message's own (non-cartridge) verdicts lack it.
            prop_assert!(
                matches!(
                    v.kind,
                    FlagKind::DepthExceeded
                        | FlagKind::DepthAboveAreaGuidance
                        | FlagKind::CartridgeOverused
                ),
                "{:?}",
                v
            );
        }
        prop_assert!(v.evidence.is_object());
        prop_assert!(!v.detail.is_empty());
    }
    let has = |kind: FlagKind| j.verdicts.iter().any(|v| v.kind == kind);
    if !msg.time_faults.is_empty() {
        prop_assert!(has(FlagKind::ClockSkew));
    }
    match msg.session() {
        None => {
            prop_assert_eq!(j.activity_at, None);
            prop_assert_eq!(j.decided, None);
        }
        Some(ctx) => {
            prop_assert!(j.activity_at.is_some());
            prop_assert_eq!(j.decided.is_some(), facts.session.relation.is_none());
            // A decided session is re-judged only for a cartridge other
            // than its own, and says so in every verdict about it.
            let named = ident
                .as_ref()
                .and_then(|i| i.cartridge.as_ref())
                .map(|c| c.to_string());
            let swapped = facts.session.relation.is_some()
                && named.is_some()
                && named != facts.session.cartridge_id;
            prop_assert_eq!(j.swapped.is_some(), swapped);
            if j.decided.is_none() && !swapped {
                let once = [
                    FlagKind::CartridgeReused,
                    FlagKind::SessionResumed,
                    FlagKind::CartridgeExpired,
                    FlagKind::CartridgeRecalled,
                    FlagKind::RecallExposure,
                    FlagKind::CartridgeUnknown,
                    FlagKind::UdiInvalid,
                ];
                prop_assert!(j.verdicts.iter().all(|v| !once.contains(&v.kind)));
            }
            if let Some(raw) = &ctx.raw_session_id {
                for v in &j.verdicts {
                    prop_assert_eq!(&v.evidence["raw_session_id"], &serde_json::json!(raw));
                }
            }
        }
    }
    if let Body::StrokeBatch(b) = &msg.body {
        let deepest = b.max_depth_um();
        if deepest > depth_limit_um(facts, policy) {
            let v = j
                .verdicts
                .iter()
                .find(|v| v.kind == FlagKind::DepthExceeded);
            prop_assert_eq!(
                v.map(|v| v.evidence["depth_um"].as_u64()),
                Some(Some(deepest.into()))
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn judge_never_panics(
        msg in any_message(),
        facts in any_facts(),
        policy in any_policy(),
        received_at in any_time(),
        today in any_date(),
    ) {
        check_judgement(&msg, &facts, &policy, received_at, today)?;
    }

    #[test]
    fn judge_never_panics_with_default_policy_and_a_present_clock(
        msg in any_message(),
        facts in any_facts(),
        received_at in (1_700_000_000i64..1_900_000_000)
            .prop_filter_map("range", |s| DateTime::from_timestamp(s, 0)),
    ) {
        let today = received_at.date_naive();
        check_judgement(&msg, &facts, &Policy::default(), received_at, today)?;
    }

    #[test]
    fn corrected_never_panics_and_keeps_times_inside_the_window(
        device_time in any_time(),
        sent_at in any_time(),
        received_at in any_time(),
        policy in any_policy(),
    ) {
        let t = corrected(device_time, sent_at, received_at, &policy);
        if measured_skew(sent_at, received_at).abs() <= policy.skew_window {
            prop_assert_eq!(t, device_time);
        }
    }

    #[test]
    fn identify_never_panics(udi in any_udi_text(), chip in any_udi_text(), today in any_date()) {
        let ident = identify(&CartridgeRef { udi: udi.clone(), chip_uid: chip }, today);
        if ident.udi.is_ok() {
            let printable = |c: char| c.is_ascii_graphic() || c == '\u{1d}' || c.is_ascii_whitespace();
            prop_assert!(udi.chars().all(printable), "{:?} parsed", udi);
        }
    }

    #[test]
    fn track_seq_never_panics_and_keeps_holes_consistent(
        start in any_u64(),
        seqs in prop::collection::vec(any_u64(), 0..50),
        now in any_time(),
    ) {
        let (mut holes, mut max) = (Vec::new(), start);
        for &s in &seqs {
            track_seq(&mut holes, &mut max, "pen", s, now);
        }
        prop_assert_eq!(max, seqs.iter().copied().fold(start, u64::max));
        for h in &holes {
            prop_assert!(h.first <= h.last && h.last < max);
            prop_assert!(!seqs.iter().any(|s| (h.first..=h.last).contains(s)));
        }
    }

    #[test]
    fn judge_gap_never_panics(
        first in any_u64(),
        last in any_u64(),
        detected_at in any_time(),
        now in any_time(),
        policy in any_policy(),
    ) {
        let hole = SeqHole { device_id: "pen".into(), first, last, detected_at };
        if let Some(v) = judge_gap(&hole, now, &policy) {
            prop_assert_eq!(v.kind, FlagKind::DataGap);
        }
    }

    #[test]
    fn batch_arithmetic_never_panics(
        ctx in any_context(),
        started_at in any_time(),
        samples in prop::collection::vec(crate::testing::any_sample(), 0..300),
        interval in crate::testing::any_u32(),
    ) {
        let b = StrokeBatch { session: ctx, started_at, samples };
        let _ = (b.strokes(), b.active_ms(interval), b.max_depth_um());
        prop_assert!(batch_end(&b) >= b.started_at);
    }
}
