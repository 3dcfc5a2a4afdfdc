//! The Kafka side: one consumer in the group, at-least-once.
//!
//! Offsets are stored for commit only after their message has been applied to the window
//! state (`enable.auto.offset.store = false`, the pattern of rust-rdkafka's `at_least_once`
//! example); librdkafka's auto-commit then commits what was stored, and shutdown commits the
//! rest synchronously. Rebalance callbacks hand partitions (and their state) in and out, and
//! librdkafka's statistics feed connection state, consumer lag and catch-up progress.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio_util::sync::CancellationToken;

use crate::aggregate::{Outcome, Pipeline, SharedPartition, Store, TopicPartition};
use crate::config::KafkaConfig;
use crate::decode::{Reason, Rejection};
use crate::telemetry::{Health, RateLimit, Telemetry};

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

/// The consumer settings ecom-pulse relies on; `kafka.properties` is applied after them.
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group_id)
        .set("client.id", "ecom-pulse")
        // At-least-once: only offsets of applied events are committed.
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "5000")
        // A new group reads what the topics still hold, so windows fill from history.
        .set("auto.offset.reset", "earliest")
        // Connection state, lag and catch-up progress come from the statistics callback.
        .set("statistics.interval.ms", "1000")
        // Topics created after start-up are picked up within seconds, not librdkafka's 5 min.
        .set("topic.metadata.refresh.interval.ms", "10000")
        .set_log_level(RDKafkaLogLevel::Info);
    for (key, value) in &cfg.properties {
        c.set(key, value);
    }
    c
}

/// Receives librdkafka's callbacks: logs, statistics, errors and rebalances.
pub struct SourceContext {
    store: Arc<Store>,
    pipeline: Arc<Pipeline>,
    telemetry: Arc<Telemetry>,
    health: Arc<Health>,
    error_log: RateLimit,
    /// Last connection state logged (0 none yet, 1 down, 2 up), so each change is logged once.
    logged_state: AtomicU8,
}

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

    fn stats(&self, stats: Statistics) {
        self.set_connected(stats.brokers.values().any(|b| b.state == "UP"));
        let assigned = self.health.assigned();
        let mut lags = BTreeMap::new();
        for tp in assigned {
            let Some(p) = stats
                .topics
                .get(&*tp.topic)
                .and_then(|t| t.partitions.get(&tp.partition))
            else {
                continue;
            };
            // Everything up to the high watermark has been fetched and handed to us (the
            // callback runs between messages on the consuming task, so it has been applied).
            if p.hi_offset >= 0 && p.next_offset >= p.hi_offset && p.fetchq_cnt == 0 {
                self.health.caught_up(&tp);
            }
            let lag = if p.consumer_lag_stored >= 0 {
                p.consumer_lag_stored
            } else if p.hi_offset >= 0 && p.next_offset >= 0 {
                (p.hi_offset - p.next_offset).max(0) + p.fetchq_cnt.max(0)
            } else {
                continue;
            };
            lags.insert(tp, lag);
        }
        self.telemetry.set_consumer_lag(&lags);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.set_connected(false);
        }
        self.telemetry.kafka_error(&code_label(code));
        if let Some(suppressed) = self.error_log.check() {
            tracing::warn!(error = %error, suppressed, "Kafka client error: {reason}");
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let tps = partitions_of(tpl);
            if !tps.is_empty() {
                tracing::info!(partitions = %describe(&tps), "partitions revoked; dropping their state");
            }
            self.store.remove(&tps);
            self.health.revoke(&tps);
        }
    }

    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let tps = partitions_of(tpl);
                tracing::info!(partitions = %describe(&tps), "partitions assigned");
                for tp in &tps {
                    self.store
                        .get_or_insert(tp, || self.pipeline.new_partition());
                }
                self.health.assign(&tps);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                self.telemetry.kafka_error("rebalance");
                tracing::warn!(error = %e, "rebalance failed");
            }
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                self.telemetry.kafka_error("commit");
                if let Some(suppressed) = self.error_log.check() {
                    tracing::warn!(error = %e, suppressed, "offset commit failed; will retry with the next commit");
                }
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

/// The consuming task.
pub struct Source {
    consumer: StreamConsumer<SourceContext>,
    topics: Vec<String>,
    store: Arc<Store>,
    pipeline: Arc<Pipeline>,
    telemetry: Arc<Telemetry>,
    store_error_log: RateLimit,
}

