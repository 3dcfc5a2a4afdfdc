//! Fault injection with librdkafka's in-process mock cluster: request errors on fetches,
//! commits and produces (the checkpoint writes), and every broker down then up. The service
//! runs in-process; the numbers must end exact.

mod common;

use std::time::Duration;

use common::inprocess::{service_on, shut_down};
use common::*;
use common::{broker::*, ledger::*, prometheus::*, scrape::*};
use ecom_pulse::state::store::TopicPartition;
use rdkafka::consumer::Consumer;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tokio_util::sync::CancellationToken;

const WINDOWS: [&str; 3] = ["5m", "1h", "24h"];
const CHANNELS: &[&str] = &["email", "paid_search"];

fn scrape(port: u16) -> Metrics {
    let (status, body) = http_get(port, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    Metrics::parse(&body)
}

async fn until_exact(port: u16, traffic: &Traffic, what: &str) -> Metrics {
    let expected = traffic.total();
    let what = what.to_string();
    tokio::task::spawn_blocking(move || {
        wait_for(&what, Duration::from_secs(120), || {
            let m = scrape(port);
            (counter_totals(&[&m]) == expected).then_some(m)
        })
    })
    .await
    .unwrap()
}

async fn produce_async(brokers: &str, messages: Vec<Msg>) {
    let brokers = brokers.to_string();
    tokio::task::spawn_blocking(move || produce(&brokers, &messages))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_errors_and_broker_outages_cost_nothing() {
    let mock = MockCluster::new(3).unwrap();
    let (brokers, _, port, service) =
        service_on(&mock, 6, 3, "mock", "[checkpoint]\ninterval = \"500ms\"\n").await;
    let stop = CancellationToken::new();
    let running = tokio::spawn(service.run(stop.clone()));

    let mut traffic = Traffic::new("m", 9, CHANNELS);
    let ts = now_ms() - 5_000;
    produce_async(&brokers, traffic.next(3_000, ts)).await;
    until_exact(port, &traffic, "the first batch").await;

    // Fetches fail for a while; the consumer retries them.
    mock.request_errors(
        RDKafkaApiKey::Fetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 10],
    );
    produce_async(&brokers, traffic.next(3_000, ts)).await;
    until_exact(port, &traffic, "the batch fetched through errors").await;

    // Checkpoint writes and offset commits fail (non-retriable errors): reported, counted,
    // retried at the next interval; numbers unaffected. Produce errors are injected after
    // the traffic is in, so they hit the checkpoint writer only.
    produce_async(&brokers, traffic.next(3_000, ts)).await;
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 3],
    );
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED; 3],
    );
    let m = tokio::task::spawn_blocking(move || {
        wait_for(
            "failed checkpoints and commits to be reported",
            Duration::from_secs(60),
            || {
                let m = scrape(port);
                let failed = m
                    .get(r#"ecom_pulse_checkpoints_total{result="failed"}"#)
                    .unwrap_or(0.0);
                let commits = m
                    .get(r#"ecom_pulse_kafka_errors_total{code="commit"}"#)
                    .unwrap_or(0.0);
                (failed >= 3.0 && commits >= 1.0).then_some(m)
            },
        )
    })
    .await
    .unwrap();
    assert!(
        m.get(r#"ecom_pulse_checkpoints_total{result="ok"}"#)
            .unwrap()
            > 0.0
    );
    until_exact(port, &traffic, "the batch checkpointed through errors").await;

    // Every broker goes down, and comes back.
    for broker in 1..=3 {
        mock.broker_down(broker).unwrap();
    }
    tokio::task::spawn_blocking(move || {
        wait_for("the outage to be reported", Duration::from_secs(60), || {
            (scrape(port).get("ecom_pulse_kafka_connected") == Some(0.0)).then_some(())
        })
    })
    .await
    .unwrap();
    assert_eq!(http_get(port, "/readyz").unwrap().0, 503);
    for broker in 1..=3 {
        mock.broker_up(broker).unwrap();
    }
    produce_async(&brokers, traffic.next(3_000, ts)).await;
    let m = until_exact(port, &traffic, "everything after the outage").await;
    assert_exact(&traffic.ledger, &[&m], &WINDOWS);
    assert!(
        m.get(r#"ecom_pulse_checkpoints_total{result="ok"}"#)
            .unwrap()
            > 0.0,
        "{}",
        m.text
    );
    promtool_check(&m.text);

    shut_down(stop, running).await;
    drop(mock);
}

/// A reader holding one partition's lock (a scrape reading its sums, a checkpoint encoding
/// it) holds up no other partition: the consumer holds that partition's messages and goes on.
/// Once the lock is free they are applied in order, and every number ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_partition_holds_up_no_other() {
    locked_partition(false).await;
}

/// Stopped while it holds messages, the service applies them once the lock is free, before
/// its final checkpoints: the offsets it commits reach the end of every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_are_applied_and_committed_at_shutdown() {
    locked_partition(true).await;
}

fn end_offsets(brokers: &str, tps: &[TopicPartition]) -> Vec<i64> {
    let client: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    tps.iter()
        .map(|tp| {
            client
                .fetch_watermarks(&tp.topic, tp.partition, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect()
}

fn committed_offsets(brokers: &str, group: &str, tps: &[TopicPartition]) -> Vec<i64> {
    let client: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    for tp in tps {
        list.add_partition(&tp.topic, tp.partition);
    }
    let committed = client
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap();
    tps.iter()
        .map(|tp| {
            match committed
                .find_partition(&tp.topic, tp.partition)
                .unwrap()
                .offset()
            {
                rdkafka::Offset::Offset(o) => o,
                other => panic!(
                    "{}/{}: no committed offset ({other:?})",
                    tp.topic, tp.partition
                ),
            }
        })
        .collect()
}

async fn locked_partition(shutdown_while_locked: bool) {
    let mock = MockCluster::new(1).unwrap();
    let (brokers, group, port, service) = service_on(&mock, 4, 1, "held", "").await;
    let store = service.store();
    let stop = CancellationToken::new();
    let running = tokio::spawn(service.run(stop.clone()));
    // Should an assertion fail, the service still stops, and the test ends.
    let _stop_on_exit = stop.clone().drop_guard();

    let mut traffic = Traffic::new("h", 12, CHANNELS);
    let ts = now_ms() - 5_000;
    produce_async(&brokers, traffic.next(2_000, ts)).await;
    until_exact(port, &traffic, "the first batch").await;

    // The visits partition of campaign h-c1, and the campaigns it holds.
    let (locked, campaigns) = store
        .partitions()
        .into_iter()
        .filter(|(tp, _)| &*tp.topic == "visits")
        .map(|(tp, state)| {
            let campaigns: std::collections::BTreeSet<String> = state
                .read()
                .keys()
                .map(|(k, _)| k.campaign.to_string())
                .collect();
            (tp, campaigns)
        })
        .find(|(_, campaigns)| campaigns.contains("h-c1"))
        .expect("a visits partition with h-c1");
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (taken, is_taken) = std::sync::mpsc::channel::<()>();
    let state = store.get(&locked).unwrap();
    let holder = std::thread::spawn(move || {
        let _guard = state.read();
        taken.send(()).unwrap();
        released.recv().unwrap();
    });
    is_taken.recv().unwrap();

    // The locked partition's messages go first, so a consumer that waited for its lock
    // would not get to the others.
    let (first, rest): (Vec<Msg>, Vec<Msg>) = traffic
        .next(3_000, ts)
        .into_iter()
        .partition(|m| m.topic == "visits" && campaigns.contains(&m.key));
    assert!(!first.is_empty() && !rest.is_empty());
    produce_async(&brokers, first).await;
    produce_async(&brokers, rest).await;

    let partitions = store.partitions();
    let tps: Vec<TopicPartition> = partitions.iter().map(|(tp, _)| tp.clone()).collect();
    let ends = {
        let (brokers, tps) = (brokers.clone(), tps.clone());
        tokio::task::spawn_blocking(move || end_offsets(&brokers, &tps))
            .await
            .unwrap()
    };
    let others: Vec<_> = partitions
        .into_iter()
        .zip(ends.clone())
        .filter(|((tp, _), _)| *tp != locked)
        .collect();
    tokio::task::spawn_blocking(move || {
        wait_for(
            "every other partition to be consumed to its end",
            Duration::from_secs(60),
            || {
                others
                    .iter()
                    .all(|((_, state), end)| state.read().next_offset() >= *end)
                    .then_some(())
            },
        )
    })
    .await
    .unwrap();

    if shutdown_while_locked {
        stop.cancel();
        release.send(()).unwrap();
        holder.join().unwrap();
        tokio::time::timeout(Duration::from_secs(20), running)
            .await
            .expect("the service stops")
            .unwrap()
            .unwrap();
        let committed =
            tokio::task::spawn_blocking(move || committed_offsets(&brokers, &group, &tps))
                .await
                .unwrap();
        assert_eq!(
            committed, ends,
            "committed offsets reach every partition's end"
        );
    } else {
        release.send(()).unwrap();
        holder.join().unwrap();
        let m = until_exact(port, &traffic, "the held messages, once the lock is free").await;
        assert_exact(&traffic.ledger, &[&m], &WINDOWS);
        assert_eq!(
            m.sum("ecom_pulse_events_duplicate_total"),
            0.0,
            "nothing applied twice"
        );
        shut_down(stop, running).await;
    }
    drop(mock);
}
