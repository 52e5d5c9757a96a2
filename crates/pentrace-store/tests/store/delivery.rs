//! The stored watermark acks are made of, and the quarantine.

use pentrace_store::{FactsQuery, MessageRow, QuarantineRow};

use crate::fixture::TestStore;
use crate::helpers::*;

crate::conformance!(
    the_watermark_is_the_end_of_the_stored_run,
    the_watermark_is_exact_under_concurrent_commits_of_one_device,
    quarantine_stores_the_key_the_bytes_and_an_audit_event,
    a_quarantine_call_stores_its_rows_at_one_server_time,
);

async fn watermark(store: &TestStore, device: &str) -> u64 {
    let query = FactsQuery {
        device_ids: [device.to_owned()].into(),
        ..FactsQuery::default()
    };
    let facts = store.load_facts(&query).await.expect("facts");
    facts.devices[device].stored_through
}

async fn the_watermark_is_the_end_of_the_stored_run(store: TestStore) {
    registry(&store, &["pen-a", "pen-b"]).await;
    assert_eq!(watermark(&store, "pen-a").await, 0);
    assert_eq!(commit_seqs(&store, "pen-a", &[1, 2]).await, 2);
    // 3 lost on the way: 4 and 5 are stored above a hole.
    assert_eq!(commit_seqs(&store, "pen-a", &[4, 5]).await, 2);
    assert_eq!(commit_seqs(&store, "pen-a", &[7]).await, 2);
    // The resent 3 joins the runs up to the next hole.
    assert_eq!(commit_seqs(&store, "pen-a", &[3]).await, 5);
    assert_eq!(commit_seqs(&store, "pen-a", &[6]).await, 7);
    assert_eq!(watermark(&store, "pen-a").await, 7);
    // A device whose first stored seq is not 1 stays at 0 until 1 arrives.
    assert_eq!(commit_seqs(&store, "pen-b", &[2, 3]).await, 0);
    assert_eq!(commit_seqs(&store, "pen-b", &[1]).await, 3);
    assert_eq!(
        watermark(&store, "pen-a").await,
        7,
        "devices are independent"
    );
}

/// Two writers (or two server processes) committing one device's seqs at
/// once: the one that commits second must see the first one's seqs, so the
/// watermark ends exactly at the end of the run, never beyond it and never
/// stuck below it.
async fn the_watermark_is_exact_under_concurrent_commits_of_one_device(store: TestStore) {
    if store.skip_on_timescaledb(
        "the_watermark_is_exact_under_concurrent_commits_of_one_device",
        "a race needs two connections at once; this server serves one at a time",
    ) {
        return;
    }
    registry(&store, &["pen-a"]).await;
    for round in 0..100u64 {
        let (odd, even) = (2 * round + 1, 2 * round + 2);
        let (a, b) = (store.clone(), store.clone());
        let ta = tokio::spawn(async move { commit_seqs(&a, "pen-a", &[odd]).await });
        let tb = tokio::spawn(async move { commit_seqs(&b, "pen-a", &[even]).await });
        let (wa, wb) = (ta.await.expect("join"), tb.await.expect("join"));
        assert!(
            wa <= even && wb <= even,
            "round {round}: beyond the stored run"
        );
        assert_eq!(
            wa.max(wb),
            even,
            "round {round}: the later commit saw the earlier one"
        );
        assert_eq!(watermark(&store, "pen-a").await, even);
    }
}

fn quarantined(device: &str, seq: u64, error: &str) -> QuarantineRow {
    QuarantineRow {
        id: uuid::Uuid::new_v4(),
        clinic_id: CLINIC.into(),
        message: MessageRow {
            device_id: device.into(),
            seq,
            kind: "stroke_batch",
            session_id: None,
            sent_at: t(0),
            received_at: t(1),
        },
        transport: "mqtt",
        error: error.into(),
        payload: vec![0, 1, 2, 255],
    }
}

async fn quarantine_stores_the_key_the_bytes_and_an_audit_event(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    assert_eq!(commit_seqs(&store, "pen-a", &[1]).await, 1);
    let row = quarantined("pen-a", 2, "judging it panicked");
    let watermarks = store
        .quarantine(std::slice::from_ref(&row))
        .await
        .expect("quarantine");
    assert_eq!(watermarks["pen-a"], 2, "a quarantined seq is acknowledged");
    // Its key is stored: a redelivery is a duplicate, not a loop.
    let query = FactsQuery {
        keys: vec![("pen-a".into(), 2)],
        ..FactsQuery::default()
    };
    let facts = store.load_facts(&query).await.expect("facts");
    assert!(facts.seen.contains(&("pen-a".to_owned(), 2)));
    // Quarantining the same key again (a second copy failing) keeps one row.
    let again = quarantined("pen-a", 2, "again");
    store.quarantine(&[again]).await.expect("quarantine again");
    let list = store.list_quarantine(10).await.expect("list");
    assert_eq!(list.len(), 1);
    let stored = &list[0];
    assert_eq!(stored.id, row.id);
    assert_eq!((stored.device_id.as_str(), stored.seq), ("pen-a", 2));
    assert_eq!(stored.payload, vec![0, 1, 2, 255]);
    assert_eq!(stored.error, "judging it panicked");
    assert_eq!(stored.transport, "mqtt");
    let one = store
        .quarantined(row.id)
        .await
        .expect("one")
        .expect("found");
    assert_eq!(&one, stored);
    assert!(
        store
            .quarantined(uuid::Uuid::new_v4())
            .await
            .expect("none")
            .is_none()
    );
    assert_eq!(
        store
            .count("SELECT count(*) FROM audit_events WHERE action = 'message.quarantined'")
            .await,
        1
    );
    // The watermark goes on past it.
    assert_eq!(commit_seqs(&store, "pen-a", &[3]).await, 3);
}

/// Both stores take `quarantined_at` from the server's clock, once per
/// call, at the microseconds they keep (PostgreSQL used `now()` before).
async fn a_quarantine_call_stores_its_rows_at_one_server_time(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    let before = chrono::Utc::now();
    let rows = [
        quarantined("pen-a", 1, "one"),
        quarantined("pen-a", 2, "two"),
    ];
    store.quarantine(&rows).await.expect("quarantine");
    let after = chrono::Utc::now();
    let list = store.list_quarantine(10).await.expect("list");
    assert_eq!(list.len(), 2);
    let at = list[0].quarantined_at;
    assert_eq!(list[1].quarantined_at, at, "one time per call");
    assert_eq!(at.timestamp_subsec_nanos() % 1000, 0, "microseconds");
    let before = chrono::DateTime::from_timestamp_micros(before.timestamp_micros());
    assert!(before.is_some_and(|b| b <= at) && at <= after, "{at}");
}
