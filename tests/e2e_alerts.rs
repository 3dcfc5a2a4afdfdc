//! Alerts end to end: Tansu, the service and a real Alertmanager. A campaign driven from ROAS 4
//! to ROAS 1.5 fires `RoasBelowBreakEven`; Alertmanager lists it; driving it back above the
//! threshold resolves it. The alert and KPI topics are read back by an independent consumer.

mod common;

use std::time::Duration;

use common::events::{order, spend};
use common::*;
use common::{alertmanager::*, broker::*, pki::*, prometheus::*, scrape::*, service::*};

/// Orders `ids` of 100 for `promo` on `paid_social`, each from a new customer.
fn orders(ids: std::ops::Range<u32>, ts: i64) -> Vec<Msg> {
    ids.map(|i| {
        order(format!("o{i}"), ts, 100)
            .on("promo", "paid_social")
            .new_customer(true)
            .msg()
    })
    .collect()
}

/// Spend `ids` of 250 on `promo`, `paid_social`.
fn spends(ids: std::ops::Range<u32>, ts: i64) -> Vec<Msg> {
    ids.map(|i| {
        spend(format!("s{i}"), ts, 250)
            .on("promo", "paid_social")
            .msg()
    })
    .collect()
}

/// Fast evaluation, and the guide's rule with a short `for`.
const RULES: &str = r#"
[alerting]
evaluation_interval = "500ms"
snapshot_interval = "1s"
[alertmanager]
resend_interval = "2s"
url = "ALERTMANAGER"
[[alerts]]
name = "RoasBelowBreakEven"
kpi = "roas"
op = "<"
threshold = 2.0
window = "1h"
for = "2s"
severity = "warning"
min_ad_spend = 100.0
"#;

fn roas(svc: &Service) -> Option<f64> {
    svc.metrics()
        .get(&windowed("ecom_roas_ratio", "promo", "paid_social", "1h"))
}

