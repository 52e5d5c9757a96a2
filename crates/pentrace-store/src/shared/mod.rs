//! Plain Rust both dialects share: the audit events a write records, the
//! merge of a batch's writes into one row each, the flag lifecycle. No SQL
//! here, and nothing that knows which database it runs on.

pub(crate) mod drafts;
pub(crate) mod merge;

use chrono::{DateTime, Utc};
use pentrace_domain::audit::ChainHash;

use crate::{FlagStep, StoreError, StoreResult};

/// A dialect's time column: `timestamptz` on PostgreSQL, integer
/// microseconds since the Unix epoch on SQLite.
pub(crate) trait StoredTime {
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

/// A value read from the database that the domain cannot hold.
pub(crate) fn corrupt(message: String) -> StoreError {
    StoreError::Other(sqlx::Error::Decode(message.into()))
}

/// A stored `bigint` back to `u64`.
pub(crate) fn stored_u64(value: i64, what: &str) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| corrupt(format!("{what} {value} is negative")))
}

/// A stored hash.
pub(crate) fn hash32(bytes: &[u8]) -> StoreResult<ChainHash> {
    bytes
        .try_into()
        .map_err(|_| corrupt(format!("a stored hash has {} bytes, not 32", bytes.len())))
}

/// The flag's state after `step`, or why the step is not allowed.
pub(crate) fn next_state(state: &str, step: FlagStep) -> StoreResult<&'static str> {
    match (state, step) {
        ("open", FlagStep::Acknowledge) => Ok("acknowledged"),
        ("open" | "acknowledged", FlagStep::Resolve) => Ok("resolved"),
        (s, step) => Err(StoreError::Invalid(format!(
            "a flag in state {s} cannot be {}d",
            step.as_str()
        ))),
    }
}
