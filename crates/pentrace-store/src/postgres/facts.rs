//! `load_facts`: one statement per table, keys passed as arrays.
//!
//! The lookups run on one pooled connection without a transaction: the
//! commit, not the read, arbitrates races (a fact that changed meanwhile
//! shows up there as a conflict on a message key or a binding).
//!
//! Every lookup is sent unprepared (`persistent(false)`), so PostgreSQL plans
//! it for these keys and the tables as they are now. A prepared statement's
//! cached generic plan, fixed while the tables were small, seq-scans them;
//! with no ANALYZE to invalidate it (autovacuum off, as on this project's CI
//! machine) a 10-minute `pentrace bench` run read 2.1 billion
//! `device_messages` rows in 1,636 scans and slowed from ~113k to ~27k
//! samples/s. Planning these few statements per batch costs far less.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use pentrace_domain::rules::{Binding, LotFacts, ProductFacts, SeqHole};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::convert::{from_i32, from_i64, parse_uuid, relation_from, to_i64};
use crate::{DeviceState, FactsQuery, SessionState, StoreResult, StoredFacts};

/// Loads everything the query asks for; empty sets cost no round trip.
pub(super) async fn load(pool: &PgPool, query: &FactsQuery) -> StoreResult<StoredFacts> {
    let mut conn = pool.acquire().await?;
    let conn = &mut *conn;
    let device_ids: Vec<&str> = query.device_ids.iter().map(String::as_str).collect();
    Ok(StoredFacts {
        seen: seen(conn, &query.keys).await?,
        devices: devices(conn, &device_ids).await?,
        products: products(conn, &query.gtins).await?,
        lots: lots(conn, &query.lots).await?,
        bindings: bindings(conn, &query.cartridge_ids).await?,
        sessions: sessions(conn, &query.session_ids).await?,
        holes: holes(conn, &device_ids).await?,
    })
}

fn strs(set: &HashSet<String>) -> Vec<&str> {
    set.iter().map(String::as_str).collect()
}

async fn seen(
    conn: &mut PgConnection,
    keys: &[(String, u64)],
) -> StoreResult<HashSet<(String, u64)>> {
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    let devices: Vec<&str> = keys.iter().map(|(d, _)| d.as_str()).collect();
    let seqs = keys
        .iter()
        .map(|(_, s)| to_i64(*s, "seq"))
        .collect::<StoreResult<Vec<_>>>()?;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT m.device_id, m.seq FROM device_messages m \
         JOIN UNNEST($1::text[], $2::int8[]) AS k(device_id, seq) \
           ON m.device_id = k.device_id AND m.seq = k.seq",
    )
    .persistent(false)
    .bind(devices)
    .bind(seqs)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(d, s)| Ok((d, from_i64(s, "seq")?)))
        .collect()
}

async fn devices(
    conn: &mut PgConnection,
    ids: &[&str],
) -> StoreResult<HashMap<String, DeviceState>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, String, i32, i64, i64)> = sqlx::query_as(
        "SELECT id, clinic_id, max_depth_um, max_seq, stored_through FROM devices \
         WHERE id = ANY($1)",
    )
    .persistent(false)
    .bind(ids)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(id, clinic_id, depth, max_seq, through)| {
            let state = DeviceState {
                clinic_id,
                max_depth_um: from_i32(depth, "device max depth")?,
                max_seq: from_i64(max_seq, "device max seq")?,
                stored_through: from_i64(through, "device stored watermark")?,
            };
            Ok((id, state))
        })
        .collect()
}

async fn products(
    conn: &mut PgConnection,
    gtins: &HashSet<String>,
) -> StoreResult<HashMap<String, ProductFacts>> {
    if gtins.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, i32, i64, i32, i32)> = sqlx::query_as(
        "SELECT gtin, max_depth_um, rated_strokes, max_active_s, shelf_life_days FROM products \
         WHERE gtin = ANY($1)",
    )
    .persistent(false)
    .bind(strs(gtins))
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(gtin, depth, strokes, active_s, shelf_life)| {
            let facts = ProductFacts {
                max_depth_um: from_i32(depth, "product max depth")?,
                rated_strokes: from_i64(strokes, "product rated strokes")?,
                // u32 seconds × 1000 always fits in u64.
                max_active_ms: u64::from(from_i32(active_s, "product max active s")?) * 1000,
                shelf_life_days: from_i32(shelf_life, "product shelf life")?,
            };
            Ok((gtin, facts))
        })
        .collect()
}

