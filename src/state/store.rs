//! The partitions this instance owns, shared between the consumer and its readers, and the
//! snapshots readers take of them.

use std::collections::BTreeMap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use compact_str::CompactString;
use parking_lot::RwLock;

use crate::pure::key::Key;
use crate::pure::key_state::*;
use crate::pure::kpi::Sums;
use crate::pure::partition::*;
use crate::pure::rebuild::{self, COMPLETE, CoveredFrom};
use crate::pure::window::Windows;

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
        // partition compares strings all the way down, a large share of a big scrape
        // (figures in docs/performance.md).
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
                // allocations, cold in a large store) in turn: most of the time spent reading
                // windows went there (docs/performance.md). So the heads of a few keys' series
                // are read first, in a loop short enough for the core to have all those misses
                // in flight at once, and the keys are then summed from the cache. (The prefetch
                // intrinsic needs `unsafe`, which this crate forbids; plain loads whose results
                // are kept do the same job here.)
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
        // yielding the CPU: with both cores busy, scrapes made while ingesting lost
        // milliseconds there (docs/performance.md). One still taken after that means its
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
/// steps down where it is exported (see `read::metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionCounters {
    pub tp: TopicPartition,
    /// Each key's counters and the event types it has counted.
    pub keys: Vec<(Key, Sums, EventTypes)>,
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
