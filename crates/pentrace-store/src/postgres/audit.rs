//! The audit trail's statements on PostgreSQL: heads locked `FOR UPDATE`
//! in clinic order, events and heads written as arrays.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pentrace_domain::audit::GENESIS;
use sqlx::PgConnection;

use super::PgStore;
use crate::engine::audit::{AuditSql, ChainedEvent, EVENT_COLUMNS, EventRow};
use crate::shared::columns::int8;
use crate::{AuditQuery, ChainHead, StoreResult, StoredAuditEvent};

#[async_trait]
impl AuditSql for PgStore {
    async fn lock_heads(
        c: &mut PgConnection,
        clinics: &[&str],
    ) -> StoreResult<Vec<(String, i64, Vec<u8>)>> {
        // A new chain's head row is created first, so there is a row to lock.
        sqlx::query(
            "INSERT INTO audit_heads (clinic_id, position, hash) \
             SELECT c, 0, $2 FROM UNNEST($1::text[]) AS c ON CONFLICT DO NOTHING",
        )
        .bind(clinics)
        .bind(GENESIS.as_slice())
        .execute(&mut *c)
        .await?;
        Ok(sqlx::query_as(
            "SELECT clinic_id, position, hash FROM audit_heads WHERE clinic_id = ANY($1) \
             ORDER BY clinic_id FOR UPDATE",
        )
        .bind(clinics)
        .fetch_all(c)
        .await?)
    }

    async fn insert_events(c: &mut PgConnection, events: &[ChainedEvent]) -> StoreResult<()> {
        let mut rows = Columns::default();
        for e in events {
            rows.push(e)?;
        }
        sqlx::query(
            "INSERT INTO audit_events (clinic_id, position, at, actor_kind, actor_id, action, \
                 subject_type, subject_id, old_value, new_value, reason, prev_hash, hash) \
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::timestamptz[], $4::text[], \
                 $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], \
                 $11::text[], $12::bytea[], $13::bytea[])",
        )
        .bind(rows.clinic)
        .bind(rows.position)
        .bind(rows.at)
        .bind(rows.actor_kind)
        .bind(rows.actor_id)
        .bind(rows.action)
        .bind(rows.subject_type)
        .bind(rows.subject_id)
        .bind(rows.old_value)
        .bind(rows.new_value)
        .bind(rows.reason)
        .bind(rows.prev)
        .bind(rows.hash)
        .execute(c)
        .await?;
        Ok(())
    }

    async fn set_heads(c: &mut PgConnection, heads: &[ChainHead]) -> StoreResult<()> {
        let positions = heads
            .iter()
            .map(|h| int8(h.position, "position"))
            .collect::<StoreResult<Vec<_>>>()?;
        sqlx::query(
            "UPDATE audit_heads h SET position = u.p, hash = u.h \
             FROM UNNEST($1::text[], $2::int8[], $3::bytea[]) AS u(c, p, h) \
             WHERE h.clinic_id = u.c",
        )
        .bind(
            heads
                .iter()
                .map(|h| h.clinic_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(positions)
        .bind(heads.iter().map(|h| h.hash.to_vec()).collect::<Vec<_>>())
        .execute(c)
        .await?;
        Ok(())
    }

    async fn events(c: &mut PgConnection, q: &AuditQuery) -> StoreResult<Vec<StoredAuditEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM audit_events \
             WHERE action = ANY($1) AND at >= $2 AND ($3::text[] IS NULL OR clinic_id = ANY($3)) \
             ORDER BY at, clinic_id, position LIMIT $4"
        );
        let rows: Vec<EventRow<DateTime<Utc>>> = sqlx::query_as(&sql)
            .bind(&q.actions)
            .bind(q.since)
            .bind(q.clinic_ids.as_deref())
            .bind(i64::from(q.limit))
            .fetch_all(c)
            .await?;
        rows.into_iter().map(EventRow::into_stored).collect()
    }
}

/// Column arrays of a multi-row insert of events.
#[derive(Default)]
struct Columns {
    clinic: Vec<String>,
    position: Vec<i64>,
    at: Vec<DateTime<Utc>>,
    actor_kind: Vec<&'static str>,
    actor_id: Vec<String>,
    action: Vec<String>,
    subject_type: Vec<String>,
    subject_id: Vec<String>,
    old_value: Vec<Option<String>>,
    new_value: Vec<Option<String>>,
    reason: Vec<Option<String>>,
    prev: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
}

impl Columns {
    fn push(&mut self, chained: &ChainedEvent) -> StoreResult<()> {
        let e = &chained.event;
        let (kind, id) = e.actor.parts();
        self.clinic.push(e.clinic_id.clone());
        self.position.push(int8(e.position, "position")?);
        self.at.push(e.at);
        self.actor_kind.push(kind);
        self.actor_id.push(id.to_owned());
        self.action.push(e.action.clone());
        self.subject_type.push(e.subject_type.clone());
        self.subject_id.push(e.subject_id.clone());
        // The exact text that was hashed (serde_json's canonical form).
        self.old_value
            .push(e.old_value.as_ref().map(|v| v.to_string()));
        self.new_value
            .push(e.new_value.as_ref().map(|v| v.to_string()));
        self.reason.push(e.reason.clone());
        self.prev.push(chained.prev.to_vec());
        self.hash.push(chained.hash.to_vec());
        Ok(())
    }
}
