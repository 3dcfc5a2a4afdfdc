//! Configuration: one typed struct per section, loaded once at start-up and validated there.
//!
//! Defaults live in one place, `config/default.toml`, which is compiled into the binary and is
//! always the bottom layer; a user file (`--config`) and `ECOM_PULSE__SECTION__KEY` environment
//! variables are layered on top. Every problem is reported with the key it concerns, so a
//! wrong deployment fails at start instead of exporting wrong numbers.

mod alerts;
mod properties;
mod sections;

pub use alerts::AlertRuleConfig;
use alerts::WrittenAlertRule;
pub use properties::{KafkaProperties, MIN_REDACTED_LEN, REDACTED, Redactor};
pub use sections::*;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// The defaults, and the documentation of every key.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or a value has the wrong type; `config` names the key.
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value parsed but makes no sense.
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// The message without the lines of the file a parse error quotes: the line may hold a
    /// secret (`sasl.password = hunter2`, unquoted), and the line and column say enough.
    pub fn without_source_lines(&self) -> String {
        self.to_string()
            .lines()
            .filter(|line| {
                let t = line.trim_start();
                let quotes_source = t.split_once('|').is_some_and(|(n, _)| {
                    !n.trim().is_empty() && n.trim().bytes().all(|b| b.is_ascii_digit())
                });
                !quotes_source
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The configuration, loaded and validated once at start-up ([`Config::load`]): every value
/// that needs parsing is typed here. What loading checked is not checked again: a `Config`
/// changed in code afterwards must keep to the same rules (at least one window, a rule's
/// window among them).
#[derive(Debug, Clone)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub http: HttpConfig,
    pub windows: WindowsConfig,
    pub kpi: KpiConfig,
    pub dedup: DedupConfig,
    pub limits: LimitsConfig,
    pub checkpoint: CheckpointConfig,
    pub log: LogConfig,
    pub alerting: AlertingConfig,
    pub alertmanager: AlertmanagerConfig,
    /// Alert rules (docs/alerts.md), evaluated per (campaign, channel).
    pub alerts: Vec<AlertRuleConfig>,
}

/// The configuration as written: what serde reads, before window lengths and alert rules
/// are parsed into types (they need the other keys to be checked: the bucket count, the
/// windows a rule names).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a configuration table")]
struct Written {
    kafka: KafkaConfig,
    http: HttpConfig,
    windows: WrittenWindows,
    kpi: KpiConfig,
    dedup: DedupConfig,
    limits: LimitsConfig,
    checkpoint: CheckpointConfig,
    log: LogConfig,
    alerting: AlertingConfig,
    alertmanager: AlertmanagerConfig,
    #[serde(default)]
    alerts: Vec<WrittenAlertRule>,
}

impl Config {
    /// Loads defaults, then `file` (if any), then the environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, None)
    }

    /// Like [`Config::load`], with the environment given explicitly (tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: Option<BTreeMap<String, String>>,
    ) -> Result<Config, ConfigError> {
        let mut layers: Vec<Box<dyn config::Source + Send + Sync>> = Vec::new();
        if let Some(path) = file {
            layers.push(Box::new(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            ));
        }
        Self::load_layers(layers, env)
    }

    /// The defaults with `text` (TOML) on top, and no environment: a configuration written
    /// in code, as tests and embedders have it.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let layer = config::File::from_str(text, config::FileFormat::Toml);
        Self::load_layers(vec![Box::new(layer)], Some(BTreeMap::new()))
    }

    fn load_layers(
        layers: Vec<Box<dyn config::Source + Send + Sync>>,
        env: Option<BTreeMap<String, String>>,
    ) -> Result<Config, ConfigError> {
        let builder = config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULT_TOML,
                config::FileFormat::Toml,
            ))
            .add_source(layers);
        let mut environment = config::Environment::with_prefix("ECOM_PULSE")
            .prefix_separator("__")
            .separator("__")
            // Values stay text (a group id "0042" must not become 42); typed fields parse it.
            .try_parsing(false);
        if let Some(vars) = &env {
            environment = environment.source(Some(vars.clone().into_iter().collect()));
        }
        let mut written: Written = builder.add_source(environment).build()?.try_deserialize()?;
        written.kafka.properties.resolve_references(env.as_ref())?;
        let windows = WindowsConfig::from_written(written.windows)?;
        let alerts = written
            .alerts
            .into_iter()
            .enumerate()
            .map(|(i, rule)| AlertRuleConfig::from_written(i, rule, &windows.lengths))
            .collect::<Result<Vec<_>, _>>()?;
        let config = Config {
            kafka: written.kafka,
            http: written.http,
            windows,
            kpi: written.kpi,
            dedup: written.dedup,
            limits: written.limits,
            checkpoint: written.checkpoint,
            log: written.log,
            alerting: written.alerting,
            alertmanager: written.alertmanager,
            alerts,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what types cannot express. Called once by `load`.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.kafka.brokers.trim().is_empty() {
            return Err(invalid("kafka.brokers", "must name at least one broker"));
        }
        if self.kafka.group_id.trim().is_empty() {
            return Err(invalid("kafka.group_id", "must not be empty"));
        }
        if self.kafka.topics.is_empty() {
            return Err(invalid("kafka.topics", "must list at least one topic"));
        }
        for (i, topic) in self.kafka.topics.iter().enumerate() {
            if topic.trim().is_empty() || topic.contains(char::is_whitespace) {
                return Err(invalid(
                    format!("kafka.topics[{i}]"),
                    format!("{topic:?} is not a valid topic name"),
                ));
            }
        }
        if self.kafka.consumer_nice > 19 {
            return Err(invalid(
                "kafka.consumer_nice",
                format!("must be between 0 and 19, got {}", self.kafka.consumer_nice),
            ));
        }
        if !is_currency_code(&self.kpi.reporting_currency) {
            return Err(invalid(
                "kpi.reporting_currency",
                format!(
                    "{:?} is not an ISO 4217 code (three capital letters)",
                    self.kpi.reporting_currency
                ),
            ));
        }
        for (key, value) in [
            ("kpi.purchases_per_year", self.kpi.purchases_per_year),
            ("kpi.lifetime_years", self.kpi.lifetime_years),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(invalid(
                    key,
                    format!("must be a positive number, got {value}"),
                ));
            }
        }
        for (code, rate) in &self.kpi.currency_rates {
            let key = format!("kpi.currency_rates.{code}");
            if !is_currency_code(&code.to_ascii_uppercase()) {
                return Err(invalid(key, "is not an ISO 4217 code (three letters)"));
            }
            if !(rate.is_finite() && *rate > 0.0) {
                return Err(invalid(
                    key,
                    format!("must be a positive number, got {rate}"),
                ));
            }
        }
        if self.dedup.horizon < Duration::from_secs(1)
            || self.dedup.horizon > Duration::from_secs(31 * 86_400)
        {
            return Err(invalid("dedup.horizon", "must be between 1s and 31d"));
        }
        // Runs of ids are indexed with u32s (see dedup::run).
        if !(1000..=1 << 31).contains(&self.dedup.max_ids_per_partition) {
            return Err(invalid(
                "dedup.max_ids_per_partition",
                format!(
                    "must be between 1000 and 2147483648, got {}",
                    self.dedup.max_ids_per_partition
                ),
            ));
        }
        if self.limits.max_keys == 0 {
            return Err(invalid("limits.max_keys", "must be at least 1"));
        }
        if !(16..=1024).contains(&self.limits.max_label_bytes) {
            return Err(invalid(
                "limits.max_label_bytes",
                format!(
                    "must be between 16 and 1024, got {}",
                    self.limits.max_label_bytes
                ),
            ));
        }
        if self.checkpoint.interval < Duration::from_millis(100) {
            return Err(invalid("checkpoint.interval", "must be at least 100ms"));
        }
        if !(1..=10_000).contains(&self.checkpoint.partitions) {
            return Err(invalid(
                "checkpoint.partitions",
                "must be between 1 and 10000",
            ));
        }
        if self.checkpoint.replication_factor == 0 || self.checkpoint.replication_factor < -1 {
            return Err(invalid(
                "checkpoint.replication_factor",
                "must be -1 (broker default) or positive",
            ));
        }
        if self
            .kafka
            .topics
            .contains(&self.checkpoint.topic_name(&self.kafka.group_id))
        {
            return Err(invalid(
                "checkpoint.topic",
                "must not be one of kafka.topics",
            ));
        }
        for (key, d, min) in [
            (
                "alerting.evaluation_interval",
                self.alerting.evaluation_interval,
                100,
            ),
            (
                "alerting.snapshot_interval",
                self.alerting.snapshot_interval,
                100,
            ),
            (
                "alertmanager.resend_interval",
                self.alertmanager.resend_interval,
                1000,
            ),
            ("alertmanager.timeout", self.alertmanager.timeout, 100),
        ] {
            if d < Duration::from_millis(min) {
                return Err(invalid(key, format!("must be at least {min}ms")));
            }
        }
        if !self.alertmanager.url.is_empty()
            && !self.alertmanager.url.starts_with("http://")
            && !self.alertmanager.url.starts_with("https://")
        {
            return Err(invalid(
                "alertmanager.url",
                "must start with http:// or https://",
            ));
        }
        let am = &self.alertmanager;
        if am.cert_file.is_empty() != am.key_file.is_empty() {
            return Err(invalid(
                "alertmanager.cert_file",
                "cert_file and key_file go together",
            ));
        }
        if am.basic_auth_username.is_empty() != am.basic_auth_password_file.is_empty() {
            return Err(invalid(
                "alertmanager.basic_auth_password_file",
                "basic_auth_username and basic_auth_password_file go together",
            ));
        }
        if !am.basic_auth_username.is_empty() && !am.bearer_token_file.is_empty() {
            return Err(invalid(
                "alertmanager.bearer_token_file",
                "use basic auth or a bearer token, not both",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, rule) in self.alerts.iter().enumerate() {
            if !names.insert((rule.name.as_str(), rule.window)) {
                return Err(invalid(
                    format!("alerts[{i}].name"),
                    format!(
                        "{} is defined twice for window {}",
                        rule.name, self.windows.lengths[rule.window].label
                    ),
                ));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", e.to_string()));
        }
        Ok(())
    }

    /// Currency rates with upper-case codes (environment keys arrive in lower case).
    pub fn currency_rates(&self) -> BTreeMap<String, f64> {
        self.kpi
            .currency_rates
            .iter()
            .map(|(code, rate)| (code.to_ascii_uppercase(), *rate))
            .collect()
    }
}

fn is_currency_code(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// A list from a file, or comma-separated text from the environment.
fn string_list<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrText {
        List(Vec<String>),
        Text(String),
    }
    Ok(match ListOrText::deserialize(de)? {
        ListOrText::List(list) => list,
        ListOrText::Text(text) => text
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    })
}

/// Durations as humantime strings ("15m"), for serde.
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(de)?;
        humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration like \"90s\" or \"15m\" ({e})"
            ))
        })
    }
}

#[cfg(test)]
mod tests;
