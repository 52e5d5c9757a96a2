//! The column types whose encoding differs between the dialects, encoded
//! from and decoded into domain values once: times (`timestamptz` or integer microseconds
//! since the Unix epoch), ids (`uuid` or canonical text), dates (`date` or
//! `YYYY-MM-DD` text) and 32-bit integers (`integer` or SQLite's one
//! integer type). Values that do not fit the domain are corrupt rows.

use chrono::{DateTime, Utc};
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
    fn into_uuid(self) -> Uuid;
    /// The canonical text the domain uses.
    fn into_id(self) -> String {
        self.into_uuid().to_string()
    }
}

impl StoredId for Uuid {
    fn into_uuid(self) -> Uuid {
        self
    }
}

/// Canonical lowercase text, so `ABC…` and `abc…` name the same row, as
/// PostgreSQL's `uuid` does; a stored id that is not a UUID is a corrupt
/// row.
impl StoredId for Hyphenated {
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
