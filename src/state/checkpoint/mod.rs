//! Checkpoints: a partition's state and the offset it reaches, saved together so a restart or
//! a new owner continues exactly where the state left off.
//!
//! The format is pure and tested here; [`crate::source::checkpoints`] writes and reads it on a compacted topic.
//!
//! A checkpoint of input partition (topic, p) is one or more **chunks** followed by a
//! **manifest**, all on the same checkpoint-topic partition, in that order:
//!
//! - chunk key `{group}/{topic}/{p}/c/{slot}/{i}`: a header (checkpoint id, index, count) and a
//!   slice of the encoded state (postcard, then LZ4);
//! - manifest key `{group}/{topic}/{p}/m`: JSON with the checkpoint id, the chunk count, the
//!   offset of the first chunk, the input offset the state reaches, and a checksum.
//!
//! Chunks, manifests and the encoded state carry the format version. This build writes 5 and
//! reads 3 and 4 as well, which differ only in how de-duplication ids are laid out (format 3
//! as varints, 4 as a hash table's 64-bit words, 5 as sorted runs of about five bytes an id),
//! so a checkpoint written before an upgrade restores after it.
//!
//! Chunks alternate between two slots, so while checkpoint *n* is being written the chunks of
//! *n − 1* are never the latest value of their key, and compaction cannot remove them before
//! the manifest of *n* exists. A reader finds the newest manifest whose chunks are all present
//! and intact; any such checkpoint is a consistent (state, offset) pair, so replaying the input
//! from its offset gives exactly the numbers of an uninterrupted run.

use serde::{Deserialize, Serialize};

use crate::pure::partition::{PartitionState, SavedLayout};
use crate::pure::window::{RingLayout, Windows};
use crate::state::store::TopicPartition;

/// Format version of both the encoded state and the manifest, written.
pub const VERSION: u8 = 5;
/// Format versions read, so a checkpoint written before an upgrade restores after it: 4 has
/// no window coverage or offset index, saved each window's length and span rather than its
/// ring's layout, and held the de-duplication ids as a hash table's words; 3 differs from 4
/// in how those ids are laid out. (The de-duplication memory tells 4 from 5 itself, see
/// `dedup::FORMAT_5`; an older build refuses 5 by its version.)
const READABLE: [u8; 3] = [3, 4, VERSION];
/// Largest chunk value: well under Kafka's default 1 MB message limit.
pub const MAX_CHUNK_BYTES: usize = 512 * 1024;
const CHUNK_MAGIC: &[u8; 4] = b"EPCK";
const CHUNK_HEADER: usize = 4 + 1 + 8 + 4 + 4;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint is damaged: {0}")]
    Corrupt(String),
    #[error("checkpoint format version {0} is not supported (this build reads 3 to {VERSION})")]
    Version(u8),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("dead letters: {0}")]
    DeadLetters(String),
}

impl CheckpointError {
    /// True for a write that timed out (no broker took it), as opposed to one refused.
    pub fn is_timeout(&self) -> bool {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        match self {
            CheckpointError::Timeout(_) => true,
            CheckpointError::Kafka(
                KafkaError::MessageProduction(code) | KafkaError::Flush(code),
            ) => matches!(
                code,
                RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::OperationTimedOut
            ),
            _ => false,
        }
    }
}

/// What is serialised: how the rings were laid out, and the state.
#[derive(Serialize)]
struct SavedRef<'a> {
    layout: Vec<RingLayout>,
    state: &'a PartitionState,
}

#[derive(Deserialize)]
struct Saved {
    layout: Vec<RingLayout>,
    state: PartitionState,
}

#[derive(Deserialize)]
struct SavedV4 {
    geometry: Vec<(i64, i64)>,
    state: crate::pure::partition::PartitionStateV4,
}

#[derive(Deserialize)]
struct SavedV3 {
    geometry: Vec<(i64, i64)>,
    state: crate::pure::partition::PartitionStateV3,
}

/// Encodes a state (postcard, then LZ4: empty buckets are runs of zero bytes).
pub fn encode(state: &PartitionState, windows: &Windows) -> Vec<u8> {
    let mut scratch = Scratch::default();
    encode_into(state, windows, &mut scratch);
    scratch.payload
}

/// Buffers that successive saves reuse: once they have grown to the largest state, a save
/// allocates nothing of that size. A save every few seconds into fresh megabyte buffers (the
/// serialised state, its compressed form, its chunks) kept glibc's allocator cycling blocks
/// of that size through its arenas, and resident memory swung with every round.
#[derive(Debug, Default)]
pub struct Scratch {
    raw: Vec<u8>,
    payload: Vec<u8>,
}

/// As [`encode`], into `scratch`; the encoded state is `scratch.payload()` until the next call.
pub fn encode_into(state: &PartitionState, windows: &Windows, scratch: &mut Scratch) {
    let saved = SavedRef {
        layout: windows.layout(),
        state,
    };
    let mut raw = std::mem::take(&mut scratch.raw);
    raw.clear();
    scratch.raw = postcard::to_extend(&saved, raw).expect("in-memory serialisation cannot fail");
    // The layout of `lz4_flex::compress_prepend_size`, which `decode` reads back.
    let out = &mut scratch.payload;
    out.clear();
    out.push(VERSION);
    out.extend_from_slice(&(scratch.raw.len() as u32).to_le_bytes());
    let start = out.len();
    out.resize(
        start + lz4_flex::block::get_maximum_output_size(scratch.raw.len()),
        0,
    );
    let written = lz4_flex::block::compress_into(&scratch.raw, &mut out[start..])
        .expect("the output has the maximum compressed size");
    out.truncate(start + written);
}

