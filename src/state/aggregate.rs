//! Per-partition aggregate state, and the pure step that applies one message to it.
//!
//! State is kept per input partition (topic, partition), not globally: a partition is Kafka's
//! unit of ownership, so when the group moves a partition away its series leave with it, and
//! its state is a self-contained unit with its own offsets and de-duplication memory. Reading
//! merges the partitions of this instance into one row per (campaign, channel).
//!
//! Within a partition each key holds one lazily created [`Series`] per event type, so a key
//! that only ever sees visits (the common case for a `visits` topic) pays 4 bytes per bucket.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use compact_str::CompactString;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError};
use crate::pure::decode::{Decoder, Event, EventType, Reason, Rejection};
use crate::pure::dedup::Dedup;
use crate::pure::kpi::Sums;
use crate::pure::window::{Cell, RingLayout, Series, Windows};

pub mod rebuild;

use rebuild::{COMPLETE, CoveredFrom, OffsetIndex, Rebuild, UNKNOWN};

/// A (campaign, channel) pair: the identity of every exported series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    // Inline up to 24 bytes each: comparing a key while probing the hash table then reads
    // the entry itself, not two more heap allocations.
    pub campaign: CompactString,
    pub channel: CompactString,
}

impl Key {
    pub fn new(campaign: &str, channel: &str) -> Key {
        Key {
            campaign: CompactString::new(campaign),
            channel: CompactString::new(channel),
        }
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        KeyRef(&self.campaign, &self.channel).hash(state)
    }
}

/// A borrowed key, so an event's labels can be looked up without allocating.
#[derive(PartialEq, Eq)]
struct KeyRef<'a>(&'a str, &'a str);

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
        self.1.hash(state);
    }
}

impl hashbrown::Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        *key.campaign == *self.0 && *key.channel == *self.1
    }
}

/// How a cell type's totals enter the sums.
trait Counted: Cell {
    /// A window's running total's contribution to the sums.
    fn total_to(total: &Self::Total, sums: &mut Sums);

    /// One bucket's contribution to the sums.
    fn add_to(&self, sums: &mut Sums) {
        let mut total = Self::Total::default();
        self.add_to_total(&mut total);
        Self::total_to(&total, sums);
    }
}

/// Bucket contents for visits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitCell(u32);

impl Cell for VisitCell {
    type Total = u64;
    fn merge(&mut self, other: &Self) {
        self.0 = self.0.saturating_add(other.0);
    }
    fn add_to_total(&self, total: &mut u64) {
        *total += u64::from(self.0);
    }
    fn sub_from_total(&self, total: &mut u64) {
        *total -= u64::from(self.0);
    }
    fn fits(&self, other: &Self) -> bool {
        self.0.fits(&other.0)
    }
    fn fits_under(total: &u64, other: &Self) -> bool {
        u32::fits_under(total, &other.0)
    }
}

impl Counted for VisitCell {
    fn total_to(total: &u64, sums: &mut Sums) {
        sums.visits += total;
    }
}

/// Bucket contents for orders.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCell {
    pub orders: u32,
    pub new_customers: u32,
    pub gmv_micros: u64,
}

/// Order cells summed over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrderTotal {
    orders: u64,
    new_customers: u64,
    gmv_micros: u128,
}

impl Cell for OrderCell {
    type Total = OrderTotal;
    fn merge(&mut self, other: &Self) {
        self.orders = self.orders.saturating_add(other.orders);
        self.new_customers = self.new_customers.saturating_add(other.new_customers);
        self.gmv_micros = self.gmv_micros.saturating_add(other.gmv_micros);
    }
    fn add_to_total(&self, total: &mut OrderTotal) {
        total.orders += u64::from(self.orders);
        total.new_customers += u64::from(self.new_customers);
        total.gmv_micros += u128::from(self.gmv_micros);
    }
    fn sub_from_total(&self, total: &mut OrderTotal) {
        total.orders -= u64::from(self.orders);
        total.new_customers -= u64::from(self.new_customers);
        total.gmv_micros -= u128::from(self.gmv_micros);
    }
    fn fits(&self, other: &Self) -> bool {
        self.orders.fits(&other.orders)
            && self.new_customers.fits(&other.new_customers)
            && self.gmv_micros.fits(&other.gmv_micros)
    }
    fn fits_under(total: &OrderTotal, other: &Self) -> bool {
        u32::fits_under(&total.orders, &other.orders)
            && u32::fits_under(&total.new_customers, &other.new_customers)
            && u64::fits_under(&total.gmv_micros, &other.gmv_micros)
    }
}

impl Counted for OrderCell {
    fn total_to(total: &OrderTotal, sums: &mut Sums) {
        sums.orders += total.orders;
        sums.new_customers += total.new_customers;
        sums.gmv_micros += total.gmv_micros;
    }
}

/// Bucket contents for ad spend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendCell(u64);

impl Cell for SpendCell {
    type Total = u128;
    fn merge(&mut self, other: &Self) {
        self.0 = self.0.saturating_add(other.0);
    }
    fn add_to_total(&self, total: &mut u128) {
        *total += u128::from(self.0);
    }
    fn sub_from_total(&self, total: &mut u128) {
        *total -= u128::from(self.0);
    }
    fn fits(&self, other: &Self) -> bool {
        self.0.fits(&other.0)
    }
    fn fits_under(total: &u128, other: &Self) -> bool {
        u64::fits_under(total, &other.0)
    }
}

impl Counted for SpendCell {
    fn total_to(total: &u128, sums: &mut Sums) {
        sums.ad_spend_micros += total;
    }
}

/// Adds a cell to a lazily created series; returns the late mask.
fn count<C: Counted>(
    series: &mut Option<Box<Series<C>>>,
    windows: &Windows,
    at_ms: i64,
    now_ms: i64,
    cell: C,
) -> u32 {
    series
        .get_or_insert_with(|| Box::new(Series::new(windows)))
        .add(windows, at_ms, now_ms, &cell)
}

/// Reads a series of any cell type: into sums, and what eviction and memory accounting ask.
trait SeriesRead {
    fn window(&self, windows: &Windows, w: usize, now_ms: i64, sums: &mut Sums);
    fn previous(&self, windows: &Windows, w: usize, now_ms: i64, sums: &mut Sums);
    fn all_time(&self, sums: &mut Sums);
    /// See [`Series::touch_heads`].
    fn touch_heads(&self, windows: usize) -> i64;
    fn is_idle(&self, windows: &Windows, now_ms: i64) -> bool;
    fn heap_bytes(&self) -> usize;
    fn cells(&self) -> usize;
}