#[test]
fn roas_below_break_even_reaches_alertmanager_and_resolves() {
    // Alertmanager is not up yet: the first pushes fail and are retried.
    let am_port = free_port();
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 3);
    tansu.create_topics(&["kpis", "alerts"], 3);
    let port = free_port();
    let config = service_config(
        &tansu.brokers(),
        &format!("alerts-{}", now_ms()),
        port,
        RULES,
    )
    .replace("ALERTMANAGER", &format!("http://127.0.0.1:{am_port}"))
    // Keys of the [kafka] table go before its [kafka.properties] sub-table.
    .replace(
        "[kafka.properties]",
        "kpis_topic = \"kpis\"\nalerts_topic = \"alerts\"\n[kafka.properties]",
    );
    let svc = Service::start(&config, port);
    let ts = now_ms() - 1_000;

    // ROAS 4: 3,000 of orders on 750 of spend.
    let mut batch = orders(0..30, ts);
    batch.extend(spends(0..3, ts));
    produce(&tansu.brokers(), &batch);
    wait_for("ROAS 4", Duration::from_secs(60), || {
        (roas(&svc) == Some(4.0)).then_some(())
    });
    svc.wait_ready(Duration::from_secs(30));

    // More spend, no more sales: ROAS 3,000 / 2,000 = 1.5.
    produce(&tansu.brokers(), &spends(3..8, ts));
    wait_for("ROAS 1.5", Duration::from_secs(60), || {
        (roas(&svc) == Some(1.5)).then_some(())
    });
    let firing = wait_for(
        "the alert to fire in ecom-pulse",
        Duration::from_secs(30),
        || {
            let (_, body) = svc.get("/api/v1/alerts").ok()?;
            let alerts: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
            alerts.into_iter().find(|a| a["state"] == "firing")
        },
    );
    assert_eq!(firing["labels"]["alertname"], "RoasBelowBreakEven");
    assert_eq!(firing["labels"]["campaign"], "promo");
    assert_eq!(firing["value"], 1.5);
    assert_eq!(firing["threshold"], 2.0);
    let m = svc.metrics();
    assert_eq!(
        m.get(r#"ecom_alerts{alertname="RoasBelowBreakEven",alertstate="firing",severity="warning",campaign="promo",channel="paid_social",window="1h"}"#),
        Some(1.0),
        "{}",
        m.text
    );
    promtool_check(&m.text);

    // Pushes fail while Alertmanager is down ...
    wait_for(
        "failed pushes to be counted",
        Duration::from_secs(30),
        || {
            let m = svc.metrics();
            (m.get(r#"ecom_pulse_alertmanager_notifications_total{result="failed"}"#)? >= 1.0)
                .then_some(())
        },
    );
    // ... and once it is up, it lists the alert, with the labels and the value in the summary.
    let am = Alertmanager::start_on(am_port);
    let listed = wait_for(
        "Alertmanager to list the alert",
        Duration::from_secs(30),
        || {
            am.alerts()
                .into_iter()
                .find(|a| a["labels"]["alertname"] == "RoasBelowBreakEven")
        },
    );
    for (label, value) in [
        ("campaign", "promo"),
        ("channel", "paid_social"),
        ("window", "1h"),
        ("severity", "warning"),
    ] {
        assert_eq!(listed["labels"][label], value, "{listed}");
    }
    let summary = listed["annotations"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("1.500") && summary.contains("2.000"),
        "{summary}"
    );
    assert!(
        listed["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains("roas < 2")
    );

    // Sales recover: 6,000 / 2,000 = 3 (past the 2.1 hysteresis): resolved everywhere.
    produce(&tansu.brokers(), &orders(30..60, ts));
    wait_for("ROAS 3", Duration::from_secs(60), || {
        (roas(&svc) == Some(3.0)).then_some(())
    });
    wait_for(
        "the alert to resolve in ecom-pulse",
        Duration::from_secs(30),
        || (svc.get("/api/v1/alerts").ok()?.1.trim() == "[]").then_some(()),
    );
    wait_for(
        "Alertmanager to see it resolved",
        Duration::from_secs(30),
        || am.alerts().is_empty().then_some(()),
    );
    let m = svc.metrics();
    assert!(
        m.get(r#"ecom_pulse_alertmanager_notifications_total{result="ok"}"#)
            .unwrap()
            >= 2.0
    );
    assert_eq!(
        m.get(r#"ecom_pulse_alert_transitions_total{state="resolved"}"#),
        Some(1.0)
    );

    the_alert_topic_holds_the_transitions_in_order(&tansu.brokers());
    the_kpi_feed_carries_every_sum_and_the_optimiser_ranks_from_it(&tansu.brokers());
}

/// Alertmanager behind TLS and basic auth (its own `--web.config.file`): ecom-pulse pushes with
/// the CA, a client certificate and the password from a file; a second service with the
/// wrong password is refused and says so.
#[test]
fn alerts_reach_an_alertmanager_behind_tls_and_basic_auth() {
    let pki = Pki::new();
    let password = "am-Pa55word-in-a-file";
    std::fs::write(pki.dir.path().join("am-password"), format!("{password}\n")).unwrap();
    std::fs::write(pki.dir.path().join("wrong-password"), "not-it").unwrap();
    let am = Alertmanager::start_with_web_config(&format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\nbasic_auth_users:\n  ecom-pulse: {}\n",
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
        bcrypt::hash(password, 6).unwrap(),
    ));
    let api = format!("https://127.0.0.1:{}/api/v2/alerts", am.port);
    let curl = |user: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "--fail",
                "--max-time",
                "10",
                "--cacert",
                &pki.path("ca.pem"),
            ])
            .args([
                "--cert",
                &pki.path("client.pem"),
                "--key",
                &pki.path("client.key"),
            ])
            .args(["-u", user, &api])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap())
    };
    let user = format!("ecom-pulse:{password}");
    wait_for("alertmanager to serve TLS", Duration::from_secs(30), || {
        curl(&user)
    });
    assert!(
        curl("ecom-pulse:not-it").is_none(),
        "Alertmanager checks the password"
    );

    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 3);
    let rules = RULES.replace(
        "url = \"ALERTMANAGER\"",
        &format!(
            "url = \"https://127.0.0.1:{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nbasic_auth_username = \"ecom-pulse\"\nbasic_auth_password_file = \"PASSWORD_FILE\"",
            am.port,
            pki.path("ca.pem"),
            pki.path("client.pem"),
            pki.path("client.key"),
        ),
    );
    let start = |password_file: &str| {
        let port = free_port();
        let config = service_config(
            &tansu.brokers(),
            &format!("secured-am-{}", free_port()),
            port,
            &rules.replace("PASSWORD_FILE", password_file),
        );
        Service::start(&config, port)
    };
    let svc = start(&pki.path("am-password"));
    let wrong = start(&pki.path("wrong-password"));
    // ROAS 1.5 straight away.
    let ts = now_ms() - 1_000;
    let mut batch = orders(0..15, ts);
    batch.extend(spends(0..4, ts));
    produce(&tansu.brokers(), &batch);
    let listed = wait_for(
        "the alert to reach Alertmanager",
        Duration::from_secs(60),
        || {
            curl(&user)?
                .into_iter()
                .find(|a| a["labels"]["alertname"] == "RoasBelowBreakEven")
        },
    );
    assert_eq!(listed["labels"]["campaign"], "promo");
    // Counted once ecom-pulse has read Alertmanager's answer.
    wait_for("the push to be counted", Duration::from_secs(30), || {
        let m = svc.metrics();
        (m.get("ecom_pulse_alertmanager_notifications_total{result=\"ok\"}")? >= 1.0).then_some(())
    });
    // The one with the wrong password fails its pushes, counts and logs them.
    wait_for(
        "the refused pushes to be counted and logged",
        Duration::from_secs(60),
        || {
            let m = wrong.metrics();
            (m.get("ecom_pulse_alertmanager_notifications_total{result=\"failed\"}")? >= 1.0
                && wrong.log().contains("401"))
            .then_some(())
        },
    );
    assert!(!wrong.log().contains("not-it"), "{}", wrong.log());
}

