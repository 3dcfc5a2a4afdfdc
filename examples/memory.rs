//! Resident memory of the aggregate state with N active keys and the default windows.
//!
//! `cargo run --release --example memory -- 10000`
//!
//! Every key receives visits, orders and ad spend spread over the last 24 hours, so every
//! ring of every window exists, on 3 topics x 6 partitions as the default deployment would
//! hold them (a key's three event types arrive on three partitions). De-duplication memory
//! is included: ids of the last 15 minutes of event time, as in production.
//!
//! The dense hour arrives oldest first, as a live stream does. With `--newest-first` it arrives
//! newest first, as a backlog might: the ids of that hour older than the de-duplication horizon
//! are then held until each partition's table reaches `dedup.max_ids_per_partition`, which
//! shows the de-duplication memory at its cap.
//!
//! `cargo run --release --example memory -- 10000 --stream 50000000` instead streams the
//! synthetic load of `bench/` over those keys at 800 events per second of event time (69 M
//! a day) and prints resident memory as the event count grows: once the de-duplication
//! horizon has filled (about 900 k events at that rate), memory must stay flat.

use ecom_pulse::config::Config;
use ecom_pulse::pure::pipeline::Pipeline;
use ecom_pulse::state::store::{Store, TopicPartition};

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

fn main() {
    let keys: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("a key count"))
        .unwrap_or(10_000);
    if let Some(total) = std::env::args()
        .skip_while(|a| a != "--stream")
        .nth(1)
        .map(|a| a.parse::<usize>().expect("an event count"))
    {
        return stream(keys, total);
    }
    let pipeline = pipeline_for(keys);
    let store = Store::default();
    let topics = ["visits", "orders", "ad-spend"];
    let partitions = 6;
    let before = rss_bytes();

    let now = ecom_pulse::now_ms();
    let day = 86_400_000i64;
    // One event of each type per key every 24 minutes of event time (one per 24h bucket),
    // plus a dense last hour, so all 3 windows' rings are allocated and populated.
    let mut events = 0u64;
    let mut seq = 0u64;
    let mut dense_hour: Vec<i64> = (0..60).map(|i| (59 - i) * 60_000).collect();
    if std::env::args().any(|a| a == "--newest-first") {
        dense_hour.reverse();
    }
    let steps: Vec<i64> = (0..60)
        .map(|i| day - i * (day / 60) - 1)
        .chain(dense_hour)
        .collect();
    for age in steps {
        let ts = now - age;
        for k in 0..keys {
            let campaign = format!("campaign_{:05}", k / 10);
            let channel = format!("channel_{}", k % 10);
            let partition = (k % partitions) as i32;
            for (t, topic) in topics.iter().enumerate() {
                seq += 1;
                let json = match t {
                    0 => format!(
                        r#"{{"type":"visit","event_id":"e{seq}","timestamp":{ts},"campaign":"{campaign}","channel":"{channel}"}}"#
                    ),
                    1 => format!(
                        r#"{{"type":"order","event_id":"e{seq}","timestamp":{ts},"campaign":"{campaign}","channel":"{channel}","amount":10,"new_customer":true}}"#
                    ),
                    _ => format!(
                        r#"{{"type":"ad_spend","event_id":"e{seq}","timestamp":{ts},"campaign":"{campaign}","channel":"{channel}","amount":3}}"#
                    ),
                };
                let state = store.get_or_insert(&TopicPartition::new(topic, partition), || {
                    pipeline.new_partition()
                });
                pipeline.process(&mut state.write(), json.as_bytes(), ts, now);
                events += 1;
            }
        }
    }
    let after = rss_bytes();
    let snapshot = store.snapshot(&pipeline.windows, now);
    let (ring_bytes, dedup_ids, dedup_bytes) = held(&store);
    println!(
        "keys={} events={events} windows={:?} rss_before={:.1}MiB rss_after={:.1}MiB state_rss={:.1}MiB ring_bytes={:.1}MiB dedup_ids={dedup_ids} dedup_tables={:.1}MiB",
        snapshot.rows.len(),
        pipeline
            .windows
            .specs()
            .iter()
            .map(|w| &*w.label)
            .collect::<Vec<_>>(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        (after - before) as f64 / 1048576.0,
        ring_bytes as f64 / 1048576.0,
        dedup_bytes as f64 / 1048576.0,
    );
}

/// Events at a steady rate over a fixed key set: resident memory at growing event counts.
fn stream(keys: usize, total: usize) {
    use ecom_pulse::tools::generate::{Stream, synthetic};
    let pipeline = pipeline_for(keys);
    let store = Store::default();
    let partitions = 6u64;
    let start = ecom_pulse::now_ms() - 86_400_000;
    // 800 events per second of event time.
    let per_event_us = 1_250i64;
    let marks = [
        1_000_000, 2_000_000, 5_000_000, 10_000_000, 20_000_000, 50_000_000,
    ];
    let mut first = None;
    let mut worst: f64 = 0.0;
    for i in 0..total {
        let ts = start + i as i64 * per_event_us / 1000;
        let (kind, campaign, json) = synthetic(i, keys, ts, "m");
        let topic = match kind {
            Stream::Visits => "visits",
            Stream::Orders => "orders",
            Stream::AdSpend => "ad-spend",
        };
        let partition = (xxhash_rust::xxh3::xxh3_64(campaign.as_bytes()) % partitions) as i32;
        let state = store.get_or_insert(&TopicPartition::new(topic, partition), || {
            pipeline.new_partition()
        });
        pipeline.process(&mut state.write(), json.as_bytes(), ts, ts);
        if marks.contains(&(i + 1)) {
            let rss = rss_bytes();
            let base = *first.get_or_insert(rss);
            let change = (rss as f64 / base as f64 - 1.0) * 100.0;
            worst = worst.max(change.abs());
            let (_, dedup_ids, dedup_bytes) = held(&store);
            println!(
                "events={:>10} keys={keys} rss={:.1}MiB ({change:+.1} % of the 1 M figure) dedup_ids={dedup_ids} dedup_tables={:.1}MiB",
                i + 1,
                rss as f64 / 1048576.0,
                dedup_bytes as f64 / 1048576.0
            );
        }
    }
    println!("largest change from the 1 M figure: {worst:.1} %");
}

/// Over every partition: ring bytes, de-duplication ids and de-duplication table bytes.
fn held(store: &Store) -> (usize, usize, usize) {
    store
        .partitions()
        .iter()
        .map(|(_, p)| {
            let p = p.read();
            (p.ring_bytes(), p.dedup().len(), p.dedup().table_bytes())
        })
        .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
}

/// The default configuration, with `limits.max_keys` raised to the key count as a deployment
/// with that many keys would (under the default limit most keys would fold into "(other)").
fn pipeline_for(keys: usize) -> Pipeline {
    let mut config = Config::load(None).expect("default config");
    config.limits.max_keys = config.limits.max_keys.max(keys);
    Pipeline::from_config(&config)
}
