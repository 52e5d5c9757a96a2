//! Plain Rust both dialects share: the audit events a write records, the
//! merge of a batch's writes into one row each, the flag lifecycle. No SQL
//! here, and nothing that knows which database it runs on.

pub(crate) mod columns;
pub(crate) mod drafts;
pub(crate) mod merge;
pub(crate) mod rows;

use pentrace_domain::audit::ChainHash;

pub(crate) use columns::StoredTime;

use crate::{FlagStep, StoreError, StoreResult};

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

/// `(relation, owner_session_id)` columns → `CartridgeRelation`.
pub(crate) fn relation_from(
    relation: &str,
    owner: Option<String>,
) -> StoreResult<pentrace_domain::rules::CartridgeRelation> {
    use pentrace_domain::rules::CartridgeRelation as R;
    match (relation, owner) {
        ("owner", _) => Ok(R::Owner),
        ("unidentified", _) => Ok(R::Unidentified),
        ("resumed", Some(owner_session_id)) => Ok(R::Resumed { owner_session_id }),
        ("reused", Some(owner_session_id)) => Ok(R::Reused { owner_session_id }),
        (relation, owner) => Err(corrupt(format!(
            "session relation {relation:?} with owner {owner:?}"
        ))),
    }
}
