//! The read side of compliance reports: a clinic's sessions and flags in a
//! period.

use chrono::{Duration, Utc};
use pentrace_domain::FlagKind;
use pentrace_domain::audit::Actor;
use pentrace_domain::rules::CartridgeRelation;
use pentrace_store::{Device, FlagRecord, WriteBatch};

use crate::fixture::TestStore;
use crate::helpers::*;

crate::conformance!(a_report_covers_its_clinic_and_period);

/// Commits a session of `device` started at `started`, with a flag about it
/// (key `flag-<seq>`), and returns the session id.
async fn flagged_session(store: &TestStore, device: &str, seq: u64, started: i64) -> String {
    let session = new_session();
    let mut write = session_write(
        &session,
        device,
        None,
        CartridgeRelation::Unidentified,
        t(started),
    );
    let mut flag = flag(
        &format!("flag-{seq}"),
        FlagKind::DepthExceeded,
        device,
        Some(&session),
    );
    if device == "pen-c" {
        write.clinic_id = "clinic-2".into();
        flag.clinic_id = "clinic-2".into();
    }
    let batch = WriteBatch {
        messages: vec![message(device, seq, "session_start", Some(&session))],
        sessions: vec![write],
        flags: vec![flag],
        ..WriteBatch::default()
    };
    commit_ok(store, &batch).await;
    session
}

fn sessions_of(flags: &[FlagRecord]) -> Vec<Option<&str>> {
    flags.iter().map(|f| f.session_id.as_deref()).collect()
}

async fn a_report_covers_its_clinic_and_period(store: TestStore) {
    registry(&store, &["pen-a"]).await;
    second_clinic(&store).await;
    let device = Device {
        id: "pen-c".into(),
        clinic_id: "clinic-2".into(),
        model: "x".into(),
        max_depth_um: 0,
    };
    store
        .upsert_device(&device, &Actor::System)
        .await
        .expect("device");
    let before = flagged_session(&store, "pen-a", 1, -100).await;
    let first = flagged_session(&store, "pen-a", 2, 0).await;
    let second = flagged_session(&store, "pen-a", 3, 999).await;
    let _after = flagged_session(&store, "pen-a", 4, 1000).await;
    let _elsewhere = flagged_session(&store, "pen-c", 5, 100).await;
    let gap = WriteBatch {
        messages: vec![message("pen-a", 6, "heartbeat", None)],
        flags: vec![flag("gap", FlagKind::DataGap, "pen-a", None)],
        ..WriteBatch::default()
    };
    commit_ok(&store, &gap).await;

    // The period of the sessions: [t(0), t(1000)).
    let sessions = store
        .sessions_in_period(CLINIC, t(0), t(1000))
        .await
        .expect("sessions");
    let ids: Vec<&str> = sessions.iter().map(|s| s.session_id.as_str()).collect();
    assert_eq!(ids, [first.as_str(), second.as_str()]);
    // Every flag was raised now, long after the sessions (a backfill): the
    // period's flags are those of its sessions.
    let flags = store
        .flags_in_period(CLINIC, t(0), t(1000))
        .await
        .expect("flags");
    assert_eq!(
        sessions_of(&flags),
        [Some(first.as_str()), Some(second.as_str())]
    );
    // A period around now has every flag the clinic raised now, the gap
    // flag without a session included, and none of the other clinic's.
    let now = Utc::now();
    let flags = store
        .flags_in_period(CLINIC, now - Duration::hours(1), now + Duration::hours(1))
        .await
        .expect("flags");
    assert_eq!(flags.len(), 5);
    assert!(flags.iter().all(|f| f.clinic_id == CLINIC));
    assert!(
        flags
            .windows(2)
            .all(|w| (w[0].raised_at, w[0].id) <= (w[1].raised_at, w[1].id))
    );
    assert!(sessions_of(&flags).contains(&Some(before.as_str())));
    assert!(sessions_of(&flags).contains(&None));
    assert!(
        store
            .sessions_in_period("clinic-2", t(1000), t(2000))
            .await
            .expect("sessions")
            .is_empty()
    );
}
