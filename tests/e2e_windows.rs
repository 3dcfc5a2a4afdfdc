//! Windows through a configuration change and through retention: what still fits is kept,
//! what does not is read again from the topics, and what the topics no longer hold is
//! reported as incomplete (gauge, JSON API) with alerts held back on it.

mod common;

use std::time::Duration;

use common::events::{order, visit};
use common::inprocess::{in_process, mock_topics, shut_down};
use common::*;
use common::{broker::*, scrape::*, service::*};
use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

const MIN: i64 = 60_000;

/// What one window should hold.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Want {
    visits: u64,
    orders: u64,
    gmv: f64,
    ad_spend: f64,
}

/// Events for campaign `shop` on `search`, stamped `ts`: visits, orders of 100 and spend.
fn events(prefix: &str, ts: i64, visits: usize, orders: usize, spend: f64) -> Vec<Msg> {
    let mut out = Vec::new();
    for i in 0..visits {
        out.push(
            visit(format!("{prefix}-v{i}"), ts)
                .on("shop", "search")
                .msg(),
        );
    }
    for i in 0..orders {
        out.push(
            order(format!("{prefix}-o{i}"), ts, 100)
                .on("shop", "search")
                .msg(),
        );
    }
    if spend > 0.0 {
        out.push(
            common::events::spend(format!("{prefix}-s"), ts, spend)
                .on("shop", "search")
                .msg(),
        );
    }
    out
}

fn window_of(m: &Metrics, window: &str) -> Want {
    let g = |name: &str| {
        m.get(&windowed(name, "shop", "search", window))
            .unwrap_or(0.0)
    };
    Want {
        visits: g("ecom_visits") as u64,
        orders: g("ecom_orders") as u64,
        gmv: g("ecom_gmv"),
        ad_spend: g("ecom_ad_spend"),
    }
}

fn counters_of(m: &Metrics) -> Want {
    let c = |name: &str| m.counter(name, "shop", "search").unwrap_or(0.0);
    Want {
        visits: c("ecom_visits_total") as u64,
        orders: c("ecom_orders_total") as u64,
        gmv: c("ecom_gmv_total"),
        ad_spend: c("ecom_ad_spend_total"),
    }
}

