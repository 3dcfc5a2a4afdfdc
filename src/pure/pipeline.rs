//! The pure per-message step: one message value in, the partition's state updated and an
//! [`Outcome`] out.

use crate::pure::decode::{Decoder, Event, EventType, Reason, Rejection};
use crate::pure::dedup::Dedup;
use crate::pure::key::KeyRef;
use crate::pure::limits::Limits;
use crate::pure::partition::*;
use crate::pure::rebuild::{COMPLETE, CoveredFrom, Rebuild, UNKNOWN};
use crate::pure::window::{RingLayout, Windows};

/// What happened to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `late` has bit `w` set when the event was too old for window `w`.
    /// `folded` when the event counted under campaign "(other)" (`limits.max_keys`).
    Accepted {
        kind: EventType,
        timestamp_ms: i64,
        late: u32,
        folded: bool,
    },
    Duplicate,
    Rejected(Rejection),
    /// Read again only to rebuild windows after a configuration change: counted nowhere.
    /// `timestamp_ms`: the event's time, if it decoded.
    Rebuilt {
        timestamp_ms: Option<i64>,
    },
}

/// The pure per-message step: decode, check time, de-duplicate, aggregate.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub decoder: Decoder,
    pub windows: Windows,
    pub max_future_skew_ms: i64,
    pub dedup_horizon_ms: i64,
    pub dedup_max_ids: usize,
    pub limits: Limits,
}

impl Pipeline {
    /// The keys one partition of a topic with `partitions` partitions may hold: an equal share
    /// of `limits.max_keys`, so that an instance holds at most `max_keys` keys of each topic
    /// whatever partitions it owns (Prometheus' cardinality is what the limit protects), and
    /// which keys fold into "(other)" depends only on the partition's own events, so a
    /// replay folds the same ones.
    pub fn key_share(&self, partitions: usize) -> usize {
        (self.limits.max_keys / partitions.max(1)).max(1)
    }

    pub fn new_partition(&self) -> PartitionState {
        let mut state = PartitionState::new(self.new_dedup());
        state.configure_index(self);
        state
    }

    /// An empty de-duplication memory as configured.
    pub fn new_dedup(&self) -> Dedup {
        Dedup::new(self.dedup_horizon_ms, self.dedup_max_ids)
    }

    /// Applies a message read again to rebuild windows (see `rebuild`): only to the buckets
    /// being rebuilt, only if it counted the first time (valid, not a duplicate, in time),
    /// and never to the counters, the live de-duplication memory or the watermark.
    pub fn replay(
        &self,
        state: &mut PartitionState,
        payload: &[u8],
        record_ts_ms: i64,
        now_ms: i64,
    ) -> Outcome {
        let Some(mut rebuild) = state.rebuild.take() else {
            return self.process(state, payload, record_ts_ms, now_ms);
        };
        let timestamp_ms = self.replay_into(state, &mut rebuild, payload, record_ts_ms, now_ms);
        state.rebuild = Some(rebuild);
        Outcome::Rebuilt { timestamp_ms }
    }

    /// The event's time, if it decoded.
    fn replay_into(
        &self,
        state: &mut PartitionState,
        rebuild: &mut Rebuild,
        payload: &[u8],
        record_ts_ms: i64,
        now_ms: i64,
    ) -> Option<i64> {
        let Ok(event) = self.decoder.decode(payload, record_ts_ms) else {
            return None;
        };
        let ts = event.timestamp_ms;
        // Judged against now, as a replay after a crash judges them: the time each was read
        // first is not kept. An event stamped ahead of its first reading by more than
        // `max_future_skew` can count here, and one stamped ahead by less is placed at its
        // own time rather than at that reading's.
        if ts > now_ms + self.max_future_skew_ms || self.windows.out_of_rings(ts, now_ms) {
            return Some(ts);
        }
        if !rebuild.dedup.insert(event.id_hash, ts) {
            return Some(ts);
        }
        let at = ts.min(now_ms);
        let below = &rebuild.below;
        // A replayed event of a key that a later eviction dropped has nowhere to go: the key
        // has no counters left to agree with either.
        if let Some(ks) = state.keys.get_mut(&KeyRef(&event.campaign, &event.channel)) {
            ks.add_below(&self.windows, &event, at, now_ms, below);
        } else if state.keys.len() < state.max_keys(&self.limits) {
            let (ks, _) = state.new_key_mut(&event.campaign, &event.channel, &self.limits);
            ks.add_below(&self.windows, &event, at, now_ms, below);
        }
        Some(ts)
    }

