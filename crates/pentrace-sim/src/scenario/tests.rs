//! Tests of scenario planning: the plan is reproducible, its faults keep
//! their preconditions, and its truth is what the domain's rules decide.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Duration, TimeZone, Utc};
use pentrace_domain::policy::{DEFAULT_MAX_DEPTH_UM, Policy, area_guidance_um};
use pentrace_domain::{FlagKind, Udi};
use pentrace_proto::v1 as pb;

use super::replay::replay;
use super::*;
use crate::catalogue::{
    OK_LOT, PRODUCTS, RATED_PRODUCT, RATED_STROKES, RECALLED_LOT, UNKNOWN_GTIN,
};
use crate::faults::FaultRates;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0)
        .single()
        .expect("t0")
}

fn config(devices: usize, sessions: u32, faults: &str, seed: u64) -> SimConfig {
    SimConfig {
        devices,
        sessions,
        batches: 8,
        seed,
        faults: faults.parse().expect("faults"),
        ..SimConfig::default()
    }
}

/// Every fault often, so that each seed exercises their interplay.
const HEAVY: &str = "reuse=0.14,moved=0.14,expired=0.1,recalled=0.1,unknown=0.1,bad_udi=0.1,\
resume=0.14,cartridge_swap=0.08,resume_overuse=0.08,backlog=0.3,depth=0.3,skew=0.3,dup=0.2,\
reorder=0.2,disconnect=0.3";

fn heavy(seed: u64) -> (SimConfig, Scenario) {
    let c = config(12, 8, HEAVY, seed);
    let s = plan(&c, t0(), &[]);
    (c, s)
}

fn expected(s: &Scenario) -> BTreeSet<(FlagKind, String)> {
    s.truth
        .iter()
        .flat_map(|t| {
            t.expected_flags
                .iter()
                .map(|k| (*k, t.session_id.clone().unwrap_or_default()))
        })
        .collect()
}

fn count(s: &Scenario, fault: FaultKind) -> usize {
    s.truth.iter().filter(|t| t.fault == fault).count()
}

#[test]
fn the_same_seed_gives_the_same_scenario() {
    let (_, a) = heavy(11);
    let (_, b) = heavy(11);
    let (_, c) = heavy(12);
    assert_eq!(a.truth, b.truth);
    let ids = |s: &Scenario| -> Vec<String> {
        s.pens
            .iter()
            .flat_map(|p| p.sessions.iter().map(|x| x.udi.clone() + &x.session_id))
            .collect()
    };
    assert_eq!(ids(&a), ids(&b));
    assert_ne!(ids(&a), ids(&c));
}

#[test]
fn another_clinic_gets_other_sessions_and_cartridges_from_one_seed() {
    let a = config(3, 3, "none", 5);
    let b = SimConfig {
        clinic: "other".into(),
        ..a.clone()
    };
    let first = |c: &SimConfig| plan(c, t0(), &[]).pens[0].sessions[0].udi.clone();
    assert_ne!(first(&a), first(&b));
}

fn assert_replay_is_the_truth(c: &SimConfig, s: &Scenario, seed: u64) {
    let decided = replay(s, c.compression);
    let want = expected(s);
    let missed: Vec<_> = want.difference(&decided).collect();
    let extra: Vec<_> = decided.difference(&want).collect();
    assert!(
        missed.is_empty() && extra.is_empty(),
        "seed {seed}: missed {missed:?}, unexpected {extra:?}"
    );
}

#[test]
fn the_truth_is_what_the_domain_rules_decide() {
    for seed in 0..40 {
        let (c, s) = heavy(seed);
        assert_replay_is_the_truth(&c, &s, seed);
    }
}

/// Each new fault alone at its highest rate, with the delivery faults that
/// reorder and repeat what the server hears.
#[test]
fn the_truth_of_swaps_overuse_and_backlogs_is_what_the_rules_decide() {
    for faults in [
        "cartridge_swap=1",
        "resume_overuse=1",
        "backlog=1",
        "cartridge_swap=0.5,resume_overuse=0.5,backlog=1,dup=0.3,reorder=0.3,disconnect=0.5",
    ] {
        let mut planned = BTreeSet::new();
        for seed in 0..20 {
            let c = config(6, 5, faults, seed);
            let s = plan(&c, t0(), &[]);
            planned.extend(s.truth.iter().map(|t| t.fault));
            assert_replay_is_the_truth(&c, &s, seed);
        }
        for kind in faults.split(',').filter_map(|f| f.split_once('=')) {
            let kind = FaultKind::parse(kind.0).expect("kind");
            assert!(planned.contains(&kind), "{faults}: no {kind} planned");
        }
    }
}

