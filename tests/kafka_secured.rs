//! Secured Kafka: SASL/SCRAM and TLS through `kafka.properties`, against a Tansu
//! that requires SCRAM, behind stunnel for TLS (Tansu 0.6.0's own TLS does not work; see
//! `Tansu::start_secured`). Secrets come from a file and from the environment, and show up in
//! no log line, no HTTP answer and no error message.

mod common;

use std::time::Duration;

use common::*;
use common::{broker::*, ledger::*, pki::*, service::*};

const CHANNELS: &[&str] = &["email", "paid_social"];
const ALICE_PASSWORD: &str = "alice-Pa55-only-in-a-file";
const BOB_PASSWORD: &str = "bob-Pa55-for-the-producer";
const WRONG_PASSWORD: &str = "wrong-Pa55-from-the-env";

fn properties_toml(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("\"{k}\" = \"{v}\"\n"))
        .collect()
}

/// The config of a service reading `tansu` as alice over SASL_SSL, with more properties.
fn secured_config(
    tansu: &Tansu,
    pki: &Pki,
    group: &str,
    port: u16,
    extra: &[(&str, &str)],
) -> String {
    let password_file = pki.dir.path().join("alice-password");
    std::fs::write(&password_file, format!("{ALICE_PASSWORD}\n")).unwrap();
    let file_ref = format!("${{file:{}}}", password_file.display());
    let ca = pki.path("ca.pem");
    let mut properties = vec![
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanisms", "SCRAM-SHA-512"),
        ("sasl.username", "${env:KAFKA_USER}"),
        ("sasl.password", file_ref.as_str()),
        ("ssl.ca.location", ca.as_str()),
    ];
    properties.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    properties.extend_from_slice(extra);
    service_config(&tansu.client_brokers(), group, port, "")
        .replace("[http]", &format!("{}[http]", properties_toml(&properties)))
}

/// Everything a user or scraper could see of the service: its log and every endpoint.
fn everything_visible(svc: &Service) -> String {
    let mut seen = svc.log();
    for path in [
        "/metrics",
        "/readyz",
        "/healthz",
        "/api/v1/kpis?window=1h",
        "/api/v1/alerts",
    ] {
        if let Ok((_, body)) = svc.get(path) {
            seen.push_str(&body);
        }
    }
    seen
}

#[test]
fn sasl_ssl_with_scram_counts_exactly_and_keeps_its_secrets() {
    let pki = Pki::new();
    let tansu = Tansu::start_secured(
        &[
            ("alice", ALICE_PASSWORD, "scram512"),
            ("bob", BOB_PASSWORD, "scram256"),
        ],
        &TOPICS,
        Some(&pki),
    );
    let port = free_port();
    // librdkafka at debug for security and configuration: its own config dump must not
    // show the password either.
    let config = secured_config(&tansu, &pki, "secured", port, &[("debug", "security,conf")])
        .replace(
            "level = \"info,librdkafka=warn\"",
            "level = \"info,librdkafka=debug\"",
        );
    // Values from the environment are treated as secrets whatever the property. librdkafka
    // masks its own sensitive properties (sasl.username, sasl.password) in the dump of
    // debug=conf; the client id it prints as is, so only ecom-pulse's redaction hides it.
    let svc = Service::spawn_with_env(
        &config.replace(
            "\"debug\"",
            "\"client.id\" = \"${env:CLIENT_ID}\"\n\"debug\"",
        ),
        port,
        &[("KAFKA_USER", "alice"), ("CLIENT_ID", "client-id-from-env")],
    );
    svc.wait_ready(Duration::from_secs(60));

    // Produced by another user, over TLS with SCRAM-SHA-256.
    let ca = pki.path("ca.pem");
    let producer = [
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanisms", "SCRAM-SHA-256"),
        ("sasl.username", "bob"),
        ("sasl.password", BOB_PASSWORD),
        ("ssl.ca.location", ca.as_str()),
    ];
    let mut traffic = Traffic::new("sec", 12, CHANNELS);
    let now = now_ms();
    produce_with(&tansu.client_brokers(), &producer, &traffic.next(3000, now));
    let expected = traffic.total();
    let m = wait_for("every event counted", Duration::from_secs(90), || {
        let m = svc.metrics();
        (counter_totals(&[&m]) == expected).then_some(m)
    });
    assert_exact(&traffic.ledger, &[&m], &["1h", "24h"]);

    let seen = everything_visible(&svc);
    assert!(seen.contains("SCRAM-SHA-512"), "the debug log ran: {seen}");
    assert!(
        !seen.contains(ALICE_PASSWORD),
        "the password leaked:\n{seen}"
    );
    assert!(
        seen.contains("client.id = [redacted]") && !seen.contains("client-id-from-env"),
        "the dump was redacted: {seen}"
    );
}

#[test]
fn a_wrong_password_or_an_untrusted_broker_is_reported_retried_and_never_quoted() {
    let pki = Pki::new();
    let tansu = Tansu::start_secured(
        &[("alice", ALICE_PASSWORD, "scram512")],
        &TOPICS,
        Some(&pki),
    );

    // The password from the environment, and wrong.
    let port = free_port();
    let config = secured_config(&tansu, &pki, "wrong-password", port, &[])
        .lines()
        .filter(|l| !l.starts_with("\"sasl.password\""))
        .collect::<Vec<_>>()
        .join("\n");
    let svc = Service::spawn_with_env(
        &config,
        port,
        &[
            (
                "ECOM_PULSE__KAFKA__PROPERTIES__SASL_PASSWORD",
                WRONG_PASSWORD,
            ),
            ("KAFKA_USER", "alice"),
        ],
    );
    wait_for(
        "the authentication failure to be logged",
        Duration::from_secs(60),
        || {
            svc.log()
                .contains("SASL authentication error")
                .then_some(())
        },
    );
    assert_eq!(svc.get("/readyz").unwrap().0, 503);
    let m = svc.metrics();
    assert_eq!(m.get("ecom_pulse_kafka_connected"), Some(0.0));
    let seen = everything_visible(&svc);
    assert!(
        !seen.contains(WRONG_PASSWORD),
        "the password leaked:\n{seen}"
    );

    // A broker whose certificate another authority signed is refused.
    let port = free_port();
    let other = pki.path("other-ca.pem");
    let config = secured_config(
        &tansu,
        &pki,
        "untrusted",
        port,
        &[("ssl.ca.location", other.as_str())],
    );
    let svc = Service::spawn_with_env(&config, port, &[("KAFKA_USER", "alice")]);
    wait_for(
        "the TLS failure to be logged",
        Duration::from_secs(60),
        || {
            svc.log()
                .contains("certificate verify failed")
                .then_some(())
        },
    );
    assert_eq!(svc.get("/readyz").unwrap().0, 503);
    assert!(!everything_visible(&svc).contains(ALICE_PASSWORD));
}

#[test]
fn an_error_that_quotes_a_secret_property_is_redacted() {
    // librdkafka quotes a value it rejects. Here the value comes from the environment, so
    // it is treated as a secret and must not reach the terminal.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[http]\nlisten = \"127.0.0.1:0\"\n[kafka.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\"sasl.mechanisms\" = \"${env:MECHANISM}\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ecom-pulse"))
        .arg("--config")
        .arg(&config)
        .env("MECHANISM", "leaky-s3cret-value")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[redacted]"), "{stderr}");
    assert!(!stderr.contains("leaky-s3cret-value"), "{stderr}");
}
