//! The column types whose encoding differs between the dialects, encoded
//! from and decoded into domain values once: times (`timestamptz` or integer microseconds
//! since the Unix epoch), ids (`uuid` or canonical text), dates (`date` or
//! `YYYY-MM-DD` text) and 32-bit integers (`integer` or SQLite's one
//! integer type). Values that do not fit the domain are corrupt rows.

use chrono::{DateTime, Utc};
use pentrace_domain::rules::CartridgeRelation;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::corrupt;
use crate::{StoreError, StoreResult};

/// A dialect's time column.
pub(crate) trait StoredTime: Send + Sized + std::fmt::Debug {
    fn from_time(at: DateTime<Utc>) -> Self;
    fn into_time(self, what: &str) -> StoreResult<DateTime<Utc>>;
}

impl StoredTime for DateTime<Utc> {
    fn from_time(at: DateTime<Utc>) -> Self {
        at
    }

    fn into_time(self, _: &str) -> StoreResult<DateTime<Utc>> {
        Ok(self)
    }
}

/// Finer digits than microseconds are dropped, as PostgreSQL drops them.
impl StoredTime for i64 {
    fn from_time(at: DateTime<Utc>) -> Self {
        at.timestamp_micros()
    }

    fn into_time(self, what: &str) -> StoreResult<DateTime<Utc>> {
        DateTime::from_timestamp_micros(self)
            .ok_or_else(|| corrupt(format!("{what} {self} µs is out of range")))
    }
}

/// An optional time column.
pub(crate) fn opt_time<T: StoredTime>(
    value: Option<T>,
    what: &str,
) -> StoreResult<Option<DateTime<Utc>>> {
    value.map(|t| t.into_time(what)).transpose()
}

/// A dialect's id column, read as the canonical lowercase text the domain
/// uses.
pub(crate) trait StoredId: Send + Sized + std::fmt::Debug {
    /// An id as a caller sends it; `Invalid` when it is not a UUID.
    fn from_id(id: &str, what: &str) -> StoreResult<Self>;
    fn from_uuid(id: Uuid) -> Self;
    fn into_uuid(self) -> Uuid;
    /// The canonical text the domain uses.
    fn into_id(self) -> String {
        self.into_uuid().to_string()
    }
}

impl StoredId for Uuid {
    fn from_uuid(id: Uuid) -> Self {
        id
    }

    fn from_id(id: &str, what: &str) -> StoreResult<Self> {
        Uuid::parse_str(id).map_err(|e| StoreError::Invalid(format!("{what} {id:?}: {e}")))
    }

    fn into_uuid(self) -> Uuid {
        self
    }
}

/// Canonical lowercase text, so `ABC…` and `abc…` name the same row, as
/// PostgreSQL's `uuid` does; a stored id that is not a UUID is a corrupt
/// row.
impl StoredId for Hyphenated {
    fn from_uuid(id: Uuid) -> Self {
        id.hyphenated()
    }

    fn from_id(id: &str, what: &str) -> StoreResult<Self> {
        Uuid::from_id(id, what).map(Uuid::hyphenated)
    }

    fn into_uuid(self) -> Uuid {
        self.into_uuid()
    }
}

/// A dialect's integer column (PostgreSQL's `integer` or `bigint`, SQLite's
/// INTEGER), read into the domain's unsigned types.
pub(crate) trait StoredInt: Send + Copy + std::fmt::Display {
    fn into_i64(self) -> i64;

    fn into_u32(self, what: &str) -> StoreResult<u32> {
        u32::try_from(self.into_i64())
            .map_err(|_| corrupt(format!("{what} {self} is out of range")))
    }

    fn into_u64(self, what: &str) -> StoreResult<u64> {
        u64::try_from(self.into_i64()).map_err(|_| corrupt(format!("{what} {self} is negative")))
    }
}

impl StoredInt for i32 {
    fn into_i64(self) -> i64 {
        i64::from(self)
    }
}

