//! The flag rules of DESIGN §4 as pure functions.
//!
//! The pipeline asks the store for the facts a message needs ([`Facts`]),
//! hands them here with the policy and the server's receive time, and writes
//! what comes back ([`Judgement`]). Nothing here reads a clock or a database.
//!
//! A session's cartridge verdicts (reuse, resume, expiry, recall, unknown,
//! invalid UDI) are decided once, on the first message of the session that
//! arrives, whichever kind it is; the decision is stored with the session
//! ([`CartridgeRelation`]) so later messages never re-judge it against
//! activity the session itself caused. Depth, overuse and skew are judged
//! on every message.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::json;

use crate::cartridge::CartridgeId;
use crate::flag::{FlagKind, Verdict};
use crate::message::{Body, CartridgeRef, DeviceMessage, SessionContext, StrokeBatch, TimeFault};
use crate::policy::{Policy, area_guidance_um};
use crate::time;
use crate::udi::{Udi, UdiError};

/// The session that owns a cartridge (bind-once) and its latest activity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub session_id: String,
    pub device_id: String,
    /// The owner device's clinic: a reuse in another clinic is told that
    /// the cartridge was used before, and when, but not where.
    pub clinic_id: String,
    pub patient_ref: Option<String>,
    /// Latest device time (skew-corrected) of the owner or a resumed session.
    pub last_activity_at: DateTime<Utc>,
}

/// A lot as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LotFacts {
    /// Expiry registered for the lot (overrides nothing: the earlier of this
    /// and the UDI's (17) applies).
    pub expiry: Option<NaiveDate>,
    /// When the lot was recalled, if it was.
    pub recalled_at: Option<DateTime<Utc>>,
}

/// A product of the catalogue; 0 means "no limit" for each value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProductFacts {
    pub max_depth_um: u32,
    pub rated_strokes: u64,
    pub max_active_ms: u64,
    /// Days from the production date (11) to expiry, for cartridges whose
    /// UDI and lot give no expiry; 0 = none.
    pub shelf_life_days: u32,
}

/// What is already stored about the message's session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionFacts {
    /// Decided on the session's first message; `None` before that.
    pub relation: Option<CartridgeRelation>,
    /// Strokes stored for the session before this message.
    pub strokes: u64,
    /// Active (stroking) milliseconds stored before this message.
    pub active_ms: u64,
}

/// Everything the rules need to judge one message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Facts {
    /// Existing binding of the message's cartridge, if any.
    pub binding: Option<Binding>,
    /// `None` when the GTIN is not in the catalogue.
    pub product: Option<ProductFacts>,
    /// `None` when the lot is not registered.
    pub lot: Option<LotFacts>,
    pub session: SessionFacts,
    /// The device's own depth limit; 0 = the policy default.
    pub device_max_depth_um: u32,
    /// The judged device's clinic.
    pub clinic_id: String,
}

/// How a session relates to the cartridge it presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CartridgeRelation {
    /// The session owns the cartridge (it claimed it first).
    Owner,
    /// A legitimate continuation of the owner (reboot mid-treatment).
    Resumed { owner_session_id: String },
    /// The cartridge was already used by another session.
    Reused { owner_session_id: String },
    /// The cartridge has no identity (no chip UID and no valid serial).
    Unidentified,
}

impl CartridgeRelation {
    /// Whether the session's activity counts as the cartridge's activity
    /// (only the owner and its resumptions extend the resume window).
    pub fn extends_activity(&self) -> bool {
        matches!(
            self,
            CartridgeRelation::Owner | CartridgeRelation::Resumed { .. }
        )
    }
}

/// The cartridge as identified from what the pen read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identified {
    pub udi: Result<Udi, UdiError>,
    pub cartridge: Option<CartridgeId>,
}

impl Identified {
    /// The parsed UDI, when it parsed.
    pub fn udi(&self) -> Option<&Udi> {
        self.udi.as_ref().ok()
    }
}

/// Parses the UDI and derives the cartridge identity; `today` (server date)
/// decides the century of two-digit years.
pub fn identify(cartridge: &CartridgeRef, today: NaiveDate) -> Identified {
    let udi = Udi::parse(&cartridge.udi, today);
    let id = CartridgeId::identify(udi.as_ref().ok(), &cartridge.chip_uid);
    Identified { udi, cartridge: id }
}

