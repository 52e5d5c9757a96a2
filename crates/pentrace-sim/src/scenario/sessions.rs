//! Pass 1: a pen's sessions and their faults, from the pen's own RNG.

use chrono::{DateTime, Duration, Utc};
use pentrace_domain::message::{SkinThickness, TreatmentArea};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use super::{
    CartridgeUse, EXPIRED_DAYS_AGO, FIRST_GAP_S, GAP_S, PenPlan, REUSE_GAP_S, SKEW_MIN,
    SessionPlan, backlog,
};
use crate::catalogue::{
    self, Label, OK_LOT, PRODUCTS, RATED_PRODUCT, RATED_STROKES, RECALLED_LOT, UNKNOWN_GTIN,
    UdiForm, yymmdd,
};
use crate::config::SimConfig;
use crate::faults::FaultKind;
use crate::profile::{BATCH_MS, SessionProfile};

const FIRMWARE: [&str; 3] = ["2.4.1", "2.4.2", "3.0.0"];
const SERIAL_CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// Share of the rating (percent) the owner of a rated cartridge uses.
const OWNER_SHARE_PCT: (u64, u64) = (60, 90);
/// Batches a resume of a rated cartridge goes on after crossing the rating.
const AFTER_CROSSING: (u32, u32) = (0, 2);

/// A pen with its sessions decided; messages and actions come in pass 3.
pub(super) fn plan_pen(config: &SimConfig, t0: DateTime<Utc>, index: usize, seed: u64) -> PenPlan {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let form = UdiForm::ALL[rng.random_range(0..UdiForm::ALL.len())];
    let firmware = FIRMWARE[rng.random_range(0..FIRMWARE.len())].to_owned();
    // Pens start a little apart, as in a real clinic.
    let pen_start = t0 + Duration::milliseconds(rng.random_range(0..30_000));
    // A pen that was offline uploads its backlog first, as it comes back.
    let mut sessions = backlog::plan(config, pen_start, form, seed);
    let run_from = sessions.len();
    let mut clock = pen_start;
    for k in 0..config.sessions {
        let so_far = SoFar {
            sessions: &sessions,
            run_from,
            last: k + 1 == config.sessions,
        };
        let session = plan_session(config, &mut rng, &so_far, clock, form);
        clock = session.ended_at;
        sessions.push(session);
    }
    PenPlan {
        index,
        device_id: config.device_id(index),
        form,
        firmware,
        sessions,
        messages: Vec::new(),
        actions: Vec::new(),
    }
}

/// The pen's sessions planned before the next one of the run.
struct SoFar<'a> {
    /// The backlog, then the run's sessions so far.
    sessions: &'a [SessionPlan],
    /// Where the run's sessions start.
    run_from: usize,
    /// Whether the next session is the run's last (none follows it).
    last: bool,
}

impl SoFar<'_> {
    /// The run's sessions so far, with their indexes in the pen's plan.
    fn run(&self) -> impl Iterator<Item = (usize, &SessionPlan)> {
        self.sessions.iter().enumerate().skip(self.run_from)
    }

    /// The run's previous session (a backlog is never resumed nor reused
    /// by the run: its cartridges stay within it).
    fn previous(&self) -> Option<&SessionPlan> {
        self.run().last().map(|(_, s)| s)
    }
}

fn plan_session(
    config: &SimConfig,
    rng: &mut Xoshiro256PlusPlus,
    so_far: &SoFar<'_>,
    clock: DateTime<Utc>,
    form: UdiForm,
) -> SessionPlan {
    let previous = so_far.previous();
    let first = previous.is_none();
    let cartridge = draw_cartridge(config, rng, so_far);
    let gap_s = match (first, cartridge) {
        (true, _) => FIRST_GAP_S,
        (_, CartridgeUse::Reuse { .. }) => REUSE_GAP_S,
        _ => GAP_S,
    };
    let started_at = clock + Duration::seconds(rng.random_range(gap_s.0..=gap_s.1));
    let fresh = fresh_label(rng, started_at);
    let label = match (cartridge, previous) {
        (
            CartridgeUse::Reuse { .. }
            | CartridgeUse::Resume { .. }
            | CartridgeUse::ResumeOveruse { .. },
            Some(p),
        ) => p.label.clone(),
        _ => faulty_label(cartridge, fresh, rng, started_at),
    };
    let patient_ref = match (cartridge, previous) {
        (CartridgeUse::Resume { .. } | CartridgeUse::ResumeOveruse { .. }, Some(p)) => {
            p.patient_ref.clone()
        }
        _ => random_hex(rng, 16),
    };
    let mut profile = draw_profile(config, rng);
    let batches = rated_batches(rng, cartridge, previous, &mut profile).unwrap_or(config.batches);
    let ended_at = started_at + Duration::milliseconds(i64::from(batches) * i64::from(BATCH_MS));
    let skew = draw_skew(config, rng);
    SessionPlan {
        session_id: random_uuid(rng),
        started_at,
        ended_at,
        patient_ref,
        operator_ref: format!("op-{}", rng.random_range(1..=5)),
        udi: label.udi(form),
        label,
        cartridge,
        profile,
        batches,
        skew,
        first_seq: 0,
        last_seq: 0,
        uploaded_at: None,
    }
}

