//! Raising flags: one row per dedupe key, shared by commit, recall and gaps.

use std::collections::HashMap;

use async_trait::async_trait;

use crate::dialect::{Conn, Dialect};
use crate::{FlagRecord, NewFlag, StoreResult};

/// The flags' statements.
#[async_trait]
pub(crate) trait FlagSql: Dialect {
    /// Inserts each flag unless its dedupe key is stored; the raised ones
    /// with their dedupe keys, in any order. Every flag of one call shares
    /// one `raised_at`.
    async fn insert_new_flags(
        c: &mut Conn<Self>,
        flags: &[&NewFlag],
    ) -> StoreResult<Vec<(String, FlagRecord)>>;

    /// Inserts the flags whose dedupe key is new and returns them, in the
    /// order given. Within `flags` the first flag of a key wins; a key
    /// already stored (by this or any other process) raises nothing.
    async fn insert_flags(c: &mut Conn<Self>, flags: &[NewFlag]) -> StoreResult<Vec<FlagRecord>> {
        let mut order: HashMap<&str, usize> = HashMap::new();
        let mut unique: Vec<&NewFlag> = Vec::new();
        for flag in flags {
            if !order.contains_key(flag.dedupe_key.as_str()) {
                order.insert(&flag.dedupe_key, unique.len());
                unique.push(flag);
            }
        }
        if unique.is_empty() {
            return Ok(Vec::new());
        }
        // Inserting in key order makes concurrent writers wait on each
        // other's unique-index entries in the same order: no deadlock.
        unique.sort_by(|a, b| a.dedupe_key.cmp(&b.dedupe_key));
        let mut raised = Self::insert_new_flags(c, &unique).await?;
        raised.sort_by_key(|(key, _)| order.get(key.as_str()).copied().unwrap_or(usize::MAX));
        Ok(raised.into_iter().map(|(_, flag)| flag).collect())
    }
}