/// What the rules decided about one message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Judgement {
    pub verdicts: Vec<Verdict>,
    /// Set when this message decided the session's relation to its cartridge
    /// (its first message); `Owner` means "claim the binding".
    pub decided: Option<CartridgeRelation>,
    /// Device time (skew-corrected) of the latest activity in the message.
    pub activity_at: Option<DateTime<Utc>>,
}

/// `received_at − sent_at`: positive when the pen's clock is behind.
pub fn measured_skew(sent_at: DateTime<Utc>, received_at: DateTime<Utc>) -> Duration {
    time::since(received_at, sent_at)
}

/// A device time corrected by the message's measured skew when that skew is
/// larger than the window: a wrong clock cannot move a session in time, while
/// a backfilled message (old samples, honest clock) keeps its own times.
/// Saturates at chrono's limits (unreachable for times inside the device
/// range of [`crate::time`]).
pub fn corrected(
    device_time: DateTime<Utc>,
    sent_at: DateTime<Utc>,
    received_at: DateTime<Utc>,
    policy: &Policy,
) -> DateTime<Utc> {
    let skew = measured_skew(sent_at, received_at);
    if skew.abs() > policy.skew_window {
        time::shift(device_time, skew)
    } else {
        device_time
    }
}

/// Judges one device message against the facts.
///
/// `ident` must be `identify(ctx.cartridge, …)` for session messages and is
/// ignored for heartbeats.
pub fn judge(
    msg: &DeviceMessage,
    ident: Option<&Identified>,
    facts: &Facts,
    policy: &Policy,
    received_at: DateTime<Utc>,
) -> Judgement {
    let mut out = Judgement::default();
    if let Some(v) = judge_skew(msg, policy, received_at) {
        out.verdicts.push(v);
    }
    let (Some(ctx), Some(ident)) = (msg.session(), ident) else {
        return out;
    };
    let at = |t| corrected(t, msg.sent_at, received_at, policy);
    let started = at(ctx.started_at);
    if facts.session.relation.is_none() {
        let relation = relation_of(msg, ctx, ident, facts, policy, started);
        out.verdicts
            .extend(cartridge_verdicts(ctx, ident, facts, &relation, started));
        out.decided = Some(relation);
    }
    out.activity_at = Some(match &msg.body {
        Body::StrokeBatch(b) => at(batch_end(b)),
        Body::SessionEnd(e) => at(e.ended_at),
        _ => started,
    });
    if let Body::StrokeBatch(batch) = &msg.body {
        out.verdicts.extend(batch_verdicts(batch, facts, policy));
    }
    if let Some(raw) = &ctx.raw_session_id {
        for v in &mut out.verdicts {
            if let Some(evidence) = v.evidence.as_object_mut() {
                evidence.insert("raw_session_id".to_owned(), json!(raw));
            }
        }
    }
    out
}

/// Device time of the batch's last sample.
pub fn batch_end(b: &StrokeBatch) -> DateTime<Utc> {
    let last = b.samples.iter().map(|s| s.offset_ms).max().unwrap_or(0);
    time::add_ms(b.started_at, last)
}

/// Decides reuse vs resume vs ownership (DESIGN §4, bind-once).
fn relation_of(
    msg: &DeviceMessage,
    ctx: &SessionContext,
    ident: &Identified,
    facts: &Facts,
    policy: &Policy,
    started: DateTime<Utc>,
) -> CartridgeRelation {
    if ident.cartridge.is_none() {
        return CartridgeRelation::Unidentified;
    }
    let Some(binding) = &facts.binding else {
        return CartridgeRelation::Owner;
    };
    if binding.session_id == ctx.session_id {
        return CartridgeRelation::Owner;
    }
    let owner_session_id = binding.session_id.clone();
    let same_patient = match (&binding.patient_ref, &ctx.patient_ref) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    let idle = time::since(started, binding.last_activity_at);
    if binding.device_id == msg.device_id && same_patient && idle <= policy.resume_window {
        CartridgeRelation::Resumed { owner_session_id }
    } else {
        CartridgeRelation::Reused { owner_session_id }
    }
}

fn session_key(ctx: &SessionContext, kind: FlagKind) -> String {
    format!("session:{}:{}", ctx.session_id, kind.as_str())
}

