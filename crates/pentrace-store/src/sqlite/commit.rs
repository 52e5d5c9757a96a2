//! `commit`: a whole write batch in one IMMEDIATE transaction.
//!
//! The order is PostgreSQL's: the arbiters (message keys, then bind-once
//! claims, then the session rows the batch was judged on) go first, so a lost
//! race is found before any bulk work and the transaction rolls back as
//! `CommitOutcome::Conflict`. SQLite has one writer at a time, so there is no
//! lock order to keep; keys are still sorted so both stores name the same
//! first conflict. The arbiters take the whole batch in one statement each
//! (a JSON array read with `json_each`, as PostgreSQL reads arrays with
//! `UNNEST`): a statement costs a round trip to the connection's worker
//! thread, and a batch has one message row per message.

use std::collections::HashSet;

use pentrace_domain::rules::SeqHole;
use serde_json::json;
use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};

use super::convert::{micros, opt_uuid_text, to_int4, to_int8, to_u64, uuid_text};
use super::{audit, begin, flags, samples, sessions};
use crate::shared::drafts::commit_drafts;
use crate::shared::merge::{batch_devices, merge_devices};
use crate::{
    ActivityRow, ClaimRow, CommitOutcome, DeviceWrite, MessageRow, StoreError, StoreResult,
    Watermarks, WriteBatch,
};

/// Writes the batch, or nothing if another writer got there first.
pub(super) async fn commit(pool: &SqlitePool, batch: &WriteBatch) -> StoreResult<CommitOutcome> {
    let mut tx = begin(pool).await?;
    if let Some(detail) = insert_messages(&mut tx, &batch.messages).await? {
        return conflict(tx, detail).await;
    }
    if let Some(detail) = insert_claims(&mut tx, &batch.claims).await? {
        return conflict(tx, detail).await;
    }
    if let Some(detail) = recalled_meanwhile(&mut tx, &batch.unrecalled_lots).await? {
        return conflict(tx, detail).await;
    }
    if let Some(detail) = sessions::write(&mut tx, &batch.sessions).await? {
        return conflict(tx, detail).await;
    }
    samples::insert(&mut tx, &batch.samples).await?;
    let new_flags = flags::insert(&mut tx, &batch.flags).await?;
    audit::append(&mut tx, &commit_drafts(batch, &new_flags)).await?;
    if let Some(detail) = update_activity(&mut tx, &batch.activity).await? {
        return conflict(tx, detail).await;
    }
    update_devices(&mut tx, &batch.devices).await?;
    let watermarks = advance_watermarks(&mut tx, &batch_devices(&batch.messages)).await?;
    replace_holes(&mut tx, &batch.holes).await?;
    tx.commit().await?;
    Ok(CommitOutcome::Committed {
        new_flags,
        watermarks,
    })
}

/// `Some(detail)` when a lot the batch judged as not recalled is recalled
/// now (the write transaction holds SQLite's one write lock, so no recall
/// can land between this check and the commit).
async fn recalled_meanwhile(
    conn: &mut SqliteConnection,
    lots: &[(String, String)],
) -> StoreResult<Option<String>> {
    for (gtin, lot) in lots {
        let recalled: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM lots WHERE gtin = ?1 AND lot = ?2 AND recalled_at IS NOT NULL",
        )
        .bind(gtin)
        .bind(lot)
        .fetch_optional(&mut *conn)
        .await?;
        if recalled.is_some() {
            return Ok(Some(format!(
                "lot {lot} of {gtin} was recalled while the batch was judged"
            )));
        }
    }
    Ok(None)
}

async fn conflict(tx: Transaction<'_, Sqlite>, detail: String) -> StoreResult<CommitOutcome> {
    tx.rollback().await?;
    Ok(CommitOutcome::Conflict { detail })
}

/// Stores the message keys; `Some(detail)` when one was already stored.
async fn insert_messages(
    conn: &mut SqliteConnection,
    messages: &[MessageRow],
) -> StoreResult<Option<String>> {
    if messages.is_empty() {
        return Ok(None);
    }
    let rows = sorted_messages(messages)?;
    // `WHERE true` tells SQLite's parser that ON CONFLICT belongs to the
    // INSERT, not to a join.
    let stored: Vec<(String, i64)> = sqlx::query_as(
        "INSERT INTO device_messages (device_id, seq, kind, session_id, sent_at, received_at) \
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5 \
         FROM json_each(?1) WHERE true ON CONFLICT DO NOTHING RETURNING device_id, seq",
    )
    .bind(messages_json(&rows)?)
    .fetch_all(conn)
    .await?;
    if stored.len() == rows.len() {
        return Ok(None);
    }
    let stored: HashSet<(&str, u64)> = stored
        .iter()
        .filter_map(|(d, s)| Some((d.as_str(), u64::try_from(*s).ok()?)))
        .collect();
    let lost = rows
        .iter()
        .find(|r| !stored.contains(&(r.device_id.as_str(), r.seq)));
    Ok(Some(match lost {
        Some(row) => format!("message {}/{} is already stored", row.device_id, row.seq),
        None => "a message of the batch is already stored".to_owned(),
    }))
}

