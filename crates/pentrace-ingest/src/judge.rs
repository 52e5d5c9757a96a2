//! Turns a batch of messages and the stored facts into one [`WriteBatch`]:
//! the domain judges, this module only gathers facts and records verdicts.
//!
//! The rules judge the values a pen sent, however large; only the rows built
//! here for storage are held to what the columns take (PostgreSQL has no
//! unsigned integers: `integer` and `bigint`), so an absurd reading is stored
//! (clamped) and flagged instead of failing the whole batch.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use pentrace_domain::gaps::track_seq;
use pentrace_domain::message::{Body, DeviceMessage, SessionContext, TimeField};
use pentrace_domain::policy::Policy;
use pentrace_domain::rules::{
    self, Binding, CartridgeRelation, Facts, Identified, SeqHole, SessionFacts,
};
use pentrace_domain::time;
use pentrace_domain::{Udi, Verdict};
use pentrace_store::{
    ActivityRow, ClaimRow, DeviceState, DeviceWrite, FactsQuery, MessageRow, NewFlag, SampleBlock,
    SampleRow, SessionState, SessionWrite, StoredFacts, WriteBatch,
};

use crate::{Envelope, RejectReason};

/// The cartridge of every session message, parsed once per batch.
pub(crate) fn identify_all(envs: &[Envelope]) -> Vec<Option<Identified>> {
    let mut cache: HashMap<(&str, &str), Identified> = HashMap::new();
    envs.iter()
        .map(|env| {
            let ctx = env.message.session()?;
            let key = (ctx.cartridge.udi.as_str(), ctx.cartridge.chip_uid.as_str());
            let today = env.received_at.date_naive();
            let ident = cache
                .entry(key)
                .or_insert_with(|| rules::identify(&ctx.cartridge, today));
            Some(ident.clone())
        })
        .collect()
}

/// Every key the batch's facts are looked up by.
pub(crate) fn facts_query(envs: &[Envelope], idents: &[Option<Identified>]) -> FactsQuery {
    let mut q = FactsQuery::default();
    for (env, ident) in envs.iter().zip(idents) {
        let msg = &env.message;
        q.keys.push((msg.device_id.clone(), msg.seq));
        q.device_ids.insert(msg.device_id.clone());
        if let Some(ctx) = msg.session() {
            q.session_ids.insert(ctx.session_id.clone());
            q.session_ids.insert(own_session_id(msg, ctx));
        }
        let Some(ident) = ident else { continue };
        if let Some(id) = &ident.cartridge {
            q.cartridge_ids.insert(id.to_string());
        }
        if let Some(udi) = ident.udi() {
            q.gtins.insert(udi.gtin.clone());
            if let Some(lot) = &udi.lot {
                q.lots.insert((udi.gtin.clone(), lot.clone()));
            }
        }
    }
    q
}

/// The largest value an `integer` column holds.
const MAX_INTEGER: u32 = i32::MAX as u32;
/// The largest value a `bigint` column holds.
const MAX_BIGINT: u64 = i64::MAX as u64;

/// What adding `delta` to a running total that stood at `before` adds to its
/// stored copy, which holds at most `bigint`'s maximum.
fn storable_delta(before: u64, delta: u64) -> u64 {
    let after = before.saturating_add(delta);
    after.min(MAX_BIGINT).saturating_sub(before.min(MAX_BIGINT))
}

/// A pen's session id names its session only together with the pen and
/// roughly when the session started (on the pen's clock). Another pen's
/// message under the same id (a firmware sending the nil UUID, or a forged
/// id), or the same pen starting a new session under an old id on another
/// day, is a session of its own, stored under this id derived from the
/// pen, the id and the start's day: it is judged (a reuse is not hidden)
/// and never adds to a session that is not its own. The pen's id stays in
/// `raw_session_id` and the flags' evidence.
fn own_session_id(msg: &DeviceMessage, ctx: &SessionContext) -> String {
    let raw = format!("{} on {}", ctx.session_id, ctx.started_at.date_naive());
    pentrace_domain::message::derived_session_id(&msg.device_id, &raw)
}

