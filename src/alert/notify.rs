//! Pushes firing and resolved alerts to Alertmanager's v2 API, the way Prometheus does:
//! every firing alert is re-sent each `resend_interval` with `endsAt` a few intervals ahead
//! (so Alertmanager resolves it by itself if ecom-pulse goes away), a resolved alert is sent
//! once with `endsAt` set to when it resolved and a `resolved_reason` annotation, and failed
//! sends are retried with back-off.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Alert, ResolvedReason};
use crate::config::AlertmanagerConfig;
use crate::runtime::rate_limit::RateLimit;
use crate::runtime::telemetry::Telemetry;

/// What the evaluator tells the notifier after each evaluation.
#[derive(Debug, Clone)]
pub struct Update {
    /// Every alert firing now.
    pub firing: Vec<Alert>,
    /// Alerts that resolved in this evaluation, with when and why.
    pub resolved: Vec<(Alert, i64, ResolvedReason)>,
}

/// One alert in Alertmanager's `POST /api/v2/alerts` body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    #[serde(rename = "endsAt")]
    pub ends_at: String,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
}

pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// The labels identifying an alert, as in `ecom_alerts` and the generated Prometheus rules.
pub fn labels(alert: &Alert) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("alertname".to_string(), alert.name.clone()),
        ("severity".to_string(), alert.severity.to_string()),
        ("campaign".to_string(), alert.key.campaign.to_string()),
        ("channel".to_string(), alert.key.channel.to_string()),
        ("window".to_string(), alert.window.to_string()),
    ])
}

/// `summary` and `description`, with the value and the threshold.
pub fn annotations(alert: &Alert) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "summary".to_string(),
            format!(
                "{} for {}/{} ({}): {:.3} against {:.3}",
                alert.name,
                alert.key.campaign,
                alert.key.channel,
                alert.window,
                alert.value,
                alert.threshold
            ),
        ),
        (
            "description".to_string(),
            format!(
                "Campaign {} on channel {}: {}. Value {:.4}, threshold {:.4}, condition holding since {}.",
                alert.key.campaign,
                alert.key.channel,
                alert.condition,
                alert.value,
                alert.threshold,
                rfc3339(alert.active_since_ms)
            ),
        ),
    ])
}

pub fn am_alert(alert: &Alert, ends_at_ms: i64, generator_url: &str) -> AmAlert {
    AmAlert {
        labels: labels(alert),
        annotations: annotations(alert),
        starts_at: rfc3339(alert.firing_since_ms.unwrap_or(alert.active_since_ms)),
        ends_at: rfc3339(ends_at_ms),
        generator_url: generator_url.to_string(),
    }
}

/// A resolved alert: as it last fired, ending when it resolved, with a `resolved_reason`
/// annotation. Alertmanager keeps the annotations of the newest push, so its resolved
/// notification tells a paused campaign (`guard`) or an ended one (`no_data`) from one that
/// recovered.
pub fn am_resolved(
    alert: &Alert,
    resolved_at_ms: i64,
    reason: ResolvedReason,
    generator_url: &str,
) -> AmAlert {
    let mut am = am_alert(alert, resolved_at_ms, generator_url);
    am.annotations
        .insert("resolved_reason".to_string(), reason.to_string());
    am
}

pub struct Notifier {
    client: reqwest::Client,
    endpoint: String,
    credentials: Credentials,
    resend: Duration,
    generator_url: String,
    telemetry: std::sync::Arc<Telemetry>,
    error_log: RateLimit,
}

