//! `load_facts`: one statement per table, keys passed as one JSON array
//! (`json_each`), as PostgreSQL passes them as arrays.
//!
//! The lookups run on one reader connection without a transaction: the
//! commit, not the read, arbitrates races (a fact that changed meanwhile
//! shows up there as a conflict on a message key or a binding).

use std::collections::{HashMap, HashSet};

use pentrace_domain::rules::{Binding, LotFacts, ProductFacts, SeqHole};
use serde_json::json;
use sqlx::{SqliteConnection, SqlitePool};

use super::convert::{date, opt_time, relation_from, time, to_int8, to_u32, to_u64, uuid_text};
use crate::{DeviceState, FactsQuery, SessionState, StoreResult, StoredFacts};

/// Loads everything the query asks for; empty sets cost no statement.
pub(super) async fn load(pool: &SqlitePool, query: &FactsQuery) -> StoreResult<StoredFacts> {
    let mut conn = pool.acquire().await?;
    let conn = &mut *conn;
    Ok(StoredFacts {
        seen: seen(conn, &query.keys).await?,
        devices: devices(conn, &query.device_ids).await?,
        products: products(conn, &query.gtins).await?,
        lots: lots(conn, &query.lots).await?,
        bindings: bindings(conn, &query.cartridge_ids).await?,
        sessions: sessions(conn, &query.session_ids).await?,
        holes: holes(conn, &query.device_ids).await?,
    })
}

/// A set of strings as the JSON array `json_each` reads.
fn json_list<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    json!(items.into_iter().collect::<Vec<_>>()).to_string()
}

async fn seen(
    conn: &mut SqliteConnection,
    keys: &[(String, u64)],
) -> StoreResult<HashSet<(String, u64)>> {
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    let pairs = keys
        .iter()
        .map(|(d, s)| Ok(json!([d, to_int8(*s, "seq")?])))
        .collect::<StoreResult<Vec<_>>>()?;
    // CROSS JOIN keeps the keys as the outer loop: one primary-key search
    // per key.
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT m.device_id, m.seq FROM json_each(?1) AS k CROSS JOIN device_messages AS m \
         WHERE m.device_id = k.value ->> 0 AND m.seq = k.value ->> 1",
    )
    .bind(json!(pairs).to_string())
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(d, s)| Ok((d, to_u64(s, "seq")?)))
        .collect()
}

async fn devices(
    conn: &mut SqliteConnection,
    ids: &HashSet<String>,
) -> StoreResult<HashMap<String, DeviceState>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT id, clinic_id, max_depth_um, max_seq, stored_through FROM devices \
         WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(json_list(ids))
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(id, clinic_id, depth, max_seq, through)| {
            let state = DeviceState {
                clinic_id,
                max_depth_um: to_u32(depth, "device max depth")?,
                max_seq: to_u64(max_seq, "device max seq")?,
                stored_through: to_u64(through, "device stored watermark")?,
            };
            Ok((id, state))
        })
        .collect()
}

async fn products(
    conn: &mut SqliteConnection,
    gtins: &HashSet<String>,
) -> StoreResult<HashMap<String, ProductFacts>> {
    if gtins.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT gtin, max_depth_um, rated_strokes, max_active_s, shelf_life_days FROM products \
         WHERE gtin IN (SELECT value FROM json_each(?1))",
    )
    .bind(json_list(gtins))
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(gtin, depth, strokes, active_s, shelf_life)| {
            let facts = ProductFacts {
                max_depth_um: to_u32(depth, "product max depth")?,
                rated_strokes: to_u64(strokes, "product rated strokes")?,
                // u32 seconds × 1000 always fits in u64.
                max_active_ms: u64::from(to_u32(active_s, "product max active s")?) * 1000,
                shelf_life_days: to_u32(shelf_life, "product shelf life")?,
            };
            Ok((gtin, facts))
        })
        .collect()
}

