//! De-duplication at a real rate, through Tansu and the `ecom-pulse` binary: one partition
//! brings a million visits over 14 minutes of event time (1,190 a second), then the first of
//! them again. Every re-send is a duplicate at the default cap (the earlier default of 917,504
//! ids forgot them), also after a restart that restores the memory from its checkpoint;
//! the horizon each partition keeps is exported, and falls below the configured one under a
//! cap too small for the rate.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use common::{broker::*, ledger::*, prometheus::*, scrape::*, service::*};

/// Visits on the single partition of `visits`.
const N: u64 = 1_000_000;
/// Their event times span this much (de-duplication works in event time, so they can be
/// produced as fast as the broker takes them).
const SPAN_MS: i64 = 14 * 60_000;
/// The first ids sent again, after all of them: 14 minutes older than the newest, within the
/// 15-minute horizon. The earlier default cap of 917,504 ids forgot at least the first 82,496.
const RESENT: u64 = 80_000;
const KEYS: u64 = 8;

fn group(name: &str) -> String {
    format!("{name}-{}", now_ms())
}

fn visit(i: u64, start: i64) -> Msg {
    let ts = start + (i as i64 * SPAN_MS) / N as i64;
    let campaign = format!("dd-c{}", i % KEYS);
    events::visit(format!("dd-{i}"), ts)
        .on(&campaign, "web")
        .msg()
}

/// Produces visits `ids`, 100,000 at a time (so the test never holds them all). Uncompressed:
/// Tansu served lz4 batches of this size at a third of the rate.
fn produce_visits(brokers: &str, ids: std::ops::Range<u64>, start: i64) {
    let mut from = ids.start;
    while from < ids.end {
        let to = (from + 100_000).min(ids.end);
        let batch: Vec<Msg> = (from..to).map(|i| visit(i, start)).collect();
        produce(brokers, &batch);
        from = to;
    }
}