/// How far a message's session start may lie from its session's stored
/// one. Not zero: clients that stamp every message's context with the time
/// of sending are common, and their sessions must not fall apart; a new
/// session under an old id is told by its start on another day.
const SAME_SESSION_SPAN: chrono::TimeDelta = chrono::TimeDelta::hours(12);

/// Whether a message belongs to the stored (or batched) session of its id:
/// the same pen, and a start within [`SAME_SESSION_SPAN`] — or no start to
/// compare (the message's was missing and replaced, or the session was
/// stored before its start was kept).
fn is_its_session(s: &SessionState, msg: &DeviceMessage, ctx: &SessionContext) -> bool {
    s.device_id == msg.device_id
        && match (s.device_started_at, pens_start(msg, ctx)) {
            (Some(stored), Some(sent)) => time::since(sent, stored).abs() <= SAME_SESSION_SPAN,
            _ => true,
        }
}

/// The session start the pen sent; `None` when it sent none (or an
/// unusable one) and the server stood in for it.
fn pens_start(msg: &DeviceMessage, ctx: &SessionContext) -> Option<DateTime<Utc>> {
    let replaced = msg
        .time_faults
        .iter()
        .any(|f| f.field == TimeField::SessionStartedAt);
    (!replaced).then_some(ctx.started_at)
}

/// What the rules decided about a session message that its session row
/// records.
struct Judged {
    decided: Option<CartridgeRelation>,
    /// The expiry that applies: (17), the lot's, or the shelf life's.
    expiry: Option<NaiveDate>,
    usage: Usage,
}

/// What a message adds to the cartridge it names.
struct Activity {
    cartridge_id: String,
    at: DateTime<Utc>,
    usage: Usage,
    /// Its relation to that cartridge, when not its session's own.
    swapped: Option<CartridgeRelation>,
}

/// What a message adds to its session's and cartridge's usage.
struct Usage {
    strokes: u64,
    active_ms: u64,
}

impl Usage {
    fn of(body: &Body, policy: &Policy) -> Usage {
        match body {
            Body::StrokeBatch(b) => Usage {
                strokes: b.strokes(),
                active_ms: b.active_ms(policy.sample_interval_ms),
            },
            _ => Usage {
                strokes: 0,
                active_ms: 0,
            },
        }
    }
}

/// What a batch writes and what to report for each message once committed.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub write: WriteBatch,
    /// Messages this batch stores.
    pub committed: Vec<usize>,
    /// Messages already stored, or repeated within the batch.
    pub duplicates: Vec<usize>,
    pub rejected: Vec<(usize, RejectReason)>,
    /// Samples the batch stores.
    pub samples: u64,
}

/// Judges every message of the batch in arrival order against the facts,
/// carrying forward what earlier messages of the batch changed.
pub(crate) fn plan(
    envs: &[Envelope],
    idents: &[Option<Identified>],
    facts: &StoredFacts,
    policy: &Policy,
) -> Plan {
    let mut work = Work::new(facts);
    let mut plan = Plan::default();
    let mut in_batch: HashSet<(&str, u64)> = HashSet::new();
    for (i, (env, ident)) in envs.iter().zip(idents).enumerate() {
        let msg = &env.message;
        let key = (msg.device_id.as_str(), msg.seq);
        if facts.seen.contains(&(msg.device_id.clone(), msg.seq)) || !in_batch.insert(key) {
            plan.duplicates.push(i);
            continue;
        }
        let Some(device) = facts.devices.get(&msg.device_id) else {
            plan.rejected.push((i, RejectReason::UnknownDevice));
            continue;
        };
        let env = work.own_session(env);
        work.apply(&env, ident.as_ref(), device, policy);
        plan.committed.push(i);
    }
    plan.samples = work.out.samples.iter().map(|b| b.rows.len() as u64).sum();
    plan.write = work.finish();
    plan
}

