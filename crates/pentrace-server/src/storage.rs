//! Which store a configuration means, opened and migrated: PostgreSQL when a
//! database URL is configured, else the embedded SQLite file in the data
//! directory (one clinic, a demo, a laptop: docs/architecture.md,
//! "Storage").

use std::sync::Arc;

use pentrace_store::postgres::PgStore;
use pentrace_store::sqlite::SqliteStore;
use pentrace_store::{Store, StoreResult};
use secrecy::ExposeSecret;

use crate::config::Config;

/// Opens the configured store with up to `connections` connections and
/// brings its schema up to date. On PostgreSQL the database is created on
/// first use, migrations run as the login user, and the pool then acts as
/// `database_role` when one is configured.
pub async fn open(config: &Config, connections: u32) -> StoreResult<Arc<dyn Store>> {
    let Some(url) = config.database_url.as_ref().map(|u| u.expose_secret()) else {
        let store = SqliteStore::open(&config.sqlite_path()).await?;
        store.migrate().await?;
        return Ok(Arc::new(store));
    };
    if PgStore::ensure_database(url).await? {
        tracing::info!("created the database");
    }
    // Migrations first, as the login user: they create the role the pool
    // may then switch to.
    let migrator = PgStore::connect(url, 1).await?;
    migrator.migrate().await?;
    migrator.pool().close().await;
    let role = config.database_role.as_deref();
    Ok(Arc::new(PgStore::connect_as(url, connections, role).await?))
}

/// A short description of the store for start-up lines.
pub fn describe(config: &Config) -> String {
    match &config.database_url {
        Some(_) => "postgres".to_owned(),
        None => format!("sqlite:{}", config.sqlite_path().display()),
    }
}
