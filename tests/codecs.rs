//! Producers' compression: batches of every codec Kafka defines are
//! consumed and counted exactly, whatever codec the batch before or after them used; and a
//! batch the client cannot get shows as a stalled partition, in the gauge and in the shipped
//! alert, rather than as a quiet stall.
//!
//! Tansu 0.6.0 serves gzip, lz4 and zstd batches but fails the fetch of a snappy one
//! (/work/shared/BROKERS.md), so snappy is counted through librdkafka's mock cluster, and on
//! Tansu it is the unreadable batch.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use common::{broker::*, ledger::*, prometheus::*, scrape::*, service::*};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

const WINDOWS: [&str; 3] = ["5m", "1h", "24h"];
const CHANNELS: &[&str] = &["email", "paid_search", "display"];
const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/ecom-pulse.rules.yml"
);
const STALLED: &str = "ecom_pulse_partition_stalled_seconds";

/// One producer per codec, each flushed before another one sends: every send is its own run
/// of batches of that codec, so on each partition batches of different codecs follow each
/// other.
struct Producers(BTreeMap<&'static str, BaseProducer>);

impl Producers {
    fn new(brokers: &str, codecs: &[&'static str]) -> Producers {
        let producers = codecs
            .iter()
            .map(|codec| {
                let producer: BaseProducer = ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .set("acks", "all")
                    .set("linger.ms", "5")
                    .set("compression.type", *codec)
                    .create()
                    .unwrap_or_else(|e| panic!("a {codec} producer: {e}"));
                (*codec, producer)
            })
            .collect();
        Producers(producers)
    }

    /// Sends `messages` (to `partition` if given, else by key) with the `codec` producer and
    /// waits until the broker acknowledged every one.
    fn send(&self, codec: &str, partition: Option<i32>, messages: &[Msg]) {
        let producer = &self.0[codec];
        for m in messages {
            send(producer, m, partition);
        }
        producer
            .flush(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{codec} batches acknowledged: {e}"));
        assert_eq!(producer.in_flight_count(), 0);
    }
}

/// `rounds` rounds of `per_batch` events for each codec in turn, recorded in `traffic`.
fn interleave(producers: &Producers, codecs: &[&str], traffic: &mut Traffic, rounds: usize) {
    for _ in 0..rounds {
        for codec in codecs {
            let batch = traffic.next(300, now_ms() - 5_000);
            producers.send(codec, None, &batch);
        }
    }
}

/// Every input partition (3 topics of 3) has a stall gauge, and it is 0: nothing was left
/// behind, not even briefly behind a batch of another codec.
fn assert_none_stalled(m: &Metrics) {
    let gauges = m.names_with_prefix(STALLED);
    assert_eq!(gauges.len(), 9, "{}", m.text);
    for g in gauges {
        assert_eq!(m.get(g), Some(0.0), "{g}");
    }
}

/// Every input partition counted something: the runs of each codec reached all of them.
fn assert_every_partition_counted(m: &Metrics) {
    for (topic, counter) in [
        ("visits", "ecom_visits_total"),
        ("orders", "ecom_orders_total"),
        ("ad-spend", "ecom_ad_spend_total"),
    ] {
        for p in 0..3 {
            let label = format!(r#"topic="{topic}",partition="{p}"}}"#);
            assert!(
                m.series
                    .keys()
                    .any(|k| k.starts_with(counter) && k.ends_with(&label)),
                "nothing counted from {topic}/{p}"
            );
        }
    }
}

#[test]
fn zstd_gzip_lz4_and_plain_batches_in_turn_are_counted_exactly_through_tansu() {
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 3);
    let codecs = ["zstd", "gzip", "lz4", "none"];
    let producers = Producers::new(&tansu.brokers(), &codecs);
    let mut traffic = Traffic::new("z", 9, CHANNELS);
    // Some of it waits in the topics for the service's catch-up, the rest comes while it
    // runs.
    interleave(&producers, &codecs, &mut traffic, 2);

    let port = free_port();
    let svc = Service::start(
        &service_config(&tansu.brokers(), &format!("codecs-{}", now_ms()), port, ""),
        port,
    );
    interleave(&producers, &codecs, &mut traffic, 3);

    let expected = traffic.total();
    let m = wait_for(
        "every batch of every codec to be counted",
        Duration::from_secs(120),
        || {
            let m = svc.metrics();
            (counter_totals(&[&m]) == expected).then_some(m)
        },
    );
    assert_exact(&traffic.ledger, &[&m], &WINDOWS);
    assert_every_partition_counted(&m);
    // The statistics come every second: wait for one after the last batch was applied.
    let m = wait_for("no partition stalled", Duration::from_secs(30), || {
        let m = svc.metrics();
        m.names_with_prefix(STALLED)
            .iter()
            .all(|g| m.get(g) == Some(0.0))
            .then_some(m)
    });
    assert_none_stalled(&m);
}

/// The in-process service on librdkafka's mock cluster, which serves every codec (Tansu
/// cannot serve snappy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snappy_and_every_other_codec_in_turn_are_counted_exactly_on_the_mock_cluster() {
    use common::inprocess::{service_on, shut_down};
    use rdkafka::mocking::MockCluster;

    let mock = MockCluster::new(1).unwrap();
    let (brokers, _, port, service) = service_on(&mock, 3, 1, "codecs", "").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(service.run(stop.clone()));
    // Should an assertion fail, the service still stops, and the test ends.
    let _stop_on_exit = stop.clone().drop_guard();

    let m = tokio::task::spawn_blocking(move || {
        let codecs = ["snappy", "zstd", "gzip", "lz4", "none"];
        let producers = Producers::new(&brokers, &codecs);
        let mut traffic = Traffic::new("s", 9, CHANNELS);
        interleave(&producers, &codecs, &mut traffic, 4);
        let expected = traffic.total();
        let m = wait_for(
            "every batch of every codec to be counted",
            Duration::from_secs(120),
            || {
                let m = Metrics::parse(&http_get(port, "/metrics").unwrap().1);
                (counter_totals(&[&m]) == expected).then_some(m)
            },
        );
        assert_exact(&traffic.ledger, &[&m], &WINDOWS);
        assert_every_partition_counted(&m);
        wait_for("no partition stalled", Duration::from_secs(30), || {
            let m = Metrics::parse(&http_get(port, "/metrics").unwrap().1);
            m.names_with_prefix(STALLED)
                .iter()
                .all(|g| m.get(g) == Some(0.0))
                .then_some(m)
        })
    })
    .await
    .unwrap();
    assert_none_stalled(&m);

    shut_down(stop, running).await;
    drop(mock);
}

/// The value of `name` for `topic`/`partition`, as the exposition writes it.
fn partition_series(name: &str, topic: &str, partition: i32) -> String {
    format!(r#"{name}{{topic="{topic}",partition="{partition}"}}"#)
}

/// Tansu fails every fetch that reaches a snappy batch (it drops the connection), so that
/// batch and everything behind it stays unread: the partition must show as stalled, in the
/// gauge and in the shipped alert, and the client's errors must be counted. With a broker
/// that serves the batch but a client that cannot decompress it (a codec built without), the
/// consumer gets the batch's high watermark from the fetch and a consume error instead; the
/// gauge shows that one from the statistics alone.
#[test]
fn a_batch_that_cannot_be_read_shows_as_a_stalled_partition_and_fires_the_alert() {
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 3);
    let producers = Producers::new(&tansu.brokers(), &["gzip", "snappy"]);
    let mut traffic = Traffic::new("u", 9, CHANNELS);
    producers.send("gzip", None, &traffic.next(900, now_ms() - 5_000));

    let port = free_port();
    let svc = Service::start(
        &service_config(
            &tansu.brokers(),
            &format!("unreadable-{}", now_ms()),
            port,
            "",
        ),
        port,
    );
    let prometheus = Prometheus::start(&[format!("127.0.0.1:{port}")], &[RULES]);
    let expected = traffic.total();
    let m = wait_for(
        "the readable traffic counted",
        Duration::from_secs(120),
        || {
            let m = svc.metrics();
            (counter_totals(&[&m]) == expected).then_some(m)
        },
    );
    assert_exact(&traffic.ledger, &[&m], &WINDOWS);
    let errors_before = m.sum("ecom_pulse_kafka_errors_total");

    // A snappy batch on visits/1, and a readable one behind it. Nothing comes to the other
    // partitions afterwards: on Tansu they share the failing fetch, so new events there
    // would wait too (and show as stalled, rightly).
    let (topic, stuck) = ("visits", 1);
    let mut unread = Traffic::new("unread", 3, CHANNELS);
    let visits = |t: &mut Traffic| -> Vec<Msg> {
        t.next(200, now_ms() - 5_000)
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
    };
    let (first, behind) = (visits(&mut unread), visits(&mut unread));
    producers.send("snappy", Some(stuck), &first);
    producers.send("gzip", Some(stuck), &behind);

    let gauge = partition_series(STALLED, topic, stuck);
    let m = wait_for(
        "visits/1 to show as stalled for 15 s",
        Duration::from_secs(120),
        || {
            let m = svc.metrics();
            (m.get(&gauge).is_some_and(|s| s >= 15.0)).then_some(m)
        },
    );
    for other in m.names_with_prefix(STALLED) {
        if other != gauge {
            assert_eq!(m.get(other), Some(0.0), "{other}\n{}", m.text);
        }
    }
    assert_eq!(
        m.get(&format!(
            r#"ecom_pulse_consumer_lag{{partition="{stuck}",topic="{topic}"}}"#
        )),
        Some((first.len() + behind.len()) as f64),
        "{}",
        m.text
    );
    // Nothing of it counted, nothing else lost.
    assert_eq!(counter_totals(&[&m]), expected);
    // What the client reports (Tansu closes the connection: "all brokers down") is counted
    // and logged.
    assert!(
        m.sum("ecom_pulse_kafka_errors_total") > errors_before,
        "{}",
        m.text
    );
    let log = svc.log();
    assert!(log.contains("Kafka client error"), "{log}");

    // The shipped alert, from a real Prometheus evaluating the shipped rules: pending once
    // the gauge passes its threshold, for visits/1 alone.
    let alerts = wait_for(
        "EcomPulsePartitionStalled for visits/1 in Prometheus",
        Duration::from_secs(150),
        || {
            let alerts = prometheus
                .query(r#"ALERTS{alertname="EcomPulsePartitionStalled"}"#)
                .unwrap();
            (!alerts.is_empty()).then_some(alerts)
        },
    );
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let labels = &alerts[0]["metric"];
    assert_eq!(labels["topic"], topic, "{alerts:?}");
    assert_eq!(labels["partition"], stuck.to_string(), "{alerts:?}");
    assert_eq!(labels["severity"], "warning", "{alerts:?}");
    assert!(
        ["pending", "firing"].contains(&labels["alertstate"].as_str().unwrap()),
        "{alerts:?}"
    );
    // Past the alert's threshold the service's log names the partition too (the client's
    // errors do not).
    wait_for("the stall to be logged", Duration::from_secs(10), || {
        svc.log()
            .lines()
            .any(|l| l.contains("partition stalled") && l.contains("visits/1"))
            .then_some(())
    });
}
