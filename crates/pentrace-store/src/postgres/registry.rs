//! The registry's statements on PostgreSQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::PgStore;
use super::convert::{to_i32, to_i64};
use crate::engine::registry::{
    ClinicRow, DeviceRow, ExposedSession, LOT_COLUMNS, LotRow, PRODUCT_COLUMNS, ProductRow,
    RegistrySql,
};
use crate::{Clinic, Device, Lot, Product, StoreResult};

#[async_trait]
impl RegistrySql for PgStore {
    async fn register_unknown_device(
        c: &mut PgConnection,
        device_id: &str,
        clinic_id: &str,
    ) -> StoreResult<bool> {
        sqlx::query("INSERT INTO clinics (id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING")
            .bind(clinic_id)
            .execute(&mut *c)
            .await?;
        let created = sqlx::query(
            "INSERT INTO devices (id, clinic_id, model, max_depth_um) \
             VALUES ($1, $2, 'unknown', 0) ON CONFLICT DO NOTHING",
        )
        .bind(device_id)
        .bind(clinic_id)
        .execute(c)
        .await?;
        Ok(created.rows_affected() > 0)
    }

    async fn upsert_clinic(c: &mut PgConnection, clinic: &Clinic) -> StoreResult<ClinicRow> {
        let row = sqlx::query_as(
            "INSERT INTO clinics (id, name, time_zone) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, time_zone = EXCLUDED.time_zone \
             RETURNING id, name, time_zone",
        )
        .bind(&clinic.id)
        .bind(&clinic.name)
        .bind(&clinic.time_zone)
        .fetch_one(c)
        .await?;
        Ok(row)
    }

    async fn upsert_device(c: &mut PgConnection, device: &Device) -> StoreResult<DeviceRow<Self>> {
        let row: DeviceRow<Self> = sqlx::query_as(
            "INSERT INTO devices (id, clinic_id, model, max_depth_um) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET clinic_id = EXCLUDED.clinic_id, \
                 model = EXCLUDED.model, max_depth_um = EXCLUDED.max_depth_um \
             RETURNING id, clinic_id, model, max_depth_um",
        )
        .bind(&device.id)
        .bind(&device.clinic_id)
        .bind(&device.model)
        .bind(to_i32(device.max_depth_um, "device max depth")?)
        .fetch_one(&mut *c)
        .await?;
        // A pen's own credentials belong to the clinic the pen is in, so a
        // pen that moves takes them (and what the fleet checks say of them)
        // along.
        sqlx::query("UPDATE device_credentials SET clinic_id = $2 WHERE device_id = $1")
            .bind(&row.0)
            .bind(&row.1)
            .execute(c)
            .await?;
        Ok(row)
    }

    async fn upsert_product(
        c: &mut PgConnection,
        product: &Product,
    ) -> StoreResult<ProductRow<Self>> {
        let sql = format!(
            "INSERT INTO products ({PRODUCT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (gtin) DO UPDATE SET name = EXCLUDED.name, \
                 max_depth_um = EXCLUDED.max_depth_um, rated_strokes = EXCLUDED.rated_strokes, \
                 max_active_s = EXCLUDED.max_active_s, shelf_life_days = EXCLUDED.shelf_life_days \
             RETURNING {PRODUCT_COLUMNS}"
        );
        let row: ProductRow<Self> = sqlx::query_as(&sql)
            .bind(&product.gtin)
            .bind(&product.name)
            .bind(to_i32(product.max_depth_um, "product max depth")?)
            .bind(to_i64(product.rated_strokes, "product rated strokes")?)
            .bind(to_i32(product.max_active_s, "product max active s")?)
            .bind(to_i32(product.shelf_life_days, "product shelf life")?)
            .fetch_one(c)
            .await?;
        Ok(row)
    }

    async fn upsert_lot(c: &mut PgConnection, lot: &Lot) -> StoreResult<LotRow<Self>> {
        let sql = format!(
            "INSERT INTO lots ({LOT_COLUMNS}) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (gtin, lot) DO UPDATE SET expiry = EXCLUDED.expiry, \
                 recalled_at = COALESCE(lots.recalled_at, EXCLUDED.recalled_at), \
                 recall_reason = COALESCE(lots.recall_reason, EXCLUDED.recall_reason) \
             RETURNING {LOT_COLUMNS}"
        );
        let row: LotRow<Self> = sqlx::query_as(&sql)
            .bind(&lot.gtin)
            .bind(&lot.lot)
            .bind(lot.expiry)
            .bind(lot.recalled_at)
            .bind(&lot.recall_reason)
            .fetch_one(c)
            .await?;
        Ok(row)
    }

