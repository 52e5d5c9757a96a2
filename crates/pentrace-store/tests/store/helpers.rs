//! Builders for registry rows and write batches, shared by every store's
//! tests.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use pentrace_domain::FlagKind;
use pentrace_domain::rules::CartridgeRelation;
use pentrace_store::{
    ClaimRow, Clinic, CommitOutcome, Device, DeviceWrite, FlagRecord, Lot, MessageRow, NewFlag,
    Product, SampleBlock, SampleRow, SessionWrite, WriteBatch,
};
use uuid::Uuid;

use crate::fixture::TestStore;

pub const CLINIC: &str = "clinic-1";
pub const GTIN: &str = "09506000134352";
pub const LOT: &str = "LOT-A";

/// A fixed instant plus `secs`.
pub fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_740_819_600 + secs, 0)
        .single()
        .expect("valid time")
}

pub fn new_session() -> String {
    Uuid::new_v4().to_string()
}

/// A second clinic, `clinic-2` (for scoping: nothing of it shows to
/// `CLINIC`'s people).
pub async fn second_clinic(store: &TestStore) {
    let clinic = Clinic {
        id: "clinic-2".into(),
        name: "Two".into(),
        time_zone: "UTC".into(),
    };
    store
        .upsert_clinic(&clinic, &pentrace_domain::audit::Actor::System)
        .await
        .expect("clinic");
}

/// The clinic, the devices, the product `GTIN` and its lot `LOT`.
pub async fn registry(store: &TestStore, devices: &[&str]) {
    let clinic = Clinic {
        id: CLINIC.into(),
        name: "Clinic One".into(),
        time_zone: "Europe/Berlin".into(),
    };
    store
        .upsert_clinic(&clinic, &pentrace_domain::audit::Actor::System)
        .await
        .expect("clinic");
    for id in devices {
        let device = Device {
            id: (*id).into(),
            clinic_id: CLINIC.into(),
            model: "pen-x".into(),
            max_depth_um: 2500,
        };
        store
            .upsert_device(&device, &pentrace_domain::audit::Actor::System)
            .await
            .expect("device");
    }
    let product = Product {
        gtin: GTIN.into(),
        name: "Nano 12".into(),
        max_depth_um: 2000,
        rated_strokes: 100_000,
        max_active_s: 1800,
        shelf_life_days: 730,
    };
    store
        .upsert_product(&product, &pentrace_domain::audit::Actor::System)
        .await
        .expect("product");
    let lot = Lot {
        gtin: GTIN.into(),
        lot: LOT.into(),
        expiry: NaiveDate::from_ymd_opt(2030, 1, 31),
        recalled_at: None,
        recall_reason: None,
    };
    store
        .upsert_lot(&lot, &pentrace_domain::audit::Actor::System)
        .await
        .expect("lot");
}

pub fn message(device: &str, seq: u64, kind: &'static str, session: Option<&str>) -> MessageRow {
    let at = t(i64::try_from(seq).expect("small seq"));
    MessageRow {
        device_id: device.into(),
        seq,
        kind,
        session_id: session.map(str::to_owned),
        sent_at: at,
        received_at: at,
    }
}

pub fn claim(cartridge: &str, session: &str, device: &str) -> ClaimRow {
    ClaimRow {
        cartridge_id: cartridge.into(),
        session_id: session.into(),
        device_id: device.into(),
        patient_ref: Some("patient-hash-1".into()),
        bound_at: t(0),
    }
}

