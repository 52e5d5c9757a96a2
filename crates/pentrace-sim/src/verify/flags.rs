//! The flags part of the verification: the server's flags against the
//! truth, as sets of (kind, session id).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use pentrace_domain::FlagKind;
use pentrace_proto::v1 as pb;

use super::{KindRow, Verification};
use crate::api::Api;
use crate::error::SimError;
use crate::scenario::TruthRecord;
use crate::wire::timestamp;

/// Every flag of the clinic raised since `from`, page by page.
pub(super) async fn list(
    api: &Api,
    clinic: &str,
    from: DateTime<Utc>,
) -> Result<Vec<pb::Flag>, SimError> {
    let mut client = api.compliance();
    let mut flags = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_flags(pb::ListFlagsRequest {
                clinic_id: clinic.to_owned(),
                from: Some(timestamp(from)),
                limit: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .map_err(|s| SimError::rpc("Compliance.ListFlags", s))?
            .into_inner();
        flags.extend(page.flags);
        if page.next_page_token.is_empty() || page.next_page_token == page_token {
            return Ok(flags);
        }
        page_token = page.next_page_token;
    }
}

/// The domain kind of a wire flag kind.
fn flag_kind(kind: i32) -> Option<FlagKind> {
    let name = pb::FlagKind::try_from(kind).ok()?.as_str_name();
    FlagKind::parse(name.strip_prefix("FLAG_KIND_")?)
}

type Key = (FlagKind, String);

/// Compares as sets of (kind, session id).
pub(super) fn compare(truth: &[TruthRecord], flags: &[pb::Flag]) -> Verification {
    let mut expected: BTreeMap<Key, &TruthRecord> = BTreeMap::new();
    for t in truth {
        for kind in &t.expected_flags {
            let session = t.session_id.clone().unwrap_or_default();
            expected.entry((*kind, session)).or_insert(t);
        }
    }
    let mut found: BTreeMap<Key, &pb::Flag> = BTreeMap::new();
    let mut v = Verification::default();
    for f in flags {
        let Some(kind) = flag_kind(f.kind) else {
            v.unknown_kinds.push(format!(
                "flag {} of unknown kind {}: {}",
                f.flag_id, f.kind, f.detail
            ));
            continue;
        };
        if found.insert((kind, f.session_id.clone()), f).is_some() {
            v.duplicate_flags.push(describe_flag(kind, f));
        }
    }
    for kind in FlagKind::ALL {
        let e: BTreeSet<&Key> = expected.keys().filter(|k| k.0 == kind).collect();
        let g: BTreeSet<&Key> = found.keys().filter(|k| k.0 == kind).collect();
        let missed: Vec<&&Key> = e.difference(&g).collect();
        let unexpected: Vec<&&Key> = g.difference(&e).collect();
        v.missed.extend(
            missed
                .iter()
                .filter_map(|k| expected.get(**k))
                .map(|t| describe_truth(kind, t)),
        );
        v.unexpected.extend(
            unexpected
                .iter()
                .filter_map(|k| found.get(**k))
                .map(|f| describe_flag(kind, f)),
        );
        v.kinds.push(KindRow {
            kind,
            expected: e.len(),
            found: g.len(),
            missed: missed.len(),
            unexpected: unexpected.len(),
        });
    }
    v
}

fn describe_truth(kind: FlagKind, t: &TruthRecord) -> String {
    format!(
        "{} on session {} ({}, seq {}): injected {}: {}",
        kind.as_str(),
        t.session_id.as_deref().unwrap_or("-"),
        t.device_id,
        t.seq,
        t.fault,
        t.detail
    )
}

fn describe_flag(kind: FlagKind, f: &pb::Flag) -> String {
    let session = if f.session_id.is_empty() {
        "-"
    } else {
        &f.session_id
    };
    format!(
        "{} on session {session} ({}, seq {}): {} {}",
        kind.as_str(),
        f.device_id,
        f.seq,
        f.detail,
        f.evidence_json
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::FaultKind;

    fn truth(fault: FaultKind, session: &str) -> TruthRecord {
        TruthRecord {
            fault,
            device_id: "pen".into(),
            session_id: Some(session.into()),
            seq: 1,
            expected_flags: fault.expected_flags(),
            detail: String::new(),
        }
    }

    fn flag(kind: pb::FlagKind, session: &str) -> pb::Flag {
        pb::Flag {
            kind: kind as i32,
            session_id: session.into(),
            ..Default::default()
        }
    }

    #[test]
    fn equal_sets_pass_and_empty_kinds_score_one() {
        let t = [truth(FaultKind::Depth, "s1"), truth(FaultKind::Dup, "s2")];
        let f = [
            flag(pb::FlagKind::DepthExceeded, "s1"),
            flag(pb::FlagKind::DepthAboveAreaGuidance, "s1"),
        ];
        let v = compare(&t, &f);
        assert!(v.passed(), "{v}");
        let reused = &v.kinds[0];
        assert_eq!(reused.kind, FlagKind::CartridgeReused);
        assert_eq!((reused.precision(), reused.recall()), (1.0, 1.0));
    }

    #[test]
    fn missed_unexpected_and_twice_raised_flags_fail() {
        let t = [
            truth(FaultKind::Reuse, "s1"),
            truth(FaultKind::Resume, "s2"),
        ];
        let f = [
            flag(pb::FlagKind::CartridgeReused, "s2"),
            flag(pb::FlagKind::SessionResumed, "s2"),
            flag(pb::FlagKind::SessionResumed, "s2"),
        ];
        let v = compare(&t, &f);
        assert!(!v.passed());
        let reused = &v.kinds[0];
        assert_eq!(
            (
                reused.expected,
                reused.found,
                reused.missed,
                reused.unexpected
            ),
            (1, 1, 1, 1)
        );
        assert_eq!((reused.precision(), reused.recall()), (0.0, 0.0));
        assert_eq!(v.missed.len(), 1);
        assert!(v.missed[0].contains("s1") && v.missed[0].contains("reuse"));
        assert_eq!(v.unexpected.len(), 1);
        assert_eq!(v.duplicate_flags.len(), 1);
    }

    #[test]
    fn wire_kinds_map_to_domain_kinds() {
        for kind in FlagKind::ALL {
            let wire = pb::FlagKind::from_str_name(&format!("FLAG_KIND_{}", kind.as_str()))
                .expect("wire kind");
            assert_eq!(flag_kind(wire as i32), Some(kind));
        }
        assert_eq!(flag_kind(0), None);
    }
}
