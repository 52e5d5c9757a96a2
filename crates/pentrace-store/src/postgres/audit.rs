//! The audit trail: appending to per-clinic hash chains inside the caller's
//! transaction, reading chains page by page for verification, checkpoints.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use pentrace_domain::audit::{Actor, AuditEvent, ChainHash, GENESIS, chain_hash};
use pentrace_domain::checkpoint::Checkpoint;
use sqlx::{PgConnection, PgPool};

use super::convert::{corrupt, from_i64, to_i64};
use crate::{AuditDraft, AuditQuery, ChainHead, StoreResult, StoredAuditEvent};

/// Appends the drafts to their chains and returns each draft's hash, in the
/// order given. Heads are locked in clinic order, so concurrent appenders
/// never deadlock, and one clinic's appenders never wait on another's.
pub(super) async fn append(
    conn: &mut PgConnection,
    drafts: &[AuditDraft],
) -> StoreResult<Vec<ChainHash>> {
    if drafts.is_empty() {
        return Ok(Vec::new());
    }
    let mut by_clinic: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, d) in drafts.iter().enumerate() {
        by_clinic.entry(d.clinic_id.as_str()).or_default().push(i);
    }
    let clinics: Vec<&str> = by_clinic.keys().copied().collect();
    let heads = lock_heads(conn, &clinics).await?;
    let at = crate::shared::drafts::now_micros();
    let mut rows = Rows::default();
    let mut hashes = vec![GENESIS; drafts.len()];
    let mut new_heads = Vec::with_capacity(clinics.len());
    for (clinic, indices) in &by_clinic {
        let (mut position, mut prev) = heads.get(*clinic).copied().unwrap_or((0, GENESIS));
        for &i in indices {
            position += 1;
            let event = crate::shared::drafts::to_event(&drafts[i], position, at);
            let hash = chain_hash(&prev, &event);
            rows.push(&event, prev, hash)?;
            hashes[i] = hash;
            prev = hash;
        }
        new_heads.push((clinic.to_string(), position, prev));
    }
    rows.insert(conn).await?;
    update_heads(conn, &new_heads).await?;
    Ok(hashes)
}

async fn lock_heads(
    conn: &mut PgConnection,
    clinics: &[&str],
) -> StoreResult<BTreeMap<String, (u64, ChainHash)>> {
    sqlx::query(
        "INSERT INTO audit_heads (clinic_id, position, hash) \
         SELECT c, 0, $2 FROM UNNEST($1::text[]) AS c ON CONFLICT DO NOTHING",
    )
    .bind(clinics)
    .bind(GENESIS.as_slice())
    .execute(&mut *conn)
    .await?;
    let rows: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT clinic_id, position, hash FROM audit_heads WHERE clinic_id = ANY($1) \
         ORDER BY clinic_id FOR UPDATE",
    )
    .bind(clinics)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(clinic, position, hash)| {
            Ok((clinic, (from_i64(position, "position")?, hash32(&hash)?)))
        })
        .collect()
}

async fn update_heads(
    conn: &mut PgConnection,
    heads: &[(String, u64, ChainHash)],
) -> StoreResult<()> {
    let positions = heads
        .iter()
        .map(|h| to_i64(h.1, "position"))
        .collect::<StoreResult<Vec<_>>>()?;
    sqlx::query(
        "UPDATE audit_heads h SET position = u.p, hash = u.h \
         FROM UNNEST($1::text[], $2::int8[], $3::bytea[]) AS u(c, p, h) WHERE h.clinic_id = u.c",
    )
    .bind(heads.iter().map(|h| h.0.as_str()).collect::<Vec<_>>())
    .bind(positions)
    .bind(heads.iter().map(|h| h.2.to_vec()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Column arrays of a multi-row insert.
#[derive(Default)]
struct Rows {
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

impl Rows {
    fn push(&mut self, e: &AuditEvent, prev: ChainHash, hash: ChainHash) -> StoreResult<()> {
        let (kind, id) = e.actor.parts();
        self.clinic.push(e.clinic_id.clone());
        self.position.push(to_i64(e.position, "position")?);
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
        self.prev.push(prev.to_vec());
        self.hash.push(hash.to_vec());
        Ok(())
    }

    async fn insert(self, conn: &mut PgConnection) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_events (clinic_id, position, at, actor_kind, actor_id, action, \
                 subject_type, subject_id, old_value, new_value, reason, prev_hash, hash) \
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::timestamptz[], $4::text[], \
                 $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], \
                 $11::text[], $12::bytea[], $13::bytea[])",
        )
        .bind(self.clinic)
        .bind(self.position)
        .bind(self.at)
        .bind(self.actor_kind)
        .bind(self.actor_id)
        .bind(self.action)
        .bind(self.subject_type)
        .bind(self.subject_id)
        .bind(self.old_value)
        .bind(self.new_value)
        .bind(self.reason)
        .bind(self.prev)
        .bind(self.hash)
        .execute(conn)
        .await?;
        Ok(())
    }
}

