//! The floor of `bench/run.sh`: a librdkafka consumer that only counts. It joins a consumer
//! group on the three topics and stops after EVENTS messages, printing JSON with the wall
//! time from the first message to the last and the process CPU time over the same span.
//! `cargo run --release --example count_consumer -- BROKERS GROUP EVENTS [PROPERTY=VALUE ...]`
//! (extra librdkafka properties, so the floor runs with the same client tuning).

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// user + system CPU seconds of this process, from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let brokers = &args[1];
    let group = &args[2];
    let events: u64 = args[3].parse().expect("EVENTS");
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true");
    for property in &args[4..] {
        let (k, v) = property.split_once('=').expect("PROPERTY=VALUE");
        config.set(k, v);
    }
    let consumer: BaseConsumer = config.create().expect("consumer");
    consumer
        .subscribe(&["visits", "orders", "ad-spend"])
        .unwrap();
    let mut count = 0u64;
    let mut bytes = 0usize;
    let mut start: Option<(Instant, f64)> = None;
    // The same poll loop as ecom-pulse's consuming thread (src/source/mod.rs): without waiting
    // while messages flow, so neither side pays for librdkafka reading the clock to set a
    // deadline on every call.
    let mut wait = Duration::ZERO;
    while count < events {
        match consumer.poll(wait) {
            Some(Ok(m)) => {
                use rdkafka::Message;
                bytes += m.payload().map_or(0, <[u8]>::len);
                count += 1;
                start.get_or_insert_with(|| (Instant::now(), cpu_seconds()));
                wait = Duration::ZERO;
            }
            Some(Err(_)) => {}
            None => wait = Duration::from_millis(100),
        }
    }
    let (t0, c0) = start.unwrap();
    println!(
        "{{\"events\":{count},\"bytes\":{bytes},\"wall_s\":{:.3},\"cpu_s\":{:.3}}}",
        t0.elapsed().as_secs_f64(),
        cpu_seconds() - c0
    );
}
