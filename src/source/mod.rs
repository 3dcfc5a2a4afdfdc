//! The Kafka side: one member of the consumer group, exact across restarts and rebalances.
//!
//! Each input partition's state is checkpointed together with the offset it reaches
//! ([`crate::state::checkpoint`]). When the group assigns a partition, its newest checkpoint is
//! restored *before* the partition is handed to librdkafka, and consumption starts at the
//! checkpoint's offset, so every event after it is applied exactly once to exactly the state
//! that preceded it. When a partition is revoked, a final checkpoint is written and its
//! series leave this instance at once. Offsets are committed to the group only once a
//! checkpoint covers them, so tools watching the group see honest progress.
//!
//! The consumer does not wait for a reader (a scrape, a checkpoint) that holds a partition's
//! lock: it copies that partition's messages aside and goes on with the others, then applies
//! them in order once the lock is free, before anything newer of that partition. It waits
//! only when too much is held, and at shutdown. Messages held for a partition the group
//! takes away are dropped, since its checkpoint did not count them and its next owner
//! consumes them again.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset};
use tokio_util::sync::CancellationToken;

use crate::config::{KafkaConfig, Redactor};
use crate::pure::decode::{Reason, Rejection};
use crate::pure::partition::PartitionState;
use crate::pure::pipeline::{Outcome, Pipeline};
use crate::runtime::task::TaskFailure;
use crate::runtime::telemetry::{Health, RateLimit, Tally, Telemetry};
use crate::source::checkpoints::CheckpointStore;
use crate::source::client::Quiet;
use crate::source::deadletter::{DeadLetters, Rejected};
use crate::state::store::{SharedPartition, Store, TopicPartition};

pub mod checkpoints;
pub mod client;
pub mod deadletter;
pub mod restore;
pub mod stats;

use restore::{Restored, Restorer};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Usually a librdkafka property that does not exist or has a bad value; the message names it.
    #[error("cannot create the Kafka consumer: {0}")]
    Create(#[source] KafkaError),
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        #[source]
        source: KafkaError,
    },
}

/// How long a shutdown waits for the final checkpoints and for leaving the group.
const SHUTDOWN_STEP: Duration = Duration::from_secs(5);

/// The consumer settings ecom-pulse relies on; `kafka.properties` is applied after them.
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group_id)
        .set("client.id", "ecom-pulse")
        // Offsets are committed by the checkpointer, once a checkpoint covers them.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Without a checkpoint, a partition is read from the start so its windows fill.
        .set("auto.offset.reset", "earliest")
        // Connection state and lag come from the statistics callback.
        .set("statistics.interval.ms", "1000")
        // Topics created after start-up are picked up within seconds, not librdkafka's 5 min.
        .set("topic.metadata.refresh.interval.ms", "10000")
        // When the fetch queue is full, librdkafka waits this long before fetching again
        // (default 1 s): a consumer that is a little slower than the broker then stalls
        // every other half second (the figure is in docs/performance.md).
        .set("fetch.queue.backoff.ms", "10")
        .set_log_level(RDKafkaLogLevel::Info);
    for (key, value) in &cfg.properties {
        c.set(key, value);
    }
    c
}

/// Receives librdkafka's callbacks: logs, statistics, errors and rebalances.
/// `SourceContext::reported_error` when no error waits to be matched: not a librdkafka code.
const NO_ERROR: i32 = i32::MIN;

pub struct SourceContext {
    store: Arc<Store>,
    pipeline: Arc<Pipeline>,
    telemetry: Arc<Telemetry>,
    health: Arc<Health>,
    checkpoints: Arc<CheckpointStore>,
    shutdown: CancellationToken,
    error_log: Arc<RateLimit>,
    /// Statistics that cannot be read would come every second: limited apart, so they do not
    /// take the log lines of other errors.
    stats_log: RateLimit,
    /// librdkafka's messages pass through it, in case one quotes a secret property.
    redactor: Redactor,
    /// Last connection state logged (0 none yet, 1 down, 2 up), so each change is logged once.
    logged_state: AtomicU8,
    /// The code of the error `ClientContext::error` last reported and the consume loop has not
    /// seen yet (`NO_ERROR` for none): rdkafka hands each error event to both, and the second
    /// must not count or log it again.
    reported_error: AtomicI32,
    /// Consumer lag per partition as last reported (statistics callback only).
    lags: Mutex<BTreeMap<TopicPartition, i64>>,
    /// Partitions the statistics callback saw reach their end, marked caught up by the
    /// consume loop once it has added its tally: readiness must not come before the counts.
    reached: Mutex<Vec<TopicPartition>>,
    /// Partitions whose stall was logged, so that each stall is logged once, and its end.
    stalls_logged: Mutex<std::collections::BTreeSet<TopicPartition>>,
    /// `kafka.dead_letter_topic`, when set.
    dead_letters: Option<Arc<DeadLetters>>,
    /// Takes assigned partitions over, on a thread of its own (see `restore`).
    restorer: Restorer,
    /// Partitions assigned and paused while their take-over runs, with the ticket of the
    /// take-over that will install them (a later assignment's supersedes it).
    restoring: Mutex<BTreeMap<TopicPartition, u64>>,
    tickets: AtomicU64,
    /// Take-overs done, for the consuming thread to install: the ticket and what it restored
    /// (`None`: shutting down first).
    restored: Mutex<(
        std::sync::mpsc::Sender<TakenOver>,
        std::sync::mpsc::Receiver<TakenOver>,
    )>,
    /// Restored partitions whose seek failed, tried again at the next turn of the loop.
    unseeked: Mutex<Vec<(u64, Restored)>>,
}

/// A take-over done: its ticket, and what it restored (`None`: shutting down first).
type TakenOver = (u64, Option<Vec<Restored>>);

/// A partition with events waiting that has not advanced for this long is logged (the
/// threshold of the shipped alert, `EcomPulsePartitionStalled`): the client's own errors do
/// not say which partition they hold up.
const STALL_LOGGED_AFTER: Duration = Duration::from_secs(60);

impl SourceContext {
    fn set_connected(&self, up: bool) {
        self.health.set_connected(up);
        let state = if up { 2 } else { 1 };
        if self.logged_state.swap(state, Ordering::AcqRel) != state {
            if up {
                tracing::info!("connected to Kafka");
            } else {
                tracing::warn!("no Kafka broker reachable; retrying (metrics keep being served)");
            }
        }
    }

    fn warn_limited(&self, what: &str, error: &dyn fmt::Display) {
        warn_within(&self.error_log, what, error);
    }

