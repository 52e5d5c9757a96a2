use chrono::TimeZone;
use pentrace_domain::audit::Actor;
use pentrace_store::Device;
use serde_json::json;

use super::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0)
        .single()
        .unwrap_or_default()
}

fn credential(kind: CredentialKind, principal: &str, clinic: &str) -> DeviceCredential {
    DeviceCredential {
        id: Uuid::new_v4(),
        kind,
        principal: principal.into(),
        clinic_id: clinic.into(),
        fingerprint: [0; 32],
        not_after: None,
        created_at: now() - Duration::days(10),
        revoked_at: None,
    }
}

fn device(id: &str, clinic: &str, last_seen: Option<DateTime<Utc>>) -> DeviceStatus {
    DeviceStatus {
        device: Device {
            id: id.into(),
            clinic_id: clinic.into(),
            model: "m".into(),
            max_depth_um: 0,
        },
        last_seen,
        online: false,
        battery_pct: None,
        sessions_today: 0,
        strokes_today: 0,
        open_flags: 0,
        last_seq: 0,
    }
}

fn event(
    action: &str,
    c: &DeviceCredential,
    at: DateTime<Utc>,
    value: serde_json::Value,
) -> AuditEvent {
    AuditEvent {
        clinic_id: c.clinic_id.clone(),
        position: 1,
        at,
        actor: Actor::System,
        action: action.into(),
        subject_type: "device_credential".into(),
        subject_id: c.id.to_string(),
        old_value: None,
        new_value: Some(value),
        reason: None,
    }
}

fn kinds(findings: &[Finding]) -> Vec<(FindingKind, &str)> {
    findings
        .iter()
        .map(|f| (f.kind, f.principal.as_str()))
        .collect()
}

#[test]
fn a_shared_credential_is_one_finding_counting_every_connection() {
    let c = credential(CredentialKind::PenSecret, "pen-1", "a");
    let value = |n: u64| json!({"principal": "pen-1", "transport": "grpc", "suppressed_before": n});
    let evidence = Evidence {
        events: vec![
            event(SHARED, &c, now() - Duration::hours(2), value(0)),
            event(SHARED, &c, now() - Duration::hours(1), value(4)),
        ],
        credentials: vec![c.clone()],
        devices: vec![device("pen-1", "a", Some(now()))],
    };
    let findings = judge(&evidence, &FleetPolicy::default(), now());
    assert_eq!(kinds(&findings), [(FindingKind::CredentialShared, "pen-1")]);
    let f = &findings[0];
    assert_eq!(f.occurrences, 6, "two audited and four suppressed");
    assert_eq!(f.credential_id, Some(c.id));
    assert_eq!(f.first_at, Some(now() - Duration::hours(2)));
    assert_eq!(f.last_at, Some(now() - Duration::hours(1)));
    assert!(f.detail.contains("grpc"), "{}", f.detail);
}

#[test]
fn revoked_and_expired_credentials_still_trying_are_told_apart_from_other_refusals() {
    let revoked = credential(CredentialKind::PenSecret, "pen-1", "a");
    let expired = credential(CredentialKind::PenCertificate, "pen-2", "a");
    let other = credential(CredentialKind::PenSecret, "pen-3", "a");
    let refused = |reason: &str, principal: &str, transport: &str| json!({"reason": reason, "principal": principal, "transport": transport});
    let mut unknown = event(REFUSED, &other, now(), refused("unknown", "", "mqtt"));
    unknown.subject_id = "-".into();
    let evidence = Evidence {
        events: vec![
            event(
                REFUSED,
                &revoked,
                now(),
                refused("revoked", "pen-1", "mqtt"),
            ),
            event(
                REFUSED,
                &revoked,
                now(),
                refused("revoked", "pen-1", "grpc"),
            ),
            event(
                REFUSED,
                &expired,
                now(),
                refused("expired", "pen-2", "grpc"),
            ),
            event(
                REFUSED,
                &other,
                now(),
                refused("not_permitted", "pen-3", "grpc"),
            ),
            unknown,
        ],
        ..Evidence::default()
    };
    let findings = judge(&evidence, &FleetPolicy::default(), now());
    assert_eq!(
        kinds(&findings),
        [
            (FindingKind::RevokedCredentialInUse, "pen-1"),
            (FindingKind::ExpiredCredentialInUse, "pen-2"),
        ]
    );
    assert_eq!(findings[0].occurrences, 2);
    assert!(
        findings[0].detail.contains("grpc, mqtt"),
        "{}",
        findings[0].detail
    );
}

