//! Conversions between domain values and column values, and the row types
//! several queries share.
//!
//! PostgreSQL has no unsigned integers: domain `u64`/`u32` values go into
//! `bigint`/`integer` columns (with `>= 0` checks). Conversions never wrap:
//! a value that does not fit is an invalid request on the way in, and a
//! corrupt row on the way out.

use chrono::{DateTime, NaiveDate, Utc};
use pentrace_domain::rules::CartridgeRelation;
use pentrace_domain::{FlagKind, Severity};
use uuid::Uuid;

use crate::{FlagRecord, FlagState, SessionRecord, StoreError, StoreResult};

/// `u64` → `bigint`.
pub(super) fn to_i64(value: u64, what: &str) -> StoreResult<i64> {
    i64::try_from(value).map_err(|_| StoreError::Invalid(format!("{what} {value} is too large")))
}

/// `u32` → `integer`.
pub(super) fn to_i32(value: u32, what: &str) -> StoreResult<i32> {
    i32::try_from(value).map_err(|_| StoreError::Invalid(format!("{what} {value} is too large")))
}

/// `bigint` → `u64`.
pub(super) fn from_i64(value: i64, what: &str) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| corrupt(format!("{what} {value} is negative")))
}

/// `integer` → `u32`.
pub(super) fn from_i32(value: i32, what: &str) -> StoreResult<u32> {
    u32::try_from(value).map_err(|_| corrupt(format!("{what} {value} is negative")))
}

/// A count (`bigint`) → `u32`.
pub(super) fn count_u32(value: i64, what: &str) -> StoreResult<u32> {
    u32::try_from(value).map_err(|_| corrupt(format!("{what} {value} is out of range")))
}

/// A session id as the pipeline sends it → `uuid`.
pub(super) fn parse_uuid(value: &str, what: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(value).map_err(|e| StoreError::Invalid(format!("{what} {value:?}: {e}")))
}

/// An optional id → `uuid`.
pub(super) fn parse_opt_uuid(value: Option<&str>, what: &str) -> StoreResult<Option<Uuid>> {
    value.map(|v| parse_uuid(v, what)).transpose()
}

/// A value read from the database that the domain cannot hold.
pub(super) fn corrupt(message: String) -> StoreError {
    StoreError::Other(sqlx::Error::Decode(message.into()))
}

/// `CartridgeRelation` → `(relation, owner_session_id)` columns.
pub(super) fn relation_columns(
    relation: &CartridgeRelation,
) -> StoreResult<(&'static str, Option<Uuid>)> {
    Ok(match relation {
        CartridgeRelation::Owner => ("owner", None),
        CartridgeRelation::Unidentified => ("unidentified", None),
        CartridgeRelation::Resumed { owner_session_id } => (
            "resumed",
            Some(parse_uuid(owner_session_id, "owner session id")?),
        ),
        CartridgeRelation::Reused { owner_session_id } => (
            "reused",
            Some(parse_uuid(owner_session_id, "owner session id")?),
        ),
    })
}

/// Stored severity name → `Severity` (the domain has no parser for it).
fn severity_from(name: &str) -> StoreResult<Severity> {
    match name {
        "info" => Ok(Severity::Info),
        "warning" => Ok(Severity::Warning),
        "major" => Ok(Severity::Major),
        "critical" => Ok(Severity::Critical),
        _ => Err(corrupt(format!("flag severity {name:?}"))),
    }
}

/// Columns of `flags` that make a [`FlagRecord`], in [`FlagRow`] order.
pub(super) const FLAG_COLUMNS: &str = "id, kind, severity, state, clinic_id, device_id, \
     session_id, cartridge_id, seq, raised_at, detail, evidence";

/// A `flags` row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct FlagRow {
    id: Uuid,
    kind: String,
    severity: String,
    state: String,
    clinic_id: String,
    device_id: String,
    session_id: Option<Uuid>,
    cartridge_id: Option<String>,
    seq: i64,
    raised_at: DateTime<Utc>,
    detail: String,
    evidence: serde_json::Value,
}

