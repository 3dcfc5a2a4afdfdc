//! `[[alerts]]`: the alert rules as written, and parsed into types once, at load.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, humantime_serde, invalid};
use crate::pure::condition::{Condition, Op, Severity};
use crate::pure::kpi::Kpi;
use crate::pure::window::WindowLength;

/// One `[[alerts]]` rule (docs/alerts.md), typed.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRuleConfig {
    /// CamelCase; becomes `alertname`.
    pub name: String,
    pub kpi: Kpi,
    /// A threshold (`op` and `threshold`), or a drop against the preceding window (`drop`).
    pub condition: Condition,
    /// Index into `windows.lengths`.
    pub window: usize,
    /// How long the condition must hold before firing.
    pub for_: Duration,
    pub severity: Severity,
    /// Volume guards: the rule is not evaluated while the window holds less than this.
    pub min_ad_spend: f64,
    pub min_orders: u64,
    pub min_visits: u64,
    /// A firing alert resolves only once the value is this fraction past the threshold
    /// (e.g. ROAS back above 2 x 1.05), and its guards are relaxed by the same fraction
    /// (spend down to 100 x 0.95), so it flaps around neither.
    pub hysteresis: f64,
}

/// One `[[alerts]]` rule as written.
#[derive(Deserialize)]
// serde's messages say what was expected in the file's words, not the struct's name.
#[serde(deny_unknown_fields, expecting = "an [[alerts]] rule")]
pub(super) struct WrittenAlertRule {
    /// CamelCase; becomes `alertname`.
    name: String,
    /// cvr | aov | cac | clv | roas | clv_cac | gmv | ad_spend | visits | orders | new_customers
    kpi: String,
    /// `<`, `<=`, `>` or `>=` with `threshold`, for threshold rules.
    op: Option<String>,
    threshold: Option<f64>,
    /// For drop rules: fires when the KPI fell by at least this fraction against the
    /// preceding window of the same length.
    drop: Option<f64>,
    window: String,
    /// How long the condition must hold before firing.
    #[serde(rename = "for", with = "humantime_serde", default)]
    for_: Duration,
    /// critical | warning | info
    severity: String,
    /// Volume guards: the rule is not evaluated while the window holds less than this.
    #[serde(default)]
    min_ad_spend: f64,
    #[serde(default)]
    min_orders: u64,
    #[serde(default)]
    min_visits: u64,
    /// A firing alert resolves only once the value is this fraction past the threshold
    /// (e.g. ROAS back above 2 x 1.05), and its guards are relaxed by the same fraction
    /// (spend down to 100 x 0.95), so it flaps around neither.
    #[serde(default = "default_hysteresis")]
    hysteresis: f64,
}

impl AlertRuleConfig {
    /// Parses and checks the `i`th `[[alerts]]` rule against the configured windows.
    pub(super) fn from_written(
        i: usize,
        rule: WrittenAlertRule,
        windows: &[WindowLength],
    ) -> Result<AlertRuleConfig, ConfigError> {
        let key = |field: &str| format!("alerts[{i}].{field}");
        let camel = rule
            .name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_uppercase())
            && rule.name.chars().all(|c| c.is_ascii_alphanumeric());
        if !camel {
            return Err(invalid(
                key("name"),
                format!("{:?} is not CamelCase", rule.name),
            ));
        }
        let kpi = Kpi::parse(&rule.kpi).ok_or_else(|| {
            let names: Vec<&str> = Kpi::ALL.iter().map(|k| k.name()).collect();
            invalid(
                key("kpi"),
                format!("{:?} is not one of {}", rule.kpi, names.join(", ")),
            )
        })?;
        let window = windows
            .iter()
            .position(|w| w.label == rule.window)
            .ok_or_else(|| {
                invalid(
                    key("window"),
                    format!(
                        "{:?} is not in windows.lengths; give [[alerts]] rules for your windows, or `alerts = []`",
                        rule.window
                    ),
                )
            })?;
        let severity = Severity::parse(&rule.severity)
            .ok_or_else(|| invalid(key("severity"), "must be critical, warning or info"))?;
        let condition = match (&rule.op, rule.threshold, rule.drop) {
            (Some(op), Some(threshold), None) => {
                let op = Op::parse(op).ok_or_else(|| {
                    invalid(key("op"), format!("{op:?} is not one of <, <=, >, >="))
                })?;
                if !threshold.is_finite() {
                    return Err(invalid(key("threshold"), "must be a finite number"));
                }
                Condition::Threshold { op, threshold }
            }
            (None, None, Some(fraction)) => {
                if !(fraction > 0.0 && fraction < 1.0) {
                    return Err(invalid(
                        key("drop"),
                        "must be a fraction between 0 and 1 (0.3 is a 30 % drop)",
                    ));
                }
                Condition::Drop { fraction }
            }
            _ => {
                return Err(invalid(
                    key("op"),
                    "a rule has either `op` and `threshold`, or `drop`",
                ));
            }
        };
        if !(rule.hysteresis.is_finite() && (0.0..1.0).contains(&rule.hysteresis)) {
            return Err(invalid(
                key("hysteresis"),
                "must be a fraction between 0 and 1",
            ));
        }
        if !(rule.min_ad_spend.is_finite() && rule.min_ad_spend >= 0.0) {
            return Err(invalid(key("min_ad_spend"), "must be 0 or more"));
        }
        Ok(AlertRuleConfig {
            name: rule.name,
            kpi,
            condition,
            window,
            for_: rule.for_,
            severity,
            min_ad_spend: rule.min_ad_spend,
            min_orders: rule.min_orders,
            min_visits: rule.min_visits,
            hysteresis: rule.hysteresis,
        })
    }

    /// Whether the rule compares its window with the preceding one, which must then be kept.
    pub fn is_drop(&self) -> bool {
        matches!(self.condition, Condition::Drop { .. })
    }
}

pub(super) fn default_hysteresis() -> f64 {
    0.05
}
