//! Everything one input partition contributes: its keys' series, its de-duplication memory
//! and how far into the partition it reaches; the unit that is checkpointed and restored.
//!
//! State is kept per input partition (topic, partition), not globally: a partition is Kafka's
//! unit of ownership, so when the group moves a partition away its series leave with it, and
//! its state is a self-contained unit with its own offsets and de-duplication memory. Reading
//! merges the partitions of this instance into one row per (campaign, channel).
//!
//! Within a partition each key holds one lazily created [`Series`](crate::pure::window::Series) per event type, so a key
//! that only ever sees visits (the common case for a `visits` topic) pays 4 bytes per bucket.

use serde::{Deserialize, Serialize};

use crate::pure::dedup::Dedup;
use crate::pure::key::{Key, KeyRef};
use crate::pure::key_state::*;
use crate::pure::limits::{Limits, OTHER, OTHER_CHANNELS, clean_label};
use crate::pure::rebuild::{CoveredFrom, OffsetIndex, Rebuild, UNKNOWN};
use crate::pure::window::{RingLayout, Windows};

/// Everything one input partition contributes, and how far into the partition it reaches.
/// This is the unit that is checkpointed and restored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionState {
    pub(crate) keys: hashbrown::HashMap<Key, KeyState>,
    pub(crate) dedup: Dedup,
    /// Offset of the next message to apply: every message before it is in this state.
    next_offset: i64,
    /// Newest event time accepted (the partition's watermark); `i64::MIN` before any.
    pub(crate) watermark_ms: i64,
    /// Per configured window, in configuration order: its length and from when its buckets
    /// hold everything (see [`rebuild::CoveredFrom`]).
    pub(crate) coverage: Vec<(i64, CoveredFrom)>,
    /// Where the input stood when: what a window rebuilt after a configuration change
    /// replays from.
    pub(crate) index: OffsetIndex,
    /// This partition's share of `limits.max_keys` (see [`Pipeline::key_share`]); `None`:
    /// all of it. Set on every take-over, not saved.
    #[serde(skip)]
    key_share: Option<usize>,
    /// The index's slot width and length, from the configuration (0: not configured yet,
    /// nothing recorded); and when its next slot starts.
    #[serde(skip)]
    pub(crate) index_slot_ms: i64,
    #[serde(skip)]
    pub(crate) index_keep: usize,
    #[serde(skip)]
    index_next_ms: i64,
    /// Some window's coverage waits for the first message to say where it starts.
    #[serde(skip)]
    pub(crate) coverage_pending: bool,
    /// Windows being read again from the input after a configuration change.
    #[serde(skip)]
    pub(crate) rebuild: Option<Box<Rebuild>>,
    /// Caught up since it was taken over: its counters may be exported. Restored from a
    /// checkpoint, they start below what was exported before the crash or the move, and a
    /// counter that steps down reads as a reset to Prometheus. Kept here, under the lock a
    /// scrape reads the counters with, so no restore can slip between the two.
    #[serde(skip)]
    pub(crate) settled: bool,
    /// Up to which offset dead letters were sent already, by an earlier owner after the
    /// checkpoint this state came from (see `deadletter`): not sent again.
    #[serde(skip)]
    dead_lettered_through: Option<i64>,
    /// No checkpoint may be written of this state: a dead letter of an offset it covers could
    /// not be sent (see `source::dead_letter`).
    #[serde(skip)]
    checkpoints_held: bool,
}

/// A [`PartitionState`] as checkpoints of format 4 hold it: no coverage and no offset index
/// (every window was taken to be complete).
#[derive(Deserialize)]
pub(crate) struct PartitionStateV4 {
    keys: hashbrown::HashMap<Key, KeyState>,
    dedup: Dedup,
    next_offset: i64,
    watermark_ms: i64,
}

/// A [`PartitionState`] as checkpoints of format 3 hold it: format 4, with its
/// de-duplication ids laid out differently.
#[derive(Deserialize)]
pub(crate) struct PartitionStateV3 {
    keys: hashbrown::HashMap<Key, KeyState>,
    dedup: crate::pure::dedup::DedupV3,
    next_offset: i64,
    watermark_ms: i64,
}

impl From<PartitionStateV4> for PartitionState {
    fn from(v4: PartitionStateV4) -> PartitionState {
        PartitionState {
            next_offset: v4.next_offset,
            watermark_ms: v4.watermark_ms,
            keys: v4.keys,
            ..PartitionState::new(v4.dedup)
        }
    }
}

impl From<PartitionStateV3> for PartitionState {
    fn from(v3: PartitionStateV3) -> PartitionState {
        PartitionStateV4 {
            keys: v3.keys,
            dedup: v3.dedup.into(),
            next_offset: v3.next_offset,
            watermark_ms: v3.watermark_ms,
        }
        .into()
    }
}

/// What a checkpoint says of how its rings were laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SavedLayout {
    /// Format 5 on: every window's ring.
    Rings(Vec<RingLayout>),
    /// Before: each window's length and span, bucket counts left out.
    Geometry(Vec<(i64, i64)>),
}

