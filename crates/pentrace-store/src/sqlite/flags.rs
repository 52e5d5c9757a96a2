//! Raising flags: one row per dedupe key, shared by commit, recall and gaps.

use std::collections::HashSet;

use sqlx::SqliteConnection;
use uuid::Uuid;

use super::convert::{FLAG_COLUMNS, FlagRow, flag_records, opt_uuid_text, to_int8};
use crate::shared::drafts::now_micros;
use crate::{FlagRecord, NewFlag, StoreResult};

/// Inserts the flags whose dedupe key is new and returns them, in the order
/// given. Within `flags` the first flag of a key wins; a key already stored
/// raises nothing. Every flag of one call gets the same `raised_at`, as
/// PostgreSQL's `now()` gives every flag of a transaction the same time.
pub(super) async fn insert(
    conn: &mut SqliteConnection,
    flags: &[NewFlag],
) -> StoreResult<Vec<FlagRecord>> {
    let mut keys: HashSet<&str> = HashSet::new();
    let unique: Vec<&NewFlag> = flags
        .iter()
        .filter(|f| keys.insert(f.dedupe_key.as_str()))
        .collect();
    let raised_at = super::convert::micros(now_micros());
    let sql = format!(
        "INSERT INTO flags (id, dedupe_key, kind, severity, clinic_id, device_id, session_id, \
                            cartridge_id, seq, raised_at, detail, evidence) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
         ON CONFLICT (dedupe_key) DO NOTHING RETURNING {FLAG_COLUMNS}"
    );
    let mut rows: Vec<FlagRow> = Vec::new();
    for flag in unique {
        let row: Option<FlagRow> = sqlx::query_as(&sql)
            .bind(Uuid::new_v4().to_string())
            .bind(&flag.dedupe_key)
            .bind(flag.kind.as_str())
            .bind(flag.severity.as_str())
            .bind(&flag.clinic_id)
            .bind(&flag.device_id)
            .bind(opt_uuid_text(
                flag.session_id.as_deref(),
                "flag session id",
            )?)
            .bind(flag.cartridge_id.as_deref())
            .bind(to_int8(flag.seq, "flag seq")?)
            .bind(raised_at)
            .bind(&flag.detail)
            .bind(flag.evidence.to_string())
            .fetch_optional(&mut *conn)
            .await?;
        rows.extend(row);
    }
    flag_records(rows)
}
