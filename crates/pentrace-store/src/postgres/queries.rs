//! Read side: the fleet view, compliance queries and data-gap holes.

use chrono::{DateTime, Duration, Utc};
use pentrace_domain::rules::SeqHole;
use sqlx::{PgPool, Postgres, QueryBuilder};

use super::convert::{
    FLAG_COLUMNS, FlagRow, SESSION_COLUMNS, SessionRow, count_u32, flag_records, from_i32,
    from_i64, parse_uuid, session_records, to_i64,
};
use super::flags;
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
    max_depth_um: i32,
    last_seen: Option<DateTime<Utc>>,
    battery_pct: Option<i32>,
    max_seq: i64,
    sessions_today: i64,
    strokes_today: i64,
    open_flags: i64,
}

/// Devices with their status; "today" is `now`'s UTC day.
pub(super) async fn list_devices(
    pool: &PgPool,
    clinic_id: Option<&str>,
    now: DateTime<Utc>,
) -> StoreResult<Vec<DeviceStatus>> {
    let day_start = now.date_naive().and_time(chrono::NaiveTime::MIN).and_utc();
    let rows: Vec<DeviceStatusRow> = sqlx::query_as(
        "SELECT d.id, d.clinic_id, d.model, d.max_depth_um, d.last_seen, d.battery_pct, \
                d.max_seq, t.sessions_today, t.strokes_today, f.open_flags \
         FROM devices d \
         CROSS JOIN LATERAL ( \
             SELECT count(*) AS sessions_today, \
                    COALESCE(sum(s.strokes), 0)::bigint AS strokes_today \
             FROM sessions s \
             WHERE s.device_id = d.id AND s.started_at >= $2 AND s.started_at < $3) t \
         CROSS JOIN LATERAL ( \
             SELECT count(*) AS open_flags FROM flags fl \
             WHERE fl.device_id = d.id AND fl.state = 'open') f \
         WHERE ($1::text IS NULL OR d.clinic_id = $1) \
         ORDER BY d.clinic_id, d.id",
    )
    .bind(clinic_id)
    .bind(day_start)
    .bind(day_start + Duration::days(1))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| device_status(row, now))
        .collect()
}

fn device_status(row: DeviceStatusRow, now: DateTime<Utc>) -> StoreResult<DeviceStatus> {
    Ok(DeviceStatus {
        online: row.last_seen.is_some_and(|seen| seen > now - ONLINE_WINDOW),
        last_seen: row.last_seen,
        battery_pct: row
            .battery_pct
            .map(|b| from_i32(b, "battery"))
            .transpose()?,
        sessions_today: count_u32(row.sessions_today, "sessions today")?,
        strokes_today: from_i64(row.strokes_today, "strokes today")?,
        open_flags: count_u32(row.open_flags, "open flags")?,
        last_seq: from_i64(row.max_seq, "device max seq")?,
        device: Device {
            id: row.id,
            clinic_id: row.clinic_id,
            model: row.model,
            max_depth_um: from_i32(row.max_depth_um, "device max depth")?,
        },
    })
}

/// A device's sessions started in `[from, to)`, newest first.
pub(super) async fn list_sessions(
    pool: &PgPool,
    query: &SessionQuery,
) -> StoreResult<Vec<SessionRecord>> {
    let limit = if query.limit == 0 {
        DEFAULT_SESSION_LIMIT
    } else {
        query.limit
    };
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM sessions \
         WHERE device_id = $1 \
           AND ($2::timestamptz IS NULL OR started_at >= $2) \
           AND ($3::timestamptz IS NULL OR started_at < $3) \
         ORDER BY started_at DESC, session_id DESC LIMIT $4"
    );
    let rows: Vec<SessionRow> = sqlx::query_as(&sql)
        .bind(&query.device_id)
        .bind(query.from)
        .bind(query.to)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
    session_records(rows)
}

