//! Messages set aside: stored with their raw bytes and the error, their key
//! stored so they are acknowledged and never loop.

use sqlx::PgPool;
use uuid::Uuid;

use super::convert::{from_i64, to_i64};
use super::{audit, commit};
use crate::{MessageRow, QuarantineRecord, QuarantineRow, StoreResult, Watermarks};

pub(super) async fn put(pool: &PgPool, rows: &[QuarantineRow]) -> StoreResult<Watermarks> {
    if rows.is_empty() {
        return Ok(Watermarks::new());
    }
    let mut tx = pool.begin().await?;
    let messages: Vec<MessageRow> = rows.iter().map(|r| r.message.clone()).collect();
    let mut drafts = Vec::with_capacity(rows.len());
    for row in rows {
        // A key stored meanwhile (a redelivered copy that got through) is
        // left as it is; the quarantine row records this copy's failure.
        sqlx::query(
            "INSERT INTO device_messages (device_id, seq, kind, session_id, sent_at, received_at) \
             VALUES ($1, $2, $3, NULL, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(&row.message.device_id)
        .bind(to_i64(row.message.seq, "seq")?)
        .bind(row.message.kind)
        .bind(row.message.sent_at)
        .bind(row.message.received_at)
        .execute(&mut *tx)
        .await?;
        let inserted = sqlx::query(
            "INSERT INTO quarantine (id, device_id, seq, transport, received_at, error, payload) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (device_id, seq) DO NOTHING",
        )
        .bind(row.id)
        .bind(&row.message.device_id)
        .bind(to_i64(row.message.seq, "seq")?)
        .bind(row.transport)
        .bind(row.message.received_at)
        .bind(&row.error)
        .bind(&row.payload)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 1 {
            drafts.push(row.audit_draft());
        }
    }
    audit::append(&mut tx, &drafts).await?;
    let watermarks =
        commit::advance_watermarks(&mut tx, &crate::shared::merge::batch_devices(&messages))
            .await?;
    tx.commit().await?;
    Ok(watermarks)
}

type Row = (
    Uuid,
    String,
    i64,
    String,
    chrono::DateTime<chrono::Utc>,
    chrono::DateTime<chrono::Utc>,
    String,
    Vec<u8>,
);

const COLUMNS: &str =
    "id, device_id, seq, transport, received_at, quarantined_at, error, payload FROM quarantine";

pub(super) async fn list(pool: &PgPool, limit: u32) -> StoreResult<Vec<QuarantineRecord>> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} ORDER BY quarantined_at DESC, id DESC LIMIT $1"
    ))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(record).collect()
}

pub(super) async fn one(pool: &PgPool, id: Uuid) -> StoreResult<Option<QuarantineRecord>> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.map(record).transpose()
}

fn record(r: Row) -> StoreResult<QuarantineRecord> {
    Ok(QuarantineRecord {
        id: r.0,
        device_id: r.1,
        seq: from_i64(r.2, "seq")?,
        transport: r.3,
        received_at: r.4,
        quarantined_at: r.5,
        error: r.6,
        payload: r.7,
    })
}
