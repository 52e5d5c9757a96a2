//! Conversions between domain values and SQLite column values, and the row
//! types several queries share.
//!
//! SQLite integers are `i64`. Domain `u64`/`u32` values are checked against
//! the ranges of PostgreSQL's `bigint`/`integer` columns, so both stores
//! refuse exactly the same values (an invalid request on the way in, a
//! corrupt row on the way out). Times are microseconds since the Unix epoch;
//! UUIDs are canonical lowercase text.

use chrono::{DateTime, Utc};
use pentrace_domain::rules::CartridgeRelation;
use uuid::Uuid;

use super::SqliteStore;
use crate::shared::rows;
pub(super) use crate::shared::rows::FLAG_COLUMNS;
use crate::{StoreError, StoreResult};

/// A time as stored: microseconds since 1970-01-01 UTC (finer digits are
/// dropped, as PostgreSQL drops them).
pub(super) fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

/// A stored time back to a `DateTime`.
pub(super) fn time(micros: i64, what: &str) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| corrupt(format!("{what} {micros} µs is out of range")))
}

/// An optional stored time.
pub(super) fn opt_time(micros: Option<i64>, what: &str) -> StoreResult<Option<DateTime<Utc>>> {
    micros.map(|m| time(m, what)).transpose()
}

/// `u64` → INTEGER, within PostgreSQL's `bigint`.
pub(super) fn to_int8(value: u64, what: &str) -> StoreResult<i64> {
    i64::try_from(value).map_err(|_| StoreError::Invalid(format!("{what} {value} is too large")))
}

/// `u32` → INTEGER, within PostgreSQL's `integer`.
pub(super) fn to_int4(value: u32, what: &str) -> StoreResult<i64> {
    i32::try_from(value)
        .map(i64::from)
        .map_err(|_| StoreError::Invalid(format!("{what} {value} is too large")))
}

/// INTEGER → `u64`.
pub(super) fn to_u64(value: i64, what: &str) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| corrupt(format!("{what} {value} is negative")))
}

/// An id as a caller sends it → the canonical lowercase text stored, so
/// `ABC…` and `abc…` name the same session, as PostgreSQL's `uuid` does.
pub(super) fn uuid_text(value: &str, what: &str) -> StoreResult<String> {
    Uuid::parse_str(value)
        .map(|u| u.to_string())
        .map_err(|e| StoreError::Invalid(format!("{what} {value:?}: {e}")))
}

/// An optional id → canonical text.
pub(super) fn opt_uuid_text(value: Option<&str>, what: &str) -> StoreResult<Option<String>> {
    value.map(|v| uuid_text(v, what)).transpose()
}

/// A stored id back to a `Uuid`.
pub(super) fn stored_uuid(value: &str, what: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(value).map_err(|e| corrupt(format!("{what} {value:?}: {e}")))
}

/// A value read from the database that the domain cannot hold.
pub(super) fn corrupt(message: String) -> StoreError {
    StoreError::Other(sqlx::Error::Decode(message.into()))
}

/// `CartridgeRelation` → `(relation, owner_session_id)` columns.
pub(super) fn relation_columns(
    relation: &CartridgeRelation,
) -> StoreResult<(&'static str, Option<String>)> {
    let owner = |id: &str| uuid_text(id, "owner session id").map(Some);
    Ok(match relation {
        CartridgeRelation::Owner => ("owner", None),
        CartridgeRelation::Unidentified => ("unidentified", None),
        CartridgeRelation::Resumed { owner_session_id } => ("resumed", owner(owner_session_id)?),
        CartridgeRelation::Reused { owner_session_id } => ("reused", owner(owner_session_id)?),
    })
}

/// A `flags` row.
pub(super) type FlagRow = rows::FlagRow<SqliteStore>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_at_microseconds() {
        let at = DateTime::from_timestamp(1_740_819_600, 123_456_789).unwrap_or_default();
        let back = time(micros(at), "t").ok();
        assert_eq!(
            back,
            DateTime::from_timestamp(1_740_819_600, 123_456_000),
            "nanoseconds are dropped, microseconds kept"
        );
        assert!(time(i64::MAX, "t").is_err());
    }

    #[test]
    fn values_outside_postgres_ranges_are_refused() {
        assert!(matches!(
            to_int8(u64::MAX, "seq"),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            to_int4(u32::MAX, "depth"),
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(to_int4(2000, "depth").ok(), Some(2000));
        assert!(to_u64(-1, "seq").is_err());
    }

    #[test]
    fn ids_are_stored_in_canonical_form() {
        let id = "6F1C1F9E-3C1B-4A53-9D53-0E8A3F0F7A11";
        assert_eq!(
            uuid_text(id, "session id").ok().as_deref(),
            Some("6f1c1f9e-3c1b-4a53-9d53-0e8a3f0f7a11")
        );
        assert!(matches!(
            uuid_text("nope", "session id"),
            Err(StoreError::Invalid(_))
        ));
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
            let back = relation_columns(&relation)
                .and_then(|(name, owner)| crate::shared::relation_from(name, owner))
                .ok();
            assert_eq!(back, Some(relation));
        }
    }
}
