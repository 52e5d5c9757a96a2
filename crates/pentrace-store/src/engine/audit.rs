//! The audit trail: appending to per-clinic hash chains inside the caller's
//! transaction, reading chains page by page for verification, checkpoints.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use pentrace_domain::audit::{Actor, AuditEvent, ChainHash, GENESIS, chain_hash};
use pentrace_domain::checkpoint::{CHECKPOINT_VERSION, Checkpoint};

use crate::dialect::{Conn, Dialect, for_both_stores};
use crate::shared::columns::int8;
use crate::shared::drafts::{now_micros, to_event};
use crate::shared::{StoredTime, corrupt, hash32, stored_u64};
use crate::{AuditDraft, AuditQuery, ChainHead, StoreResult, StoredAuditEvent};

/// An event with its place in the chain, as stored.
#[derive(Debug)]
pub(crate) struct ChainedEvent {
    pub event: AuditEvent,
    pub prev: ChainHash,
    pub hash: ChainHash,
}

/// The audit trail's statements whose SQL differs between the dialects.
#[async_trait]
pub(crate) trait AuditSql: Dialect {
    /// The heads of the given chains (sorted), held against other appenders
    /// until the transaction ends; a chain not listed is new.
    /// Rows of `(clinic, position, hash)`.
    async fn lock_heads(
        c: &mut Conn<Self>,
        clinics: &[&str],
    ) -> StoreResult<Vec<(String, i64, Vec<u8>)>>;
    async fn insert_events(c: &mut Conn<Self>, events: &[ChainedEvent]) -> StoreResult<()>;
    /// Creates or moves the chains' heads.
    async fn set_heads(c: &mut Conn<Self>, heads: &[ChainHead]) -> StoreResult<()>;
    /// Events of the query's actions (and chains) since its time, by time.
    async fn events(c: &mut Conn<Self>, q: &AuditQuery) -> StoreResult<Vec<StoredAuditEvent>>;

    /// Appends the drafts to their chains and returns each draft's hash, in
    /// the order given; every event of one call shares one time. Heads are
    /// taken in clinic order, so concurrent appenders never deadlock, and
    /// one clinic's appenders never wait on another's.
    async fn append(c: &mut Conn<Self>, drafts: &[AuditDraft]) -> StoreResult<Vec<ChainHash>> {
        if drafts.is_empty() {
            return Ok(Vec::new());
        }
        let mut by_clinic: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, d) in drafts.iter().enumerate() {
            by_clinic.entry(d.clinic_id.as_str()).or_default().push(i);
        }
        let clinics: Vec<&str> = by_clinic.keys().copied().collect();
        let mut heads = HashMap::new();
        for (clinic, position, hash) in Self::lock_heads(c, &clinics).await? {
            let head = chain_head(clinic, position, &hash)?;
            heads.insert(head.clinic_id, (head.position, head.hash));
        }
        let at = now_micros();
        let mut events = Vec::with_capacity(drafts.len());
        let mut hashes = vec![GENESIS; drafts.len()];
        let mut new_heads = Vec::with_capacity(clinics.len());
        for (clinic, indices) in &by_clinic {
            let (mut position, mut prev) = heads.get(*clinic).copied().unwrap_or((0, GENESIS));
            for &i in indices {
                position += 1;
                let event = to_event(&drafts[i], position, at);
                let hash = chain_hash(&prev, &event);
                events.push(ChainedEvent { event, prev, hash });
                hashes[i] = hash;
                prev = hash;
            }
            new_heads.push(ChainHead {
                clinic_id: clinic.to_string(),
                position,
                hash: prev,
            });
        }
        Self::insert_events(c, &events).await?;
        Self::set_heads(c, &new_heads).await?;
        Ok(hashes)
    }
}

/// The audit trail's statements both dialects spell alike.
#[async_trait]
pub(crate) trait AuditCommonSql: Dialect {
    async fn heads(c: &mut Conn<Self>) -> StoreResult<Vec<ChainHead>>;
    /// Up to `limit` events of a chain after `after`, in position order
    /// (keyset paging: memory stays bounded by the page, whatever the
    /// chain's length).
    async fn page(
        c: &mut Conn<Self>,
        clinic_id: &str,
        after: u64,
        limit: u32,
    ) -> StoreResult<Vec<StoredAuditEvent>>;
    async fn hash_at(
        c: &mut Conn<Self>,
        clinic_id: &str,
        position: u64,
    ) -> StoreResult<Option<ChainHash>>;
    async fn save_checkpoint(c: &mut Conn<Self>, cp: &Checkpoint) -> StoreResult<()>;
    /// By clinic, position and time.
    async fn checkpoints(c: &mut Conn<Self>) -> StoreResult<Vec<Checkpoint>>;
}

