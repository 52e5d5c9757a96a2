//! Between the wire (protobuf) and the domain. Device input is checked
//! here, so everything past this point can trust its shape.
//!
//! Only what cannot be attributed to a device is refused
//! (docs/architecture.md, "Delivery"): a device id that is empty, too long
//! or unusable in an MQTT topic, a seq that cannot be an idempotency key, a
//! message without a body. Everything else is made storable and kept: bad
//! content is stored and flagged by the rules, never a reason to lose a
//! session and its samples.
//!
//! What is substituted (the list the docs carry):
//! - a missing or out-of-range device time (outside
//!   [`pentrace_domain::time::DEVICE_TIME_MIN`]`..=`[`DEVICE_TIME_MAX`], or
//!   nanos outside `0..1e9`): `sent_at` becomes the receive time, a session's
//!   `started_at`, a batch's `started_at` and a session end's `ended_at`
//!   become the (substituted) `sent_at`; each recorded in
//!   `DeviceMessage::time_faults`, which raises `CLOCK_SKEW`;
//! - control characters in text (NUL, which PostgreSQL cannot store, among
//!   them) become U+FFFD, except GS inside a UDI; a UDI so changed fails to
//!   parse and is flagged `UDI_INVALID`;
//! - text over [`MAX_TEXT`] bytes is cut at a character boundary and ends in
//!   U+FFFD;
//! - a session id that is not a UUID (or a missing session context) becomes
//!   a UUID derived from device id and raw id, the raw id kept in
//!   `SessionContext::raw_session_id` (and in the session's flag evidence);
//! - a missing session context becomes an empty one (no cartridge: flagged
//!   `UDI_INVALID`);
//! - an unknown enum value is kept as `Unknown(n)`;
//! - a battery level above 100 becomes 100.
//!
//! [`DEVICE_TIME_MAX`]: pentrace_domain::time::DEVICE_TIME_MAX

use chrono::{DateTime, NaiveDate, Utc};
use pentrace_domain::message::{
    Body, CartridgeRef, DeviceMessage, EndReason, Heartbeat, SessionContext, SessionEnd,
    SessionStart, SkinThickness, StrokeBatch, StrokeSample, TimeFault, TimeField, TreatmentArea,
    WireTime, derived_session_id,
};
use pentrace_domain::time;
use pentrace_proto::v1 as pb;
use pentrace_store as store;
use prost_types::Timestamp;

/// Longest device id accepted, in bytes (docs/architecture.md, "Wire protocol").
pub const MAX_DEVICE_ID: usize = 64;
/// Longest free-text field (or raw session id) stored, in bytes; longer
/// text is cut.
pub const MAX_TEXT: usize = 256;

/// GS (ASCII 29), the separator of raw GS1 element strings.
const GS: char = '\u{1d}';
/// What a control character (or a cut) is replaced with.
const REPLACEMENT: char = '\u{fffd}';

/// Why a device message was refused before ingest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidMessage(pub String);

fn invalid(what: impl Into<String>) -> InvalidMessage {
    InvalidMessage(what.into())
}

/// A wire message as the domain sees it, received at `received_at` (server
/// clock), or why it cannot be attributed to a device and is refused.
pub fn device_message(
    m: pb::DeviceMessage,
    received_at: DateTime<Utc>,
) -> Result<DeviceMessage, InvalidMessage> {
    check_device_id(&m.device_id)?;
    let device_id = m.device_id;
    if m.seq == 0 {
        return Err(invalid(format!(
            "seq of device {device_id} is 0; seqs start at 1"
        )));
    }
    if i64::try_from(m.seq).is_err() {
        return Err(invalid(format!(
            "seq {} of device {device_id} is above {}: it cannot be stored as an idempotency key",
            m.seq,
            i64::MAX
        )));
    }
    let body = m.body.ok_or_else(|| invalid("message has no body"))?;
    let mut times = Times::default();
    let sent_at = times.device(TimeField::SentAt, m.sent_at, received_at);
    let context = |c, times: &mut Times| session_context(&device_id, c, sent_at, times);
    let body = match body {
        pb::device_message::Body::SessionStart(s) => Body::SessionStart(SessionStart {
            session: context(s.session, &mut times),
            operator_ref: text(s.operator_ref),
            firmware: text(s.firmware),
        }),
        pb::device_message::Body::StrokeBatch(b) => Body::StrokeBatch(StrokeBatch {
            session: context(b.session, &mut times),
            started_at: times.device(TimeField::BatchStartedAt, b.started_at, sent_at),
            samples: b.samples.iter().map(sample).collect(),
        }),
        pb::device_message::Body::SessionEnd(e) => Body::SessionEnd(SessionEnd {
            session: context(e.session, &mut times),
            ended_at: times.device(TimeField::SessionEndedAt, e.ended_at, sent_at),
            total_strokes: e.total_strokes,
            reason: end_reason(e.reason),
        }),
        pb::device_message::Body::Heartbeat(h) => Body::Heartbeat(Heartbeat {
            battery_pct: h.battery_pct.min(100),
            firmware: text(h.firmware),
        }),
    };
    Ok(DeviceMessage {
        device_id,
        seq: m.seq,
        sent_at,
        body,
        time_faults: times.faults,
    })
}

