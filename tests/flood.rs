//! A producer floods the topics with a million distinct campaign names (some with terminal
//! escapes, newlines and 300-byte names): the state stays within `limits.max_keys` per
//! partition, nothing is lost (the overflow counts under campaign "(other)"), and the
//! exposition stays valid for the real promtool.

mod common;

use ecom_pulse::aggregate::{Outcome, Pipeline, Store, TopicPartition};
use ecom_pulse::config::Config;
use ecom_pulse::export::metrics::render_kpis;
use ecom_pulse::kpi::ClvAssumptions;

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
    let pipeline = Pipeline::from_config(&config).expect("valid");
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
        let state = store.get_or_insert(&tp, || pipeline.new_partition());
        match pipeline.process(&mut state.write(), json.as_bytes(), now, now) {
            Outcome::Accepted { folded: f, .. } => folded += usize::from(f),
            other => panic!("event {i}: {other:?}"),
        }
    }

    let mut keys = 0;
    for (_, state) in store.partitions() {
        let n = state.read().keys().count();
        // max_keys of their own, plus one "(other)" key for the one channel.
        assert!(n <= max_keys + 1, "{n} keys in one partition");
        keys += n;
    }
    assert_eq!(folded, EVENTS - (keys - PARTITIONS));

    let snapshot = store.snapshot(&pipeline.windows, now);
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
    common::promtool_check(&text);
}
