//! The few figures of librdkafka's statistics report that the consumer uses: whether a broker
//! is up, and each partition's high watermark.
//!
//! librdkafka writes the report every `statistics.interval.ms` (1 s here), and the consuming
//! thread reads it inside its poll. rdkafka's typed `Statistics` builds all of it: every
//! broker's latency windows and request counts, ~40 fields a partition, each name a `String`,
//! and it fails as a whole if a librdkafka release drops one of the many fields it requires.
//! This reads the same JSON but keeps only what is named below, and serde skips the rest
//! without building it. A broker without a state or a partition without a watermark reads as
//! not up and unknown, so one missing field does not lose the whole report.
//! Reading less is also faster (figures in docs/performance.md), but either is small beside
//! the consumer's other work: not losing the whole report to one missing field is what
//! matters.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;

/// What ecom-pulse reads of one statistics report.
#[derive(Debug, Deserialize)]
pub struct Stats<'a> {
    /// By broker name ("host:port/id").
    #[serde(borrow, default)]
    pub brokers: HashMap<String, Broker<'a>>,
    /// By topic name.
    #[serde(default)]
    pub topics: HashMap<String, Topic>,
}

#[derive(Debug, Deserialize)]
pub struct Broker<'a> {
    /// "UP" when connected; "INIT", "DOWN", "CONNECT", "AUTH" … otherwise. Borrowed from
    /// the report (serde borrows a `Cow` field when the string needs no unescaping).
    #[serde(borrow, default)]
    pub state: Cow<'a, str>,
}

#[derive(Debug, Deserialize)]
pub struct Topic {
    /// By partition number; librdkafka also lists its internal partition -1.
    #[serde(default)]
    pub partitions: HashMap<i32, Partition>,
}

#[derive(Debug, Deserialize)]
pub struct Partition {
    /// The partition's high watermark as last fetched; negative while unknown.
    #[serde(default = "unknown")]
    pub hi_offset: i64,
}

/// librdkafka's value for an offset it does not know.
fn unknown() -> i64 {
    -1001
}

impl<'a> Stats<'a> {
    pub fn parse(json: &'a [u8]) -> serde_json::Result<Stats<'a>> {
        serde_json::from_slice(json)
    }

    /// Whether any broker connection is up.
    pub fn connected(&self) -> bool {
        self.brokers.values().any(|b| b.state == "UP")
    }

    /// Each topic's partition count, as the client's metadata has it (librdkafka lists every
    /// partition of a subscribed topic, assigned or not, plus its internal -1).
    pub fn partition_counts(&self) -> impl Iterator<Item = (&str, usize)> {
        self.topics.iter().map(|(name, t)| {
            let count = t.partitions.keys().filter(|&&p| p >= 0).count();
            (name.as_str(), count)
        })
    }

    /// The high watermark of `topic`/`partition`, if the report has the partition.
    pub fn hi_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        Some(
            self.topics
                .get(topic)?
                .partitions
                .get(&partition)?
                .hi_offset,
        )
    }
}

/// The topics of [`sample_report`].
pub const SAMPLE_TOPICS: [&str; 3] = ["visits", "orders", "ad-spend"];

