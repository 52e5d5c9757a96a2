//! The device credentials' statements on SQLite: ids as text, times as
//! microseconds, sets of clinics as a JSON array.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::SqliteConnection;
use uuid::Uuid;

use super::SqliteStore;
use crate::engine::credentials::{CredentialSql, Credentials};
use crate::shared::columns::{StoredTime, micros, opt_time, stored_uuid};
use crate::shared::corrupt;
use crate::{CredentialKind, DeviceCredential, NewDeviceCredential, StoreResult};

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

type Query<'q> = sqlx::query::QueryAs<'q, sqlx::Sqlite, Row, sqlx::sqlite::SqliteArguments<'q>>;

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
        created_at: StoredTime::into_time(created_at, "created_at")?,
        revoked_at: opt_time(revoked_at, "revoked_at")?,
    })
}

/// The condition that selects `which`, and how many parameters it takes.
fn filter(which: Credentials<'_>) -> (&'static str, usize) {
    match which {
        Credentials::Id(_) => ("id = ?1", 1),
        Credentials::Fingerprint(_) => ("fingerprint = ?1", 1),
        Credentials::Of(..) => ("principal = ?1 AND (?2 IS NULL OR kind = ?2)", 2),
        Credentials::Clinics(_) => (
            "?1 IS NULL OR clinic_id IN (SELECT value FROM json_each(?1))",
            1,
        ),
    }
}

/// Binds the parameters of [`filter`].
fn bind<'q>(query: Query<'q>, which: Credentials<'q>) -> Query<'q> {
    match which {
        Credentials::Id(id) => query.bind(id.to_string()),
        Credentials::Fingerprint(fingerprint) => query.bind(fingerprint.as_slice()),
        Credentials::Of(principal, kind) => {
            query.bind(principal).bind(kind.map(CredentialKind::as_str))
        }
        Credentials::Clinics(clinics) => query.bind(clinics.map(|cs| json!(cs).to_string())),
    }
}

#[async_trait]
impl CredentialSql for SqliteStore {
    async fn insert_credential(
        c: &mut SqliteConnection,
        id: Uuid,
        new: &NewDeviceCredential,
        clinic_id: &str,
    ) -> StoreResult<DeviceCredential> {
        let sql = format!(
            "INSERT INTO device_credentials \
                 (id, kind, principal, device_id, clinic_id, fingerprint, not_after) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING {COLUMNS}"
        );
        let row = sqlx::query_as(&sql)
            .bind(id.to_string())
            .bind(new.kind.as_str())
            .bind(&new.principal)
            .bind(new.kind.is_pen().then_some(&new.principal))
            .bind(clinic_id)
            .bind(new.fingerprint.as_slice())
            .bind(new.not_after.map(micros))
            .fetch_one(c)
            .await?;
        credential(row)
    }

    async fn credentials(
        c: &mut SqliteConnection,
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
        c: &mut SqliteConnection,
        which: Credentials<'_>,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<DeviceCredential>> {
        let (filter, n) = filter(which);
        let sql = format!(
            "UPDATE device_credentials SET revoked_at = ?{} \
             WHERE revoked_at IS NULL AND ({filter}) RETURNING {COLUMNS}",
            n + 1
        );
        let query = bind(sqlx::query_as(&sql), which).bind(micros(at));
        let rows: Vec<Row> = query.fetch_all(c).await?;
        rows.into_iter().map(credential).collect()
    }
}
