//! Pass 3: a pen's messages in seq order, the order it sends them in, and
//! the ground truth of its faults.

use chrono::Duration;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use super::{Action, CartridgeUse, MessageBody, MessagePlan, PenPlan, SessionPlan, TruthRecord};
use crate::catalogue::RATED_STROKES;
use crate::config::SimConfig;
use crate::faults::FaultKind;
use crate::profile::{BATCH_MS, mix};

/// Virtual time from a pen's last session to its closing heartbeat.
const FINAL_HEARTBEAT_S: i64 = 30;

/// Where a moved cartridge came from: the source session's pen, id and
/// last seq, by `[pen][session]`.
pub(super) type Sources = Vec<Vec<(String, String, u64)>>;

/// Numbers a pen's messages from `base + 1` (seqs must be known for every
/// pen before any pen can wait on another).
pub(super) fn number(pen: &mut PenPlan, base: u64, seed: u64) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(seed, &[0x5E_D5]));
    pen.messages = messages(pen, base, rng.random_range(60..=100));
}

/// The sessions of every pen as moved cartridges refer to them.
pub(super) fn sources(pens: &[PenPlan]) -> Sources {
    pens.iter()
        .map(|p| {
            p.sessions
                .iter()
                .map(|s| (p.device_id.clone(), s.session_id.clone(), s.last_seq))
                .collect()
        })
        .collect()
}

/// Fills `pen.actions` and returns the pen's truth records.
pub(super) fn plan_sends(
    config: &SimConfig,
    pen: &mut PenPlan,
    sources: &Sources,
    seed: u64,
) -> Vec<TruthRecord> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(seed, &[0x5E_D6]));
    let disconnects = disconnect_points(config, pen, &mut rng);
    let order = send_order(config, pen, &mut rng);
    let mut truth = session_truth(pen, sources);
    truth.extend(order.truth);
    for &i in &disconnects {
        let detail = "the pen drops its connection after sending this message, \
                      reconnects and resends what is unacknowledged";
        truth.push(message_truth(pen, FaultKind::Disconnect, i, detail.into()));
    }
    pen.actions = actions(pen, &order.sends, &disconnects, sources);
    truth.sort_by_key(|t| (t.seq, t.fault));
    truth
}

/// Heartbeat, each session's start, batches and end, a closing heartbeat.
/// A backlog's messages all go out as the pen comes back.
fn messages(pen: &mut PenPlan, base: u64, battery: u32) -> Vec<MessagePlan> {
    let mut out = Vec::new();
    let mut push = |body, at| {
        let seq = base + out.len() as u64 + 1;
        out.push(MessagePlan { seq, body, at });
        seq
    };
    let first_at = pen
        .sessions
        .first()
        .map(|s| s.uploaded_at.unwrap_or(s.started_at) - Duration::seconds(1));
    if let Some(at) = first_at {
        push(
            MessageBody::Heartbeat {
                battery_pct: battery,
            },
            at,
        );
    }
    let mut last_at = None;
    for (k, s) in pen.sessions.iter_mut().enumerate() {
        let uploaded = s.uploaded_at;
        let at = |t| uploaded.unwrap_or(t);
        s.first_seq = push(MessageBody::Start { session: k }, at(s.started_at));
        for b in 0..s.batches {
            let sent =
                s.started_at + Duration::milliseconds((i64::from(b) + 1) * i64::from(BATCH_MS));
            push(
                MessageBody::Batch {
                    session: k,
                    batch: b,
                },
                at(sent),
            );
        }
        let ended = at(s.ended_at);
        s.last_seq = push(MessageBody::End { session: k }, ended);
        last_at = Some(ended);
    }
    if let Some(last) = last_at {
        let battery_pct = battery.saturating_sub(pen.sessions.len() as u32);
        push(
            MessageBody::Heartbeat { battery_pct },
            last + Duration::seconds(FINAL_HEARTBEAT_S),
        );
    }
    out
}

/// Indexes of the messages after which the pen drops its connection: one
/// per disconnecting session, after its start or one of its batches.
fn disconnect_points(
    config: &SimConfig,
    pen: &PenPlan,
    rng: &mut Xoshiro256PlusPlus,
) -> Vec<usize> {
    let rate = config.faults.rate(FaultKind::Disconnect);
    let mut out = Vec::new();
    for s in &pen.sessions {
        if rng.random_bool(rate) {
            let after = rng.random_range(0..=s.batches.saturating_sub(1));
            out.push(index_of(pen, s.first_seq) + after as usize);
        }
    }
    out
}

fn index_of(pen: &PenPlan, seq: u64) -> usize {
    pen.messages
        .first()
        .map_or(0, |m| seq.saturating_sub(m.seq) as usize)
}

/// The send order: adjacent pairs swapped and messages doubled at the
/// per-message rates.
struct Order {
    /// Message indexes in send order (a duplicate appears twice).
    sends: Vec<usize>,
    truth: Vec<TruthRecord>,
}

fn send_order(config: &SimConfig, pen: &PenPlan, rng: &mut Xoshiro256PlusPlus) -> Order {
    let n = pen.messages.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut truth = Vec::new();
    let reorder = config.faults.rate(FaultKind::Reorder);
    // The last message is never swapped: an ack of a message sent after a
    // swapped pair is what proves the pair's first message arrived.
    let mut i = 0;
    while i + 2 < n {
        if rng.random_bool(reorder) {
            order.swap(i, i + 1);
            let detail = format!("sent after seq {}", pen.messages[i + 1].seq);
            truth.push(message_truth(pen, FaultKind::Reorder, i, detail));
            i += 2;
        } else {
            i += 1;
        }
    }
    let dup = config.faults.rate(FaultKind::Dup);
    let mut sends = Vec::with_capacity(n + n / 10);
    for m in order {
        sends.push(m);
        if rng.random_bool(dup) {
            sends.push(m);
            truth.push(message_truth(pen, FaultKind::Dup, m, "sent twice".into()));
        }
    }
    Order { sends, truth }
}

