//! The service's own health: `ecom_pulse_*` metrics, readiness, and rate-limited logging.
//!
//! Counters that move per event are resolved to plain atomics once, at start-up, so the hot
//! path never looks a label set up. Gauges that describe state (readiness, connection) are
//! refreshed from [`Health`] when scraped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::pure::decode::{EventType, Reason, Rejection};
use crate::pure::pipeline::Outcome;
use crate::state::store::TopicPartition;

/// Registered service metrics.
pub struct Telemetry {
    pub registry: Registry,
    events: Vec<IntCounter>,
    rejected: Vec<IntCounter>,
    duplicates: IntCounter,
    keys_overflow: IntCounter,
    keys_evicted: IntCounter,
    last_event_timestamp: Gauge,
    ready: IntGauge,
    kafka_connected: IntGauge,
    consumer_lag: IntGaugeVec,
    kafka_errors: IntCounterVec,
    late: Vec<IntCounter>,
    replayed: IntCounter,
    restores: IntCounterVec,
    checkpoints: IntCounterVec,
    checkpoint_bytes: IntCounter,
    alert_transitions: IntCounterVec,
    notifications: IntCounterVec,
    feed_messages: IntCounterVec,
    dead_letters: IntCounterVec,
    rejection_logs: Vec<RateLimit>,
    reporting_currency: String,
}

/// The commonest outcomes (events accepted, duplicates, events replayed after a restore),
/// counted by the consuming thread in plain integers and added to the shared counters in
/// batches ([`Telemetry::add`]). An atomic add per event is a locked instruction, which also
/// waits for the event's own writes to the window state to leave the store buffer: two per
/// message are a measurable share of the ingest path (docs/performance.md). The exported
/// counters trail the state by at most one batch (the consumer adds every 256 polls, before it
/// waits, and before a partition counts as caught up).
#[derive(Debug, Default)]
pub struct Tally {
    accepted: [u64; EventType::ALL.len()],
    duplicates: u64,
    replayed: u64,
    /// Newest event time among the accepted.
    newest_event_ms: Option<i64>,
}

impl Tally {
    /// Counts one message's outcome; what is rare goes to `telemetry` at once.
    pub fn record(
        &mut self,
        telemetry: &Telemetry,
        outcome: &Outcome,
        origin: &dyn std::fmt::Display,
    ) {
        match outcome {
            Outcome::Accepted {
                kind,
                timestamp_ms,
                late,
                folded,
            } => {
                self.accepted[kind.index()] += 1;
                self.newest_event_ms = self.newest_event_ms.max(Some(*timestamp_ms));
                if *folded || *late != 0 {
                    telemetry.accepted_unusual(*late, *folded);
                }
            }
            Outcome::Duplicate => self.duplicates += 1,
            Outcome::Rejected(rejection) => telemetry.rejected(rejection, origin),
            // Counted when it was first read.
            Outcome::Rebuilt { .. } => {}
        }
    }

    /// An event applied again while catching up after a restore.
    pub fn replayed(&mut self) {
        self.replayed += 1;
    }
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("ecom_pulse")
}

