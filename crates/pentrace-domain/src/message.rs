//! Device messages as the domain sees them (decoded from the wire by the
//! transport, which is the only place that knows protobuf).

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// One message from a device; `(device_id, seq)` is its idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceMessage {
    pub device_id: String,
    pub seq: u64,
    /// Device clock when sent (the receive time when the pen's was unusable:
    /// see `time_faults`).
    pub sent_at: DateTime<Utc>,
    pub body: Body,
    /// Device times the pen sent that were missing or out of range, and what
    /// replaced them; a non-empty list raises `CLOCK_SKEW`.
    pub time_faults: Vec<TimeFault>,
}

/// A device time that could not be used as sent, and what replaced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeFault {
    pub field: TimeField,
    /// The value on the wire; `None` when the field was missing.
    pub raw: Option<WireTime>,
    /// The time judged and stored instead.
    pub used: DateTime<Utc>,
}

/// A wire timestamp as sent (`google.protobuf.Timestamp`), kept as evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireTime {
    pub seconds: i64,
    pub nanos: i32,
}

/// The device-time fields of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeField {
    /// `DeviceMessage.sent_at`; replaced by the server's receive time.
    SentAt,
    /// `SessionContext.started_at`; replaced by the message's `sent_at`.
    SessionStartedAt,
    /// `StrokeBatch.started_at`; replaced by the message's `sent_at`.
    BatchStartedAt,
    /// `SessionEnd.ended_at`; replaced by the message's `sent_at`.
    SessionEndedAt,
}

impl TimeField {
    /// The field's name in the wire protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeField::SentAt => "sent_at",
            TimeField::SessionStartedAt => "session.started_at",
            TimeField::BatchStartedAt => "stroke_batch.started_at",
            TimeField::SessionEndedAt => "session_end.ended_at",
        }
    }

    /// What a missing or out-of-range value of the field is replaced by.
    pub fn replacement(self) -> &'static str {
        match self {
            TimeField::SentAt => "receive time",
            _ => "the message's sent_at",
        }
    }
}

impl TimeFault {
    /// What was wrong with the value, e.g. `missing` or
    /// `out of range (seconds -8330000000000, nanos 0)`.
    pub fn problem(&self) -> String {
        match self.raw {
            None => "missing".to_owned(),
            Some(w) => format!("out of range (seconds {}, nanos {})", w.seconds, w.nanos),
        }
    }

    /// One clause for a flag's detail, e.g. `sent_at missing; judged at receive time`.
    pub fn describe(&self) -> String {
        format!(
            "{} {}; judged at {}",
            self.field.as_str(),
            self.problem(),
            self.field.replacement()
        )
    }
}

/// What a device message carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    SessionStart(SessionStart),
    StrokeBatch(StrokeBatch),
    SessionEnd(SessionEnd),
    Heartbeat(Heartbeat),
}

impl DeviceMessage {
    /// A message whose device times were all usable.
    pub fn new(device_id: String, seq: u64, sent_at: DateTime<Utc>, body: Body) -> Self {
        DeviceMessage {
            device_id,
            seq,
            sent_at,
            body,
            time_faults: Vec::new(),
        }
    }

    /// The session context, for the three session messages.
    pub fn session(&self) -> Option<&SessionContext> {
        match &self.body {
            Body::SessionStart(m) => Some(&m.session),
            Body::StrokeBatch(m) => Some(&m.session),
            Body::SessionEnd(m) => Some(&m.session),
            Body::Heartbeat(_) => None,
        }
    }

    /// The session context, to change it (see [`DeviceMessage::session`]).
    pub fn session_mut(&mut self) -> Option<&mut SessionContext> {
        match &mut self.body {
            Body::SessionStart(m) => Some(&mut m.session),
            Body::StrokeBatch(m) => Some(&mut m.session),
            Body::SessionEnd(m) => Some(&mut m.session),
            Body::Heartbeat(_) => None,
        }
    }

    /// Stroke samples carried by the message (empty unless a batch).
    pub fn samples(&self) -> &[StrokeSample] {
        match &self.body {
            Body::StrokeBatch(b) => &b.samples,
            _ => &[],
        }
    }
}

/// The cartridge as the pen read it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CartridgeRef {
    /// UDI exactly as scanned (any of the three GS1 forms).
    pub udi: String,
    /// Chip UID (hex) where the cartridge has one; empty otherwise.
    pub chip_uid: String,
}

/// Treatment area of a session; selects the depth guidance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TreatmentArea {
    #[default]
    Unspecified,
    Forehead,
    Nose,
    Periorbital,
    Cheeks,
    UpperLip,
    Scars,
    StretchMarks,
    Scalp,
    /// A wire value this server does not know, kept as sent; judged without
    /// area guidance (the depth limit still applies).
    Unknown(i32),
}

impl TreatmentArea {
    /// Every area that has guidance.
    pub const ALL: [TreatmentArea; 8] = [
        TreatmentArea::Forehead,
        TreatmentArea::Nose,
        TreatmentArea::Periorbital,
        TreatmentArea::Cheeks,
        TreatmentArea::UpperLip,
        TreatmentArea::Scars,
        TreatmentArea::StretchMarks,
        TreatmentArea::Scalp,
    ];