/// The device id names the device in MQTT topics, metrics and every row: it
/// must be usable as one topic level and as a key.
pub fn check_device_id(id: &str) -> Result<(), InvalidMessage> {
    if id.is_empty() {
        return Err(invalid("device_id is empty"));
    }
    if id.len() > MAX_DEVICE_ID {
        return Err(invalid(format!(
            "device_id is {} bytes; at most {MAX_DEVICE_ID}",
            id.len()
        )));
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(invalid(format!(
            "device_id contains control character U+{:04X}",
            u32::from(c)
        )));
    }
    if let Some(c) = id.chars().find(|c| matches!(c, '/' | '+' | '#')) {
        return Err(invalid(format!(
            "device_id contains {c:?}, which MQTT topics reserve (/ + #)"
        )));
    }
    Ok(())
}

/// The device times of one message, and those that had to be replaced.
#[derive(Default)]
struct Times {
    faults: Vec<TimeFault>,
}

impl Times {
    /// The wire time when it is present and in the accepted device range;
    /// otherwise `fallback`, recorded as a fault.
    fn device(
        &mut self,
        field: TimeField,
        t: Option<Timestamp>,
        fallback: DateTime<Utc>,
    ) -> DateTime<Utc> {
        let raw = t.map(|t| WireTime {
            seconds: t.seconds,
            nanos: t.nanos,
        });
        if let Some(at) = raw.and_then(|w| time::device_time(w.seconds, w.nanos)) {
            return at;
        }
        self.faults.push(TimeFault {
            field,
            raw,
            used: fallback,
        });
        fallback
    }
}

fn sample(s: &pb::StrokeSample) -> StrokeSample {
    StrokeSample {
        offset_ms: s.offset_ms,
        strokes: s.strokes,
        depth_um: s.depth_um,
        speed_hz: s.speed_hz,
    }
}

/// The session context; a missing one is empty (its cartridge is then
/// flagged as unidentifiable), its times default to `sent_at`.
fn session_context(
    device_id: &str,
    c: Option<pb::SessionContext>,
    sent_at: DateTime<Utc>,
    times: &mut Times,
) -> SessionContext {
    let c = c.unwrap_or_default();
    let (session_id, raw_session_id) = match uuid::Uuid::parse_str(&c.session_id) {
        Ok(id) => (id.to_string(), None),
        Err(_) => (
            derived_session_id(device_id, &c.session_id),
            Some(text(c.session_id)),
        ),
    };
    let cartridge = c.cartridge.unwrap_or_default();
    let patient_ref = text(c.patient_ref);
    SessionContext {
        session_id,
        raw_session_id,
        cartridge: CartridgeRef {
            udi: clean(cartridge.udi, true),
            chip_uid: text(cartridge.chip_uid),
        },
        area: area(c.area),
        skin: skin(c.skin),
        patient_ref: Some(patient_ref).filter(|p| !p.is_empty()),
        started_at: times.device(TimeField::SessionStartedAt, c.started_at, sent_at),
    }
}

/// Free text from a device, as stored: see [`clean`].
fn text(s: String) -> String {
    clean(s, false)
}

