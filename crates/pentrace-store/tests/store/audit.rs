//! The audit trail: per-clinic hash chains that verify, registry changes
//! with their old and new values, append-only tables, signed checkpoints.

use chrono::{Duration, Utc};
use pentrace_domain::FlagKind;
use pentrace_domain::audit::{Actor, ChainVerifier};
use pentrace_domain::checkpoint::{Checkpoint, signing_key};
use pentrace_domain::rules::recall_exposure;
use pentrace_store::{
    AuditDraft, AuditQuery, Clinic, FlagAction, FlagStep, GLOBAL_CHAIN, Lot, Role,
    SignatureMeaning, StoreError, StoredAuditEvent,
};
use serde_json::json;

use crate::fixture::TestStore;
use crate::helpers::*;

crate::conformance!(
    every_chain_verifies_page_by_page,
    registry_changes_record_old_and_new_values,
    append_audit_extends_each_chain,
    audit_events_are_found_by_action_time_and_chain,
    audit_tables_refuse_update_and_delete,
    checkpoints_are_stored_as_signed,
);

/// A whole chain, read in pages of `page` events.
async fn chain(store: &TestStore, clinic: &str, page: u32) -> Vec<StoredAuditEvent> {
    let mut events: Vec<StoredAuditEvent> = Vec::new();
    loop {
        let after = events.last().map_or(0, |e| e.event.position);
        let next = store.audit_page(clinic, after, page).await.expect("page");
        if next.is_empty() {
            return events;
        }
        assert!(next.len() <= page as usize);
        events.extend(next);
    }
}

fn actions(events: &[StoredAuditEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event.action.as_str()).collect()
}

async fn every_chain_verifies_page_by_page(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    let session = new_session();
    let mut batch = start_batch("pen-a", 1, &session, "chip:01");
    batch.flags = vec![
        flag("k1", FlagKind::DepthExceeded, "pen-a", Some(&session)),
        flag("k2", FlagKind::ClockSkew, "pen-a", None),
    ];
    let raised = commit_ok(&store, &batch).await;

    let heads = store.audit_heads().await.expect("heads");
    let names: Vec<&str> = heads.iter().map(|h| h.clinic_id.as_str()).collect();
    assert_eq!(names, [GLOBAL_CHAIN, CLINIC]);
    for head in &heads {
        // The verifier recomputes every hash from the event as read back:
        // the stored time must be the hashed time to the microsecond.
        let events = chain(&store, &head.clinic_id, 2).await;
        let mut verifier = ChainVerifier::default();
        for e in &events {
            verifier
                .check(&e.event, &e.prev_hash, &e.hash)
                .unwrap_or_else(|broken| panic!("{}: {broken}", head.clinic_id));
        }
        assert_eq!(
            (verifier.position(), verifier.head()),
            (head.position, head.hash)
        );
        let at = |p| store.audit_hash_at(&head.clinic_id, p);
        assert_eq!(at(head.position).await.expect("hash"), Some(head.hash));
        assert_eq!(at(head.position + 1).await.expect("hash"), None);
    }

    let global = chain(&store, GLOBAL_CHAIN, 10).await;
    assert_eq!(actions(&global), ["product.registered", "lot.registered"]);
    let clinic = chain(&store, CLINIC, 10).await;
    assert_eq!(
        actions(&clinic),
        [
            "clinic.registered",
            "device.registered",
            "session.started",
            "flag.raised",
            "flag.raised"
        ]
    );
    let started = &clinic[2].event;
    assert_eq!(started.actor, Actor::Device("pen-a".into()));
    assert_eq!(started.subject_id, session);
    let new = started.new_value.as_ref().expect("new value");
    assert_eq!(new["binding"], "owner");
    assert_eq!(new["cartridge_id"], "chip:01");
    let flagged: Vec<String> = clinic[3..]
        .iter()
        .map(|e| e.event.subject_id.clone())
        .collect();
    let ids: Vec<String> = raised.iter().map(|f| f.id.to_string()).collect();
    assert_eq!(flagged, ids);
    assert_eq!(clinic[3].event.actor, Actor::System);
    assert_eq!(
        clinic[3].event.at, clinic[4].event.at,
        "one commit, one time"
    );
}

