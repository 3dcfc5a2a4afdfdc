//! Rolling windows as rings of time buckets. Pure: the caller passes the time in.
//!
//! Each window of length `L` is `n` buckets of width `w = L / n` milliseconds, `n` being the
//! largest divisor of `L` (in ms) not above `windows.buckets`, so `n·w = L` exactly (60 for
//! every length in whole minutes, at least 50 for any length in whole seconds). An event is
//! placed by its own timestamp into bucket `⌊t / w⌋`, so arrival order does not matter. The
//! window read at time `now` is the `n` buckets ending with the one holding `now`: it covers
//! the last `(n - 1)·w + (now mod w)` milliseconds, i.e. between `L - w` and `L`. That is the
//! edge error: up to one bucket width (1/n of the window, 1.7 % with the default 60 buckets)
//! of the oldest data leaves the window early, and nothing older than `L` is ever counted.
//!
//! A ring never stores more than `n` buckets whatever the event rate (`2n` for a window that
//! an alert compares with its preceding window), and a bucket that falls out of the ring is
//! recycled lazily by the next write, so idle rings cost no work.

use std::sync::Arc;
use std::time::Duration;

use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

/// A window length as configured: its label (also the `window` label value) and length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowLength {
    /// As written in the config.
    pub label: String,
    pub length: Duration,
}

/// One window length and its bucket geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    /// The `window` label value.
    pub label: Arc<str>,
    pub length_ms: i64,
    /// Bucket width.
    pub width_ms: i64,
    /// Buckets in the window: `length_ms / width_ms`.
    pub buckets: usize,
    /// Buckets kept: `buckets`, or twice that when the preceding window is needed too.
    pub slots: usize,
    /// Where this window's ring starts in a series' cells.
    offset: usize,
}

impl WindowSpec {
    fn ring(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.slots
    }

    /// True when the preceding window of the same length is kept as well.
    pub fn has_previous(&self) -> bool {
        self.slots > self.buckets
    }
}

/// The largest divisor of `length_ms` that is at most `max`.
pub fn bucket_count(length_ms: i64, max: u32) -> usize {
    (1..=max.max(1) as i64)
        .rev()
        .find(|d| length_ms % d == 0)
        .unwrap_or(1) as usize
}

/// The configured windows; every ring of every key uses this geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windows {
    specs: Vec<WindowSpec>,
    /// Cells of one series: the sum of every window's bucket count.
    cells: usize,
    longest_ms: i64,
    /// The widest bucket of any window.
    widest_ms: i64,
    /// The `windows.buckets` setting the bucket counts came from.
    buckets: u32,
}

impl Windows {
    /// `previous[i]` keeps window `i`'s preceding window too (for drop alerts); missing
    /// entries mean no.
    pub fn new(lengths: &[WindowLength], buckets: u32, previous: &[bool]) -> Windows {
        assert!(
            !lengths.is_empty() && lengths.len() <= MAX_WINDOWS && buckets > 0,
            "at least one window and one bucket (the configuration checks them when loaded)"
        );
        let mut offset = 0;
        let specs: Vec<WindowSpec> = lengths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let length_ms = w.length.as_millis() as i64;
                let n = bucket_count(length_ms, buckets);
                let slots = if previous.get(i).copied().unwrap_or(false) {
                    2 * n
                } else {
                    n
                };
                let spec = WindowSpec {
                    label: w.label.as_str().into(),
                    length_ms,
                    width_ms: length_ms / n as i64,
                    buckets: n,
                    slots,
                    offset,
                };
                offset += slots;
                spec
            })
            .collect();
        let longest_ms = specs.iter().map(|s| s.length_ms).max().unwrap_or(0);
        let widest_ms = specs.iter().map(|s| s.width_ms).max().unwrap_or(0);
        Windows {
            specs,
            cells: offset,
            longest_ms,
            widest_ms,
            buckets,
        }
    }

    /// Convenience for tests and benches: `Windows::from_labels(&["5m", "1h"], 60)`.
    pub fn from_labels(labels: &[&str], buckets: u32) -> Windows {
        let lengths: Vec<WindowLength> = labels
            .iter()
            .map(|l| WindowLength {
                label: l.to_string(),
                length: humantime::parse_duration(l).expect("a duration"),
            })
            .collect();
        Windows::new(&lengths, buckets, &[])
    }

    /// Like [`Windows::from_labels`], keeping the preceding window of the labels in `previous`.
    pub fn with_previous(labels: &[&str], buckets: u32, previous: &[&str]) -> Windows {
        let lengths: Vec<WindowLength> = labels
            .iter()
            .map(|l| WindowLength {
                label: l.to_string(),
                length: humantime::parse_duration(l).expect("a duration"),
            })
            .collect();
        let keep: Vec<bool> = labels.iter().map(|l| previous.contains(l)).collect();
        Windows::new(&lengths, buckets, &keep)
    }

    /// The `windows.buckets` setting these windows were made with.
    pub fn buckets_setting(&self) -> u32 {
        self.buckets
    }

    pub fn specs(&self) -> &[WindowSpec] {
        &self.specs
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Length of the longest window: events older than this cannot show anywhere.
    pub fn longest(&self) -> Duration {
        Duration::from_millis(self.longest_ms as u64)
    }

    pub fn longest_ms(&self) -> i64 {
        self.longest_ms
    }

    /// True when at `now_ms` no window holds the bucket of `ts_ms` any more: an event that
    /// old would show in no window, and is `too_late`. (Older than the longest window always
    /// is; up to one bucket younger than that, the buckets decide.)
    pub fn too_late(&self, ts_ms: i64, now_ms: i64) -> bool {
        if ts_ms <= now_ms - self.longest_ms {
            return true;
        }
        if ts_ms > now_ms - self.longest_ms + self.widest_ms {
            return false;
        }
        self.specs.iter().all(|spec| {
            (ts_ms.div_euclid(spec.width_ms) + spec.buckets as i64) * spec.width_ms <= now_ms
        })
    }

    /// True when at `now_ms` no ring holds the bucket of `ts_ms` any more, its preceding
    /// window included: what a rebuild, which reads the events of preceding windows too,
    /// can skip.
    pub fn out_of_rings(&self, ts_ms: i64, now_ms: i64) -> bool {
        self.specs.iter().all(|spec| {
            (ts_ms.div_euclid(spec.width_ms) + spec.slots as i64) * spec.width_ms <= now_ms
        })
    }

    pub fn index_of(&self, label: &str) -> Option<usize> {
        self.specs.iter().position(|s| &*s.label == label)
    }

    /// Each window's length and the time its ring spans (one length, or two where the
    /// preceding window is kept): what checkpoints before format 5 saved. It does not tell
    /// bucket counts apart (60 buckets of 1 min and 120 of 30 s span the same hour); see
    /// [`RingLayout::infer`].
    pub fn geometry(&self) -> Vec<(i64, i64)> {
        self.specs
            .iter()
            .map(|s| (s.length_ms, s.width_ms * s.slots as i64))
            .collect()
    }

    /// The layout of every window's ring, saved with the rings so a restore under another
    /// configuration knows which of them it can keep.
    pub fn layout(&self) -> Vec<RingLayout> {
        self.specs
            .iter()
            .map(|s| RingLayout {
                length_ms: s.length_ms,
                width_ms: s.width_ms,
                slots: s.slots,
            })
            .collect()
    }

    /// The start of window `w` at `now_ms`: its oldest bucket's.
    pub fn start_ms(&self, w: usize, now_ms: i64) -> i64 {
        let spec = &self.specs[w];
        (now_ms.div_euclid(spec.width_ms) - spec.buckets as i64 + 1) * spec.width_ms
    }
}