/// A real report, for tests and benchmarks: librdkafka's own, from a consumer of its mock
/// cluster subscribed to [`SAMPLE_TOPICS`] with `partitions` partitions each, partition `p`
/// holding `p % 3 + 1` messages. Returned once the report has every partition's watermark.
/// Panics if the mock cluster cannot be set up or no such report comes within 60 s.
#[doc(hidden)]
pub fn sample_report(partitions: i32) -> Vec<u8> {
    use std::time::{Duration, Instant};

    use parking_lot::Mutex;
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    struct Capture(Mutex<Option<Vec<u8>>>);
    impl rdkafka::ClientContext for Capture {
        fn stats_raw(&self, statistics: &[u8]) {
            *self.0.lock() = Some(statistics.to_vec());
        }
    }
    impl ConsumerContext for Capture {}

    let mock = MockCluster::new(1).expect("mock cluster");
    // Idempotent, so that a retried send cannot add a message the counts do not expect.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for topic in SAMPLE_TOPICS {
        mock.create_topic(topic, partitions, 1).expect("topic");
        for p in 0..partitions {
            for _ in 0..p % 3 + 1 {
                producer
                    .send(BaseRecord::to(topic).partition(p).key("k").payload("{}"))
                    .expect("queued");
            }
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flushed");
    let consumer: BaseConsumer<Capture> = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("group.id", "statistics")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "100")
        .create_with_context(Capture(Mutex::new(None)))
        .expect("consumer");
    consumer.subscribe(&SAMPLE_TOPICS).expect("subscribed");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        consumer.poll(Duration::from_millis(100));
        let Some(json) = consumer.context().0.lock().take() else {
            continue;
        };
        let complete = Stats::parse(&json).is_ok_and(|s| {
            SAMPLE_TOPICS
                .iter()
                .all(|t| (0..partitions).all(|p| s.hi_offset(t, p).is_some_and(|h| h >= 0)))
        });
        if complete {
            return json;
        }
    }
    panic!("no statistics report with every partition's watermark within 60 s");
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::statistics::Statistics;

    /// A report of librdkafka itself (a consumer of the mock cluster, 3 topics × 8 partitions,
    /// a few messages in each) reads the same as through rdkafka's typed statistics.
    #[test]
    fn reads_what_the_typed_report_does() {
        let json = sample_report(8);
        let lean = Stats::parse(&json).unwrap();
        let typed: Statistics = serde_json::from_slice(&json).unwrap();

        assert!(lean.connected());
        assert_eq!(
            lean.connected(),
            typed.brokers.values().any(|b| b.state == "UP")
        );
        let mut brokers: Vec<_> = lean
            .brokers
            .iter()
            .map(|(k, b)| (k.to_string(), b.state.to_string()))
            .collect();
        let mut typed_brokers: Vec<_> = typed
            .brokers
            .iter()
            .map(|(k, b)| (k.clone(), b.state.clone()))
            .collect();
        brokers.sort();
        typed_brokers.sort();
        assert_eq!(brokers, typed_brokers);

        let mut seen = 0;
        for (name, topic) in &typed.topics {
            for (p, partition) in &topic.partitions {
                assert_eq!(
                    lean.hi_offset(name, *p),
                    Some(partition.hi_offset),
                    "{name}/{p}"
                );
                seen += 1;
            }
        }
        let lean_count: usize = lean.topics.values().map(|t| t.partitions.len()).sum();
        assert_eq!(seen, lean_count);
        // Every real partition of the three topics (not just librdkafka's internal -1), and
        // the watermarks of the messages produced into them.
        for topic in SAMPLE_TOPICS {
            for p in 0..8 {
                assert_eq!(
                    lean.hi_offset(topic, p),
                    Some(i64::from(p % 3 + 1)),
                    "{topic}/{p}"
                );
            }
        }
        assert_eq!(lean.hi_offset("visits", 8), None);
        assert_eq!(lean.hi_offset("elsewhere", 0), None);
    }

    #[test]
    fn escaped_names_and_missing_sections() {
        let json = br#"{"name":"x","brokers":{"a\/b:9092\/1":{"state":"DOWN","rtt":{"min":1}}},
            "topics":{"t\u00e9":{"topic":"t\u00e9","partitions":{"-1":{"hi_offset":-1001},"0":{"hi_offset":42,"msgq_cnt":0}}}}}"#;
        let s = Stats::parse(json).unwrap();
        assert!(!s.connected());
        assert_eq!(s.hi_offset("té", 0), Some(42));
        assert_eq!(s.hi_offset("té", -1), Some(-1001));
        let empty = Stats::parse(br#"{"name":"x","type":"consumer"}"#).unwrap();
        assert!(!empty.connected());
        assert_eq!(empty.hi_offset("t", 0), None);
        // Fields librdkafka might drop: the rest of the report still reads.
        let partial =
            Stats::parse(br#"{"brokers":{"b":{},"c":{"state":"UP"}},"topics":{"t":{},"u":{"partitions":{"0":{}}}}}"#)
                .unwrap();
        assert!(partial.connected());
        assert_eq!(partial.hi_offset("t", 0), None);
        assert_eq!(partial.hi_offset("u", 0), Some(-1001));
        // Not a report at all.
        assert!(Stats::parse(br#"{"brokers":[]}"#).is_err());
        assert!(Stats::parse(b"{").is_err());
    }
}