/// The batch's running state: facts as earlier messages of the batch left
/// them, and the rows to write.
struct Work<'f> {
    facts: &'f StoredFacts,
    bindings: HashMap<String, Binding>,
    sessions: HashMap<String, SessionState>,
    devices: HashMap<String, DeviceProgress>,
    session_writes: HashMap<String, usize>,
    out: WriteBatch,
}

/// A device's seq bookkeeping and liveness within the batch.
struct DeviceProgress {
    max_seq: u64,
    holes: Vec<SeqHole>,
    holes_changed: bool,
    write: DeviceWrite,
}

impl<'f> Work<'f> {
    fn new(facts: &'f StoredFacts) -> Self {
        Work {
            facts,
            bindings: facts.bindings.clone(),
            sessions: facts.sessions.clone(),
            devices: HashMap::new(),
            session_writes: HashMap::new(),
            out: WriteBatch::default(),
        }
    }

    fn apply(
        &mut self,
        env: &Envelope,
        ident: Option<&Identified>,
        device: &DeviceState,
        policy: &Policy,
    ) {
        let msg = &env.message;
        self.track_device(env, device);
        self.out.messages.push(message_row(env));
        let facts = self.facts_for(msg, ident, device);
        let judgement = rules::judge(msg, ident, &facts, policy, env.received_at);
        self.note_unrecalled_lot(&judgement, ident, &facts);
        let cartridge_id = ident
            .and_then(|i| i.cartridge.as_ref())
            .map(|c| c.to_string());
        for verdict in &judgement.verdicts {
            self.out
                .flags
                .push(new_flag(verdict, msg, device, cartridge_id.clone()));
        }
        let Some(ctx) = msg.session() else { return };
        let started = rules::corrected(ctx.started_at, msg.sent_at, env.received_at, policy);
        // The session's own cartridge on its first message, or one it
        // names later that nobody owns yet: claimed either way.
        let claimed = judgement.decided.as_ref().or(judgement.swapped.as_ref());
        if let (Some(relation), Some(cid)) = (claimed, &cartridge_id) {
            self.claim_if_owner(relation, cid, msg, ctx, started);
        }
        let expiry = ident
            .and_then(Identified::udi)
            .and_then(|u| rules::effective_expiry(u, facts.lot.as_ref(), facts.product.as_ref()));
        let judged = Judged {
            decided: judgement.decided,
            expiry,
            usage: Usage::of(&msg.body, policy),
        };
        // The session first: it knows the relation the cartridge needs.
        let usage = self.record_session(env, ctx, ident, device, judged, policy);
        if let (Some(at), Some(cid)) = (judgement.activity_at, cartridge_id) {
            let activity = Activity {
                cartridge_id: cid,
                at,
                usage,
                swapped: judgement.swapped,
            };
            self.record_activity(&ctx.session_id, activity);
        }
    }

    /// A session judged now against a registered lot that is not recalled:
    /// the commit re-checks the lot, so a recall that lands meanwhile makes
    /// the batch be judged again instead of missing its flag.
    fn note_unrecalled_lot(
        &mut self,
        judgement: &rules::Judgement,
        ident: Option<&Identified>,
        facts: &Facts,
    ) {
        let unrecalled = facts.lot.as_ref().is_some_and(|l| l.recalled_at.is_none());
        let udi = ident.and_then(Identified::udi);
        if let (true, true, Some(udi)) = (judgement.decided.is_some(), unrecalled, udi)
            && let Some(lot) = &udi.lot
        {
            self.out
                .unrecalled_lots
                .push((udi.gtin.clone(), lot.clone()));
        }
    }

