//! Device identity on gRPC (issue 13): only an authenticated pen writes its
//! own record — by its secret or by its certificate over mTLS — and a
//! gateway only its clinic's pens'. Every refusal is counted and audited.

use std::time::Duration;

use pentrace_proto::v1 as pb;
use pentrace_proto::v1::registry_client::RegistryClient;
use pentrace_proto::v1::telemetry_client::TelemetryClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::helpers::{
    Backend, TestApp, TestStore, eventually, exchange, register, register_on, spawn_app,
    spawn_app_on,
};
use crate::mqtt::heartbeat;

crate::both_stores!(
    ingest_without_a_valid_credential_is_refused_and_nothing_is_stored,
    a_pen_writes_only_its_own_record_and_a_gateway_only_its_clinics,
    revoking_a_credential_ends_its_open_stream,
    over_tls_a_pen_authenticates_by_its_certificate,
    a_reuse_across_clinics_shows_no_other_clinics_ids,
);

async fn two_clinics(backend: Backend) -> TestApp {
    let app = spawn_app(backend, &["--no-mqtt"]).await;
    register(&app, "clinic-a", &[("pen-a", 0)], &[], &[]).await;
    register(&app, "clinic-b", &[("pen-b", 0)], &[], &[]).await;
    app
}

async fn ingest_without_a_valid_credential_is_refused_and_nothing_is_stored(backend: Backend) {
    let app = two_clinics(backend).await;
    // No credential at all.
    let mut anonymous = TelemetryClient::new(app.channel().await);
    let refused = anonymous
        .ingest(tokio_stream::iter(vec![heartbeat("pen-a", 1)]))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    // Garbage, a people token, and a revoked pen secret.
    let revoked = app.issue(pb::CredentialKind::PenSecret, "pen-a", "").await;
    app.registry()
        .await
        .revoke_device_credential(pb::RevokeDeviceCredentialRequest {
            credential_id: revoked
                .credential
                .clone()
                .expect("credential")
                .credential_id,
            reason: "lost".into(),
        })
        .await
        .expect("revoke");
    for secret in [
        "pds_nonsense",
        app.admin_token.as_str(),
        revoked.secret.as_str(),
    ] {
        let mut client = app.telemetry_with(secret).await;
        let down = exchange(&mut client, vec![heartbeat("pen-a", 1)]).await;
        let status = down.end.expect_err("refused");
        assert_eq!(
            status.code(),
            tonic::Code::Unauthenticated,
            "{secret}: {status:?}"
        );
    }
    assert_eq!(app.stored("pen-a").await, 0);
    let metrics = reqwest_get(&format!("{}/metrics", app.http)).await;
    assert!(
        metrics.contains("pentrace_device_auth_refused_total{name=\"revoked\"} 1"),
        "{metrics}"
    );
    let audited = app
        .count("SELECT count(*) FROM audit_events WHERE action = 'device.auth_refused'")
        .await;
    assert!(audited >= 2, "refusals audited: {audited}");
}

/// A plain HTTP GET of the metrics (plaintext test server).
async fn reqwest_get(url: &str) -> String {
    crate::ingest::http_get(url).await.expect("http get")
}

async fn a_pen_writes_only_its_own_record_and_a_gateway_only_its_clinics(backend: Backend) {
    let app = two_clinics(backend).await;
    // Pen A's credential carrying pen B's messages: refused one by one,
    // nothing stored, and the stream goes on for A's own.
    let a = app.pen_secret("pen-a").await;
    let mut client = app.telemetry_with(&a).await;
    let down = exchange(
        &mut client,
        vec![
            heartbeat("pen-b", 4),
            heartbeat("pen-b", 5),
            heartbeat("pen-a", 1),
        ],
    )
    .await;
    assert!(down.end.is_ok(), "{:?}", down.end);
    for seq in [4, 5] {
        let r = down.rejection("pen-b", seq).expect("rejected");
        assert_eq!(r.code, pb::RejectCode::PermissionDenied as i32, "{r:?}");
        assert!(!r.retry);
    }
    assert_eq!(down.watermark("pen-a"), 1);
    assert_eq!(app.stored("pen-b").await, 0);
    // The real pen B's own seqs 4 and 5 are then stored, not "duplicates".
    let b = app.pen_secret("pen-b").await;
    let mut client = app.telemetry_with(&b).await;
    let down = exchange(
        &mut client,
        (1..=5).map(|s| heartbeat("pen-b", s)).collect(),
    )
    .await;
    assert_eq!(down.watermark("pen-b"), 5);
    assert_eq!(app.stored("pen-b").await, 5);
    // A gateway of clinic A: A's pens yes, B's no.
    let mut gateway = app.telemetry_for("clinic-a").await;
    let down = exchange(
        &mut gateway,
        vec![heartbeat("pen-a", 2), heartbeat("pen-b", 6)],
    )
    .await;
    assert_eq!(down.watermark("pen-a"), 2);
    let r = down.rejection("pen-b", 6).expect("rejected");
    assert_eq!(r.code, pb::RejectCode::PermissionDenied as i32);
    assert_eq!(app.stored("pen-b").await, 5);
}