/// How one window's ring was laid out: what a ring saved under one configuration needs to be
/// read under another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingLayout {
    pub length_ms: i64,
    pub width_ms: i64,
    /// Buckets kept: the window's, or twice that with its preceding window.
    pub slots: usize,
}

impl RingLayout {
    /// The layouts behind a geometry saved before format 5 (`(length, span)` per window),
    /// whose rings take `cells` cells in all: the bucket count is the largest divisor of each
    /// length up to the `windows.buckets` setting then in force, which the checkpoint did not
    /// record. `hint` (the setting now) is tried first, as the usual case is that it did not
    /// change; `None` when no setting up to 1,000 gives `cells`.
    pub fn infer(geometry: &[(i64, i64)], cells: usize, hint: u32) -> Option<Vec<RingLayout>> {
        let layout = |buckets: u32| -> Vec<RingLayout> {
            geometry
                .iter()
                .map(|&(length_ms, span_ms)| {
                    let n = bucket_count(length_ms, buckets);
                    let width_ms = length_ms / n as i64;
                    let slots = if span_ms > length_ms { 2 * n } else { n };
                    RingLayout {
                        length_ms,
                        width_ms,
                        slots,
                    }
                })
                .collect()
        };
        std::iter::once(hint)
            .chain(1..=1000)
            .map(layout)
            .find(|l| l.iter().map(|r| r.slots).sum::<usize>() == cells)
    }
}

/// What a bucket holds. Each event type has its own cell type so a key only pays for the
/// fields its events fill (see `aggregate`).
pub trait Cell: Copy + Default {
    /// A sum of many cells, wide enough never to saturate (a window's running total).
    type Total: Copy + Default + PartialEq + Eq + std::fmt::Debug;
    fn merge(&mut self, other: &Self);
    fn add_to_total(&self, total: &mut Self::Total);
    /// Takes back what `add_to_total` added.
    fn sub_from_total(&self, total: &mut Self::Total);
    /// `merge`, keeping `total` equal to the sum of the cells it counts even when the
    /// cell saturates.
    fn merge_counted(&mut self, other: &Self, total: &mut Self::Total) {
        self.sub_from_total(total);
        self.merge(other);
        self.add_to_total(total);
    }
    /// True when `merge(other)` would not saturate any field.
    fn fits(&self, other: &Self) -> bool;
    /// True when a cell holding at most `total` would take `other` without saturating: then
    /// no cell counted in `total` can overflow.
    fn fits_under(total: &Self::Total, other: &Self) -> bool;
}

impl Cell for u32 {
    type Total = u64;
    fn merge(&mut self, other: &u32) {
        *self = self.saturating_add(*other);
    }
    fn add_to_total(&self, total: &mut u64) {
        *total += u64::from(*self);
    }
    fn sub_from_total(&self, total: &mut u64) {
        *total -= u64::from(*self);
    }
    fn fits(&self, other: &u32) -> bool {
        self.checked_add(*other).is_some()
    }
    fn fits_under(total: &u64, other: &u32) -> bool {
        total.saturating_add(u64::from(*other)) <= u64::from(u32::MAX)
    }
}

impl Cell for u64 {
    type Total = u128;
    fn merge(&mut self, other: &u64) {
        *self = self.saturating_add(*other);
    }
    fn add_to_total(&self, total: &mut u128) {
        *total += u128::from(*self);
    }
    fn sub_from_total(&self, total: &mut u128) {
        *total -= u128::from(*self);
    }
    fn fits(&self, other: &u64) -> bool {
        self.checked_add(*other).is_some()
    }
    fn fits_under(total: &u128, other: &u64) -> bool {
        total.saturating_add(u128::from(*other)) <= u128::from(u64::MAX)
    }
}

/// Marks a ring that was never written.
const EMPTY: i64 = i64::MIN / 2;

/// Most windows a configuration may have. Checkpoints hold this many heads per series
/// whatever the configuration (the format predates `INLINE_HEADS`).
pub const MAX_WINDOWS: usize = 8;