#[test]
fn every_fault_kind_is_planned_at_high_rates() {
    let mut seen = BTreeSet::new();
    for seed in 0..5 {
        let (_, s) = heavy(seed);
        seen.extend(s.truth.iter().map(|t| t.fault));
    }
    assert_eq!(seen.len(), FaultKind::ALL.len(), "{seen:?}");
}

#[test]
fn no_faults_means_no_truth_and_no_flags() {
    let c = config(10, 5, "none", 3);
    let s = plan(&c, t0(), &[]);
    assert!(s.truth.is_empty());
    assert!(replay(&s, c.compression).is_empty());
    for pen in &s.pens {
        let sends = pen.actions.iter().filter(|a| matches!(a, Action::Send(_)));
        assert_eq!(sends.count(), pen.messages.len());
    }
}

#[test]
fn seqs_continue_from_the_base_without_holes() {
    let c = config(3, 4, HEAVY, 9);
    let s = plan(&c, t0(), &[0, 41, 7]);
    for (pen, base) in s.pens.iter().zip([0u64, 41, 7]) {
        for (i, m) in pen.messages.iter().enumerate() {
            assert_eq!(m.seq, base + 1 + i as u64);
        }
        // A heartbeat, then each session's start, batches (8, unless
        // sized for a rated cartridge) and end, then a closing heartbeat.
        let per_session: u32 = pen.sessions.iter().map(|x| x.batches + 2).sum();
        assert_eq!(pen.messages.len(), 2 + per_session as usize);
        for x in &pen.sessions {
            assert_eq!(x.last_seq - x.first_seq, u64::from(x.batches) + 1);
            if !matches!(
                x.cartridge,
                CartridgeUse::OveruseOwner | CartridgeUse::ResumeOveruse { .. }
            ) {
                assert_eq!(x.batches, 8);
            }
        }
        let mut sent: Vec<usize> = pen
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(m) => Some(*m),
                _ => None,
            })
            .collect();
        sent.sort_unstable();
        sent.dedup();
        assert_eq!(sent, (0..pen.messages.len()).collect::<Vec<_>>());
    }
}

#[test]
fn reuse_and_resume_follow_a_fresh_owned_session() {
    let window = Policy::default().resume_window;
    for seed in 0..20 {
        let (_, s) = heavy(seed);
        for pen in &s.pens {
            for (k, x) in pen.sessions.iter().enumerate() {
                let (CartridgeUse::Reuse { of_session } | CartridgeUse::Resume { of_session }) =
                    x.cartridge
                else {
                    continue;
                };
                assert_eq!(of_session + 1, k, "the previous session");
                let prev = &pen.sessions[of_session];
                assert_eq!(prev.cartridge, CartridgeUse::Fresh, "never after a reuse");
                assert_eq!(prev.label, x.label);
                let gap = x.started_at - prev.ended_at;
                if matches!(x.cartridge, CartridgeUse::Resume { .. }) {
                    assert!(gap < window - Duration::minutes(5), "{gap}");
                    assert_eq!(prev.patient_ref, x.patient_ref);
                } else {
                    assert!(gap > window + Duration::minutes(4), "{gap}");
                }
            }
        }
    }
}

#[test]
fn moved_takes_an_acknowledged_fresh_cartridge_of_another_pen() {
    let mut moved = 0;
    for seed in 0..20 {
        let (_, s) = heavy(seed);
        let mut sources = BTreeSet::new();
        for pen in &s.pens {
            for (k, x) in pen.sessions.iter().enumerate() {
                let CartridgeUse::Moved { pen: sp, session } = x.cartridge else {
                    continue;
                };
                moved += 1;
                assert_ne!(sp, pen.index);
                assert!(sources.insert((sp, session)), "a source is used once");
                let source = &s.pens[sp].sessions[session];
                assert_eq!(source.cartridge, CartridgeUse::Fresh);
                assert_eq!(source.label, x.label);
                assert!(source.ended_at + Duration::seconds(MOVED_MARGIN_S) <= x.started_at);
                // The pen waits for the source's acks before its first
                // message of the session goes out.
                let first_send = pen
                    .actions
                    .iter()
                    .position(|a| {
                        matches!(a, Action::Send(m) if pen.messages[*m].body.session() == Some(k))
                    })
                    .expect("sent");
                assert_eq!(
                    pen.actions[first_send - 1],
                    Action::AwaitAck {
                        pen: sp,
                        seq: source.last_seq
                    }
                );
            }
        }
    }
    assert!(moved > 10, "moved planned {moved} times");
}

