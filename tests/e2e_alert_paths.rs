//! The two alert paths agree, end to end: Tansu, the service, and a real Prometheus (Debian
//! `prometheus`) scraping it and evaluating the rules `ecom-pulse rules` generates from the
//! same configuration.
//!
//! 1. A campaign whose events stop: while its 1m window holds visits and no orders,
//!    `orders < 1` fires in both; once the window empties it fires in neither (before, the
//!    service read the empty window as 0 orders and fired for ever), and the service's
//!    resolution says `no_data`.
//! 2. Spend wobbling just under `min_ad_spend`: a firing ROAS alert stays firing in both (the
//!    guard has the threshold's hysteresis), and once the spend stops it resolves in both;
//!    the alert topic, the log and Alertmanager's resolved notification say `guard`.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::events::{order, spend, visit};
use common::*;
use common::{alertmanager::*, broker::*, prometheus::*, scrape::*, service::*};
use serde_json::Value;

/// The service's config with the alert topic set (keys of [kafka] go before its sub-table).
fn with_alerts_topic(config: String) -> String {
    config.replace(
        "[kafka.properties]",
        "alerts_topic = \"alerts\"\n[kafka.properties]",
    )
}

/// Writes `config` and the rules `ecom-pulse rules --write` generates from it into `dir`;
/// returns the rules file. promtool must accept the rules and pass their generated tests.
fn generated_rules(dir: &Path, config: &str) -> String {
    let path = dir.join("ecom-pulse.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ecom-pulse"))
        .arg("--config")
        .arg(&path)
        .args(["rules", "--write"])
        .arg(dir)
        .env_remove("ECOM_PULSE_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let test = Command::new(tool("promtool", "apt-get install prometheus"))
        .args(["test", "rules", "ecom-pulse.rules.test.yml"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "promtool test rules on the generated rules:\n{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    dir.join("ecom-pulse.rules.yml").display().to_string()
}

/// Campaigns with a firing `alertname` in ecom-pulse's `/api/v1/alerts`.
fn firing_in_service(svc: &Service, alertname: &str) -> Option<BTreeSet<String>> {
    let (status, body) = svc.get("/api/v1/alerts").ok()?;
    assert_eq!(status, 200, "{body}");
    let alerts: Vec<Value> = serde_json::from_str(&body).unwrap();
    Some(
        alerts
            .iter()
            .filter(|a| a["labels"]["alertname"] == alertname && a["state"] == "firing")
            .map(|a| a["labels"]["campaign"].as_str().unwrap().to_string())
            .collect(),
    )
}

/// Firing `alertname` alerts in Prometheus' own `/api/v1/alerts`: campaign → value.
fn firing_in_prometheus(prometheus: &Prometheus, alertname: &str) -> Vec<(String, f64)> {
    let (status, body) = http_get(prometheus.port, "/api/v1/alerts").expect("prometheus API");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["labels"]["alertname"] == alertname && a["state"] == "firing")
        .map(|a| {
            (
                a["labels"]["campaign"].as_str().unwrap().to_string(),
                a["value"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

fn campaigns(alerts: &[(String, f64)]) -> BTreeSet<String> {
    alerts.iter().map(|(c, _)| c.clone()).collect()
}

/// The alert topic's transitions of one campaign, as (previous state, state, message), once
/// it holds a resolution for it.
fn transitions_until_resolved(brokers: &str, campaign: &str) -> Vec<(String, String, Value)> {
    let of_campaign = |m: &[(String, Value)]| -> Vec<(String, String, Value)> {
        m.iter()
            .filter(|(key, _)| key == campaign)
            .map(|(_, v)| {
                (
                    v["previous_state"].as_str().unwrap().to_string(),
                    v["state"].as_str().unwrap().to_string(),
                    v.clone(),
                )
            })
            .collect()
    };
    let messages = read_topic(brokers, "alerts", Duration::from_secs(60), |m| {
        of_campaign(m)
            .iter()
            .any(|(_, state, _)| state == "resolved")
    });
    of_campaign(&messages)
}

const NO_ORDERS: &str = r#"
[windows]
lengths = ["1m", "5m"]
[alerting]
evaluation_interval = "1s"
[[alerts]]
name = "NoOrders"
kpi = "orders"
op = "<"
threshold = 1.0
window = "1m"
for = "0s"
severity = "warning"
"#;

#[test]
fn a_campaign_whose_window_empties_stops_firing_in_both_paths() {
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 3);
    tansu.create_topics(&["alerts"], 3);
    let port = free_port();
    let config = with_alerts_topic(service_config(
        &tansu.brokers(),
        &format!("paths-{}", now_ms()),
        port,
        NO_ORDERS,
    ));
    let svc = Service::start(&config, port);
    svc.wait_ready(Duration::from_secs(60));
    let rules_dir = tempfile::tempdir().unwrap();
    let rules = generated_rules(rules_dir.path(), &config);
    let prometheus = Prometheus::start(&[format!("127.0.0.1:{port}")], &[rules.as_str()]);

    // `ended` has visits and no orders: its 1m window exports `ecom_orders 0`, and both
    // paths fire. `selling` has an order: neither does. Events are sent until both paths
    // have been seen firing, so a slow start cannot let the window empty first.
    let mut sent = 0;
    let mut last_sent: Option<Instant> = None;
    wait_for(
        "`ended` (only) to fire in ecom-pulse and in Prometheus",
        Duration::from_secs(120),
        || {
            if last_sent.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                let ts = now_ms();
                produce(
                    &tansu.brokers(),
                    &[
                        visit(format!("v{sent}"), ts).on("ended", "email").msg(),
                        visit(format!("v{sent}"), ts).on("selling", "email").msg(),
                        order(format!("o{sent}"), ts, 40)
                            .on("selling", "email")
                            .new_customer(true)
                            .msg(),
                    ],
                );
                sent += 1;
                last_sent = Some(Instant::now());
            }
            let ours = firing_in_service(&svc, "NoOrders")?;
            let theirs = campaigns(&firing_in_prometheus(&prometheus, "NoOrders"));
            let ended = BTreeSet::from(["ended".to_string()]);
            (ours == ended && theirs == ended).then_some(())
        },
    );
    let m = svc.metrics();
    assert_eq!(
        m.get(&windowed("ecom_orders", "ended", "email", "1m")),
        Some(0.0),
        "a window with data and no orders exports 0"
    );

    // No more events. Once the 1m window is empty, it has no series in /metrics, and no
    // alert in either path, though the 5m window still holds the campaign.
    wait_for(
        "`ended` to stop firing in ecom-pulse and in Prometheus",
        Duration::from_secs(180),
        || {
            let ours = firing_in_service(&svc, "NoOrders")?;
            let theirs = firing_in_prometheus(&prometheus, "NoOrders");
            (ours.is_empty() && theirs.is_empty()).then_some(())
        },
    );
    let m = svc.metrics();
    assert_eq!(
        m.get(&windowed("ecom_visits", "ended", "email", "1m")),
        None
    );
    assert_eq!(
        m.get(&windowed("ecom_orders", "ended", "email", "1m")),
        None
    );
    assert!(
        m.get(&windowed("ecom_visits", "ended", "email", "5m"))
            .is_some(),
        "the campaign is still tracked: {}",
        m.text
    );

    // The resolution says why, on the alert topic and in the log.
    let transitions = transitions_until_resolved(&tansu.brokers(), "ended");
    let states: Vec<(&str, &str)> = transitions
        .iter()
        .map(|(from, to, _)| (from.as_str(), to.as_str()))
        .collect();
    assert_eq!(states, [("inactive", "firing"), ("firing", "resolved")]);
    assert!(transitions[0].2.get("resolved_reason").is_none());
    assert_eq!(transitions[1].2["resolved_reason"], "no_data");
    assert!(
        svc.log()
            .contains("alert NoOrders firing -> resolved (no_data)"),
        "{}",
        svc.log()
    );
    assert!(
        !transitions
            .iter()
            .any(|(_, _, v)| v["campaign"] == "selling"),
        "{transitions:?}"
    );
}

/// An Alertmanager webhook receiver: every notification body it is sent.
struct Webhook {
    port: u16,
    received: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        // Detached: it ends with the test process.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_ok()
                    && let Ok(v) = serde_json::from_slice(&body)
                {
                    sink.lock().unwrap().push(v);
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Webhook { port, received }
    }

    fn received(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }
}

const ROAS_LOW: &str = r#"
[windows]
lengths = ["3m", "5m"]
[alerting]
evaluation_interval = "1s"
[alertmanager]
resend_interval = "2s"
url = "ALERTMANAGER"
[[alerts]]
name = "RoasLow"
kpi = "roas"
op = "<"
threshold = 2.0
window = "3m"
for = "0s"
severity = "critical"
min_ad_spend = 100.0
"#;

#[test]
fn spend_wobbling_under_the_guard_keeps_the_alert_and_a_pause_resolves_it_in_both_paths() {
    let webhook = Webhook::start();
    let am = Alertmanager::start_with_config(&format!(
        "route:\n  receiver: hook\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: http://127.0.0.1:{}/\n        send_resolved: true\n",
        webhook.port
    ));
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 3);
    tansu.create_topics(&["alerts"], 3);
    let port = free_port();
    let config = with_alerts_topic(service_config(
        &tansu.brokers(),
        &format!("guards-{}", now_ms()),
        port,
        &ROAS_LOW.replace("ALERTMANAGER", &format!("http://127.0.0.1:{}", am.port)),
    ));
    let svc = Service::start(&config, port);
    svc.wait_ready(Duration::from_secs(60));
    let rules_dir = tempfile::tempdir().unwrap();
    let rules = generated_rules(rules_dir.path(), &config);
    let prometheus = Prometheus::start(&[format!("127.0.0.1:{port}")], &[rules.as_str()]);
    wait_for(
        "Prometheus to scrape the service",
        Duration::from_secs(60),
        || {
            let up = prometheus.query("up == 1").ok()?;
            (!up.is_empty()).then_some(())
        },
    );

    // Spend of 4 two minutes ago, 96 one minute ago, and 150 of orders now: ROAS 1.5 on 100
    // of spend in the 3m window. The 4 leaves the window first (spend 96: between the relaxed
    // guard, 95, and the full one), then the 96 (spend 0, the campaign paused), then the
    // orders.
    let t0 = now_ms();
    produce(
        &tansu.brokers(),
        &[
            spend("s0", t0 - 120_000, 4).on("promo", "email").msg(),
            spend("s1", t0 - 60_000, 96).on("promo", "email").msg(),
            order("o0", t0, 50)
                .on("promo", "email")
                .new_customer(true)
                .msg(),
            order("o1", t0, 50)
                .on("promo", "email")
                .new_customer(true)
                .msg(),
            order("o2", t0, 50)
                .on("promo", "email")
                .new_customer(true)
                .msg(),
        ],
    );
    let promo = BTreeSet::from(["promo".to_string()]);
    wait_for(
        "RoasLow to fire in ecom-pulse and in Prometheus",
        Duration::from_secs(60),
        || {
            let theirs = firing_in_prometheus(&prometheus, "RoasLow");
            (firing_in_service(&svc, "RoasLow")? == promo && campaigns(&theirs) == promo)
                .then_some(())
        },
    );
    // Prometheus evaluated ROAS 150 / 96 and kept the alert firing: that value only exists
    // while the spend is 96, under the full guard. (ecom-pulse's side is checked on the
    // alert topic below, where every transition stays.)
    wait_for(
        "Prometheus to keep RoasLow firing on 96 of spend",
        Duration::from_secs(120),
        || {
            let theirs = firing_in_prometheus(&prometheus, "RoasLow");
            (theirs == [("promo".to_string(), 1.5625)]).then_some(())
        },
    );

    // Spend stopped: under the relaxed guard, the alert resolves in both.
    wait_for(
        "RoasLow to resolve in ecom-pulse and in Prometheus",
        Duration::from_secs(120),
        || {
            let ours = firing_in_service(&svc, "RoasLow")?;
            (ours.is_empty() && firing_in_prometheus(&prometheus, "RoasLow").is_empty())
                .then_some(())
        },
    );
    // One firing, one resolution: it rode out the wobble (its last firing value is the ROAS
    // on 96 of spend) and resolved for the guard, with the orders still in the window.
    let transitions = transitions_until_resolved(&tansu.brokers(), "promo");
    let states: Vec<(&str, &str)> = transitions
        .iter()
        .map(|(from, to, _)| (from.as_str(), to.as_str()))
        .collect();
    assert_eq!(
        states,
        [("inactive", "firing"), ("firing", "resolved")],
        "{transitions:?}"
    );
    assert_eq!(transitions[0].2["value"], 1.5);
    assert_eq!(transitions[1].2["value"], 1.5625);
    assert_eq!(transitions[1].2["resolved_reason"], "guard");
    assert!(
        svc.log()
            .contains("alert RoasLow firing -> resolved (guard)"),
        "{}",
        svc.log()
    );
    // Alertmanager's resolved notification carries the reason.
    let resolved = wait_for(
        "Alertmanager to notify the resolution",
        Duration::from_secs(60),
        || {
            webhook
                .received()
                .into_iter()
                .find(|n| n["status"] == "resolved")
        },
    );
    let alert = &resolved["alerts"][0];
    assert_eq!(alert["labels"]["alertname"], "RoasLow");
    assert_eq!(
        alert["annotations"]["resolved_reason"], "guard",
        "{resolved}"
    );
}
