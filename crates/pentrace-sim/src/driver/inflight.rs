//! Which of a pen's messages are acknowledged, by the delivery contract of
//! `proto/pentrace/v1/device.proto`: an ack covers the seqs up to its
//! `committed_seq` and those in its `stored` ranges, and nothing else. What
//! is not covered is sent again: everything after a reconnect, and on the
//! same connection any message that has gone uncovered for [`RESEND_AFTER`]
//! (doubling per resend up to [`RESEND_MAX`]) — so a message lost on the
//! way (a broker restart, a consumer gone) costs a resend, never data.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pentrace_proto::v1 as pb;
use tokio::time::Instant;

/// How long a sent message may go uncovered before it is sent again.
pub const RESEND_AFTER: Duration = Duration::from_secs(5);
/// The longest wait between resends of one message.
pub const RESEND_MAX: Duration = Duration::from_secs(60);

/// A sent message waiting for its ack.
#[derive(Debug, Clone, Copy)]
struct Entry {
    first_sent: Instant,
    /// When it was last handed to a connection; `None` while it waits in
    /// the outbox to be sent (again).
    last_sent: Option<Instant>,
    /// Times it was sent again on the same connection.
    resends: u32,
    /// Index of the message in the pen's plan.
    index: usize,
    samples: u64,
}

impl Entry {
    fn resend_at(&self) -> Option<Instant> {
        let wait = RESEND_AFTER
            .saturating_mul(1u32 << self.resends.min(6))
            .min(RESEND_MAX);
        self.last_sent.map(|t| t + wait)
    }
}

/// Messages newly acknowledged by one ack.
#[derive(Debug, Default, PartialEq)]
pub struct Covered {
    pub messages: u64,
    pub samples: u64,
    /// Time from each message's first send to this ack.
    pub latencies: Vec<Duration>,
}

/// A pen's unacknowledged messages and its ack watermark.
#[derive(Debug)]
pub struct Inflight {
    entries: BTreeMap<u64, Entry>,
    /// Acked seqs above the watermark (a hole can leave them there).
    acked: BTreeSet<u64>,
    watermark: u64,
}

impl Inflight {
    /// No message sent yet; seqs start after `base`.
    pub fn new(base: u64) -> Inflight {
        Inflight {
            entries: BTreeMap::new(),
            acked: BTreeSet::new(),
            watermark: base,
        }
    }

    /// Every seq up to this one is acknowledged.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Messages sent and not yet acknowledged.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether every sent message is acknowledged.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Lowest unacknowledged seq, if any.
    pub fn lowest(&self) -> Option<u64> {
        self.entries.keys().next().copied()
    }

    /// Whether `seq` is acknowledged already.
    pub fn is_acked(&self, seq: u64) -> bool {
        seq <= self.watermark || self.acked.contains(&seq)
    }

    /// Records that message `seq` (plan index `index`) went out.
    pub fn sent(&mut self, seq: u64, index: usize, samples: u64, now: Instant) {
        if self.is_acked(seq) {
            return;
        }
        let entry = self.entries.entry(seq).or_insert(Entry {
            first_sent: now,
            last_sent: None,
            resends: 0,
            index,
            samples,
        });
        entry.last_sent = Some(now);
    }

    /// Applies an ack: removes every entry it covers.
    pub fn ack(&mut self, ack: &pb::IngestAck, now: Instant) -> Covered {
        let mut covered = Covered::default();
        let mut seqs: Vec<u64> = self
            .entries
            .range(..=ack.committed_seq)
            .map(|(s, _)| *s)
            .collect();
        for r in &ack.stored {
            if r.first <= r.last {
                seqs.extend(self.entries.range(r.first..=r.last).map(|(s, _)| *s));
            }
        }
        for seq in seqs {
            if let Some(e) = self.entries.remove(&seq) {
                covered.messages += 1;
                covered.samples += e.samples;
                covered
                    .latencies
                    .push(now.saturating_duration_since(e.first_sent));
            }
        }
        // The pen's own watermark moves only over what it was told: the
        // server's watermark, and each seq it reported stored.
        if ack.committed_seq > self.watermark {
            self.watermark = ack.committed_seq;
            self.acked = self.acked.split_off(&(ack.committed_seq + 1));
        }
        for r in &ack.stored {
            // Bounded: only seqs this pen has in flight or just had.
            let top = r.last.min(r.first.saturating_add(100_000));
            self.acked
                .extend((r.first..=top).filter(|s| *s > self.watermark));
        }
        while self.acked.remove(&(self.watermark + 1)) {
            self.watermark += 1;
        }
        covered
    }