    /// Whether the consume loop's `e` is the error event `ClientContext::error` just counted
    /// and logged (with librdkafka's reason, which the loop's copy lacks). A fetch error of a
    /// partition reaches the loop only, and is its to report.
    fn already_reported(&self, e: &KafkaError) -> bool {
        let Some(code) = e.rdkafka_error_code() else {
            return false;
        };
        self.reported_error
            .compare_exchange(code as i32, NO_ERROR, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Connection state and consumer lag from a statistics report; partitions whose target
    /// was unknown at assignment are marked caught up once they reach the high watermark.
    fn on_stats(&self, report: &stats::Stats<'_>) {
        self.set_connected(report.connected());
        for (topic, partitions) in report.partition_counts() {
            self.health.set_topic_partitions(topic, partitions);
        }
        let now = crate::now_ms();
        let mut last = self.lags.lock();
        let mut lags = BTreeMap::new();
        for tp in self.health.assigned() {
            // The report's high watermark comes from the consumer's own fetches; a fetch that
            // keeps failing leaves it behind, so the probed one counts too (the higher wins).
            let reported = report.hi_offset(&tp.topic, tp.partition);
            let Some(hi_offset) = reported.max(self.health.probed_high(&tp)) else {
                continue;
            };
            let Some(state) = self.store.get(&tp) else {
                continue;
            };
            // This runs on the consuming thread, which does not wait for the lock: a partition
            // whose lock a writer holds (or waits for) keeps its last lag until the next report.
            let Some((next, rebuilding)) = state
                .try_read()
                .map(|s| (s.next_offset(), s.is_rebuilding()))
            else {
                if let Some(&lag) = last.get(&tp) {
                    lags.insert(tp, lag);
                }
                continue;
            };
            let lag = (hi_offset >= 0).then(|| (hi_offset - next).max(0));
            if let Some(lag) = lag {
                lags.insert(tp.clone(), lag);
            }
            self.health.flow(&tp, next, lag, now);
            // A partition whose target was unknown at assignment is caught up once everything
            // up to the high watermark has been fetched and applied.
            if self
                .health
                .progress(&tp)
                .is_some_and(|pr| pr.target.is_none() && !pr.caught_up)
                && hi_offset >= 0
                && next >= hi_offset
                && !rebuilding
            {
                self.reached.lock().push(tp.clone());
            }
        }
        self.log_stalls(now, &lags);
        self.telemetry.set_consumer_lag(&lags);
        *last = lags;
    }

    /// Logs a partition's stall once it passes `STALL_LOGGED_AFTER`, and its end.
    fn log_stalls(&self, now: i64, lags: &BTreeMap<TopicPartition, i64>) {
        let stalled = self.health.stalled(now);
        let mut logged = self.stalls_logged.lock();
        for (tp, how_long) in &stalled {
            if *how_long >= STALL_LOGGED_AFTER {
                if logged.insert(tp.clone()) {
                    tracing::warn!(
                        partition = %describe(std::slice::from_ref(tp)),
                        lag = lags.get(tp).copied().unwrap_or_default(),
                        seconds = how_long.as_secs(),
                        "partition stalled: events are waiting and none gets counted (see the Kafka client's errors)"
                    );
                }
            } else if logged.remove(tp) {
                tracing::info!(partition = %describe(std::slice::from_ref(tp)), "stalled partition advancing again");
            }
        }
        // Revoked meanwhile: its next owner logs for itself.
        logged.retain(|tp| stalled.iter().any(|(s, _)| s == tp));
    }

    /// Starts taking `tps` over on a thread of its own (see `restore`).
    fn begin_take_over(&self, tps: Vec<TopicPartition>) {
        self.health.assignment_received();
        if tps.is_empty() {
            return;
        }
        let ticket = self.tickets.fetch_add(1, Ordering::AcqRel) + 1;
        {
            let mut restoring = self.restoring.lock();
            for tp in &tps {
                restoring.insert(tp.clone(), ticket);
            }
        }
        // Not ready while restoring: the partitions' numbers are not there yet. And from now
        // until each is installed, a partition counts as stalled, so that a restore that
        // never completes shows like a fetch that never does.
        self.health.set_restoring(true);
        self.health.taking_over(&tps, crate::now_ms());
        let restorer = self.restorer.clone();
        let done = self.restored.lock().0.clone();
        let spawned = std::thread::Builder::new()
            .name("ecom-restore".into())
            .spawn(move || {
                let restored = restorer.take_over(&tps);
                let _ = done.send((ticket, restored));
            });
        if let Err(e) = spawned {
            // Without it the partitions would stay paused: a failure the supervisor sees.
            panic!("cannot start a thread to take partitions over: {e}");
        }
    }

    /// Installs what finished take-overs restored, on the consuming thread: each state, then a
    /// seek to its start and a resume. A partition revoked or assigned again meanwhile keeps
    /// its newer take-over's.
    fn install_restored(&self, consumer: &BaseConsumer<Self>) {
        let mut ready: Vec<(u64, Restored)> = std::mem::take(&mut *self.unseeked.lock());
        while let Ok((ticket, restored)) = self.restored.lock().1.try_recv() {
            ready.extend(restored.into_iter().flatten().map(|r| (ticket, r)));
        }
        if ready.is_empty() {
            // An empty assignment, or one revoked before it was restored.
            if self.restoring.lock().is_empty() {
                self.health.set_restoring(false);
            }
            return;
        }
        let mut progress = Vec::new();
        for (ticket, restored) in ready {
            if self.restoring.lock().get(&restored.tp) != Some(&ticket) {
                continue;
            }
            let tp = restored.tp.clone();
            if let Err(e) = consumer.seek(
                &tp.topic,
                tp.partition,
                restored.start,
                Duration::from_secs(10),
            ) {
                self.telemetry.kafka_error("seek");
                self.warn_limited("seeking a restored partition failed; trying again", &e);
                self.unseeked.lock().push((ticket, restored));
                continue;
            }
            self.store.install(tp.clone(), restored.state);
            progress.push((tp.clone(), restored.progress));
            let mut resume = TopicPartitionList::new();
            let _ = resume.add_partition(&tp.topic, tp.partition);
            if let Err(e) = consumer.resume(&resume) {
                self.telemetry.kafka_error("resume");
                tracing::warn!(error = %e, partition = %describe(std::slice::from_ref(&tp)), "resuming a restored partition failed");
            }
            self.restoring.lock().remove(&tp);
        }
        self.health.assign(&progress);
        if self.restoring.lock().is_empty() {
            self.health.set_restoring(false);
        }
    }

    /// A partition has caught up since it was taken over: ready, and its counters exported.
    fn caught_up(&self, tp: &TopicPartition) {
        if let Some(state) = self.store.get(tp) {
            state.write().settle();
        }
        self.health.caught_up(tp);
    }

    /// Forgets partitions this instance no longer owns.
    fn give_up(&self, tps: &[TopicPartition]) {
        if !tps.is_empty() {
            tracing::info!(partitions = %describe(tps), "partitions revoked; their series leave this instance");
        }
        self.store.remove(tps);
        self.health.revoke(tps);
        // Seen at its end under the old assignment: says nothing of a new one.
        self.reached.lock().retain(|tp| !tps.contains(tp));
        self.checkpoints.forget(tps);
        self.telemetry.forget_partitions(tps);
    }
}

/// Logs `what` as a warning unless `limit` has let one through lately; the next one that goes
/// through says how many were suppressed.
fn warn_within(limit: &RateLimit, what: &str, error: &dyn fmt::Display) {
    if let Some(suppressed) = limit.check() {
        tracing::warn!(error = %error, suppressed, "{what}");
    }
}

/// Checkpoints `tps` and commits the offsets the checkpoints reach. Blocking.
fn save_and_commit<C: Consumer<SourceContext>>(
    consumer: &C,
    tps: &[TopicPartition],
    mode: CommitMode,
) {
    let ctx = consumer.context();
    // A partition whose windows are being rebuilt is not saved: its rebuilt windows are
    // partial, and the checkpoint it was restored from still holds. Nor is one whose dead
    // letters could not all be sent.
    let parts: Vec<_> = tps
        .iter()
        .filter_map(|tp| ctx.store.get(tp).map(|state| (tp.clone(), state)))
        .filter(|(_, state)| state.read().checkpointable())
        .collect();
    // In a partition at limits.max_keys, keys whose windows have all emptied make room.
    let now = crate::now_ms();
    for (_, state) in &parts {
        let evicted = state
            .write()
            .evict_idle(&ctx.pipeline.windows, &ctx.pipeline.limits, now);
        ctx.telemetry.keys_evicted(evicted);
    }
    let mut offsets = TopicPartitionList::new();
    for (tp, result) in ctx.checkpoints.save_all(&parts) {
        match result {
            Ok(saved) => {
                ctx.telemetry.checkpoint(Some(saved.bytes));
                let _ = offsets.add_partition_offset(
                    &tp.topic,
                    tp.partition,
                    Offset::Offset(saved.next_offset),
                );
            }
            Err(e) => {
                ctx.telemetry.checkpoint(None);
                ctx.warn_limited("checkpoint failed; will retry at the next interval", &e);
            }
        }
    }
    if offsets.count() > 0
        && let Err(e) = consumer.commit(&offsets, mode)
    {
        ctx.telemetry.kafka_error("commit");
        ctx.warn_limited(
            "offset commit failed; the next checkpoint commits again",
            &e,
        );
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

fn describe(tps: &[TopicPartition]) -> String {
    tps.iter()
        .map(|tp| format!("{}/{}", tp.topic, tp.partition))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let message = self.redactor.apply(message);
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility = fac, "{message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility = fac, "{message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility = fac, "{message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", facility = fac, "{message}")
            }
        }
    }

    /// Reads only what it needs of the report (see [`stats`]) instead of rdkafka's typed
    /// `Statistics`, which builds every field of it each second on this thread.
    fn stats_raw(&self, json: &[u8]) {
        match stats::Stats::parse(json) {
            Ok(report) => self.on_stats(&report),
            Err(e) => {
                self.telemetry.kafka_error("statistics");
                warn_within(&self.stats_log, "cannot read librdkafka's statistics", &e);
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.set_connected(false);
        }
        self.telemetry.kafka_error(&code_label(code));
        self.reported_error
            .store(code.map_or(NO_ERROR, |c| c as i32), Ordering::Release);
        let error = self.redactor.apply(&error.to_string());
        self.warn_limited(
            &format!("Kafka client error: {}", self.redactor.apply(reason)),
            &error,
        );
    }
}

impl ConsumerContext for SourceContext {
    /// Replaces rdkafka's default so that state is restored before partitions are handed to
    /// librdkafka (with the checkpoint offsets) and saved before they are taken away.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let tps = partitions_of(tpl);
                tracing::info!(partitions = tps.len(), "assignment received");
                // Assigned at once, from their end and paused: nothing is applied before its
                // state is restored, and the callback returns in time for the group's next
                // rebalance. The take-over installs each state and seeks to where it starts.
                for tp in &tps {
                    let _ = tpl.set_partition_offset(&tp.topic, tp.partition, Offset::End);
                }
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = consumer.pause(tpl) {
                    self.telemetry.kafka_error("pause");
                    tracing::warn!(error = %e, "pausing the partitions being taken over failed");
                }
                self.begin_take_over(tps);
                assigned
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let tps = partitions_of(tpl);
                // Those still being taken over have no state to save.
                let installed: Vec<TopicPartition> = {
                    let mut restoring = self.restoring.lock();
                    tps.iter()
                        .filter(|tp| restoring.remove(*tp).is_none())
                        .cloned()
                        .collect()
                };
                self.unseeked.lock().retain(|(_, r)| !tps.contains(&r.tp));
                if consumer.assignment_lost() {
                    tracing::warn!(partitions = %describe(&tps), "assignment lost; the new owner replays from the last checkpoint");
                } else {
                    save_and_commit(consumer, &installed, CommitMode::Sync);
                }
                self.give_up(&tps);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                self.telemetry.kafka_error("rebalance");
                tracing::warn!(error = ?other, "rebalance failed");
                let tps = partitions_of(tpl);
                self.give_up(&tps);
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            self.telemetry.kafka_error("assign");
            tracing::warn!(error = %e, "applying the new assignment failed");
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                self.telemetry.kafka_error("commit");
                self.warn_limited(
                    "offset commit failed; the next checkpoint commits again",
                    &e,
                );
            }
        }
    }
}