/// One draw decides the cartridge fault (at most one per session).
/// Reuse and resume need a previous session that owns a fresh cartridge,
/// a swap an earlier one, a rated owner a next session to resume it;
/// without them the session gets a fresh cartridge instead. The session
/// after a rated owner resumes it.
fn draw_cartridge(
    config: &SimConfig,
    rng: &mut Xoshiro256PlusPlus,
    so_far: &SoFar<'_>,
) -> CartridgeUse {
    let previous = so_far.previous();
    let of_session = so_far.sessions.len().saturating_sub(1);
    if previous.is_some_and(|p| p.cartridge == CartridgeUse::OveruseOwner) {
        return CartridgeUse::ResumeOveruse { of_session };
    }
    let u: f64 = rng.random();
    let mut threshold = 0.0;
    let mut chosen = None;
    for kind in FaultKind::CARTRIDGE {
        threshold += config.faults.rate(kind);
        if u < threshold {
            chosen = Some(kind);
            break;
        }
    }
    let previous_fresh = previous.is_some_and(SessionPlan::lends_cartridge);
    match chosen {
        Some(FaultKind::Reuse) if previous_fresh => CartridgeUse::Reuse { of_session },
        Some(FaultKind::Resume) if previous_fresh => CartridgeUse::Resume { of_session },
        // The source is chosen in pass 2; `pen` is a placeholder until then.
        Some(FaultKind::Moved) => CartridgeUse::Moved {
            pen: usize::MAX,
            session: usize::MAX,
        },
        Some(FaultKind::Expired) => CartridgeUse::Expired,
        Some(FaultKind::Recalled) => CartridgeUse::Recalled,
        Some(FaultKind::Unknown) => CartridgeUse::Unknown,
        Some(FaultKind::BadUdi) => CartridgeUse::BadUdi,
        Some(FaultKind::CartridgeSwap) => draw_swap(config, rng, so_far),
        Some(FaultKind::ResumeOveruse) if !so_far.last => CartridgeUse::OveruseOwner,
        _ => CartridgeUse::Fresh,
    }
}

/// A swap to the cartridge of an earlier session of the run that owns a
/// fresh one, from a random batch on (or at the end). That session was for
/// another patient, so the swap is a reuse however recent it was.
fn draw_swap(config: &SimConfig, rng: &mut Xoshiro256PlusPlus, so_far: &SoFar<'_>) -> CartridgeUse {
    let sources: Vec<usize> = so_far
        .run()
        .filter(|(_, s)| s.lends_cartridge())
        .map(|(k, _)| k)
        .collect();
    if sources.is_empty() {
        return CartridgeUse::Fresh;
    }
    CartridgeUse::Swap {
        of_session: sources[rng.random_range(0..sources.len())],
        from_batch: rng.random_range(0..=config.batches),
    }
}

/// The batches of a session on the rated cartridge (`None` for any other):
/// the owner uses 60-90 % of the rating; its resume crosses the rating in
/// sum with it and goes on for a few batches. Neither makes a depth
/// excursion (it changes a batch's samples, strokes included, and they are
/// counted here before).
fn rated_batches(
    rng: &mut Xoshiro256PlusPlus,
    cartridge: CartridgeUse,
    previous: Option<&SessionPlan>,
    profile: &mut SessionProfile,
) -> Option<u32> {
    let budget = match cartridge {
        CartridgeUse::OveruseOwner => {
            RATED_STROKES * rng.random_range(OWNER_SHARE_PCT.0..=OWNER_SHARE_PCT.1) / 100
        }
        CartridgeUse::ResumeOveruse { .. } => {
            let before = previous.map_or(0, |p| p.profile.total_strokes(p.batches));
            RATED_STROKES.saturating_sub(before)
        }
        _ => return None,
    };
    profile.excursion_batch = None;
    let within = batches_within(profile, budget);
    Some(match cartridge {
        CartridgeUse::ResumeOveruse { .. } => {
            within + 1 + rng.random_range(AFTER_CROSSING.0..=AFTER_CROSSING.1)
        }
        _ => within,
    })
}

