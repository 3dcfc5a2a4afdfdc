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
//! Each sweep sizes the table for the ids the last period brought, so resident memory follows
//! the ids actually held rather than the largest burst ever seen, and a table at its cap is no
//! larger than one made for the cap.

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use std::fmt;

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
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

    /// Drops entries older than generation `keep`, and sizes the table for the next period.
    fn sweep(&mut self, keep: u32) {
        self.oldest_kept = keep;
        let newest = self.newest;
        // Ids only accumulate between sweeps: the count now is the peak of the last period,
        // and what the next one will hold again (an eighth more allows for a rising rate).
        let peak = self.seen.len();
        let need = (peak + peak / 8).min(self.max_ids);
        self.seen
            .retain(|e| Self::generation_of(newest, *e) >= keep);
        // `capacity` is the ids the table takes before it must reallocate. Erasing leaves
        // tombstones, which use it up: when it runs out, hashbrown rehashes in place only if
        // at most half the table is live, and otherwise doubles it, so a steady stream's
        // table would double hours after it had settled, and a table at its cap would be
        // twice the size the cap needs. Rebuilding it here, at the size the next period
        // needs, clears the tombstones without growing.
        let (len, capacity) = (self.seen.len(), self.seen.capacity());
        let target = if len < capacity / 8 {
            // A burst has passed: give its memory back, and let the table grow again if the
            // rate comes back. (A table sized for `need` is over a third full after a steady
            // period, so this never flaps.)
            len * 2
        } else {
            need
        };
        // Too small (or short of room through tombstones), or well over what the next period
        // needs: a table that grew while a backlog arrived out of order, say, or one larger
        // than the cap's (restored from a checkpoint taken under a higher cap).
        if capacity < target || !self.suits(self.full_room(), target) {
            self.rebuild(target);
        }
    }

    /// Ids the table takes before it must grow, tombstones aside (`capacity` counts them
    /// against it): hashbrown's load factor (7/8, or one less than the buckets below 8) of the
    /// buckets its allocation holds, 9 bytes each beside a group of control bytes.
    fn full_room(&self) -> usize {
        let buckets = self.seen.allocation_size().saturating_sub(16) / 9;
        if buckets < 8 {
            buckets.saturating_sub(1)
        } else {
            buckets / 8 * 7
        }
    }

    /// Puts the entries back into a table with room for `capacity` ids and no tombstones.
    fn rebuild(&mut self, capacity: usize) {
        // Draining empties the table (no tombstones left) and keeps its allocation.
        let entries: Vec<u64> = self.seen.drain().collect();
        if !self.suits(self.seen.capacity(), capacity) {
            self.seen = HashTable::with_capacity(capacity);
        }
        // Otherwise the entries go back where they were: a fresh table allocated beside the
        // old one each time made glibc's heap creep (RSS +6 % between 10 M and 20 M events
        // of `examples/memory --stream`, flat with a fixed mmap threshold).
        put_back(&mut self.seen, entries);
    }

    /// Whether a table with room for `room` ids suits one that must take `needed`: see
    /// [`fits`]; and never larger than a table made for the cap.
    fn suits(&self, room: usize, needed: usize) -> bool {
        fits(room, needed) && room <= room_for(self.max_ids)
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
        self.seen.allocation_size()
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
            // Saved under a higher cap: down to this one now, as if those ids had come
            // under it (the sweeps that make room also size the table for the cap).
            while self.seen.len() > self.max_ids {
                self.make_room();
            }
        }
    }
}

/// Ids a table made for `ids` takes (its room): hashbrown's buckets are a power of two, of
/// which it fills 7/8. (Exact from 15 ids, below which hashbrown rounds small tables up; caps
/// are at least 1,000.)
fn room_for(ids: usize) -> usize {
    let buckets = (ids.max(15) * 8 / 7).next_power_of_two();
    buckets / 8 * 7
}

/// Whether a table with room for `room` ids suits one that must take `needed`: enough, and
/// not much more. A table made for `needed` has less than twice the room; the gap between
/// that and 5/2 keeps a need that wobbles around a size boundary from growing and shrinking
/// the table at every sweep.
fn fits(room: usize, needed: usize) -> bool {
    room >= needed && room <= needed * 5 / 2
}

/// Entries per chunk of a checkpoint's id list: 32 KiB, encoded without a buffer the size of
/// the table.
const PER_CHUNK: usize = 4096;

/// Checkpoints hold the packed entries as byte strings of little-endian words, up to
/// `PER_CHUNK` entries each. Format 3 held them as a sequence of `u64`s, which postcard
/// writes as varints: 10 bytes for a hash spread over 64 bits, and most of the time of a
/// checkpoint (criterion `checkpoint/encode`, 55,000 ids: 1.28 ms as varints, 0.67 as bytes).
fn save_entries<S: Serializer>(table: &HashTable<u64>, s: S) -> Result<S::Ok, S::Error> {
    struct Raw<'a>(&'a [u8]);
    impl Serialize for Raw<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }
    let mut seq = s.serialize_seq(Some(table.len().div_ceil(PER_CHUNK)))?;
    let mut chunk = Vec::with_capacity(PER_CHUNK * 8);
    for e in table.iter() {
        chunk.extend_from_slice(&e.to_le_bytes());
        if chunk.len() == PER_CHUNK * 8 {
            seq.serialize_element(&Raw(&chunk))?;
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        seq.serialize_element(&Raw(&chunk))?;
    }
    seq.end()
}

