//! `commit` and `load_facts`: the arbiters, samples, flags, sessions, holes.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use pentrace_domain::FlagKind;
use pentrace_domain::rules::{CartridgeRelation, SeqHole};
use pentrace_store::{
    ActivityRow, CommitOutcome, FactsQuery, FlagQuery, NewFlag, SessionQuery, StoreError,
    WriteBatch,
};

use crate::fixture::TestStore;
use crate::helpers::*;

crate::conformance!(
    bind_once_holds_under_concurrent_claims,
    a_redelivered_message_conflicts_and_nothing_doubles,
    samples_are_stored_exactly_as_sent,
    flags_are_deduped_by_key,
    session_writes_add_their_deltas,
    adding_to_an_unstored_session_is_a_conflict,
    malformed_batches_are_invalid,
    load_facts_returns_what_commit_wrote,
    holes_are_replaced_listed_and_flagged,
);

async fn bind_once_holds_under_concurrent_claims(store: TestStore) {
    if store.skip_on_timescaledb(
        "bind_once_holds_under_concurrent_claims",
        "a race needs two connections at once; this server serves one at a time",
    ) {
        return;
    }
    registry(&store, &["pen-a", "pen-b"]).await;
    for round in 0..200u64 {
        let cartridge = format!("chip:{round:08X}");
        let (sa, sb) = (new_session(), new_session());
        let batch_a = start_batch("pen-a", round + 1, &sa, &cartridge);
        let batch_b = start_batch("pen-b", round + 1, &sb, &cartridge);
        let (a, b) = (store.clone(), store.clone());
        let ta = tokio::spawn(async move { a.commit(&batch_a).await });
        let tb = tokio::spawn(async move { b.commit(&batch_b).await });
        let ra = ta.await.expect("join").expect("commit a");
        let rb = tb.await.expect("join").expect("commit b");
        let winner = match (&ra, &rb) {
            (CommitOutcome::Committed { .. }, CommitOutcome::Conflict { .. }) => &sa,
            (CommitOutcome::Conflict { .. }, CommitOutcome::Committed { .. }) => &sb,
            other => panic!("round {round}: expected one winner, got {other:?}"),
        };
        let history = store.cartridge_history(&cartridge).await.expect("history");
        let owner = history.binding.map(|(session, _, _)| session);
        assert_eq!(owner.as_ref(), Some(winner), "round {round}");
    }
    // The losers left nothing behind: not their message, not their session.
    assert_eq!(store.count("SELECT count(*) FROM cartridges").await, 200);
    assert_eq!(store.count("SELECT count(*) FROM sessions").await, 200);
    assert_eq!(
        store.count("SELECT count(*) FROM device_messages").await,
        200
    );
}

async fn a_redelivered_message_conflicts_and_nothing_doubles(store: TestStore) {
    if store.skip_on_timescaledb(
        "a_redelivered_message_conflicts_and_nothing_doubles",
        "its batch has samples, written with COPY, which this server does not support",
    ) {
        return;
    }
    registry(&store, &["pen-a"]).await;
    let session = new_session();
    let mut batch = start_batch("pen-a", 1, &session, "chip:01");
    batch.samples.push(samples("pen-a", &session, 1, 100));
    batch
        .flags
        .push(flag("k-skew", FlagKind::ClockSkew, "pen-a", Some(&session)));
    batch.sessions[0].add_strokes = 1000;
    commit_ok(&store, &batch).await;

    let again = store.commit(&batch).await.expect("commit");
    assert!(matches!(again, CommitOutcome::Conflict { .. }), "{again:?}");
    // One old key among new ones still conflicts, and the new ones stay out.
    let mixed = WriteBatch {
        messages: vec![
            message("pen-a", 2, "heartbeat", None),
            message("pen-a", 1, "heartbeat", None),
        ],
        ..WriteBatch::default()
    };
    let outcome = store.commit(&mixed).await.expect("commit");
    assert!(
        matches!(outcome, CommitOutcome::Conflict { .. }),
        "{outcome:?}"
    );

    assert_eq!(store.count("SELECT count(*) FROM device_messages").await, 1);
    assert_eq!(
        store.count("SELECT count(*) FROM stroke_samples").await,
        100
    );
    assert_eq!(store.count("SELECT count(*) FROM flags").await, 1);
    assert_eq!(store.count("SELECT strokes FROM sessions").await, 1000);
}

