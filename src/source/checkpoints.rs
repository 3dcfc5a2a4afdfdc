//! Writes and reads checkpoints on the checkpoint topic (see the parent module for the format).
//!
//! Both directions are blocking: they run in the rebalance callback (restore on assignment,
//! a final save on revocation) and on a blocking thread for the periodic saves.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::config::{CheckpointConfig, KafkaConfig, Redactor};
use crate::pure::partition::{PartitionState, SavedLayout};
use crate::pure::window::Windows;
use crate::source::client::Quiet;
use crate::source::deadletter::DeadLetters;
use crate::state::checkpoint::{
    Assembler, CheckpointError, DeadLetterMark, Manifest, Scratch, VERSION, append_chunks,
    checkpoint_partition, chunk_key, encode_into, manifest_key,
};
use crate::state::store::{SharedPartition, TopicPartition};

/// How long a checkpoint waits for the dead letters of what it covers; past it, the partition
/// is saved at the next round.
const DEAD_LETTER_WAIT: Duration = Duration::from_secs(5);

/// A checkpoint read back.
pub struct Loaded {
    pub state: PartitionState,
    /// How its rings were laid out: see `PartitionState::reconfigure`.
    pub layout: SavedLayout,
    pub manifest: Manifest,
}

/// One message to the checkpoint topic.
struct Record<'a> {
    partition: i32,
    key: String,
    payload: &'a [u8],
}

/// What one save wrote.
#[derive(Debug, Clone, Copy)]
pub struct Saved {
    pub bytes: usize,
    pub next_offset: i64,
}

/// Bytes of chunks after which a save waits for them to be stored before encoding more. A
/// wave closes once it has reached this, so up to this plus one partition's state is in
/// flight, and the reused chunk buffer keeps that size.
const WAVE_BYTES: usize = 4 * 1024 * 1024;

/// One partition's checkpoint, encoded and waiting to be sent.
struct Pending {
    tp: TopicPartition,
    /// Where this partition's chunk values lie in the wave's buffer.
    ranges: Vec<Range<usize>>,
    bytes: usize,
    checksum: u64,
    next_offset: i64,
    seq: u64,
    checkpoint_id: u64,
    slot: u8,
    partition: i32,
    dead_letters: Option<DeadLetterMark>,
}

/// What a save encodes into, kept from one save to the next (see [`Scratch`]).
#[derive(Debug, Default)]
struct SaveBuffers {
    scratch: Scratch,
    /// Every chunk value of one save, back to back.
    chunks: Vec<u8>,
}

/// Per input partition: the offset last saved and how many checkpoints were written.
#[derive(Debug, Clone, Copy, Default)]
struct Written {
    next_offset: i64,
    seq: u64,
}

impl Written {
    /// True when the last save already covers `state`: it has not moved since.
    fn covers(written: Option<Written>, state: &PartitionState) -> bool {
        written.is_some_and(|w| w.next_offset == state.next_offset())
    }
}

pub struct CheckpointStore {
    group: String,
    topic: String,
    create_partitions: i32,
    replication: i32,
    client_config: ClientConfig,
    /// For the admin client's messages.
    redactor: Redactor,
    producer: BaseProducer<Deliveries>,
    reader: Mutex<BaseConsumer<Quiet>>,
    partitions: Mutex<Option<i32>>,
    written: Mutex<HashMap<TopicPartition, Written>>,
    /// One save at a time, so a periodic save and a revocation save never interleave; and
    /// the buffers saves reuse.
    write_lock: Mutex<SaveBuffers>,
    /// Rounds saved so far: where the next one starts.
    rounds: AtomicUsize,
    windows: Windows,
    /// Random per process, so checkpoint ids of different writers do not collide.
    id_base: u64,
    /// `kafka.dead_letter_topic`: a checkpoint waits for the dead letters of what it covers.
    dead_letters: Option<Arc<DeadLetters>>,
}

