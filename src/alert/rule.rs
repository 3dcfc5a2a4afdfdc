//! One alert rule as the engine evaluates it: its condition on a window's sums, its volume
//! guards, and what one evaluation of it found.

use crate::config::AlertRuleConfig;
use crate::pure::condition::{Condition, Severity, drop_factors, without_noise};
use crate::pure::kpi::{ClvAssumptions, Kpi, Sums};
use crate::pure::window::Windows;
use std::sync::Arc;

/// A validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub kpi: Kpi,
    pub condition: Condition,
    /// Index into the configured windows.
    pub window: usize,
    pub window_label: Arc<str>,
    /// The window's length.
    pub window_ms: i64,
    pub for_ms: i64,
    pub severity: Severity,
    pub min_ad_spend: f64,
    pub min_orders: u64,
    pub min_visits: u64,
    pub hysteresis: f64,
}

impl Rule {
    /// The engine's form of a configured rule.
    pub fn from_config(c: &AlertRuleConfig, windows: &Windows) -> Rule {
        Rule {
            name: c.name.clone(),
            kpi: c.kpi,
            condition: c.condition,
            window: c.window,
            window_label: windows.specs()[c.window].label.clone(),
            window_ms: windows.specs()[c.window].length_ms,
            for_ms: c.for_.as_millis() as i64,
            severity: c.severity,
            min_ad_spend: c.min_ad_spend,
            min_orders: c.min_orders,
            min_visits: c.min_visits,
            hysteresis: c.hysteresis,
        }
    }

    /// The volume a window must hold for the rule to be evaluated on it. A firing alert's
    /// guards are relaxed by the hysteresis, like its threshold, so that spend wobbling around
    /// `min_ad_spend` does not resolve and re-fire it; an alert not firing yet needs the full
    /// amount, so a guard still means "enough volume to judge" before anyone is paged.
    pub fn guards(&self, firing: bool) -> Guards {
        let bar = |min: f64| {
            if firing {
                without_noise(min * (1.0 - self.hysteresis))
            } else {
                min
            }
        };
        Guards {
            ad_spend: bar(self.min_ad_spend),
            orders: bar(self.min_orders as f64),
            visits: bar(self.min_visits as f64),
        }
    }

    /// Evaluates the rule on one key's window (and preceding window, for drops). `firing`
    /// says whether the rule's alert for the key is firing now: it relaxes the guards.
    pub fn check(
        &self,
        current: &Sums,
        previous: &Sums,
        clv: &ClvAssumptions,
        firing: bool,
    ) -> Check {
        let drop = matches!(self.condition, Condition::Drop { .. });
        // An empty window has no series in /metrics, so the generated PromQL cannot fire on
        // it; reading it as zero orders here would fire `orders < 1` for ever once a
        // campaign ended.
        if current.is_empty() || (drop && previous.is_empty()) {
            return Check::NotEvaluated(Skip::NoData);
        }
        let guards = self.guards(firing);
        if !guards.pass(current) || (drop && !guards.pass(previous)) {
            return Check::NotEvaluated(Skip::Guard);
        }
        let Some(value) = self.kpi.of(current, &current.kpis(clv)) else {
            return Check::NotEvaluated(Skip::NoData);
        };
        match self.condition {
            Condition::Threshold { op, threshold } => Check::Value {
                value,
                threshold,
                breached: op.holds(value, threshold),
                holds: op.holds(value, op.resolve_at(threshold, self.hysteresis)),
            },
            Condition::Drop { fraction } => match self.kpi.of(previous, &previous.kpis(clv)) {
                Some(before) if before > 0.0 => {
                    let (enter, stay) = drop_factors(fraction, self.hysteresis);
                    let threshold = before * enter;
                    Check::Value {
                        value,
                        threshold,
                        breached: value <= threshold,
                        holds: value <= before * stay,
                    }
                }
                // Nothing to fall from (the PromQL asks for a positive preceding value too).
                _ => Check::NotEvaluated(Skip::NoData),
            },
        }
    }

    /// Human description of the condition, for annotations and logs.
    pub fn describe(&self) -> String {
        match self.condition {
            Condition::Threshold { op, threshold } => {
                format!(
                    "{} {} {} over {}",
                    self.kpi.name(),
                    op.symbol(),
                    threshold,
                    self.window_label
                )
            }
            Condition::Drop { fraction } => format!(
                "{} fell by {:.0} % or more against the preceding {}",
                self.kpi.name(),
                fraction * 100.0,
                self.window_label
            ),
        }
    }
}

/// The least volume a window must hold for a rule to be evaluated on it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guards {
    pub ad_spend: f64,
    pub orders: f64,
    pub visits: f64,
}

impl Guards {
    fn pass(&self, s: &Sums) -> bool {
        s.ad_spend() >= self.ad_spend
            && s.orders as f64 >= self.orders
            && s.visits as f64 >= self.visits
    }
}

/// Why a rule was not evaluated on a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The window (or, for a drop, the preceding one) is empty, or the KPI has no value
    /// there (a zero denominator): where PromQL has no series.
    NoData,
    /// A volume guard is not met.
    Guard,
}

/// The result of evaluating a rule on one key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Check {
    /// No data or guards not met: as if the condition were false.
    NotEvaluated(Skip),
    Value {
        value: f64,
        /// The value compared with (for drops: the preceding window's value × (1 − drop)).
        threshold: f64,
        /// The condition is true: an inactive alert becomes pending.
        breached: bool,
        /// The condition with hysteresis: a firing alert stays firing.
        holds: bool,
    },
}
