//! Device credentials: fingerprints only, every change audited.

use chrono::{DateTime, Utc};
use pentrace_domain::audit::Actor;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::audit;
use super::convert::corrupt;
use crate::{
    CredentialKind, DeviceCredential, NewDeviceCredential, RegistryFacts, StoreError, StoreResult,
};

const COLUMNS: &str =
    "id, kind, principal, clinic_id, fingerprint, not_after, created_at, revoked_at";

type Row = (
    Uuid,
    String,
    String,
    String,
    Vec<u8>,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

fn credential(row: Row) -> StoreResult<DeviceCredential> {
    let (id, kind, principal, clinic_id, fingerprint, not_after, created_at, revoked_at) = row;
    Ok(DeviceCredential {
        id,
        kind: CredentialKind::parse(&kind)
            .ok_or_else(|| corrupt(format!("credential kind {kind:?}")))?,
        principal,
        clinic_id,
        fingerprint: fingerprint
            .try_into()
            .map_err(|_| corrupt(format!("fingerprint of credential {id}")))?,
        not_after,
        created_at,
        revoked_at,
    })
}

/// What [`RegistryFacts::clinic_of`] decides on, in three lookups.
async fn clinic_of(conn: &mut PgConnection, new: &NewDeviceCredential) -> StoreResult<String> {
    let device_clinic = sqlx::query_scalar("SELECT clinic_id FROM devices WHERE id = $1")
        .bind(&new.principal)
        .fetch_optional(&mut *conn)
        .await?;
    let clinic = new.clinic_id.as_deref().unwrap_or_default();
    let clinic_exists: Option<String> = sqlx::query_scalar("SELECT id FROM clinics WHERE id = $1")
        .bind(clinic)
        .fetch_optional(&mut *conn)
        .await?;
    let other_clinic = sqlx::query_scalar(
        "SELECT clinic_id FROM device_credentials WHERE principal = $1 AND clinic_id <> $2 LIMIT 1",
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
    pool: &PgPool,
    new: &NewDeviceCredential,
    actor: &Actor,
) -> StoreResult<(DeviceCredential, Vec<DeviceCredential>)> {
    let mut tx = pool.begin().await?;
    let clinic_id = clinic_of(&mut tx, new).await?;
    let revoked: Vec<Row> = if new.replace {
        sqlx::query_as(&format!(
            "UPDATE device_credentials SET revoked_at = now() \
             WHERE principal = $1 AND kind = $2 AND revoked_at IS NULL RETURNING {COLUMNS}"
        ))
        .bind(&new.principal)
        .bind(new.kind.as_str())
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
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(new.kind.as_str())
    .bind(&new.principal)
    .bind(new.kind.is_pen().then_some(&new.principal))
    .bind(&clinic_id)
    .bind(new.fingerprint.as_slice())
    .bind(new.not_after)
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
    pool: &PgPool,
    id: Uuid,
    reason: &str,
    actor: &Actor,
) -> StoreResult<DeviceCredential> {
    let mut tx = pool.begin().await?;
    let changed: Option<Row> = sqlx::query_as(&format!(
        "UPDATE device_credentials SET revoked_at = now() \
         WHERE id = $1 AND revoked_at IS NULL RETURNING {COLUMNS}"
    ))
    .bind(id)
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

async fn by_id(conn: &mut PgConnection, id: Uuid) -> StoreResult<DeviceCredential> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM device_credentials WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.map(credential)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("credential {id}")))
}

pub(super) async fn by_fingerprint(
    pool: &PgPool,
    fingerprint: &[u8; 32],
) -> StoreResult<Option<DeviceCredential>> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM device_credentials WHERE fingerprint = $1"
    ))
    .bind(fingerprint.as_slice())
    .fetch_optional(pool)
    .await?;
    row.map(credential).transpose()
}

pub(super) async fn list(
    pool: &PgPool,
    clinics: Option<&[String]>,
) -> StoreResult<Vec<DeviceCredential>> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM device_credentials \
         WHERE $1::text[] IS NULL OR clinic_id = ANY($1) ORDER BY created_at DESC, id"
    ))
    .bind(clinics)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(credential).collect()
}

pub(super) async fn device_clinic(pool: &PgPool, device_id: &str) -> StoreResult<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT clinic_id FROM devices WHERE id = $1")
            .bind(device_id)
            .fetch_optional(pool)
            .await?,
    )
}
