//! The facts' lookups on SQLite: keys passed as one JSON array
//! (`json_each`), as PostgreSQL passes them as arrays.

use async_trait::async_trait;
use serde_json::json;
use sqlx::SqliteConnection;

use super::SqliteStore;
use crate::StoreResult;
use crate::engine::facts::{
    BindingRow, DeviceRow, FactsSql, HoleRow, LotRow, ProductRow, SessionStateRow,
};
use crate::shared::columns::int8;

#[async_trait]
impl FactsSql for SqliteStore {
    async fn seen(
        c: &mut SqliteConnection,
        keys: &[(String, u64)],
    ) -> StoreResult<Vec<(String, i64)>> {
        let pairs = keys
            .iter()
            .map(|(d, s)| Ok(json!([d, int8(*s, "seq")?])))
            .collect::<StoreResult<Vec<_>>>()?;
        // CROSS JOIN keeps the keys as the outer loop: one primary-key
        // search per key.
        Ok(sqlx::query_as(
            "SELECT m.device_id, m.seq FROM json_each(?1) AS k CROSS JOIN device_messages AS m \
             WHERE m.device_id = k.value ->> 0 AND m.seq = k.value ->> 1",
        )
        .bind(json!(&pairs).to_string())
        .fetch_all(c)
        .await?)
    }

    async fn devices(c: &mut SqliteConnection, ids: &[&str]) -> StoreResult<Vec<DeviceRow>> {
        Ok(sqlx::query_as(
            "SELECT id, clinic_id, max_depth_um, max_seq, stored_through FROM devices \
             WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json!(ids).to_string())
        .fetch_all(c)
        .await?)
    }

    async fn products(c: &mut SqliteConnection, gtins: &[&str]) -> StoreResult<Vec<ProductRow>> {
        Ok(sqlx::query_as(
            "SELECT gtin, max_depth_um, rated_strokes, max_active_s, shelf_life_days \
             FROM products WHERE gtin IN (SELECT value FROM json_each(?1))",
        )
        .bind(json!(gtins).to_string())
        .fetch_all(c)
        .await?)
    }

    async fn lots(
        c: &mut SqliteConnection,
        keys: &[&(String, String)],
    ) -> StoreResult<Vec<LotRow<Self>>> {
        Ok(sqlx::query_as(
            "SELECT l.gtin, l.lot, l.expiry, l.recalled_at FROM json_each(?1) AS k \
             CROSS JOIN lots AS l WHERE l.gtin = k.value ->> 0 AND l.lot = k.value ->> 1",
        )
        .bind(json!(keys).to_string())
        .fetch_all(c)
        .await?)
    }

    async fn bindings(
        c: &mut SqliteConnection,
        ids: &[&str],
    ) -> StoreResult<Vec<BindingRow<Self>>> {
        Ok(sqlx::query_as(
            "SELECT c.cartridge_id, c.session_id, c.device_id, d.clinic_id, c.patient_ref, \
             c.last_activity_at, c.strokes, c.active_ms \
             FROM cartridges c JOIN devices d ON d.id = c.device_id \
             WHERE c.cartridge_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json!(ids).to_string())
        .fetch_all(c)
        .await?)
    }

    async fn session_states(
        c: &mut SqliteConnection,
        ids: &[String],
    ) -> StoreResult<Vec<SessionStateRow<Self>>> {
        Ok(sqlx::query_as(
            "SELECT session_id, device_id, relation, owner_session_id, cartridge_id, strokes, \
             active_ms, device_started_at FROM sessions \
             WHERE session_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json!(ids).to_string())
        .fetch_all(c)
        .await?)
    }

    async fn holes(
        c: &mut SqliteConnection,
        device_ids: &[&str],
    ) -> StoreResult<Vec<HoleRow<Self>>> {
        Ok(sqlx::query_as(
            "SELECT device_id, first_seq, last_seq, detected_at FROM seq_holes \
             WHERE device_id IN (SELECT value FROM json_each(?1)) ORDER BY device_id, first_seq",
        )
        .bind(json!(device_ids).to_string())
        .fetch_all(c)
        .await?)
    }
}
