//! Which seq a stream may acknowledge: the highest seq such that every seq
//! of the device up to it that arrived on this stream is stored. A message
//! that was rejected is a barrier: nothing past it is acknowledged, so the
//! pen never believes a lost message was stored.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Per-device ack bookkeeping of one stream.
#[derive(Debug, Default)]
pub struct AckTracker {
    devices: HashMap<String, DeviceAcks>,
    unresolved: usize,
}

#[derive(Debug, Default)]
struct DeviceAcks {
    /// Received but not yet final (count: the same seq may arrive twice).
    pending: BTreeMap<u64, u32>,
    /// Stored seqs above the last ack.
    stored: BTreeSet<u64>,
    /// Lowest rejected seq, if any.
    /// Rejected seqs not stored since: the lowest is a barrier.
    rejected: BTreeSet<u64>,
    acked: u64,
}

impl AckTracker {
    /// A message was submitted.
    pub fn received(&mut self, device_id: &str, seq: u64) {
        let d = self.devices.entry(device_id.to_owned()).or_default();
        *d.pending.entry(seq).or_default() += 1;
        self.unresolved += 1;
    }

    /// A submitted message reached its final state; returns the new ack for
    /// the device when it moved.
    pub fn resolved(&mut self, device_id: &str, seq: u64, stored: bool) -> Option<u64> {
        self.unresolved = self.unresolved.saturating_sub(1);
        let d = self.devices.get_mut(device_id)?;
        if let Some(count) = d.pending.get_mut(&seq) {
            *count -= 1;
            if *count == 0 {
                d.pending.remove(&seq);
            }
        }
        if stored {
            // A rejected seq that is stored later (resent once its device
            // was registered) no longer holds acks back.
            d.rejected.remove(&seq);
            d.stored.insert(seq);
        } else {
            d.rejected.insert(seq);
        }
        d.advance(seq, stored)
    }

    /// The last ack of a device (0 = none yet), to repeat it to a pen that
    /// resends what was already acknowledged.
    pub fn current(&self, device_id: &str) -> u64 {
        self.devices.get(device_id).map_or(0, |d| d.acked)
    }

    /// Messages submitted whose outcome has not arrived.
    pub fn unresolved(&self) -> usize {
        self.unresolved
    }
}

impl DeviceAcks {
    fn advance(&mut self, seq: u64, stored: bool) -> Option<u64> {
        // Any received seq not yet stored holds acks back, also one below
        // the last ack (it arrived late, after a higher seq was acked); a
        // pending copy of a seq already stored (a duplicate) does not.
        let waiting = self
            .pending
            .keys()
            .copied()
            .find(|s| !self.stored.contains(s));
        let barrier = self.rejected.first().copied();
        let limit = [waiting, barrier].into_iter().flatten().min();
        let candidate = match limit {
            Some(l) => self.stored.range(..l).next_back().copied(),
            None => self.stored.last().copied(),
        };
        match candidate {
            Some(c) if c > self.acked => {
                self.acked = c;
                // Everything at or below the ack is settled; keep the set small.
                self.stored = self.stored.split_off(&c);
                Some(c)
            }
            // A late seq below the ack (sent after a higher one, reordered)
            // is stored now: repeat the ack so its sender learns it is
            // covered, once nothing received below the ack is still open.
            _ if stored && seq < self.acked && limit.is_none_or(|l| l > self.acked) => {
                self.stored = self.stored.split_off(&self.acked);
                Some(self.acked)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_wait_for_earlier_messages() {
        let mut t = AckTracker::default();
        for s in 1..=3 {
            t.received("p", s);
        }
        assert_eq!(t.resolved("p", 2, true), None);
        assert_eq!(t.resolved("p", 1, true), Some(2));
        assert_eq!(t.resolved("p", 3, true), Some(3));
        assert_eq!(t.unresolved(), 0);
    }

    #[test]
    fn a_rejected_message_is_a_barrier() {
        let mut t = AckTracker::default();
        for s in 1..=3 {
            t.received("p", s);
        }
        assert_eq!(t.resolved("p", 1, true), Some(1));
        assert_eq!(t.resolved("p", 2, false), None);
        assert_eq!(t.resolved("p", 3, true), None);
    }

    #[test]
    fn a_rejected_seq_stored_later_lifts_the_barrier() {
        let mut t = AckTracker::default();
        t.received("p", 1);
        t.received("p", 2);
        assert_eq!(t.resolved("p", 1, false), None);
        assert_eq!(t.resolved("p", 2, true), None);
        t.received("p", 1);
        assert_eq!(t.resolved("p", 1, true), Some(2));
        assert_eq!(t.current("p"), 2);
    }

    #[test]
    fn a_late_seq_below_the_ack_is_acknowledged_again() {
        let mut t = AckTracker::default();
        t.received("p", 662);
        assert_eq!(t.resolved("p", 662, true), Some(662));
        t.received("p", 661);
        assert_eq!(
            t.resolved("p", 661, true),
            Some(662),
            "the sender learns 661 is covered"
        );
    }

    #[test]
    fn a_pending_seq_below_the_ack_holds_later_acks_back() {
        let mut t = AckTracker::default();
        t.received("p", 662);
        assert_eq!(t.resolved("p", 662, true), Some(662));
        t.received("p", 661);
        t.received("p", 663);
        assert_eq!(
            t.resolved("p", 663, true),
            None,
            "661 is received but not stored"
        );
        assert_eq!(t.resolved("p", 661, true), Some(663));
    }

    #[test]
    fn duplicates_in_one_stream_are_counted() {
        let mut t = AckTracker::default();
        t.received("p", 1);
        t.received("p", 1);
        assert_eq!(t.resolved("p", 1, true), Some(1));
        assert_eq!(t.resolved("p", 1, true), None);
        assert_eq!(t.unresolved(), 0);
    }

    #[test]
    fn devices_are_independent_and_holes_do_not_block() {
        let mut t = AckTracker::default();
        t.received("a", 5);
        t.received("b", 1);
        assert_eq!(t.resolved("a", 5, true), Some(5));
        assert_eq!(t.resolved("b", 1, true), Some(1));
    }
}
