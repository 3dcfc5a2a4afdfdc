//! librdkafka's mock cluster as a broker for other processes (`bench/run.sh`): three brokers,
//! the three topics with PARTITIONS partitions, the checkpoint topic of group GROUP. Prints
//! the bootstrap servers, then serves until stdin closes.
//! `cargo run --release --example mock_broker -- PARTITIONS GROUP...`

use std::io::Read;

use rdkafka::mocking::MockCluster;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let partitions: i32 = args.get(1).map_or(48, |p| p.parse().expect("PARTITIONS"));
    let mock = MockCluster::new(3).expect("mock cluster");
    for topic in ["visits", "orders", "ad-spend"] {
        mock.create_topic(topic, partitions, 1).expect("topic");
    }
    for group in &args[2..] {
        mock.create_topic(&format!("{group}-checkpoints"), 12, 1)
            .expect("topic");
    }
    println!("{}", mock.bootstrap_servers());
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}
