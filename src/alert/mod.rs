//! Alert rules and their state machine. Pure: fed snapshots and the time. How they behave is
//! in docs/alerts.md; their keys in docs/contract.md ("Alert rule keys").
//!
//! Each rule is evaluated per (campaign, channel) on its window's sums. An alert goes
//! inactive → pending (condition true) → firing (held for `for`) → resolved. Three things keep
//! it from paging people for nothing:
//!
//! - **volume guards** (`min_ad_spend`, `min_orders`, `min_visits`): a key whose window holds
//!   less is not evaluated, so a campaign with three orders cannot page anyone;
//! - **`for`**: the condition must hold that long;
//! - **hysteresis**: a firing alert resolves only once the value is past the threshold by a
//!   margin (ROAS < 2 resolves at ROAS ≥ 2.1 with the default 5 %), so a value hovering at
//!   the threshold does not flap. The guards of a firing alert get the same margin (spend ≥ 95
//!   instead of 100), so spend hovering at `min_ad_spend` does not flap it either.
//!
//! Drop rules compare the window with the preceding window of the same length: "ROAS fell by
//! 30 % hour over hour" fires when this hour's ROAS ≤ 0.7 × last hour's.
//!
//! The generated Prometheus rules (`crate::read::rules`) evaluate the same conditions on the
//! exported series, and `/metrics` has no series for a window without data. So here too a
//! window without data is not evaluated, rather than read as zero orders: otherwise
//! `orders < 1` would fire here for ever for every campaign that ended, and never in
//! Prometheus.

mod engine;
pub mod notify;
mod rule;
mod view;

pub use engine::{Alert, Engine, Phase, ResolvedReason, Transition};
pub use rule::{Check, Guards, Rule, Skip};
pub use view::AlertView;

#[cfg(test)]
mod tests;