impl Scratch {
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

/// Decodes a state and how its rings were laid out. The state is ready for use only after
/// [`PartitionState::reconfigure`] (which rebuilds what is not saved).
pub fn decode(bytes: &[u8]) -> Result<(PartitionState, SavedLayout), CheckpointError> {
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| CheckpointError::Corrupt("empty".into()))?;
    if !READABLE.contains(&version) {
        return Err(CheckpointError::Version(version));
    }
    let raw = lz4_flex::decompress_size_prepended(body)
        .map_err(|e| CheckpointError::Corrupt(format!("decompression: {e}")))?;
    let corrupt = |e: postcard::Error| CheckpointError::Corrupt(format!("decoding: {e}"));
    match version {
        3 => {
            let saved: SavedV3 = postcard::from_bytes(&raw).map_err(corrupt)?;
            Ok((saved.state.into(), SavedLayout::Geometry(saved.geometry)))
        }
        4 => {
            let saved: SavedV4 = postcard::from_bytes(&raw).map_err(corrupt)?;
            Ok((saved.state.into(), SavedLayout::Geometry(saved.geometry)))
        }
        _ => {
            let saved: Saved = postcard::from_bytes(&raw).map_err(corrupt)?;
            Ok((saved.state, SavedLayout::Rings(saved.layout)))
        }
    }
}

/// Points at a checkpoint's chunks and says what they hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u8,
    pub checkpoint_id: u64,
    pub slot: u8,
    pub chunks: u32,
    /// Offset, in the checkpoint partition, of chunk 0.
    pub first_chunk_offset: i64,
    /// Input offset the state reaches: consumption resumes here.
    pub next_offset: i64,
    pub bytes: u64,
    /// xxh3 of the whole encoded state.
    pub checksum: u64,
    pub written_at_ms: i64,
    /// With `kafka.dead_letter_topic`: where this partition's dead letters after the state go
    /// (see `deadletter`). Absent in manifests written without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<DeadLetterMark>,
}

/// A partition of the dead-letter topic and an offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterMark {
    pub partition: i32,
    pub offset: i64,
}

/// Appends the chunk values of an encoded state to `out`, one after another; returns where
/// each lies (so one reused buffer holds every chunk of a save).
pub fn append_chunks(
    payload: &[u8],
    checkpoint_id: u64,
    max_chunk: usize,
    out: &mut Vec<u8>,
) -> Vec<std::ops::Range<usize>> {
    let data_per_chunk = max_chunk - CHUNK_HEADER;
    let count = payload.len().div_ceil(data_per_chunk).max(1);
    let mut parts = payload.chunks(data_per_chunk);
    (0..count)
        .map(|i| {
            let start = out.len();
            out.extend_from_slice(CHUNK_MAGIC);
            out.push(VERSION);
            out.extend_from_slice(&checkpoint_id.to_be_bytes());
            out.extend_from_slice(&(i as u32).to_be_bytes());
            out.extend_from_slice(&(count as u32).to_be_bytes());
            out.extend_from_slice(parts.next().unwrap_or_default());
            start..out.len()
        })
        .collect()
}

/// A chunk value's header and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRef<'a> {
    pub checkpoint_id: u64,
    pub index: u32,
    pub count: u32,
    pub data: &'a [u8],
}

pub fn parse_chunk(value: &[u8]) -> Option<ChunkRef<'_>> {
    if value.len() < CHUNK_HEADER || &value[..4] != CHUNK_MAGIC || !READABLE.contains(&value[4]) {
        return None;
    }
    let u64_at = |i: usize| u64::from_be_bytes(value[i..i + 8].try_into().unwrap());
    let u32_at = |i: usize| u32::from_be_bytes(value[i..i + 4].try_into().unwrap());
    Some(ChunkRef {
        checkpoint_id: u64_at(5),
        index: u32_at(13),
        count: u32_at(17),
        data: &value[CHUNK_HEADER..],
    })
}

/// What a checkpoint-topic key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Manifest(TopicPartition),
    Chunk {
        tp: TopicPartition,
        slot: u8,
        index: u32,
    },
}

pub fn manifest_key(group: &str, tp: &TopicPartition) -> String {
    format!("{group}/{}/{}/m", tp.topic, tp.partition)
}

pub fn chunk_key(group: &str, tp: &TopicPartition, slot: u8, index: u32) -> String {
    format!("{group}/{}/{}/c/{slot}/{index}", tp.topic, tp.partition)
}

/// Parses a key written for `group`; keys of other groups sharing the topic are `None`.
/// Topic names cannot contain `/`, so the key is read from the right.
pub fn parse_key(group: &str, key: &str) -> Option<Record> {
    let rest = key.strip_prefix(group)?.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [topic, partition, "m"] => Some(Record::Manifest(TopicPartition::new(
            topic,
            partition.parse().ok()?,
        ))),
        [topic, partition, "c", slot, index] => Some(Record::Chunk {
            tp: TopicPartition::new(topic, partition.parse().ok()?),
            slot: slot.parse().ok()?,
            index: index.parse().ok()?,
        }),
        _ => None,
    }
}

