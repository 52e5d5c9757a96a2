//! pentrace's storage: the [`Store`] trait the pipeline and the query services
//! use, on PostgreSQL ([`postgres::PgStore`]) and on SQLite, the embedded
//! default ([`sqlite::SqliteStore`]).
//!
//! The store holds facts and arbitrates races (bind-once, `(device_id, seq)`
//! dedupe, one flag per dedupe key) with unique constraints; it never decides
//! a rule. One engine implements `Store` for both databases; each database
//! supplies only the statements and encodings that differ (see
//! docs/architecture.md, "The store: one engine, two dialects").

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pentrace_domain::audit::{Actor, AuditEvent, ChainHash};
use pentrace_domain::checkpoint::Checkpoint;

mod classify;
mod dialect;
mod engine;
pub mod model;
pub mod postgres;
mod shared;
pub mod sqlite;
pub mod status;
mod watermark;

pub use model::*;
pub use status::{SchemaVersion, StoreStatus, TimescaleStatus, summary_line};

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or the connection broke: retry later.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The database refused the data (a constraint or a value): retrying the
    /// same data will fail again.
    #[error("store rejected the data: {0}")]
    Rejected(#[source] sqlx::Error),
    /// A referenced thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request itself is invalid.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Anything else the database reported.
    #[error("store error: {0}")]
    Other(#[source] sqlx::Error),
}

impl StoreError {
    /// Whether the same call may succeed later (connection trouble,
    /// serialization failures, deadlocks).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        classify::classify(e)
    }
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// What the pipeline asks for before judging a batch: everything is looked
/// up by key with one round trip per table.
#[derive(Debug, Clone, Default)]
pub struct FactsQuery {
    /// `(device_id, seq)` keys of the batch: which are already stored?
    pub keys: Vec<(String, u64)>,
    pub device_ids: HashSet<String>,
    pub gtins: HashSet<String>,
    /// `(gtin, lot)`.
    pub lots: HashSet<(String, String)>,
    /// Cartridge ids in text form (`CartridgeId::to_string`).
    pub cartridge_ids: HashSet<String>,
    pub session_ids: HashSet<String>,
}

/// The facts a batch is judged against.
#[derive(Debug, Clone, Default)]
pub struct StoredFacts {
    /// Keys of the query that are already stored (redeliveries).
    pub seen: HashSet<(String, u64)>,
    /// Registered devices among those asked for.
    pub devices: HashMap<String, DeviceState>,
    /// Catalogue entries among the GTINs asked for.
    pub products: HashMap<String, pentrace_domain::rules::ProductFacts>,
    /// Registered lots among those asked for, by `(gtin, lot)`.
    pub lots: HashMap<(String, String), pentrace_domain::rules::LotFacts>,
    /// Existing bindings by cartridge id.
    pub bindings: HashMap<String, pentrace_domain::rules::Binding>,
    /// Stored sessions by session id.
    pub sessions: HashMap<String, SessionState>,
    /// Open seq holes of the devices asked for.
    pub holes: HashMap<String, Vec<pentrace_domain::rules::SeqHole>>,
}

/// Everything one batch writes, in one transaction.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    /// One row per message: the dedupe keys. Must all be new: if another
    /// process stored one meanwhile, the commit reports a conflict.
    pub messages: Vec<MessageRow>,
    /// Bind-once claims; a claim lost to another process is a conflict.
    pub claims: Vec<ClaimRow>,
    /// New sessions and changes to stored ones.
    pub sessions: Vec<SessionWrite>,
    /// Stroke samples, written with COPY.
    pub samples: Vec<SampleBlock>,
    /// Flags to raise; one per dedupe key, later ones ignored.
    pub flags: Vec<NewFlag>,
    /// Activity and usage of cartridges by their procedure (owner and
    /// resumes); times only ever move forward, usage only adds up.
    pub activity: Vec<ActivityRow>,
    /// Device liveness and progress.
    pub devices: Vec<DeviceWrite>,
    /// Devices whose open seq holes are replaced by the given list.
    pub holes: Vec<(String, Vec<pentrace_domain::rules::SeqHole>)>,
    /// `(gtin, lot)` of lots the batch judged as not recalled: if one was
    /// recalled meanwhile, the commit is a conflict and the batch is judged
    /// again, so no session of a recalled lot escapes its flag.
    pub unrecalled_lots: Vec<(String, String)>,
}

