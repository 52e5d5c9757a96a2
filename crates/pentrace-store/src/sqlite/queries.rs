//! The read side's statements on SQLite.

use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;

use super::SqliteStore;
use crate::engine::queries::QuerySql;
use crate::shared::columns::{int8, micros};
use crate::shared::rows::DeviceStatusRow;
use crate::{DeviceStatus, StoreResult};

#[async_trait::async_trait]
impl QuerySql for SqliteStore {
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
