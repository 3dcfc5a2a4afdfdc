//! Configuration: one typed struct per section, loaded once at start-up and validated there.
//!
//! Defaults live in one place, `config/default.toml`, which is compiled into the binary and is
//! always the bottom layer; a user file (`--config`) and `ECOM_PULSE__SECTION__KEY` environment
//! variables are layered on top. Every problem is reported with the key it concerns, so a
//! wrong deployment fails at start instead of exporting wrong numbers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::pure::condition::{Condition, Op, Severity};
use crate::pure::kpi::Kpi;
use crate::pure::window::WindowLength;

/// The defaults, and the documentation of every key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

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
/// that needs parsing is typed here.
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
#[serde(deny_unknown_fields)]
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
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

/// librdkafka properties, with the values that are secrets remembered, so that no log line,
/// error message or debug print shows them.
#[derive(Clone, Default)]
pub struct KafkaProperties {
    map: BTreeMap<String, String>,
    /// Values of secret properties (by name) and of every `${file:}` / `${env:}` reference.
    secrets: Vec<String>,
}

/// Shown instead of a secret.
pub const REDACTED: &str = "[redacted]";

/// Whether a librdkafka property holds a secret by its name (`sasl.password`,
/// `ssl.key.password`, `ssl.keystore.password`, `sasl.oauthbearer.client.secret`,
/// `ssl.key.pem`, `sasl.oauthbearer.assertion.private.key.pem`, `sasl.oauthbearer.config`,
/// ...).
fn is_secret_name(name: &str) -> bool {
    name.contains("password")
        || name.contains("passphrase")
        || name.contains("secret")
        || name.contains("token")
        || name.ends_with("key.pem")
        || name == "sasl.oauthbearer.config"
}

impl KafkaProperties {
    fn insert(&mut self, name: String, value: String) {
        if is_secret_name(&name) && !value.is_empty() {
            self.secrets.push(value.clone());
        }
        self.map.insert(name, value);
    }

    /// Sets `name` unless the user did.
    pub fn set_default(&mut self, name: &str, value: &str) {
        if !self.map.contains_key(name) {
            self.insert(name.to_string(), value.to_string());
        }
    }

    /// Replaces `${file:PATH}` (the file's content, without a final newline) and
    /// `${env:NAME}` (the variable, from `env` when given, else the process environment).
    fn resolve_references(
        &mut self,
        env: Option<&BTreeMap<String, String>>,
    ) -> Result<(), ConfigError> {
        for (name, value) in self.map.iter_mut() {
            let key = || format!("kafka.properties.{name}");
            let resolved = if let Some(path) = reference(value, "file") {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| invalid(key(), format!("cannot read {path}: {e}")))?;
                text.strip_suffix('\n')
                    .map(|t| t.strip_suffix('\r').unwrap_or(t))
                    .unwrap_or(&text)
                    .to_string()
            } else if let Some(var) = reference(value, "env") {
                let found = match env {
                    Some(env) => env.get(var).cloned(),
                    None => std::env::var(var).ok(),
                };
                found.ok_or_else(|| {
                    invalid(key(), format!("environment variable {var} is not set"))
                })?
            } else {
                continue;
            };
            if !resolved.is_empty() {
                self.secrets.push(resolved.clone());
            }
            *value = resolved;
        }
        // Longest first, so that a secret containing another is replaced whole.
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        self.secrets.dedup();
        Ok(())
    }

    /// `text` with every secret value replaced by [`REDACTED`]: for messages that may quote
    /// a property (librdkafka's "Unsupported value ..." does).
    pub fn redact(&self, text: &str) -> String {
        self.redactor().apply(text)
    }

    /// What [`KafkaProperties::redact`] does, cheap to clone into long-lived callbacks.
    pub fn redactor(&self) -> Redactor {
        Redactor(self.secrets.clone().into())
    }
}

/// `${kind:rest}` → `rest`.
fn reference<'a>(value: &'a str, kind: &str) -> Option<&'a str> {
    value
        .strip_prefix("${")?
        .strip_suffix('}')?
        .strip_prefix(kind)?
        .strip_prefix(':')
        .filter(|rest| !rest.is_empty())
}

/// Replaces known secret values in text; see [`KafkaProperties::redactor`].
#[derive(Clone, Default)]
pub struct Redactor(std::sync::Arc<[String]>);

/// Secrets shorter than this are not searched for: "x" or "kafka" would turn every such
/// substring of ordinary messages into [`REDACTED`] and say more than it hides.
pub const MIN_REDACTED_LEN: usize = 6;