async fn lots(
    conn: &mut PgConnection,
    keys: &HashSet<(String, String)>,
) -> StoreResult<HashMap<(String, String), LotFacts>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let gtins: Vec<&str> = keys.iter().map(|(g, _)| g.as_str()).collect();
    let lots: Vec<&str> = keys.iter().map(|(_, l)| l.as_str()).collect();
    type Row = (String, String, Option<NaiveDate>, Option<DateTime<Utc>>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT l.gtin, l.lot, l.expiry, l.recalled_at FROM lots l \
         JOIN UNNEST($1::text[], $2::text[]) AS k(gtin, lot) \
           ON l.gtin = k.gtin AND l.lot = k.lot",
    )
    .persistent(false)
    .bind(gtins)
    .bind(lots)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(gtin, lot, expiry, recalled_at)| {
            (
                (gtin, lot),
                LotFacts {
                    expiry,
                    recalled_at,
                },
            )
        })
        .collect())
}

async fn bindings(
    conn: &mut PgConnection,
    ids: &HashSet<String>,
) -> StoreResult<HashMap<String, Binding>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    type Row = (
        String,
        Uuid,
        String,
        String,
        Option<String>,
        DateTime<Utc>,
        i64,
        i64,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT c.cartridge_id, c.session_id, c.device_id, d.clinic_id, c.patient_ref, \
         c.last_activity_at, c.strokes, c.active_ms \
         FROM cartridges c JOIN devices d ON d.id = c.device_id \
         WHERE c.cartridge_id = ANY($1)",
    )
    .persistent(false)
    .bind(strs(ids))
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(
            |(id, session_id, device_id, clinic_id, patient_ref, last, strokes, ms)| {
                let binding = Binding {
                    session_id: session_id.to_string(),
                    device_id,
                    clinic_id,
                    patient_ref,
                    last_activity_at: last,
                    strokes: from_i64(strokes, "cartridge strokes")?,
                    active_ms: from_i64(ms, "cartridge active ms")?,
                };
                Ok((id, binding))
            },
        )
        .collect()
}

/// Stored sessions, keyed by the id strings exactly as asked for (the
/// database hands back canonical lowercase UUIDs, which need not match the
/// caller's spelling).
async fn sessions(
    conn: &mut PgConnection,
    ids: &HashSet<String>,
) -> StoreResult<HashMap<String, SessionState>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let asked = ids
        .iter()
        .map(|s| Ok((parse_uuid(s, "session id")?, s)))
        .collect::<StoreResult<Vec<_>>>()?;
    let uuids: Vec<Uuid> = asked.iter().map(|(u, _)| *u).collect();
    type Row = (
        Uuid,
        String,
        String,
        Option<Uuid>,
        Option<String>,
        i64,
        i64,
        Option<DateTime<Utc>>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT session_id, device_id, relation, owner_session_id, cartridge_id, strokes, \
         active_ms, device_started_at FROM sessions WHERE session_id = ANY($1)",
    )
    .persistent(false)
    .bind(uuids)
    .fetch_all(conn)
    .await?;
    let mut stored = HashMap::with_capacity(rows.len());
    for (id, device_id, relation, owner, cartridge_id, strokes, active_ms, device_started_at) in
        rows
    {
        let state = SessionState {
            device_id,
            relation: relation_from(&relation, owner)?,
            cartridge_id,
            device_started_at,
            strokes: from_i64(strokes, "session strokes")?,
            active_ms: from_i64(active_ms, "session active ms")?,
        };
        stored.insert(id, state);
    }
    Ok(asked
        .into_iter()
        .filter_map(|(uuid, asked)| stored.get(&uuid).map(|s| (asked.clone(), s.clone())))
        .collect())
}

async fn holes(
    conn: &mut PgConnection,
    device_ids: &[&str],
) -> StoreResult<HashMap<String, Vec<SeqHole>>> {
    if device_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, i64, i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT device_id, first_seq, last_seq, detected_at FROM seq_holes \
         WHERE device_id = ANY($1) ORDER BY device_id, first_seq",
    )
    .persistent(false)
    .bind(device_ids)
    .fetch_all(conn)
    .await?;
    let mut out: HashMap<String, Vec<SeqHole>> = HashMap::new();
    for (device_id, first, last, detected_at) in rows {
        let hole = SeqHole {
            device_id: device_id.clone(),
            first: from_i64(first, "hole first seq")?,
            last: from_i64(last, "hole last seq")?,
            detected_at,
        };
        out.entry(device_id).or_default().push(hole);
    }
    Ok(out)
}
