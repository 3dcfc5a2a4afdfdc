//! The `ecom-pulse` binary as a child process: configured, started, scraped, stopped or killed.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::scrape::{Metrics, http_get};
use super::*;

/// The `ecom-pulse` binary under test, with its config file and HTTP port.
pub struct Service {
    pub http_port: u16,
    pub dir: tempfile::TempDir,
    pub proc: Proc,
}

/// Minimal config for a test service; `extra` is appended (more TOML sections).
pub fn service_config(brokers: &str, group: &str, http_port: u16, extra: &str) -> String {
    format!(
        r#"[kafka]
brokers = "{brokers}"
group_id = "{group}"
topics = ["visits", "orders", "ad-spend"]
[kafka.properties]
"session.timeout.ms" = "6000"
"topic.metadata.refresh.interval.ms" = "1000"
[http]
listen = "127.0.0.1:{http_port}"
[log]
level = "info,librdkafka=warn"
{extra}
"#
    )
}

impl Service {
    pub fn start(config_toml: &str, http_port: u16) -> Service {
        let s = Service::spawn(config_toml, http_port);
        wait_for(
            "ecom-pulse to serve /healthz",
            Duration::from_secs(30),
            || s.get("/healthz").ok().filter(|(status, _)| *status == 200),
        );
        s
    }

    /// Starts the process without waiting for it to serve (for servers that plain HTTP
    /// cannot probe).
    pub fn spawn(config_toml: &str, http_port: u16) -> Service {
        Service::spawn_with_env(config_toml, http_port, &[])
    }

    /// Like `spawn`, with environment variables added.
    pub fn spawn_with_env(config_toml: &str, http_port: u16, env: &[(&str, &str)]) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ecom-pulse.toml");
        std::fs::write(&path, config_toml).unwrap();
        let log = std::fs::File::create(dir.path().join("service.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ecom-pulse"))
            .arg("--config")
            .arg(&path)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ecom-pulse");
        Service {
            http_port,
            dir,
            proc: Proc {
                child,
                name: "ecom-pulse".into(),
            },
        }
    }

    /// GET `path`: (status, body).
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.http_port, path)
    }

    pub fn metrics(&self) -> Metrics {
        let (status, body) = self.get("/metrics").expect("scrape");
        assert_eq!(status, 200, "{body}");
        Metrics::parse(&body)
    }

    /// Waits for /readyz to answer 200; on timeout, panics with its last answer and the log.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = self.get("/readyz");
            if matches!(answer, Ok((200, _))) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "not ready after {timeout:?}: {answer:?}\n--- service log ---\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = self.proc.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        wait_for("ecom-pulse to exit", timeout, || {
            self.proc.child.try_wait().unwrap()
        })
    }
}

/// Sends SIGKILL (no shutdown, no final checkpoint) and reaps the process.
pub fn kill9(svc: &mut Service) {
    svc.proc.child.kill().unwrap();
    svc.proc.child.wait().unwrap();
}
