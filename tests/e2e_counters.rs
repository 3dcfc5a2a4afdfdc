//! Counters never step down, shown the way an operator sees them: a real
//! Prometheus scraping two instances of one consumer group, with the shipped rules, while
//! partitions change hands (a join, a crash and a restart, a leave) under continuous traffic.
//!
//! The traffic is what makes a key's events come through several partitions of one instance:
//! organic visits produced without a key (campaign `(none)`) and a producer that does not key
//! by campaign, beside co-partitioned traffic keyed by campaign. Before the counters carried
//! `topic` and `partition`, an instance's counter of such a key was the sum over the
//! partitions it held, and it dropped as soon as one of them moved away.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use common::{broker::*, ledger::*, prometheus::*, service::*};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};
use serde_json::Value;

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/ecom-pulse.rules.yml"
);
const PARTITIONS: i32 = 6;
const CHANNELS: &[&str] = &["email", "paid_social", "display"];
/// The channels of the organic visits: one named, one absent (label `(none)` too).
const ORGANIC: [Option<&str>; 2] = [Some("organic_search"), None];
/// No periodic checkpoint during the test, only those written when partitions are revoked or
/// at a clean stop: after the crash, the new owner restores B's partitions as they were when B
/// took them and replays all B counted, far below what B exported, for longer than a scrape
/// interval. (A counter exported from a restore before it has caught up would step down.)
const EXTRA: &str = "[checkpoint]\ninterval = \"1h\"\npartitions = 4\nreplication_factor = 1\n";
/// Organic visits produced at once while B owns half the partitions, for that long replay.
const BURST: usize = 100_000;

fn rule(counter: &str) -> String {
    format!("campaign_channel_partition:{counter}:max")
}

/// What was produced (and acknowledged), per key and, for the organic visits, per partition.
struct Ledger {
    /// Keyed by campaign: co-partitioned, as the README asks of producers.
    keyed: Traffic,
    /// A producer that does not key by campaign: no key, round-robin over the partitions.
    unkeyed: Traffic,
    unkeyed_sent: u64,
    /// Visits without a key and without a campaign, round-robin over the partitions:
    /// (channel label, partition) → visits.
    organic: BTreeMap<(String, i32), u64>,
    organic_sent: u64,
}

impl Ledger {
    fn new() -> Ledger {
        Ledger {
            keyed: Traffic::new("k", 10, CHANNELS),
            unkeyed: Traffic::new("u", 4, CHANNELS),
            unkeyed_sent: 0,
            organic: BTreeMap::new(),
            organic_sent: 0,
        }
    }

    /// Produces the next events, stamped now, and waits for every acknowledgement. Which
    /// (key, topic, partition) each event goes to repeats with a period of 420 events of
    /// each traffic (20 event types × 21 channel steps; 12 for the organic visits), so
    /// after one period every counter series the test will ever see exists.
    fn produce(&mut self, producer: &BaseProducer, keyed: usize, unkeyed: usize, organic: usize) {
        let ts = now_ms();
        for m in self.keyed.next(keyed, ts) {
            send(producer, &m, None);
        }
        for m in self.unkeyed.next(unkeyed, ts) {
            let partition = (self.unkeyed_sent % PARTITIONS as u64) as i32;
            self.unkeyed_sent += 1;
            let unkeyed = Msg {
                key: String::new(),
                ..m
            };
            send(producer, &unkeyed, Some(partition));
        }
        for _ in 0..organic {
            let n = self.organic_sent;
            self.organic_sent += 1;
            // Without a key, librdkafka's partitioner picks a partition at random (sticking to
            // one for a while); naming them in turn spreads the visits the same way, and
            // deterministically.
            let partition = (n % PARTITIONS as u64) as i32;
            let channel = ORGANIC[(n / PARTITIONS as u64) as usize % ORGANIC.len()];
            let visit = events::visit(format!("org-{n}"), ts);
            let json = match channel {
                Some(c) => visit.channel(c),
                None => visit,
            }
            .json();
            let visit = Msg {
                topic: "visits",
                key: String::new(),
                value: Some(json.into_bytes()),
            };
            send(producer, &visit, Some(partition));
            *self
                .organic
                .entry((channel.unwrap_or("(none)").to_string(), partition))
                .or_default() += 1;
        }
        producer
            .flush(Duration::from_secs(60))
            .expect("every message acknowledged");
    }

