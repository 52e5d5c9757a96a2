//! Device identity (issue 13): who is sending. Every pen has its own
//! credential, issued by pentrace and stored only as a SHA-256 fingerprint:
//! a secret (`pds_…`: gRPC `authorization: Bearer` metadata, the MQTT
//! password) or an X.509 client certificate from pentrace's CA (mTLS). A
//! gateway credential speaks for every pen of one clinic.
//!
//! Refused attempts are evidence (21 CFR 11.300(d)): each is counted by
//! reason and written to the audit trail, at most once a minute per
//! (reason, credential or peer) and [`AUDIT_PER_MINUTE`] in all, so an
//! attack cannot flood the chains; the next event written for a key says
//! how many were suppressed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pentrace_domain::audit::Actor;
use pentrace_ingest::metrics::Label;
use pentrace_store::{AuditDraft, CredentialKind, DeviceCredential, GLOBAL_CHAIN, Store};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Prefix of device secrets.
pub const SECRET_PREFIX: &str = "pds_";

/// How long a credential check or an audit write may wait for the store:
/// with the database away, sqlx waits for a connection far longer (its
/// acquire timeout), and a handshake must not hang that long.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often an open connection checks that its credential is still valid
/// (a revoked one is ended): a gRPC `Telemetry.Ingest` stream and an
/// embedded-broker connection alike.
pub const REVALIDATE_EVERY: Duration = Duration::from_secs(5);

/// A store call bounded by [`STORE_TIMEOUT`]; an error or a timeout is
/// [`AuthFailure::Unavailable`].
async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, AuthFailure> {
    match tokio::time::timeout(STORE_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot {what}");
            Err(AuthFailure::Unavailable)
        }
        Err(_) => {
            tracing::warn!("cannot {what}: the store did not answer within {STORE_TIMEOUT:?}");
            Err(AuthFailure::Unavailable)
        }
    }
}

/// Audit events of refused attempts written per minute, all keys together.
pub const AUDIT_PER_MINUTE: u32 = 60;
const AUDIT_WINDOW: Duration = Duration::from_secs(60);

/// A new random device secret: `pds_` and 256 bits in hex.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    // The OS's generator failing is not something to carry on from.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the operating system's random generator");
    format!("{SECRET_PREFIX}{}", hex::encode(bytes))
}

/// What the store keeps of a secret or a certificate (DER).
pub fn fingerprint(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A principal name that is safe as a device id, an MQTT username, a client
/// id and a topic level: 1-128 of `A-Z a-z 0-9 . _ -`.
pub fn check_principal(name: &str) -> Result<(), String> {
    let ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} cannot have a device credential: use 1-128 of A-Z a-z 0-9 . _ -"
        ))
    }
}

/// An authenticated sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceIdentity {
    Pen {
        credential_id: Uuid,
        device_id: String,
        clinic_id: String,
    },
    Gateway {
        credential_id: Uuid,
        name: String,
        clinic_id: String,
    },
}

impl DeviceIdentity {
    fn of(c: &DeviceCredential) -> DeviceIdentity {
        match c.kind {
            CredentialKind::GatewaySecret => DeviceIdentity::Gateway {
                credential_id: c.id,
                name: c.principal.clone(),
                clinic_id: c.clinic_id.clone(),
            },
            _ => DeviceIdentity::Pen {
                credential_id: c.id,
                device_id: c.principal.clone(),
                clinic_id: c.clinic_id.clone(),
            },
        }
    }

    /// The device id or gateway name: the MQTT username and client id.
    pub fn principal(&self) -> &str {
        match self {
            DeviceIdentity::Pen { device_id, .. } => device_id,
            DeviceIdentity::Gateway { name, .. } => name,
        }
    }

    pub fn credential_id(&self) -> Uuid {
        match self {
            DeviceIdentity::Pen { credential_id, .. }
            | DeviceIdentity::Gateway { credential_id, .. } => *credential_id,
        }
    }