    async fn mark_recalled(
        c: &mut PgConnection,
        gtin: &str,
        lot: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<LotRow<Self>>> {
        let sql = format!(
            "UPDATE lots SET recalled_at = COALESCE(recalled_at, $3), \
                             recall_reason = COALESCE(recall_reason, $4) \
             WHERE gtin = $1 AND lot = $2 RETURNING {LOT_COLUMNS}"
        );
        let row: Option<LotRow<Self>> = sqlx::query_as(&sql)
            .bind(gtin)
            .bind(lot)
            .bind(at)
            .bind(reason)
            .fetch_optional(c)
            .await?;
        Ok(row)
    }

    async fn unflagged_sessions_of_lot(
        c: &mut PgConnection,
        gtin: &str,
        lot: &str,
        before: DateTime<Utc>,
    ) -> StoreResult<Vec<ExposedSession>> {
        let rows: Vec<(Uuid, String, String, Option<String>)> = sqlx::query_as(
            "SELECT session_id, clinic_id, device_id, cartridge_id FROM sessions \
             WHERE gtin = $1 AND lot = $2 AND started_at < $3 \
               AND NOT EXISTS (SELECT 1 FROM flags f WHERE f.session_id = sessions.session_id \
                               AND f.kind = 'CARTRIDGE_RECALLED') \
             ORDER BY started_at, session_id",
        )
        .bind(gtin)
        .bind(lot)
        .bind(before)
        .fetch_all(c)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, clinic_id, device_id, cartridge_id)| ExposedSession {
                session_id: id.to_string(),
                clinic_id,
                device_id,
                cartridge_id,
            })
            .collect())
    }

    async fn clinic(c: &mut PgConnection, id: &str) -> StoreResult<Option<ClinicRow>> {
        let row = sqlx::query_as("SELECT id, name, time_zone FROM clinics WHERE id = $1")
            .bind(id)
            .fetch_optional(c)
            .await?;
        Ok(row)
    }

    async fn device(c: &mut PgConnection, id: &str) -> StoreResult<Option<DeviceRow<Self>>> {
        let row: Option<DeviceRow<Self>> =
            sqlx::query_as("SELECT id, clinic_id, model, max_depth_um FROM devices WHERE id = $1")
                .bind(id)
                .fetch_optional(c)
                .await?;
        Ok(row)
    }

    async fn product(c: &mut PgConnection, gtin: &str) -> StoreResult<Option<ProductRow<Self>>> {
        let sql = format!("SELECT {PRODUCT_COLUMNS} FROM products WHERE gtin = $1");
        let row: Option<ProductRow<Self>> =
            sqlx::query_as(&sql).bind(gtin).fetch_optional(c).await?;
        Ok(row)
    }

    async fn lot(c: &mut PgConnection, gtin: &str, lot: &str) -> StoreResult<Option<LotRow<Self>>> {
        let sql = format!("SELECT {LOT_COLUMNS} FROM lots WHERE gtin = $1 AND lot = $2");
        let row: Option<LotRow<Self>> = sqlx::query_as(&sql)
            .bind(gtin)
            .bind(lot)
            .fetch_optional(c)
            .await?;
        Ok(row)
    }

    async fn list_clinics(c: &mut PgConnection) -> StoreResult<Vec<ClinicRow>> {
        let rows: Vec<ClinicRow> =
            sqlx::query_as("SELECT id, name, time_zone FROM clinics ORDER BY id")
                .fetch_all(c)
                .await?;
        Ok(rows)
    }

    async fn list_products(c: &mut PgConnection) -> StoreResult<Vec<ProductRow<Self>>> {
        let sql = format!("SELECT {PRODUCT_COLUMNS} FROM products ORDER BY gtin");
        let rows: Vec<ProductRow<Self>> = sqlx::query_as(&sql).fetch_all(c).await?;
        Ok(rows)
    }

    async fn list_lots(c: &mut PgConnection, gtin: Option<&str>) -> StoreResult<Vec<LotRow<Self>>> {
        let sql = format!(
            "SELECT {LOT_COLUMNS} FROM lots WHERE ($1::text IS NULL OR gtin = $1) \
             ORDER BY gtin, lot"
        );
        let rows: Vec<LotRow<Self>> = sqlx::query_as(&sql).bind(gtin).fetch_all(c).await?;
        Ok(rows)
    }
}
