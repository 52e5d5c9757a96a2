//! Raising flags: one row per dedupe key, shared by commit, recall and gaps.

use async_trait::async_trait;

use crate::dialect::{Conn, Dialect};
use crate::{FlagRecord, NewFlag, StoreResult};

/// The flags' statements.
#[async_trait]
pub(crate) trait FlagSql: Dialect {
    /// Inserts the flags whose dedupe key is new and returns them, in the
    /// order given; within `flags` the first flag of a key wins, and every
    /// flag of one call shares one `raised_at`.
    async fn insert_flags(c: &mut Conn<Self>, flags: &[NewFlag]) -> StoreResult<Vec<FlagRecord>>;
}