/// The messages in key order; a key twice in one batch is invalid, since a
/// conflict would make the pipeline retry the same batch forever.
fn sorted_messages(messages: &[MessageRow]) -> StoreResult<Vec<&MessageRow>> {
    let mut rows: Vec<&MessageRow> = messages.iter().collect();
    rows.sort_by(|a, b| (&a.device_id, a.seq).cmp(&(&b.device_id, b.seq)));
    match rows
        .windows(2)
        .find(|w| (&w[0].device_id, w[0].seq) == (&w[1].device_id, w[1].seq))
    {
        Some(pair) => Err(StoreError::Invalid(format!(
            "message {}/{} appears twice in one batch",
            pair[0].device_id, pair[0].seq
        ))),
        None => Ok(rows),
    }
}

/// The rows of `device_messages`, as one JSON array of arrays.
fn messages_json(rows: &[&MessageRow]) -> StoreResult<String> {
    let rows = rows
        .iter()
        .map(|row| {
            Ok(json!([
                row.device_id,
                to_int8(row.seq, "seq")?,
                row.kind,
                opt_uuid_text(row.session_id.as_deref(), "session id")?,
                micros(row.sent_at),
                micros(row.received_at),
            ]))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(json!(rows).to_string())
}

/// Bind-once: `Some(detail)` when a cartridge is already bound. The primary
/// key decides, in commit order.
async fn insert_claims(
    conn: &mut SqliteConnection,
    claims: &[ClaimRow],
) -> StoreResult<Option<String>> {
    if claims.is_empty() {
        return Ok(None);
    }
    let rows = sorted_claims(claims)?;
    let won: Vec<String> = sqlx::query_scalar(
        "INSERT INTO cartridges (cartridge_id, session_id, device_id, patient_ref, bound_at, \
                                 last_activity_at) \
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 4 \
         FROM json_each(?1) WHERE true ON CONFLICT (cartridge_id) DO NOTHING \
         RETURNING cartridge_id",
    )
    .bind(claims_json(&rows)?)
    .fetch_all(conn)
    .await?;
    if won.len() == rows.len() {
        return Ok(None);
    }
    let won: HashSet<&str> = won.iter().map(String::as_str).collect();
    let lost = rows.iter().find(|r| !won.contains(r.cartridge_id.as_str()));
    Ok(Some(match lost {
        Some(row) => format!("cartridge {} is already bound", row.cartridge_id),
        None => "a cartridge of the batch is already bound".to_owned(),
    }))
}

/// The claims in cartridge order; a cartridge claimed twice in one batch is
/// invalid.
fn sorted_claims(claims: &[ClaimRow]) -> StoreResult<Vec<&ClaimRow>> {
    let mut rows: Vec<&ClaimRow> = claims.iter().collect();
    rows.sort_by(|a, b| a.cartridge_id.cmp(&b.cartridge_id));
    match rows
        .windows(2)
        .find(|w| w[0].cartridge_id == w[1].cartridge_id)
    {
        Some(pair) => Err(StoreError::Invalid(format!(
            "cartridge {} is claimed twice in one batch",
            pair[0].cartridge_id
        ))),
        None => Ok(rows),
    }
}

/// The claims as rows of `cartridges`, one JSON array of arrays.
fn claims_json(rows: &[&ClaimRow]) -> StoreResult<String> {
    let rows = rows
        .iter()
        .map(|row| {
            Ok(json!([
                row.cartridge_id,
                uuid_text(&row.session_id, "session id")?,
                row.device_id,
                row.patient_ref,
                micros(row.bound_at),
            ]))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(json!(rows).to_string())
}

/// Moves each cartridge's last activity forward (never back) and adds its
/// procedure's usage, saturating at the integer maximum; `Some(detail)`
/// when a cartridge's usage is no longer what the batch was judged on (one
/// process writes at a time here, so only another process on the same file
/// could have changed it).
async fn update_activity(
    conn: &mut SqliteConnection,
    activity: &[ActivityRow],
) -> StoreResult<Option<String>> {
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for row in ActivityRow::merged(activity) {
        let done = sqlx::query(
            "UPDATE cartridges SET last_activity_at = max(last_activity_at, ?2), \
               strokes = CASE WHEN ?3 > 9223372036854775807 - strokes \
                              THEN 9223372036854775807 ELSE strokes + ?3 END, \
               active_ms = CASE WHEN ?4 > 9223372036854775807 - active_ms \
                                THEN 9223372036854775807 ELSE active_ms + ?4 END \
             WHERE cartridge_id = ?1 AND strokes = ?5 AND active_ms = ?6",
        )
        .bind(&row.cartridge_id)
        .bind(micros(row.at))
        .bind(clamp(row.add_strokes))
        .bind(clamp(row.add_active_ms))
        .bind(clamp(row.strokes_before))
        .bind(clamp(row.active_ms_before))
        .execute(&mut *conn)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(Some(format!(
                "cartridge {} was used by another commit while the batch was judged",
                row.cartridge_id
            )));
        }
    }
    Ok(None)
}

/// Liveness and progress: times and seq only grow, battery and firmware keep
/// their last known value.
async fn update_devices(conn: &mut SqliteConnection, writes: &[DeviceWrite]) -> StoreResult<()> {
    for (id, w) in merge_devices(writes) {
        // SQLite's max() is NULL when an argument is: a device never seen
        // before takes the new time, as PostgreSQL's GREATEST ignores NULL.
        sqlx::query(
            "UPDATE devices SET last_seen = max(COALESCE(last_seen, ?2), ?2), \
                                max_seq = max(max_seq, ?3), \
                                battery_pct = COALESCE(?4, battery_pct), \
                                firmware = COALESCE(?5, firmware) \
             WHERE id = ?1",
        )
        .bind(id)
        .bind(micros(w.last_seen))
        .bind(to_int8(w.max_seq, "device max seq")?)
        .bind(w.battery_pct.map(|b| to_int4(b, "battery")).transpose()?)
        .bind(w.firmware.as_deref())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Moves each device's stored watermark to the end of its run of stored
/// seqs, and returns the watermarks (PostgreSQL's statement, one device at
/// a time: SQLite's one writer needs no lock, and has no UPDATE in a CTE).
pub(super) async fn advance_watermarks(
    conn: &mut SqliteConnection,
    devices: &[&str],
) -> StoreResult<Watermarks> {
    let mut watermarks = Watermarks::new();
    for &id in devices {
        let through: Option<i64> = sqlx::query_scalar(concat!(
            "WITH cur AS (SELECT id, stored_through AS w FROM devices WHERE id = ?1) SELECT ",
            crate::watermark::run_end_sql!(),
            " FROM cur"
        ))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(through) = through else { continue };
        sqlx::query("UPDATE devices SET stored_through = ?2 WHERE id = ?1 AND stored_through < ?2")
            .bind(id)
            .bind(through)
            .execute(&mut *conn)
            .await?;
        watermarks.insert(id.to_owned(), to_u64(through, "device stored watermark")?);
    }
    Ok(watermarks)
}

/// Replaces the open holes of each listed device with the given list.
async fn replace_holes(
    conn: &mut SqliteConnection,
    holes: &[(String, Vec<SeqHole>)],
) -> StoreResult<()> {
    let mut rows: Vec<(&str, i64, i64, i64)> = Vec::new();
    for (device_id, list) in holes {
        for hole in list {
            rows.push(hole_values(device_id, hole)?);
        }
    }
    for (device_id, _) in holes {
        sqlx::query("DELETE FROM seq_holes WHERE device_id = ?1")
            .bind(device_id)
            .execute(&mut *conn)
            .await?;
    }
    for (device_id, first, last, detected_at) in rows {
        sqlx::query(
            "INSERT INTO seq_holes (device_id, first_seq, last_seq, detected_at) \
             VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(device_id)
        .bind(first)
        .bind(last)
        .bind(detected_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A hole's columns; it must be listed under its own device.
fn hole_values<'a>(device_id: &'a str, hole: &SeqHole) -> StoreResult<(&'a str, i64, i64, i64)> {
    if hole.device_id != device_id {
        return Err(StoreError::Invalid(format!(
            "a hole of device {} listed under device {device_id}",
            hole.device_id
        )));
    }
    Ok((
        device_id,
        to_int8(hole.first, "hole first seq")?,
        to_int8(hole.last, "hole last seq")?,
        micros(hole.detected_at),
    ))
}