    /// The message under the session id it is stored under: its own, unless
    /// that id names a session of another pen or another start (see
    /// [`own_session_id`]).
    fn own_session<'e>(&self, env: &'e Envelope) -> Cow<'e, Envelope> {
        let Some(ctx) = env.message.session() else {
            return Cow::Borrowed(env);
        };
        match self.sessions.get(&ctx.session_id) {
            Some(s) if !is_its_session(s, &env.message, ctx) => {
                let id = own_session_id(&env.message, ctx);
                let mut env = env.clone();
                if let Some(ctx) = env.message.session_mut() {
                    let pens = std::mem::replace(&mut ctx.session_id, id);
                    ctx.raw_session_id.get_or_insert(pens);
                }
                Cow::Owned(env)
            }
            _ => Cow::Borrowed(env),
        }
    }

    /// The facts the rules need for one message, as of this point in the batch.
    fn facts_for(
        &self,
        msg: &DeviceMessage,
        ident: Option<&Identified>,
        device: &DeviceState,
    ) -> Facts {
        let udi: Option<&Udi> = ident.and_then(Identified::udi);
        let cartridge = ident
            .and_then(|i| i.cartridge.as_ref())
            .map(|c| c.to_string());
        let session = msg.session().and_then(|c| self.sessions.get(&c.session_id));
        Facts {
            binding: cartridge.and_then(|c| self.bindings.get(&c).cloned()),
            product: udi.and_then(|u| self.facts.products.get(&u.gtin).cloned()),
            lot: udi.and_then(|u| {
                let lot = u.lot.clone()?;
                self.facts.lots.get(&(u.gtin.clone(), lot)).cloned()
            }),
            session: session
                .map(|s| SessionFacts {
                    relation: Some(s.relation.clone()),
                    cartridge_id: s.cartridge_id.clone(),
                    strokes: s.strokes,
                    active_ms: s.active_ms,
                })
                .unwrap_or_default(),
            device_max_depth_um: device.max_depth_um,
            clinic_id: device.clinic_id.clone(),
        }
    }

    fn claim_if_owner(
        &mut self,
        relation: &CartridgeRelation,
        cartridge_id: &str,
        msg: &DeviceMessage,
        ctx: &SessionContext,
        started: DateTime<Utc>,
    ) {
        if *relation != CartridgeRelation::Owner || self.bindings.contains_key(cartridge_id) {
            return;
        }
        // Every judged message is of a registered device, whose clinic the
        // batch's facts hold.
        let clinic_id = self
            .facts
            .devices
            .get(&msg.device_id)
            .map(|d| d.clinic_id.clone())
            .unwrap_or_default();
        let binding = Binding {
            session_id: ctx.session_id.clone(),
            device_id: msg.device_id.clone(),
            clinic_id,
            patient_ref: ctx.patient_ref.clone(),
            last_activity_at: started,
            // The claiming message's own usage is added by `record_activity`.
            strokes: 0,
            active_ms: 0,
        };
        self.out.claims.push(ClaimRow {
            cartridge_id: cartridge_id.to_owned(),
            session_id: binding.session_id.clone(),
            device_id: binding.device_id.clone(),
            patient_ref: binding.patient_ref.clone(),
            bound_at: started,
        });
        self.bindings.insert(cartridge_id.to_owned(), binding);
    }

    /// Moves the cartridge's last activity forward and adds to its usage,
    /// but only for a session of its procedure (the owner or a resume): a
    /// reuse must not open a resume window, nor count against the owner.
    fn record_activity(&mut self, session_id: &str, activity: Activity) {
        let Activity {
            cartridge_id,
            at,
            usage,
            swapped,
        } = activity;
        // The relation to the cartridge the message names: the session's
        // own, or the one judged now for a cartridge it changed to.
        let own = self.sessions.get(session_id).map(|s| &s.relation);
        let Some(relation) = swapped.as_ref().or(own) else {
            return;
        };
        let Some(binding) = self
            .bindings
            .get_mut(&cartridge_id)
            .filter(|b| relation.continues(session_id, b))
        else {
            return;
        };
        binding.last_activity_at = binding.last_activity_at.max(at);
        let (strokes_before, active_ms_before) = (binding.strokes, binding.active_ms);
        // The running totals keep the true values (the rules judge on
        // them); the stored copy saturates.
        binding.strokes = binding.strokes.saturating_add(usage.strokes);
        binding.active_ms = binding.active_ms.saturating_add(usage.active_ms);
        self.out.activity.push(ActivityRow {
            cartridge_id,
            at,
            add_strokes: usage.strokes,
            add_active_ms: usage.active_ms,
            strokes_before,
            active_ms_before,
        });
    }

    /// Adds the message to its session's row and running totals; hands the
    /// message's usage back for the cartridge.
    fn record_session(
        &mut self,
        env: &Envelope,
        ctx: &SessionContext,
        ident: Option<&Identified>,
        device: &DeviceState,
        judged: Judged,
        policy: &Policy,
    ) -> Usage {
        let Judged {
            decided,
            expiry,
            usage,
        } = judged;
        let msg = &env.message;
        let (strokes, active_ms) = (usage.strokes, usage.active_ms);
        let (samples, depth) = match &msg.body {
            Body::StrokeBatch(b) => (b.samples.len() as u64, b.max_depth_um()),
            _ => (0, 0),
        };
        let state = self
            .sessions
            .entry(ctx.session_id.clone())
            .or_insert_with(|| SessionState {
                device_id: msg.device_id.clone(),
                relation: decided.clone().unwrap_or(CartridgeRelation::Unidentified),
                cartridge_id: ident
                    .and_then(|i| i.cartridge.as_ref())
                    .map(|c| c.to_string()),
                device_started_at: pens_start(msg, ctx),
                strokes: 0,
                active_ms: 0,
            });
        // The running totals keep the true values (the rules judge on them);
        // the session write adds only what its `bigint` columns can hold.
        let stored_strokes = storable_delta(state.strokes, strokes);
        let stored_active_ms = storable_delta(state.active_ms, active_ms);
        state.strokes = state.strokes.saturating_add(strokes);
        state.active_ms = state.active_ms.saturating_add(active_ms);
        if let Body::StrokeBatch(b) = &msg.body {
            self.out.samples.push(sample_block(env, b, policy));
        }
        let write = match self.session_writes.get(&ctx.session_id) {
            Some(&i) => &mut self.out.sessions[i],
            None => {
                self.session_writes
                    .insert(ctx.session_id.clone(), self.out.sessions.len());
                self.out
                    .sessions
                    .push(session_write(env, ctx, ident, device, expiry, policy));
                let last = self.out.sessions.len() - 1;
                &mut self.out.sessions[last]
            }
        };
        if decided.is_some() {
            write.relation = decided;
        }
        write.add_strokes = write.add_strokes.saturating_add(stored_strokes);
        write.add_active_ms = write.add_active_ms.saturating_add(stored_active_ms);
        write.add_samples = write.add_samples.saturating_add(samples).min(MAX_BIGINT);
        write.max_depth_um = write.max_depth_um.max(depth.min(MAX_INTEGER));
        merge_body(write, env, policy);
        usage
    }

    fn track_device(&mut self, env: &Envelope, device: &DeviceState) {
        let msg = &env.message;
        let facts = self.facts;
        let progress = self
            .devices
            .entry(msg.device_id.clone())
            .or_insert_with(|| DeviceProgress {
                max_seq: device.max_seq,
                holes: facts.holes.get(&msg.device_id).cloned().unwrap_or_default(),
                holes_changed: false,
                write: DeviceWrite {
                    device_id: msg.device_id.clone(),
                    last_seen: env.received_at,
                    max_seq: device.max_seq,
                    battery_pct: None,
                    firmware: None,
                },
            });
        let before = progress.holes.clone();
        track_seq(
            &mut progress.holes,
            &mut progress.max_seq,
            &msg.device_id,
            msg.seq,
            env.received_at,
        );
        progress.holes_changed |= before != progress.holes;
        let w = &mut progress.write;
        w.last_seen = w.last_seen.max(env.received_at);
        w.max_seq = progress.max_seq;
        match &msg.body {
            Body::Heartbeat(h) => {
                w.battery_pct = Some(h.battery_pct.min(100));
                w.firmware = Some(h.firmware.clone()).filter(|f| !f.is_empty());
            }
            Body::SessionStart(s) if !s.firmware.is_empty() => {
                w.firmware = Some(s.firmware.clone())
            }
            _ => {}
        }
    }

    fn finish(mut self) -> WriteBatch {
        for (device_id, progress) in self.devices {
            if progress.holes_changed {
                self.out.holes.push((device_id, progress.holes));
            }
            self.out.devices.push(progress.write);
        }
        self.out
    }
}

