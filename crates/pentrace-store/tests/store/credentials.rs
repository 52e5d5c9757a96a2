//! Device credentials: fingerprints, who they belong to, rotation and
//! revocation, every change audited in the clinic's chain.

use pentrace_domain::audit::Actor;
use pentrace_store::{CredentialKind, NewDeviceCredential, StoreError};

use crate::fixture::TestStore;
use crate::helpers::*;

crate::conformance!(
    credentials_belong_to_a_pen_or_a_clinics_gateway,
    rotation_and_revocation_are_audited_once,
    credentials_are_listed_by_clinic,
);

fn new(kind: CredentialKind, principal: &str, clinic: Option<&str>, fp: u8) -> NewDeviceCredential {
    NewDeviceCredential {
        kind,
        principal: principal.into(),
        clinic_id: clinic.map(str::to_owned),
        fingerprint: [fp; 32],
        not_after: None,
        replace: false,
    }
}

async fn credentials_belong_to_a_pen_or_a_clinics_gateway(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    second_clinic(&store).await;
    let actor = Actor::User("admin-1".into());
    let (pen, revoked) = store
        .issue_device_credential(&new(CredentialKind::PenSecret, "pen-a", None, 1), &actor)
        .await
        .expect("pen secret");
    assert!(revoked.is_empty());
    assert_eq!(
        (pen.clinic_id.as_str(), pen.device_id()),
        (CLINIC, Some("pen-a"))
    );
    assert_eq!(
        store.device_credential(&[1; 32]).await.expect("by fp"),
        Some(pen.clone())
    );
    assert_eq!(
        store.device_credential(&[9; 32]).await.expect("by fp"),
        None
    );

    let refusals = [
        (
            new(CredentialKind::PenSecret, "nobody", None, 2),
            "not found",
        ),
        (
            new(CredentialKind::GatewaySecret, "pen-a", Some(CLINIC), 3),
            "a device id",
        ),
        (
            new(CredentialKind::GatewaySecret, "gw", None, 4),
            "needs its clinic",
        ),
        (
            new(CredentialKind::GatewaySecret, "gw", Some("clinic-x"), 5),
            "not found",
        ),
    ];
    for (attempt, why) in refusals {
        let e = store
            .issue_device_credential(&attempt, &actor)
            .await
            .expect_err(why);
        assert!(e.to_string().contains(why), "{e} (wanted {why:?})");
    }
    let (gw, _) = store
        .issue_device_credential(
            &new(CredentialKind::GatewaySecret, "gw", Some(CLINIC), 6),
            &actor,
        )
        .await
        .expect("gateway");
    assert_eq!((gw.clinic_id.as_str(), gw.device_id()), (CLINIC, None));
    // The same gateway name for another clinic would make its MQTT
    // username ambiguous.
    let other = new(CredentialKind::GatewaySecret, "gw", Some("clinic-2"), 7);
    let e = store
        .issue_device_credential(&other, &actor)
        .await
        .expect_err("ambiguous");
    assert!(matches!(e, StoreError::Invalid(_)), "{e}");
    // A fingerprint is unique.
    let twice = new(CredentialKind::PenSecret, "pen-a", None, 1);
    assert!(store.issue_device_credential(&twice, &actor).await.is_err());

    let scoped = store
        .list_device_credentials(Some(&["clinic-2".to_owned()]))
        .await
        .expect("list");
    assert!(scoped.is_empty(), "{scoped:?}");
    let all = store.list_device_credentials(None).await.expect("list");
    assert_eq!(all.len(), 2);
}

async fn rotation_and_revocation_are_audited_once(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    let actor = Actor::User("admin-1".into());
    let (first, _) = store
        .issue_device_credential(&new(CredentialKind::PenSecret, "pen-a", None, 1), &actor)
        .await
        .expect("first");
    let (cert, _) = store
        .issue_device_credential(
            &new(CredentialKind::PenCertificate, "pen-a", None, 2),
            &actor,
        )
        .await
        .expect("certificate");
    let rotate = NewDeviceCredential {
        replace: true,
        ..new(CredentialKind::PenSecret, "pen-a", None, 3)
    };
    let (second, revoked) = store
        .issue_device_credential(&rotate, &actor)
        .await
        .expect("rotate");
    // Only the same kind is replaced.
    assert_eq!(
        revoked.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![first.id]
    );
    assert!(revoked[0].revoked_at.is_some());
    let cert_now = store
        .device_credential(&[2; 32])
        .await
        .expect("fp")
        .expect("cert");
    assert_eq!(cert_now.revoked_at, None, "{:?}", cert.id);

    let gone = store
        .revoke_device_credential(second.id, "lost", &actor)
        .await
        .expect("revoke");
    assert!(gone.revoked_at.is_some());
    let again = store
        .revoke_device_credential(second.id, "lost again", &actor)
        .await
        .expect("revoking twice is harmless");
    assert_eq!(
        again.revoked_at, gone.revoked_at,
        "the first revocation stands"
    );
    let missing = store
        .revoke_device_credential(uuid::Uuid::new_v4(), "x", &actor)
        .await
        .expect_err("unknown credential");
    assert!(matches!(missing, StoreError::NotFound(_)), "{missing}");

    let events = store.audit_page(CLINIC, 0, 100).await.expect("audit");
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e.event.action.as_str())
        .filter(|a| a.starts_with("device.credential"))
        .collect();
    assert_eq!(
        actions,
        [
            "device.credential_issued",
            "device.credential_issued",
            "device.credential_issued",
            "device.credential_revoked",
            "device.credential_revoked",
        ]
    );
}

/// A list scoped to clinics holds exactly their credentials.
async fn credentials_are_listed_by_clinic(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    second_clinic(&store).await;
    let actor = Actor::System;
    for (kind, principal, clinic, fp) in [
        (CredentialKind::PenSecret, "pen-a", None, 1),
        (CredentialKind::GatewaySecret, "gw-1", Some(CLINIC), 2),
        (CredentialKind::GatewaySecret, "gw-2", Some("clinic-2"), 3),
    ] {
        store
            .issue_device_credential(&new(kind, principal, clinic, fp), &actor)
            .await
            .expect("issue");
    }
    let listed = |clinics: &'static [&'static str]| {
        let store = store.clone();
        async move {
            let clinics: Vec<String> = clinics.iter().map(|c| (*c).to_owned()).collect();
            let mut principals: Vec<String> = store
                .list_device_credentials(Some(&clinics))
                .await
                .expect("list")
                .into_iter()
                .map(|c| c.principal)
                .collect();
            principals.sort();
            principals
        }
    };
    assert_eq!(listed(&[CLINIC]).await, ["gw-1", "pen-a"]);
    assert_eq!(listed(&["clinic-2"]).await, ["gw-2"]);
    assert_eq!(
        listed(&[CLINIC, "clinic-2"]).await,
        ["gw-1", "gw-2", "pen-a"]
    );
    assert!(listed(&[]).await.is_empty());
}
