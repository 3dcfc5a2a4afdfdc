//! Fills the three topics with the synthetic load for `bench/run.sh`, as fast as the broker
//! takes it. `cargo run --release --example bench_fill -- BROKERS EVENTS KEYS SPREAD_MINUTES TAG`
//!
//! Event times are spread evenly over the last SPREAD_MINUTES (so windows and checkpoints hold
//! realistic state); messages are keyed by campaign (co-partitioned).

use std::time::Duration;

use ecom_pulse::tools::generate::{Stream, synthetic};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let brokers = arg(1, "127.0.0.1:9092");
    let events: usize = arg(2, "300000").parse().expect("EVENTS");
    let keys: usize = arg(3, "1000").parse().expect("KEYS");
    let spread_ms: i64 = arg(4, "60").parse::<i64>().expect("SPREAD_MINUTES") * 60_000;
    let tag = arg(5, "b");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("acks", "1")
        .create()
        .expect("producer");
    let now = ecom_pulse::now_ms();
    for i in 0..events {
        let ts = now - spread_ms + (spread_ms * i as i64) / events.max(1) as i64;
        let (stream, key, payload) = synthetic(i, keys, ts, &tag);
        let topic = match stream {
            Stream::Visits => "visits",
            Stream::Orders => "orders",
            Stream::AdSpend => "ad-spend",
        };
        let mut record = BaseRecord::to(topic).key(&key).payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .expect("all delivered");
    println!("{events}");
}
