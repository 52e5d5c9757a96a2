//! Between the wire (protobuf) and the domain. Device input is validated
//! here, so everything past this point can trust its shape.

use chrono::{DateTime, NaiveDate, Utc};
use pentrace_domain::message::{
    Body, CartridgeRef, DeviceMessage, EndReason, Heartbeat, SessionContext, SessionEnd,
    SessionStart, SkinThickness, StrokeBatch, StrokeSample, TreatmentArea,
};
use pentrace_proto::v1 as pb;
use pentrace_store as store;
use prost_types::Timestamp;

/// Longest device id, session id or free-text field accepted.
const MAX_TEXT: usize = 256;
/// Most samples one batch may carry.
const MAX_SAMPLES: usize = 10_000;

/// Why a device message was refused before ingest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidMessage(pub String);

fn invalid(what: impl Into<String>) -> InvalidMessage {
    InvalidMessage(what.into())
}

/// A wire message as the domain sees it, or what is wrong with it.
pub fn device_message(
    m: pb::DeviceMessage,
    _received_at: DateTime<Utc>,
) -> Result<DeviceMessage, InvalidMessage> {
    let device_id = text("device_id", m.device_id)?;
    if device_id.is_empty() {
        return Err(invalid("device_id is empty"));
    }
    if m.seq == 0 {
        return Err(invalid(format!(
            "seq of device {device_id} is 0; seqs start at 1"
        )));
    }
    let sent_at = time("sent_at", m.sent_at)?;
    let body = match m.body.ok_or_else(|| invalid("message has no body"))? {
        pb::device_message::Body::SessionStart(s) => Body::SessionStart(SessionStart {
            session: context(s.session)?,
            operator_ref: text("operator_ref", s.operator_ref)?,
            firmware: text("firmware", s.firmware)?,
        }),
        pb::device_message::Body::StrokeBatch(b) => Body::StrokeBatch(stroke_batch(b)?),
        pb::device_message::Body::SessionEnd(e) => Body::SessionEnd(SessionEnd {
            session: context(e.session)?,
            ended_at: time("ended_at", e.ended_at)?,
            total_strokes: e.total_strokes,
            reason: end_reason(e.reason),
        }),
        pb::device_message::Body::Heartbeat(h) => Body::Heartbeat(Heartbeat {
            battery_pct: h.battery_pct.min(100),
            firmware: text("firmware", h.firmware)?,
        }),
    };
    Ok(DeviceMessage {
        device_id,
        seq: m.seq,
        sent_at,
        body,
    })
}

fn stroke_batch(b: pb::StrokeBatch) -> Result<StrokeBatch, InvalidMessage> {
    if b.samples.len() > MAX_SAMPLES {
        return Err(invalid(format!(
            "{} samples in one batch; at most {MAX_SAMPLES}",
            b.samples.len()
        )));
    }
    let samples = b
        .samples
        .iter()
        .map(|s| StrokeSample {
            offset_ms: s.offset_ms,
            strokes: s.strokes,
            depth_um: s.depth_um,
            speed_hz: s.speed_hz,
        })
        .collect();
    Ok(StrokeBatch {
        session: context(b.session)?,
        started_at: time("started_at", b.started_at)?,
        samples,
    })
}

fn context(c: Option<pb::SessionContext>) -> Result<SessionContext, InvalidMessage> {
    let c = c.ok_or_else(|| invalid("session message without its session context"))?;
    let session_id = uuid::Uuid::parse_str(&c.session_id)
        .map_err(|_| invalid(format!("session_id {:?} is not a UUID", c.session_id)))?
        .to_string();
    let cartridge = c.cartridge.unwrap_or_default();
    let patient_ref = text("patient_ref", c.patient_ref)?;
    Ok(SessionContext {
        session_id,
        cartridge: CartridgeRef {
            udi: text("cartridge.udi", cartridge.udi)?,
            chip_uid: text("cartridge.chip_uid", cartridge.chip_uid)?,
        },
        area: area(c.area),
        skin: match pb::SkinThickness::try_from(c.skin) {
            Ok(pb::SkinThickness::Thick) => SkinThickness::Thick,
            _ => SkinThickness::Thin,
        },
        patient_ref: Some(patient_ref).filter(|p| !p.is_empty()),
        started_at: time("session.started_at", c.started_at)?,
    })
}

