//! Remembers event ids for a horizon of event time, in bounded memory.
//!
//! At-least-once delivery and producer retries both re-send events; an id seen again within the
//! horizon is a duplicate and must not be counted twice. Ids are kept as 56-bit hashes (with a
//! million ids held, a new event is mistaken for a duplicate with probability 1.4·10⁻¹¹), each
//! packed into one `u64` with the low 8 bits of a coarse generation of its event time
//! (`horizon / 4`): 8 bytes per entry plus hashbrown's control byte, half what a
//! `HashMap<u64, u32>` takes, which matters because this table is most of the service's memory
//! at high event rates. Live generations never span more than five, so 8 bits name them
//! unambiguously relative to the newest. When the newest generation advances, ids more than a
//! horizon older are swept in one pass, so lookups stay a single hash probe. Working in event
//! time, not arrival time, makes the outcome depend only on the events, not on when they were
//! read.
//!
//! Memory is capped at `max_ids`: past it, the oldest generation is forgotten early and
//! counted as evictions, which shrinks the effective horizon instead of growing without bound.
//! A table left mostly empty by a sweep (a burst that has passed) is shrunk, so resident memory
//! follows the ids actually held rather than the largest burst ever seen.

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Generations per horizon: the sweep granularity.
const GENERATIONS: u32 = 4;
/// Generations are at least a second long, so their numbers fit in `u32` until 2106.
const MIN_GENERATION_MS: i64 = 1000;
/// Bits of an entry that hold the generation.
const GEN_BITS: u32 = 8;
const GEN_MASK: u64 = (1 << GEN_BITS) - 1;

/// An id hash and its generation in one word: id bits above, generation bits below.
fn pack(id: u64, generation: u32) -> u64 {
    (id << GEN_BITS) | (u64::from(generation) & GEN_MASK)
}

/// The part of an entry that identifies the id.
fn id_bits(entry: u64) -> u64 {
    entry >> GEN_BITS
}

