//! The audit events the store's writes record, drafted from what they
//! write (the chains themselves are appended per dialect).

use chrono::{DateTime, Utc};
use pentrace_domain::audit::{Actor, AuditEvent};
use serde_json::json;

use crate::{AuditDraft, FlagRecord, GLOBAL_CHAIN, Lot, SessionWrite, User, WriteBatch};

/// Now at the precision the database keeps, so the hashed time and the
/// stored time are the same value.
pub(crate) fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

pub(crate) fn to_event(d: &AuditDraft, position: u64, at: DateTime<Utc>) -> AuditEvent {
    AuditEvent {
        clinic_id: d.clinic_id.clone(),
        position,
        at,
        actor: d.actor.clone(),
        action: d.action.clone(),
        subject_type: d.subject_type.clone(),
        subject_id: d.subject_id.clone(),
        old_value: d.old_value.clone(),
        new_value: d.new_value.clone(),
        reason: d.reason.clone(),
    }
}

/// The audit events a commit records: sessions started (with cartridge and
/// binding) and ended, and every flag it raised.
pub(crate) fn commit_drafts(batch: &WriteBatch, new_flags: &[FlagRecord]) -> Vec<AuditDraft> {
    let mut drafts = Vec::new();
    for w in &batch.sessions {
        if w.relation.is_some() {
            drafts.push(session_started(w));
        }
        if let Some(ended_at) = w.ended_at {
            drafts.push(AuditDraft {
                clinic_id: w.clinic_id.clone(),
                actor: Actor::Device(w.device_id.clone()),
                action: "session.ended".into(),
                subject_type: "session".into(),
                subject_id: w.session_id.clone(),
                old_value: None,
                new_value: Some(json!({ "ended_at": ended_at.to_rfc3339() })),
                reason: None,
            });
        }
    }
    drafts.extend(new_flags.iter().map(flag_raised));
    drafts
}

/// `session.started`. It says how the session relates to its cartridge
/// but not which session owns it: the owner may be another clinic's, and
/// this event is in the session's clinic's chain. The `flag.raised` event
/// of a reuse or resume names the owner when it is of the same clinic (the
/// domain's rule, `relation_verdict`).
fn session_started(w: &SessionWrite) -> AuditDraft {
    use pentrace_domain::rules::CartridgeRelation as R;
    let binding = match &w.relation {
        Some(R::Owner) => "owner",
        Some(R::Resumed { .. }) => "resumed",
        Some(R::Reused { .. }) => "reused",
        Some(R::Unidentified) | None => "unidentified",
    };
    AuditDraft {
        clinic_id: w.clinic_id.clone(),
        actor: Actor::Device(w.device_id.clone()),
        action: "session.started".into(),
        subject_type: "session".into(),
        subject_id: w.session_id.clone(),
        old_value: None,
        new_value: Some(json!({
            "device_id": w.device_id,
            "cartridge_id": w.cartridge_id,
            "udi": w.udi,
            "gtin": w.gtin,
            "lot": w.lot,
            "expiry": w.expiry.map(|d| d.to_string()),
            "binding": binding,
            "area": w.area,
            "patient_ref": w.patient_ref,
            "started_at": w.started_at.to_rfc3339(),
        })),
        reason: None,
    }
}

/// `flag.raised`, by the rules (the system).
pub(crate) fn flag_raised(f: &FlagRecord) -> AuditDraft {
    AuditDraft {
        clinic_id: f.clinic_id.clone(),
        actor: Actor::System,
        action: "flag.raised".into(),
        subject_type: "flag".into(),
        subject_id: f.id.to_string(),
        old_value: None,
        new_value: Some(json!({
            "kind": f.kind.as_str(),
            "severity": f.severity.as_str(),
            "device_id": f.device_id,
            "session_id": f.session_id,
            "cartridge_id": f.cartridge_id,
            "seq": f.seq,
            "detail": f.detail,
            "evidence": f.evidence,
        })),
        reason: None,
    }
}

/// `lot.recalled` on the catalogue's chain.
pub(crate) fn recall_draft(lot: &Lot, actor: &Actor) -> AuditDraft {
    AuditDraft {
        clinic_id: GLOBAL_CHAIN.into(),
        actor: actor.clone(),
        action: "lot.recalled".into(),
        subject_type: "lot".into(),
        subject_id: format!("{}:{}", lot.gtin, lot.lot),
        old_value: None,
        new_value: Some(serde_json::json!({
            "gtin": lot.gtin,
            "lot": lot.lot,
            "recalled_at": lot.recalled_at.map(|t| t.to_rfc3339()),
            "recall_reason": lot.recall_reason,
        })),
        reason: lot.recall_reason.clone(),
    }
}

pub(crate) fn user_draft(
    action: &str,
    user: &User,
    actor: &Actor,
    extra: serde_json::Value,
) -> AuditDraft {
    AuditDraft {
        clinic_id: GLOBAL_CHAIN.into(),
        actor: actor.clone(),
        action: action.into(),
        subject_type: "user".into(),
        subject_id: user.id.to_string(),
        old_value: None,
        new_value: Some(json!({
            "name": user.name, "role": user.role.as_str(), "clinics": user.clinics, "detail": extra,
        })),
        reason: None,
    }
}
