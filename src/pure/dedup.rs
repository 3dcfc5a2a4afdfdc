//! Remembers event ids for a horizon of event time, in bounded memory.
//!
//! At-least-once delivery and producer retries both re-send events; an id seen again within the
//! horizon is a duplicate and must not be counted twice. Working in event time, not arrival
//! time, makes the outcome depend only on the events, not on when they were read. Time is cut
//! into generations of `horizon / 4`; the ids of the newest five are kept (1 to 1.25 horizons),
//! and at each new generation the oldest is dropped whole.
//!
//! **Why this layout.** Holding 15 minutes at 5,000 events/s means 5.6 M ids per partition,
//! and this memory is most of the service's at high event rates. A hash table of 64-bit words
//! costs 9 bytes an id and more with its slack (2^23 slots, 75 MB, for 5.6 M); a probabilistic
//! filter cannot be asked to forget one generation, nor to never call a new id a duplicate
//! with the odds wanted. Ids can be sorted instead: sorted, uniformly distributed keys need no
//! slack and no stored prefix (see `run`), so an id takes 41 bits and a little index, 5.4
//! bytes, while 56 of its hash bits are compared: with 5.6 M ids held, a new event is taken for
//! a duplicate by chance with probability 7.8·10⁻¹¹. A sorted array cannot take one id at a
//! time, so new ids wait in a hash table until a batch of them is merged in.
//!
//! So there are three places an id can be, all probed for every event (their loads are
//! independent, so they can overlap): a small hash table of the newest ids ([`BUFFER_IDS`] at
//! most, 2.4 MB); `recent`, a sorted run the buffer is merged into whenever it fills, holding
//! the rest of the open generation; and `sealed`, one sorted run of every older generation,
//! into which `recent` and the buffer are merged when a generation closes, after a pass that
//! drops the generation that expired. One sealed run rather than one per generation keeps a
//! lookup to three probes and saves two bits an id (a run of four generations needs two more
//! bucket bits); the price is rewriting it once per generation, about eight entries per id
//! inserted, plus two or three for the merges into `recent` at 5,000 ids/s, all in place and
//! sequential. Entries carry their generation modulo 8 in 3 bits, which tells the five live
//! ones apart.
//!
//! Memory follows the ids held: runs are rewritten at their size (and a 32nd, so that a steady
//! stream's generations reallocate nothing), the buffer is sized for the last generation's ids,
//! and `recent` is freed when it is sealed: 5.8 bytes an id at 5.6 M ids, at the peak of a
//! generation. It is capped at `max_ids`: past it, the oldest generation is forgotten early and
//! counted as evictions, and the horizon this partition actually keeps ([`Dedup::horizon_ms`])
//! shrinks accordingly.

mod run;

use std::fmt;

use hashbrown::HashTable;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeTuple};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use run::{KEY_BITS, Located, Run, TAG_BITS, TAG_MASK, merged_descending, tags_of};

/// Generations per horizon: the granularity of forgetting.
const GENERATIONS: u32 = 4;
/// Generations are at least a second long, so their numbers fit in `u32` until 2106.
const MIN_GENERATION_MS: i64 = 1000;
/// Ids the buffer takes before it is merged into `recent`: what a hashbrown table of 2^18
/// slots holds (2.4 MB). Each merge rewrites `recent`, so a generation of `g` ids costs about
/// `g / (2 * BUFFER_IDS)` entries rewritten per id (2.5 at 5,000 ids/s): with half as many,
/// 2^17 slots, the `dedup` bench was slower per id, for 0.1 byte an id less (figures in
/// docs/performance.md).
pub const BUFFER_IDS: usize = 229_376;
/// The largest cap: runs index their entries with `u32`s.
const MAX_IDS: usize = 1 << 31;

/// The key of an id hash: its low bits (which formats 3 and 4 kept too, so that their ids
/// convert exactly).
fn key_of(id: u64) -> u64 {
    id & ((1 << KEY_BITS) - 1)
}