/// A drop rule added on 1h (its ring now holds the hour before too), a 2h window added, 5m
/// and 1h unchanged: at the first ready answer every window holds what it would had the new
/// configuration run from the start, the counters are as they were, and the drop rule sees
/// the hour before. Before, every ring was emptied on such a change, and the first ready
/// answer claimed complete numbers that were not there.
#[test]
fn a_configuration_change_keeps_what_fits_and_rebuilds_the_rest() {
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 3);
    let group = format!("reconf-{}", now_ms());
    let port = free_port();
    let extra = "[checkpoint]\ninterval = \"500ms\"\npartitions = 4\nreplication_factor = 1\n[alerting]\nevaluation_interval = \"1s\"\n";
    let first = format!(
        "alerts = []\n{}",
        service_config(
            &tansu.brokers(),
            &group,
            port,
            &format!("{extra}[windows]\nlengths = [\"5m\", \"1h\"]\n")
        )
    );
    let second = service_config(
        &tansu.brokers(),
        &group,
        port,
        &format!(
            "{extra}[windows]\nlengths = [\"5m\", \"1h\", \"2h\"]\n[[alerts]]\nname = \"RoasDrop\"\nkpi = \"roas\"\ndrop = 0.3\nwindow = \"1h\"\nfor = \"0s\"\nseverity = \"warning\"\nmin_ad_spend = 10.0\n"
        ),
    );
    let now = now_ms();
    // The hour before: ROAS 4. This hour: ROAS 1.6, a fall of 60 %. The last minute: a few.
    let earlier = events("earlier", now - 100 * MIN, 200, 40, 1_000.0);
    let this_hour = events("hour", now - 30 * MIN, 300, 15, 1_000.0);
    let last = events("last", now - MIN, 10, 1, 0.0);
    for batch in [&earlier, &this_hour, &last] {
        produce(&tansu.brokers(), batch);
    }
    let five = Want {
        visits: 10,
        orders: 1,
        gmv: 100.0,
        ad_spend: 0.0,
    };
    let hour = Want {
        visits: 310,
        orders: 16,
        gmv: 1_600.0,
        ad_spend: 1_000.0,
    };
    let two_hours = Want {
        visits: 510,
        orders: 56,
        gmv: 5_600.0,
        ad_spend: 2_000.0,
    };

    // Under the first configuration the hour before is older than every window: refused.
    let mut svc = Service::start(&first, port);
    svc.wait_ready(Duration::from_secs(60));
    let m = wait_for("the first run to count", Duration::from_secs(60), || {
        let m = svc.metrics();
        (counters_of(&m) == hour).then_some(m)
    });
    assert_eq!(window_of(&m, "5m"), five);
    assert_eq!(window_of(&m, "1h"), hour);
    assert_eq!(
        m.get(r#"ecom_pulse_events_rejected_total{reason="too_late"}"#),
        Some(241.0)
    );
    assert!(svc.terminate(Duration::from_secs(20)).success());

    // The new configuration, restored from the checkpoint the first run left.
    let svc = Service::start(&second, port);
    svc.wait_ready(Duration::from_secs(120));
    let m = svc.metrics();
    let log = svc.log();
    assert_eq!(
        window_of(&m, "5m"),
        five,
        "5m at the first ready scrape\n{log}"
    );
    assert_eq!(
        window_of(&m, "1h"),
        hour,
        "1h at the first ready scrape\n{log}"
    );
    assert_eq!(window_of(&m, "2h"), two_hours, "2h, rebuilt\n{log}");
    assert_eq!(counters_of(&m), hour, "nothing counted twice");
    assert!(
        m.get(r#"ecom_pulse_restores_total{result="reconfigured"}"#)
            .is_some_and(|n| n >= 1.0),
        "{}",
        m.text
    );
    for w in ["5m", "1h", "2h"] {
        assert_eq!(
            m.get(&format!(
                r#"ecom_pulse_window_coverage_ratio{{window="{w}"}}"#
            )),
            Some(1.0),
            "{w}"
        );
    }
    assert_eq!(
        m.get(r#"ecom_pulse_preceding_window_coverage_ratio{window="1h"}"#),
        Some(1.0)
    );
    let (status, body) = svc.get("/api/v1/kpis?window=2h").unwrap();
    assert_eq!(status, 200);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(rows.len(), 1, "{body}");
    assert_eq!(rows[0]["complete"], true, "{body}");
    assert_eq!(rows[0]["partitions_held"], 9);
    assert_eq!(rows[0]["partitions_total"], 9);
    // The rebuilt hour before is what the drop rule compares with.
    let alert = wait_for("RoasDrop to fire", Duration::from_secs(30), || {
        let (_, body) = svc.get("/api/v1/alerts").unwrap();
        let alerts: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        alerts
            .into_iter()
            .find(|a| a["labels"]["alertname"] == "RoasDrop" && a["state"] == "firing")
    });
    assert_eq!(alert["value"], 1.6, "{alert}");
}

/// The in-process mock cluster keeps at most 5 MiB a partition and drops the oldest records
/// beyond: a service that takes such a partition has less than an hour behind its first
/// record. The 1h window says how much it covers, the API says it is not complete, and a
/// rule on it is not evaluated while a rule on the (whole) 5m window fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_the_topic_no_longer_holds_says_so_and_raises_nothing() {
    let mock = MockCluster::new(1).unwrap();
    let (brokers, group) = mock_topics(&mock, 1, 1, "retention");
    // 7,000 visits of ~1 KB each over the last 50 minutes, oldest first: the first ~2,000
    // no longer fit.
    let now = now_ms();
    let pad = "x".repeat(1_000);
    let visits: Vec<Msg> = (0..7_000_i64)
        .map(|i| {
            let ts = now - 50 * MIN + i * 50 * MIN / 7_000;
            visit(format!("r{i}"), ts)
                .on("shop", "search")
                .field("pad", format!("\"{pad}\""))
                .msg()
        })
        .collect();
    // ROAS 0.5 in both windows.
    let sales = events("sale", now - 2 * MIN, 0, 5, 1_000.0);
    let b = brokers.clone();
    tokio::task::spawn_blocking(move || {
        produce(&b, &visits);
        produce(&b, &sales);
    })
    .await
    .unwrap();

    let rule = |name: &str, window: &str| {
        format!(
            "[[alerts]]\nname = \"{name}\"\nkpi = \"roas\"\nop = \"<\"\nthreshold = 2.0\nwindow = \"{window}\"\nfor = \"0s\"\nseverity = \"warning\"\nmin_ad_spend = 10.0\n"
        )
    };
    let extra = format!(
        "[windows]\nlengths = [\"5m\", \"1h\"]\n[alerting]\nevaluation_interval = \"1s\"\n{}{}",
        rule("RoasLowShort", "5m"),
        rule("RoasLowHour", "1h")
    );
    let (port, service) = in_process(&brokers, &group, &extra).await;
    let stop = CancellationToken::new();
    let running = tokio::spawn(service.run(stop.clone()));

    let checked = tokio::task::spawn_blocking(move || {
        wait_for(
            "the short-window alert to fire",
            Duration::from_secs(60),
            || {
                let (_, body) = http_get(port, "/api/v1/alerts").ok()?;
                let alerts: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
                alerts
                    .iter()
                    .any(|a| a["labels"]["alertname"] == "RoasLowShort" && a["state"] == "firing")
                    .then_some(alerts)
            },
        )
    })
    .await
    .unwrap();
    assert!(
        checked
            .iter()
            .all(|a| a["labels"]["alertname"] != "RoasLowHour"),
        "a rule on an incomplete window was evaluated: {checked:?}"
    );
    let (status, body) = http_get(port, "/metrics").unwrap();
    assert_eq!(status, 200);
    let m = Metrics::parse(&body);
    let hour = m
        .get(r#"ecom_pulse_window_coverage_ratio{window="1h"}"#)
        .unwrap();
    assert!(hour > 0.2 && hour < 0.95, "1h coverage {hour}");
    assert_eq!(
        m.get(r#"ecom_pulse_window_coverage_ratio{window="5m"}"#),
        Some(1.0)
    );
    let (_, body) = http_get(port, "/api/v1/kpis").unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let row = |w: &str| rows.iter().find(|r| r["window"] == w).unwrap().clone();
    assert_eq!(row("5m")["complete"], true, "{body}");
    assert_eq!(row("1h")["complete"], false, "{body}");
    assert!(row("1h")["window_coverage"].as_f64().unwrap() < 0.95);
    // Fewer visits than were produced: the topic lost the oldest.
    assert!(row("1h")["visits"].as_u64().unwrap() < 7_000, "{body}");
    let (_, coverage) = http_get(port, "/api/v1/coverage").unwrap();
    let coverage: serde_json::Value = serde_json::from_str(&coverage).unwrap();
    assert_eq!(coverage["complete"], false, "{coverage}");

    shut_down(stop, running).await;
}
