//! A real Prometheus scraping the services under test, and promtool checking exposition text.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::scrape::http_get;
use super::*;

/// Runs `promtool check metrics` on an exposition and requires no findings.
pub fn promtool_check(text: &str) {
    let mut child = Command::new(tool("promtool", "apt-get install prometheus"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool check metrics: {findings}"
    );
}

/// A real Prometheus (Debian's `prometheus`) scraping `targets` every second and evaluating
/// `rule_files` every second.
pub struct Prometheus {
    pub port: u16,
    _dir: tempfile::TempDir,
    _proc: Proc,
}

impl Prometheus {
    pub fn start(targets: &[String], rule_files: &[&str]) -> Prometheus {
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        Self::start_with(
            &format!(
                "  - job_name: ecom-pulse\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
            rule_files,
        )
    }

    /// Like `start`, with the `scrape_configs` list written out (YAML, indented by two).
    pub fn start_with(scrape_configs: &str, rule_files: &[&str]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let rules: String = rule_files.iter().map(|f| format!("  - {f}\n")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{rules}scrape_configs:\n{scrape_configs}"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(tool("prometheus", "apt-get install prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            port,
            _dir: dir,
            _proc: Proc {
                child,
                name: "prometheus".into(),
            },
        };
        wait_for("prometheus to be ready", Duration::from_secs(30), || {
            http_get(port, "/-/ready").ok().filter(|(s, _)| *s == 200)
        });
        p
    }

    /// An instant query's result vector (empty if none), or the error Prometheus gave.
    pub fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        self.query_params(promql, "")
    }

    /// An instant query evaluated at `time` (Unix seconds) instead of now.
    pub fn query_at(&self, promql: &str, time: f64) -> Result<Vec<serde_json::Value>, String> {
        self.query_params(promql, &format!("&time={time:.3}"))
    }

    fn query_params(&self, promql: &str, params: &str) -> Result<Vec<serde_json::Value>, String> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = http_get(self.port, &format!("/api/v1/query?query={encoded}{params}"))
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}
