//! Session rows of a commit on SQLite: one statement a session (the engine
//! merges a session's writes first).

use pentrace_domain::rules::CartridgeRelation;
use sqlx::SqliteConnection;
use uuid::fmt::Hyphenated;

use crate::shared::columns::{id_text, int4, int8, micros, relation_columns};
use crate::{SessionWrite, StoreResult};

/// Creates the sessions (or adds to them, not to another device's); the
/// ids written.
pub(super) async fn create(
    conn: &mut SqliteConnection,
    writes: &[&SessionWrite],
) -> StoreResult<Vec<String>> {
    let mut written = Vec::new();
    for w in writes {
        if let Some(relation) = &w.relation
            && upsert(conn, w, relation).await?
        {
            written.push(id_text(&w.session_id, "session id")?);
        }
    }
    Ok(written)
}

/// Adds to stored sessions of the same device; the ids written.
pub(super) async fn add(
    conn: &mut SqliteConnection,
    writes: &[&SessionWrite],
) -> StoreResult<Vec<String>> {
    let mut written = Vec::new();
    for w in writes {
        if add_one(conn, w).await? {
            written.push(id_text(&w.session_id, "session id")?);
        }
    }
    Ok(written)
}

/// What a write adds to a session, as bound.
struct Deltas {
    ended_at: Option<i64>,
    device_ended_at: Option<i64>,
    strokes: i64,
    active_ms: i64,
    samples: i64,
    max_depth_um: i64,
}

impl Deltas {
    fn of(w: &SessionWrite) -> StoreResult<Deltas> {
        Ok(Deltas {
            ended_at: w.ended_at.map(micros),
            device_ended_at: w.device_ended_at.map(micros),
            strokes: int8(w.add_strokes, "session strokes")?,
            active_ms: int8(w.add_active_ms, "session active ms")?,
            samples: int8(w.add_samples, "session samples")?,
            max_depth_um: i64::from(int4(w.max_depth_um, "session max depth")?),
        })
    }
}

/// Creates the session, or adds to it when it is stored already (then the
/// stored relation stands: it was decided first); false when another
/// device's session has the id.
async fn upsert(
    conn: &mut SqliteConnection,
    w: &SessionWrite,
    relation: &CartridgeRelation,
) -> StoreResult<bool> {
    let (relation, owner) = relation_columns::<Hyphenated>(relation)?;
    let d = Deltas::of(w)?;
    let result = sqlx::query(
        "INSERT INTO sessions (session_id, ended_at, strokes, active_ms, samples, max_depth_um, \
             patient_ref, operator_ref, firmware, device_id, clinic_id, relation, \
             owner_session_id, cartridge_id, udi, gtin, lot, expiry, area, started_at, \
             device_ended_at, device_started_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
                 ?18, ?19, ?20, ?21, ?22) \
         ON CONFLICT (session_id) DO UPDATE SET \
             strokes = strokes + excluded.strokes, \
             active_ms = active_ms + excluded.active_ms, \
             samples = samples + excluded.samples, \
             max_depth_um = max(max_depth_um, excluded.max_depth_um), \
             ended_at = COALESCE(excluded.ended_at, ended_at), \
             device_ended_at = COALESCE(excluded.device_ended_at, device_ended_at), \
             patient_ref = COALESCE(patient_ref, excluded.patient_ref), \
             operator_ref = COALESCE(NULLIF(operator_ref, ''), excluded.operator_ref), \
             firmware = COALESCE(NULLIF(firmware, ''), excluded.firmware) \
         WHERE device_id = excluded.device_id",
    )
    .bind(id_text(&w.session_id, "session id")?)
    .bind(d.ended_at)
    .bind(d.strokes)
    .bind(d.active_ms)
    .bind(d.samples)
    .bind(d.max_depth_um)
    .bind(w.patient_ref.as_deref())
    .bind(&w.operator_ref)
    .bind(&w.firmware)
    .bind(&w.device_id)
    .bind(&w.clinic_id)
    .bind(relation)
    .bind(owner)
    .bind(w.cartridge_id.as_deref())
    .bind(&w.udi)
    .bind(w.gtin.as_deref())
    .bind(w.lot.as_deref())
    .bind(w.expiry)
    .bind(&w.area)
    .bind(micros(w.started_at))
    .bind(d.device_ended_at)
    .bind(w.device_started_at.map(micros))
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Adds to a stored session; false when it is not stored. A session row is
/// never created without its relation (the column is NOT NULL), so a write
/// that does not decide it must find the row.
async fn add_one(conn: &mut SqliteConnection, w: &SessionWrite) -> StoreResult<bool> {
    let d = Deltas::of(w)?;
    let updated = sqlx::query(
        "UPDATE sessions SET \
             ended_at = COALESCE(?2, ended_at), \
             strokes = strokes + ?3, \
             active_ms = active_ms + ?4, \
             samples = samples + ?5, \
             max_depth_um = max(max_depth_um, ?6), \
             patient_ref = COALESCE(patient_ref, ?7), \
             operator_ref = COALESCE(NULLIF(operator_ref, ''), ?8), \
             firmware = COALESCE(NULLIF(firmware, ''), ?9), \
             device_ended_at = COALESCE(?10, device_ended_at) \
         WHERE session_id = ?1 AND device_id = ?11",
    )
    .bind(id_text(&w.session_id, "session id")?)
    .bind(d.ended_at)
    .bind(d.strokes)
    .bind(d.active_ms)
    .bind(d.samples)
    .bind(d.max_depth_um)
    .bind(w.patient_ref.as_deref())
    .bind(&w.operator_ref)
    .bind(&w.firmware)
    .bind(d.device_ended_at)
    .bind(&w.device_id)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(updated == 1)
}
