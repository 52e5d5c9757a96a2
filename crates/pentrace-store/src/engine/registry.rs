//! Clinics, devices, the product catalogue and lots (with recalls): every
//! registry change audited with its old and new values in the same
//! transaction.

use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use pentrace_domain::audit::Actor;
use serde_json::{Value, json};

use super::audit::AuditSql;
use super::flags::FlagSql;
use crate::classify::missing_parent;
use crate::dialect::{Conn, Dialect, for_both_stores};
use crate::shared::columns::{StoredId, StoredInt, int4, int8, opt_time};
use crate::shared::drafts::{flag_raised, recall_draft};
use crate::{
    AuditDraft, Clinic, Device, ExposureVerdict, FlagRecord, GLOBAL_CHAIN, Lot, NewFlag, Product,
    StoreError, StoreResult,
};

/// A stored session of a recalled lot, not yet flagged `CARTRIDGE_RECALLED`.
#[derive(Debug)]
pub(crate) struct ExposedSession {
    pub session_id: String,
    pub clinic_id: String,
    pub device_id: String,
    pub cartridge_id: Option<String>,
}

/// `clinics`: id, name, time zone.
pub(crate) type ClinicRow = (String, String, String);
/// `devices`: id, clinic, model, max depth.
pub(crate) type DeviceRow = (String, String, String, i32);
/// `products`, in [`PRODUCT_COLUMNS`] order.
pub(crate) type ProductRow = (String, String, i32, i64, i32, i32);
/// `lots`, in [`LOT_COLUMNS`] order.
pub(crate) type LotRow<D> = (
    String,
    String,
    Option<NaiveDate>,
    Option<<D as Dialect>::Time>,
    Option<String>,
);

pub(crate) const PRODUCT_COLUMNS: &str =
    "gtin, name, max_depth_um, rated_strokes, max_active_s, shelf_life_days";
pub(crate) const LOT_COLUMNS: &str = "gtin, lot, expiry, recalled_at, recall_reason";

fn clinic_from((id, name, time_zone): ClinicRow) -> Clinic {
    Clinic {
        id,
        name,
        time_zone,
    }
}

fn device_from((id, clinic_id, model, depth): DeviceRow) -> StoreResult<Device> {
    Ok(Device {
        id,
        clinic_id,
        model,
        max_depth_um: depth.into_u32("device max depth")?,
    })
}

fn product_from(row: ProductRow) -> StoreResult<Product> {
    let (gtin, name, depth, strokes, active_s, shelf_life) = row;
    Ok(Product {
        gtin,
        name,
        max_depth_um: depth.into_u32("product max depth")?,
        rated_strokes: strokes.into_u64("product rated strokes")?,
        max_active_s: active_s.into_u32("product max active s")?,
        shelf_life_days: shelf_life.into_u32("product shelf life")?,
    })
}

fn lot_from<D: Dialect>(row: LotRow<D>) -> StoreResult<Lot> {
    let (gtin, lot, expiry, recalled_at, recall_reason) = row;
    Ok(Lot {
        gtin,
        lot,
        expiry,
        recalled_at: opt_time(recalled_at, "lot recalled_at")?,
        recall_reason,
    })
}

