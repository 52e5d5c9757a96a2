//! Rows the store reads and writes, in domain terms.

use chrono::{DateTime, NaiveDate, Utc};
use pentrace_domain::audit::Actor;
use pentrace_domain::rules::CartridgeRelation;
use pentrace_domain::{FlagKind, Severity};

/// A clinic: the owner of devices and of one audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clinic {
    pub id: String,
    pub name: String,
    /// IANA time zone, e.g. "Europe/Berlin".
    pub time_zone: String,
}

/// A registered pen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: String,
    pub clinic_id: String,
    pub model: String,
    /// Depth limit, µm; 0 = default.
    pub max_depth_um: u32,
}

/// A product of the cartridge catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub gtin: String,
    pub name: String,
    /// µm; 0 = no product limit.
    pub max_depth_um: u32,
    /// 0 = unlimited.
    pub rated_strokes: u64,
    /// Seconds; 0 = unlimited.
    pub max_active_s: u32,
    pub shelf_life_days: u32,
}

/// A production lot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lot {
    pub gtin: String,
    pub lot: String,
    pub expiry: Option<NaiveDate>,
    pub recalled_at: Option<DateTime<Utc>>,
    pub recall_reason: Option<String>,
}

/// What the pipeline needs of a registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    pub clinic_id: String,
    /// µm; 0 = default.
    pub max_depth_um: u32,
    /// Highest seq stored for the device (0 = none yet).
    pub max_seq: u64,
    /// Every seq from 1 through this one is stored: the device's watermark.
    pub stored_through: u64,
}

/// What the pipeline needs of a stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    pub device_id: String,
    pub relation: CartridgeRelation,
    /// The cartridge the relation was decided for.
    pub cartridge_id: Option<String>,
    /// The session's start as the pen's clock read it (`None` for sessions
    /// stored before it was kept): with the device, what tells a message of
    /// this session from one of another session under the same id.
    pub device_started_at: Option<DateTime<Utc>>,
    pub strokes: u64,
    pub active_ms: u64,
}

/// One stored message key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRow {
    pub device_id: String,
    pub seq: u64,
    /// `session_start`, `stroke_batch`, `session_end`, `heartbeat`.
    pub kind: &'static str,
    pub session_id: Option<String>,
    /// Device clock.
    pub sent_at: DateTime<Utc>,
    /// Server clock.
    pub received_at: DateTime<Utc>,
}

/// What a message of a cartridge's procedure (its owner or a resume) adds
/// to the cartridge: its latest activity, strokes and active time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityRow {
    pub cartridge_id: String,
    /// Skew-corrected device time; the stored value only moves forward.
    pub at: DateTime<Utc>,
    pub add_strokes: u64,
    pub add_active_ms: u64,
    /// The usage the batch was judged on: if the stored usage is no longer
    /// this (another process added to it meanwhile), the commit is a
    /// conflict and the batch is judged again, so no overuse is missed.
    pub strokes_before: u64,
    pub active_ms_before: u64,
}

impl ActivityRow {
    /// One row per cartridge, sorted by id (so concurrent commits lock rows
    /// in the same order): the latest time and the summed usage.
    pub fn merged(rows: &[ActivityRow]) -> Vec<ActivityRow> {
        let mut by_id: std::collections::BTreeMap<&str, ActivityRow> = Default::default();
        for r in rows {
            // The first row's "before" is the batch's: later rows of the
            // batch come after its own additions.
            let m = by_id
                .entry(r.cartridge_id.as_str())
                .or_insert_with(|| ActivityRow {
                    add_strokes: 0,
                    add_active_ms: 0,
                    ..r.clone()
                });
            m.at = m.at.max(r.at);
            m.add_strokes = m.add_strokes.saturating_add(r.add_strokes);
            m.add_active_ms = m.add_active_ms.saturating_add(r.add_active_ms);
        }
        by_id.into_values().collect()
    }
}