impl Telemetry {
    /// `windows` are the window labels, for the per-window late-event counters;
    /// `clv_factor` is purchases per year x lifetime years.
    pub fn new(reporting_currency: &str, windows: &[&str], clv_factor: f64) -> Telemetry {
        let registry = Registry::new();
        let register = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("metric names are unique");
        };
        // The unlabelled metrics: made, registered and handed back in one step.
        let counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(opts(name, help)).unwrap();
            register(Box::new(c.clone()));
            c
        };
        let int_gauge = |name: &str, help: &str| {
            let g = IntGauge::with_opts(opts(name, help)).unwrap();
            register(Box::new(g.clone()));
            g
        };
        let gauge = |name: &str, help: &str| {
            let g = Gauge::with_opts(opts(name, help)).unwrap();
            register(Box::new(g.clone()));
            g
        };

        let events_vec = IntCounterVec::new(
            opts("events_total", "Events accepted and aggregated, by type."),
            &["event_type"],
        )
        .unwrap();
        let events = EventType::ALL
            .iter()
            .map(|t| events_vec.with_label_values(&[t.as_str()]))
            .collect();
        register(Box::new(events_vec));

        let rejected_vec = IntCounterVec::new(
            opts("events_rejected_total", "Events rejected, by reason."),
            &["reason"],
        )
        .unwrap();
        let rejected = Reason::ALL
            .iter()
            .map(|r| rejected_vec.with_label_values(&[r.as_str()]))
            .collect();
        register(Box::new(rejected_vec));

        let duplicates = counter(
            "events_duplicate_total",
            "Events whose event_id was already seen within the dedup horizon; counted once.",
        );

        let keys_overflow = counter(
            "keys_overflow_total",
            "Events counted under campaign \"(other)\" because their partition already held limits.max_keys keys.",
        );
        let keys_evicted = counter(
            "keys_evicted_total",
            "Keys dropped, in a partition at limits.max_keys, because all their windows had emptied.",
        );

        let last_event_timestamp = gauge(
            "last_event_timestamp_seconds",
            "Event time of the newest accepted event, Unix seconds.",
        );

        let ready = int_gauge(
            "ready",
            "1 when partitions are assigned and caught up (what /readyz answers), else 0.",
        );

        let kafka_connected = int_gauge(
            "kafka_connected",
            "1 while at least one broker connection is up, else 0.",
        );

        let consumer_lag = IntGaugeVec::new(
            opts(
                "consumer_lag",
                "Messages between the last processed offset and the high watermark, per assigned partition.",
            ),
            &["topic", "partition"],
        )
        .unwrap();
        register(Box::new(consumer_lag.clone()));

        let kafka_errors = IntCounterVec::new(
            opts(
                "kafka_errors_total",
                "Errors reported by the Kafka client, by error code.",
            ),
            &["code"],
        )
        .unwrap();
        register(Box::new(kafka_errors.clone()));

        let late_vec = IntCounterVec::new(
            opts(
                "events_late_total",
                "Accepted events that arrived too late to count in this window (they count in longer windows and the counters).",
            ),
            &["window"],
        )
        .unwrap();
        let late = windows
            .iter()
            .map(|w| late_vec.with_label_values(&[w]))
            .collect();
        register(Box::new(late_vec));

        let replayed = counter(
            "restore_events_replayed_total",
            "Events applied while their partition was catching up after being restored or assigned.",
        );

        let restores = IntCounterVec::new(
            opts(
                "restores_total",
                "Partitions taken over, by how their state started: restored, fresh (no checkpoint) or reconfigured (the window configuration changed: windows kept where they fit, the others rebuilt).",
            ),
            &["result"],
        )
        .unwrap();
        for r in ["restored", "fresh", "reconfigured"] {
            restores.with_label_values(&[r]);
        }
        register(Box::new(restores.clone()));

        let checkpoints = IntCounterVec::new(
            opts(
                "checkpoints_total",
                "Partition checkpoints written, by result (ok, failed).",
            ),
            &["result"],
        )
        .unwrap();
        for r in ["ok", "failed"] {
            checkpoints.with_label_values(&[r]);
        }
        register(Box::new(checkpoints.clone()));

        let checkpoint_bytes = counter(
            "checkpoint_written_bytes_total",
            "Encoded state bytes written to the checkpoint topic.",
        );

        let alert_transitions = IntCounterVec::new(
            opts(
                "alert_transitions_total",
                "Alert state changes, by the state entered.",
            ),
            &["state"],
        )
        .unwrap();
        for state in ["pending", "firing", "resolved", "inactive"] {
            alert_transitions.with_label_values(&[state]);
        }
        register(Box::new(alert_transitions.clone()));

        let notifications = IntCounterVec::new(
            opts(
                "alertmanager_notifications_total",
                "Pushes of alerts to Alertmanager, by result (ok, failed).",
            ),
            &["result"],
        )
        .unwrap();
        register(Box::new(notifications.clone()));

        let feed_messages = IntCounterVec::new(
            opts(
                "feed_messages_total",
                "Messages to kafka.kpis_topic and kafka.alerts_topic, by topic and result (ok, failed).",
            ),
            &["topic", "result"],
        )
        .unwrap();
        register(Box::new(feed_messages.clone()));
        let dead_letters = IntCounterVec::new(
            opts(
                "dead_letters_total",
                "Rejected events delivered to kafka.dead_letter_topic (ok) or refused by it for good (failed).",
            ),
            &["result"],
        )
        .unwrap();
        for r in ["ok", "failed"] {
            dead_letters.with_label_values(&[r]);
        }
        register(Box::new(dead_letters.clone()));

        let build_info = IntGaugeVec::new(
            opts("build_info", "Build of the running binary; always 1."),
            &["version"],
        )
        .unwrap();
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        register(Box::new(build_info));

        let info = IntGaugeVec::new(
            opts(
                "info",
                "Settings that give the KPIs their meaning; always 1.",
            ),
            &["reporting_currency"],
        )
        .unwrap();
        info.with_label_values(&[reporting_currency]).set(1);
        register(Box::new(info));

        gauge(
            "clv_factor",
            "Purchases per year x customer lifetime in years (kpi.*): CLV = AOV x this.",
        )
        .set(clv_factor);

        #[cfg(target_os = "linux")]
        register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));

        Telemetry {
            registry,
            events,
            rejected,
            duplicates,
            keys_overflow,
            keys_evicted,
            last_event_timestamp,
            ready,
            kafka_connected,
            consumer_lag,
            kafka_errors,
            late,
            replayed,
            restores,
            checkpoints,
            checkpoint_bytes,
            alert_transitions,
            notifications,
            feed_messages,
            dead_letters,
            reporting_currency: reporting_currency.to_string(),
            rejection_logs: Reason::ALL
                .iter()
                .map(|_| RateLimit::new(Duration::from_secs(10)))
                .collect(),
        }
    }

    /// Keys dropped by `PartitionState::evict_idle`.
    pub fn keys_evicted(&self, n: usize) {
        self.keys_evicted.inc_by(n as u64);
    }

    /// Adds what `tally` counted since the last call, and empties it.
    pub fn add(&self, tally: &mut Tally) {
        let Tally {
            accepted,
            duplicates,
            replayed,
            newest_event_ms,
        } = std::mem::take(tally);
        for (counter, n) in self.events.iter().zip(accepted) {
            if n > 0 {
                counter.inc_by(n);
            }
        }
        if duplicates > 0 {
            self.duplicates.inc_by(duplicates);
        }
        if replayed > 0 {
            self.replayed.inc_by(replayed);
        }
        if let Some(ms) = newest_event_ms {
            let seconds = ms as f64 / 1000.0;
            if seconds > self.last_event_timestamp.get() {
                self.last_event_timestamp.set(seconds);
            }
        }
    }

    /// An accepted event folded into "(other)" (`folded`), or too late for the windows whose
    /// bits `late` sets.
    fn accepted_unusual(&self, late: u32, folded: bool) {
        if folded {
            self.keys_overflow.inc();
        }
        for (w, counter) in self.late.iter().enumerate() {
            if late & (1 << w) != 0 {
                counter.inc();
            }
        }
    }

    /// A rejected event, logged at most once per reason per 10 s.
    fn rejected(&self, rejection: &Rejection, origin: &dyn std::fmt::Display) {
        let i = rejection.reason.index();
        self.rejected[i].inc();
        if let Some(suppressed) = self.rejection_logs[i].check() {
            tracing::warn!(
                reason = rejection.reason.as_str(),
                field = rejection.detail,
                at = %origin,
                suppressed,
                "event rejected: {rejection}"
            );
        }
    }

    pub fn reporting_currency(&self) -> &str {
        &self.reporting_currency
    }

    /// `result`: restored, fresh or reconfigured.
    pub fn restored(&self, result: &str) {
        self.restores.with_label_values(&[result]).inc();
    }

    pub fn checkpoint(&self, written: Option<usize>) {
        match written {
            Some(bytes) => {
                self.checkpoints.with_label_values(&["ok"]).inc();
                self.checkpoint_bytes.inc_by(bytes as u64);
            }
            None => self.checkpoints.with_label_values(&["failed"]).inc(),
        }
    }

    /// An alert moved to `phase` (`pending`, `firing`, `resolved`).
    pub fn alert_transition(&self, phase: &str) {
        self.alert_transitions.with_label_values(&[phase]).inc();
    }

    pub fn notification(&self, ok: bool) {
        self.notifications
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
    }

    pub fn feed_message(&self, topic: &str, ok: bool) {
        self.feed_messages
            .with_label_values(&[topic, if ok { "ok" } else { "failed" }])
            .inc();
    }

    pub fn dead_letter(&self, ok: bool) {
        self.dead_letters
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
    }

    pub fn kafka_error(&self, code: &str) {
        self.kafka_errors.with_label_values(&[code]).inc();
    }

    /// Removes the lag series of partitions this instance gave up, at once.
    pub fn forget_partitions(&self, tps: &[TopicPartition]) {
        for tp in tps {
            let _ = self
                .consumer_lag
                .remove_label_values(&[&*tp.topic, &tp.partition.to_string()]);
        }
    }

    /// Replaces the lag series with exactly the given partitions.
    pub fn set_consumer_lag(&self, lags: &BTreeMap<TopicPartition, i64>) {
        self.consumer_lag.reset();
        for (tp, lag) in lags {
            self.consumer_lag
                .with_label_values(&[&*tp.topic, &tp.partition.to_string()])
                .set(*lag);
        }
    }

    /// Refreshes the state gauges from `health`; called before each scrape.
    pub fn refresh(&self, health: &Health) {
        self.ready.set(i64::from(health.readiness().is_ok()));
        self.kafka_connected.set(i64::from(health.connected()));
    }
}

