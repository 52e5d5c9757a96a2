//! The rows several statements of both dialects read, decoded into domain
//! values once: each dialect names its column types ([`Dialect`]), and a
//! row type here takes them as its parameter.

use std::fmt::Debug;

use chrono::{DateTime, NaiveDate, Utc};
use pentrace_domain::rules::SeqHole;
use pentrace_domain::{FlagKind, Severity};
use serde_json::Value;

use crate::dialect::Dialect;
use crate::shared::columns::{StoredId, StoredTime, opt_time};
use crate::{
    Device, DeviceStatus, FlagRecord, FlagState, QuarantineRecord, SessionRecord, StoreError,
    StoreResult,
};

/// A stored integer as the domain's unsigned type.
fn unsigned<T: TryFrom<i64>>(value: impl Into<i64>, what: &str) -> StoreResult<T> {
    let value = value.into();
    T::try_from(value).map_err(|_| corrupt(format!("{what} {value} is out of range")))
}

/// A value read from the database that the domain cannot hold.
fn corrupt(message: String) -> StoreError {
    StoreError::Other(sqlx::Error::Decode(message.into()))
}

/// Columns of `flags` that make a [`FlagRecord`].
pub(crate) const FLAG_COLUMNS: &str = "id, kind, severity, state, clinic_id, device_id, \
     session_id, cartridge_id, seq, raised_at, detail, evidence";

/// A `flags` row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct FlagRow<C: Dialect> {
    id: C::Id,
    kind: String,
    severity: String,
    state: String,
    clinic_id: String,
    device_id: String,
    session_id: Option<C::Id>,
    cartridge_id: Option<String>,
    seq: i64,
    raised_at: C::Time,
    detail: String,
    evidence: Value,
}

impl<C: Dialect> TryFrom<FlagRow<C>> for FlagRecord {
    type Error = StoreError;

    fn try_from(row: FlagRow<C>) -> StoreResult<FlagRecord> {
        let severity = match row.severity.as_str() {
            "info" => Severity::Info,
            "warning" => Severity::Warning,
            "major" => Severity::Major,
            "critical" => Severity::Critical,
            s => return Err(corrupt(format!("flag severity {s:?}"))),
        };
        Ok(FlagRecord {
            id: row.id.into_uuid(),
            kind: FlagKind::parse(&row.kind)
                .ok_or_else(|| corrupt(format!("flag kind {:?}", row.kind)))?,
            severity,
            state: FlagState::parse(&row.state)
                .ok_or_else(|| corrupt(format!("flag state {:?}", row.state)))?,
            clinic_id: row.clinic_id,
            device_id: row.device_id,
            session_id: row.session_id.map(StoredId::into_id),
            cartridge_id: row.cartridge_id,
            seq: unsigned(row.seq, "flag seq")?,
            raised_at: StoredTime::into_time(row.raised_at, "flag raised_at")?,
            detail: row.detail,
            evidence: row.evidence,
        })
    }
}

/// Converts fetched flag rows.
pub(crate) fn flag_records<C: Dialect>(rows: Vec<FlagRow<C>>) -> StoreResult<Vec<FlagRecord>> {
    rows.into_iter().map(FlagRecord::try_from).collect()
}

/// Columns of `sessions` that make a [`SessionRecord`].
pub(crate) const SESSION_COLUMNS: &str = "session_id, device_id, clinic_id, cartridge_id, udi, \
     gtin, lot, expiry, area, operator_ref, patient_ref, started_at, ended_at, strokes, \
     max_depth_um, samples, device_started_at, device_ended_at";

/// A `sessions` row as the query services see it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SessionRow<C: Dialect> {
    session_id: C::Id,
    device_id: String,
    clinic_id: String,
    cartridge_id: Option<String>,
    udi: String,
    gtin: Option<String>,
    lot: Option<String>,
    expiry: Option<NaiveDate>,
    area: String,
    operator_ref: String,
    patient_ref: Option<String>,
    started_at: C::Time,
    ended_at: Option<C::Time>,
    strokes: i64,
    max_depth_um: i32,
    samples: i64,
    device_started_at: Option<C::Time>,
    device_ended_at: Option<C::Time>,
}

impl<C: Dialect> TryFrom<SessionRow<C>> for SessionRecord {
    type Error = StoreError;

