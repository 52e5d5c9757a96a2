//! Fleet checks (issue 13) against the real binary: a pen credential on two
//! streams at once, a revoked one still trying, a certificate near expiry
//! and a silent pen are found by `Fleet.CheckFleet` and by
//! `pentrace audit fleet`, each clinic seeing only its own.

use std::time::Duration;

use pentrace_proto::v1 as pb;
use pentrace_proto::v1::telemetry_client::TelemetryClient;

use crate::helpers::{
    Authed, Backend, TestApp, TestStore, eventually, exchange, pentrace_run, register,
    spawn_app_on, user_token,
};
use crate::mqtt::heartbeat;

crate::both_stores!(
    the_fleet_checks_find_shared_revoked_expiring_and_silent_and_each_clinic_sees_its_own,
);

/// Opens an ingest stream that stays open until the returned sender drops,
/// and waits until its first message is stored.
async fn open_stream(
    app: &TestApp,
    client: &mut TelemetryClient<Authed>,
    device: &str,
    seq: u64,
) -> (
    tokio::sync::mpsc::Sender<pb::DeviceMessage>,
    tonic::Streaming<pb::DeviceDownlink>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(heartbeat(device, seq)).await.expect("queue");
    let inbound = client
        .ingest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("ingest")
        .into_inner();
    let sql = format!(
        "SELECT count(*) FROM device_messages WHERE device_id = '{device}' AND seq = {seq}"
    );
    eventually(
        Duration::from_secs(10),
        "the stream's first message",
        || async { app.count(&sql).await == 1 },
    )
    .await;
    (tx, inbound)
}

async fn check(
    app: &TestApp,
    token: &str,
    request: pb::CheckFleetRequest,
) -> Vec<pb::FleetFinding> {
    app.fleet_as(token)
        .await
        .check_fleet(request)
        .await
        .expect("check fleet")
        .into_inner()
        .findings
}

fn has(findings: &[pb::FleetFinding], kind: pb::FleetFindingKind, principal: &str) -> bool {
    findings
        .iter()
        .any(|f| f.kind == kind as i32 && f.principal == principal)
}

/// Every request the tests make: a certificate warning long enough for a
/// fresh one-year certificate, and silence after one second.
fn request(clinic: &str) -> pb::CheckFleetRequest {
    pb::CheckFleetRequest {
        clinic_id: clinic.into(),
        lookback_s: 3600,
        certificate_warning_days: 400,
        silent_after_s: 1,
    }
}

async fn the_fleet_checks_find_shared_revoked_expiring_and_silent_and_each_clinic_sees_its_own(
    backend: Backend,
) {
    let store = TestStore::create(backend).await;
    // A device CA where the (plaintext) test server looks, so that its
    // Registry can issue pen certificates.
    let pki = store.data_dir.join("pki").to_string_lossy().into_owned();
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_pentrace"))
        .args(["ca", "init", "--dir", &pki])
        .output()
        .expect("run pentrace ca init");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let app = spawn_app_on(store, &["--no-mqtt"], &[]).await;
    register(
        &app,
        "clinic-a",
        &[("pen-a", 0), ("pen-quiet", 0)],
        &[],
        &[],
    )
    .await;
    register(&app, "clinic-b", &[("pen-b", 0)], &[], &[]).await;

    // A pen given its credential that never speaks.
    app.pen_secret("pen-quiet").await;
    // pen-a's one secret on two streams at once.
    let a = app.pen_secret("pen-a").await;
    let mut first = app.telemetry_with(&a).await;
    let mut second = app.telemetry_with(&a).await;
    let held = open_stream(&app, &mut first, "pen-a", 1).await;
    let also = open_stream(&app, &mut second, "pen-a", 2).await;
    // pen-b's revoked secret, tried twice: both refused and counted in the
    // metrics, the first audited (the second falls in the same minute, so
    // the next audited attempt will carry it as suppressed).
    let revoked = app.issue(pb::CredentialKind::PenSecret, "pen-b", "").await;
    app.registry()
        .await
        .revoke_device_credential(pb::RevokeDeviceCredentialRequest {
            credential_id: revoked
                .credential
                .clone()
                .expect("credential")
                .credential_id,
            reason: "pen lost".into(),
        })
        .await
        .expect("revoke");
    for seq in [1, 2] {
        let mut client = app.telemetry_with(&revoked.secret).await;
        let down = exchange(&mut client, vec![heartbeat("pen-b", seq)]).await;
        assert!(down.end.is_err(), "the revoked secret was refused");
    }
    // pen-b speaks by its certificate too (a year's validity: inside the
    // 400-day warning of these requests).
    let cert = app
        .issue(pb::CredentialKind::PenCertificate, "pen-b", "")
        .await;
    assert!(!cert.certificate_pem.is_empty(), "{cert:?}");

    let admin = app.admin_token.clone();
    eventually(Duration::from_secs(10), "every finding", || async {
        let all = check(&app, &admin, request("")).await;
        has(&all, pb::FleetFindingKind::CredentialShared, "pen-a")
            && has(&all, pb::FleetFindingKind::RevokedCredentialInUse, "pen-b")
            && has(&all, pb::FleetFindingKind::CertificateExpiring, "pen-b")
            && has(&all, pb::FleetFindingKind::PenSilent, "pen-quiet")
    })
    .await;
    let all = check(&app, &admin, request("")).await;
    let revoked_finding = all
        .iter()
        .find(|f| f.kind == pb::FleetFindingKind::RevokedCredentialInUse as i32)
        .expect("revoked finding");
    assert_eq!(revoked_finding.occurrences, 1, "{revoked_finding:?}");
    assert_eq!(revoked_finding.clinic_id, "clinic-b");

    // Clinic A's owner sees clinic A's findings only, asked for every
    // clinic or for clinic B.
    let owner = user_token(&app.store, "Olga Owner", "clinic_owner", &["clinic-a"]);
    let mine = check(&app, &owner, request("")).await;
    assert!(has(&mine, pb::FleetFindingKind::CredentialShared, "pen-a"));
    assert!(mine.iter().all(|f| f.clinic_id == "clinic-a"), "{mine:?}");
    assert!(check(&app, &owner, request("clinic-b")).await.is_empty());

    // A request that would read years of trail is refused.
    let err = app
        .fleet()
        .await
        .check_fleet(pb::CheckFleetRequest {
            lookback_s: u64::MAX,
            ..request("")
        })
        .await
        .expect_err("unbounded lookback");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // The same checks on the command line: a finding is exit 1.
    let (code, text) = pentrace_run(
        &app.store,
        &[
            "audit",
            "fleet",
            "--clinic",
            "clinic-a",
            "--silent-after-hours",
            "1",
        ],
    );
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("credential_shared"), "{text}");
    assert!(text.contains("pen-a"), "{text}");
    assert!(!text.contains("pen-b"), "{text}");
    assert!(text.contains("1 finding(s)"), "{text}");
    let (code, json) = pentrace_run(
        &app.store,
        &[
            "audit",
            "fleet",
            "--json",
            "--certificate-warning-days",
            "400",
        ],
    );
    assert_eq!(code, 1, "{json}");
    let report: serde_json::Value = serde_json::from_str(&json).expect("one JSON document");
    let kinds: Vec<&str> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"revoked_credential_in_use"), "{kinds:?}");
    assert!(kinds.contains(&"certificate_expiring"), "{kinds:?}");
    let (code, text) = pentrace_run(&app.store, &["audit", "fleet", "--clinic", "nowhere"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("no clinic \"nowhere\""), "{text}");
    drop((held, also));
}