/// Free text from a device: bounded, and free of NUL (which PostgreSQL
/// cannot store) and other control characters.
fn text(field: &str, s: String) -> Result<String, InvalidMessage> {
    if s.len() > MAX_TEXT {
        return Err(invalid(format!(
            "{field} is {} bytes; at most {MAX_TEXT}",
            s.len()
        )));
    }
    // GS (ASCII 29) is legitimate inside raw UDIs.
    if let Some(c) = s.chars().find(|c| c.is_control() && *c != '\u{1d}') {
        return Err(invalid(format!(
            "{field} contains control character U+{:04X}",
            c as u32
        )));
    }
    Ok(s)
}

fn time(field: &str, t: Option<Timestamp>) -> Result<DateTime<Utc>, InvalidMessage> {
    let t = t.ok_or_else(|| invalid(format!("{field} is missing")))?;
    let nanos =
        u32::try_from(t.nanos).map_err(|_| invalid(format!("{field} has negative nanos")))?;
    DateTime::from_timestamp(t.seconds, nanos)
        .ok_or_else(|| invalid(format!("{field} is out of range")))
}

/// A domain time on the wire.
pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// An optional wire time (unset or zero = absent) as a domain time.
pub fn optional_time(t: Option<Timestamp>) -> Option<DateTime<Utc>> {
    let t = t?;
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

fn area(a: i32) -> TreatmentArea {
    use pb::TreatmentArea as P;
    match P::try_from(a) {
        Ok(P::Forehead) => TreatmentArea::Forehead,
        Ok(P::Nose) => TreatmentArea::Nose,
        Ok(P::Periorbital) => TreatmentArea::Periorbital,
        Ok(P::Cheeks) => TreatmentArea::Cheeks,
        Ok(P::UpperLip) => TreatmentArea::UpperLip,
        Ok(P::Scars) => TreatmentArea::Scars,
        Ok(P::StretchMarks) => TreatmentArea::StretchMarks,
        Ok(P::Scalp) => TreatmentArea::Scalp,
        _ => TreatmentArea::Unspecified,
    }
}

fn area_to_wire(a: &str) -> i32 {
    use pb::TreatmentArea as P;
    let p = match TreatmentArea::parse(a) {
        TreatmentArea::Unspecified => P::Unspecified,
        TreatmentArea::Forehead => P::Forehead,
        TreatmentArea::Nose => P::Nose,
        TreatmentArea::Periorbital => P::Periorbital,
        TreatmentArea::Cheeks => P::Cheeks,
        TreatmentArea::UpperLip => P::UpperLip,
        TreatmentArea::Scars => P::Scars,
        TreatmentArea::StretchMarks => P::StretchMarks,
        TreatmentArea::Scalp => P::Scalp,
    };
    p as i32
}

fn end_reason(r: i32) -> EndReason {
    match pb::EndReason::try_from(r) {
        Ok(pb::EndReason::Completed) => EndReason::Completed,
        Ok(pb::EndReason::Aborted) => EndReason::Aborted,
        Ok(pb::EndReason::CartridgeRejected) => EndReason::CartridgeRejected,
        Ok(pb::EndReason::LowBattery) => EndReason::LowBattery,
        _ => EndReason::Unspecified,
    }
}

/// The wire enum of a flag kind.
pub fn flag_kind(k: pentrace_domain::FlagKind) -> pb::FlagKind {
    use pb::FlagKind as P;
    use pentrace_domain::FlagKind as K;
    match k {
        K::CartridgeReused => P::CartridgeReused,
        K::SessionResumed => P::SessionResumed,
        K::CartridgeExpired => P::CartridgeExpired,
        K::CartridgeRecalled => P::CartridgeRecalled,
        K::RecallExposure => P::RecallExposure,
        K::CartridgeUnknown => P::CartridgeUnknown,
        K::UdiInvalid => P::UdiInvalid,
        K::CartridgeOverused => P::CartridgeOverused,
        K::DepthExceeded => P::DepthExceeded,
        K::DepthAboveAreaGuidance => P::DepthAboveAreaGuidance,
        K::ClockSkew => P::ClockSkew,
        K::DataGap => P::DataGap,
    }
}

/// The domain kind of a wire flag kind (`None` for UNSPECIFIED/unknown).
pub fn flag_kind_from_wire(k: i32) -> Option<pentrace_domain::FlagKind> {
    pentrace_domain::FlagKind::ALL
        .into_iter()
        .find(|d| flag_kind(*d) as i32 == k)
}

fn severity(s: pentrace_domain::Severity) -> pb::Severity {
    use pentrace_domain::Severity as S;
    match s {
        S::Info => pb::Severity::Info,
        S::Warning => pb::Severity::Warning,
        S::Major => pb::Severity::Major,
        S::Critical => pb::Severity::Critical,
    }
}

/// The wire enum of a flag state.
pub fn flag_state(s: store::FlagState) -> pb::FlagState {
    match s {
        store::FlagState::Open => pb::FlagState::Open,
        store::FlagState::Acknowledged => pb::FlagState::Acknowledged,
        store::FlagState::Resolved => pb::FlagState::Resolved,
    }
}

/// The store state of a wire flag state.
pub fn flag_state_from_wire(s: i32) -> Option<store::FlagState> {
    match pb::FlagState::try_from(s) {
        Ok(pb::FlagState::Open) => Some(store::FlagState::Open),
        Ok(pb::FlagState::Acknowledged) => Some(store::FlagState::Acknowledged),
        Ok(pb::FlagState::Resolved) => Some(store::FlagState::Resolved),
        _ => None,
    }
}

/// A stored flag on the wire.
pub fn flag(f: &store::FlagRecord) -> pb::Flag {
    pb::Flag {
        flag_id: f.id.to_string(),
        kind: flag_kind(f.kind) as i32,
        severity: severity(f.severity) as i32,
        state: flag_state(f.state) as i32,
        clinic_id: f.clinic_id.clone(),
        device_id: f.device_id.clone(),
        session_id: f.session_id.clone().unwrap_or_default(),
        cartridge_id: f.cartridge_id.clone().unwrap_or_default(),
        seq: f.seq,
        raised_at: Some(timestamp(f.raised_at)),
        detail: f.detail.clone(),
        evidence_json: f.evidence.to_string(),
    }
}

/// A stored session on the wire.
pub fn session(s: &store::SessionRecord) -> pb::Session {
    pb::Session {
        session_id: s.session_id.clone(),
        device_id: s.device_id.clone(),
        clinic_id: s.clinic_id.clone(),
        cartridge_id: s.cartridge_id.clone().unwrap_or_default(),
        udi: s.udi.clone(),
        gtin: s.gtin.clone().unwrap_or_default(),
        lot: s.lot.clone().unwrap_or_default(),
        expiry: s.expiry.map(|d| d.to_string()).unwrap_or_default(),
        area: area_to_wire(&s.area),
        operator_ref: s.operator_ref.clone(),
        patient_ref: s.patient_ref.clone().unwrap_or_default(),
        started_at: Some(timestamp(s.started_at)),
        ended_at: s.ended_at.map(timestamp),
        strokes: s.strokes,
        max_depth_um: s.max_depth_um,
        samples: s.samples,
    }
}

/// A `YYYY-MM-DD` date, or `None` for the empty string.
pub fn date(field: &str, s: &str) -> Result<Option<NaiveDate>, InvalidMessage> {
    if s.is_empty() {
        return Ok(None);
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(Some)
        .map_err(|_| invalid(format!("{field} {s:?} is not a YYYY-MM-DD date")))
}