    pub fn clinic_id(&self) -> &str {
        match self {
            DeviceIdentity::Pen { clinic_id, .. } | DeviceIdentity::Gateway { clinic_id, .. } => {
                clinic_id
            }
        }
    }
}

/// What [`DeviceAuthenticator::may_send_for`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// The device is registered and the identity speaks for it.
    Registered,
    /// A gateway's message for a device not registered anywhere.
    Unregistered,
}

/// Why a device was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("no device credential (authorization: Bearer pds_…, or a client certificate)")]
    Missing,
    #[error("unknown device credential")]
    Unknown,
    #[error("device credential {credential_id} of {principal} is revoked")]
    Revoked {
        credential_id: Uuid,
        principal: String,
        clinic_id: String,
    },
    #[error("device certificate {credential_id} of {principal} has expired")]
    Expired {
        credential_id: Uuid,
        principal: String,
        clinic_id: String,
    },
    /// Authenticated, but not allowed to speak for that device.
    #[error("{principal} may not send for device {device_id:?}: {why}")]
    NotPermitted {
        credential_id: Uuid,
        principal: String,
        clinic_id: String,
        device_id: String,
        why: &'static str,
    },
    /// A transport's own rule (wrong MQTT client id, a denied topic).
    #[error("{principal}: {what}")]
    Denied {
        credential_id: Option<Uuid>,
        principal: String,
        clinic_id: Option<String>,
        what: String,
    },
    #[error("device credentials cannot be checked: the store is unavailable")]
    Unavailable,
}

impl AuthFailure {
    /// The metric label and audit reason.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Unknown => "unknown",
            AuthFailure::Revoked { .. } => "revoked",
            AuthFailure::Expired { .. } => "expired",
            AuthFailure::NotPermitted { .. } => "not_permitted",
            AuthFailure::Denied { .. } => "denied",
            AuthFailure::Unavailable => "unavailable",
        }
    }

    /// Whether the caller proved nothing (as opposed to being refused a
    /// thing it asked for): gRPC UNAUTHENTICATED rather than PERMISSION_DENIED.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            AuthFailure::Missing
                | AuthFailure::Unknown
                | AuthFailure::Revoked { .. }
                | AuthFailure::Expired { .. }
        )
    }

    /// The credential and clinic it concerns, when known.
    fn subject(&self) -> (Option<Uuid>, Option<&str>, Option<&str>) {
        match self {
            AuthFailure::Revoked {
                credential_id,
                principal,
                clinic_id,
            }
            | AuthFailure::Expired {
                credential_id,
                principal,
                clinic_id,
            }
            | AuthFailure::NotPermitted {
                credential_id,
                principal,
                clinic_id,
                ..
            } => (Some(*credential_id), Some(principal), Some(clinic_id)),
            AuthFailure::Denied {
                credential_id,
                principal,
                clinic_id,
                ..
            } => (*credential_id, Some(principal), clinic_id.as_deref()),
            _ => (None, None, None),
        }
    }
}

/// Counters of device authentication (`pentrace_device_auth_*`).
#[derive(Debug, Clone, Default)]
pub struct AuthMetrics {
    /// Refused attempts by reason.
    pub refused: Family<Label, Counter>,
    /// Refused attempts not written to the audit trail (rate limit).
    pub audit_suppressed: Counter,
    /// Times a credential was in use on two connections at once.
    pub shared: Counter,
}

impl AuthMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("pentrace_device_auth");
        r.register(
            "refused",
            "Refused device attempts, by reason",
            self.refused.clone(),
        );
        r.register(
            "audit_suppressed",
            "Refused attempts not audited because of the rate limit",
            self.audit_suppressed.clone(),
        );
        r.register(
            "shared",
            "Credentials seen on two connections at once",
            self.shared.clone(),
        );
    }
}

/// At most one audit event per key per window, and a global budget.
#[derive(Debug)]
struct AuditLimiter {
    window_start: Instant,
    written: u32,
    /// Key → (last written, suppressed since).
    keys: HashMap<String, (Instant, u64)>,
}

