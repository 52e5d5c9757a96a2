//! The sterility report: which cartridge touched which session of a clinic
//! in a period, every flag with its signed actions (21 CFR 11.50: signer's
//! name, time, meaning, reason), and whether the clinic's audit chain holds.

use std::collections::HashMap;

use pentrace_store::{Clinic, FlagActionRecord, FlagRecord, Store};
use serde::Serialize;

use super::{Period, ReportError, ReportResult, SessionLine, generated_at, utc};
use crate::audit_trail::{self, ChainReport};

/// What a period covers, in words, so a reader need not guess.
const SESSIONS_RULE: &str = "sessions of the clinic that started at or after `from` 00:00 UTC \
     and before `to` 00:00 UTC (device time of the session start)";
const AUDIT_SCOPE: &str = "the whole chain of the clinic from its first event, as it stood \
     when the report was generated (before this report's own report.exported event)";
const FLAGS_RULE: &str = "flags of the clinic raised in the same span, and every flag of the \
     sessions above whenever it was raised";

/// A clinic's sterility record for a period.
#[derive(Debug, Clone, Serialize)]
pub struct SterilityReport {
    /// The report's id (the subject of its `report.exported` audit event).
    pub id: uuid::Uuid,
    /// Always `"sterility"`.
    pub kind: &'static str,
    pub generated_at: String,
    pub times: &'static str,
    pub clinic: ClinicLine,
    pub period: PeriodLine,
    pub sessions: Vec<SessionLine>,
    pub flags: Vec<FlagLine>,
    pub audit: AuditLine,
}

/// The clinic the report is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClinicLine {
    pub id: String,
    pub name: String,
    pub time_zone: String,
}

/// The period and what it selects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeriodLine {
    /// First day, inclusive.
    pub from: String,
    /// Day after the last, exclusive.
    pub to: String,
    pub sessions: &'static str,
    pub flags: &'static str,
}

/// A flag with its signed actions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlagLine {
    pub flag_id: String,
    pub kind: &'static str,
    pub severity: &'static str,
    pub state: &'static str,
    pub device_id: String,
    pub session_id: Option<String>,
    pub cartridge_id: Option<String>,
    pub raised_at: String,
    pub detail: String,
    pub actions: Vec<ActionLine>,
}

/// One electronic signature on a flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionLine {
    /// `acknowledge` or `resolve`.
    pub step: String,
    /// The signer's printed name.
    pub signer_name: String,
    pub signed_at: String,
    /// `reviewed`, `approved` or `responsible`.
    pub meaning: String,
    pub reason: String,
    /// The flag's audit hash the signature is bound to (21 CFR 11.70).
    pub bound_hash: String,
}

/// The verification of the clinic's audit chain when the report was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditLine {
    pub chain: String,
    /// `OK` or `BROKEN`.
    pub status: &'static str,
    /// Events recomputed and found intact, from the first.
    pub events_verified: u64,
    /// Hash of the last verified event: ties the report to the chain state
    /// (compare with a signed checkpoint).
    pub head_hash: Option<String>,
    /// Position of the first broken link.
    pub broken_at: Option<u64>,
    pub broken_reason: Option<String>,
    pub checkpoints_ok: usize,
    /// The verifier's one-line verdict.
    pub summary: String,
    /// What was verified, in words.
    pub scope: &'static str,
}

impl AuditLine {
    /// Whether the chain held.
    pub fn ok(&self) -> bool {
        self.broken_at.is_none()
    }
}

