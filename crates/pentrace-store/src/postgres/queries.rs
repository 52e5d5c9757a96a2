//! The read side's statements on PostgreSQL.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::PgStore;
use crate::engine::queries::QuerySql;
use crate::shared::columns::int8;
use crate::shared::rows::DeviceStatusRow;
use crate::{DeviceStatus, StoreResult};

#[async_trait::async_trait]
impl QuerySql for PgStore {
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