async fn revoking_a_credential_ends_its_open_stream(backend: Backend) {
    let app = two_clinics(backend).await;
    let issued = app.issue(pb::CredentialKind::PenSecret, "pen-a", "").await;
    let mut client = app.telemetry_with(&issued.secret).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(heartbeat("pen-a", 1)).await.expect("queue");
    let mut inbound = client
        .ingest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("ingest")
        .into_inner();
    eventually(Duration::from_secs(10), "pen-a's first message", || async {
        app.stored("pen-a").await == 1
    })
    .await;
    app.registry()
        .await
        .revoke_device_credential(pb::RevokeDeviceCredentialRequest {
            credential_id: issued.credential.expect("credential").credential_id,
            reason: "stolen".into(),
        })
        .await
        .expect("revoke");
    let end = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends within 15 s of the revocation");
    let status = end.expect_err("ended with a status");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    drop(tx);
}

/// `GET path` over HTTPS, trusting only `ca_pem`; the whole response.
async fn https_get(http: &str, path: &str, ca_pem: &str) -> String {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    let host = http.strip_prefix("http://").expect("http url");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("ca pem")).expect("ca");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(host).await.expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("the server's certificate chains to its CA");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    // A peer closing without close_notify is fine once the body is in.
    let _ = tls.read_to_string(&mut response).await;
    response
}

