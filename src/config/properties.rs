//! librdkafka properties, passed through untouched, and the secrets among them: resolved from
//! `${file:}` and `${env:}` at load and never shown in a log line, an error or a debug print.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ConfigError, invalid};

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
pub(super) fn is_secret_name(name: &str) -> bool {
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
    pub(super) fn resolve_references(
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
pub(super) fn reference<'a>(value: &'a str, kind: &str) -> Option<&'a str> {
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

/// A librdkafka property value as TOML or the environment may give it: `session.timeout.ms =
/// 6000` arrives as nested tables, `"session.timeout.ms" = "6000"` as one key.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum PropertyValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Table(BTreeMap<String, PropertyValue>),
}

/// librdkafka properties (CONFIGURATION.md) whose names contain `_`, set through a
/// configuration file or environment: kept as written.
pub(super) const UNDERSCORED_PROPERTIES: &[&str] = &["log_level"];

pub(super) fn flatten_properties<'de, D>(de: D) -> Result<KafkaProperties, D::Error>
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