async fn registry_changes_record_old_and_new_values(store: TestStore) {
    let system = Actor::System;
    let clinic = Clinic {
        id: "c1".into(),
        name: "One".into(),
        time_zone: "UTC".into(),
    };
    store.upsert_clinic(&clinic, &system).await.expect("clinic");
    // The same values again change nothing, so record nothing.
    store.upsert_clinic(&clinic, &system).await.expect("clinic");
    let renamed = Clinic {
        name: "One renamed".into(),
        ..clinic.clone()
    };
    let admin = Actor::User("admin-1".into());
    store.upsert_clinic(&renamed, &admin).await.expect("clinic");
    let events = chain(&store, "c1", 10).await;
    assert_eq!(actions(&events), ["clinic.registered", "clinic.changed"]);
    let one = json!({ "id": "c1", "name": "One", "time_zone": "UTC" });
    assert_eq!(events[0].event.old_value, None);
    assert_eq!(events[0].event.new_value, Some(one.clone()));
    assert_eq!(events[1].event.actor, admin);
    assert_eq!(events[1].event.old_value, Some(one));
    assert_eq!(
        events[1].event.new_value,
        Some(json!({ "id": "c1", "name": "One renamed", "time_zone": "UTC" }))
    );

    registry(&store, &["pen-a"]).await;
    // A lot registered recalled, with a time that has a fraction of a second:
    // its JSON is PostgreSQL's `to_jsonb` of the row on both stores.
    let lot = Lot {
        gtin: GTIN.into(),
        lot: "LOT-R".into(),
        expiry: chrono::NaiveDate::from_ymd_opt(2030, 1, 31),
        recalled_at: Some(t(0) + Duration::milliseconds(500)),
        recall_reason: Some("sterility".into()),
    };
    store.upsert_lot(&lot, &system).await.expect("lot");
    store
        .recall_lot(GTIN, "LOT-R", "again", t(9), recall_exposure, &admin)
        .await
        .expect("recall");
    let global = chain(&store, GLOBAL_CHAIN, 10).await;
    assert_eq!(
        actions(&global),
        [
            "product.registered",
            "lot.registered",
            "lot.registered",
            "lot.recalled"
        ]
    );
    assert_eq!(
        global[0].event.new_value,
        Some(json!({
            "gtin": GTIN, "name": "Nano 12", "max_depth_um": 2000, "rated_strokes": 100_000,
            "max_active_s": 1800, "shelf_life_days": 730,
        }))
    );
    assert_eq!(
        global[2].event.new_value,
        Some(json!({
            "gtin": GTIN, "lot": "LOT-R", "expiry": "2030-01-31",
            "recalled_at": "2025-03-01T09:00:00.5+00:00", "recall_reason": "sterility",
        }))
    );
    let recalled = &global[3].event;
    assert_eq!(recalled.subject_id, format!("{GTIN}:LOT-R"));
    assert_eq!(recalled.reason.as_deref(), Some("sterility"));
    let devices = chain(&store, CLINIC, 10).await;
    assert_eq!(
        devices[1].event.new_value,
        Some(json!({ "id": "pen-a", "clinic_id": CLINIC, "model": "pen-x", "max_depth_um": 2500 }))
    );
}

async fn append_audit_extends_each_chain(store: TestStore) {
    let draft = |clinic: &str, action: &str| AuditDraft {
        clinic_id: clinic.into(),
        actor: Actor::User("u-1".into()),
        action: action.into(),
        subject_type: "report".into(),
        subject_id: "r-1".into(),
        old_value: None,
        new_value: Some(json!({ "format": "csv", "rows": 3 })),
        reason: Some("quarterly review".into()),
    };
    store.append_audit(&[]).await.expect("nothing to append");
    assert!(store.audit_heads().await.expect("heads").is_empty());
    store
        .append_audit(&[
            draft("c-b", "report.exported"),
            draft("c-a", "report.exported"),
            draft("c-b", "report.printed"),
        ])
        .await
        .expect("append");
    store
        .append_audit(&[draft("c-a", "report.printed")])
        .await
        .expect("append");
    let heads = store.audit_heads().await.expect("heads");
    let positions: Vec<(&str, u64)> = heads
        .iter()
        .map(|h| (h.clinic_id.as_str(), h.position))
        .collect();
    assert_eq!(positions, [("c-a", 2), ("c-b", 2)]);
    let b = chain(&store, "c-b", 10).await;
    assert_eq!(actions(&b), ["report.exported", "report.printed"]);
    let first = &b[0].event;
    assert_eq!((first.position, first.subject_id.as_str()), (1, "r-1"));
    assert_eq!(first.actor, Actor::User("u-1".into()));
    assert_eq!(first.new_value, Some(json!({ "format": "csv", "rows": 3 })));
    assert_eq!(first.reason.as_deref(), Some("quarterly review"));
    assert_eq!(b[1].prev_hash, b[0].hash);
}