impl SterilityReport {
    /// Reads everything the report shows; fails if the clinic is unknown.
    pub async fn build(
        store: &dyn Store,
        clinic_id: &str,
        period: Period,
    ) -> ReportResult<SterilityReport> {
        let clinic = find_clinic(store, clinic_id).await?;
        let sessions = store
            .sessions_in_period(&clinic.id, period.start(), period.end())
            .await?;
        let flags = store
            .flags_in_period(&clinic.id, period.start(), period.end())
            .await?;
        let ids: Vec<uuid::Uuid> = flags.iter().map(|f| f.id).collect();
        let actions = store.flag_actions(&ids).await?;
        let audit = verify_chain(store, &clinic.id).await?;
        Ok(SterilityReport {
            id: uuid::Uuid::new_v4(),
            kind: "sterility",
            generated_at: generated_at(),
            times: "UTC",
            clinic: ClinicLine {
                id: clinic.id,
                name: clinic.name,
                time_zone: clinic.time_zone,
            },
            period: PeriodLine {
                from: period.from().to_string(),
                to: period.to().to_string(),
                sessions: SESSIONS_RULE,
                flags: FLAGS_RULE,
            },
            sessions: sessions.into_iter().map(SessionLine::from).collect(),
            flags: flag_lines(flags, actions),
            audit,
        })
    }
}

/// The clinic, or a clear error naming it.
async fn find_clinic(store: &dyn Store, clinic_id: &str) -> ReportResult<Clinic> {
    store
        .list_clinics()
        .await?
        .into_iter()
        .find(|c| c.id == clinic_id)
        .ok_or_else(|| ReportError::Invalid(format!("no clinic {clinic_id:?} is registered")))
}

/// Flags in order, each with its actions in signing order.
fn flag_lines(flags: Vec<FlagRecord>, actions: Vec<FlagActionRecord>) -> Vec<FlagLine> {
    let mut by_flag: HashMap<uuid::Uuid, Vec<ActionLine>> = HashMap::new();
    for a in actions {
        by_flag.entry(a.flag_id).or_default().push(ActionLine {
            step: a.step,
            signer_name: a.signer_name,
            signed_at: utc(a.at),
            meaning: a.meaning,
            reason: a.reason,
            bound_hash: a.bound_hash,
        });
    }
    flags
        .into_iter()
        .map(|f| FlagLine {
            flag_id: f.id.to_string(),
            kind: f.kind.as_str(),
            severity: f.severity.as_str(),
            state: f.state.as_str(),
            device_id: f.device_id,
            session_id: f.session_id,
            cartridge_id: f.cartridge_id,
            raised_at: utc(f.raised_at),
            detail: f.detail,
            actions: by_flag.remove(&f.id).unwrap_or_default(),
        })
        .collect()
}

/// Verifies the clinic's chain: the same verdict `pentrace audit verify`
/// gives for it, without walking other clinics' chains.
async fn verify_chain(store: &dyn Store, clinic_id: &str) -> ReportResult<AuditLine> {
    let Some(report) = audit_trail::verify_chain(store, clinic_id, None).await? else {
        return Ok(AuditLine {
            chain: clinic_id.to_owned(),
            status: "OK",
            events_verified: 0,
            head_hash: None,
            broken_at: None,
            broken_reason: None,
            checkpoints_ok: 0,
            summary: format!("chain {clinic_id}: no events yet"),
            scope: AUDIT_SCOPE,
        });
    };
    let head_hash = match report.verified {
        0 => None,
        n => store.audit_hash_at(clinic_id, n).await?.map(hex::encode),
    };
    Ok(audit_line(report, head_hash))
}