    /// Stable lower-case name for storage and reports; an unknown wire
    /// value is `unknown(N)`.
    pub fn name(self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            TreatmentArea::Unspecified => "unspecified",
            TreatmentArea::Forehead => "forehead",
            TreatmentArea::Nose => "nose",
            TreatmentArea::Periorbital => "periorbital",
            TreatmentArea::Cheeks => "cheeks",
            TreatmentArea::UpperLip => "upper_lip",
            TreatmentArea::Scars => "scars",
            TreatmentArea::StretchMarks => "stretch_marks",
            TreatmentArea::Scalp => "scalp",
            TreatmentArea::Unknown(n) => return Cow::Owned(format!("unknown({n})")),
        })
    }

    /// Parses the stable name (including `unknown(N)`); any other name is
    /// `Unspecified`.
    pub fn parse(name: &str) -> TreatmentArea {
        if let Some(n) = name
            .strip_prefix("unknown(")
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|n| n.parse().ok())
        {
            return TreatmentArea::Unknown(n);
        }
        TreatmentArea::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .unwrap_or_default()
    }
}

/// Skin thickness as assessed by the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SkinThickness {
    /// Judged as thin: the conservative bound.
    #[default]
    Thin,
    Thick,
    /// A wire value this server does not know, kept as sent; judged as thin.
    Unknown(i32),
}

/// The session a message belongs to; repeated in every session message.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionContext {
    /// Session id chosen by the pen (canonical UUID text); derived from the
    /// device id and `raw_session_id` when the pen's is not a UUID.
    pub session_id: String,
    /// The pen's session id as sent, when it was not a UUID (or the session
    /// context was missing: then empty); `None` when `session_id` is the pen's.
    pub raw_session_id: Option<String>,
    pub cartridge: CartridgeRef,
    pub area: TreatmentArea,
    pub skin: SkinThickness,
    /// Opaque patient reference (a hash); `None` when the pen has none.
    pub patient_ref: Option<String>,
    /// Device clock at session start.
    pub started_at: DateTime<Utc>,
}

/// A session begins.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionStart {
    pub session: SessionContext,
    pub operator_ref: String,
    pub firmware: String,
}

/// One sample: what the pen did during one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StrokeSample {
    /// Milliseconds after the batch start.
    pub offset_ms: u32,
    /// Strokes counted during the interval.
    pub strokes: u32,
    /// Needle depth, micrometres.
    pub depth_um: u32,
    /// Oscillation frequency, hertz.
    pub speed_hz: u32,
}

/// A batch of samples (typically 10 × 100 ms).
#[derive(Debug, Clone, PartialEq)]
pub struct StrokeBatch {
    pub session: SessionContext,
    /// Device clock at the batch start.
    pub started_at: DateTime<Utc>,
    pub samples: Vec<StrokeSample>,
}

impl StrokeBatch {
    /// Total strokes in the batch (saturating).
    pub fn strokes(&self) -> u64 {
        self.samples
            .iter()
            .fold(0u64, |sum, s| sum.saturating_add(u64::from(s.strokes)))
    }

    /// Milliseconds during which the needle was stroking. Each sample lasts
    /// until the next one's offset; the last lasts as long as the one before
    /// it (or `default_interval_ms` when it is alone).
    pub fn active_ms(&self, default_interval_ms: u32) -> u64 {
        let mut total = 0u64;
        let mut last_interval = default_interval_ms;
        for (i, sample) in self.samples.iter().enumerate() {
            let interval = match self.samples.get(i + 1) {
                Some(next) => next.offset_ms.saturating_sub(sample.offset_ms),
                None => last_interval,
            };
            last_interval = interval;
            if sample.strokes > 0 {
                total = total.saturating_add(u64::from(interval));
            }
        }
        total
    }

    /// Deepest sample of the batch, micrometres (0 when empty).
    pub fn max_depth_um(&self) -> u32 {
        self.samples.iter().map(|s| s.depth_um).max().unwrap_or(0)
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EndReason {
    #[default]
    Unspecified,
    Completed,
    Aborted,
    CartridgeRejected,
    LowBattery,
    /// A wire value this server does not know, kept as sent.
    Unknown(i32),
}

/// A session ends.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionEnd {
    pub session: SessionContext,
    pub ended_at: DateTime<Utc>,
    pub total_strokes: u64,
    pub reason: EndReason,
}

/// Periodic liveness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub battery_pct: u32,
    pub firmware: String,
}

/// The session id of a session whose pen-chosen id is not a UUID (or is
/// missing): a UUID derived from the device id and the raw id, so every
/// message of that session lands in the same session, and the same raw id on
/// two devices makes two sessions. Version 8 (custom, SHA-256 based), so it
/// never collides with the pens' own v4 ids.
pub fn derived_session_id(device_id: &str, raw_session_id: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"pentrace/session-id/v1\0");
    hash.update((device_id.len() as u64).to_be_bytes());
    hash.update(device_id.as_bytes());
    hash.update(raw_session_id.as_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}
