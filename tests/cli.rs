//! The binary's start-up contract: bad configuration fails fast and names the key; logs can be
//! JSON; SIGTERM exits cleanly even when no broker was ever reachable.

mod common;

use std::process::Command;
use std::time::Duration;

use common::service::*;
use common::*;

fn run_with_config(toml: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ecom-pulse"))
        .arg("--config")
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_value_stops_start_up_naming_the_key() {
    let (code, stderr) = run_with_config("[kpi]\nlifetime_years = -3.0\n", &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("kpi.lifetime_years"), "{stderr}");

    let (code, stderr) = run_with_config("", &[("ECOM_PULSE__WINDOWS__LENGTHS", "5m,forever")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("windows.lengths[1]"), "{stderr}");

    let (code, stderr) = run_with_config("[kafka]\nbrokres = \"x\"\n", &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("brokres"), "{stderr}");
}

#[test]
fn an_unknown_librdkafka_property_stops_start_up_naming_it() {
    let port = free_port();
    let toml = format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n[kafka.properties]\n\"no.such.property\" = \"1\"\n"
    );
    let (code, stderr) = run_with_config(&toml, &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("no.such.property"), "{stderr}");
}

#[test]
fn a_taken_port_stops_start_up_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (code, stderr) = run_with_config(&format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"), &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("http.listen"), "{stderr}");
}

#[test]
fn json_logs_and_clean_exit_without_any_broker() {
    let port = free_port();
    let broker = free_port();
    let config = service_config(&format!("127.0.0.1:{broker}"), "never-connects", port, "")
        .replace(
            "level = \"info,librdkafka=warn\"",
            "level = \"info\"\nformat = \"json\"",
        );
    let mut svc = Service::start(&config, port);
    wait_for(
        "the disconnected state to be logged",
        Duration::from_secs(20),
        || {
            svc.log()
                .contains("no Kafka broker reachable")
                .then_some(())
        },
    );
    let status = svc.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status:?}\n{}", svc.log());
    let log = svc.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}

/// Logs written to a file (or a pipe, as under systemd or a log shipper) carry no terminal
/// colour codes.
#[test]
fn text_logs_to_a_file_have_no_escape_codes() {
    let port = free_port();
    let broker = free_port();
    let config = service_config(&format!("127.0.0.1:{broker}"), "never-connects", port, "");
    let mut svc = Service::start(&config, port);
    wait_for(
        "the disconnected state to be logged",
        Duration::from_secs(20),
        || {
            svc.log()
                .contains("no Kafka broker reachable")
                .then_some(())
        },
    );
    let status = svc.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    let log = svc.log();
    assert!(log.contains(" WARN "), "{log}");
    assert!(!log.contains('\u{1b}'), "escape codes in {log:?}");
}
