//! The status' statements on SQLite: the library version and the schema
//! version. TimescaleDB never applies.

use async_trait::async_trait;
use sqlx::SqliteConnection;
use sqlx::migrate::Migrator;

use super::{MIGRATOR, SqliteStore};
use crate::engine::status::StatusSql;
use crate::{StoreResult, TimescaleStatus};

#[async_trait]
impl StatusSql for SqliteStore {
    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }

    async fn server_version(c: &mut SqliteConnection) -> StoreResult<String> {
        Ok(sqlx::query_scalar("SELECT sqlite_version()")
            .fetch_one(c)
            .await?)
    }

    async fn has_migrations_table(c: &mut SqliteConnection) -> StoreResult<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master \
                            WHERE type = 'table' AND name = '_sqlx_migrations')",
        )
        .fetch_one(c)
        .await?)
    }

    async fn applied_migrations(c: &mut SqliteConnection) -> StoreResult<Vec<(i64, String)>> {
        Ok(sqlx::query_as(
            "SELECT version, description FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(c)
        .await?)
    }

    async fn timescaledb(_: &mut SqliteConnection) -> StoreResult<Option<TimescaleStatus>> {
        Ok(None)
    }
}