#[test]
fn a_single_pen_cannot_move_a_cartridge() {
    let c = config(1, 20, "moved=1", 1);
    let s = plan(&c, t0(), &[]);
    assert_eq!(count(&s, FaultKind::Moved), 0);
    assert!(
        s.pens[0]
            .sessions
            .iter()
            .all(|x| x.cartridge == CartridgeUse::Fresh)
    );
}

#[test]
fn reuse_needs_a_previous_session_and_never_chains() {
    let c = config(4, 6, "reuse=1", 2);
    let s = plan(&c, t0(), &[]);
    for pen in &s.pens {
        let kinds: Vec<bool> = pen
            .sessions
            .iter()
            .map(|x| matches!(x.cartridge, CartridgeUse::Reuse { .. }))
            .collect();
        // Fresh, reuse, fresh, reuse, ...: a reuse makes the next session
        // lack a fresh predecessor.
        assert_eq!(kinds, vec![false, true, false, true, false, true]);
    }
}

#[test]
fn expected_flags_follow_the_fault() {
    let (_, s) = heavy(4);
    for t in &s.truth {
        assert_eq!(t.expected_flags, t.fault.expected_flags());
        assert!(t.session_id.is_some() || t.fault.per_message(), "{t:?}");
    }
}

#[test]
fn udis_read_as_the_fault_says() {
    for seed in 0..10 {
        let (_, s) = heavy(seed);
        for pen in &s.pens {
            for x in &pen.sessions {
                let day = x.started_at.date_naive();
                let parsed = Udi::parse(&x.udi, day);
                if x.cartridge == CartridgeUse::BadUdi {
                    assert!(parsed.is_err(), "{}", x.udi);
                    continue;
                }
                let udi = parsed.expect("parses");
                let registered = PRODUCTS
                    .iter()
                    .chain([&RATED_PRODUCT])
                    .any(|p| p.0 == udi.gtin);
                assert_eq!(registered, x.cartridge != CartridgeUse::Unknown);
                let rated = matches!(
                    x.cartridge,
                    CartridgeUse::OveruseOwner | CartridgeUse::ResumeOveruse { .. }
                );
                assert_eq!(udi.gtin == RATED_PRODUCT.0, rated, "only overuse is rated");
                if x.cartridge == CartridgeUse::Unknown {
                    assert_eq!(udi.gtin, UNKNOWN_GTIN);
                }
                let lot = if x.cartridge == CartridgeUse::Recalled {
                    RECALLED_LOT
                } else {
                    OK_LOT
                };
                assert_eq!(udi.lot.as_deref(), Some(lot));
                let expired = udi.expiry.is_some_and(|e| e < day);
                assert_eq!(expired, x.cartridge == CartridgeUse::Expired, "{}", x.udi);
            }
        }
    }
}

#[test]
fn only_depth_faults_go_deeper_than_the_guidance() {
    let (_, s) = heavy(3);
    for pen in &s.pens {
        for x in &pen.sessions {
            let guidance = area_guidance_um(x.profile.area, x.profile.skin).expect("guidance");
            for b in 0..x.batches {
                let deepest = x.profile.batch(b).iter().map(|p| p.depth_um).max();
                if x.profile.excursion_batch == Some(b) {
                    assert!(deepest > Some(DEFAULT_MAX_DEPTH_UM));
                } else {
                    assert!(deepest <= Some(guidance));
                }
            }
        }
    }
}