/// The verdicts decided once per session about its cartridge.
fn cartridge_verdicts(
    ctx: &SessionContext,
    ident: &Identified,
    facts: &Facts,
    relation: &CartridgeRelation,
    started: DateTime<Utc>,
) -> Vec<Verdict> {
    let mut out = Vec::new();
    out.extend(udi_verdict(ctx, ident));
    out.extend(relation_verdict(ctx, ident, facts, relation));
    let Some(udi) = ident.udi() else { return out };
    if facts.product.is_none() {
        out.push(Verdict::new(
            FlagKind::CartridgeUnknown,
            session_key(ctx, FlagKind::CartridgeUnknown),
            format!(
                "GTIN {} is not in the product catalogue (possible counterfeit)",
                udi.gtin
            ),
            json!({ "gtin": udi.gtin }),
        ));
    }
    out.extend(expiry_verdict(
        ctx,
        udi,
        facts.lot.as_ref(),
        facts.product.as_ref(),
        started,
    ));
    out.extend(recall_verdict(ctx, udi, facts.lot.as_ref(), started));
    out
}

fn udi_verdict(ctx: &SessionContext, ident: &Identified) -> Option<Verdict> {
    let kind = FlagKind::UdiInvalid;
    let problem = match (&ident.udi, &ident.cartridge) {
        (Err(e), _) => e.to_string(),
        (Ok(_), None) => "the UDI has no serial (21) and the pen read no chip UID: \
                          the cartridge cannot be identified"
            .to_owned(),
        (Ok(_), Some(_)) => return None,
    };
    Some(Verdict::new(
        kind,
        session_key(ctx, kind),
        format!("UDI {:?} is invalid: {problem}", ctx.cartridge.udi),
        json!({ "udi": ctx.cartridge.udi, "problem": problem }),
    ))
}

fn relation_verdict(
    ctx: &SessionContext,
    ident: &Identified,
    facts: &Facts,
    relation: &CartridgeRelation,
) -> Option<Verdict> {
    let binding = facts.binding.as_ref()?;
    let cartridge = ident.cartridge.as_ref()?.to_string();
    if binding.clinic_id != facts.clinic_id {
        return elsewhere_verdict(ctx, binding, &cartridge, relation);
    }
    let evidence = json!({
        "cartridge_id": cartridge,
        "owner_session_id": binding.session_id,
        "owner_device_id": binding.device_id,
        "owner_last_activity_at": binding.last_activity_at.to_rfc3339(),
        "session_started_at": ctx.started_at.to_rfc3339(),
    });
    let (kind, detail) = match relation {
        CartridgeRelation::Reused { owner_session_id } => (
            FlagKind::CartridgeReused,
            format!(
                "cartridge {cartridge} is bound to session {owner_session_id} on device {}",
                binding.device_id
            ),
        ),
        CartridgeRelation::Resumed { owner_session_id } => (
            FlagKind::SessionResumed,
            format!("session resumes {owner_session_id} with cartridge {cartridge}"),
        ),
        CartridgeRelation::Owner | CartridgeRelation::Unidentified => return None,
    };
    Some(Verdict::new(kind, session_key(ctx, kind), detail, evidence))
}

/// A cartridge first used in another clinic: the flag (and the audit
/// event that records it) belong to this clinic, so they say that it was
/// used before and when, never the other clinic's device or session. An
/// admin finds those in the cartridge's history.
fn elsewhere_verdict(
    ctx: &SessionContext,
    binding: &Binding,
    cartridge: &str,
    relation: &CartridgeRelation,
) -> Option<Verdict> {
    let kind = match relation {
        CartridgeRelation::Reused { .. } => FlagKind::CartridgeReused,
        // The same pen, registered to another clinic since.
        CartridgeRelation::Resumed { .. } => FlagKind::SessionResumed,
        CartridgeRelation::Owner | CartridgeRelation::Unidentified => return None,
    };
    let last = binding.last_activity_at.to_rfc3339();
    Some(Verdict::new(
        kind,
        session_key(ctx, kind),
        format!("cartridge {cartridge} was used before, in another clinic (last activity {last})"),
        json!({
            "cartridge_id": cartridge,
            "owner": "another clinic",
            "owner_last_activity_at": last,
            "session_started_at": ctx.started_at.to_rfc3339(),
        }),
    ))
}

/// The expiry that applies (DESIGN §4): the earlier of the UDI's (17) and
/// the lot's; when neither is known, the production date (11) plus the
/// product's shelf life.
pub fn effective_expiry(
    udi: &Udi,
    lot: Option<&LotFacts>,
    product: Option<&ProductFacts>,
) -> Option<NaiveDate> {
    let registered = lot.and_then(|l| l.expiry);
    match (udi.expiry, registered) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (None, None) => shelf_life_expiry(udi, product),
        (a, b) => a.or(b),
    }
}

