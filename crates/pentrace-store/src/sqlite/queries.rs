//! The read side's statements on SQLite.

use chrono::{DateTime, Utc};
use pentrace_domain::rules::SeqHole;
use sqlx::sqlite::SqliteRow;
use sqlx::{FromRow, SqliteConnection};

use super::SqliteStore;
use crate::engine::queries::{Arg, QuerySql, Sql};
use crate::shared::columns::{int8, micros};
use crate::shared::rows::{
    self, BindingRow, DeviceStatusRow, FLAG_COLUMNS, HoleRow, SESSION_COLUMNS, flag_records,
    session_records,
};
use crate::{DeviceStatus, FlagRecord, SessionRecord, StoreResult};

/// `SELECT <columns> FROM <from> <sql>`, the engine's values bound as
/// SQLite stores them: lists as one JSON array, ids as text, times as
/// microseconds.
pub(super) async fn select<O>(
    c: &mut SqliteConnection,
    columns: &str,
    from: &str,
    sql: &Sql<'_>,
) -> StoreResult<Vec<O>>
where
    O: for<'r> FromRow<'r, SqliteRow> + Send + Unpin,
{
    let text = format!("SELECT {columns} FROM {from} {}", sql.text);
    let query = sql
        .args
        .iter()
        .fold(sqlx::query_as(&text), |q, arg| match arg {
            Arg::Text(s) => q.bind(*s),
            Arg::List(list) => q.bind(serde_json::json!(list).to_string()),
            Arg::Id(id) => q.bind(id.to_string()),
            Arg::Time(t) => q.bind(micros(*t)),
            Arg::Int(i) => q.bind(*i),
        });
    Ok(query.fetch_all(c).await?)
}

#[async_trait::async_trait]
impl QuerySql for SqliteStore {
    fn any(placeholder: &str) -> String {
        format!("IN (SELECT value FROM json_each({placeholder}))")
    }

    async fn sessions(c: &mut SqliteConnection, sql: &Sql<'_>) -> StoreResult<Vec<SessionRecord>> {
        session_records::<Self>(select(c, SESSION_COLUMNS, "sessions", sql).await?)
    }

    async fn flags(c: &mut SqliteConnection, sql: &Sql<'_>) -> StoreResult<Vec<FlagRecord>> {
        flag_records::<Self>(select(c, FLAG_COLUMNS, "flags", sql).await?)
    }

    async fn device_statuses(
        c: &mut SqliteConnection,
        clinic_id: Option<&str>,
        day_start: DateTime<Utc>,
        day_end: DateTime<Utc>,
    ) -> StoreResult<Vec<DeviceStatus>> {
        let rows: Vec<DeviceStatusRow<SqliteStore>> = sqlx::query_as(
            "SELECT d.id, d.clinic_id, d.model, d.max_depth_um, d.last_seen, d.battery_pct, \
                    d.max_seq, \
                    (SELECT count(*) FROM sessions s WHERE s.device_id = d.id \
                        AND s.started_at >= ?2 AND s.started_at < ?3) AS sessions_today, \
                    (SELECT COALESCE(sum(s.strokes), 0) FROM sessions s WHERE s.device_id = d.id \
                        AND s.started_at >= ?2 AND s.started_at < ?3) AS strokes_today, \
                    (SELECT count(*) FROM flags f WHERE f.device_id = d.id AND f.state = 'open') \
                        AS open_flags \
             FROM devices d \
             WHERE (?1 IS NULL OR d.clinic_id = ?1) \
             ORDER BY d.clinic_id, d.id",
        )
        .bind(clinic_id)
        .bind(micros(day_start))
        .bind(micros(day_end))
        .fetch_all(c)
        .await?;
        rows.into_iter().map(DeviceStatus::try_from).collect()
    }

    async fn binding(
        c: &mut SqliteConnection,
        cartridge_id: &str,
    ) -> StoreResult<Option<(String, String, DateTime<Utc>)>> {
        let row: Option<BindingRow<SqliteStore>> = sqlx::query_as(
            "SELECT session_id, device_id, bound_at FROM cartridges WHERE cartridge_id = ?1",
        )
        .bind(cartridge_id)
        .fetch_optional(c)
        .await?;
        row.map(rows::binding::<SqliteStore>).transpose()
    }

    async fn holes_before(
        c: &mut SqliteConnection,
        before: DateTime<Utc>,
    ) -> StoreResult<Vec<(SeqHole, String)>> {
        let holes: Vec<HoleRow<SqliteStore>> = sqlx::query_as(
            "SELECT h.device_id, h.first_seq, h.last_seq, h.detected_at, d.clinic_id \
             FROM seq_holes h JOIN devices d ON d.id = h.device_id \
             WHERE h.detected_at < ?1 ORDER BY h.detected_at, h.device_id, h.first_seq",
        )
        .bind(micros(before))
        .fetch_all(c)
        .await?;
        holes.into_iter().map(rows::hole::<SqliteStore>).collect()
    }

    async fn delete_holes(c: &mut SqliteConnection, keys: &[(&str, u64)]) -> StoreResult<()> {
        for (device_id, first) in keys {
            sqlx::query("DELETE FROM seq_holes WHERE device_id = ?1 AND first_seq = ?2")
                .bind(device_id)
                .bind(int8(*first, "hole first seq")?)
                .execute(&mut *c)
                .await?;
        }
        Ok(())
    }
}