/// The checkpoint-topic partition that holds `tp`'s checkpoints: a stable hash, so every
/// instance agrees (the checkpoint topic's partition count must not change).
pub fn checkpoint_partition(tp: &TopicPartition, partitions: i32) -> i32 {
    let h = xxhash_rust::xxh3::xxh3_64(format!("{}/{}", tp.topic, tp.partition).as_bytes());
    (h % partitions.max(1) as u64) as i32
}

/// Collects, from records read off a checkpoint partition (in any order of ranges), the
/// newest complete checkpoint of each wanted input partition.
#[derive(Debug, Default)]
pub struct Assembler {
    manifests: Vec<(i64, TopicPartition, Manifest)>,
    /// (tp, checkpoint id, index) → (offset, data).
    chunks: std::collections::HashMap<(TopicPartition, u64, u32), (i64, Vec<u8>)>,
}

impl Assembler {
    /// Offers one record. Records of partitions not in `wanted` are ignored.
    pub fn offer(
        &mut self,
        group: &str,
        wanted: &[TopicPartition],
        offset: i64,
        key: &[u8],
        value: &[u8],
    ) {
        let Some(record) = std::str::from_utf8(key)
            .ok()
            .and_then(|k| parse_key(group, k))
        else {
            return;
        };
        match record {
            Record::Manifest(tp) if wanted.contains(&tp) => {
                if let Ok(m) = serde_json::from_slice::<Manifest>(value) {
                    self.manifests.push((offset, tp, m));
                }
            }
            Record::Chunk { tp, .. } if wanted.contains(&tp) => {
                if let Some(c) = parse_chunk(value) {
                    self.chunks
                        .insert((tp, c.checkpoint_id, c.index), (offset, c.data.to_vec()));
                }
            }
            _ => {}
        }
    }

    /// The newest complete, intact checkpoint of `tp` among the records offered so far:
    /// its manifest and encoded state.
    pub fn newest(&self, tp: &TopicPartition) -> Option<(Manifest, Vec<u8>)> {
        let mut candidates: Vec<&(i64, TopicPartition, Manifest)> =
            self.manifests.iter().filter(|(_, t, _)| t == tp).collect();
        candidates.sort_by_key(|(offset, _, _)| std::cmp::Reverse(*offset));
        candidates.into_iter().find_map(|(offset, _, m)| {
            let mut payload = Vec::with_capacity(m.bytes as usize);
            for i in 0..m.chunks {
                let (chunk_offset, data) = self.chunks.get(&(tp.clone(), m.checkpoint_id, i))?;
                // Chunks precede their manifest; a later one with the same id is not ours.
                if *chunk_offset > *offset || *chunk_offset < m.first_chunk_offset {
                    return None;
                }
                payload.extend_from_slice(data);
            }
            let intact = READABLE.contains(&m.version)
                && payload.len() as u64 == m.bytes
                && xxhash_rust::xxh3::xxh3_64(&payload) == m.checksum;
            intact.then(|| (m.clone(), payload))
        })
    }

