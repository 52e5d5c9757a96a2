//! Which of a pen's messages are acknowledged.
//!
//! The server acks "the highest seq such that every seq up to it that it
//! has received is committed". An ack of `n` is sent after message `n`
//! arrived, so it covers exactly the messages the pen sent on the current
//! connection before (its first send of) `n` whose seq is at most `n`. A
//! message sent after `n` with a lower seq (a swapped pair, a resend) may
//! not have arrived yet, so only a later ack covers it: the server announces
//! such a seq with an ack of its own once it is stored.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

/// A sent message waiting for its ack.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Send position on the current connection; `None` once the connection
    /// is gone and until the message is resent.
    pos: Option<u64>,
    first_sent: Instant,
    /// Index of the message in the pen's plan.
    index: usize,
    samples: u64,
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
    next_pos: u64,
    /// Acked seqs above the watermark (a swapped pair can leave a hole).
    acked: BTreeSet<u64>,
    watermark: u64,
}

impl Inflight {
    /// No message sent yet; seqs start after `base`.
    pub fn new(base: u64) -> Inflight {
        Inflight {
            entries: BTreeMap::new(),
            next_pos: 0,
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

    /// Records that message `seq` (plan index `index`) went out on the
    /// current connection. Its first send there fixes its position.
    pub fn sent(&mut self, seq: u64, index: usize, samples: u64, now: Instant) {
        if self.is_acked(seq) {
            return;
        }
        let pos = self.next_pos;
        let entry = self.entries.entry(seq).or_insert(Entry {
            pos: None,
            first_sent: now,
            index,
            samples,
        });
        if entry.pos.is_none() {
            entry.pos = Some(pos);
            self.next_pos += 1;
        }
    }

    /// Applies an ack of `n` (see the module doc).
    pub fn ack(&mut self, n: u64, now: Instant) -> Covered {
        let mut covered = Covered::default();
        let Some(limit) = self.entries.get(&n).and_then(|e| e.pos) else {
            return covered;
        };
        let seqs: Vec<u64> = self
            .entries
            .range(..=n)
            .filter(|(_, e)| e.pos.is_some_and(|p| p <= limit))
            .map(|(s, _)| *s)
            .collect();
        for seq in seqs {
            if let Some(e) = self.entries.remove(&seq) {
                covered.messages += 1;
                covered.samples += e.samples;
                covered
                    .latencies
                    .push(now.saturating_duration_since(e.first_sent));
                self.acked.insert(seq);
            }
        }
        self.advance();
        covered
    }

    fn advance(&mut self) {
        while self.acked.remove(&(self.watermark + 1)) {
            self.watermark += 1;
        }
    }

    /// The connection is gone: every unacknowledged message must be sent
    /// again. Returns their plan indexes in seq order.
    pub fn requeue(&mut self) -> Vec<usize> {
        self.entries
            .values_mut()
            .map(|e| {
                e.pos = None;
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

    #[test]
    fn an_ack_covers_everything_sent_before_it() {
        let now = Instant::now();
        let mut f = Inflight::new(0);
        sent(&mut f, &[1, 2, 3], now);
        let c = f.ack(2, now);
        assert_eq!((c.messages, c.samples), (2, 20));
        assert_eq!(f.watermark(), 2);
        assert_eq!(f.lowest(), Some(3));
        assert_eq!(f.ack(3, now).messages, 1);
        assert!(f.is_empty());
    }

    #[test]
    fn a_swapped_message_needs_a_later_ack() {
        let now = Instant::now();
        let mut f = Inflight::new(4);
        // 6 goes out before 5: an ack of 6 may precede 5's arrival.
        sent(&mut f, &[6, 5], now);
        assert_eq!(f.ack(6, now).messages, 1);
        assert_eq!(f.watermark(), 4, "5 is not proven yet");
        sent(&mut f, &[7], now);
        assert_eq!(f.ack(7, now).messages, 2);
        assert_eq!(f.watermark(), 7);
    }

    #[test]
    fn a_duplicate_keeps_its_first_position_and_is_not_tracked_once_acked() {
        let now = Instant::now();
        let mut f = Inflight::new(0);
        sent(&mut f, &[1, 2, 1], now);
        assert_eq!(f.ack(2, now).messages, 2);
        sent(&mut f, &[2], now);
        assert!(f.is_empty());
    }

    #[test]
    fn after_a_reconnect_only_resent_messages_are_covered() {
        let now = Instant::now();
        let mut f = Inflight::new(0);
        sent(&mut f, &[1, 2, 3], now);
        assert_eq!(f.requeue(), vec![1, 2, 3]);
        // A late ack from the old connection proves nothing.
        assert_eq!(f.ack(3, now).messages, 0);
        sent(&mut f, &[1, 2], now);
        assert_eq!(f.ack(2, now).messages, 2);
        assert_eq!(f.len(), 1);
        sent(&mut f, &[3], now);
        assert_eq!(f.ack(3, now).messages, 1);
        assert_eq!(f.watermark(), 3);
    }

    #[test]
    fn unknown_acks_are_ignored() {
        let now = Instant::now();
        let mut f = Inflight::new(0);
        sent(&mut f, &[1], now);
        assert_eq!(f.ack(9, now), Covered::default());
        assert_eq!(f.len(), 1);
    }
}