fn message_row(env: &Envelope) -> MessageRow {
    let msg = &env.message;
    MessageRow {
        device_id: msg.device_id.clone(),
        seq: msg.seq,
        kind: match msg.body {
            Body::SessionStart(_) => "session_start",
            Body::StrokeBatch(_) => "stroke_batch",
            Body::SessionEnd(_) => "session_end",
            Body::Heartbeat(_) => "heartbeat",
        },
        session_id: msg.session().map(|c| c.session_id.clone()),
        sent_at: msg.sent_at,
        received_at: env.received_at,
    }
}

fn new_flag(
    verdict: &Verdict,
    msg: &DeviceMessage,
    device: &DeviceState,
    cartridge_id: Option<String>,
) -> NewFlag {
    NewFlag {
        kind: verdict.kind,
        severity: verdict.severity,
        dedupe_key: verdict.dedupe_key.clone(),
        clinic_id: device.clinic_id.clone(),
        device_id: msg.device_id.clone(),
        session_id: msg.session().map(|c| c.session_id.clone()),
        cartridge_id,
        seq: msg.seq,
        detail: verdict.detail.clone(),
        evidence: verdict.evidence.clone(),
    }
}

/// Samples carry skew-corrected device time, so a pen with a wrong clock
/// does not scatter its samples across the calendar. Values above what an
/// `integer` column holds are stored as its maximum (the rules have judged
/// the true values: a depth of `u32::MAX` is `DEPTH_EXCEEDED` with it in
/// evidence).
fn sample_block(
    env: &Envelope,
    batch: &pentrace_domain::message::StrokeBatch,
    policy: &Policy,
) -> SampleBlock {
    let msg = &env.message;
    let start = rules::corrected(batch.started_at, msg.sent_at, env.received_at, policy);
    SampleBlock {
        device_id: msg.device_id.clone(),
        session_id: batch.session.session_id.clone(),
        rows: batch
            .samples
            .iter()
            .map(|s| SampleRow {
                time: time::add_ms(start, s.offset_ms),
                seq: msg.seq,
                strokes: s.strokes.min(MAX_INTEGER),
                depth_um: s.depth_um.min(MAX_INTEGER),
                speed_hz: s.speed_hz.min(MAX_INTEGER),
            })
            .collect(),
    }
}

