//! Probes of the behaviours the one-engine rewrite moved: statements that
//! now run the same SQL text on both databases, and the logic the engine
//! took over from the two dialects.

use pentrace_domain::FlagKind;
use pentrace_domain::audit::Actor;
use pentrace_domain::rules::CartridgeRelation;
use pentrace_store::{
    CommitOutcome, CredentialKind, Device, FlagQuery, Lot, NewDeviceCredential, Product,
    SessionQuery, StoreError, WriteBatch,
};

use crate::fixture::TestStore;
use crate::helpers::*;

crate::conformance!(
    lots_are_listed_for_every_gtin_or_one,
    credentials_of_every_clinic_or_none_are_listed,
    a_moved_pen_takes_its_credentials_along,
    flags_are_found_by_any_spelling_of_their_session,
    a_hostile_batch_is_refused_before_anything_is_written,
    placeholders_bind_by_number_on_both_stores,
    writes_of_one_session_spelled_two_ways_add_up_alike,
    registry_values_past_9999_and_before_1_ad_are_written_as_postgres_wrote_them,
);

async fn lots_are_listed_for_every_gtin_or_one(store: TestStore) {
    registry(&store, &[]).await;
    let other = Product {
        gtin: "00000000000017".into(),
        name: "Other".into(),
        max_depth_um: 0,
        rated_strokes: 0,
        max_active_s: 0,
        shelf_life_days: 0,
    };
    store
        .upsert_product(&other, &Actor::System)
        .await
        .expect("product");
    for lot in ["B", "A"] {
        let lot = Lot {
            gtin: other.gtin.clone(),
            lot: lot.into(),
            expiry: None,
            recalled_at: None,
            recall_reason: None,
        };
        store.upsert_lot(&lot, &Actor::System).await.expect("lot");
    }
    let all = store.list_lots(None).await.expect("every lot");
    let keys: Vec<(&str, &str)> = all
        .iter()
        .map(|l| (l.gtin.as_str(), l.lot.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("00000000000017", "A"),
            ("00000000000017", "B"),
            (GTIN, LOT)
        ]
    );
    let one = store.list_lots(Some(GTIN)).await.expect("one gtin");
    assert_eq!(one.len(), 1);
    assert!(
        store
            .list_lots(Some("nope"))
            .await
            .expect("none")
            .is_empty()
    );
}

fn pen_secret(principal: &str, fp: u8) -> NewDeviceCredential {
    NewDeviceCredential {
        kind: CredentialKind::PenSecret,
        principal: principal.into(),
        clinic_id: None,
        fingerprint: [fp; 32],
        not_after: None,
        replace: false,
    }
}

async fn credentials_of_every_clinic_or_none_are_listed(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    store
        .issue_device_credential(&pen_secret("pen-a", 1), &Actor::System)
        .await
        .expect("issue");
    assert_eq!(
        store
            .list_device_credentials(None)
            .await
            .expect("all")
            .len(),
        1
    );
    let none: &[String] = &[];
    assert!(
        store
            .list_device_credentials(Some(none))
            .await
            .expect("none")
            .is_empty()
    );
    let other = ["clinic-9".to_owned()];
    assert!(
        store
            .list_device_credentials(Some(&other))
            .await
            .expect("other")
            .is_empty()
    );
}

async fn a_moved_pen_takes_its_credentials_along(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    second_clinic(&store).await;
    let (issued, _) = store
        .issue_device_credential(&pen_secret("pen-a", 2), &Actor::System)
        .await
        .expect("issue");
    assert_eq!(issued.clinic_id, CLINIC);
    let moved = Device {
        id: "pen-a".into(),
        clinic_id: "clinic-2".into(),
        model: "pen-x".into(),
        max_depth_um: 2500,
    };
    store
        .upsert_device(&moved, &Actor::System)
        .await
        .expect("move");
    let found = store
        .device_credential(&[2; 32])
        .await
        .expect("by fingerprint")
        .expect("stored");
    assert_eq!(found.clinic_id, "clinic-2");
    let two = ["clinic-2".to_owned()];
    assert_eq!(
        store
            .list_device_credentials(Some(&two))
            .await
            .expect("two")
            .len(),
        1
    );
}

