//! ecom-pulse: live marketing KPIs from Kafka events, for Prometheus and Grafana.
//!
//! The modules follow the data, and the folders are layers: each imports only from the
//! layers below it (`tests/layers.rs` keeps it so).
//!
//! ```text
//!  Kafka ─► source ─► pure::decode ─► pure::dedup ─► state (per-partition ─► read ─► server ─► HTTP
//!           consumer,  JSON → Event   ids within    aggregates: pure::   metrics, (TLS,     /metrics
//!           offsets,   or a rejection the horizon   window rings, exact  JSON API, auth)    /api/v1
//!           restore                                 sums; checkpoints)   page, feed
//!                                                          │
//!                                  alert: rules over the sums ◄─┘ (pure::kpi ratios at read time)
//! ```
//!
//! From the bottom up:
//! - [`pure`]: the core, no I/O, no locks, no configuration, time passed in.
//!   [`pure::decode`] turns one message value into an event or a rejection with a reason;
//!   [`pure::dedup`] remembers event ids for a horizon of event time in bounded memory;
//!   [`pure::window`] lays out rolling windows as bucket rings; [`pure::pipeline`] is the
//!   per-message step that updates a [`pure::partition`] (its keys' [`pure::key_state`] of
//!   [`pure::cells`], its de-duplication memory, its offset); [`pure::kpi`] computes the
//!   ratios from exact sums (the formulas of docs/contract.md, "KPIs").
//!   [`pure::attribution`] shares an order's credit among the touches before it, which
//!   [`pure::touches`] keeps per visitor (neither is wired in yet).
//! - [`config`]: the typed configuration, loaded and validated once at start-up.
//! - [`state`]: the partitions shared with readers ([`state::store`]), the pipeline built from
//!   the configuration, and the checkpoint format that saves a partition's state with its
//!   offset ([`state::checkpoint`]).
//! - [`runtime`]: what every task shares: the service's own metrics ([`runtime::telemetry`]),
//!   readiness ([`runtime::health`]), rate-limited logging, task failures and the faults tests
//!   inject.
//! - [`source`]: the consumer group member (at-least-once: offsets stored after apply), the
//!   take-over of assigned partitions, the checkpoint topic, dead letters.
//! - [`alert`]: threshold and drop rules with `for`, guards and hysteresis; Alertmanager
//!   delivery.
//! - [`read`]: what readers see: the Prometheus exposition, the JSON API and its router, the
//!   live page, the KPI feed to Kafka, the Prometheus rule files.
//! - [`server`]: TLS and authentication in front of the router.
//! - [`service`]: wires it all together, runs and supervises the tasks.
//! - [`tools`]: the traffic generator and the demo.

// No `unsafe` here: the speed comes from data layout, not from unchecked code.
#![forbid(unsafe_code)]

pub mod alert;
pub mod config;
pub mod pure;
pub mod read;
pub mod runtime;
pub mod server;
pub mod service;
pub mod source;
pub mod state;
pub mod tools;

/// Wall-clock time in epoch milliseconds: the only clock the pure core is ever given.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Wall-clock time to a few milliseconds, for the per-message path.
///
/// Reading the precise clock is not free everywhere: in virtual machines whose clock source the
/// vDSO cannot read, `clock_gettime(CLOCK_REALTIME)` takes a slow path, paid per event (figures
/// in docs/performance.md). Window buckets are seconds wide, so a message's arrival time only
/// needs to be right to a few milliseconds: the kernel's coarse clock (the time at the last
/// tick, 1-10 ms old) gives that for the cost of a memory read.
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
