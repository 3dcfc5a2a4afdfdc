//! What every running task shares: the service's own metrics, readiness, rate-limited logging,
//! task failures, and the faults tests inject.

pub mod fault;
pub mod health;
pub mod rate_limit;
pub mod task;
pub mod telemetry;