fn code_label(code: Option<RDKafkaErrorCode>) -> String {
    code.map_or_else(|| "other".to_string(), |c| format!("{c:?}"))
}

/// Where a message came from, for log lines.
struct Origin<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// A plain consumer polled from a thread of its own: consuming is CPU-bound, one message per
/// poll as librdkafka hands them out, with no async wake-ups in between.
type Kafka = BaseConsumer<SourceContext>;

/// The consuming task and, beside it, the checkpointing and probing tasks.
pub struct Source {
    consumer: Arc<Kafka>,
    /// Asks the brokers for high watermarks on connections of its own (see `probe_loop`).
    probe: Arc<BaseConsumer<Quiet>>,
    topics: Vec<String>,
    checkpoint_interval: Duration,
    /// `kafka.consumer_nice`.
    nice: u8,
}

impl Source {
    /// Creates the consumer and subscribes. Fails fast on bad librdkafka properties; an
    /// unreachable broker is not an error here (librdkafka keeps retrying).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &KafkaConfig,
        pipeline: Arc<Pipeline>,
        store: Arc<Store>,
        telemetry: Arc<Telemetry>,
        health: Arc<Health>,
        checkpoints: Arc<CheckpointStore>,
        checkpoint_interval: Duration,
        dead_letters: Option<Arc<DeadLetters>>,
        shutdown: CancellationToken,
    ) -> Result<Source, SourceError> {
        let probe: Arc<BaseConsumer<Quiet>> = Arc::new(
            probe_config(cfg)
                .create_with_context(Quiet {
                    client: "watermarks",
                    redactor: cfg.properties.redactor(),
                })
                .map_err(SourceError::Create)?,
        );
        let error_log = Arc::new(RateLimit::new(Duration::from_secs(10)));
        let restorer = Restorer {
            pipeline: pipeline.clone(),
            telemetry: telemetry.clone(),
            health: health.clone(),
            checkpoints: checkpoints.clone(),
            dead_letters: dead_letters.clone(),
            shutdown: shutdown.clone(),
            probe: probe.clone(),
            errors: error_log.clone(),
        };
        let context = SourceContext {
            store,
            pipeline,
            telemetry,
            health,
            checkpoints,
            shutdown,
            error_log,
            stats_log: RateLimit::new(Duration::from_secs(60)),
            redactor: cfg.properties.redactor(),
            logged_state: AtomicU8::new(0),
            reported_error: AtomicI32::new(NO_ERROR),
            lags: Default::default(),
            reached: Default::default(),
            stalls_logged: Default::default(),
            dead_letters,
            restorer,
            restoring: Default::default(),
            tickets: AtomicU64::new(0),
            restored: Mutex::new(std::sync::mpsc::channel()),
            unseeked: Default::default(),
        };
        let consumer: Kafka = client_config(cfg)
            .create_with_context(context)
            .map_err(SourceError::Create)?;
        let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| SourceError::Subscribe {
                topics: cfg.topics.clone(),
                source,
            })?;
        Ok(Source {
            consumer: Arc::new(consumer),
            probe,
            topics: cfg.topics.clone(),
            checkpoint_interval,
            nice: cfg.consumer_nice,
        })
    }

    /// Consumes until `shutdown`; then checkpoints, commits and leaves the group.
    /// A task that stops before `shutdown` (the consuming thread, the checkpoint writer, the
    /// watermark probe: a panic, or an end nobody asked for) cancels `shutdown`, so that the
    /// rest of the service drains, and comes back as the error. A consuming thread that
    /// panicked may have left a partition half-updated: then no final checkpoint is written,
    /// and the next owner replays from the last one, as after a crash.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), TaskFailure> {
        tracing::info!(topics = ?self.topics, "consuming");
        let ctx_health = self.consumer.context().health.clone();
        let mut checkpointer = tokio::spawn(checkpoint_loop(
            self.consumer.clone(),
            self.checkpoint_interval,
            shutdown.clone(),
        ));
        // A live owner commits at every checkpoint that moved its partition: three intervals
        // without a commit while events wait mean no one is at work on it.
        let unconsumed_after = (self.checkpoint_interval * 3).max(Duration::from_secs(5));
        let mut prober = tokio::spawn(probe_loop(
            self.consumer.clone(),
            self.probe.clone(),
            self.topics.clone(),
            unconsumed_after,
            shutdown.clone(),
        ));
        // A thread of its own rather than one of tokio's blocking pool: its priority is
        // lowered (`yield_to_serving`), and a pooled thread would carry that over to a later
        // /metrics rendering or the final checkpoint. The source is handed over only once the
        // thread runs, so that if it cannot start, the source still consumes (on the pool, at
        // the default priority) and still closes.
        let (done, mut finished) = tokio::sync::oneshot::channel();
        let (hand_over, taken) = std::sync::mpsc::sync_channel::<(Source, Done)>(1);
        let consuming = shutdown.clone();
        let spawned = std::thread::Builder::new()
            .name(CONSUMING_THREAD.into())
            .spawn(move || {
                if let Ok((source, done)) = taken.recv() {
                    yield_to_serving(source.nice);
                    source.consume_then_return(&consuming, done);
                }
            });
        match spawned {
            // The receiver lives until the thread has taken the source.
            Ok(_) => drop(hand_over.send((self, done))),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the consuming thread; consuming on a pooled one");
                let consuming = shutdown.clone();
                tokio::task::spawn_blocking(move || self.consume_then_return(&consuming, done));
            }
        }
        let mut failure: Option<TaskFailure> = None;
        let (mut checkpointer_done, mut prober_done) = (false, false);
        // The first task to stop early decides the failure, and stops the others.
        let fail = |f: TaskFailure, failure: &mut Option<TaskFailure>| {
            if !shutdown.is_cancelled() || failure.is_none() {
                ctx_health.fail(&f);
                failure.get_or_insert(f);
            }
            shutdown.cancel();
        };
        let consumed = loop {
            tokio::select! {
                consumed = &mut finished => break consumed,
                joined = &mut checkpointer, if !checkpointer_done => {
                    checkpointer_done = true;
                    if let Some(f) = early("checkpoint writer", joined, &shutdown) {
                        fail(f, &mut failure);
                    }
                }
                joined = &mut prober, if !prober_done => {
                    prober_done = true;
                    if let Some(f) = early("watermark probe", joined, &shutdown) {
                        fail(f, &mut failure);
                    }
                }
            }
        };
        let source = match consumed {
            Ok(Ok(source)) => Some(source),
            Ok(Err(f)) => {
                fail(f, &mut failure);
                None
            }
            Err(_) => {
                fail(
                    TaskFailure::new("consumer", "the consuming thread is gone"),
                    &mut failure,
                );
                None
            }
        };
        if !checkpointer_done {
            let _ = checkpointer.await;
        }
        if !prober_done {
            let _ = prober.await;
        }
        if let Some(source) = source {
            source.close().await;
        }
        failure.map_or(Ok(()), Err)
    }

    /// Consumes until `shutdown`, then gives the source back to `run` for its close; a panic
    /// comes back as the failure instead (the source, maybe half-way through a message, is
    /// dropped with it).
    fn consume_then_return(self, shutdown: &CancellationToken, done: Done) {
        let consumed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            self.consume(shutdown);
            self
        }));
        let _ = done.send(consumed.map_err(|panic| TaskFailure::panicked("consumer", &*panic)));
    }

    /// The consuming thread: poll, apply, repeat. Rebalance, statistics and error callbacks
    /// run inside `poll`, on this thread. The timeout bounds how long shutdown waits.
    fn consume(&self, shutdown: &CancellationToken) {
        let ctx = self.consumer.context();
        let mut handles = Handles::default();
        // While messages flow, poll without waiting: with a finite timeout librdkafka reads
        // the monotonic clock on every call to set its deadline, a cost paid per message at
        // high rates (docs/performance.md). Only a poll that found nothing is followed by
        // one that waits.
        let mut wait = Duration::ZERO;
        // The token's flag sits behind a mutex: looked at every 256 polls while messages flow
        // (a fraction of a millisecond), and before every wait. Held messages get another
        // chance at the same rhythm; the consumer does not wait for a reader there.
        let mut since_check: u8 = 0;
        loop {
            if since_check == 0 || !wait.is_zero() {
                crate::runtime::fault::trip("consumer");
                ctx.install_restored(&self.consumer);
                ctx.telemetry.add(&mut handles.tally);
                for tp in ctx.reached.lock().drain(..) {
                    ctx.caught_up(&tp);
                }
                if shutdown.is_cancelled() {
                    break;
                }
                handles.release_held(ctx, false);
            }
            since_check = since_check.wrapping_add(1);
            match self.consumer.poll(wait) {
                Some(Ok(message)) => {
                    self.handle(&message, &mut handles);
                    wait = Duration::ZERO;
                }
                Some(Err(e)) => self.consume_error(e),
                // No message: none queued, or an event that is not one (statistics, a
                // rebalance, every second or so even at full speed). With messages held,
                // come back soon to try their locks again rather than at the next message.
                None if handles.pending.messages > 0 => wait = Duration::from_millis(1),
                None => wait = Duration::from_millis(100),
            }
        }
        // Applied before the final checkpoint, which `close` writes.
        handles.release_held(ctx, true);
        ctx.telemetry.add(&mut handles.tally);
    }

    fn handle(&self, message: &BorrowedMessage<'_>, handles: &mut Handles) {
        let ctx = self.consumer.context();
        // A message is proof of a live connection, sooner than the next statistics report.
        if !ctx.health.connected() {
            ctx.set_connected(true);
        }
        let arrived = Arrived {
            offset: message.offset(),
            record_ts: message.timestamp().to_millis(),
            now: crate::coarse_now_ms(),
            payload: message.payload(),
            key: message.key(),
        };
        handles.offer(ctx, message.topic(), message.partition(), arrived);
    }

    fn consume_error(&self, e: KafkaError) {
        if let KafkaError::PartitionEOF(_) = e {
            return;
        }
        let ctx = self.consumer.context();
        if ctx.already_reported(&e) {
            return;
        }
        ctx.telemetry
            .kafka_error(&code_label(e.rdkafka_error_code()));
        ctx.warn_limited("Kafka consume error; retrying", &e);
    }

    async fn close(self) {
        let consumer = self.consumer;
        let saving = consumer.clone();
        let save = tokio::task::spawn_blocking(move || {
            let tps = saving.context().health.assigned();
            save_and_commit(&*saving, &tps, CommitMode::Sync);
            tps.len()
        });
        match tokio::time::timeout(SHUTDOWN_STEP, save).await {
            Ok(Ok(n)) => tracing::info!(partitions = n, "checkpointed and committed offsets"),
            _ => tracing::warn!(
                "final checkpoints did not complete in time; the next owner replays a little more"
            ),
        }
        // Leaving the group can wait on an unreachable broker; do not let it hold up exit.
        let leave = tokio::task::spawn_blocking(move || drop(consumer));
        if tokio::time::timeout(SHUTDOWN_STEP, leave).await.is_err() {
            tracing::warn!("leaving the consumer group timed out");
        }
    }
}