/// How a restored state's windows fit the running configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reshape {
    /// Per configured window, as [`Rebuild::below`]: `i64::MIN` where the saved ring was
    /// kept whole.
    pub rebuild_below: Vec<i64>,
}

impl Reshape {
    /// True when every window was carried over as it was saved.
    pub fn kept_all(&self) -> bool {
        self.rebuild_below.iter().all(|&b| b == i64::MIN)
    }
}

impl PartitionState {
    pub fn new(dedup: Dedup) -> Self {
        PartitionState {
            keys: Default::default(),
            dedup,
            next_offset: 0,
            watermark_ms: i64::MIN,
            coverage: Vec::new(),
            index: OffsetIndex::default(),
            key_share: None,
            index_slot_ms: 0,
            index_keep: 0,
            index_next_ms: i64::MIN,
            coverage_pending: false,
            rebuild: None,
            settled: false,
            dead_lettered_through: None,
            checkpoints_held: false,
        }
    }

    /// Dead letters up to `offset` were sent already (found in the dead-letter topic).
    pub fn dead_lettered_through(&mut self, offset: i64) {
        self.dead_lettered_through = Some(offset);
    }

    /// True when the rejected message at `offset` has no dead letter yet.
    pub fn dead_letter_due(&self, offset: i64) -> bool {
        self.dead_lettered_through
            .is_none_or(|through| offset > through)
    }

    /// Keeps every later checkpoint from being written (see `checkpoints_held`).
    pub fn hold_checkpoints(&mut self) {
        self.checkpoints_held = true;
    }

    /// True when a checkpoint of this state may be written: it is not rebuilding windows,
    /// and every dead letter of what it covers is on its way.
    pub fn checkpointable(&self) -> bool {
        !self.checkpoints_held && self.rebuild.is_none()
    }

    /// Marks the partition as caught up since it was taken over (see `settled`).
    pub fn settle(&mut self) {
        self.settled = true;
    }

    /// Sets how many keys this partition may hold before new ones fold into "(other)".
    pub fn set_key_share(&mut self, keys: usize) {
        self.key_share = Some(keys);
    }

    /// The keys this partition may hold under `limits`.
    pub(crate) fn max_keys(&self, limits: &Limits) -> usize {
        self.key_share.unwrap_or(limits.max_keys)
    }

    pub fn keys(&self) -> impl Iterator<Item = (&Key, &KeyState)> {
        self.keys.iter()
    }

    pub fn dedup(&self) -> &Dedup {
        &self.dedup
    }

    /// Offset of the next message this state has not seen.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Records that the message at `offset` has been applied at `now_ms`. Called under the same
    /// lock as `Pipeline::process`, so state and offset always agree. `time_ms` is the
    /// message's time (its event's, else its record's), which starts the coverage of windows
    /// that waited for a first message.
    pub fn applied(&mut self, offset: i64, now_ms: i64, time_ms: i64) {
        let record_ts_ms = time_ms;
        self.next_offset = self.next_offset.max(offset + 1);
        // Once per slot (a minute or more), not per message.
        if now_ms >= self.index_next_ms && self.index_slot_ms > 0 && offset + 1 >= self.next_offset
        {
            self.index_next_ms =
                self.index
                    .record(now_ms, offset, self.index_slot_ms, self.index_keep);
        }
        if self.coverage_pending {
            self.coverage_pending = false;
            // Windows being rebuilt learn theirs when the rebuild ends.
            let rebuilding = self.rebuild.as_ref().map(|r| &r.below);
            for (w, (_, from)) in self.coverage.iter_mut().enumerate() {
                if *from == UNKNOWN && rebuilding.is_none_or(|below| below[w] == i64::MIN) {
                    *from = record_ts_ms;
                }
            }
        }
        if let Some(rebuild) = &mut self.rebuild {
            if rebuild.covers_from == UNKNOWN {
                rebuild.covers_from = record_ts_ms;
            }
            if offset + 1 >= rebuild.until {
                self.finish_rebuild();
            }
        }
    }

    /// True when the message at `offset` is read again only for the windows being rebuilt.
    pub fn rebuilding(&self, offset: i64) -> bool {
        self.rebuild.as_ref().is_some_and(|r| offset < r.until)
    }

    /// True while windows are being rebuilt: the state is then no checkpoint's to write (the
    /// one it was restored from still holds), since its rebuilt windows are partial.
    pub fn is_rebuilding(&self) -> bool {
        self.rebuild.is_some()
    }

