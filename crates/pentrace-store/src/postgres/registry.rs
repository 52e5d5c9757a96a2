//! Clinics, devices, the product catalogue and lots (with recalls).

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::convert::{from_i32, from_i64, to_i32, to_i64};
use super::flags;
use pentrace_domain::audit::Actor;

use crate::{
    AuditDraft, Clinic, Device, ExposureVerdict, FlagRecord, Lot, NewFlag, Product, StoreError,
    StoreResult,
};

/// `NotFound(what)` when the statement broke a foreign key (the referenced
/// row is missing); any other error as usual.
fn missing_parent(e: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::NotFound(what()),
        _ => e.into(),
    }
}

/// Creates the clinic (named after its id) and the device, unless they
/// exist; an existing device keeps its clinic. Audited only when the device
/// was created: an existing device was not auto-registered.
pub(super) async fn auto_register_device(
    pool: &PgPool,
    device_id: &str,
    clinic_id: &str,
) -> StoreResult<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO clinics (id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING")
        .bind(clinic_id)
        .execute(&mut *tx)
        .await?;
    let created = sqlx::query(
        "INSERT INTO devices (id, clinic_id, model, max_depth_um) VALUES ($1, $2, 'unknown', 0) \
         ON CONFLICT DO NOTHING",
    )
    .bind(device_id)
    .bind(clinic_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if created == 0 {
        return Ok(tx.commit().await?);
    }
    let draft = AuditDraft {
        clinic_id: clinic_id.to_owned(),
        actor: Actor::System,
        action: "device.auto_registered".into(),
        subject_type: "device".into(),
        subject_id: device_id.to_owned(),
        old_value: None,
        new_value: Some(serde_json::json!({ "device_id": device_id, "clinic_id": clinic_id })),
        reason: Some("--auto-register: an unknown device sent telemetry".into()),
    };
    super::audit::append(&mut tx, &[draft]).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn upsert_clinic(conn: &mut PgConnection, clinic: &Clinic) -> StoreResult<Clinic> {
    let (id, name, time_zone): (String, String, String) = sqlx::query_as(
        "INSERT INTO clinics (id, name, time_zone) VALUES ($1, $2, $3) \
         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, time_zone = EXCLUDED.time_zone \
         RETURNING id, name, time_zone",
    )
    .bind(&clinic.id)
    .bind(&clinic.name)
    .bind(&clinic.time_zone)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Clinic {
        id,
        name,
        time_zone,
    })
}

/// Creates or changes a device; `NotFound` when its clinic does not exist.
pub(super) async fn upsert_device(conn: &mut PgConnection, device: &Device) -> StoreResult<Device> {
    let (id, clinic_id, model, depth): (String, String, String, i32) = sqlx::query_as(
        "INSERT INTO devices (id, clinic_id, model, max_depth_um) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO UPDATE SET clinic_id = EXCLUDED.clinic_id, model = EXCLUDED.model, \
             max_depth_um = EXCLUDED.max_depth_um \
         RETURNING id, clinic_id, model, max_depth_um",
    )
    .bind(&device.id)
    .bind(&device.clinic_id)
    .bind(&device.model)
    .bind(to_i32(device.max_depth_um, "device max depth")?)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| missing_parent(e, || format!("clinic {}", device.clinic_id)))?;
    // A pen's own credentials belong to the clinic the pen is in, so a pen
    // that moves takes them (and what the fleet checks say of them) along.
    sqlx::query("UPDATE device_credentials SET clinic_id = $2 WHERE device_id = $1")
        .bind(&id)
        .bind(&clinic_id)
        .execute(&mut *conn)
        .await?;
    Ok(Device {
        id,
        clinic_id,
        model,
        max_depth_um: from_i32(depth, "device max depth")?,
    })
}

/// A `products` row.
type ProductRow = (String, String, i32, i64, i32, i32);

const PRODUCT_COLUMNS: &str =
    "gtin, name, max_depth_um, rated_strokes, max_active_s, shelf_life_days";

fn product_from(row: ProductRow) -> StoreResult<Product> {
    let (gtin, name, depth, strokes, active_s, shelf_life) = row;
    Ok(Product {
        gtin,
        name,
        max_depth_um: from_i32(depth, "product max depth")?,
        rated_strokes: from_i64(strokes, "product rated strokes")?,
        max_active_s: from_i32(active_s, "product max active s")?,
        shelf_life_days: from_i32(shelf_life, "product shelf life")?,
    })
}

