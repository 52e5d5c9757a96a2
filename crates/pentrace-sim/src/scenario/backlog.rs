//! Pass 1, first part: the backlog of a pen that was offline for days.
//!
//! The pen recorded a few sessions, hours to days apart, some of them with
//! one cartridge used again days later (for the same patient or another),
//! and uploads them all as it comes back, in a shuffled order: their
//! device times are days old, its clock honest. The server binds a
//! cartridge to the session it hears of first, and a session that started
//! before the cartridge's last activity is a reuse, never a resume; so of
//! the sessions sharing a cartridge, the one uploaded first owns it and
//! every other one is a reuse, whichever came first in time. The plan keeps
//! the backlog in upload order (its seqs follow it), so the owner is the
//! lowest index and the others point at it.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use super::sessions::{draw_profile, fresh_label, random_hex, random_uuid};
use super::{CartridgeUse, SessionPlan};
use crate::catalogue::UdiForm;
use crate::config::SimConfig;
use crate::faults::FaultKind;
use crate::profile::{BATCH_MS, mix};

/// Days the pen was offline before it comes back.
const OFFLINE_DAYS: (i64, i64) = (2, 4);
/// Sessions it recorded meanwhile.
const RECORDED: (usize, usize) = (3, 6);
/// Sessions sharing one cartridge.
const SHARING: (usize, usize) = (2, 3);
/// From this many sessions on, two cartridges may be shared.
const TWO_SHARED_FROM: usize = 5;

/// The backlog of the pen coming back at `back_at`, in upload order; empty
/// unless the pen was offline (the `backlog` rate, per pen). Drawn from a
/// stream of its own, so a run without backlogs plans what it did before.
pub(super) fn plan(
    config: &SimConfig,
    back_at: DateTime<Utc>,
    form: UdiForm,
    seed: u64,
) -> Vec<SessionPlan> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(seed, &[0xBAC_C106]));
    if !rng.random_bool(config.faults.rate(FaultKind::Backlog)) {
        return Vec::new();
    }
    let days = rng.random_range(OFFLINE_DAYS.0..=OFFLINE_DAYS.1);
    let n = rng.random_range(RECORDED.0..=RECORDED.1);
    let mut recorded: Vec<SessionPlan> = (0..n)
        .map(|i| recorded_session(config, &mut rng, Slot::of(back_at, days, i, n), form))
        .collect();
    share_cartridges(&mut rng, &mut recorded, form);
    recorded.shuffle(&mut rng);
    for s in &mut recorded {
        s.uploaded_at = Some(back_at);
    }
    mark_reuses(&mut recorded);
    recorded
}

/// When a recorded session may start: its share of the offline days.
struct Slot {
    from: DateTime<Utc>,
    len: Duration,
}

impl Slot {
    /// Slot `i` of `n` in the `days` before `back_at`.
    fn of(back_at: DateTime<Utc>, days: i64, i: usize, n: usize) -> Slot {
        let len = Duration::days(days) / i32::try_from(n).unwrap_or(1).max(1);
        let offline = back_at - Duration::days(days);
        Slot {
            from: offline + len * i32::try_from(i).unwrap_or(0),
            len,
        }
    }
}

/// A session in the first half of its slot: sessions at least four hours
/// apart (far beyond the resume window), the last one ended hours before
/// the pen is back.
fn recorded_session(
    config: &SimConfig,
    rng: &mut Xoshiro256PlusPlus,
    slot: Slot,
    form: UdiForm,
) -> SessionPlan {
    let half_s = (slot.len.num_seconds() / 2).max(1);
    let started_at = slot.from + Duration::seconds(rng.random_range(0..half_s));
    let batches = config.batches;
    let label = fresh_label(rng, started_at);
    SessionPlan {
        session_id: random_uuid(rng),
        started_at,
        ended_at: started_at + Duration::milliseconds(i64::from(batches) * i64::from(BATCH_MS)),
        patient_ref: random_hex(rng, 16),
        operator_ref: format!("op-{}", rng.random_range(1..=5)),
        udi: label.udi(form),
        label,
        cartridge: CartridgeUse::Fresh,
        profile: draw_profile(config, rng),
        batches,
        // The pen's clock is honest: the backlog is old, not skewed.
        skew: None,
        first_seq: 0,
        last_seq: 0,
        uploaded_at: None,
    }
}

/// Gives one cartridge (two, in a longer backlog) to 2-3 sessions: the
/// earliest one's label; the later ones for the same patient again or for
/// another.
fn share_cartridges(rng: &mut Xoshiro256PlusPlus, recorded: &mut [SessionPlan], form: UdiForm) {
    let shared = if recorded.len() >= TWO_SHARED_FROM && rng.random_bool(0.5) {
        2
    } else {
        1
    };
    let mut free: Vec<usize> = (0..recorded.len()).collect();
    free.shuffle(rng);
    for _ in 0..shared {
        let size = rng.random_range(SHARING.0..=SHARING.1).min(free.len());
        if size < SHARING.0 {
            return;
        }
        let mut group: Vec<usize> = free.split_off(free.len() - size);
        group.sort_unstable();
        let (label, patient) = (
            recorded[group[0]].label.clone(),
            recorded[group[0]].patient_ref.clone(),
        );
        for &k in &group[1..] {
            let s = &mut recorded[k];
            s.udi = label.udi(form);
            s.label = label.clone();
            if rng.random_bool(0.5) {
                s.patient_ref = patient.clone();
            }
        }
    }
}

/// In upload order: every session whose cartridge an earlier-uploaded one
/// used is a reuse of the first of those.
fn mark_reuses(uploaded: &mut [SessionPlan]) {
    let mut owners: HashMap<String, usize> = HashMap::new();
    for (k, s) in uploaded.iter_mut().enumerate() {
        let owner = *owners.entry(s.label.cartridge_id()).or_insert(k);
        if owner != k {
            s.cartridge = CartridgeUse::Backlog { of_session: owner };
        }
    }
}
