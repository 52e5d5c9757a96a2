//! pentrace's store on PostgreSQL: the pool, migrations, and the statements
//! whose SQL differs from SQLite's (the rest is written once in the engine).
//!
//! Queries are built at run time (`sqlx::query`, not the compile-time checked
//! macros) because CI builds without a database. Sets of keys travel as
//! arrays (`= ANY($1)`, `UNNEST(...)`), so every lookup or write is one
//! statement however large the batch.

// The audit drafts, merges and lifecycle rules of these modules are plain
// Rust, shared with the SQLite store so both record the same events.
pub(crate) mod audit;
pub(crate) mod commit;
mod copy;
mod facts;
mod flags;
pub(crate) mod people;
mod queries;
pub(crate) mod sessions;
mod status;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

use crate::{StoreError, StoreResult};

/// The migrations of `migrations/postgres`, embedded at build time.
static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/postgres");

/// Binary `COPY` of the blocks' rows into `stroke_samples` on `conn`, with
/// the encoder the ingest batch uses; checks the stored row count. For
/// `pentrace bench` (the storage baseline and the growth fill), not ingest.
pub async fn copy_sample_blocks(
    conn: &mut sqlx::PgConnection,
    blocks: &[crate::SampleBlock],
) -> StoreResult<()> {
    copy::copy_samples(conn, blocks).await
}

/// pentrace's store on PostgreSQL (with TimescaleDB when present).
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects a pool of at most `max_connections` to `url`.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<PgStore> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect(url)
            .await?;
        Ok(PgStore::from_pool(pool))
    }

    /// Like [`PgStore::connect`], but every pooled connection acts as `role`
    /// (`SET ROLE`), e.g. `pentrace_app`, which may not change audit
    /// tables. Migrations still run as the login user (see `migrate`).
    pub async fn connect_as(
        url: &str,
        max_connections: u32,
        role: Option<&str>,
    ) -> StoreResult<PgStore> {
        let Some(role) = role else {
            return PgStore::connect(url, max_connections).await;
        };
        if role.is_empty() || !role.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(StoreError::Invalid(format!(
                "database role {role:?} is not a plain identifier"
            )));
        }
        let set_role = format!("SET ROLE {role}");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .after_connect(move |conn, _| {
                let sql = set_role.clone();
                Box::pin(async move {
                    sqlx::Executor::execute(conn, sql.as_str()).await?;
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        Ok(PgStore::from_pool(pool))
    }

    /// Creates the URL's database when the server does not have it yet (a
    /// first start on a fresh PostgreSQL), connecting to the `postgres`
    /// maintenance database to do so. Returns whether it was created.
    pub async fn ensure_database(url: &str) -> StoreResult<bool> {
        use sqlx::ConnectOptions as _;
        use sqlx::postgres::PgConnectOptions;
        let options: PgConnectOptions = url.parse()?;
        let Some(name) = options.get_database().map(str::to_owned) else {
            return Ok(false);
        };
        let mut admin = options.clone().database("postgres").connect().await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&name)
                .fetch_one(&mut admin)
                .await?;
        if exists {
            return Ok(false);
        }
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {quoted}").as_str())
            .await
        {
            Ok(_) => Ok(true),
            // Another replica created it meanwhile.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Wraps an existing pool.
    pub fn from_pool(pool: PgPool) -> PgStore {
        PgStore { pool }
    }

    /// The underlying pool (for tests and tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the embedded migrations that are not applied yet.
    ///
    /// Safe when several replicas start at once: sqlx's migrator takes
    /// `pg_advisory_lock` (keyed by the database name) before it reads
    /// `_sqlx_migrations` and releases it when done (sqlx-postgres 0.8.6
    /// `src/migrate.rs` `lock`/`unlock`, called by sqlx-core's
    /// `Migrator::run_direct`), so one replica applies and the others wait,
    /// then find everything applied.
    pub async fn migrate(&self) -> StoreResult<()> {
        // A connection taken out of the pool for good, and closed afterwards
        // whatever happened: the migrator returns early on failure without
        // unlocking, and the advisory lock belongs to the session, so a
        // connection returned to the pool would keep the lock and block
        // every other replica's migrate forever.
        //
        // Detached from the pool rather than opened beside it: the pool may
        // open a replacement, but never more than `max_connections` at once,
        // so migrate also works with a pool of one on a server that serves
        // one connection at a time (the PGlite TimescaleDB test server,
        // `tests/timescaledb/`), and the connection is set up by the pool's
        // own hooks.
        use sqlx::Connection as _;
        let mut conn = self.pool.acquire().await?.detach();
        // Migrations create and grant; they run as the login user, not as the
        // application role a pool may `SET ROLE` to (`connect_as`).
        sqlx::Executor::execute(&mut conn, "RESET ROLE").await?;
        // `run_direct`, not `run(&mut conn)`: with `run`, the future is not
        // `Send` for callers that spawn it (sqlx's "Acquire is not general
        // enough"; sqlx-core 0.8.6 `migrator.rs` keeps `run_direct` public
        // for this reason).
        let result = MIGRATOR.run_direct(&mut conn).await;
        if let Err(e) = conn.close().await {
            tracing::debug!(error = %e, "closing the migration connection failed");
        }
        Ok(result?)
    }
}

#[async_trait]
impl crate::dialect::Dialect for PgStore {
    type Db = sqlx::Postgres;
    type Time = chrono::DateTime<Utc>;
    type Id = uuid::Uuid;
    const KIND: &'static str = "postgres";

    async fn write(&self) -> StoreResult<crate::dialect::WriteTx<Self>> {
        Ok(self.pool.begin().await?)
    }

    async fn read(&self) -> StoreResult<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        Ok(self.pool.acquire().await?)
    }

    async fn select_one(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    type List = Vec<String>;

    fn list<S: AsRef<str>>(items: &[S]) -> Vec<String> {
        items.iter().map(|s| s.as_ref().to_owned()).collect()
    }

    fn in_list(column: &str, n: usize) -> String {
        format!("{column} = ANY(${n})")
    }
}