impl<C: Counted> SeriesRead for Series<C> {
    fn window(&self, windows: &Windows, w: usize, now_ms: i64, sums: &mut Sums) {
        C::total_to(&self.window_total(windows, w, now_ms), sums);
    }
    fn previous(&self, windows: &Windows, w: usize, now_ms: i64, sums: &mut Sums) {
        self.for_each_in_previous(windows, w, now_ms, |c| c.add_to(sums));
    }
    fn all_time(&self, sums: &mut Sums) {
        C::total_to(Series::all_time(self), sums);
    }
    fn touch_heads(&self, windows: usize) -> i64 {
        Series::touch_heads(self, windows)
    }
    fn is_idle(&self, windows: &Windows, now_ms: i64) -> bool {
        Series::is_idle(self, windows, now_ms)
    }
    fn heap_bytes(&self) -> usize {
        Series::heap_bytes(self)
    }
    fn cells(&self) -> usize {
        Series::cells(self)
    }
}

/// One key's state within one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyState {
    // Boxed: a key's entry in the partition's hash table stays small (72 bytes with its
    // key), so probing it touches few cache lines. Each series also holds its event type's
    // monotonic counters (the `*_total` metrics), in the cache line a write touches anyway.
    visits: Option<Box<Series<VisitCell>>>,
    orders: Option<Box<Series<OrderCell>>>,
    ad_spend: Option<Box<Series<SpendCell>>>,
}

/// A key's state as checkpoints hold it: the series, then the monotonic counters as one
/// `Sums` (the format from before the counters moved into the series, kept so that
/// checkpoints stay readable across the change).
#[derive(Serialize)]
struct SavedKeyRef<'a> {
    visits: &'a Option<Box<Series<VisitCell>>>,
    orders: &'a Option<Box<Series<OrderCell>>>,
    ad_spend: &'a Option<Box<Series<SpendCell>>>,
    totals: Sums,
}

#[derive(Deserialize)]
struct SavedKey {
    visits: Option<Box<Series<VisitCell>>>,
    orders: Option<Box<Series<OrderCell>>>,
    ad_spend: Option<Box<Series<SpendCell>>>,
    totals: Sums,
}

impl Serialize for KeyState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        SavedKeyRef {
            visits: &self.visits,
            orders: &self.orders,
            ad_spend: &self.ad_spend,
            totals: self.totals(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for KeyState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let SavedKey {
            mut visits,
            mut orders,
            mut ad_spend,
            totals: t,
        } = SavedKey::deserialize(deserializer)?;
        // Counters without a series (never written so, but the bytes are not ours to trust)
        // get one with no rings: it fits no geometry, so the restore gives it empty rings
        // and keeps the counters.
        fn restore<C: Cell>(series: &mut Option<Box<Series<C>>>, all_time: C::Total) {
            if series.is_none() && all_time != C::Total::default() {
                *series = Some(Box::new(Series::without_rings()));
            }
            if let Some(s) = series {
                s.set_all_time(all_time);
            }
        }
        restore(&mut visits, t.visits);
        restore(
            &mut orders,
            OrderTotal {
                orders: t.orders,
                new_customers: t.new_customers,
                gmv_micros: t.gmv_micros,
            },
        );
        restore(&mut ad_spend, t.ad_spend_micros);
        Ok(KeyState {
            visits,
            orders,
            ad_spend,
        })
    }
}

fn order_cell(event: &Event<'_>) -> OrderCell {
    OrderCell {
        orders: 1,
        new_customers: u32::from(event.new_customer),
        gmv_micros: event.amount_micros,
    }
}

/// True when the series (if any) takes `cell` at `at_ms` without a bucket saturating.
fn has_room_for<C: Cell>(
    series: &Option<Box<Series<C>>>,
    windows: &Windows,
    at_ms: i64,
    now_ms: i64,
    cell: C,
) -> bool {
    series
        .as_ref()
        .is_none_or(|s| s.has_room_for(windows, at_ms, now_ms, &cell))
}

impl KeyState {
    /// Counts the event and returns the windows it was too late for.
    fn add(&mut self, windows: &Windows, event: &Event<'_>, at_ms: i64, now_ms: i64) -> u32 {
        match event.kind {
            EventType::Visit => count(&mut self.visits, windows, at_ms, now_ms, VisitCell(1)),
            EventType::Order => count(&mut self.orders, windows, at_ms, now_ms, order_cell(event)),
            EventType::AdSpend => {
                let cell = SpendCell(event.amount_micros);
                count(&mut self.ad_spend, windows, at_ms, now_ms, cell)
            }
        }
    }

    /// True when `add` would saturate no bucket (see [`Series::has_room_for`]).
    fn has_room_for(&self, windows: &Windows, event: &Event<'_>, at_ms: i64, now_ms: i64) -> bool {
        match event.kind {
            EventType::Visit => has_room_for(&self.visits, windows, at_ms, now_ms, VisitCell(1)),
            EventType::Order => {
                has_room_for(&self.orders, windows, at_ms, now_ms, order_cell(event))
            }
            EventType::AdSpend => {
                let cell = SpendCell(event.amount_micros);
                has_room_for(&self.ad_spend, windows, at_ms, now_ms, cell)
            }
        }
    }

    /// The series this key has, whatever their cell types.
    fn series(&self) -> impl Iterator<Item = &dyn SeriesRead> {
        let visits = self.visits.as_deref().map(|s| s as &dyn SeriesRead);
        let orders = self.orders.as_deref().map(|s| s as &dyn SeriesRead);
        let spend = self.ad_spend.as_deref().map(|s| s as &dyn SeriesRead);
        [visits, orders, spend].into_iter().flatten()
    }

    /// Sums `f` reads from each track's series.
    fn sum(&self, f: impl Fn(&dyn SeriesRead, &mut Sums)) -> Sums {
        let mut sums = Sums::default();
        for s in self.series() {
            f(s, &mut sums);
        }
        sums
    }

    /// Reads the lines of each series that reading `windows` windows touches; see
    /// `Store::snapshot_with`.
    fn touch_heads(&self, windows: usize) -> i64 {
        self.series()
            .fold(0, |acc, s| acc.wrapping_add(s.touch_heads(windows)))
    }

    /// Window `w`'s sums at `now_ms`.
    pub fn window_sums(&self, windows: &Windows, w: usize, now_ms: i64) -> Sums {
        self.sum(|s, sums| s.window(windows, w, now_ms, sums))
    }

    /// Sums of the window preceding window `w` (only for windows kept with their predecessor).
    pub fn previous_sums(&self, windows: &Windows, w: usize, now_ms: i64) -> Sums {
        self.sum(|s, sums| s.previous(windows, w, now_ms, sums))
    }

    /// The monotonic counters.
    pub fn totals(&self) -> Sums {
        self.sum(|s, sums| s.all_time(sums))
    }

