//! Session rows of a commit on PostgreSQL, as arrays. The engine merges a
//! session's writes first: PostgreSQL refuses an `ON CONFLICT DO UPDATE`
//! that touches the same row twice in one statement.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::shared::columns::{StoredId, int4, int8, relation_columns};
use crate::{SessionWrite, StoreResult};

/// Creates the sessions, or adds to them when another process created them
/// meanwhile, never to another device's; the ids written.
pub(super) async fn create(
    conn: &mut PgConnection,
    writes: &[&SessionWrite],
) -> StoreResult<Vec<String>> {
    let mut c = Columns::default();
    for w in writes {
        c.push(w)?;
    }
    let written: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO sessions (session_id, device_id, clinic_id, relation, owner_session_id, \
             cartridge_id, udi, gtin, lot, expiry, area, patient_ref, operator_ref, firmware, \
             started_at, ended_at, strokes, active_ms, samples, max_depth_um, \
             device_started_at, device_ended_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[], \
             $6::text[], $7::text[], $8::text[], $9::text[], $10::date[], $11::text[], \
             $12::text[], $13::text[], $14::text[], $15::timestamptz[], $16::timestamptz[], \
             $17::int8[], $18::int8[], $19::int8[], $20::int4[], $21::timestamptz[], \
             $22::timestamptz[]) \
         ON CONFLICT (session_id) DO UPDATE SET \
             strokes = sessions.strokes + EXCLUDED.strokes, \
             active_ms = sessions.active_ms + EXCLUDED.active_ms, \
             samples = sessions.samples + EXCLUDED.samples, \
             max_depth_um = GREATEST(sessions.max_depth_um, EXCLUDED.max_depth_um), \
             ended_at = COALESCE(EXCLUDED.ended_at, sessions.ended_at), \
             device_ended_at = COALESCE(EXCLUDED.device_ended_at, sessions.device_ended_at), \
             patient_ref = COALESCE(sessions.patient_ref, EXCLUDED.patient_ref), \
             operator_ref = COALESCE(NULLIF(sessions.operator_ref, ''), EXCLUDED.operator_ref), \
             firmware = COALESCE(NULLIF(sessions.firmware, ''), EXCLUDED.firmware) \
         WHERE sessions.device_id = EXCLUDED.device_id \
         RETURNING session_id",
    )
    .bind(&c.session_id)
    .bind(c.device_id)
    .bind(c.clinic_id)
    .bind(c.relation)
    .bind(c.owner_session_id)
    .bind(c.cartridge_id)
    .bind(c.udi)
    .bind(c.gtin)
    .bind(c.lot)
    .bind(c.expiry)
    .bind(c.area)
    .bind(c.patient_ref)
    .bind(c.operator_ref)
    .bind(c.firmware)
    .bind(c.started_at)
    .bind(c.ended_at)
    .bind(c.strokes)
    .bind(c.active_ms)
    .bind(c.samples)
    .bind(c.max_depth_um)
    .bind(c.device_started_at)
    .bind(c.device_ended_at)
    .fetch_all(conn)
    .await?;
    Ok(written.iter().map(Uuid::to_string).collect())
}

/// Adds to stored sessions. A session row is never created without its
/// relation (the column is NOT NULL), so a write that does not decide it
/// must find the row; if it does not, the batch is stale.
pub(super) async fn add(
    conn: &mut PgConnection,
    writes: &[&SessionWrite],
) -> StoreResult<Vec<String>> {
    let mut c = Columns::default();
    for w in writes {
        c.push(w)?;
    }
    let updated: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE sessions s SET \
             strokes = s.strokes + u.strokes, \
             active_ms = s.active_ms + u.active_ms, \
             samples = s.samples + u.samples, \
             max_depth_um = GREATEST(s.max_depth_um, u.max_depth_um), \
             ended_at = COALESCE(u.ended_at, s.ended_at), \
             device_ended_at = COALESCE(u.device_ended_at, s.device_ended_at), \
             patient_ref = COALESCE(s.patient_ref, u.patient_ref), \
             operator_ref = COALESCE(NULLIF(s.operator_ref, ''), u.operator_ref), \
             firmware = COALESCE(NULLIF(s.firmware, ''), u.firmware) \
         FROM UNNEST($1::uuid[], $2::timestamptz[], $3::int8[], $4::int8[], $5::int8[], \
                     $6::int4[], $7::text[], $8::text[], $9::text[], $10::timestamptz[], \
                     $11::text[]) \
              AS u(session_id, ended_at, strokes, active_ms, samples, max_depth_um, \
                   patient_ref, operator_ref, firmware, device_ended_at, device_id) \
         WHERE s.session_id = u.session_id AND s.device_id = u.device_id \
         RETURNING s.session_id",
    )
    .bind(&c.session_id)
    .bind(c.ended_at)
    .bind(c.strokes)
    .bind(c.active_ms)
    .bind(c.samples)
    .bind(c.max_depth_um)
    .bind(c.patient_ref)
    .bind(c.operator_ref)
    .bind(c.firmware)
    .bind(c.device_ended_at)
    .bind(&c.device_id)
    .fetch_all(conn)
    .await?;
    Ok(updated.iter().map(Uuid::to_string).collect())
}

/// Session writes as one array per column.
#[derive(Debug, Default)]
struct Columns<'a> {
    session_id: Vec<Uuid>,
    device_id: Vec<&'a str>,
    clinic_id: Vec<&'a str>,
    relation: Vec<Option<&'static str>>,
    owner_session_id: Vec<Option<Uuid>>,
    cartridge_id: Vec<Option<&'a str>>,
    udi: Vec<&'a str>,
    gtin: Vec<Option<&'a str>>,
    lot: Vec<Option<&'a str>>,
    expiry: Vec<Option<chrono::NaiveDate>>,
    area: Vec<&'a str>,
    patient_ref: Vec<Option<&'a str>>,
    operator_ref: Vec<&'a str>,
    firmware: Vec<&'a str>,
    started_at: Vec<chrono::DateTime<chrono::Utc>>,
    ended_at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    device_started_at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    device_ended_at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    strokes: Vec<i64>,
    active_ms: Vec<i64>,
    samples: Vec<i64>,
    max_depth_um: Vec<i32>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, w: &'a SessionWrite) -> StoreResult<()> {
        let (relation, owner) = match &w.relation {
            Some(r) => relation_columns(r).map(|(name, owner)| (Some(name), owner))?,
            None => (None, None),
        };
        self.session_id
            .push(Uuid::from_id(&w.session_id, "session id")?);
        self.device_id.push(&w.device_id);
        self.clinic_id.push(&w.clinic_id);
        self.relation.push(relation);
        self.owner_session_id.push(owner);
        self.cartridge_id.push(w.cartridge_id.as_deref());
        self.udi.push(&w.udi);
        self.gtin.push(w.gtin.as_deref());
        self.lot.push(w.lot.as_deref());
        self.expiry.push(w.expiry);
        self.area.push(&w.area);
        self.patient_ref.push(w.patient_ref.as_deref());
        self.operator_ref.push(&w.operator_ref);
        self.firmware.push(&w.firmware);
        self.started_at.push(w.started_at);
        self.ended_at.push(w.ended_at);
        self.device_started_at.push(w.device_started_at);
        self.device_ended_at.push(w.device_ended_at);
        self.strokes.push(int8(w.add_strokes, "session strokes")?);
        self.active_ms
            .push(int8(w.add_active_ms, "session active ms")?);
        self.samples.push(int8(w.add_samples, "session samples")?);
        self.max_depth_um
            .push(int4(w.max_depth_um, "session max depth")?);
        Ok(())
    }
}
