//! The read side: fleet status, sessions, flags, cartridge and lot history.

use chrono::Duration;
use pentrace_domain::FlagKind;
use pentrace_domain::rules::CartridgeRelation;
use pentrace_store::{Clinic, Device, FlagQuery, FlagRecord, FlagState, SessionQuery, WriteBatch};

use crate::fixture::TestStore;
use crate::helpers::*;

crate::conformance!(
    list_flags_filters_and_pages,
    list_devices_reports_status,
    sessions_cartridges_and_lots_are_listed,
);

async fn list_flags_filters_and_pages(store: TestStore) {
    registry(&store, &["pen-a", "pen-b"]).await;
    let clinic = Clinic {
        id: "clinic-2".into(),
        name: "Two".into(),
        time_zone: "UTC".into(),
    };
    store
        .upsert_clinic(&clinic, &pentrace_domain::audit::Actor::System)
        .await
        .expect("clinic");
    let device = Device {
        id: "pen-c".into(),
        clinic_id: "clinic-2".into(),
        model: "x".into(),
        max_depth_um: 0,
    };
    store
        .upsert_device(&device, &pentrace_domain::audit::Actor::System)
        .await
        .expect("device");
    let session = new_session();
    commit_ok(&store, &start_batch("pen-a", 1, &session, "chip:01")).await;

    // 25 flags over five commits (five raised_at values).
    let mut all: Vec<FlagRecord> = Vec::new();
    for c in 0..5u64 {
        let mut flags = Vec::new();
        for i in 0..5 {
            let key = format!("k{c}-{i}");
            let mut f = match i {
                0 => flag(&key, FlagKind::DepthExceeded, "pen-a", Some(&session)),
                1 => flag(&key, FlagKind::ClockSkew, "pen-a", None),
                2 => flag(&key, FlagKind::ClockSkew, "pen-b", None),
                _ => flag(&key, FlagKind::DataGap, "pen-c", None),
            };
            if i >= 3 {
                f.clinic_id = "clinic-2".into();
            }
            flags.push(f);
        }
        let batch = WriteBatch {
            messages: vec![message("pen-b", c + 1, "heartbeat", None)],
            flags,
            ..WriteBatch::default()
        };
        all.extend(commit_ok(&store, &batch).await);
    }
    assert_eq!(all.len(), 25);
    store
        .execute("UPDATE flags SET state = 'resolved' WHERE dedupe_key LIKE 'k0-%'")
        .await
        .expect("resolve");
    let list = |q: FlagQuery| {
        let store = store.clone();
        async move { store.list_flags(&q).await.expect("list") }
    };

    assert_eq!(list(FlagQuery::default()).await.len(), 25);
    let one_clinic = list(FlagQuery {
        clinic_ids: Some(vec![CLINIC.into()]),
        ..FlagQuery::default()
    })
    .await;
    assert_eq!(one_clinic.len(), 15);
    let none = list(FlagQuery {
        clinic_ids: Some(Vec::new()),
        ..FlagQuery::default()
    })
    .await;
    assert!(none.is_empty(), "an empty clinic list allows no clinic");
    let device = list(FlagQuery {
        device_id: Some("pen-b".into()),
        ..FlagQuery::default()
    })
    .await;
    assert_eq!(device.len(), 5);
    let by_session = list(FlagQuery {
        session_id: Some(session.clone()),
        ..FlagQuery::default()
    })
    .await;
    assert_eq!(by_session.len(), 5);
    assert!(by_session.iter().all(|f| f.kind == FlagKind::DepthExceeded));
    let kinds = list(FlagQuery {
        kinds: vec![FlagKind::ClockSkew, FlagKind::DataGap],
        ..FlagQuery::default()
    })
    .await;
    assert_eq!(kinds.len(), 20);
    let open = list(FlagQuery {
        states: vec![FlagState::Open],
        ..FlagQuery::default()
    })
    .await;
    assert_eq!(open.len(), 20);
    let resolved = list(FlagQuery {
        states: vec![FlagState::Resolved],
        device_id: Some("pen-a".into()),
        ..FlagQuery::default()
    })
    .await;
    assert_eq!(resolved.len(), 2);
    assert!(resolved.iter().all(|f| f.state == FlagState::Resolved));

    let mut times: Vec<_> = all.iter().map(|f| f.raised_at).collect();
    times.dedup();
    assert_eq!(times.len(), 5, "one raised_at per commit");
    let window = list(FlagQuery {
        from: Some(times[1]),
        to: Some(times[3]),
        ..FlagQuery::default()
    })
    .await;
    assert_eq!(window.len(), 10);

    // Keyset paging visits every flag once, in (raised_at, id) order.
    let mut paged: Vec<FlagRecord> = Vec::new();
    let mut after = None;
    loop {
        let page = list(FlagQuery {
            after,
            limit: 7,
            ..FlagQuery::default()
        })
        .await;
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        after = Some((last.raised_at, last.id));
        paged.extend(page);
    }
    let mut expected = list(FlagQuery::default()).await;
    assert_eq!(paged, expected);
    expected.sort_by_key(|f| (f.raised_at, f.id));
    assert_eq!(paged, expected);
    let limited = list(FlagQuery {
        limit: 3,
        ..FlagQuery::default()
    })
    .await;
    assert_eq!(limited, expected[..3]);
}