fn load_entries<'de, D: Deserializer<'de>>(d: D) -> Result<HashTable<u64>, D::Error> {
    /// Puts one chunk's entries into the table as it is read, without copying it first.
    struct Chunk<'t>(&'t mut HashTable<u64>);
    impl<'de> DeserializeSeed<'de> for Chunk<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_bytes(self)
        }
    }
    impl Visitor<'_> for Chunk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("packed ids, 8 bytes each")
        }
        fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<(), E> {
            if !bytes.len().is_multiple_of(8) {
                return Err(E::invalid_length(bytes.len(), &self));
            }
            self.0.reserve(bytes.len() / 8, |e| slot(*e));
            let entries = bytes.chunks_exact(8);
            put_back(
                self.0,
                entries.map(|b| u64::from_le_bytes(b.try_into().unwrap())),
            );
            Ok(())
        }
    }
    struct Chunks;
    impl<'de> Visitor<'de> for Chunks {
        type Value = HashTable<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("chunks of packed ids")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut table = HashTable::new();
            while seq.next_element_seed(Chunk(&mut table))?.is_some() {}
            Ok(table)
        }
    }
    d.deserialize_seq(Chunks)
}

/// Format 3's list: a sequence of `u64`s.
fn load_entries_v3<'de, D: Deserializer<'de>>(d: D) -> Result<HashTable<u64>, D::Error> {
    let entries = Vec::<u64>::deserialize(d)?;
    let mut table = HashTable::with_capacity(entries.len());
    put_back(&mut table, entries);
    Ok(table)
}

/// A [`Dedup`] as checkpoints of format 3 hold it.
#[derive(Deserialize)]
pub(crate) struct DedupV3 {
    #[serde(deserialize_with = "load_entries_v3")]
    seen: HashTable<u64>,
    generation_ms: i64,
    max_ids: usize,
    newest: u32,
    oldest_kept: u32,
    evicted: u64,
}

impl From<DedupV3> for Dedup {
    fn from(v3: DedupV3) -> Dedup {
        Dedup {
            seen: v3.seen,
            generation_ms: v3.generation_ms,
            max_ids: v3.max_ids,
            newest: v3.newest,
            oldest_kept: v3.oldest_kept,
            evicted: v3.evicted,
        }
    }
}

