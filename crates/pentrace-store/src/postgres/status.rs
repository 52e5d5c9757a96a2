//! [`crate::Store::status`] on PostgreSQL: the server, the schema version
//! against this build's migrations, and TimescaleDB's features.

use std::collections::BTreeSet;

use sqlx::{PgConnection, PgPool};

use super::MIGRATOR;
use crate::{SchemaVersion, StoreResult, StoreStatus, TimescaleStatus};

/// Reads everything on one connection (the store may have a pool of one).
pub(super) async fn status(pool: &PgPool) -> StoreResult<StoreStatus> {
    let mut conn = pool.acquire().await?;
    let server_version: String = sqlx::query_scalar("SELECT current_setting('server_version')")
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
        kind: "postgres",
        server_version,
        pending_migrations: embedded.difference(&applied_versions).copied().collect(),
        unknown_migrations: applied_versions.difference(&embedded).copied().collect(),
        schema_version: applied.into_iter().last(),
        timescaledb: timescaledb(&mut conn).await?,
    })
}

/// Successfully applied migrations, oldest first; none before the first
/// `pentrace migrate`.
async fn applied_migrations(conn: &mut PgConnection) -> StoreResult<Vec<SchemaVersion>> {
    // Resolved through search_path, as the migrator's unqualified name is.
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
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

/// TimescaleDB's state, None when the extension is not installed. Only
/// objects of the current schema count: that is where pentrace's
/// unqualified table names resolve.
async fn timescaledb(conn: &mut PgConnection) -> StoreResult<Option<TimescaleStatus>> {
    let version: Option<String> =
        sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
            .fetch_optional(&mut *conn)
            .await?;
    // The timescaledb_information views exist only with the extension.
    let Some(version) = version else {
        return Ok(None);
    };
    let hypertables = names(
        conn,
        "SELECT hypertable_name::text FROM timescaledb_information.hypertables \
         WHERE hypertable_schema = current_schema() ORDER BY 1",
        None,
    )
    .await?;
    let jobs = "SELECT DISTINCT hypertable_name::text FROM timescaledb_information.jobs \
                WHERE proc_name = $1 AND hypertable_schema = current_schema() ORDER BY 1";
    let compression_policies = names(conn, jobs, Some("policy_compression")).await?;
    let retention_policies = names(conn, jobs, Some("policy_retention")).await?;
    let continuous_aggregates = names(
        conn,
        "SELECT view_name::text FROM timescaledb_information.continuous_aggregates \
         WHERE view_schema = current_schema() ORDER BY 1",
        None,
    )
    .await?;
    Ok(Some(TimescaleStatus {
        version,
        hypertables,
        compression_policies,
        continuous_aggregates,
        retention_policies,
    }))
}

/// The one text column of a query, with at most one text parameter.
async fn names(conn: &mut PgConnection, sql: &str, arg: Option<&str>) -> StoreResult<Vec<String>> {
    let mut query = sqlx::query_scalar(sql);
    if let Some(arg) = arg {
        query = query.bind(arg);
    }
    Ok(query.fetch_all(&mut *conn).await?)
}
