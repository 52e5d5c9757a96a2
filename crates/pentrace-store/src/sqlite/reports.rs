//! Read side of compliance reports: one clinic's sessions and flags in a
//! period, each in one statement.
//!
//! A report covers at most months of one clinic, which fits in memory, so
//! the rows are fetched whole rather than paged.

use chrono::{DateTime, Utc};
use sqlx::SqlitePool;

use super::convert::{
    FLAG_COLUMNS, FlagRow, SESSION_COLUMNS, SessionRow, flag_records, micros, session_records,
};
use crate::{FlagRecord, SessionRecord, StoreResult};

/// The clinic's sessions started in `[from, to)`, oldest first.
pub(super) async fn sessions_in_period(
    pool: &SqlitePool,
    clinic_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> StoreResult<Vec<SessionRecord>> {
    // `sessions.clinic_id` is the clinic at the time of the session, so a
    // device that later moved to another clinic still counts where it was
    // used.
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM sessions \
         WHERE clinic_id = ?1 AND started_at >= ?2 AND started_at < ?3 \
         ORDER BY started_at, session_id"
    );
    let rows: Vec<SessionRow> = sqlx::query_as(&sql)
        .bind(clinic_id)
        .bind(micros(from))
        .bind(micros(to))
        .fetch_all(pool)
        .await?;
    session_records(rows)
}

/// The clinic's flags that were raised in `[from, to)` or belong to one of
/// its sessions started in `[from, to)`, oldest first.
pub(super) async fn flags_in_period(
    pool: &SqlitePool,
    clinic_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> StoreResult<Vec<FlagRecord>> {
    // Both halves matter: a backfilled session is judged when it arrives,
    // so its flags are raised after the period it belongs to, and a flag
    // raised in the period may be about an older session or none (DATA_GAP).
    let sql = format!(
        "SELECT {FLAG_COLUMNS} FROM flags \
         WHERE clinic_id = ?1 \
           AND ((raised_at >= ?2 AND raised_at < ?3) \
                OR session_id IN (SELECT s.session_id FROM sessions s \
                                  WHERE s.clinic_id = ?1 \
                                    AND s.started_at >= ?2 AND s.started_at < ?3)) \
         ORDER BY raised_at, id"
    );
    let rows: Vec<FlagRow> = sqlx::query_as(&sql)
        .bind(clinic_id)
        .bind(micros(from))
        .bind(micros(to))
        .fetch_all(pool)
        .await?;
    flag_records(rows)
}