    /// Per (campaign, channel).
    fn by_key(&self) -> BTreeMap<(String, String), Expected> {
        let mut out = self.keyed.ledger.clone();
        out.extend(self.unkeyed.ledger.clone());
        for ((channel, _), visits) in &self.organic {
            out.entry(("(none)".into(), channel.clone()))
                .or_default()
                .visits += visits;
        }
        out
    }

    fn total(&self) -> Expected {
        let mut t = Expected::default();
        for e in self.by_key().values() {
            t.visits += e.visits;
            t.orders += e.orders;
            t.new_customers += e.new_customers;
            t.gmv_micros += e.gmv_micros;
            t.ad_spend_micros += e.ad_spend_micros;
        }
        t
    }
}

/// One counter's value in a ledger; money in whole cents (the traffic's amounts are cents).
fn of(e: &Expected, counter: &str) -> i64 {
    match counter {
        "ecom_visits_total" => e.visits as i64,
        "ecom_orders_total" => e.orders as i64,
        "ecom_new_customers_total" => e.new_customers as i64,
        "ecom_gmv_total" => (e.gmv_micros / 10_000) as i64,
        "ecom_ad_spend_total" => (e.ad_spend_micros / 10_000) as i64,
        _ => unreachable!("{counter}"),
    }
}

/// A Prometheus value in the unit of [`of`].
fn units(counter: &str, v: f64) -> i64 {
    if counter.starts_with("ecom_gmv") || counter.starts_with("ecom_ad_spend") {
        (v * 100.0).round() as i64
    } else {
        assert_eq!(v, v.round(), "{counter}: a count that is not whole: {v}");
        v as i64
    }
}

/// A result sample: its labels and its value.
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

fn samples(result: Vec<Value>) -> Vec<Sample> {
    result
        .into_iter()
        .map(|r| Sample {
            labels: r["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect(),
            value: r["value"][1].as_str().unwrap().parse().unwrap(),
        })
        .collect()
}

fn query(prom: &Prometheus, q: &str) -> Vec<Sample> {
    samples(prom.query(q).unwrap_or_else(|e| panic!("{q}: {e}")))
}

fn query_at(prom: &Prometheus, q: &str, at: f64) -> Vec<Sample> {
    samples(prom.query_at(q, at).unwrap_or_else(|e| panic!("{q}: {e}")))
}

/// The single value of an aggregated query (`None` when it has no result).
fn scalar_at(prom: &Prometheus, q: &str, at: f64) -> Option<f64> {
    let r = query_at(prom, q, at);
    assert!(r.len() <= 1, "{q}: {} results", r.len());
    r.first().map(|s| s.value)
}

/// A label set as text, for messages and sets.
fn describe(labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(","))
}

/// The latest rule evaluation at which Prometheus had every partition's counters with every
/// event of `expected` in them: its timestamp, and the label sets of the recorded series.
///
/// The rules of a group are all evaluated at one timestamp and write their samples at it,
/// so `timestamp()` of the recorded series gives the evaluation; every series carrying the
/// newest one means no partition was missing there (a partition between owners, or not yet
/// caught up, has no series). Traffic is paused while this runs, so once the sums equal the
/// ledger they stay equal.
fn settled_evaluation(
    prom: &Prometheus,
    expected: &Expected,
    series: Option<&BTreeSet<String>>,
) -> (f64, BTreeSet<String>) {
    let mut last = String::new();
    let found = poll(Duration::from_secs(90), || {
        let stamps = query(prom, &format!("timestamp({})", rule(COUNTERS[0])));
        let t = stamps.iter().map(|s| s.value).reduce(f64::max)?;
        let mut labels = BTreeSet::new();
        for counter in COUNTERS {
            let stamps = query_at(prom, &format!("timestamp({})", rule(counter)), t);
            if stamps.iter().any(|s| s.value != t) {
                last = format!("{counter}: series missing from the evaluation at {t}");
                return None;
            }
            for s in &stamps {
                let mut l = s.labels.clone();
                l.insert("__name__".into(), rule(counter));
                labels.insert(describe(&l));
            }
            let sum = scalar_at(prom, &format!("sum({})", rule(counter)), t);
            let want = of(expected, counter);
            if sum.map(|v| units(counter, v)) != Some(want) {
                last = format!("{counter}: {sum:?} at {t}, the ledger says {want}");
                return None;
            }
        }
        if let Some(series) = series
            && *series != labels
        {
            last = format!(
                "other series at {t}: missing {:?}, new {:?}",
                series.difference(&labels).collect::<Vec<_>>(),
                labels.difference(series).collect::<Vec<_>>()
            );
            return None;
        }
        Some((t, labels))
    });
    found.unwrap_or_else(|| panic!("Prometheus never settled on the ledger: {last}"))
}