    /// The lowest offset any chunk of `tp`'s manifests starts at (to know how far back to read).
    pub fn lowest_first_chunk(&self, tp: &TopicPartition) -> Option<i64> {
        self.manifests
            .iter()
            .filter(|(_, t, _)| t == tp)
            .map(|(_, _, m)| m.first_chunk_offset)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::decode::Decoder;
    use crate::pure::pipeline::{Outcome, Pipeline};
    use crate::state::store::Store;

    const T0: i64 = 1_795_334_400_000;

    /// An encoded state's chunk values, each on its own.
    fn chunks(payload: &[u8], checkpoint_id: u64, max_chunk: usize) -> Vec<Vec<u8>> {
        let mut values = Vec::new();
        append_chunks(payload, checkpoint_id, max_chunk, &mut values)
            .into_iter()
            .map(|range| values[range].to_vec())
            .collect()
    }

    fn pipeline(windows: &[&str]) -> Pipeline {
        Pipeline {
            decoder: Decoder::new("USD", []),
            windows: Windows::from_labels(windows, 60),
            max_future_skew_ms: 60_000,
            dedup_horizon_ms: 900_000,
            dedup_max_ids: 100_000,
            limits: Default::default(),
        }
    }

    fn filled(p: &Pipeline, events: usize) -> PartitionState {
        let mut st = p.new_partition();
        for i in 0..events {
            let json = format!(
                r#"{{"type":"order","event_id":"o{i}","timestamp":{},"campaign":"c{}","channel":"x","amount":{}.5,"new_customer":{}}}"#,
                T0 - (i as i64 % 3_600) * 1000,
                i % 17,
                i % 90,
                i % 2 == 0
            );
            p.process(&mut st, json.as_bytes(), T0, T0);
            st.applied(i as i64, T0, T0);
        }
        st
    }

    /// Visits, orders and spend over a dozen keys and the last 2 hours: every cell type,
    /// rings and counters.
    fn mixed(p: &Pipeline) -> PartitionState {
        let mut st = p.new_partition();
        for (i, json) in mixed_events().iter().enumerate() {
            p.process(&mut st, json.as_bytes(), T0, T0);
            st.applied(i as i64, T0, T0);
        }
        st
    }

    fn mixed_events() -> Vec<String> {
        (0..600_i64)
            .map(|i| {
            let (ts, key) = (T0 - (i * 12_345) % 7_200_000, i % 13);
            match i % 3 {
                0 => format!(
                    r#"{{"type":"visit","event_id":"m{i}","timestamp":{ts},"campaign":"c{key}","channel":"x"}}"#
                ),
                1 => format!(
                    r#"{{"type":"order","event_id":"m{i}","timestamp":{ts},"campaign":"c{key}","channel":"x","amount":{}.25,"new_customer":{}}}"#,
                    i % 70,
                    i % 4 == 0
                ),
                _ => format!(
                    r#"{{"type":"ad_spend","event_id":"m{i}","timestamp":{ts},"campaign":"c{key}","channel":"x","amount":{}.5}}"#,
                    i % 30
                ),
            }
        })
        .collect()
    }

    /// `mixed` as builds before `too_late` meant "in no window's buckets" made it: they also
    /// accepted events older than the 1h window's oldest bucket but within the hour, which
    /// went into no ring, only into the counters and the de-duplication ids.
    fn mixed_as_before(p: &Pipeline) -> PartitionState {
        let mut st = p.new_partition();
        for (i, json) in mixed_events().iter().enumerate() {
            let event = p.decoder.decode(json.as_bytes(), T0).unwrap();
            let ts = event.timestamp_ms;
            if p.windows.too_late(ts, T0) && ts > T0 - p.windows.longest_ms() {
                p.apply_in_time(&mut st, &event, T0);
            } else {
                p.process(&mut st, json.as_bytes(), T0, T0);
            }
            st.applied(i as i64, T0, T0);
        }
        st
    }

    /// `saved` (`mixed`'s state as a build before format 5 encoded it) reads back as the
    /// state that build made of the same events.
    fn reads_as_mixed(saved: &[u8]) {
        let p = pipeline(&["5m", "1h"]);
        let (back, layout) = decode(saved).unwrap();
        assert!(matches!(layout, SavedLayout::Geometry(_)));
        let now = mixed_as_before(&p);
        assert!(
            now.dedup().len() > mixed(&p).dedup().len(),
            "the events the rule change concerns are there"
        );
        reads_as(back, &layout, now);
    }

    /// A decoded state reads as `now`, the state made of `mixed_events`, in its aggregates,
    /// its offset and its remembered ids.
    fn reads_as(mut back: PartitionState, layout: &SavedLayout, now: PartitionState) {
        let p = pipeline(&["5m", "1h"]);
        assert!(back.reconfigure(&p, layout, T0).kept_all());
        assert!(back.same_aggregates(&now));
        assert_eq!(back.next_offset(), now.next_offset());
        assert_eq!(back.dedup().len(), now.dedup().len());
        let totals = |st: &PartitionState| -> Vec<_> {
            let mut all: Vec<_> = st
                .keys()
                .map(|(k, ks)| (k.clone(), ks.totals(), ks.window_sums(&p.windows, 1, T0)))
                .collect();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            all
        };
        assert_eq!(totals(&back), totals(&now));
        assert!(totals(&now).iter().all(|(_, t, w)| t.visits > 0
            && t.orders > 0
            && t.ad_spend_micros > 0
            && w.visits > 0));
        // The same ids are remembered: sent again, each event meets the same fate.
        let mut now = now;
        let outcomes = |st: &mut PartitionState| -> Vec<Outcome> {
            let events = mixed_events();
            events
                .iter()
                .map(|e| p.process(st, e.as_bytes(), T0, T0))
                .collect()
        };
        let (fresh, restored) = (outcomes(&mut now), outcomes(&mut back));
        assert_eq!(restored, fresh);
        assert!(fresh.iter().filter(|o| **o == Outcome::Duplicate).count() > 100);
    }

    /// Bytes the state takes before compression (whose output depends on the order the hash
    /// tables iterate in).
    fn raw_len(payload: &[u8]) -> u32 {
        u32::from_le_bytes(payload[1..5].try_into().unwrap())
    }

    /// Checkpoints written before an upgrade still read the same: `testdata/format-3.bin`
    /// is `mixed`'s state as a format-3 build encoded it, before the monotonic counters
    /// moved from the key into its series, the window totals beside their heads, and the
    /// de-duplication ids from varints to words.
    #[test]
    fn a_checkpoint_of_format_3_reads_the_same() {
        let v3 = include_bytes!("testdata/format-3.bin");
        assert_eq!(v3[0], 3);
        reads_as_mixed(v3);
        // Its ids took nine or ten bytes each as varints (hashes spread over 64 bits), where
        // words take eight (these few ids are all in the buffer of the newest ones).
        let p = pipeline(&["5m", "1h"]);
        let st = mixed(&p);
        let (now, ids) = (encode(&st, &p.windows), st.dedup().len() as u32);
        assert!(ids > 100);
        assert!(
            raw_len(&now) + ids <= raw_len(v3),
            "{} against {}",
            raw_len(&now),
            raw_len(v3)
        );
    }

    /// Checkpoints of format 4 still read the same: `testdata/format-4.bin` is `mixed`'s
    /// state as a format-4 build encoded it, before rings were saved with their layout,
    /// windows with their coverage, and with the de-duplication ids as a hash table's 64-bit
    /// words: converted as it is read.
    #[test]
    fn a_checkpoint_of_format_4_reads_the_same() {
        let v4 = include_bytes!("testdata/format-4.bin");
        assert_eq!(v4[0], 4);
        reads_as_mixed(v4);
    }

    /// The format this build writes is pinned: `testdata/format-5.bin` is `mixed`'s state as
    /// the build that introduced format 5 encoded it (`encode(&mixed(&p), &p.windows)`). A
    /// change that alters the bytes needs a new version (and the old one read, as formats 3
    /// and 4 are).
    #[test]
    fn a_checkpoint_of_format_5_reads_the_same_and_is_written_alike() {
        let v5 = include_bytes!("testdata/format-5.bin");
        assert_eq!(v5[0], VERSION);
        let p = pipeline(&["5m", "1h"]);
        let (back, layout) = decode(v5).unwrap();
        assert_eq!(layout, SavedLayout::Rings(p.windows.layout()));
        reads_as(back, &layout, mixed(&p));
        assert_eq!(raw_len(&encode(&mixed(&p), &p.windows)), raw_len(v5));
    }

    #[test]
    fn state_round_trips_exactly() {
        let p = pipeline(&["5m", "1h"]);
        let st = filled(&p, 2_000);
        let bytes = encode(&st, &p.windows);
        let (mut back, layout) = decode(&bytes).unwrap();
        assert_eq!(layout, SavedLayout::Rings(p.windows.layout()));
        assert!(back.reconfigure(&p, &layout, T0).kept_all());
        assert!(back.same_aggregates(&st));
        assert_eq!(back.next_offset(), 2_000);
        assert_eq!(back.watermark_ms(), st.watermark_ms());
        // The dedup memory came along: the same events are duplicates after restore.
        let again = format!(r#"{{"type":"order","event_id":"o5","timestamp":{T0},"amount":1}}"#);
        assert_eq!(
            p.process(&mut back, again.as_bytes(), T0, T0),
            crate::pure::pipeline::Outcome::Duplicate
        );
        // Reading back gives the same sums.
        let (a, b) = (Store::default(), Store::default());
        let tp = TopicPartition::new("t", 0);
        *a.get_or_insert(&tp, || p.new_partition()).write() = st;
        *b.get_or_insert(&tp, || p.new_partition()).write() = back;
        assert_eq!(
            a.snapshot(&p.windows, T0).rows,
            b.snapshot(&p.windows, T0).rows
        );
    }

    #[test]
    fn reused_buffers_encode_what_fresh_ones_do() {
        let p = pipeline(&["5m", "1h"]);
        let (big, small) = (filled(&p, 5_000), filled(&p, 20));
        let mut scratch = Scratch::default();
        encode_into(&big, &p.windows, &mut scratch);
        assert_eq!(scratch.payload(), encode(&big, &p.windows));
        // A smaller state into buffers a larger one left: nothing of the larger one remains.
        encode_into(&small, &p.windows, &mut scratch);
        assert_eq!(scratch.payload(), encode(&small, &p.windows));
        let (back, _) = decode(scratch.payload()).unwrap();
        assert_eq!(back.next_offset(), small.next_offset());

        // Two states' chunks back to back in one buffer each read back on their own.
        let mut all = Vec::new();
        let first = append_chunks(&encode(&big, &p.windows), 1, 1024, &mut all);
        let second = append_chunks(scratch.payload(), 2, 1024, &mut all);
        let joined: Vec<u8> = second
            .iter()
            .flat_map(|r| parse_chunk(&all[r.clone()]).unwrap().data.to_vec())
            .collect();
        assert!(first.len() > 1);
        assert_eq!(joined, scratch.payload());
    }

    #[test]
    fn empty_rings_compress_well() {
        let p = pipeline(&["5m", "1h", "24h"]);
        let st = filled(&p, 500);
        let raw = postcard::to_stdvec(&SavedRef {
            layout: p.windows.layout(),
            state: &st,
        })
        .unwrap();
        let packed = encode(&st, &p.windows);
        assert!(
            packed.len() * 2 < raw.len(),
            "{} vs {}",
            packed.len(),
            raw.len()
        );
    }

    /// Another window configuration keeps the rings of the windows that did not change, and
    /// says which ones must be rebuilt; the counters stay in every case.
    #[test]
    fn a_changed_configuration_keeps_what_still_fits() {
        let p = pipeline(&["5m", "1h"]);
        let st = filled(&p, 100);
        let five = |st: &PartitionState| -> Vec<crate::pure::kpi::Sums> {
            let mut all: Vec<_> = st
                .keys()
                .map(|(k, ks)| (k.clone(), ks.window_sums(&p.windows, 0, T0)))
                .collect();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            all.into_iter().map(|(_, s)| s).collect()
        };
        let (mut back, layout) = decode(&encode(&st, &p.windows)).unwrap();
        let other = pipeline(&["5m", "2h"]);
        let reshape = back.reconfigure(&other, &layout, T0);
        assert_eq!(reshape.rebuild_below, [i64::MIN, i64::MAX]);
        assert_eq!(five(&back), five(&st), "the 5m window is kept as it was");
        assert!(five(&st).iter().any(|s| s.orders > 0));
        let (_, ks) = back.keys().next().unwrap();
        assert!(ks.totals().orders > 0);
        assert_eq!(ks.window_sums(&other.windows, 1, T0), Default::default());

        // Same windows, another bucket count: the same spans, but rings of another size.
        for buckets in [120, 30] {
            let (mut back, layout) = decode(&encode(&st, &p.windows)).unwrap();
            let finer = Pipeline {
                windows: Windows::from_labels(&["5m", "1h"], buckets),
                ..pipeline(&["5m", "1h"])
            };
            let reshape = back.reconfigure(&finer, &layout, T0);
            assert_eq!(
                reshape.rebuild_below,
                [i64::MAX, i64::MAX],
                "{buckets} buckets"
            );
            let (_, ks) = back.keys().next().unwrap();
            assert_eq!(ks.window_sums(&finer.windows, 1, T0), Default::default());
            assert!(ks.totals().orders > 0);
        }
    }

    /// Three hours of one partition as (message, when it was applied): visits, orders and
    /// spend over a few keys, every eleventh message a re-send of one from two minutes
    /// before, a few malformed.
    fn timeline() -> Vec<(String, i64)> {
        let start = T0 - 3 * 3_600_000;
        (0..3_600_i64)
            .map(|i| {
                let now = start + i * 3_000;
                let (id, ts) = if i % 11 == 10 { (i - 40, now - 120_000) } else { (i, now - (i % 5) * 700) };
                let key = id % 4;
                let json = match (i % 97 == 96, id % 3) {
                    (true, _) => "{not json".to_string(),
                    (_, 0) => format!(
                        r#"{{"type":"visit","event_id":"t{id}","timestamp":{ts},"campaign":"c{key}"}}"#
                    ),
                    (_, 1) => format!(
                        r#"{{"type":"order","event_id":"t{id}","timestamp":{ts},"campaign":"c{key}","amount":{}.5,"new_customer":{}}}"#,
                        id % 40,
                        id % 4 == 0
                    ),
                    _ => format!(
                        r#"{{"type":"ad_spend","event_id":"t{id}","timestamp":{ts},"campaign":"c{key}","amount":{}}}"#,
                        id % 9 + 1
                    ),
                };
                (json, now)
            })
            .collect()
    }

    /// A configuration change at a restore: the windows that did not change are kept, the
    /// others are read again from the input, and every window ends as a state built under
    /// the new configuration from the start would have it; the counters count nothing twice
    /// and every window says it is complete.
    #[test]
    fn windows_a_configuration_change_cannot_keep_are_rebuilt_from_the_input() {
        use crate::pure::rebuild::COMPLETE;
        let before = pipeline(&["5m", "1h"]);
        let log = timeline();
        let end = log.last().unwrap().1;
        // Five minutes of the stream come after the restore: the windows read at its end
        // reach back well before it.
        let k = log.len() - 100;
        let mut saved = before.new_partition();
        for (i, (json, now)) in log[..k].iter().enumerate() {
            before.process(&mut saved, json.as_bytes(), *now, *now);
            saved.applied(i as i64, *now, *now);
        }
        let restore_at = log[k - 1].1 + 1_000;
        for (what, windows, kept) in [
            (
                "a drop rule on 1h",
                Windows::with_previous(&["5m", "1h"], 60, &["1h"]),
                "partly",
            ),
            (
                "a window added",
                Windows::from_labels(&["5m", "1h", "2h"], 60),
                "5m, 1h",
            ),
            (
                "buckets changed",
                Windows::from_labels(&["5m", "1h"], 30),
                "none",
            ),
            ("a window removed", Windows::from_labels(&["1h"], 60), "1h"),
        ] {
            let after = Pipeline {
                windows,
                ..before.clone()
            };
            let (mut back, layout) = decode(&encode(&saved, &before.windows)).unwrap();
            let reshape = back.reconfigure(&after, &layout, restore_at);
            // Where the consumer would start: the index, or (as here) the topic's start.
            let (from, covers) = back
                .rebuild_start(&after, &reshape, restore_at)
                .unwrap_or((0, COMPLETE));
            let start = back.start_rebuild(&reshape, from, covers, after.new_dedup());
            assert!(start <= k as i64, "{what}");
            for (i, (json, now)) in log.iter().enumerate().skip(start as usize) {
                let now = (*now).max(restore_at);
                if back.rebuilding(i as i64) {
                    after.replay(&mut back, json.as_bytes(), now, now);
                } else {
                    after.process(&mut back, json.as_bytes(), now, now);
                }
                back.applied(i as i64, now, now);
            }
            assert!(!back.is_rebuilding(), "{what}");
            let mut reference = after.new_partition();
            for (i, (json, now)) in log.iter().enumerate() {
                after.process(&mut reference, json.as_bytes(), *now, *now);
                reference.applied(i as i64, *now, *now);
            }
            assert_eq!(back.keys().count(), reference.keys().count(), "{what}");
            for (key, want) in reference.keys() {
                let got = back
                    .keys()
                    .find(|(k, _)| *k == key)
                    .map(|(_, ks)| ks)
                    .unwrap();
                assert_eq!(got.totals(), want.totals(), "{what}: counters of {key:?}");
                for (w, spec) in after.windows.specs().iter().enumerate() {
                    assert_eq!(
                        got.window_sums(&after.windows, w, end),
                        want.window_sums(&after.windows, w, end),
                        "{what}: {} of {key:?} ({kept} kept)",
                        spec.label
                    );
                    if spec.has_previous() {
                        assert_eq!(
                            got.previous_sums(&after.windows, w, end),
                            want.previous_sums(&after.windows, w, end),
                            "{what}: the {} before of {key:?}",
                            spec.label
                        );
                    }
                }
            }
            for (w, from) in back.coverage().enumerate() {
                let spec = &after.windows.specs()[w];
                let needs = after.windows.start_ms(w, end)
                    - if spec.has_previous() {
                        spec.length_ms
                    } else {
                        0
                    };
                assert!(from <= needs, "{what}: {} covered from {from}", spec.label);
            }
        }
    }

    #[test]
    fn damaged_or_foreign_bytes_are_errors_not_panics() {
        assert!(decode(&[]).is_err());
        assert!(matches!(
            decode(&[9, 1, 2]),
            Err(CheckpointError::Version(9))
        ));
        assert!(decode(&[VERSION, 1, 2, 3]).is_err());
        let p = pipeline(&["5m"]);
        let mut bytes = encode(&filled(&p, 50), &p.windows);
        let n = bytes.len();
        bytes.truncate(n / 2);
        assert!(decode(&bytes).is_err());
    }

    #[test]
    fn chunks_carry_their_header_and_reassemble() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let parts = chunks(&payload, 42, 1024);
        assert_eq!(parts.len(), 10_000usize.div_ceil(1024 - CHUNK_HEADER));
        let mut back = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            assert!(part.len() <= 1024);
            let c = parse_chunk(part).unwrap();
            assert_eq!(
                (c.checkpoint_id, c.index, c.count),
                (42, i as u32, parts.len() as u32)
            );
            back.extend_from_slice(c.data);
        }
        assert_eq!(back, payload);
        assert_eq!(chunks(&[], 1, 1024).len(), 1);
        assert!(parse_chunk(b"EPCKnope").is_none());
    }