/// A session as first stored. Its times are skew-corrected (when the pen's
/// clock was off by more than the window), as the rules judged them, so
/// period queries and later recalls see when the session really happened;
/// the message rows keep the raw device and server times.
fn session_write(
    env: &Envelope,
    ctx: &SessionContext,
    ident: Option<&Identified>,
    device: &DeviceState,
    expiry: Option<NaiveDate>,
    policy: &Policy,
) -> SessionWrite {
    let msg = &env.message;
    let udi = ident.and_then(Identified::udi);
    SessionWrite {
        session_id: ctx.session_id.clone(),
        device_id: msg.device_id.clone(),
        clinic_id: device.clinic_id.clone(),
        relation: None,
        cartridge_id: ident
            .and_then(|i| i.cartridge.as_ref())
            .map(|c| c.to_string()),
        udi: ctx.cartridge.udi.clone(),
        gtin: udi.map(|u| u.gtin.clone()),
        lot: udi.and_then(|u| u.lot.clone()),
        // The expiry that applies: (17), the lot's, or the shelf life's.
        expiry,
        area: ctx.area.name().into_owned(),
        patient_ref: ctx.patient_ref.clone(),
        operator_ref: String::new(),
        firmware: String::new(),
        started_at: rules::corrected(ctx.started_at, msg.sent_at, env.received_at, policy),
        ended_at: None,
        device_started_at: pens_start(msg, ctx),
        device_ended_at: None,
        add_strokes: 0,
        add_active_ms: 0,
        add_samples: 0,
        max_depth_um: 0,
    }
}