    /// The event types this key has counted.
    pub fn counted(&self) -> EventTypes {
        EventTypes {
            visits: self.visits.is_some(),
            orders: self.orders.is_some(),
            ad_spend: self.ad_spend.is_some(),
        }
    }

    /// After a restore under the configuration the rings were saved with: rebuilds their
    /// running totals (a series saved without rings gets empty ones).
    fn recompute_totals(&mut self, windows: &Windows) {
        fn one<C: Cell>(s: &mut Option<Box<Series<C>>>, windows: &Windows) {
            if let Some(s) = s {
                if s.fits(windows) {
                    s.recompute_totals(windows);
                } else {
                    **s = s.emptied(windows);
                }
            }
        }
        one(&mut self.visits, windows);
        one(&mut self.orders, windows);
        one(&mut self.ad_spend, windows);
    }

    /// After a restore under another configuration: see [`Series::reshaped`].
    fn reshape_rings(&mut self, from: &[RingLayout], windows: &Windows, keep_from: &[i64]) {
        fn one<C: Cell>(
            s: &mut Option<Box<Series<C>>>,
            from: &[RingLayout],
            windows: &Windows,
            keep_from: &[i64],
        ) {
            if let Some(s) = s {
                **s = s.reshaped(from, windows, keep_from);
            }
        }
        one(&mut self.visits, from, windows, keep_from);
        one(&mut self.orders, from, windows, keep_from);
        one(&mut self.ad_spend, from, windows, keep_from);
    }

    /// Cells of this key's rings (all its series have the same layout), if it has any.
    fn ring_cells(&self) -> Option<usize> {
        self.series().map(|s| s.cells()).max()
    }

    /// Adds a replayed event to the buckets being rebuilt (see [`Series::add_below`]).
    fn add_below(
        &mut self,
        windows: &Windows,
        event: &Event<'_>,
        at_ms: i64,
        now_ms: i64,
        below: &[i64],
    ) {
        fn one<C: Cell>(
            s: &mut Option<Box<Series<C>>>,
            windows: &Windows,
            at_ms: i64,
            now_ms: i64,
            cell: C,
            below: &[i64],
        ) {
            s.get_or_insert_with(|| Box::new(Series::new(windows)))
                .add_below(windows, at_ms, now_ms, &cell, below);
        }
        match event.kind {
            EventType::Visit => one(
                &mut self.visits,
                windows,
                at_ms,
                now_ms,
                VisitCell(1),
                below,
            ),
            EventType::Order => {
                let cell = order_cell(event);
                one(&mut self.orders, windows, at_ms, now_ms, cell, below)
            }
            EventType::AdSpend => {
                let cell = SpendCell(event.amount_micros);
                one(&mut self.ad_spend, windows, at_ms, now_ms, cell, below)
            }
        }
    }

    /// True when no window of any of its series holds anything at `now_ms`.
    fn is_idle(&self, windows: &Windows, now_ms: i64) -> bool {
        self.series().all(|s| s.is_idle(windows, now_ms))
    }

    fn heap_bytes(&self) -> usize {
        self.series().map(|s| s.heap_bytes()).sum()
    }
}

