//! The audit trail: appending to per-clinic hash chains inside the caller's
//! transaction, reading chains page by page for verification, checkpoints.
//!
//! Every write transaction of this store begins IMMEDIATE on the one writer
//! connection, so reading a chain's head and appending after it cannot
//! interleave with another appender: no row locks are needed.

use std::collections::BTreeMap;

use pentrace_domain::audit::{Actor, AuditEvent, ChainHash, GENESIS, chain_hash};
use pentrace_domain::checkpoint::Checkpoint;
use sqlx::{SqliteConnection, SqlitePool};

use super::convert::{corrupt, hash32, micros, time, to_int8, to_u64};
use crate::shared::drafts::{now_micros, to_event};
use crate::{AuditDraft, AuditQuery, ChainHead, StoreResult, StoredAuditEvent};

/// Appends the drafts to their chains and returns each draft's hash, in the
/// order given. Every event of one call shares one time.
pub(super) async fn append(
    conn: &mut SqliteConnection,
    drafts: &[AuditDraft],
) -> StoreResult<Vec<ChainHash>> {
    let mut by_clinic: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, d) in drafts.iter().enumerate() {
        by_clinic.entry(d.clinic_id.as_str()).or_default().push(i);
    }
    let at = now_micros();
    let mut hashes = vec![GENESIS; drafts.len()];
    for (clinic, indices) in &by_clinic {
        let (mut position, mut prev) = head(conn, clinic).await?;
        for &i in indices {
            position += 1;
            let event = to_event(&drafts[i], position, at);
            let hash = chain_hash(&prev, &event);
            insert_event(conn, &event, &prev, &hash).await?;
            hashes[i] = hash;
            prev = hash;
        }
        sqlx::query(
            "INSERT INTO audit_heads (clinic_id, position, hash) VALUES (?1, ?2, ?3) \
             ON CONFLICT (clinic_id) DO UPDATE SET position = excluded.position, \
                                                   hash = excluded.hash",
        )
        .bind(*clinic)
        .bind(to_int8(position, "position")?)
        .bind(prev.as_slice())
        .execute(&mut *conn)
        .await?;
    }
    Ok(hashes)
}

/// A chain's head; position 0 and the genesis hash for a new chain.
async fn head(conn: &mut SqliteConnection, clinic: &str) -> StoreResult<(u64, ChainHash)> {
    let row: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT position, hash FROM audit_heads WHERE clinic_id = ?1")
            .bind(clinic)
            .fetch_optional(conn)
            .await?;
    match row {
        Some((position, hash)) => Ok((to_u64(position, "position")?, hash32(&hash)?)),
        None => Ok((0, GENESIS)),
    }
}

async fn insert_event(
    conn: &mut SqliteConnection,
    e: &AuditEvent,
    prev: &ChainHash,
    hash: &ChainHash,
) -> StoreResult<()> {
    let (actor_kind, actor_id) = e.actor.parts();
    sqlx::query(
        "INSERT INTO audit_events (clinic_id, position, at, actor_kind, actor_id, action, \
             subject_type, subject_id, old_value, new_value, reason, prev_hash, hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )
    .bind(&e.clinic_id)
    .bind(to_int8(e.position, "position")?)
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
    .execute(conn)
    .await?;
    Ok(())
}

/// Every chain's head.
pub(super) async fn heads(pool: &SqlitePool) -> StoreResult<Vec<ChainHead>> {
    let rows: Vec<(String, i64, Vec<u8>)> =
        sqlx::query_as("SELECT clinic_id, position, hash FROM audit_heads ORDER BY clinic_id")
            .fetch_all(pool)
            .await?;
    rows.into_iter()
        .map(|(clinic_id, position, hash)| {
            Ok(ChainHead {
                clinic_id,
                position: to_u64(position, "position")?,
                hash: hash32(&hash)?,
            })
        })
        .collect()
}

/// An `audit_events` row.
#[derive(Debug, sqlx::FromRow)]
struct EventRow {
    clinic_id: String,
    position: i64,
    at: i64,
    actor_kind: String,
    actor_id: String,
    action: String,
    subject_type: String,
    subject_id: String,
    old_value: Option<String>,
    new_value: Option<String>,
    reason: Option<String>,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

/// Up to `limit` events of a chain after `after`, in position order (keyset
/// paging: memory stays bounded by the page, whatever the chain's length).
pub(super) async fn page(
    pool: &SqlitePool,
    clinic_id: &str,
    after: u64,
    limit: u32,
) -> StoreResult<Vec<StoredAuditEvent>> {
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT clinic_id, position, at, actor_kind, actor_id, action, subject_type, subject_id, \
                old_value, new_value, reason, prev_hash, hash \
         FROM audit_events WHERE clinic_id = ?1 AND position > ?2 ORDER BY position LIMIT ?3",
    )
    .bind(clinic_id)
    .bind(to_int8(after, "position")?)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(stored_event).collect()
}

/// Events of some actions since a time (`AuditQuery`), oldest first.
pub(super) async fn events(pool: &SqlitePool, q: &AuditQuery) -> StoreResult<Vec<AuditEvent>> {
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT clinic_id, position, at, actor_kind, actor_id, action, subject_type, subject_id, \
                old_value, new_value, reason, prev_hash, hash \
         FROM audit_events \
         WHERE action IN (SELECT value FROM json_each(?1)) AND at >= ?2 \
           AND (?3 IS NULL OR clinic_id IN (SELECT value FROM json_each(?3))) \
         ORDER BY at, clinic_id, position LIMIT ?4",
    )
    .bind(serde_json::json!(q.actions).to_string())
    .bind(micros(q.since))
    .bind(
        q.clinic_ids
            .as_ref()
            .map(|c| serde_json::json!(c).to_string()),
    )
    .bind(i64::from(q.limit))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| stored_event(r).map(|s| s.event))
        .collect()
}