    #[test]
    fn keys_round_trip_and_other_groups_are_ignored() {
        let tp = TopicPartition::new("ad-spend", 7);
        assert_eq!(
            parse_key("g/1", &manifest_key("g/1", &tp)),
            Some(Record::Manifest(tp.clone()))
        );
        assert_eq!(
            parse_key("g", &chunk_key("g", &tp, 1, 3)),
            Some(Record::Chunk {
                tp: tp.clone(),
                slot: 1,
                index: 3
            })
        );
        assert_eq!(parse_key("other", &manifest_key("g", &tp)), None);
        assert_eq!(parse_key("g", "g/ad-spend/x/m"), None);
    }

    /// Writes checkpoints of `tp` into a fake log the way the Kafka writer does.
    fn write(
        log: &mut Vec<(Vec<u8>, Vec<u8>)>,
        tp: &TopicPartition,
        id: u64,
        payload: &[u8],
        next_offset: i64,
        with_manifest: bool,
    ) {
        let slot = (id % 2) as u8;
        let first = log.len() as i64;
        let parts = chunks(payload, id, 64);
        for (i, c) in parts.iter().enumerate() {
            log.push((chunk_key("g", tp, slot, i as u32).into_bytes(), c.clone()));
        }
        if with_manifest {
            let m = Manifest {
                version: VERSION,
                checkpoint_id: id,
                slot,
                chunks: parts.len() as u32,
                first_chunk_offset: first,
                next_offset,
                bytes: payload.len() as u64,
                checksum: xxhash_rust::xxh3::xxh3_64(payload),
                written_at_ms: 0,
                dead_letters: None,
            };
            log.push((
                manifest_key("g", tp).into_bytes(),
                serde_json::to_vec(&m).unwrap(),
            ));
        }
    }

