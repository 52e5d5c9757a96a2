//! Read side: the fleet view, compliance queries and data-gap holes.

use chrono::{DateTime, Duration, Utc};
use pentrace_domain::rules::SeqHole;
use serde_json::json;
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use super::convert::{
    FLAG_COLUMNS, FlagRow, SESSION_COLUMNS, SessionRow, flag_records, micros, opt_time,
    session_records, time, to_int8, to_u32, to_u64, uuid_text,
};
use super::{audit, begin, flags};
use crate::{
    CartridgeHistory, Device, DeviceStatus, FlagQuery, FlagRecord, NewFlag, SessionQuery,
    SessionRecord, StoreResult,
};

/// A device counts as online when it was heard from this recently.
const ONLINE_WINDOW: Duration = Duration::minutes(2);
/// Rows of `list_sessions` when the query sets no limit.
const DEFAULT_SESSION_LIMIT: u32 = 100;
/// Rows of `list_flags` when the query sets no limit.
const DEFAULT_FLAG_LIMIT: u32 = 1000;

/// A device with its status aggregates.
#[derive(Debug, sqlx::FromRow)]
struct DeviceStatusRow {
    id: String,
    clinic_id: String,
    model: String,
    max_depth_um: i64,
    last_seen: Option<i64>,
    battery_pct: Option<i64>,
    max_seq: i64,
    sessions_today: i64,
    strokes_today: i64,
    open_flags: i64,
}

/// Devices with their status; "today" is `now`'s UTC day.
pub(super) async fn list_devices(
    pool: &SqlitePool,
    clinic_id: Option<&str>,
    now: DateTime<Utc>,
) -> StoreResult<Vec<DeviceStatus>> {
    let day_start = now.date_naive().and_time(chrono::NaiveTime::MIN).and_utc();
    let rows: Vec<DeviceStatusRow> = sqlx::query_as(
        "SELECT d.id, d.clinic_id, d.model, d.max_depth_um, d.last_seen, d.battery_pct, \
                d.max_seq, \
                (SELECT count(*) FROM sessions s WHERE s.device_id = d.id \
                    AND s.started_at >= ?2 AND s.started_at < ?3) AS sessions_today, \
                (SELECT COALESCE(sum(s.strokes), 0) FROM sessions s WHERE s.device_id = d.id \
                    AND s.started_at >= ?2 AND s.started_at < ?3) AS strokes_today, \
                (SELECT count(*) FROM flags f WHERE f.device_id = d.id AND f.state = 'open') \
                    AS open_flags \
         FROM devices d \
         WHERE (?1 IS NULL OR d.clinic_id = ?1) \
         ORDER BY d.clinic_id, d.id",
    )
    .bind(clinic_id)
    .bind(micros(day_start))
    .bind(micros(day_start + Duration::days(1)))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| device_status(row, now))
        .collect()
}

fn device_status(row: DeviceStatusRow, now: DateTime<Utc>) -> StoreResult<DeviceStatus> {
    let last_seen = opt_time(row.last_seen, "device last seen")?;
    Ok(DeviceStatus {
        online: last_seen.is_some_and(|seen| seen > now - ONLINE_WINDOW),
        last_seen,
        battery_pct: row.battery_pct.map(|b| to_u32(b, "battery")).transpose()?,
        sessions_today: to_u32(row.sessions_today, "sessions today")?,
        strokes_today: to_u64(row.strokes_today, "strokes today")?,
        open_flags: to_u32(row.open_flags, "open flags")?,
        last_seq: to_u64(row.max_seq, "device max seq")?,
        device: Device {
            id: row.id,
            clinic_id: row.clinic_id,
            model: row.model,
            max_depth_um: to_u32(row.max_depth_um, "device max depth")?,
        },
    })
}

/// A device's sessions started in `[from, to)`, newest first.
pub(super) async fn list_sessions(
    pool: &SqlitePool,
    query: &SessionQuery,
) -> StoreResult<Vec<SessionRecord>> {
    let limit = if query.limit == 0 {
        DEFAULT_SESSION_LIMIT
    } else {
        query.limit
    };
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM sessions \
         WHERE device_id = ?1 \
           AND (?2 IS NULL OR started_at >= ?2) \
           AND (?3 IS NULL OR started_at < ?3) \
         ORDER BY started_at DESC, session_id DESC LIMIT ?4"
    );
    let rows: Vec<SessionRow> = sqlx::query_as(&sql)
        .bind(&query.device_id)
        .bind(query.from.map(micros))
        .bind(query.to.map(micros))
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
    session_records(rows)
}

