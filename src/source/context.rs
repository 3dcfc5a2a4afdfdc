//! The consumer's librdkafka context: logs, statistics, errors and rebalances, and the
//! take-over of assigned partitions they start.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset};
use tokio_util::sync::CancellationToken;

use crate::config::Redactor;
use crate::pure::pipeline::Pipeline;
use crate::runtime::health::Health;
use crate::runtime::rate_limit::RateLimit;
use crate::runtime::telemetry::Telemetry;
use crate::source::checkpoints::CheckpointStore;
use crate::source::deadletter::DeadLetters;
use crate::source::restore::{Restored, Restorer};
use crate::source::stats;
use crate::state::store::{Store, TopicPartition};

/// Receives librdkafka's callbacks: logs, statistics, errors and rebalances.
/// `SourceContext::reported_error` when no error waits to be matched: not a librdkafka code.
pub(super) const NO_ERROR: i32 = i32::MIN;

pub struct SourceContext {
    pub(super) store: Arc<Store>,
    pub(super) pipeline: Arc<Pipeline>,
    pub(super) telemetry: Arc<Telemetry>,
    pub(super) health: Arc<Health>,
    pub(super) checkpoints: Arc<CheckpointStore>,
    pub(super) shutdown: CancellationToken,
    pub(super) error_log: Arc<RateLimit>,
    /// Statistics that cannot be read would come every second: limited apart, so they do not
    /// take the log lines of other errors.
    pub(super) stats_log: RateLimit,
    /// librdkafka's messages pass through it, in case one quotes a secret property.
    pub(super) redactor: Redactor,
    /// Last connection state logged (0 none yet, 1 down, 2 up), so each change is logged once.
    pub(super) logged_state: AtomicU8,
    /// The code of the error `ClientContext::error` last reported and the consume loop has not
    /// seen yet (`NO_ERROR` for none): rdkafka hands each error event to both, and the second
    /// must not count or log it again.
    pub(super) reported_error: AtomicI32,
    /// Consumer lag per partition as last reported (statistics callback only).
    pub(super) lags: Mutex<BTreeMap<TopicPartition, i64>>,
    /// Partitions the statistics callback saw reach their end, marked caught up by the
    /// consume loop once it has added its tally: readiness must not come before the counts.
    pub(super) reached: Mutex<Vec<TopicPartition>>,
    /// Partitions whose stall was logged, so that each stall is logged once, and its end.
    pub(super) stalls_logged: Mutex<std::collections::BTreeSet<TopicPartition>>,
    /// `kafka.dead_letter_topic`, when set.
    pub(super) dead_letters: Option<Arc<DeadLetters>>,
    /// Takes assigned partitions over, on a thread of its own (see `restore`).
    pub(super) restorer: Restorer,
    /// Partitions assigned and paused while their take-over runs, with the ticket of the
    /// take-over that will install them (a later assignment's supersedes it).
    pub(super) restoring: Mutex<BTreeMap<TopicPartition, u64>>,
    pub(super) tickets: AtomicU64,
    /// Take-overs done, for the consuming thread to install: the ticket and what it restored
    /// (`None`: shutting down first).
    pub(super) restored: Mutex<(
        std::sync::mpsc::Sender<TakenOver>,
        std::sync::mpsc::Receiver<TakenOver>,
    )>,
    /// Restored partitions whose seek failed, tried again at the next turn of the loop.
    pub(super) unseeked: Mutex<Vec<(u64, Restored)>>,
}

/// A take-over done: its ticket, and what it restored (`None`: shutting down first).
pub(super) type TakenOver = (u64, Option<Vec<Restored>>);

/// A partition with events waiting that has not advanced for this long is logged (the
/// threshold of the shipped alert, `EcomPulsePartitionStalled`): the client's own errors do
/// not say which partition they hold up.
pub(super) const STALL_LOGGED_AFTER: Duration = Duration::from_secs(60);

impl SourceContext {
    pub(super) fn set_connected(&self, up: bool) {
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

    pub(super) fn warn_limited(&self, what: &str, error: &dyn fmt::Display) {
        warn_within(&self.error_log, what, error);
    }

    /// Whether the consume loop's `e` is the error event `ClientContext::error` just counted
    /// and logged (with librdkafka's reason, which the loop's copy lacks). A fetch error of a
    /// partition reaches the loop only, and is its to report.
    pub(super) fn already_reported(&self, e: &KafkaError) -> bool {
        let Some(code) = e.rdkafka_error_code() else {
            return false;
        };
        self.reported_error
            .compare_exchange(code as i32, NO_ERROR, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Connection state and consumer lag from a statistics report; partitions whose target
    /// was unknown at assignment are marked caught up once they reach the high watermark.
    pub(super) fn on_stats(&self, report: &stats::Stats<'_>) {
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
    pub(super) fn log_stalls(&self, now: i64, lags: &BTreeMap<TopicPartition, i64>) {
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
    pub(super) fn begin_take_over(&self, tps: Vec<TopicPartition>) {
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
    pub(super) fn install_restored(&self, consumer: &BaseConsumer<Self>) {
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
    pub(super) fn caught_up(&self, tp: &TopicPartition) {
        if let Some(state) = self.store.get(tp) {
            state.write().settle();
        }
        self.health.caught_up(tp);
    }

    /// Forgets partitions this instance no longer owns.
    pub(super) fn give_up(&self, tps: &[TopicPartition]) {
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
pub(super) fn warn_within(limit: &RateLimit, what: &str, error: &dyn fmt::Display) {
    if let Some(suppressed) = limit.check() {
        tracing::warn!(error = %error, suppressed, "{what}");
    }
}

/// Checkpoints `tps` and commits the offsets the checkpoints reach. Blocking.
pub(super) fn save_and_commit<C: Consumer<SourceContext>>(
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

pub(super) fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

pub(super) fn describe(tps: &[TopicPartition]) -> String {
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

pub(super) fn code_label(code: Option<RDKafkaErrorCode>) -> String {
    code.map_or_else(|| "other".to_string(), |c| format!("{c:?}"))
}

/// Where a message came from, for log lines.
pub(super) struct Origin<'a> {
    pub(super) topic: &'a str,
    pub(super) partition: i32,
    pub(super) offset: i64,
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
}