impl CheckpointStore {
    pub fn new(
        kafka: &KafkaConfig,
        cfg: &CheckpointConfig,
        windows: Windows,
    ) -> Result<Self, CheckpointError> {
        let base = crate::source::client::side_client(kafka);
        let producer: BaseProducer<Deliveries> = base
            .clone()
            .set("client.id", "ecom-pulse-checkpoints")
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .set("linger.ms", "0")
            .set("compression.type", "none")
            .create_with_context(Deliveries {
                next: Default::default(),
                delivered: Default::default(),
                quiet: Quiet {
                    client: "checkpoints",
                    redactor: kafka.properties.redactor(),
                },
            })?;
        let reader: BaseConsumer<Quiet> = base
            .clone()
            .set("client.id", "ecom-pulse-restore")
            // librdkafka's assign() wants a group id; this client never joins or commits.
            .set("group.id", format!("{}-restore", kafka.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .create_with_context(Quiet {
                client: "restore",
                redactor: kafka.properties.redactor(),
            })?;
        Ok(CheckpointStore {
            group: kafka.group_id.clone(),
            topic: cfg.topic_name(&kafka.group_id),
            create_partitions: cfg.partitions,
            replication: cfg.replication_factor,
            client_config: base,
            redactor: kafka.properties.redactor(),
            producer,
            reader: Mutex::new(reader),
            partitions: Mutex::new(None),
            written: Mutex::new(HashMap::new()),
            write_lock: Mutex::new(SaveBuffers::default()),
            rounds: AtomicUsize::new(0),
            windows,
            id_base: rand::random::<u64>() & !0xffff_ffff,
            dead_letters: None,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Makes sure the checkpoint topic exists, creating it (compacted) if needed, and keeps
    /// trying while no broker answers. Runs in the background: restores wait for it.
    pub async fn ensure_topic(
        self: std::sync::Arc<Self>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut logged = false;
        while !shutdown.is_cancelled() {
            let store = self.clone();
            let exists = tokio::task::spawn_blocking(move || {
                store.partition_count(Duration::from_secs(5)).is_ok()
            })
            .await
            .unwrap_or(false);
            if exists || self.create_topic(Duration::from_secs(10)).await {
                return;
            }
            if !logged {
                tracing::warn!(topic = %self.topic, "checkpoint topic not available yet; partitions are restored once it is");
                logged = true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    /// True if the topic was created or already exists.
    async fn create_topic(&self, timeout: Duration) -> bool {
        let quiet = Quiet {
            client: "admin",
            redactor: self.redactor.clone(),
        };
        let admin: AdminClient<Quiet> = match self.client_config.create_with_context(quiet) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot create an admin client for the checkpoint topic");
                return false;
            }
        };
        let topic = NewTopic::new(
            &self.topic,
            self.create_partitions,
            TopicReplication::Fixed(self.replication),
        )
        .set("cleanup.policy", "compact")
        .set("segment.ms", "600000")
        .set("min.cleanable.dirty.ratio", "0.1");
        let options = AdminOptions::new().operation_timeout(Some(timeout));
        match tokio::time::timeout(timeout, admin.create_topics([&topic], &options)).await {
            Ok(Ok(results)) => match results.into_iter().next() {
                Some(Ok(_)) => {
                    tracing::info!(topic = %self.topic, partitions = self.create_partitions, "created the checkpoint topic");
                    true
                }
                Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => true,
                Some(Err((_, code))) => {
                    tracing::warn!(topic = %self.topic, error = ?code, "cannot create the checkpoint topic");
                    false
                }
                None => false,
            },
            Ok(Err(e)) => {
                tracing::debug!(topic = %self.topic, error = %e, "cannot create the checkpoint topic yet");
                false
            }
            Err(_) => false,
        }
    }

    /// Partition count of the checkpoint topic, from metadata (cached once known).
    fn partition_count(&self, timeout: Duration) -> Result<i32, CheckpointError> {
        if let Some(n) = *self.partitions.lock() {
            return Ok(n);
        }
        let metadata = self
            .reader
            .lock()
            .fetch_metadata(Some(&self.topic), timeout)?;
        let n = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.topic && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                CheckpointError::Timeout(format!(
                    "checkpoint topic {} has no partitions yet",
                    self.topic
                ))
            })?;
        *self.partitions.lock() = Some(n);
        Ok(n)
    }

    /// Saves every partition of `parts` whose state moved since its last save. Chunks go out
    /// in waves of about `WAVE_BYTES`, each wave's chunks together and then its manifests:
    /// two round trips per wave, not two per partition (with hundreds of partitions that was
    /// the difference between milliseconds and half a minute), while the bytes in flight
    /// stay bounded (librdkafka copies every chunk until it is acknowledged; a round of all
    /// partitions at once swung resident memory by the size of the whole state, every round).
    /// Returns, per partition saved or failed, what happened.
    pub fn save_all(
        &self,
        parts: &[(TopicPartition, SharedPartition)],
    ) -> Vec<(TopicPartition, Result<Saved, CheckpointError>)> {
        let mut buffers = self.write_lock.lock();
        let SaveBuffers { scratch, chunks } = &mut *buffers;
        let count = match self.partition_count(Duration::from_secs(10)) {
            Ok(n) => n,
            Err(e) => {
                let message = e.to_string();
                return parts
                    .iter()
                    .map(|(tp, _)| (tp.clone(), Err(CheckpointError::Timeout(message.clone()))))
                    .collect();
            }
        };
        let mut out = Vec::with_capacity(parts.len());
        // Each round starts one partition further on, so that a partition whose wave keeps
        // failing does not keep the ones after it from ever being saved (see below).
        let start = match parts.len() {
            0 => 0,
            n => self.rounds.fetch_add(1, Ordering::Relaxed) % n,
        };
        let mut parts = parts[start..].iter().chain(&parts[..start]).peekable();
        while parts.peek().is_some() {
            chunks.clear();
            let mut wave = Vec::new();
            while chunks.len() < WAVE_BYTES {
                let Some((tp, state)) = parts.next() else {
                    break;
                };
                let previous = self.written.lock().get(tp).copied();
                let (next_offset, dead_letters) = {
                    let st = state.read();
                    if Written::covers(previous, &st) {
                        continue;
                    }
                    // Held, so that the consumer adds no rejected message to it meanwhile:
                    // every dead letter of what the checkpoint covers is then delivered.
                    let dead_letters = match &self.dead_letters {
                        Some(dl) => match dl.settle(tp, DEAD_LETTER_WAIT) {
                            Ok((partition, offset)) => Some(DeadLetterMark { partition, offset }),
                            Err(e) => {
                                out.push((
                                    tp.clone(),
                                    Err(CheckpointError::DeadLetters(e.to_string())),
                                ));
                                continue;
                            }
                        },
                        None => None,
                    };
                    encode_into(&st, &self.windows, scratch);
                    (st.next_offset(), dead_letters)
                };
                let payload = scratch.payload();
                let seq = previous.map_or(1, |w| w.seq + 1);
                let checkpoint_id = self.id_base | (seq & 0xffff_ffff);
                wave.push(Pending {
                    tp: tp.clone(),
                    ranges: append_chunks(
                        payload,
                        checkpoint_id,
                        crate::state::checkpoint::MAX_CHUNK_BYTES,
                        chunks,
                    ),
                    bytes: payload.len(),
                    checksum: xxhash_rust::xxh3::xxh3_64(payload),
                    next_offset,
                    seq,
                    checkpoint_id,
                    slot: (seq % 2) as u8,
                    partition: checkpoint_partition(tp, count),
                    dead_letters,
                });
            }
            let sent = out.len();
            self.send(&wave, chunks, &mut out);
            // A wave whose every record timed out (the brokers are away) would be followed by
            // more that each wait out message.timeout.ms: fail the rest of the round at once.
            // Only timeouts: other errors come back quickly and may be one partition's.
            let results = &out[sent..];
            if let Some((_, Err(first))) = results.first()
                && results
                    .iter()
                    .all(|(_, r)| r.as_ref().is_err_and(CheckpointError::is_timeout))
            {
                let message = format!("not sent after an earlier wave timed out: {first}");
                for (tp, state) in parts.by_ref() {
                    let previous = self.written.lock().get(tp).copied();
                    if !Written::covers(previous, &state.read()) {
                        out.push((tp.clone(), Err(CheckpointError::Timeout(message.clone()))));
                    }
                }
            }
        }
        out
    }

    /// Stores one wave's chunks, then the manifests of the partitions whose chunks all were.
    fn send(
        &self,
        wave: &[Pending],
        chunks: &[u8],
        out: &mut Vec<(TopicPartition, Result<Saved, CheckpointError>)>,
    ) {
        if wave.is_empty() {
            return;
        }
        // Every chunk is stored before the manifest that points at it is sent.
        let chunk_records: Vec<Vec<Record<'_>>> = wave
            .iter()
            .map(|p| {
                p.ranges
                    .iter()
                    .enumerate()
                    .map(|(i, range)| Record {
                        partition: p.partition,
                        key: chunk_key(&self.group, &p.tp, p.slot, i as u32),
                        payload: &chunks[range.clone()],
                    })
                    .collect()
            })
            .collect();
        let firsts = self.produce(&chunk_records);
        let mut manifests = Vec::new();
        let mut written = Vec::new();
        for (p, first) in wave.iter().zip(firsts) {
            match first {
                Ok(first_chunk_offset) => {
                    let manifest = Manifest {
                        version: VERSION,
                        checkpoint_id: p.checkpoint_id,
                        slot: p.slot,
                        chunks: p.ranges.len() as u32,
                        first_chunk_offset,
                        next_offset: p.next_offset,
                        bytes: p.bytes as u64,
                        checksum: p.checksum,
                        written_at_ms: crate::now_ms(),
                        dead_letters: p.dead_letters,
                    };
                    manifests.push(serde_json::to_vec(&manifest).expect("a manifest serialises"));
                    written.push(p);
                }
                Err(e) => out.push((p.tp.clone(), Err(e))),
            }
        }
        let manifest_records: Vec<Vec<Record<'_>>> = written
            .iter()
            .zip(&manifests)
            .map(|(p, m)| {
                vec![Record {
                    partition: p.partition,
                    key: manifest_key(&self.group, &p.tp),
                    payload: m,
                }]
            })
            .collect();
        for (p, result) in written.iter().zip(self.produce(&manifest_records)) {
            match result {
                Ok(_) => {
                    self.written.lock().insert(
                        p.tp.clone(),
                        Written {
                            next_offset: p.next_offset,
                            seq: p.seq,
                        },
                    );
                    out.push((
                        p.tp.clone(),
                        Ok(Saved {
                            bytes: p.bytes,
                            next_offset: p.next_offset,
                        }),
                    ));
                }
                Err(e) => out.push((p.tp.clone(), Err(e))),
            }
        }
    }

    /// Produces groups of records and waits until every one is stored (one flush for all);
    /// per group, the lowest offset its records got. A plain producer polled here, during the
    /// save: no thread of its own polling (and waking) between saves.
    fn produce(&self, groups: &[Vec<Record<'_>>]) -> Vec<Result<i64, CheckpointError>> {
        let total: usize = groups.iter().map(Vec::len).sum();
        let first = self
            .producer
            .context()
            .next
            .fetch_add(total, Ordering::Relaxed);
        let mut token = first;
        let mut failed: Vec<Option<CheckpointError>> = groups.iter().map(|_| None).collect();
        for (g, group) in groups.iter().enumerate() {
            for r in group {
                let mut record = BaseRecord::with_opaque_to(&self.topic, token)
                    .partition(r.partition)
                    .key(&r.key)
                    .payload(r.payload);
                token += 1;
                loop {
                    match self.producer.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            self.producer.poll(Duration::from_millis(10));
                        }
                        Err((e, _)) => {
                            failed[g].get_or_insert(e.into());
                            break;
                        }
                    }
                }
            }
        }
        // Waits for every delivery report (message.timeout.ms bounds it).
        let flushed = self.producer.flush(Duration::from_secs(60));
        let mut delivered = self.producer.context().delivered.lock();
        let mut token = first;
        groups
            .iter()
            .zip(failed)
            .map(|(group, failed)| {
                let mut lowest = Ok(i64::MAX);
                for _ in group {
                    let report = delivered.remove(&token);
                    token += 1;
                    lowest = match (lowest, report) {
                        (Err(e), _) => Err(e),
                        (Ok(low), Some(Ok(offset))) => Ok(low.min(offset)),
                        (Ok(_), Some(Err(e))) => Err(e.into()),
                        (Ok(_), None) => Err(match &flushed {
                            Err(e) => CheckpointError::Kafka(e.clone()),
                            Ok(()) => CheckpointError::Timeout("no delivery report".into()),
                        }),
                    };
                }
                match failed {
                    Some(e) => Err(e),
                    None => lowest,
                }
            })
            .collect()
    }

    /// Forgets what was saved for partitions this instance gave up.
    /// Checkpoints wait for the dead letters of what they cover (see `deadletter`).
    pub fn with_dead_letters(mut self, dead_letters: Option<Arc<DeadLetters>>) -> Self {
        self.dead_letters = dead_letters;
        self
    }

    pub fn forget(&self, tps: &[TopicPartition]) {
        let mut written = self.written.lock();
        for tp in tps {
            written.remove(tp);
        }
    }

    /// Reads the newest intact checkpoint of each partition in `tps`; partitions without one
    /// are absent from the result. An error means the topic could not be read: the caller
    /// must not assume there is no checkpoint.
    pub fn load(
        &self,
        tps: &[TopicPartition],
        timeout: Duration,
    ) -> Result<BTreeMap<TopicPartition, Loaded>, CheckpointError> {
        let deadline = Instant::now() + timeout;
        let n = self.partition_count(timeout)?;
        let mut by_partition: BTreeMap<i32, Vec<TopicPartition>> = BTreeMap::new();
        for tp in tps {
            by_partition
                .entry(checkpoint_partition(tp, n))
                .or_default()
                .push(tp.clone());
        }
        let mut out = BTreeMap::new();
        let reader = self.reader.lock();
        for (partition, wanted) in by_partition {
            let (low, high) =
                reader.fetch_watermarks(&self.topic, partition, remaining(deadline)?)?;
            if high <= low {
                continue;
            }
            let mut assembler = Assembler::default();
            let mut upper = high;
            let mut span = 256;
            // Newest records first, reaching further back only while a wanted partition has
            // no complete checkpoint yet.
            loop {
                let lower = (upper - span).max(low);
                self.read_range(
                    &reader,
                    partition,
                    lower,
                    upper,
                    deadline,
                    |offset, key, value| assembler.offer(&self.group, &wanted, offset, key, value),
                )?;
                let incomplete = wanted.iter().any(|tp| assembler.newest(tp).is_none());
                if !incomplete || lower <= low {
                    break;
                }
                upper = lower;
                span *= 2;
            }
            for tp in wanted {
                if let Some((manifest, payload)) = assembler.newest(&tp) {
                    // Intact (the checksum matched) but unreadable: written by a version of
                    // ecom-pulse with another format. Start the partition over rather than
                    // refuse to consume it.
                    let (state, layout) = match crate::state::checkpoint::decode(&payload) {
                        Ok(decoded) => decoded,
                        Err(e) => {
                            tracing::error!(partition = %format!("{}/{}", tp.topic, tp.partition), error = %e, "checkpoint unreadable; the partition starts fresh");
                            continue;
                        }
                    };
                    let seq = manifest.checkpoint_id & 0xffff_ffff;
                    self.written.lock().insert(
                        tp.clone(),
                        Written {
                            next_offset: manifest.next_offset,
                            seq,
                        },
                    );
                    out.insert(
                        tp,
                        Loaded {
                            state,
                            layout,
                            manifest,
                        },
                    );
                }
            }
        }
        Ok(out)
    }

    fn read_range(
        &self,
        reader: &BaseConsumer<Quiet>,
        partition: i32,
        from: i64,
        to: i64,
        deadline: Instant,
        mut offer: impl FnMut(i64, &[u8], &[u8]),
    ) -> Result<(), CheckpointError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(from))?;
        reader.assign(&tpl)?;
        let result = loop {
            match reader.poll(remaining(deadline)?.min(Duration::from_millis(500))) {
                Some(Ok(m)) => {
                    if m.offset() >= to {
                        break Ok(());
                    }
                    if let (Some(k), Some(v)) = (m.key(), m.payload()) {
                        offer(m.offset(), k, v);
                    }
                    if m.offset() >= to - 1 {
                        break Ok(());
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break Ok(()),
                // Connection trouble is reported as events and retried by librdkafka; only
                // the deadline ends the attempt.
                Some(Err(e)) => tracing::debug!(error = %e, "while reading checkpoints"),
                None => {}
            }
        };
        reader.unassign()?;
        result
    }
}

/// The checkpoint producer's delivery reports, by the token each message was sent with.
pub struct Deliveries {
    next: std::sync::atomic::AtomicUsize,
    delivered: Mutex<HashMap<usize, Result<i64, KafkaError>>>,
    quiet: Quiet,
}

impl ClientContext for Deliveries {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.quiet.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.quiet.error(error, reason);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, token: usize) {
        let outcome = match result {
            Ok(message) => Ok(message.offset()),
            Err((e, _)) => Err(e.clone()),
        };
        self.delivered.lock().insert(token, outcome);
    }
}

fn remaining(deadline: Instant) -> Result<Duration, CheckpointError> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| CheckpointError::Timeout("reading checkpoints".into()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rdkafka::mocking::MockCluster;

    use super::*;
    use crate::config::Config;
    use crate::pure::pipeline::Pipeline;

    /// A round bigger than a wave goes out in several, and every partition reads back whole.
    #[test]
    fn a_round_larger_than_a_wave_is_sent_in_waves_and_reads_back() {
        let mock = MockCluster::new(1).unwrap();
        let mut config = Config::load_with_env(None, Some(Default::default())).unwrap();
        config.kafka.brokers = mock.bootstrap_servers();
        config.checkpoint.partitions = 4;
        let topic = config.checkpoint.topic_name(&config.kafka.group_id);
        mock.create_topic(&topic, 4, 1).unwrap();
        let pipeline = Pipeline::from_config(&config);
        let store =
            CheckpointStore::new(&config.kafka, &config.checkpoint, pipeline.windows.clone())
                .unwrap();

        // Four partitions of ~1.8 MB each (de-duplication ids do not compress, and take 5–8
        // bytes each): more than a wave in all.
        let now = crate::now_ms();
        let parts: Vec<(TopicPartition, SharedPartition)> = (0..4)
            .map(|p| {
                let mut st = pipeline.new_partition();
                for i in 0..300_000 {
                    let json = format!(
                        r#"{{"type":"visit","event_id":"{p}-{i}","timestamp":{now},"campaign":"c{}","channel":"x"}}"#,
                        i % 50
                    );
                    pipeline.process(&mut st, json.as_bytes(), now, now);
                    st.applied(i, now, now);
                }
                (
                    TopicPartition::new("visits", p),
                    Arc::new(parking_lot::RwLock::new(st)),
                )
            })
            .collect();
        let results = store.save_all(&parts);
        let total: usize = results.iter().map(|(_, r)| r.as_ref().unwrap().bytes).sum();
        assert_eq!(results.len(), 4);
        assert!(total > WAVE_BYTES, "{total} bytes fit in one wave");
        // The buffer held one wave at a time, never the whole round.
        assert!(store.write_lock.lock().chunks.len() < total);

        let tps: Vec<TopicPartition> = parts.iter().map(|(tp, _)| tp.clone()).collect();
        let loaded = store.load(&tps, Duration::from_secs(30)).unwrap();
        for (tp, state) in &parts {
            let back = &loaded[tp];
            let state = state.read();
            assert_eq!(back.manifest.next_offset, state.next_offset());
            assert!(back.state.same_aggregates(&state));
            assert_eq!(back.state.dedup().len(), state.dedup().len());
        }
        // Unchanged partitions are not saved again.
        assert!(store.save_all(&parts).is_empty());
    }
}
