//! Device messages as the domain sees them (decoded from the wire by the
//! transport, which is the only place that knows protobuf).

use chrono::{DateTime, Utc};

/// One message from a device; `(device_id, seq)` is its idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceMessage {
    pub device_id: String,
    pub seq: u64,
    /// Device clock when sent.
    pub sent_at: DateTime<Utc>,
    pub body: Body,
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
    /// The session context, for the three session messages.
    pub fn session(&self) -> Option<&SessionContext> {
        match &self.body {
            Body::SessionStart(m) => Some(&m.session),
            Body::StrokeBatch(m) => Some(&m.session),
            Body::SessionEnd(m) => Some(&m.session),
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

    /// Stable lower-case name for storage and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            TreatmentArea::Unspecified => "unspecified",
            TreatmentArea::Forehead => "forehead",
            TreatmentArea::Nose => "nose",
            TreatmentArea::Periorbital => "periorbital",
            TreatmentArea::Cheeks => "cheeks",
            TreatmentArea::UpperLip => "upper_lip",
            TreatmentArea::Scars => "scars",
            TreatmentArea::StretchMarks => "stretch_marks",
            TreatmentArea::Scalp => "scalp",
        }
    }

    /// Parses the stable name; unknown names are `Unspecified`.
    pub fn parse(name: &str) -> TreatmentArea {
        TreatmentArea::ALL
            .into_iter()
            .find(|a| a.as_str() == name)
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
}

/// The session a message belongs to; repeated in every session message.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionContext {
    /// Session id chosen by the pen (UUID text).
    pub session_id: String,
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
    /// Total strokes in the batch.
    pub fn strokes(&self) -> u64 {
        self.samples.iter().map(|s| u64::from(s.strokes)).sum()
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
                total += u64::from(interval);
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