fn audit_line(report: ChainReport, head_hash: Option<String>) -> AuditLine {
    let summary = report.to_string();
    let (broken_at, broken_reason) = report.broken.unzip();
    AuditLine {
        chain: report.clinic_id,
        status: if broken_at.is_none() { "OK" } else { "BROKEN" },
        events_verified: report.verified,
        head_hash,
        broken_at,
        broken_reason,
        checkpoints_ok: report.checkpoints_ok,
        summary,
        scope: AUDIT_SCOPE,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A small report with one of everything, for the renderers' tests.
    pub(crate) fn sample() -> SterilityReport {
        let session = SessionLine {
            session_id: "9a1d1c7e-0000-4000-8000-000000000001".into(),
            clinic_id: "clinic-a".into(),
            device_id: "pen-1".into(),
            started_at: "2025-03-02T09:00:00.000Z".into(),
            ended_at: Some("2025-03-02T09:20:00.000Z".into()),
            udi: "(01)09506000134352(17)270101(10)L1(21)S1".into(),
            cartridge_id: Some("09506000134352:S1".into()),
            gtin: Some("09506000134352".into()),
            lot: Some("L1".into()),
            expiry: Some("2027-01-01".into()),
            area: "cheeks".into(),
            operator_ref: "op-1".into(),
            patient_ref: Some("p-hash".into()),
            strokes: 1200,
            max_depth_um: 800,
            samples: 120,
        };
        SterilityReport {
            id: uuid::Uuid::nil(),
            kind: "sterility",
            generated_at: "2025-04-01T00:00:00.000Z".into(),
            times: "UTC",
            clinic: ClinicLine {
                id: "clinic-a".into(),
                name: "Clinic <A> & Co".into(),
                time_zone: "UTC".into(),
            },
            period: PeriodLine {
                from: "2025-03-01".into(),
                to: "2025-04-01".into(),
                sessions: SESSIONS_RULE,
                flags: FLAGS_RULE,
            },
            sessions: vec![session],
            flags: vec![FlagLine {
                flag_id: "f-1".into(),
                kind: "CARTRIDGE_REUSED",
                severity: "critical",
                state: "resolved",
                device_id: "pen-1".into(),
                session_id: Some("9a1d1c7e-0000-4000-8000-000000000001".into()),
                cartridge_id: Some("09506000134352:S1".into()),
                raised_at: "2025-03-02T09:00:01.000Z".into(),
                detail: "cartridge bound to another session".into(),
                actions: vec![ActionLine {
                    step: "resolve".into(),
                    signer_name: "Carla \"CC\" Compliance".into(),
                    signed_at: "2025-03-03T10:00:00.000Z".into(),
                    meaning: "approved".into(),
                    reason: "Discarded, see <script>alert(1)</script>,\nnew one issued".into(),
                    bound_hash: "ab".repeat(32),
                }],
            }],
            audit: AuditLine {
                chain: "clinic-a".into(),
                status: "OK",
                events_verified: 42,
                head_hash: Some("cd".repeat(32)),
                broken_at: None,
                broken_reason: None,
                checkpoints_ok: 1,
                summary: "chain clinic-a: OK, 42 events, 1 checkpoint(s) hold".into(),
                scope: AUDIT_SCOPE,
            },
        }
    }

    #[test]
    fn actions_go_to_their_flag_in_order() {
        use chrono::{TimeZone, Utc};
        use pentrace_domain::{FlagKind, Severity};
        let flag = |n: u128| FlagRecord {
            id: uuid::Uuid::from_u128(n),
            kind: FlagKind::DepthExceeded,
            severity: Severity::Major,
            state: pentrace_store::FlagState::Open,
            clinic_id: "c".into(),
            device_id: "d".into(),
            session_id: None,
            cartridge_id: None,
            seq: 1,
            raised_at: Utc.timestamp_opt(0, 0).unwrap(),
            detail: String::new(),
            evidence: serde_json::Value::Null,
        };
        let action = |n: u128, step: &str| FlagActionRecord {
            flag_id: uuid::Uuid::from_u128(n),
            step: step.into(),
            signer_name: "S".into(),
            meaning: "reviewed".into(),
            reason: "r".into(),
            at: Utc.timestamp_opt(1, 0).unwrap(),
            bound_hash: String::new(),
        };
        let lines = flag_lines(
            vec![flag(1), flag(2)],
            vec![action(2, "acknowledge"), action(2, "resolve")],
        );
        assert!(lines[0].actions.is_empty());
        let steps: Vec<_> = lines[1].actions.iter().map(|a| a.step.as_str()).collect();
        assert_eq!(steps, ["acknowledge", "resolve"]);
    }

    #[test]
    fn a_broken_chain_names_its_first_broken_link() {
        let line = audit_line(
            ChainReport {
                clinic_id: "c".into(),
                verified: 6,
                broken: Some((7, "hash mismatch".into())),
                checkpoints_ok: 0,
            },
            None,
        );
        assert_eq!(line.status, "BROKEN");
        assert_eq!(line.broken_at, Some(7));
        assert!(!line.ok());
    }
}