impl AuditLimiter {
    fn new() -> AuditLimiter {
        AuditLimiter {
            window_start: Instant::now(),
            written: 0,
            keys: HashMap::new(),
        }
    }

    /// `Some(suppressed before this one)` when an event may be written now.
    fn admit(&mut self, key: String, now: Instant) -> Option<u64> {
        if now.duration_since(self.window_start) >= AUDIT_WINDOW {
            self.window_start = now;
            self.written = 0;
            // Keep keys with suppressed attempts, so their count reaches
            // the next event; past a bound (an attacker rotating
            // addresses) only recent keys stay.
            let crowded = self.keys.len() > 10_000;
            self.keys.retain(|_, (at, suppressed)| {
                now.duration_since(*at) < AUDIT_WINDOW || (*suppressed > 0 && !crowded)
            });
        }
        let entry = self.keys.entry(key).or_insert((now - AUDIT_WINDOW * 2, 0));
        let quiet = now.duration_since(entry.0) >= AUDIT_WINDOW;
        if quiet && self.written < AUDIT_PER_MINUTE {
            self.written += 1;
            let suppressed = entry.1;
            *entry = (now, 0);
            Some(suppressed)
        } else {
            entry.1 += 1;
            None
        }
    }
}

/// Checks device credentials; one per server process (cheap to clone).
#[derive(Debug, Clone)]
pub struct DeviceAuthenticator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    metrics: AuthMetrics,
    limiter: Mutex<AuditLimiter>,
    /// Open connections per credential.
    live: Mutex<HashMap<Uuid, usize>>,
    /// Fingerprints of the credentials authenticated so far, for
    /// [`DeviceAuthenticator::still_valid`] (one entry per credential).
    fingerprints: Mutex<HashMap<Uuid, [u8; 32]>>,
}

