//! `commit`: a whole write batch in one transaction.
//!
//! The order matters: the arbiters (message keys, then bind-once claims,
//! then recalls and the session rows the batch was judged on) go first, so
//! a lost race is found before any bulk work and the transaction rolls back
//! as `CommitOutcome::Conflict`. Every multi-row statement gets its rows
//! sorted by key, so concurrent commits take row and index locks in the same
//! order and do not deadlock on each other (on SQLite, with one writer at a
//! time, the order only makes both stores name the same first conflict).

use std::collections::{BTreeMap, HashSet};

use async_trait::async_trait;
use pentrace_domain::rules::SeqHole;
use uuid::Uuid;

use super::audit::AuditSql;
use super::flags::FlagSql;
use crate::dialect::{Conn, Dialect, WriteTx};
use crate::shared::drafts::commit_drafts;
use crate::shared::merge::{batch_devices, merge, merge_devices};
use crate::{
    ActivityRow, ClaimRow, CommitOutcome, DeviceWrite, MessageRow, SampleBlock, SessionWrite,
    StoreError, StoreResult, Watermarks, WriteBatch,
};

/// A commit's statements.
#[async_trait]
pub(crate) trait CommitSql: Dialect {
    /// Stores the message keys (sorted, unique); `Some(detail)` naming a key
    /// that was already stored.
    async fn insert_messages(
        c: &mut Conn<Self>,
        rows: &[&MessageRow],
    ) -> StoreResult<Option<String>>;
    /// Binds the cartridges (sorted, unique) unless bound; the cartridge ids
    /// that were bound now.
    async fn claim_cartridges(c: &mut Conn<Self>, rows: &[&ClaimRow]) -> StoreResult<Vec<String>>;
    /// The first of the lots (sorted, unique) that is recalled now, holding
    /// the lots against a recall until the transaction ends.
    async fn first_recalled(
        c: &mut Conn<Self>,
        lots: &[&(String, String)],
    ) -> StoreResult<Option<(String, String)>>;
    /// Creates the sessions (merged, each deciding its relation), or adds to
    /// them where another process created them meanwhile, never to another
    /// device's; the ids (canonical) of those written.
    async fn create_sessions(
        c: &mut Conn<Self>,
        writes: &[&SessionWrite],
    ) -> StoreResult<Vec<String>>;
    /// Adds to stored sessions of the same device; the ids written.
    async fn add_to_sessions(
        c: &mut Conn<Self>,
        writes: &[&SessionWrite],
    ) -> StoreResult<Vec<String>>;
    /// Every sample of the blocks; the stored row count is checked.
    async fn insert_samples(c: &mut Conn<Self>, blocks: &[SampleBlock]) -> StoreResult<()>;
    /// Moves each cartridge's last activity forward and adds its usage,
    /// saturating, where the stored usage is still the `*_before` values;
    /// the cartridge ids updated.
    async fn add_activity(c: &mut Conn<Self>, rows: &[ActivityRow]) -> StoreResult<Vec<String>>;
    /// Liveness and progress (merged, in device order): times and seq only
    /// grow, battery and firmware keep their last known value.
    async fn update_devices(
        c: &mut Conn<Self>,
        writes: &BTreeMap<&str, DeviceWrite>,
    ) -> StoreResult<()>;
    /// Moves each device's stored watermark to the end of its run of stored
    /// seqs, exactly even against commits of other processes; the
    /// watermarks.
    async fn advance_watermarks(c: &mut Conn<Self>, devices: &[&str]) -> StoreResult<Watermarks>;
    /// Replaces the open holes of each listed device with its list.
    async fn replace_holes(c: &mut Conn<Self>, holes: &[(String, Vec<SeqHole>)])
    -> StoreResult<()>;
}

/// Writes the batch, or nothing if another writer got there first.
pub(crate) async fn commit<D: CommitSql + FlagSql + AuditSql>(
    d: &D,
    batch: &WriteBatch,
) -> StoreResult<CommitOutcome> {
    // Invalid batches fail before the transaction: a conflict would make
    // the pipeline retry the same batch forever.
    let messages = sorted_unique(
        &batch.messages,
        |m| (&m.device_id, m.seq),
        |m| {
            format!(
                "message {}/{} appears twice in one batch",
                m.device_id, m.seq
            )
        },
    )?;
    let claims = sorted_unique(
        &batch.claims,
        |c| &c.cartridge_id,
        |c| format!("cartridge {} is claimed twice in one batch", c.cartridge_id),
    )?;
    let mut lots: Vec<&(String, String)> = batch.unrecalled_lots.iter().collect();
    lots.sort();
    lots.dedup();
    // Merged by the canonical id: `ABC…` and `abc…` are one row, which
    // PostgreSQL's one multi-row statement must not touch twice.
    let sessions = merge(&canonical_sessions(&batch.sessions))?;
    for hole in batch
        .holes
        .iter()
        .flat_map(|(d, list)| list.iter().map(move |h| (d, h)))
    {
        if hole.1.device_id != *hole.0 {
            return Err(StoreError::Invalid(format!(
                "a hole of device {} listed under device {}",
                hole.1.device_id, hole.0
            )));
        }
    }

    let mut tx = d.write().await?;
    if let Some(detail) = arbiters::<D>(&mut tx, &messages, &claims, &lots, &sessions).await? {
        return conflict::<D>(tx, detail).await;
    }
    if !batch.samples.is_empty() {
        D::insert_samples(&mut tx, &batch.samples).await?;
    }
    let new_flags = D::insert_flags(&mut tx, &batch.flags).await?;
    D::append(&mut tx, &commit_drafts(batch, &new_flags)).await?;
    // One row per cartridge: an UPDATE from a list applies only one of
    // several rows for the same cartridge.
    let activity = ActivityRow::merged(&batch.activity);
    let updated = match activity.is_empty() {
        true => Vec::new(),
        false => D::add_activity(&mut tx, &activity).await?,
    };
    if let Some(row) = activity.iter().find(|r| !updated.contains(&r.cartridge_id)) {
        let detail = format!(
            "cartridge {} was used by another commit while the batch was judged",
            row.cartridge_id
        );
        return conflict::<D>(tx, detail).await;
    }
    let devices = merge_devices(&batch.devices);
    if !devices.is_empty() {
        D::update_devices(&mut tx, &devices).await?;
    }
    let watermarks = match batch_devices(&batch.messages) {
        ids if ids.is_empty() => Watermarks::new(),
        ids => D::advance_watermarks(&mut tx, &ids).await?,
    };
    if !batch.holes.is_empty() {
        D::replace_holes(&mut tx, &batch.holes).await?;
    }
    tx.commit().await?;
    Ok(CommitOutcome::Committed {
        new_flags,
        watermarks,
    })
}

