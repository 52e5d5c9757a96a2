//! The column types whose encoding differs between the dialects, decoded
//! into domain values once: times (`timestamptz` or integer microseconds
//! since the Unix epoch), ids (`uuid` or canonical text), dates (`date` or
//! `YYYY-MM-DD` text) and 32-bit integers (`integer` or SQLite's one
//! integer type). Values that do not fit the domain are corrupt rows.

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use super::corrupt;
use crate::StoreResult;

/// A dialect's time column.
pub(crate) trait StoredTime: Send {
    fn into_time(self, what: &str) -> StoreResult<DateTime<Utc>>;
}

impl StoredTime for DateTime<Utc> {
    fn into_time(self, _: &str) -> StoreResult<DateTime<Utc>> {
        Ok(self)
    }
}

impl StoredTime for i64 {
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
pub(crate) trait StoredId: Send {
    fn into_id(self) -> String;
}

impl StoredId for Uuid {
    fn into_id(self) -> String {
        self.to_string()
    }
}

impl StoredId for String {
    fn into_id(self) -> String {
        self
    }
}

/// A dialect's date column.
pub(crate) trait StoredDate: Send {
    fn into_date(self, what: &str) -> StoreResult<NaiveDate>;
}

impl StoredDate for NaiveDate {
    fn into_date(self, _: &str) -> StoreResult<NaiveDate> {
        Ok(self)
    }
}

impl StoredDate for String {
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
