//! Which seqs a stream may acknowledge. An ack of `n` tells the pen that
//! every seq of the device up to `n` that arrived on this stream is stored,
//! and the pen counts it only for messages it sent before `n` (seq order and
//! send order can differ: a swapped pair, a resend). So besides the running
//! ack (the highest such `n`), a seq that is stored after the ack passed it
//! (a late or resent message) is announced on its own, or its sender would
//! never hear of it: at the end of a pen's stream no higher ack follows.
//!
//! A message that was rejected is a barrier: nothing past it is
//! acknowledged, so the pen never believes a lost message was stored.
//!
//! Outcomes are recorded with [`AckTracker::resolved`]; the acks they make
//! possible are taken once per round with [`AckTracker::take_acks`], so a
//! burst of outcomes for one pen becomes one ack.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Per-device ack bookkeeping of one stream.
#[derive(Debug, Default)]
pub struct AckTracker {
    devices: HashMap<String, DeviceAcks>,
    /// Devices with outcomes since the last [`AckTracker::take_acks`].
    touched: Vec<String>,
    unresolved: usize,
}

#[derive(Debug, Default)]
struct DeviceAcks {
    /// Received but not yet final (count: the same seq may arrive twice).
    pending: BTreeMap<u64, u32>,
    /// Stored seqs above the last ack.
    stored: BTreeSet<u64>,
    /// Stored seqs at or below the last ack, not announced yet.
    late: BTreeSet<u64>,
    /// Rejected seqs not stored since: the lowest is a barrier.
    rejected: BTreeSet<u64>,
    acked: u64,
    touched: bool,
}

impl AckTracker {
    /// A message was submitted.
    pub fn received(&mut self, device_id: &str, seq: u64) {
        let d = self.devices.entry(device_id.to_owned()).or_default();
        *d.pending.entry(seq).or_default() += 1;
        self.unresolved += 1;
    }

    /// A submitted message reached its final state.
    pub fn resolved(&mut self, device_id: &str, seq: u64, stored: bool) {
        self.unresolved = self.unresolved.saturating_sub(1);
        let Some(d) = self.devices.get_mut(device_id) else {
            return;
        };
        d.resolved(seq, stored);
        if !d.touched {
            d.touched = true;
            self.touched.push(device_id.to_owned());
        }
    }

    /// The acks the outcomes since the last call allow, per device in
    /// ascending order.
    pub fn take_acks(&mut self) -> Vec<(String, u64)> {
        let mut acks = Vec::new();
        for device_id in std::mem::take(&mut self.touched) {
            if let Some(d) = self.devices.get_mut(&device_id) {
                d.touched = false;
                for seq in d.announce() {
                    acks.push((device_id.clone(), seq));
                }
            }
        }
        acks
    }

    /// Messages submitted whose outcome has not arrived.
    pub fn unresolved(&self) -> usize {
        self.unresolved
    }
}

impl DeviceAcks {
    fn resolved(&mut self, seq: u64, stored: bool) {
        if let Some(count) = self.pending.get_mut(&seq) {
            *count -= 1;
            if *count == 0 {
                self.pending.remove(&seq);
            }
        }
        if !stored {
            self.rejected.insert(seq);
            return;
        }
        // A rejected seq that is stored later (resent once its device was
        // registered) no longer holds acks back.
        self.rejected.remove(&seq);
        if seq <= self.acked {
            self.late.insert(seq);
        } else {
            self.stored.insert(seq);
        }
    }

