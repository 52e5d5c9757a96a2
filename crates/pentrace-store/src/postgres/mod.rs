//! The PostgreSQL implementation of [`Store`].
//!
//! Queries are built at run time (`sqlx::query`, not the compile-time checked
//! macros) because CI builds without a database. Sets of keys travel as
//! arrays (`= ANY($1)`, `UNNEST(...)`), so every lookup or write is one
//! statement however large the batch.

mod commit;
mod convert;
mod copy;
mod facts;
mod flags;
mod queries;
mod registry;
mod sessions;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pentrace_domain::rules::SeqHole;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

use crate::{
    CartridgeHistory, Clinic, CommitOutcome, Device, DeviceStatus, ExposureVerdict, FactsQuery,
    FlagQuery, FlagRecord, Lot, NewFlag, Product, SessionQuery, SessionRecord, Store, StoreResult,
    StoredFacts, WriteBatch,
};

/// The migrations of `migrations/postgres`, embedded at build time.
static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/postgres");

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
        // A pool of one connection of its own, closed afterwards whatever
        // happened: the migrator returns early on failure without unlocking,
        // and the advisory lock belongs to the session, so a connection
        // returned to the shared pool would keep the lock and block every
        // other replica's migrate forever.
        let options = (*self.pool.connect_options()).clone();
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        let result = MIGRATOR.run(&pool).await;
        pool.close().await;
        Ok(result?)
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

    async fn load_facts(&self, query: &FactsQuery) -> StoreResult<StoredFacts> {
        facts::load(&self.pool, query).await
    }

    async fn commit(&self, batch: &WriteBatch) -> StoreResult<CommitOutcome> {
        commit::commit(&self.pool, batch).await
    }

    async fn auto_register_device(&self, device_id: &str, clinic_id: &str) -> StoreResult<()> {
        registry::auto_register_device(&self.pool, device_id, clinic_id).await
    }

    async fn upsert_clinic(&self, clinic: &Clinic) -> StoreResult<Clinic> {
        registry::upsert_clinic(&self.pool, clinic).await
    }

    async fn upsert_device(&self, device: &Device) -> StoreResult<Device> {
        registry::upsert_device(&self.pool, device).await
    }

    async fn upsert_product(&self, product: &Product) -> StoreResult<Product> {
        registry::upsert_product(&self.pool, product).await
    }

    async fn upsert_lot(&self, lot: &Lot) -> StoreResult<Lot> {
        registry::upsert_lot(&self.pool, lot).await
    }

    async fn recall_lot(
        &self,
        gtin: &str,
        lot: &str,
        reason: &str,
        at: DateTime<Utc>,
        exposure: ExposureVerdict,
    ) -> StoreResult<(Lot, Vec<FlagRecord>)> {
        registry::recall_lot(&self.pool, gtin, lot, reason, at, exposure).await
    }

    async fn list_clinics(&self) -> StoreResult<Vec<Clinic>> {
        registry::list_clinics(&self.pool).await
    }

    async fn list_products(&self) -> StoreResult<Vec<Product>> {
        registry::list_products(&self.pool).await
    }

    async fn list_lots(&self, gtin: Option<&str>) -> StoreResult<Vec<Lot>> {
        registry::list_lots(&self.pool, gtin).await
    }

    async fn list_devices(
        &self,
        clinic_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<DeviceStatus>> {
        queries::list_devices(&self.pool, clinic_id, now).await
    }

    async fn list_sessions(&self, query: &SessionQuery) -> StoreResult<Vec<SessionRecord>> {
        queries::list_sessions(&self.pool, query).await
    }

    async fn list_flags(&self, query: &FlagQuery) -> StoreResult<Vec<FlagRecord>> {
        queries::list_flags(&self.pool, query).await
    }

    async fn cartridge_history(&self, cartridge_id: &str) -> StoreResult<CartridgeHistory> {
        queries::cartridge_history(&self.pool, cartridge_id).await
    }

    async fn lot_lookback(&self, gtin: &str, lot: &str) -> StoreResult<Vec<SessionRecord>> {
        queries::lot_lookback(&self.pool, gtin, lot).await
    }

    async fn due_holes(&self, before: DateTime<Utc>) -> StoreResult<Vec<(SeqHole, String)>> {
        queries::due_holes(&self.pool, before).await
    }

    async fn flag_holes(&self, holes: &[(SeqHole, NewFlag)]) -> StoreResult<Vec<FlagRecord>> {
        queries::flag_holes(&self.pool, holes).await
    }
}