    /// Starts reading the input again from `from_offset` into the windows `reshape` could
    /// not carry over, up to where this state reached. `covers_from`: what the rebuilt windows
    /// will cover, in time ([`UNKNOWN`]: the first message read says). Returns the offset
    /// consumption must start at.
    pub fn start_rebuild(
        &mut self,
        reshape: &Reshape,
        from_offset: i64,
        covers_from: CoveredFrom,
        dedup: Dedup,
    ) -> i64 {
        if reshape.kept_all() {
            return self.next_offset;
        }
        for ((_, from), &below) in self.coverage.iter_mut().zip(&reshape.rebuild_below) {
            if below != i64::MIN {
                *from = UNKNOWN;
            }
        }
        self.rebuild = Some(Box::new(Rebuild {
            until: self.next_offset,
            below: reshape.rebuild_below.clone(),
            dedup,
            covers_from,
        }));
        if from_offset >= self.next_offset {
            // Nothing older to read: the rebuilt windows cover what the caller says of where
            // the state's history starts.
            self.finish_rebuild();
            return self.next_offset;
        }
        from_offset
    }

    /// Windows still waiting for a first message to say where their coverage starts take
    /// `now_ms` instead: there is nothing to read (the topic holds nothing past this state),
    /// so they fill from now on.
    pub fn cover_pending_from(&mut self, now_ms: i64) {
        if self.coverage_pending && self.rebuild.is_none() {
            self.coverage_pending = false;
            for (_, from) in &mut self.coverage {
                if *from == UNKNOWN {
                    *from = now_ms;
                }
            }
        }
    }

    fn finish_rebuild(&mut self) {
        let Some(rebuild) = self.rebuild.take() else {
            return;
        };
        for ((_, from), &below) in self.coverage.iter_mut().zip(&rebuild.below) {
            if below != i64::MIN {
                *from = rebuild.covers_from;
                self.coverage_pending |= *from == UNKNOWN;
            }
        }
    }

    /// From when each configured window's buckets hold everything.
    pub fn coverage(&self) -> impl Iterator<Item = CoveredFrom> + '_ {
        self.coverage.iter().map(|&(_, from)| from)
    }

    /// Marks every window as covering only from the next message read on: the input before
    /// it is gone (retention removed it before this state could read it).
    pub fn cover_from_next_message(&mut self) {
        for (_, from) in &mut self.coverage {
            *from = UNKNOWN;
        }
        self.coverage_pending = true;
    }

    /// Sets where consumption starts for a state that has no history (no checkpoint).
    pub fn start_at(&mut self, offset: i64) {
        self.next_offset = offset;
    }

    pub fn watermark_ms(&self) -> Option<i64> {
        (self.watermark_ms != i64::MIN).then_some(self.watermark_ms)
    }

    /// A key not found under its raw names (the caller looked: a hit needs no cleaning, since
    /// stored names are clean and a raw name that matches one is). Returns where its events go
    /// and whether it was folded into campaign "(other)" because the partition holds
    /// `limits.max_keys` already. New keys are rare; this path may allocate.
    pub(crate) fn new_key_mut(
        &mut self,
        campaign: &str,
        channel: &str,
        limits: &Limits,
    ) -> (&mut KeyState, bool) {
        let campaign = clean_label(campaign, limits.max_label_bytes);
        let channel = clean_label(channel, limits.max_label_bytes);
        let max_keys = self.max_keys(limits);
        let (campaign, channel, folded): (&str, &str, bool) =
            if self.keys.len() < max_keys || self.keys.contains_key(&KeyRef(&campaign, &channel)) {
                (&campaign, &channel, false)
            } else if self.keys.len() < max_keys + OTHER_CHANNELS
                || self.keys.contains_key(&KeyRef(OTHER, &channel))
            {
                (OTHER, &channel, true)
            } else {
                (OTHER, OTHER, true)
            };
        if !self.keys.contains_key(&KeyRef(campaign, channel)) {
            self.keys
                .insert(Key::new(campaign, channel), KeyState::default());
        }
        let ks = self.keys.get_mut(&KeyRef(campaign, channel));
        (ks.expect("inserted above"), folded)
    }

    /// When the partition holds `limits.max_keys` keys or more, drops those whose windows
    /// have all emptied at `now_ms`, so that their places go to new keys rather than to
    /// "(other)". Returns how many. Only under that pressure: an evicted key's `*_total`
    /// counters go with it, and where the same key lives in several partitions (the
    /// "(other)" keys always do) the merged counter would step down, which Prometheus reads
    /// as a reset. For the same reason the "(other)" keys themselves are never evicted.
    pub fn evict_idle(&mut self, windows: &Windows, limits: &Limits, now_ms: i64) -> usize {
        if self.keys.len() < self.max_keys(limits) {
            return 0;
        }
        let before = self.keys.len();
        self.keys
            .retain(|k, ks| &*k.campaign == OTHER || !ks.is_idle(windows, now_ms));
        before - self.keys.len()
    }

    /// Approximate heap bytes of the window rings (not counting hash-table overhead).
    pub fn ring_bytes(&self) -> usize {
        self.keys.values().map(KeyState::heap_bytes).sum()
    }

    /// True when both hold the same aggregates (offsets and watermark aside).
    pub fn same_aggregates(&self, other: &PartitionState) -> bool {
        self.keys == other.keys
    }
}
