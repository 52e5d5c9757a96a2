//! Messages set aside: stored with their raw bytes and the error, their key
//! stored so they are acknowledged and never loop.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::audit::AuditSql;
use super::queries::{Arg, Sql};
use crate::dialect::{Conn, Dialect};
use crate::shared::drafts::now_micros;
use crate::shared::merge::batch_devices;
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
    /// Moves the devices' stored watermarks over the seqs now stored; every
    /// device's watermark.
    async fn advance_watermarks(c: &mut Conn<Self>, devices: &[&str]) -> StoreResult<Watermarks>;
    /// `SELECT` of quarantine records `FROM quarantine <sql>`.
    async fn quarantined(c: &mut Conn<Self>, sql: &Sql<'_>) -> StoreResult<Vec<QuarantineRecord>>;
}

/// Quarantines the rows in one transaction, each audited
/// `message.quarantined` unless its key was quarantined before, all at one
/// time (the server's clock, as stored); the watermarks of their devices
/// afterwards.
pub(crate) async fn quarantine<D: QuarantineSql + AuditSql>(
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
pub(crate) async fn list_quarantine<D: QuarantineSql>(
    d: &D,
    limit: u32,
) -> StoreResult<Vec<QuarantineRecord>> {
    let sql = Sql::new(
        "ORDER BY quarantined_at DESC, id DESC LIMIT $1",
        vec![Arg::Int(i64::from(limit))],
    );
    D::quarantined(&mut *d.read().await?, &sql).await
}

pub(crate) async fn quarantined<D: QuarantineSql>(
    d: &D,
    id: uuid::Uuid,
) -> StoreResult<Option<QuarantineRecord>> {
    let sql = Sql::new("WHERE id = $1", vec![Arg::Id(id)]);
    Ok(D::quarantined(&mut *d.read().await?, &sql).await?.pop())
}