/// Flags matching every filter given, oldest first by `(raised_at, id)`;
/// `after` continues a previous page. `from`/`to` bound `raised_at` as
/// `[from, to)`.
pub(super) async fn list_flags(
    pool: &SqlitePool,
    query: &FlagQuery,
) -> StoreResult<Vec<FlagRecord>> {
    // Only the filters that are set become SQL, so each combination gets a
    // plan that can use its index. Lists travel as JSON arrays; an empty
    // list matches nothing, as PostgreSQL's `= ANY('{}')` does.
    let mut qb: QueryBuilder<Sqlite> =
        QueryBuilder::new(format!("SELECT {FLAG_COLUMNS} FROM flags WHERE true"));
    if let Some(clinics) = &query.clinic_ids {
        qb.push(" AND clinic_id IN (SELECT value FROM json_each(")
            .push_bind(json!(clinics).to_string())
            .push("))");
    }
    if let Some(device) = &query.device_id {
        qb.push(" AND device_id = ").push_bind(device.clone());
    }
    if let Some(session) = &query.session_id {
        qb.push(" AND session_id = ")
            .push_bind(uuid_text(session, "session id")?);
    }
    if !query.kinds.is_empty() {
        let kinds: Vec<&'static str> = query.kinds.iter().map(|k| k.as_str()).collect();
        qb.push(" AND kind IN (SELECT value FROM json_each(")
            .push_bind(json!(kinds).to_string())
            .push("))");
    }
    if !query.states.is_empty() {
        let states: Vec<&'static str> = query.states.iter().map(|s| s.as_str()).collect();
        qb.push(" AND state IN (SELECT value FROM json_each(")
            .push_bind(json!(states).to_string())
            .push("))");
    }
    if let Some(from) = query.from {
        qb.push(" AND raised_at >= ").push_bind(micros(from));
    }
    if let Some(to) = query.to {
        qb.push(" AND raised_at < ").push_bind(micros(to));
    }
    if let Some((raised_at, id)) = query.after {
        qb.push(" AND (raised_at, id) > (")
            .push_bind(micros(raised_at))
            .push(", ")
            .push_bind(id.to_string())
            .push(")");
    }
    let limit = if query.limit == 0 {
        DEFAULT_FLAG_LIMIT
    } else {
        query.limit
    };
    qb.push(" ORDER BY raised_at, id LIMIT ")
        .push_bind(i64::from(limit));
    let rows: Vec<FlagRow> = qb.build_query_as().fetch_all(pool).await?;
    flag_records(rows)
}

/// The binding, sessions (oldest first) and flags of one cartridge.
pub(super) async fn cartridge_history(
    pool: &SqlitePool,
    cartridge_id: &str,
) -> StoreResult<CartridgeHistory> {
    let binding: Option<(String, String, i64)> = sqlx::query_as(
        "SELECT session_id, device_id, bound_at FROM cartridges WHERE cartridge_id = ?1",
    )
    .bind(cartridge_id)
    .fetch_optional(pool)
    .await?;
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE cartridge_id = ?1 \
         ORDER BY started_at, session_id"
    );
    let sessions: Vec<SessionRow> = sqlx::query_as(&sql)
        .bind(cartridge_id)
        .fetch_all(pool)
        .await?;
    let sql =
        format!("SELECT {FLAG_COLUMNS} FROM flags WHERE cartridge_id = ?1 ORDER BY raised_at, id");
    let flags: Vec<FlagRow> = sqlx::query_as(&sql)
        .bind(cartridge_id)
        .fetch_all(pool)
        .await?;
    let binding = match binding {
        Some((session, device, at)) => Some((session, device, time(at, "cartridge bound_at")?)),
        None => None,
    };
    Ok(CartridgeHistory {
        cartridge_id: cartridge_id.to_owned(),
        binding,
        sessions: session_records(sessions)?,
        flags: flag_records(flags)?,
    })
}

/// Every session that used the lot, oldest first.
pub(super) async fn lot_lookback(
    pool: &SqlitePool,
    gtin: &str,
    lot: &str,
) -> StoreResult<Vec<SessionRecord>> {
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE gtin = ?1 AND lot = ?2 \
         ORDER BY started_at, session_id"
    );
    let rows: Vec<SessionRow> = sqlx::query_as(&sql)
        .bind(gtin)
        .bind(lot)
        .fetch_all(pool)
        .await?;
    session_records(rows)
}

/// Open holes detected before `before`, with the device's clinic.
pub(super) async fn due_holes(
    pool: &SqlitePool,
    before: DateTime<Utc>,
) -> StoreResult<Vec<(SeqHole, String)>> {
    let rows: Vec<(String, i64, i64, i64, String)> = sqlx::query_as(
        "SELECT h.device_id, h.first_seq, h.last_seq, h.detected_at, d.clinic_id \
         FROM seq_holes h JOIN devices d ON d.id = h.device_id \
         WHERE h.detected_at < ?1 ORDER BY h.detected_at, h.device_id, h.first_seq",
    )
    .bind(micros(before))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(device_id, first, last, detected_at, clinic_id)| {
            let hole = SeqHole {
                device_id,
                first: to_u64(first, "hole first seq")?,
                last: to_u64(last, "hole last seq")?,
                detected_at: time(detected_at, "hole detected_at")?,
            };
            Ok((hole, clinic_id))
        })
        .collect()
}

/// Raises the gap flags and closes their holes in one transaction.
pub(super) async fn flag_holes(
    pool: &SqlitePool,
    holes: &[(SeqHole, NewFlag)],
) -> StoreResult<Vec<FlagRecord>> {
    if holes.is_empty() {
        return Ok(Vec::new());
    }
    let keys = holes
        .iter()
        .map(|(h, _)| Ok((h.device_id.as_str(), to_int8(h.first, "hole first seq")?)))
        .collect::<StoreResult<Vec<_>>>()?;
    let new_flags: Vec<NewFlag> = holes.iter().map(|(_, f)| f.clone()).collect();
    let mut tx = begin(pool).await?;
    let raised = flags::insert(&mut tx, &new_flags).await?;
    let drafts: Vec<_> = raised
        .iter()
        .map(crate::shared::drafts::flag_raised)
        .collect();
    audit::append(&mut tx, &drafts).await?;
    for (device_id, first) in keys {
        sqlx::query("DELETE FROM seq_holes WHERE device_id = ?1 AND first_seq = ?2")
            .bind(device_id)
            .bind(first)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(raised)
}
