//! Scenario planning: every session, cartridge, fault and message of every
//! pen is decided up front, purely from the configuration, the seed, the
//! start time and the pens' first seqs. The ground truth falls out of the
//! plan; the pen drivers only carry it out.
//!
//! Planning runs in three passes:
//! 1. each pen's sessions and their faults (`sessions`), from the pen's
//!    own seeded RNG: first the backlog it uploads when it comes back, if
//!    it was offline (`backlog`), then its sessions of the run;
//! 2. moved cartridges (`moved`), which need every pen's sessions;
//! 3. each pen's messages, the order it sends them in (duplicates,
//!    swaps, disconnects, waits) and the truth (`sends`).

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use pentrace_domain::FlagKind;

use crate::catalogue::{Label, UdiForm};
use crate::config::SimConfig;
use crate::faults::FaultKind;
use crate::profile::{SAMPLES_PER_BATCH, SessionProfile, mix};

mod backlog;
mod moved;
#[cfg(test)]
mod replay;
mod sends;
mod sessions;
#[cfg(test)]
mod tests;

/// Virtual gap before a pen's first session.
const FIRST_GAP_S: (i64, i64) = (1, 5);
/// Virtual gap between ordinary sessions (and before a resume): 1-3 min,
/// well inside the 10 min resume window.
const GAP_S: (i64, i64) = (60, 180);
/// Virtual gap before a reuse: well past the 10 min resume window.
const REUSE_GAP_S: (i64, i64) = (15 * 60, 20 * 60);
/// A moved cartridge's first session must have ended at least this long
/// (virtual) before the moved session starts.
const MOVED_MARGIN_S: i64 = 30;
/// Clock skew of a skewed session: 6-120 min either way (the server's skew
/// window is 5 min).
const SKEW_MIN: (i64, i64) = (6, 120);
/// Days before the session an expired cartridge expired.
const EXPIRED_DAYS_AGO: i64 = 30;

/// A whole simulation, decided up front.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Start of virtual time (the real time the run started).
    pub t0: DateTime<Utc>,
    pub pens: Vec<PenPlan>,
    /// Every injected fault, in pen and seq order.
    pub truth: Vec<TruthRecord>,
}

/// One pen's part of the scenario.
#[derive(Debug, Clone)]
pub struct PenPlan {
    pub index: usize,
    pub device_id: String,
    /// How this pen's scanner reports UDIs.
    pub form: UdiForm,
    pub firmware: String,
    /// The backlog (if any) in upload order, then the sessions of the run.
    pub sessions: Vec<SessionPlan>,
    /// Every message, in seq order (`messages[i].seq == first seq + i`):
    /// the order of `sessions`, a backlog first, in upload order.
    pub messages: Vec<MessagePlan>,
    /// What the pen does, in order.
    pub actions: Vec<Action>,
}

/// One treatment session.
#[derive(Debug, Clone)]
pub struct SessionPlan {
    pub session_id: String,
    /// True (virtual) time of the start; the device reports it shifted by
    /// `skew`.
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub patient_ref: String,
    pub operator_ref: String,
    pub label: Label,
    /// The UDI as the pen reports it.
    pub udi: String,
    pub cartridge: CartridgeUse,
    pub profile: SessionProfile,
    pub batches: u32,
    /// Device clock minus true time during this session, if off.
    pub skew: Option<Duration>,
    /// Seq of the session's start and end messages.
    pub first_seq: u64,
    pub last_seq: u64,
    /// Set for a session of a backlog (recorded while the pen was offline,
    /// days before the run): the virtual time at which the pen, back
    /// online, uploads every message of it.
    pub uploaded_at: Option<DateTime<Utc>>,
}

impl SessionPlan {
    /// Samples the session sends (each exactly once, however often sent).
    pub fn samples(&self) -> u64 {
        u64::from(self.batches) * u64::from(SAMPLES_PER_BATCH)
    }

    /// A device time of this session as the pen's (possibly wrong) clock
    /// reports it.
    pub fn device_time(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        t + self.skew.unwrap_or_else(Duration::zero)
    }

    /// Whether another session may take this one's cartridge (reuse,
    /// resume, moved, swap): a fresh one of an ordinary product, used in
    /// the run. A backlog's cartridges stay within the backlog, so its
    /// truth is only its upload order.
    pub fn lends_cartridge(&self) -> bool {
        self.cartridge == CartridgeUse::Fresh && self.uploaded_at.is_none()
    }

    /// Whether a message of batch `batch` (`None`: the end) names the
    /// swapped-in cartridge instead of the session's own.
    pub fn names_swapped(&self, batch: Option<u32>) -> bool {
        match self.cartridge {
            CartridgeUse::Swap { from_batch, .. } => batch.unwrap_or(self.batches) >= from_batch,
            _ => false,
        }
    }
}

impl PenPlan {
    /// The UDI a message of session `k` names: the session's own, or, from
    /// a swap on, that of the session whose cartridge was swapped in.
    pub fn named_udi(&self, k: usize, body: MessageBody) -> Option<&str> {
        let s = self.sessions.get(k)?;
        let batch = match body {
            MessageBody::Batch { batch, .. } => Some(batch),
            MessageBody::End { .. } => None,
            _ => return Some(&s.udi),
        };
        match s.cartridge {
            CartridgeUse::Swap { of_session, .. } if s.names_swapped(batch) => {
                self.sessions.get(of_session).map(|o| o.udi.as_str())
            }
            _ => Some(&s.udi),
        }
    }
}

