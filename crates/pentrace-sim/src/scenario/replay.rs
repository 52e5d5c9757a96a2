//! Test support: replays a scenario through the domain's own rules, the
//! way the ingest pipeline applies them (bind-once, the relation decided on
//! a session's first message, activity extended only by owners and
//! resumes, flags deduplicated by key), so the truth is checked against
//! exactly the functions the server judges with.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use pentrace_domain::FlagKind;
use pentrace_domain::message::{
    Body, CartridgeRef, DeviceMessage, EndReason, Heartbeat, SessionContext, SessionEnd,
    SessionStart, SkinThickness, StrokeBatch, StrokeSample, TreatmentArea,
};
use pentrace_domain::policy::Policy;
use pentrace_domain::rules::{
    self, Binding, CartridgeRelation, Facts, LotFacts, ProductFacts, SessionFacts,
};
use pentrace_proto::v1 as pb;

use super::{Action, Scenario};
use crate::catalogue::{OK_LOT, PRODUCTS, RATED_PRODUCT, RATED_STROKES, RECALLED_LOT, lot_expiry};
use crate::wire;

/// The flags the rules raise for the scenario, as (kind, session id).
pub fn replay(scenario: &Scenario, compression: f64) -> BTreeSet<(FlagKind, String)> {
    let mut server = Server::new(scenario.t0);
    for (real, msg) in arrivals(scenario, compression) {
        server.receive(msg, real);
    }
    server.flags.into_values().collect()
}

/// Every transmission of every pen in the order a server would receive
/// them: by the real time each pen sends, then by pen and action.
fn arrivals(scenario: &Scenario, compression: f64) -> Vec<(DateTime<Utc>, pb::DeviceMessage)> {
    let real = |at: DateTime<Utc>| {
        let v = (at - scenario.t0).num_milliseconds() as f64 / compression;
        scenario.t0 + Duration::milliseconds(v as i64)
    };
    let mut out = Vec::new();
    for pen in &scenario.pens {
        let mut pace = scenario.t0;
        for (i, action) in pen.actions.iter().enumerate() {
            let Action::Send(m) = *action else { continue };
            let message = &pen.messages[m];
            pace = pace.max(real(message.at));
            out.push(((pace, pen.index, i), wire::build(pen, message, pace)));
        }
    }
    out.sort_by_key(|(key, _)| *key);
    out.into_iter().map(|((t, _, _), m)| (t, m)).collect()
}

struct Server {
    policy: Policy,
    products: HashMap<String, ProductFacts>,
    lots: HashMap<(String, String), LotFacts>,
    bindings: HashMap<String, Binding>,
    /// What is stored of each session, as the pipeline keeps it.
    sessions: HashMap<String, SessionFacts>,
    seen: HashSet<(String, u64)>,
    /// By dedupe key, as the store keeps them.
    flags: HashMap<String, (FlagKind, String)>,
}

impl Server {
    /// The registry `--setup` makes: the products (one of them rated), a
    /// good lot and a lot recalled just before virtual time starts.
    fn new(t0: DateTime<Utc>) -> Server {
        let mut lots = HashMap::new();
        let mut products: HashMap<String, ProductFacts> = PRODUCTS
            .iter()
            .map(|(g, _)| (g.to_string(), ProductFacts::default()))
            .collect();
        products.insert(
            RATED_PRODUCT.0.to_owned(),
            ProductFacts {
                rated_strokes: RATED_STROKES,
                ..ProductFacts::default()
            },
        );
        for gtin in products.keys() {
            let expiry = Some(lot_expiry(t0.date_naive()));
            lots.insert(
                (gtin.to_owned(), OK_LOT.to_owned()),
                LotFacts {
                    expiry,
                    recalled_at: None,
                },
            );
            lots.insert(
                (gtin.to_owned(), RECALLED_LOT.to_owned()),
                LotFacts {
                    expiry,
                    recalled_at: Some(t0 - Duration::seconds(1)),
                },
            );
        }
        Server {
            policy: Policy::default(),
            products,
            lots,
            bindings: HashMap::new(),
            sessions: HashMap::new(),
            seen: HashSet::new(),
            flags: HashMap::new(),
        }
    }