/// The first write of a session (it decides the relation).
pub fn session_write(
    session: &str,
    device: &str,
    cartridge: Option<&str>,
    relation: CartridgeRelation,
    started_at: DateTime<Utc>,
) -> SessionWrite {
    SessionWrite {
        session_id: session.into(),
        device_id: device.into(),
        clinic_id: CLINIC.into(),
        relation: Some(relation),
        cartridge_id: cartridge.map(str::to_owned),
        udi: format!("(01){GTIN}(17)300131(10){LOT}(21)S1"),
        gtin: Some(GTIN.into()),
        lot: Some(LOT.into()),
        expiry: NaiveDate::from_ymd_opt(2030, 1, 31),
        area: "face".into(),
        patient_ref: Some("patient-hash-1".into()),
        operator_ref: String::new(),
        firmware: "1.2.3".into(),
        started_at,
        ended_at: None,
        // The pen's clock an hour behind, corrected above.
        device_started_at: Some(started_at - chrono::Duration::hours(1)),
        device_ended_at: None,
        add_strokes: 0,
        add_active_ms: 0,
        add_samples: 0,
        max_depth_um: 0,
    }
}

/// A later write adding to a stored session.
pub fn session_delta(session: &str, device: &str, strokes: u64, depth: u32) -> SessionWrite {
    SessionWrite {
        relation: None,
        add_strokes: strokes,
        add_active_ms: strokes * 10,
        add_samples: 1,
        max_depth_um: depth,
        ..session_write(session, device, None, CartridgeRelation::Owner, t(0))
    }
}

pub fn samples(device: &str, session: &str, seq: u64, n: u32) -> SampleBlock {
    let rows = (0..n)
        .map(|i| SampleRow {
            time: t(i64::from(i)),
            seq,
            strokes: 10,
            depth_um: 500 + i % 100,
            speed_hz: 120,
        })
        .collect();
    SampleBlock {
        device_id: device.into(),
        session_id: session.into(),
        rows,
    }
}

pub fn flag(key: &str, kind: FlagKind, device: &str, session: Option<&str>) -> NewFlag {
    NewFlag {
        kind,
        severity: kind.severity(),
        dedupe_key: key.into(),
        clinic_id: CLINIC.into(),
        device_id: device.into(),
        session_id: session.map(str::to_owned),
        cartridge_id: None,
        seq: 1,
        detail: format!("{kind} for a test"),
        evidence: serde_json::json!({ "key": key }),
    }
}

pub fn device_write(device: &str, seq: u64) -> DeviceWrite {
    DeviceWrite {
        device_id: device.into(),
        last_seen: t(i64::try_from(seq).expect("small seq")),
        max_seq: seq,
        battery_pct: Some(80),
        firmware: Some("1.2.3".into()),
    }
}

/// A session start that claims `cartridge` for `session` on `device`.
pub fn start_batch(device: &str, seq: u64, session: &str, cartridge: &str) -> WriteBatch {
    WriteBatch {
        messages: vec![message(device, seq, "session_start", Some(session))],
        claims: vec![claim(cartridge, session, device)],
        sessions: vec![session_write(
            session,
            device,
            Some(cartridge),
            CartridgeRelation::Owner,
            t(0),
        )],
        devices: vec![device_write(device, seq)],
        ..WriteBatch::default()
    }
}

pub async fn commit_ok(store: &TestStore, batch: &WriteBatch) -> Vec<FlagRecord> {
    match store.commit(batch).await.expect("commit") {
        CommitOutcome::Committed { new_flags, .. } => new_flags,
        CommitOutcome::Conflict { detail } => panic!("unexpected conflict: {detail}"),
    }
}

/// Commits a batch of heartbeats of one device and returns its watermark.
pub async fn commit_seqs(store: &TestStore, device: &str, seqs: &[u64]) -> u64 {
    let batch = WriteBatch {
        messages: seqs
            .iter()
            .map(|&s| message(device, s, "heartbeat", None))
            .collect(),
        devices: seqs.iter().map(|&s| device_write(device, s)).collect(),
        ..WriteBatch::default()
    };
    match store.commit(&batch).await.expect("commit") {
        CommitOutcome::Committed { watermarks, .. } => *watermarks
            .get(device)
            .expect("the batch's device has a watermark"),
        CommitOutcome::Conflict { detail } => panic!("unexpected conflict: {detail}"),
    }
}