/// How the consuming thread gives the source back when it is done, or says it panicked.
type Done = tokio::sync::oneshot::Sender<Result<Source, TaskFailure>>;

/// What a side task's end means: `None` when shutdown asked for it.
fn early(
    task: &'static str,
    joined: Result<(), tokio::task::JoinError>,
    shutdown: &CancellationToken,
) -> Option<TaskFailure> {
    match joined {
        Err(e) if e.is_panic() => Some(TaskFailure::panicked(task, &*e.into_panic())),
        Err(e) => Some(TaskFailure::new(task, e.to_string())),
        Ok(()) if shutdown.is_cancelled() => None,
        Ok(()) => Some(TaskFailure::ended(task)),
    }
}

/// The consuming thread's name, as `ps -L`, `top -H` and profilers show it.
pub const CONSUMING_THREAD: &str = "ecom-consume";

/// Lowers the calling thread's scheduling priority to `nice` (`kafka.consumer_nice`; on
/// Linux a nice value is per thread) unless it already is that low, so that while the
/// consumer catches up at full speed on a busy machine (a restart, a backlog) the service's
/// other threads get the CPU first: /metrics, /readyz and /healthz answer in their usual time,
/// and a Kubernetes probe does not time out and restart the pod in the middle of its catch-up. Catching up is throughput work; it takes
/// whatever CPU they leave, which is nearly all of it. Within a container's cgroup the value
/// orders only the container's own threads. Failing to lower it is harmless.
pub fn yield_to_serving(nice: u8) {
    #[cfg(target_os = "linux")]
    {
        let me = Some(rustix::thread::gettid());
        // A service started niced already yields at least this much: never ask for a raise,
        // which an unprivileged process may not have.
        let current = rustix::process::getpriority_process(me).unwrap_or(0);
        if i32::from(nice) > current
            && let Err(e) = rustix::process::setpriority_process(me, i32::from(nice))
        {
            tracing::warn!(error = %e, nice, "cannot lower the consuming thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// Saves every changed partition every `every`, off the async workers.
async fn checkpoint_loop(consumer: Arc<Kafka>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await;
    let mut round: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                crate::runtime::fault::trip("checkpoint");
                if round.as_ref().is_none_or(|r| r.is_finished()) {
                    let consumer = consumer.clone();
                    // Sync commit on this blocking thread: its result is ours to count (results
                    // of async manual commits never reach a callback).
                    round = Some(tokio::task::spawn_blocking(move || {
                        let tps = consumer.context().health.assigned();
                        save_and_commit(&*consumer, &tps, CommitMode::Sync);
                    }));
                }
            }
        }
    }
    if let Some(r) = round {
        let _ = tokio::time::timeout(SHUTDOWN_STEP, r).await;
    }
}

/// How often the high watermarks of partitions that did not move are asked of the brokers.
/// A stall shows this much later at most; the shipped alert waits minutes.
const PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// How long one partition's probe may take; shutdown waits for one at most.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The probing client: the consumer's connection settings, none of its group's.
fn probe_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (key, value) in &cfg.properties {
        c.set(key, value);
    }
    for key in crate::source::client::CONSUMER_ONLY {
        c.remove(key);
    }
    c.set("client.id", "ecom-pulse-watermarks");
    c
}