/// What a commit did.
#[derive(Debug, Clone)]
pub enum CommitOutcome {
    /// Everything was written; the flags that were new (not deduped), and
    /// the stored watermark of every device of the batch after the commit.
    Committed {
        new_flags: Vec<FlagRecord>,
        watermarks: Watermarks,
    },
    /// Another writer got there first (a message key or a cartridge binding):
    /// nothing was written; reload the facts and judge again.
    Conflict { detail: String },
}

/// Per device: every seq from 1 through the value is stored.
pub type Watermarks = HashMap<String, u64>;

/// The storage behind pentrace.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// A short name for logs and `pentrace status` ("postgres", "sqlite").
    fn kind(&self) -> &'static str;
    /// Cheap liveness check (for `/readyz`).
    async fn ping(&self) -> StoreResult<()>;
    /// The server, the schema version and the TimescaleDB features in use
    /// (for `pentrace status` and the start-up log line).
    async fn status(&self) -> StoreResult<StoreStatus>;

    // -- ingest ------------------------------------------------------------
    async fn load_facts(&self, query: &FactsQuery) -> StoreResult<StoredFacts>;
    async fn commit(&self, batch: &WriteBatch) -> StoreResult<CommitOutcome>;
    /// Registers an unknown device to the default clinic (`--auto-register`).
    async fn auto_register_device(&self, device_id: &str, clinic_id: &str) -> StoreResult<()>;
    /// Puts messages that could not be processed into quarantine, in one
    /// transaction: their keys (a key already stored is left alone), the
    /// rows, and a `message.quarantined` audit event each. Returns the
    /// watermarks of their devices afterwards.
    async fn quarantine(&self, rows: &[QuarantineRow]) -> StoreResult<Watermarks>;
    /// Quarantined messages, newest first.
    async fn list_quarantine(&self, limit: u32) -> StoreResult<Vec<QuarantineRecord>>;
    /// One quarantined message.
    async fn quarantined(&self, id: uuid::Uuid) -> StoreResult<Option<QuarantineRecord>>;

    // -- registry ----------------------------------------------------------
    // Registry changes are audited (old and new values, `actor`) in the
    // same transaction.
    async fn upsert_clinic(&self, clinic: &Clinic, actor: &Actor) -> StoreResult<Clinic>;
    async fn upsert_device(&self, device: &Device, actor: &Actor) -> StoreResult<Device>;
    async fn upsert_product(&self, product: &Product, actor: &Actor) -> StoreResult<Product>;
    async fn upsert_lot(&self, lot: &Lot, actor: &Actor) -> StoreResult<Lot>;
    /// Marks a lot recalled and, in the same transaction, raises the
    /// verdicts `exposure(session_id, gtin, lot, recalled_at)` on every stored
    /// session of the lot that started before `at`. Returns the lot and the
    /// new flags.
    async fn recall_lot(
        &self,
        gtin: &str,
        lot: &str,
        reason: &str,
        at: DateTime<Utc>,
        exposure: ExposureVerdict,
        actor: &Actor,
    ) -> StoreResult<(Lot, Vec<FlagRecord>)>;
    async fn list_clinics(&self) -> StoreResult<Vec<Clinic>>;
    async fn list_products(&self) -> StoreResult<Vec<Product>>;
    async fn list_lots(&self, gtin: Option<&str>) -> StoreResult<Vec<Lot>>;

    // -- fleet -------------------------------------------------------------
    /// Devices with their status; `clinic_id` None = every clinic.
    async fn list_devices(
        &self,
        clinic_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<DeviceStatus>>;
    async fn list_sessions(&self, query: &SessionQuery) -> StoreResult<Vec<SessionRecord>>;

    // -- compliance --------------------------------------------------------
    async fn list_flags(&self, query: &FlagQuery) -> StoreResult<Vec<FlagRecord>>;
    /// The binding and every session and flag of one cartridge.
    async fn cartridge_history(&self, cartridge_id: &str) -> StoreResult<CartridgeHistory>;
    /// Every session that used a cartridge of the lot, oldest first.
    async fn lot_lookback(&self, gtin: &str, lot: &str) -> StoreResult<Vec<SessionRecord>>;
    /// A clinic's sessions started in `[from, to)`, oldest first (reports).
    async fn sessions_in_period(
        &self,
        clinic_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> StoreResult<Vec<SessionRecord>>;
    /// A clinic's flags raised in `[from, to)` or belonging to one of its
    /// sessions started in `[from, to)`, oldest first (reports).
    async fn flags_in_period(
        &self,
        clinic_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> StoreResult<Vec<FlagRecord>>;

    // -- audit trail -------------------------------------------------------
    /// Appends events that record no other write (reports exported, ...).
    async fn append_audit(&self, drafts: &[AuditDraft]) -> StoreResult<()>;
    /// Every chain's head.
    async fn audit_heads(&self) -> StoreResult<Vec<ChainHead>>;
    /// Up to `limit` events of a chain after position `after`, in order.
    async fn audit_page(
        &self,
        clinic_id: &str,
        after: u64,
        limit: u32,
    ) -> StoreResult<Vec<StoredAuditEvent>>;
    /// Events of the query's actions since its time, oldest first.
    async fn audit_events(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEvent>>;
    /// The hash stored at a chain position, if the chain has it.
    async fn audit_hash_at(&self, clinic_id: &str, position: u64)
    -> StoreResult<Option<ChainHash>>;
    async fn save_checkpoint(&self, checkpoint: &Checkpoint) -> StoreResult<()>;
    async fn checkpoints(&self) -> StoreResult<Vec<Checkpoint>>;

    // -- people, tokens, signatures ----------------------------------------
    /// Creates a user (audited); the name is unique.
    async fn create_user(
        &self,
        name: &str,
        role: Role,
        clinics: &[String],
        actor: &Actor,
    ) -> StoreResult<User>;
    async fn user_by_name(&self, name: &str) -> StoreResult<Option<User>>;
    /// Stores a token's SHA-256 hash (never the token); audited.
    async fn issue_token(
        &self,
        user_id: uuid::Uuid,
        token_hash: &[u8; 32],
        actor: &Actor,
    ) -> StoreResult<uuid::Uuid>;
    async fn revoke_token(&self, token_id: uuid::Uuid, actor: &Actor) -> StoreResult<()>;
    /// The user of a valid (not revoked) token.
    async fn user_by_token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<User>>;
    // -- device credentials (issue 13) -----------------------------------
    /// Stores a new credential's fingerprint (audited
    /// `device.credential_issued` in its clinic's chain); with `replace`,
    /// revokes the principal's other valid credentials of the same kind in
    /// the same transaction (audited `device.credential_revoked`). A pen
    /// credential needs its device registered; a gateway, its clinic.
    /// Returns the credential and those it revoked.
    async fn issue_device_credential(
        &self,
        new: &NewDeviceCredential,
        actor: &Actor,
    ) -> StoreResult<(DeviceCredential, Vec<DeviceCredential>)>;
    /// Revokes a credential (audited with the reason); revoking a revoked
    /// one changes nothing and is not audited again.
    async fn revoke_device_credential(
        &self,
        id: uuid::Uuid,
        reason: &str,
        actor: &Actor,
    ) -> StoreResult<DeviceCredential>;
    /// The credential with this fingerprint, revoked or not.
    async fn device_credential(
        &self,
        fingerprint: &[u8; 32],
    ) -> StoreResult<Option<DeviceCredential>>;
    /// Credentials of the given clinics (`None` = every clinic), newest first.
    async fn list_device_credentials(
        &self,
        clinics: Option<&[String]>,
    ) -> StoreResult<Vec<DeviceCredential>>;
    /// The clinic a registered device belongs to.
    async fn device_clinic(&self, device_id: &str) -> StoreResult<Option<String>>;
    /// Records a signed acknowledge/resolve, bound to the flag's current
    /// audit hash, and moves the flag's state; all in one transaction.
    async fn sign_flag(&self, action: &FlagAction) -> StoreResult<FlagRecord>;
    /// Signed actions of the given flags, oldest first.
    async fn flag_actions(&self, flag_ids: &[uuid::Uuid]) -> StoreResult<Vec<FlagActionRecord>>;

    // -- data gaps ---------------------------------------------------------
    /// Open holes first seen missing before `before`, with their clinic.
    async fn due_holes(
        &self,
        before: DateTime<Utc>,
    ) -> StoreResult<Vec<(pentrace_domain::rules::SeqHole, String)>>;
    /// Raises the gap flags and closes the holes they are about.
    async fn flag_holes(
        &self,
        holes: &[(pentrace_domain::rules::SeqHole, NewFlag)],
    ) -> StoreResult<Vec<FlagRecord>>;
}

/// Builds the `RECALL_EXPOSURE` verdict for a session (the domain's rule,
/// passed in so the store never decides it).
pub type ExposureVerdict = fn(&str, &str, &str, DateTime<Utc>) -> pentrace_domain::Verdict;