/// The pen's actions: a wait before the first message of each moved
/// session, sends, and disconnects after their messages' first send.
fn actions(
    pen: &PenPlan,
    sends: &[usize],
    disconnects: &[usize],
    sources: &Sources,
) -> Vec<Action> {
    let mut out = Vec::with_capacity(sends.len() + 8);
    let mut waited = vec![false; pen.sessions.len()];
    let mut dropped = vec![false; pen.messages.len()];
    for &m in sends {
        if let Some(k) = pen.messages[m].body.session()
            && !waited[k]
        {
            waited[k] = true;
            if let CartridgeUse::Moved { pen: sp, session } = pen.sessions[k].cartridge
                && let Some((_, _, seq)) = sources.get(sp).and_then(|s| s.get(session))
            {
                out.push(Action::AwaitAck { pen: sp, seq: *seq });
            }
        }
        out.push(Action::Send(m));
        if disconnects.contains(&m) && !dropped[m] {
            dropped[m] = true;
            out.push(Action::Disconnect);
        }
    }
    out
}

/// Truth of the session faults: the cartridge fault, depth, skew.
fn session_truth(pen: &PenPlan, sources: &Sources) -> Vec<TruthRecord> {
    let mut out = Vec::new();
    for s in &pen.sessions {
        let record = |fault: FaultKind, seq: u64, detail: String| TruthRecord {
            fault,
            device_id: pen.device_id.clone(),
            session_id: Some(s.session_id.clone()),
            seq,
            expected_flags: fault.expected_flags(),
            detail,
        };
        if let Some(fault) = s.cartridge.fault() {
            let detail = cartridge_detail(pen, s, sources);
            out.push(record(fault, cartridge_seq(s), detail));
        }
        if let Some(b) = s.profile.excursion_batch {
            let detail = format!(
                "samples of batch {b} at 2100-2500 µm ({:?})",
                s.profile.area
            );
            out.push(record(
                FaultKind::Depth,
                s.first_seq + 1 + u64::from(b),
                detail,
            ));
        }
        if let Some(skew) = s.skew {
            let detail = format!("device clock off by {} s", skew.num_seconds());
            out.push(record(FaultKind::Skew, s.first_seq, detail));
        }
    }
    out
}

/// The message a cartridge fault is in: the session's start, or the first
/// message naming a swapped-in cartridge.
fn cartridge_seq(s: &SessionPlan) -> u64 {
    match s.cartridge {
        CartridgeUse::Swap { from_batch, .. } => {
            s.first_seq + 1 + u64::from(from_batch.min(s.batches))
        }
        _ => s.first_seq,
    }
}

fn cartridge_detail(pen: &PenPlan, s: &SessionPlan, sources: &Sources) -> String {
    let id = s.label.cartridge_id();
    match s.cartridge {
        CartridgeUse::Reuse { of_session } | CartridgeUse::Resume { of_session } => {
            let gap = s.started_at - pen.sessions[of_session].ended_at;
            format!(
                "cartridge {id} of this pen's session {} again, {} s after it ended",
                pen.sessions[of_session].session_id,
                gap.num_seconds()
            )
        }
        CartridgeUse::Moved { pen: sp, session } => {
            match sources.get(sp).and_then(|x| x.get(session)) {
                Some((device, sid, _)) => {
                    format!("cartridge {id} first used by {device} in session {sid}")
                }
                None => format!("cartridge {id} first used by another pen"),
            }
        }
        CartridgeUse::Swap {
            of_session,
            from_batch,
        } => {
            let other = &pen.sessions[of_session];
            let from = if from_batch < s.batches {
                format!("from batch {from_batch} on")
            } else {
                "in its end".to_owned()
            };
            format!(
                "started with cartridge {id}; {from} names cartridge {} of this pen's \
                 session {} (another patient)",
                other.label.cartridge_id(),
                other.session_id
            )
        }
        CartridgeUse::ResumeOveruse { of_session } => {
            let owner = &pen.sessions[of_session];
            format!(
                "resumes session {} with cartridge {id}, rated {RATED_STROKES} strokes: \
                 {} strokes there, {} here",
                owner.session_id,
                owner.profile.total_strokes(owner.batches),
                s.profile.total_strokes(s.batches)
            )
        }
        CartridgeUse::Backlog { of_session } => {
            let owner = &pen.sessions[of_session];
            format!(
                "backlog uploaded shuffled: cartridge {id} also used in session {} (started \
                 {}), uploaded before this one (started {})",
                owner.session_id,
                owner.started_at.to_rfc3339(),
                s.started_at.to_rfc3339()
            )
        }
        _ => format!("UDI {:?}", s.udi),
    }
}

fn message_truth(pen: &PenPlan, fault: FaultKind, index: usize, detail: String) -> TruthRecord {
    let m = pen.messages[index];
    TruthRecord {
        fault,
        device_id: pen.device_id.clone(),
        session_id: m.body.session().map(|k| pen.sessions[k].session_id.clone()),
        seq: m.seq,
        expected_flags: fault.expected_flags(),
        detail,
    }
}