/// Heads kept inside a series: as many as the default configuration has windows. A series of
/// a configuration with more keeps them in one allocation of their own. Eight inline heads
/// would leave five unused in every series with the default windows (their cost is in
/// docs/performance.md).
const INLINE_HEADS: usize = 3;

type Heads<C> = SmallVec<[Head<C>; INLINE_HEADS]>;

/// A window's newest bucket, its content, and the window's running total. The ring's cell
/// for the head bucket is not used while it is the newest: most events land in the newest
/// bucket, and keeping it here, next to the window's total and to the other windows' heads,
/// makes the common write touch one or two cache lines of the series instead of one per
/// window and one more per total.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
#[repr(C)]
struct Head<C: Cell> {
    bucket: i64,
    value: C,
    /// The sum of the `buckets` buckets ending with the head's: what a read at the head's
    /// time returns, so a scrape reads one number instead of walking the ring (walking every
    /// ring of every key was over half of a 10,000-key scrape). Derived from the rings, so
    /// not saved: [`Series::recompute_totals`] rebuilds it after a restore.
    #[serde(skip)]
    total: C::Total,
}

/// Equal when the stored buckets are (the totals are derived from them).
impl<C: Cell + PartialEq> PartialEq for Head<C> {
    fn eq(&self, other: &Self) -> bool {
        self.bucket == other.bucket && self.value == other.value
    }
}

impl<C: Cell> Head<C> {
    fn empty() -> Self {
        Head {
            bucket: EMPTY,
            value: C::default(),
            total: C::Total::default(),
        }
    }
}

/// Checkpoints hold `MAX_WINDOWS` heads, those past the configuration's windows empty.
fn save_heads<C: Cell + Serialize, S: Serializer>(
    heads: &Heads<C>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut tuple = s.serialize_tuple(MAX_WINDOWS)?;
    let empty = Head::empty();
    for head in heads
        .iter()
        .chain(std::iter::repeat(&empty))
        .take(MAX_WINDOWS)
    {
        tuple.serialize_element(head)?;
    }
    tuple.end()
}

/// Reads all `MAX_WINDOWS`; [`Series::recompute_totals`] keeps the configuration's.
fn load_heads<'de, C: Cell + Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Heads<C>, D::Error> {
    let heads = <[Head<C>; MAX_WINDOWS]>::deserialize(d)?;
    // Up to the last one written: with the default windows that stays inline, where all
    // eight would take an allocation per series of a restore (~100 MB at 100,000 keys).
    let written = heads
        .iter()
        .rposition(|h| h.bucket != EMPTY)
        .map_or(0, |i| i + 1);
    Ok(heads[..written].iter().copied().collect())
}

/// One ring of buckets per window, for one key and one kind of cell.
///
/// On a cache-line boundary, with the count of everything first and the heads inline next to
/// it (up to `INLINE_HEADS`), so that what every write touches shares the first lines of the
/// allocation; the ring, needed only when a write misses the heads, is a pointer away.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[repr(C, align(64))]
pub struct Series<C: Cell> {
    /// Everything ever added, whatever its age: the `*_total` counters. Saved by the owner
    /// (in the checkpoint format it has always had), not here.
    #[serde(skip)]
    all_time: C::Total,
    /// Per window: the newest bucket written (`⌊t / w⌋`), what it holds and the total.
    #[serde(serialize_with = "save_heads", deserialize_with = "load_heads")]
    heads: Heads<C>,
    /// Per window, `slots` cells; bucket `b` lives at `b mod slots` (but see `heads`).
    cells: Box<[C]>,
}

/// Equal when the stored buckets and counts are (the totals are derived from them).
impl<C: Cell + PartialEq> PartialEq for Series<C> {
    fn eq(&self, other: &Self) -> bool {
        // Heads past the windows are empty: a series read from a checkpoint has all
        // `MAX_WINDOWS` until its restore keeps the configuration's.
        let empty = Head::empty();
        let padded = std::iter::repeat(&empty);
        let ours = self.heads.iter().chain(padded.clone()).take(MAX_WINDOWS);
        let theirs = other.heads.iter().chain(padded).take(MAX_WINDOWS);
        self.all_time == other.all_time && self.cells == other.cells && ours.eq(theirs)
    }
}

impl<C: Cell + Eq> Eq for Series<C> {}

impl<C: Cell> Series<C> {
    pub fn new(windows: &Windows) -> Self {
        Self::with_cells(
            windows.len(),
            vec![C::default(); windows.cells].into_boxed_slice(),
        )
    }

    fn with_cells(windows: usize, cells: Box<[C]>) -> Self {
        Series {
            all_time: C::Total::default(),
            heads: smallvec::smallvec![Head::empty(); windows],
            cells,
        }
    }

    /// Cells in its rings (0 for a series without rings).
    pub fn cells(&self) -> usize {
        self.cells.len()
    }

    /// Everything ever added, whatever its age.
    pub fn all_time(&self) -> &C::Total {
        &self.all_time
    }

    /// Reads the head of each of the first `windows` windows, bucket and running total: the
    /// lines a read of those windows at the head's time needs (see `Store::snapshot_with`).
    /// What matters is the reading, not the value returned.
    pub fn touch_heads(&self, windows: usize) -> i64 {
        self.heads[..windows].iter().fold(0, |acc, head| {
            // A total can end on the line after its bucket's (an order head is 64 bytes).
            std::hint::black_box(head.total);
            acc.wrapping_add(head.bucket)
        })
    }

    /// Sets the count of everything ever added (restoring it from a checkpoint).
    pub fn set_all_time(&mut self, all_time: C::Total) {
        self.all_time = all_time;
    }

    /// A series without rings: it fits no geometry, so a restore gives it some (see
    /// [`Series::fits`]).
    pub fn without_rings() -> Self {
        Self::with_cells(0, Box::default())
    }

