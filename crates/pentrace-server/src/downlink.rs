//! What the server answers a device, the same on both transports (the
//! contract is written out in `proto/pentrace/v1/device.proto`): acks made
//! of the device's stored watermark plus the stored seqs above it,
//! rejections with their reason, and `RejectCartridge` commands.
//!
//! An ack is built only from outcomes the pipeline reports after commit, and
//! the watermark comes from the database, so an ack never covers a seq that
//! is not stored — whatever was lost between the pen and this process.

use std::collections::{BTreeMap, BTreeSet};

use pentrace_ingest::{Disposition, Outcome, RejectReason};
use pentrace_proto::v1 as pb;
use pentrace_store::FlagRecord;

/// Outcomes gathered since the last [`AckRound::take`]: a burst of
/// outcomes for one pen becomes one ack.
#[derive(Debug, Default)]
pub struct AckRound {
    devices: BTreeMap<String, DeviceRound>,
}

#[derive(Debug, Default)]
struct DeviceRound {
    watermark: u64,
    stored: BTreeSet<u64>,
}

impl AckRound {
    /// Records one outcome; a rejection is returned to be sent at once.
    pub fn add(&mut self, o: &Outcome) -> Option<pb::Rejection> {
        if let Disposition::Rejected(reason) = &o.disposition {
            return Some(rejection_of(o, reason));
        }
        let d = self.devices.entry(o.device_id.clone()).or_default();
        d.watermark = d.watermark.max(o.stored_through);
        d.stored.insert(o.seq);
        None
    }

    /// The acks of the outcomes since the last call, one per device.
    pub fn take(&mut self) -> Vec<pb::IngestAck> {
        std::mem::take(&mut self.devices)
            .into_iter()
            .map(|(device_id, d)| pb::IngestAck {
                device_id,
                committed_seq: d.watermark,
                stored: ranges(d.stored.range(d.watermark.saturating_add(1)..).copied()),
            })
            .collect()
    }
}

/// Ascending seqs as inclusive ranges.
fn ranges(seqs: impl Iterator<Item = u64>) -> Vec<pb::SeqRange> {
    let mut out: Vec<pb::SeqRange> = Vec::new();
    for s in seqs {
        match out.last_mut() {
            Some(r) if r.last.checked_add(1) == Some(s) => r.last = s,
            _ => out.push(pb::SeqRange { first: s, last: s }),
        }
    }
    out
}

/// Whether an ack covers `seq` (the pen's side of the contract).
pub fn covers(ack: &pb::IngestAck, seq: u64) -> bool {
    (1..=ack.committed_seq).contains(&seq)
        || ack.stored.iter().any(|r| r.first <= seq && seq <= r.last)
}

fn rejection_of(o: &Outcome, reason: &RejectReason) -> pb::Rejection {
    let (code, detail) = match reason {
        RejectReason::UnknownDevice => (
            pb::RejectCode::UnknownDevice,
            format!(
                "device {:?} is not registered (register it with Registry.RegisterDevice, \
                 or run the server with --auto-register)",
                o.device_id
            ),
        ),
        RejectReason::StoreRejected(why) => (
            pb::RejectCode::StoreRefused,
            format!("the store refused the message and its quarantine: {why}"),
        ),
        RejectReason::ShuttingDown => (
            pb::RejectCode::Unavailable,
            "not stored: the server is stopping and its database is unreachable; resend it"
                .to_owned(),
        ),
    };
    pb::Rejection {
        device_id: o.device_id.clone(),
        seq: o.seq,
        code: code as i32,
        detail,
        retry: reason.is_retryable(),
    }
}

/// A refusal before the pipeline (the transport could not attribute or key
/// the message); never worth resending as it is.
pub fn refusal(device_id: &str, seq: u64, code: pb::RejectCode, detail: String) -> pb::Rejection {
    pb::Rejection {
        device_id: device_id.to_owned(),
        seq,
        code: code as i32,
        detail,
        retry: false,
    }
}

/// The command that tells a pen to stop using a cartridge, for flags of
/// the kinds that call for it.
pub fn reject_cartridge(flag: &FlagRecord) -> Option<pb::RejectCartridge> {
    let stored = flag
        .session_id
        .clone()
        .filter(|_| flag.kind.rejects_cartridge())?;
    // The session id the pen sent, when pentrace stores the session under
    // another (a non-UUID id, or one another session already had): the pen
    // knows only its own.
    let session_id = flag
        .evidence
        .get("raw_session_id")
        .and_then(serde_json::Value::as_str)
        .map_or(stored, str::to_owned);
    Some(pb::RejectCartridge {
        session_id,
        cartridge_id: flag.cartridge_id.clone().unwrap_or_default(),
        reason: flag.kind.as_str().to_owned(),
        detail: flag.detail.clone(),
        device_id: flag.device_id.clone(),
    })
}

