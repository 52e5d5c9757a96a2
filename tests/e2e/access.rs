//! Who may do what: every service needs a token, every query is scoped to
//! the caller's clinics, and only the right roles sign flag actions.

use pentrace_proto::v1 as pb;
use tonic::Code;

use crate::audit::stream_sessions;
use crate::helpers::{Backend, TestApp, pentrace_run, register, spawn_app, user_token};

crate::both_stores!(roles_and_clinics_bound_what_each_caller_sees_and_signs);

const GTIN: &str = "09506000134352";

async fn flags(app: &TestApp, token: &str) -> Vec<pb::Flag> {
    let mut c = app.compliance_as(token).await;
    c.list_flags(pb::ListFlagsRequest::default())
        .await
        .expect("list flags")
        .into_inner()
        .flags
}

fn action(flag: &pb::Flag, meaning: pb::SignatureMeaning, reason: &str) -> pb::FlagActionRequest {
    pb::FlagActionRequest {
        flag_id: flag.flag_id.clone(),
        meaning: meaning as i32,
        reason: reason.into(),
    }
}

async fn roles_and_clinics_bound_what_each_caller_sees_and_signs(backend: Backend) {
    let app = spawn_app(backend, &[]).await;
    let product = pb::Product {
        gtin: GTIN.into(),
        name: "n".into(),
        ..Default::default()
    };
    register(
        &app,
        "clinic-a",
        &[("pen-1", 0), ("pen-2", 0)],
        &[product],
        &[],
    )
    .await;
    register(&app, "clinic-b", &[("pen-b", 0)], &[], &[]).await;
    stream_sessions(&app).await;
    let owner_a = user_token(&app.store, "Olga Owner", "clinic_owner", &["clinic-a"]);
    let officer_a = user_token(
        &app.store,
        "Carl Compliance",
        "compliance_officer",
        &["clinic-a"],
    );
    let officer_b = user_token(
        &app.store,
        "Bea Compliance",
        "compliance_officer",
        &["clinic-b"],
    );

    // No token, or a wrong one: unauthenticated, on every service.
    let mut anonymous = pentrace_proto::v1::fleet_client::FleetClient::new(app.channel().await);
    let err = anonymous
        .list_devices(pb::ListDevicesRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = app
        .compliance_as("ptk_wrong")
        .await
        .list_flags(pb::ListFlagsRequest::default())
        .await
        .expect_err("bad");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = app
        .registry_as("")
        .await
        .list_clinics(pb::ListClinicsRequest::default())
        .await
        .expect_err("empty");
    assert_eq!(err.code(), Code::Unauthenticated);

    // Clinic A's flag is visible to A's people and to nobody of B.
    let a_flags = flags(&app, &officer_a).await;
    assert_eq!(a_flags.len(), 1, "{a_flags:?}");
    assert_eq!(flags(&app, &owner_a).await.len(), 1);
    assert!(flags(&app, &officer_b).await.is_empty());
    let mut b = app.compliance_as(&officer_b).await;
    let asked_for_a = pb::ListFlagsRequest {
        clinic_id: "clinic-a".into(),
        ..Default::default()
    };
    assert!(
        b.list_flags(asked_for_a)
            .await
            .expect("list")
            .into_inner()
            .flags
            .is_empty()
    );
    let devices = app
        .fleet_as(&officer_b)
        .await
        .list_devices(pb::ListDevicesRequest::default())
        .await
        .expect("devices");
    let ids: Vec<_> = devices
        .into_inner()
        .devices
        .into_iter()
        .filter_map(|d| d.device)
        .map(|d| d.device_id)
        .collect();
    assert_eq!(ids, vec!["pen-b".to_owned()]);
    let sessions = app
        .fleet_as(&officer_b)
        .await
        .list_sessions(pb::ListSessionsRequest {
            device_id: "pen-1".into(),
            ..Default::default()
        })
        .await
        .expect("sessions");
    assert!(sessions.into_inner().sessions.is_empty());
    let history = b
        .cartridge_history(pb::CartridgeHistoryRequest {
            cartridge: format!("{GTIN}:AUDIT-1"),
        })
        .await
        .expect("history")
        .into_inner();
    assert!(
        history.sessions.is_empty()
            && history.flags.is_empty()
            && history.bound_session_id.is_empty()
    );
    let lookback = b
        .lot_lookback(pb::LotLookbackRequest {
            gtin: GTIN.into(),
            lot: "L1".into(),
        })
        .await
        .expect("lot");
    assert!(lookback.into_inner().sessions.is_empty());

    // Only admins change the registry.
    let device = pb::Device {
        device_id: "pen-x".into(),
        clinic_id: "clinic-a".into(),
        ..Default::default()
    };
    let err = app
        .registry_as(&owner_a)
        .await
        .register_device(pb::RegisterDeviceRequest {
            device: Some(device),
        })
        .await
        .expect_err("owner registers");
    assert_eq!(err.code(), Code::PermissionDenied);

    // Signing: an owner may acknowledge but not resolve; B's officer cannot
    // touch A's flag; A's officer resolves with a mandatory reason.
    let flag = &a_flags[0];
    let mut owner = app.compliance_as(&owner_a).await;
    let err = owner
        .resolve_flag(action(flag, pb::SignatureMeaning::Approved, "fine"))
        .await
        .expect_err("owner resolves");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = b
        .acknowledge_flag(action(flag, pb::SignatureMeaning::Reviewed, "x"))
        .await
        .expect_err("other clinic");
    assert_eq!(err.code(), Code::NotFound);
    let acked = owner
        .acknowledge_flag(action(
            flag,
            pb::SignatureMeaning::Reviewed,
            "pen quarantined",
        ))
        .await
        .expect("ack");
    assert_eq!(acked.into_inner().state, pb::FlagState::Acknowledged as i32);
    let mut officer = app.compliance_as(&officer_a).await;
    let err = officer
        .resolve_flag(action(flag, pb::SignatureMeaning::Responsible, "  "))
        .await
        .expect_err("no reason");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = officer
        .resolve_flag(action(flag, pb::SignatureMeaning::Unspecified, "r"))
        .await
        .expect_err("no meaning");
    assert_eq!(err.code(), Code::InvalidArgument);
    let resolved = officer
        .resolve_flag(action(
            flag,
            pb::SignatureMeaning::Responsible,
            "cartridge destroyed, patient informed",
        ))
        .await
        .expect("resolve")
        .into_inner();
    assert_eq!(resolved.state, pb::FlagState::Resolved as i32);
    let err = officer
        .resolve_flag(action(flag, pb::SignatureMeaning::Approved, "again"))
        .await
        .expect_err("twice");
    assert_eq!(err.code(), Code::InvalidArgument);

    // Each signature is bound to the flag's audit hash just before it, and
    // the trail still verifies.
    let rows = app.rows().await;
    let bound: Vec<(Vec<u8>, String)> = rows
        .fetch("SELECT bound_hash, signer_name FROM flag_actions ORDER BY at")
        .await;
    assert_eq!(bound.len(), 2);
    assert_eq!(bound[0].1, "Olga Owner");
    assert_eq!(bound[1].1, "Carl Compliance");
    let events: Vec<(Vec<u8>,)> = rows
        .fetch(&format!(
            "SELECT hash FROM audit_events WHERE subject_type = 'flag' AND subject_id = '{}' \
             ORDER BY position",
            flag.flag_id
        ))
        .await;
    assert_eq!(events.len(), 3, "raised, acknowledged, resolved");
    assert_eq!(bound[0].0, events[0].0);
    assert_eq!(bound[1].0, events[1].0);
    let (code, text) = pentrace_run(&app.store, &["audit", "verify"]);
    assert_eq!(code, 0, "{text}");
}