/// A bind-once claim of a cartridge by a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRow {
    pub cartridge_id: String,
    pub session_id: String,
    pub device_id: String,
    pub patient_ref: Option<String>,
    /// Skew-corrected device time of the session start.
    pub bound_at: DateTime<Utc>,
}

/// Creates a session or adds to it. The first write of a session sets every
/// field; later writes add the deltas and move `ended_at`/`last_activity_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionWrite {
    pub session_id: String,
    pub device_id: String,
    pub clinic_id: String,
    /// Set when this write decides the relation (first message).
    pub relation: Option<CartridgeRelation>,
    pub cartridge_id: Option<String>,
    pub udi: String,
    pub gtin: Option<String>,
    pub lot: Option<String>,
    pub expiry: Option<NaiveDate>,
    /// `TreatmentArea::name` (`unknown(N)` for a wire value the server does
    /// not know).
    pub area: String,
    pub patient_ref: Option<String>,
    /// Empty when not known from this message.
    pub operator_ref: String,
    pub firmware: String,
    /// Session start: the pen's clock, corrected by the measured skew when
    /// that exceeds the window (what the rules judge).
    pub started_at: DateTime<Utc>,
    /// Set by a session end; corrected like `started_at`.
    pub ended_at: Option<DateTime<Utc>>,
    /// The same two times as the pen's clock read them, uncorrected;
    /// `None` when the pen sent none (and the server's stand-in is judged).
    pub device_started_at: Option<DateTime<Utc>>,
    pub device_ended_at: Option<DateTime<Utc>>,
    pub add_strokes: u64,
    pub add_active_ms: u64,
    pub add_samples: u64,
    pub max_depth_um: u32,
}

/// One stroke sample row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleRow {
    /// Device time of the sample (batch start + offset).
    pub time: DateTime<Utc>,
    pub seq: u64,
    pub strokes: u32,
    pub depth_um: u32,
    pub speed_hz: u32,
}

/// Samples of one message share device and session; kept apart from
/// [`SampleRow`] so the batch does not repeat strings per sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleBlock {
    pub device_id: String,
    pub session_id: String,
    pub rows: Vec<SampleRow>,
}

/// Device liveness and progress written by a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceWrite {
    pub device_id: String,
    /// Server time of the latest message.
    pub last_seen: DateTime<Utc>,
    /// Highest seq in the batch (the store keeps the maximum).
    pub max_seq: u64,
    pub battery_pct: Option<u32>,
    pub firmware: Option<String>,
}

/// A flag to raise.
#[derive(Debug, Clone, PartialEq)]
pub struct NewFlag {
    pub kind: FlagKind,
    pub severity: Severity,
    pub dedupe_key: String,
    pub clinic_id: String,
    pub device_id: String,
    pub session_id: Option<String>,
    pub cartridge_id: Option<String>,
    /// Seq of the message that raised it (0 = raised by the server).
    pub seq: u64,
    pub detail: String,
    pub evidence: serde_json::Value,
}

/// Lifecycle state of a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlagState {
    Open,
    Acknowledged,
    Resolved,
}

impl FlagState {
    /// The stable name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            FlagState::Open => "open",
            FlagState::Acknowledged => "acknowledged",
            FlagState::Resolved => "resolved",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<FlagState> {
        match s {
            "open" => Some(FlagState::Open),
            "acknowledged" => Some(FlagState::Acknowledged),
            "resolved" => Some(FlagState::Resolved),
            _ => None,
        }
    }
}

/// A stored flag.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagRecord {
    pub id: uuid::Uuid,
    pub kind: FlagKind,
    pub severity: Severity,
    pub state: FlagState,
    pub clinic_id: String,
    pub device_id: String,
    pub session_id: Option<String>,
    pub cartridge_id: Option<String>,
    pub seq: u64,
    /// Server time of the commit that raised it.
    pub raised_at: DateTime<Utc>,
    pub detail: String,
    pub evidence: serde_json::Value,
}

