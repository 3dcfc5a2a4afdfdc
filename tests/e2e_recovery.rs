//! Exactness through crashes, rebalances and broker outages, against Tansu with SQLite
//! storage and the `ecom-pulse` binary. Every comparison is exact, against a ledger of what
//! was produced.

mod common;

use std::time::Duration;

use common::*;
use common::{broker::*, ledger::*, prometheus::*, scrape::*, service::*};

const WINDOWS: [&str; 3] = ["5m", "1h", "24h"];
const CHANNELS: &[&str] = &["email", "paid_social", "display"];

/// Fast checkpoints so crashes land between them and after them.
const EXTRA: &str = "[checkpoint]\ninterval = \"500ms\"\npartitions = 4\nreplication_factor = 1\n";

fn group(name: &str) -> String {
    format!("{name}-{}", now_ms())
}

fn scrape_until(svc: &Service, what: &str, expected: Expected) -> Metrics {
    let mut got = None;
    poll(Duration::from_secs(120), || {
        let m = svc.metrics();
        let totals = counter_totals(&[&m]);
        let done = totals == expected;
        got = Some(totals);
        done.then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "timed out waiting for {what}: {got:?} != {expected:?}\n--- service log ---\n{}",
            svc.log()
        )
    })
}

#[test]
fn sigkill_mid_stream_then_restart_is_exact() {
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 3);
    let group = group("sigkill");
    let port = free_port();
    let config = service_config(&tansu.brokers(), &group, port, EXTRA);
    let mut traffic = Traffic::new("k", 12, CHANNELS);
    let ts = now_ms() - 5_000;

    // Phase 1: a steady stream while the service consumes it; SIGKILL in the middle.
    let mut svc = Service::start(&config, port);
    let brokers = tansu.brokers();
    let mut batches = Vec::new();
    for _ in 0..30 {
        batches.push(traffic.next(400, ts));
    }
    let producer = std::thread::spawn(move || {
        for batch in batches {
            produce(&brokers, &batch);
            // Pacing: the stream should still be flowing when the service is killed.
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    wait_for(
        "a third of the stream to be counted",
        Duration::from_secs(60),
        || {
            let m = svc.metrics();
            (m.sum("ecom_visits_total") > 3_000.0).then_some(())
        },
    );
    let before_kill = svc.metrics();
    kill9(&mut svc);
    let counted_at_kill = before_kill.sum("ecom_visits_total");
    producer.join().unwrap();

    // Phase 2, while it is down: more traffic, and re-sends of events it already counted
    // before the crash (the de-duplication memory must survive).
    produce(&tansu.brokers(), &traffic.next(3_000, ts));
    let resent = traffic.resend(25);
    produce(&tansu.brokers(), &resent);
    let expected = traffic.total();
    assert!(
        counted_at_kill < expected.visits as f64,
        "killed after everything was counted"
    );

    // Phase 3: restart. Ready means caught up: the first 200 from /readyz comes with exact numbers.
    let svc = Service::start(&config, port);
    svc.wait_ready(Duration::from_secs(120));
    let m = svc.metrics();
    assert_eq!(
        counter_totals(&[&m]),
        expected,
        "numbers at the first ready scrape\n{}",
        svc.log()
    );
    assert_exact(&traffic.ledger, &[&m], &WINDOWS);
    assert!(
        m.get(r#"ecom_pulse_restores_total{result="restored"}"#)
            .unwrap()
            >= 1.0,
        "{}",
        m.text
    );
    assert!(m.get("ecom_pulse_restore_events_replayed_total").unwrap() > 0.0);
    assert_eq!(m.get("ecom_pulse_partitions_catching_up"), Some(0.0));
    assert_eq!(
        m.get("ecom_pulse_events_duplicate_total"),
        Some(resent.len() as f64),
        "re-sends after the crash"
    );
    assert_eq!(m.get("ecom_pulse_ready"), Some(1.0));
    promtool_check(&m.text);
}

#[test]
fn two_instances_split_the_keys_and_the_survivor_takes_over_exactly() {
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 3);
    let group = group("pair");
    let (pa, pb) = (free_port(), free_port());
    let a = Service::start(&service_config(&tansu.brokers(), &group, pa, EXTRA), pa);
    let mut b = Service::start(&service_config(&tansu.brokers(), &group, pb, EXTRA), pb);
    wait_for(
        "both instances to own partitions",
        Duration::from_secs(60),
        || {
            let (ma, mb) = (a.metrics(), b.metrics());
            let (na, nb) = (
                ma.get("ecom_pulse_partitions_assigned").unwrap_or(0.0),
                mb.get("ecom_pulse_partitions_assigned").unwrap_or(0.0),
            );
            (na > 0.0 && nb > 0.0 && na + nb == 9.0).then_some(())
        },
    );

    let mut traffic = Traffic::new("p", 10, CHANNELS);
    let ts = now_ms() - 5_000;
    produce(&tansu.brokers(), &traffic.next(6_000, ts));
    let expected = traffic.total();
    let (ma, mb) = wait_for(
        "the two instances to add up to the total",
        Duration::from_secs(120),
        || {
            let (ma, mb) = (a.metrics(), b.metrics());
            (counter_totals(&[&ma, &mb]) == expected).then_some((ma, mb))
        },
    );
    // Disjoint keys whose sums equal one instance's totals (producers key by campaign).
    assert_exact(&traffic.ledger, &[&ma, &mb], &WINDOWS);
    assert!(
        ma.get("ecom_pulse_tracked_keys").unwrap() > 0.0
            && mb.get("ecom_pulse_tracked_keys").unwrap() > 0.0
    );
    // Each exports lag only for its own partitions.
    for m in [&ma, &mb] {
        wait_for(
            "lag series for owned partitions",
            Duration::from_secs(10),
            || {
                let m = if std::ptr::eq(m, &ma) {
                    a.metrics()
                } else {
                    b.metrics()
                };
                (m.names_with_prefix("ecom_pulse_consumer_lag{").len() as f64
                    == m.get("ecom_pulse_partitions_assigned").unwrap())
                .then_some(())
            },
        );
    }

    // Each instance's JSON answers say they cover its own partitions, not the fleet's.
    let held: Vec<u64> = [&a, &b]
        .iter()
        .map(|svc| {
            let (_, body) = svc.get("/api/v1/kpis?group_by=").unwrap();
            let rows: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
            assert!(!rows.is_empty(), "{body}");
            for row in &rows {
                assert_eq!(row["complete"], false, "{row}");
                assert_eq!(row["partitions_total"], 9, "{row}");
            }
            let (_, body) = svc.get("/api/v1/coverage").unwrap();
            let coverage: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(coverage["complete"], false, "{coverage}");
            rows[0]["partitions_held"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(held.iter().sum::<u64>(), 9, "{held:?}");

    // B dies without a word; A restores B's partitions from their checkpoints.
    kill9(&mut b);
    produce(&tansu.brokers(), &traffic.next(2_000, ts));
    let expected = traffic.total();
    let m = scrape_until(&a, "the survivor to hold everything", expected);
    wait_for(
        "the survivor to own all nine partitions",
        Duration::from_secs(60),
        || (a.metrics().get("ecom_pulse_partitions_assigned") == Some(9.0)).then_some(()),
    );
    let m2 = a.metrics();
    assert_eq!(counter_totals(&[&m2]), expected, "{}", a.log());
    assert_exact(&traffic.ledger, &[&m2], &WINDOWS);
    // Holding every partition, its answers are the fleet's.
    let (_, body) = a.get("/api/v1/kpis?group_by=").unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert!(
        rows.iter()
            .all(|r| r["complete"] == true && r["partitions_held"] == 9),
        "{body}"
    );
    // Lag series follow the next statistics report after the rebalance.
    wait_for(
        "lag series for all nine partitions",
        Duration::from_secs(10),
        || {
            (a.metrics()
                .names_with_prefix("ecom_pulse_consumer_lag{")
                .len()
                == 9)
                .then_some(())
        },
    );
    promtool_check(&m.text);
}

#[test]
fn a_broker_gone_for_a_minute_costs_nothing() {
    let mut tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 3);
    let port = free_port();
    let svc = Service::start(
        &service_config(&tansu.brokers(), &group("outage"), port, EXTRA),
        port,
    );
    let mut traffic = Traffic::new("o", 8, CHANNELS);
    let ts = now_ms() - 5_000;
    produce(&tansu.brokers(), &traffic.next(4_000, ts));
    scrape_until(&svc, "the first half", traffic.total());

    tansu.stop();
    wait_for("the outage to be reported", Duration::from_secs(30), || {
        (svc.metrics().get("ecom_pulse_kafka_connected") == Some(0.0)).then_some(())
    });
    // A minute without a broker: longer than the group session, so the group forgets this
    // member and the partitions are handed out again when the broker is back.
    let outage_end = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < outage_end {
        let (status, _) = svc.get("/metrics").unwrap();
        assert_eq!(status, 200);
        assert_eq!(svc.get("/readyz").unwrap().0, 503);
        std::thread::sleep(Duration::from_secs(5));
    }
    tansu.restart();
    produce(&tansu.brokers(), &traffic.next(4_000, ts));
    let m = scrape_until(&svc, "everything after the outage", traffic.total());
    assert_exact(&traffic.ledger, &[&m], &WINDOWS);
    svc.wait_ready(Duration::from_secs(60));
    assert_eq!(svc.metrics().get("ecom_pulse_kafka_connected"), Some(1.0));
}