impl TryFrom<FlagRow> for FlagRecord {
    type Error = StoreError;

    fn try_from(row: FlagRow) -> StoreResult<FlagRecord> {
        Ok(FlagRecord {
            id: row.id,
            kind: FlagKind::parse(&row.kind)
                .ok_or_else(|| corrupt(format!("flag kind {:?}", row.kind)))?,
            severity: severity_from(&row.severity)?,
            state: FlagState::parse(&row.state)
                .ok_or_else(|| corrupt(format!("flag state {:?}", row.state)))?,
            clinic_id: row.clinic_id,
            device_id: row.device_id,
            session_id: row.session_id.map(|s| s.to_string()),
            cartridge_id: row.cartridge_id,
            seq: from_i64(row.seq, "flag seq")?,
            raised_at: row.raised_at,
            detail: row.detail,
            evidence: row.evidence,
        })
    }
}

/// Converts fetched flag rows.
pub(super) fn flag_records(rows: Vec<FlagRow>) -> StoreResult<Vec<FlagRecord>> {
    rows.into_iter().map(FlagRecord::try_from).collect()
}

/// Columns of `sessions` that make a [`SessionRecord`], in [`SessionRow`]
/// order.
pub(super) const SESSION_COLUMNS: &str = "session_id, device_id, clinic_id, cartridge_id, udi, \
     gtin, lot, expiry, area, operator_ref, patient_ref, started_at, ended_at, strokes, \
     max_depth_um, samples, device_started_at, device_ended_at";

/// A `sessions` row as the query services see it.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct SessionRow {
    session_id: Uuid,
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
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    strokes: i64,
    max_depth_um: i32,
    samples: i64,
    device_started_at: Option<DateTime<Utc>>,
    device_ended_at: Option<DateTime<Utc>>,
}

impl TryFrom<SessionRow> for SessionRecord {
    type Error = StoreError;

    fn try_from(row: SessionRow) -> StoreResult<SessionRecord> {
        Ok(SessionRecord {
            session_id: row.session_id.to_string(),
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
            started_at: row.started_at,
            ended_at: row.ended_at,
            device_started_at: row.device_started_at,
            device_ended_at: row.device_ended_at,
            strokes: from_i64(row.strokes, "session strokes")?,
            max_depth_um: from_i32(row.max_depth_um, "session max depth")?,
            samples: from_i64(row.samples, "session samples")?,
        })
    }
}

/// Converts fetched session rows.
pub(super) fn session_records(rows: Vec<SessionRow>) -> StoreResult<Vec<SessionRecord>> {
    rows.into_iter().map(SessionRecord::try_from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_values_never_wrap() {
        assert!(matches!(
            to_i64(u64::MAX, "seq"),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            to_i32(u32::MAX, "depth"),
            Err(StoreError::Invalid(_))
        ));
        assert!(from_i64(-1, "seq").is_err());
        assert_eq!(to_i64(42, "seq").ok(), Some(42));
    }

    #[test]
    fn relations_round_trip() {
        let owner = Uuid::new_v4().to_string();
        for relation in [
            CartridgeRelation::Owner,
            CartridgeRelation::Unidentified,
            CartridgeRelation::Resumed {
                owner_session_id: owner.clone(),
            },
            CartridgeRelation::Reused {
                owner_session_id: owner.clone(),
            },
        ] {
            let (name, id) = relation_columns(&relation).ok().unzip();
            let back = crate::shared::relation_from(
                name.unwrap_or_default(),
                id.flatten().map(|u| u.to_string()),
            );
            assert_eq!(back.ok(), Some(relation));
        }
    }

    #[test]
    fn a_bad_session_id_is_invalid() {
        assert!(matches!(
            parse_uuid("not-a-uuid", "session id"),
            Err(StoreError::Invalid(_))
        ));
    }
}
