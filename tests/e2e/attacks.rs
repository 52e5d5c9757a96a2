//! Attacks from an independent review of issue 14 (rules), issue 13 (fleet
//! checks) and the request-field validation, against the real binary; each
//! failed before the fix it came with.

use std::time::Duration;

use chrono::{Duration as Span, Utc};
use pentrace_proto::v1 as pb;
use pentrace_proto::v1::telemetry_client::TelemetryClient;
use sqlx::Connection;
use tonic::Code;

use crate::helpers::{
    Backend, Server, TestApp, TestStore, eventually, exchange, register, spawn_app, user_token,
};
use crate::ingest::{Pen, Session, stream, udi};
use crate::mqtt::heartbeat;
use crate::rules::{flags_of, lot};

crate::both_stores!(
    two_pens_sending_the_same_session_id_are_two_sessions_and_the_reuse_is_flagged,
    a_policy_period_beyond_chronos_range_is_refused_not_a_panic,
    product_name_and_device_model_are_bounded_like_every_name,
    a_moved_pens_findings_belong_to_its_new_clinic,
    a_clinic_name_of_100_characters_is_accepted_whatever_its_script,
);

const GTIN: &str = "09506000134352";

/// A product rated for `rated_strokes`, no shelf life.
fn product(rated_strokes: u64) -> pb::Product {
    crate::rules::product(rated_strokes, 0)
}

fn count_of(flags: &[pb::Flag], kind: pb::FlagKind) -> usize {
    crate::rules::of_kind(flags, kind).len()
}

/// Session facts were looked up by session id only. Two pens whose firmware sends
/// the nil UUID as session id (a zeroed struct) share one session row:
/// pen-b's session in clinic B is never judged for its cartridge (bound to
/// pen-a's session of clinic A three hours earlier), and its strokes are
/// added to clinic A's session.
async fn two_pens_sending_the_same_session_id_are_two_sessions_and_the_reuse_is_flagged(
    backend: Backend,
) {
    let app = spawn_app(backend, &["--no-mqtt"]).await;
    register(
        &app,
        "clinic-a",
        &[("pen-a", 0)],
        &[product(0)],
        &[lot("L1")],
    )
    .await;
    register(&app, "clinic-b", &[("pen-b", 0)], &[], &[]).await;
    let nil = "00000000-0000-0000-0000-000000000000";
    let now = Utc::now();
    let mut first = Session::new(&udi(GTIN, "301231", "L1", "N-1"), now - Span::hours(3));
    first.id = nil.into();
    let mut pen_a = Pen::new("pen-a");
    pen_a.session(&first, 2, 800, Span::zero());
    stream(&app, pen_a.sent.clone()).await;

    let mut second = Session::new(&first.udi, now - Span::hours(1));
    second.id = nil.into();
    second.patient = "patient-hash-2".into();
    let mut pen_b = Pen::new("pen-b");
    pen_b.session(&second, 3, 800, Span::zero());
    let mut b = app.telemetry_for("clinic-b").await;
    let down = exchange(&mut b, pen_b.sent.clone()).await;
    assert!(down.end.is_ok() && down.rejections.is_empty(), "{down:?}");

    let of_a = app.sessions_of("pen-a").await;
    assert_eq!(of_a.len(), 1, "{of_a:?}");
    assert_eq!(of_a[0].session_id, nil);
    let stored_a = of_a[0].strokes;
    let flags = flags_of(&app, "pen-b").await;
    let sessions_of_b = app.sessions_of("pen-b").await.len();
    // (reuse flags of pen-b, strokes of clinic A's session, sessions of pen-b)
    assert_eq!(
        (
            count_of(&flags, pb::FlagKind::CartridgeReused),
            stored_a,
            sessions_of_b
        ),
        (1, 200, 1),
        "pen-b used clinic A's cartridge N-1 on another patient; clinic A's session keeps \
         pen-a's 200 strokes; pen-b's session is its own: {flags:?}"
    );
}

