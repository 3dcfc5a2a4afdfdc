//! Faults the tests inject to see what a supervisor sees when one of the service's tasks dies
//! or hangs. Debug builds only: in a release build these are empty and nothing reads the
//! environment.
//!
//! `ECOM_PULSE_FAULT=<site>` makes the task at `<site>` panic (or, for `restore`, hang) the
//! first time it passes there once `ECOM_PULSE_FAULT_AFTER_MS` (default 0) have gone by since
//! the process first looked.

/// Panics at `site` when the environment asks for it (debug builds only).
#[cfg(debug_assertions)]
pub fn trip(site: &str) {
    if armed(site) {
        panic!("fault injected at {site} (ECOM_PULSE_FAULT)");
    }
}

/// Blocks at `site` for good when the environment asks for it, but for `stop` (debug builds
/// only): a task that never completes.
#[cfg(debug_assertions)]
pub fn hang(site: &str, stop: &dyn Fn() -> bool) {
    if armed(site) {
        tracing::warn!(site, "fault injected: hanging (ECOM_PULSE_FAULT)");
        while !stop() {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// True once the environment asks for a fault at `site` (debug builds only).
#[cfg(debug_assertions)]
pub fn armed(site: &str) -> bool {
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};
    static SET: OnceLock<Option<(String, Instant)>> = OnceLock::new();
    let set = SET.get_or_init(|| {
        let site = std::env::var("ECOM_PULSE_FAULT").ok()?;
        let after = std::env::var("ECOM_PULSE_FAULT_AFTER_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0);
        Some((site, Instant::now() + Duration::from_millis(after)))
    });
    set.as_ref()
        .is_some_and(|(armed, from)| armed == site && Instant::now() >= *from)
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn trip(_: &str) {}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hang(_: &str, _: &dyn Fn() -> bool) {}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn armed(_: &str) -> bool {
    false
}
