//! The Grafana dashboard against real data: Tansu, the service, the generator and a real
//! Prometheus (Debian package) with the shipped rule files. Every PromQL query of the
//! dashboard, template variables substituted, must return data.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use common::{broker::*, prometheus::*, service::*};
use serde_json::Value;

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/dashboards/ecom-pulse.json"
);
const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/ecom-pulse.rules.yml"
);

fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// Grafana's variables, as a test substitutes them: every campaign, channel and instance.
fn substitute(expr: &str) -> String {
    expr.replace("$window", "1h")
        .replace("$campaign", ".*")
        .replace("$channel", ".*")
        .replace("$instance", ".*")
        .replace("$__rate_interval", "1m")
}

/// `label_values(selector, label)` as the equivalent PromQL.
fn label_values_query(q: &str) -> String {
    let inner = q
        .trim()
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .expect("label_values(...)");
    let (selector, label) = inner.rsplit_once(',').expect("selector, label");
    format!("count by ({}) ({})", label.trim(), selector.trim())
}

#[test]
fn the_dashboard_is_well_formed() {
    let d: Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    assert_eq!(d["uid"], "ecom-pulse");
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        assert!(
            ids.insert(p["id"].as_i64().unwrap()),
            "duplicate panel id {}",
            p["id"]
        );
        let g = &p["gridPos"];
        assert!(
            g["x"].as_i64().unwrap() + g["w"].as_i64().unwrap() <= 24,
            "{} overflows the grid",
            p["title"]
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            // Ratios are divisions of sums, never averages of ratios.
            assert!(!expr.contains("avg"), "{expr}");
        }
    }
    let titles: Vec<&str> = panels(&d)
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for needed in [
        "ROAS",
        "Conversion rate",
        "AOV",
        "CAC",
        "CLV",
        "CLV : CAC",
        "GMV",
        "Ad spend",
        "ROAS by campaign",
        "Campaigns ranked by ROAS",
    ] {
        assert!(titles.contains(&needed), "no panel {needed}");
    }
    // The guide's thresholds: ROAS red below 2, amber below 3.
    let roas = panels(&d)
        .into_iter()
        .find(|p| p["title"] == "ROAS")
        .unwrap();
    let steps = &roas["fieldConfig"]["defaults"]["thresholds"]["steps"];
    assert_eq!(steps[1]["value"], 2.0);
    assert_eq!(steps[2]["value"], 3.0);
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        vars,
        ["datasource", "window", "campaign", "channel", "instance"]
    );
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 3);
    let port = free_port();
    let _svc = Service::start(
        &service_config(&tansu.brokers(), &format!("dash-{}", now_ms()), port, ""),
        port,
    );
    let generator = Command::new(env!("CARGO_BIN_EXE_ecom-pulse"))
        .args([
            "generate",
            "--brokers",
            &tansu.brokers(),
            "--rate",
            "1000",
            "--bad-ratio",
            "0.01",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _generator = Proc {
        child: generator,
        name: "generator".into(),
    };
    let prometheus = Prometheus::start(&[format!("127.0.0.1:{port}")], &[RULES]);

    let d: Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let mut queries: Vec<(String, String)> = Vec::new();
    for p in panels(&d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            queries.push((
                format!("{} [{}]", p["title"], t["refId"]),
                substitute(t["expr"].as_str().unwrap()),
            ));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().unwrap();
            queries.push((
                format!("variable {}", v["name"]),
                substitute(&label_values_query(q)),
            ));
        }
    }
    assert!(queries.len() >= 30, "{} queries", queries.len());

    // Rates need two scrapes, alerts need the guards met: poll until every query has data.
    let mut empty: Vec<(String, String)> = queries.clone();
    let filled = poll(Duration::from_secs(180), || {
        empty.retain(|(name, q)| match prometheus.query(q) {
            Ok(result) => result.is_empty(),
            Err(e) => panic!("{name}: {q}: {e}"),
        });
        empty.is_empty().then_some(())
    });
    assert!(
        filled.is_some(),
        "queries without data after 3 minutes:\n{empty:#?}"
    );
    // The ROAS headline equals the fleet recording rule: both are sums divided. Compared at
    // the instant the rule was last evaluated, so both read the same scraped samples (the
    // generator keeps changing them every second). A scrape stamped just before that
    // instant can land after the evaluation read the data: then the next evaluation is
    // taken, up to twenty.
    let fleet_expr = "fleet:ecom_roas:ratio{window=\"1h\"}";
    let headline_expr = substitute(d["panels"][1]["targets"][0]["expr"].as_str().unwrap());
    let value = |r: &[Value]| r[0]["value"][1].as_str().unwrap().parse::<f64>().unwrap();
    let evaluated_at = || {
        value(
            &prometheus
                .query(&format!("timestamp({fleet_expr})"))
                .unwrap(),
        )
    };
    let mut compared = Vec::new();
    for _ in 0..20 {
        let at = evaluated_at();
        let fleet = value(&prometheus.query_at(fleet_expr, at).unwrap());
        let headline = value(&prometheus.query_at(&headline_expr, at).unwrap());
        if (headline - fleet).abs() < 1e-9 * fleet.abs().max(1.0) {
            return;
        }
        compared.push((at, headline, fleet));
        // Wait for the next evaluation (every second).
        wait_for(
            "the rule to be evaluated again",
            Duration::from_secs(10),
            || (evaluated_at() > at).then_some(()),
        );
    }
    panic!("the headline never equalled the recording rule: {compared:?}");
}