/// The alert topic holds the transitions, keyed by campaign, in order.
fn the_alert_topic_holds_the_transitions_in_order(brokers: &str) {
    let transitions = read_topic(brokers, "alerts", Duration::from_secs(30), |m| m.len() >= 3);
    let states: Vec<(&str, &str)> = transitions
        .iter()
        .map(|(_, v)| {
            (
                v["previous_state"].as_str().unwrap(),
                v["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("inactive", "pending"),
            ("pending", "firing"),
            ("firing", "resolved")
        ]
    );
    for (key, v) in &transitions {
        assert_eq!(key, "promo");
        assert_eq!(v["schema"], "ecom-pulse.alert.v1");
        assert_eq!(v["alertname"], "RoasBelowBreakEven");
    }
    // Only the resolution has a reason: the sales came back.
    assert!(
        transitions[..2]
            .iter()
            .all(|(_, v)| v.get("resolved_reason").is_none())
    );
    assert_eq!(transitions[2].1["resolved_reason"], "recovered");
}

/// The KPI topic carries snapshots with every sum and KPI, the latest saying ROAS 3; the
/// example optimiser ranks campaigns from it.
fn the_kpi_feed_carries_every_sum_and_the_optimiser_ranks_from_it(brokers: &str) {
    let snapshots = read_topic(brokers, "kpis", Duration::from_secs(30), |m| {
        m.iter()
            .any(|(_, v)| v["window"] == "1h" && v["roas"] == 3.0)
    });
    let (key, latest) = snapshots
        .iter()
        .rev()
        .find(|(_, v)| v["window"] == "1h")
        .unwrap();
    assert_eq!(key, "promo");
    assert_eq!(latest["schema"], "ecom-pulse.kpi.v1");
    assert_eq!(latest["currency"], "USD");
    assert_eq!(latest["campaign"], "promo");
    assert_eq!(latest["orders"], 60);
    assert_eq!(latest["gmv"], 6000.0);
    assert_eq!(latest["ad_spend"], 2000.0);
    assert!(latest["cvr"].is_null());
    assert!(
        snapshots.iter().any(|(_, v)| v["roas"] == 1.5),
        "the low point was published too"
    );

    // The example optimiser (examples/rank_by_roas.py, docs/alerts.md) ranks campaigns from
    // that feed.
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/rank_by_roas.py"
        ))
        .args(["--brokers", brokers, "--topic", "kpis", "--window", "1h"])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("promo") && stdout.contains("ROAS   3.00"),
        "{stdout}"
    );
}
