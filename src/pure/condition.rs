//! What an alert rule compares and how: the operator, a threshold or a drop against the
//! preceding window, and the severity it pages with. Typed once when the configuration is
//! loaded; the alert engine and the generated Prometheus rules read the same values.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            _ => return None,
        })
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }

    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Lt => value < threshold,
            Op::Le => value <= threshold,
            Op::Gt => value > threshold,
            Op::Ge => value >= threshold,
        }
    }

    /// The threshold a firing alert must cross back over to resolve. Without float noise, as
    /// the generated PromQL prints it: CVR < 0.1 resolves at exactly 0.105 (21 orders on 200
    /// visits) in both, not at 0.10500000000000001 here only.
    pub fn resolve_at(self, threshold: f64, hysteresis: f64) -> f64 {
        without_noise(match self {
            Op::Lt | Op::Le => threshold + threshold.abs() * hysteresis,
            Op::Gt | Op::Ge => threshold - threshold.abs() * hysteresis,
        })
    }
}

/// For a drop rule: the share of the preceding window's value at or under which it enters,
/// and the share under which a firing alert stays (the drop less the hysteresis). Without
/// float noise, as the generated PromQL prints them.
pub fn drop_factors(fraction: f64, hysteresis: f64) -> (f64, f64) {
    (
        without_noise(1.0 - fraction),
        without_noise(1.0 - fraction * (1.0 - hysteresis)),
    )
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    Threshold {
        op: Op,
        threshold: f64,
    },
    /// Fires when the KPI fell by at least this fraction against the preceding window.
    Drop {
        fraction: f64,
    },
}

/// Rounds to 1e-9: a computed bar is then the number the PromQL prints (a relaxed guard of
/// 19, not 18.999999999999996), and a value exactly at it falls on the same side in both.
pub fn without_noise(x: f64) -> f64 {
    (x * 1e9).round() / 1e9
}

/// How urgent an alert is: its `severity` label, for Alertmanager's routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

impl Severity {
    pub fn parse(s: &str) -> Option<Severity> {
        Some(match s {
            "critical" => Severity::Critical,
            "warning" => Severity::Warning,
            "info" => Severity::Info,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