/// Flags matching every filter given, oldest first by `(raised_at, id)`;
/// `after` continues a previous page. `from`/`to` bound `raised_at` as
/// `[from, to)`.
pub(super) async fn list_flags(pool: &PgPool, query: &FlagQuery) -> StoreResult<Vec<FlagRecord>> {
    // Only the filters that are set become SQL, so each combination gets a
    // plan that can use its index (an `$n IS NULL OR ...` chain would not).
    let mut qb: QueryBuilder<Postgres> =
        QueryBuilder::new(format!("SELECT {FLAG_COLUMNS} FROM flags WHERE true"));
    if let Some(clinics) = &query.clinic_ids {
        qb.push(" AND clinic_id = ANY(")
            .push_bind(clinics.clone())
            .push(")");
    }
    if let Some(device) = &query.device_id {
        qb.push(" AND device_id = ").push_bind(device.clone());
    }
    if let Some(session) = &query.session_id {
        qb.push(" AND session_id = ")
            .push_bind(parse_uuid(session, "session id")?);
    }
    if !query.kinds.is_empty() {
        let kinds: Vec<&'static str> = query.kinds.iter().map(|k| k.as_str()).collect();
        qb.push(" AND kind = ANY(").push_bind(kinds).push(")");
    }
    if !query.states.is_empty() {
        let states: Vec<&'static str> = query.states.iter().map(|s| s.as_str()).collect();
        qb.push(" AND state = ANY(").push_bind(states).push(")");
    }
    if let Some(from) = query.from {
        qb.push(" AND raised_at >= ").push_bind(from);
    }
    if let Some(to) = query.to {
        qb.push(" AND raised_at < ").push_bind(to);
    }
    if let Some((raised_at, id)) = query.after {
        qb.push(" AND (raised_at, id) > (")
            .push_bind(raised_at)
            .push(", ")
            .push_bind(id)
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
    pool: &PgPool,
    cartridge_id: &str,
) -> StoreResult<CartridgeHistory> {
    let binding: Option<(uuid::Uuid, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT session_id, device_id, bound_at FROM cartridges WHERE cartridge_id = $1",
    )
    .bind(cartridge_id)
    .fetch_optional(pool)
    .await?;
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE cartridge_id = $1 \
         ORDER BY started_at, session_id"
    );
    let sessions: Vec<SessionRow> = sqlx::query_as(&sql)
        .bind(cartridge_id)
        .fetch_all(pool)
        .await?;
    let sql =
        format!("SELECT {FLAG_COLUMNS} FROM flags WHERE cartridge_id = $1 ORDER BY raised_at, id");
    let flags: Vec<FlagRow> = sqlx::query_as(&sql)
        .bind(cartridge_id)
        .fetch_all(pool)
        .await?;
    Ok(CartridgeHistory {
        cartridge_id: cartridge_id.to_owned(),
        binding: binding.map(|(session, device, at)| (session.to_string(), device, at)),
        sessions: session_records(sessions)?,
        flags: flag_records(flags)?,
    })
}

/// Every session that used the lot, oldest first.
pub(super) async fn lot_lookback(
    pool: &PgPool,
    gtin: &str,
    lot: &str,
) -> StoreResult<Vec<SessionRecord>> {
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE gtin = $1 AND lot = $2 \
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
    pool: &PgPool,
    before: DateTime<Utc>,
) -> StoreResult<Vec<(SeqHole, String)>> {
    let rows: Vec<(String, i64, i64, DateTime<Utc>, String)> = sqlx::query_as(
        "SELECT h.device_id, h.first_seq, h.last_seq, h.detected_at, d.clinic_id \
         FROM seq_holes h JOIN devices d ON d.id = h.device_id \
         WHERE h.detected_at < $1 ORDER BY h.detected_at, h.device_id, h.first_seq",
    )
    .bind(before)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(device_id, first, last, detected_at, clinic_id)| {
            let hole = SeqHole {
                device_id,
                first: from_i64(first, "hole first seq")?,
                last: from_i64(last, "hole last seq")?,
                detected_at,
            };
            Ok((hole, clinic_id))
        })
        .collect()
}

/// Raises the gap flags and closes their holes in one transaction.
pub(super) async fn flag_holes(
    pool: &PgPool,
    holes: &[(SeqHole, NewFlag)],
) -> StoreResult<Vec<FlagRecord>> {
    if holes.is_empty() {
        return Ok(Vec::new());
    }
    let devices: Vec<&str> = holes.iter().map(|(h, _)| h.device_id.as_str()).collect();
    let firsts = holes
        .iter()
        .map(|(h, _)| to_i64(h.first, "hole first seq"))
        .collect::<StoreResult<Vec<_>>>()?;
    let new_flags: Vec<NewFlag> = holes.iter().map(|(_, f)| f.clone()).collect();
    let mut tx = pool.begin().await?;
    let raised = flags::insert(&mut tx, &new_flags).await?;
    let drafts: Vec<_> = raised
        .iter()
        .map(crate::shared::drafts::flag_raised)
        .collect();
    super::audit::append(&mut tx, &drafts).await?;
    sqlx::query(
        "DELETE FROM seq_holes h USING UNNEST($1::text[], $2::int8[]) AS u(device_id, first_seq) \
         WHERE h.device_id = u.device_id AND h.first_seq = u.first_seq",
    )
    .bind(devices)
    .bind(firsts)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(raised)
}