/// The writes that decide a lost race, in order; `Some(detail)` for the
/// first race lost.
async fn arbiters<D: CommitSql>(
    c: &mut Conn<D>,
    messages: &[&MessageRow],
    claims: &[&ClaimRow],
    lots: &[&(String, String)],
    sessions: &[SessionWrite],
) -> StoreResult<Option<String>> {
    if !messages.is_empty()
        && let Some(detail) = D::insert_messages(c, messages).await?
    {
        return Ok(Some(detail));
    }
    if !claims.is_empty() {
        let won: HashSet<String> = D::claim_cartridges(c, claims).await?.into_iter().collect();
        if let Some(lost) = claims.iter().find(|r| !won.contains(&r.cartridge_id)) {
            return Ok(Some(format!(
                "cartridge {} is already bound",
                lost.cartridge_id
            )));
        }
    }
    if !lots.is_empty()
        && let Some((gtin, lot)) = D::first_recalled(c, lots).await?
    {
        return Ok(Some(format!(
            "lot {lot} of {gtin} was recalled while the batch was judged"
        )));
    }
    write_sessions::<D>(c, sessions).await
}

/// Writes the merged sessions: those that decide their relation create
/// their row (or add to it when another process created it meanwhile; the
/// stored relation stands, it was decided first), the others add to a
/// stored row. `Some(detail)` when one was not written: another device's
/// session has the id, or the session is not stored, i.e. the batch was
/// judged on facts that no longer hold.
async fn write_sessions<D: CommitSql>(
    c: &mut Conn<D>,
    merged: &[SessionWrite],
) -> StoreResult<Option<String>> {
    let (deciding, adding): (Vec<&SessionWrite>, Vec<&SessionWrite>) =
        merged.iter().partition(|w| w.relation.is_some());
    for (writes, create) in [(deciding, true), (adding, false)] {
        if writes.is_empty() {
            continue;
        }
        let written: HashSet<String> = if create {
            D::create_sessions(c, &writes).await?
        } else {
            D::add_to_sessions(c, &writes).await?
        }
        .into_iter()
        .collect();
        for w in writes {
            let id = canonical_id(&w.session_id, "session id")?;
            if !written.contains(&id) {
                return Ok(Some(format!(
                    "session {id} is not stored for this device yet; \
                     the batch was judged on stale facts"
                )));
            }
        }
    }
    Ok(None)
}

/// An id as a caller sends it, in the canonical lowercase form both stores
/// keep (`ABC…` and `abc…` name the same session).
pub(crate) fn canonical_id(value: &str, what: &str) -> StoreResult<String> {
    Uuid::parse_str(value)
        .map(|u| u.to_string())
        .map_err(|e| StoreError::Invalid(format!("{what} {value:?}: {e}")))
}

/// The session writes with their ids in canonical form. An id that is not
/// a UUID is left as sent: the statement that writes it refuses it as
/// `Invalid` in its turn, after the message keys, as before.
fn canonical_sessions(writes: &[SessionWrite]) -> Vec<SessionWrite> {
    writes
        .iter()
        .map(|w| SessionWrite {
            session_id: canonical_id(&w.session_id, "session id")
                .unwrap_or_else(|_| w.session_id.clone()),
            ..w.clone()
        })
        .collect()
}

/// The rows sorted by key; a key twice is invalid (`twice` says which).
fn sorted_unique<'a, T, K: Ord + 'a>(
    rows: &'a [T],
    key: impl Fn(&'a T) -> K,
    twice: impl Fn(&T) -> String,
) -> StoreResult<Vec<&'a T>> {
    let mut sorted: Vec<&T> = rows.iter().collect();
    sorted.sort_by_key(|row| key(row));
    match sorted.windows(2).find(|w| key(w[0]) == key(w[1])) {
        Some(pair) => Err(StoreError::Invalid(twice(pair[0]))),
        None => Ok(sorted),
    }
}

async fn conflict<D: Dialect>(tx: WriteTx<D>, detail: String) -> StoreResult<CommitOutcome> {
    tx.rollback().await?;
    Ok(CommitOutcome::Conflict { detail })
}
