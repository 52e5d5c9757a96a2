//! A commit's statements on PostgreSQL: every set of rows travels as arrays
//! (`UNNEST`), so each step is one statement however large the batch.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pentrace_domain::rules::SeqHole;
use sqlx::PgConnection;
use uuid::Uuid;

use super::PgStore;
use super::{copy, sessions};
use crate::engine::commit::CommitSql;
use crate::shared::columns::{StoredId, int4, int8};
use crate::shared::stored_u64;
use crate::{
    ActivityRow, ClaimRow, DeviceWrite, MessageRow, SampleBlock, SessionWrite, StoreError,
    StoreResult, Watermarks,
};

#[async_trait]
impl CommitSql for PgStore {
    async fn insert_messages(
        c: &mut PgConnection,
        rows: &[&MessageRow],
    ) -> StoreResult<Option<String>> {
        match insert_message_keys(c, rows).await {
            Ok(()) => Ok(None),
            Err(StoreError::Rejected(sqlx::Error::Database(db))) if db.is_unique_violation() => {
                // PostgreSQL names the key in its detail, e.g.
                // "Key (device_id, seq)=(pen-1, 7) already exists."
                let detail = db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .and_then(|pg| pg.detail().map(str::to_owned))
                    .unwrap_or_else(|| "a message of the batch is already stored".to_owned());
                Ok(Some(detail))
            }
            Err(e) => Err(e),
        }
    }