async fn samples_are_stored_exactly_as_sent(store: TestStore) {
    if store.skip_on_timescaledb(
        "samples_are_stored_exactly_as_sent",
        "COPY ... FROM STDIN is not supported by this server",
    ) {
        return;
    }
    registry(&store, &["pen-a", "pen-b"]).await;
    let (s1, s2) = (new_session(), new_session());
    commit_ok(&store, &start_batch("pen-a", 1, &s1, "chip:A1")).await;
    commit_ok(&store, &start_batch("pen-b", 1, &s2, "chip:B1")).await;
    let sizes = [(3000, 0), (3333, 0), (3667, 1)];
    for (i, (n, other)) in sizes.into_iter().enumerate() {
        let seq = u64::try_from(i).expect("small") + 2;
        let (device, session) = if other == 1 {
            ("pen-b", &s2)
        } else {
            ("pen-a", &s1)
        };
        // Two blocks per batch, to cross block and chunk boundaries.
        let half = n / 2;
        let batch = WriteBatch {
            messages: vec![message(device, seq, "stroke_batch", Some(session))],
            samples: vec![
                samples(device, session, seq, half),
                samples(device, session, seq, n - half),
            ],
            ..WriteBatch::default()
        };
        commit_ok(&store, &batch).await;
    }
    assert_eq!(
        store.count("SELECT count(*) FROM stroke_samples").await,
        10_000
    );
    assert_eq!(
        store
            .count("SELECT count(*) FROM stroke_samples WHERE device_id = 'pen-b'")
            .await,
        3667
    );
    // Values survive the encoding (PostgreSQL's hand-written binary COPY).
    let (time, session, seq, strokes, depth, speed) = store.last_sample("pen-b").await;
    assert_eq!(time, t(1833));
    assert_eq!(session, s2);
    assert_eq!((seq, strokes, depth, speed), (4, 10, 533, 120));
    // A batch without samples writes none and still commits.
    commit_ok(
        &store,
        &WriteBatch {
            messages: vec![message("pen-a", 9, "heartbeat", None)],
            ..WriteBatch::default()
        },
    )
    .await;
}

async fn flags_are_deduped_by_key(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    let session = new_session();
    let mut first = start_batch("pen-a", 1, &session, "chip:01");
    let mut repeated = flag("k1", FlagKind::DepthExceeded, "pen-a", Some(&session));
    repeated.detail = "a later observation".into();
    first.flags = vec![
        flag("k1", FlagKind::DepthExceeded, "pen-a", Some(&session)),
        repeated,
        flag("k2", FlagKind::ClockSkew, "pen-a", None),
    ];
    let raised = commit_ok(&store, &first).await;
    let kinds: Vec<FlagKind> = raised.iter().map(|f| f.kind).collect();
    assert_eq!(kinds, [FlagKind::DepthExceeded, FlagKind::ClockSkew]);
    assert_eq!(raised[0].detail, "DEPTH_EXCEEDED for a test");
    assert_eq!(raised[0].session_id.as_deref(), Some(session.as_str()));
    assert_eq!(
        raised[0].raised_at, raised[1].raised_at,
        "one commit, one now()"
    );

    let second = WriteBatch {
        messages: vec![message("pen-a", 2, "heartbeat", None)],
        flags: vec![
            flag("k2", FlagKind::ClockSkew, "pen-a", None),
            flag("k3", FlagKind::DataGap, "pen-a", None),
        ],
        ..WriteBatch::default()
    };
    let raised = commit_ok(&store, &second).await;
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].kind, FlagKind::DataGap);
    assert_eq!(store.count("SELECT count(*) FROM flags").await, 3);
    // The first flag of a key was kept, not the later observation.
    let stored = store
        .list_flags(&FlagQuery::default())
        .await
        .expect("flags");
    let detail = stored
        .iter()
        .find(|f| f.evidence["key"] == "k1")
        .map(|f| f.detail.as_str());
    assert_eq!(detail, Some("DEPTH_EXCEEDED for a test"));
}

async fn session_writes_add_their_deltas(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    let session = new_session();
    commit_ok(&store, &start_batch("pen-a", 1, &session, "chip:01")).await;

    let mut a = session_delta(&session, "pen-a", 100, 900);
    let mut b = session_delta(&session, "pen-a", 50, 1200);
    a.operator_ref = "op-1".into();
    b.ended_at = Some(t(600));
    b.device_ended_at = Some(t(600) - chrono::Duration::hours(1));
    let batch = WriteBatch {
        messages: vec![message("pen-a", 2, "stroke_batch", Some(&session))],
        sessions: vec![a, b],
        ..WriteBatch::default()
    };
    commit_ok(&store, &batch).await;
    let mut c = session_delta(&session, "pen-a", 25, 700);
    c.operator_ref = "op-2".into();
    // Decided again by a process that judged on stale facts: adds, but
    // the stored relation stands.
    let mut d = session_write(
        &session,
        "pen-a",
        Some("chip:01"),
        CartridgeRelation::Reused {
            owner_session_id: new_session(),
        },
        t(0),
    );
    d.add_strokes = 5;
    let batch = WriteBatch {
        messages: vec![
            message("pen-a", 3, "stroke_batch", Some(&session)),
            message("pen-a", 4, "stroke_batch", Some(&session)),
        ],
        sessions: vec![c, d],
        ..WriteBatch::default()
    };
    commit_ok(&store, &batch).await;

    let query = SessionQuery {
        device_id: "pen-a".into(),
        ..SessionQuery::default()
    };
    let stored = store.list_sessions(&query).await.expect("sessions");
    assert_eq!(stored.len(), 1);
    let s = &stored[0];
    assert_eq!((s.strokes, s.max_depth_um, s.samples), (180, 1200, 3));
    assert_eq!(s.operator_ref, "op-1");
    assert_eq!(s.ended_at, Some(t(600)));
    // The pen's own readings beside the corrected ones.
    let hour = chrono::Duration::hours(1);
    assert_eq!(s.device_started_at, Some(s.started_at - hour));
    assert_eq!(s.device_ended_at, Some(t(600) - hour));
    let query = FactsQuery {
        session_ids: HashSet::from([session.clone()]),
        ..FactsQuery::default()
    };
    let facts = store.load_facts(&query).await.expect("facts");
    let state = &facts.sessions[&session];
    assert_eq!(state.relation, CartridgeRelation::Owner);
    assert_eq!((state.strokes, state.active_ms), (180, 1750));
}