/// Filters of `list_flags`; empty vectors and `None` mean "any".
#[derive(Debug, Clone, Default)]
pub struct FlagQuery {
    /// Restrict to these clinics (`None` = every clinic).
    pub clinic_ids: Option<Vec<String>>,
    pub device_id: Option<String>,
    pub session_id: Option<String>,
    pub kinds: Vec<FlagKind>,
    pub states: Vec<FlagState>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Return flags raised strictly after this `(raised_at, id)` (paging).
    pub after: Option<(DateTime<Utc>, uuid::Uuid)>,
    /// Maximum rows.
    pub limit: u32,
}

/// Filters of `list_sessions`.
#[derive(Debug, Clone, Default)]
pub struct SessionQuery {
    pub device_id: String,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Maximum rows, newest first.
    pub limit: u32,
}

/// A stored session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub session_id: String,
    pub device_id: String,
    pub clinic_id: String,
    pub cartridge_id: Option<String>,
    pub udi: String,
    pub gtin: Option<String>,
    pub lot: Option<String>,
    pub expiry: Option<NaiveDate>,
    pub area: String,
    pub operator_ref: String,
    pub patient_ref: Option<String>,
    /// Corrected by the measured skew beyond the window (what the rules
    /// judge); `device_*` are the pen's own readings, `None` for sessions
    /// stored before they were kept.
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub device_started_at: Option<DateTime<Utc>>,
    pub device_ended_at: Option<DateTime<Utc>>,
    pub strokes: u64,
    pub max_depth_um: u32,
    pub samples: u64,
}

/// A device with its status, for the fleet view.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceStatus {
    pub device: Device,
    pub last_seen: Option<DateTime<Utc>>,
    pub online: bool,
    pub battery_pct: Option<u32>,
    pub sessions_today: u32,
    pub strokes_today: u64,
    pub open_flags: u32,
    pub last_seq: u64,
}

/// Everything known about one cartridge.
#[derive(Debug, Clone, PartialEq)]
pub struct CartridgeHistory {
    pub cartridge_id: String,
    /// `(session_id, device_id, bound_at)` of the owner.
    pub binding: Option<(String, String, DateTime<Utc>)>,
    pub sessions: Vec<SessionRecord>,
    pub flags: Vec<FlagRecord>,
}

/// The chain of events that belong to no single clinic (catalogue, lots,
/// recalls, users and tokens).
pub const GLOBAL_CHAIN: &str = "*";

/// An audit event before the store gives it its place in a chain.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditDraft {
    /// The chain: a clinic id, or [`GLOBAL_CHAIN`].
    pub clinic_id: String,
    pub actor: pentrace_domain::audit::Actor,
    pub action: String,
    pub subject_type: String,
    pub subject_id: String,
    pub old_value: Option<serde_json::Value>,
    pub new_value: Option<serde_json::Value>,
    pub reason: Option<String>,
}

/// Filters of `audit_events`: the events of some actions since a time, for
/// reports over the trail (the fleet checks) rather than its verification.
#[derive(Debug, Clone)]
pub struct AuditQuery {
    /// Wanted actions (`device.auth_refused`, ...); never empty.
    pub actions: Vec<String>,
    /// Events at or after this time.
    pub since: DateTime<Utc>,
    /// Restrict to these chains (`None` = every chain).
    pub clinic_ids: Option<Vec<String>>,
    /// Most events returned, oldest first.
    pub limit: u32,
}

/// An audit event as stored, with its links.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAuditEvent {
    pub event: pentrace_domain::audit::AuditEvent,
    pub prev_hash: pentrace_domain::audit::ChainHash,
    pub hash: pentrace_domain::audit::ChainHash,
}

/// The last event of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub clinic_id: String,
    pub position: u64,
    pub hash: pentrace_domain::audit::ChainHash,
}

