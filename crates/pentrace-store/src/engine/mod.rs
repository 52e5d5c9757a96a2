//! The store's engine: every piece of orchestration, written once and
//! generic over a [`Dialect`](crate::dialect::Dialect) — the order of a
//! commit and its conflict checks, registry changes and their audit events,
//! the flag lifecycle, people and tokens, reports and queries — and the one
//! implementation of [`Store`]. Each area declares the statements it runs as
//! traits next to the code that calls them: `*CommonSql` (and `RegistrySql`,
//! `CredentialSql`, `QuarantineSql`) written once here for both stores,
//! the rest per dialect in `postgres/` and `sqlite/`.

pub(crate) mod audit;
pub(crate) mod commit;
pub(crate) mod credentials;
pub(crate) mod facts;
pub(crate) mod flags;
pub(crate) mod people;
pub(crate) mod quarantine;
pub(crate) mod queries;
pub(crate) mod registry;
pub(crate) mod status;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pentrace_domain::audit::{Actor, AuditEvent, ChainHash};
use pentrace_domain::checkpoint::Checkpoint;
use pentrace_domain::rules::SeqHole;

use crate::{
    AuditDraft, AuditQuery, CartridgeHistory, ChainHead, Clinic, CommitOutcome, Device,
    DeviceCredential, DeviceStatus, ExposureVerdict, FactsQuery, FlagAction, FlagActionRecord,
    FlagQuery, FlagRecord, Lot, NewDeviceCredential, NewFlag, Product, QuarantineRecord,
    QuarantineRow, Role, SessionQuery, SessionRecord, Store, StoreResult, StoredAuditEvent,
    StoredFacts, User, Watermarks, WriteBatch,
};

/// Everything a database must say to be a store: the sum of the areas'
/// leaf traits.
pub(crate) trait StoreSql:
    audit::AuditSql
    + audit::AuditCommonSql
    + commit::CommitSql
    + credentials::CredentialSql
    + facts::FactsSql
    + flags::FlagSql
    + people::PeopleSql
    + people::PeopleCommonSql
    + quarantine::QuarantineSql
    + queries::QuerySql
    + queries::QueryCommonSql
    + registry::RegistrySql
    + status::StatusSql
{
}

impl StoreSql for crate::postgres::PgStore {}
impl StoreSql for crate::sqlite::SqliteStore {}