async fn flags_are_found_by_any_spelling_of_their_session(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    let session = new_session();
    let batch = WriteBatch {
        messages: vec![message("pen-a", 1, "session_start", Some(&session))],
        sessions: vec![session_write(
            &session,
            "pen-a",
            None,
            CartridgeRelation::Unidentified,
            t(0),
        )],
        flags: vec![flag(
            "k-1",
            FlagKind::DepthExceeded,
            "pen-a",
            Some(&session),
        )],
        ..WriteBatch::default()
    };
    commit_ok(&store, &batch).await;
    let query = FlagQuery {
        session_id: Some(session.to_uppercase()),
        ..FlagQuery::default()
    };
    let flags = store.list_flags(&query).await.expect("flags");
    assert_eq!(flags.len(), 1);
    assert_eq!(flags[0].session_id.as_deref(), Some(session.as_str()));
}

/// Values a pen could send that no column can hold are refused as
/// `Invalid` before anything is stored, on both stores alike.
async fn a_hostile_batch_is_refused_before_anything_is_written(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    let mut key = message("pen-a", 1, "stroke_batch", None);
    key.seq = u64::MAX;
    let huge = WriteBatch {
        messages: vec![key],
        ..WriteBatch::default()
    };
    let outcome = store.commit(&huge).await;
    assert!(
        matches!(outcome, Err(StoreError::Invalid(_))),
        "{outcome:?}"
    );
    let bad_session = WriteBatch {
        messages: vec![message("pen-a", 1, "session_start", Some("not-a-uuid"))],
        ..WriteBatch::default()
    };
    let outcome = store.commit(&bad_session).await;
    assert!(
        matches!(outcome, Err(StoreError::Invalid(_))),
        "{outcome:?}"
    );
    assert_eq!(store.count("SELECT count(*) FROM device_messages").await, 0);
}

/// The engine's shared statements reuse `$n` and name it out of order
/// (`SET clinic_id = $2 WHERE device_id = $1`): sqlx-sqlite binds a `$n`
/// to the n-th value by its number, as PostgreSQL does, not by where it
/// first appears.
async fn placeholders_bind_by_number_on_both_stores(store: TestStore) {
    const SQL: &str = "SELECT $2 || '-' || $1 || '-' || $2";
    let text: String = match &store {
        TestStore::Postgres(s) => sqlx::query_scalar(SQL)
            .bind("a")
            .bind("b")
            .fetch_one(s.pool())
            .await
            .expect("postgres"),
        TestStore::Sqlite(s) => sqlx::query_scalar(SQL)
            .bind("a")
            .bind("b")
            .fetch_one(s.pool())
            .await
            .expect("sqlite"),
    };
    assert_eq!(text, "b-a-b");
}

/// A session id is one session however the pen spells it (`ABC…` and
/// `abc…`, as `uuid` compares them): two writes of one session in a batch,
/// spelled two ways, add up on both stores. PostgreSQL refused two
/// deciding writes of one row in its one `ON CONFLICT DO UPDATE`, and its
/// `UPDATE … FROM` of two adding rows kept only one row's deltas, while
/// SQLite, writing row by row, added both.
async fn writes_of_one_session_spelled_two_ways_add_up_alike(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    let session = new_session();
    let upper = session.to_uppercase();
    let mut first = session_write(
        &session,
        "pen-a",
        None,
        CartridgeRelation::Unidentified,
        t(0),
    );
    first.add_strokes = 1;
    let mut again = session_write(&upper, "pen-a", None, CartridgeRelation::Unidentified, t(0));
    again.add_strokes = 2;
    let batch = WriteBatch {
        messages: vec![message("pen-a", 1, "session_start", Some(&session))],
        sessions: vec![first, again],
        ..WriteBatch::default()
    };
    let outcome = store.commit(&batch).await;
    assert!(
        matches!(outcome, Ok(CommitOutcome::Committed { .. })),
        "{outcome:?}"
    );
    let batch = WriteBatch {
        messages: vec![message("pen-a", 2, "stroke_batch", Some(&session))],
        sessions: vec![
            session_delta(&session, "pen-a", 10, 500),
            session_delta(&upper, "pen-a", 20, 600),
        ],
        ..WriteBatch::default()
    };
    commit_ok(&store, &batch).await;
    let query = SessionQuery {
        device_id: "pen-a".into(),
        ..SessionQuery::default()
    };
    let stored = store.list_sessions(&query).await.expect("sessions");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].session_id, session);
    assert_eq!(
        (stored[0].strokes, stored[0].samples, stored[0].max_depth_um),
        (33, 2, 600)
    );
}