impl Source {
    /// Creates the consumer and subscribes. Fails fast on bad librdkafka properties; an
    /// unreachable broker is not an error here (librdkafka keeps retrying).
    pub fn new(
        cfg: &KafkaConfig,
        pipeline: Arc<Pipeline>,
        store: Arc<Store>,
        telemetry: Arc<Telemetry>,
        health: Arc<Health>,
    ) -> Result<Source, SourceError> {
        let context = SourceContext {
            store: store.clone(),
            pipeline: pipeline.clone(),
            telemetry: telemetry.clone(),
            health,
            error_log: RateLimit::new(Duration::from_secs(10)),
            logged_state: AtomicU8::new(0),
        };
        let consumer: StreamConsumer<SourceContext> = client_config(cfg)
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
            consumer,
            topics: cfg.topics.clone(),
            store,
            pipeline,
            telemetry,
            store_error_log: RateLimit::new(Duration::from_secs(10)),
        })
    }

    /// Consumes until `shutdown`, then commits the stored offsets and leaves the group.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(topics = ?self.topics, "consuming");
        let mut handles = Handles::default();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                received = self.consumer.recv() => match received {
                    Ok(message) => self.handle(&message, &mut handles),
                    Err(e) => self.consume_error(e),
                },
            }
        }
        self.close().await;
    }

    fn handle(&self, message: &BorrowedMessage<'_>, handles: &mut Handles) {
        // A message is proof of a live connection, sooner than the next statistics report.
        let context = self.consumer.context();
        if !context.health.connected() {
            context.set_connected(true);
        }
        let now = crate::now_ms();
        let (topic, partition) = (message.topic(), message.partition());
        let origin = Origin {
            topic,
            partition,
            offset: message.offset(),
        };
        let outcome = match message.payload() {
            Some(payload) => {
                let state = handles.get(&self.store, &self.pipeline, topic, partition);
                let record_ts = message.timestamp().to_millis().unwrap_or(now);
                self.pipeline
                    .process(&mut state.lock(), payload, record_ts, now)
            }
            None => Outcome::Rejected(Rejection {
                reason: Reason::MalformedJson,
                detail: "message has no value",
            }),
        };
        self.telemetry.record(&outcome, &origin);
        // Only now may the offset be committed: the event is in the windows.
        if let Err(e) = self.consumer.store_offset_from_message(message) {
            // The partition was revoked while we held the message; its new owner reads it.
            if let Some(suppressed) = self.store_error_log.check() {
                tracing::debug!(error = %e, at = %origin, suppressed, "offset not stored");
            }
        }
    }

    fn consume_error(&self, e: KafkaError) {
        if let KafkaError::PartitionEOF(_) = e {
            return;
        }
        self.telemetry
            .kafka_error(&code_label(e.rdkafka_error_code()));
        if let Some(suppressed) = self.store_error_log.check() {
            tracing::warn!(error = %e, suppressed, "Kafka consume error; retrying");
        }
    }

    async fn close(self) {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("committed offsets"),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {
                tracing::info!("no new offsets to commit")
            }
            Err(e) => tracing::warn!(error = %e, "final offset commit failed"),
        }
        // Leaving the group can wait on an unreachable broker; do not let it hold up exit.
        let consumer = self.consumer;
        let leave = tokio::task::spawn_blocking(move || drop(consumer));
        if tokio::time::timeout(Duration::from_secs(5), leave)
            .await
            .is_err()
        {
            tracing::warn!("leaving the consumer group timed out");
        }
    }
}

/// The consuming task's handles on partition state, refreshed when the assignment changes.
/// Keyed by topic first so a lookup does not allocate.
#[derive(Default)]
struct Handles {
    generation: u64,
    topics: Vec<(Box<str>, HashMap<i32, SharedPartition>)>,
}

impl Handles {
    fn get(
        &mut self,
        store: &Store,
        pipeline: &Pipeline,
        topic: &str,
        partition: i32,
    ) -> SharedPartition {
        if store.generation() != self.generation {
            self.topics.clear();
            self.generation = store.generation();
        }
        let i = match self.topics.iter().position(|(t, _)| **t == *topic) {
            Some(i) => i,
            None => {
                self.topics.push((topic.into(), HashMap::new()));
                self.topics.len() - 1
            }
        };
        if let Some(state) = self.topics[i].1.get(&partition) {
            return state.clone();
        }
        let state = store.get_or_insert(&TopicPartition::new(topic, partition), || {
            pipeline.new_partition()
        });
        if store.generation() != self.generation {
            // This lookup created the partition: start over with a fresh generation.
            self.topics.clear();
            self.generation = store.generation();
            self.topics.push((topic.into(), HashMap::new()));
            self.topics[0].1.insert(partition, state.clone());
        } else {
            self.topics[i].1.insert(partition, state.clone());
        }
        state
    }
}