    #[test]
    fn the_assembler_finds_the_newest_complete_checkpoint() {
        let a = TopicPartition::new("visits", 0);
        let b = TopicPartition::new("orders", 3);
        let mut log = Vec::new();
        write(&mut log, &a, 1, &[1; 300], 10, true);
        write(&mut log, &b, 7, &[7; 100], 70, true);
        write(&mut log, &a, 2, &[2; 300], 20, true);
        // A crash in the middle of checkpoint 3: chunks but no manifest.
        write(&mut log, &a, 3, &[3; 300], 30, false);
        let wanted = [a.clone(), b.clone()];
        let mut asm = Assembler::default();
        // Read newest range first, as the backward scan does.
        let mid = log.len() / 2;
        for (offset, (k, v)) in log.iter().enumerate().skip(mid) {
            asm.offer("g", &wanted, offset as i64, k, v);
        }
        for (offset, (k, v)) in log.iter().enumerate().take(mid) {
            asm.offer("g", &wanted, offset as i64, k, v);
        }
        let (m, payload) = asm.newest(&a).unwrap();
        assert_eq!((m.checkpoint_id, m.next_offset), (2, 20));
        assert_eq!(payload, vec![2; 300]);
        assert_eq!(asm.newest(&b).unwrap().0.next_offset, 70);
        assert!(asm.newest(&TopicPartition::new("visits", 9)).is_none());
    }

