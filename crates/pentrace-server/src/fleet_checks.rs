//! Fleet checks in the style of AWS IoT Device Defender's audit (issue 13):
//! credentials used by two connections at once, revoked or expired
//! credentials still trying, pen certificates near expiry, pens silent for
//! longer than a policy value. One implementation serves the Fleet API
//! (`CheckFleet`) and `pentrace audit fleet`.
//!
//! The evidence is what pentrace already keeps: the refusal and shared-use
//! events of the audit trail (written by [`crate::device_auth`]), the
//! credentials and the devices' last messages. [`judge`] is plain and
//! takes the clock as a parameter; [`run`] only gathers its inputs.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use pentrace_domain::audit::AuditEvent;
use pentrace_store::{
    AuditQuery, CredentialKind, DeviceCredential, DeviceStatus, Store, StoreResult,
};
use uuid::Uuid;

/// Audit actions the checks read.
const REFUSED: &str = "device.auth_refused";
const SHARED: &str = "device.credential_shared";

/// Most audit events one check reads. Refusals are audited at most 60 a
/// minute (per credential once a minute), so a day holds at most 86,400;
/// beyond this the report says it is incomplete rather than grow without
/// bound.
pub const MAX_EVENTS: u32 = 50_000;

/// What the checks look for, and how far back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetPolicy {
    /// Audit events considered: those of the last `lookback`.
    pub lookback: Duration,
    /// A pen certificate expiring within this is reported.
    pub certificate_warning: Duration,
    /// A pen in service with no message for longer than this is reported.
    pub silent_after: Duration,
}

impl Default for FleetPolicy {
    fn default() -> Self {
        FleetPolicy {
            lookback: Duration::hours(24),
            certificate_warning: Duration::days(30),
            silent_after: Duration::hours(24),
        }
    }
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FindingKind {
    /// One pen credential on two or more connections at once: copied to a
    /// second device, or stolen.
    CredentialShared,
    /// A revoked credential is still presented.
    RevokedCredentialInUse,
    /// An expired certificate is still presented.
    ExpiredCredentialInUse,
    /// A pen certificate expires within the warning period (or has).
    CertificateExpiring,
    /// A pen in service has sent nothing for longer than the policy.
    PenSilent,
}

impl FindingKind {
    /// Stable name, as in the JSON output and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::CredentialShared => "credential_shared",
            FindingKind::RevokedCredentialInUse => "revoked_credential_in_use",
            FindingKind::ExpiredCredentialInUse => "expired_credential_in_use",
            FindingKind::CertificateExpiring => "certificate_expiring",
            FindingKind::PenSilent => "pen_silent",
        }
    }
}

/// One thing an operator should look at.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    #[serde(serialize_with = "kind_name")]
    pub kind: FindingKind,
    pub clinic_id: String,
    /// The pen's device id, or the gateway's name.
    pub principal: String,
    pub credential_id: Option<Uuid>,
    /// Attempts or connections seen (at least this many: audits of a burst
    /// are rate-limited, and the suppressed ones are counted in).
    pub occurrences: u64,
    pub first_at: Option<DateTime<Utc>>,
    pub last_at: Option<DateTime<Utc>>,
    /// One sentence for a person.
    pub detail: String,
}

fn kind_name<S: serde::Serializer>(k: &FindingKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(k.as_str())
}

/// The checks' result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FleetReport {
    pub checked_at: DateTime<Utc>,
    /// Findings, most serious kind first, then by clinic and principal.
    pub findings: Vec<Finding>,
    /// The audit events reached [`MAX_EVENTS`]: the counts are a floor and
    /// later events were not read.
    pub incomplete: bool,
}

/// What [`judge`] looks at.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// Refusal and shared-use events of the lookback period.
    pub events: Vec<AuditEvent>,
    pub credentials: Vec<DeviceCredential>,
    pub devices: Vec<DeviceStatus>,
}

/// Gathers the evidence of `clinics` (`None` = every clinic) and judges it.
pub async fn run(
    store: &dyn Store,
    clinics: Option<&[String]>,
    policy: &FleetPolicy,
    now: DateTime<Utc>,
) -> StoreResult<FleetReport> {
    let events = store
        .audit_events(&AuditQuery {
            actions: vec![REFUSED.into(), SHARED.into()],
            since: now - policy.lookback,
            clinic_ids: clinics.map(<[String]>::to_vec),
            limit: MAX_EVENTS,
        })
        .await?;
    let incomplete = events.len() >= MAX_EVENTS as usize;
    let credentials = store.list_device_credentials(clinics).await?;
    let mut devices = Vec::new();
    match clinics {
        None => devices = store.list_devices(None, now).await?,
        Some(cs) => {
            for c in cs {
                devices.extend(store.list_devices(Some(c), now).await?);
            }
        }
    }
    let evidence = Evidence {
        events,
        credentials,
        devices,
    };
    Ok(FleetReport {
        checked_at: now,
        findings: judge(&evidence, policy, now),
        incomplete,
    })
}

/// Every finding the evidence supports, most serious kind first.
pub fn judge(evidence: &Evidence, policy: &FleetPolicy, now: DateTime<Utc>) -> Vec<Finding> {
    let mut findings = from_events(&evidence.events);
    findings.extend(expiring_certificates(&evidence.credentials, policy, now));
    findings.extend(silent_pens(evidence, policy, now));
    findings.sort_by(|a, b| {
        (a.kind, &a.clinic_id, &a.principal, a.first_at).cmp(&(
            b.kind,
            &b.clinic_id,
            &b.principal,
            b.first_at,
        ))
    });
    findings
}