/// A TLS server (its CA and certificate made in its data directory on
/// first start) and a pen authenticating by its certificate.
async fn over_tls_a_pen_authenticates_by_its_certificate(backend: Backend) {
    let store = TestStore::create(backend).await;
    let dir = store.data_dir.clone();
    let data_dir = dir.to_string_lossy().into_owned();
    let app = spawn_app_on(
        store,
        &["--no-mqtt"],
        &[("PENTRACE_TLS__PLAINTEXT", "false")],
    )
    .await;
    let ca = std::fs::read_to_string(dir.join("pki/ca.pem")).expect("the server made its CA");
    let https = app.grpc.replace("http://", "https://");
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca));
    let connect = |tls: ClientTlsConfig| {
        let https = https.clone();
        async move {
            Channel::from_shared(https)
                .expect("url")
                .tls_config(tls)
                .expect("tls")
                .connect()
                .await
                .expect("tls connect")
        }
    };
    // Plaintext to the TLS listeners fails: gRPC and HTTP.
    let plain = TelemetryClient::new(app.channel().await)
        .ingest(tokio_stream::iter(vec![heartbeat("pen-c", 1)]))
        .await;
    assert!(plain.is_err(), "plaintext gRPC to a TLS listener");
    let health = format!("{}/healthz", app.http);
    assert_eq!(
        crate::ingest::http_get(&health).await,
        None,
        "plaintext HTTP"
    );
    assert!(
        https_get(&app.http, "/healthz", &ca)
            .await
            .starts_with("HTTP/1.1 200")
    );
    // The container health check: `pentrace probe` with the server's own
    // configuration speaks HTTPS to it, trusting its CA.
    let http_addr = app.http.trim_start_matches("http://").to_owned();
    let probe_at = |path: &str, envs: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pentrace"))
            .args(["probe", "--path", path])
            .env("PENTRACE_DATA_DIR", &data_dir)
            .env("PENTRACE_HTTP_ADDR", &http_addr)
            .envs(envs.iter().copied())
            .output()
            .expect("run pentrace probe");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let probe = |envs: &[(&str, &str)]| probe_at("/readyz", envs);
    let (code, err) = probe_at("/no-such-page", &[]);
    assert_eq!(code, Some(1), "an answer that is not 200: {err}");
    assert!(err.contains("HTTP 404"), "{err}");
    assert_eq!(probe(&[]), (Some(0), String::new()));
    let (code, err) = probe(&[("PENTRACE_TLS__PLAINTEXT", "true")]);
    assert_eq!(code, Some(2), "plaintext to a TLS listener: {err}");
    let (code, err) = probe(&[("PENTRACE_HTTP_ADDR", "127.0.0.1:1")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("connecting to 127.0.0.1:1"), "{err}");
    let admin = connect(tls.clone()).await;
    let mut registry = RegistryClient::with_interceptor(admin, TestApp::bearer(&app.admin_token));
    register_on(
        &mut registry,
        "clinic-c",
        &[("pen-c", 0), ("pen-d", 0)],
        &[],
        &[],
    )
    .await;
    let issued = registry
        .issue_device_credential(pb::IssueDeviceCredentialRequest {
            kind: pb::CredentialKind::PenCertificate as i32,
            principal: "pen-c".into(),
            ..Default::default()
        })
        .await
        .expect("certificate")
        .into_inner();
    assert!(issued.secret.is_empty() && !issued.private_key_pem.is_empty());
    let identity = Identity::from_pem(&issued.certificate_pem, &issued.private_key_pem);
    let pen = connect(tls.clone().identity(identity)).await;
    let mut client = TelemetryClient::new(pen);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    for m in [heartbeat("pen-c", 1), heartbeat("pen-d", 1)] {
        tx.send(m).await.expect("queue");
    }
    drop(tx);
    let mut inbound = client
        .ingest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("a pen with its certificate is let in")
        .into_inner();
    let (mut acked, mut denied) = (false, false);
    while let Some(down) = inbound.message().await.expect("stream") {
        match down.body {
            Some(pb::device_downlink::Body::Ack(a)) if a.device_id == "pen-c" => {
                acked |= a.committed_seq == 1
            }
            Some(pb::device_downlink::Body::Rejection(r)) if r.device_id == "pen-d" => {
                denied = r.code == pb::RejectCode::PermissionDenied as i32
            }
            _ => {}
        }
    }
    assert!(acked && denied, "acked {acked}, denied {denied}");
    assert_eq!(app.stored("pen-c").await, 1);
    assert_eq!(app.stored("pen-d").await, 0);
}

/// A store outage while a gateway's stream needs to check a pen it has
/// not sent for yet is no denial: that message is refused as retryable,
/// the stream stays open, and the resend is stored once the database is
/// back.
// PostgreSQL only: it stops a private PostgreSQL cluster (an embedded
// SQLite file cannot go away while its server runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_check_during_a_database_outage_is_retryable_not_a_denial() {
    use crate::helpers::{Server, pentrace_cli_at};
    use crate::pgcluster::PgCluster;
    let mut pg = PgCluster::create();
    let url = pg.url();
    let server = Server::start_at(&url, "identity_db_away", &["--no-mqtt"], &[]).await;
    pentrace_cli_at(
        &url,
        &["user", "add", "--name", "Ada Admin", "--role", "admin"],
    );
    let token = pentrace_cli_at(&url, &["token", "issue", "--user", "Ada Admin"]);
    let channel = Channel::from_shared(server.grpc.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut registry =
        RegistryClient::with_interceptor(channel.clone(), TestApp::bearer(token.trim()));
    register_on(
        &mut registry,
        "clinic-a",
        &[("pen-1", 0), ("pen-2", 0)],
        &[],
        &[],
    )
    .await;
    let gateway = registry
        .issue_device_credential(pb::IssueDeviceCredentialRequest {
            kind: pb::CredentialKind::GatewaySecret as i32,
            principal: "gw-a".into(),
            clinic_id: "clinic-a".into(),
            replace: false,
        })
        .await
        .expect("gateway")
        .into_inner()
        .secret;
    let mut client = TelemetryClient::with_interceptor(channel, TestApp::bearer(&gateway));
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut inbound = client
        .ingest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("ingest")
        .into_inner();
    let mut next = async || -> pb::device_downlink::Body {
        tokio::time::timeout(Duration::from_secs(30), inbound.message())
            .await
            .expect("a downlink within 30 s")
            .expect("the stream stays open")
            .expect("not ended")
            .body
            .expect("a body")
    };
    use pb::device_downlink::Body;
    tx.send(heartbeat("pen-1", 1)).await.expect("queue");
    assert!(matches!(next().await, Body::Ack(a) if a.device_id == "pen-1" && a.committed_seq == 1));

    pg.stop_immediate();
    tx.send(heartbeat("pen-2", 1)).await.expect("queue");
    match next().await {
        Body::Rejection(r) => {
            assert_eq!(r.device_id, "pen-2");
            assert_eq!(r.code, pb::RejectCode::Unavailable as i32, "{r:?}");
            assert!(r.retry, "{r:?}");
        }
        other => panic!("expected a retryable rejection, got {other:?}"),
    }
    pg.start();
    tx.send(heartbeat("pen-2", 1)).await.expect("queue");
    loop {
        match next().await {
            Body::Ack(a) if a.device_id == "pen-2" && a.committed_seq == 1 => break,
            Body::Rejection(r) if r.retry => {
                // The pool may need a moment to reconnect: resend, as a pen does.
                tx.send(heartbeat("pen-2", 1)).await.expect("queue");
            }
            Body::Rejection(r) => panic!("refused for good: {r:?}"),
            _ => {}
        }
    }
    drop(tx);
}

