//! [`crate::Store::status`]: the server, the schema version against this
//! build's migrations, and TimescaleDB's features where the dialect has
//! them, read on one connection so the answer is one snapshot.

use std::collections::BTreeSet;

use async_trait::async_trait;
use sqlx::migrate::Migrator;

use crate::dialect::{Conn, Dialect};
use crate::{SchemaVersion, StoreResult, StoreStatus, TimescaleStatus};

/// The status' statements.
#[async_trait]
pub(crate) trait StatusSql: Dialect {
    /// The migrations this build embeds.
    fn migrator() -> &'static Migrator;
    async fn server_version(c: &mut Conn<Self>) -> StoreResult<String>;
    /// Whether `_sqlx_migrations` exists (not before the first migrate).
    async fn has_migrations_table(c: &mut Conn<Self>) -> StoreResult<bool>;
    /// TimescaleDB's state; None where it is not installed.
    /// Version and description of the successfully applied migrations,
    /// oldest first.
    async fn applied_migrations(c: &mut Conn<Self>) -> StoreResult<Vec<(i64, String)>>;
    async fn timescaledb(c: &mut Conn<Self>) -> StoreResult<Option<TimescaleStatus>>;
}

pub(crate) async fn status<D: StatusSql>(d: &D) -> StoreResult<StoreStatus> {
    let mut conn = d.read().await?;
    let c = &mut *conn;
    let server_version = D::server_version(c).await?;
    let applied: Vec<SchemaVersion> = match D::has_migrations_table(c).await? {
        false => Vec::new(),
        true => D::applied_migrations(c)
            .await?
            .into_iter()
            .map(|(version, description)| SchemaVersion {
                version,
                description,
            })
            .collect(),
    };
    let applied_versions: BTreeSet<i64> = applied.iter().map(|m| m.version).collect();
    let embedded: BTreeSet<i64> = D::migrator()
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .collect();
    Ok(StoreStatus {
        kind: D::KIND,
        server_version,
        pending_migrations: embedded.difference(&applied_versions).copied().collect(),
        unknown_migrations: applied_versions.difference(&embedded).copied().collect(),
        schema_version: applied.into_iter().last(),
        timescaledb: D::timescaledb(c).await?,
    })
}