impl Redactor {
    pub fn apply(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in self.0.iter().filter(|s| s.len() >= MIN_REDACTED_LEN) {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        out
    }
}

// No `Deref` to the map: printing it whole would show the secrets.
impl KafkaProperties {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.map.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl<'a> IntoIterator for &'a KafkaProperties {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.map.iter()
    }
}

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.map.iter().map(|(k, v)| {
                let shown = if self.secrets.iter().any(|s| s == v) || is_secret_name(k) {
                    REDACTED
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
struct WrittenWindows {
    #[serde(deserialize_with = "string_list")]
    lengths: Vec<String>,
    buckets: u32,
    #[serde(with = "humantime_serde")]
    max_future_skew: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// (campaign, channel) keys held per input partition; events of further new keys are
    /// counted under campaign "(other)".
    pub max_keys: usize,
    /// Longest campaign or channel name kept, in bytes; longer ones are cut (at a character
    /// boundary).
    pub max_label_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// Event-time span within which a repeated event id is a duplicate.
    #[serde(with = "humantime_serde")]
    pub horizon: Duration,
    /// Memory bound on remembered ids, per partition.
    pub max_ids_per_partition: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
struct WrittenAlertRule {
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

impl WindowsConfig {
    /// Parses and checks `[windows]`: each length once, here.
    fn from_written(w: WrittenWindows) -> Result<WindowsConfig, ConfigError> {
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
        Ok(WindowsConfig {
            lengths,
            buckets: w.buckets,
            max_future_skew: w.max_future_skew,
        })
    }
}

impl AlertRuleConfig {
    /// Parses and checks the `i`th `[[alerts]]` rule against the configured windows.
    fn from_written(
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

fn default_hysteresis() -> f64 {
    0.05
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `tracing_subscriber::EnvFilter` directives.
    pub level: String,
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
        if self.windows.max_future_skew > Duration::from_secs(3600) {
            return Err(invalid("windows.max_future_skew", "must be at most 1h"));
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

/// A librdkafka property value as TOML or the environment may give it: `session.timeout.ms =
/// 6000` arrives as nested tables, `"session.timeout.ms" = "6000"` as one key.
#[derive(Deserialize)]
#[serde(untagged)]
enum PropertyValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Table(BTreeMap<String, PropertyValue>),
}

/// librdkafka properties (CONFIGURATION.md) whose names contain `_`, set through a
/// configuration file or environment: kept as written.
const UNDERSCORED_PROPERTIES: &[&str] = &["log_level"];

fn flatten_properties<'de, D>(de: D) -> Result<KafkaProperties, D::Error>
where
    D: serde::Deserializer<'de>,
{
    fn walk(prefix: &str, table: BTreeMap<String, PropertyValue>, out: &mut KafkaProperties) {
        for (key, value) in table {
            // Environment variable names cannot contain `.`, so `_` stands for it; librdkafka's
            // names use `.` throughout except the few listed in `UNDERSCORED_PROPERTIES`.
            let key = if UNDERSCORED_PROPERTIES.contains(&key.as_str()) {
                key
            } else {
                key.replace('_', ".")
            };
            let name = if prefix.is_empty() {
                key
            } else {
                format!("{prefix}.{key}")
            };
            let text = match value {
                PropertyValue::Table(inner) => {
                    walk(&name, inner, out);
                    continue;
                }
                PropertyValue::Bool(b) => b.to_string(),
                PropertyValue::Int(i) => i.to_string(),
                PropertyValue::Float(f) => f.to_string(),
                PropertyValue::Text(s) => s,
            };
            out.insert(name, text);
        }
    }
    let table = BTreeMap::<String, PropertyValue>::deserialize(de)?;
    let mut out = KafkaProperties::default();
    walk("", table, &mut out);
    Ok(out)
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
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn load_toml(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        Config::load_with_env(Some(&path), env(&[]))
    }

    fn labels(lengths: &[WindowLength]) -> Vec<&str> {
        lengths.iter().map(|w| w.label.as_str()).collect()
    }

    fn error_of(text: &str) -> String {
        load_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::load_with_env(None, env(&[])).unwrap();
        assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(c.kafka.group_id, "ecom-pulse");
        assert_eq!(c.kafka.topics, ["visits", "orders", "ad-spend"]);
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:9898");
        assert_eq!(labels(&c.windows.lengths), ["5m", "1h", "24h"]);
        assert_eq!(c.kpi.reporting_currency, "USD");
        assert_eq!(c.kpi.purchases_per_year, 4.0);
        assert_eq!(c.kpi.lifetime_years, 3.0);
        assert_eq!(c.currency_rates().get("EUR"), Some(&1.08));
        assert!(c.dedup.horizon >= Duration::from_secs(15 * 60));
        assert!(c.kafka.properties.is_empty());
        assert_eq!(c.log.format, LogFormat::Text);
    }

    #[test]
    fn environment_overrides_file_and_parses_lists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "alerts = []\n[kafka]\nbrokers = \"file:1\"\ngroup_id = \"g\"\n",
        )
        .unwrap();
        let c = Config::load_with_env(
            Some(&path),
            env(&[
                ("ECOM_PULSE__KAFKA__BROKERS", "env:1,env:2"),
                ("ECOM_PULSE__WINDOWS__LENGTHS", "10s,2m"),
                ("ECOM_PULSE__KAFKA__TOPICS", "a,b"),
                ("ECOM_PULSE__KAFKA__PROPERTIES__SASL_PASSWORD", "secret"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "env:1,env:2");
        assert_eq!(c.kafka.group_id, "g");
        assert_eq!(labels(&c.windows.lengths), ["10s", "2m"]);
        assert_eq!(c.kafka.topics, ["a", "b"]);
        assert_eq!(c.kafka.properties.get("sasl.password").unwrap(), "secret");
    }

    #[test]
    fn secrets_come_from_files_and_the_environment_and_are_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("password");
        std::fs::write(&pw, "from-a-file-s3cret\n").unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!(
                "[kafka.properties]\n\"sasl.password\" = \"${{file:{}}}\"\n\"sasl.username\" = \"${{env:KAFKA_USER}}\"\n\"ssl.key.password\" = \"plain-s3cret\"\n\"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n",
                pw.display()
            ),
        )
        .unwrap();
        let c =
            Config::load_with_env(Some(&path), env(&[("KAFKA_USER", "env-user-s3cret")])).unwrap();
        let p = &c.kafka.properties;
        assert_eq!(
            p.get("sasl.password").unwrap(),
            "from-a-file-s3cret",
            "final newline dropped"
        );
        assert_eq!(p.get("sasl.username").unwrap(), "env-user-s3cret");
        let shown = format!("{c:?}");
        for secret in ["from-a-file-s3cret", "env-user-s3cret", "plain-s3cret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
            let message = format!("Unsupported value \"{secret}\" for a property");
            assert_eq!(
                p.redact(&message),
                "Unsupported value \"[redacted]\" for a property"
            );
        }
        assert!(
            shown.contains("SCRAM-SHA-512"),
            "ordinary values stay visible"
        );
        assert_eq!(p.redact("nothing secret"), "nothing secret");

        // A reference that cannot be resolved names the key, not a value.
        std::fs::write(
            &path,
            "[kafka.properties]\n\"sasl.password\" = \"${file:/nonexistent/pw}\"\n",
        )
        .unwrap();
        let err = Config::load_with_env(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.properties.sasl.password"), "{err}");
        assert!(err.contains("/nonexistent/pw"), "{err}");
        std::fs::write(
            &path,
            "[kafka.properties]\n\"sasl.password\" = \"${env:NOT_SET_ANYWHERE}\"\n",
        )
        .unwrap();
        let err = Config::load_with_env(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kafka.properties.sasl.password") && err.contains("NOT_SET_ANYWHERE"),
            "{err}"
        );
    }

    #[test]
    fn a_parse_error_does_not_quote_the_line_it_is_about() {
        let err =
            load_toml("[kafka.properties]\n\"sasl.password\" = hunter2-secret\n").unwrap_err();
        assert!(
            err.to_string().contains("hunter2-secret"),
            "the parser quotes it"
        );
        let shown = err.without_source_lines();
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(shown.contains("line 2"), "{shown}");
    }

    #[test]
    fn short_secrets_are_not_searched_for() {
        let c = Config::load_with_env(
            None,
            env(&[("ECOM_PULSE__KAFKA__PROPERTIES__SASL_PASSWORD", "x")]),
        )
        .unwrap();
        let m = "increase receive.message.max.bytes";
        assert_eq!(c.kafka.properties.redact(m), m);
    }

    #[test]
    fn alertmanager_security_settings_go_together() {
        for (toml, key) in [
            (
                "[alertmanager]\ncert_file = \"c.pem\"\n",
                "alertmanager.cert_file",
            ),
            (
                "[alertmanager]\nbasic_auth_username = \"u\"\n",
                "alertmanager.basic_auth_password_file",
            ),
            (
                "[alertmanager]\nbasic_auth_username = \"u\"\nbasic_auth_password_file = \"p\"\nbearer_token_file = \"t\"\n",
                "alertmanager.bearer_token_file",
            ),
        ] {
            let err = error_of(toml);
            assert!(err.contains(key), "{err} should name {key}");
        }
    }

    #[test]
    fn environment_text_stays_text_and_numbers_still_parse() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("ECOM_PULSE__KAFKA__GROUP_ID", "0042"),
                ("ECOM_PULSE__KAFKA__PROPERTIES__SASL_USERNAME", "007"),
                ("ECOM_PULSE__KAFKA__PROPERTIES__SASL_PASSWORD", "1e3"),
                ("ECOM_PULSE__KPI__PURCHASES_PER_YEAR", "5.5"),
                ("ECOM_PULSE__WINDOWS__BUCKETS", "30"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.group_id, "0042");
        assert_eq!(c.kafka.properties.get("sasl.username").unwrap(), "007");
        assert_eq!(c.kafka.properties.get("sasl.password").unwrap(), "1e3");
        assert_eq!(c.kpi.purchases_per_year, 5.5);
        assert_eq!(c.windows.buckets, 30);
    }

    #[test]
    fn kafka_properties_accept_nested_and_quoted_keys() {
        let c = load_toml(
            "[kafka.properties]\nsession.timeout.ms = 6000\n\"security.protocol\" = \"SSL\"\nenable.partition.eof = false\n",
        )
        .unwrap();
        let p = &c.kafka.properties;
        assert_eq!(p.get("session.timeout.ms").unwrap(), "6000");
        assert_eq!(p.get("security.protocol").unwrap(), "SSL");
        assert_eq!(p.get("enable.partition.eof").unwrap(), "false");
    }

    /// The default cap holds the horizon at 5,000 events/s per partition: ids live up to 1.25
    /// horizons (a generation past it), 5,625,000 of them.
    #[test]
    fn the_default_cap_holds_15_minutes_at_5000_events_per_second() {
        let config = Config::load_with_env(None, Some(Default::default())).unwrap();
        let horizon_s = config.dedup.horizon.as_secs() as usize;
        assert_eq!(horizon_s, 900);
        assert!(config.dedup.max_ids_per_partition >= 5_000 * horizon_s * 5 / 4);
    }

    /// `log_level` is one of librdkafka's names with `_`: it reaches the client as written,
    /// from a file or from the environment, while `_` elsewhere still stands for `.`.
    #[test]
    fn kafka_properties_keep_librdkafkas_underscored_names() {
        let c = load_toml(
            "[kafka.properties]
log_level = 3
",
        )
        .unwrap();
        assert_eq!(c.kafka.properties.get("log_level").unwrap(), "3");
        assert!(c.kafka.properties.get("log.level").is_none());
        let c = Config::load_with_env(
            None,
            env(&[
                ("ECOM_PULSE__KAFKA__PROPERTIES__LOG_LEVEL", "7"),
                ("ECOM_PULSE__KAFKA__PROPERTIES__FETCH_MIN_BYTES", "10"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.properties.get("log_level").unwrap(), "7");
        assert_eq!(c.kafka.properties.get("fetch.min.bytes").unwrap(), "10");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                "[kpi]\npurchases_per_year = \"many\"\n",
                "kpi.purchases_per_year",
            ),
            (
                "[kpi]\npurchases_per_year = -1.0\n",
                "kpi.purchases_per_year",
            ),
            ("[kpi]\nlifetime_years = 0.0\n", "kpi.lifetime_years"),
            (
                "[kpi]\nreporting_currency = \"dollars\"\n",
                "kpi.reporting_currency",
            ),
            (
                "[kpi.currency_rates]\nGBP = -2.0\n",
                "kpi.currency_rates.GBP",
            ),
            (
                "[windows]\nlengths = [\"5m\", \"5x\"]\n",
                "windows.lengths[1]",
            ),
            (
                "[windows]\nlengths = [\"5m\", \"300s\"]\n",
                "windows.lengths[1]",
            ),
            ("[windows]\nlengths = []\n", "windows.lengths"),
            ("[windows]\nbuckets = 0\n", "windows.buckets"),
            ("[kafka]\nconsumer_nice = 20\n", "kafka.consumer_nice"),
            ("[kafka]\nconsumer_nice = -1\n", "kafka.consumer_nice"),
            (
                "[windows]\nmax_future_skew = \"soon\"\n",
                "windows.max_future_skew",
            ),
            ("[dedup]\nhorizon = \"0s\"\n", "dedup.horizon"),
            ("[dedup]\nhorizon = \"60d\"\n", "dedup.horizon"),
            (
                "[windows]\nmax_future_skew = \"300000000years\"\n",
                "windows.max_future_skew",
            ),
            ("[windows]\nlengths = [\"1009ms\"]\n", "windows.lengths[0]"),
            ("[checkpoint]\ninterval = \"1ms\"\n", "checkpoint.interval"),
            ("[checkpoint]\npartitions = 0\n", "checkpoint.partitions"),
            ("[checkpoint]\ntopic = \"visits\"\n", "checkpoint.topic"),
            (
                "[[alerts]]\nname = \"roas low\"\nkpi = \"roas\"\nop = \"<\"\nthreshold = 2.0\nwindow = \"1h\"\nseverity = \"warning\"\n",
                "alerts[0].name",
            ),
            (
                "[[alerts]]\nname = \"RoasLow\"\nkpi = \"romi\"\nop = \"<\"\nthreshold = 2.0\nwindow = \"1h\"\nseverity = \"warning\"\n",
                "alerts[0].kpi",
            ),
            (
                "[[alerts]]\nname = \"RoasLow\"\nkpi = \"roas\"\nop = \"<\"\nthreshold = 2.0\nwindow = \"2h\"\nseverity = \"warning\"\n",
                "alerts[0].window",
            ),
            (
                "[[alerts]]\nname = \"RoasLow\"\nkpi = \"roas\"\nop = \"=\"\nthreshold = 2.0\nwindow = \"1h\"\nseverity = \"warning\"\n",
                "alerts[0].op",
            ),
            (
                "[[alerts]]\nname = \"RoasLow\"\nkpi = \"roas\"\ndrop = 1.5\nwindow = \"1h\"\nseverity = \"warning\"\n",
                "alerts[0].drop",
            ),
            (
                "[[alerts]]\nname = \"RoasLow\"\nkpi = \"roas\"\nop = \"<\"\nthreshold = 2.0\nwindow = \"1h\"\nseverity = \"page\"\n",
                "alerts[0].severity",
            ),
            (
                "[[alerts]]\nname = \"RoasLow\"\nkpi = \"roas\"\nop = \"<\"\nthreshold = 2.0\nwindow = \"1h\"\nfor = \"soon\"\nseverity = \"info\"\n",
                "alerts",
            ),
            (
                "[alertmanager]\nurl = \"alertmanager:9093\"\n",
                "alertmanager.url",
            ),
            (
                "[dedup]\nmax_ids_per_partition = 10\n",
                "dedup.max_ids_per_partition",
            ),
            ("[limits]\nmax_keys = 0\n", "limits.max_keys"),
            ("[limits]\nmax_label_bytes = 4\n", "limits.max_label_bytes"),
            ("[http]\nlisten = \"not an address\"\n", "http.listen"),
            ("[kafka]\nbrokers = \"\"\n", "kafka.brokers"),
            ("[kafka]\ntopics = [\"a\", \" \"]\n", "kafka.topics[1]"),
            ("[log]\nformat = \"xml\"\n", "log.format"),
        ];
        for (toml, key) in cases {
            let message = error_of(toml);
            assert!(
                message.contains(key),
                "{toml:?}: {message:?} does not name {key}"
            );
        }
    }

    #[test]
    fn a_file_with_alert_rules_replaces_the_default_rules() {
        let defaults = Config::load_with_env(None, env(&[])).unwrap();
        assert_eq!(
            defaults
                .alerts
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>(),
            [
                "RoasBelowBreakEven",
                "RoasBelowOne",
                "ClvCacBelowThree",
                "RoasDrop"
            ]
        );
        let one = load_toml("[[alerts]]\nname = \"AovLow\"\nkpi = \"aov\"\nop = \"<\"\nthreshold = 20.0\nwindow = \"5m\"\nseverity = \"info\"\n").unwrap();
        assert_eq!(one.alerts.len(), 1);
        assert_eq!(one.alerts[0].name, "AovLow");
        assert_eq!(one.alerts[0].hysteresis, 0.05);
        assert!(load_toml("alerts = []\n").unwrap().alerts.is_empty());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let message = error_of("[kpi]\npurchases_per_yaer = 5.0\n");
        assert!(message.contains("purchases_per_yaer"), "{message}");
        let message = error_of("[kafak]\nbrokers = \"x\"\n");
        assert!(message.contains("kafak"), "{message}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Config::load_with_env(Some(Path::new("/nonexistent/ecom.toml")), env(&[]));
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("/nonexistent/ecom.toml")
        );
    }
}
