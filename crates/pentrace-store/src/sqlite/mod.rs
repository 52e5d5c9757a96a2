//! pentrace's store on SQLite, the embedded default: one file in WAL mode,
//! for a single clinic, a demo or a laptop (docs/architecture.md,
//! "Storage"). The statements whose SQL differs from PostgreSQL's live here;
//! the rest is written once in the engine.
//!
//! Two pools on the same file:
//!
//! - a **writer** pool of exactly one connection. Every write is one
//!   transaction begun `BEGIN IMMEDIATE` on it. SQLite allows one writer at a
//!   time anyway; queuing writers on the pool (an async wait) instead of on
//!   SQLite's file lock (the busy handler's sleep-and-retry) keeps commits in
//!   arrival order and never fails a commit for being second. IMMEDIATE takes
//!   the write lock at `BEGIN`, so a transaction that reads before it writes
//!   (audit heads, bind-once claims) cannot be overtaken by another process
//!   writing the same file (`pentrace user` beside `pentrace serve`): that
//!   one waits up to the busy timeout instead.
//! - a **reader** pool of a few connections (`query_only`). In WAL mode
//!   readers see the last commit and never block the writer or each other,
//!   so queries and fact lookups run while a batch commits.
//!
//! Queries are built at run time, as on PostgreSQL. Sets of keys travel as
//! one JSON array read with `json_each` (where PostgreSQL `UNNEST`s arrays),
//! so every lookup is one statement. Each statement is a round trip to the
//! connection's worker thread (from a few to tens of microseconds, more on a
//! busy machine), so what a batch has many of is written in bulk: message
//! keys and claims through `json_each`, stroke samples in multi-row chunks
//! (`samples.rs`). The rest (sessions, flags, audit events, devices) is a
//! few rows per batch, written row by row.

mod audit;
mod commit;
mod facts;
mod flags;
mod people;
mod queries;
mod samples;
mod sessions;
mod status;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

use crate::{StoreError, StoreResult};

/// The migrations of `migrations/sqlite`, embedded at build time.
static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// Reader connections: queries are short, and the machine pentrace embeds
/// on has few cores.
const READERS: u32 = 4;
/// How long a statement waits for a lock held by another process (another
/// pentrace command on the same file) before the call fails as
/// `Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// pentrace's store in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it and its parent directories if need be) the
    /// database file at `path`, in WAL mode with `synchronous = NORMAL`.
    ///
    /// NORMAL in WAL mode never corrupts the file and survives a crash of
    /// pentrace; only a power loss or OS crash can undo the last commits
    /// before the next checkpoint. That is the embedded default's trade for
    /// not waiting on an fsync per batch; the production store is PostgreSQL.
    pub async fn open(path: &Path) -> StoreResult<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Once, at start-up: a blocking call is fine here.
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable(e.into()))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        // The writer connects first: it creates the file and switches it to
        // WAL (a setting stored in the file), before any reader opens it.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                options
                    .clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal),
            )
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options.pragma("query_only", "ON"))
            .await?;
        Ok(SqliteStore { writer, reader })
    }

    /// A private in-memory database (tests, tools): one connection that
    /// both reads and writes, kept open for the store's life, since the
    /// database lives only as long as its connection.
    pub async fn open_in_memory() -> StoreResult<SqliteStore> {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(
                SqliteConnectOptions::new()
                    .in_memory(true)
                    .foreign_keys(true),
            )
            .await?;
        Ok(SqliteStore {
            writer: pool.clone(),
            reader: pool,
        })
    }

    /// The writer pool (for tests and tools): its one connection may write.
    pub fn pool(&self) -> &SqlitePool {
        &self.writer
    }

    /// Applies the embedded migrations that are not applied yet. Runs on
    /// the writer connection, so calls in one process apply one at a time;
    /// another process migrating the same file waits on SQLite's lock.
    pub async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }

    /// Closes both pools: the last connection to close checkpoints the WAL
    /// into the database file.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

/// A write transaction on the writer pool, holding SQLite's write lock from
/// its first statement.
async fn begin(pool: &SqlitePool) -> StoreResult<Transaction<'static, Sqlite>> {
    Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
}

#[async_trait]
impl crate::dialect::Dialect for SqliteStore {
    type Db = sqlx::Sqlite;
    type Time = i64;
    type Id = uuid::fmt::Hyphenated;
    const KIND: &'static str = "sqlite";

    async fn write(&self) -> StoreResult<crate::dialect::WriteTx<Self>> {
        begin(&self.writer).await
    }

