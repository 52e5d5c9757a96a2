//! The server the tests run against, and a clean place on it per test.
//!
//! - PostgreSQL (`PENTRACE_TEST_DATABASE_URL`, by default
//!   `postgres://postgres@127.0.0.1:5432/postgres`): a database per test
//!   (`pentrace_test_<uuid>`), dropped afterwards, so tests run in parallel.
//! - The TimescaleDB test server of `tests/timescaledb/`, when
//!   `PENTRACE_TEST_TIMESCALEDB_URL` is set: PGlite with TimescaleDB, which
//!   has one usable database and serves one connection at a time. Each test
//!   gets a schema of its own (`pentrace_test_<uuid>`, first on the
//!   search_path, before `public` where the extension's functions live) and a
//!   pool of one connection; the tests must run one at a time
//!   (`--test-threads 1`, as `tests/timescaledb/run-tests.sh` does).
//!
//! The same test bodies run on both. What the TimescaleDB server cannot do
//! (`COPY ... FROM STDIN`, several connections at once) is skipped there by
//! name with [`skip_on_timescaledb`].

use std::str::FromStr;
use std::time::Duration;

use pentrace_store::postgres::PgStore;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

/// Where the tests run.
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

/// Whether the tests run on the TimescaleDB test server.
pub fn on_timescaledb() -> bool {
    matches!(target(), Target::TimescaleDb(_))
}

/// True, after printing which test is skipped and why, when the tests run on
/// the TimescaleDB test server; the test then returns. Skips are named, never
/// silent: `run-tests.sh` shows these lines.
pub fn skip_on_timescaledb(test: &str, why: &str) -> bool {
    if !on_timescaledb() {
        return false;
    }
    println!("SKIPPED on the TimescaleDB test server: {test}: {why}");
    true
}

/// True, after printing why, when the tests do NOT run on the TimescaleDB
/// test server (a TimescaleDB-only test).
pub fn skip_without_timescaledb(test: &str) -> bool {
    if on_timescaledb() {
        return false;
    }
    println!(
        "SKIPPED on plain PostgreSQL: {test}: needs TimescaleDB \
         (PENTRACE_TEST_TIMESCALEDB_URL, see tests/timescaledb/run-tests.sh)"
    );
    true
}

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to the test server {url}: {e}"))
}

/// A clean database (or schema) and a store on it. Drop it with
/// [`TestDb::drop_db`].
pub struct TestDb {
    name: String,
    target: Target,
    pub store: PgStore,
}

impl TestDb {
    pub async fn create() -> TestDb {
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
    pub async fn drop_db(self) {
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