/// Production date + shelf life; `None` without either, or past the end
/// of the calendar (a shelf life that long never expires).
fn shelf_life_expiry(udi: &Udi, product: Option<&ProductFacts>) -> Option<NaiveDate> {
    let days = product.map(|p| p.shelf_life_days).filter(|d| *d > 0)?;
    udi.production_date?
        .checked_add_days(chrono::Days::new(u64::from(days)))
}

fn expiry_verdict(
    ctx: &SessionContext,
    udi: &Udi,
    lot: Option<&LotFacts>,
    product: Option<&ProductFacts>,
    started: DateTime<Utc>,
) -> Option<Verdict> {
    let expiry = effective_expiry(udi, lot, product)?;
    let day = started.date_naive();
    // A cartridge may be used through the whole of its expiry date.
    if day <= expiry {
        return None;
    }
    let kind = FlagKind::CartridgeExpired;
    Some(Verdict::new(
        kind,
        session_key(ctx, kind),
        format!("cartridge expired on {expiry}; session started {day}"),
        json!({ "expiry": expiry.to_string(), "session_started_at": started.to_rfc3339() }),
    ))
}

/// A lot recalled before the session started is `CARTRIDGE_RECALLED`; a
/// session that happened before the recall but arrives after it (backfill)
/// is `RECALL_EXPOSURE`, the same verdict a later recall gives past sessions.
fn recall_verdict(
    ctx: &SessionContext,
    udi: &Udi,
    lot: Option<&LotFacts>,
    started: DateTime<Utc>,
) -> Option<Verdict> {
    let recalled_at = lot?.recalled_at?;
    let lot_name = udi.lot.clone().unwrap_or_default();
    if recalled_at <= started {
        let kind = FlagKind::CartridgeRecalled;
        return Some(Verdict::new(
            kind,
            session_key(ctx, kind),
            format!(
                "lot {lot_name} of {} was recalled at {recalled_at}",
                udi.gtin
            ),
            json!({ "gtin": udi.gtin, "lot": lot_name, "recalled_at": recalled_at.to_rfc3339() }),
        ));
    }
    Some(recall_exposure(
        &ctx.session_id,
        &udi.gtin,
        &lot_name,
        recalled_at,
    ))
}

/// `RECALL_EXPOSURE` for a session that used a lot recalled after it.
pub fn recall_exposure(
    session_id: &str,
    gtin: &str,
    lot: &str,
    recalled_at: DateTime<Utc>,
) -> Verdict {
    let kind = FlagKind::RecallExposure;
    Verdict::new(
        kind,
        format!("session:{session_id}:{}", kind.as_str()),
        format!("session used lot {lot} of {gtin}, recalled at {recalled_at}"),
        json!({ "gtin": gtin, "lot": lot, "recalled_at": recalled_at.to_rfc3339() }),
    )
}

/// The depth limit that applies: the device's (or the default), lowered by
/// the product's when it sets one.
pub fn depth_limit_um(facts: &Facts, policy: &Policy) -> u32 {
    let device = match facts.device_max_depth_um {
        0 => policy.default_max_depth_um,
        d => d,
    };
    match facts.product.as_ref().map(|p| p.max_depth_um) {
        Some(p) if p > 0 => device.min(p),
        _ => device,
    }
}

fn batch_verdicts(batch: &StrokeBatch, facts: &Facts, policy: &Policy) -> Vec<Verdict> {
    let ctx = &batch.session;
    let deepest = batch.max_depth_um();
    let mut out = Vec::new();
    let limit = depth_limit_um(facts, policy);
    if deepest > limit {
        let kind = FlagKind::DepthExceeded;
        out.push(Verdict::new(
            kind,
            session_key(ctx, kind),
            format!("needle depth {deepest} µm exceeds the limit of {limit} µm"),
            json!({ "depth_um": deepest, "limit_um": limit }),
        ));
    }
    if let Some(guidance) = area_guidance_um(ctx.area, ctx.skin).filter(|g| deepest > *g) {
        let kind = FlagKind::DepthAboveAreaGuidance;
        out.push(Verdict::new(
            kind,
            session_key(ctx, kind),
            format!(
                "needle depth {deepest} µm is above the {} guidance of {guidance} µm",
                ctx.area.name()
            ),
            json!({ "depth_um": deepest, "guidance_um": guidance, "area": ctx.area.name() }),
        ));
    }
    out.extend(overuse_verdict(batch, facts, policy));
    out
}