/// Where an entry lives in the table: the id bits, spread over all 64 bits because hashbrown
/// takes the bucket from the low bits and its tag from the top ones.
fn slot(entry: u64) -> u64 {
    id_bits(entry).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dedup {
    /// Packed (id hash, generation) entries.
    #[serde(serialize_with = "save_entries", deserialize_with = "load_entries")]
    seen: HashTable<u64>,
    generation_ms: i64,
    max_ids: usize,
    /// Newest generation seen.
    newest: u32,
    /// Entries older than this generation are expired (swept, or about to be).
    oldest_kept: u32,
    evicted: u64,
}

impl Dedup {
    pub fn new(horizon_ms: i64, max_ids: usize) -> Self {
        Dedup {
            seen: HashTable::new(),
            generation_ms: (horizon_ms / GENERATIONS as i64).max(MIN_GENERATION_MS),
            max_ids: max_ids.max(1),
            newest: 0,
            oldest_kept: 0,
            evicted: 0,
        }
    }

    fn generation(&self, ts_ms: i64) -> u32 {
        u32::try_from(ts_ms.max(0) / self.generation_ms).unwrap_or(u32::MAX)
    }

    /// The full generation of an entry, given that every live entry lies within 255
    /// generations at or below `newest`.
    fn generation_of(newest: u32, entry: u64) -> u32 {
        let behind = (newest as u64).wrapping_sub(entry) & GEN_MASK;
        newest.saturating_sub(behind as u32)
    }

    /// Records `id` at event time `ts_ms`. Returns false if it was already seen (a duplicate).
    pub fn insert(&mut self, id: u64, ts_ms: i64) -> bool {
        let generation = self.generation(ts_ms);
        if generation > self.newest {
            let cutoff = generation.saturating_sub(GENERATIONS);
            if cutoff > self.oldest_kept {
                // Decode against the old newest: every entry lies at or below it.
                self.sweep(cutoff);
            }
            self.newest = generation;
        }
        let generation = generation.max(self.oldest_kept);
        let probe = pack(id, 0);
        let (newest, oldest_kept) = (self.newest, self.oldest_kept);
        let same_id = |e: &u64| id_bits(*e) == id_bits(probe);
        // At the cap, room is made before a new id goes in (`entry` would first grow the
        // table, doubling it exactly when memory is to be bounded).
        if self.seen.len() >= self.max_ids && self.seen.find(slot(probe), same_id).is_none() {
            self.make_room();
        }
        // One probe finds the id or the slot a new one goes to (most ids are new).
        match self.seen.entry(slot(probe), same_id, |e| slot(*e)) {
            Entry::Occupied(e) if Self::generation_of(newest, *e.get()) >= oldest_kept => false,
            // Expired but not yet swept: new again.
            Entry::Occupied(mut e) => {
                *e.get_mut() = pack(id, generation);
                true
            }
            Entry::Vacant(v) => {
                v.insert(pack(id, generation));
                true
            }
        }
    }

    /// Drops entries older than generation `keep`, and gives back memory a burst left behind.
    fn sweep(&mut self, keep: u32) {
        self.oldest_kept = keep;
        let newest = self.newest;
        // Ids only accumulate between sweeps: the count now is the peak of the last period.
        let peak = self.seen.len();
        self.seen
            .retain(|e| Self::generation_of(newest, *e) >= keep);
        let (len, capacity) = (self.seen.len(), self.seen.capacity());
        if len < capacity / 8 {
            // A burst has passed: give its memory back. (Below an eighth only: the headroom
            // taken below can leave a steady table a fifth full.)
            self.seen.shrink_to(len * 2, |e| slot(*e));
        } else if capacity < peak * 9 / 4 {
            // Erasing leaves tombstones that use up the table's free slots; when they run
            // out, hashbrown rehashes in place if at most half the capacity is live (with a margin: a period brings a few more ids than the last), and
            // otherwise doubles the table: for a steady stream, hours later (measured: from
            // 15 to 30 MiB between 5 M and 20 M events). Taking that headroom now, while the
            // stream is young, gives the table its final size early; after that a steady
            // stream never reallocates and resident memory stays flat.
            self.seen.reserve(peak * 9 / 4 - len, |e| slot(*e));
        }
    }

    /// Forgets the oldest generation still held (or everything, if only one is left).
    fn make_room(&mut self) {
        let before = self.seen.len();
        let newest = self.newest;
        let oldest = self
            .seen
            .iter()
            .map(|e| Self::generation_of(newest, *e))
            .min()
            .unwrap_or(newest);
        if oldest < newest {
            self.sweep(oldest + 1);
        } else {
            self.seen.clear();
        }
        self.evicted += (before - self.seen.len()) as u64;
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Bytes the table holds (entries and control bytes), for memory accounting.
    pub fn table_bytes(&self) -> usize {
        let buckets = if self.seen.capacity() == 0 {
            0
        } else {
            (self.seen.capacity() * 8 / 7).next_power_of_two()
        };
        buckets * (std::mem::size_of::<u64>() + 1)
    }

    /// Ids forgotten early because of `max_ids`, since creation.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Applies a (possibly changed) configuration to restored memory.
    pub fn reconfigure(&mut self, horizon_ms: i64, max_ids: usize) {
        let fresh = Dedup::new(horizon_ms, max_ids);
        if fresh.generation_ms != self.generation_ms {
            // Generations are not comparable across widths: start the memory over.
            *self = fresh;
        } else {
            self.max_ids = fresh.max_ids;
        }
    }
}

/// Checkpoints hold the packed entries as a plain sequence.
fn save_entries<S: Serializer>(table: &HashTable<u64>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(table.iter())
}

fn load_entries<'de, D: Deserializer<'de>>(d: D) -> Result<HashTable<u64>, D::Error> {
    let entries = Vec::<u64>::deserialize(d)?;
    let mut table = HashTable::with_capacity(entries.len());
    for e in entries {
        table.insert_unique(slot(e), e, |e| slot(*e));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const T0: i64 = 1_763_798_400_000;

    #[test]
    fn a_repeated_id_is_a_duplicate() {
        let mut d = Dedup::new(15 * MIN, 1000);
        assert!(d.insert(1, T0));
        assert!(!d.insert(1, T0));
        assert!(!d.insert(1, T0 + 5 * MIN));
        assert!(d.insert(2, T0));
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn ids_are_remembered_for_at_least_the_horizon() {
        let mut d = Dedup::new(15 * MIN, 1000);
        assert!(d.insert(1, T0));
        // Newer traffic moves event time on; the id is still known 15 minutes later.
        assert!(d.insert(2, T0 + 15 * MIN));
        assert!(!d.insert(1, T0));
        // Well past the horizon plus one generation, it has been swept.
        assert!(d.insert(3, T0 + 21 * MIN));
        assert!(d.insert(1, T0));
    }

    #[test]
    fn out_of_order_arrivals_are_still_recognised() {
        let mut d = Dedup::new(15 * MIN, 1000);
        assert!(d.insert(7, T0 - 10 * MIN));
        assert!(d.insert(8, T0));
        assert!(!d.insert(7, T0 - 10 * MIN));
    }

    #[test]
    fn memory_is_bounded_and_evictions_counted() {
        let mut d = Dedup::new(15 * MIN, 1000);
        for i in 0..5000u64 {
            // 50 ids per second of event time: 5000 ids span 100 s.
            d.insert(i, T0 + (i as i64) * 20);
            assert!(d.len() <= 1000);
        }
        assert!(d.evicted() >= 4000, "evicted {}", d.evicted());
        // The most recent ids are still known.
        assert!(!d.insert(4999, T0 + 4999 * 20));
    }

    /// At the cap, with several generations held (so room is made by sweeps, which leave
    /// tombstones), the table keeps the size the cap needs: 1,000 ids and the headroom for
    /// tombstones (`sweep`) fit 4,096 buckets.
    #[test]
    fn a_table_at_its_cap_does_not_grow() {
        let mut d = Dedup::new(15 * MIN, 1000);
        for i in 0..20_000u64 {
            // Two ids per second of event time: 450 per generation, so the cap is reached
            // with three generations live.
            d.insert(i, T0 + (i as i64) * 500);
            assert!(d.len() <= 1000);
            assert!(
                d.table_bytes() <= 4096 * 9,
                "{} bytes at {i}",
                d.table_bytes()
            );
        }
        assert!(d.evicted() > 0);
    }

    #[test]
    fn the_newest_generation_alone_over_the_cap_is_cleared_not_grown() {
        let mut d = Dedup::new(15 * MIN, 1000);
        for i in 0..3000u64 {
            d.insert(i, T0);
        }
        assert!(d.len() <= 1000);
        assert_eq!(d.evicted() + d.len() as u64, 3000);
    }

    #[test]
    fn generations_are_told_apart_across_the_8_bit_wrap() {
        let generation = 15 * MIN / 4;
        // Generation numbers around a multiple of 256, where the packed bits wrap.
        let base = 255 * generation;
        let mut d = Dedup::new(15 * MIN, 1000);
        for step in 0..12i64 {
            let ts = base + step * generation;
            assert!(d.insert(100 + step as u64, ts), "step {step}");
            // The ids of the last horizon are known, older ones were swept.
            for back in 0..=step {
                let known = !d.insert(
                    100 + (step - back) as u64,
                    base + (step - back) * generation,
                );
                assert_eq!(known, back <= 4, "step {step}, {back} generations back");
            }
        }
    }

    #[test]
    fn a_passed_burst_gives_its_memory_back() {
        let mut d = Dedup::new(15 * MIN, 1_000_000);
        for i in 0..200_000u64 {
            d.insert(i, T0);
        }
        let burst = d.table_bytes();
        // Quiet traffic for two horizons: the burst's ids are swept and the table shrinks.
        for i in 0..100u64 {
            d.insert(1_000_000 + i, T0 + 30 * MIN + i as i64 * 1000);
        }
        assert!(
            d.table_bytes() * 100 < burst,
            "{} of {burst}",
            d.table_bytes()
        );
    }

    #[test]
    fn a_steady_stream_settles_its_table_size_within_the_first_horizon() {
        // 100 ids per second of event time for eight hours: tombstones left by the sweeps
        // must not make the table double later on.
        let mut d = Dedup::new(15 * MIN, 1_000_000);
        let mut sizes = Vec::new();
        for i in 0..8 * 3600 * 100u64 {
            let id = xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
            // Every id is new: none may be taken for a duplicate, whatever the sweeps did.
            assert!(
                d.insert(id, T0 + i as i64 * 10),
                "id {i} taken for a duplicate"
            );
            if i % (60 * 100) == 0 {
                sizes.push(d.table_bytes());
            }
        }
        let settled = sizes[20];
        assert!(
            sizes[20..].iter().all(|&s| s == settled),
            "table bytes per minute: {sizes:?}"
        );
    }

    #[test]
    fn a_checkpointed_table_reads_back_the_same() {
        let mut d = Dedup::new(15 * MIN, 1000);
        for i in 0..500u64 {
            d.insert(i.wrapping_mul(0x9E37_79B9_7F4A_7C15), T0 + i as i64 * 1000);
        }
        let bytes = postcard::to_allocvec(&d).unwrap();
        let mut back: Dedup = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.len(), d.len());
        for i in 0..500u64 {
            let id = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            assert_eq!(back.insert(id, T0 + 499_000), d.insert(id, T0 + 499_000));
        }
    }
}
