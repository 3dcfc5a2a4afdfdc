//! Two instances in one group, one killed with SIGKILL again and again at random points of
//! the takeovers and started again (6 partitions per topic, `session.timeout.ms` 6000): the
//! survivor always gets back to work, the group always settles with every partition held,
//! and the numbers end exact every time.
//!
//! The brokers are librdkafka's mock cluster, hosted by this test and reached by the
//! service processes over loopback. Not Tansu: its group coordinator, once two members'
//! generations have drifted apart (a member killed and started again), completes each new
//! generation with the member that rejoined alone and tells the other only afterwards, so
//! the two take turns being revoked every few seconds for as long as they live. Two plain
//! confluent-kafka consumers do the same there (docs/testing.md shows it); a coordinator
//! that waits for every member, as Apache Kafka's and the mock's do, settles.

mod common;

use std::time::Duration;

use common::*;
use common::{broker::*, ledger::*, scrape::*, service::*};
use rand::Rng;
use rdkafka::mocking::MockCluster;

const WINDOWS: [&str; 3] = ["5m", "1h", "24h"];
const ROUNDS: usize = 10;

/// Both instances' scrapes once together they hold all 18 partitions, all caught up, and
/// their counters add up to `expected`.
fn settled(a: &Service, b: &Service, expected: Expected, round: usize) -> (Metrics, Metrics) {
    let held = |m: &Metrics| m.get("ecom_pulse_partitions_assigned").unwrap_or(0.0);
    let behind = |m: &Metrics| m.get("ecom_pulse_partitions_catching_up").unwrap_or(1.0);
    let mut last = None;
    poll(Duration::from_secs(120), || {
        let scrape = |s: &Service| s.get("/metrics").ok().filter(|(st, _)| *st == 200);
        let (Some((_, ta)), Some((_, tb))) = (scrape(a), scrape(b)) else {
            return None;
        };
        let (ma, mb) = (Metrics::parse(&ta), Metrics::parse(&tb));
        let done = held(&ma) + held(&mb) == 18.0
            && behind(&ma) + behind(&mb) == 0.0
            && counter_totals(&[&ma, &mb]) == expected;
        if done {
            return Some((ma, mb));
        }
        last = Some((ma, mb));
        None
    })
    .unwrap_or_else(|| {
        let (ma, mb) = last.unwrap_or_default();
        panic!(
            "round {round}: not settled after 120 s: assigned {} + {}, catching up {} + {}, counted {:?} of {expected:?}\n--- a ---\n{}\n--- b ---\n{}",
            held(&ma),
            held(&mb),
            behind(&ma),
            behind(&mb),
            counter_totals(&[&ma, &mb]),
            tail(&a.log()),
            tail(&b.log()),
        )
    })
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn one_of_two_killed_again_and_again_the_group_always_settles_exact() {
    let mock = MockCluster::new(1).unwrap();
    for topic in TOPICS {
        mock.create_topic(topic, 6, 1).unwrap();
    }
    let group = format!("takeover-{}", now_ms());
    // The mock cannot create topics through the admin API.
    mock.create_topic(&format!("{group}-checkpoints"), 4, 1)
        .unwrap();
    let brokers = mock.bootstrap_servers();
    let extra = "[checkpoint]\ninterval = \"1s\"\n";
    let (pa, pb) = (free_port(), free_port());
    let (ca, cb) = (
        service_config(&brokers, &group, pa, extra),
        service_config(&brokers, &group, pb, extra),
    );
    let mut a = Service::start(&ca, pa);
    let mut b = Service::start(&cb, pb);
    let mut traffic = Traffic::new("t", 24, &["email", "search"]);
    let ts = now_ms() - 5_000;
    produce(&brokers, &traffic.next(2_000, ts));
    settled(&a, &b, traffic.total(), 0);
    let mut rng = rand::rng();
    for round in 1..=ROUNDS {
        // Alternately A and B die, some time into the takeover that the last restart set off
        // (from at once to well past the session timeout); more events arrive meanwhile.
        let delay = Duration::from_millis(rng.random_range(0..9_000));
        std::thread::sleep(delay);
        let (victim, config, port) = if round % 2 == 1 {
            (&mut a, &ca, pa)
        } else {
            (&mut b, &cb, pb)
        };
        kill9(victim);
        produce(&brokers, &traffic.next(500, ts));
        // Restarted at a random point of the survivor's takeover.
        std::thread::sleep(Duration::from_millis(rng.random_range(0..9_000)));
        *victim = Service::start(config, port);
        produce(&brokers, &traffic.next(500, ts));
        let (ma, mb) = settled(&a, &b, traffic.total(), round);
        assert_exact(&traffic.ledger, &[&ma, &mb], &WINDOWS);
        eprintln!(
            "round {round}: killed {} after {delay:?}; settled with {} + {} partitions",
            if round % 2 == 1 { "A" } else { "B" },
            ma.get("ecom_pulse_partitions_assigned").unwrap(),
            mb.get("ecom_pulse_partitions_assigned").unwrap()
        );
    }
}

/// An instance whose group gives it nothing while the partitions it could take wait unread
/// (here another member, a plain consumer, holds them and never commits progress) says so:
/// not ready, and `ecom_pulse_group_partitions_unconsumed`; once that member leaves, it takes
/// the partitions and is ready.
#[test]
fn an_instance_holding_nothing_while_partitions_wait_is_not_ready() {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 1);
    let group = format!("idle-{}", now_ms());
    // Member ids begin with the client id, and the range assignor gives a topic's one
    // partition to the first: "aaa" sorts before "ecom-pulse".
    let hoarder: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", tansu.brokers())
        .set("group.id", &group)
        .set("client.id", "aaa")
        .set("session.timeout.ms", "6000")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    hoarder.subscribe(&TOPICS).unwrap();
    wait_for(
        "the hoarder to hold the partitions",
        Duration::from_secs(60),
        || {
            hoarder.poll(Duration::from_millis(100));
            (hoarder.assignment().unwrap().count() == 3).then_some(())
        },
    );
    let port = free_port();
    let config = service_config(
        &tansu.brokers(),
        &group,
        port,
        "[checkpoint]\ninterval = \"1s\"\npartitions = 4\nreplication_factor = 1\n",
    );
    let svc = Service::start(&config, port);
    let mut traffic = Traffic::new("i", 4, &["email"]);
    produce(&tansu.brokers(), &traffic.next(300, now_ms() - 5_000));
    let why = wait_for(
        "the idle instance to say it holds nothing while events wait",
        Duration::from_secs(60),
        || {
            hoarder.poll(Duration::from_millis(50));
            let (status, body) = svc.get("/readyz").ok()?;
            (status == 503 && body.contains("holds no partition")).then_some(body)
        },
    );
    assert!(why.contains("3 partitions"), "{why}");
    let m = svc.metrics();
    assert_eq!(m.get("ecom_pulse_group_partitions_unconsumed"), Some(3.0));
    assert_eq!(m.get("ecom_pulse_partitions_assigned"), Some(0.0));
    drop(hoarder);
    svc.wait_ready(Duration::from_secs(60));
    let m = wait_for("every event counted", Duration::from_secs(60), || {
        let m = svc.metrics();
        (counter_totals(&[&m]) == traffic.total()).then_some(m)
    });
    assert_eq!(m.get("ecom_pulse_partitions_assigned"), Some(3.0));
    wait_for(
        "the group to be consumed again",
        Duration::from_secs(60),
        || (svc.metrics().get("ecom_pulse_group_partitions_unconsumed") == Some(0.0)).then_some(()),
    );
}
