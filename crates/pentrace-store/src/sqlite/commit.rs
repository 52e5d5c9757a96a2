//! A commit's statements on SQLite, inside one IMMEDIATE transaction: SQLite
//! has one writer at a time, so there is no lock order to keep. The
//! arbiters take the whole batch in one statement each (a JSON array read
//! with `json_each`, as PostgreSQL reads arrays with `UNNEST`): a statement
//! costs a round trip to the connection's worker thread, and a batch has one
//! message row per message.

use std::collections::{BTreeMap, HashSet};

use async_trait::async_trait;
use pentrace_domain::rules::SeqHole;
use serde_json::json;
use sqlx::SqliteConnection;
use uuid::fmt::Hyphenated;

use crate::shared::columns::{id_text, int4, int8, micros, opt_id};
use crate::shared::stored_u64;

use super::SqliteStore;
use super::{samples, sessions};
use crate::engine::commit::CommitSql;
use crate::{
    ActivityRow, ClaimRow, DeviceWrite, MessageRow, SampleBlock, SessionWrite, StoreResult,
    Watermarks,
};

#[async_trait]
impl CommitSql for SqliteStore {
    async fn insert_messages(
        c: &mut SqliteConnection,
        rows: &[&MessageRow],
    ) -> StoreResult<Option<String>> {
        // `WHERE true` tells SQLite's parser that ON CONFLICT belongs to the
        // INSERT, not to a join.
        let stored: Vec<(String, i64)> = sqlx::query_as(
            "INSERT INTO device_messages (device_id, seq, kind, session_id, sent_at, received_at) \
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5 \
             FROM json_each(?1) WHERE true ON CONFLICT DO NOTHING RETURNING device_id, seq",
        )
        .bind(messages_json(rows)?)
        .fetch_all(c)
        .await?;
        let stored: HashSet<(&str, u64)> = stored
            .iter()
            .filter_map(|(d, s)| Some((d.as_str(), u64::try_from(*s).ok()?)))
            .collect();
        Ok(rows
            .iter()
            .find(|r| !stored.contains(&(r.device_id.as_str(), r.seq)))
            .map(|row| format!("message {}/{} is already stored", row.device_id, row.seq)))
    }

    async fn claim_cartridges(
        c: &mut SqliteConnection,
        rows: &[&ClaimRow],
    ) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "INSERT INTO cartridges (cartridge_id, session_id, device_id, patient_ref, bound_at, \
                                     last_activity_at) \
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 4 \
             FROM json_each(?1) WHERE true ON CONFLICT (cartridge_id) DO NOTHING \
             RETURNING cartridge_id",
        )
        .bind(claims_json(rows)?)
        .fetch_all(c)
        .await?)
    }

    /// The write transaction holds SQLite's one write lock, so no recall can
    /// land between this check and the commit.
    async fn first_recalled(
        c: &mut SqliteConnection,
        lots: &[&(String, String)],
    ) -> StoreResult<Option<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT l.gtin, l.lot FROM lots l JOIN json_each(?1) u \
               ON l.gtin = u.value ->> 0 AND l.lot = u.value ->> 1 \
             WHERE l.recalled_at IS NOT NULL ORDER BY l.gtin, l.lot LIMIT 1",
        )
        .bind(json!(lots).to_string())
        .fetch_optional(c)
        .await?)
    }

    async fn create_sessions(
        c: &mut SqliteConnection,
        writes: &[&SessionWrite],
    ) -> StoreResult<Vec<String>> {
        sessions::create(c, writes).await
    }

    async fn add_to_sessions(
        c: &mut SqliteConnection,
        writes: &[&SessionWrite],
    ) -> StoreResult<Vec<String>> {
        sessions::add(c, writes).await
    }

    async fn insert_samples(c: &mut SqliteConnection, blocks: &[SampleBlock]) -> StoreResult<()> {
        samples::insert(c, blocks).await
    }

    async fn add_activity(
        c: &mut SqliteConnection,
        rows: &[ActivityRow],
    ) -> StoreResult<Vec<String>> {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let mut updated = Vec::new();
        for row in rows {
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
            .execute(&mut *c)
            .await?;
            if done.rows_affected() > 0 {
                updated.push(row.cartridge_id.clone());
            }
        }
        Ok(updated)
    }

    async fn update_devices(
        c: &mut SqliteConnection,
        merged: &BTreeMap<&str, DeviceWrite>,
    ) -> StoreResult<()> {
        for (id, w) in merged {
            // SQLite's max() is NULL when an argument is: a device never
            // seen before takes the new time, as PostgreSQL's GREATEST
            // ignores NULL.
            sqlx::query(
                "UPDATE devices SET last_seen = max(COALESCE(last_seen, ?2), ?2), \
                                    max_seq = max(max_seq, ?3), \
                                    battery_pct = COALESCE(?4, battery_pct), \
                                    firmware = COALESCE(?5, firmware) \
                 WHERE id = ?1",
            )
            .bind(id)
            .bind(micros(w.last_seen))
            .bind(int8(w.max_seq, "device max seq")?)
            .bind(w.battery_pct.map(|b| int4(b, "battery")).transpose()?)
            .bind(w.firmware.as_deref())
            .execute(&mut *c)
            .await?;
        }
        Ok(())
    }

    /// PostgreSQL's statement, one device at a time: SQLite's one writer
    /// needs no lock, and has no UPDATE in a CTE.
    async fn advance_watermarks(
        c: &mut SqliteConnection,
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
            .fetch_optional(&mut *c)
            .await?;
            let Some(through) = through else { continue };
            sqlx::query(
                "UPDATE devices SET stored_through = ?2 WHERE id = ?1 AND stored_through < ?2",
            )
            .bind(id)
            .bind(through)
            .execute(&mut *c)
            .await?;
            watermarks.insert(
                id.to_owned(),
                stored_u64(through, "device stored watermark")?,
            );
        }
        Ok(watermarks)
    }

    async fn replace_holes(
        c: &mut SqliteConnection,
        holes: &[(String, Vec<SeqHole>)],
    ) -> StoreResult<()> {
        for (device_id, _) in holes {
            sqlx::query("DELETE FROM seq_holes WHERE device_id = ?1")
                .bind(device_id)
                .execute(&mut *c)
                .await?;
        }
        for hole in holes.iter().flat_map(|(_, list)| list.iter()) {
            sqlx::query(
                "INSERT INTO seq_holes (device_id, first_seq, last_seq, detected_at) \
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(&hole.device_id)
            .bind(int8(hole.first, "hole first seq")?)
            .bind(int8(hole.last, "hole last seq")?)
            .bind(micros(hole.detected_at))
            .execute(&mut *c)
            .await?;
        }
        Ok(())
    }
}

/// The rows of `device_messages`, as one JSON array of arrays.
fn messages_json(rows: &[&MessageRow]) -> StoreResult<String> {
    let rows = rows
        .iter()
        .map(|row| {
            Ok(json!([
                row.device_id,
                int8(row.seq, "seq")?,
                row.kind,
                opt_id::<Hyphenated>(row.session_id.as_deref(), "session id")?,
                micros(row.sent_at),
                micros(row.received_at),
            ]))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(json!(rows).to_string())
}

/// The claims as rows of `cartridges`, one JSON array of arrays.
fn claims_json(rows: &[&ClaimRow]) -> StoreResult<String> {
    let rows = rows
        .iter()
        .map(|row| {
            Ok(json!([
                row.cartridge_id,
                id_text(&row.session_id, "session id")?,
                row.device_id,
                row.patient_ref,
                micros(row.bound_at),
            ]))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(json!(rows).to_string())
}