/// Where a key lives in the buffer: spread over all 64 bits, because hashbrown takes the slot
/// from the low bits and its tag from the top ones.
fn slot(key: u64) -> u64 {
    key.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn tag_of(generation: u32) -> u64 {
    u64::from(generation) & TAG_MASK
}

/// The generation an entry's tag names, given that every live entry lies within 7 generations
/// at or below `newest`.
fn generation_of(newest: u32, tag: u64) -> u32 {
    let behind = u64::from(newest).wrapping_sub(tag) & TAG_MASK;
    newest.saturating_sub(behind as u32)
}

#[derive(Debug, Clone)]
pub struct Dedup {
    /// The newest ids, as entries (`key << TAG_BITS | tag`).
    buffer: HashTable<u64>,
    /// Buffer entries by tag.
    buffer_tags: [u32; 8],
    /// The buffer's entries, sorted, while they are merged (kept, so that a steady stream's
    /// generations allocate nothing).
    scratch: Vec<u64>,
    /// Most of the open generation (and ids that arrived late for an older one).
    recent: Run,
    /// The generations before.
    sealed: Run,
    /// Ids the buffer takes before it is merged ([`BUFFER_IDS`] but in tests).
    buffer_ids: usize,
    /// Ids inserted since the last generation closed.
    period_ids: usize,
    generation_ms: i64,
    /// The configured horizon.
    horizon_ms: i64,
    max_ids: usize,
    /// Newest generation seen.
    newest: u32,
    /// Ids of generations before this one are gone.
    oldest_kept: u32,
    evicted: u64,
    /// Newest event time seen (`i64::MIN` before any).
    newest_ms: i64,
    /// Every id of this event time or later is still held, whatever the horizon (`i64::MIN`
    /// until the cap forgets ids early).
    remembered_from_ms: i64,
}

impl Dedup {
    pub fn new(horizon_ms: i64, max_ids: usize) -> Self {
        Dedup {
            buffer: HashTable::new(),
            buffer_tags: [0; 8],
            scratch: Vec::new(),
            recent: Run::default(),
            sealed: Run::default(),
            buffer_ids: BUFFER_IDS,
            period_ids: 0,
            // Rounded up, so that four generations are never less than the horizon.
            generation_ms: (horizon_ms.max(0) as u64)
                .div_ceil(u64::from(GENERATIONS))
                .max(MIN_GENERATION_MS as u64) as i64,
            horizon_ms,
            max_ids: max_ids.clamp(1, MAX_IDS),
            newest: 0,
            oldest_kept: 0,
            evicted: 0,
            newest_ms: i64::MIN,
            remembered_from_ms: i64::MIN,
        }
    }

    fn generation(&self, ts_ms: i64) -> u32 {
        u32::try_from(ts_ms.max(0) / self.generation_ms).unwrap_or(u32::MAX)
    }

    /// Records `id` at event time `ts_ms`. Returns false if it was already seen (a duplicate).
    pub fn insert(&mut self, id: u64, ts_ms: i64) -> bool {
        let generation = self.generation(ts_ms);
        if generation > self.newest {
            self.advance(generation);
        }
        self.newest_ms = self.newest_ms.max(ts_ms);
        let key = key_of(id);
        let hash = slot(key);
        // Each run's index and hints, and the buffer, before anything branches on them: none
        // of these loads depends on another's, so they can be in flight together.
        let (in_sealed, in_recent): (Located, Located) =
            (self.sealed.locate(key), self.recent.locate(key));
        let buffered = self.buffer.find(hash, |e| *e >> TAG_BITS == key).is_some();
        let known = buffered | self.sealed.holds(in_sealed) | self.recent.holds(in_recent);
        if known {
            return false;
        }
        if self.len() >= self.max_ids {
            self.make_room();
        }
        let tag = tag_of(generation.max(self.oldest_kept));
        self.buffer
            .insert_unique(hash, (key << TAG_BITS) | tag, |e| slot(*e >> TAG_BITS));
        self.buffer_tags[tag as usize] += 1;
        self.period_ids += 1;
        if self.buffer.len() >= self.buffer_ids {
            self.flush();
        }
        true
    }

    /// Moves to a newer generation: forgets the ones that fell out of the horizon, and seals
    /// the rest.
    fn advance(&mut self, generation: u32) {
        let cutoff = generation.saturating_sub(GENERATIONS).max(self.oldest_kept);
        // Tags read against the old newest: every entry lies at or below it.
        let newest = self.newest;
        self.seal(|tag| generation_of(newest, tag) >= cutoff);
        self.oldest_kept = cutoff;
        self.newest = generation;
    }

    /// Merges the buffer and `recent` into `sealed`, keeping only the entries whose tag `keep`
    /// accepts.
    fn seal(&mut self, keep: impl Fn(u64) -> bool + Copy) {
        let recent = std::mem::take(&mut self.recent);
        let mut add_tags = [0; 8];
        for (t, n) in add_tags.iter_mut().enumerate() {
            if keep(t as u64) {
                *n = self.buffer_tags[t] + recent.tags()[t];
            }
        }
        self.drain_buffer(keep);
        // Memory follows the ids held: a buffer grown for a faster period is given back.
        let period = std::mem::take(&mut self.period_ids).min(self.buffer_ids);
        if self.buffer.capacity() > 4 * period.max(64) {
            self.buffer.shrink_to(period, |e| slot(*e >> TAG_BITS));
            self.scratch.shrink_to(period);
        }
        let add = merged_descending(
            recent.iter_rev().filter(|e| keep(e & TAG_MASK)),
            self.scratch.iter().rev().copied(),
        );
        self.sealed.rewrite(keep, add, add_tags);
        self.scratch.clear();
    }

    /// Merges the full buffer into `recent`.
    fn flush(&mut self) {
        let add_tags = self.buffer_tags;
        self.drain_buffer(|_| true);
        self.recent
            .rewrite(|_| true, self.scratch.iter().rev().copied(), add_tags);
        self.scratch.clear();
    }

    /// Empties the buffer into `scratch`: its entries whose tag `keep` accepts, sorted.
    fn drain_buffer(&mut self, keep: impl Fn(u64) -> bool) {
        self.scratch.clear();
        let entries = self.buffer.drain().filter(|e| keep(e & TAG_MASK));
        self.scratch.extend(entries);
        self.buffer_tags = [0; 8];
        self.scratch.sort_unstable();
    }

    /// The oldest generation that holds ids.
    fn oldest_held(&self) -> u32 {
        (0..8u64)
            .filter(|&t| {
                let t = t as usize;
                self.buffer_tags[t] + self.recent.tags()[t] + self.sealed.tags()[t] > 0
            })
            .map(|t| generation_of(self.newest, t))
            .min()
            .unwrap_or(self.newest)
    }

    /// Forgets the oldest generation still held (or everything, if only one is left).
    fn make_room(&mut self) {
        let before = self.len();
        let (newest, oldest) = (self.newest, self.oldest_held());
        if oldest < newest {
            self.seal(|tag| generation_of(newest, tag) > oldest);
            self.oldest_kept = self.oldest_kept.max(oldest + 1);
            self.remembered_from_ms = self
                .remembered_from_ms
                .max(i64::from(oldest + 1).saturating_mul(self.generation_ms));
        } else {
            self.buffer.clear();
            self.buffer_tags = [0; 8];
            self.recent = Run::default();
            self.sealed = Run::default();
            // No id seen so far had a later event time.
            self.remembered_from_ms = self.newest_ms.saturating_add(1);
        }
        self.evicted += (before - self.len()) as u64;
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.buffer.len() + self.recent.len() + self.sealed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes allocated for the ids, for memory accounting.
    pub fn table_bytes(&self) -> usize {
        self.buffer.allocation_size() + self.recent.heap_bytes() + self.sealed.heap_bytes()
    }

    /// Ids forgotten early because of `max_ids`, since creation.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The configured horizon.
    pub fn configured_horizon_ms(&self) -> i64 {
        self.horizon_ms
    }

    /// The horizon this partition keeps: how far back from the newest event time it has seen
    /// every id is still remembered. The configured horizon, unless `max_ids` forced ids out
    /// early; then the newest event time minus the start of the oldest generation still whole
    /// (0 just after a generation alone overflowed the cap and was cleared). An id re-sent
    /// with an event time within this span of the newest is always a duplicate.
    pub fn horizon_ms(&self) -> i64 {
        if self.newest_ms == i64::MIN {
            return self.horizon_ms;
        }
        self.newest_ms
            .saturating_sub(self.remembered_from_ms)
            .clamp(0, self.horizon_ms)
    }

    /// Applies a (possibly changed) configuration to restored memory.
    pub fn reconfigure(&mut self, horizon_ms: i64, max_ids: usize) {
        let fresh = Dedup::new(horizon_ms, max_ids);
        if fresh.generation_ms != self.generation_ms {
            // Generations are not comparable across widths: start the memory over.
            *self = fresh;
        } else {
            self.max_ids = fresh.max_ids;
            self.horizon_ms = fresh.horizon_ms;
            // Saved under a higher cap: down to this one now, as if those ids had come
            // under it.
            while self.len() > self.max_ids {
                self.make_room();
            }
        }
    }

    /// A memory whose buffer takes `ids` before it is merged, so that tests reach the runs
    /// with few ids.
    #[cfg(test)]
    fn with_buffer(horizon_ms: i64, max_ids: usize, ids: usize) -> Self {
        Dedup {
            buffer_ids: ids,
            ..Dedup::new(horizon_ms, max_ids)
        }
    }

    /// The memory as format 3 and 4 left it: packed (56-bit key, 8-bit generation) words.
    fn from_words(
        words: Vec<u64>,
        generation_ms: i64,
        max_ids: usize,
        newest: u32,
        oldest_kept: u32,
        evicted: u64,
    ) -> Result<Dedup, String> {
        if generation_ms < 1 {
            return Err(format!("a generation of {generation_ms} ms"));
        }
        let generation =
            |w: u64| newest.saturating_sub(u64::from(newest).wrapping_sub(w) as u8 as u32);
        let mut entries: Vec<u64> = words
            .into_iter()
            .map(|w| (w, generation(w)))
            // Expired but not yet swept.
            .filter(|&(_, g)| g >= oldest_kept)
            .map(|(w, g)| ((w >> 8) << TAG_BITS) | tag_of(g))
            .collect();
        entries.sort_unstable();
        entries.dedup_by_key(|e| *e >> TAG_BITS);
        let horizon_ms = generation_ms.saturating_mul(i64::from(GENERATIONS));
        let mut d = Dedup {
            generation_ms,
            horizon_ms,
            newest,
            oldest_kept,
            evicted,
            // Not saved then: the start of the newest generation, until the next event.
            newest_ms: i64::from(newest).saturating_mul(generation_ms),
            remembered_from_ms: if evicted > 0 {
                i64::from(oldest_kept).saturating_mul(generation_ms)
            } else {
                i64::MIN
            },
            ..Dedup::new(horizon_ms, max_ids)
        };
        let tags = tags_of(entries.iter().copied());
        d.sealed.rewrite(|_| true, entries.into_iter().rev(), tags);
        Ok(d)
    }
}

/// Entries per chunk of a checkpoint's word list: 32 KiB, encoded without a buffer the size of
/// the table.
const PER_CHUNK: usize = 4096;

/// What format 5 writes first where format 4 wrote the number of chunks of its id list: a
/// count no list can have, so one reader tells the two apart and the layout stays inside the
/// de-duplication's own (de)serialisation (checkpoints are postcard, which writes a struct
/// as its fields in order, and a count as a varint).
const FORMAT_5: u64 = u64::MAX;

/// Entries as byte strings of little-endian words, up to `PER_CHUNK` each. (Format 3 held
/// them as a sequence of `u64`s, which postcard writes as varints: 10 bytes for a hash spread
/// over 64 bits, and most of the time of a checkpoint.)
struct Words<'a>(&'a HashTable<u64>);

impl Serialize for Words<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Raw<'a>(&'a [u8]);
        impl Serialize for Raw<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        let mut seq = s.serialize_seq(Some(self.0.len().div_ceil(PER_CHUNK)))?;
        let mut chunk = Vec::with_capacity(PER_CHUNK.min(self.0.len()) * 8);
        for e in self.0.iter() {
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
}

