//! Plain Rust both dialects share: the audit events a write records, the
//! merge of a batch's writes into one row each, the flag lifecycle. No SQL
//! here, and nothing that knows which database it runs on.

pub(crate) mod drafts;
pub(crate) mod merge;
pub(crate) mod rows;

use crate::{FlagStep, StoreError, StoreResult};

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