/// Everything one input partition contributes, and how far into the partition it reaches.
/// This is the unit that is checkpointed and restored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionState {
    keys: hashbrown::HashMap<Key, KeyState>,
    dedup: Dedup,
    /// Offset of the next message to apply: every message before it is in this state.
    next_offset: i64,
    /// Newest event time accepted (the partition's watermark); `i64::MIN` before any.
    watermark_ms: i64,
    /// Per configured window, in configuration order: its length and from when its buckets
    /// hold everything (see [`rebuild::CoveredFrom`]).
    coverage: Vec<(i64, CoveredFrom)>,
    /// Where the input stood when: what a window rebuilt after a configuration change
    /// replays from.
    index: OffsetIndex,
    /// This partition's share of `limits.max_keys` (see [`Pipeline::key_share`]); `None`:
    /// all of it. Set on every take-over, not saved.
    #[serde(skip)]
    key_share: Option<usize>,
    /// The index's slot width and length, from the configuration (0: not configured yet,
    /// nothing recorded); and when its next slot starts.
    #[serde(skip)]
    index_slot_ms: i64,
    #[serde(skip)]
    index_keep: usize,
    #[serde(skip)]
    index_next_ms: i64,
    /// Some window's coverage waits for the first message to say where it starts.
    #[serde(skip)]
    coverage_pending: bool,
    /// Windows being read again from the input after a configuration change.
    #[serde(skip)]
    rebuild: Option<Box<Rebuild>>,
    /// Caught up since it was taken over: its counters may be exported. Restored from a
    /// checkpoint, they start below what was exported before the crash or the move, and a
    /// counter that steps down reads as a reset to Prometheus. Kept here, under the lock a
    /// scrape reads the counters with, so no restore can slip between the two.
    #[serde(skip)]
    settled: bool,
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
    fn max_keys(&self, limits: &Limits) -> usize {
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

    /// Sets where consumption starts for a state that has no history (no checkpoint).
    pub fn start_at(&mut self, offset: i64) {
        self.next_offset = offset;
    }

    pub fn watermark_ms(&self) -> Option<i64> {
        (self.watermark_ms != i64::MIN).then_some(self.watermark_ms)
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

    /// A key not found under its raw names (the caller looked: a hit needs no cleaning, since
    /// stored names are clean and a raw name that matches one is). Returns where its events go
    /// and whether it was folded into campaign "(other)" because the partition holds
    /// `limits.max_keys` already. New keys are rare; this path may allocate.
    fn new_key_mut(
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

/// Cardinality limits, applied when a new key appears (config section `limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Keys per partition before new ones fold into campaign "(other)".
    pub max_keys: usize,
    /// Longest campaign or channel name kept, in bytes.
    pub max_label_bytes: usize,
}

impl Default for Limits {
    /// The defaults of `config/default.toml`.
    fn default() -> Self {
        Limits {
            max_keys: 10_000,
            max_label_bytes: 128,
        }
    }
}

/// The campaign (and, past `OTHER_CHANNELS`, the channel) of events over `limits.max_keys`.
pub const OTHER: &str = "(other)";
/// How many "(other)" keys beyond `max_keys` keep their channel apart: channels are few by
/// nature, and a flood of made-up channels must stay bounded too.
const OTHER_CHANNELS: usize = 16;

/// A name as it is kept and exported: control characters removed and cut to `max` bytes (at
/// a character boundary). Borrowed when already clean, the common case.
pub fn clean_label(value: &str, max: usize) -> Cow<'_, str> {
    let printable_ascii = value.bytes().all(|b| (0x20..0x7f).contains(&b));
    if value.len() <= max && (printable_ascii || !value.chars().any(char::is_control)) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len().min(max));
    for c in value.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    if out.is_empty() {
        // Nothing but control characters: as if the name were empty.
        return Cow::Borrowed(crate::pure::decode::NONE_LABEL);
    }
    Cow::Owned(out)
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

impl Pipeline {
    /// The pure processing step as configured.
    pub fn from_config(config: &Config) -> Result<Pipeline, ConfigError> {
        Ok(Pipeline {
            decoder: Decoder::new(&config.kpi.reporting_currency, config.currency_rates()),
            windows: {
                // Windows watched by a drop rule also keep their preceding window.
                let lengths = config.window_lengths()?;
                let previous: Vec<bool> = lengths
                    .iter()
                    .map(|w| {
                        config
                            .alerts
                            .iter()
                            .any(|a| a.drop.is_some() && a.window == w.label)
                    })
                    .collect();
                Windows::new(&lengths, config.windows.buckets, &previous)
            },
            max_future_skew_ms: config.windows.max_future_skew.as_millis() as i64,
            dedup_horizon_ms: config.dedup.horizon.as_millis() as i64,
            dedup_max_ids: config.dedup.max_ids_per_partition,
            limits: Limits {
                max_keys: config.limits.max_keys,
                max_label_bytes: config.limits.max_label_bytes,
            },
        })
    }
}

/// A topic-partition, the unit of state ownership.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: &str, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

pub type SharedPartition = Arc<RwLock<PartitionState>>;

/// The partitions this instance owns, shared between the consumer (writes) and the HTTP
/// endpoints and checkpoints (reads). Each partition has its own read-write lock, held by a
/// reader only while that partition's sums are read or its checkpoint encoded; readers share
/// it, so a scrape does not wait for a checkpoint being encoded. The consumer does not wait
/// for readers, but holds that partition's messages and goes on with the others (`source`).
/// Writes that do wait (the eviction of idle keys before each checkpoint round, the consumer
/// at shutdown or past its bound of held messages) are short, and parking_lot's lock is fair:
/// while one is queued, new readers wait behind it.
#[derive(Debug, Default)]
pub struct Store {
    partitions: RwLock<BTreeMap<TopicPartition, SharedPartition>>,
    /// Bumped whenever partitions come or go, so the consumer knows to refresh its handles.
    generation: AtomicU64,
    /// Rows in the last snapshot: the next one's starting capacity.
    rows_hint: AtomicUsize,
}

impl Store {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The state of `tp`, created by `make` if this instance did not hold it yet.
    pub fn get_or_insert(
        &self,
        tp: &TopicPartition,
        make: impl FnOnce() -> PartitionState,
    ) -> SharedPartition {
        if let Some(p) = self.partitions.read().get(tp) {
            return p.clone();
        }
        let mut partitions = self.partitions.write();
        partitions
            .entry(tp.clone())
            .or_insert_with(|| {
                self.generation.fetch_add(1, Ordering::AcqRel);
                Arc::new(RwLock::new(make()))
            })
            .clone()
    }

    /// Installs the state of a partition just taken over (restored or fresh), replacing any.
    pub fn install(&self, tp: TopicPartition, state: PartitionState) -> SharedPartition {
        let shared = Arc::new(RwLock::new(state));
        self.partitions.write().insert(tp, shared.clone());
        self.generation.fetch_add(1, Ordering::AcqRel);
        shared
    }

    pub fn get(&self, tp: &TopicPartition) -> Option<SharedPartition> {
        self.partitions.read().get(tp).cloned()
    }

    /// Drops partitions this instance no longer owns: their series leave at once.
    pub fn remove(&self, tps: &[TopicPartition]) {
        let mut partitions = self.partitions.write();
        for tp in tps {
            partitions.remove(tp);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn partitions(&self) -> Vec<(TopicPartition, SharedPartition)> {
        self.partitions
            .read()
            .iter()
            .map(|(tp, p)| (tp.clone(), p.clone()))
            .collect()
    }

    /// Merges every partition into one row per key, read at `now_ms`.
    pub fn snapshot(&self, windows: &Windows, now_ms: i64) -> Snapshot {
        self.snapshot_with(windows, now_ms, true, false)
    }

    /// As `snapshot`, without the preceding windows (all zero): what the API shows, for a
    /// quarter less reading.
    pub fn snapshot_current(&self, windows: &Windows, now_ms: i64) -> Snapshot {
        self.snapshot_with(windows, now_ms, false, false)
    }

    /// As `snapshot_current`, with the counters ([`Snapshot::counters`]) of each partition
    /// that has caught up since it was taken over ([`PartitionState::settle`]): what
    /// `/metrics` shows.
    pub fn snapshot_for_metrics(&self, windows: &Windows, now_ms: i64) -> Snapshot {
        self.snapshot_with(windows, now_ms, false, true)
    }

    fn snapshot_with(
        &self,
        windows: &Windows,
        now_ms: i64,
        previous: bool,
        counters_too: bool,
    ) -> Snapshot {
        /// Keys whose series are read ahead together (see `merge`).
        const TOUCH_AHEAD: usize = 8;
        // Merged in a hash map and sorted once at the end: a B-tree lookup per key and
        // partition, comparing strings all the way down, took a third of a 10k-key scrape.
        let partitions = self.partitions();
        // Sized from the previous snapshot (keys come and go slowly): growing a map of rows
        // moves them all, several times over.
        let mut rows: hashbrown::HashMap<Key, Row> =
            hashbrown::HashMap::with_capacity(self.rows_hint.load(Ordering::Relaxed));
        let mut counters = Vec::new();
        let mut coverage = vec![COMPLETE; windows.len()];
        let mut merge = |tp: &TopicPartition, state: &PartitionState| {
            for (c, from) in coverage.iter_mut().zip(state.coverage()) {
                *c = (*c).max(from);
            }
            let mut own = (counters_too && state.settled).then(|| PartitionCounters {
                tp: tp.clone(),
                keys: Vec::with_capacity(state.keys.len()),
            });
            let mut keys = state.keys().fuse();
            loop {
                // Read one key at a time, the core waits for each key's series (separate
                // allocations, cold in a large store) in turn: ~85 % of the time spent reading
                // windows went there. So the heads of a few keys' series are read first, in a
                // loop short enough for the core to have all those misses in flight at once,
                // and the keys are then summed from the cache. (The prefetch intrinsic needs
                // `unsafe`, which this crate forbids; plain loads whose results are kept do
                // the same job here.)
                let chunk: [Option<(&Key, &KeyState)>; TOUCH_AHEAD] =
                    std::array::from_fn(|_| keys.next());
                if chunk[0].is_none() {
                    break;
                }
                std::hint::black_box(chunk.iter().flatten().fold(0i64, |acc, (_, ks)| {
                    acc.wrapping_add(ks.touch_heads(windows.len()))
                }));
                for &(key, ks) in chunk.iter().flatten() {
                    let row = match rows.get_mut(key) {
                        Some(row) => row,
                        // Preceding windows not read: no allocation per key for them.
                        None => rows.entry(key.clone()).or_insert_with(|| {
                            Row::with_previous(
                                windows.len(),
                                if previous { windows.len() } else { 0 },
                            )
                        }),
                    };
                    for (w, sums) in row.windows.iter_mut().enumerate() {
                        *sums += &ks.window_sums(windows, w, now_ms);
                    }
                    for (w, spec) in windows.specs().iter().enumerate() {
                        if previous && spec.has_previous() {
                            row.previous[w] += &ks.previous_sums(windows, w, now_ms);
                        }
                    }
                    let totals = ks.totals();
                    row.totals += &totals;
                    if let Some(own) = own.as_mut() {
                        own.keys.push((key.clone(), totals, ks.counted()));
                    }
                }
            }
            if let Some(own) = own {
                counters.push(own);
            }
        };
        // A partition the consumer is writing (it takes the lock for one message at a time)
        // is read after the others rather than waited for, and then tried for up to a few
        // tens of microseconds before blocking. Blocking means parking_lot's spinning, then
        // yielding the CPU: with both cores busy, a third of the scrapes made while ingesting
        // lost 3-4.5 ms there on one or two partitions. One still taken after that means its
        // writer was preempted, and then waiting is right.
        let mut busy = Vec::new();
        for (tp, partition) in &partitions {
            match partition.try_read() {
                Some(state) => merge(tp, &state),
                None => busy.push((tp, partition)),
            }
        }
        for (tp, partition) in busy {
            let state = (0..1_000)
                .find_map(|_| {
                    let state = partition.try_read();
                    if state.is_none() {
                        std::hint::spin_loop();
                    }
                    state
                })
                .unwrap_or_else(|| partition.read());
            merge(tp, &state);
        }
        counters.sort_unstable_by(|a, b| a.tp.cmp(&b.tp));
        self.rows_hint.store(rows.len(), Ordering::Relaxed);
        let mut sorted: Vec<(Key, Row)> = rows.into_iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        // From sorted input, the B-tree is built in one linear pass.
        Snapshot {
            rows: sorted.into_iter().collect(),
            counters,
            coverage,
        }
    }
}

/// One partition's counters per key, as `/metrics` exports them: a counter belongs to the
/// partition whose events it counts, so it moves with the partition on a rebalance and never
/// steps down where it is exported (see `export::metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionCounters {
    pub tp: TopicPartition,
    /// Each key's counters and the event types it has counted.
    pub keys: Vec<(Key, Sums, EventTypes)>,
}

/// Which event types a key of a partition has counted: a counter is exported only for those,
/// so a partition of visits does not add a zero `ecom_orders_total` for each of its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventTypes {
    pub visits: bool,
    pub orders: bool,
    pub ad_spend: bool,
}

/// One key's merged sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Per configured window, in config order.
    pub windows: Vec<Sums>,
    /// Per window, the preceding window of the same length (zero where it is not kept);
    /// empty in a snapshot taken without them ([`Store::snapshot_current`]).
    pub previous: Vec<Sums>,
    pub totals: Sums,
}

