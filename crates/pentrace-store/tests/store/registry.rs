//! Registry upserts and recalls.

use pentrace_domain::FlagKind;
use pentrace_domain::rules::{CartridgeRelation, recall_exposure};
use pentrace_store::{Clinic, Device, Lot, Product, StoreError, WriteBatch};

use crate::fixture::TestStore;
use crate::helpers::*;

crate::conformance!(
    a_batch_judged_before_a_recall_conflicts_after_it,
    a_recall_flags_earlier_sessions_once,
    a_session_flagged_recalled_gets_no_exposure_flag,
    upserts_return_what_is_stored_and_name_missing_parents,
);

/// Commits a session of `lot` started at `started`.
async fn session_of_lot(store: &TestStore, seq: u64, lot: &str, started: i64) -> String {
    let session = new_session();
    let mut write = session_write(
        &session,
        "pen-a",
        None,
        CartridgeRelation::Unidentified,
        t(started),
    );
    write.lot = Some(lot.into());
    let batch = WriteBatch {
        messages: vec![message("pen-a", seq, "session_start", Some(&session))],
        sessions: vec![write],
        ..WriteBatch::default()
    };
    commit_ok(store, &batch).await;
    session
}

/// A batch judged while its lot was not recalled, committed after the
/// recall: the commit refuses (the pipeline judges it again), rather than
/// store a session of a recalled lot without its flag.
async fn a_batch_judged_before_a_recall_conflicts_after_it(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    let session = new_session();
    let mut write = session_write(
        &session,
        "pen-a",
        None,
        CartridgeRelation::Unidentified,
        t(0),
    );
    write.lot = Some(LOT.into());
    let batch = WriteBatch {
        messages: vec![message("pen-a", 1, "session_start", Some(&session))],
        sessions: vec![write],
        unrecalled_lots: vec![(GTIN.into(), LOT.into())],
        ..WriteBatch::default()
    };
    let actor = pentrace_domain::audit::Actor::System;
    store
        .recall_lot(GTIN, LOT, "sterility", t(100), recall_exposure, &actor)
        .await
        .expect("recall");
    let outcome = store.commit(&batch).await.expect("commit");
    assert!(
        matches!(&outcome, pentrace_store::CommitOutcome::Conflict { detail } if detail.contains("recalled")),
        "{outcome:?}"
    );
    let other = WriteBatch {
        unrecalled_lots: vec![(GTIN.into(), "LOT-B".into())],
        ..batch
    };
    commit_ok(&store, &other).await;
}

async fn a_recall_flags_earlier_sessions_once(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    let s1 = session_of_lot(&store, 1, LOT, 0).await;
    let s2 = session_of_lot(&store, 2, LOT, 100).await;
    let _after = session_of_lot(&store, 3, LOT, 300).await;
    let _other_lot = session_of_lot(&store, 4, "LOT-B", 0).await;

    let (lot, flags) = store
        .recall_lot(
            GTIN,
            LOT,
            "sterility",
            t(200),
            recall_exposure,
            &pentrace_domain::audit::Actor::System,
        )
        .await
        .expect("recall");
    assert_eq!(lot.recalled_at, Some(t(200)));
    assert_eq!(lot.recall_reason.as_deref(), Some("sterility"));
    let flagged: Vec<_> = flags.iter().filter_map(|f| f.session_id.clone()).collect();
    assert_eq!(flagged, [s1.clone(), s2]);
    assert!(
        flags
            .iter()
            .all(|f| f.kind == FlagKind::RecallExposure && f.seq == 0)
    );
    assert!(
        flags
            .iter()
            .all(|f| f.clinic_id == CLINIC && f.device_id == "pen-a")
    );

    // Again, later and for another reason: the first recall stands.
    let (lot, flags) = store
        .recall_lot(
            GTIN,
            LOT,
            "other",
            t(400),
            recall_exposure,
            &pentrace_domain::audit::Actor::System,
        )
        .await
        .expect("recall");
    assert_eq!(
        (lot.recalled_at, lot.recall_reason.as_deref()),
        (Some(t(200)), Some("sterility"))
    );
    assert!(flags.is_empty());
    // A session committed after the recall but started before it (judged
    // on stale facts) is caught by running the recall again.
    let late = session_of_lot(&store, 5, LOT, 150).await;
    let (_, flags) = store
        .recall_lot(
            GTIN,
            LOT,
            "sterility",
            t(200),
            recall_exposure,
            &pentrace_domain::audit::Actor::System,
        )
        .await
        .expect("recall");
    assert_eq!(flags.len(), 1);
    assert_eq!(flags[0].session_id.as_deref(), Some(late.as_str()));
    assert_eq!(store.count("SELECT count(*) FROM flags").await, 3);

    let missing = store
        .recall_lot(
            GTIN,
            "NOPE",
            "x",
            t(0),
            recall_exposure,
            &pentrace_domain::audit::Actor::System,
        )
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
    let lots = store.list_lots(Some(GTIN)).await.expect("lots");
    assert_eq!(lots.len(), 1);
    assert_eq!(lots[0].recalled_at, Some(t(200)));
    // Re-registering the lot does not undo the recall.
    let again = Lot {
        gtin: GTIN.into(),
        lot: LOT.into(),
        expiry: None,
        recalled_at: None,
        recall_reason: None,
    };
    let stored = store
        .upsert_lot(&again, &pentrace_domain::audit::Actor::System)
        .await
        .expect("upsert");
    assert_eq!(
        (
            stored.expiry,
            stored.recalled_at,
            stored.recall_reason.as_deref()
        ),
        (None, Some(t(200)), Some("sterility"))
    );
}

