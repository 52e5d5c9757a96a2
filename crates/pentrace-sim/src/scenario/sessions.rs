//! Pass 1: a pen's sessions and their faults, from the pen's own RNG.

use chrono::{DateTime, Duration, Utc};
use pentrace_domain::message::{SkinThickness, TreatmentArea};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use super::{
    CartridgeUse, EXPIRED_DAYS_AGO, FIRST_GAP_S, GAP_S, PenPlan, REUSE_GAP_S, SKEW_MIN, SessionPlan,
};
use crate::catalogue::{
    self, Label, OK_LOT, PRODUCTS, RECALLED_LOT, UNKNOWN_GTIN, UdiForm, yymmdd,
};
use crate::config::SimConfig;
use crate::faults::FaultKind;
use crate::profile::{BATCH_MS, SessionProfile};

const FIRMWARE: [&str; 3] = ["2.4.1", "2.4.2", "3.0.0"];
const SERIAL_CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// A pen with its sessions decided; messages and actions come in pass 3.
pub(super) fn plan_pen(config: &SimConfig, t0: DateTime<Utc>, index: usize, seed: u64) -> PenPlan {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let form = UdiForm::ALL[rng.random_range(0..UdiForm::ALL.len())];
    let firmware = FIRMWARE[rng.random_range(0..FIRMWARE.len())].to_owned();
    // Pens start a little apart, as in a real clinic.
    let pen_start = t0 + Duration::milliseconds(rng.random_range(0..30_000));
    let mut sessions: Vec<SessionPlan> = Vec::new();
    let mut clock = pen_start;
    for k in 0..config.sessions {
        let session = plan_session(config, &mut rng, &sessions, clock, k == 0, form);
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

fn plan_session(
    config: &SimConfig,
    rng: &mut Xoshiro256PlusPlus,
    earlier: &[SessionPlan],
    clock: DateTime<Utc>,
    first: bool,
    form: UdiForm,
) -> SessionPlan {
    let previous = earlier.last();
    let cartridge = draw_cartridge(config, rng, previous, earlier.len());
    let gap_s = match (first, cartridge) {
        (true, _) => FIRST_GAP_S,
        (_, CartridgeUse::Reuse { .. }) => REUSE_GAP_S,
        _ => GAP_S,
    };
    let started_at = clock + Duration::seconds(rng.random_range(gap_s.0..=gap_s.1));
    let batches = config.batches;
    let ended_at = started_at + Duration::milliseconds(i64::from(batches) * i64::from(BATCH_MS));
    let fresh = fresh_label(rng, started_at);
    let label = match (cartridge, previous) {
        (CartridgeUse::Reuse { .. } | CartridgeUse::Resume { .. }, Some(p)) => p.label.clone(),
        _ => faulty_label(cartridge, fresh, rng, started_at),
    };
    let patient_ref = match (cartridge, previous) {
        (CartridgeUse::Resume { .. }, Some(p)) => p.patient_ref.clone(),
        _ => random_hex(rng, 16),
    };
    let profile = draw_profile(config, rng);
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
    }
}

/// One draw decides the cartridge fault (at most one per session).
/// Reuse and resume need a previous session that owns a fresh cartridge;
/// without one the session gets a fresh cartridge instead.
fn draw_cartridge(
    config: &SimConfig,
    rng: &mut Xoshiro256PlusPlus,
    previous: Option<&SessionPlan>,
    index: usize,
) -> CartridgeUse {
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
    let previous_fresh = previous.is_some_and(|p| p.cartridge == CartridgeUse::Fresh);
    let of_session = index.saturating_sub(1);
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
        _ => CartridgeUse::Fresh,
    }
}

/// A new cartridge of a registered product from the good lot, expiring
/// with the lot.
fn fresh_label(rng: &mut Xoshiro256PlusPlus, started_at: DateTime<Utc>) -> Label {
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
        CartridgeUse::Unknown => label.gtin = UNKNOWN_GTIN.to_owned(),
        CartridgeUse::BadUdi => label.gtin = catalogue::corrupt_check_digit(&label.gtin),
        _ => {}
    }
    label
}

fn draw_profile(config: &SimConfig, rng: &mut Xoshiro256PlusPlus) -> SessionProfile {
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
fn random_hex(rng: &mut Xoshiro256PlusPlus, bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

fn random_uuid(rng: &mut Xoshiro256PlusPlus) -> String {
    let bytes: [u8; 16] = rng.random();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}