impl Row {
    pub fn new(windows: usize) -> Row {
        Row::with_previous(windows, windows)
    }

    /// A row with room for `previous` preceding windows (none in a snapshot without them).
    fn with_previous(windows: usize, previous: usize) -> Row {
        Row {
            windows: vec![Sums::default(); windows],
            previous: vec![Sums::default(); previous],
            totals: Sums::default(),
        }
    }
}

/// A consistent-per-partition read of all keys, sorted by key.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub rows: BTreeMap<Key, Row>,
    /// Per partition, sorted by partition (only in [`Store::snapshot_for_metrics`]).
    pub counters: Vec<PartitionCounters>,
    /// Per configured window, from when every partition read holds all of it (the least
    /// covered partition decides). Empty in a snapshot made by hand: complete.
    pub coverage: Vec<CoveredFrom>,
}

impl Snapshot {
    /// How much of window `w` at `now_ms` every partition read covers, 0 to 1.
    pub fn window_coverage(&self, windows: &Windows, w: usize, now_ms: i64) -> f64 {
        let from = self.coverage.get(w).copied().unwrap_or(COMPLETE);
        rebuild::coverage_ratio(from, windows.start_ms(w, now_ms), now_ms)
    }

    /// True when window `w` at `now_ms` is whole in every partition read, and, with
    /// `preceding`, the window of the same length before it too.
    pub fn window_complete(
        &self,
        windows: &Windows,
        w: usize,
        now_ms: i64,
        preceding: bool,
    ) -> bool {
        let from = self.coverage.get(w).copied().unwrap_or(COMPLETE);
        let length = if preceding {
            windows.specs()[w].length_ms
        } else {
            0
        };
        from <= windows.start_ms(w, now_ms) - length
    }
}

/// How to roll keys up in `/api/v1/kpis` (`group_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    CampaignChannel,
    Campaign,
    Channel,
    All,
}