/// Reads one chunk of words onto the end of a list, without copying it first.
struct Chunk<'v>(&'v mut Vec<u64>);

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
        let words = bytes.chunks_exact(8);
        self.0
            .extend(words.map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))));
        Ok(())
    }
}

/// Reads a list of chunks of words.
struct Chunks<'v>(&'v mut Vec<u64>);

impl<'de> DeserializeSeed<'de> for Chunks<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Chunks<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("chunks of packed ids")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Chunk(self.0))?.is_some() {}
        Ok(())
    }
}

/// Format 5: the marker, the scalars, the buffer's entries as words, then `recent` and
/// `sealed` as they are in memory (see `run`): about 5.3 bytes an id.
impl Serialize for Dedup {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(12)?;
        t.serialize_element(&FORMAT_5)?;
        t.serialize_element(&self.generation_ms)?;
        t.serialize_element(&self.horizon_ms)?;
        t.serialize_element(&(self.max_ids as u64))?;
        t.serialize_element(&self.newest)?;
        t.serialize_element(&self.oldest_kept)?;
        t.serialize_element(&self.evicted)?;
        t.serialize_element(&self.newest_ms)?;
        t.serialize_element(&self.remembered_from_ms)?;
        t.serialize_element(&Words(&self.buffer))?;
        t.serialize_element(&self.recent)?;
        t.serialize_element(&self.sealed)?;
        t.end()
    }
}

