//! Device credentials: fingerprints only, every change audited (the
//! PostgreSQL module's twin; times are microseconds, ids text).

use pentrace_domain::audit::Actor;
use sqlx::{SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::convert::{corrupt, micros, opt_time, stored_uuid, time};
use super::{audit, begin};
use crate::{
    CredentialKind, DeviceCredential, NewDeviceCredential, RegistryFacts, StoreError, StoreResult,
};

const COLUMNS: &str =
    "id, kind, principal, clinic_id, fingerprint, not_after, created_at, revoked_at";

type Row = (
    String,
    String,
    String,
    String,
    Vec<u8>,
    Option<i64>,
    i64,
    Option<i64>,
);

fn credential(row: Row) -> StoreResult<DeviceCredential> {
    let (id, kind, principal, clinic_id, fingerprint, not_after, created_at, revoked_at) = row;
    let id = stored_uuid(&id, "credential id")?;
    Ok(DeviceCredential {
        id,
        kind: CredentialKind::parse(&kind)
            .ok_or_else(|| corrupt(format!("credential kind {kind:?}")))?,
        principal,
        clinic_id,
        fingerprint: fingerprint
            .try_into()
            .map_err(|_| corrupt(format!("fingerprint of credential {id}")))?,
        not_after: opt_time(not_after, "not_after")?,
        created_at: time(created_at, "created_at")?,
        revoked_at: opt_time(revoked_at, "revoked_at")?,
    })
}

fn now() -> i64 {
    micros(chrono::Utc::now())
}

/// What [`RegistryFacts::clinic_of`] decides on, in three lookups.
async fn clinic_of(conn: &mut SqliteConnection, new: &NewDeviceCredential) -> StoreResult<String> {
    let device_clinic = sqlx::query_scalar("SELECT clinic_id FROM devices WHERE id = ?1")
        .bind(&new.principal)
        .fetch_optional(&mut *conn)
        .await?;
    let clinic = new.clinic_id.as_deref().unwrap_or_default();
    let clinic_exists: Option<String> = sqlx::query_scalar("SELECT id FROM clinics WHERE id = ?1")
        .bind(clinic)
        .fetch_optional(&mut *conn)
        .await?;
    let other_clinic = sqlx::query_scalar(
        "SELECT clinic_id FROM device_credentials WHERE principal = ?1 AND clinic_id <> ?2 LIMIT 1",
    )
    .bind(&new.principal)
    .bind(clinic)
    .fetch_optional(&mut *conn)
    .await?;
    RegistryFacts {
        device_clinic,
        clinic_exists: clinic_exists.is_some(),
        other_clinic,
    }
    .clinic_of(new)
}

pub(super) async fn issue(
    pool: &SqlitePool,
    new: &NewDeviceCredential,
    actor: &Actor,
) -> StoreResult<(DeviceCredential, Vec<DeviceCredential>)> {
    let mut tx = begin(pool).await?;
    let clinic_id = clinic_of(&mut tx, new).await?;
    let revoked: Vec<Row> = if new.replace {
        sqlx::query_as(&format!(
            "UPDATE device_credentials SET revoked_at = ?3 \
             WHERE principal = ?1 AND kind = ?2 AND revoked_at IS NULL RETURNING {COLUMNS}"
        ))
        .bind(&new.principal)
        .bind(new.kind.as_str())
        .bind(now())
        .fetch_all(&mut *tx)
        .await?
    } else {
        Vec::new()
    };
    let revoked = revoked
        .into_iter()
        .map(credential)
        .collect::<StoreResult<Vec<_>>>()?;
    let row: Row = sqlx::query_as(&format!(
        "INSERT INTO device_credentials (id, kind, principal, device_id, clinic_id, fingerprint, not_after) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::new_v4().to_string())
    .bind(new.kind.as_str())
    .bind(&new.principal)
    .bind(new.kind.is_pen().then_some(&new.principal))
    .bind(&clinic_id)
    .bind(new.fingerprint.as_slice())
    .bind(new.not_after.map(micros))
    .fetch_one(&mut *tx)
    .await?;
    let issued = credential(row)?;
    let mut drafts = vec![issued.audit_draft("device.credential_issued", actor, None)];
    drafts.extend(revoked.iter().map(|c| {
        c.audit_draft(
            "device.credential_revoked",
            actor,
            Some("replaced (rotation)".into()),
        )
    }));
    audit::append(&mut tx, &drafts).await?;
    tx.commit().await?;
    Ok((issued, revoked))
}

pub(super) async fn revoke(
    pool: &SqlitePool,
    id: Uuid,
    reason: &str,
    actor: &Actor,
) -> StoreResult<DeviceCredential> {
    let mut tx = begin(pool).await?;
    let changed: Option<Row> = sqlx::query_as(&format!(
        "UPDATE device_credentials SET revoked_at = ?2 \
         WHERE id = ?1 AND revoked_at IS NULL RETURNING {COLUMNS}"
    ))
    .bind(id.to_string())
    .bind(now())
    .fetch_optional(&mut *tx)
    .await?;
    let credential = match changed {
        Some(row) => {
            let c = credential(row)?;
            let draft = c.audit_draft("device.credential_revoked", actor, Some(reason.to_owned()));
            audit::append(&mut tx, &[draft]).await?;
            c
        }
        None => by_id(&mut tx, id).await?,
    };
    tx.commit().await?;
    Ok(credential)
}

async fn by_id(conn: &mut SqliteConnection, id: Uuid) -> StoreResult<DeviceCredential> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM device_credentials WHERE id = ?1"
    ))
    .bind(id.to_string())
    .fetch_optional(conn)
    .await?;
    row.map(credential)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("credential {id}")))
}

pub(super) async fn by_fingerprint(
    pool: &SqlitePool,
    fingerprint: &[u8; 32],
) -> StoreResult<Option<DeviceCredential>> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM device_credentials WHERE fingerprint = ?1"
    ))
    .bind(fingerprint.as_slice())
    .fetch_optional(pool)
    .await?;
    row.map(credential).transpose()
}

pub(super) async fn list(
    pool: &SqlitePool,
    clinics: Option<&[String]>,
) -> StoreResult<Vec<DeviceCredential>> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM device_credentials ORDER BY created_at DESC, id"
    ))
    .fetch_all(pool)
    .await?;
    let wanted = |c: &DeviceCredential| clinics.is_none_or(|cs| cs.contains(&c.clinic_id));
    Ok(rows
        .into_iter()
        .map(credential)
        .collect::<StoreResult<Vec<_>>>()?
        .into_iter()
        .filter(wanted)
        .collect())
}

pub(super) async fn device_clinic(
    pool: &SqlitePool,
    device_id: &str,
) -> StoreResult<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT clinic_id FROM devices WHERE id = ?1")
            .bind(device_id)
            .fetch_optional(pool)
            .await?,
    )
}