/// The one implementation of [`Store`], for every dialect.
#[async_trait]
impl<D: StoreSql> Store for D {
    fn kind(&self) -> &'static str {
        D::KIND
    }

    async fn ping(&self) -> StoreResult<()> {
        self.select_one().await
    }

    async fn status(&self) -> StoreResult<crate::StoreStatus> {
        status::status(self).await
    }

    async fn load_facts(&self, query: &FactsQuery) -> StoreResult<StoredFacts> {
        facts::load(self, query).await
    }

    async fn commit(&self, batch: &WriteBatch) -> StoreResult<CommitOutcome> {
        commit::commit(self, batch).await
    }

    async fn auto_register_device(&self, device_id: &str, clinic_id: &str) -> StoreResult<()> {
        registry::auto_register_device(self, device_id, clinic_id).await
    }

    async fn quarantine(&self, rows: &[QuarantineRow]) -> StoreResult<Watermarks> {
        quarantine::quarantine(self, rows).await
    }

    async fn list_quarantine(&self, limit: u32) -> StoreResult<Vec<QuarantineRecord>> {
        quarantine::list_quarantine(self, limit).await
    }

    async fn quarantined(&self, id: uuid::Uuid) -> StoreResult<Option<QuarantineRecord>> {
        quarantine::quarantined(self, id).await
    }

    async fn upsert_clinic(&self, clinic: &Clinic, actor: &Actor) -> StoreResult<Clinic> {
        registry::upsert_clinic(self, clinic, actor).await
    }

    async fn upsert_device(&self, device: &Device, actor: &Actor) -> StoreResult<Device> {
        registry::upsert_device(self, device, actor).await
    }

    async fn upsert_product(&self, product: &Product, actor: &Actor) -> StoreResult<Product> {
        registry::upsert_product(self, product, actor).await
    }

    async fn upsert_lot(&self, lot: &Lot, actor: &Actor) -> StoreResult<Lot> {
        registry::upsert_lot(self, lot, actor).await
    }

    async fn append_audit(&self, drafts: &[AuditDraft]) -> StoreResult<()> {
        audit::append_audit(self, drafts).await
    }

    async fn audit_heads(&self) -> StoreResult<Vec<ChainHead>> {
        D::heads(&mut *self.read().await?).await
    }

    async fn audit_page(
        &self,
        clinic_id: &str,
        after: u64,
        limit: u32,
    ) -> StoreResult<Vec<StoredAuditEvent>> {
        D::page(&mut *self.read().await?, clinic_id, after, limit).await
    }

    async fn audit_events(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEvent>> {
        audit::audit_events(self, query).await
    }

    async fn audit_hash_at(
        &self,
        clinic_id: &str,
        position: u64,
    ) -> StoreResult<Option<ChainHash>> {
        D::hash_at(&mut *self.read().await?, clinic_id, position).await
    }

    async fn save_checkpoint(&self, checkpoint: &Checkpoint) -> StoreResult<()> {
        audit::save_checkpoint(self, checkpoint).await
    }

    async fn checkpoints(&self) -> StoreResult<Vec<Checkpoint>> {
        D::checkpoints(&mut *self.read().await?).await
    }

    async fn create_user(
        &self,
        name: &str,
        role: Role,
        clinics: &[String],
        actor: &Actor,
    ) -> StoreResult<User> {
        people::create_user(self, name, role, clinics, actor).await
    }

    async fn user_by_name(&self, name: &str) -> StoreResult<Option<User>> {
        people::user_by_name(self, name).await
    }

    async fn issue_token(
        &self,
        user_id: uuid::Uuid,
        token_hash: &[u8; 32],
        actor: &Actor,
    ) -> StoreResult<uuid::Uuid> {
        people::issue_token(self, user_id, token_hash, actor).await
    }

    async fn revoke_token(&self, token_id: uuid::Uuid, actor: &Actor) -> StoreResult<()> {
        people::revoke_token(self, token_id, actor).await
    }

    async fn user_by_token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<User>> {
        people::user_by_token(self, token_hash).await
    }

    async fn issue_device_credential(
        &self,
        new: &NewDeviceCredential,
        actor: &Actor,
    ) -> StoreResult<(DeviceCredential, Vec<DeviceCredential>)> {
        credentials::issue(self, new, actor).await
    }

    async fn revoke_device_credential(
        &self,
        id: uuid::Uuid,
        reason: &str,
        actor: &Actor,
    ) -> StoreResult<DeviceCredential> {
        credentials::revoke(self, id, reason, actor).await
    }

    async fn device_credential(
        &self,
        fingerprint: &[u8; 32],
    ) -> StoreResult<Option<DeviceCredential>> {
        credentials::by_fingerprint(self, fingerprint).await
    }

    async fn list_device_credentials(
        &self,
        clinics: Option<&[String]>,
    ) -> StoreResult<Vec<DeviceCredential>> {
        credentials::list(self, clinics).await
    }

    async fn device_clinic(&self, device_id: &str) -> StoreResult<Option<String>> {
        credentials::device_clinic(self, device_id).await
    }

    async fn sign_flag(&self, action: &FlagAction) -> StoreResult<FlagRecord> {
        people::sign_flag(self, action).await
    }

    async fn flag_actions(&self, flag_ids: &[uuid::Uuid]) -> StoreResult<Vec<FlagActionRecord>> {
        people::flag_actions(self, flag_ids).await
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
        registry::recall_lot(self, gtin, lot, reason, at, exposure, actor).await
    }

    async fn list_clinics(&self) -> StoreResult<Vec<Clinic>> {
        registry::list_clinics(self).await
    }

    async fn list_products(&self) -> StoreResult<Vec<Product>> {
        registry::list_products(self).await
    }

    async fn list_lots(&self, gtin: Option<&str>) -> StoreResult<Vec<Lot>> {
        registry::list_lots(self, gtin).await
    }

    async fn list_devices(
        &self,
        clinic_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<DeviceStatus>> {
        queries::list_devices(self, clinic_id, now).await
    }

    async fn list_sessions(&self, query: &SessionQuery) -> StoreResult<Vec<SessionRecord>> {
        queries::list_sessions(self, query).await
    }

    async fn list_flags(&self, query: &FlagQuery) -> StoreResult<Vec<FlagRecord>> {
        queries::list_flags(self, query).await
    }

    async fn cartridge_history(&self, cartridge_id: &str) -> StoreResult<CartridgeHistory> {
        queries::cartridge_history(self, cartridge_id).await
    }

    async fn lot_lookback(&self, gtin: &str, lot: &str) -> StoreResult<Vec<SessionRecord>> {
        queries::lot_lookback(self, gtin, lot).await
    }

    async fn sessions_in_period(
        &self,
        clinic_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> StoreResult<Vec<SessionRecord>> {
        queries::sessions_in_period(self, clinic_id, from, to).await
    }

    async fn flags_in_period(
        &self,
        clinic_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> StoreResult<Vec<FlagRecord>> {
        queries::flags_in_period(self, clinic_id, from, to).await
    }

    async fn due_holes(&self, before: DateTime<Utc>) -> StoreResult<Vec<(SeqHole, String)>> {
        queries::due_holes(self, before).await
    }

    async fn flag_holes(&self, holes: &[(SeqHole, NewFlag)]) -> StoreResult<Vec<FlagRecord>> {
        queries::flag_holes(self, holes).await
    }
}