fn merge_body(write: &mut SessionWrite, env: &Envelope, policy: &Policy) {
    let msg = &env.message;
    match &msg.body {
        Body::SessionStart(s) => {
            if write.operator_ref.is_empty() {
                write.operator_ref = s.operator_ref.clone();
            }
            if write.firmware.is_empty() {
                write.firmware = s.firmware.clone();
            }
        }
        Body::SessionEnd(e) => {
            let ended = rules::corrected(e.ended_at, msg.sent_at, env.received_at, policy);
            write.ended_at = Some(ended);
            write.device_ended_at = Some(e.ended_at);
        }
        _ => {}
    }
}

// Attacks from an independent review of the rules, with their fixes.
#[cfg(test)]
#[path = "judge_attack_tests.rs"]
mod attack_tests;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::TimeZone;
    use pentrace_domain::FlagKind;
    use pentrace_domain::message::{
        CartridgeRef, StrokeBatch, StrokeSample, TreatmentArea, derived_session_id,
    };
    use pentrace_domain::testing::{any_binding, any_message, any_time, any_u32, any_u64};
    use proptest::prelude::*;
    use tokio::sync::mpsc;

    use super::*;

    fn envelope(message: DeviceMessage, received_at: DateTime<Utc>) -> Envelope {
        Envelope {
            message,
            received_at,
            payload: bytes::Bytes::new(),
            transport: "grpc",
            reply: mpsc::unbounded_channel().0,
        }
    }

    fn device(max_seq: u64, max_depth_um: u32) -> DeviceState {
        DeviceState {
            clinic_id: "c1".into(),
            max_depth_um,
            max_seq,
            stored_through: 0,
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap()
    }

    fn huge_batch(session_id: String) -> DeviceMessage {
        let sample = StrokeSample {
            offset_ms: u32::MAX,
            strokes: u32::MAX,
            depth_um: u32::MAX,
            speed_hz: u32::MAX,
        };
        DeviceMessage::new(
            "pen-1".into(),
            1,
            now(),
            Body::StrokeBatch(StrokeBatch {
                session: SessionContext {
                    session_id,
                    raw_session_id: Some("raw".into()),
                    cartridge: CartridgeRef::default(),
                    area: TreatmentArea::Unknown(17),
                    skin: Default::default(),
                    patient_ref: None,
                    started_at: now(),
                },
                started_at: now(),
                samples: vec![sample; 3],
            }),
        )
    }

    #[test]
    fn values_beyond_the_columns_are_judged_true_and_stored_clamped() {
        let session_id = derived_session_id("pen-1", "raw");
        let envs = [envelope(huge_batch(session_id.clone()), now())];
        let mut facts = StoredFacts::default();
        facts.devices.insert("pen-1".into(), device(0, 0));
        facts.sessions.insert(
            session_id,
            SessionState {
                device_id: "pen-1".into(),
                relation: CartridgeRelation::Unidentified,
                cartridge_id: None,
                device_started_at: None,
                strokes: MAX_BIGINT - 5,
                active_ms: 0,
            },
        );
        let idents = identify_all(&envs);
        let plan = plan(&envs, &idents, &facts, &Policy::default());
        assert_eq!(plan.committed, vec![0]);
        let deep = plan
            .write
            .flags
            .iter()
            .find(|f| f.kind == FlagKind::DepthExceeded)
            .unwrap();
        assert_eq!(deep.evidence["depth_um"], u64::from(u32::MAX));
        assert_eq!(deep.evidence["raw_session_id"], "raw");
        let rows = &plan.write.samples[0].rows;
        assert!(rows.iter().all(|r| r.strokes == MAX_INTEGER
            && r.depth_um == MAX_INTEGER
            && r.speed_hz == MAX_INTEGER));
        assert_eq!(
            rows[0].time,
            now() + chrono::Duration::milliseconds(i64::from(u32::MAX))
        );
        let w = &plan.write.sessions[0];
        // The stored total stops at bigint's maximum.
        assert_eq!(w.add_strokes, 5);
        assert_eq!(w.max_depth_um, MAX_INTEGER);
        assert_eq!(w.area, "unknown(17)");
    }

    #[test]
    fn storable_deltas_never_take_a_total_past_bigint() {
        assert_eq!(storable_delta(0, 10), 10);
        assert_eq!(storable_delta(MAX_BIGINT - 1, 10), 1);
        assert_eq!(storable_delta(MAX_BIGINT, 10), 0);
        assert_eq!(storable_delta(u64::MAX, u64::MAX), 0);
        assert_eq!(storable_delta(0, u64::MAX), MAX_BIGINT);
    }

    /// What the store holds about one message's device, session and cartridge.
    #[derive(Debug, Clone)]
    struct Stored {
        registered: bool,
        seen: bool,
        max_seq: u64,
        max_depth_um: u32,
        session: Option<(u64, u64)>,
        binding: Option<Binding>,
    }

    fn any_stored() -> impl Strategy<Value = Stored> {
        (
            prop::bool::weighted(0.9),
            prop::bool::weighted(0.1),
            any_u64(),
            any_u32(),
            prop::option::of((any_u64(), any_u64())),
            prop::option::of(any_binding()),
        )
            .prop_map(
                |(registered, seen, max_seq, max_depth_um, session, binding)| Stored {
                    registered,
                    seen,
                    max_seq,
                    max_depth_um,
                    session,
                    binding,
                },
            )
            .boxed()
    }

    fn stored_facts(
        envs: &[Envelope],
        idents: &[Option<Identified>],
        stored: &[Stored],
    ) -> StoredFacts {
        let mut facts = StoredFacts::default();
        for ((env, ident), s) in envs.iter().zip(idents).zip(stored) {
            let msg = &env.message;
            if s.registered {
                facts
                    .devices
                    .insert(msg.device_id.clone(), device(s.max_seq, s.max_depth_um));
            }
            if s.seen {
                facts.seen.insert((msg.device_id.clone(), msg.seq));
            }
            if let (Some(ctx), Some((strokes, active_ms))) = (msg.session(), s.session) {
                facts.sessions.insert(
                    ctx.session_id.clone(),
                    SessionState {
                        device_id: msg.device_id.clone(),
                        relation: CartridgeRelation::Owner,
                        cartridge_id: ident
                            .as_ref()
                            .and_then(|i| i.cartridge.as_ref())
                            .map(|c| c.to_string()),
                        device_started_at: None,
                        strokes,
                        active_ms,
                    },
                );
            }
            let cartridge = ident.as_ref().and_then(|i| i.cartridge.as_ref());
            if let (Some(id), Some(b)) = (cartridge, &s.binding) {
                facts.bindings.insert(id.to_string(), b.clone());
            }
        }
        facts
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn any_batch_is_planned_without_panicking_into_storable_rows(
            batch in prop::collection::vec((any_message(), any_time(), any_stored()), 0..6),
        ) {
            let (messages, stored): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|(m, at, s)| (envelope(m, at), s))
                .unzip();
            let envs = messages;
            let idents = identify_all(&envs);
            let facts = stored_facts(&envs, &idents, &stored);
            let _ = facts_query(&envs, &idents);
            let plan = plan(&envs, &idents, &facts, &Policy::default());
            prop_assert_eq!(
                plan.committed.len() + plan.duplicates.len() + plan.rejected.len(),
                envs.len()
            );
            prop_assert_eq!(plan.write.messages.len(), plan.committed.len());
            for row in plan.write.samples.iter().flat_map(|b| &b.rows) {
                prop_assert!(row.strokes <= MAX_INTEGER);
                prop_assert!(row.depth_um <= MAX_INTEGER);
                prop_assert!(row.speed_hz <= MAX_INTEGER);
            }
            for w in &plan.write.sessions {
                prop_assert!(w.add_strokes <= MAX_BIGINT);
                prop_assert!(w.add_active_ms <= MAX_BIGINT);
                prop_assert!(w.add_samples <= MAX_BIGINT);
                prop_assert!(w.max_depth_um <= MAX_INTEGER);
            }
            for d in &plan.write.devices {
                prop_assert!(d.battery_pct.is_none_or(|b| b <= 100));
            }
        }
    }
}
