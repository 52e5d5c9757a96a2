//! The facts' lookups on PostgreSQL: keys passed as arrays.
//!
//! Every lookup is sent unprepared (`persistent(false)`), so PostgreSQL plans
//! it for these keys and the tables as they are now. A prepared statement's
//! cached generic plan, fixed while the tables were small, seq-scans them;
//! with no ANALYZE to invalidate it (autovacuum off, as on this project's CI
//! machine) a 10-minute `pentrace bench` run read 2.1 billion
//! `device_messages` rows in 1,636 scans and slowed from ~113k to ~27k
//! samples/s. Planning these few statements per batch costs far less.

use async_trait::async_trait;
use sqlx::PgConnection;
use uuid::Uuid;

use super::PgStore;
use crate::StoreResult;
use crate::engine::facts::{
    BindingRow, DeviceRow, FactsSql, HoleRow, LotRow, ProductRow, SessionStateRow,
};
use crate::shared::columns::{StoredId, int8};

#[async_trait]
impl FactsSql for PgStore {
    async fn seen(c: &mut PgConnection, keys: &[(String, u64)]) -> StoreResult<Vec<(String, i64)>> {
        let devices: Vec<&str> = keys.iter().map(|(d, _)| d.as_str()).collect();
        let seqs = keys
            .iter()
            .map(|(_, s)| int8(*s, "seq"))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(sqlx::query_as(
            "SELECT m.device_id, m.seq FROM device_messages m \
             JOIN UNNEST($1::text[], $2::int8[]) AS k(device_id, seq) \
               ON m.device_id = k.device_id AND m.seq = k.seq",
        )
        .persistent(false)
        .bind(devices)
        .bind(seqs)
        .fetch_all(c)
        .await?)
    }

    async fn devices(c: &mut PgConnection, ids: &[&str]) -> StoreResult<Vec<DeviceRow>> {
        Ok(sqlx::query_as(
            "SELECT id, clinic_id, max_depth_um, max_seq, stored_through FROM devices \
             WHERE id = ANY($1)",
        )
        .persistent(false)
        .bind(ids)
        .fetch_all(c)
        .await?)
    }

    async fn products(c: &mut PgConnection, gtins: &[&str]) -> StoreResult<Vec<ProductRow>> {
        Ok(sqlx::query_as(
            "SELECT gtin, max_depth_um, rated_strokes, max_active_s, shelf_life_days \
             FROM products WHERE gtin = ANY($1)",
        )
        .persistent(false)
        .bind(gtins)
        .fetch_all(c)
        .await?)
    }

    async fn lots(
        c: &mut PgConnection,
        keys: &[&(String, String)],
    ) -> StoreResult<Vec<LotRow<Self>>> {
        Ok(sqlx::query_as(
            "SELECT l.gtin, l.lot, l.expiry, l.recalled_at FROM lots l \
             JOIN UNNEST($1::text[], $2::text[]) AS k(gtin, lot) \
               ON l.gtin = k.gtin AND l.lot = k.lot",
        )
        .persistent(false)
        .bind(keys.iter().map(|(g, _)| g.as_str()).collect::<Vec<_>>())
        .bind(keys.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>())
        .fetch_all(c)
        .await?)
    }

    async fn bindings(c: &mut PgConnection, ids: &[&str]) -> StoreResult<Vec<BindingRow<Self>>> {
        Ok(sqlx::query_as(
            "SELECT c.cartridge_id, c.session_id, c.device_id, d.clinic_id, c.patient_ref, \
             c.last_activity_at, c.strokes, c.active_ms \
             FROM cartridges c JOIN devices d ON d.id = c.device_id \
             WHERE c.cartridge_id = ANY($1)",
        )
        .persistent(false)
        .bind(ids)
        .fetch_all(c)
        .await?)
    }

    async fn session_states(
        c: &mut PgConnection,
        ids: &[String],
    ) -> StoreResult<Vec<SessionStateRow<Self>>> {
        let ids = ids
            .iter()
            .map(|id| Uuid::from_id(id, "session id"))
            .collect::<StoreResult<Vec<Uuid>>>()?;
        Ok(sqlx::query_as(
            "SELECT session_id, device_id, relation, owner_session_id, cartridge_id, strokes, \
             active_ms, device_started_at FROM sessions WHERE session_id = ANY($1)",
        )
        .persistent(false)
        .bind(ids)
        .fetch_all(c)
        .await?)
    }

    async fn holes(c: &mut PgConnection, device_ids: &[&str]) -> StoreResult<Vec<HoleRow<Self>>> {
        Ok(sqlx::query_as(
            "SELECT device_id, first_seq, last_seq, detected_at FROM seq_holes \
             WHERE device_id = ANY($1) ORDER BY device_id, first_seq",
        )
        .persistent(false)
        .bind(device_ids)
        .fetch_all(c)
        .await?)
    }
}
