//! Windows that a configuration change could not carry over, rebuilt from the input.
//!
//! A checkpoint's rings are kept where the window they belong to is unchanged (same length,
//! same buckets). A window added, or one whose buckets changed, starts empty; a window that
//! gained its preceding window (a drop rule was added on it) keeps its current buckets and
//! lacks the older ones. Rather than show such a window short for a whole window length,
//! its partition is read again from an earlier offset: those events go into the missing
//! buckets only, never into the counters, the other windows or the de-duplication memory of
//! the live stream, which already have them. Where the topic no longer holds that far back,
//! the window fills from what it holds and says how much it covers ([`PartitionState::coverage`](crate::pure::partition::PartitionState::coverage)).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::pure::dedup::Dedup;

/// The first offset applied in each slot of wall-clock time, over the span the windows and
/// the de-duplication horizon need. An event counts in a window at time `t` only if its place
/// in the window (its own time, or its arrival if stamped ahead) is at or after the window's
/// start, and it cannot have been applied before its place; so every event a window holds at
/// `t` has an offset at or after the first one applied in the slot holding the window's
/// start. Catching up after a restore records the offsets it reads under the time it reads
/// them, which is later: that only makes a rebuild start earlier than it needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetIndex {
    /// (slot start in wall-clock ms, first offset applied in that slot), oldest first.
    slots: VecDeque<(i64, i64)>,
}

impl OffsetIndex {
    /// Records that `offset` was applied at `now_ms`, when `now_ms` is in a slot of `slot_ms`
    /// that has no offset yet; keeps the newest `keep` slots. Returns when the next slot
    /// starts, so the caller can skip this until then.
    pub fn record(&mut self, now_ms: i64, offset: i64, slot_ms: i64, keep: usize) -> i64 {
        let slot = now_ms.div_euclid(slot_ms) * slot_ms;
        if self.slots.back().is_none_or(|&(last, _)| slot > last) {
            self.slots.push_back((slot, offset));
            while self.slots.len() > keep.max(1) {
                self.slots.pop_front();
            }
        }
        slot + slot_ms
    }

    /// The newest slot starting at or before `t_ms`: its start and first offset. Every
    /// message applied at `t_ms` or later has an offset at or after it. `None` when the
    /// index does not reach back that far.
    pub fn at_or_before(&self, t_ms: i64) -> Option<(i64, i64)> {
        self.slots
            .iter()
            .rev()
            .find(|&&(start, _)| start <= t_ms)
            .copied()
    }
}

/// From when a window's buckets hold everything: the window at `now` is complete when this
/// is at or before its start.
pub type CoveredFrom = i64;
/// Complete as far back as the window reaches.
pub const COMPLETE: CoveredFrom = i64::MIN;
/// Not known yet: set from the first message read (a partition taken from the middle of a
/// topic whose older records retention removed), or while a rebuild runs.
pub const UNKNOWN: CoveredFrom = i64::MAX;

/// How much of a window of `length_ms` starting at `start_ms` is covered at `now_ms`, 0 to 1.
pub fn coverage_ratio(from: CoveredFrom, start_ms: i64, now_ms: i64) -> f64 {
    if from <= start_ms {
        1.0
    } else if from >= now_ms {
        0.0
    } else {
        (now_ms - from) as f64 / (now_ms - start_ms).max(1) as f64
    }
}

/// A rebuild in progress: the input below `until` (the offset the restored state reached) is
/// read again into the windows that lack it.
#[derive(Debug, Clone)]
pub struct Rebuild {
    /// Offsets below this are replayed into the rebuilt windows only.
    pub until: i64,
    /// Per configured window: buckets below this are rebuilt (`i64::MIN`: none, the window
    /// was kept whole; `i64::MAX`: all of it).
    pub below: Vec<i64>,
    /// Which replayed events count: the live de-duplication memory already holds them all.
    pub dedup: Dedup,
    /// What the rebuilt windows cover once done: where the replay starts in time, or
    /// [`UNKNOWN`] until the first replayed message says (the topic's retention decided).
    pub covers_from: CoveredFrom,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_finds_the_first_offset_of_the_slot_holding_a_time() {
        let mut index = OffsetIndex::default();
        let slot = 60_000;
        let mut next = i64::MIN;
        // One message a second for ten minutes, offsets 0, 1, ...
        for (offset, now) in (0..600).map(|i| (i, 1_000_000 + i * 1_000)) {
            if now >= next {
                next = index.record(now, offset, slot, 5);
            }
        }
        // The newest five slots are kept.
        assert_eq!(index.slots.len(), 5);
        assert_eq!(index.at_or_before(0), None);
        let (start, offset) = index.at_or_before(1_000_000 + 450_000).unwrap();
        assert!(start <= 1_450_000 && start + slot > 1_450_000);
        // The first message of that slot, whose own time is its start or after.
        assert_eq!(offset, (start - 1_000_000 + 999) / 1_000);
        // A time after the last slot: the last slot.
        assert_eq!(index.at_or_before(i64::MAX), Some((1_560_000, 560)));
    }

    #[test]
    fn coverage_is_the_share_of_the_window_since_it_is_covered() {
        assert_eq!(coverage_ratio(COMPLETE, 1_000, 2_000), 1.0);
        assert_eq!(coverage_ratio(1_000, 1_000, 2_000), 1.0);
        assert_eq!(coverage_ratio(1_500, 1_000, 2_000), 0.5);
        assert_eq!(coverage_ratio(UNKNOWN, 1_000, 2_000), 0.0);
    }
}
