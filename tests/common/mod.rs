//! Shared harness for the integration tests, one fixture per file: a real Tansu broker
//! (`broker`), the `ecom-pulse` binary (`service`), an HTTP client and the exposition it reads
//! (`scrape`), the service in-process on the mock cluster (`inprocess`), a real Prometheus and
//! promtool (`prometheus`), a real Alertmanager (`alertmanager`), the traffic ledger
//! (`ledger`), certificates (`pki`), and the event builders every test uses (`events`). Every
//! process started here is killed when its guard drops, so a failing test leaves nothing
//! behind.
//!
//! Missing tools are failures, not skips: `scripts/test` installs them.

// Each file in tests/ is a crate of its own and uses a part of this harness; the rest is
// dead code to it.
#![allow(dead_code)]

pub mod alertmanager;
pub mod broker;
pub mod events;
pub mod inprocess;
pub mod ledger;
pub mod pki;
pub mod prometheus;
pub mod scrape;
pub mod service;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

pub const TOPICS: [&str; 3] = ["visits", "orders", "ad-spend"];

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Finds a tool on PATH or in ~/.cargo/bin; panics with the install hint if it is missing.
pub fn tool(name: &str, hint: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed; {hint} (scripts/test does this)"))
}

/// The one way tests wait for a condition: polls `check` every 50 ms until it returns
/// `Some`, for at most `timeout`. `None` when it never held, for a caller whose failure
/// message needs what it last saw; [`wait_for`] panics itself.
pub fn poll<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Like [`poll`], panicking after `timeout` with `what` it waited for.
pub fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    poll(timeout, check).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Kills the child when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn now_ms() -> i64 {
    ecom_pulse::now_ms()
}

/// RFC 3339 text of an epoch-millisecond time.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}