/// the cartridge's procedure sum is read with
/// the facts and added at commit without any check that it is still what
/// the batch was judged on. Two server processes on one database (replicas
/// behind Mosquitto's `$share` subscription spread one pen's messages over
/// both) each judge one batch against the same stale sum: 100 + 100 + 100
/// strokes on a cartridge rated 250, never flagged. The test holds the
/// cartridge row so that both batches are judged before either commits.
// PostgreSQL only: two servers on one database, held at a row lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overuse_is_flagged_when_two_servers_commit_one_pens_batches_at_once() {
    let app = spawn_app(Backend::Postgres, &["--no-mqtt"]).await;
    register(
        &app,
        "clinic-a",
        &[("pen-1", 0)],
        &[product(250)],
        &[lot("L1")],
    )
    .await;
    let replica = Server::start(&app.store, &["--no-mqtt"], &[]).await;
    let s = Session::new(
        &udi(GTIN, "301231", "L1", "RACE-1"),
        Utc::now() - Span::minutes(5),
    );
    let mut pen = Pen::new("pen-1");
    // start, three batches of 100 strokes, end: seq 1..=5.
    pen.session(&s, 3, 800, Span::zero());
    let sent = pen.sent.clone();
    stream(&app, sent[..2].to_vec()).await;
    let cartridge = format!("{GTIN}:RACE-1");
    assert_eq!(
        app.count(&format!(
            "SELECT strokes FROM cartridges WHERE cartridge_id = '{cartridge}'"
        ))
        .await,
        100
    );

    // Hold the cartridge row: both commits wait for it after judging.
    let mut holder = sqlx::PgConnection::connect(&app.store.pg().url)
        .await
        .expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut holder)
        .await
        .expect("begin");
    sqlx::query(&format!(
        "SELECT 1 FROM cartridges WHERE cartridge_id = '{cartridge}' FOR UPDATE"
    ))
    .execute(&mut holder)
    .await
    .expect("lock");

    let secret = app.gateway_secret("clinic-a").await;
    let mut on_a = app.telemetry_with(&secret).await;
    let channel = tonic::transport::Channel::from_shared(replica.grpc.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect replica");
    let mut on_b = TelemetryClient::with_interceptor(channel, TestApp::bearer(&secret));
    let (b2, b3) = (sent[2].clone(), sent[3].clone());
    let first = tokio::spawn(async move { exchange(&mut on_a, vec![b2]).await });
    let second = tokio::spawn(async move { exchange(&mut on_b, vec![b3]).await });
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND wait_event_type = 'Lock'",
        app.store.pg().name
    );
    eventually(
        Duration::from_secs(20),
        "both commits judged and waiting",
        || async { app.count(&waiting).await >= 2 },
    )
    .await;
    sqlx::query("ROLLBACK")
        .execute(&mut holder)
        .await
        .expect("release");
    for task in [first, second] {
        let down = task.await.expect("join");
        assert!(down.end.is_ok() && down.rejections.is_empty(), "{down:?}");
    }
    stream(&app, sent[4..].to_vec()).await;

    let stored = app
        .count(&format!(
            "SELECT strokes FROM cartridges WHERE cartridge_id = '{cartridge}'"
        ))
        .await;
    assert_eq!(stored, 300, "every batch is counted");
    let flags = flags_of(&app, "pen-1").await;
    assert_eq!(
        count_of(&flags, pb::FlagKind::CartridgeOverused),
        1,
        "300 strokes on a cartridge rated 250: {flags:?}"
    );
}