async fn lots(
    conn: &mut SqliteConnection,
    keys: &HashSet<(String, String)>,
) -> StoreResult<HashMap<(String, String), LotFacts>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let pairs: Vec<_> = keys.iter().map(|(g, l)| json!([g, l])).collect();
    type Row = (String, String, Option<String>, Option<i64>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT l.gtin, l.lot, l.expiry, l.recalled_at FROM json_each(?1) AS k \
         CROSS JOIN lots AS l WHERE l.gtin = k.value ->> 0 AND l.lot = k.value ->> 1",
    )
    .bind(json!(pairs).to_string())
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(gtin, lot, expiry, recalled_at)| {
            let facts = LotFacts {
                expiry: date(expiry, "lot expiry")?,
                recalled_at: opt_time(recalled_at, "lot recalled_at")?,
            };
            Ok(((gtin, lot), facts))
        })
        .collect()
}

async fn bindings(
    conn: &mut SqliteConnection,
    ids: &HashSet<String>,
) -> StoreResult<HashMap<String, Binding>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    type Row = (
        String,
        String,
        String,
        String,
        Option<String>,
        i64,
        i64,
        i64,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT c.cartridge_id, c.session_id, c.device_id, d.clinic_id, c.patient_ref, \
         c.last_activity_at, c.strokes, c.active_ms \
         FROM cartridges c JOIN devices d ON d.id = c.device_id \
         WHERE c.cartridge_id IN (SELECT value FROM json_each(?1))",
    )
    .bind(json_list(ids))
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(
            |(id, session_id, device_id, clinic_id, patient_ref, last, strokes, ms)| {
                let binding = Binding {
                    session_id,
                    device_id,
                    clinic_id,
                    patient_ref,
                    last_activity_at: time(last, "cartridge last activity")?,
                    strokes: to_u64(strokes, "cartridge strokes")?,
                    active_ms: to_u64(ms, "cartridge active ms")?,
                };
                Ok((id, binding))
            },
        )
        .collect()
}

/// Stored sessions, keyed by the id strings exactly as asked for (ids are
/// stored in canonical lowercase form, which need not match the caller's
/// spelling).
async fn sessions(
    conn: &mut SqliteConnection,
    ids: &HashSet<String>,
) -> StoreResult<HashMap<String, SessionState>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let asked = ids
        .iter()
        .map(|s| Ok((uuid_text(s, "session id")?, s)))
        .collect::<StoreResult<Vec<_>>>()?;
    type Row = (
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        i64,
        i64,
        Option<i64>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT session_id, device_id, relation, owner_session_id, cartridge_id, strokes, \
         active_ms, device_started_at FROM sessions \
         WHERE session_id IN (SELECT value FROM json_each(?1))",
    )
    .bind(json_list(asked.iter().map(|(canonical, _)| canonical)))
    .fetch_all(conn)
    .await?;
    let mut stored = HashMap::with_capacity(rows.len());
    for (id, device_id, relation, owner, cartridge_id, strokes, active_ms, started) in rows {
        let state = SessionState {
            device_id,
            cartridge_id,
            device_started_at: started
                .map(|t| time(t, "session device_started_at"))
                .transpose()?,
            relation: relation_from(&relation, owner)?,
            strokes: to_u64(strokes, "session strokes")?,
            active_ms: to_u64(active_ms, "session active ms")?,
        };
        stored.insert(id, state);
    }
    Ok(asked
        .into_iter()
        .filter_map(|(canonical, asked)| stored.get(&canonical).map(|s| (asked.clone(), s.clone())))
        .collect())
}

async fn holes(
    conn: &mut SqliteConnection,
    device_ids: &HashSet<String>,
) -> StoreResult<HashMap<String, Vec<SeqHole>>> {
    if device_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT device_id, first_seq, last_seq, detected_at FROM seq_holes \
         WHERE device_id IN (SELECT value FROM json_each(?1)) ORDER BY device_id, first_seq",
    )
    .bind(json_list(device_ids))
    .fetch_all(conn)
    .await?;
    let mut out: HashMap<String, Vec<SeqHole>> = HashMap::new();
    for (device_id, first, last, detected_at) in rows {
        let hole = SeqHole {
            device_id: device_id.clone(),
            first: to_u64(first, "hole first seq")?,
            last: to_u64(last, "hole last seq")?,
            detected_at: time(detected_at, "hole detected_at")?,
        };
        out.entry(device_id).or_default().push(hole);
    }
    Ok(out)
}
