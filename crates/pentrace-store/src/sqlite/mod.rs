//! The SQLite implementation of [`Store`]: the embedded default, one file in
//! WAL mode, for a single clinic, a demo or a laptop (DESIGN §5).
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
mod convert;
mod credentials;
mod facts;
mod flags;
mod people;
mod quarantine;
mod queries;
mod samples;
mod sessions;
mod status;

use std::path::Path;
use std::time::Duration;

use crate::dialect::Dialect as _;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pentrace_domain::audit::{Actor, AuditEvent, ChainHash};
use pentrace_domain::checkpoint::Checkpoint;
use pentrace_domain::rules::SeqHole;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

use crate::{
    AuditDraft, AuditQuery, CartridgeHistory, ChainHead, Clinic, CommitOutcome, Device,
    DeviceCredential, DeviceStatus, ExposureVerdict, FactsQuery, FlagAction, FlagActionRecord,
    FlagQuery, FlagRecord, Lot, NewDeviceCredential, NewFlag, Product, QuarantineRecord,
    QuarantineRow, Role, SessionQuery, SessionRecord, Store, StoreError, StoreResult,
    StoredAuditEvent, StoredFacts, User, Watermarks, WriteBatch,
};

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
    type Id = String;
    type Date = String;
    type Int4 = i64;
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
}

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn status(&self) -> StoreResult<crate::StoreStatus> {
        crate::engine::status::status(self).await
    }

    async fn load_facts(&self, query: &FactsQuery) -> StoreResult<StoredFacts> {
        crate::engine::facts::load(self, query).await
    }

    async fn commit(&self, batch: &WriteBatch) -> StoreResult<CommitOutcome> {
        crate::engine::commit::commit(self, batch).await
    }

    async fn auto_register_device(&self, device_id: &str, clinic_id: &str) -> StoreResult<()> {
        crate::engine::registry::auto_register_device(self, device_id, clinic_id).await
    }

    async fn quarantine(&self, rows: &[QuarantineRow]) -> StoreResult<Watermarks> {
        crate::engine::quarantine::quarantine(self, rows).await
    }

    async fn list_quarantine(&self, limit: u32) -> StoreResult<Vec<QuarantineRecord>> {
        crate::engine::quarantine::list_quarantine(self, limit).await
    }

    async fn quarantined(&self, id: uuid::Uuid) -> StoreResult<Option<QuarantineRecord>> {
        crate::engine::quarantine::quarantined(self, id).await
    }

    async fn upsert_clinic(&self, clinic: &Clinic, actor: &Actor) -> StoreResult<Clinic> {
        crate::engine::registry::upsert_clinic(self, clinic, actor).await
    }

    async fn upsert_device(&self, device: &Device, actor: &Actor) -> StoreResult<Device> {
        crate::engine::registry::upsert_device(self, device, actor).await
    }

    async fn upsert_product(&self, product: &Product, actor: &Actor) -> StoreResult<Product> {
        crate::engine::registry::upsert_product(self, product, actor).await
    }

    async fn upsert_lot(&self, lot: &Lot, actor: &Actor) -> StoreResult<Lot> {
        crate::engine::registry::upsert_lot(self, lot, actor).await
    }

    async fn append_audit(&self, drafts: &[AuditDraft]) -> StoreResult<()> {
        crate::engine::audit::append_audit(self, drafts).await
    }

    async fn audit_heads(&self) -> StoreResult<Vec<ChainHead>> {
        <Self as crate::engine::audit::AuditSql>::heads(&mut *self.read().await?).await
    }

    async fn audit_page(
        &self,
        clinic_id: &str,
        after: u64,
        limit: u32,
    ) -> StoreResult<Vec<StoredAuditEvent>> {
        <Self as crate::engine::audit::AuditSql>::page(
            &mut *self.read().await?,
            clinic_id,
            after,
            limit,
        )
        .await
    }

    async fn audit_events(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEvent>> {
        crate::engine::audit::audit_events(self, query).await
    }

    async fn audit_hash_at(
        &self,
        clinic_id: &str,
        position: u64,
    ) -> StoreResult<Option<ChainHash>> {
        <Self as crate::engine::audit::AuditSql>::hash_at(
            &mut *self.read().await?,
            clinic_id,
            position,
        )
        .await
    }

    async fn save_checkpoint(&self, checkpoint: &Checkpoint) -> StoreResult<()> {
        crate::engine::audit::save_checkpoint(self, checkpoint).await
    }

    async fn checkpoints(&self) -> StoreResult<Vec<Checkpoint>> {
        <Self as crate::engine::audit::AuditSql>::checkpoints(&mut *self.read().await?).await
    }

    async fn create_user(
        &self,
        name: &str,
        role: Role,
        clinics: &[String],
        actor: &Actor,
    ) -> StoreResult<User> {
        crate::engine::people::create_user(self, name, role, clinics, actor).await
    }

    async fn user_by_name(&self, name: &str) -> StoreResult<Option<User>> {
        crate::engine::people::user_by_name(self, name).await
    }

    async fn issue_token(
        &self,
        user_id: uuid::Uuid,
        token_hash: &[u8; 32],
        actor: &Actor,
    ) -> StoreResult<uuid::Uuid> {
        crate::engine::people::issue_token(self, user_id, token_hash, actor).await
    }

    async fn revoke_token(&self, token_id: uuid::Uuid, actor: &Actor) -> StoreResult<()> {
        crate::engine::people::revoke_token(self, token_id, actor).await
    }

    async fn user_by_token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<User>> {
        crate::engine::people::user_by_token(self, token_hash).await
    }

    async fn issue_device_credential(
        &self,
        new: &NewDeviceCredential,
        actor: &Actor,
    ) -> StoreResult<(DeviceCredential, Vec<DeviceCredential>)> {
        crate::engine::credentials::issue(self, new, actor).await
    }

    async fn revoke_device_credential(
        &self,
        id: uuid::Uuid,
        reason: &str,
        actor: &Actor,
    ) -> StoreResult<DeviceCredential> {
        crate::engine::credentials::revoke(self, id, reason, actor).await
    }

    async fn device_credential(
        &self,
        fingerprint: &[u8; 32],
    ) -> StoreResult<Option<DeviceCredential>> {
        crate::engine::credentials::by_fingerprint(self, fingerprint).await
    }

    async fn list_device_credentials(
        &self,
        clinics: Option<&[String]>,
    ) -> StoreResult<Vec<DeviceCredential>> {
        crate::engine::credentials::list(self, clinics).await
    }

    async fn device_clinic(&self, device_id: &str) -> StoreResult<Option<String>> {
        crate::engine::credentials::device_clinic(self, device_id).await
    }

    async fn sign_flag(&self, action: &FlagAction) -> StoreResult<FlagRecord> {
        crate::engine::people::sign_flag(self, action).await
    }

    async fn flag_actions(&self, flag_ids: &[uuid::Uuid]) -> StoreResult<Vec<FlagActionRecord>> {
        crate::engine::people::flag_actions(self, flag_ids).await
    }

    async fn recall_lot(
        &self,
        gtin: &str,
        lot: &str,
        reason: &str,
        at: DateTime<Utc>,
        exposure: ExposureVerdict,
        actor: &Actor,
    ) -> StoreResult<(Lot, Vec<FlagRecord>)> {
        crate::engine::registry::recall_lot(self, gtin, lot, reason, at, exposure, actor).await
    }

    async fn list_clinics(&self) -> StoreResult<Vec<Clinic>> {
        crate::engine::registry::list_clinics(self).await
    }

    async fn list_products(&self) -> StoreResult<Vec<Product>> {
        crate::engine::registry::list_products(self).await
    }

    async fn list_lots(&self, gtin: Option<&str>) -> StoreResult<Vec<Lot>> {
        crate::engine::registry::list_lots(self, gtin).await
    }

    async fn list_devices(
        &self,
        clinic_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<DeviceStatus>> {
        crate::engine::queries::list_devices(self, clinic_id, now).await
    }

    async fn list_sessions(&self, query: &SessionQuery) -> StoreResult<Vec<SessionRecord>> {
        crate::engine::queries::list_sessions(self, query).await
    }

    async fn list_flags(&self, query: &FlagQuery) -> StoreResult<Vec<FlagRecord>> {
        crate::engine::queries::list_flags(self, query).await
    }

    async fn cartridge_history(&self, cartridge_id: &str) -> StoreResult<CartridgeHistory> {
        crate::engine::queries::cartridge_history(self, cartridge_id).await
    }

    async fn lot_lookback(&self, gtin: &str, lot: &str) -> StoreResult<Vec<SessionRecord>> {
        crate::engine::queries::lot_lookback(self, gtin, lot).await
    }

    async fn sessions_in_period(
        &self,
        clinic_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> StoreResult<Vec<SessionRecord>> {
        crate::engine::queries::sessions_in_period(self, clinic_id, from, to).await
    }

    async fn flags_in_period(
        &self,
        clinic_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> StoreResult<Vec<FlagRecord>> {
        crate::engine::queries::flags_in_period(self, clinic_id, from, to).await
    }

    async fn due_holes(&self, before: DateTime<Utc>) -> StoreResult<Vec<(SeqHole, String)>> {
        crate::engine::queries::due_holes(self, before).await
    }

    async fn flag_holes(&self, holes: &[(SeqHole, NewFlag)]) -> StoreResult<Vec<FlagRecord>> {
        crate::engine::queries::flag_holes(self, holes).await
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Connection as _;

    use super::*;

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
