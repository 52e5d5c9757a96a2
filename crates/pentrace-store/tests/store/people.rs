//! Users, bearer tokens and signed flag actions.

use pentrace_domain::FlagKind;
use pentrace_domain::audit::Actor;
use pentrace_store::{
    FlagAction, FlagState, FlagStep, GLOBAL_CHAIN, Role, SignatureMeaning, StoreError, User,
};
use uuid::Uuid;

use crate::fixture::TestStore;
use crate::helpers::*;

crate::conformance!(
    users_and_tokens_are_stored_and_audited,
    signed_actions_move_a_flag_through_its_lifecycle,
);

async fn users_and_tokens_are_stored_and_audited(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    second_clinic(&store).await;
    let admin = Actor::User("admin-1".into());
    let clinics = ["clinic-2".to_owned(), CLINIC.to_owned()];
    let olga = store
        .create_user("olga", Role::ComplianceOfficer, &clinics, &admin)
        .await
        .expect("user");
    assert_eq!(olga.clinics, clinics, "as given");
    let stored = store.user_by_name("olga").await.expect("by name");
    let sorted = User {
        clinics: vec![CLINIC.into(), "clinic-2".into()],
        ..olga.clone()
    };
    assert_eq!(stored, Some(sorted.clone()), "clinics in order");
    let twice = store.create_user("olga", Role::Admin, &[], &admin).await;
    assert!(matches!(twice, Err(StoreError::Invalid(_))), "{twice:?}");
    let nowhere = store
        .create_user("nemo", Role::ClinicOwner, &["nowhere".into()], &admin)
        .await;
    assert!(
        matches!(nowhere, Err(StoreError::NotFound(_))),
        "{nowhere:?}"
    );
    assert_eq!(store.user_by_name("nemo").await.expect("by name"), None);

    let hash = [1u8; 32];
    let token = store
        .issue_token(olga.id, &hash, &admin)
        .await
        .expect("token");
    assert_eq!(
        store.user_by_token(&hash).await.expect("by token"),
        Some(sorted)
    );
    assert_eq!(store.user_by_token(&[2; 32]).await.expect("by token"), None);
    let reused = store.issue_token(olga.id, &hash, &admin).await;
    assert!(matches!(reused, Err(StoreError::Rejected(_))), "{reused:?}");
    let unknown = store.issue_token(Uuid::new_v4(), &[3; 32], &admin).await;
    assert!(
        matches!(unknown, Err(StoreError::NotFound(_))),
        "{unknown:?}"
    );

    store.revoke_token(token, &admin).await.expect("revoke");
    assert_eq!(store.user_by_token(&hash).await.expect("by token"), None);
    store
        .revoke_token(token, &admin)
        .await
        .expect("revoke again");
    let missing = store.revoke_token(Uuid::new_v4(), &admin).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );

    let events = store.audit_page(GLOBAL_CHAIN, 2, 100).await.expect("audit");
    let actions: Vec<&str> = events.iter().map(|e| e.event.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "user.created",
            "token.issued",
            "token.revoked",
            "token.revoked"
        ]
    );
    assert!(events.iter().all(|e| e.event.actor == admin));
    assert!(
        events
            .iter()
            .all(|e| e.event.subject_id == olga.id.to_string())
    );
    let issued = events[1].event.new_value.as_ref().expect("new value");
    assert_eq!(issued["detail"]["token_id"], token.to_string());
    assert_eq!(issued["role"], "compliance_officer");
}