    /// Applies one message value at wall-clock time `now_ms`. `record_ts_ms` is the Kafka
    /// record timestamp, used when the event has none.
    pub fn process(
        &self,
        state: &mut PartitionState,
        payload: &[u8],
        record_ts_ms: i64,
        now_ms: i64,
    ) -> Outcome {
        let event = match self.decoder.decode(payload, record_ts_ms) {
            Ok(event) => event,
            Err(rejection) => return Outcome::Rejected(rejection),
        };
        self.apply(state, &event, now_ms)
    }

    /// Applies a decoded event.
    pub fn apply(&self, state: &mut PartitionState, event: &Event<'_>, now_ms: i64) -> Outcome {
        let ts = event.timestamp_ms;
        // In no window's buckets any more, so it could change no exported value: counting it
        // in the `*_total` counters alone would make them disagree with the windows.
        if self.windows.too_late(ts, now_ms) {
            return Outcome::Rejected(Rejection {
                reason: Reason::TooLate,
                field: Some("timestamp"),
                detail: "older than the oldest bucket of the longest window",
            });
        }
        if ts > now_ms + self.max_future_skew_ms {
            return Outcome::Rejected(Rejection {
                reason: Reason::TooEarly,
                field: Some("timestamp"),
                detail: "further in the future than windows.max_future_skew",
            });
        }
        self.apply_in_time(state, event, now_ms)
    }

    /// `apply` for an event whose time is known to be acceptable.
    pub(crate) fn apply_in_time(
        &self,
        state: &mut PartitionState,
        event: &Event<'_>,
        now_ms: i64,
    ) -> Outcome {
        let ts = event.timestamp_ms;
        // Within the allowed skew, a future event counts as arriving now.
        let at = ts.min(now_ms);
        // One probe for a known key. (Here rather than in `new_key_mut`: a function returning
        // the hit could not go on to use the table on a miss, and needed a second lookup.)
        let known = state.keys.get_mut(&KeyRef(&event.campaign, &event.channel));
        // Refused before its id is remembered, like every rejection. A new key's buckets are
        // empty, and one event always fits one.
        if known
            .as_ref()
            .is_some_and(|ks| !ks.has_room_for(&self.windows, event, at, now_ms))
        {
            return Outcome::Rejected(Rejection {
                reason: Reason::InvalidValue,
                field: Some("amount"),
                detail: "amount (a window bucket would overflow)",
            });
        }
        if !state.dedup.insert(event.id_hash, ts) {
            return Outcome::Duplicate;
        }
        let (key, folded) = match known {
            Some(key) => (key, false),
            None => state.new_key_mut(&event.campaign, &event.channel, &self.limits),
        };
        let late = key.add(&self.windows, event, at, now_ms);
        state.watermark_ms = state.watermark_ms.max(ts);
        Outcome::Accepted {
            kind: event.kind,
            timestamp_ms: ts,
            late,
            folded,
        }
    }
}

/// The configuration applied to a partition's state: what it keeps and rebuilds of its
/// windows, and how far back its offset index reaches.
impl PartitionState {
    /// Where to read from to rebuild the windows `reshape` names at `now_ms`, as far as this
    /// state's index reaches: the offset, and the time from which the rebuilt windows will
    /// be complete. `None` when the index does not reach back far enough (the state is
    /// younger than the windows need, or they are longer than any it had).
    pub fn rebuild_start(
        &self,
        pipeline: &Pipeline,
        reshape: &Reshape,
        now_ms: i64,
    ) -> Option<(i64, CoveredFrom)> {
        let windows = &pipeline.windows;
        let needed = windows
            .specs()
            .iter()
            .zip(&reshape.rebuild_below)
            .enumerate()
            .filter(|(_, (_, below))| **below != i64::MIN)
            .map(|(w, (spec, _))| {
                let preceding = if spec.has_previous() {
                    spec.length_ms
                } else {
                    0
                };
                windows.start_ms(w, now_ms) - preceding
            })
            .min()?;
        // Ids seen up to a horizon before still decide which replayed events are duplicates.
        let (slot, offset) = self
            .index
            .at_or_before(needed - pipeline.dedup_horizon_ms)?;
        Some((offset, slot))
    }

