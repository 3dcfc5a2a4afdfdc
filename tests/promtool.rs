//! The shipped Prometheus rules are valid and their unit tests pass, with the real promtool.

mod common;

use std::process::Command;

use common::tool;

fn promtool(args: &[&str]) -> String {
    let out = Command::new(tool("promtool", "apt-get install prometheus"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus"))
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn shipped_rules_pass_promtool_check_rules() {
    let text = promtool(&["check", "rules", "ecom-pulse.rules.yml"]);
    assert!(text.contains("SUCCESS: 55 rules found"), "{text}");
}

#[test]
fn shipped_rules_pass_their_promtool_unit_tests() {
    let text = promtool(&["test", "rules", "ecom-pulse.rules.test.yml"]);
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn the_rules_command_prints_what_is_shipped() {
    let out = Command::new(env!("CARGO_BIN_EXE_ecom-pulse"))
        .arg("rules")
        .env_remove("ECOM_PULSE_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success());
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/ecom-pulse.rules.yml"
    ))
    .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), shipped);
}
