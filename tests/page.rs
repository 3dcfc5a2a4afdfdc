//! The built-in live page, rendered by a real headless Chromium (Debian `chromium`) against
//! the demo: KPI cards, the ranked campaign table and sparklines appear; a screenshot is
//! saved to target/live-page.png.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::scrape::*;
use common::*;

fn chromium(port: u16, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(tool("chromium", "apt-get install chromium"))
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
        ])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        // Lets the page's scripts run and their fetches finish before the DOM is taken.
        .arg("--virtual-time-budget=10000")
        .args(args)
        .arg(format!("http://127.0.0.1:{port}/"))
        .stderr(Stdio::null())
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_live_page_renders_kpis_campaigns_and_sparklines() {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_ecom-pulse"))
        .args(["demo", "--rate", "300"])
        .env("ECOM_PULSE__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("ECOM_PULSE__ALERTING__SNAPSHOT_INTERVAL", "1s")
        .env("ECOM_PULSE__LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _demo = Proc {
        child,
        name: "demo".into(),
    };
    wait_for(
        "history for five campaigns",
        Duration::from_secs(60),
        || {
            let (_, body) = http_get(port, "/api/v1/history").ok()?;
            let h: serde_json::Value = serde_json::from_str(&body).ok()?;
            let enough = h["at"].as_array()?.len() >= 3 && h["campaigns"].as_object()?.len() >= 5;
            enough.then_some(())
        },
    );

    let dom = chromium(port, &["--dump-dom"]);
    // The ROAS card holds a number.
    let roas = dom
        .split("data-kpi=\"roas\"")
        .nth(1)
        .and_then(|s| s.split("class=\"value").nth(1))
        .and_then(|s| s.split('>').nth(1))
        .and_then(|s| s.split('<').next())
        .unwrap_or_else(|| panic!("no ROAS card in\n{dom}"));
    assert!(
        roas.replace(',', "").parse::<f64>().is_ok(),
        "ROAS card shows {roas:?}"
    );
    for card in ["cvr", "aov", "cac", "clv", "clv_cac", "gmv", "ad_spend"] {
        assert!(
            dom.contains(&format!("data-kpi=\"{card}\"")),
            "no {card} card"
        );
    }
    let campaigns = dom.matches("data-campaign=").count();
    assert!(campaigns >= 5, "{campaigns} campaign rows");
    assert!(dom.contains("data-campaign=\"influencer_q4\""));
    assert!(dom.contains("<polyline"), "no sparkline drawn");
    assert!(dom.contains("id=\"alerts\""));

    let shot = concat!(env!("CARGO_MANIFEST_DIR"), "/target/live-page.png");
    let _ = std::fs::remove_file(shot);
    chromium(
        port,
        &["--window-size=1280,1100", &format!("--screenshot={shot}")],
    );
    let png = std::fs::read(shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    // And on a phone-sized screen the page still lays out (no horizontal overflow of cards).
    chromium(
        port,
        &[
            "--window-size=390,844",
            &format!("--screenshot={}", shot.replace(".png", "-phone.png")),
        ],
    );
}