#[test]
fn certificates_are_reported_inside_the_warning_period_and_once_expired() {
    let policy = FleetPolicy::default();
    let mut soon = credential(CredentialKind::PenCertificate, "soon", "a");
    soon.not_after = Some(now() + policy.certificate_warning - Duration::seconds(1));
    let mut later = credential(CredentialKind::PenCertificate, "later", "a");
    later.not_after = Some(now() + policy.certificate_warning + Duration::seconds(1));
    let mut gone = credential(CredentialKind::PenCertificate, "gone", "a");
    gone.not_after = Some(now() - Duration::days(1));
    let mut revoked = credential(CredentialKind::PenCertificate, "revoked", "a");
    revoked.not_after = Some(now());
    revoked.revoked_at = Some(now() - Duration::days(2));
    let evidence = Evidence {
        credentials: vec![soon, later, gone, revoked],
        ..Evidence::default()
    };
    let findings = judge(&evidence, &policy, now());
    assert_eq!(
        kinds(&findings),
        [
            (FindingKind::CertificateExpiring, "gone"),
            (FindingKind::CertificateExpiring, "soon"),
        ]
    );
    assert!(
        findings[0].detail.contains("expired"),
        "{}",
        findings[0].detail
    );
    assert!(
        findings[1].detail.contains("in 29 d 23 h"),
        "{}",
        findings[1].detail
    );
}

#[test]
fn silence_is_judged_for_pens_in_service_on_both_sides_of_the_policy() {
    let policy = FleetPolicy::default();
    let edge = now() - policy.silent_after;
    let mut retired = credential(CredentialKind::PenSecret, "retired", "a");
    retired.revoked_at = Some(now() - Duration::days(5));
    let mut fresh = credential(CredentialKind::PenSecret, "new", "a");
    fresh.created_at = now() - Duration::hours(1);
    let evidence = Evidence {
        events: Vec::new(),
        credentials: vec![
            credential(CredentialKind::PenSecret, "quiet", "a"),
            credential(CredentialKind::PenSecret, "talking", "a"),
            credential(CredentialKind::PenSecret, "never", "a"),
            credential(CredentialKind::GatewaySecret, "gw-b", "b"),
            retired,
            fresh,
        ],
        devices: vec![
            device("quiet", "a", Some(edge - Duration::seconds(1))),
            device("talking", "a", Some(edge + Duration::seconds(1))),
            device("never", "a", None),
            device("behind-gateway", "b", Some(edge - Duration::hours(3))),
            device("retired", "a", Some(now() - Duration::days(5))),
            device("new", "a", None),
            device("no-credential", "c", Some(now() - Duration::days(9))),
        ],
    };
    let findings = judge(&evidence, &policy, now());
    assert_eq!(
        kinds(&findings),
        [
            (FindingKind::PenSilent, "never"),
            (FindingKind::PenSilent, "quiet"),
            (FindingKind::PenSilent, "behind-gateway"),
        ]
    );
    assert!(
        findings[0]
            .detail
            .contains("since its credential was issued")
    );
    assert!(
        findings[1].detail.contains("no message for 1 d 0 h"),
        "{}",
        findings[1].detail
    );
}

#[test]
fn spans_read_as_a_person_would_say_them() {
    assert_eq!(span(Duration::minutes(7)), "7 min");
    assert_eq!(span(Duration::minutes(5 * 60 + 12)), "5 h 12 min");
    assert_eq!(span(Duration::minutes(3 * 1440 + 4 * 60 + 59)), "3 d 4 h");
    assert_eq!(span(Duration::minutes(-3)), "0 min");
}