/// `policy.*_s` settings are turned
/// into periods by `config::seconds`, whose comment promises "saturating:
/// no setting can overflow the clock", but `chrono::Duration::seconds`
/// panics above i64::MAX / 1000 s, and nothing validates the policy. A
/// TOML `resume_window_s = 9223372036854775807` (or the env form) makes
/// `pentrace serve` panic at start.
async fn a_policy_period_beyond_chronos_range_is_refused_not_a_panic(backend: Backend) {
    let store = TestStore::create(backend).await;
    let mut command = store.command(&[
        "serve",
        "--plaintext",
        "--no-mqtt",
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ]);
    command
        .env("PENTRACE_POLICY__RESUME_WINDOW_S", "9223372036854775807")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let out = tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().expect("start pentrace");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if std::time::Instant::now() > deadline {
                // Still serving: the setting was taken (saturated). Fine.
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output().expect("output");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("join");
    let (status, stderr) = out;
    assert!(
        !stderr.contains("panicked"),
        "exit {status:?}, a panic instead of a configuration error:\n{stderr}"
    );
}

/// the docs say
/// "Free-text inputs are bounded: names at 256 characters", and every
/// other name (clinic name, lot, ids) is held to 1-256 printable
/// characters naming the field; `product.name` and `device.model` are
/// stored as sent, 100,000 characters or a control character included.
async fn product_name_and_device_model_are_bounded_like_every_name(backend: Backend) {
    let app = spawn_app(backend, &["--no-mqtt"]).await;
    register(&app, "clinic-a", &[], &[], &[]).await;
    let mut r = app.registry().await;
    let long = "n".repeat(100_000);
    for (name, why) in [
        (long.as_str(), "100,000 characters"),
        ("bell\u{7}", "a BEL"),
    ] {
        let status = r
            .register_product(pb::RegisterProductRequest {
                product: Some(pb::Product {
                    name: name.into(),
                    ..product(0)
                }),
            })
            .await
            .err();
        assert!(
            status.as_ref().is_some_and(
                |s| s.code() == Code::InvalidArgument && s.message().contains("product.name")
            ),
            "a product name of {why} is refused naming product.name: {status:?}"
        );
        let status = r
            .register_device(pb::RegisterDeviceRequest {
                device: Some(pb::Device {
                    device_id: "pen-1".into(),
                    clinic_id: "clinic-a".into(),
                    model: name.into(),
                    max_depth_um: 0,
                }),
            })
            .await
            .err();
        assert!(
            status.as_ref().is_some_and(
                |s| s.code() == Code::InvalidArgument && s.message().contains("device.model")
            ),
            "a device model of {why} is refused naming device.model: {status:?}"
        );
    }
}

async fn check(app: &TestApp, token: &str, clinic: &str) -> Vec<pb::FleetFinding> {
    app.fleet_as(token)
        .await
        .check_fleet(pb::CheckFleetRequest {
            clinic_id: clinic.into(),
            lookback_s: 3600,
            certificate_warning_days: 400,
            silent_after_s: 1,
        })
        .await
        .expect("check fleet")
        .into_inner()
        .findings
}

/// a pen credential keeps the clinic its
/// device had when it was issued, and the checks scope credentials, their
/// audit events and the "in service" test by that clinic. After the pen
/// moves from clinic A to clinic B (RegisterDevice again, as the Registry
/// allows), a revoked secret of the pen still trying is reported to clinic
/// A's owner — a device of clinic B, by name — and not to clinic B's; and
/// the pen, silent, is in service for nobody.
async fn a_moved_pens_findings_belong_to_its_new_clinic(backend: Backend) {
    let app = spawn_app(backend, &["--no-mqtt"]).await;
    register(&app, "clinic-a", &[("pen-m", 0)], &[], &[]).await;
    register(&app, "clinic-b", &[], &[], &[]).await;
    let old = app.issue(pb::CredentialKind::PenSecret, "pen-m", "").await;
    let live = app.issue(pb::CredentialKind::PenSecret, "pen-m", "").await;
    assert!(!live.secret.is_empty());
    // The pen moves to clinic B; its first secret, replaced by the second,
    // is revoked and then tried (a copy left on the old clinic's laptop).
    app.registry()
        .await
        .register_device(pb::RegisterDeviceRequest {
            device: Some(pb::Device {
                device_id: "pen-m".into(),
                clinic_id: "clinic-b".into(),
                model: "test-pen".into(),
                max_depth_um: 0,
            }),
        })
        .await
        .expect("move");
    let old_id = old.credential.clone().expect("credential").credential_id;
    let _ = app
        .registry()
        .await
        .revoke_device_credential(pb::RevokeDeviceCredentialRequest {
            credential_id: old_id,
            reason: "moved".into(),
        })
        .await;
    let mut client = app.telemetry_with(&old.secret).await;
    let down = exchange(&mut client, vec![heartbeat("pen-m", 1)]).await;
    assert!(down.end.is_err(), "the revoked secret is refused");
    let admin = app.admin_token.clone();
    eventually(Duration::from_secs(10), "the refusal audited", || async {
        check(&app, &admin, "").await.iter().any(|f| {
            f.kind == pb::FleetFindingKind::RevokedCredentialInUse as i32 && f.principal == "pen-m"
        })
    })
    .await;
    // pen-m has sent nothing for more than the 1 s of the request.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let owner_a = user_token(&app.store, "Olga Owner", "clinic_owner", &["clinic-a"]);
    let owner_b = user_token(&app.store, "Bea Owner", "clinic_owner", &["clinic-b"]);
    let seen_by_a = check(&app, &owner_a, "").await;
    let seen_by_b = check(&app, &owner_b, "").await;
    let kinds = |seen: &[pb::FleetFinding]| -> Vec<pb::FleetFindingKind> {
        let mut k: Vec<_> = seen
            .iter()
            .filter(|f| f.principal == "pen-m")
            .filter_map(|f| pb::FleetFindingKind::try_from(f.kind).ok())
            .collect();
        k.sort_by_key(|k| *k as i32);
        k
    };
    // (what clinic A's owner sees of pen-m, what clinic B's owner sees)
    assert_eq!(
        (kinds(&seen_by_a), kinds(&seen_by_b)),
        (
            vec![],
            vec![
                pb::FleetFindingKind::RevokedCredentialInUse,
                pb::FleetFindingKind::PenSilent
            ]
        ),
        "pen-m is clinic B's: A {seen_by_a:?}, B {seen_by_b:?}"
    );
}

/// `required` in
/// grpc/registry.rs says "1-256 printable characters" but counts bytes, so
/// a clinic name of 100 Japanese characters (300 bytes of UTF-8) is
/// refused, while `reason` (same file) counts characters.
async fn a_clinic_name_of_100_characters_is_accepted_whatever_its_script(backend: Backend) {
    let app = spawn_app(backend, &["--no-mqtt"]).await;
    let name = "診".repeat(100);
    let stored = app
        .registry()
        .await
        .register_clinic(pb::RegisterClinicRequest {
            clinic: Some(pb::Clinic {
                clinic_id: "clinic-jp".into(),
                name: name.clone(),
                time_zone: "Asia/Tokyo".into(),
            }),
        })
        .await;
    assert_eq!(
        stored
            .map(|r| r.into_inner().name)
            .map_err(|s| s.message().to_owned()),
        Ok(name),
        "100 characters are within 1-256 characters"
    );
}