    /// The server will never store `seq` as sent: stop tracking it.
    /// Returns whether it was tracked.
    pub fn forget(&mut self, seq: u64) -> bool {
        self.entries.remove(&seq).is_some()
    }

    /// The connection is gone: every unacknowledged message must be sent
    /// again. Returns their plan indexes in seq order.
    pub fn requeue(&mut self) -> Vec<usize> {
        self.entries
            .values_mut()
            .map(|e| {
                e.last_sent = None;
                e.index
            })
            .collect()
    }

    /// When the next uncovered message is due for a resend.
    pub fn next_resend(&self) -> Option<Instant> {
        self.entries.values().filter_map(Entry::resend_at).min()
    }

    /// Messages due for a resend at `now`, in seq order; each is counted as
    /// resent and waits in the outbox until sent.
    pub fn due(&mut self, now: Instant) -> Vec<usize> {
        self.entries
            .values_mut()
            .filter(|e| e.resend_at().is_some_and(|t| t <= now))
            .map(|e| {
                e.last_sent = None;
                e.resends += 1;
                e.index
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(f: &mut Inflight, seqs: &[u64], now: Instant) {
        for &s in seqs {
            f.sent(s, s as usize, 10, now);
        }
    }

    fn ack(committed_seq: u64, stored: &[(u64, u64)]) -> pb::IngestAck {
        pb::IngestAck {
            device_id: "p".into(),
            committed_seq,
            stored: stored
                .iter()
                .map(|&(first, last)| pb::SeqRange { first, last })
                .collect(),
        }
    }

    #[test]
    fn an_ack_covers_its_watermark_and_its_ranges_only() {
        let now = Instant::now();
        let mut f = Inflight::new(0);
        sent(&mut f, &[1, 2, 3, 4, 5], now);
        // 3 was lost on the way: the server stored 1, 2, 4, 5.
        let c = f.ack(&ack(2, &[(4, 5)]), now);
        assert_eq!((c.messages, c.samples), (4, 40));
        assert_eq!(f.lowest(), Some(3), "3 is not covered");
        assert_eq!(f.watermark(), 2);
        sent(&mut f, &[3], now);
        assert_eq!(f.ack(&ack(5, &[]), now).messages, 1);
        assert!(f.is_empty());
        assert_eq!(f.watermark(), 5);
    }

    #[test]
    fn an_uncovered_message_is_resent_after_a_while_with_backoff() {
        let start = Instant::now();
        let mut f = Inflight::new(0);
        sent(&mut f, &[1, 2], start);
        f.ack(&ack(0, &[(2, 2)]), start);
        assert!(f.due(start + Duration::from_secs(1)).is_empty());
        assert_eq!(f.next_resend(), Some(start + RESEND_AFTER));
        assert_eq!(f.due(start + RESEND_AFTER), vec![1]);
        assert_eq!(f.next_resend(), None, "queued, not yet sent");
        let again = start + RESEND_AFTER;
        sent(&mut f, &[1], again);
        assert_eq!(f.next_resend(), Some(again + RESEND_AFTER * 2));
    }

    #[test]
    fn after_a_reconnect_everything_uncovered_goes_out_again() {
        let now = Instant::now();
        let mut f = Inflight::new(0);
        sent(&mut f, &[1, 2, 3], now);
        assert_eq!(f.requeue(), vec![1, 2, 3]);
        assert_eq!(f.next_resend(), None);
        // An ack still covers what is stored, whichever connection sent it.
        assert_eq!(f.ack(&ack(2, &[]), now).messages, 2);
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn an_acked_seq_is_not_tracked_again_and_unknown_acks_change_nothing() {
        let now = Instant::now();
        let mut f = Inflight::new(0);
        sent(&mut f, &[1], now);
        assert_eq!(f.ack(&ack(0, &[(9, 9)]), now).messages, 0);
        assert_eq!(f.len(), 1);
        assert_eq!(f.ack(&ack(1, &[]), now).messages, 1);
        sent(&mut f, &[1], now);
        assert!(f.is_empty());
    }

    #[test]
    fn a_refused_message_is_forgotten() {
        let now = Instant::now();
        let mut f = Inflight::new(0);
        sent(&mut f, &[1, 2], now);
        assert!(f.forget(1));
        assert!(!f.forget(1));
        assert_eq!(f.lowest(), Some(2));
    }
}