async fn list_devices_reports_status(store: TestStore) {
    registry(&store, &["pen-a", "pen-b"]).await;
    let now = t(7200); // 11:00 UTC
    let today = new_session();
    let yesterday = new_session();
    let mut batch = start_batch("pen-a", 1, &today, "chip:01");
    batch.sessions[0].started_at = t(3600);
    batch.sessions[0].add_strokes = 700;
    batch.sessions.push(session_write(
        &yesterday,
        "pen-a",
        None,
        CartridgeRelation::Unidentified,
        t(-36_000),
    ));
    batch.sessions[1].add_strokes = 5000;
    batch.devices = vec![pentrace_store::DeviceWrite {
        device_id: "pen-a".into(),
        last_seen: now - Duration::seconds(30),
        max_seq: 41,
        battery_pct: Some(55),
        firmware: None,
    }];
    batch.flags = vec![
        flag("f1", FlagKind::DepthExceeded, "pen-a", Some(&today)),
        flag("f2", FlagKind::ClockSkew, "pen-a", None),
        flag("f3", FlagKind::DataGap, "pen-a", None),
    ];
    commit_ok(&store, &batch).await;
    store
        .execute("UPDATE flags SET state = 'acknowledged' WHERE dedupe_key = 'f3'")
        .await
        .expect("ack");

    let devices = store
        .list_devices(Some(CLINIC), now)
        .await
        .expect("devices");
    assert_eq!(devices.len(), 2);
    let a = &devices[0];
    assert_eq!(a.device.id, "pen-a");
    assert!(a.online);
    assert_eq!(a.last_seen, Some(now - Duration::seconds(30)));
    assert_eq!(a.battery_pct, Some(55));
    assert_eq!((a.sessions_today, a.strokes_today), (1, 700));
    assert_eq!(a.open_flags, 2);
    assert_eq!(a.last_seq, 41);
    let b = &devices[1];
    assert!(!b.online);
    assert_eq!(
        (
            b.last_seen,
            b.battery_pct,
            b.sessions_today,
            b.strokes_today,
            b.open_flags,
            b.last_seq
        ),
        (None, None, 0, 0, 0, 0)
    );
    // Three minutes later the pen is offline.
    let later = store
        .list_devices(None, now + Duration::minutes(3))
        .await
        .expect("devices");
    assert!(!later[0].online);
    assert!(
        store
            .list_devices(Some("elsewhere"), now)
            .await
            .expect("devices")
            .is_empty()
    );
}

async fn sessions_cartridges_and_lots_are_listed(store: TestStore) {
    registry(&store, &["pen-a", "pen-b"]).await;
    let owner = new_session();
    let reuse = new_session();
    let mut first = start_batch("pen-a", 1, &owner, "chip:01");
    first.sessions[0].started_at = t(0);
    commit_ok(&store, &first).await;
    let relation = CartridgeRelation::Reused {
        owner_session_id: owner.clone(),
    };
    let mut flag = flag("reuse", FlagKind::CartridgeReused, "pen-b", Some(&reuse));
    flag.cartridge_id = Some("chip:01".into());
    let second = WriteBatch {
        messages: vec![message("pen-b", 1, "session_start", Some(&reuse))],
        sessions: vec![session_write(
            &reuse,
            "pen-b",
            Some("chip:01"),
            relation,
            t(900),
        )],
        flags: vec![flag],
        ..WriteBatch::default()
    };
    commit_ok(&store, &second).await;
    for (seq, start) in [(2u64, 100i64), (3, 200), (4, 300)] {
        let s = new_session();
        let batch = WriteBatch {
            messages: vec![message("pen-a", seq, "session_start", Some(&s))],
            sessions: vec![session_write(
                &s,
                "pen-a",
                None,
                CartridgeRelation::Unidentified,
                t(start),
            )],
            ..WriteBatch::default()
        };
        commit_ok(&store, &batch).await;
    }

    let history = store.cartridge_history("chip:01").await.expect("history");
    assert_eq!(
        history.binding,
        Some((owner.clone(), "pen-a".to_owned(), t(0)))
    );
    let ids: Vec<&str> = history
        .sessions
        .iter()
        .map(|s| s.session_id.as_str())
        .collect();
    assert_eq!(ids, [owner.as_str(), reuse.as_str()]);
    assert_eq!(history.flags.len(), 1);
    assert_eq!(history.flags[0].kind, FlagKind::CartridgeReused);
    let unknown = store.cartridge_history("chip:FF").await.expect("history");
    assert!(unknown.binding.is_none() && unknown.sessions.is_empty() && unknown.flags.is_empty());

    let lookback = store.lot_lookback(GTIN, LOT).await.expect("lookback");
    let starts: Vec<_> = lookback.iter().map(|s| s.started_at).collect();
    assert_eq!(starts, [t(0), t(100), t(200), t(300), t(900)]);
    assert_eq!(lookback[4].device_id, "pen-b");
    assert!(
        store
            .lot_lookback(GTIN, "NOPE")
            .await
            .expect("lookback")
            .is_empty()
    );

    let query = SessionQuery {
        device_id: "pen-a".into(),
        ..SessionQuery::default()
    };
    let newest_first: Vec<_> = store
        .list_sessions(&query)
        .await
        .expect("sessions")
        .iter()
        .map(|s| s.started_at)
        .collect();
    assert_eq!(newest_first, [t(300), t(200), t(100), t(0)]);
    let window = SessionQuery {
        from: Some(t(100)),
        to: Some(t(300)),
        limit: 1,
        ..query.clone()
    };
    let picked = store.list_sessions(&window).await.expect("sessions");
    assert_eq!(picked.len(), 1);
    assert_eq!(picked[0].started_at, t(200));
    let s = &picked[0];
    assert_eq!(
        (
            s.gtin.as_deref(),
            s.lot.as_deref(),
            s.area.as_str(),
            s.clinic_id.as_str()
        ),
        (Some(GTIN), Some(LOT), "face", CLINIC)
    );
}
