//! The stores the tests run against, a clean one per test, and what a test
//! needs beyond the `Store` trait (row counts and plain SQL, per dialect).
//!
//! - PostgreSQL (`PENTRACE_TEST_DATABASE_URL`, by default
//!   `postgres://postgres@127.0.0.1:5432/postgres`): a database per test
//!   (`pentrace_test_<uuid>`), dropped afterwards, so tests run in parallel.
//! - The TimescaleDB test server of `tests/timescaledb/`, when
//!   `PENTRACE_TEST_TIMESCALEDB_URL` is set, takes PostgreSQL's place: PGlite
//!   with TimescaleDB, which has one usable database and serves one
//!   connection at a time. Each test gets a schema of its own
//!   (`pentrace_test_<uuid>`, first on the search_path, before `public` where
//!   the extension's functions live) and a pool of one connection; the tests
//!   must run one at a time (as `tests/timescaledb/run-tests.sh` does).
//! - SQLite: a database file in a fresh temporary directory per test
//!   (created by `SqliteStore::open`, two levels down, so the parent
//!   directories are created too), removed afterwards.
//!
//! Every test body runs on every store ([`conformance!`](crate::conformance)).
//! What a store genuinely cannot do is skipped by name, with the reason
//! printed: [`TestStore::skip_on_timescaledb`], [`TestStore::skip_on_sqlite`].

use std::future::Future;
use std::ops::Deref;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pentrace_store::postgres::PgStore;
use pentrace_store::sqlite::SqliteStore;
use pentrace_store::{Store, StoreResult};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

/// Which implementation a test instance runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Whether the store is migrated before the body runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    Migrated,
    Empty,
}

/// A store under test; derefs to the trait, so test bodies call `Store`
/// methods on it directly.
#[derive(Debug, Clone)]
pub enum TestStore {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

impl Deref for TestStore {
    type Target = dyn Store;

