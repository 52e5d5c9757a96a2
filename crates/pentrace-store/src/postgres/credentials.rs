//! The device credentials' statements on PostgreSQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::PgStore;
use crate::engine::credentials::{CredentialSql, Credentials};
use crate::shared::corrupt;
use crate::{CredentialKind, DeviceCredential, NewDeviceCredential, StoreResult};

const COLUMNS: &str =
    "id, kind, principal, clinic_id, fingerprint, not_after, created_at, revoked_at";

type Time = DateTime<Utc>;
type Row = (
    Uuid,
    String,
    String,
    String,
    Vec<u8>,
    Option<Time>,
    Time,
    Option<Time>,
);

type Query<'q> = sqlx::query::QueryAs<'q, sqlx::Postgres, Row, sqlx::postgres::PgArguments>;

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

/// The condition that selects `which`, and how many parameters it takes.
fn filter(which: Credentials<'_>) -> (&'static str, usize) {
    match which {
        Credentials::Id(_) => ("id = $1", 1),
        Credentials::Fingerprint(_) => ("fingerprint = $1", 1),
        Credentials::Of(..) => ("principal = $1 AND ($2::text IS NULL OR kind = $2)", 2),
        Credentials::Clinics(_) => ("$1::text[] IS NULL OR clinic_id = ANY($1)", 1),
    }
}

/// Binds the parameters of [`filter`].
fn bind<'q>(query: Query<'q>, which: Credentials<'q>) -> Query<'q> {
    match which {
        Credentials::Id(id) => query.bind(id),
        Credentials::Fingerprint(fingerprint) => query.bind(fingerprint.as_slice()),
        Credentials::Of(principal, kind) => {
            query.bind(principal).bind(kind.map(CredentialKind::as_str))
        }
        Credentials::Clinics(clinics) => query.bind(clinics),
    }
}

#[async_trait]
impl CredentialSql for PgStore {
    async fn insert_credential(
        c: &mut PgConnection,
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
            .bind(id)
            .bind(new.kind.as_str())
            .bind(&new.principal)
            .bind(new.kind.is_pen().then_some(&new.principal))
            .bind(clinic_id)
            .bind(new.fingerprint.as_slice())
            .bind(new.not_after)
            .fetch_one(c)
            .await?;
        credential(row)
    }

    async fn credentials(
        c: &mut PgConnection,
        which: Credentials<'_>,
    ) -> StoreResult<Vec<DeviceCredential>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM device_credentials WHERE {} ORDER BY created_at DESC, id",
            filter(which).0
        );
        let rows: Vec<Row> = bind(sqlx::query_as(&sql), which).fetch_all(c).await?;
        rows.into_iter().map(credential).collect()
    }

    async fn revoke_credentials(
        c: &mut PgConnection,
        which: Credentials<'_>,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<DeviceCredential>> {
        let (filter, n) = filter(which);
        let sql = format!(
            "UPDATE device_credentials SET revoked_at = ${} \
             WHERE revoked_at IS NULL AND ({filter}) RETURNING {COLUMNS}",
            n + 1
        );
        let query = bind(sqlx::query_as(&sql), which).bind(at);
        let rows: Vec<Row> = query.fetch_all(c).await?;
        rows.into_iter().map(credential).collect()
    }
}
