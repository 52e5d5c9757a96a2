//! The status' statements on PostgreSQL, with TimescaleDB's features.

use async_trait::async_trait;
use sqlx::PgConnection;
use sqlx::migrate::Migrator;

use super::{MIGRATOR, PgStore};
use crate::engine::status::StatusSql;
use crate::{StoreResult, TimescaleStatus};

#[async_trait]
impl StatusSql for PgStore {
    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }

    async fn server_version(c: &mut PgConnection) -> StoreResult<String> {
        Ok(
            sqlx::query_scalar("SELECT current_setting('server_version')")
                .fetch_one(c)
                .await?,
        )
    }

    /// Resolved through search_path, as the migrator's unqualified name is.
    async fn has_migrations_table(c: &mut PgConnection) -> StoreResult<bool> {
        Ok(
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(c)
                .await?,
        )
    }

    async fn applied_migrations(c: &mut PgConnection) -> StoreResult<Vec<(i64, String)>> {
        Ok(sqlx::query_as(
            "SELECT version, description FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(c)
        .await?)
    }

    async fn timescaledb(c: &mut PgConnection) -> StoreResult<Option<TimescaleStatus>> {
        timescaledb(c).await
    }
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