/// Where a session's cartridge comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CartridgeUse {
    /// A new cartridge from the good lot: the session owns it.
    Fresh,
    /// The previous session's cartridge after the resume window.
    Reuse {
        of_session: usize,
    },
    /// The previous session's cartridge within the resume window.
    Resume {
        of_session: usize,
    },
    /// A cartridge another pen's session used first.
    Moved {
        pen: usize,
        session: usize,
    },
    /// A fresh cartridge, then from batch `from_batch` on (`batches`: only
    /// the end) the cartridge of an earlier session of the pen, for
    /// another patient.
    Swap {
        of_session: usize,
        from_batch: u32,
    },
    /// A fresh cartridge of the rated product, used under its rating; the
    /// next session resumes it (not a fault of its own).
    OveruseOwner,
    /// The previous session's rated cartridge within the resume window,
    /// crossing the rating in sum with it.
    ResumeOveruse {
        of_session: usize,
    },
    /// A backlog session that used the cartridge of backlog session
    /// `of_session`, days apart, and is uploaded after it.
    Backlog {
        of_session: usize,
    },
    Expired,
    Recalled,
    Unknown,
    BadUdi,
}

impl CartridgeUse {
    /// The fault this use injects, if any.
    pub fn fault(self) -> Option<FaultKind> {
        Some(match self {
            CartridgeUse::Fresh | CartridgeUse::OveruseOwner => return None,
            CartridgeUse::Reuse { .. } => FaultKind::Reuse,
            CartridgeUse::Swap { .. } => FaultKind::CartridgeSwap,
            CartridgeUse::ResumeOveruse { .. } => FaultKind::ResumeOveruse,
            CartridgeUse::Backlog { .. } => FaultKind::Backlog,
            CartridgeUse::Resume { .. } => FaultKind::Resume,
            CartridgeUse::Moved { .. } => FaultKind::Moved,
            CartridgeUse::Expired => FaultKind::Expired,
            CartridgeUse::Recalled => FaultKind::Recalled,
            CartridgeUse::Unknown => FaultKind::Unknown,
            CartridgeUse::BadUdi => FaultKind::BadUdi,
        })
    }
}

/// What a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageBody {
    Heartbeat { battery_pct: u32 },
    Start { session: usize },
    Batch { session: usize, batch: u32 },
    End { session: usize },
}

impl MessageBody {
    /// The session the message belongs to, if any.
    pub fn session(self) -> Option<usize> {
        match self {
            MessageBody::Heartbeat { .. } => None,
            MessageBody::Start { session }
            | MessageBody::Batch { session, .. }
            | MessageBody::End { session } => Some(session),
        }
    }
}

/// One message of a pen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessagePlan {
    pub seq: u64,
    pub body: MessageBody,
    /// True (virtual) time at which the pen sends it.
    pub at: DateTime<Utc>,
}

impl MessagePlan {
    /// Samples the message carries.
    pub fn samples(&self) -> u64 {
        match self.body {
            MessageBody::Batch { .. } => u64::from(SAMPLES_PER_BATCH),
            _ => 0,
        }
    }
}

/// One step of a pen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send `messages[i]` (again, for a duplicate).
    Send(usize),
    /// Drop the connection, reconnect and resend what is unacknowledged.
    Disconnect,
    /// Wait until pen `pen` has every message up to `seq` acknowledged
    /// (so a moved cartridge's first binding is committed).
    AwaitAck { pen: usize, seq: u64 },
}

/// One injected fault, as written to the ground-truth file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruthRecord {
    pub fault: FaultKind,
    pub device_id: String,
    /// The session concerned; `None` for a heartbeat's dup or reorder.
    pub session_id: Option<String>,
    /// The message concerned (a session fault: the session's start).
    pub seq: u64,
    /// The flags the server must raise for it, on `session_id`.
    pub expected_flags: Vec<FlagKind>,
    /// What was done, for a person reading a mismatch.
    pub detail: String,
}

/// Plans the whole run: pure, so the same inputs give the same scenario.
/// `seq_bases[i]` is the last seq pen `i` already used (0 for a new pen).
pub fn plan(config: &SimConfig, t0: DateTime<Utc>, seq_bases: &[u64]) -> Scenario {
    let base = |i: usize| seq_bases.get(i).copied().unwrap_or(0);
    let seed = |i: usize| pen_seed(config, i, base(i));
    let mut pens: Vec<PenPlan> = (0..config.devices)
        .map(|i| sessions::plan_pen(config, t0, i, seed(i)))
        .collect();
    moved::resolve(&mut pens, seed);
    for pen in &mut pens {
        sends::number(pen, base(pen.index), seed(pen.index));
    }
    let sources = sends::sources(&pens);
    let mut truth = Vec::new();
    for pen in &mut pens {
        let pen_seed = seed(pen.index);
        truth.extend(sends::plan_sends(config, pen, &sources, pen_seed));
    }
    Scenario { t0, pens, truth }
}

/// The seed of pen `i`: independent per pen; per clinic, so that two
/// clinics simulated with one seed never share session ids or serials; and
/// per seq base, so that a second run against the same server (which
/// continues the pens' seqs) makes new sessions and cartridges too.
pub fn pen_seed(config: &SimConfig, i: usize, seq_base: u64) -> u64 {
    mix(config.seed, &[fnv1a(&config.clinic), i as u64, seq_base])
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Scenario {
    /// Sessions in the scenario.
    pub fn sessions(&self) -> usize {
        self.pens.iter().map(|p| p.sessions.len()).sum()
    }

    /// Unique messages in the scenario.
    pub fn messages(&self) -> usize {
        self.pens.iter().map(|p| p.messages.len()).sum()
    }

    /// Unique samples in the scenario.
    pub fn samples(&self) -> u64 {
        self.pens
            .iter()
            .flat_map(|p| &p.sessions)
            .map(SessionPlan::samples)
            .sum()
    }
}
