//! The flag rules (docs/architecture.md, "Flags") as pure functions.
//!
//! The pipeline asks the store for the facts a message needs ([`Facts`]),
//! hands them here with the policy and the server's receive time, and writes
//! what comes back ([`Judgement`]). Nothing here reads a clock or a database.
//!
//! A session's cartridge verdicts (reuse, resume, expiry, recall, unknown,
//! invalid UDI) are decided once, on the first message of the session that
//! arrives, whichever kind it is; the decision is stored with the session
//! ([`CartridgeRelation`]) so later messages never re-judge it against
//! activity the session itself caused. A later message naming another
//! cartridge is judged for the one it names, as every message is judged
//! alone ([`Judgement::swapped`]). Depth, overuse and skew are judged on
//! every message; overuse over the cartridge's whole procedure (the owner
//! and its resumes, [`Binding::strokes`]).
//!
//! A resume is only a resume forward in time: a session starting before
//! the cartridge's last activity (beyond the policy's clock tolerance) is a
//! reuse, so the order a backlog is uploaded in cannot turn a reuse into a
//! resume. (The price: a real resume uploaded before the session it
//! resumes is flagged as a reuse, which a person can clear; the reverse
//! error would hide a reuse.)

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
    /// Strokes and active milliseconds of the owner and its resumptions:
    /// one procedure, so overuse is judged on their sum.
    pub strokes: u64,
    pub active_ms: u64,
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
    /// Days from production (11) to expiry, when neither the UDI nor the
    /// lot gives an expiry; 0 = none.
    pub shelf_life_days: u32,
}