async fn a_session_flagged_recalled_gets_no_exposure_flag(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    let flagged = new_session();
    let mut write = session_write(
        &flagged,
        "pen-a",
        None,
        CartridgeRelation::Unidentified,
        t(0),
    );
    write.lot = Some(LOT.into());
    let batch = WriteBatch {
        messages: vec![message("pen-a", 1, "session_start", Some(&flagged))],
        sessions: vec![write],
        flags: vec![flag(
            "recalled",
            FlagKind::CartridgeRecalled,
            "pen-a",
            Some(&flagged),
        )],
        ..WriteBatch::default()
    };
    commit_ok(&store, &batch).await;
    let exposed = session_of_lot(&store, 2, LOT, 100).await;
    let (_, flags) = store
        .recall_lot(
            GTIN,
            LOT,
            "sterility",
            t(200),
            recall_exposure,
            &pentrace_domain::audit::Actor::System,
        )
        .await
        .expect("recall");
    let flagged: Vec<_> = flags.iter().filter_map(|f| f.session_id.clone()).collect();
    assert_eq!(flagged, [exposed]);
}

async fn upserts_return_what_is_stored_and_name_missing_parents(store: TestStore) {
    let clinic = Clinic {
        id: "c1".into(),
        name: "One".into(),
        time_zone: "UTC".into(),
    };
    assert_eq!(
        store
            .upsert_clinic(&clinic, &pentrace_domain::audit::Actor::System)
            .await
            .expect("clinic"),
        clinic
    );
    let renamed = Clinic {
        name: "One renamed".into(),
        ..clinic.clone()
    };
    assert_eq!(
        store
            .upsert_clinic(&renamed, &pentrace_domain::audit::Actor::System)
            .await
            .expect("clinic"),
        renamed
    );

    let device = Device {
        id: "pen-1".into(),
        clinic_id: "c1".into(),
        model: "x".into(),
        max_depth_um: 3000,
    };
    assert_eq!(
        store
            .upsert_device(&device, &pentrace_domain::audit::Actor::System)
            .await
            .expect("device"),
        device
    );
    let orphan = Device {
        clinic_id: "nowhere".into(),
        ..device.clone()
    };
    let err = store
        .upsert_device(&orphan, &pentrace_domain::audit::Actor::System)
        .await;
    assert!(
        matches!(&err, Err(StoreError::NotFound(what)) if what == "clinic nowhere"),
        "{err:?}"
    );
    let too_deep = Device {
        max_depth_um: u32::MAX,
        ..device.clone()
    };
    assert!(matches!(
        store
            .upsert_device(&too_deep, &pentrace_domain::audit::Actor::System)
            .await,
        Err(StoreError::Invalid(_))
    ));

    let product = Product {
        gtin: GTIN.into(),
        name: "Nano".into(),
        max_depth_um: 0,
        rated_strokes: 0,
        max_active_s: 0,
        shelf_life_days: 365,
    };
    assert_eq!(
        store
            .upsert_product(&product, &pentrace_domain::audit::Actor::System)
            .await
            .expect("product"),
        product
    );
    assert_eq!(
        store.list_products().await.expect("products"),
        vec![product]
    );
    let lot = Lot {
        gtin: "00000000000017".into(),
        lot: "L".into(),
        expiry: None,
        recalled_at: None,
        recall_reason: None,
    };
    assert!(matches!(
        store
            .upsert_lot(&lot, &pentrace_domain::audit::Actor::System)
            .await,
        Err(StoreError::NotFound(_))
    ));

    // Auto-registration creates the clinic and the device once, and never
    // moves a registered device.
    store
        .auto_register_device("pen-new", "default")
        .await
        .expect("auto");
    store
        .auto_register_device("pen-new", "default")
        .await
        .expect("auto again");
    store
        .auto_register_device("pen-1", "default")
        .await
        .expect("auto known");
    let clinics = store.list_clinics().await.expect("clinics");
    let ids: Vec<&str> = clinics.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["c1", "default"]);
    assert_eq!(clinics[1].name, "default");
    let devices = store.list_devices(None, t(0)).await.expect("devices");
    let placed: Vec<(&str, &str)> = devices
        .iter()
        .map(|d| (d.device.id.as_str(), d.device.clinic_id.as_str()))
        .collect();
    assert_eq!(placed, [("pen-1", "c1"), ("pen-new", "default")]);
    assert_eq!(devices[1].device.model, "unknown");
    // Audited once, when pen-new was created: the repeat and pen-1 (which
    // stays in c1) were not auto-registered.
    let events = store.audit_page("default", 0, 100).await.expect("audit");
    let registered: Vec<&str> = events
        .iter()
        .filter(|e| e.event.action == "device.auto_registered")
        .map(|e| e.event.subject_id.as_str())
        .collect();
    assert_eq!(registered, ["pen-new"]);
}