fn stored_event(r: EventRow) -> StoreResult<StoredAuditEvent> {
    let json = |v: Option<String>| -> StoreResult<Option<serde_json::Value>> {
        v.map(|t| {
            serde_json::from_str(&t).map_err(|e| corrupt(format!("audit value is not JSON: {e}")))
        })
        .transpose()
    };
    let actor = Actor::from_parts(&r.actor_kind, &r.actor_id)
        .ok_or_else(|| corrupt(format!("unknown actor kind {}", r.actor_kind)))?;
    let event = AuditEvent {
        clinic_id: r.clinic_id,
        position: to_u64(r.position, "position")?,
        at: time(r.at, "audit time")?,
        actor,
        action: r.action,
        subject_type: r.subject_type,
        subject_id: r.subject_id,
        old_value: json(r.old_value)?,
        new_value: json(r.new_value)?,
        reason: r.reason,
    };
    Ok(StoredAuditEvent {
        event,
        prev_hash: hash32(&r.prev_hash)?,
        hash: hash32(&r.hash)?,
    })
}

/// The hash of one chain position, if the chain has it.
pub(super) async fn hash_at(
    pool: &SqlitePool,
    clinic_id: &str,
    position: u64,
) -> StoreResult<Option<ChainHash>> {
    let row: Option<(Vec<u8>,)> =
        sqlx::query_as("SELECT hash FROM audit_events WHERE clinic_id = ?1 AND position = ?2")
            .bind(clinic_id)
            .bind(to_int8(position, "position")?)
            .fetch_optional(pool)
            .await?;
    row.map(|(h,)| hash32(&h)).transpose()
}

pub(super) async fn save_checkpoint(pool: &SqlitePool, cp: &Checkpoint) -> StoreResult<()> {
    let mut tx = super::begin(pool).await?;
    sqlx::query(
        "INSERT INTO audit_checkpoints (clinic_id, position, hash, at, public_key, signature) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(&cp.clinic_id)
    .bind(to_int8(cp.position, "position")?)
    .bind(cp.hash.as_slice())
    .bind(micros(cp.at))
    .bind(cp.public_key.as_slice())
    .bind(cp.signature.as_slice())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// clinic, position, hash, at, public key, signature.
type CheckpointRow = (String, i64, Vec<u8>, i64, Vec<u8>, Vec<u8>);

pub(super) async fn checkpoints(pool: &SqlitePool) -> StoreResult<Vec<Checkpoint>> {
    let rows: Vec<CheckpointRow> = sqlx::query_as(
        "SELECT clinic_id, position, hash, at, public_key, signature FROM audit_checkpoints \
         ORDER BY clinic_id, position, at",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(clinic_id, position, hash, at, key, sig)| {
            Ok(Checkpoint {
                version: pentrace_domain::checkpoint::CHECKPOINT_VERSION,
                clinic_id,
                position: to_u64(position, "position")?,
                hash: hash32(&hash)?,
                at: time(at, "checkpoint time")?,
                public_key: key
                    .try_into()
                    .map_err(|_| corrupt("public key length".into()))?,
                signature: sig
                    .try_into()
                    .map_err(|_| corrupt("signature length".into()))?,
            })
        })
        .collect()
}