/// Where an assigned partition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// High watermark when it was assigned: reaching it means caught up. `None` if unknown
    /// (then librdkafka's statistics decide).
    pub target: Option<i64>,
    pub caught_up: bool,
}

/// Which input partitions an instance's numbers come from, against all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// The partitions this instance holds.
    pub held: Vec<TopicPartition>,
    /// Partitions of the consumed topics, in the metadata; 0 while unknown.
    pub total: usize,
}

impl Coverage {
    /// True when this instance holds every partition of the consumed topics: its numbers
    /// are the whole fleet's.
    pub fn complete(&self) -> bool {
        self.total > 0 && self.held.len() >= self.total
    }
}

/// How an assigned partition moves: what the statistics last said of it, and when it last
/// advanced. A partition that has lag but does not advance is stalled (an unreadable batch, a
/// fetch the broker keeps failing), which nothing else shows: the consumer, readiness and the
/// other partitions all carry on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Messages behind the high watermark; `None` until a report gave it.
    pub lag: Option<i64>,
    /// Offset of the next message to apply, as last seen.
    pub next_offset: i64,
    /// Wall-clock time it was assigned or last seen to advance.
    pub advanced_at_ms: i64,
    /// The high watermark last asked of the broker apart from the consumer's fetches, if any.
    pub probed_high: Option<i64>,
    /// Being taken over (its checkpoint read, its state restored) since `advanced_at_ms`:
    /// there is work waiting, and it is not being done.
    pub restoring: bool,
}