    fn try_from(row: SessionRow<C>) -> StoreResult<SessionRecord> {
        Ok(SessionRecord {
            session_id: row.session_id.into_id(),
            device_id: row.device_id,
            clinic_id: row.clinic_id,
            cartridge_id: row.cartridge_id,
            udi: row.udi,
            gtin: row.gtin,
            lot: row.lot,
            expiry: row.expiry,
            area: row.area,
            operator_ref: row.operator_ref,
            patient_ref: row.patient_ref,
            started_at: StoredTime::into_time(row.started_at, "session started_at")?,
            ended_at: opt_time(row.ended_at, "session ended_at")?,
            device_started_at: opt_time(row.device_started_at, "session device_started_at")?,
            device_ended_at: opt_time(row.device_ended_at, "session device_ended_at")?,
            strokes: unsigned(row.strokes, "session strokes")?,
            max_depth_um: unsigned(row.max_depth_um, "session max depth")?,
            samples: unsigned(row.samples, "session samples")?,
        })
    }
}

/// Converts fetched session rows.
pub(crate) fn session_records<C: Dialect>(
    rows: Vec<SessionRow<C>>,
) -> StoreResult<Vec<SessionRecord>> {
    rows.into_iter().map(SessionRecord::try_from).collect()
}

/// A device with its status aggregates; `online` is left to the engine.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DeviceStatusRow<C: Dialect> {
    id: String,
    clinic_id: String,
    model: String,
    max_depth_um: i32,
    last_seen: Option<C::Time>,
    battery_pct: Option<i32>,
    max_seq: i64,
    sessions_today: i64,
    strokes_today: i64,
    open_flags: i64,
}

impl<C: Dialect> TryFrom<DeviceStatusRow<C>> for DeviceStatus {
    type Error = StoreError;

    fn try_from(row: DeviceStatusRow<C>) -> StoreResult<DeviceStatus> {
        Ok(DeviceStatus {
            online: false,
            last_seen: opt_time(row.last_seen, "device last seen")?,
            battery_pct: row
                .battery_pct
                .map(|b| unsigned(b, "battery"))
                .transpose()?,
            sessions_today: unsigned(row.sessions_today, "sessions today")?,
            strokes_today: unsigned(row.strokes_today, "strokes today")?,
            open_flags: unsigned(row.open_flags, "open flags")?,
            last_seq: unsigned(row.max_seq, "device max seq")?,
            device: Device {
                id: row.id,
                clinic_id: row.clinic_id,
                model: row.model,
                max_depth_um: unsigned(row.max_depth_um, "device max depth")?,
            },
        })
    }
}

/// Columns of `quarantine` that make a [`QuarantineRecord`].
pub(crate) const QUARANTINE_COLUMNS: &str =
    "id, device_id, seq, transport, received_at, quarantined_at, error, payload";

/// A `quarantine` row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct QuarantinedRow<C: Dialect> {
    id: C::Id,
    device_id: String,
    seq: i64,
    transport: String,
    received_at: C::Time,
    quarantined_at: C::Time,
    error: String,
    payload: Vec<u8>,
}

impl<C: Dialect> TryFrom<QuarantinedRow<C>> for QuarantineRecord {
    type Error = StoreError;

    fn try_from(r: QuarantinedRow<C>) -> StoreResult<QuarantineRecord> {
        Ok(QuarantineRecord {
            id: r.id.into_uuid(),
            device_id: r.device_id,
            seq: unsigned(r.seq, "seq")?,
            transport: r.transport,
            received_at: StoredTime::into_time(r.received_at, "received_at")?,
            quarantined_at: StoredTime::into_time(r.quarantined_at, "quarantined_at")?,
            error: r.error,
            payload: r.payload,
        })
    }
}

/// An open hole (`device_id, first_seq, last_seq, detected_at`) with its
/// device's clinic.
pub(crate) type HoleRow<C> = (String, i64, i64, <C as Dialect>::Time, String);

pub(crate) fn hole<C: Dialect>(row: HoleRow<C>) -> StoreResult<(SeqHole, String)> {
    let (device_id, first, last, detected_at, clinic_id) = row;
    let hole = SeqHole {
        device_id,
        first: unsigned(first, "hole first seq")?,
        last: unsigned(last, "hole last seq")?,
        detected_at: StoredTime::into_time(detected_at, "hole detected_at")?,
    };
    Ok((hole, clinic_id))
}

/// A cartridge's binding: `(session_id, device_id, bound_at)`.
pub(crate) type BindingRow<C> = (<C as Dialect>::Id, String, <C as Dialect>::Time);

pub(crate) fn binding<C: Dialect>(
    (session, device, at): BindingRow<C>,
) -> StoreResult<(String, String, DateTime<Utc>)> {
    Ok((
        session.into_id(),
        device,
        StoredTime::into_time(at, "cartridge bound_at")?,
    ))
}