/// Waits until Prometheus' latest scrapes show exactly `owners` (instance → partitions
/// assigned, none catching up) and no other instance up.
fn wait_owners(prom: &Prometheus, what: &str, owners: &[(&str, f64)], logs: &[&Service]) {
    let mut last = String::new();
    let done = poll(Duration::from_secs(90), || {
        let assigned: BTreeMap<String, f64> = query(prom, "ecom_pulse_partitions_assigned")
            .into_iter()
            .map(|s| (s.labels["instance"].clone(), s.value))
            .collect();
        let catching_up: f64 = query(prom, "ecom_pulse_partitions_catching_up")
            .iter()
            .map(|s| s.value)
            .sum();
        let want: BTreeMap<String, f64> = owners
            .iter()
            .map(|(instance, n)| (instance.to_string(), *n))
            .collect();
        last = format!("assigned {assigned:?}, catching up {catching_up}");
        let ok = if owners.iter().all(|(_, n)| *n > 0.0) {
            assigned == want
        } else {
            // A split whose shares are not known in advance: any, as long as each has some.
            assigned.keys().eq(want.keys())
                && assigned.values().all(|n| *n > 0.0)
                && assigned.values().sum::<f64>() == 3.0 * PARTITIONS as f64
        };
        (ok && catching_up == 0.0).then_some(())
    });
    if done.is_none() {
        let logs: Vec<String> = logs.iter().map(|s| s.log()).collect();
        panic!(
            "{what}: {last}\n--- service logs ---\n{}",
            logs.join("\n---\n")
        );
    }
    println!("{what}: {last}");
}