/// The registry's statements; rows come back in the dialect's column
/// types.
#[async_trait]
pub(crate) trait RegistrySql: Dialect {
    /// Creates the clinic (named after its id) and the device unless they
    /// exist; whether the device was created.
    async fn register_unknown_device(
        c: &mut Conn<Self>,
        device_id: &str,
        clinic_id: &str,
    ) -> StoreResult<bool>;
    async fn upsert_clinic(c: &mut Conn<Self>, clinic: &Clinic) -> StoreResult<ClinicRow>;
    /// Creates or changes the device and moves its own credentials to its
    /// clinic; a missing clinic is a foreign-key violation.
    async fn upsert_device(c: &mut Conn<Self>, device: &Device) -> StoreResult<DeviceRow>;
    /// A missing product is a foreign-key violation.
    async fn upsert_product(c: &mut Conn<Self>, product: &Product) -> StoreResult<ProductRow>;
    /// Never undoes a recall: a stored recall time and reason are kept.
    async fn upsert_lot(c: &mut Conn<Self>, lot: &Lot) -> StoreResult<LotRow<Self>>;
    /// Sets the recall time and reason unless the lot has them; None when
    /// there is no such lot.
    async fn mark_recalled(
        c: &mut Conn<Self>,
        gtin: &str,
        lot: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<LotRow<Self>>>;
    /// The lot's sessions started before `before` without a
    /// `CARTRIDGE_RECALLED` flag, by start time.
    async fn unflagged_sessions_of_lot(
        c: &mut Conn<Self>,
        gtin: &str,
        lot: &str,
        before: DateTime<Utc>,
    ) -> StoreResult<Vec<ExposedSession>>;
    async fn clinic(c: &mut Conn<Self>, id: &str) -> StoreResult<Option<ClinicRow>>;
    async fn device(c: &mut Conn<Self>, id: &str) -> StoreResult<Option<DeviceRow>>;
    async fn product(c: &mut Conn<Self>, gtin: &str) -> StoreResult<Option<ProductRow>>;
    async fn lot(c: &mut Conn<Self>, gtin: &str, lot: &str) -> StoreResult<Option<LotRow<Self>>>;
    async fn list_clinics(c: &mut Conn<Self>) -> StoreResult<Vec<ClinicRow>>;
    async fn list_products(c: &mut Conn<Self>) -> StoreResult<Vec<ProductRow>>;
    /// By gtin and lot; every gtin when None.
    async fn list_lots(c: &mut Conn<Self>, gtin: Option<&str>) -> StoreResult<Vec<LotRow<Self>>>;
}

for_both_stores! {
    impl RegistrySql {
        async fn register_unknown_device(
            c: &mut Conn<Self>,
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

        async fn upsert_clinic(c: &mut Conn<Self>, clinic: &Clinic) -> StoreResult<ClinicRow> {
            Ok(sqlx::query_as(
                "INSERT INTO clinics (id, name, time_zone) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, \
                     time_zone = EXCLUDED.time_zone \
                 RETURNING id, name, time_zone",
            )
            .bind(&clinic.id)
            .bind(&clinic.name)
            .bind(&clinic.time_zone)
            .fetch_one(c)
            .await?)
        }

        async fn upsert_device(c: &mut Conn<Self>, device: &Device) -> StoreResult<DeviceRow> {
            let row: DeviceRow = sqlx::query_as(
                "INSERT INTO devices (id, clinic_id, model, max_depth_um) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO UPDATE SET clinic_id = EXCLUDED.clinic_id, \
                     model = EXCLUDED.model, max_depth_um = EXCLUDED.max_depth_um \
                 RETURNING id, clinic_id, model, max_depth_um",
            )
            .bind(&device.id)
            .bind(&device.clinic_id)
            .bind(&device.model)
            .bind(int4(device.max_depth_um, "device max depth")?)
            .fetch_one(&mut *c)
            .await?;
            // A pen's own credentials belong to the clinic the pen is in, so
            // a pen that moves takes them (and what the fleet checks say of
            // them) along.
            sqlx::query("UPDATE device_credentials SET clinic_id = $2 WHERE device_id = $1")
                .bind(&row.0)
                .bind(&row.1)
                .execute(c)
                .await?;
            Ok(row)
        }

        async fn upsert_product(
            c: &mut Conn<Self>,
            product: &Product,
        ) -> StoreResult<ProductRow> {
            let sql = format!(
                "INSERT INTO products ({PRODUCT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (gtin) DO UPDATE SET name = EXCLUDED.name, \
                     max_depth_um = EXCLUDED.max_depth_um, \
                     rated_strokes = EXCLUDED.rated_strokes, \
                     max_active_s = EXCLUDED.max_active_s, \
                     shelf_life_days = EXCLUDED.shelf_life_days \
                 RETURNING {PRODUCT_COLUMNS}"
            );
            Ok(sqlx::query_as(&sql)
                .bind(&product.gtin)
                .bind(&product.name)
                .bind(int4(product.max_depth_um, "product max depth")?)
                .bind(int8(product.rated_strokes, "product rated strokes")?)
                .bind(int4(product.max_active_s, "product max active s")?)
                .bind(int4(product.shelf_life_days, "product shelf life")?)
                .fetch_one(c)
                .await?)
        }

        async fn upsert_lot(c: &mut Conn<Self>, lot: &Lot) -> StoreResult<LotRow<Self>> {
            let sql = format!(
                "INSERT INTO lots ({LOT_COLUMNS}) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (gtin, lot) DO UPDATE SET expiry = EXCLUDED.expiry, \
                     recalled_at = COALESCE(lots.recalled_at, EXCLUDED.recalled_at), \
                     recall_reason = COALESCE(lots.recall_reason, EXCLUDED.recall_reason) \
                 RETURNING {LOT_COLUMNS}"
            );
            Ok(sqlx::query_as(&sql)
                .bind(&lot.gtin)
                .bind(&lot.lot)
                .bind(lot.expiry)
                .bind(lot.recalled_at.map(Self::time))
                .bind(&lot.recall_reason)
                .fetch_one(c)
                .await?)
        }

        async fn mark_recalled(
            c: &mut Conn<Self>,
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
            Ok(sqlx::query_as(&sql)
                .bind(gtin)
                .bind(lot)
                .bind(Self::time(at))
                .bind(reason)
                .fetch_optional(c)
                .await?)
        }

        async fn unflagged_sessions_of_lot(
            c: &mut Conn<Self>,
            gtin: &str,
            lot: &str,
            before: DateTime<Utc>,
        ) -> StoreResult<Vec<ExposedSession>> {
            let rows: Vec<(<Self as Dialect>::Id, String, String, Option<String>)> =
                sqlx::query_as(
                    "SELECT session_id, clinic_id, device_id, cartridge_id FROM sessions \
                     WHERE gtin = $1 AND lot = $2 AND started_at < $3 \
                       AND NOT EXISTS (SELECT 1 FROM flags f \
                                       WHERE f.session_id = sessions.session_id \
                                         AND f.kind = 'CARTRIDGE_RECALLED') \
                     ORDER BY started_at, session_id",
                )
                .bind(gtin)
                .bind(lot)
                .bind(Self::time(before))
                .fetch_all(c)
                .await?;
            Ok(rows
                .into_iter()
                .map(|(id, clinic_id, device_id, cartridge_id)| ExposedSession {
                    session_id: id.into_id(),
                    clinic_id,
                    device_id,
                    cartridge_id,
                })
                .collect())
        }

        async fn clinic(c: &mut Conn<Self>, id: &str) -> StoreResult<Option<ClinicRow>> {
            Ok(sqlx::query_as("SELECT id, name, time_zone FROM clinics WHERE id = $1")
                .bind(id)
                .fetch_optional(c)
                .await?)
        }

        async fn device(c: &mut Conn<Self>, id: &str) -> StoreResult<Option<DeviceRow>> {
            Ok(sqlx::query_as(
                "SELECT id, clinic_id, model, max_depth_um FROM devices WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(c)
            .await?)
        }

        async fn product(c: &mut Conn<Self>, gtin: &str) -> StoreResult<Option<ProductRow>> {
            let sql = format!("SELECT {PRODUCT_COLUMNS} FROM products WHERE gtin = $1");
            Ok(sqlx::query_as(&sql).bind(gtin).fetch_optional(c).await?)
        }

        async fn lot(c: &mut Conn<Self>, gtin: &str, lot: &str) -> StoreResult<Option<LotRow<Self>>> {
            let sql = format!("SELECT {LOT_COLUMNS} FROM lots WHERE gtin = $1 AND lot = $2");
            Ok(sqlx::query_as(&sql)
                .bind(gtin)
                .bind(lot)
                .fetch_optional(c)
                .await?)
        }

        async fn list_clinics(c: &mut Conn<Self>) -> StoreResult<Vec<ClinicRow>> {
            Ok(sqlx::query_as("SELECT id, name, time_zone FROM clinics ORDER BY id")
                .fetch_all(c)
                .await?)
        }

        async fn list_products(c: &mut Conn<Self>) -> StoreResult<Vec<ProductRow>> {
            let sql = format!("SELECT {PRODUCT_COLUMNS} FROM products ORDER BY gtin");
            Ok(sqlx::query_as(&sql).fetch_all(c).await?)
        }

        async fn list_lots(c: &mut Conn<Self>, gtin: Option<&str>) -> StoreResult<Vec<LotRow<Self>>> {
            let sql = format!(
                "SELECT {LOT_COLUMNS} FROM lots WHERE ($1 IS NULL OR gtin = $1) ORDER BY gtin, lot"
            );
            Ok(sqlx::query_as(&sql).bind(gtin).fetch_all(c).await?)
        }
    }
}

/// Creates the clinic and the device unless they exist; an existing device
/// keeps its clinic. Audited only when the device was created: an existing
/// device was not auto-registered.
pub(crate) async fn auto_register_device<D: RegistrySql + AuditSql>(
    d: &D,
    device_id: &str,
    clinic_id: &str,
) -> StoreResult<()> {
    let mut tx = d.write().await?;
    if D::register_unknown_device(&mut tx, device_id, clinic_id).await? {
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
        D::append(&mut tx, &[draft]).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A registry row a person creates or changes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Subject<'a> {
    Clinic(&'a Clinic),
    Device(&'a Device),
    Product(&'a Product),
    Lot(&'a Lot),
}

impl Subject<'_> {
    fn type_name(self) -> &'static str {
        match self {
            Subject::Clinic(_) => "clinic",
            Subject::Device(_) => "device",
            Subject::Product(_) => "product",
            Subject::Lot(_) => "lot",
        }
    }

    fn id(self) -> String {
        match self {
            Subject::Clinic(c) => c.id.clone(),
            Subject::Device(d) => d.id.clone(),
            Subject::Product(p) => p.gtin.clone(),
            Subject::Lot(l) => format!("{}:{}", l.gtin, l.lot),
        }
    }

    /// The audit chain the change goes to: a device's clinic, the global
    /// chain for the catalogue.
    fn chain(self) -> String {
        match self {
            Subject::Clinic(c) => c.id.clone(),
            Subject::Device(d) => d.clinic_id.clone(),
            Subject::Product(_) | Subject::Lot(_) => GLOBAL_CHAIN.to_owned(),
        }
    }

    /// The stored row as JSON: what a person registered, without the
    /// columns that change on their own (liveness, progress, creation time).
    async fn snapshot<D: RegistrySql>(self, c: &mut Conn<D>) -> StoreResult<Option<Value>> {
        Ok(match self {
            Subject::Clinic(x) => D::clinic(c, &x.id)
                .await?
                .map(|r| clinic_json(&clinic_from(r))),
            Subject::Device(x) => match D::device(c, &x.id).await? {
                Some(row) => Some(device_json(&device_from(row)?)),
                None => None,
            },
            Subject::Product(x) => match D::product(c, &x.gtin).await? {
                Some(row) => Some(product_json(&product_from(row)?)),
                None => None,
            },
            Subject::Lot(x) => match D::lot(c, &x.gtin, &x.lot).await? {
                Some(row) => Some(lot_json(&lot_from::<D>(row)?)),
                None => None,
            },
        })
    }
}

fn clinic_json(c: &Clinic) -> Value {
    json!({ "id": c.id, "name": c.name, "time_zone": c.time_zone })
}

fn device_json(d: &Device) -> Value {
    json!({ "id": d.id, "clinic_id": d.clinic_id, "model": d.model, "max_depth_um": d.max_depth_um })
}

fn product_json(p: &Product) -> Value {
    json!({
        "gtin": p.gtin,
        "name": p.name,
        "max_depth_um": p.max_depth_um,
        "rated_strokes": p.rated_strokes,
        "max_active_s": p.max_active_s,
        "shelf_life_days": p.shelf_life_days,
    })
}

fn lot_json(l: &Lot) -> Value {
    json!({
        "gtin": l.gtin,
        "lot": l.lot,
        "expiry": l.expiry.map(json_date),
        "recalled_at": l.recalled_at.map(json_time),
        "recall_reason": l.recall_reason,
    })
}

/// A time as PostgreSQL's `to_jsonb` writes a `timestamptz` in UTC (the
/// form registry events recorded before the engine built them in Rust):
/// `2025-03-01T09:00:00.5+00:00`, fractional seconds without trailing zeros,
/// the year as [`json_date`] writes it.
fn json_time(at: DateTime<Utc>) -> String {
    let micros = format!("{:06}", at.timestamp_subsec_micros());
    let micros = micros.trim_end_matches('0');
    let fraction = if micros.is_empty() {
        String::new()
    } else {
        format!(".{micros}")
    };
    let (year, era) = pg_year(at.year());
    format!(
        "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}{fraction}+00:00{era}",
        at.month(),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// A date as PostgreSQL's `to_jsonb` writes it: `2030-01-31`, a year past
/// 9999 without a sign (`10000-01-31`), a year before 1 AD as `0099-01-31 BC`.
fn json_date(day: NaiveDate) -> String {
    let (year, era) = pg_year(day.year());
    format!("{year:04}-{:02}-{:02}{era}", day.month(), day.day())
}

/// PostgreSQL's year and era of a proleptic Gregorian year (`0` is 1 BC).
fn pg_year(year: i32) -> (i64, &'static str) {
    let year = i64::from(year);
    if year > 0 {
        (year, "")
    } else {
        (1 - year, " BC")
    }
}

/// Appends `<subject>.registered` or `<subject>.changed` with the row's old
/// and new values, unless nothing changed.
async fn record<D: RegistrySql + AuditSql>(
    c: &mut Conn<D>,
    subject: Subject<'_>,
    old: Option<Value>,
    actor: &Actor,
) -> StoreResult<()> {
    let new = subject.snapshot::<D>(c).await?;
    if new == old {
        return Ok(());
    }
    let verb = if old.is_some() {
        "changed"
    } else {
        "registered"
    };
    let subject_type = subject.type_name();
    let draft = AuditDraft {
        clinic_id: subject.chain(),
        actor: actor.clone(),
        action: format!("{subject_type}.{verb}"),
        subject_type: subject_type.into(),
        subject_id: subject.id(),
        old_value: old,
        new_value: new,
        reason: None,
    };
    D::append(c, &[draft]).await?;
    Ok(())
}

pub(crate) async fn upsert_clinic<D: RegistrySql + AuditSql>(
    d: &D,
    clinic: &Clinic,
    actor: &Actor,
) -> StoreResult<Clinic> {
    let subject = Subject::Clinic(clinic);
    let mut tx = d.write().await?;
    let old = subject.snapshot::<D>(&mut tx).await?;
    let stored = clinic_from(D::upsert_clinic(&mut tx, clinic).await?);
    record::<D>(&mut tx, subject, old, actor).await?;
    tx.commit().await?;
    Ok(stored)
}

/// `NotFound` when the device's clinic does not exist.
pub(crate) async fn upsert_device<D: RegistrySql + AuditSql>(
    d: &D,
    device: &Device,
    actor: &Actor,
) -> StoreResult<Device> {
    let subject = Subject::Device(device);
    let mut tx = d.write().await?;
    let old = subject.snapshot::<D>(&mut tx).await?;
    let row = D::upsert_device(&mut tx, device)
        .await
        .map_err(|e| missing_parent(e, || format!("clinic {}", device.clinic_id)))?;
    let stored = device_from(row)?;
    record::<D>(&mut tx, subject, old, actor).await?;
    tx.commit().await?;
    Ok(stored)
}

pub(crate) async fn upsert_product<D: RegistrySql + AuditSql>(
    d: &D,
    product: &Product,
    actor: &Actor,
) -> StoreResult<Product> {
    let subject = Subject::Product(product);
    let mut tx = d.write().await?;
    let old = subject.snapshot::<D>(&mut tx).await?;
    let stored = product_from(D::upsert_product(&mut tx, product).await?)?;
    record::<D>(&mut tx, subject, old, actor).await?;
    tx.commit().await?;
    Ok(stored)
}

/// `NotFound` when the lot's product is not catalogued. A recall recorded
/// here raises no exposure flags: recalls go through [`recall_lot`].
pub(crate) async fn upsert_lot<D: RegistrySql + AuditSql>(
    d: &D,
    lot: &Lot,
    actor: &Actor,
) -> StoreResult<Lot> {
    let subject = Subject::Lot(lot);
    let mut tx = d.write().await?;
    let old = subject.snapshot::<D>(&mut tx).await?;
    let row = D::upsert_lot(&mut tx, lot)
        .await
        .map_err(|e| missing_parent(e, || format!("product {}", lot.gtin)))?;
    let stored = lot_from::<D>(row)?;
    record::<D>(&mut tx, subject, old, actor).await?;
    tx.commit().await?;
    Ok(stored)
}

/// Marks the lot recalled and raises the exposure verdict on every stored
/// session of the lot that started before the recall, in one transaction.
///
/// Idempotent: a lot recalled earlier keeps its first recall time and reason,
/// and the exposure is judged against that time. Calling it again raises
/// flags only for sessions stored since (e.g. by a batch that was judged
/// before the recall and committed after it).
pub(crate) async fn recall_lot<D: RegistrySql + AuditSql + FlagSql>(
    d: &D,
    gtin: &str,
    lot: &str,
    reason: &str,
    at: DateTime<Utc>,
    exposure: ExposureVerdict,
    actor: &Actor,
) -> StoreResult<(Lot, Vec<FlagRecord>)> {
    let mut tx = d.write().await?;
    let row = D::mark_recalled(&mut tx, gtin, lot, reason, at)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("lot {lot} of {gtin}")))?;
    let recalled = lot_from::<D>(row)?;
    let recalled_at = recalled.recalled_at.unwrap_or(at);
    let exposed = D::unflagged_sessions_of_lot(&mut tx, gtin, lot, recalled_at).await?;
    let verdicts: Vec<NewFlag> = exposed
        .into_iter()
        .map(|s| {
            let v = exposure(&s.session_id, gtin, lot, recalled_at);
            NewFlag {
                kind: v.kind,
                severity: v.severity,
                dedupe_key: v.dedupe_key,
                clinic_id: s.clinic_id,
                device_id: s.device_id,
                session_id: Some(s.session_id),
                cartridge_id: s.cartridge_id,
                seq: 0,
                detail: v.detail,
                evidence: v.evidence,
            }
        })
        .collect();
    let new_flags = D::insert_flags(&mut tx, &verdicts).await?;
    let mut drafts = vec![recall_draft(&recalled, actor)];
    drafts.extend(new_flags.iter().map(flag_raised));
    D::append(&mut tx, &drafts).await?;
    tx.commit().await?;
    Ok((recalled, new_flags))
}

pub(crate) async fn list_clinics<D: RegistrySql>(d: &D) -> StoreResult<Vec<Clinic>> {
    let rows = D::list_clinics(&mut *d.read().await?).await?;
    Ok(rows.into_iter().map(clinic_from).collect())
}

pub(crate) async fn list_products<D: RegistrySql>(d: &D) -> StoreResult<Vec<Product>> {
    let rows = D::list_products(&mut *d.read().await?).await?;
    rows.into_iter().map(product_from).collect()
}

pub(crate) async fn list_lots<D: RegistrySql>(d: &D, gtin: Option<&str>) -> StoreResult<Vec<Lot>> {
    let rows = D::list_lots(&mut *d.read().await?, gtin).await?;
    rows.into_iter().map(lot_from::<D>).collect()
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