/// How pushes authenticate. Secrets stay in their files and are read at every push, as
/// Prometheus does with `password_file` and `credentials_file`, so they can be rotated.
enum Credentials {
    None,
    Basic {
        user: String,
        password_file: PathBuf,
    },
    Bearer {
        token_file: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("alertmanager.{key}: cannot read {path}: {source}")]
    File {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("alertmanager.{key}: {message}")]
    Tls { key: &'static str, message: String },
    #[error("{0}")]
    Http(#[from] reqwest::Error),
}

fn read(key: &'static str, path: &str) -> Result<Vec<u8>, NotifyError> {
    std::fs::read(path).map_err(|source| NotifyError::File {
        key,
        path: path.into(),
        source,
    })
}

/// A secret file's content without the final newline an editor adds.
fn secret(key: &'static str, path: &std::path::Path) -> Result<String, NotifyError> {
    let text = std::fs::read_to_string(path).map_err(|source| NotifyError::File {
        key,
        path: path.to_owned(),
        source,
    })?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

impl Notifier {
    pub fn new(
        config: &AlertmanagerConfig,
        generator_url: String,
        telemetry: std::sync::Arc<Telemetry>,
    ) -> Result<Notifier, NotifyError> {
        let mut client = reqwest::Client::builder().timeout(config.timeout);
        if !config.ca_file.is_empty() {
            let ca = reqwest::Certificate::from_pem(&read("ca_file", &config.ca_file)?).map_err(
                |e| NotifyError::Tls {
                    key: "ca_file",
                    message: e.to_string(),
                },
            )?;
            client = client.add_root_certificate(ca);
        }
        if !config.cert_file.is_empty() {
            let mut pem = read("cert_file", &config.cert_file)?;
            pem.extend(read("key_file", &config.key_file)?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| NotifyError::Tls {
                key: "key_file",
                message: e.to_string(),
            })?;
            client = client.identity(identity);
        }
        let credentials = if !config.basic_auth_username.is_empty() {
            let password_file = PathBuf::from(&config.basic_auth_password_file);
            // Read once now so that a wrong path fails start-up, not the first alert.
            secret("basic_auth_password_file", &password_file)?;
            Credentials::Basic {
                user: config.basic_auth_username.clone(),
                password_file,
            }
        } else if !config.bearer_token_file.is_empty() {
            let token_file = PathBuf::from(&config.bearer_token_file);
            secret("bearer_token_file", &token_file)?;
            Credentials::Bearer { token_file }
        } else {
            Credentials::None
        };
        Ok(Notifier {
            client: client.build()?,
            endpoint: format!("{}/api/v2/alerts", config.url.trim_end_matches('/')),
            credentials,
            resend: config.resend_interval,
            generator_url,
            telemetry,
            error_log: RateLimit::new(Duration::from_secs(30)),
        })
    }

    /// Sends until `shutdown`.
    pub async fn run(self, mut updates: mpsc::Receiver<Update>, shutdown: CancellationToken) {
        let mut firing: Vec<Alert> = Vec::new();
        let mut resolved: Vec<(Alert, i64, ResolvedReason)> = Vec::new();
        let mut last_sent_ids: Vec<(String, String, String, String)> = Vec::new();
        let mut next_send: Option<Instant> = None;
        let mut backoff = Duration::from_secs(1);
        loop {
            let wake = next_send.unwrap_or_else(|| Instant::now() + self.resend);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                update = updates.recv() => {
                    crate::runtime::fault::trip("notifier");
                    let Some(update) = update else { break };
                    firing = update.firing;
                    resolved.extend(update.resolved);
                    let ids: Vec<_> = firing.iter().map(id).collect();
                    // Something new to say: send now rather than at the next resend.
                    if ids != last_sent_ids || !resolved.is_empty() {
                        next_send = Some(Instant::now());
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    if firing.is_empty() && resolved.is_empty() {
                        next_send = None;
                        continue;
                    }
                    match self.send(&firing, &resolved).await {
                        Ok(()) => {
                            self.telemetry.notification(true);
                            resolved.clear();
                            last_sent_ids = firing.iter().map(id).collect();
                            backoff = Duration::from_secs(1);
                            next_send = Some(Instant::now() + self.resend);
                        }
                        Err(e) => {
                            self.telemetry.notification(false);
                            if let Some(suppressed) = self.error_log.check() {
                                tracing::warn!(error = %e, url = %self.endpoint, suppressed, retry_in = ?backoff, "cannot reach Alertmanager");
                            }
                            next_send = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(self.resend);
                        }
                    }
                }
            }
        }
    }

    async fn send(
        &self,
        firing: &[Alert],
        resolved: &[(Alert, i64, ResolvedReason)],
    ) -> Result<(), NotifyError> {
        let now = crate::now_ms();
        // Like Prometheus: a firing alert's endsAt lies a few resends ahead.
        let ends = now + 4 * self.resend.as_millis() as i64;
        let body: Vec<AmAlert> = firing
            .iter()
            .map(|a| am_alert(a, ends, &self.generator_url))
            .chain(
                resolved
                    .iter()
                    .map(|(a, at, why)| am_resolved(a, *at, *why, &self.generator_url)),
            )
            .collect();
        let request = self.client.post(&self.endpoint).json(&body);
        let request = match &self.credentials {
            Credentials::None => request,
            Credentials::Basic {
                user,
                password_file,
            } => request.basic_auth(
                user,
                Some(secret("basic_auth_password_file", password_file)?),
            ),
            Credentials::Bearer { token_file } => {
                request.bearer_auth(secret("bearer_token_file", token_file)?)
            }
        };
        request.send().await?.error_for_status()?;
        Ok(())
    }
}

fn id(a: &Alert) -> (String, String, String, String) {
    (
        a.name.clone(),
        a.key.campaign.to_string(),
        a.key.channel.to_string(),
        a.window.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::Phase;
    use crate::pure::key::Key;

    #[test]
    fn an_alert_becomes_alertmanager_json() {
        let alert = Alert {
            rule: 0,
            name: "RoasBelowBreakEven".into(),
            severity: crate::pure::condition::Severity::Warning,
            key: Key::new("spring", "paid_social"),
            window: "1h".into(),
            phase: Phase::Firing,
            value: 1.5,
            threshold: 2.0,
            active_since_ms: 1_795_334_400_000,
            firing_since_ms: Some(1_795_334_700_000),
            condition: "roas < 2 over 1h".into(),
        };
        let json = serde_json::to_value(am_alert(
            &alert,
            1_795_335_000_000,
            "http://x/api/v1/alerts",
        ))
        .unwrap();
        assert_eq!(json["labels"]["alertname"], "RoasBelowBreakEven");
        assert_eq!(json["labels"]["campaign"], "spring");
        assert_eq!(json["labels"]["window"], "1h");
        assert_eq!(json["startsAt"], "2026-11-22T08:05:00.000Z");
        assert_eq!(json["endsAt"], "2026-11-22T08:10:00.000Z");
        assert_eq!(json["generatorURL"], "http://x/api/v1/alerts");
        let summary = json["annotations"]["summary"].as_str().unwrap();
        assert!(
            summary.contains("1.500") && summary.contains("2.000"),
            "{summary}"
        );
        assert!(
            json["annotations"]["description"]
                .as_str()
                .unwrap()
                .contains("roas < 2 over 1h")
        );
        assert!(json["annotations"].get("resolved_reason").is_none());

        // Resolved: it ends when it resolved, and says why.
        let json = serde_json::to_value(am_resolved(
            &alert,
            1_795_335_000_000,
            ResolvedReason::Guard,
            "http://x/api/v1/alerts",
        ))
        .unwrap();
        assert_eq!(json["endsAt"], "2026-11-22T08:10:00.000Z");
        assert_eq!(json["annotations"]["resolved_reason"], "guard");
        assert_eq!(json["annotations"]["summary"].as_str().unwrap(), summary);
    }
}