    fn deref(&self) -> &(dyn Store + 'static) {
        match self {
            TestStore::Postgres(s) => s,
            TestStore::Sqlite(s) => s,
        }
    }
}

/// One sample row as stored, in domain types: time, session, seq, strokes,
/// depth, speed.
pub type StoredSample = (DateTime<Utc>, String, i64, i64, i64, i64);

impl TestStore {
    pub fn backend(&self) -> Backend {
        match self {
            TestStore::Postgres(_) => Backend::Postgres,
            TestStore::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// The PostgreSQL store, for the tests of TimescaleDB's features.
    pub fn pg(&self) -> Option<&PgStore> {
        match self {
            TestStore::Postgres(s) => Some(s),
            TestStore::Sqlite(_) => None,
        }
    }

    pub async fn migrate(&self) -> StoreResult<()> {
        match self {
            TestStore::Postgres(s) => s.migrate().await,
            TestStore::Sqlite(s) => s.migrate().await,
        }
    }

    /// This store's migration files.
    pub fn migrations_dir(&self) -> PathBuf {
        let dialect = match self.backend() {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        };
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../migrations")
            .join(dialect)
    }

    /// The one integer of a statement written in SQL both dialects share
    /// (`SELECT count(*) FROM ...`).
    pub async fn count(&self, sql: &str) -> i64 {
        let n = match self {
            TestStore::Postgres(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await,
            TestStore::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await,
        };
        n.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs a statement both dialects share, as someone with direct access
    /// to the database would; returns the rows changed.
    pub async fn execute(&self, sql: &str) -> Result<u64, sqlx::Error> {
        match self {
            TestStore::Postgres(s) => Ok(sqlx::query(sql).execute(s.pool()).await?.rows_affected()),
            TestStore::Sqlite(s) => Ok(sqlx::query(sql).execute(s.pool()).await?.rows_affected()),
        }
    }

    /// The store's tables (without the migrator's own).
    pub async fn tables(&self) -> Vec<String> {
        let rows = match self {
            TestStore::Postgres(s) => {
                sqlx::query_scalar(
                    "SELECT tablename::text FROM pg_tables \
                     WHERE schemaname = current_schema() ORDER BY 1",
                )
                .fetch_all(s.pool())
                .await
            }
            TestStore::Sqlite(s) => {
                sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1")
                    .fetch_all(s.pool())
                    .await
            }
        };
        let tables: Vec<String> = rows.expect("tables");
        tables
            .into_iter()
            .filter(|t| !t.starts_with("_sqlx"))
            .collect()
    }

    /// A device's latest sample (latest time, then deepest), as stored.
    pub async fn last_sample(&self, device: &str) -> StoredSample {
        const SQL: &str = "SELECT time, session_id, seq, strokes, depth_um, speed_hz \
                           FROM stroke_samples WHERE device_id = $1 \
                           ORDER BY time DESC, depth_um DESC LIMIT 1";
        match self {
            TestStore::Postgres(s) => {
                let (time, session, seq, strokes, depth, speed): (
                    DateTime<Utc>,
                    Uuid,
                    i64,
                    i32,
                    i32,
                    i32,
                ) = sqlx::query_as(SQL)
                    .bind(device)
                    .fetch_one(s.pool())
                    .await
                    .expect("sample");
                let ints = (i64::from(strokes), i64::from(depth), i64::from(speed));
                (time, session.to_string(), seq, ints.0, ints.1, ints.2)
            }
            TestStore::Sqlite(s) => {
                let (micros, session, seq, strokes, depth, speed): (
                    i64,
                    String,
                    i64,
                    i64,
                    i64,
                    i64,
                ) = sqlx::query_as(SQL)
                    .bind(device)
                    .fetch_one(s.pool())
                    .await
                    .expect("sample");
                let time = DateTime::from_timestamp_micros(micros).expect("sample time");
                (time, session, seq, strokes, depth, speed)
            }
        }
    }

    /// True, after printing which test is skipped and why, when this is
    /// PostgreSQL on the TimescaleDB test server (which cannot run it); the
    /// test then returns. `run-tests.sh` shows these lines.
    pub fn skip_on_timescaledb(&self, test: &str, why: &str) -> bool {
        if self.backend() != Backend::Postgres || !on_timescaledb() {
            return false;
        }
        println!("SKIPPED on the TimescaleDB test server: {test}: {why}");
        true
    }

    /// True, after printing why, on SQLite: for the few tests of what only
    /// PostgreSQL has (TimescaleDB, its extension step).
    pub fn skip_on_sqlite(&self, test: &str, why: &str) -> bool {
        if self.backend() != Backend::Sqlite {
            return false;
        }
        println!("SKIPPED on SQLite: {test}: {why}");
        true
    }

    /// True, after printing why, unless this is PostgreSQL on the
    /// TimescaleDB test server (a TimescaleDB-only test).
    pub fn skip_without_timescaledb(&self, test: &str) -> bool {
        if self.skip_on_sqlite(test, "needs TimescaleDB, a PostgreSQL extension") {
            return true;
        }
        if on_timescaledb() {
            return false;
        }
        println!(
            "SKIPPED on plain PostgreSQL: {test}: needs TimescaleDB \
             (PENTRACE_TEST_TIMESCALEDB_URL, see tests/timescaledb/run-tests.sh)"
        );
        true
    }
}

/// Runs `body` against a fresh store of `backend` and removes it afterwards,
/// also when the body panics (its panic is then re-raised).
pub async fn run<F, Fut>(backend: Backend, setup: Setup, body: F)
where
    F: FnOnce(TestStore) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let place = match backend {
        Backend::Postgres => Place::Postgres(TestDb::create().await),
        Backend::Sqlite => Place::Sqlite(TempStore::create().await),
    };
    let store = place.store();
    // A spawned task turns the body's panic into a JoinError, so the clean-up
    // below still runs.
    let outcome = tokio::spawn(async move {
        if setup == Setup::Migrated {
            store.migrate().await.expect("migrate");
        }
        body(store).await;
    })
    .await;
    place.remove().await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test body did not finish: {e}"),
        }
    }
}

/// Where a test's store lives.
enum Place {
    Postgres(TestDb),
    Sqlite(TempStore),
}

impl Place {
    fn store(&self) -> TestStore {
        match self {
            Place::Postgres(db) => TestStore::Postgres(db.store.clone()),
            Place::Sqlite(t) => TestStore::Sqlite(t.store.clone()),
        }
    }

