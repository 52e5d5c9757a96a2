//! The column types whose encoding differs between the dialects, encoded
//! from and decoded into domain values once: times (`timestamptz` or integer microseconds
//! since the Unix epoch), ids (`uuid` or canonical text), dates (`date` or
//! `YYYY-MM-DD` text) and 32-bit integers (`integer` or SQLite's one
//! integer type). Values that do not fit the domain are corrupt rows.

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use super::corrupt;
use crate::{StoreError, StoreResult};

/// A dialect's time column.
pub(crate) trait StoredTime: Send + Sized {
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
pub(crate) trait StoredId: Send + Sized {
    /// An id as a caller sends it; `Invalid` when it is not a UUID.
    fn from_id(id: &str, what: &str) -> StoreResult<Self>;
    fn into_id(self) -> String;
}

impl StoredId for Uuid {
    fn from_id(id: &str, what: &str) -> StoreResult<Self> {
        Uuid::parse_str(id).map_err(|e| StoreError::Invalid(format!("{what} {id:?}: {e}")))
    }

    fn into_id(self) -> String {
        self.to_string()
    }
}

/// Canonical lowercase text, so `ABC…` and `abc…` name the same row, as
/// PostgreSQL's `uuid` does.
impl StoredId for String {
    fn from_id(id: &str, what: &str) -> StoreResult<Self> {
        Uuid::from_id(id, what).map(|u| u.to_string())
    }

    fn into_id(self) -> String {
        self
    }
}

/// A dialect's date column.
pub(crate) trait StoredDate: Send + Sized {
    fn from_date(day: NaiveDate) -> Self;
    fn into_date(self, what: &str) -> StoreResult<NaiveDate>;
}

impl StoredDate for NaiveDate {
    fn from_date(day: NaiveDate) -> Self {
        day
    }

    fn into_date(self, _: &str) -> StoreResult<NaiveDate> {
        Ok(self)
    }
}

impl StoredDate for String {
    fn from_date(day: NaiveDate) -> Self {
        day.format("%Y-%m-%d").to_string()
    }

    fn into_date(self, what: &str) -> StoreResult<NaiveDate> {
        NaiveDate::parse_from_str(&self, "%Y-%m-%d")
            .map_err(|e| corrupt(format!("{what} {self:?}: {e}")))
    }
}

/// An optional date column.
pub(crate) fn opt_date<T: StoredDate>(
    value: Option<T>,
    what: &str,
) -> StoreResult<Option<NaiveDate>> {
    value.map(|d| d.into_date(what)).transpose()
}

/// A dialect's integer column (PostgreSQL's `integer` or `bigint`, SQLite's
/// INTEGER), read into the domain's unsigned types.
pub(crate) trait StoredInt: Send + Copy + std::fmt::Display {
    /// `Invalid` beyond PostgreSQL's `integer`, so both stores refuse the
    /// same values.
    fn from_u32(value: u32, what: &str) -> StoreResult<Self>;
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
    fn from_u32(value: u32, what: &str) -> StoreResult<Self> {
        i32::try_from(value).map_err(|_| too_large(value, what))
    }

    fn into_i64(self) -> i64 {
        i64::from(self)
    }
}

impl StoredInt for i64 {
    fn from_u32(value: u32, what: &str) -> StoreResult<Self> {
        i32::from_u32(value, what).map(i64::from)
    }

    fn into_i64(self) -> i64 {
        self
    }
}

/// `u64` → `bigint`; `Invalid` when it does not fit.
pub(crate) fn int8(value: u64, what: &str) -> StoreResult<i64> {
    i64::try_from(value).map_err(|_| too_large(value, what))
}

fn too_large(value: impl std::fmt::Display, what: &str) -> StoreError {
    StoreError::Invalid(format!("{what} {value} is too large"))
}
