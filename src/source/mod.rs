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

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU64};
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::pure::pipeline::Pipeline;
use crate::runtime::health::Health;
use crate::runtime::rate_limit::RateLimit;
use crate::runtime::task::TaskFailure;
use crate::runtime::telemetry::Telemetry;
use crate::source::checkpoints::CheckpointStore;
use crate::source::client::Quiet;
use crate::source::deadletter::DeadLetters;
use crate::state::store::Store;

pub mod checkpoints;
pub mod client;
mod context;
pub mod deadletter;
mod held;
mod probe;
pub mod restore;
pub mod stats;

pub use context::SourceContext;
use context::*;
use held::*;
use probe::*;

use restore::Restorer;

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
pub(crate) const SHUTDOWN_STEP: Duration = Duration::from_secs(5);

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

/// A plain consumer polled from a thread of its own: consuming is CPU-bound, one message per
/// poll as librdkafka hands them out, with no async wake-ups in between.
pub(crate) type Kafka = BaseConsumer<SourceContext>;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use rdkafka::ClientContext;
    use rdkafka::error::RDKafkaErrorCode;

    use crate::config::Config;
    use crate::pure::partition::PartitionState;
    use crate::runtime::health::Progress;
    use crate::state::store::{SharedPartition, TopicPartition};

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
        let pipeline = Arc::new(Pipeline::from_config(&config));
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
