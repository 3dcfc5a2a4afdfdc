//! ecom-pulse: live marketing KPIs from Kafka events, for Prometheus and Grafana.
//!
//! The modules follow the data:
//!
//! ```text
//!  Kafka ──► source ──► decode ──► aggregate ──────────────► export
//!  (topics)  consumer,  JSON →     per-partition state:      /metrics  (Prometheus text)
//!            offsets,   Event,     dedup + window rings      /api/v1/kpis (JSON)
//!            rebalance  rejection  (window), exact sums      /healthz, /readyz
//!                       reasons         │
//!                                       └─► kpi: ratios from sums, at read time
//! ```
//!
//! - [`source`]: the consumer group member, at-least-once (offsets stored after apply).
//! - [`decode`]: one message value → [`decode::Event`] or a [`decode::Rejection`] with a reason.
//! - [`dedup`]: event ids remembered for a horizon of event time, in bounded memory.
//! - [`window`]: rolling windows as bucket rings; pure, time passed in.
//! - [`aggregate`]: the per-message step ([`aggregate::Pipeline`]) and the per-partition
//!   state it updates ([`aggregate::Store`]).
//! - [`kpi`]: SPEC §1 formulas over exact sums.
//! - [`export`]: the Prometheus collector and the HTTP router.
//! - [`telemetry`]: the service's own metrics, readiness and rate-limited logs.
//! - [`checkpoint`]: a partition's state and offset, saved together and restored on assignment.
//! - [`alert`]: threshold and drop rules with `for`, guards and hysteresis; Alertmanager
//!   delivery. [`rules`] renders the same rules for Prometheus.
//! - [`service`] wires these together; [`generate`] and [`demo`] make traffic to show it.
//!
//! Everything from `decode` to `kpi` is pure and synchronous; I/O lives in `source`,
//! `export` and `service`.

// No `unsafe` here: the speed comes from data layout, not from unchecked code.
#![forbid(unsafe_code)]

pub mod aggregate;
pub mod alert;
pub mod checkpoint;
pub mod config;
pub mod deadletter;
pub mod decode;
pub mod dedup;
pub mod demo;
pub mod export;
pub mod fault;
pub mod generate;
pub mod kafka;
pub mod kpi;
pub mod rules;
pub mod service;
pub mod source;
pub mod task;
pub mod telemetry;
pub mod window;

/// Wall-clock time in epoch milliseconds: the only clock the pure core is ever given.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Wall-clock time to a few milliseconds, for the per-message path.
///
/// Reading the precise clock is not free everywhere: in virtual machines whose clock source
/// the vDSO cannot read, `clock_gettime(CLOCK_REALTIME)` takes a slow path (perf, on this
/// project's VM: 34 ns a read, several per cent of the service's CPU per event). Window buckets are
/// seconds wide, so a message's arrival time only needs to be right to a few milliseconds:
/// the kernel's coarse clock (the time at the last tick, 1-10 ms old) gives that for the cost
/// of a memory read.
#[cfg(target_os = "linux")]
// The conversions are identities on 64-bit targets; on some 32-bit ones `tv_nsec` (and
// `tv_sec`) are narrower than i64.
#[allow(clippy::useless_conversion)]
pub fn coarse_now_ms() -> i64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    i64::from(t.tv_sec) * 1000 + i64::from(t.tv_nsec) / 1_000_000
}

/// Elsewhere, the precise clock.
#[cfg(not(target_os = "linux"))]
pub fn coarse_now_ms() -> i64 {
    now_ms()
}
