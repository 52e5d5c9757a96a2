//! The PostgreSQL implementation of [`Store`].
//!
//! Queries are built at run time (`sqlx::query`, not the compile-time checked
//! macros) because CI builds without a database. Sets of keys travel as
//! arrays (`= ANY($1)`, `UNNEST(...)`), so every lookup or write is one
//! statement however large the batch.

// The audit drafts, merges and lifecycle rules of these modules are plain
// Rust, shared with the SQLite store so both record the same events.
pub(crate) mod audit;
pub(crate) mod commit;
mod convert;
mod copy;
mod credentials;
mod facts;
mod flags;
pub(crate) mod people;
mod quarantine;
mod queries;
pub(crate) mod sessions;
mod status;

use crate::dialect::Dialect as _;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pentrace_domain::rules::SeqHole;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

use pentrace_domain::audit::{Actor, AuditEvent, ChainHash};
use pentrace_domain::checkpoint::Checkpoint;

use crate::{
    AuditDraft, AuditQuery, CartridgeHistory, ChainHead, Clinic, CommitOutcome, Device,
    DeviceCredential, DeviceStatus, ExposureVerdict, FactsQuery, FlagAction, FlagActionRecord,
    FlagQuery, FlagRecord, Lot, NewDeviceCredential, NewFlag, Product, QuarantineRecord,
    QuarantineRow, Role, SessionQuery, SessionRecord, Store, StoreError, StoreResult,
    StoredAuditEvent, StoredFacts, User, Watermarks, WriteBatch,
};

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
    type Date = chrono::NaiveDate;
    type Int4 = i32;
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
}

#[async_trait]
impl Store for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
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