async fn signed_actions_move_a_flag_through_its_lifecycle(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    second_clinic(&store).await;
    let session = new_session();
    let mut batch = start_batch("pen-a", 1, &session, "chip:01");
    batch.flags = vec![flag("k1", FlagKind::DepthExceeded, "pen-a", Some(&session))];
    let flag = commit_ok(&store, &batch).await.remove(0);
    let user = |name: &'static str, role: Role, clinics: &[&str]| {
        let store = store.clone();
        let clinics: Vec<String> = clinics.iter().map(|c| (*c).to_owned()).collect();
        async move {
            store
                .create_user(name, role, &clinics, &Actor::System)
                .await
                .expect("user")
        }
    };
    let officer = user("olga", Role::ComplianceOfficer, &[CLINIC]).await;
    let outsider = user("otto", Role::ClinicOwner, &["clinic-2"]).await;
    let admin = user("ada", Role::Admin, &[]).await;
    let act = |signer: &User, step, reason: &str| FlagAction {
        flag_id: flag.id,
        step,
        signer: signer.clone(),
        meaning: SignatureMeaning::Reviewed,
        reason: reason.into(),
    };

    let silent = store
        .sign_flag(&act(&officer, FlagStep::Acknowledge, " "))
        .await;
    assert!(matches!(silent, Err(StoreError::Invalid(_))), "{silent:?}");
    let foreign = store
        .sign_flag(&act(&outsider, FlagStep::Acknowledge, "looked"))
        .await;
    assert!(
        matches!(foreign, Err(StoreError::NotFound(_))),
        "{foreign:?}"
    );
    let unknown = FlagAction {
        flag_id: Uuid::new_v4(),
        ..act(&admin, FlagStep::Acknowledge, "looked")
    };
    let unknown = store.sign_flag(&unknown).await;
    assert!(
        matches!(unknown, Err(StoreError::NotFound(_))),
        "{unknown:?}"
    );

    let acked = store
        .sign_flag(&act(&officer, FlagStep::Acknowledge, "checked the pen"))
        .await
        .expect("acknowledge");
    assert_eq!(acked.state, FlagState::Acknowledged);
    assert_eq!((acked.id, acked.raised_at), (flag.id, flag.raised_at));
    let again = store
        .sign_flag(&act(&officer, FlagStep::Acknowledge, "again"))
        .await;
    assert!(matches!(again, Err(StoreError::Invalid(_))), "{again:?}");
    let resolved = store
        .sign_flag(&FlagAction {
            meaning: SignatureMeaning::Responsible,
            ..act(&admin, FlagStep::Resolve, "cartridge replaced")
        })
        .await
        .expect("resolve");
    assert_eq!(resolved.state, FlagState::Resolved);
    let after = store
        .sign_flag(&act(&admin, FlagStep::Resolve, "again"))
        .await;
    assert!(matches!(after, Err(StoreError::Invalid(_))), "{after:?}");

    // Each signature is bound to the flag's audit event before it.
    let events = store.audit_page(CLINIC, 0, 100).await.expect("audit");
    let about_flag: Vec<_> = events
        .iter()
        .filter(|e| e.event.subject_id == flag.id.to_string())
        .collect();
    let actions: Vec<&str> = about_flag.iter().map(|e| e.event.action.as_str()).collect();
    assert_eq!(
        actions,
        ["flag.raised", "flag.acknowledged", "flag.resolved"]
    );
    let signed = store.flag_actions(&[flag.id]).await.expect("actions");
    let steps: Vec<(&str, &str, &str, &str)> = signed
        .iter()
        .map(|a| {
            (
                a.step.as_str(),
                a.signer_name.as_str(),
                a.meaning.as_str(),
                a.reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("acknowledge", "olga", "reviewed", "checked the pen"),
            ("resolve", "ada", "responsible", "cartridge replaced")
        ]
    );
    assert_eq!(signed[0].bound_hash, hex::encode(about_flag[0].hash));
    assert_eq!(signed[1].bound_hash, hex::encode(about_flag[1].hash));
    let ack = &about_flag[1].event;
    assert_eq!(ack.actor, Actor::User(officer.id.to_string()));
    assert_eq!(ack.reason.as_deref(), Some("checked the pen"));
    let new = ack.new_value.as_ref().expect("new value");
    assert_eq!(new["bound_to"], hex::encode(about_flag[0].hash));
    assert_eq!(new["state"], "acknowledged");
    assert!(
        store
            .flag_actions(&[Uuid::new_v4()])
            .await
            .expect("none")
            .is_empty()
    );
}