pub(super) async fn upsert_product(
    conn: &mut PgConnection,
    product: &Product,
) -> StoreResult<Product> {
    let sql = format!(
        "INSERT INTO products ({PRODUCT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (gtin) DO UPDATE SET name = EXCLUDED.name, \
             max_depth_um = EXCLUDED.max_depth_um, rated_strokes = EXCLUDED.rated_strokes, \
             max_active_s = EXCLUDED.max_active_s, shelf_life_days = EXCLUDED.shelf_life_days \
         RETURNING {PRODUCT_COLUMNS}"
    );
    let row: ProductRow = sqlx::query_as(&sql)
        .bind(&product.gtin)
        .bind(&product.name)
        .bind(to_i32(product.max_depth_um, "product max depth")?)
        .bind(to_i64(product.rated_strokes, "product rated strokes")?)
        .bind(to_i32(product.max_active_s, "product max active s")?)
        .bind(to_i32(product.shelf_life_days, "product shelf life")?)
        .fetch_one(&mut *conn)
        .await?;
    product_from(row)
}

/// A `lots` row.
type LotRow = (
    String,
    String,
    Option<NaiveDate>,
    Option<DateTime<Utc>>,
    Option<String>,
);

const LOT_COLUMNS: &str = "gtin, lot, expiry, recalled_at, recall_reason";

fn lot_from((gtin, lot, expiry, recalled_at, recall_reason): LotRow) -> Lot {
    Lot {
        gtin,
        lot,
        expiry,
        recalled_at,
        recall_reason,
    }
}

/// Creates or changes a lot; `NotFound` when its product is not catalogued.
///
/// A recall is never undone here, and a recall recorded here raises no
/// exposure flags: recalls go through `recall_lot`.
pub(super) async fn upsert_lot(conn: &mut PgConnection, lot: &Lot) -> StoreResult<Lot> {
    let sql = format!(
        "INSERT INTO lots ({LOT_COLUMNS}) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (gtin, lot) DO UPDATE SET expiry = EXCLUDED.expiry, \
             recalled_at = COALESCE(lots.recalled_at, EXCLUDED.recalled_at), \
             recall_reason = COALESCE(lots.recall_reason, EXCLUDED.recall_reason) \
         RETURNING {LOT_COLUMNS}"
    );
    let row: LotRow = sqlx::query_as(&sql)
        .bind(&lot.gtin)
        .bind(&lot.lot)
        .bind(lot.expiry)
        .bind(lot.recalled_at)
        .bind(&lot.recall_reason)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| missing_parent(e, || format!("product {}", lot.gtin)))?;
    Ok(lot_from(row))
}

/// Marks the lot recalled and raises `RECALL_EXPOSURE` on every stored
/// session of the lot that started before the recall, in one transaction.
///
/// Idempotent: a lot recalled earlier keeps its first recall time and reason,
/// and the exposure is judged against that time. Calling it again raises
/// flags only for sessions stored since (e.g. by a batch that was judged
/// before the recall and committed after it).
pub(super) async fn recall_lot(
    pool: &PgPool,
    gtin: &str,
    lot: &str,
    reason: &str,
    at: DateTime<Utc>,
    exposure: ExposureVerdict,
    actor: &Actor,
) -> StoreResult<(Lot, Vec<FlagRecord>)> {
    let mut tx = pool.begin().await?;
    let sql = format!(
        "UPDATE lots SET recalled_at = COALESCE(recalled_at, $3), \
                         recall_reason = COALESCE(recall_reason, $4) \
         WHERE gtin = $1 AND lot = $2 RETURNING {LOT_COLUMNS}"
    );
    let row: Option<LotRow> = sqlx::query_as(&sql)
        .bind(gtin)
        .bind(lot)
        .bind(at)
        .bind(reason)
        .fetch_optional(&mut *tx)
        .await?;
    let recalled =
        lot_from(row.ok_or_else(|| StoreError::NotFound(format!("lot {lot} of {gtin}")))?);
    let recalled_at = recalled.recalled_at.unwrap_or(at);
    let exposed = exposure_flags(&mut tx, gtin, lot, recalled_at, exposure).await?;
    let new_flags = flags::insert(&mut tx, &exposed).await?;
    let mut drafts = vec![crate::shared::drafts::recall_draft(&recalled, actor)];
    drafts.extend(new_flags.iter().map(crate::shared::drafts::flag_raised));
    super::audit::append(&mut tx, &drafts).await?;
    tx.commit().await?;
    Ok((recalled, new_flags))
}