    #[test]
    fn a_damaged_newest_checkpoint_falls_back_to_the_previous_one() {
        let a = TopicPartition::new("visits", 0);
        let mut log = Vec::new();
        write(&mut log, &a, 1, &[1; 200], 10, true);
        write(&mut log, &a, 2, &[2; 200], 20, true);
        // Damage one chunk of checkpoint 2.
        let victim = log
            .iter()
            .rposition(|(k, _)| String::from_utf8_lossy(k).contains("/c/0/1"))
            .unwrap();
        let last = log[victim].1.len() - 1;
        log[victim].1[last] ^= 0xff;
        let mut asm = Assembler::default();
        for (offset, (k, v)) in log.iter().enumerate() {
            asm.offer("g", std::slice::from_ref(&a), offset as i64, k, v);
        }
        assert_eq!(asm.newest(&a).unwrap().0.checkpoint_id, 1);
    }

    mod property {
        use super::*;
        use crate::pure::key::Key;
        use crate::pure::kpi::Sums;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        const H: i64 = 3_600_000;

        #[derive(Debug, Clone)]
        struct Ev {
            kind: u8,
            campaign: u8,
            channel: u8,
            age_ms: i64,
            cents: u32,
            new: bool,
        }

        fn ev() -> impl Strategy<Value = Ev> {
            (
                0u8..3,
                0u8..4,
                0u8..2,
                0i64..20 * H,
                0u32..100_000,
                any::<bool>(),
            )
                .prop_map(|(kind, campaign, channel, age_ms, cents, new)| Ev {
                    kind,
                    campaign,
                    channel,
                    age_ms,
                    cents,
                    new,
                })
        }