/// What a person may do (docs/architecture.md, "People and tenancy").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Every clinic; registry changes.
    Admin,
    /// Their clinics' fleet and flags; may acknowledge, not resolve.
    ClinicOwner,
    /// Their clinics' flags and reports; may acknowledge and resolve.
    ComplianceOfficer,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ClinicOwner => "clinic_owner",
            Role::ComplianceOfficer => "compliance_officer",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "clinic_owner" => Some(Role::ClinicOwner),
            "compliance_officer" => Some(Role::ComplianceOfficer),
            _ => None,
        }
    }
}

/// A named person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: uuid::Uuid,
    pub name: String,
    pub role: Role,
    /// Clinics the user acts for (every clinic for an admin).
    pub clinics: Vec<String>,
}

/// A signed step of a flag's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagStep {
    Acknowledge,
    Resolve,
}

impl FlagStep {
    pub fn as_str(self) -> &'static str {
        match self {
            FlagStep::Acknowledge => "acknowledge",
            FlagStep::Resolve => "resolve",
        }
    }
}

/// The meaning of an electronic signature (21 CFR 11.50).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureMeaning {
    Reviewed,
    Approved,
    Responsible,
}

impl SignatureMeaning {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureMeaning::Reviewed => "reviewed",
            SignatureMeaning::Approved => "approved",
            SignatureMeaning::Responsible => "responsible",
        }
    }
}

/// A signed action on a flag, by a named user, with a mandatory reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagAction {
    pub flag_id: uuid::Uuid,
    pub step: FlagStep,
    pub signer: User,
    pub meaning: SignatureMeaning,
    pub reason: String,
}

/// A stored signed action (for reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagActionRecord {
    pub flag_id: uuid::Uuid,
    pub step: String,
    pub signer_name: String,
    pub meaning: String,
    pub reason: String,
    pub at: DateTime<Utc>,
    /// The flag's audit hash the signature is bound to (hex).
    pub bound_hash: String,
}

/// A message of a registered device that could not be processed, on its
/// way into quarantine: its key is stored (so it is acknowledged and never
/// loops), its raw bytes and the error kept for an admin.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineRow {
    pub id: uuid::Uuid,
    /// The device's clinic: the audit chain the quarantine is recorded in.
    pub clinic_id: String,
    /// The message key as `device_messages` stores it.
    pub message: MessageRow,
    /// `grpc` or `mqtt`.
    pub transport: &'static str,
    pub error: String,
    /// The protobuf `DeviceMessage` as received.
    pub payload: Vec<u8>,
}

/// A quarantined message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineRecord {
    pub id: uuid::Uuid,
    pub device_id: String,
    pub seq: u64,
    pub transport: String,
    pub received_at: DateTime<Utc>,
    pub quarantined_at: DateTime<Utc>,
    pub error: String,
    pub payload: Vec<u8>,
}

impl QuarantineRow {
    /// The `message.quarantined` audit event (by the system: the message
    /// is the device's, the decision to set it aside is the server's).
    pub fn audit_draft(&self) -> AuditDraft {
        AuditDraft {
            clinic_id: self.clinic_id.clone(),
            actor: pentrace_domain::audit::Actor::System,
            action: "message.quarantined".into(),
            subject_type: "message".into(),
            subject_id: format!("{}/{}", self.message.device_id, self.message.seq),
            old_value: None,
            new_value: Some(serde_json::json!({
                "quarantine_id": self.id.to_string(),
                "device_id": self.message.device_id,
                "seq": self.message.seq,
                "kind": self.message.kind,
                "transport": self.transport,
                "payload_bytes": self.payload.len(),
            })),
            reason: Some(self.error.clone()),
        }
    }
}

