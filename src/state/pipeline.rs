//! The pipeline as the configuration sets it up.

use crate::config::Config;
use crate::pure::decode::Decoder;
use crate::pure::limits::Limits;
use crate::pure::pipeline::*;
use crate::pure::window::Windows;

impl Pipeline {
    /// The pure processing step as configured.
    pub fn from_config(config: &Config) -> Pipeline {
        Pipeline {
            decoder: Decoder::new(&config.kpi.reporting_currency, config.currency_rates()),
            windows: {
                // Windows watched by a drop rule also keep their preceding window.
                let lengths = &config.windows.lengths;
                let previous: Vec<bool> = (0..lengths.len())
                    .map(|w| config.alerts.iter().any(|a| a.is_drop() && a.window == w))
                    .collect();
                Windows::new(lengths, config.windows.buckets, &previous)
            },
            max_future_skew_ms: config.windows.max_future_skew.as_millis() as i64,
            dedup_horizon_ms: config.dedup.horizon.as_millis() as i64,
            dedup_max_ids: config.dedup.max_ids_per_partition,
            limits: Limits {
                max_keys: config.limits.max_keys,
                max_label_bytes: config.limits.max_label_bytes,
            },
        }
    }
}