    /// Adapts a restored state to the running configuration at `now_ms`. A window whose
    /// ring was saved with the same length and buckets keeps it (with fewer slots, the
    /// newest; with more, those of its current window, the preceding one to be rebuilt); any
    /// other window starts empty, to be rebuilt. The counters and the de-duplication memory
    /// are kept in every case. Says which windows need rebuilding ([`Self::start_rebuild`]).
    pub fn reconfigure(
        &mut self,
        pipeline: &Pipeline,
        saved: &SavedLayout,
        now_ms: i64,
    ) -> Reshape {
        let windows = &pipeline.windows;
        self.dedup
            .reconfigure(pipeline.dedup_horizon_ms, pipeline.dedup_max_ids);
        self.configure_index(pipeline);
        let layout = windows.layout();
        let from = match saved {
            SavedLayout::Rings(rings) => Some(rings.clone()),
            SavedLayout::Geometry(geometry) => {
                let cells = self
                    .keys
                    .values()
                    .find_map(|ks| ks.ring_cells().filter(|&c| c > 0));
                match cells {
                    Some(cells) => RingLayout::infer(geometry, cells, windows.buckets_setting()),
                    // No rings at all: nothing to keep or to miss.
                    None => Some(layout.clone()),
                }
            }
        };
        let saved_coverage = std::mem::take(&mut self.coverage);
        let covered = |length_ms: i64| {
            saved_coverage
                .iter()
                .find(|(l, _)| *l == length_ms)
                .map_or(COMPLETE, |&(_, from)| from)
        };
        let mut keep_from = Vec::with_capacity(windows.len());
        let mut rebuild_below = Vec::with_capacity(windows.len());
        for (w, spec) in windows.specs().iter().enumerate() {
            let old = from.as_ref().and_then(|rings| {
                rings
                    .iter()
                    .find(|r| r.length_ms == spec.length_ms && r.width_ms == spec.width_ms)
            });
            let start_bucket = windows.start_ms(w, now_ms).div_euclid(spec.width_ms);
            let (keep, below) = match old {
                // Kept whole, or as much as the new ring holds.
                Some(old) if old.slots >= spec.slots => (i64::MIN, i64::MIN),
                // It gained its preceding window: keep the current one, which must be
                // complete for that to be worth it, and rebuild what precedes.
                Some(_) if covered(spec.length_ms) <= windows.start_ms(w, now_ms) => {
                    (start_bucket, start_bucket)
                }
                _ => (i64::MAX, i64::MAX),
            };
            keep_from.push(keep);
            rebuild_below.push(below);
            let from = if below == i64::MAX {
                UNKNOWN
            } else {
                covered(spec.length_ms)
            };
            self.coverage.push((spec.length_ms, from));
        }
        let unchanged = from.as_ref() == Some(&layout);
        for ks in self.keys.values_mut() {
            match &from {
                Some(old) if !unchanged => ks.reshape_rings(old, windows, &keep_from),
                Some(_) => ks.recompute_totals(windows),
                None => ks.reshape_rings(&[], windows, &keep_from),
            }
        }
        self.coverage_pending = self.coverage.iter().any(|&(_, f)| f == UNKNOWN);
        Reshape { rebuild_below }
    }

    /// Sets the offset index's slots from the configuration: as wide as the longest window's
    /// buckets, for as long as that window and the de-duplication horizon reach back.
    pub fn configure_index(&mut self, pipeline: &Pipeline) {
        let windows = &pipeline.windows;
        let slot = windows
            .specs()
            .iter()
            .map(|s| s.width_ms)
            .max()
            .unwrap_or(60_000)
            .max(1_000);
        let span = windows
            .specs()
            .iter()
            .map(|s| s.width_ms * s.slots as i64)
            .max()
            .unwrap_or(0)
            + pipeline.dedup_horizon_ms;
        self.index_slot_ms = slot;
        self.index_keep = (span / slot) as usize + 2;
        if self.coverage.len() != windows.len() {
            self.coverage = windows
                .specs()
                .iter()
                .map(|s| (s.length_ms, COMPLETE))
                .collect();
        }
    }
}