/// Keeps the high watermarks of assigned partitions that stopped moving up to date, asked of
/// the brokers by a client of its own. The statistics' high watermarks come from the
/// consumer's fetches, so when the broker fails every fetch of a partition (Tansu does with
/// a snappy batch, dropping the connection) they stay where they were: the partition looks
/// caught up and idle, and its stall would be quiet. A partition that moved since the last
/// round is being fetched, so its statistics are fresh and it is not asked about.
///
/// It also watches the group as a whole: a partition of the consumed topics whose committed
/// offset has not moved for `unconsumed_after` while it has events waiting is consumed by no
/// one (or stalled where it is). An instance holding nothing while its group has such
/// partitions is not ready: every member must be at work, and one that is not says so.
async fn probe_loop(
    consumer: Arc<Kafka>,
    probe: Arc<BaseConsumer<Quiet>>,
    topics: Vec<String>,
    unconsumed_after: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut previous = ProbeState::default();
    let mut round: Option<tokio::task::JoinHandle<ProbeState>> = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                crate::runtime::fault::trip("probe");
                // A round still going (a broker that does not answer) skips this tick.
                if round.as_ref().is_some_and(|r| !r.is_finished()) {
                    continue;
                }
                if let Some(r) = round.take() {
                    previous = r.await.unwrap_or_default();
                }
                let (consumer, probe, stop) = (consumer.clone(), probe.clone(), shutdown.clone());
                let topics = topics.clone();
                let previous = std::mem::take(&mut previous);
                round = Some(tokio::task::spawn_blocking(move || {
                    let health = &consumer.context().health;
                    let next_offsets = probe_round(health, &probe, &previous.next_offsets, &stop);
                    let commits = watch_group(
                        &consumer,
                        &probe,
                        &topics,
                        previous.commits,
                        unconsumed_after,
                        &stop,
                    );
                    ProbeState { next_offsets, commits }
                }));
            }
        }
    }
    if let Some(r) = round {
        let _ = tokio::time::timeout(SHUTDOWN_STEP, r).await;
    }
}

/// What one probing round hands the next.
#[derive(Default)]
struct ProbeState {
    /// Each assigned partition's next offset.
    next_offsets: BTreeMap<TopicPartition, i64>,
    /// Each partition of the consumed topics: its committed offset, and since when it has
    /// been that.
    commits: BTreeMap<TopicPartition, (i64, i64)>,
}

/// The group's committed offsets and the partitions' high watermarks: counts the partitions
/// with events waiting whose committed offset has not moved for `after` (see `probe_loop`)
/// into `Health`, and returns the commits for the next round.
fn watch_group(
    consumer: &Kafka,
    probe: &BaseConsumer<Quiet>,
    topics: &[String],
    mut commits: BTreeMap<TopicPartition, (i64, i64)>,
    after: Duration,
    shutdown: &CancellationToken,
) -> BTreeMap<TopicPartition, (i64, i64)> {
    let health = &consumer.context().health;
    // An instance that holds nothing may have no statistics on the topics: ask.
    for topic in topics {
        if health.topic_partitions(topic).is_none()
            && let Ok(metadata) = probe.fetch_metadata(Some(topic), PROBE_TIMEOUT)
        {
            for t in metadata.topics() {
                health.set_topic_partitions(t.name(), t.partitions().len());
            }
        }
    }
    let all = health.topic_partition_list();
    if all.is_empty() || shutdown.is_cancelled() {
        return commits;
    }
    let mut list = TopicPartitionList::new();
    for tp in &all {
        list.add_partition(&tp.topic, tp.partition);
    }
    let Ok(committed) = consumer.committed_offsets(list, PROBE_TIMEOUT) else {
        return commits;
    };
    let now = crate::now_ms();
    let mut unconsumed = 0;
    for e in committed.elements() {
        let tp = TopicPartition::new(e.topic(), e.partition());
        // Never committed: as from the start.
        let offset = e.offset().to_raw().filter(|o| *o >= 0).unwrap_or(0);
        let since = match commits.get(&tp) {
            Some(&(was, since)) if was == offset => since,
            _ => now,
        };
        commits.insert(tp.clone(), (offset, since));
        if now - since < after.as_millis() as i64 || shutdown.is_cancelled() {
            continue;
        }
        if let Ok((_, high)) = probe.fetch_watermarks(&tp.topic, tp.partition, PROBE_TIMEOUT)
            && high > offset
        {
            unconsumed += 1;
        }
    }
    commits.retain(|tp, _| all.contains(tp));
    health.set_unconsumed(unconsumed);
    commits
}

/// Probes the assigned partitions whose next offset is the same as in `previous`; returns
/// every assigned partition's next offset, for the next round.
fn probe_round(
    health: &Health,
    probe: &BaseConsumer<Quiet>,
    previous: &BTreeMap<TopicPartition, i64>,
    shutdown: &CancellationToken,
) -> BTreeMap<TopicPartition, i64> {
    let now = health.next_offsets();
    for (tp, next) in &now {
        if previous.get(tp) != Some(next) || shutdown.is_cancelled() {
            continue;
        }
        // A failure here says nothing the consumer's own errors do not say better.
        if let Ok((_, high)) = probe.fetch_watermarks(&tp.topic, tp.partition, PROBE_TIMEOUT) {
            health.probed(tp, high);
        }
    }
    // Errors and logs queue up on a client that is never polled otherwise.
    probe.poll(Duration::from_millis(10));
    now.into_iter().collect()
}

/// The consuming task's handles on partition state, refreshed when the assignment changes.
/// Keyed by topic first so a lookup does not allocate, then indexed by partition number
/// (small and dense) so it does not hash either.
#[derive(Default)]
struct Handles {
    generation: u64,
    topics: Vec<(Box<str>, Vec<Option<Entry>>)>,
    pending: Pending,
    /// Outcomes counted since the consume loop last added them to the shared counters.
    tally: Tally,
}

/// What is held, over all entries.
#[derive(Default)]
struct Pending {
    messages: usize,
    /// Their payloads' bytes.
    bytes: usize,
    /// Outcomes of held messages just applied, settled once their partition's lock is
    /// released (a buffer kept from one release to the next).
    settled: Vec<(i64, Outcome)>,
}

