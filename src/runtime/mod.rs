//! What every running task shares: the service's own metrics and readiness, task failures,
//! and the faults tests inject.

pub mod fault;
pub mod task;
pub mod telemetry;
