//! Remembers event ids for a horizon of event time, in bounded memory.
//!
//! At-least-once delivery and producer retries both re-send events; an id seen again within the
//! horizon is a duplicate and must not be counted twice. Ids are kept as 64-bit hashes (with a
//! million ids held, a new event is mistaken for a duplicate with probability 5·10⁻¹⁴), tagged
//! with a coarse generation of their event time (`horizon / 4`): 16 bytes per entry. When the newest generation advances, ids more than a horizon older are
//! swept in one pass, so lookups stay a single hash probe. Working in event time, not arrival
//! time, makes the outcome depend only on the events, not on when they were read.
//!
//! Memory is capped at `max_ids`: past it, the oldest generation is forgotten early and
//! counted as evictions, which shrinks the effective horizon instead of growing without bound.

use std::hash::{BuildHasherDefault, Hasher};

/// Generations per horizon: the sweep granularity.
const GENERATIONS: u32 = 4;
/// Generations are at least a second long, so their numbers fit in `u32` until 2106.
const MIN_GENERATION_MS: i64 = 1000;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Dedup {
    /// id hash → generation of its event time.
    seen: hashbrown::HashMap<u64, u32, BuildHasherDefault<IdHasher>>,
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
            seen: Default::default(),
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

    /// Records `id` at event time `ts_ms`. Returns false if it was already seen (a duplicate).
    pub fn insert(&mut self, id: u64, ts_ms: i64) -> bool {
        let generation = self.generation(ts_ms);
        if generation > self.newest {
            self.newest = generation;
            let cutoff = generation.saturating_sub(GENERATIONS);
            if cutoff > self.oldest_kept {
                self.oldest_kept = cutoff;
                let keep = self.oldest_kept;
                self.seen.retain(|_, g| *g >= keep);
            }
        }
        let generation = generation.max(self.oldest_kept);
        match self.seen.get_mut(&id) {
            Some(g) if *g >= self.oldest_kept => false,
            Some(g) => {
                *g = generation;
                true
            }
            None => {
                if self.seen.len() >= self.max_ids {
                    self.make_room();
                }
                self.seen.insert(id, generation);
                true
            }
        }
    }

    /// Forgets the oldest generation still held (or everything, if only one is left).
    fn make_room(&mut self) {
        let before = self.seen.len();
        let oldest = self.seen.values().copied().min().unwrap_or(self.newest);
        if oldest < self.newest {
            self.oldest_kept = oldest + 1;
            let keep = self.oldest_kept;
            self.seen.retain(|_, g| *g >= keep);
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

/// The keys are already uniform hashes: use their low bits as they are.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
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

    #[test]
    fn the_newest_generation_alone_over_the_cap_is_cleared_not_grown() {
        let mut d = Dedup::new(15 * MIN, 1000);
        for i in 0..3000u64 {
            d.insert(i, T0);
        }
        assert!(d.len() <= 1000);
        assert_eq!(d.evicted() + d.len() as u64, 3000);
    }
}