/// A lot's audited values are PostgreSQL's `to_jsonb` of the row (what
/// registry events said before the engine wrote them in Rust), also for a
/// mistyped year: `10000-01-31T…`, not chrono's `+10000-01-31T…`, and
/// `0099-01-31T… BC`, not `-0098-01-31T…`. (An expiry date that far off is
/// PostgreSQL's only: SQLite's `date(expiry) IS expiry` check refuses
/// years outside 0000-9999.)
async fn registry_values_past_9999_and_before_1_ad_are_written_as_postgres_wrote_them(
    store: TestStore,
) {
    registry(&store, &[]).await;
    let far = chrono::NaiveDate::from_ymd_opt(10000, 1, 31).expect("date");
    let bc = chrono::NaiveDate::from_ymd_opt(-98, 1, 31).expect("date");
    let normal = chrono::NaiveDate::from_ymd_opt(2030, 1, 31).expect("date");
    let mut lots = vec![("FAR", normal, far), ("BC", normal, bc)];
    if store.backend() == crate::fixture::Backend::Postgres {
        lots.extend([("FAR-EXPIRY", far, far), ("BC-EXPIRY", bc, bc)]);
    }
    for (name, expiry, recalled) in &lots {
        let lot = Lot {
            gtin: GTIN.into(),
            lot: (*name).into(),
            expiry: Some(*expiry),
            recalled_at: Some(
                recalled
                    .and_hms_milli_opt(9, 0, 0, 500)
                    .expect("time")
                    .and_utc(),
            ),
            recall_reason: Some("typo".into()),
        };
        store.upsert_lot(&lot, &Actor::System).await.expect("lot");
    }
    let events = store
        .audit_page(pentrace_store::GLOBAL_CHAIN, 0, 100)
        .await
        .expect("chain");
    let values: Vec<(String, String)> = events
        .iter()
        .filter(|e| {
            e.event.action == "lot.registered" && e.event.subject_id != format!("{GTIN}:{LOT}")
        })
        .map(|e| {
            let v = e.event.new_value.clone().expect("new value");
            (
                v["expiry"].as_str().unwrap_or_default().to_owned(),
                v["recalled_at"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let mut expected = vec![
        ("2030-01-31", "10000-01-31T09:00:00.5+00:00"),
        ("2030-01-31", "0099-01-31T09:00:00.5+00:00 BC"),
    ];
    if let TestStore::Postgres(s) = &store {
        expected.extend([
            ("10000-01-31", "10000-01-31T09:00:00.5+00:00"),
            ("0099-01-31 BC", "0099-01-31T09:00:00.5+00:00 BC"),
        ]);
        // What PostgreSQL itself writes for these rows.
        let mut pg: Vec<(String, String)> = Vec::new();
        for (name, ..) in &lots {
            pg.push(
                sqlx::query_as(
                    "SELECT to_jsonb(l) ->> 'expiry', to_jsonb(l) ->> 'recalled_at' \
                     FROM lots l WHERE lot = $1",
                )
                .bind(*name)
                .fetch_one(s.pool())
                .await
                .expect("to_jsonb"),
            );
        }
        assert_eq!(pg, values);
    }
    let expected: Vec<(String, String)> = expected
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    assert_eq!(values, expected);
}