    /// The series under another configuration: for each window of `to`, the ring of the
    /// window of `from` with the same length and bucket width, if there is one, keeping its
    /// buckets from `keep_from[w]` on (as many as the new ring holds); every other window
    /// empty. The count of everything is kept. A series whose rings do not match `from`
    /// (saved without rings) gets empty ones.
    pub fn reshaped(&self, from: &[RingLayout], to: &Windows, keep_from: &[i64]) -> Self {
        let mut out = self.emptied(to);
        if self.cells.len() != from.iter().map(|l| l.slots).sum::<usize>() {
            return out;
        }
        let mut offset = 0;
        let old_rings: Vec<std::ops::Range<usize>> = from
            .iter()
            .map(|l| {
                offset += l.slots;
                offset - l.slots..offset
            })
            .collect();
        for (w, spec) in to.specs.iter().enumerate() {
            let Some(old) = from
                .iter()
                .position(|l| l.length_ms == spec.length_ms && l.width_ms == spec.width_ms)
            else {
                continue;
            };
            let Some(head) = self.heads.get(old).filter(|h| h.bucket != EMPTY) else {
                continue;
            };
            if head.bucket < keep_from[w] {
                continue;
            }
            let (old_ring, old_n) = (&self.cells[old_rings[old].clone()], from[old].slots as i64);
            let n = spec.slots as i64;
            let ring = &mut out.cells[spec.ring()];
            for b in (head.bucket - old_n + 1)
                .max(head.bucket - n + 1)
                .max(keep_from[w])..head.bucket
            {
                ring[b.rem_euclid(n) as usize] = old_ring[b.rem_euclid(old_n) as usize];
            }
            out.heads[w].bucket = head.bucket;
            out.heads[w].value = head.value;
        }
        out.recompute_totals(to);
        out
    }

    /// The same series with empty rings of `windows`' geometry: the count is kept.
    pub fn emptied(&self, windows: &Windows) -> Self {
        Series {
            all_time: self.all_time,
            ..Series::new(windows)
        }
    }

    /// Adds `value` to the count of everything and at time `ts_ms` to every window that still
    /// covers it at `now_ms`, and returns a mask with bit `w` set for each window `w` that no
    /// longer did (the event was too late for it).
    /// Callers clamp `ts_ms` to `now_ms` (future events count as arriving now).
    pub fn add(&mut self, windows: &Windows, ts_ms: i64, now_ms: i64, value: &C) -> u32 {
        value.add_to_total(&mut self.all_time);
        self.add_to_windows(windows, ts_ms, now_ms, value, None)
    }

    /// Adds `value` at `ts_ms` to each window `w` whose bucket for it lies below `below[w]`,
    /// and nothing to the count of everything: rebuilding windows from input already counted
    /// (see `aggregate::Rebuild`). `i64::MIN` leaves a window alone, `i64::MAX` takes all.
    pub fn add_below(
        &mut self,
        windows: &Windows,
        ts_ms: i64,
        now_ms: i64,
        value: &C,
        below: &[i64],
    ) {
        self.add_to_windows(windows, ts_ms, now_ms, value, Some(below));
    }

    // Inlined into both callers, so that `add`'s loop has no test of `below` left in it.
    #[inline(always)]
    fn add_to_windows(
        &mut self,
        windows: &Windows,
        ts_ms: i64,
        now_ms: i64,
        value: &C,
        below: Option<&[i64]>,
    ) -> u32 {
        let mut late = 0;
        // Sliced once: a restore gave the series a head per window (`recompute_totals`).
        let heads = &mut self.heads[..windows.specs.len()];
        for ((w, spec), head) in windows.specs.iter().enumerate().zip(heads) {
            let n = spec.slots as i64;
            let in_window = spec.buckets as i64;
            let bucket = ts_ms.div_euclid(spec.width_ms);
            if below.is_some_and(|below| bucket >= below[w]) {
                continue;
            }
            // Late when the window at `now_ms` starts after this bucket:
            // `bucket <= now / width - buckets`, without a division on the common path (a
            // head gone stale while its key was idle can still be hit by a late event).
            if (bucket + in_window) * spec.width_ms <= now_ms {
                late |= 1 << w;
            }
            if bucket == head.bucket {
                head.value.merge_counted(value, &mut head.total);
                continue;
            }
            let now_bucket = now_ms.div_euclid(spec.width_ms);
            if bucket <= now_bucket - n {
                continue; // already out of the ring
            }
            let ring = &mut self.cells[spec.ring()];
            let total = &mut head.total;
            if bucket > head.bucket {
                // The buckets the window moves past leave the total: all of it when it moves
                // a whole window, else those in (head - in_window, bucket - in_window], all
                // older than the head and so in the ring (read before recycling reuses
                // their slots).
                if bucket - head.bucket >= in_window {
                    *total = C::Total::default();
                } else {
                    for b in head.bucket - in_window + 1..=bucket - in_window {
                        ring[b.rem_euclid(n) as usize].sub_from_total(total);
                    }
                }
                // The head bucket is finished: store it, and recycle the buckets up to the
                // new head (whose own cell stays unused while it is the head).
                if bucket - head.bucket >= n {
                    ring.fill(C::default());
                } else {
                    ring[head.bucket.rem_euclid(n) as usize] = head.value;
                    for b in head.bucket + 1..=bucket {
                        ring[b.rem_euclid(n) as usize] = C::default();
                    }
                }
                value.add_to_total(total);
                head.bucket = bucket;
                head.value = *value;
            } else if bucket > head.bucket - in_window {
                ring[bucket.rem_euclid(n) as usize].merge_counted(value, total);
            } else if bucket > head.bucket - n {
                // Kept for the preceding window only: not in the total.
                ring[bucket.rem_euclid(n) as usize].merge(value);
            }
            // Else its slot was recycled for newer data (the clock went back): dropped.
        }
        late
    }