struct Entry {
    state: SharedPartition,
    /// Offset to reach before the partition counts as caught up.
    catching_up_to: Option<i64>,
    /// Messages that came while a reader (a scrape, a checkpoint) held the state's lock, in
    /// offset order. The consumer goes on with other partitions instead of waiting, and
    /// applies these before any later message of this partition. The state's offset moves
    /// only when they are applied, so a checkpoint never counts them before that.
    held: VecDeque<Held>,
}

/// A message as the pipeline takes it: borrowed from librdkafka, or copied while held.
struct Arrived<P> {
    offset: i64,
    /// The record's timestamp, if it has one.
    record_ts: Option<i64>,
    /// When it arrived: a held message is judged late or early against this, not against
    /// the moment a lock let it through.
    now: i64,
    payload: Option<P>,
    /// The record's key: a dead letter keeps it.
    key: Option<P>,
}

type Held = Arrived<Box<[u8]>>;

impl Held {
    fn borrowed(&self) -> Arrived<&[u8]> {
        Arrived {
            offset: self.offset,
            record_ts: self.record_ts,
            now: self.now,
            payload: self.payload.as_deref(),
            key: self.key.as_deref(),
        }
    }

    fn bytes(&self) -> usize {
        self.payload.as_ref().map_or(0, |p| p.len()) + self.key.as_ref().map_or(0, |k| k.len())
    }
}

/// Held messages (or bytes of them) beyond which the consumer waits for the locks instead. A
/// scrape holds one partition for about a millisecond, a checkpoint for the time it takes to
/// encode one, so at a million messages a second a few thousand are held at most.
const MAX_HELD: usize = 16_384;
const MAX_HELD_BYTES: usize = 16 << 20;

impl Handles {
    /// Applies `message` to its partition's state, or holds it while a reader has the lock.
    fn offer(&mut self, ctx: &SourceContext, topic: &str, partition: i32, message: Arrived<&[u8]>) {
        self.refresh(ctx);
        if self.pending.messages >= MAX_HELD || self.pending.bytes >= MAX_HELD_BYTES {
            self.apply_held(ctx, true);
        }
        let Some(entry) = entry(&mut self.topics, ctx, topic, partition) else {
            return;
        };
        if !entry.held.is_empty() {
            self.pending
                .release(ctx, &mut self.tally, topic, partition, entry, false);
        }
        if entry.held.is_empty()
            && let Some(mut state) = entry.state.try_write()
        {
            let outcome = apply(ctx, topic, partition, &mut state, &message);
            drop(state);
            settle(
                ctx,
                &mut self.tally,
                &mut entry.catching_up_to,
                topic,
                partition,
                message.offset,
                &outcome,
            );
            return;
        }
        let held = Arrived {
            offset: message.offset,
            record_ts: message.record_ts,
            now: message.now,
            payload: message.payload.map(Box::from),
            key: message.key.map(Box::from),
        };
        self.pending.messages += 1;
        self.pending.bytes += held.bytes();
        entry.held.push_back(held);
    }

    /// After a rebalance: the entries of partitions still assigned, with the same state, are
    /// kept, held messages and all (applied later, in order, before anything newer). The
    /// others go, and their held messages with them: the checkpoint written when the
    /// partition was revoked did not count those, so its next owner (maybe this instance
    /// again, from that checkpoint, with a new state) consumes them again.
    fn refresh(&mut self, ctx: &SourceContext) {
        let generation = ctx.store.generation();
        if generation == self.generation {
            return;
        }
        for (topic, partitions) in &mut self.topics {
            for (index, slot) in partitions.iter_mut().enumerate() {
                let Some(entry) = slot else {
                    continue;
                };
                let tp = TopicPartition::new(topic, index as i32 - 1);
                if !ctx
                    .store
                    .get(&tp)
                    .is_some_and(|state| Arc::ptr_eq(&state, &entry.state))
                {
                    self.pending.messages -= entry.held.len();
                    self.pending.bytes -= entry.held.iter().map(Held::bytes).sum::<usize>();
                    *slot = None;
                }
            }
        }
        self.generation = generation;
    }

    /// Applies the held messages whose partitions are free, or, with `wait`, all of them.
    fn release_held(&mut self, ctx: &SourceContext, wait: bool) {
        self.refresh(ctx);
        self.apply_held(ctx, wait);
    }

    fn apply_held(&mut self, ctx: &SourceContext, wait: bool) {
        if self.pending.messages == 0 {
            return;
        }
        for (topic, partitions) in &mut self.topics {
            for (index, slot) in partitions.iter_mut().enumerate() {
                if let Some(entry) = slot.as_mut().filter(|e| !e.held.is_empty()) {
                    let partition = index as i32 - 1;
                    self.pending
                        .release(ctx, &mut self.tally, topic, partition, entry, wait);
                }
            }
        }
    }
}

impl Pending {
    /// Applies `entry`'s held messages if its lock is free (with `wait`, once it is), then
    /// settles them, in offset order, after releasing the lock.
    fn release(
        &mut self,
        ctx: &SourceContext,
        tally: &mut Tally,
        topic: &str,
        partition: i32,
        entry: &mut Entry,
        wait: bool,
    ) {
        let state = if wait {
            Some(entry.state.write())
        } else {
            entry.state.try_write()
        };
        let Some(mut state) = state else {
            return;
        };
        for message in entry.held.drain(..) {
            self.messages -= 1;
            self.bytes -= message.bytes();
            let outcome = apply(ctx, topic, partition, &mut state, &message.borrowed());
            self.settled.push((message.offset, outcome));
        }
        drop(state);
        for (offset, outcome) in self.settled.drain(..) {
            settle(
                ctx,
                tally,
                &mut entry.catching_up_to,
                topic,
                partition,
                offset,
                &outcome,
            );
        }
    }
}

fn apply(
    ctx: &SourceContext,
    topic: &str,
    partition: i32,
    state: &mut PartitionState,
    message: &Arrived<&[u8]>,
) -> Outcome {
    let record_ts = message.record_ts.unwrap_or(message.now);
    let outcome = match message.payload {
        // Read again for windows a configuration change could not carry over.
        Some(payload) if state.rebuilding(message.offset) => {
            ctx.pipeline.replay(state, payload, record_ts, message.now)
        }
        Some(payload) => ctx.pipeline.process(state, payload, record_ts, message.now),
        None if state.rebuilding(message.offset) => Outcome::Rebuilt { timestamp_ms: None },
        None => Outcome::Rejected(Rejection {
            reason: Reason::MalformedJson,
            field: None,
            detail: "message has no value",
        }),
    };
    // The offset moves with the state, under the same lock: a checkpoint never holds one
    // without the other.
    let time = match outcome {
        Outcome::Accepted { timestamp_ms, .. }
        | Outcome::Rebuilt {
            timestamp_ms: Some(timestamp_ms),
        } => timestamp_ms,
        _ => record_ts,
    };
    if let (Outcome::Rejected(rejection), Some(dead_letters)) = (&outcome, &ctx.dead_letters) {
        dead_letter(
            ctx,
            dead_letters,
            topic,
            partition,
            state,
            message,
            rejection,
        );
    }
    state.applied(message.offset, message.now, time);
    outcome
}

/// Sends a rejected message to the dead-letter topic, unless an earlier owner of the
/// partition already did (see `deadletter`). Under the partition's lock: a checkpoint never
/// covers a message whose dead letter is not on its way.
fn dead_letter(
    ctx: &SourceContext,
    dead_letters: &DeadLetters,
    topic: &str,
    partition: i32,
    state: &mut PartitionState,
    message: &Arrived<&[u8]>,
    rejection: &Rejection,
) {
    if !state.dead_letter_due(message.offset) {
        return;
    }
    let from = TopicPartition::new(topic, partition);
    let rejected = Rejected {
        from: &from,
        offset: message.offset,
        key: message.key,
        value: message.payload,
        timestamp_ms: message.record_ts,
        rejection,
    };
    if let Err(e) = dead_letters.send(&rejected, &|| ctx.shutdown.is_cancelled()) {
        // Only when shutting down with the topic out of reach: no checkpoint may cover this
        // message now, so that the next start reads it, and sends it, again.
        ctx.warn_limited(
            "a dead letter could not be sent; the partition is not checkpointed again",
            &e,
        );
        state.hold_checkpoints();
    }
}