impl DeviceAuthenticator {
    pub fn new(store: Arc<dyn Store>, metrics: AuthMetrics) -> DeviceAuthenticator {
        DeviceAuthenticator {
            inner: Arc::new(Inner {
                store,
                metrics,
                limiter: Mutex::new(AuditLimiter::new()),
                live: Mutex::new(HashMap::new()),
                fingerprints: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn metrics(&self) -> &AuthMetrics {
        &self.inner.metrics
    }

    /// The identity a secret proves.
    pub async fn by_secret(&self, secret: &str) -> Result<DeviceIdentity, AuthFailure> {
        if secret.is_empty() {
            return Err(AuthFailure::Missing);
        }
        self.by_fingerprint(&fingerprint(secret.as_bytes())).await
    }

    /// The identity a client certificate (DER, verified against the CA by
    /// TLS) proves: it must be one pentrace issued and has not revoked.
    pub async fn by_certificate(&self, der: &[u8]) -> Result<DeviceIdentity, AuthFailure> {
        self.by_fingerprint(&fingerprint(der)).await
    }

    async fn by_fingerprint(&self, fp: &[u8; 32]) -> Result<DeviceIdentity, AuthFailure> {
        let credential = bounded(
            "check a device credential",
            self.inner.store.device_credential(fp),
        )
        .await?
        .ok_or(AuthFailure::Unknown)?;
        valid(&credential)?;
        if let Ok(mut known) = self.inner.fingerprints.lock() {
            known.insert(credential.id, credential.fingerprint);
        }
        Ok(DeviceIdentity::of(&credential))
    }

    /// Whether the identity's credential is still valid (revocation reaches
    /// open connections through this).
    pub async fn still_valid(&self, identity: &DeviceIdentity) -> Result<(), AuthFailure> {
        let known = self
            .inner
            .fingerprints
            .lock()
            .ok()
            .and_then(|f| f.get(&identity.credential_id()).copied());
        let fp = known.ok_or(AuthFailure::Unknown)?;
        self.by_fingerprint(&fp).await.map(drop)
    }

    /// Whether the identity may send messages of `device_id`: a pen only its
    /// own, a gateway those of the pens of its clinic. A gateway's message
    /// for a device nobody registered goes on to the pipeline, which refuses
    /// it as an unknown device (or registers it to the default clinic with
    /// `auto_register`); [`Permit::Unregistered`] says so, and that it must
    /// not be remembered as permitted.
    pub async fn may_send_for(
        &self,
        identity: &DeviceIdentity,
        device_id: &str,
    ) -> Result<Permit, AuthFailure> {
        let refuse = |why| AuthFailure::NotPermitted {
            credential_id: identity.credential_id(),
            principal: identity.principal().to_owned(),
            clinic_id: identity.clinic_id().to_owned(),
            device_id: device_id.to_owned(),
            why,
        };
        match identity {
            DeviceIdentity::Pen { device_id: own, .. } if own == device_id => {
                Ok(Permit::Registered)
            }
            DeviceIdentity::Pen { .. } => Err(refuse("a pen sends only its own messages")),
            DeviceIdentity::Gateway { clinic_id, .. } => {
                let clinic = bounded(
                    "look up a device's clinic",
                    self.inner.store.device_clinic(device_id),
                )
                .await?;
                match clinic {
                    Some(c) if &c == clinic_id => Ok(Permit::Registered),
                    None => Ok(Permit::Unregistered),
                    Some(_) => Err(refuse(
                        "a gateway sends only for the registered pens of its clinic",
                    )),
                }
            }
        }
    }

    /// Counts a refused attempt and audits it (rate-limited).
    pub async fn refused(
        &self,
        failure: &AuthFailure,
        transport: &'static str,
        peer: Option<SocketAddr>,
    ) {
        let reason = failure.reason();
        self.inner
            .metrics
            .refused
            .get_or_create(&Label { name: reason })
            .inc();
        tracing::info!(reason, transport, peer = ?peer, detail = %failure, "device refused");
        let (credential_id, principal, clinic_id) = failure.subject();
        // Keyed by what the attacker cannot vary cheaply: the credential
        // when known, else the peer's address.
        let key = match (credential_id, peer) {
            (Some(id), _) => format!("{reason}/{id}"),
            (None, Some(peer)) => format!("{reason}/{}", peer.ip()),
            (None, None) => reason.to_owned(),
        };
        let admitted = self
            .inner
            .limiter
            .lock()
            .map(|mut l| l.admit(key, Instant::now()))
            .unwrap_or(None);
        let Some(suppressed) = admitted else {
            self.inner.metrics.audit_suppressed.inc();
            return;
        };
        let draft = AuditDraft {
            clinic_id: clinic_id.unwrap_or(GLOBAL_CHAIN).to_owned(),
            actor: principal.map_or(Actor::System, |p| Actor::Device(p.to_owned())),
            action: "device.auth_refused".into(),
            subject_type: "device_credential".into(),
            subject_id: credential_id.map_or_else(|| "-".to_owned(), |id| id.to_string()),
            old_value: None,
            new_value: Some(serde_json::json!({
                "reason": reason,
                "transport": transport,
                "peer": peer.map(|p| p.ip().to_string()),
                "principal": principal,
                "suppressed_before": suppressed,
            })),
            reason: Some(failure.to_string()),
        };
        // Logged by `bounded`; the count above stands either way.
        let _ = bounded(
            "audit a refused device attempt",
            self.inner.store.append_audit(&[draft]),
        )
        .await;
    }

    /// Tracks an open connection of the identity's credential until the
    /// guard is dropped; a second one at once is counted and audited (a
    /// credential copied to two pens, or a stolen one).
    pub fn connected(&self, identity: &DeviceIdentity, transport: &'static str) -> ConnectionGuard {
        let id = identity.credential_id();
        let open = self
            .inner
            .live
            .lock()
            .map(|mut live| {
                let n = live.entry(id).or_default();
                *n += 1;
                *n
            })
            .unwrap_or(1);
        // Gateways hold several streams by design.
        if open > 1 && matches!(identity, DeviceIdentity::Pen { .. }) {
            self.inner.metrics.shared.inc();
            let this = self.clone();
            let failure = AuthFailure::Denied {
                credential_id: Some(id),
                principal: identity.principal().to_owned(),
                clinic_id: Some(identity.clinic_id().to_owned()),
                what: format!("credential in use on {open} connections at once"),
            };
            tokio::spawn(async move { this.shared_use(&failure, transport).await });
        }
        ConnectionGuard {
            inner: self.inner.clone(),
            credential_id: id,
        }
    }

    async fn shared_use(&self, failure: &AuthFailure, transport: &'static str) {
        let Some(suppressed) =
            self.inner.limiter.lock().ok().and_then(|mut l| {
                l.admit(format!("shared/{:?}", failure.subject().0), Instant::now())
            })
        else {
            return;
        };
        let (credential_id, principal, clinic_id) = failure.subject();
        let draft = AuditDraft {
            clinic_id: clinic_id.unwrap_or(GLOBAL_CHAIN).to_owned(),
            actor: Actor::System,
            action: "device.credential_shared".into(),
            subject_type: "device_credential".into(),
            subject_id: credential_id.map_or_else(String::new, |id| id.to_string()),
            old_value: None,
            new_value: Some(serde_json::json!({
                "principal": principal,
                "transport": transport,
                "suppressed_before": suppressed,
            })),
            reason: Some(failure.to_string()),
        };
        let _ = bounded(
            "audit a shared credential",
            self.inner.store.append_audit(&[draft]),
        )
        .await;
    }

    /// Open connections of a credential now.
    pub fn open_connections(&self, credential_id: Uuid) -> usize {
        self.inner
            .live
            .lock()
            .map(|l| l.get(&credential_id).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

fn valid(c: &DeviceCredential) -> Result<(), AuthFailure> {
    if c.revoked_at.is_some() {
        return Err(AuthFailure::Revoked {
            credential_id: c.id,
            principal: c.principal.clone(),
            clinic_id: c.clinic_id.clone(),
        });
    }
    if c.not_after.is_some_and(|t| t < chrono::Utc::now()) {
        return Err(AuthFailure::Expired {
            credential_id: c.id,
            principal: c.principal.clone(),
            clinic_id: c.clinic_id.clone(),
        });
    }
    Ok(())
}

/// An open connection of a credential; see [`DeviceAuthenticator::connected`].
#[derive(Debug)]
pub struct ConnectionGuard {
    inner: Arc<Inner>,
    credential_id: Uuid,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Ok(mut live) = self.inner.live.lock()
            && let Some(n) = live.get_mut(&self.credential_id)
        {
            *n -= 1;
            if *n == 0 {
                live.remove(&self.credential_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_prefixed() {
        let (a, b) = (new_secret(), new_secret());
        assert!(a.starts_with(SECRET_PREFIX) && a.len() == 68);
        assert_ne!(a, b);
    }

    #[test]
    fn principals_are_topic_safe() {
        assert!(check_principal("pen-1.A_b").is_ok());
        for bad in ["", "a/b", "+", "#", "a b", "é", &"x".repeat(129)] {
            assert!(check_principal(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_audit_limiter_writes_once_a_minute_per_key_and_counts_the_rest() {
        let mut l = AuditLimiter::new();
        let t0 = Instant::now();
        assert_eq!(l.admit("k".into(), t0), Some(0));
        assert_eq!(l.admit("k".into(), t0 + Duration::from_secs(1)), None);
        assert_eq!(l.admit("k".into(), t0 + Duration::from_secs(2)), None);
        assert_eq!(
            l.admit("other".into(), t0 + Duration::from_secs(2)),
            Some(0)
        );
        assert_eq!(l.admit("k".into(), t0 + Duration::from_secs(61)), Some(2));
    }

    #[test]
    fn the_audit_limiter_has_a_global_budget() {
        let mut l = AuditLimiter::new();
        let t0 = Instant::now();
        let written = (0..1000)
            .filter(|i| l.admit(format!("k{i}"), t0).is_some())
            .count();
        assert_eq!(written, AUDIT_PER_MINUTE as usize);
    }
}