#[test]
fn skew_is_beyond_the_window_and_disconnects_are_mid_session() {
    let window = Policy::default().skew_window;
    for seed in 0..10 {
        let (_, s) = heavy(seed);
        for pen in &s.pens {
            for x in &pen.sessions {
                if let Some(skew) = x.skew {
                    assert!(skew.abs() > window + Duration::seconds(50), "{skew}");
                }
            }
            for (i, a) in pen.actions.iter().enumerate() {
                if *a != Action::Disconnect {
                    continue;
                }
                let Action::Send(m) = pen.actions[i - 1] else {
                    panic!("a disconnect follows a send");
                };
                let body = pen.messages[m].body;
                assert!(
                    matches!(body, MessageBody::Start { .. } | MessageBody::Batch { .. }),
                    "{body:?}"
                );
            }
        }
    }
}

#[test]
fn the_last_message_is_never_swapped() {
    for seed in 0..10 {
        let c = config(5, 3, "reorder=1", seed);
        let s = plan(&c, t0(), &[]);
        for pen in &s.pens {
            let last = pen.messages.len() - 1;
            assert_eq!(pen.actions.last(), Some(&Action::Send(last)));
            let swaps = s
                .truth
                .iter()
                .filter(|t| t.device_id == pen.device_id && t.fault == FaultKind::Reorder);
            assert!(swaps.count() > 0);
        }
    }
}

#[test]
fn rates_are_roughly_honoured() {
    let c = config(200, 10, "expired=0.1,dup=0.1", 8);
    let s = plan(&c, t0(), &[]);
    let sessions = s.sessions() as f64;
    let messages = s.messages() as f64;
    let expired = count(&s, FaultKind::Expired) as f64 / sessions;
    let dup = count(&s, FaultKind::Dup) as f64 / messages;
    assert!((0.08..0.12).contains(&expired), "{expired}");
    assert!((0.08..0.12).contains(&dup), "{dup}");
    let by_kind: HashMap<FaultKind, usize> = s.truth.iter().fold(HashMap::new(), |mut m, t| {
        *m.entry(t.fault).or_default() += 1;
        m
    });
    assert_eq!(by_kind.len(), 2);
    let _ = FaultRates::none();
}

#[test]
fn a_second_run_against_the_same_server_makes_new_sessions() {
    let c = config(2, 2, "none", 5);
    let first = plan(&c, t0(), &[0, 0]);
    let again = plan(&c, t0(), &[0, 0]);
    let second = plan(&c, t0(), &[22, 22]);
    let ids = |s: &Scenario| s.pens[1].sessions[0].session_id.clone();
    assert_eq!(ids(&first), ids(&again));
    assert_ne!(ids(&first), ids(&second));
}

/// The backlog sessions of a pen (they come first, in upload order).
fn backlog(pen: &PenPlan) -> &[SessionPlan] {
    let n = pen
        .sessions
        .iter()
        .take_while(|x| x.uploaded_at.is_some())
        .count();
    &pen.sessions[..n]
}

#[test]
fn a_backlog_is_days_old_shuffled_and_its_reuses_follow_the_upload_order() {
    let window = Policy::default().resume_window;
    let (mut pens, mut before, mut after) = (0, 0, 0);
    for seed in 0..30 {
        let c = config(4, 3, "backlog=0.5", seed);
        let s = plan(&c, t0(), &[]);
        for pen in &s.pens {
            let recorded = backlog(pen);
            assert!(
                pen.sessions[recorded.len()..]
                    .iter()
                    .all(|x| x.uploaded_at.is_none()),
                "a backlog comes first"
            );
            if recorded.is_empty() {
                continue;
            }
            pens += 1;
            assert!((3..=6).contains(&recorded.len()));
            let back = recorded[0].uploaded_at.expect("uploaded");
            let mut times: Vec<_> = recorded
                .iter()
                .map(|x| (x.started_at, x.ended_at))
                .collect();
            times.sort();
            assert!(times[0].0 < back - Duration::days(2) + Duration::days(1));
            for w in times.windows(2) {
                assert!(w[1].0 - w[0].1 > window * 20, "{w:?}");
            }
            assert!(times.iter().all(|t| t.1 + Duration::hours(1) < back));
            let mut reuses = 0;
            for (k, x) in recorded.iter().enumerate() {
                assert_eq!(x.uploaded_at, Some(back));
                assert_eq!(x.skew, None, "an honest clock");
                let seqs = x.first_seq..=x.last_seq;
                for m in pen.messages.iter().filter(|m| seqs.contains(&m.seq)) {
                    assert_eq!(m.at, back, "sent as the pen comes back");
                }
                let CartridgeUse::Backlog { of_session } = x.cartridge else {
                    assert_eq!(x.cartridge, CartridgeUse::Fresh);
                    // The first uploaded of its cartridge.
                    assert!(recorded[..k].iter().all(|o| o.label != x.label));
                    continue;
                };
                reuses += 1;
                let owner = &recorded[of_session];
                assert!(of_session < k && owner.cartridge == CartridgeUse::Fresh);
                assert_eq!(owner.label, x.label);
                if owner.started_at < x.started_at {
                    before += 1;
                } else {
                    after += 1;
                }
            }
            assert!(reuses >= 1, "a backlog shares a cartridge");
        }
    }
    assert!(pens > 20, "{pens} pens with a backlog");
    // Shuffled: the owner (the first uploaded) was used later in time
    // about as often as earlier.
    assert!(before > 5 && after > 5, "{before} / {after}");
}