/// What is already stored about the message's session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionFacts {
    /// Decided on the session's first message; `None` before that.
    pub relation: Option<CartridgeRelation>,
    /// The cartridge that relation was decided for (`None`: unidentified).
    /// A later message naming another one is judged for that one.
    pub cartridge_id: Option<String>,
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

    /// Whether `session_id`, standing in this relation to its cartridge,
    /// is part of the procedure `binding` records: its owner or a resume of
    /// the owner. Only such a session moves the binding's activity and adds
    /// to its strokes (a reuse must open no resume window and is judged on
    /// its own strokes).
    pub fn continues(&self, session_id: &str, binding: &Binding) -> bool {
        match self {
            CartridgeRelation::Owner => binding.session_id == session_id,
            CartridgeRelation::Resumed { owner_session_id } => {
                binding.session_id == *owner_session_id || binding.session_id == session_id
            }
            CartridgeRelation::Reused { .. } | CartridgeRelation::Unidentified => {
                binding.session_id == session_id
            }
        }
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
    /// Set when a later message of the session names another cartridge than
    /// the one its relation was decided for: how the session relates to the
    /// cartridge named now (`Owner`: claim it too, so its next use anywhere
    /// else is a reuse).
    pub swapped: Option<CartridgeRelation>,
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
    let named = ident.cartridge.as_ref().map(CartridgeId::to_string);
    let window = Window {
        started,
        not_before: started,
    };
    match (&facts.session.relation, &named) {
        (None, _) => {
            let relation = relation_of(msg, ctx, ident, facts, policy, &window);
            out.verdicts
                .extend(cartridge_verdicts(ctx, ident, facts, &relation, started));
            out.decided = Some(relation);
        }
        // Each message is judged alone (docs/architecture.md, "Wire
        // protocol"): one naming a cartridge other than its session's is
        // judged for the one it names.
        (Some(_), Some(now)) if named != facts.session.cartridge_id => {
            // The cartridge's activity since this session started may be
            // this session's own use of it: only activity after this
            // message's own time says it was used elsewhere meanwhile.
            let window = Window {
                started,
                not_before: at(message_time(msg).unwrap_or(ctx.started_at)),
            };
            let relation = relation_of(msg, ctx, ident, facts, policy, &window);
            let before = facts.session.cartridge_id.as_deref();
            out.verdicts.extend(
                cartridge_verdicts(ctx, ident, facts, &relation, started)
                    .into_iter()
                    .map(|v| swapped_verdict(v, ctx, now, before)),
            );
            out.swapped = Some(relation);
        }
        (Some(_), _) => {}
    }
    out.activity_at = Some(match &msg.body {
        Body::StrokeBatch(b) => at(batch_end(b)),
        Body::SessionEnd(e) => at(e.ended_at),
        _ => started,
    });
    if let Body::StrokeBatch(batch) = &msg.body {
        let usage = usage_before(&out, facts, ctx, named.as_deref());
        out.verdicts
            .extend(batch_verdicts(batch, facts, policy, &usage));
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

/// Decides reuse vs resume vs ownership (bind-once: docs/architecture.md,
/// "Flags").
/// When a session may resume a cartridge: it started within the resume
/// window after the cartridge's last activity, and that activity lies no
/// later than `not_before` (give or take the clock tolerance). For a
/// session's own cartridge `not_before` is its start; for one it changes
/// to mid-session, the message's own time.
struct Window {
    started: DateTime<Utc>,
    not_before: DateTime<Utc>,
}

/// A message's own device time: a batch's start, an end's time.
fn message_time(msg: &DeviceMessage) -> Option<DateTime<Utc>> {
    match &msg.body {
        Body::StrokeBatch(b) => Some(b.started_at),
        Body::SessionEnd(e) => Some(e.ended_at),
        _ => None,
    }
}

fn relation_of(
    msg: &DeviceMessage,
    ctx: &SessionContext,
    ident: &Identified,
    facts: &Facts,
    policy: &Policy,
    window: &Window,
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
    // Forward in time only: after the last activity (give or take the
    // clock tolerance) and within the window.
    let idle = time::since(window.started, binding.last_activity_at);
    let early = time::since(binding.last_activity_at, window.not_before);
    let forward = idle <= policy.resume_window && early <= policy.resume_tolerance;
    if binding.device_id == msg.device_id && same_patient && forward {
        CartridgeRelation::Resumed { owner_session_id }
    } else {
        CartridgeRelation::Reused { owner_session_id }
    }
}

/// A verdict about a cartridge named inside a session that started with
/// another: keyed by the cartridge too (the session's own cartridge may
/// carry the same kind of flag), and saying so.
fn swapped_verdict(
    mut v: Verdict,
    ctx: &SessionContext,
    cartridge: &str,
    before: Option<&str>,
) -> Verdict {
    v.dedupe_key = format!(
        "session:{}:cartridge:{cartridge}:{}",
        ctx.session_id,
        v.kind.as_str()
    );
    let started_with = before.unwrap_or("an unidentified cartridge");
    v.detail = format!(
        "cartridge changed inside the session (it started with {started_with}): {}",
        v.detail
    );
    if let Some(evidence) = v.evidence.as_object_mut() {
        evidence.insert("cartridge_changed_in_session".to_owned(), json!(true));
        evidence.insert("session_cartridge_id".to_owned(), json!(before));
        evidence.insert("named_cartridge_id".to_owned(), json!(cartridge));
    }
    v
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
    out.extend(expiry_verdict(ctx, udi, facts, started));
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

/// The expiry that applies: the earlier of the UDI's (17) and the lot's;
/// failing both, the UDI's production date (11) plus the product's shelf
/// life.
pub fn effective_expiry(
    udi: &Udi,
    lot: Option<&LotFacts>,
    product: Option<&ProductFacts>,
) -> Option<NaiveDate> {
    expiry_and_source(udi, lot, product).map(|(date, _)| date)
}

/// The expiry that applies and where it comes from (for the evidence).
fn expiry_and_source(
    udi: &Udi,
    lot: Option<&LotFacts>,
    product: Option<&ProductFacts>,
) -> Option<(NaiveDate, &'static str)> {
    let registered = lot.and_then(|l| l.expiry);
    match (udi.expiry, registered) {
        (Some(a), Some(b)) if b < a => Some((b, "lot")),
        (Some(a), _) => Some((a, "udi")),
        (None, Some(b)) => Some((b, "lot")),
        (None, None) => shelf_life_expiry(udi, product).map(|d| (d, "shelf_life")),
    }
}

/// Production date plus shelf life; `None` without either (or past
/// chrono's calendar, which no real date reaches).
fn shelf_life_expiry(udi: &Udi, product: Option<&ProductFacts>) -> Option<NaiveDate> {
    let days = product.map(|p| p.shelf_life_days).filter(|d| *d > 0)?;
    udi.production_date?
        .checked_add_days(chrono::Days::new(u64::from(days)))
}

fn expiry_verdict(
    ctx: &SessionContext,
    udi: &Udi,
    facts: &Facts,
    started: DateTime<Utc>,
) -> Option<Verdict> {
    let (expiry, source) = expiry_and_source(udi, facts.lot.as_ref(), facts.product.as_ref())?;
    let day = started.date_naive();
    // A cartridge may be used through the whole of its expiry date.
    if day <= expiry {
        return None;
    }
    let kind = FlagKind::CartridgeExpired;
    let how = match source {
        "shelf_life" => " (production date plus the product's shelf life)",
        "lot" => " (the lot's registered expiry)",
        _ => "",
    };
    Some(Verdict::new(
        kind,
        session_key(ctx, kind),
        format!("cartridge expired on {expiry}{how}; session started {day}"),
        json!({
            "expiry": expiry.to_string(),
            "expiry_source": source,
            "session_started_at": started.to_rfc3339(),
        }),
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

/// What a batch's strokes add to, and under which key overuse is flagged.
#[derive(Debug)]
struct Usage {
    strokes: u64,
    active_ms: u64,
    dedupe_key: Option<String>,
}

/// The owner and its resumes are one procedure: overuse is judged on the
/// sum the binding keeps, and flagged once per cartridge. Any other session
/// (a reuse, an unidentified cartridge) is judged on its own totals; a
/// cartridge swapped in mid-session and not yet bound starts from zero.
fn usage_before(
    out: &Judgement,
    facts: &Facts,
    ctx: &SessionContext,
    named: Option<&str>,
) -> Usage {
    let relation = out
        .swapped
        .as_ref()
        .or(out.decided.as_ref())
        .or(facts.session.relation.as_ref());
    let own = Usage {
        strokes: facts.session.strokes,
        active_ms: facts.session.active_ms,
        dedupe_key: None,
    };
    let per_cartridge = |id: &str| {
        Some(format!(
            "cartridge:{id}:{}",
            FlagKind::CartridgeOverused.as_str()
        ))
    };
    match (&facts.binding, relation, named) {
        (Some(b), Some(r), Some(id)) if r.continues(&ctx.session_id, b) => Usage {
            strokes: b.strokes,
            active_ms: b.active_ms,
            dedupe_key: per_cartridge(id),
        },
        // Not bound yet: this message claims it, so the procedure's usage
        // is what this session used of it — nothing, if it was swapped in
        // just now.
        (None, Some(CartridgeRelation::Owner), Some(id)) => {
            let (strokes, active_ms) = match out.swapped {
                Some(_) => (0, 0),
                None => (own.strokes, own.active_ms),
            };
            Usage {
                strokes,
                active_ms,
                dedupe_key: per_cartridge(id),
            }
        }
        _ => own,
    }
}

fn batch_verdicts(
    batch: &StrokeBatch,
    facts: &Facts,
    policy: &Policy,
    usage: &Usage,
) -> Vec<Verdict> {
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
    out.extend(overuse_verdict(batch, facts, policy, usage));
    out
}

fn overuse_verdict(
    batch: &StrokeBatch,
    facts: &Facts,
    policy: &Policy,
    usage: &Usage,
) -> Option<Verdict> {
    let product = facts.product.as_ref()?;
    let strokes = usage.strokes.saturating_add(batch.strokes());
    let active_ms = usage
        .active_ms
        .saturating_add(batch.active_ms(policy.sample_interval_ms));
    let over_strokes = product.rated_strokes > 0 && strokes > product.rated_strokes;
    let over_time = product.max_active_ms > 0 && active_ms > product.max_active_ms;
    if !over_strokes && !over_time {
        return None;
    }
    let kind = FlagKind::CartridgeOverused;
    let key = (usage.dedupe_key.clone()).unwrap_or_else(|| session_key(&batch.session, kind));
    Some(Verdict::new(
        kind,
        key,
        format!(
            "cartridge used for {strokes} strokes / {active_ms} ms active; rated {} strokes / {} ms",
            product.rated_strokes, product.max_active_ms
        ),
        json!({
            "strokes": strokes, "rated_strokes": product.rated_strokes,
            "active_ms": active_ms, "max_active_ms": product.max_active_ms,
            // The owner's and its resumes' sum, or this session's alone.
            "counted_per": if usage.dedupe_key.is_some() { "cartridge" } else { "session" },
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