async fn adding_to_an_unstored_session_is_a_conflict(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    let session = new_session();
    let batch = WriteBatch {
        messages: vec![message("pen-a", 1, "stroke_batch", Some(&session))],
        sessions: vec![session_delta(&session, "pen-a", 10, 500)],
        ..WriteBatch::default()
    };
    let outcome = store.commit(&batch).await.expect("commit");
    assert!(
        matches!(outcome, CommitOutcome::Conflict { .. }),
        "{outcome:?}"
    );
    assert_eq!(store.count("SELECT count(*) FROM device_messages").await, 0);
}

async fn malformed_batches_are_invalid(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    let twice = WriteBatch {
        messages: vec![
            message("pen-a", 1, "heartbeat", None),
            message("pen-a", 1, "heartbeat", None),
        ],
        ..WriteBatch::default()
    };
    assert!(matches!(
        store.commit(&twice).await,
        Err(StoreError::Invalid(_))
    ));
    let bad_id = start_batch("pen-a", 2, "not-a-uuid", "chip:01");
    assert!(matches!(
        store.commit(&bad_id).await,
        Err(StoreError::Invalid(_))
    ));
    let query = FactsQuery {
        session_ids: HashSet::from(["nope".to_owned()]),
        ..FactsQuery::default()
    };
    assert!(matches!(
        store.load_facts(&query).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.count("SELECT count(*) FROM device_messages").await, 0);
}

async fn load_facts_returns_what_commit_wrote(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    let owner = new_session();
    let resumed = new_session();
    let hole = SeqHole {
        device_id: "pen-a".into(),
        first: 5,
        last: 7,
        detected_at: t(3),
    };
    let mut batch = start_batch("pen-a", 1, &owner, "chip:01");
    batch.holes = vec![("pen-a".into(), vec![hole.clone()])];
    commit_ok(&store, &batch).await;
    let relation = CartridgeRelation::Resumed {
        owner_session_id: owner.clone(),
    };
    let batch = WriteBatch {
        messages: vec![message("pen-a", 8, "session_start", Some(&resumed))],
        sessions: vec![session_write(
            &resumed,
            "pen-a",
            Some("chip:01"),
            relation.clone(),
            t(500),
        )],
        activity: vec![
            activity("chip:01", t(500), 40, 4_000, (0, 0)),
            activity("chip:01", t(100), 2, 200, (40, 4_000)),
        ],
        devices: vec![device_write("pen-a", 8), device_write("pen-a", 4)],
        ..WriteBatch::default()
    };
    commit_ok(&store, &batch).await;
    // Activity never moves back.
    // Judged on a usage another commit has changed since: a conflict,
    // nothing written (the batch is judged again).
    let stale = WriteBatch {
        messages: vec![message("pen-a", 9, "stroke_batch", Some(&resumed))],
        activity: vec![activity("chip:01", t(600), 10, 10, (0, 0))],
        ..WriteBatch::default()
    };
    match store.commit(&stale).await.expect("commit") {
        CommitOutcome::Conflict { detail } => assert!(detail.contains("chip:01"), "{detail}"),
        other => panic!("a stale usage must conflict: {other:?}"),
    }
    let back = WriteBatch {
        activity: vec![activity("chip:01", t(50), u64::MAX, 1, (42, 4_200))],
        ..WriteBatch::default()
    };
    commit_ok(&store, &back).await;

    let query = FactsQuery {
        keys: vec![("pen-a".into(), 1), ("pen-a".into(), 2)],
        device_ids: HashSet::from(["pen-a".to_owned(), "pen-z".to_owned()]),
        gtins: HashSet::from([GTIN.to_owned(), "00000000000000".to_owned()]),
        lots: HashSet::from([
            (GTIN.to_owned(), LOT.to_owned()),
            (GTIN.to_owned(), "X".to_owned()),
        ]),
        cartridge_ids: HashSet::from(["chip:01".to_owned(), "chip:02".to_owned()]),
        // Asked for in upper case: the answer is keyed as asked.
        session_ids: HashSet::from([owner.to_uppercase(), resumed.clone(), new_session()]),
    };
    let facts = store.load_facts(&query).await.expect("facts");
    assert_eq!(facts.seen, HashSet::from([("pen-a".to_owned(), 1)]));
    assert_eq!(facts.devices.len(), 1);
    assert_eq!(facts.devices["pen-a"].max_seq, 8);
    assert_eq!(facts.devices["pen-a"].max_depth_um, 2500);
    assert_eq!(facts.devices["pen-a"].clinic_id, CLINIC);
    assert_eq!(facts.products[GTIN].max_active_ms, 1_800_000);
    assert_eq!(facts.products[GTIN].rated_strokes, 100_000);
    assert_eq!(facts.products[GTIN].shelf_life_days, 730);
    assert_eq!(facts.products.len(), 1);
    assert_eq!(facts.lots.len(), 1);
    assert!(
        facts.lots[&(GTIN.to_owned(), LOT.to_owned())]
            .recalled_at
            .is_none()
    );
    let binding = &facts.bindings["chip:01"];
    assert_eq!(binding.session_id, owner);
    assert_eq!(binding.last_activity_at, t(500));
    // Usage adds up over the procedure and saturates, never overflows.
    assert_eq!(
        (binding.strokes, binding.active_ms),
        (i64::MAX as u64, 4_201)
    );
    assert_eq!(binding.patient_ref.as_deref(), Some("patient-hash-1"));
    assert_eq!(facts.bindings.len(), 1);
    assert_eq!(facts.sessions.len(), 2);
    assert_eq!(
        facts.sessions[&owner.to_uppercase()].relation,
        CartridgeRelation::Owner
    );
    assert_eq!(facts.sessions[&resumed].relation, relation);
    assert_eq!(
        facts.sessions[&resumed].cartridge_id.as_deref(),
        Some("chip:01")
    );
    assert_eq!(facts.holes["pen-a"], vec![hole]);
}

/// What a batch adds to a cartridge, judged on `before` (strokes, ms).
fn activity(
    cartridge: &str,
    at: DateTime<Utc>,
    strokes: u64,
    ms: u64,
    before: (u64, u64),
) -> ActivityRow {
    ActivityRow {
        cartridge_id: cartridge.into(),
        at,
        add_strokes: strokes,
        add_active_ms: ms,
        strokes_before: before.0,
        active_ms_before: before.1,
    }
}

async fn holes_are_replaced_listed_and_flagged(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    let early = SeqHole {
        device_id: "pen-a".into(),
        first: 5,
        last: 7,
        detected_at: t(0),
    };
    let late = SeqHole {
        device_id: "pen-a".into(),
        first: 9,
        last: 9,
        detected_at: t(100),
    };
    let batch = WriteBatch {
        holes: vec![("pen-a".into(), vec![early.clone(), late.clone()])],
        ..WriteBatch::default()
    };
    commit_ok(&store, &batch).await;
    assert_eq!(
        store.due_holes(t(50)).await.expect("due"),
        vec![(early.clone(), CLINIC.to_owned())]
    );

    let gap = |h: &SeqHole| -> NewFlag {
        flag(
            &format!("device:pen-a:seq:{}:DATA_GAP", h.first),
            FlagKind::DataGap,
            "pen-a",
            None,
        )
    };
    let raised = store
        .flag_holes(&[(early.clone(), gap(&early))])
        .await
        .expect("flag");
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].kind, FlagKind::DataGap);
    assert_eq!(
        store.due_holes(t(1000)).await.expect("due"),
        vec![(late.clone(), CLINIC.to_owned())]
    );
    // Flagging again raises nothing new.
    let again = store
        .flag_holes(&[(early.clone(), gap(&early))])
        .await
        .expect("flag");
    assert!(again.is_empty());

    // A commit replaces a device's list: here, the late hole was filled.
    let filled = WriteBatch {
        holes: vec![("pen-a".into(), Vec::new())],
        ..WriteBatch::default()
    };
    commit_ok(&store, &filled).await;
    assert!(store.due_holes(t(1000)).await.expect("due").is_empty());
    // A hole listed under another device is refused.
    let wrong = WriteBatch {
        holes: vec![("pen-b".into(), vec![late])],
        ..WriteBatch::default()
    };
    assert!(matches!(
        store.commit(&wrong).await,
        Err(StoreError::Invalid(_))
    ));
}