impl StoredInt for i64 {
    fn into_i64(self) -> i64 {
        self
    }
}

/// `u32` → `integer`; `Invalid` beyond its range, so both stores refuse
/// the same values.
pub(crate) fn int4(value: u32, what: &str) -> StoreResult<i32> {
    i32::try_from(value).map_err(|_| too_large(value, what))
}

/// `u64` → `bigint`; `Invalid` when it does not fit.
pub(crate) fn int8(value: u64, what: &str) -> StoreResult<i64> {
    i64::try_from(value).map_err(|_| too_large(value, what))
}

fn too_large(value: impl std::fmt::Display, what: &str) -> StoreError {
    StoreError::Invalid(format!("{what} {value} is too large"))
}

/// An optional id as the database stores it.
pub(crate) fn opt_id<I: StoredId>(id: Option<&str>, what: &str) -> StoreResult<Option<I>> {
    id.map(|id| I::from_id(id, what)).transpose()
}

/// An id as a caller sends it, in the canonical text SQLite stores.
pub(crate) fn id_text(id: &str, what: &str) -> StoreResult<String> {
    Uuid::from_id(id, what).map(|u| u.to_string())
}

/// A stored id (text) back to a `Uuid`; a corrupt row when it is not one.
pub(crate) fn stored_uuid(id: &str, what: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(id).map_err(|e| corrupt(format!("{what} {id:?}: {e}")))
}

/// A time as SQLite stores it: microseconds since 1970-01-01 UTC.
pub(crate) fn micros(at: DateTime<Utc>) -> i64 {
    i64::from_time(at)
}

/// `CartridgeRelation` → `(relation, owner_session_id)` columns.
pub(crate) fn relation_columns<I: StoredId>(
    relation: &CartridgeRelation,
) -> StoreResult<(&'static str, Option<I>)> {
    let owner = |id: &str| I::from_id(id, "owner session id").map(Some);
    Ok(match relation {
        CartridgeRelation::Owner => ("owner", None),
        CartridgeRelation::Unidentified => ("unidentified", None),
        CartridgeRelation::Resumed { owner_session_id } => ("resumed", owner(owner_session_id)?),
        CartridgeRelation::Reused { owner_session_id } => ("reused", owner(owner_session_id)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::relation_from;

    #[test]
    fn unsigned_values_never_wrap() {
        assert!(matches!(int8(u64::MAX, "seq"), Err(StoreError::Invalid(_))));
        assert!(matches!(
            int4(u32::MAX, "depth"),
            Err(StoreError::Invalid(_))
        ));
        assert!((-1i64).into_u64("seq").is_err());
        assert_eq!(int8(42, "seq").ok(), Some(42));
    }

    #[test]
    fn times_round_trip_at_microseconds() {
        let at = DateTime::from_timestamp(1_740_819_600, 123_456_789).unwrap_or_default();
        assert_eq!(
            micros(at).into_time("t").ok(),
            DateTime::from_timestamp(1_740_819_600, 123_456_000),
            "nanoseconds are dropped, microseconds kept"
        );
        assert!(i64::MAX.into_time("t").is_err());
    }

    #[test]
    fn ids_are_stored_in_canonical_form() {
        let id = "6F1C1F9E-3C1B-4A53-9D53-0E8A3F0F7A11";
        let stored = Hyphenated::from_id(id, "session id").map(StoredId::into_id);
        assert_eq!(
            stored.ok().as_deref(),
            Some("6f1c1f9e-3c1b-4a53-9d53-0e8a3f0f7a11")
        );
        assert!(matches!(
            Uuid::from_id("nope", "session id"),
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
            let back = relation_columns::<Hyphenated>(&relation)
                .and_then(|(name, owner)| relation_from(name, owner.map(StoredId::into_id)));
            assert_eq!(back.ok(), Some(relation));
        }
    }
}
