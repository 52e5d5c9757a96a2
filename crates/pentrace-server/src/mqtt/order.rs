//! Acknowledging publishes in arrival order once each outcome is final
//! (MQTT 3.1.1 §4.6: PUBACKs go out in the order the PUBLISHes came): a
//! later publish waits for every earlier one. Shared by the consumer behind
//! an external broker (`intake`) and the embedded front end.

use std::collections::{HashMap, VecDeque};

/// Final state of one received publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Outcome not known yet.
    Waiting,
    /// Acknowledge: stored, or refused for good (counted).
    Ack,
    /// Do not acknowledge: it must be delivered again.
    Hold,
}

/// Received publishes in arrival order, each with what it carries (`T`:
/// what the PUBACK needs).
#[derive(Debug)]
pub(crate) struct ArrivalOrder<T> {
    entries: VecDeque<(T, Settled)>,
    /// Id of the front entry; ids grow by one per entry.
    first_id: u64,
    /// Entry ids waiting for the outcome of `(device_id, seq)`, oldest
    /// first (a pen may send one key twice before the first is settled).
    waiting: HashMap<(String, u64), VecDeque<u64>>,
    waiting_count: usize,
}

impl<T> Default for ArrivalOrder<T> {
    fn default() -> Self {
        ArrivalOrder {
            entries: VecDeque::new(),
            first_id: 0,
            waiting: HashMap::new(),
            waiting_count: 0,
        }
    }
}

impl<T> ArrivalOrder<T> {
    /// A publish whose outcome the pipeline will report under `key`.
    pub fn push_waiting(&mut self, key: (String, u64), item: T) {
        let id = self.next_id();
        self.waiting.entry(key).or_default().push_back(id);
        self.waiting_count += 1;
        self.entries.push_back((item, Settled::Waiting));
    }

    /// A publish settled on arrival (refused before the pipeline).
    pub fn push_settled(&mut self, item: T, state: Settled) {
        self.entries.push_back((item, state));
    }

    /// Records the outcome of the oldest publish waiting for `key`; false
    /// when none waits for it.
    pub fn settle(&mut self, key: &(String, u64), state: Settled) -> bool {
        let Some(ids) = self.waiting.get_mut(key) else {
            return false;
        };
        let id = ids.pop_front();
        if ids.is_empty() {
            self.waiting.remove(key);
        }
        let Some(id) = id else {
            return false;
        };
        self.waiting_count = self.waiting_count.saturating_sub(1);
        if let Some(entry) = id
            .checked_sub(self.first_id)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.entries.get_mut(i))
        {
            entry.1 = state;
        }
        true
    }

    /// The front publish, if its outcome is known.
    pub fn pop_settled(&mut self) -> Option<(T, Settled)> {
        if self.entries.front()?.1 == Settled::Waiting {
            return None;
        }
        self.first_id += 1;
        self.entries.pop_front()
    }

    /// Publishes whose outcome has not arrived.
    pub fn waiting(&self) -> usize {
        self.waiting_count
    }

    /// Publishes held: waiting, or settled behind one that waits.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn next_id(&self) -> u64 {
        self.first_id + self.entries.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seq: u64) -> (String, u64) {
        ("p".to_owned(), seq)
    }

    fn drain(order: &mut ArrivalOrder<u16>) -> Vec<(u16, Settled)> {
        std::iter::from_fn(|| order.pop_settled()).collect()
    }

    #[test]
    fn a_later_outcome_waits_for_every_earlier_one() {
        let mut order = ArrivalOrder::default();
        order.push_waiting(key(1), 10);
        order.push_settled(11, Settled::Ack);
        order.push_waiting(key(2), 12);
        assert!(order.settle(&key(2), Settled::Ack));
        assert!(drain(&mut order).is_empty(), "1 is not settled yet");
        assert!(order.settle(&key(1), Settled::Hold));
        assert_eq!(
            drain(&mut order),
            vec![(10, Settled::Hold), (11, Settled::Ack), (12, Settled::Ack)]
        );
        assert_eq!((order.len(), order.waiting()), (0, 0));
    }

    #[test]
    fn one_key_sent_twice_settles_oldest_first() {
        let mut order = ArrivalOrder::default();
        order.push_waiting(key(1), 1);
        order.push_waiting(key(1), 2);
        assert_eq!(order.waiting(), 2);
        assert!(order.settle(&key(1), Settled::Ack));
        assert_eq!(drain(&mut order), vec![(1, Settled::Ack)]);
        assert!(order.settle(&key(1), Settled::Ack));
        assert_eq!(drain(&mut order), vec![(2, Settled::Ack)]);
        assert!(!order.settle(&key(1), Settled::Ack), "nothing waits");
    }
}
