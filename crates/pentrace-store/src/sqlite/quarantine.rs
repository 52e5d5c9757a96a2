//! The quarantine's statements on SQLite.

use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;

use super::SqliteStore;
use super::queries::select;
use crate::engine::quarantine::QuarantineSql;
use crate::engine::queries::Sql;
use crate::shared::columns::{int8, micros};
use crate::shared::rows::{QUARANTINE_COLUMNS, QuarantinedRow};
use crate::{QuarantineRecord, QuarantineRow, StoreResult, Watermarks};

#[async_trait::async_trait]
impl QuarantineSql for SqliteStore {
    async fn put_quarantined(
        c: &mut SqliteConnection,
        row: &QuarantineRow,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let seq = int8(row.message.seq, "seq")?;
        sqlx::query(
            "INSERT INTO device_messages (device_id, seq, kind, session_id, sent_at, received_at) \
             VALUES (?1, ?2, ?3, NULL, ?4, ?5) ON CONFLICT DO NOTHING",
        )
        .bind(&row.message.device_id)
        .bind(seq)
        .bind(row.message.kind)
        .bind(micros(row.message.sent_at))
        .bind(micros(row.message.received_at))
        .execute(&mut *c)
        .await?;
        let inserted = sqlx::query(
            "INSERT INTO quarantine (id, device_id, seq, transport, received_at, quarantined_at, \
                                     error, payload) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (device_id, seq) DO NOTHING",
        )
        .bind(row.id.to_string())
        .bind(&row.message.device_id)
        .bind(seq)
        .bind(row.transport)
        .bind(micros(row.message.received_at))
        .bind(micros(at))
        .bind(&row.error)
        .bind(&row.payload)
        .execute(c)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    async fn advance_watermarks(
        c: &mut SqliteConnection,
        devices: &[&str],
    ) -> StoreResult<Watermarks> {
        super::commit::advance_watermarks(c, devices).await
    }

    async fn quarantined(
        c: &mut SqliteConnection,
        sql: &Sql<'_>,
    ) -> StoreResult<Vec<QuarantineRecord>> {
        let rows: Vec<QuarantinedRow<SqliteStore>> =
            select(c, QUARANTINE_COLUMNS, "quarantine", sql).await?;
        rows.into_iter().map(QuarantineRecord::try_from).collect()
    }
}