for_both_stores! {
    impl AuditCommonSql {
        async fn heads(c: &mut Conn<Self>) -> StoreResult<Vec<ChainHead>> {
            let rows: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
                "SELECT clinic_id, position, hash FROM audit_heads ORDER BY clinic_id",
            )
            .fetch_all(c)
            .await?;
            rows.into_iter()
                .map(|(clinic, position, hash)| chain_head(clinic, position, &hash))
                .collect()
        }

        async fn page(
            c: &mut Conn<Self>,
            clinic_id: &str,
            after: u64,
            limit: u32,
        ) -> StoreResult<Vec<StoredAuditEvent>> {
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM audit_events \
                 WHERE clinic_id = $1 AND position > $2 ORDER BY position LIMIT $3"
            );
            let rows: Vec<EventRow<<Self as Dialect>::Time>> = sqlx::query_as(&sql)
                .bind(clinic_id)
                .bind(int8(after, "position")?)
                .bind(i64::from(limit))
                .fetch_all(c)
                .await?;
            rows.into_iter().map(EventRow::into_stored).collect()
        }

        async fn hash_at(
            c: &mut Conn<Self>,
            clinic_id: &str,
            position: u64,
        ) -> StoreResult<Option<ChainHash>> {
            let row: Option<(Vec<u8>,)> = sqlx::query_as(
                "SELECT hash FROM audit_events WHERE clinic_id = $1 AND position = $2",
            )
            .bind(clinic_id)
            .bind(int8(position, "position")?)
            .fetch_optional(c)
            .await?;
            row.map(|(h,)| hash32(&h)).transpose()
        }

        async fn save_checkpoint(c: &mut Conn<Self>, cp: &Checkpoint) -> StoreResult<()> {
            let sql = format!(
                "INSERT INTO audit_checkpoints ({CHECKPOINT_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6)"
            );
            sqlx::query(&sql)
                .bind(&cp.clinic_id)
                .bind(int8(cp.position, "position")?)
                .bind(cp.hash.as_slice())
                .bind(Self::time(cp.at))
                .bind(cp.public_key.as_slice())
                .bind(cp.signature.as_slice())
                .execute(c)
                .await?;
            Ok(())
        }

        async fn checkpoints(c: &mut Conn<Self>) -> StoreResult<Vec<Checkpoint>> {
            let sql = format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints \
                 ORDER BY clinic_id, position, at"
            );
            let rows: Vec<CheckpointRow<<Self as Dialect>::Time>> =
                sqlx::query_as(&sql).fetch_all(c).await?;
            rows.into_iter().map(checkpoint_from).collect()
        }
    }
}

/// Appends events that record no other write.
pub(crate) async fn append_audit<D: AuditSql>(d: &D, drafts: &[AuditDraft]) -> StoreResult<()> {
    let mut tx = d.write().await?;
    D::append(&mut tx, drafts).await?;
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn save_checkpoint<D: AuditCommonSql>(d: &D, cp: &Checkpoint) -> StoreResult<()> {
    let mut tx = d.write().await?;
    D::save_checkpoint(&mut tx, cp).await?;
    tx.commit().await?;
    Ok(())
}

/// An `audit_events` row; `T` is the dialect's time column.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EventRow<T> {
    clinic_id: String,
    position: i64,
    at: T,
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

/// The columns of [`EventRow`].
pub(crate) const EVENT_COLUMNS: &str = "clinic_id, position, at, actor_kind, actor_id, action, \
     subject_type, subject_id, old_value, new_value, reason, prev_hash, hash";

impl<T: StoredTime> EventRow<T> {
    pub(crate) fn into_stored(self) -> StoreResult<StoredAuditEvent> {
        let json = |v: Option<String>| -> StoreResult<Option<serde_json::Value>> {
            v.map(|t| {
                serde_json::from_str(&t)
                    .map_err(|e| corrupt(format!("audit value is not JSON: {e}")))
            })
            .transpose()
        };
        let actor = Actor::from_parts(&self.actor_kind, &self.actor_id)
            .ok_or_else(|| corrupt(format!("unknown actor kind {}", self.actor_kind)))?;
        let event = AuditEvent {
            clinic_id: self.clinic_id,
            position: stored_u64(self.position, "position")?,
            at: self.at.into_time("audit time")?,
            actor,
            action: self.action,
            subject_type: self.subject_type,
            subject_id: self.subject_id,
            old_value: json(self.old_value)?,
            new_value: json(self.new_value)?,
            reason: self.reason,
        };
        Ok(StoredAuditEvent {
            event,
            prev_hash: hash32(&self.prev_hash)?,
            hash: hash32(&self.hash)?,
        })
    }
}

/// The columns of a stored [`ChainHead`].
pub(crate) fn chain_head(clinic_id: String, position: i64, hash: &[u8]) -> StoreResult<ChainHead> {
    Ok(ChainHead {
        clinic_id,
        position: stored_u64(position, "position")?,
        hash: hash32(hash)?,
    })
}

/// An `audit_checkpoints` row: clinic, position, hash, at, public key,
/// signature.
pub(crate) type CheckpointRow<T> = (String, i64, Vec<u8>, T, Vec<u8>, Vec<u8>);

/// The columns of [`CheckpointRow`], in its order.
pub(crate) const CHECKPOINT_COLUMNS: &str = "clinic_id, position, hash, at, public_key, signature";

pub(crate) fn checkpoint_from<T: StoredTime>(row: CheckpointRow<T>) -> StoreResult<Checkpoint> {
    let (clinic_id, position, hash, at, key, sig) = row;
    Ok(Checkpoint {
        version: CHECKPOINT_VERSION,
        clinic_id,
        position: stored_u64(position, "position")?,
        hash: hash32(&hash)?,
        at: at.into_time("checkpoint time")?,
        public_key: key
            .try_into()
            .map_err(|_| corrupt("public key length".into()))?,
        signature: sig
            .try_into()
            .map_err(|_| corrupt("signature length".into()))?,
    })
}

/// Events of the query's actions since its time, oldest first.
pub(crate) async fn audit_events<D: AuditSql>(
    d: &D,
    q: &AuditQuery,
) -> StoreResult<Vec<AuditEvent>> {
    let rows = D::events(&mut *d.read().await?, q).await?;
    Ok(rows.into_iter().map(|s| s.event).collect())
}