fn hash32(bytes: &[u8]) -> StoreResult<ChainHash> {
    bytes
        .try_into()
        .map_err(|_| corrupt(format!("a stored hash has {} bytes, not 32", bytes.len())))
}

/// Every chain's head.
pub(super) async fn heads(pool: &PgPool) -> StoreResult<Vec<ChainHead>> {
    let rows: Vec<(String, i64, Vec<u8>)> =
        sqlx::query_as("SELECT clinic_id, position, hash FROM audit_heads ORDER BY clinic_id")
            .fetch_all(pool)
            .await?;
    rows.into_iter()
        .map(|(clinic_id, position, hash)| {
            Ok(ChainHead {
                clinic_id,
                position: from_i64(position, "position")?,
                hash: hash32(&hash)?,
            })
        })
        .collect()
}

type EventRow = (
    String,
    i64,
    DateTime<Utc>,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Vec<u8>,
    Vec<u8>,
);

/// Up to `limit` events of a chain after `after`, in position order (keyset
/// paging: memory stays bounded by the page, whatever the chain's length).
pub(super) async fn page(
    pool: &PgPool,
    clinic_id: &str,
    after: u64,
    limit: u32,
) -> StoreResult<Vec<StoredAuditEvent>> {
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT clinic_id, position, at, actor_kind, actor_id, action, subject_type, subject_id, \
                old_value, new_value, reason, prev_hash, hash \
         FROM audit_events WHERE clinic_id = $1 AND position > $2 ORDER BY position LIMIT $3",
    )
    .bind(clinic_id)
    .bind(to_i64(after, "position")?)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(stored_event).collect()
}

/// Events of some actions since a time (`AuditQuery`), oldest first.
pub(super) async fn events(pool: &PgPool, q: &AuditQuery) -> StoreResult<Vec<AuditEvent>> {
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT clinic_id, position, at, actor_kind, actor_id, action, subject_type, subject_id, \
                old_value, new_value, reason, prev_hash, hash \
         FROM audit_events \
         WHERE action = ANY($1) AND at >= $2 AND ($3::text[] IS NULL OR clinic_id = ANY($3)) \
         ORDER BY at, clinic_id, position LIMIT $4",
    )
    .bind(&q.actions)
    .bind(q.since)
    .bind(q.clinic_ids.as_deref())
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
    let actor = Actor::from_parts(&r.3, &r.4)
        .ok_or_else(|| corrupt(format!("unknown actor kind {}", r.3)))?;
    let event = AuditEvent {
        clinic_id: r.0,
        position: from_i64(r.1, "position")?,
        at: r.2,
        actor,
        action: r.5,
        subject_type: r.6,
        subject_id: r.7,
        old_value: json(r.8)?,
        new_value: json(r.9)?,
        reason: r.10,
    };
    Ok(StoredAuditEvent {
        event,
        prev_hash: hash32(&r.11)?,
        hash: hash32(&r.12)?,
    })
}

/// The hash of one chain position, if the chain has it.
pub(super) async fn hash_at(
    pool: &PgPool,
    clinic_id: &str,
    position: u64,
) -> StoreResult<Option<ChainHash>> {
    let row: Option<(Vec<u8>,)> =
        sqlx::query_as("SELECT hash FROM audit_events WHERE clinic_id = $1 AND position = $2")
            .bind(clinic_id)
            .bind(to_i64(position, "position")?)
            .fetch_optional(pool)
            .await?;
    row.map(|(h,)| hash32(&h)).transpose()
}

pub(super) async fn save_checkpoint(pool: &PgPool, cp: &Checkpoint) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO audit_checkpoints (clinic_id, position, hash, at, public_key, signature) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&cp.clinic_id)
    .bind(to_i64(cp.position, "position")?)
    .bind(cp.hash.as_slice())
    .bind(cp.at)
    .bind(cp.public_key.as_slice())
    .bind(cp.signature.as_slice())
    .execute(pool)
    .await?;
    Ok(())
}

/// clinic, position, hash, at, public key, signature.
type CheckpointRow = (String, i64, Vec<u8>, DateTime<Utc>, Vec<u8>, Vec<u8>);

pub(super) async fn checkpoints(pool: &PgPool) -> StoreResult<Vec<Checkpoint>> {
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
                position: from_i64(position, "position")?,
                hash: hash32(&hash)?,
                at,
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
