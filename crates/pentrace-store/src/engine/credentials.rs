//! Device credentials: fingerprints only, every issue and revocation
//! audited in the credential's clinic.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pentrace_domain::audit::Actor;
use uuid::Uuid;

use super::audit::AuditSql;
use super::registry::RegistrySql;
use crate::dialect::{Conn, Dialect, for_both_stores};
use crate::shared::columns::{StoredId, StoredTime, opt_time};
use crate::shared::corrupt;
use crate::shared::drafts::now_micros;
use crate::{
    CredentialKind, DeviceCredential, NewDeviceCredential, RegistryFacts, StoreError, StoreResult,
};

/// Which credentials a statement reads or revokes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Credentials<'a> {
    Id(Uuid),
    Fingerprint(&'a [u8; 32]),
    /// The principal's; of one kind when Some.
    Of(&'a str, Option<CredentialKind>),
    /// The clinics'; every clinic's when None.
    Clinics(Option<&'a [String]>),
}

/// The device credentials' statements.
#[async_trait]
pub(crate) trait CredentialSql: Dialect {
    /// A fingerprint in use is a unique violation.
    async fn insert_credential(
        c: &mut Conn<Self>,
        id: Uuid,
        new: &NewDeviceCredential,
        clinic_id: &str,
    ) -> StoreResult<DeviceCredential>;
    /// Newest first, then by id.
    async fn credentials(
        c: &mut Conn<Self>,
        which: Credentials<'_>,
    ) -> StoreResult<Vec<DeviceCredential>>;
    /// Revokes those of `which` not revoked yet; those it revoked.
    async fn revoke_credentials(
        c: &mut Conn<Self>,
        which: Credentials<'_>,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<DeviceCredential>>;
}

const COLUMNS: &str =
    "id, kind, principal, clinic_id, fingerprint, not_after, created_at, revoked_at";

/// A `device_credentials` row, in [`COLUMNS`] order.
type Row<D> = (
    <D as Dialect>::Id,
    String,
    String,
    String,
    Vec<u8>,
    Option<<D as Dialect>::Time>,
    <D as Dialect>::Time,
    Option<<D as Dialect>::Time>,
);

fn credential<D: Dialect>(row: Row<D>) -> StoreResult<DeviceCredential> {
    let (id, kind, principal, clinic_id, fingerprint, not_after, created_at, revoked_at) = row;
    let id = id.into_uuid();
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
        created_at: created_at.into_time("created_at")?,
        revoked_at: opt_time(revoked_at, "revoked_at")?,
    })
}

/// The condition that selects `which`, and how many parameters it takes.
fn filter<D: Dialect>(which: Credentials<'_>) -> (String, usize) {
    match which {
        Credentials::Id(_) => ("id = $1".into(), 1),
        Credentials::Fingerprint(_) => ("fingerprint = $1".into(), 1),
        Credentials::Of(..) => ("principal = $1 AND ($2 IS NULL OR kind = $2)".into(), 2),
        Credentials::Clinics(_) => (format!("$1 IS NULL OR {}", D::in_list("clinic_id", 1)), 1),
    }
}

for_both_stores! {
    impl CredentialSql {
        async fn insert_credential(
            c: &mut Conn<Self>,
            id: Uuid,
            new: &NewDeviceCredential,
            clinic_id: &str,
        ) -> StoreResult<DeviceCredential> {
            let sql = format!(
                "INSERT INTO device_credentials \
                     (id, kind, principal, device_id, clinic_id, fingerprint, not_after) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
            );
            let row = sqlx::query_as(&sql)
                .bind(Self::uuid(id))
                .bind(new.kind.as_str())
                .bind(&new.principal)
                .bind(new.kind.is_pen().then_some(&new.principal))
                .bind(clinic_id)
                .bind(new.fingerprint.as_slice())
                .bind(new.not_after.map(Self::time))
                .fetch_one(c)
                .await?;
            credential::<Self>(row)
        }

        async fn credentials(
            c: &mut Conn<Self>,
            which: Credentials<'_>,
        ) -> StoreResult<Vec<DeviceCredential>> {
            let sql = format!(
                "SELECT {COLUMNS} FROM device_credentials WHERE {} ORDER BY created_at DESC, id",
                filter::<Self>(which).0
            );
            let query = sqlx::query_as(&sql);
            let rows: Vec<Row<Self>> = match which {
                Credentials::Id(id) => query.bind(Self::uuid(id)),
                Credentials::Fingerprint(f) => query.bind(f.as_slice()),
                Credentials::Of(p, kind) => query.bind(p).bind(kind.map(CredentialKind::as_str)),
                Credentials::Clinics(clinics) => query.bind(clinics.map(Self::list)),
            }
            .fetch_all(c)
            .await?;
            rows.into_iter().map(credential::<Self>).collect()
        }

        /// `at` comes after the filter's parameters, so one filter serves
        /// both the read and the revoke.
        async fn revoke_credentials(
            c: &mut Conn<Self>,
            which: Credentials<'_>,
            at: DateTime<Utc>,
        ) -> StoreResult<Vec<DeviceCredential>> {
            let (filter, n) = filter::<Self>(which);
            let sql = format!(
                "UPDATE device_credentials SET revoked_at = ${} \
                 WHERE revoked_at IS NULL AND ({filter}) RETURNING {COLUMNS}",
                n + 1
            );
            let query = sqlx::query_as(&sql);
            let rows: Vec<Row<Self>> = match which {
                Credentials::Id(id) => query.bind(Self::uuid(id)),
                Credentials::Fingerprint(f) => query.bind(f.as_slice()),
                Credentials::Of(p, kind) => query.bind(p).bind(kind.map(CredentialKind::as_str)),
                Credentials::Clinics(clinics) => query.bind(clinics.map(Self::list)),
            }
            .bind(Self::time(at))
            .fetch_all(c)
            .await?;
            rows.into_iter().map(credential::<Self>).collect()
        }
    }
}

/// The clinic the new credential belongs to, as [`RegistryFacts::clinic_of`]
/// decides it.
async fn clinic_of<D: CredentialSql + RegistrySql>(
    c: &mut Conn<D>,
    new: &NewDeviceCredential,
) -> StoreResult<String> {
    let clinic = new.clinic_id.as_deref().unwrap_or_default();
    RegistryFacts {
        device_clinic: D::device(c, &new.principal)
            .await?
            .map(|(_, clinic_id, ..)| clinic_id),
        clinic_exists: D::clinic(c, clinic).await?.is_some(),
        other_clinic: D::credentials(c, Credentials::Of(&new.principal, None))
            .await?
            .into_iter()
            .map(|c| c.clinic_id)
            .find(|c| c != clinic),
    }
    .clinic_of(new)
}

/// The issued credential and, on `replace`, the principal's credentials of
/// the same kind it revoked (rotation), all audited.
pub(crate) async fn issue<D: CredentialSql + RegistrySql + AuditSql>(
    d: &D,
    new: &NewDeviceCredential,
    actor: &Actor,
) -> StoreResult<(DeviceCredential, Vec<DeviceCredential>)> {
    let mut tx = d.write().await?;
    let clinic_id = clinic_of::<D>(&mut tx, new).await?;
    let revoked = if new.replace {
        let of = Credentials::Of(&new.principal, Some(new.kind));
        D::revoke_credentials(&mut tx, of, now_micros()).await?
    } else {
        Vec::new()
    };
    let issued = D::insert_credential(&mut tx, Uuid::new_v4(), new, &clinic_id).await?;
    let mut drafts = vec![issued.audit_draft("device.credential_issued", actor, None)];
    let replaced = || Some("replaced (rotation)".to_owned());
    drafts.extend(
        revoked
            .iter()
            .map(|c| c.audit_draft("device.credential_revoked", actor, replaced())),
    );
    D::append(&mut tx, &drafts).await?;
    tx.commit().await?;
    Ok((issued, revoked))
}

/// Idempotent: a revoked credential keeps its first revocation, and only
/// that one is audited. `NotFound` when there is no such credential.
pub(crate) async fn revoke<D: CredentialSql + AuditSql>(
    d: &D,
    id: Uuid,
    reason: &str,
    actor: &Actor,
) -> StoreResult<DeviceCredential> {
    let mut tx = d.write().await?;
    let which = Credentials::Id(id);
    let credential = match D::revoke_credentials(&mut tx, which, now_micros())
        .await?
        .pop()
    {
        Some(c) => {
            let draft = c.audit_draft("device.credential_revoked", actor, Some(reason.to_owned()));
            D::append(&mut tx, &[draft]).await?;
            c
        }
        None => D::credentials(&mut tx, which)
            .await?
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("credential {id}")))?,
    };
    tx.commit().await?;
    Ok(credential)
}

pub(crate) async fn by_fingerprint<D: CredentialSql>(
    d: &D,
    fingerprint: &[u8; 32],
) -> StoreResult<Option<DeviceCredential>> {
    let which = Credentials::Fingerprint(fingerprint);
    Ok(D::credentials(&mut *d.read().await?, which).await?.pop())
}

pub(crate) async fn list<D: CredentialSql>(
    d: &D,
    clinics: Option<&[String]>,
) -> StoreResult<Vec<DeviceCredential>> {
    D::credentials(&mut *d.read().await?, Credentials::Clinics(clinics)).await
}

/// The clinic of a registered device.
pub(crate) async fn device_clinic<D: RegistrySql>(
    d: &D,
    device_id: &str,
) -> StoreResult<Option<String>> {
    Ok(D::device(&mut *d.read().await?, device_id)
        .await?
        .map(|(_, clinic_id, ..)| clinic_id))
}
