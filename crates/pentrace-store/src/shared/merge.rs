//! A batch's writes merged into one per row, in key order (the lock order
//! of concurrent commits; PostgreSQL also refuses an `ON CONFLICT DO
//! UPDATE` that touches a row twice in one statement).

use std::collections::{BTreeMap, HashMap};

use crate::{DeviceWrite, MessageRow, SessionWrite, StoreError, StoreResult};

/// The devices of a batch's messages, sorted (the lock order).
pub(crate) fn batch_devices(messages: &[MessageRow]) -> Vec<&str> {
    let mut ids: Vec<&str> = messages.iter().map(|m| m.device_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// One write per device, in device order; later values win where the
/// database would also let them win.
pub(crate) fn merge_devices(writes: &[DeviceWrite]) -> BTreeMap<&str, DeviceWrite> {
    let mut merged: BTreeMap<&str, DeviceWrite> = BTreeMap::new();
    for w in writes {
        match merged.get_mut(w.device_id.as_str()) {
            None => {
                merged.insert(&w.device_id, w.clone());
            }
            Some(m) => {
                m.last_seen = m.last_seen.max(w.last_seen);
                m.max_seq = m.max_seq.max(w.max_seq);
                m.battery_pct = w.battery_pct.or(m.battery_pct);
                m.firmware = w.firmware.clone().or(m.firmware.take());
            }
        }
    }
    merged
}

/// One write per session, sorted by session id (lock order). Counters add
/// up, the depth is the maximum, the relation and the names keep their first
/// known value, a later end time replaces an earlier one.
pub(crate) fn merge(writes: &[SessionWrite]) -> StoreResult<Vec<SessionWrite>> {
    let mut merged: Vec<SessionWrite> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for w in writes {
        match index.get(w.session_id.as_str()) {
            Some(&i) => fold(&mut merged[i], w)?,
            None => {
                index.insert(&w.session_id, merged.len());
                merged.push(w.clone());
            }
        }
    }
    merged.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    Ok(merged)
}

fn fold(acc: &mut SessionWrite, w: &SessionWrite) -> StoreResult<()> {
    let sum = |a: u64, b: u64, what: &str| {
        a.checked_add(b)
            .ok_or_else(|| StoreError::Invalid(format!("session {} {what} overflow", w.session_id)))
    };
    acc.add_strokes = sum(acc.add_strokes, w.add_strokes, "strokes")?;
    acc.add_active_ms = sum(acc.add_active_ms, w.add_active_ms, "active ms")?;
    acc.add_samples = sum(acc.add_samples, w.add_samples, "samples")?;
    acc.max_depth_um = acc.max_depth_um.max(w.max_depth_um);
    acc.ended_at = w.ended_at.or(acc.ended_at);
    acc.device_ended_at = w.device_ended_at.or(acc.device_ended_at);
    if acc.relation.is_none() {
        acc.relation = w.relation.clone();
    }
    if acc.patient_ref.is_none() {
        acc.patient_ref = w.patient_ref.clone();
    }
    if acc.operator_ref.is_empty() {
        acc.operator_ref = w.operator_ref.clone();
    }
    if acc.firmware.is_empty() {
        acc.firmware = w.firmware.clone();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use pentrace_domain::rules::CartridgeRelation;

    fn write(id: &str) -> SessionWrite {
        SessionWrite {
            session_id: id.into(),
            device_id: "pen-1".into(),
            clinic_id: "c1".into(),
            relation: None,
            cartridge_id: None,
            udi: String::new(),
            gtin: None,
            lot: None,
            expiry: None,
            area: "face".into(),
            patient_ref: None,
            operator_ref: String::new(),
            firmware: String::new(),
            started_at: DateTime::<Utc>::UNIX_EPOCH,
            ended_at: None,
            device_started_at: None,
            device_ended_at: None,
            add_strokes: 0,
            add_active_ms: 0,
            add_samples: 0,
            max_depth_um: 0,
        }
    }

    #[test]
    fn writes_of_one_session_merge_into_one() {
        let first = SessionWrite {
            relation: Some(CartridgeRelation::Owner),
            add_strokes: 10,
            max_depth_um: 800,
            ..write("b")
        };
        let second = SessionWrite {
            relation: Some(CartridgeRelation::Unidentified),
            operator_ref: "op-7".into(),
            add_strokes: 5,
            max_depth_um: 600,
            ended_at: Some(DateTime::<Utc>::UNIX_EPOCH),
            ..write("b")
        };
        let merged = merge(&[first, write("a"), second]).ok().unwrap_or_default();
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].session_id, "a");
        let b = &merged[1];
        assert_eq!(b.relation, Some(CartridgeRelation::Owner));
        assert_eq!((b.add_strokes, b.max_depth_um), (15, 800));
        assert_eq!(b.operator_ref, "op-7");
        assert!(b.ended_at.is_some());
    }

    #[test]
    fn counters_that_overflow_are_refused() {
        let big = SessionWrite {
            add_strokes: u64::MAX,
            ..write("a")
        };
        assert!(matches!(
            merge(&[big.clone(), big]),
            Err(StoreError::Invalid(_))
        ));
    }
}