/// Shared credentials and retired credentials still trying, one finding
/// per credential and kind.
fn from_events(events: &[AuditEvent]) -> Vec<Finding> {
    let mut by_key: BTreeMap<(FindingKind, Uuid), (Finding, BTreeSet<String>)> = BTreeMap::new();
    for e in events {
        let field = |name: &str| e.new_value.as_ref().and_then(|v| v.get(name));
        let text = |name: &str| field(name).and_then(|v| v.as_str());
        let kind = match (e.action.as_str(), text("reason")) {
            (SHARED, _) => FindingKind::CredentialShared,
            (REFUSED, Some("revoked")) => FindingKind::RevokedCredentialInUse,
            (REFUSED, Some("expired")) => FindingKind::ExpiredCredentialInUse,
            _ => continue,
        };
        // Refusals of unknown credentials name none: nothing to report on.
        let Ok(credential_id) = e.subject_id.parse::<Uuid>() else {
            continue;
        };
        let (f, transports) = by_key.entry((kind, credential_id)).or_insert_with(|| {
            let finding = Finding {
                kind,
                clinic_id: e.clinic_id.clone(),
                principal: text("principal").unwrap_or_default().to_owned(),
                credential_id: Some(credential_id),
                occurrences: 0,
                first_at: Some(e.at),
                last_at: Some(e.at),
                detail: String::new(),
            };
            (finding, BTreeSet::new())
        });
        // An audited event stands for itself and the burst suppressed
        // before it.
        let suppressed = field("suppressed_before").and_then(serde_json::Value::as_u64);
        f.occurrences += 1 + suppressed.unwrap_or(0);
        f.first_at = f.first_at.min(Some(e.at));
        f.last_at = f.last_at.max(Some(e.at));
        transports.insert(text("transport").unwrap_or("unknown transport").to_owned());
    }
    by_key
        .into_values()
        .map(|(mut f, transports)| {
            let (one, many) = match f.kind {
                FindingKind::CredentialShared => ("connection", "connections"),
                _ => ("attempt", "attempts"),
            };
            let what = match f.kind {
                FindingKind::CredentialShared => "opened while another was open",
                FindingKind::RevokedCredentialInUse => "with the revoked credential",
                _ => "with the expired certificate",
            };
            let noun = if f.occurrences == 1 { one } else { many };
            let over = transports.into_iter().collect::<Vec<_>>().join(", ");
            f.detail = format!("{} {noun} {what} (over {over})", f.occurrences);
            f
        })
        .collect()
}

fn live(c: &DeviceCredential, now: DateTime<Utc>) -> bool {
    c.revoked_at.is_none() && c.not_after.is_none_or(|t| t > now)
}

fn expiring_certificates(
    credentials: &[DeviceCredential],
    policy: &FleetPolicy,
    now: DateTime<Utc>,
) -> Vec<Finding> {
    credentials
        .iter()
        .filter(|c| c.kind == CredentialKind::PenCertificate && c.revoked_at.is_none())
        .filter_map(|c| {
            let not_after = c.not_after?;
            if not_after > now + policy.certificate_warning {
                return None;
            }
            let detail = if not_after <= now {
                format!("certificate expired at {}", not_after.to_rfc3339())
            } else {
                format!(
                    "certificate expires at {} (in {})",
                    not_after.to_rfc3339(),
                    span(not_after - now)
                )
            };
            Some(Finding {
                kind: FindingKind::CertificateExpiring,
                clinic_id: c.clinic_id.clone(),
                principal: c.principal.clone(),
                credential_id: Some(c.id),
                occurrences: 1,
                first_at: Some(c.created_at),
                last_at: Some(not_after),
                detail,
            })
        })
        .collect()
}

/// Pens in service — covered by a live credential of their own or of a
/// gateway of their clinic — silent for longer than the policy. A pen whose
/// every credential is revoked is retired, not silent; a pen nothing lets
/// in cannot speak, so silence says nothing about it.
fn silent_pens(evidence: &Evidence, policy: &FleetPolicy, now: DateTime<Utc>) -> Vec<Finding> {
    let cutoff = now - policy.silent_after;
    evidence
        .devices
        .iter()
        .filter_map(|d| {
            let covering = evidence.credentials.iter().filter(|c| {
                live(c, now)
                    && match c.kind {
                        CredentialKind::GatewaySecret => c.clinic_id == d.device.clinic_id,
                        _ => c.principal == d.device.id,
                    }
            });
            let since = covering.map(|c| c.created_at).min()?;
            let detail = match d.last_seen {
                Some(seen) if seen < cutoff => format!(
                    "no message for {} (last at {})",
                    span(now - seen),
                    seen.to_rfc3339()
                ),
                None if since < cutoff => format!(
                    "no message since its credential was issued at {}",
                    since.to_rfc3339()
                ),
                _ => return None,
            };
            Some(Finding {
                kind: FindingKind::PenSilent,
                clinic_id: d.device.clinic_id.clone(),
                principal: d.device.id.clone(),
                credential_id: None,
                occurrences: 1,
                first_at: d.last_seen.or(Some(since)),
                last_at: d.last_seen,
                detail,
            })
        })
        .collect()
}

/// A period for a person: "3 d 4 h", "5 h 12 min", "7 min".
fn span(d: Duration) -> String {
    let minutes = d.num_minutes().max(0);
    let (days, hours, mins) = (minutes / 1440, minutes / 60 % 24, minutes % 60);
    match (days, hours) {
        (0, 0) => format!("{mins} min"),
        (0, _) => format!("{hours} h {mins} min"),
        _ => format!("{days} d {hours} h"),
    }
}

#[cfg(test)]
#[path = "fleet_checks_tests.rs"]
mod tests;