async fn audit_events_are_found_by_action_time_and_chain(store: TestStore) {
    let draft = |clinic: &str, action: &str, subject: &str| AuditDraft {
        clinic_id: clinic.into(),
        actor: Actor::System,
        action: action.into(),
        subject_type: "device_credential".into(),
        subject_id: subject.into(),
        old_value: None,
        new_value: Some(json!({ "reason": "revoked" })),
        reason: None,
    };
    let before = Utc::now() - Duration::seconds(1);
    store
        .append_audit(&[
            draft("c-a", "device.auth_refused", "1"),
            draft("c-b", "device.auth_refused", "2"),
            draft("c-a", "report.exported", "3"),
            draft("c-b", "device.credential_shared", "4"),
        ])
        .await
        .expect("append");
    store
        .append_audit(&[draft("c-a", "device.credential_shared", "5")])
        .await
        .expect("append");
    let query = |actions: &[&str], since, clinics: Option<&[&str]>, limit| AuditQuery {
        actions: actions.iter().map(|a| a.to_string()).collect(),
        since,
        clinic_ids: clinics.map(|cs| cs.iter().map(|c| c.to_string()).collect()),
        limit,
    };
    let subjects = |events: Vec<pentrace_domain::audit::AuditEvent>| -> Vec<String> {
        events.into_iter().map(|e| e.subject_id).collect()
    };
    let both = ["device.auth_refused", "device.credential_shared"];
    let all = store
        .audit_events(&query(&both, before, None, 100))
        .await
        .expect("every chain");
    assert_eq!(subjects(all.clone()), ["1", "2", "4", "5"], "oldest first");
    assert_eq!(all[3].new_value, Some(json!({ "reason": "revoked" })));
    let a = store
        .audit_events(&query(&both, before, Some(&["c-a"]), 100))
        .await
        .expect("one chain");
    assert_eq!(subjects(a), ["1", "5"]);
    let none = store
        .audit_events(&query(&both, before, Some(&[]), 100))
        .await
        .expect("no chain");
    assert!(none.is_empty(), "an empty scope sees nothing");
    let later = store
        .audit_events(&query(&both, Utc::now() + Duration::seconds(1), None, 100))
        .await
        .expect("after");
    assert!(later.is_empty());
    let limited = store
        .audit_events(&query(&["device.auth_refused"], before, None, 1))
        .await
        .expect("limit");
    assert_eq!(subjects(limited), ["1"]);
}

async fn audit_tables_refuse_update_and_delete(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    let session = new_session();
    let mut batch = start_batch("pen-a", 1, &session, "chip:01");
    batch.flags = vec![flag("k1", FlagKind::DepthExceeded, "pen-a", Some(&session))];
    let raised = commit_ok(&store, &batch).await;
    let officer = store
        .create_user(
            "olga",
            Role::ComplianceOfficer,
            &[CLINIC.into()],
            &Actor::System,
        )
        .await
        .expect("user");
    let action = FlagAction {
        flag_id: raised[0].id,
        step: FlagStep::Acknowledge,
        signer: officer,
        meaning: SignatureMeaning::Reviewed,
        reason: "seen".into(),
    };
    store.sign_flag(&action).await.expect("sign");
    let head = store.audit_heads().await.expect("heads").remove(0);
    let key = signing_key(&[7; 32]);
    let cp = Checkpoint::sign(&key, &head.clinic_id, head.position, head.hash, t(0));
    store.save_checkpoint(&cp).await.expect("checkpoint");

    for (table, column) in [
        ("audit_events", "reason"),
        ("audit_checkpoints", "position"),
        ("flag_actions", "reason"),
    ] {
        let before = store.count(&format!("SELECT count(*) FROM {table}")).await;
        assert!(before > 0, "{table} has rows");
        for sql in [
            format!("UPDATE {table} SET {column} = {column}"),
            format!("DELETE FROM {table}"),
        ] {
            let refused = store.execute(&sql).await;
            let message = refused.expect_err(&sql).to_string();
            assert!(message.contains("append-only"), "{sql}: {message}");
        }
        let after = store.count(&format!("SELECT count(*) FROM {table}")).await;
        assert_eq!(after, before, "{table}");
    }
}

async fn checkpoints_are_stored_as_signed(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    let key = signing_key(&[7; 32]);
    // Microseconds: the precision both stores keep, and the signature covers.
    let now = chrono::DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).expect("now");
    let mut saved = Vec::new();
    for head in store.audit_heads().await.expect("heads") {
        let cp = Checkpoint::sign(&key, &head.clinic_id, head.position, head.hash, now);
        store.save_checkpoint(&cp).await.expect("checkpoint");
        saved.push(cp);
    }
    assert_eq!(saved.len(), 2);
    let stored = store.checkpoints().await.expect("checkpoints");
    assert_eq!(stored, saved);
    let public = key.verifying_key().to_bytes();
    for cp in &stored {
        cp.verify(Some(&public)).expect("signature holds");
    }
    // The same checkpoint twice is refused, not stored twice.
    let again = store.save_checkpoint(&saved[0]).await;
    assert!(matches!(again, Err(StoreError::Rejected(_))), "{again:?}");
    assert_eq!(store.checkpoints().await.expect("checkpoints").len(), 2);
}