/// The most batches whose strokes add up to at most `budget`.
fn batches_within(profile: &SessionProfile, budget: u64) -> u32 {
    let mut total = 0u64;
    // Every batch has at least 50 strokes: the rating is reached long
    // before the bound.
    for b in 0..u32::MAX {
        total += profile
            .batch(b)
            .iter()
            .map(|s| u64::from(s.strokes))
            .sum::<u64>();
        if total > budget {
            return b;
        }
    }
    u32::MAX
}

/// A new cartridge of a registered product from the good lot, expiring
/// with the lot.
pub(super) fn fresh_label(rng: &mut Xoshiro256PlusPlus, started_at: DateTime<Utc>) -> Label {
    let gtin = PRODUCTS[rng.random_range(0..PRODUCTS.len())].0;
    Label {
        gtin: gtin.to_owned(),
        expiry: yymmdd(catalogue::lot_expiry(started_at.date_naive())),
        lot: OK_LOT.to_owned(),
        serial: random_serial(rng),
    }
}

/// The label of a cartridge fault (a moved cartridge's label is replaced in
/// pass 2).
fn faulty_label(
    cartridge: CartridgeUse,
    mut label: Label,
    rng: &mut Xoshiro256PlusPlus,
    started_at: DateTime<Utc>,
) -> Label {
    match cartridge {
        CartridgeUse::Expired => {
            let day = started_at.date_naive();
            // Sometimes printed as YYMM00: the last day of last month.
            label.expiry = if rng.random_bool(0.3) {
                catalogue::last_month_yymm00(day)
            } else {
                yymmdd(day - Duration::days(EXPIRED_DAYS_AGO))
            };
        }
        CartridgeUse::Recalled => label.lot = RECALLED_LOT.to_owned(),
        CartridgeUse::OveruseOwner => label.gtin = RATED_PRODUCT.0.to_owned(),
        CartridgeUse::Unknown => label.gtin = UNKNOWN_GTIN.to_owned(),
        CartridgeUse::BadUdi => label.gtin = catalogue::corrupt_check_digit(&label.gtin),
        _ => {}
    }
    label
}

pub(super) fn draw_profile(config: &SimConfig, rng: &mut Xoshiro256PlusPlus) -> SessionProfile {
    let area = TreatmentArea::ALL[rng.random_range(0..TreatmentArea::ALL.len())];
    let skin = if rng.random_bool(0.5) {
        SkinThickness::Thin
    } else {
        SkinThickness::Thick
    };
    let deep = rng.random_bool(config.faults.rate(FaultKind::Depth));
    let excursion_batch = (deep && config.batches > 0).then(|| rng.random_range(0..config.batches));
    SessionProfile {
        area,
        skin,
        speed_hz: rng.random_range(50..=150),
        seed: rng.random(),
        excursion_batch,
    }
}

fn draw_skew(config: &SimConfig, rng: &mut Xoshiro256PlusPlus) -> Option<Duration> {
    if !rng.random_bool(config.faults.rate(FaultKind::Skew)) {
        return None;
    }
    let minutes = rng.random_range(SKEW_MIN.0..=SKEW_MIN.1);
    let sign = if rng.random_bool(0.5) { 1 } else { -1 };
    // Whole minutes plus some seconds, as a drifting clock would be.
    Some(Duration::minutes(sign * minutes) + Duration::seconds(sign * rng.random_range(0..60)))
}

fn random_serial(rng: &mut Xoshiro256PlusPlus) -> String {
    (0..12)
        .map(|_| char::from(SERIAL_CHARS[rng.random_range(0..SERIAL_CHARS.len())]))
        .collect()
}

/// A patient reference: an opaque hash, never a name.
pub(super) fn random_hex(rng: &mut Xoshiro256PlusPlus, bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

pub(super) fn random_uuid(rng: &mut Xoshiro256PlusPlus) -> String {
    let bytes: [u8; 16] = rng.random();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}
