//! The configuration's sections, one typed struct each; every field documented here and its
//! default in `config/default.toml`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::properties::{KafkaProperties, flatten_properties};
use super::{ConfigError, humantime_serde, invalid, string_list};
use crate::pure::window::WindowLength;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [kafka] table")]
pub struct KafkaConfig {
    /// librdkafka `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group shared by all replicas.
    pub group_id: String,
    /// Topics consumed; any of them may carry any event type.
    #[serde(deserialize_with = "string_list")]
    pub topics: Vec<String>,
    /// Topic for alert transitions; empty: none.
    pub alerts_topic: String,
    /// Topic for KPI snapshots; empty: none.
    pub kpis_topic: String,
    /// Topic every rejected event goes to, unchanged, once; empty: none.
    pub dead_letter_topic: String,
    /// Nice value of the consuming thread, 0..=19 (Linux; ignored elsewhere): how far it
    /// yields the CPU to serving while it catches up.
    pub consumer_nice: u8,
    /// librdkafka properties, flattened to dotted names; applied after ecom-pulse's own.
    /// Values may be `${file:PATH}` or `${env:NAME}` (resolved at load).
    #[serde(default, deserialize_with = "flatten_properties")]
    pub properties: KafkaProperties,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [http] table")]
pub struct HttpConfig {
    /// Listen address of the HTTP endpoints.
    pub listen: SocketAddr,
    /// A web config file in Prometheus' exporter-toolkit format (TLS, basic auth, bearer
    /// tokens); empty: plain HTTP, no authentication.
    pub web_config_file: String,
    /// Whether `/healthz` answers without credentials when the web config asks for them.
    pub open_healthz: bool,
}

#[derive(Debug, Clone)]
pub struct WindowsConfig {
    /// Window lengths in configuration order, each label also the value of the `window`
    /// label.
    pub lengths: Vec<WindowLength>,
    /// Buckets per window: the resolution of the trailing edge.
    pub buckets: u32,
    /// How far ahead of the wall clock an event may be stamped and still be accepted.
    pub max_future_skew: Duration,
}

/// `[windows]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [windows] table")]
pub(super) struct WrittenWindows {
    #[serde(deserialize_with = "string_list")]
    lengths: Vec<String>,
    buckets: u32,
    #[serde(with = "humantime_serde")]
    max_future_skew: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [kpi] table")]
pub struct KpiConfig {
    /// ISO 4217 code all amounts are converted to.
    pub reporting_currency: String,
    /// CLV assumption: purchases per customer per year.
    pub purchases_per_year: f64,
    /// CLV assumption: customer lifetime in years.
    pub lifetime_years: f64,
    /// Reporting-currency units per unit of each other currency.
    #[serde(default)]
    pub currency_rates: BTreeMap<String, f64>,
}

/// Cardinality governance: what one noisy producer can cost.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [limits] table")]
pub struct LimitsConfig {
    /// (campaign, channel) keys held per input partition; events of further new keys are
    /// counted under campaign "(other)".
    pub max_keys: usize,
    /// Longest campaign or channel name kept, in bytes; longer ones are cut (at a character
    /// boundary).
    pub max_label_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [dedup] table")]
pub struct DedupConfig {
    /// Event-time span within which a repeated event id is a duplicate.
    #[serde(with = "humantime_serde")]
    pub horizon: Duration,
    /// Memory bound on remembered ids, per partition.
    pub max_ids_per_partition: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [checkpoint] table")]
pub struct CheckpointConfig {
    /// Compacted topic holding per-partition checkpoints; empty means `<group_id>-checkpoints`.
    pub topic: String,
    /// How often each partition's state is saved; bounds the replay after a crash.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Partitions when ecom-pulse creates the topic. Never change it afterwards.
    pub partitions: i32,
    /// Replication factor when ecom-pulse creates the topic; -1 is the broker's default.
    pub replication_factor: i32,
}

impl CheckpointConfig {
    pub fn topic_name(&self, group_id: &str) -> String {
        if self.topic.is_empty() {
            format!("{group_id}-checkpoints")
        } else {
            self.topic.clone()
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [alerting] table")]
pub struct AlertingConfig {
    /// How often every rule is evaluated for every key.
    #[serde(with = "humantime_serde")]
    pub evaluation_interval: Duration,
    /// How often KPI snapshots go to `kafka.kpis_topic`.
    #[serde(with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// Base of the links in alerts (`generatorURL`); empty: `http://<http.listen>`.
    pub external_url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [alertmanager] table")]
pub struct AlertmanagerConfig {
    /// Alertmanager base URL; empty disables pushing.
    pub url: String,
    /// Firing alerts are sent again this often (Alertmanager forgets alerts not re-sent).
    #[serde(with = "humantime_serde")]
    pub resend_interval: Duration,
    /// Per request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// PEM file of the authority that signed Alertmanager's certificate, trusted besides the
    /// system's.
    pub ca_file: String,
    /// Client certificate and its key (PEM), for an Alertmanager that requires one.
    pub cert_file: String,
    pub key_file: String,
    /// Basic auth: the user, and a file holding the password (read at every push).
    pub basic_auth_username: String,
    pub basic_auth_password_file: String,
    /// A file holding a bearer token (read at every push).
    pub bearer_token_file: String,
}

impl WindowsConfig {
    /// Parses and checks `[windows]`: each length once, here.
    pub(super) fn from_written(w: WrittenWindows) -> Result<WindowsConfig, ConfigError> {
        if w.buckets == 0 || w.buckets > 3600 {
            return Err(invalid(
                "windows.buckets",
                format!("must be between 1 and 3600, got {}", w.buckets),
            ));
        }
        if w.lengths.is_empty() || w.lengths.len() > crate::pure::window::MAX_WINDOWS {
            return Err(invalid(
                "windows.lengths",
                format!(
                    "must list between 1 and {} windows",
                    crate::pure::window::MAX_WINDOWS
                ),
            ));
        }
        let mut lengths: Vec<WindowLength> = Vec::new();
        for (i, label) in w.lengths.iter().enumerate() {
            let key = format!("windows.lengths[{i}]");
            let length = humantime::parse_duration(label.trim())
                .map_err(|e| invalid(&key, format!("{label:?} is not a duration ({e})")))?;
            if length < Duration::from_secs(1) || length > Duration::from_secs(31 * 86_400) {
                return Err(invalid(
                    &key,
                    format!("{label:?} must be between 1s and 31d"),
                ));
            }
            let buckets = crate::pure::window::bucket_count(length.as_millis() as i64, w.buckets);
            if buckets * 2 < w.buckets as usize {
                return Err(invalid(
                    &key,
                    format!(
                        "{label:?} divides into only {buckets} equal buckets (windows.buckets = {}); use a length in whole seconds",
                        w.buckets
                    ),
                ));
            }
            if let Some(twin) = lengths.iter().find(|w| w.length == length) {
                return Err(invalid(
                    &key,
                    format!("{label:?} is the same length as {:?}", twin.label),
                ));
            }
            lengths.push(WindowLength {
                label: label.trim().to_owned(),
                length,
            });
        }
        if w.max_future_skew > Duration::from_secs(3600) {
            return Err(invalid("windows.max_future_skew", "must be at most 1h"));
        }
        Ok(WindowsConfig {
            lengths,
            buckets: w.buckets,
            max_future_skew: w.max_future_skew,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [log] table")]
pub struct LogConfig {
    pub format: LogFormat,
    /// `tracing_subscriber::EnvFilter` directives.
    pub level: String,
}
