//! The audit trail's statements on SQLite. Every write transaction of this
//! store begins IMMEDIATE on the one writer connection, so reading a
//! chain's head and appending after it cannot interleave with another
//! appender: no row locks are needed.

use async_trait::async_trait;
use serde_json::json;
use sqlx::SqliteConnection;

use super::SqliteStore;
use crate::engine::audit::{AuditSql, ChainedEvent, EVENT_COLUMNS, EventRow};
use crate::shared::columns::{int8, micros};
use crate::{AuditQuery, ChainHead, StoreResult, StoredAuditEvent};

#[async_trait]
impl AuditSql for SqliteStore {
    async fn lock_heads(
        c: &mut SqliteConnection,
        clinics: &[&str],
    ) -> StoreResult<Vec<(String, i64, Vec<u8>)>> {
        Ok(sqlx::query_as(
            "SELECT clinic_id, position, hash FROM audit_heads \
             WHERE clinic_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json!(clinics).to_string())
        .fetch_all(c)
        .await?)
    }

    async fn insert_events(c: &mut SqliteConnection, events: &[ChainedEvent]) -> StoreResult<()> {
        for ChainedEvent {
            event: e,
            prev,
            hash,
        } in events
        {
            let (actor_kind, actor_id) = e.actor.parts();
            sqlx::query(
                "INSERT INTO audit_events (clinic_id, position, at, actor_kind, actor_id, \
                     action, subject_type, subject_id, old_value, new_value, reason, \
                     prev_hash, hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )
            .bind(&e.clinic_id)
            .bind(int8(e.position, "position")?)
            .bind(micros(e.at))
            .bind(actor_kind)
            .bind(actor_id)
            .bind(&e.action)
            .bind(&e.subject_type)
            .bind(&e.subject_id)
            // The exact text that was hashed (serde_json's canonical form).
            .bind(e.old_value.as_ref().map(|v| v.to_string()))
            .bind(e.new_value.as_ref().map(|v| v.to_string()))
            .bind(&e.reason)
            .bind(prev.as_slice())
            .bind(hash.as_slice())
            .execute(&mut *c)
            .await?;
        }
        Ok(())
    }

    async fn set_heads(c: &mut SqliteConnection, heads: &[ChainHead]) -> StoreResult<()> {
        for head in heads {
            sqlx::query(
                "INSERT INTO audit_heads (clinic_id, position, hash) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (clinic_id) DO UPDATE SET position = excluded.position, \
                                                       hash = excluded.hash",
            )
            .bind(&head.clinic_id)
            .bind(int8(head.position, "position")?)
            .bind(head.hash.as_slice())
            .execute(&mut *c)
            .await?;
        }
        Ok(())
    }

    async fn events(
        c: &mut SqliteConnection,
        q: &AuditQuery,
    ) -> StoreResult<Vec<StoredAuditEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM audit_events \
             WHERE action IN (SELECT value FROM json_each(?1)) AND at >= ?2 \
               AND (?3 IS NULL OR clinic_id IN (SELECT value FROM json_each(?3))) \
             ORDER BY at, clinic_id, position LIMIT ?4"
        );
        let rows: Vec<EventRow<i64>> = sqlx::query_as(&sql)
            .bind(json!(q.actions).to_string())
            .bind(micros(q.since))
            .bind(q.clinic_ids.as_ref().map(|c| json!(c).to_string()))
            .bind(i64::from(q.limit))
            .fetch_all(c)
            .await?;
        rows.into_iter().map(EventRow::into_stored).collect()
    }
}
