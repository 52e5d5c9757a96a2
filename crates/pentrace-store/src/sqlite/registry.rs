//! Clinics, devices, the product catalogue and lots (with recalls).

use chrono::{DateTime, SecondsFormat, Utc};
use pentrace_domain::audit::Actor;
use serde_json::json;
use sqlx::{SqliteConnection, SqlitePool};

use super::convert::{date, date_text, micros, opt_time, time, to_int4, to_int8, to_u32, to_u64};
use super::{audit, begin, flags};
use crate::shared::drafts::recall_draft;
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
    pool: &SqlitePool,
    device_id: &str,
    clinic_id: &str,
) -> StoreResult<()> {
    let mut tx = begin(pool).await?;
    sqlx::query("INSERT INTO clinics (id, name) VALUES (?1, ?1) ON CONFLICT DO NOTHING")
        .bind(clinic_id)
        .execute(&mut *tx)
        .await?;
    let created = sqlx::query(
        "INSERT INTO devices (id, clinic_id, model, max_depth_um) VALUES (?1, ?2, 'unknown', 0) \
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
        new_value: Some(json!({ "device_id": device_id, "clinic_id": clinic_id })),
        reason: Some("--auto-register: an unknown device sent telemetry".into()),
    };
    audit::append(&mut tx, &[draft]).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn upsert_clinic(
    conn: &mut SqliteConnection,
    clinic: &Clinic,
) -> StoreResult<Clinic> {
    let (id, name, time_zone): (String, String, String) = sqlx::query_as(
        "INSERT INTO clinics (id, name, time_zone) VALUES (?1, ?2, ?3) \
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, time_zone = excluded.time_zone \
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
pub(super) async fn upsert_device(
    conn: &mut SqliteConnection,
    device: &Device,
) -> StoreResult<Device> {
    let (id, clinic_id, model, depth): (String, String, String, i64) = sqlx::query_as(
        "INSERT INTO devices (id, clinic_id, model, max_depth_um) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (id) DO UPDATE SET clinic_id = excluded.clinic_id, model = excluded.model, \
             max_depth_um = excluded.max_depth_um \
         RETURNING id, clinic_id, model, max_depth_um",
    )
    .bind(&device.id)
    .bind(&device.clinic_id)
    .bind(&device.model)
    .bind(to_int4(device.max_depth_um, "device max depth")?)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| missing_parent(e, || format!("clinic {}", device.clinic_id)))?;
    // See the PostgreSQL store: a pen's own credentials move with it.
    sqlx::query("UPDATE device_credentials SET clinic_id = ?2 WHERE device_id = ?1")
        .bind(&id)
        .bind(&clinic_id)
        .execute(&mut *conn)
        .await?;
    Ok(Device {
        id,
        clinic_id,
        model,
        max_depth_um: to_u32(depth, "device max depth")?,
    })
}

/// A `products` row.
type ProductRow = (String, String, i64, i64, i64, i64);

const PRODUCT_COLUMNS: &str =
    "gtin, name, max_depth_um, rated_strokes, max_active_s, shelf_life_days";

fn product_from(row: ProductRow) -> StoreResult<Product> {
    let (gtin, name, depth, strokes, active_s, shelf_life) = row;
    Ok(Product {
        gtin,
        name,
        max_depth_um: to_u32(depth, "product max depth")?,
        rated_strokes: to_u64(strokes, "product rated strokes")?,
        max_active_s: to_u32(active_s, "product max active s")?,
        shelf_life_days: to_u32(shelf_life, "product shelf life")?,
    })
}

pub(super) async fn upsert_product(
    conn: &mut SqliteConnection,
    product: &Product,
) -> StoreResult<Product> {
    let sql = format!(
        "INSERT INTO products ({PRODUCT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (gtin) DO UPDATE SET name = excluded.name, \
             max_depth_um = excluded.max_depth_um, rated_strokes = excluded.rated_strokes, \
             max_active_s = excluded.max_active_s, shelf_life_days = excluded.shelf_life_days \
         RETURNING {PRODUCT_COLUMNS}"
    );
    let row: ProductRow = sqlx::query_as(&sql)
        .bind(&product.gtin)
        .bind(&product.name)
        .bind(to_int4(product.max_depth_um, "product max depth")?)
        .bind(to_int8(product.rated_strokes, "product rated strokes")?)
        .bind(to_int4(product.max_active_s, "product max active s")?)
        .bind(to_int4(product.shelf_life_days, "product shelf life")?)
        .fetch_one(&mut *conn)
        .await?;
    product_from(row)
}

/// A `lots` row.
type LotRow = (String, String, Option<String>, Option<i64>, Option<String>);

const LOT_COLUMNS: &str = "gtin, lot, expiry, recalled_at, recall_reason";

fn lot_from((gtin, lot, expiry, recalled_at, recall_reason): LotRow) -> StoreResult<Lot> {
    Ok(Lot {
        gtin,
        lot,
        expiry: date(expiry, "lot expiry")?,
        recalled_at: opt_time(recalled_at, "lot recalled_at")?,
        recall_reason,
    })
}

/// Creates or changes a lot; `NotFound` when its product is not catalogued.
///
/// A recall is never undone here, and a recall recorded here raises no
/// exposure flags: recalls go through `recall_lot`.
pub(super) async fn upsert_lot(conn: &mut SqliteConnection, lot: &Lot) -> StoreResult<Lot> {
    let sql = format!(
        "INSERT INTO lots ({LOT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (gtin, lot) DO UPDATE SET expiry = excluded.expiry, \
             recalled_at = COALESCE(recalled_at, excluded.recalled_at), \
             recall_reason = COALESCE(recall_reason, excluded.recall_reason) \
         RETURNING {LOT_COLUMNS}"
    );
    let row: LotRow = sqlx::query_as(&sql)
        .bind(&lot.gtin)
        .bind(&lot.lot)
        .bind(date_text(lot.expiry))
        .bind(lot.recalled_at.map(micros))
        .bind(&lot.recall_reason)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| missing_parent(e, || format!("product {}", lot.gtin)))?;
    lot_from(row)
}

/// Marks the lot recalled and raises `RECALL_EXPOSURE` on every stored
/// session of the lot that started before the recall, in one transaction.
///
/// Idempotent: a lot recalled earlier keeps its first recall time and reason,
/// and the exposure is judged against that time. Calling it again raises
/// flags only for sessions stored since.
pub(super) async fn recall_lot(
    pool: &SqlitePool,
    gtin: &str,
    lot: &str,
    reason: &str,
    at: DateTime<Utc>,
    exposure: ExposureVerdict,
    actor: &Actor,
) -> StoreResult<(Lot, Vec<FlagRecord>)> {
    let mut tx = begin(pool).await?;
    let sql = format!(
        "UPDATE lots SET recalled_at = COALESCE(recalled_at, ?3), \
                         recall_reason = COALESCE(recall_reason, ?4) \
         WHERE gtin = ?1 AND lot = ?2 RETURNING {LOT_COLUMNS}"
    );
    let row: Option<LotRow> = sqlx::query_as(&sql)
        .bind(gtin)
        .bind(lot)
        .bind(micros(at))
        .bind(reason)
        .fetch_optional(&mut *tx)
        .await?;
    let row = row.ok_or_else(|| StoreError::NotFound(format!("lot {lot} of {gtin}")))?;
    let recalled = lot_from(row)?;
    let recalled_at = recalled.recalled_at.unwrap_or(at);
    let exposed = exposure_flags(&mut tx, gtin, lot, recalled_at, exposure).await?;
    let new_flags = flags::insert(&mut tx, &exposed).await?;
    let mut drafts = vec![recall_draft(&recalled, actor)];
    drafts.extend(new_flags.iter().map(crate::shared::drafts::flag_raised));
    audit::append(&mut tx, &drafts).await?;
    tx.commit().await?;
    Ok((recalled, new_flags))
}

/// The exposure verdicts of the lot's sessions started before `recalled_at`,
/// except those already flagged `CARTRIDGE_RECALLED` (as PostgreSQL's).
async fn exposure_flags(
    conn: &mut SqliteConnection,
    gtin: &str,
    lot: &str,
    recalled_at: DateTime<Utc>,
    exposure: ExposureVerdict,
) -> StoreResult<Vec<NewFlag>> {
    let sessions: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT session_id, clinic_id, device_id, cartridge_id FROM sessions \
         WHERE gtin = ?1 AND lot = ?2 AND started_at < ?3 \
           AND NOT EXISTS (SELECT 1 FROM flags f WHERE f.session_id = sessions.session_id \
                           AND f.kind = 'CARTRIDGE_RECALLED') \
         ORDER BY started_at, session_id",
    )
    .bind(gtin)
    .bind(lot)
    .bind(micros(recalled_at))
    .fetch_all(conn)
    .await?;
    Ok(sessions
        .into_iter()
        .map(|(session_id, clinic_id, device_id, cartridge_id)| {
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

pub(super) async fn list_clinics(pool: &SqlitePool) -> StoreResult<Vec<Clinic>> {
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

pub(super) async fn list_products(pool: &SqlitePool) -> StoreResult<Vec<Product>> {
    let sql = format!("SELECT {PRODUCT_COLUMNS} FROM products ORDER BY gtin");
    let rows: Vec<ProductRow> = sqlx::query_as(&sql).fetch_all(pool).await?;
    rows.into_iter().map(product_from).collect()
}

pub(super) async fn list_lots(pool: &SqlitePool, gtin: Option<&str>) -> StoreResult<Vec<Lot>> {
    let sql = format!(
        "SELECT {LOT_COLUMNS} FROM lots WHERE (?1 IS NULL OR gtin = ?1) ORDER BY gtin, lot"
    );
    let rows: Vec<LotRow> = sqlx::query_as(&sql).bind(gtin).fetch_all(pool).await?;
    rows.into_iter().map(lot_from).collect()
}

/// A registry row a person creates or changes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Subject<'a> {
    Clinic(&'a str),
    Device(&'a str),
    Product(&'a str),
    /// `(gtin, lot)`.
    Lot(&'a str, &'a str),
}

impl Subject<'_> {
    fn type_name(self) -> &'static str {
        match self {
            Subject::Clinic(_) => "clinic",
            Subject::Device(_) => "device",
            Subject::Product(_) => "product",
            Subject::Lot(..) => "lot",
        }
    }

    fn id(self) -> String {
        match self {
            Subject::Clinic(id) | Subject::Device(id) | Subject::Product(id) => id.to_owned(),
            Subject::Lot(gtin, lot) => format!("{gtin}:{lot}"),
        }
    }

    /// The row as JSON, without the columns that change on their own
    /// (liveness, progress, creation time): what a person registered. The
    /// same JSON as PostgreSQL's `to_jsonb(row)` minus those columns.
    async fn snapshot(self, conn: &mut SqliteConnection) -> StoreResult<Option<serde_json::Value>> {
        match self {
            Subject::Clinic(id) => {
                let row: Option<(String, String, String)> =
                    sqlx::query_as("SELECT id, name, time_zone FROM clinics WHERE id = ?1")
                        .bind(id)
                        .fetch_optional(conn)
                        .await?;
                Ok(row.map(|(id, name, tz)| json!({ "id": id, "name": name, "time_zone": tz })))
            }
            Subject::Device(id) => {
                let row: Option<(String, String, String, i64)> = sqlx::query_as(
                    "SELECT id, clinic_id, model, max_depth_um FROM devices WHERE id = ?1",
                )
                .bind(id)
                .fetch_optional(conn)
                .await?;
                Ok(row.map(|(id, clinic_id, model, depth)| {
                    json!({ "id": id, "clinic_id": clinic_id, "model": model, "max_depth_um": depth })
                }))
            }
            Subject::Product(gtin) => product_snapshot(conn, gtin).await,
            Subject::Lot(gtin, lot) => lot_snapshot(conn, gtin, lot).await,
        }
    }
}

async fn product_snapshot(
    conn: &mut SqliteConnection,
    gtin: &str,
) -> StoreResult<Option<serde_json::Value>> {
    let sql = format!("SELECT {PRODUCT_COLUMNS} FROM products WHERE gtin = ?1");
    let row: Option<ProductRow> = sqlx::query_as(&sql).bind(gtin).fetch_optional(conn).await?;
    Ok(
        row.map(|(gtin, name, depth, strokes, active_s, shelf_life)| {
            json!({
                "gtin": gtin,
                "name": name,
                "max_depth_um": depth,
                "rated_strokes": strokes,
                "max_active_s": active_s,
                "shelf_life_days": shelf_life,
            })
        }),
    )
}

async fn lot_snapshot(
    conn: &mut SqliteConnection,
    gtin: &str,
    lot: &str,
) -> StoreResult<Option<serde_json::Value>> {
    let sql = format!("SELECT {LOT_COLUMNS} FROM lots WHERE gtin = ?1 AND lot = ?2");
    let row: Option<LotRow> = sqlx::query_as(&sql)
        .bind(gtin)
        .bind(lot)
        .fetch_optional(conn)
        .await?;
    let Some((gtin, lot, expiry, recalled_at, recall_reason)) = row else {
        return Ok(None);
    };
    let recalled_at = recalled_at
        .map(|t| time(t, "lot recalled_at").map(json_time))
        .transpose()?;
    Ok(Some(json!({
        "gtin": gtin,
        "lot": lot,
        "expiry": expiry,
        "recalled_at": recalled_at,
        "recall_reason": recall_reason,
    })))
}

/// A time as PostgreSQL's `to_jsonb` writes a `timestamptz` in UTC:
/// `2025-03-01T09:00:00.5+00:00`, fractional seconds without trailing zeros.
fn json_time(at: DateTime<Utc>) -> String {
    let text = at.to_rfc3339_opts(SecondsFormat::Micros, false);
    match text.split_once('.') {
        Some((seconds, rest)) => {
            let (fraction, offset) = rest.split_at(rest.find('+').unwrap_or(rest.len()));
            let fraction = fraction.trim_end_matches('0');
            if fraction.is_empty() {
                format!("{seconds}{offset}")
            } else {
                format!("{seconds}.{fraction}{offset}")
            }
        }
        None => text,
    }
}

/// A registry row a person creates or changes, audited with its old and new
/// values in the same transaction.
#[derive(Debug)]
pub(super) struct Change<'a> {
    pub chain: &'a str,
    pub subject: Subject<'a>,
}

impl Change<'_> {
    pub(super) async fn snapshot(
        &self,
        conn: &mut SqliteConnection,
    ) -> StoreResult<Option<serde_json::Value>> {
        self.subject.snapshot(conn).await
    }

    /// Appends `<subject>.registered` or `<subject>.changed`, unless nothing
    /// changed.
    pub(super) async fn record(
        &self,
        conn: &mut SqliteConnection,
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
        let subject_type = self.subject.type_name();
        let draft = AuditDraft {
            clinic_id: self.chain.to_owned(),
            actor: actor.clone(),
            action: format!("{subject_type}.{verb}"),
            subject_type: subject_type.into(),
            subject_id: self.subject.id(),
            old_value: old,
            new_value: new,
            reason: None,
        };
        audit::append(conn, &[draft]).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_times_match_postgres() {
        let at = |nanos| DateTime::from_timestamp(1_740_819_600, nanos).unwrap();
        assert_eq!(json_time(at(0)), "2025-03-01T09:00:00+00:00");
        assert_eq!(json_time(at(500_000_000)), "2025-03-01T09:00:00.5+00:00");
        assert_eq!(
            json_time(at(123_456_789)),
            "2025-03-01T09:00:00.123456+00:00"
        );
    }
}