        fn json(id: usize, e: &Ev, ts: i64) -> String {
            let (c, ch) = (format!("c{}", e.campaign), format!("ch{}", e.channel));
            let amount = format!("\"{}.{:02}\"", e.cents / 100, e.cents % 100);
            match e.kind {
                0 => format!(
                    r#"{{"type":"visit","event_id":"e{id}","timestamp":{ts},"campaign":"{c}","channel":"{ch}"}}"#
                ),
                1 => format!(
                    r#"{{"type":"order","event_id":"e{id}","timestamp":{ts},"campaign":"{c}","channel":"{ch}","amount":{amount},"new_customer":{}}}"#,
                    e.new
                ),
                _ => format!(
                    r#"{{"type":"ad_spend","event_id":"e{id}","timestamp":{ts},"campaign":"{c}","channel":"{ch}","amount":{amount}}}"#
                ),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            /// Shuffled, duplicated events, with checkpoints taken and crashes (restore the
            /// last checkpoint, replay everything after it) at random points, give exactly
            /// the sums of a naive computation over the distinct events.
            #[test]
            fn checkpoint_restore_and_replay_is_exact(
                events in proptest::collection::vec(ev(), 1..150),
                copies in proptest::collection::vec(1usize..4, 150),
                order_seed in any::<u64>(),
                checkpoint_every in 1usize..40,
                crash_points in proptest::collection::btree_set(0usize..400, 0..4),
            ) {
                let mut p = pipeline(&["5m", "1h", "24h"]);
                p.dedup_horizon_ms = 30 * 24 * H;
                let start = T0 + 30 * 24 * H;
                // Each distinct event once or more, in a shuffled order.
                let mut arrivals: Vec<usize> = events.iter().enumerate().flat_map(|(i, _)| std::iter::repeat_n(i, copies[i])).collect();
                let mut rng = order_seed;
                for i in (1..arrivals.len()).rev() {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    arrivals.swap(i, (rng >> 33) as usize % (i + 1));
                }
                // Each distinct event keeps one timestamp, relative to the first arrival.
                let ts: Vec<i64> = events.iter().map(|e| start - e.age_ms).collect();
                let log: Vec<String> = arrivals.iter().map(|&i| json(i, &events[i], ts[i])).collect();

                let mut state = p.new_partition();
                let mut saved = (encode(&state, &p.windows), 0usize);
                let mut next = 0usize; // next log position to apply
                let mut now = start;
                let mut crashes = crash_points.into_iter().peekable();
                while next < log.len() {
                    now += 1_000;
                    p.process(&mut state, log[next].as_bytes(), now, now);
                    state.applied(next as i64, now, now);
                    next += 1;
                    if next.is_multiple_of(checkpoint_every) {
                        saved = (encode(&state, &p.windows), next);
                    }
                    if crashes.peek().is_some_and(|c| *c <= next) {
                        crashes.next();
                        // Crash: everything since the last checkpoint is lost and replayed.
                        let (mut restored, layout) = decode(&saved.0).unwrap();
                        prop_assert!(restored.reconfigure(&p, &layout, now).kept_all());
                        prop_assert_eq!(restored.next_offset() as usize, saved.1);
                        state = restored;
                        next = saved.1;
                    }
                }

                // The naive reference, over distinct events, read at the end.
                let mut expected: BTreeMap<Key, (Vec<Sums>, Sums)> = BTreeMap::new();
                for (i, e) in events.iter().enumerate() {
                    let key = Key::new(&format!("c{}", e.campaign), &format!("ch{}", e.channel));
                    let entry = expected.entry(key).or_insert_with(|| (vec![Sums::default(); 3], Sums::default()));
                    let mut s = Sums::default();
                    match e.kind {
                        0 => s.visits = 1,
                        1 => {
                            s.orders = 1;
                            s.new_customers = u64::from(e.new);
                            s.gmv_micros = e.cents as u128 * 10_000;
                        }
                        _ => s.ad_spend_micros = e.cents as u128 * 10_000,
                    }
                    entry.1 += &s;
                    for (w, spec) in p.windows.specs().iter().enumerate() {
                        let b = ts[i].div_euclid(spec.width_ms);
                        let now_b = now.div_euclid(spec.width_ms);
                        if b > now_b - spec.buckets as i64 && b <= now_b {
                            entry.0[w] += &s;
                        }
                    }
                }
                let store = Store::default();
                *store.get_or_insert(&TopicPartition::new("t", 0), || p.new_partition()).write() = state;
                let snapshot = store.snapshot(&p.windows, now);
                prop_assert_eq!(snapshot.rows.len(), expected.len());
                for (key, (windows, totals)) in &expected {
                    let row = &snapshot.rows[key];
                    prop_assert_eq!(&row.totals, totals, "totals of {:?}", key);
                    prop_assert_eq!(&row.windows, windows, "windows of {:?}", key);
                }
            }
        }
    }
}