/// What follows an applied message outside its state: catch-up progress and telemetry.
fn settle(
    ctx: &SourceContext,
    tally: &mut Tally,
    catching_up_to: &mut Option<i64>,
    topic: &str,
    partition: i32,
    offset: i64,
    outcome: &Outcome,
) {
    let origin = Origin {
        topic,
        partition,
        offset,
    };
    tally.record(&ctx.telemetry, outcome, &origin);
    if let Some(target) = *catching_up_to {
        tally.replayed();
        if offset + 1 >= target {
            *catching_up_to = None;
            let tp = TopicPartition::new(topic, partition);
            // Counted before ready: the first scrape after /readyz turns 200 must hold every
            // event applied so far, this one included.
            ctx.telemetry.add(tally);
            ctx.caught_up(&tp);
            tracing::info!(partition = %describe(&[tp]), "caught up");
        }
    }
}

/// The handle on `topic`/`partition`, created on first use.
fn entry<'a>(
    topics: &'a mut Vec<(Box<str>, Vec<Option<Entry>>)>,
    ctx: &SourceContext,
    topic: &str,
    partition: i32,
) -> Option<&'a mut Entry> {
    let t = match topics.iter().position(|(t, _)| **t == *topic) {
        Some(t) => t,
        None => {
            topics.push((topic.into(), Vec::new()));
            topics.len() - 1
        }
    };
    // One past the partition number: a consumed message always carries its partition,
    // but should one ever come with librdkafka's "unassigned" -1, it gets a slot of its
    // own rather than partition 0's.
    let index = usize::try_from(i64::from(partition) + 1).unwrap_or_default();
    let partitions = &mut topics[t].1;
    if partitions.len() <= index {
        partitions.resize_with(index + 1, || None);
    }
    if partitions[index].is_none() {
        let tp = TopicPartition::new(topic, partition);
        // No state installed: the partition is being taken over (its messages until then
        // were fetched before it was paused, and its take-over seeks back before them) or
        // was just revoked. Its messages are not this state's to apply.
        let state = ctx.store.get(&tp)?;
        let catching_up_to = ctx
            .health
            .progress(&tp)
            .filter(|p| !p.caught_up)
            .and_then(|p| p.target);
        partitions[index] = Some(Entry {
            state,
            catching_up_to,
            held: VecDeque::new(),
        });
    }
    partitions[index].as_mut()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::runtime::telemetry::Progress;

    /// Only the calling thread yields: a thread started after it keeps the default priority.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_consuming_thread_yields_and_no_other() {
        let nice = || rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let before = std::thread::spawn(nice).join().unwrap();
        let lowered = std::thread::spawn(move || {
            yield_to_serving(10);
            nice()
        })
        .join()
        .unwrap();
        let after = std::thread::spawn(nice).join().unwrap();
        assert!(before < 10, "the test itself runs at nice {before}");
        assert_eq!(lowered, 10);
        assert_eq!(after, before);
        // A thread already lower keeps its value: no raise is asked for.
        let kept = std::thread::spawn(move || {
            let me = Some(rustix::thread::gettid());
            rustix::process::setpriority_process(me, 15).unwrap();
            yield_to_serving(10);
            nice()
        })
        .join()
        .unwrap();
        assert_eq!(kept, 15);
    }

    /// An error event reaches `ClientContext::error` and then the consume loop: counted once.
    /// A fetch error the loop alone sees is counted, and so is the same code again later.
    #[test]
    fn an_error_event_is_counted_once() {
        let ctx = context();
        let count = |code: &str| {
            ctx.telemetry
                .registry
                .gather()
                .iter()
                .filter(|f| f.name() == "ecom_pulse_kafka_errors_total")
                .flat_map(|f| f.get_metric())
                .filter(|m| m.get_label().iter().any(|l| l.value() == code))
                .map(|m| m.get_counter().get_value())
                .sum::<f64>()
        };
        let down = || KafkaError::Global(RDKafkaErrorCode::AllBrokersDown);
        let label = code_label(Some(RDKafkaErrorCode::AllBrokersDown));
        ctx.error(down(), "1/1 brokers are down");
        assert!(ctx.already_reported(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::AllBrokersDown
        )));
        assert_eq!(count(&label), 1.0);
        // Not twice, and not for another code.
        assert!(!ctx.already_reported(&down()));
        ctx.error(down(), "1/1 brokers are down");
        assert!(!ctx.already_reported(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::BadMessage
        )));
        assert_eq!(count(&label), 2.0);
    }

    fn context() -> SourceContext {
        let config = Config::load_with_env(None, Some(Default::default())).unwrap();
        let pipeline = Arc::new(Pipeline::from_config(&config).unwrap());
        let labels: Vec<&str> = pipeline.windows.specs().iter().map(|s| &*s.label).collect();
        let checkpoints =
            CheckpointStore::new(&config.kafka, &config.checkpoint, pipeline.windows.clone())
                .unwrap();
        let (store, health, checkpoints) = (
            Arc::new(Store::default()),
            Arc::new(Health::default()),
            Arc::new(checkpoints),
        );
        let telemetry = Arc::new(Telemetry::new("USD", &labels, 12.0));
        let error_log = Arc::new(RateLimit::new(Duration::from_secs(10)));
        let probe = Arc::new(
            probe_config(&config.kafka)
                .create_with_context(Quiet {
                    client: "watermarks",
                    redactor: config.kafka.properties.redactor(),
                })
                .unwrap(),
        );
        let shutdown = CancellationToken::new();
        SourceContext {
            restorer: Restorer {
                pipeline: pipeline.clone(),
                telemetry: telemetry.clone(),
                health: health.clone(),
                checkpoints: checkpoints.clone(),
                dead_letters: None,
                shutdown: shutdown.clone(),
                probe,
                errors: error_log.clone(),
            },
            store,
            telemetry,
            health,
            checkpoints,
            pipeline,
            shutdown,
            error_log,
            stats_log: RateLimit::new(Duration::from_secs(60)),
            redactor: config.kafka.properties.redactor(),
            logged_state: AtomicU8::new(0),
            reported_error: AtomicI32::new(NO_ERROR),
            lags: Default::default(),
            reached: Default::default(),
            stalls_logged: Default::default(),
            dead_letters: None,
            restoring: Default::default(),
            tickets: AtomicU64::new(0),
            restored: Mutex::new(std::sync::mpsc::channel()),
            unseeked: Default::default(),
        }
    }

    fn install(ctx: &SourceContext, partition: i32) -> SharedPartition {
        let tp = TopicPartition::new("visits", partition);
        ctx.store.install(tp, ctx.pipeline.new_partition())
    }

    /// A visit to `campaign`, with an event id of its own unless `id` is given.
    fn visit(offset: i64, campaign: &str, id: &str) -> (i64, Vec<u8>) {
        let json = format!(
            r#"{{"type":"visit","event_id":"{id}","timestamp":{},"campaign":"{campaign}","channel":"email"}}"#,
            crate::now_ms()
        );
        (offset, json.into_bytes())
    }

    fn offer(handles: &mut Handles, ctx: &SourceContext, partition: i32, m: &(i64, Vec<u8>)) {
        let now = crate::now_ms();
        let arrived = Arrived {
            offset: m.0,
            record_ts: Some(now),
            now,
            payload: Some(&m.1[..]),
            key: None,
        };
        handles.offer(ctx, "visits", partition, arrived);
    }

    fn visits(state: &PartitionState) -> BTreeMap<String, u64> {
        state
            .keys()
            .map(|(k, ks)| (k.campaign.to_string(), ks.totals().visits))
            .collect()
    }

    #[test]
    fn a_partition_turns_ready_only_with_its_events_counted() {
        let ctx = context();
        ctx.health.set_connected(true);
        install(&ctx, 0);
        let progress = Progress {
            target: Some(2),
            caught_up: false,
        };
        ctx.health
            .assign(&[(TopicPartition::new("visits", 0), progress)]);
        let counted = || {
            let text = prometheus::TextEncoder::new()
                .encode_to_string(&ctx.telemetry.registry.gather())
                .unwrap();
            let value = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
            };
            (
                value("ecom_pulse_events_total{event_type=\"visit\"}"),
                value("ecom_pulse_restore_events_replayed_total"),
            )
        };
        // The consume loop adds its tally every 256 polls; none of that happens here.
        let mut handles = Handles::default();
        offer(&mut handles, &ctx, 0, &visit(0, "a", "1"));
        assert!(ctx.health.readiness().is_err());
        offer(&mut handles, &ctx, 0, &visit(1, "a", "2"));
        assert_eq!(ctx.health.readiness(), Ok(()));
        assert_eq!(counted(), (Some("2".into()), Some("2".into())));
    }

    /// A broker that fails every fetch of a partition leaves the statistics' high watermark
    /// behind: only the probed one shows that events are waiting.
    #[test]
    fn a_probed_high_watermark_shows_a_stall_the_statistics_do_not() {
        let ctx = context();
        install(&ctx, 0);
        let tp = TopicPartition::new("visits", 0);
        let idle = Progress {
            target: Some(0),
            caught_up: true,
        };
        ctx.health.assign(&[(tp.clone(), idle)]);
        // The consumer's last fetch saw the partition at its end.
        let json = br#"{"brokers":{},"topics":{"visits":{"partitions":{"0":{"hi_offset":0}}}}}"#;
        let report = stats::Stats::parse(json).unwrap();
        ctx.on_stats(&report);
        let later = crate::now_ms() + 120_000;
        assert_eq!(ctx.health.stalled(later)[0].1, Duration::ZERO, "idle");
        ctx.health.probed(&tp, 5);
        ctx.on_stats(&report);
        assert!(ctx.health.stalled(later)[0].1 >= Duration::from_secs(119));
        assert_eq!(ctx.lags.lock().get(&tp), Some(&5));
    }

    #[test]
    fn a_locked_partition_holds_its_messages_in_order_and_no_other() {
        let ctx = context();
        let (a, b) = (install(&ctx, 0), install(&ctx, 1));
        let mut handles = Handles::default();
        let guard = a.read();
        // The same event id twice: the first one applied counts, so order shows.
        offer(&mut handles, &ctx, 0, &visit(0, "first", "x"));
        offer(&mut handles, &ctx, 1, &visit(0, "b", "y"));
        offer(&mut handles, &ctx, 0, &visit(1, "second", "x"));
        assert_eq!(handles.pending.messages, 2);
        assert_eq!(b.read().next_offset(), 1, "the other partition went on");
        handles.release_held(&ctx, false);
        assert_eq!(handles.pending.messages, 2, "still locked");
        drop(guard);
        // A newer message with that id again: the held ones go in before it.
        offer(&mut handles, &ctx, 0, &visit(2, "third", "x"));
        assert_eq!(handles.pending.messages, 0);
        let a = a.read();
        assert_eq!(a.next_offset(), 3);
        assert_eq!(visits(&a), BTreeMap::from([("first".into(), 1)]));
    }

    #[test]
    fn held_messages_go_in_once_the_lock_is_free_without_a_newer_one() {
        let ctx = context();
        let a = install(&ctx, 0);
        let mut handles = Handles::default();
        let guard = a.read();
        offer(&mut handles, &ctx, 0, &visit(0, "a", "1"));
        offer(&mut handles, &ctx, 0, &visit(1, "a", "2"));
        drop(guard);
        handles.release_held(&ctx, false);
        assert_eq!(handles.pending.messages, 0);
        assert_eq!(a.read().next_offset(), 2);
        assert_eq!(visits(&a.read()), BTreeMap::from([("a".into(), 2)]));
    }

    #[test]
    fn a_rebalance_drops_what_was_held_for_partitions_given_up_only() {
        let ctx = context();
        let (a, b, c) = (install(&ctx, 0), install(&ctx, 1), install(&ctx, 2));
        let mut handles = Handles::default();
        {
            let (_a, _b, _c) = (a.read(), b.read(), c.read());
            offer(&mut handles, &ctx, 0, &visit(0, "a", "1"));
            offer(&mut handles, &ctx, 1, &visit(0, "b", "2"));
            offer(&mut handles, &ctx, 2, &visit(0, "c", "3"));
        }
        assert_eq!(handles.pending.messages, 3);
        // Partition 0 is given up; partition 2 is given up and assigned again at once, its
        // state restored (here: fresh); partition 1 is kept.
        ctx.store.remove(&[TopicPartition::new("visits", 0)]);
        let c_again = install(&ctx, 2);
        // The kept partition's newer message repeats its held message's id.
        offer(&mut handles, &ctx, 1, &visit(1, "b-newer", "2"));
        assert_eq!(handles.pending.messages, 0);
        // What was held for partitions given up is consumed again from their checkpoints'
        // offsets, which did not count it.
        assert_eq!(a.read().next_offset(), 0);
        assert!(visits(&a.read()).is_empty());
        assert_eq!(c.read().next_offset(), 0);
        assert!(visits(&c_again.read()).is_empty());
        // The kept partition's held message went in before the newer one.
        assert_eq!(b.read().next_offset(), 2);
        assert_eq!(visits(&b.read()), BTreeMap::from([("b".into(), 1)]));
    }

    /// Locks `state` on another thread until told to let go (or, should the code under test
    /// wait for it, until a deadline, after which the test fails instead of hanging).
    fn hold(state: &SharedPartition) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
        let (taken_tx, taken) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let state = state.clone();
        let holder = std::thread::spawn(move || {
            let _guard = state.read();
            taken_tx.send(()).unwrap();
            let _ = released.recv_timeout(Duration::from_secs(30));
        });
        taken.recv().unwrap();
        (release, holder)
    }

    #[test]
    fn a_rebalance_does_not_wait_for_a_kept_partition() {
        let ctx = context();
        let (_a, b, _c) = (install(&ctx, 0), install(&ctx, 1), install(&ctx, 2));
        let mut handles = Handles::default();
        let (release, holder) = hold(&b);
        offer(&mut handles, &ctx, 1, &visit(0, "b", "1"));
        ctx.store.remove(&[TopicPartition::new("visits", 0)]);
        offer(&mut handles, &ctx, 2, &visit(0, "c", "2"));
        assert_eq!(
            handles.pending.messages, 1,
            "still held: nothing waited for the reader"
        );
        release.send(()).unwrap();
        holder.join().unwrap();
        handles.release_held(&ctx, false);
        assert_eq!(handles.pending.messages, 0);
        assert_eq!(visits(&b.read()), BTreeMap::from([("b".into(), 1)]));
    }

    #[test]
    fn beyond_the_bound_the_consumer_waits_for_the_locks() {
        let ctx = context();
        let (a, _b) = (install(&ctx, 0), install(&ctx, 1));
        let mut handles = Handles::default();
        let (release, holder) = hold(&a);
        for i in 0..MAX_HELD {
            offer(
                &mut handles,
                &ctx,
                0,
                &visit(i as i64, "a", &format!("a{i}")),
            );
        }
        assert_eq!(handles.pending.messages, MAX_HELD);
        release.send(()).unwrap();
        offer(&mut handles, &ctx, 1, &visit(0, "b", "b"));
        holder.join().unwrap();
        assert_eq!(handles.pending.messages, 0);
        assert_eq!(handles.pending.bytes, 0);
        assert_eq!(a.read().next_offset(), MAX_HELD as i64);
        assert_eq!(
            visits(&a.read()),
            BTreeMap::from([("a".into(), MAX_HELD as u64)])
        );
    }
}