/// How a device credential authenticates, and for whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    /// A pen's secret (gRPC bearer metadata, MQTT password).
    PenSecret,
    /// A pen's X.509 client certificate from the device CA (mTLS).
    PenCertificate,
    /// A gateway's secret: speaks for every pen of its clinic.
    GatewaySecret,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::PenSecret => "pen_secret",
            CredentialKind::PenCertificate => "pen_certificate",
            CredentialKind::GatewaySecret => "gateway_secret",
        }
    }

    pub fn parse(s: &str) -> Option<CredentialKind> {
        [
            CredentialKind::PenSecret,
            CredentialKind::PenCertificate,
            CredentialKind::GatewaySecret,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// Whether the credential belongs to one pen (rather than a gateway).
    pub fn is_pen(self) -> bool {
        !matches!(self, CredentialKind::GatewaySecret)
    }
}

/// A credential to issue. The secret or certificate itself never reaches
/// the store: only its SHA-256 fingerprint.
#[derive(Debug, Clone)]
pub struct NewDeviceCredential {
    pub kind: CredentialKind,
    /// The device id (pen kinds) or the gateway's name.
    pub principal: String,
    /// Gateways only: the clinic it speaks for (a pen's is its device's).
    pub clinic_id: Option<String>,
    pub fingerprint: [u8; 32],
    pub not_after: Option<DateTime<Utc>>,
    /// Revoke the principal's other valid credentials of the same kind in
    /// the same transaction (rotation).
    pub replace: bool,
}

/// What the registry says about a new credential's principal, looked up
/// by each store; [`RegistryFacts::clinic_of`] decides.
#[derive(Debug, Clone, Default)]
pub struct RegistryFacts {
    /// The clinic of the device whose id is the principal, if one is.
    pub device_clinic: Option<String>,
    /// Whether the gateway's clinic is registered.
    pub clinic_exists: bool,
    /// Another clinic the principal already holds credentials for.
    pub other_clinic: Option<String>,
}

impl RegistryFacts {
    /// The clinic the credential belongs to: a pen's is its device's; a
    /// gateway needs a registered clinic, a name no device has, and no
    /// credentials of another clinic under the same name (its MQTT
    /// username would be ambiguous).
    pub fn clinic_of(self, new: &NewDeviceCredential) -> crate::StoreResult<String> {
        use crate::StoreError::{Invalid, NotFound};
        if new.kind.is_pen() {
            return self
                .device_clinic
                .ok_or_else(|| NotFound(format!("device {:?}", new.principal)));
        }
        if self.device_clinic.is_some() {
            return Err(Invalid(format!(
                "{:?} is a device id; a gateway needs a name of its own",
                new.principal
            )));
        }
        let clinic = new
            .clinic_id
            .clone()
            .ok_or_else(|| Invalid("a gateway credential needs its clinic".into()))?;
        if !self.clinic_exists {
            return Err(NotFound(format!("clinic {clinic:?}")));
        }
        match self.other_clinic {
            Some(c) => Err(Invalid(format!(
                "gateway {:?} already speaks for clinic {c:?}",
                new.principal
            ))),
            None => Ok(clinic),
        }
    }
}

/// A device credential as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCredential {
    pub id: uuid::Uuid,
    pub kind: CredentialKind,
    pub principal: String,
    pub clinic_id: String,
    pub fingerprint: [u8; 32],
    pub not_after: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl DeviceCredential {
    /// The device id of a pen credential.
    pub fn device_id(&self) -> Option<&str> {
        self.kind.is_pen().then_some(self.principal.as_str())
    }

    /// The audit event of issuing or revoking it (never the secret).
    pub fn audit_draft(&self, action: &str, actor: &Actor, reason: Option<String>) -> AuditDraft {
        AuditDraft {
            clinic_id: self.clinic_id.clone(),
            actor: actor.clone(),
            action: action.into(),
            subject_type: "device_credential".into(),
            subject_id: self.id.to_string(),
            old_value: None,
            new_value: Some(serde_json::json!({
                "credential_id": self.id.to_string(),
                "kind": self.kind.as_str(),
                "principal": self.principal,
                "fingerprint_sha256": hex::encode(self.fingerprint),
                "not_after": self.not_after,
            })),
            reason,
        }
    }
}