fn overuse_verdict(batch: &StrokeBatch, facts: &Facts, policy: &Policy) -> Option<Verdict> {
    let product = facts.product.as_ref()?;
    let strokes = facts.session.strokes.saturating_add(batch.strokes());
    let active_ms = facts
        .session
        .active_ms
        .saturating_add(batch.active_ms(policy.sample_interval_ms));
    let over_strokes = product.rated_strokes > 0 && strokes > product.rated_strokes;
    let over_time = product.max_active_ms > 0 && active_ms > product.max_active_ms;
    if !over_strokes && !over_time {
        return None;
    }
    let kind = FlagKind::CartridgeOverused;
    Some(Verdict::new(
        kind,
        session_key(&batch.session, kind),
        format!(
            "cartridge used for {strokes} strokes / {active_ms} ms active; rated {} strokes / {} ms",
            product.rated_strokes, product.max_active_ms
        ),
        json!({
            "strokes": strokes, "rated_strokes": product.rated_strokes,
            "active_ms": active_ms, "max_active_ms": product.max_active_ms,
        }),
    ))
}

/// `CLOCK_SKEW` when `sent_at` is further than the window from receive time,
/// or when a device time of the message was missing or out of range and was
/// replaced (the message's `time_faults`). One flag per session (or per
/// device and day for heartbeats), so a pen with a wrong clock is flagged
/// without flooding; both reasons share it.
fn judge_skew(msg: &DeviceMessage, policy: &Policy, received_at: DateTime<Utc>) -> Option<Verdict> {
    let skew = measured_skew(msg.sent_at, received_at);
    let skewed = skew.abs() > policy.skew_window;
    if !skewed && msg.time_faults.is_empty() {
        return None;
    }
    let kind = FlagKind::ClockSkew;
    let scope = match msg.session() {
        Some(ctx) => format!("session:{}", ctx.session_id),
        None => format!("day:{}", received_at.date_naive()),
    };
    let mut reasons: Vec<String> = msg.time_faults.iter().map(|f| f.describe()).collect();
    if skewed {
        reasons.push(format!(
            "device clock differs from server time by {} s",
            skew.num_seconds()
        ));
    }
    let mut evidence = json!({
        "seq": msg.seq, "sent_at": msg.sent_at.to_rfc3339(),
        "received_at": received_at.to_rfc3339(), "skew_s": skew.num_seconds(),
    });
    if !msg.time_faults.is_empty()
        && let Some(object) = evidence.as_object_mut()
    {
        let faults = msg.time_faults.iter().map(time_fault_evidence).collect();
        object.insert("time_faults".to_owned(), serde_json::Value::Array(faults));
    }
    Some(Verdict::new(
        kind,
        format!("device:{}:{scope}:{}", msg.device_id, kind.as_str()),
        format!("{} (message seq {})", reasons.join("; "), msg.seq),
        evidence,
    ))
}

fn time_fault_evidence(f: &TimeFault) -> serde_json::Value {
    json!({
        "field": f.field.as_str(),
        "problem": f.problem(),
        "seconds": f.raw.map(|w| w.seconds),
        "nanos": f.raw.map(|w| w.nanos),
        "judged_at": f.used.to_rfc3339(),
        "reason": f.describe(),
    })
}

/// A hole `first..=last` in a device's seq, first seen missing at `detected_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqHole {
    pub device_id: String,
    pub first: u64,
    pub last: u64,
    pub detected_at: DateTime<Utc>,
}

/// `DATA_GAP` once a hole has stayed unfilled for the gap window.
pub fn judge_gap(hole: &SeqHole, now: DateTime<Utc>, policy: &Policy) -> Option<Verdict> {
    if time::since(now, hole.detected_at) < policy.gap_window {
        return None;
    }
    let kind = FlagKind::DataGap;
    let missing = hole.last.saturating_sub(hole.first).saturating_add(1);
    Some(Verdict::new(
        kind,
        format!(
            "device:{}:seq:{}:{}",
            hole.device_id,
            hole.first,
            kind.as_str()
        ),
        format!(
            "{missing} message(s) missing: seq {}..={} not received within {} min",
            hole.first,
            hole.last,
            policy.gap_window.num_minutes()
        ),
        json!({ "first_seq": hole.first, "last_seq": hole.last, "missing": missing,
                "detected_at": hole.detected_at.to_rfc3339() }),
    ))
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "rules_props.rs"]
mod props;
