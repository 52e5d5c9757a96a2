//! Holes in a device's seq (holes are data gaps: docs/architecture.md, "Wire
//! protocol"). Pure bookkeeping: the pipeline keeps each device's open holes
//! and highest seq; [`crate::rules::judge_gap`] decides when a hole has
//! become a `DATA_GAP`.

use chrono::{DateTime, Utc};

use crate::rules::SeqHole;

/// Records the arrival of `seq` from a device whose highest seq so far is
/// `max_seq` (0 = none) and whose unfilled holes are `holes`: a jump opens a
/// hole, a late arrival fills (part of) one.
pub fn track_seq(
    holes: &mut Vec<SeqHole>,
    max_seq: &mut u64,
    device_id: &str,
    seq: u64,
    now: DateTime<Utc>,
) {
    if seq > *max_seq {
        // `*max_seq < seq`, so neither step can wrap; saturating all the same.
        let next = max_seq.saturating_add(1);
        if seq > next {
            holes.push(SeqHole {
                device_id: device_id.to_owned(),
                first: next,
                last: seq.saturating_sub(1),
                detected_at: now,
            });
        }
        *max_seq = seq;
        return;
    }
    fill(holes, seq);
}

/// Removes `seq` from whichever hole holds it, splitting the hole in two when
/// `seq` is inside it; both halves keep the original detection time.
fn fill(holes: &mut Vec<SeqHole>, seq: u64) {
    let Some(i) = holes.iter().position(|h| h.first <= seq && seq <= h.last) else {
        return;
    };
    let hole = holes.swap_remove(i);
    if hole.first < seq {
        holes.push(SeqHole {
            last: seq.saturating_sub(1),
            ..hole.clone()
        });
    }
    if seq < hole.last {
        holes.push(SeqHole {
            first: seq.saturating_add(1),
            ..hole
        });
    }
    holes.sort_by_key(|h| h.first);
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000, 0)
            .single()
            .unwrap_or_default()
    }

    fn run(seqs: &[u64]) -> (Vec<(u64, u64)>, u64) {
        let (mut holes, mut max) = (Vec::new(), 0);
        for &s in seqs {
            track_seq(&mut holes, &mut max, "pen", s, now());
        }
        (holes.iter().map(|h| (h.first, h.last)).collect(), max)
    }

    #[test]
    fn contiguous_seqs_leave_no_hole() {
        assert_eq!(run(&[1, 2, 3]), (vec![], 3));
    }

    #[test]
    fn a_jump_opens_a_hole_and_late_arrivals_fill_it() {
        assert_eq!(run(&[1, 5]), (vec![(2, 4)], 5));
        assert_eq!(run(&[1, 5, 3]), (vec![(2, 2), (4, 4)], 5));
        assert_eq!(run(&[1, 5, 2, 3, 4]), (vec![], 5));
    }

    #[test]
    fn a_first_message_above_one_means_earlier_ones_are_missing() {
        assert_eq!(run(&[3]), (vec![(1, 2)], 3));
    }

    #[test]
    fn duplicates_and_unknown_old_seqs_change_nothing() {
        assert_eq!(run(&[1, 2, 2, 1]), (vec![], 2));
    }
}