/// The gauge of the visits partition.
fn visits_horizon(m: &Metrics) -> f64 {
    let names = m.names_with_prefix("ecom_pulse_dedup_horizon_seconds{");
    let name = names
        .iter()
        .find(|n| n.contains(r#"topic="visits""#) && n.contains(r#"partition="0""#))
        .unwrap_or_else(|| panic!("no horizon gauge for visits/0 in {names:?}"));
    m.get(name).unwrap()
}

fn wait_counted(svc: &Service, accepted: f64, duplicates: f64) -> Metrics {
    let (mut a, mut d) = (0.0, 0.0);
    poll(Duration::from_secs(180), || {
        let m = svc.metrics();
        (a, d) = (
            m.sum("ecom_pulse_events_total"),
            m.sum("ecom_pulse_events_duplicate_total"),
        );
        (a + d >= accepted + duplicates).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "timed out: {a} accepted, {d} duplicates\n--- service log ---\n{}",
            svc.log()
        )
    })
}

#[test]
fn a_million_ids_in_one_partition_are_all_remembered_for_the_horizon() {
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 1);
    let start = now_ms() - SPAN_MS - 30_000;
    produce_visits(&tansu.brokers(), 0..N, start);
    produce_visits(&tansu.brokers(), 0..RESENT, start);
    let mut ledger: BTreeMap<(String, String), Expected> = BTreeMap::new();
    for k in 0..KEYS {
        ledger
            .entry((format!("dd-c{k}"), "web".to_string()))
            .or_default()
            .visits = N / KEYS;
    }

    // The default configuration: every re-send is a duplicate, and the sums are the distinct
    // visits'.
    let port = free_port();
    let config = service_config(&tansu.brokers(), &group("dedup"), port, "");
    let mut svc = Service::start(&config, port);
    let m = wait_counted(&svc, N as f64, RESENT as f64);
    assert_eq!(
        m.sum("ecom_pulse_events_duplicate_total"),
        RESENT as f64,
        "re-sends within the horizon counted again"
    );
    assert_eq!(m.sum("ecom_pulse_events_total"), N as f64);
    // The 5m window moves on with the clock while the test runs; the longer ones hold it all.
    assert_exact(&ledger, &[&m], &["1h", "24h"]);
    // The horizon kept is the configured one, with nothing forgotten early.
    assert_eq!(
        m.get("ecom_pulse_dedup_configured_horizon_seconds"),
        Some(900.0)
    );
    assert_eq!(visits_horizon(&m), 900.0, "{}", m.text);
    assert_eq!(m.get("ecom_pulse_dedup_evicted_ids"), Some(0.0));
    assert_eq!(m.get("ecom_pulse_dedup_ids"), Some(N as f64));
    promtool_check(&m.text);

    // Restarted, the memory comes back from its checkpoint (a million ids, format 5): more
    // early ids sent again are duplicates too.
    assert!(
        svc.terminate(Duration::from_secs(60)).success(),
        "{}",
        svc.log()
    );
    let svc = Service::start(&config, port);
    svc.wait_ready(Duration::from_secs(120));
    produce_visits(&tansu.brokers(), RESENT..RESENT + 10_000, start);
    let m = wait_counted(&svc, 0.0, 10_000.0);
    assert_eq!(
        m.sum("ecom_pulse_events_duplicate_total"),
        10_000.0,
        "{}",
        svc.log()
    );
    assert_eq!(m.sum("ecom_pulse_events_total"), 0.0);
    assert!(
        m.get(r#"ecom_pulse_restores_total{result="restored"}"#)
            .unwrap_or(0.0)
            >= 1.0,
        "{}",
        m.text
    );
    assert_eq!(visits_horizon(&m), 900.0);
    assert_eq!(m.get("ecom_pulse_dedup_ids"), Some(N as f64));

    drop(svc);

    // Orders at 10 a second under a cap that holds only 500 s of them: the oldest generations
    // are forgotten early, the horizon kept falls below the configured one, and re-sends from
    // before it count again. (An instance of its own, on the orders topic alone.)
    let order = |i: i64| {
        events::order(format!("dd-o{i}"), start + i * 100, 0)
            .amount_text("10.00")
            .on("dd-o", "web")
            .new_customer(false)
            .msg()
    };
    produce(&tansu.brokers(), &(0..8_400).map(order).collect::<Vec<_>>());
    produce(&tansu.brokers(), &(0..1_000).map(order).collect::<Vec<_>>());
    let port = free_port();
    let small = service_config(
        &tansu.brokers(),
        &group("dedup-small"),
        port,
        "[dedup]\nmax_ids_per_partition = 5000\n",
    )
    .replace(
        r#"topics = ["visits", "orders", "ad-spend"]"#,
        r#"topics = ["orders"]"#,
    );
    let svc = Service::start(&small, port);
    let m = wait_counted(&svc, 0.0, 9_400.0);
    let horizon = m
        .names_with_prefix("ecom_pulse_dedup_horizon_seconds{")
        .iter()
        .find(|n| n.contains(r#"topic="orders""#))
        .and_then(|n| m.get(n))
        .unwrap_or_else(|| panic!("no horizon gauge for orders/0\n{}", m.text));
    // At most what the cap holds (less when the re-sent orders, taken in again, made the cap
    // forget another generation).
    assert!(horizon > 0.0 && horizon <= 500.0, "horizon kept {horizon}");
    assert_eq!(
        m.get("ecom_pulse_dedup_configured_horizon_seconds"),
        Some(900.0)
    );
    assert!(m.get("ecom_pulse_dedup_evicted_ids").unwrap() > 0.0);
    assert!(m.get("ecom_pulse_dedup_ids").unwrap() <= 5_000.0);
    // The re-sent orders were older than the horizon kept: counted again.
    assert_eq!(m.sum("ecom_pulse_events_duplicate_total"), 0.0);
    assert_eq!(m.sum("ecom_pulse_events_total"), 9_400.0);
    promtool_check(&m.text);
}