    async fn read(&self) -> StoreResult<sqlx::pool::PoolConnection<sqlx::Sqlite>> {
        Ok(self.reader.acquire().await?)
    }

    async fn select_one(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    type List = String;

    fn list<S: AsRef<str>>(items: &[S]) -> String {
        let items: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
        serde_json::json!(items).to_string()
    }

    fn in_list(column: &str, n: usize) -> String {
        format!("{column} IN (SELECT value FROM json_each(${n}))")
    }
}

#[cfg(test)]
mod tests {
    use pentrace_domain::audit::Actor;
    use sqlx::Connection as _;

    use super::*;
    use crate::{AuditDraft, Clinic, Store};

    /// A fresh directory under the system's temporary one.
    fn temp_dir() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("pentrace-unit-{}", uuid::Uuid::new_v4().simple()))
    }

    async fn pragma(pool: &SqlitePool, name: &str) -> String {
        let sql = format!("SELECT CAST({name} AS TEXT) FROM pragma_{name}");
        sqlx::query_scalar(&sql).fetch_one(pool).await.unwrap()
    }

    #[tokio::test]
    async fn open_creates_the_directories_and_a_wal_file() {
        let dir = temp_dir();
        let path = dir.join("a").join("b").join("pentrace.db");
        let store = SqliteStore::open(&path).await.unwrap();
        store.migrate().await.unwrap();
        assert!(path.exists());
        assert_eq!(pragma(&store.writer, "journal_mode").await, "wal");
        // NORMAL = 1.
        assert_eq!(pragma(&store.writer, "synchronous").await, "1");
        assert_eq!(pragma(&store.writer, "foreign_keys").await, "1");
        assert_eq!(pragma(&store.reader, "query_only").await, "1");
        // The readers cannot write, whatever a bug might ask of them.
        let write = sqlx::query("INSERT INTO clinics (id, name) VALUES ('x', 'x')")
            .execute(&store.reader)
            .await;
        assert!(write.is_err());
        store.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn an_in_memory_store_reads_what_it_wrote() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        store.migrate().await.unwrap();
        let clinic = Clinic {
            id: "c1".into(),
            name: "One".into(),
            time_zone: "UTC".into(),
        };
        store.upsert_clinic(&clinic, &Actor::System).await.unwrap();
        assert_eq!(store.list_clinics().await.unwrap(), vec![clinic]);
        assert_eq!(store.audit_heads().await.unwrap().len(), 1);
        assert_eq!(store.status().await.unwrap().kind, "sqlite");
    }

    #[tokio::test]
    async fn errors_sort_into_the_kinds_postgres_gives() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        store.migrate().await.unwrap();
        let insert = "INSERT INTO clinics (id, name) VALUES ('c1', 'One')";
        sqlx::query(insert).execute(store.pool()).await.unwrap();
        let twice = sqlx::query(insert).execute(store.pool()).await.unwrap_err();
        assert!(matches!(StoreError::from(twice), StoreError::Rejected(_)));
        let orphan = sqlx::query("INSERT INTO devices (id, clinic_id) VALUES ('p', 'nowhere')")
            .execute(store.pool())
            .await
            .unwrap_err();
        assert!(matches!(StoreError::from(orphan), StoreError::Rejected(_)));
        let draft = AuditDraft {
            clinic_id: "c1".into(),
            actor: Actor::System,
            action: "test".into(),
            subject_type: "test".into(),
            subject_id: "1".into(),
            old_value: None,
            new_value: None,
            reason: None,
        };
        store.append_audit(&[draft]).await.unwrap();
        let tamper = sqlx::query("DELETE FROM audit_events")
            .execute(store.pool())
            .await
            .unwrap_err();
        assert!(tamper.to_string().contains("append-only"), "{tamper}");
        assert!(matches!(StoreError::from(tamper), StoreError::Other(_)));
    }

    #[tokio::test]
    async fn a_writer_locked_out_past_the_busy_timeout_is_unavailable() {
        let dir = temp_dir();
        let path = dir.join("pentrace.db");
        let store = SqliteStore::open(&path).await.unwrap();
        // Another process's writer, holding the lock.
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .busy_timeout(Duration::ZERO);
        let mut other = sqlx::SqliteConnection::connect_with(&options)
            .await
            .unwrap();
        let mut blocked = sqlx::SqliteConnection::connect_with(&options)
            .await
            .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();
        let busy = sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut blocked)
            .await
            .unwrap_err();
        let kind = StoreError::from(busy);
        assert!(kind.is_transient(), "{kind:?}");
        sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
        drop((other, blocked));
        store.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }
}
