//! The read side's statements on PostgreSQL.

use chrono::{DateTime, Utc};
use pentrace_domain::rules::SeqHole;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgConnection};

use super::PgStore;
use crate::engine::queries::{Arg, QuerySql, Sql};
use crate::shared::columns::int8;
use crate::shared::rows::{
    self, BindingRow, DeviceStatusRow, FLAG_COLUMNS, HoleRow, SESSION_COLUMNS, flag_records,
    session_records,
};
use crate::{DeviceStatus, FlagRecord, SessionRecord, StoreResult};

/// `SELECT <columns> FROM <from> <sql>`, the engine's values bound as
/// PostgreSQL's column types.
pub(super) async fn select<O>(
    c: &mut PgConnection,
    columns: &str,
    from: &str,
    sql: &Sql<'_>,
) -> StoreResult<Vec<O>>
where
    O: for<'r> FromRow<'r, PgRow> + Send + Unpin,
{
    let text = format!("SELECT {columns} FROM {from} {}", sql.text);
    let query = sql
        .args
        .iter()
        .fold(sqlx::query_as(&text), |q, arg| match arg {
            Arg::Text(s) => q.bind(*s),
            Arg::List(list) => q.bind(list.as_slice()),
            Arg::Id(id) => q.bind(*id),
            Arg::Time(t) => q.bind(*t),
            Arg::Int(i) => q.bind(*i),
        });
    Ok(query.fetch_all(c).await?)
}

#[async_trait::async_trait]
impl QuerySql for PgStore {
    fn any(placeholder: &str) -> String {
        format!("= ANY({placeholder})")
    }

    async fn sessions(c: &mut PgConnection, sql: &Sql<'_>) -> StoreResult<Vec<SessionRecord>> {
        session_records::<Self>(select(c, SESSION_COLUMNS, "sessions", sql).await?)
    }

    async fn flags(c: &mut PgConnection, sql: &Sql<'_>) -> StoreResult<Vec<FlagRecord>> {
        flag_records::<Self>(select(c, FLAG_COLUMNS, "flags", sql).await?)
    }

    async fn device_statuses(
        c: &mut PgConnection,
        clinic_id: Option<&str>,
        day_start: DateTime<Utc>,
        day_end: DateTime<Utc>,
    ) -> StoreResult<Vec<DeviceStatus>> {
        let rows: Vec<DeviceStatusRow<PgStore>> = sqlx::query_as(
            "SELECT d.id, d.clinic_id, d.model, d.max_depth_um, d.last_seen, d.battery_pct, \
                    d.max_seq, t.sessions_today, t.strokes_today, f.open_flags \
             FROM devices d \
             CROSS JOIN LATERAL ( \
                 SELECT count(*) AS sessions_today, \
                        COALESCE(sum(s.strokes), 0)::bigint AS strokes_today \
                 FROM sessions s \
                 WHERE s.device_id = d.id AND s.started_at >= $2 AND s.started_at < $3) t \
             CROSS JOIN LATERAL ( \
                 SELECT count(*) AS open_flags FROM flags fl \
                 WHERE fl.device_id = d.id AND fl.state = 'open') f \
             WHERE ($1::text IS NULL OR d.clinic_id = $1) \
             ORDER BY d.clinic_id, d.id",
        )
        .bind(clinic_id)
        .bind(day_start)
        .bind(day_end)
        .fetch_all(c)
        .await?;
        rows.into_iter().map(DeviceStatus::try_from).collect()
    }

    async fn binding(
        c: &mut PgConnection,
        cartridge_id: &str,
    ) -> StoreResult<Option<(String, String, DateTime<Utc>)>> {
        let row: Option<BindingRow<PgStore>> = sqlx::query_as(
            "SELECT session_id, device_id, bound_at FROM cartridges WHERE cartridge_id = $1",
        )
        .bind(cartridge_id)
        .fetch_optional(c)
        .await?;
        row.map(rows::binding::<PgStore>).transpose()
    }

    async fn holes_before(
        c: &mut PgConnection,
        before: DateTime<Utc>,
    ) -> StoreResult<Vec<(SeqHole, String)>> {
        let holes: Vec<HoleRow<PgStore>> = sqlx::query_as(
            "SELECT h.device_id, h.first_seq, h.last_seq, h.detected_at, d.clinic_id \
             FROM seq_holes h JOIN devices d ON d.id = h.device_id \
             WHERE h.detected_at < $1 ORDER BY h.detected_at, h.device_id, h.first_seq",
        )
        .bind(before)
        .fetch_all(c)
        .await?;
        holes.into_iter().map(rows::hole::<PgStore>).collect()
    }

    async fn delete_holes(c: &mut PgConnection, keys: &[(&str, u64)]) -> StoreResult<()> {
        let devices: Vec<&str> = keys.iter().map(|(d, _)| *d).collect();
        let firsts = keys
            .iter()
            .map(|(_, first)| int8(*first, "hole first seq"))
            .collect::<StoreResult<Vec<_>>>()?;
        sqlx::query(
            "DELETE FROM seq_holes h \
             USING UNNEST($1::text[], $2::int8[]) AS u(device_id, first_seq) \
             WHERE h.device_id = u.device_id AND h.first_seq = u.first_seq",
        )
        .bind(devices)
        .bind(firsts)
        .execute(c)
        .await?;
        Ok(())
    }
}