/// Formats 4 and 5 (see `FORMAT_5`); format 4's packed words are converted as they are read.
impl<'de> Deserialize<'de> for Dedup {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dedup, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Dedup;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("de-duplication memory")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dedup, A::Error> {
                fn next<'de, T: Deserialize<'de>, A: SeqAccess<'de>>(
                    seq: &mut A,
                ) -> Result<T, A::Error> {
                    seq.next_element()?
                        .ok_or_else(|| de::Error::custom("de-duplication memory cut short"))
                }
                let first: u64 = next(&mut seq)?;
                if first != FORMAT_5 {
                    // Format 4: `first` chunks of packed words, then the scalars.
                    let mut words = Vec::new();
                    for _ in 0..first {
                        seq.next_element_seed(Chunk(&mut words))?
                            .ok_or_else(|| de::Error::custom("de-duplication ids cut short"))?;
                    }
                    let generation_ms: i64 = next(&mut seq)?;
                    let max_ids: u64 = next(&mut seq)?;
                    let (newest, oldest_kept, evicted) =
                        (next(&mut seq)?, next(&mut seq)?, next(&mut seq)?);
                    return Dedup::from_words(
                        words,
                        generation_ms,
                        max_ids as usize,
                        newest,
                        oldest_kept,
                        evicted,
                    )
                    .map_err(de::Error::custom);
                }
                let generation_ms: i64 = next(&mut seq)?;
                if generation_ms < 1 {
                    return Err(de::Error::custom("a generation of less than 1 ms"));
                }
                let horizon_ms: i64 = next(&mut seq)?;
                let max_ids: u64 = next(&mut seq)?;
                let newest: u32 = next(&mut seq)?;
                let oldest_kept: u32 = next(&mut seq)?;
                let evicted: u64 = next(&mut seq)?;
                let newest_ms: i64 = next(&mut seq)?;
                let remembered_from_ms: i64 = next(&mut seq)?;
                let mut words = Vec::new();
                seq.next_element_seed(Chunks(&mut words))?
                    .ok_or_else(|| de::Error::custom("de-duplication buffer cut short"))?;
                let recent: Run = next(&mut seq)?;
                let sealed: Run = next(&mut seq)?;
                let mut d = Dedup {
                    recent,
                    sealed,
                    generation_ms,
                    horizon_ms,
                    newest,
                    oldest_kept,
                    evicted,
                    newest_ms,
                    remembered_from_ms,
                    ..Dedup::new(horizon_ms, max_ids.try_into().unwrap_or(usize::MAX))
                };
                d.buffer.reserve(words.len(), |e| slot(*e >> TAG_BITS));
                for e in words {
                    if e >> (KEY_BITS + TAG_BITS) != 0 {
                        return Err(de::Error::custom("a buffered id of more than 59 bits"));
                    }
                    d.buffer_tags[(e & TAG_MASK) as usize] += 1;
                    d.buffer
                        .insert_unique(slot(e >> TAG_BITS), e, |e| slot(*e >> TAG_BITS));
                }
                Ok(d)
            }
        }
        // A tuple of no fixed length: format 4's has as many elements as it has chunks.
        d.deserialize_tuple(usize::MAX, V)
    }
}

/// A [`Dedup`] as checkpoints of format 3 hold it (its ids as a sequence of `u64`s, which
/// postcard writes as varints), converted as it is read.
#[derive(Deserialize)]
#[serde(try_from = "SavedV3")]
pub(crate) struct DedupV3(Dedup);

#[derive(Deserialize)]
struct SavedV3 {
    seen: Vec<u64>,
    generation_ms: i64,
    max_ids: usize,
    newest: u32,
    oldest_kept: u32,
    evicted: u64,
}

impl TryFrom<SavedV3> for DedupV3 {
    type Error = String;
    fn try_from(v3: SavedV3) -> Result<DedupV3, String> {
        Dedup::from_words(
            v3.seen,
            v3.generation_ms,
            v3.max_ids,
            v3.newest,
            v3.oldest_kept,
            v3.evicted,
        )
        .map(DedupV3)
    }
}

impl From<DedupV3> for Dedup {
    fn from(v3: DedupV3) -> Dedup {
        v3.0
    }
}

#[cfg(test)]
mod tests;