impl Snapshot {
    /// Rolls rows up by summing (never by averaging ratios). `None` marks a label grouped away.
    pub fn grouped(
        &self,
        by: GroupBy,
    ) -> BTreeMap<(Option<CompactString>, Option<CompactString>), Row> {
        let mut out: BTreeMap<(Option<CompactString>, Option<CompactString>), Row> =
            BTreeMap::new();
        for (key, row) in &self.rows {
            let group = match by {
                GroupBy::CampaignChannel => (Some(key.campaign.clone()), Some(key.channel.clone())),
                GroupBy::Campaign => (Some(key.campaign.clone()), None),
                GroupBy::Channel => (None, Some(key.channel.clone())),
                GroupBy::All => (None, None),
            };
            let acc = out
                .entry(group)
                .or_insert_with(|| Row::with_previous(row.windows.len(), row.previous.len()));
            for (a, s) in acc.windows.iter_mut().zip(&row.windows) {
                *a += s;
            }
            for (a, s) in acc.previous.iter_mut().zip(&row.previous) {
                *a += s;
            }
            acc.totals += &row.totals;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::decode::Decoder;

    const T0: i64 = 1_763_798_400_000;
    const MIN: i64 = 60_000;

    fn pipeline() -> Pipeline {
        Pipeline {
            decoder: Decoder::new("USD", [("EUR".to_string(), 1.08)]),
            windows: Windows::from_labels(&["5m", "1h", "24h"], 60),
            max_future_skew_ms: MIN,
            dedup_horizon_ms: 15 * MIN,
            dedup_max_ids: 100_000,
            limits: Default::default(),
        }
    }

    /// The test pipeline, with the hour window's predecessor kept.
    fn pipeline_keeping_the_hour_before() -> Pipeline {
        Pipeline {
            windows: Windows::with_previous(&["5m", "1h", "24h"], 60, &["1h"]),
            ..pipeline()
        }
    }

    fn visit(id: &str, ts: i64, campaign: &str) -> String {
        format!(
            r#"{{"type":"visit","event_id":"{id}","timestamp":{ts},"campaign":"{campaign}","channel":"email"}}"#
        )
    }

    /// Saved counters without a series (no build writes that, but a restore must not trust
    /// the bytes) get empty rings of their own; the other keys' rings are kept.
    #[test]
    fn counters_saved_without_a_series_get_rings_of_their_own() {
        let p = pipeline();
        let mut st = p.new_partition();
        for i in 0..10 {
            p.process(&mut st, visit(&format!("v{i}"), T0, "a").as_bytes(), T0, T0);
        }
        let saved = SavedKeyRef {
            visits: &None,
            orders: &None,
            ad_spend: &None,
            totals: Sums {
                visits: 5,
                ..Sums::default()
            },
        };
        let ghost: KeyState = postcard::from_bytes(&postcard::to_stdvec(&saved).unwrap()).unwrap();
        st.keys.insert(Key::new("ghost", "email"), ghost);
        let layout = SavedLayout::Rings(p.windows.layout());
        assert!(st.reconfigure(&p, &layout, T0).kept_all());
        let (a, ghost) = (
            &st.keys[&Key::new("a", "email")],
            &st.keys[&Key::new("ghost", "email")],
        );
        assert_eq!(a.window_sums(&p.windows, 0, T0).visits, 10);
        assert_eq!(ghost.totals().visits, 5);
        assert_eq!(ghost.window_sums(&p.windows, 2, T0), Sums::default());
        // And it counts from there.
        let st_ghost = st.keys.get_mut(&Key::new("ghost", "email")).unwrap();
        let json = visit("g", T0, "ghost");
        let event = p.decoder.decode(json.as_bytes(), T0).unwrap();
        st_ghost.add(&p.windows, &event, T0, T0);
        assert_eq!(st_ghost.totals().visits, 6);
        assert_eq!(st_ghost.window_sums(&p.windows, 0, T0).visits, 1);
    }

    fn order(id: &str, ts: i64, campaign: &str, amount: &str, new: bool) -> String {
        format!(
            r#"{{"type":"order","event_id":"{id}","timestamp":{ts},"campaign":"{campaign}","channel":"email","amount":{amount},"new_customer":{new}}}"#
        )
    }

    fn spend(id: &str, ts: i64, campaign: &str, amount: &str) -> String {
        format!(
            r#"{{"type":"ad_spend","event_id":"{id}","timestamp":{ts},"campaign":"{campaign}","channel":"email","amount":{amount}}}"#
        )
    }

    #[test]
    fn windows_and_totals_accumulate_per_key() {
        let p = pipeline();
        let mut st = p.new_partition();
        let msgs = [
            visit("v1", T0, "a"),
            visit("v2", T0 - 10 * MIN, "a"),
            order("o1", T0, "a", "40", true),
            order("o2", T0 - 2 * 60 * MIN, "a", "\"10.5\"", false),
            spend("s1", T0, "a", "20"),
            visit("v3", T0, "b"),
        ];
        for m in &msgs {
            assert!(
                matches!(
                    p.process(&mut st, m.as_bytes(), T0, T0),
                    Outcome::Accepted { .. }
                ),
                "{m}"
            );
        }
        let store = Store::default();
        let tp = TopicPartition::new("t", 0);
        *store.get_or_insert(&tp, || p.new_partition()).write() = st;
        let snap = store.snapshot(&p.windows, T0);
        let a = &snap.rows[&Key::new("a", "email")];
        assert_eq!(
            a.windows[0],
            Sums {
                visits: 1,
                orders: 1,
                new_customers: 1,
                gmv_micros: 40_000_000,
                ad_spend_micros: 20_000_000
            }
        );
        assert_eq!(a.windows[1].visits, 2);
        assert_eq!(a.windows[1].orders, 1);
        assert_eq!(a.windows[2].orders, 2);
        assert_eq!(a.windows[2].gmv_micros, 50_500_000);
        assert_eq!(a.totals, a.windows[2]);
        assert_eq!(snap.rows[&Key::new("b", "email")].totals.visits, 1);
    }

    /// The snapshot reads a partition's keys a few at a time (their series first, then
    /// their sums): every key of every partition must come out once, with its own sums and
    /// preceding windows, whatever the key counts are against that group size, and whether
    /// a key's row is made by the first partition read or a later one.
    #[test]
    fn a_snapshot_reads_every_key_of_every_partition() {
        let p = pipeline_keeping_the_hour_before();
        let store = Store::default();
        let send = |partition: i32, id: String, ts: i64, k: usize| {
            let state =
                store.get_or_insert(&TopicPartition::new("t", partition), || p.new_partition());
            let m = visit(&id, ts, &format!("c{k:02}"));
            assert!(matches!(
                p.process(&mut state.write(), m.as_bytes(), ts, T0),
                Outcome::Accepted { .. }
            ));
        };
        // Partition 0: keys 0..=20, key k with k + 1 visits now. Partition 1: keys 14..=33
        // (seven shared, thirteen of its own), one visit now and one 90 minutes ago, which
        // is in the hour before the last one.
        for k in 0..=20 {
            for n in 0..=k {
                send(0, format!("0-{k}-{n}"), T0, k);
            }
        }
        for k in 14..=33 {
            send(1, format!("1-{k}-now"), T0, k);
            send(1, format!("1-{k}-old"), T0 - 90 * MIN, k);
        }
        let snap = store.snapshot(&p.windows, T0);
        assert_eq!(snap.rows.len(), 34);
        for k in 0..=33 {
            let row = &snap.rows[&Key::new(&format!("c{k:02}"), "email")];
            let (first, second) = (if k <= 20 { k as u64 + 1 } else { 0 }, u64::from(k >= 14));
            let visits = |sums: &[Sums]| sums.iter().map(|s| s.visits).collect::<Vec<_>>();
            assert_eq!(
                visits(&row.windows),
                [first + second, first + second, first + 2 * second],
                "key {k}"
            );
            assert_eq!(visits(&row.previous), [0, second, 0], "key {k}");
            assert_eq!(row.totals.visits, first + 2 * second, "key {k}");
        }
    }

    #[test]
    fn duplicates_count_once() {
        let p = pipeline();
        let mut st = p.new_partition();
        let m = order("o1", T0, "a", "40", true);
        assert!(matches!(
            p.process(&mut st, m.as_bytes(), T0, T0),
            Outcome::Accepted { .. }
        ));
        assert_eq!(
            p.process(&mut st, m.as_bytes(), T0, T0 + MIN),
            Outcome::Duplicate
        );
        assert_eq!(st.keys().next().unwrap().1.totals().orders, 1);
    }

    #[test]
    fn too_late_and_too_early_are_rejected_without_effect() {
        let p = pipeline();
        let mut st = p.new_partition();
        let old = visit("old", T0 - 24 * 60 * MIN, "a");
        let future = visit("future", T0 + 2 * MIN, "a");
        let skewed = visit("skewed", T0 + 30_000, "a");
        let reason = |o: Outcome| match o {
            Outcome::Rejected(r) => Some(r.reason),
            _ => None,
        };
        assert_eq!(
            reason(p.process(&mut st, old.as_bytes(), T0, T0)),
            Some(Reason::TooLate)
        );
        assert_eq!(
            reason(p.process(&mut st, future.as_bytes(), T0, T0)),
            Some(Reason::TooEarly)
        );
        assert_eq!(st.keys().count(), 0);
        // Within the skew: accepted and counted now, in the 5m window at once.
        assert!(matches!(
            p.process(&mut st, skewed.as_bytes(), T0, T0),
            Outcome::Accepted { .. }
        ));
        let (_, ks) = st.keys().next().unwrap();
        assert_eq!(ks.window_sums(&p.windows, 0, T0).visits, 1);
    }

    /// The longest window starts at its oldest bucket, up to one bucket width (24 min for
    /// 24h) later than `now - 24h`: an event between the two is in no window, so it is
    /// `too_late` rather than counted in the counters alone.
    #[test]
    fn too_late_means_in_no_window() {
        let p = pipeline();
        let mut st = p.new_partition();
        let now = T0 + 30_000; // T0 starts a 24-minute bucket
        let start = T0 - 59 * 24 * MIN; // the 24h window's oldest bucket at `now`
        let before = visit("before", start - 1, "a");
        let reason = |o: Outcome| match o {
            Outcome::Rejected(r) => Some(r.reason),
            _ => None,
        };
        assert!(
            start - 1 > now - 24 * 60 * MIN,
            "newer than the window length"
        );
        assert_eq!(
            reason(p.process(&mut st, before.as_bytes(), now, now)),
            Some(Reason::TooLate)
        );
        let first = visit("first", start, "a");
        assert!(matches!(
            p.process(&mut st, first.as_bytes(), now, now),
            Outcome::Accepted { late: 0b011, .. }
        ));
        let (_, ks) = st.keys().next().unwrap();
        assert_eq!(ks.totals().visits, 1);
        assert_eq!(ks.window_sums(&p.windows, 2, now).visits, 1);
    }

    /// An amount that would saturate a window bucket is refused, so a window never holds
    /// less than the counter says; its id stays free.
    #[test]
    fn a_bucket_never_saturates_while_the_counter_goes_on() {
        let p = pipeline();
        let mut st = p.new_partition();
        let big = |id: &str, ts: i64| order(id, ts, "a", "1e12", false);
        // 10^12 units is 10^18 micro-units: eighteen fill a bucket's u64 (1.8·10^19) ...
        for i in 0..18 {
            let m = big(&format!("o{i}"), T0);
            assert!(matches!(
                p.process(&mut st, m.as_bytes(), T0, T0),
                Outcome::Accepted { .. }
            ));
        }
        // ... and a nineteenth would overflow it.
        let reason = |o: Outcome| match o {
            Outcome::Rejected(r) => Some(r.reason),
            _ => None,
        };
        let m = big("o18", T0);
        assert_eq!(
            reason(p.process(&mut st, m.as_bytes(), T0, T0)),
            Some(Reason::InvalidValue)
        );
        let (_, ks) = st.keys().next().unwrap();
        assert_eq!(ks.totals().orders, 18);
        for w in 0..3 {
            assert_eq!(ks.window_sums(&p.windows, w, T0), ks.totals(), "window {w}");
        }
        // A small order still fits, and the refused id was not remembered: in the next
        // 24-minute bucket (all fresh) it counts.
        let small = order("small", T0, "a", "1", false);
        assert!(matches!(
            p.process(&mut st, small.as_bytes(), T0, T0),
            Outcome::Accepted { .. }
        ));
        let later = T0 + 24 * MIN;
        let m = big("o18", later);
        assert!(matches!(
            p.process(&mut st, m.as_bytes(), later, later),
            Outcome::Accepted { .. }
        ));
        let (_, ks) = st.keys().next().unwrap();
        assert_eq!(ks.totals().orders, 20);
        assert_eq!(ks.window_sums(&p.windows, 2, later), ks.totals());
    }

    #[test]
    fn late_events_are_flagged_per_window_and_move_no_watermark_back() {
        let p = pipeline();
        let mut st = p.new_partition();
        assert_eq!(st.watermark_ms(), None);
        let on_time = visit("a", T0, "x");
        let late_for_5m = visit("b", T0 - 10 * MIN, "x");
        let late_for_1h = visit("c", T0 - 2 * 60 * MIN, "x");
        let late = |o: Outcome| match o {
            Outcome::Accepted { late, .. } => late,
            other => panic!("{other:?}"),
        };
        assert_eq!(late(p.process(&mut st, on_time.as_bytes(), T0, T0)), 0);
        assert_eq!(
            late(p.process(&mut st, late_for_5m.as_bytes(), T0, T0)),
            0b001
        );
        assert_eq!(
            late(p.process(&mut st, late_for_1h.as_bytes(), T0, T0)),
            0b011
        );
        assert_eq!(st.watermark_ms(), Some(T0));
        st.applied(41, T0, T0);
        st.applied(7, T0, T0);
        assert_eq!(st.next_offset(), 42, "offsets only move forward");
    }

    #[test]
    fn rejected_events_do_not_consume_their_id() {
        let p = pipeline();
        let mut st = p.new_partition();
        let bad = r#"{"type":"order","event_id":"o1","amount":-1}"#;
        assert!(matches!(
            p.process(&mut st, bad.as_bytes(), T0, T0),
            Outcome::Rejected(_)
        ));
        let good = order("o1", T0, "a", "1", false);
        assert!(matches!(
            p.process(&mut st, good.as_bytes(), T0, T0),
            Outcome::Accepted { .. }
        ));
    }

    #[test]
    fn grouping_sums_then_divides() {
        let mut snap = Snapshot::default();
        let row = |orders, gmv| Row {
            previous: vec![Sums::default()],
            windows: vec![Sums {
                orders,
                gmv_micros: gmv,
                ..Sums::default()
            }],
            totals: Sums::default(),
        };
        snap.rows.insert(Key::new("a", "x"), row(1, 100_000_000));
        snap.rows.insert(Key::new("a", "y"), row(3, 100_000_000));
        snap.rows.insert(Key::new("b", "x"), row(4, 0));
        let by_campaign = snap.grouped(GroupBy::Campaign);
        let a = &by_campaign[&(Some("a".into()), None)];
        assert_eq!(a.windows[0].orders, 4);
        assert_eq!(a.windows[0].gmv(), 200.0); // AOV 50, not the mean of 100 and 33.3
        let all = snap.grouped(GroupBy::All);
        assert_eq!(all.len(), 1);
        assert_eq!(all[&(None, None)].windows[0].orders, 8);
        assert_eq!(snap.grouped(GroupBy::Channel).len(), 2);
    }

    #[test]
    fn the_current_snapshot_is_the_full_one_without_preceding_windows() {
        let p = pipeline_keeping_the_hour_before();
        let store = Store::default();
        let shared = store.get_or_insert(&TopicPartition::new("visits", 0), || p.new_partition());
        // One visit in the preceding hour, two in the current one.
        for (i, age) in [90 * MIN, 30 * MIN, MIN].into_iter().enumerate() {
            let m = visit(&format!("v{i}"), T0 - age, "a");
            p.process(&mut shared.write(), m.as_bytes(), T0 - age, T0);
        }
        let full = store.snapshot(&p.windows, T0);
        let current = store.snapshot_current(&p.windows, T0);
        let (f, c) = (
            &full.rows[&Key::new("a", "email")],
            &current.rows[&Key::new("a", "email")],
        );
        assert_eq!(f.previous[1].visits, 1);
        assert!(c.previous.is_empty());
        assert_eq!((&f.windows, &f.totals), (&c.windows, &c.totals));
        assert_eq!(c.windows[1].visits, 2);
    }

    #[test]
    fn names_lose_control_characters_and_are_cut_at_a_character_boundary() {
        assert!(matches!(clean_label("spring_sale", 128), Cow::Borrowed(_)));
        assert!(matches!(
            clean_label("Été \"50%\" \\", 128),
            Cow::Borrowed(_)
        ));
        assert_eq!(clean_label("a\nb\u{1b}[31mc\u{85}", 128), "ab[31mc");
        // 'é' is two bytes: a cut never splits it.
        assert_eq!(clean_label("ééé", 5), "éé");
        assert_eq!(clean_label(&"x".repeat(300), 128).len(), 128);
        assert_eq!(clean_label("\n\t", 128), "(none)");
    }

    #[test]
    fn keys_beyond_the_limit_fold_into_other_and_nothing_is_lost() {
        let p = Pipeline {
            limits: Limits {
                max_keys: 3,
                max_label_bytes: 16,
            },
            ..pipeline()
        };
        let mut state = p.new_partition();
        let mut folded = 0;
        for i in 0..100 {
            let m = visit(&format!("v{i}"), T0, &format!("campaign-{}", i % 10));
            match p.process(&mut state, m.as_bytes(), T0, T0) {
                Outcome::Accepted { folded: f, .. } => folded += usize::from(f),
                other => panic!("{other:?}"),
            }
        }
        // campaign-0..2 keep their keys; the 70 events of the others count under "(other)".
        assert_eq!(folded, 70);
        let keys: Vec<(String, u64)> = state
            .keys()
            .map(|(k, ks)| (k.campaign.to_string(), ks.totals().visits))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect();
        assert_eq!(
            keys,
            [
                ("(other)".to_string(), 70),
                ("campaign-0".to_string(), 10),
                ("campaign-1".to_string(), 10),
                ("campaign-2".to_string(), 10),
            ]
        );
        // A flood of made-up channels stays bounded too.
        for i in 0..1000 {
            let m = format!(
                r#"{{"type":"visit","event_id":"c{i}","timestamp":{T0},"campaign":"x{i}","channel":"ch{i}"}}"#
            );
            p.process(&mut state, m.as_bytes(), T0, T0);
        }
        assert!(state.keys().count() <= 3 + OTHER_CHANNELS + 1);
        let visits: u64 = state.keys().map(|(_, ks)| ks.totals().visits).sum();
        assert_eq!(visits, 1100);
    }

    #[test]
    fn idle_keys_are_evicted_and_their_place_freed() {
        let p = Pipeline {
            limits: Limits {
                max_keys: 2,
                max_label_bytes: 128,
            },
            ..pipeline()
        };
        let mut state = p.new_partition();
        p.process(&mut state, visit("a", T0, "old").as_bytes(), T0, T0);
        let later = T0 + 23 * 60 * MIN;
        p.process(
            &mut state,
            visit("b", later, "recent").as_bytes(),
            later,
            later,
        );
        // Within the 24h window of its event, the old key stays.
        assert_eq!(state.evict_idle(&p.windows, &p.limits, later), 0);
        let next_day = T0 + 25 * 60 * MIN;
        // Below the limit, idle keys stay: evicting costs their counters.
        let roomy = Limits {
            max_keys: 3,
            ..p.limits
        };
        assert_eq!(state.evict_idle(&p.windows, &roomy, next_day), 0);
        assert_eq!(state.evict_idle(&p.windows, &p.limits, next_day), 1);
        let campaigns: Vec<&str> = state.keys().map(|(k, _)| &*k.campaign).collect();
        assert_eq!(campaigns, ["recent"]);
        // The freed place goes to a new key rather than to "(other)".
        let outcome = p.process(
            &mut state,
            visit("c", next_day, "new").as_bytes(),
            next_day,
            next_day,
        );
        assert!(
            matches!(outcome, Outcome::Accepted { folded: false, .. }),
            "{outcome:?}"
        );
    }

    #[test]
    fn removing_a_partition_removes_its_series() {
        let p = pipeline();
        let store = Store::default();
        for (part, campaign) in [(0, "a"), (1, "b")] {
            let tp = TopicPartition::new("visits", part);
            let shared = store.get_or_insert(&tp, || p.new_partition());
            let m = visit(&format!("v{part}"), T0, campaign);
            p.process(&mut shared.write(), m.as_bytes(), T0, T0);
        }
        let g = store.generation();
        assert_eq!(store.snapshot(&p.windows, T0).rows.len(), 2);
        store.remove(&[TopicPartition::new("visits", 0)]);
        assert!(store.generation() > g);
        let snap = store.snapshot(&p.windows, T0);
        assert_eq!(
            snap.rows.keys().map(|k| &*k.campaign).collect::<Vec<_>>(),
            ["b"]
        );
    }
}
