//! `ecom-pulse demo` works with nothing installed: it serves KPIs for several campaigns from
//! its in-process Kafka, prints its URLs, and stops cleanly.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use common::{prometheus::*, scrape::*};

#[test]
fn demo_serves_live_kpis_and_stops_cleanly() {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_ecom-pulse"))
        .args(["demo", "--rate", "300"])
        .env("ECOM_PULSE__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("ECOM_PULSE__LOG__LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut proc = Proc {
        child,
        name: "demo".into(),
    };

    let rows: Vec<serde_json::Value> =
        wait_for("KPIs for five campaigns", Duration::from_secs(60), || {
            let (status, body) = http_get(port, "/api/v1/kpis?window=5m&group_by=campaign").ok()?;
            let rows: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
            (status == 200
                && rows.len() >= 5
                && rows.iter().all(|r| r["visits"].as_u64() > Some(0)))
            .then_some(rows)
        });
    let channels: std::collections::BTreeSet<String> = {
        let (_, body) = http_get(port, "/api/v1/kpis?window=5m&group_by=channel").unwrap();
        let rows: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        rows.iter()
            .map(|r| r["channel"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(channels.len() >= 4, "{channels:?}");
    assert!(rows.iter().any(|r| r["roas"].is_number()), "{rows:?}");
    wait_for("readiness", Duration::from_secs(30), || {
        http_get(port, "/readyz").ok().filter(|(s, _)| *s == 200)
    });
    let (_, text) = http_get(port, "/metrics").unwrap();
    promtool_check(&text);

    Command::new("kill")
        .args(["-TERM", &proc.child.id().to_string()])
        .status()
        .unwrap();
    let status = wait_for("the demo to exit", Duration::from_secs(20), || {
        proc.child.try_wait().unwrap()
    });
    assert!(status.success(), "{status:?}");
    let mut stdout = String::new();
    proc.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(
        stdout.contains(&format!("http://127.0.0.1:{port}/metrics")),
        "{stdout}"
    );
}