    /// True when adding `value` at `ts_ms` (as [`Series::add`] would, at `now_ms`) leaves
    /// every bucket it goes to unsaturated, so the windows keep agreeing with the count of
    /// everything. Cheap while the count of everything is below a cell's capacity (every
    /// bucket holds part of it): then nothing can overflow, and no bucket is looked at.
    pub fn has_room_for(&self, windows: &Windows, ts_ms: i64, now_ms: i64, value: &C) -> bool {
        if C::fits_under(&self.all_time, value) {
            return true;
        }
        windows
            .specs
            .iter()
            .zip(self.heads.iter())
            .all(|(spec, head)| {
                let bucket = ts_ms.div_euclid(spec.width_ms);
                let n = spec.slots as i64;
                if bucket == head.bucket {
                    head.value.fits(value)
                } else if bucket > head.bucket
                    || bucket <= now_ms.div_euclid(spec.width_ms) - n
                    || bucket <= head.bucket - n
                {
                    true // a fresh bucket, or one `add` drops
                } else {
                    self.cells[spec.ring()][bucket.rem_euclid(n) as usize].fits(value)
                }
            })
    }

    /// The sum of window `w` at `now_ms`, from the running total: the buckets the window
    /// has moved past since the head's time are taken off (none while events keep coming).
    pub fn window_total(&self, windows: &Windows, w: usize, now_ms: i64) -> C::Total {
        let spec = &windows.specs[w];
        let head = &self.heads[w];
        let in_window = spec.buckets as i64;
        let now_bucket = now_ms.div_euclid(spec.width_ms);
        if now_bucket - head.bucket >= in_window {
            return C::Total::default(); // everything held is older than the window
        }
        if now_bucket < head.bucket {
            // Read at a time before the newest write (a clock behind the consumer's).
            let mut total = C::Total::default();
            self.for_each_in_window(windows, w, now_ms, |c| c.add_to_total(&mut total));
            return total;
        }
        let mut total = head.total;
        let (ring, n) = (&self.cells[spec.ring()], spec.slots as i64);
        for b in head.bucket - in_window + 1..=now_bucket - in_window {
            ring[b.rem_euclid(n) as usize].sub_from_total(&mut total);
        }
        total
    }

    /// True when the rings have the layout of `windows` (a restored series may not: see
    /// [`Windows::geometry`]). One `windows.buckets` setting moves every window's bucket
    /// count the same way, so a changed count changes the total.
    pub fn fits(&self, windows: &Windows) -> bool {
        self.cells.len() == windows.cells
    }

    /// Rebuilds the running totals from the rings (after a restore), keeping a head per
    /// window of `windows` (a checkpoint holds `MAX_WINDOWS`, the ones past the
    /// configuration's windows never written).
    pub fn recompute_totals(&mut self, windows: &Windows) {
        self.heads.resize(windows.len(), Head::empty());
        self.heads.shrink_to_fit();
        for w in 0..windows.specs.len() {
            let mut total = C::Total::default();
            let head = self.heads[w].bucket;
            if head != EMPTY {
                self.for_each_between(windows, w, head, |c| c.add_to_total(&mut total));
            }
            self.heads[w].total = total;
        }
    }

    /// Applies `f` to every bucket of window `w` that is inside the window at `now_ms`.
    pub fn for_each_in_window(&self, windows: &Windows, w: usize, now_ms: i64, f: impl FnMut(&C)) {
        let now_bucket = now_ms.div_euclid(windows.specs[w].width_ms);
        self.for_each_between(windows, w, now_bucket, f);
    }

    /// Applies `f` to every bucket of the window of the same length that precedes window `w`
    /// at `now_ms`. Only for windows kept with their predecessor.
    pub fn for_each_in_previous(
        &self,
        windows: &Windows,
        w: usize,
        now_ms: i64,
        f: impl FnMut(&C),
    ) {
        let spec = &windows.specs[w];
        debug_assert!(spec.has_previous());
        let now_bucket = now_ms.div_euclid(spec.width_ms);
        self.for_each_between(windows, w, now_bucket - spec.buckets as i64, f);
    }

    /// The `buckets` buckets of window `w` ending with bucket `last`, as far as the ring holds them.
    fn for_each_between(&self, windows: &Windows, w: usize, last: i64, mut f: impl FnMut(&C)) {
        let spec = &windows.specs[w];
        let (n, slots) = (spec.buckets as i64, spec.slots as i64);
        let head = &self.heads[w];
        let lo = (last - n + 1).max(head.bucket - slots + 1);
        let hi = last.min(head.bucket);
        if lo > hi {
            return;
        }
        // Buckets lo..=hi, the head (always the newest) from its own slot. A scrape reads
        // every bucket of every key: walk the ring as at most two slices, with one division
        // per call instead of one per bucket (which made up most of a 10k-key snapshot).
        let ring = &self.cells[spec.ring()];
        let with_head = hi == head.bucket;
        let count = (hi - lo + 1 - i64::from(with_head)) as usize;
        let start = lo.rem_euclid(slots) as usize;
        let first = count.min(ring.len() - start);
        ring[start..start + first].iter().for_each(&mut f);
        ring[..count - first].iter().for_each(&mut f);
        if with_head {
            f(&head.value);
        }
    }

    /// The sum of window `w` at `now_ms`.
    pub fn sum(&self, windows: &Windows, w: usize, now_ms: i64) -> C {
        let mut total = C::default();
        self.for_each_in_window(windows, w, now_ms, |c| total.merge(c));
        total
    }

    /// True when no window holds anything at `now_ms`: the series can be dropped.
    pub fn is_idle(&self, windows: &Windows, now_ms: i64) -> bool {
        debug_assert_eq!(
            self.heads.len(),
            windows.len(),
            "a series of another geometry"
        );
        windows
            .specs
            .iter()
            .zip(self.heads.iter())
            .all(|(spec, head)| head.bucket <= now_ms.div_euclid(spec.width_ms) - spec.slots as i64)
    }