#[test]
fn a_swap_names_an_earlier_sessions_cartridge_for_another_patient() {
    let mut swaps = 0;
    for seed in 0..10 {
        let c = config(4, 6, "cartridge_swap=0.5", seed);
        let s = plan(&c, t0(), &[]);
        for pen in &s.pens {
            for (k, x) in pen.sessions.iter().enumerate() {
                let CartridgeUse::Swap {
                    of_session,
                    from_batch,
                } = x.cartridge
                else {
                    continue;
                };
                swaps += 1;
                let source = &pen.sessions[of_session];
                assert!(of_session < k && source.lends_cartridge());
                assert_ne!(source.patient_ref, x.patient_ref);
                assert!(from_batch <= x.batches);
                for m in &pen.messages {
                    if m.body.session() != Some(k) {
                        continue;
                    }
                    let wire = crate::wire::build(pen, m, t0());
                    let named = match wire.body.expect("body") {
                        pb::device_message::Body::SessionStart(b) => b.session,
                        pb::device_message::Body::StrokeBatch(b) => b.session,
                        pb::device_message::Body::SessionEnd(b) => b.session,
                        pb::device_message::Body::Heartbeat(_) => None,
                    }
                    .and_then(|c| c.cartridge)
                    .expect("cartridge")
                    .udi;
                    let swapped = match m.body {
                        MessageBody::Batch { batch, .. } => batch >= from_batch,
                        MessageBody::End { .. } => true,
                        _ => false,
                    };
                    let want = if swapped { &source.udi } else { &x.udi };
                    assert_eq!(&named, want, "{:?}", m.body);
                }
            }
        }
    }
    assert!(swaps > 20, "{swaps} swaps");
}

#[test]
fn a_resume_overuse_crosses_the_rating_only_in_sum() {
    let window = Policy::default().resume_window;
    let mut pairs = 0;
    for seed in 0..10 {
        let c = config(4, 6, "resume_overuse=0.5,depth=1", seed);
        let s = plan(&c, t0(), &[]);
        for pen in &s.pens {
            for (k, x) in pen.sessions.iter().enumerate() {
                let strokes = x.profile.total_strokes(x.batches);
                match x.cartridge {
                    CartridgeUse::OveruseOwner => {
                        assert!(strokes <= RATED_STROKES, "{strokes}");
                        assert!(matches!(
                            pen.sessions[k + 1].cartridge,
                            CartridgeUse::ResumeOveruse { of_session } if of_session == k
                        ));
                    }
                    CartridgeUse::ResumeOveruse { of_session } => {
                        pairs += 1;
                        let owner = &pen.sessions[of_session];
                        let before = owner.profile.total_strokes(owner.batches);
                        assert!(before + strokes > RATED_STROKES);
                        assert!(strokes <= RATED_STROKES, "not overused alone");
                        assert_eq!(owner.label, x.label);
                        assert_eq!(owner.patient_ref, x.patient_ref);
                        assert!(x.started_at - owner.ended_at < window - Duration::minutes(5));
                    }
                    _ => continue,
                }
                assert_eq!(x.profile.excursion_batch, None);
                assert_eq!(x.label.gtin, RATED_PRODUCT.0);
            }
        }
    }
    assert!(pairs > 10, "{pairs} pairs");
}