/// The exposure verdicts of the lot's sessions started before `recalled_at`.
async fn exposure_flags(
    conn: &mut PgConnection,
    gtin: &str,
    lot: &str,
    recalled_at: DateTime<Utc>,
    exposure: ExposureVerdict,
) -> StoreResult<Vec<NewFlag>> {
    let sessions: Vec<(Uuid, String, String, Option<String>)> = sqlx::query_as(
        "SELECT session_id, clinic_id, device_id, cartridge_id FROM sessions \
         WHERE gtin = $1 AND lot = $2 AND started_at < $3 \
           AND NOT EXISTS (SELECT 1 FROM flags f WHERE f.session_id = sessions.session_id \
                           AND f.kind = 'CARTRIDGE_RECALLED') \
         ORDER BY started_at, session_id",
    )
    .bind(gtin)
    .bind(lot)
    .bind(recalled_at)
    .fetch_all(conn)
    .await?;
    Ok(sessions
        .into_iter()
        .map(|(session_id, clinic_id, device_id, cartridge_id)| {
            let session_id = session_id.to_string();
            let v = exposure(&session_id, gtin, lot, recalled_at);
            NewFlag {
                kind: v.kind,
                severity: v.severity,
                dedupe_key: v.dedupe_key,
                clinic_id,
                device_id,
                session_id: Some(session_id),
                cartridge_id,
                seq: 0,
                detail: v.detail,
                evidence: v.evidence,
            }
        })
        .collect())
}

pub(super) async fn list_clinics(pool: &PgPool) -> StoreResult<Vec<Clinic>> {
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT id, name, time_zone FROM clinics ORDER BY id")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, name, time_zone)| Clinic {
            id,
            name,
            time_zone,
        })
        .collect())
}

pub(super) async fn list_products(pool: &PgPool) -> StoreResult<Vec<Product>> {
    let sql = format!("SELECT {PRODUCT_COLUMNS} FROM products ORDER BY gtin");
    let rows: Vec<ProductRow> = sqlx::query_as(&sql).fetch_all(pool).await?;
    rows.into_iter().map(product_from).collect()
}

pub(super) async fn list_lots(pool: &PgPool, gtin: Option<&str>) -> StoreResult<Vec<Lot>> {
    let sql = format!(
        "SELECT {LOT_COLUMNS} FROM lots WHERE ($1::text IS NULL OR gtin = $1) ORDER BY gtin, lot"
    );
    let rows: Vec<LotRow> = sqlx::query_as(&sql).bind(gtin).fetch_all(pool).await?;
    Ok(rows.into_iter().map(lot_from).collect())
}

/// A registry row as JSON, without the columns that change on their own
/// (liveness, progress, creation time): what a person registered.
pub(super) async fn snapshot(
    conn: &mut PgConnection,
    table: &str,
    key: &[(&str, &str)],
) -> StoreResult<Option<serde_json::Value>> {
    let filter: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(i, (c, _))| format!("{c} = ${}", i + 1))
        .collect();
    let sql = format!(
        "SELECT to_jsonb(t) - 'created_at' - 'last_seen' - 'max_seq' - 'stored_through' - 'battery_pct' - 'firmware' \
         FROM {table} t WHERE {}",
        filter.join(" AND ")
    );
    let mut query = sqlx::query_scalar::<_, serde_json::Value>(&sql);
    for (_, value) in key {
        query = query.bind(*value);
    }
    Ok(query.fetch_optional(conn).await?)
}

/// A registry row a person creates or changes, audited with its old and new
/// values in the same transaction.
#[derive(Debug)]
pub(super) struct Change<'a> {
    pub chain: &'a str,
    pub table: &'static str,
    pub subject_type: &'static str,
    pub subject_id: String,
    pub key: Vec<(&'static str, &'a str)>,
}

impl Change<'_> {
    pub(super) async fn snapshot(
        &self,
        conn: &mut PgConnection,
    ) -> StoreResult<Option<serde_json::Value>> {
        snapshot(conn, self.table, &self.key).await
    }

    /// Appends `<subject>.registered` or `<subject>.changed`, unless nothing
    /// changed.
    pub(super) async fn record(
        &self,
        conn: &mut PgConnection,
        old: Option<serde_json::Value>,
        actor: &Actor,
    ) -> StoreResult<()> {
        let new = self.snapshot(conn).await?;
        if new == old {
            return Ok(());
        }
        let verb = if old.is_some() {
            "changed"
        } else {
            "registered"
        };
        let draft = AuditDraft {
            clinic_id: self.chain.to_owned(),
            actor: actor.clone(),
            action: format!("{}.{verb}", self.subject_type),
            subject_type: self.subject_type.into(),
            subject_id: self.subject_id.clone(),
            old_value: old,
            new_value: new,
            reason: None,
        };
        super::audit::append(conn, &[draft]).await?;
        Ok(())
    }
}