    fn receive(&mut self, wire: pb::DeviceMessage, received_at: DateTime<Utc>) {
        let msg = domain(wire);
        if !self.seen.insert((msg.device_id.clone(), msg.seq)) {
            return;
        }
        let ident = msg
            .session()
            .map(|ctx| rules::identify(&ctx.cartridge, received_at.date_naive()));
        let cartridge = ident
            .as_ref()
            .and_then(|i| i.cartridge.as_ref())
            .map(|c| c.to_string());
        let facts = self.facts(&msg, ident.as_ref(), cartridge.as_deref());
        let judgement = rules::judge(&msg, ident.as_ref(), &facts, &self.policy, received_at);
        let session = msg
            .session()
            .map(|c| c.session_id.clone())
            .unwrap_or_default();
        for v in judgement.verdicts {
            self.flags
                .entry(v.dedupe_key)
                .or_insert((v.kind, session.clone()));
        }
        let Some(ctx) = msg.session() else { return };
        let started = rules::corrected(ctx.started_at, msg.sent_at, received_at, &self.policy);
        // The session's cartridge on its first message, or one it names
        // later that nobody owns yet: claimed either way.
        let claimed = judgement.decided.as_ref().or(judgement.swapped.as_ref());
        if let (Some(CartridgeRelation::Owner), Some(id)) = (claimed, &cartridge) {
            self.bindings.entry(id.clone()).or_insert(Binding {
                session_id: ctx.session_id.clone(),
                device_id: msg.device_id.clone(),
                // One clinic per run, as the replay's facts have it.
                clinic_id: String::new(),
                patient_ref: ctx.patient_ref.clone(),
                last_activity_at: started,
                strokes: 0,
                active_ms: 0,
            });
        }
        if let Some(relation) = judgement.decided {
            self.sessions.insert(
                ctx.session_id.clone(),
                SessionFacts {
                    relation: Some(relation),
                    cartridge_id: cartridge.clone(),
                    strokes: 0,
                    active_ms: 0,
                },
            );
        }
        let (strokes, active_ms) = match &msg.body {
            Body::StrokeBatch(b) => (b.strokes(), b.active_ms(self.policy.sample_interval_ms)),
            _ => (0, 0),
        };
        let Some(state) = self.sessions.get_mut(&ctx.session_id) else {
            return;
        };
        state.strokes = state.strokes.saturating_add(strokes);
        state.active_ms = state.active_ms.saturating_add(active_ms);
        let Some(relation) = &state.relation else {
            return;
        };
        if let (Some(at), Some(id)) = (judgement.activity_at, &cartridge)
            && let Some(b) = self.bindings.get_mut(id)
            && relation.continues(&ctx.session_id, b)
        {
            b.last_activity_at = b.last_activity_at.max(at);
            b.strokes = b.strokes.saturating_add(strokes);
            b.active_ms = b.active_ms.saturating_add(active_ms);
        }
    }

    fn facts(
        &self,
        msg: &DeviceMessage,
        ident: Option<&rules::Identified>,
        cartridge: Option<&str>,
    ) -> Facts {
        let udi = ident.and_then(rules::Identified::udi);
        Facts {
            binding: cartridge.and_then(|c| self.bindings.get(c).cloned()),
            product: udi.and_then(|u| self.products.get(&u.gtin).cloned()),
            lot: udi.and_then(|u| self.lots.get(&(u.gtin.clone(), u.lot.clone()?)).cloned()),
            session: msg
                .session()
                .and_then(|c| self.sessions.get(&c.session_id).cloned())
                .unwrap_or_default(),
            device_max_depth_um: 0,
            // One clinic per run, like the bindings above.
            clinic_id: String::new(),
        }
    }
}

fn time(t: Option<prost_types::Timestamp>) -> DateTime<Utc> {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos as u32))
        .unwrap_or_default()
}

fn context(c: Option<pb::SessionContext>) -> SessionContext {
    let c = c.unwrap_or_default();
    let cartridge = c.cartridge.unwrap_or_default();
    let area = pb::TreatmentArea::try_from(c.area)
        .ok()
        .map(|a| {
            a.as_str_name()
                .trim_start_matches("TREATMENT_AREA_")
                .to_lowercase()
        })
        .map_or(TreatmentArea::Unspecified, |name| {
            TreatmentArea::parse(&name)
        });
    SessionContext {
        session_id: c.session_id,
        raw_session_id: None,
        cartridge: CartridgeRef {
            udi: cartridge.udi,
            chip_uid: cartridge.chip_uid,
        },
        area,
        skin: if c.skin == pb::SkinThickness::Thick as i32 {
            SkinThickness::Thick
        } else {
            SkinThickness::Thin
        },
        patient_ref: Some(c.patient_ref).filter(|p| !p.is_empty()),
        started_at: time(c.started_at),
    }
}

/// The wire message as the server's transport would hand it to the domain.
fn domain(m: pb::DeviceMessage) -> DeviceMessage {
    use pb::device_message::Body as W;
    let body = match m.body {
        Some(W::SessionStart(s)) => Body::SessionStart(SessionStart {
            session: context(s.session),
            operator_ref: s.operator_ref,
            firmware: s.firmware,
        }),
        Some(W::StrokeBatch(b)) => Body::StrokeBatch(StrokeBatch {
            session: context(b.session),
            started_at: time(b.started_at),
            samples: b
                .samples
                .iter()
                .map(|s| StrokeSample {
                    offset_ms: s.offset_ms,
                    strokes: s.strokes,
                    depth_um: s.depth_um,
                    speed_hz: s.speed_hz,
                })
                .collect(),
        }),
        Some(W::SessionEnd(e)) => Body::SessionEnd(SessionEnd {
            session: context(e.session),
            ended_at: time(e.ended_at),
            total_strokes: e.total_strokes,
            reason: EndReason::Completed,
        }),
        Some(W::Heartbeat(h)) => Body::Heartbeat(Heartbeat {
            battery_pct: h.battery_pct,
            firmware: h.firmware,
        }),
        None => Body::Heartbeat(Heartbeat {
            battery_pct: 0,
            firmware: String::new(),
        }),
    };
    DeviceMessage {
        device_id: m.device_id,
        seq: m.seq,
        sent_at: time(m.sent_at),
        body,
        time_faults: Vec::new(),
    }
}
