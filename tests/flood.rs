//! A producer floods the topics with a million distinct campaign names (some with terminal
//! escapes, newlines and 300-byte names): the state stays within `limits.max_keys` per topic,
//! each partition holding its share, nothing is lost (the overflow counts under campaign
//! "(other)"), and the exposition stays valid for the real promtool. The same through Tansu
//! and the service: what an instance exports is bounded whatever partitions it holds.

mod common;

use ecom_pulse::config::Config;
use ecom_pulse::pure::kpi::ClvAssumptions;
use ecom_pulse::pure::pipeline::{Outcome, Pipeline};
use ecom_pulse::read::metrics::render_kpis;
use ecom_pulse::state::store::{Store, TopicPartition};

const EVENTS: usize = 1_000_000;
const PARTITIONS: usize = 3;

fn campaign(i: usize) -> String {
    match i % 1000 {
        0 => format!("evil-{i}\u{1b}[31m\nred"),
        1 => format!("long-{i}-{}", "x".repeat(300)),
        _ => format!("flood-{i}"),
    }
}

#[test]
fn a_million_campaign_names_stay_within_the_key_limit_and_valid() {
    let config = Config::load(None).expect("default config");
    let pipeline = Pipeline::from_config(&config);
    let max_keys = config.limits.max_keys;
    let store = Store::default();
    let now = ecom_pulse::now_ms();
    let mut folded = 0usize;
    for i in 0..EVENTS {
        let json = serde_json::json!({
            "type": "visit",
            "event_id": format!("f{i}"),
            "timestamp": now,
            "campaign": campaign(i),
            "channel": "paid_social",
        })
        .to_string();
        let tp = TopicPartition::new("visits", (i % PARTITIONS) as i32);
        let state = store.get_or_insert(&tp, || {
            let mut state = pipeline.new_partition();
            state.set_key_share(pipeline.key_share(PARTITIONS));
            state
        });
        match pipeline.process(&mut state.write(), json.as_bytes(), now, now) {
            Outcome::Accepted { folded: f, .. } => folded += usize::from(f),
            other => panic!("event {i}: {other:?}"),
        }
    }

    let mut keys = 0;
    for (_, state) in store.partitions() {
        let n = state.read().keys().count();
        // Its share of max_keys, plus one "(other)" key for the one channel.
        assert!(n <= max_keys / PARTITIONS + 1, "{n} keys in one partition");
        keys += n;
    }
    assert_eq!(folded, EVENTS - (keys - PARTITIONS));

    let snapshot = store.snapshot(&pipeline.windows, now);
    assert!(
        snapshot.rows.len() <= max_keys + 1,
        "{} keys",
        snapshot.rows.len()
    );
    let visits: u64 = snapshot.rows.values().map(|r| r.totals.visits).sum();
    assert_eq!(visits, EVENTS as u64, "every event counted somewhere");
    let other = snapshot
        .rows
        .iter()
        .find(|(k, _)| &*k.campaign == "(other)")
        .expect("an (other) row");
    assert_eq!(other.1.totals.visits, folded as u64);

    let mut text = String::new();
    let clv = ClvAssumptions {
        purchases_per_year: config.kpi.purchases_per_year,
        lifetime_years: config.kpi.lifetime_years,
    };
    render_kpis(&mut text, &snapshot, &pipeline.windows, &clv);
    for key in snapshot.rows.keys() {
        assert!(key.campaign.len() <= config.limits.max_label_bytes);
        assert!(!key.campaign.chars().any(char::is_control), "{key:?}");
    }
    assert!(text.contains("campaign=\"evil-0[31mred\""));
    common::prometheus::promtool_check(&text);
}

/// Through Tansu and the service, with `limits.max_keys = 300`: 3,000 campaigns on the three
/// partitions of `visits` leave at most 300 keys (and "(other)") exported, whatever the
/// partitions; every visit is counted. Before, each partition held 300 of its own.
#[test]
fn an_instance_exports_at_most_max_keys_of_a_topic() {
    use common::*;
    use common::{broker::*, prometheus::*, service::*};
    use std::time::Duration;
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 3);
    let port = free_port();
    let config = service_config(
        &tansu.brokers(),
        &format!("flood-{}", now_ms()),
        port,
        "[limits]\nmax_keys = 300\n",
    );
    let svc = Service::start(&config, port);
    let now = now_ms();
    let flood: Vec<Msg> = (0..3_000)
        .map(|i| {
            events::visit(format!("f{i}"), now)
                .on(format!("c{i}"), "paid_social")
                .msg()
        })
        .collect();
    produce(&tansu.brokers(), &flood);
    let m = wait_for("every visit counted", Duration::from_secs(60), || {
        let m = svc.metrics();
        (m.sum("ecom_visits_total") == 3_000.0).then_some(m)
    });
    let keys = m.get("ecom_pulse_tracked_keys").unwrap();
    assert!(keys <= 301.0 && keys > 250.0, "{keys} keys exported");
    let explicit = keys - 1.0;
    assert_eq!(
        m.get("ecom_pulse_keys_overflow_total"),
        Some(3_000.0 - explicit),
        "{}",
        m.text
    );
    assert_eq!(
        m.counter("ecom_visits_total", "(other)", "paid_social"),
        Some(3_000.0 - explicit)
    );
    promtool_check(&m.text);
}