    /// The primary key decides; a concurrent claim waits for this
    /// transaction and loses.
    async fn claim_cartridges(
        c: &mut PgConnection,
        rows: &[&ClaimRow],
    ) -> StoreResult<Vec<String>> {
        let sessions = rows
            .iter()
            .map(|r| Uuid::from_id(&r.session_id, "session id"))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(sqlx::query_scalar(
            "INSERT INTO cartridges (cartridge_id, session_id, device_id, patient_ref, bound_at, \
                                     last_activity_at) \
             SELECT c, s, d, p, b, b FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], \
                                                 $5::timestamptz[]) AS u(c, s, d, p, b) \
             ON CONFLICT (cartridge_id) DO NOTHING RETURNING cartridge_id",
        )
        .bind(
            rows.iter()
                .map(|r| r.cartridge_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(sessions)
        .bind(
            rows.iter()
                .map(|r| r.device_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.patient_ref.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.bound_at).collect::<Vec<_>>())
        .fetch_all(c)
        .await?)
    }

    /// `FOR SHARE` holds a concurrent recall's UPDATE until this commit
    /// ends, so the recall then sees this batch's sessions (and flags them).
    async fn first_recalled(
        c: &mut PgConnection,
        lots: &[&(String, String)],
    ) -> StoreResult<Option<(String, String)>> {
        let rows: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT l.gtin, l.lot, l.recalled_at IS NOT NULL FROM lots l \
             JOIN UNNEST($1::text[], $2::text[]) AS u(gtin, lot) \
               ON l.gtin = u.gtin AND l.lot = u.lot \
             ORDER BY l.gtin, l.lot FOR SHARE OF l",
        )
        .bind(lots.iter().map(|l| l.0.as_str()).collect::<Vec<_>>())
        .bind(lots.iter().map(|l| l.1.as_str()).collect::<Vec<_>>())
        .fetch_all(c)
        .await?;
        Ok(rows
            .into_iter()
            .find(|(_, _, recalled)| *recalled)
            .map(|(gtin, lot, _)| (gtin, lot)))
    }

    async fn create_sessions(
        c: &mut PgConnection,
        writes: &[&SessionWrite],
    ) -> StoreResult<Vec<String>> {
        sessions::create(c, writes).await
    }

    async fn add_to_sessions(
        c: &mut PgConnection,
        writes: &[&SessionWrite],
    ) -> StoreResult<Vec<String>> {
        sessions::add(c, writes).await
    }

    async fn insert_samples(c: &mut PgConnection, blocks: &[SampleBlock]) -> StoreResult<()> {
        copy::copy_samples(c, blocks).await
    }

    /// A row changed by another commit meanwhile fails the comparison (read
    /// committed re-checks it after waiting for that commit) and is not
    /// updated.
    async fn add_activity(c: &mut PgConnection, rows: &[ActivityRow]) -> StoreResult<Vec<String>> {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let column =
            |f: fn(&ActivityRow) -> u64| rows.iter().map(|r| clamp(f(r))).collect::<Vec<_>>();
        Ok(sqlx::query_scalar(
            "UPDATE cartridges c SET last_activity_at = GREATEST(c.last_activity_at, u.at), \
               strokes = CASE WHEN u.strokes > 9223372036854775807 - c.strokes \
                              THEN 9223372036854775807 ELSE c.strokes + u.strokes END, \
               active_ms = CASE WHEN u.active_ms > 9223372036854775807 - c.active_ms \
                                THEN 9223372036854775807 ELSE c.active_ms + u.active_ms END \
             FROM UNNEST($1::text[], $2::timestamptz[], $3::int8[], $4::int8[], $5::int8[], \
                         $6::int8[]) \
               AS u(cartridge_id, at, strokes, active_ms, strokes_before, active_ms_before) \
             WHERE c.cartridge_id = u.cartridge_id \
               AND c.strokes = u.strokes_before AND c.active_ms = u.active_ms_before \
             RETURNING c.cartridge_id",
        )
        .bind(
            rows.iter()
                .map(|r| r.cartridge_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.at).collect::<Vec<DateTime<Utc>>>())
        .bind(column(|r| r.add_strokes))
        .bind(column(|r| r.add_active_ms))
        .bind(column(|r| r.strokes_before))
        .bind(column(|r| r.active_ms_before))
        .fetch_all(c)
        .await?)
    }

    async fn update_devices(
        c: &mut PgConnection,
        merged: &BTreeMap<&str, DeviceWrite>,
    ) -> StoreResult<()> {
        let mut max_seq = Vec::with_capacity(merged.len());
        let mut battery = Vec::with_capacity(merged.len());
        for w in merged.values() {
            max_seq.push(int8(w.max_seq, "device max seq")?);
            battery.push(w.battery_pct.map(|b| int4(b, "battery")).transpose()?);
        }
        sqlx::query(
            "UPDATE devices d SET last_seen = GREATEST(d.last_seen, u.last_seen), \
                                  max_seq = GREATEST(d.max_seq, u.max_seq), \
                                  battery_pct = COALESCE(u.battery_pct, d.battery_pct), \
                                  firmware = COALESCE(u.firmware, d.firmware) \
             FROM UNNEST($1::text[], $2::timestamptz[], $3::int8[], $4::int4[], $5::text[]) \
                  AS u(id, last_seen, max_seq, battery_pct, firmware) \
             WHERE d.id = u.id",
        )
        .bind(merged.keys().copied().collect::<Vec<_>>())
        .bind(merged.values().map(|w| w.last_seen).collect::<Vec<_>>())
        .bind(max_seq)
        .bind(battery)
        .bind(
            merged
                .values()
                .map(|w| w.firmware.as_deref())
                .collect::<Vec<_>>(),
        )
        .execute(c)
        .await?;
        Ok(())
    }

    /// Exact across processes: it runs after `update_devices`, whose UPDATE
    /// holds these device rows until commit (waiting first for any other
    /// transaction holding them), and in READ COMMITTED this statement's
    /// snapshot is taken after that wait, so it sees every message committed
    /// for these devices before. A transaction that commits later sees ours.
    async fn advance_watermarks(c: &mut PgConnection, devices: &[&str]) -> StoreResult<Watermarks> {
        advance_watermarks(c, devices).await
    }

    async fn replace_holes(
        c: &mut PgConnection,
        holes: &[(String, Vec<SeqHole>)],
    ) -> StoreResult<()> {
        replace_holes(c, holes).await
    }
}

/// One multi-row INSERT. No `ON CONFLICT ... RETURNING`: the batch was
/// judged against facts that said every key is new, so a key already
/// stored is a lost race, and its unique violation says so. Measured with
/// `pentrace bench --only grpc` (2 writers): the upsert with RETURNING gave
/// 106k samples/s, this INSERT 120k, a binary COPY 125k (kept out: the
/// TimescaleDB test server cannot take COPY).
async fn insert_message_keys(conn: &mut PgConnection, rows: &[&MessageRow]) -> StoreResult<()> {
    let mut seqs = Vec::with_capacity(rows.len());
    let mut sessions = Vec::with_capacity(rows.len());
    for row in rows {
        seqs.push(int8(row.seq, "seq")?);
        sessions.push(
            row.session_id
                .as_deref()
                .map(|s| Uuid::from_id(s, "session id"))
                .transpose()?,
        );
    }
    sqlx::query(
        "INSERT INTO device_messages (device_id, seq, kind, session_id, sent_at, received_at) \
         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::uuid[], \
                              $5::timestamptz[], $6::timestamptz[])",
    )
    .bind(
        rows.iter()
            .map(|r| r.device_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(&seqs)
    .bind(rows.iter().map(|r| r.kind).collect::<Vec<_>>())
    .bind(sessions)
    .bind(rows.iter().map(|r| r.sent_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.received_at).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves each device's stored watermark to the end of its run of stored
/// seqs, and returns the watermarks.
///
/// Exact across processes: it runs after `update_devices`, whose UPDATE
/// holds these device rows until commit (waiting first for any other
/// transaction holding them), and in READ COMMITTED this statement's
/// snapshot is taken after that wait, so it sees every message committed
/// for these devices before. A transaction that commits later sees ours.
async fn advance_watermarks(conn: &mut PgConnection, devices: &[&str]) -> StoreResult<Watermarks> {
    lock_devices(conn, devices).await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(concat!(
        "WITH cur AS (SELECT id, stored_through AS w FROM devices WHERE id = ANY($1)), \
             adv AS (SELECT cur.id, cur.w, ",
        crate::watermark::run_end_sql!(),
        " AS through FROM cur), \
             moved AS (UPDATE devices d SET stored_through = adv.through FROM adv \
                       WHERE d.id = adv.id AND adv.through > adv.w) \
             SELECT id, through FROM adv"
    ))
    .persistent(false)
    .bind(devices)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(id, w)| Ok((id, stored_u64(w, "device stored watermark")?)))
        .collect()
}

/// Takes the device rows' locks in id order (a no-op where this
/// transaction holds them already), so the next statement sees every
/// commit that held them before. `NO KEY UPDATE`, the lock an UPDATE of
/// the row takes: `FOR UPDATE` would also wait for the key-share locks
/// that other batches' message inserts hold through the foreign key, and
/// deadlock with them.
async fn lock_devices(conn: &mut PgConnection, devices: &[&str]) -> StoreResult<()> {
    sqlx::query("SELECT 1 FROM devices WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
        .persistent(false)
        .bind(devices)
        .execute(conn)
        .await?;
    Ok(())
}

/// Replaces the open holes of each listed device with the given list.
async fn replace_holes(
    conn: &mut PgConnection,
    holes: &[(String, Vec<SeqHole>)],
) -> StoreResult<()> {
    let devices: Vec<&str> = holes.iter().map(|(d, _)| d.as_str()).collect();
    let mut c = HoleColumns::default();
    for (device_id, list) in holes {
        for hole in list {
            c.push(device_id, hole)?;
        }
    }
    sqlx::query("DELETE FROM seq_holes WHERE device_id = ANY($1)")
        .bind(devices)
        .execute(&mut *conn)
        .await?;
    if c.device_id.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO seq_holes (device_id, first_seq, last_seq, detected_at) \
         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::timestamptz[])",
    )
    .bind(c.device_id)
    .bind(c.first)
    .bind(c.last)
    .bind(c.detected_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Seq holes as one array per column.
#[derive(Debug, Default)]
struct HoleColumns<'a> {
    device_id: Vec<&'a str>,
    first: Vec<i64>,
    last: Vec<i64>,
    detected_at: Vec<DateTime<Utc>>,
}

impl<'a> HoleColumns<'a> {
    fn push(&mut self, device_id: &'a str, hole: &SeqHole) -> StoreResult<()> {
        self.device_id.push(device_id);
        self.first.push(int8(hole.first, "hole first seq")?);
        self.last.push(int8(hole.last, "hole last seq")?);
        self.detected_at.push(hole.detected_at);
        Ok(())
    }
}
