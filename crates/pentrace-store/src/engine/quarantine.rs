//! Messages set aside: stored with their raw bytes and the error, their key
//! stored so they are acknowledged and never loop.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreSql;
use super::queries::{Arg, QueryCommonSql, Sql};
use crate::dialect::{Conn, Dialect, for_both_stores};
use crate::shared::columns::int8;
use crate::shared::drafts::now_micros;
use crate::shared::merge::batch_devices;
use crate::shared::rows::{QUARANTINE_COLUMNS, QuarantinedRow};
use crate::{MessageRow, QuarantineRecord, QuarantineRow, StoreResult, Watermarks};

/// The quarantine's statements.
#[async_trait]
pub(crate) trait QuarantineSql: Dialect {
    /// Stores the message's key unless it is stored, and the row, quarantined
    /// `at`, unless its key has one already; whether the row was stored.
    async fn put_quarantined(
        c: &mut Conn<Self>,
        row: &QuarantineRow,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// `SELECT` of quarantine records `FROM quarantine <sql>`.
    async fn quarantined(c: &mut Conn<Self>, sql: &Sql<'_>) -> StoreResult<Vec<QuarantineRecord>>;
}

for_both_stores! {
    impl QuarantineSql {
        async fn put_quarantined(
            c: &mut Conn<Self>,
            row: &QuarantineRow,
            at: DateTime<Utc>,
        ) -> StoreResult<bool> {
            let seq = int8(row.message.seq, "seq")?;
            sqlx::query(
                "INSERT INTO device_messages (device_id, seq, kind, session_id, sent_at, \
                                              received_at) \
                 VALUES ($1, $2, $3, NULL, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(&row.message.device_id)
            .bind(seq)
            .bind(row.message.kind)
            .bind(Self::time(row.message.sent_at))
            .bind(Self::time(row.message.received_at))
            .execute(&mut *c)
            .await?;
            let inserted = sqlx::query(
                "INSERT INTO quarantine (id, device_id, seq, transport, received_at, \
                                         quarantined_at, error, payload) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (device_id, seq) DO NOTHING",
            )
            .bind(Self::uuid(row.id))
            .bind(&row.message.device_id)
            .bind(seq)
            .bind(row.transport)
            .bind(Self::time(row.message.received_at))
            .bind(Self::time(at))
            .bind(&row.error)
            .bind(&row.payload)
            .execute(c)
            .await?;
            Ok(inserted.rows_affected() == 1)
        }

        async fn quarantined(
            c: &mut Conn<Self>,
            sql: &Sql<'_>,
        ) -> StoreResult<Vec<QuarantineRecord>> {
            let rows: Vec<QuarantinedRow<Self>> =
                Self::select(c, QUARANTINE_COLUMNS, "quarantine", sql).await?;
            rows.into_iter().map(QuarantineRecord::try_from).collect()
        }
    }
}

/// Quarantines the rows in one transaction, each audited
/// `message.quarantined` unless its key was quarantined before, all at one
/// time (the server's clock, as stored); the watermarks of their devices
/// afterwards.
pub(crate) async fn quarantine<D: StoreSql>(
    d: &D,
    rows: &[QuarantineRow],
) -> StoreResult<Watermarks> {
    if rows.is_empty() {
        return Ok(Watermarks::new());
    }
    let at = now_micros();
    let mut tx = d.write().await?;
    let mut drafts = Vec::with_capacity(rows.len());
    for row in rows {
        // A key stored meanwhile (a redelivered copy that got through) is
        // left as it is; the quarantine row records this copy's failure.
        if D::put_quarantined(&mut tx, row, at).await? {
            drafts.push(row.audit_draft());
        }
    }
    D::append(&mut tx, &drafts).await?;
    let messages: Vec<MessageRow> = rows.iter().map(|r| r.message.clone()).collect();
    let watermarks = D::advance_watermarks(&mut tx, &batch_devices(&messages)).await?;
    tx.commit().await?;
    Ok(watermarks)
}

/// Quarantined messages, newest first.
pub(crate) async fn list_quarantine<D: StoreSql>(
    d: &D,
    limit: u32,
) -> StoreResult<Vec<QuarantineRecord>> {
    let sql = Sql::new(
        "ORDER BY quarantined_at DESC, id DESC LIMIT $1",
        vec![Arg::Int(i64::from(limit))],
    );
    D::quarantined(&mut *d.read().await?, &sql).await
}

pub(crate) async fn quarantined<D: StoreSql>(
    d: &D,
    id: uuid::Uuid,
) -> StoreResult<Option<QuarantineRecord>> {
    let sql = Sql::new("WHERE id = $1", vec![Arg::Id(id)]);
    Ok(D::quarantined(&mut *d.read().await?, &sql).await?.pop())
}
