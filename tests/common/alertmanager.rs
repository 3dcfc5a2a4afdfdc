//! A real Alertmanager receiving the service's alerts.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::scrape::http_get;
use super::*;

/// Alertmanager's configuration when notifications do not matter: a receiver that drops them.
const BLACKHOLE: &str = "route:\n  receiver: blackhole\n  group_wait: 1s\n  group_interval: 1s\nreceivers:\n  - name: blackhole\n";

/// A real Alertmanager (Debian's prometheus-alertmanager) on its own port, no clustering.
pub struct Alertmanager {
    pub port: u16,
    _dir: tempfile::TempDir,
    _proc: Proc,
}

impl Alertmanager {
    pub fn start() -> Alertmanager {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Alertmanager {
        let am = Self::spawn(port, None, BLACKHOLE);
        am.wait_ready();
        am
    }

    /// Started with this `alertmanager.yml` (routes and receivers) instead.
    pub fn start_with_config(config_yaml: &str) -> Alertmanager {
        let am = Self::spawn(free_port(), None, config_yaml);
        am.wait_ready();
        am
    }

    /// Started with `--web.config.file` holding `web_yaml` (TLS, basic auth); the caller
    /// waits for it with the right credentials.
    pub fn start_with_web_config(web_yaml: &str) -> Alertmanager {
        Self::spawn(free_port(), Some(web_yaml), BLACKHOLE)
    }

    fn wait_ready(&self) {
        let port = self.port;
        wait_for("alertmanager to be ready", Duration::from_secs(30), || {
            http_get(port, "/-/ready").ok().filter(|(s, _)| *s == 200)
        });
    }

    fn spawn(port: u16, web_yaml: Option<&str>, config_yaml: &str) -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let web = web_yaml.map(|yaml| {
            let path = dir.path().join("web.yml");
            std::fs::write(&path, yaml).unwrap();
            format!("--web.config.file={}", path.display())
        });
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(&config, config_yaml).unwrap();
        let child = Command::new(tool(
            "prometheus-alertmanager",
            "apt-get install prometheus-alertmanager",
        ))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .args(web)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start alertmanager");
        Alertmanager {
            port,
            _dir: dir,
            _proc: Proc {
                child,
                name: "alertmanager".into(),
            },
        }
    }

    /// Active alerts, as Alertmanager's v2 API lists them.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        let (status, body) = http_get(self.port, "/api/v2/alerts").expect("alertmanager API");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("JSON")
    }
}
