//! The service's own `ecom_pulse_*` metrics: registered once, counted without label lookups.
//!
//! Counters that move per event are resolved to plain atomics once, at start-up, so the hot
//! path never looks a label set up. Gauges that describe state (readiness, connection) are
//! refreshed from [`Health`] when scraped.

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::pure::decode::{EventType, Reason, Rejection};
use crate::pure::pipeline::Outcome;
use crate::runtime::health::Health;
use crate::runtime::rate_limit::RateLimit;
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

#[cfg(test)]
mod tests {
    use super::*;

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