    async fn remove(self) {
        match self {
            Place::Postgres(db) => db.drop_db().await,
            Place::Sqlite(t) => t.remove().await,
        }
    }
}

/// An SQLite store in a temporary directory of its own.
struct TempStore {
    dir: PathBuf,
    store: SqliteStore,
}

impl TempStore {
    async fn create() -> TempStore {
        let dir = std::env::temp_dir().join(format!("pentrace-test-{}", Uuid::new_v4().simple()));
        let store = SqliteStore::open(&dir.join("data").join("pentrace.db"))
            .await
            .expect("open the SQLite test store");
        TempStore { dir, store }
    }

    async fn remove(self) {
        self.store.close().await;
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("could not remove {}: {e}", self.dir.display());
        }
    }
}

/// Where the PostgreSQL tests run.
#[derive(Debug, Clone)]
enum Target {
    /// A PostgreSQL server: a database per test.
    Postgres(String),
    /// The PGlite TimescaleDB test server: a schema per test.
    TimescaleDb(String),
}

fn target() -> Target {
    match std::env::var("PENTRACE_TEST_TIMESCALEDB_URL") {
        Ok(url) if !url.is_empty() => Target::TimescaleDb(url),
        _ => Target::Postgres(
            std::env::var("PENTRACE_TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned()),
        ),
    }
}

/// Whether the PostgreSQL tests run on the TimescaleDB test server.
pub fn on_timescaledb() -> bool {
    matches!(target(), Target::TimescaleDb(_))
}

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to the test server {url}: {e}"))
}

/// A clean database (or schema) and a store on it. Drop it with
/// [`TestDb::drop_db`].
struct TestDb {
    name: String,
    target: Target,
    store: PgStore,
}

impl TestDb {
    async fn create() -> TestDb {
        let name = format!("pentrace_test_{}", Uuid::new_v4().simple());
        let target = target();
        let pool = match &target {
            Target::Postgres(url) => {
                let mut admin = connect(url).await;
                admin
                    .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
                    .await
                    .expect("create db");
                let _ = admin.close().await;
                let options = PgConnectOptions::from_str(url)
                    .expect("url")
                    .database(&name);
                PgPoolOptions::new()
                    .max_connections(8)
                    .connect_with(options)
                    .await
                    .expect("connect to the test database")
            }
            Target::TimescaleDb(url) => {
                // Closed before the pool connects: the server would make the
                // pool wait for it.
                let mut admin = connect(url).await;
                admin
                    .execute(format!(r#"CREATE SCHEMA "{name}""#).as_str())
                    .await
                    .expect("create schema");
                let _ = admin.close().await;
                let search_path = format!(r#"SET search_path TO "{name}", public"#);
                PgPoolOptions::new()
                    .max_connections(1)
                    // Every connection, migrate's included, works in the schema.
                    .after_connect(move |conn, _meta| {
                        let search_path = search_path.clone();
                        Box::pin(async move {
                            conn.execute(search_path.as_str()).await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await
                    .expect("connect to the TimescaleDB test server")
            }
        };
        TestDb {
            name,
            target,
            store: PgStore::from_pool(pool),
        }
    }

    /// Closes the pool and drops the database (or schema), even if
    /// connections linger.
    async fn drop_db(self) {
        let TestDb {
            name,
            target,
            store,
        } = self;
        let _ = tokio::time::timeout(Duration::from_secs(5), store.pool().close()).await;
        // And drop the pool: `close` can return while a connection that was
        // being returned (its release ping in flight) lands in the idle queue
        // afterwards (sqlx-core 0.8.6 `PoolInner::close`); only dropping the
        // pool closes that one. On the one-connection server it would
        // otherwise keep the admin connection below waiting forever.
        drop(store);
        let (url, sql) = match &target {
            Target::Postgres(url) => (
                url,
                format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#),
            ),
            // Drops the hypertable with its chunks, the continuous aggregate
            // and their policies too.
            Target::TimescaleDb(url) => (url, format!(r#"DROP SCHEMA IF EXISTS "{name}" CASCADE"#)),
        };
        let mut admin = connect(url).await;
        if let Err(e) = admin.execute(sql.as_str()).await {
            eprintln!("could not drop test database or schema {name}: {e}");
        }
        let _ = admin.close().await;
    }
}
