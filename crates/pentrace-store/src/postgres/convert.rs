//! Conversions between domain values and column values, and the row types
//! several queries share.
//!
//! PostgreSQL has no unsigned integers: domain `u64`/`u32` values go into
//! `bigint`/`integer` columns (with `>= 0` checks). Conversions never wrap:
//! a value that does not fit is an invalid request on the way in, and a
//! corrupt row on the way out.

use pentrace_domain::rules::CartridgeRelation;
use uuid::Uuid;

use super::PgStore;
use crate::shared::rows;
pub(super) use crate::shared::rows::FLAG_COLUMNS;
use crate::{StoreError, StoreResult};

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

/// A `flags` row.
pub(super) type FlagRow = rows::FlagRow<PgStore>;

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