/// Control characters (NUL, which PostgreSQL cannot store, among them)
/// replaced with U+FFFD, except GS when `keep_gs` (it separates a raw UDI's
/// elements); then cut to at most [`MAX_TEXT`] bytes at a character
/// boundary, the cut marked with U+FFFD (so a cut UDI never parses as a
/// different, valid one).
fn clean(s: String, keep_gs: bool) -> String {
    let bad = |c: char| c.is_control() && !(keep_gs && c == GS);
    let mut s = if s.chars().any(bad) {
        s.chars()
            .map(|c| if bad(c) { REPLACEMENT } else { c })
            .collect()
    } else {
        s
    };
    if s.len() > MAX_TEXT {
        let limit = MAX_TEXT - REPLACEMENT.len_utf8();
        let end = (0..=limit)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        s.truncate(end);
        s.push(REPLACEMENT);
    }
    s
}

/// A domain time on the wire.
pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// Earliest time a query may name: 0001-01-01T00:00:00Z.
pub const QUERY_TIME_MIN: DateTime<Utc> = from_seconds(-62_135_596_800);
/// First time past what a query may name: 10000-01-01T00:00:00Z. Both
/// stores hold every time before (PostgreSQL's `timestamptz` fails beyond
/// year 294276: an internal error instead of a refusal).
pub const QUERY_TIME_END: DateTime<Utc> = from_seconds(253_402_300_800);

const fn from_seconds(seconds: i64) -> DateTime<Utc> {
    match DateTime::from_timestamp(seconds, 0) {
        Some(t) => t,
        // Evaluated at compile time: a wrong constant does not build.
        None => panic!("query time bound out of chrono's range"),
    }
}

/// A period bound of a query (unset = open). A time that is not one
/// (nanos outside `0..1e9`) or outside [`QUERY_TIME_MIN`]`..`
/// [`QUERY_TIME_END`] is refused, naming the field: dropping it would
/// answer for another period than the one asked.
pub fn query_time(
    field: &str,
    t: Option<Timestamp>,
) -> Result<Option<DateTime<Utc>>, InvalidMessage> {
    let Some(t) = t else { return Ok(None) };
    u32::try_from(t.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .and_then(|n| DateTime::from_timestamp(t.seconds, n))
        .filter(|at| (QUERY_TIME_MIN..QUERY_TIME_END).contains(at))
        .map(Some)
        .ok_or_else(|| {
            invalid(format!(
                "{field} (seconds {}, nanos {}) is not a time from 0001-01-01 to 9999-12-31 \
                 with nanos 0-999999999",
                t.seconds, t.nanos
            ))
        })
}

fn area(a: i32) -> TreatmentArea {
    use pb::TreatmentArea as P;
    match P::try_from(a) {
        Ok(P::Unspecified) => TreatmentArea::Unspecified,
        Ok(P::Forehead) => TreatmentArea::Forehead,
        Ok(P::Nose) => TreatmentArea::Nose,
        Ok(P::Periorbital) => TreatmentArea::Periorbital,
        Ok(P::Cheeks) => TreatmentArea::Cheeks,
        Ok(P::UpperLip) => TreatmentArea::UpperLip,
        Ok(P::Scars) => TreatmentArea::Scars,
        Ok(P::StretchMarks) => TreatmentArea::StretchMarks,
        Ok(P::Scalp) => TreatmentArea::Scalp,
        Err(_) => TreatmentArea::Unknown(a),
    }
}

/// A stored area name on the wire; an unknown area keeps its number.
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
        TreatmentArea::Unknown(n) => return n,
    };
    p as i32
}

/// UNSPECIFIED is judged as thin (the conservative bound), as the protocol says.
fn skin(s: i32) -> SkinThickness {
    match pb::SkinThickness::try_from(s) {
        Ok(pb::SkinThickness::Unspecified | pb::SkinThickness::Thin) => SkinThickness::Thin,
        Ok(pb::SkinThickness::Thick) => SkinThickness::Thick,
        Err(_) => SkinThickness::Unknown(s),
    }
}

fn end_reason(r: i32) -> EndReason {
    match pb::EndReason::try_from(r) {
        Ok(pb::EndReason::Unspecified) => EndReason::Unspecified,
        Ok(pb::EndReason::Completed) => EndReason::Completed,
        Ok(pb::EndReason::Aborted) => EndReason::Aborted,
        Ok(pb::EndReason::CartridgeRejected) => EndReason::CartridgeRejected,
        Ok(pb::EndReason::LowBattery) => EndReason::LowBattery,
        Err(_) => EndReason::Unknown(r),
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
        device_started_at: s.device_started_at.map(timestamp),
        device_ended_at: s.device_ended_at.map(timestamp),
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

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