#[test]
fn counters_stay_monotonic_and_add_up_through_a_join_a_crash_and_a_leave() {
    let began = Instant::now();
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, PARTITIONS as u32);
    let group = format!("counters-{}", now_ms());
    let (pa, pb) = (free_port(), free_port());
    let (ia, ib) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
    let config_a = service_config(&tansu.brokers(), &group, pa, EXTRA);
    let config_b = service_config(&tansu.brokers(), &group, pb, EXTRA);
    // Scrapes both from the start; B's target is down until it joins.
    let prom = Prometheus::start(&[ia.clone(), ib.clone()], &[RULES]);
    let prom_started = now_ms();
    let mut a = Service::start(&config_a, pa);
    a.wait_ready(Duration::from_secs(60));

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", tansu.brokers())
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut ledger = Ledger::new();
    // Two periods of every traffic: every counter series exists before t_start, so none
    // appears inside the compared range (a new series is counted from its first sample).
    ledger.produce(&producer, 840, 840, 24 * 12);
    wait_owners(&prom, "A alone", &[(&ia, 18.0)], &[&a]);
    let at_start = ledger.total();
    let (t_start, series) = settled_evaluation(&prom, &at_start, None);
    let none_series = series
        .iter()
        .filter(|s| s.contains("ecom_visits_total") && s.contains(r#"campaign="(none)""#))
        .count();
    assert_eq!(
        none_series,
        PARTITIONS as usize * ORGANIC.len(),
        "(none) visits on every partition: {series:#?}"
    );
    let start_by_key = ledger.by_key();
    println!(
        "t_start {t_start}: {} recorded series, ledger {at_start:?}",
        series.len()
    );

    // Continuous traffic, in small batches, through every move.
    let producer = Arc::new(producer);
    let ledger = Arc::new(Mutex::new(ledger));
    let stop = Arc::new(AtomicBool::new(false));
    let flowing = {
        let (stop, ledger, producer) = (stop.clone(), ledger.clone(), producer.clone());
        std::thread::spawn(move || {
            let mut batches = 0u32;
            while !stop.load(Ordering::Acquire) {
                ledger.lock().unwrap().produce(&producer, 12, 6, 6);
                batches += 1;
                // Pacing, not synchronisation: a few hundred events a second.
                std::thread::sleep(Duration::from_millis(50));
            }
            batches
        })
    };

    // A join: B takes half the partitions.
    let mut b = Service::start(&config_b, pb);
    wait_owners(&prom, "B joined", &[(&ia, 0.0), (&ib, 0.0)], &[&a, &b]);
    // Much more on B's partitions than A restores (see EXTRA), and B's counters with it in
    // Prometheus before B dies.
    let burst_end = {
        let mut ledger = ledger.lock().unwrap();
        ledger.produce(&producer, 0, 0, BURST);
        ledger.organic.values().sum::<u64>()
    };
    let none = format!(r#"sum({}{{campaign="(none)"}})"#, rule("ecom_visits_total"));
    wait_for(
        "Prometheus to see B count the burst",
        Duration::from_secs(120),
        || {
            query(&prom, &none)
                .first()
                .is_some_and(|s| s.value >= burst_end as f64)
                .then_some(())
        },
    );
    // A crash: B killed; once B's session expires (6 s), A takes B's partitions back from the
    // checkpoints written when they moved to B, and replays all B counted. Then B comes back
    // and joins again.
    kill9(&mut b);
    let crashed = now_ms();
    wait_owners(&prom, "B crashed", &[(&ia, 18.0)], &[&a]);
    // Whether Prometheus scraped A while it was replaying B's partitions, when their counters,
    // restored below what B exported, were held back: a scrape lands there when the replay
    // takes longer than a scrape interval, which it did in every run here (one to three scrapes), and
    // then the test fails without the hold-back (checked by removing it). Only shown: how
    // long a replay takes is the machine's business.
    let scrapes = prom
        .query(&format!(
            r#"ecom_pulse_partitions_catching_up{{instance="{ia}"}}[{}ms]"#,
            now_ms() - crashed
        ))
        .unwrap();
    let catching_up: Vec<f64> = scrapes[0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v[1].as_str().unwrap().parse().unwrap())
        .filter(|v| *v > 0.0)
        .collect();
    println!("A's scrapes while catching up after the crash (partitions): {catching_up:?}");
    let b = Service::start(&config_b, pb);
    wait_owners(&prom, "B restarted", &[(&ia, 0.0), (&ib, 0.0)], &[&a, &b]);
    // A leave: A stops cleanly and B takes over A's partitions.
    let status = a.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", a.log());
    wait_owners(&prom, "A left", &[(&ib, 18.0)], &[&b]);

    stop.store(true, Ordering::Release);
    let batches = flowing.join().expect("the producer");
    let ledger = Arc::into_inner(ledger).unwrap().into_inner().unwrap();
    let at_end = ledger.total();
    let (t_end, _) = settled_evaluation(&prom, &at_end, Some(&series));
    println!(
        "t_end {t_end}: {batches} batches while partitions moved, ledger {at_end:?} ({:?} in)",
        began.elapsed()
    );

    let whole = format!("{}ms", now_ms() - prom_started + 60_000);
    no_counter_ever_stepped_down(&prom, &whole);
    every_partition_changed_hands(&prom, &whole);
    the_fleet_rise_is_what_was_applied(&prom, &ledger, (t_start, &at_start, &start_by_key), t_end);
    the_final_values_are_the_ledgers(&prom, &ledger, t_end);
    println!("done in {:?}", began.elapsed());
}

/// Every counter series, on each instance and recorded, only ever went up over `whole` (a
/// range over the whole test). `resets()` compares consecutive samples of a series, also
/// across the gaps where a partition was away from that instance.
fn no_counter_ever_stepped_down(prom: &Prometheus, whole: &str) {
    for counter in COUNTERS {
        for name in [counter.to_string(), rule(counter)] {
            let resets = query(prom, &format!("resets({name}[{whole}])"));
            assert!(!resets.is_empty(), "no series of {name}");
            let stepped: Vec<String> = resets
                .iter()
                .filter(|s| s.value != 0.0)
                .map(|s| format!("{} {}", describe(&s.labels), s.value))
                .collect();
            assert!(
                stepped.is_empty(),
                "{name} stepped down ({} of {} series): {stepped:#?}",
                stepped.len(),
                resets.len()
            );
        }
    }
}

/// Every partition changed hands: each visits partition's (none) series came from both
/// instances.
fn every_partition_changed_hands(prom: &Prometheus, whole: &str) {
    let exporters = query(
        prom,
        &format!(
            r#"count by (partition) (max_over_time(ecom_visits_total{{campaign="(none)",channel="organic_search"}}[{whole}]))"#
        ),
    );
    assert_eq!(exporters.len(), PARTITIONS as usize);
    for s in &exporters {
        assert_eq!(
            s.value,
            2.0,
            "instances that exported {}",
            describe(&s.labels)
        );
    }
}

/// Fleet exactness: from the evaluation at `t_start` to the one at `t_end`, the recorded
/// series rose by exactly what the ledger says was applied, in total and per key.
fn the_fleet_rise_is_what_was_applied(
    prom: &Prometheus,
    ledger: &Ledger,
    (t_start, at_start, start_by_key): (f64, &Expected, &BTreeMap<(String, String), Expected>),
    t_end: f64,
) {
    let at_end = ledger.total();
    // Prometheus 2.42 selects the samples in [t - R, t], both ends
    // included, so with R = t_end - t_start the range holds every recorded series' samples
    // from the evaluation at t_start to the one at t_end. With its first and last samples
    // exactly on the range's ends, increase() does not extrapolate: it is last - first (plus
    // any reset, and there is none).
    let range_ms = ((t_end - t_start) * 1000.0).round() as i64;
    assert!(range_ms > 0);
    let expected_rise: BTreeMap<(String, String), Expected> = {
        let (end, start) = (ledger.by_key(), start_by_key);
        end.into_iter()
            .map(|(k, e)| {
                let s = start.get(&k).copied().unwrap_or_default();
                let d = Expected {
                    visits: e.visits - s.visits,
                    orders: e.orders - s.orders,
                    new_customers: e.new_customers - s.new_customers,
                    gmv_micros: e.gmv_micros - s.gmv_micros,
                    ad_spend_micros: e.ad_spend_micros - s.ad_spend_micros,
                };
                (k, d)
            })
            .collect()
    };
    for counter in COUNTERS {
        let total = of(&at_end, counter) - of(at_start, counter);
        let fleet = scalar_at(
            prom,
            &format!("sum(increase({}[{range_ms}ms]))", rule(counter)),
            t_end,
        )
        .unwrap();
        println!(
            "{counter}: sum(increase(recorded)) {fleet}; applied between t_start and t_end: {total}{}",
            if counter.contains("gmv") || counter.contains("spend") {
                " cents"
            } else {
                ""
            }
        );
        assert_eq!(units(counter, fleet), total, "{counter} over the fleet");
        let per_key = query_at(
            prom,
            &format!(
                "sum by (campaign, channel) (increase({}[{range_ms}ms]))",
                rule(counter)
            ),
            t_end,
        );
        for s in &per_key {
            let key = (s.labels["campaign"].clone(), s.labels["channel"].clone());
            let want = expected_rise.get(&key).map_or(0, |e| of(e, counter));
            assert_eq!(units(counter, s.value), want, "{counter} {key:?} rise");
        }
        // The same over the instances' own series misses what came between a partition's
        // last scrape on its old owner and its first on the new one, counts a partition that
        // comes back to an instance across its absence too (last - first of that instance's
        // series), and extrapolates at the ends of series that start or stop inside the
        // range: not exact, by amounts that depend on timing, so only shown.
        let raw = scalar_at(
            prom,
            &format!("sum(increase({counter}[{range_ms}ms]))"),
            t_end,
        );
        println!("  over the per-instance series instead: {raw:?}");
    }
    assert!(
        of(&at_end, "ecom_visits_total") - of(at_start, "ecom_visits_total") > 0,
        "traffic flowed"
    );
}

/// The final values: per key, the partitions' counters add up to the ledger, on the
/// surviving instance's series as in the recorded ones; and each partition's organic visits
/// are exactly those produced to it.
fn the_final_values_are_the_ledgers(prom: &Prometheus, ledger: &Ledger, t_end: f64) {
    let by_key = ledger.by_key();
    for counter in COUNTERS {
        for name in [counter.to_string(), rule(counter)] {
            let got: BTreeMap<(String, String), i64> =
                query_at(prom, &format!("sum by (campaign, channel) ({name})"), t_end)
                    .into_iter()
                    .map(|s| {
                        let key = (s.labels["campaign"].clone(), s.labels["channel"].clone());
                        (key, units(counter, s.value))
                    })
                    .collect();
            let want: BTreeMap<(String, String), i64> = by_key
                .iter()
                .map(|(k, e)| (k.clone(), of(e, counter)))
                .filter(|(_, v)| *v > 0)
                .collect();
            assert_eq!(got, want, "{name} per key at t_end");
        }
    }
    let organic: BTreeMap<(String, i32), u64> = query_at(
        prom,
        &format!(r#"{}{{campaign="(none)"}}"#, rule("ecom_visits_total")),
        t_end,
    )
    .into_iter()
    .map(|s| {
        let key = (
            s.labels["channel"].clone(),
            s.labels["partition"].parse().unwrap(),
        );
        (key, s.value as u64)
    })
    .collect();
    assert_eq!(organic, ledger.organic, "(none) visits per partition");
}