/// A cartridge first used in clinic B and then in clinic A: A's officer
/// sees the reuse and when the cartridge was used before, but no id of
/// B's — not in the flag, not in A's audit chain.
async fn a_reuse_across_clinics_shows_no_other_clinics_ids(backend: Backend) {
    use crate::helpers::user_token;
    use crate::mqtt::session_start;
    let app = spawn_app(backend, &["--no-mqtt"]).await;
    let gtin = "09506000134352";
    let product = pb::Product {
        gtin: gtin.into(),
        name: "n".into(),
        ..Default::default()
    };
    register(&app, "clinic-a", &[("pen-a", 0)], &[product], &[]).await;
    register(&app, "clinic-b", &[("pen-b", 0)], &[], &[]).await;
    let udi = format!("(01){gtin}(17)301231(10)L1(21)CROSS-1");
    let b_session = uuid::Uuid::new_v4().to_string();
    let a_session = uuid::Uuid::new_v4().to_string();
    let mut b = app.telemetry_for("clinic-b").await;
    let down = exchange(&mut b, vec![session_start("pen-b", 1, &b_session, &udi)]).await;
    assert_eq!(down.watermark("pen-b"), 1);
    let mut a = app.telemetry_for("clinic-a").await;
    let down = exchange(&mut a, vec![session_start("pen-a", 1, &a_session, &udi)]).await;
    assert_eq!(down.watermark("pen-a"), 1);

    let officer = user_token(&app.store, "Olga A", "compliance_officer", &["clinic-a"]);
    let flags = app
        .compliance_as(&officer)
        .await
        .list_flags(pb::ListFlagsRequest::default())
        .await
        .expect("flags")
        .into_inner()
        .flags;
    let reuse = flags
        .iter()
        .find(|f| f.kind == pb::FlagKind::CartridgeReused as i32)
        .expect("clinic A sees the reuse");
    let seen = format!("{} {}", reuse.detail, reuse.evidence_json);
    for foreign in ["pen-b", "clinic-b", b_session.as_str()] {
        assert!(!seen.contains(foreign), "{foreign} in {seen}");
    }
    assert!(seen.contains("another clinic"), "{seen}");
    let chain: Vec<(String,)> = app
        .rows()
        .await
        .fetch(
            "SELECT coalesce(new_value, '') || coalesce(reason, '') FROM audit_events \
             WHERE clinic_id = 'clinic-a'",
        )
        .await;
    assert!(!chain.is_empty(), "clinic A's chain records the sessions");
    for (text,) in chain {
        assert!(
            !text.contains("pen-b") && !text.contains(&b_session),
            "{text}"
        );
    }
}