/// Puts entries that were in a table (so distinct) into `table`, without looking for them
/// first.
fn put_back(table: &mut HashTable<u64>, entries: impl IntoIterator<Item = u64>) {
    for e in entries {
        table.insert_unique(slot(e), e, |e| slot(*e));
    }
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

    /// Feeds distinct ids (id, event time) to a table capped at `cap`, checking after each
    /// that it was new and that the table holds at most `cap` ids, in no more memory than a
    /// table made for `cap`.
    fn feed_within_cap(cap: usize, ids: impl Iterator<Item = (u64, i64)>) -> Dedup {
        let fitted = HashTable::<u64>::with_capacity(cap).allocation_size();
        let mut d = Dedup::new(15 * MIN, cap);
        for (id, ts) in ids {
            assert!(d.insert(id, ts), "id {id} taken for a duplicate");
            assert!(d.len() <= cap);
            assert!(
                d.table_bytes() <= fitted,
                "{} bytes at id {id}, {fitted} fit the cap",
                d.table_bytes()
            );
        }
        d
    }

    /// The default cap is what a power-of-two table holds at hashbrown's load factor: a cap
    /// just above it would take a table twice the size (18 MiB instead of 9 at 2^20 slots).
    #[test]
    fn the_default_cap_fills_its_table() {
        let env = Some(std::collections::BTreeMap::new());
        let config = crate::config::Config::load_with_env(None, env).unwrap();
        let cap = config.dedup.max_ids_per_partition;
        let table = HashTable::<u64>::with_capacity(cap);
        assert_eq!(table.capacity(), cap);
        let d = feed_within_cap(cap, (0..cap as u64 + 5_000).map(|i| (i, T0 + i as i64)));
        assert_eq!(d.table_bytes(), table.allocation_size());
        assert!(d.evicted() > 0);
    }

    /// At the cap, with several generations held (so room is made by sweeps, which leave
    /// tombstones), the table is never larger than one made for the cap.
    #[test]
    fn a_table_at_its_cap_does_not_grow() {
        // Two ids per second of event time: 450 per generation, so the cap is reached with
        // three generations live.
        let d = feed_within_cap(1000, (0..20_000u64).map(|i| (i, T0 + i as i64 * 500)));
        assert!(d.evicted() > 0);
    }

    /// Ids older than the horizon, arriving before any newer ones (a backlog read newest
    /// first), fill the table to its cap; the sweep that makes room sizes the table for the
    /// cap, not for more.
    #[test]
    fn a_backlog_read_newest_first_fills_the_table_only_to_its_cap() {
        // An hour of ids, newest first: four times what the horizon holds.
        let mut d = feed_within_cap(10_000, (0..40_000u64).map(|i| (i, T0 - i as i64 * 360)));
        assert!(d.evicted() > 0);
        // The newest id is still known.
        assert!(!d.insert(0, T0));
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

    /// A backlog that arrives behind the newest id (the two hours before it, oldest first)
    /// is held until the next sweep and grows the table; once the stream is steady again,
    /// the table is the size the steady stream alone gives it.
    #[test]
    fn a_table_grown_by_a_late_backlog_settles_at_the_steady_size() {
        let id = |i: u64| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
        // Two hours at 100 ids per second of event time.
        let steady = |d: &mut Dedup| {
            for i in 0..2 * 3600 * 100u64 {
                d.insert(id(i), T0 + i as i64 * 10);
            }
        };
        let mut plain = Dedup::new(15 * MIN, 1_000_000);
        steady(&mut plain);
        let mut late = Dedup::new(15 * MIN, 1_000_000);
        late.insert(id(u64::MAX), T0);
        for i in 0..2 * 3600 * 100u64 {
            late.insert(id(u64::MAX / 2 + i), T0 - 2 * 60 * MIN + i as i64 * 10);
        }
        let grown = late.table_bytes();
        steady(&mut late);
        assert!(
            grown > 2 * plain.table_bytes(),
            "{grown} bytes after the backlog"
        );
        assert_eq!(late.table_bytes(), plain.table_bytes());
    }

    /// A need that wobbles just either side of a size boundary keeps the table it grew to,
    /// rather than shrinking it again at the next sweep.
    #[test]
    fn a_need_wobbling_at_a_size_boundary_keeps_the_table() {
        // 917,504 ids fill 2^20 buckets; one more takes 2^21.
        let grown = HashTable::<u64>::with_capacity(917_505).capacity();
        assert!(fits(grown, 917_505));
        assert!(fits(grown, 916_000));
        assert!(!fits(grown, 600_000));
        assert!(!fits(grown, 2_000_000));
    }

    /// Ids are saved in chunks of `PER_CHUNK`: a table of several, the last one partial,
    /// reads back whole; a chunk whose length is not a whole number of ids is an error.
    #[test]
    fn a_table_of_several_chunks_reads_back_whole() {
        let mut d = Dedup::new(15 * MIN, 100_000);
        let ids = 2 * PER_CHUNK as u64 + 808;
        for i in 0..ids {
            assert!(d.insert(xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()), T0));
        }
        let bytes = postcard::to_allocvec(&d).unwrap();
        // Eight bytes an id, plus a few of lengths and fields.
        assert!(bytes.len() < ids as usize * 8 + 64, "{} bytes", bytes.len());
        let mut back: Dedup = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.len(), ids as usize);
        for i in 0..ids {
            assert!(!back.insert(xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()), T0));
        }
        assert_eq!(back.len(), ids as usize);
        // One chunk of 7 bytes.
        let empty = postcard::to_allocvec(&Dedup::new(15 * MIN, 1000)).unwrap();
        let mut torn = vec![1, 7, 1, 2, 3, 4, 5, 6, 7];
        torn.extend_from_slice(&empty[1..]);
        assert!(postcard::from_bytes::<Dedup>(&torn).is_err());
    }

    #[test]
    fn room_for_matches_hashbrown() {
        for ids in (15..100).chain([1000, 917_503, 917_504, 917_505, 1_000_000]) {
            let room = HashTable::<u64>::with_capacity(ids).capacity();
            assert_eq!(room_for(ids), room, "{ids} ids");
        }
    }

    /// A table saved under a higher cap (before an upgrade lowered the default, say) comes
    /// down to the running cap: its ids at once, its size by the next sweep.
    #[test]
    fn a_table_restored_under_a_lower_cap_comes_down_to_it() {
        let id = |i: u64| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
        // 3,000 ids over three generations, under a cap of 4,000: a table of 4,096 slots.
        let mut d = Dedup::new(15 * MIN, 4000);
        for i in 0..3000u64 {
            d.insert(id(i), T0 + i as i64 * 600);
        }
        let bytes = postcard::to_allocvec(&d).unwrap();
        let mut back: Dedup = postcard::from_bytes(&bytes).unwrap();
        back.reconfigure(15 * MIN, 1792);
        assert!(back.len() <= 1792, "{} ids", back.len());
        assert!(back.evicted() > 0);
        // The newest ids are still known.
        assert!(!back.insert(id(2999), T0 + 2999 * 600));
        // Two more horizons at the cap, in no more memory than a table made for it.
        let fitted = HashTable::<u64>::with_capacity(1792).allocation_size();
        for i in 3000..9000u64 {
            back.insert(id(i), T0 + i as i64 * 600);
            assert!(back.len() <= 1792);
        }
        assert!(
            back.table_bytes() <= fitted,
            "{} of {fitted}",
            back.table_bytes()
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
