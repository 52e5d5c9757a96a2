//! Turns a batch of messages and the stored facts into one [`WriteBatch`]:
//! the domain judges, this module only gathers facts and records verdicts.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use pentrace_domain::gaps::track_seq;
use pentrace_domain::message::{Body, DeviceMessage, SessionContext};
use pentrace_domain::policy::Policy;
use pentrace_domain::rules::{
    self, Binding, CartridgeRelation, Facts, Identified, SeqHole, SessionFacts,
};
use pentrace_domain::{Udi, Verdict};
use pentrace_store::{
    ClaimRow, DeviceState, DeviceWrite, FactsQuery, MessageRow, NewFlag, SampleBlock, SampleRow,
    SessionState, SessionWrite, StoredFacts, WriteBatch,
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
        work.apply(env, ident.as_ref(), device, policy);
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
        if let (Some(relation), Some(cid)) = (&judgement.decided, &cartridge_id) {
            self.claim_if_owner(relation, cid, msg, ctx, started);
        }
        self.record_session(env, ctx, ident, device, judgement.decided, policy);
        if let (Some(at), Some(cid)) = (judgement.activity_at, cartridge_id) {
            self.record_activity(&ctx.session_id, cid, at);
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
                    strokes: s.strokes,
                    active_ms: s.active_ms,
                })
                .unwrap_or_default(),
            device_max_depth_um: device.max_depth_um,
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
        let binding = Binding {
            session_id: ctx.session_id.clone(),
            device_id: msg.device_id.clone(),
            patient_ref: ctx.patient_ref.clone(),
            last_activity_at: started,
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

    /// Moves the cartridge's last activity forward, but only for sessions
    /// that own it or resume it: a reuse must not open a resume window.
    fn record_activity(&mut self, session_id: &str, cartridge_id: String, at: DateTime<Utc>) {
        let counts = self
            .sessions
            .get(session_id)
            .is_some_and(|s| s.relation.extends_activity());
        let Some(binding) = self.bindings.get_mut(&cartridge_id).filter(|_| counts) else {
            return;
        };
        binding.last_activity_at = binding.last_activity_at.max(at);
        self.out.activity.push((cartridge_id, at));
    }

    fn record_session(
        &mut self,
        env: &Envelope,
        ctx: &SessionContext,
        ident: Option<&Identified>,
        device: &DeviceState,
        decided: Option<CartridgeRelation>,
        policy: &Policy,
    ) {
        let msg = &env.message;
        let (strokes, active_ms, samples, depth) = match &msg.body {
            Body::StrokeBatch(b) => (
                b.strokes(),
                b.active_ms(policy.sample_interval_ms),
                b.samples.len() as u64,
                b.max_depth_um(),
            ),
            _ => (0, 0, 0, 0),
        };
        let state = self
            .sessions
            .entry(ctx.session_id.clone())
            .or_insert_with(|| SessionState {
                device_id: msg.device_id.clone(),
                relation: decided.clone().unwrap_or(CartridgeRelation::Unidentified),
                strokes: 0,
                active_ms: 0,
            });
        state.strokes += strokes;
        state.active_ms += active_ms;
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
                    .push(session_write(env, ctx, ident, device, policy));
                let last = self.out.sessions.len() - 1;
                &mut self.out.sessions[last]
            }
        };
        if decided.is_some() {
            write.relation = decided;
        }
        write.add_strokes += strokes;
        write.add_active_ms += active_ms;
        write.add_samples += samples;
        write.max_depth_um = write.max_depth_um.max(depth);
        merge_body(write, env, policy);
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
/// does not scatter its samples across the calendar.
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
                time: start + chrono::Duration::milliseconds(i64::from(s.offset_ms)),
                seq: msg.seq,
                strokes: s.strokes,
                depth_um: s.depth_um,
                speed_hz: s.speed_hz,
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
        expiry: udi.and_then(|u| u.expiry),
        area: ctx.area.as_str(),
        patient_ref: ctx.patient_ref.clone(),
        operator_ref: String::new(),
        firmware: String::new(),
        started_at: rules::corrected(ctx.started_at, msg.sent_at, env.received_at, policy),
        ended_at: None,
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
        }
        _ => {}
    }
}