/// Readiness: connection, assignment and catch-up.
#[derive(Debug, Default)]
pub struct Health {
    connected: AtomicBool,
    /// Set while newly assigned partitions are being restored.
    restoring: AtomicBool,
    /// `None` until the group has given this instance its first assignment.
    assignment: Mutex<Option<BTreeMap<TopicPartition, Progress>>>,
    /// Per assigned partition, from the statistics each second.
    flows: Mutex<BTreeMap<TopicPartition, Flow>>,
    /// Partition count of each consumed topic, as the client's metadata last had it.
    topic_partitions: Mutex<BTreeMap<String, usize>>,
    /// A task that stopped early, once one has: never ready again.
    failed: Mutex<Option<String>>,
    /// Shutting down (a signal, or a failure): draining, not ready.
    stopping: AtomicBool,
    /// Partitions of the consumed topics with events waiting that no member has committed
    /// progress on lately (see `source::probe_loop`).
    unconsumed: AtomicU64,
}

impl Health {
    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Release);
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn set_restoring(&self, restoring: bool) {
        self.restoring.store(restoring, Ordering::Release);
    }

    /// Records newly assigned (and already restored) partitions.
    pub fn assign(&self, partitions: &[(TopicPartition, Progress)]) {
        let now = crate::now_ms();
        let mut assignment = self.assignment.lock();
        let map = assignment.get_or_insert_with(BTreeMap::new);
        let mut flows = self.flows.lock();
        for (tp, progress) in partitions {
            map.insert(tp.clone(), *progress);
            flows.insert(
                tp.clone(),
                Flow {
                    lag: None,
                    next_offset: i64::MIN,
                    advanced_at_ms: now,
                    probed_high: None,
                    restoring: false,
                },
            );
        }
    }

    /// Partitions the group just gave this instance, not restored yet (see [`Flow`]).
    pub fn taking_over(&self, tps: &[TopicPartition], now_ms: i64) {
        let mut flows = self.flows.lock();
        for tp in tps {
            flows.insert(
                tp.clone(),
                Flow {
                    lag: None,
                    next_offset: i64::MIN,
                    advanced_at_ms: now_ms,
                    probed_high: None,
                    restoring: true,
                },
            );
        }
    }

    /// Every partition of the consumed topics, as the metadata last had them.
    pub fn topic_partition_list(&self) -> Vec<TopicPartition> {
        self.topic_partitions
            .lock()
            .iter()
            .flat_map(|(topic, &n)| (0..n as i32).map(move |p| TopicPartition::new(topic, p)))
            .collect()
    }

    /// How many partitions of the group are consumed by no one (see `unconsumed`).
    pub fn set_unconsumed(&self, partitions: usize) {
        self.unconsumed.store(partitions as u64, Ordering::Release);
    }

    pub fn unconsumed(&self) -> u64 {
        self.unconsumed.load(Ordering::Acquire)
    }

    /// Shutdown began: not ready from now on, while the service drains.
    pub fn shut_down(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// A task stopped before shutdown: not ready from now on, with the reason.
    pub fn fail(&self, failure: &crate::runtime::task::TaskFailure) {
        tracing::error!(task = failure.task, cause = %failure.cause, "a task of the service stopped; shutting down to be restarted");
        self.failed
            .lock()
            .get_or_insert_with(|| failure.to_string());
    }

    /// Records a topic's partition count (a count of 0, a topic not known yet, is ignored).
    pub fn set_topic_partitions(&self, topic: &str, partitions: usize) {
        if partitions > 0 {
            self.topic_partitions
                .lock()
                .insert(topic.to_string(), partitions);
        }
    }

    /// The partition count of `topic`, if known.
    pub fn topic_partitions(&self, topic: &str) -> Option<usize> {
        self.topic_partitions.lock().get(topic).copied()
    }

    /// Every known partition of the consumed topics, and how many of them are assigned here.
    pub fn coverage(&self) -> Coverage {
        let total = self.topic_partitions.lock().values().sum();
        let held = self.assigned();
        Coverage { held, total }
    }

    /// Records a statistics report's view of an assigned partition at `now_ms`.
    pub fn flow(&self, tp: &TopicPartition, next_offset: i64, lag: Option<i64>, now_ms: i64) {
        if let Some(f) = self.flows.lock().get_mut(tp) {
            // Nothing to read is not a stall: the clock starts when there is lag and the
            // partition stops moving.
            if next_offset > f.next_offset || lag.is_some_and(|l| l <= 0) {
                f.advanced_at_ms = now_ms;
            }
            f.next_offset = f.next_offset.max(next_offset);
            if lag.is_some() {
                f.lag = lag;
            }
        }
    }

    /// Records a high watermark asked of the broker apart from the consumer's own fetches
    /// (see `source::probe_loop`): a fetch the broker keeps failing leaves the statistics'
    /// high watermark where it was, and the partition would look idle instead of stalled.
    pub fn probed(&self, tp: &TopicPartition, high: i64) {
        if let Some(f) = self.flows.lock().get_mut(tp) {
            f.probed_high = f.probed_high.max(Some(high));
        }
    }

    /// The high watermark last probed for `tp`, if any.
    pub fn probed_high(&self, tp: &TopicPartition) -> Option<i64> {
        self.flows.lock().get(tp).and_then(|f| f.probed_high)
    }

    /// Each assigned partition's next offset as the statistics last saw it (`i64::MIN` before
    /// the first report).
    pub fn next_offsets(&self) -> Vec<(TopicPartition, i64)> {
        self.flows
            .lock()
            .iter()
            .map(|(tp, f)| (tp.clone(), f.next_offset))
            .collect()
    }

    /// Per assigned partition, how long it has had lag without advancing, at `now_ms` (zero
    /// when it has no lag, or none is known yet).
    pub fn stalled(&self, now_ms: i64) -> Vec<(TopicPartition, Duration)> {
        self.flows
            .lock()
            .iter()
            .map(|(tp, f)| {
                let stalled = match f.lag {
                    _ if f.restoring => (now_ms - f.advanced_at_ms).max(0),
                    Some(lag) if lag > 0 => (now_ms - f.advanced_at_ms).max(0),
                    _ => 0,
                };
                (tp.clone(), Duration::from_millis(stalled as u64))
            })
            .collect()
    }

    /// Marks the start of an assignment that may be empty (an idle group member).
    pub fn assignment_received(&self) {
        self.assignment.lock().get_or_insert_with(BTreeMap::new);
    }

    pub fn revoke(&self, tps: &[TopicPartition]) {
        if let Some(map) = self.assignment.lock().as_mut() {
            for tp in tps {
                map.remove(tp);
            }
        }
        let mut flows = self.flows.lock();
        for tp in tps {
            flows.remove(tp);
        }
    }

    /// Marks a partition as having reached its target once.
    pub fn caught_up(&self, tp: &TopicPartition) {
        if let Some(p) = self.assignment.lock().as_mut().and_then(|m| m.get_mut(tp)) {
            p.caught_up = true;
        }
    }

    pub fn progress(&self, tp: &TopicPartition) -> Option<Progress> {
        self.assignment
            .lock()
            .as_ref()
            .and_then(|m| m.get(tp).copied())
    }

    pub fn assigned(&self) -> Vec<TopicPartition> {
        self.assignment
            .lock()
            .as_ref()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Assigned partitions not caught up yet.
    pub fn catching_up(&self) -> Vec<TopicPartition> {
        self.assignment
            .lock()
            .as_ref()
            .map(|m| {
                m.iter()
                    .filter(|(_, p)| !p.caught_up)
                    .map(|(tp, _)| tp.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `Ok` when ready to serve trustworthy numbers, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if let Some(failed) = self.failed.lock().as_ref() {
            return Err(format!("{failed}; shutting down"));
        }
        if self.stopping.load(Ordering::Acquire) {
            return Err("shutting down".into());
        }
        // Before the connection: a restore under way holds the consuming thread, whose
        // statistics report the connection.
        if self.restoring.load(Ordering::Acquire) {
            return Err("restoring newly assigned partitions from their checkpoints".into());
        }
        if !self.connected() {
            return Err("not connected to Kafka".into());
        }
        if self.assignment.lock().is_none() {
            return Err("waiting for a partition assignment from the consumer group".into());
        }
        let unconsumed = self.unconsumed();
        if unconsumed > 0 && self.assigned().is_empty() {
            return Err(format!(
                "this instance holds no partition while {unconsumed} partitions of its group have events no one consumes"
            ));
        }
        let behind: Vec<String> = self
            .catching_up()
            .iter()
            .map(|tp| format!("{}/{}", tp.topic, tp.partition))
            .collect();
        if behind.is_empty() {
            Ok(())
        } else {
            Err(format!("restoring or catching up on {}", behind.join(", ")))
        }
    }
}

/// Lets one event through per interval and counts the rest, so a flood of bad input costs a
/// log line every few seconds, not one per message.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    start: Instant,
    /// Milliseconds since `start` of the last event let through, plus one (0: never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub fn new(interval: Duration) -> Self {
        RateLimit {
            interval,
            start: Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this event may be logged, `n` being how many were suppressed since the last.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        let now_ms = now.duration_since(self.start).as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now_ms >= last + self.interval.as_millis() as u64;
        if due
            && self
                .last
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_lets_one_through_per_interval() {
        let rl = RateLimit::new(Duration::from_secs(10));
        let t0 = rl.start;
        assert_eq!(rl.check_at(t0), Some(0));
        assert_eq!(rl.check_at(t0 + Duration::from_secs(1)), None);
        assert_eq!(rl.check_at(t0 + Duration::from_secs(2)), None);
        assert_eq!(rl.check_at(t0 + Duration::from_secs(11)), Some(2));
        assert_eq!(rl.check_at(t0 + Duration::from_secs(12)), None);
    }

    /// Stalled means lag without progress: idling caught up is not, and neither is a
    /// partition that keeps advancing however far behind it is.
    #[test]
    fn a_partition_is_stalled_only_while_it_has_lag_and_does_not_advance() {
        let h = Health::default();
        let tp = TopicPartition::new("visits", 0);
        h.assign(&[(
            tp.clone(),
            Progress {
                target: Some(0),
                caught_up: true,
            },
        )]);
        let stalled = |at: i64| h.stalled(at)[0].1.as_millis() as i64;
        let t = crate::now_ms();
        assert_eq!(stalled(t + 5_000), 0, "no lag known yet");
        h.flow(&tp, 10, Some(0), t);
        h.flow(&tp, 10, Some(0), t + 60_000);
        assert_eq!(stalled(t + 61_000), 0, "idle, caught up");
        // Messages arrive but the partition does not move.
        h.flow(&tp, 10, Some(5), t + 62_000);
        h.flow(&tp, 10, Some(9), t + 70_000);
        assert_eq!(stalled(t + 72_000), 72_000 - 60_000);
        // It moves again, still behind: not stalled.
        h.flow(&tp, 11, Some(8), t + 73_000);
        assert_eq!(stalled(t + 73_500), 500);
        h.revoke(std::slice::from_ref(&tp));
        assert!(h.stalled(t + 80_000).is_empty());
    }

    /// A task that stopped, or a shutdown, makes an otherwise ready instance not ready, with
    /// the reason; a failure is never forgotten.
    #[test]
    fn a_failed_task_or_a_shutdown_is_not_ready() {
        let h = Health::default();
        h.set_connected(true);
        h.assignment_received();
        assert_eq!(h.readiness(), Ok(()));
        h.fail(&crate::runtime::task::TaskFailure::new(
            "checkpoint writer",
            "panicked: boom",
        ));
        let why = h.readiness().unwrap_err();
        assert!(
            why.contains("checkpoint writer stopped: panicked: boom"),
            "{why}"
        );
        h.fail(&crate::runtime::task::TaskFailure::new("other", "later"));
        assert!(h.readiness().unwrap_err().contains("checkpoint writer"));
        let h = Health::default();
        h.set_connected(true);
        h.assignment_received();
        h.shut_down();
        assert_eq!(h.readiness(), Err("shutting down".to_string()));
    }

    #[test]
    fn readiness_needs_connection_assignment_and_catch_up() {
        let h = Health::default();
        assert!(h.readiness().unwrap_err().contains("not connected"));
        h.set_connected(true);
        assert!(h.readiness().unwrap_err().contains("assignment"));
        let tps = [
            TopicPartition::new("visits", 0),
            TopicPartition::new("orders", 0),
        ];
        let behind = Progress {
            target: Some(10),
            caught_up: false,
        };
        h.assign(&[(tps[0].clone(), behind), (tps[1].clone(), behind)]);
        let why = h.readiness().unwrap_err();
        assert!(
            why.contains("visits/0") && why.contains("orders/0"),
            "{why}"
        );
        h.caught_up(&tps[0]);
        h.caught_up(&tps[1]);
        assert_eq!(h.readiness(), Ok(()));
        h.set_restoring(true);
        assert!(h.readiness().unwrap_err().contains("restoring"));
        h.set_restoring(false);
        h.revoke(&tps);
        assert_eq!(
            h.readiness(),
            Ok(()),
            "an empty assignment is a valid, idle member"
        );
        h.set_connected(false);
        assert!(h.readiness().is_err());
    }

    #[test]
    fn outcomes_are_counted_under_their_labels() {
        let t = Telemetry::new("USD", &["5m", "1h"], 12.0);
        let render = |t: &Telemetry| {
            prometheus::TextEncoder::new()
                .encode_to_string(&t.registry.gather())
                .unwrap()
        };
        let mut tally = Tally::default();
        let accepted = |timestamp_ms| Outcome::Accepted {
            kind: EventType::Order,
            timestamp_ms,
            late: 0b01,
            folded: true,
        };
        tally.record(&t, &accepted(5_000), &"here");
        tally.record(&t, &accepted(4_000), &"here");
        tally.record(&t, &Outcome::Duplicate, &"here");
        tally.record(
            &t,
            &Outcome::Rejected(crate::pure::decode::Rejection {
                reason: Reason::TooLate,
                field: None,
                detail: "x",
            }),
            &"here",
        );
        tally.replayed();
        // Rare outcomes count at once; the common ones when the tally is added.
        let before = render(&t);
        assert!(before.contains("ecom_pulse_events_total{event_type=\"order\"} 0"));
        assert!(before.contains("ecom_pulse_events_rejected_total{reason=\"too_late\"} 1"));
        assert!(before.contains("ecom_pulse_keys_overflow_total 2"));
        t.add(&mut tally);
        let text = render(&t);
        assert!(
            text.contains("ecom_pulse_restore_events_replayed_total 1"),
            "{text}"
        );
        // Added once: the tally is empty afterwards. (The process's own figures, memory and
        // CPU, move between two renderings.)
        t.add(&mut tally);
        let ours = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.contains("process_"))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(ours(&text), ours(&render(&t)));
        assert!(
            text.contains("ecom_pulse_events_total{event_type=\"order\"} 2"),
            "{text}"
        );
        assert!(text.contains("ecom_pulse_events_total{event_type=\"visit\"} 0"));
        assert!(text.contains("ecom_pulse_events_duplicate_total 1"));
        assert!(text.contains("ecom_pulse_keys_overflow_total 2"), "{text}");
        assert!(text.contains("ecom_pulse_events_rejected_total{reason=\"too_late\"} 1"));
        assert!(text.contains("ecom_pulse_events_rejected_total{reason=\"malformed_json\"} 0"));
        assert!(text.contains("ecom_pulse_last_event_timestamp_seconds 5"));
        assert!(text.contains("ecom_pulse_build_info{version="));
        assert!(text.contains("ecom_pulse_info{reporting_currency=\"USD\"} 1"));
        assert!(
            text.contains("ecom_pulse_events_late_total{window=\"5m\"} 2"),
            "{text}"
        );
        assert!(text.contains("ecom_pulse_events_late_total{window=\"1h\"} 0"));
    }
}