    /// Late seqs that may be announced, then the new running ack if it moved.
    fn announce(&mut self) -> Vec<u64> {
        // Any received seq not yet stored holds acks back, also one below
        // the last ack; a pending copy of a seq already stored (a duplicate)
        // does not.
        let waiting = self
            .pending
            .keys()
            .copied()
            .find(|s| !self.stored.contains(s) && !self.late.contains(s));
        let barrier = self.rejected.first().copied();
        let limit = [waiting, barrier].into_iter().flatten().min();
        let mut out: Vec<u64> = match limit {
            Some(l) => {
                let held = self.late.split_off(&l);
                std::mem::replace(&mut self.late, held)
                    .into_iter()
                    .collect()
            }
            None => std::mem::take(&mut self.late).into_iter().collect(),
        };
        let candidate = match limit {
            Some(l) => self.stored.range(..l).next_back().copied(),
            None => self.stored.last().copied(),
        };
        if let Some(c) = candidate.filter(|&c| c > self.acked) {
            self.acked = c;
            // Everything at or below the ack is settled; keep the set small.
            self.stored = self.stored.split_off(&(c + 1));
            out.push(c);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resolves one outcome and takes the acks it allows for device `p`.
    fn resolve(t: &mut AckTracker, seq: u64, stored: bool) -> Vec<u64> {
        t.resolved("p", seq, stored);
        t.take_acks().into_iter().map(|(_, s)| s).collect()
    }

    #[test]
    fn acks_wait_for_earlier_messages() {
        let mut t = AckTracker::default();
        for s in 1..=3 {
            t.received("p", s);
        }
        assert_eq!(resolve(&mut t, 2, true), Vec::<u64>::new());
        assert_eq!(resolve(&mut t, 1, true), vec![2]);
        assert_eq!(resolve(&mut t, 3, true), vec![3]);
        assert_eq!(t.unresolved(), 0);
    }

    #[test]
    fn one_round_makes_one_ack() {
        let mut t = AckTracker::default();
        for s in 1..=3 {
            t.received("p", s);
        }
        for s in 1..=3 {
            t.resolved("p", s, true);
        }
        assert_eq!(t.take_acks(), vec![("p".to_owned(), 3)]);
        assert_eq!(t.take_acks(), vec![]);
    }

    #[test]
    fn a_rejected_message_is_a_barrier() {
        let mut t = AckTracker::default();
        for s in 1..=3 {
            t.received("p", s);
        }
        assert_eq!(resolve(&mut t, 1, true), vec![1]);
        assert_eq!(resolve(&mut t, 2, false), Vec::<u64>::new());
        assert_eq!(resolve(&mut t, 3, true), Vec::<u64>::new());
    }

    #[test]
    fn a_rejected_seq_stored_later_lifts_the_barrier() {
        let mut t = AckTracker::default();
        t.received("p", 1);
        t.received("p", 2);
        assert_eq!(resolve(&mut t, 1, false), Vec::<u64>::new());
        assert_eq!(resolve(&mut t, 2, true), Vec::<u64>::new());
        t.received("p", 1);
        assert_eq!(resolve(&mut t, 1, true), vec![2]);
    }

    #[test]
    fn a_late_seq_below_the_ack_is_announced_itself() {
        // The pen sent 662 before 661 at the end of its stream: the ack of
        // 662 does not cover 661 for it, and no higher ack will follow.
        let mut t = AckTracker::default();
        t.received("p", 662);
        assert_eq!(resolve(&mut t, 662, true), vec![662]);
        t.received("p", 661);
        assert_eq!(resolve(&mut t, 661, true), vec![661]);
    }

    #[test]
    fn resends_of_acknowledged_seqs_are_each_announced() {
        // A pen that missed its acks (clean session, reconnect) resends
        // 660 and 661; the stream acked 662 long ago.
        let mut t = AckTracker::default();
        for s in 660..=662 {
            t.received("p", s);
            t.resolved("p", s, true);
        }
        assert_eq!(t.take_acks(), vec![("p".to_owned(), 662)]);
        t.received("p", 660);
        t.received("p", 661);
        assert_eq!(resolve(&mut t, 661, true), Vec::<u64>::new(), "660 is open");
        assert_eq!(resolve(&mut t, 660, true), vec![660, 661]);
    }

    #[test]
    fn a_pending_seq_below_the_ack_holds_later_acks_back() {
        let mut t = AckTracker::default();
        t.received("p", 662);
        assert_eq!(resolve(&mut t, 662, true), vec![662]);
        t.received("p", 661);
        t.received("p", 663);
        assert_eq!(
            resolve(&mut t, 663, true),
            Vec::<u64>::new(),
            "661 is received but not stored"
        );
        assert_eq!(resolve(&mut t, 661, true), vec![661, 663]);
    }

    #[test]
    fn duplicates_in_one_stream_are_counted() {
        let mut t = AckTracker::default();
        t.received("p", 1);
        t.received("p", 1);
        assert_eq!(resolve(&mut t, 1, true), vec![1]);
        assert_eq!(
            resolve(&mut t, 1, true),
            vec![1],
            "the copy is announced too"
        );
        assert_eq!(t.unresolved(), 0);
    }

    #[test]
    fn devices_are_independent_and_holes_do_not_block() {
        let mut t = AckTracker::default();
        t.received("a", 5);
        t.received("b", 1);
        t.resolved("a", 5, true);
        t.resolved("b", 1, true);
        assert_eq!(
            t.take_acks(),
            vec![("a".to_owned(), 5), ("b".to_owned(), 1)]
        );
    }
}
