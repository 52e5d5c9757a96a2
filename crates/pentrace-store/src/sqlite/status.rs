//! [`crate::Store::status`] on SQLite: the library version and the schema
//! version against this build's migrations. TimescaleDB never applies.

use std::collections::BTreeSet;

use sqlx::{SqliteConnection, SqlitePool};

use super::MIGRATOR;
use crate::{SchemaVersion, StoreResult, StoreStatus};

/// Reads everything on one connection, so the answer is one snapshot.
pub(super) async fn status(pool: &SqlitePool) -> StoreResult<StoreStatus> {
    let mut conn = pool.acquire().await?;
    let server_version: String = sqlx::query_scalar("SELECT sqlite_version()")
        .fetch_one(&mut *conn)
        .await?;
    let applied = applied_migrations(&mut conn).await?;
    let applied_versions: BTreeSet<i64> = applied.iter().map(|m| m.version).collect();
    let embedded: BTreeSet<i64> = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .collect();
    Ok(StoreStatus {
        kind: "sqlite",
        server_version,
        pending_migrations: embedded.difference(&applied_versions).copied().collect(),
        unknown_migrations: applied_versions.difference(&embedded).copied().collect(),
        schema_version: applied.into_iter().last(),
        timescaledb: None,
    })
}

/// Successfully applied migrations, oldest first; none before the first
/// migrate.
async fn applied_migrations(conn: &mut SqliteConnection) -> StoreResult<Vec<SchemaVersion>> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master \
                        WHERE type = 'table' AND name = '_sqlx_migrations')",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !exists {
        return Ok(Vec::new());
    }
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT version, description FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(version, description)| SchemaVersion {
            version,
            description,
        })
        .collect())
}