    /// Bytes held (the series itself is boxed by its owner), for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        let spilled = if self.heads.spilled() {
            self.heads.capacity() * std::mem::size_of::<Head<C>>()
        } else {
            0
        };
        std::mem::size_of_val(self) + std::mem::size_of_val(&*self.cells) + spilled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: i64 = 1000;
    const M: i64 = 60 * S;
    const H: i64 = 60 * M;
    /// An arbitrary, bucket-aligned "now" far from zero.
    const T0: i64 = 1_763_798_400_000;

    fn windows() -> Windows {
        Windows::from_labels(&["5m", "1h", "24h"], 60)
    }

    fn sums(s: &Series<u64>, w: &Windows, now: i64) -> Vec<u64> {
        (0..w.len()).map(|i| s.sum(w, i, now)).collect()
    }

    /// A ring under another configuration: kept whole where its window is unchanged, its
    /// newest buckets where the new ring is shorter, its current window where the new ring
    /// also holds the preceding one; other windows empty; the count of everything kept.
    #[test]
    fn a_series_reshaped_keeps_what_the_new_rings_can_hold() {
        let old = Windows::with_previous(&["5m", "1h"], 60, &["5m"]);
        let mut s = Series::<u64>::new(&old);
        for i in 0..300 {
            s.add(&old, T0 - i * 20 * S, T0, &1);
        }
        let new = Windows::with_previous(&["1h", "5m", "2h"], 60, &["1h"]);
        let keep = [new.start_ms(0, T0) / M, i64::MIN, i64::MAX];
        let r = s.reshaped(&old.layout(), &new, &keep);
        assert_eq!(r.all_time, s.all_time);
        // 1h: its current window, nothing of the hour before (to be rebuilt).
        assert_eq!(r.sum(&new, 0, T0), s.sum(&old, 1, T0));
        assert_eq!(r.sum(&new, 0, T0), 178);
        let mut before = 0;
        r.for_each_in_previous(&new, 0, T0, |c| before += c);
        assert_eq!(before, 0);
        // 5m: kept, without its preceding five minutes now.
        assert_eq!(r.sum(&new, 1, T0), s.sum(&old, 0, T0));
        assert_eq!(r.sum(&new, 1, T0), 15);
        // 2h: new, empty.
        assert_eq!(r.sum(&new, 2, T0), 0);
        // And it goes on counting, totals included.
        let mut r = r;
        r.add(&new, T0 + S, T0 + S, &1);
        assert_eq!(r.window_total(&new, 1, T0 + S), 16);
        assert_eq!(r.window_total(&new, 0, T0 + S), 179);
    }

    /// Checkpoints before format 5 saved (length, span) per window: the bucket counts are
    /// found back from the rings' size, the setting in force tried first.
    #[test]
    fn old_layouts_are_inferred_from_the_ring_size() {
        for (labels, buckets) in [
            (&["5m", "1h", "24h"][..], 60),
            (&["5m", "1h"][..], 30),
            (&["7s", "1h"][..], 120),
        ] {
            let w = Windows::with_previous(labels, buckets, &["1h"]);
            let cells = w.layout().iter().map(|l| l.slots).sum();
            assert_eq!(
                RingLayout::infer(&w.geometry(), cells, 60),
                Some(w.layout()),
                "{labels:?} {buckets}"
            );
        }
        assert_eq!(RingLayout::infer(&[(60_000, 60_000)], 1_001, 60), None);
    }

    #[test]
    fn geometry_of_the_default_windows() {
        let w = windows();
        let widths: Vec<i64> = w.specs().iter().map(|s| s.width_ms).collect();
        assert_eq!(widths, [5 * S, M, 24 * M]);
        assert_eq!(w.longest_ms(), 24 * H);
        assert_eq!(w.index_of("1h"), Some(1));
        assert_eq!(w.index_of("2h"), None);
        // Lengths not divisible into 60 take the largest bucket count that divides them, so
        // the ring spans exactly the window.
        let odd = Windows::from_labels(&["7s", "10s", "1009ms"], 60);
        let geometry: Vec<(i64, usize)> = odd
            .specs()
            .iter()
            .map(|s| (s.width_ms, s.buckets))
            .collect();
        assert_eq!(geometry, [(125, 56), (200, 50), (1009, 1)]);
        for s in odd.specs() {
            assert_eq!(s.width_ms * s.buckets as i64, s.length_ms);
        }
    }

    #[test]
    fn an_event_lands_in_every_window_that_covers_it() {
        let w = windows();
        let mut s = Series::<u64>::new(&w);
        s.add(&w, T0, T0, &1);
        s.add(&w, T0 - 2 * M, T0, &10);
        s.add(&w, T0 - 30 * M, T0, &100);
        s.add(&w, T0 - 5 * H, T0, &1000);
        assert_eq!(sums(&s, &w, T0), [11, 111, 1111]);
    }

    /// Saved and read back as a checkpoint does (eight heads on the wire), then restored
    /// under `w`.
    fn restored(s: &Series<u64>, w: &Windows) -> Series<u64> {
        let bytes = postcard::to_allocvec(s).unwrap();
        let mut back: Series<u64> = postcard::from_bytes(&bytes).unwrap();
        back.set_all_time(*s.all_time());
        back.recompute_totals(w);
        back
    }

    #[test]
    fn the_default_windows_heads_live_in_the_series() {
        let w = windows();
        let mut s = Series::<u64>::new(&w);
        s.add(&w, T0 - 2 * M, T0, &10);
        s.add(&w, T0, T0, &1);
        assert!(!s.heads.spilled());
        // Read back, before the restore, it holds the heads written, not all eight.
        let bytes = postcard::to_allocvec(&s).unwrap();
        let decoded: Series<u64> = postcard::from_bytes(&bytes).unwrap();
        assert!(!decoded.heads.spilled());
        let back = restored(&s, &w);
        assert!(!back.heads.spilled());
        assert_eq!(back.heads.len(), 3);
        assert_eq!(back, s);
        assert_eq!(sums(&back, &w, T0), [11, 11, 11]);
        for i in 0..3 {
            assert_eq!(
                back.window_total(&w, i, T0 + 4 * M),
                s.window_total(&w, i, T0 + 4 * M)
            );
        }
        assert_eq!(back.window_total(&w, 0, T0 + 4 * M), 1);
    }

    /// More windows than a series holds inline: their heads go to an allocation of their
    /// own, which the memory accounting counts, and every window still counts and restores.
    #[test]
    fn more_windows_than_fit_inline_count_and_restore_the_same() {
        let w = Windows::from_labels(&["1m", "5m", "15m", "1h", "6h", "24h"], 60);
        let mut s = Series::<u64>::new(&w);
        s.add(&w, T0, T0, &1);
        s.add(&w, T0 - 2 * M, T0, &10);
        s.add(&w, T0 - 30 * M, T0, &100);
        s.add(&w, T0 - 5 * H, T0, &1000);
        s.add(&w, T0 - 20 * H, T0, &10_000);
        let expected = [1, 11, 11, 111, 1111, 11_111];
        assert_eq!(sums(&s, &w, T0), expected);
        let totals: Vec<u128> = (0..w.len()).map(|i| s.window_total(&w, i, T0)).collect();
        assert_eq!(totals, expected.map(u128::from));
        assert!(s.heads.spilled());
        let cells = std::mem::size_of::<u64>() * w.cells;
        assert!(s.heap_bytes() >= std::mem::size_of::<Series<u64>>() + cells + 6 * 32);
        let back = restored(&s, &w);
        assert_eq!(back, s);
        assert_eq!(sums(&back, &w, T0), expected);
        let back_totals: Vec<u128> = (0..w.len()).map(|i| back.window_total(&w, i, T0)).collect();
        assert_eq!(back_totals, totals);
    }

    #[test]
    fn values_decay_as_time_passes_without_traffic() {
        let w = windows();
        let mut s = Series::<u64>::new(&w);
        s.add(&w, T0, T0, &7);
        assert_eq!(sums(&s, &w, T0 + 4 * M), [7, 7, 7]);
        assert_eq!(sums(&s, &w, T0 + 5 * M), [0, 7, 7]);
        assert_eq!(sums(&s, &w, T0 + H), [0, 0, 7]);
        assert_eq!(sums(&s, &w, T0 + 24 * H), [0, 0, 0]);
        assert!(s.is_idle(&w, T0 + 24 * H));
        assert!(!s.is_idle(&w, T0 + 23 * H));
    }

    #[test]
    fn the_trailing_edge_is_exact_to_one_bucket() {
        let w = Windows::from_labels(&["5m"], 60);
        let mut s = Series::<u64>::new(&w);
        s.add(&w, T0, T0, &1);
        // Still counted at the end of the bucket that is 4m55s later ...
        assert_eq!(s.sum(&w, 0, T0 + 5 * M - 1), 1);
        // ... and gone at exactly 5m, never later.
        assert_eq!(s.sum(&w, 0, T0 + 5 * M), 0);
        // An event in the last millisecond of a bucket leaves when that bucket does:
        // after between L - w and L.
        let mut late = Series::<u64>::new(&w);
        late.add(&w, T0 + 5 * S - 1, T0 + 5 * S - 1, &1);
        assert_eq!(late.sum(&w, 0, T0 + 5 * M - 1), 1);
        assert_eq!(late.sum(&w, 0, T0 + 5 * M), 0);
    }

    #[test]
    fn late_and_out_of_order_events_land_in_their_bucket() {
        let w = windows();
        let mut s = Series::<u64>::new(&w);
        // Newest first, then older ones: each must be placed by its own time.
        s.add(&w, T0, T0, &1);
        s.add(&w, T0 - 50 * M, T0, &2);
        s.add(&w, T0 - 4 * M, T0, &4);
        s.add(&w, T0 - 6 * M, T0, &8);
        assert_eq!(sums(&s, &w, T0), [5, 15, 15]);
        // Ten minutes on, the 50-minute-old event has left the hour (its bucket is the 61st).
        assert_eq!(sums(&s, &w, T0 + 10 * M), [0, 13, 15]);
        assert_eq!(sums(&s, &w, T0 + 55 * M), [0, 5, 15]);
    }

    /// An event for the bucket a stale head still holds (its key was idle for longer than
    /// the window) is late for that window like any other event that old.
    #[test]
    fn a_late_event_into_a_stale_head_is_reported_late() {
        let w = windows();
        let mut s = Series::<u64>::new(&w);
        assert_eq!(s.add(&w, T0, T0, &1), 0);
        // Ten minutes later, an event from T0: late for 5m, in time for 1h and 24h.
        assert_eq!(s.add(&w, T0, T0 + 10 * M, &1), 0b001);
        assert_eq!(sums(&s, &w, T0 + 10 * M), [0, 2, 2]);
        // The edge: T0 starts a bucket, which leaves the 5m window when `now` reaches T0 + 5m.
        let mut edge = Series::<u64>::new(&w);
        edge.add(&w, T0, T0, &1);
        assert_eq!(edge.add(&w, T0, T0 + 5 * M - 1, &1), 0);
        assert_eq!(edge.add(&w, T0, T0 + 5 * M, &1), 0b001);
    }

    #[test]
    fn events_older_than_a_window_do_not_disturb_it() {
        let w = windows();
        let mut s = Series::<u64>::new(&w);
        s.add(&w, T0, T0, &1);
        // Two hours old: only the 24h window takes it; the short rings are untouched.
        s.add(&w, T0 - 2 * H, T0, &5);
        assert_eq!(sums(&s, &w, T0), [1, 1, 6]);
    }

    #[test]
    fn a_long_gap_recycles_the_whole_ring() {
        let w = windows();
        let mut s = Series::<u64>::new(&w);
        s.add(&w, T0, T0, &3);
        let later = T0 + 3 * 24 * H;
        s.add(&w, later, later, &4);
        assert_eq!(sums(&s, &w, later), [4, 4, 4]);
    }

    #[test]
    fn a_clock_that_goes_back_keeps_newer_data() {
        let w = Windows::from_labels(&["5m"], 60);
        let mut s = Series::<u64>::new(&w);
        s.add(&w, T0, T0, &1);
        // Read and written as if the clock were 10 minutes behind.
        assert_eq!(s.sum(&w, 0, T0 - 10 * M), 0);
        s.add(&w, T0 - 10 * M, T0 - 10 * M, &2);
        assert_eq!(s.sum(&w, 0, T0), 1);
    }

    #[test]
    fn the_preceding_window_is_kept_where_asked() {
        let w = Windows::with_previous(&["5m", "1h"], 60, &["1h"]);
        assert!(!w.specs()[0].has_previous());
        assert!(w.specs()[1].has_previous());
        let mut s = Series::<u64>::new(&w);
        s.add(&w, T0 - 90 * M, T0, &3); // in the previous hour only
        s.add(&w, T0 - 30 * M, T0, &5); // in this hour
        s.add(&w, T0 - 150 * M, T0, &100); // older than both
        let mut previous = 0;
        s.for_each_in_previous(&w, 1, T0, |c| previous += c);
        assert_eq!((s.sum(&w, 1, T0), previous), (5, 3));
        // An hour later, this hour has become the previous one.
        let mut previous = 0;
        s.for_each_in_previous(&w, 1, T0 + H, |c| previous += c);
        assert_eq!((s.sum(&w, 1, T0 + H), previous), (0, 5));
        // The late mask still speaks of the window itself, not the ring.
        let mut t = Series::<u64>::new(&w);
        assert_eq!(t.add(&w, T0 - 90 * M, T0, &1), 0b11);
        assert!(!t.is_idle(&w, T0));
        assert!(t.is_idle(&w, T0 + 31 * M));
    }

    #[test]
    fn saturating_cells_never_wrap() {
        let mut c = u32::MAX - 1;
        c.merge(&5);
        assert_eq!(c, u32::MAX);
    }

    proptest! {
        /// Whatever the order of events and reads, a window's sum equals the naive sum of the
        /// events whose bucket is among the window's `n` newest at read time.
        #[test]
        fn matches_a_naive_reference(
            events in proptest::collection::vec((0i64..3 * H, 1u64..1000), 0..200),
            reads in proptest::collection::vec(0i64..4 * H, 1..20),
        ) {
            let w = Windows::from_labels(&["5m", "1h", "90m"], 60);
            let mut s = Series::<u64>::new(&w);
            let mut reads = reads;
            reads.sort();
            let mut applied: Vec<(i64, i64, u64)> = Vec::new(); // (ts, arrival, value)
            let mut events = events.into_iter().peekable();
            // Interleave: events arrive at increasing "now" with arbitrary (past) timestamps.
            let mut now = 0;
            for read in reads {
                while let Some(&(age, value)) = events.peek() {
                    if now >= read { break; }
                    now += 7 * S;
                    let ts = (now - age).max(0);
                    s.add(&w, T0 + ts, T0 + now, &value);
                    applied.push((ts, now, value));
                    events.next();
                }
                let at = now.max(read);
                for (i, spec) in w.specs().iter().enumerate() {
                    let n = spec.buckets as i64;
                    let now_bucket = (T0 + at).div_euclid(spec.width_ms);
                    let expected: u64 = applied.iter()
                        .filter(|(ts, arrival, _)| {
                            let b = (T0 + ts).div_euclid(spec.width_ms);
                            // Counted if it was still inside the window when it arrived ...
                            b > (T0 + arrival).div_euclid(spec.width_ms) - n
                            // ... and still is.
                                && b > now_bucket - n && b <= now_bucket
                        })
                        .map(|(_, _, v)| v)
                        .sum();
                    prop_assert_eq!(s.sum(&w, i, T0 + at), expected, "window {}", spec.label);
                    prop_assert_eq!(s.window_total(&w, i, T0 + at), u128::from(expected));
                }
                now = at;
            }
            // Totals rebuilt from the rings (as after a restore) read the same.
            let mut rebuilt = s.clone();
            for head in &mut rebuilt.heads {
                head.total = Default::default();
            }
            rebuilt.recompute_totals(&w);
            for (r, h) in rebuilt.heads.iter().zip(&s.heads) {
                prop_assert_eq!(r.total, h.total);
            }
        }

        /// The running total always equals a walk of the ring, whatever the clock does:
        /// events far in the past or future of each other, reads before the newest write,
        /// windows kept with their predecessor, cells that saturate.
        #[test]
        fn running_totals_equal_a_walk_of_the_ring(
            ops in proptest::collection::vec((0i64..6 * H, 0i64..6 * H, any::<bool>()), 1..300),
        ) {
            let w = Windows::with_previous(&["5m", "1h", "90m"], 60, &["1h"]);
            let mut s = Series::<u32>::new(&w);
            for (ts, now, big) in ops {
                let value = if big { u32::MAX / 3 } else { 1 };
                s.add(&w, T0 + ts.min(now), T0 + now, &value);
                for read in [now, now - 7 * S, now + 11 * S, now + 3 * H] {
                    for i in 0..w.len() {
                        let mut walked = 0u64;
                        s.for_each_in_window(&w, i, T0 + read, |c| walked += u64::from(*c));
                        prop_assert_eq!(s.window_total(&w, i, T0 + read), walked);
                    }
                }
            }
        }
    }
}
