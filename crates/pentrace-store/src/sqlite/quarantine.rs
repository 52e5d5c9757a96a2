//! Messages set aside; as postgres/quarantine.rs.

use sqlx::SqlitePool;
use uuid::Uuid;

use super::convert::{micros, stored_uuid, time, to_int8, to_u64};
use super::{audit, begin, commit};
use crate::shared::merge::batch_devices;
use crate::{MessageRow, QuarantineRecord, QuarantineRow, StoreResult, Watermarks};

pub(super) async fn put(pool: &SqlitePool, rows: &[QuarantineRow]) -> StoreResult<Watermarks> {
    if rows.is_empty() {
        return Ok(Watermarks::new());
    }
    let mut tx = begin(pool).await?;
    let messages: Vec<MessageRow> = rows.iter().map(|r| r.message.clone()).collect();
    let now = micros(chrono::Utc::now());
    let mut drafts = Vec::with_capacity(rows.len());
    for row in rows {
        let seq = to_int8(row.message.seq, "seq")?;
        sqlx::query(
            "INSERT INTO device_messages (device_id, seq, kind, session_id, sent_at, received_at) \
             VALUES (?1, ?2, ?3, NULL, ?4, ?5) ON CONFLICT DO NOTHING",
        )
        .bind(&row.message.device_id)
        .bind(seq)
        .bind(row.message.kind)
        .bind(micros(row.message.sent_at))
        .bind(micros(row.message.received_at))
        .execute(&mut *tx)
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
        .bind(now)
        .bind(&row.error)
        .bind(&row.payload)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 1 {
            drafts.push(row.audit_draft());
        }
    }
    audit::append(&mut tx, &drafts).await?;
    let watermarks = commit::advance_watermarks(&mut tx, &batch_devices(&messages)).await?;
    tx.commit().await?;
    Ok(watermarks)
}

type Row = (String, String, i64, String, i64, i64, String, Vec<u8>);

const COLUMNS: &str =
    "id, device_id, seq, transport, received_at, quarantined_at, error, payload FROM quarantine";

pub(super) async fn list(pool: &SqlitePool, limit: u32) -> StoreResult<Vec<QuarantineRecord>> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} ORDER BY quarantined_at DESC, id DESC LIMIT ?1"
    ))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(record).collect()
}

pub(super) async fn one(pool: &SqlitePool, id: Uuid) -> StoreResult<Option<QuarantineRecord>> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} WHERE id = ?1"))
        .bind(id.to_string())
        .fetch_optional(pool)
        .await?;
    row.map(record).transpose()
}

fn record(r: Row) -> StoreResult<QuarantineRecord> {
    Ok(QuarantineRecord {
        id: stored_uuid(&r.0, "quarantine id")?,
        device_id: r.1,
        seq: to_u64(r.2, "seq")?,
        transport: r.3,
        received_at: time(r.4, "received_at")?,
        quarantined_at: time(r.5, "quarantined_at")?,
        error: r.6,
        payload: r.7,
    })
}