/// Wraps a body as a downlink message.
pub fn downlink(body: pb::device_downlink::Body) -> pb::DeviceDownlink {
    pb::DeviceDownlink { body: Some(body) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(seq: u64, disposition: Disposition, stored_through: u64) -> Outcome {
        Outcome {
            device_id: "p".into(),
            seq,
            disposition,
            stored_through,
        }
    }

    #[test]
    fn a_pen_is_told_to_stop_under_the_session_id_it_sent() {
        let flag = |evidence: serde_json::Value| FlagRecord {
            id: uuid::Uuid::nil(),
            kind: pentrace_domain::FlagKind::CartridgeReused,
            severity: pentrace_domain::Severity::Critical,
            state: pentrace_store::FlagState::Open,
            clinic_id: "c".into(),
            device_id: "pen-b".into(),
            session_id: Some("stored-id".into()),
            cartridge_id: Some("g:1".into()),
            seq: 1,
            raised_at: chrono::DateTime::UNIX_EPOCH,
            detail: String::new(),
            evidence,
        };
        let plain = reject_cartridge(&flag(serde_json::json!({}))).expect("a command");
        assert_eq!(plain.session_id, "stored-id");
        let raw = serde_json::json!({ "raw_session_id": "00000000-0000-0000-0000-000000000000" });
        let mapped = reject_cartridge(&flag(raw)).expect("a command");
        assert_eq!(mapped.session_id, "00000000-0000-0000-0000-000000000000");
    }

    #[test]
    fn an_ack_is_the_watermark_plus_what_is_stored_above_it() {
        let mut round = AckRound::default();
        // 1-3 stored, 4 lost on the way, 5, 6 and 8 stored.
        for (seq, through) in [(1, 3), (2, 3), (3, 3), (5, 3), (6, 3), (8, 3)] {
            assert!(
                round
                    .add(&outcome(seq, Disposition::Committed, through))
                    .is_none()
            );
        }
        let acks = round.take();
        assert_eq!(acks.len(), 1);
        let ack = &acks[0];
        assert_eq!(ack.committed_seq, 3);
        assert_eq!(
            ack.stored,
            vec![
                pb::SeqRange { first: 5, last: 6 },
                pb::SeqRange { first: 8, last: 8 }
            ]
        );
        for seq in [1, 2, 3, 5, 6, 8] {
            assert!(covers(ack, seq), "{seq}");
        }
        for seq in [4, 7, 9] {
            assert!(!covers(ack, seq), "{seq} is not stored");
        }
        assert!(round.take().is_empty(), "one ack per round");
    }

    #[test]
    fn a_rejection_is_answered_and_holds_nothing_back() {
        let mut round = AckRound::default();
        round.add(&outcome(1, Disposition::Committed, 1));
        let r = round
            .add(&outcome(
                2,
                Disposition::Rejected(RejectReason::UnknownDevice),
                0,
            ))
            .expect("a rejection");
        assert_eq!(
            (r.seq, r.code, r.retry),
            (2, pb::RejectCode::UnknownDevice as i32, false)
        );
        round.add(&outcome(3, Disposition::Committed, 1));
        let ack = &round.take()[0];
        assert!(covers(ack, 1) && covers(ack, 3) && !covers(ack, 2));
    }

    #[test]
    fn duplicates_and_quarantined_messages_are_acknowledged() {
        let mut round = AckRound::default();
        round.add(&outcome(7, Disposition::Duplicate, 9));
        round.add(&outcome(12, Disposition::Quarantined("x".into()), 9));
        let ack = &round.take()[0];
        assert_eq!(ack.committed_seq, 9);
        assert_eq!(
            ack.stored,
            vec![pb::SeqRange {
                first: 12,
                last: 12
            }]
        );
    }

    #[test]
    fn a_stopping_server_asks_for_a_resend() {
        let mut round = AckRound::default();
        let r = round
            .add(&outcome(
                4,
                Disposition::Rejected(RejectReason::ShuttingDown),
                0,
            ))
            .expect("a rejection");
        assert!(r.retry);
        assert_eq!(r.code, pb::RejectCode::Unavailable as i32);
    }

    #[test]
    fn ranges_merge_runs() {
        let r = ranges([1, 2, 3, 5, u64::MAX - 1, u64::MAX].into_iter());
        assert_eq!(
            r.iter().map(|r| (r.first, r.last)).collect::<Vec<_>>(),
            vec![(1, 3), (5, 5), (u64::MAX - 1, u64::MAX)]
        );
    }
}
