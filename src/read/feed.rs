//! The Kafka side of the output: KPI snapshots for optimisers (`kafka.kpis_topic`) and alert
//! transitions (`kafka.alerts_topic`), each message keyed by campaign.
//!
//! Both payloads are versioned JSON (`schema` field); a consumer should ignore fields it does
//! not know, and a breaking change gets a new schema name.

use std::sync::Arc;

use rdkafka::ClientContext;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, ProducerContext};
use serde::Serialize;

use crate::alert::notify::rfc3339;
use crate::alert::{Phase, ResolvedReason, Transition};
use crate::config::KafkaConfig;
use crate::pure::kpi::ClvAssumptions;
use crate::pure::window::Windows;
use crate::read::rows::{KpiRow, RowCoverage, kpi_row};
use crate::runtime::health::Coverage;
use crate::runtime::telemetry::Telemetry;
use crate::source::client::Quiet;
use crate::state::store::Snapshot;

pub const KPI_SCHEMA: &str = "ecom-pulse.kpi.v1";
pub const ALERT_SCHEMA: &str = "ecom-pulse.alert.v1";

/// One KPI snapshot message.
#[derive(Debug, Serialize)]
pub struct KpiMessage<'a> {
    pub schema: &'static str,
    /// When the snapshot was taken (RFC 3339, UTC): a multiple of
    /// `alerting.snapshot_interval`, the same for every instance, so that a consumer can put
    /// the instances' rows of one moment together.
    pub at: String,
    /// Which instance sent it (host name and HTTP port): with `partitions_held`, what a
    /// consumer merging the fleet's rows needs to know it has them all.
    pub instance: &'a str,
    /// Unit of every money field.
    pub currency: &'a str,
    #[serde(flatten)]
    pub kpis: KpiRow,
}

/// One alert transition message.
#[derive(Debug, Serialize)]
pub struct AlertMessage<'a> {
    pub schema: &'static str,
    pub at: String,
    pub alertname: &'a str,
    /// The new state: pending, firing, resolved or inactive (a pending alert that stopped).
    pub state: Phase,
    pub previous_state: Phase,
    pub severity: &'a str,
    pub campaign: &'a str,
    pub channel: &'a str,
    pub window: &'a str,
    pub value: f64,
    pub threshold: f64,
    pub condition: &'a str,
    pub active_since: String,
    /// On `resolved` and `inactive`: `recovered`, `guard` (too little volume left to judge,
    /// e.g. a paused campaign) or `no_data` (the window emptied, or the key left).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_reason: Option<ResolvedReason>,
}

/// Counts the feed's delivery reports.
pub struct FeedContext {
    telemetry: Arc<Telemetry>,
    quiet: Quiet,
}

impl ClientContext for FeedContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.quiet.log(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.quiet.error(error, reason);
    }
}

impl ProducerContext for FeedContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => self.telemetry.feed_message(m.topic(), true),
            Err((e, m)) => {
                self.telemetry.feed_message(m.topic(), false);
                tracing::debug!(error = %e, topic = m.topic(), "feed message not delivered");
            }
        }
    }
}

pub struct Feed {
    /// Polled by the evaluator after each batch it sends: no polling thread of its own.
    producer: BaseProducer<FeedContext>,
    kpis_topic: String,
    alerts_topic: String,
    currency: String,
    instance: String,
    telemetry: Arc<Telemetry>,
}

impl Feed {
    /// `None` when neither topic is configured.
    pub fn new(
        kafka: &KafkaConfig,
        currency: &str,
        instance: &str,
        telemetry: Arc<Telemetry>,
    ) -> Result<Option<Feed>, rdkafka::error::KafkaError> {
        if kafka.kpis_topic.is_empty() && kafka.alerts_topic.is_empty() {
            return Ok(None);
        }
        let mut config = crate::source::client::side_client(kafka);
        let producer = config
            .set("client.id", "ecom-pulse-feed")
            .set("acks", "all")
            .set("linger.ms", "50")
            .create_with_context(FeedContext {
                telemetry: telemetry.clone(),
                quiet: Quiet {
                    client: "feed",
                    redactor: kafka.properties.redactor(),
                },
            })?;
        Ok(Some(Feed {
            producer,
            kpis_topic: kafka.kpis_topic.clone(),
            alerts_topic: kafka.alerts_topic.clone(),
            currency: currency.to_string(),
            instance: instance.to_string(),
            telemetry,
        }))
    }

    fn send(&self, topic: &str, key: &str, payload: &[u8]) {
        if let Err((e, _)) = self
            .producer
            .send(BaseRecord::to(topic).key(key).payload(payload))
        {
            self.telemetry.feed_message(topic, false);
            tracing::debug!(error = %e, topic, "cannot queue a feed message");
        }
    }

    /// Serves delivery reports; call after sending.
    pub fn poll(&self) {
        self.producer.poll(std::time::Duration::ZERO);
    }

    /// One message per (campaign, channel, window) with data, of the snapshot taken at
    /// `now_ms` for the moment `at_ms`.
    pub fn publish_snapshot(
        &self,
        snapshot: &Snapshot,
        windows: &Windows,
        clv: &ClvAssumptions,
        partitions: &Coverage,
        at_ms: i64,
        now_ms: i64,
    ) {
        if self.kpis_topic.is_empty() {
            return;
        }
        let at = rfc3339(at_ms);
        let covered: Vec<RowCoverage> = (0..windows.len())
            .map(|w| RowCoverage::of(snapshot, windows, w, now_ms, partitions))
            .collect();
        for (key, row) in &snapshot.rows {
            for (w, (spec, sums)) in windows.specs().iter().zip(&row.windows).enumerate() {
                if sums.is_empty() {
                    continue;
                }
                let message = KpiMessage {
                    schema: KPI_SCHEMA,
                    at: at.clone(),
                    instance: &self.instance,
                    currency: &self.currency,
                    kpis: kpi_row(
                        Some(&key.campaign),
                        Some(&key.channel),
                        &spec.label,
                        sums,
                        clv,
                        &covered[w],
                    ),
                };
                let payload = serde_json::to_vec(&message).expect("serialisable");
                self.send(&self.kpis_topic, &key.campaign, &payload);
            }
        }
    }

    /// One message per transition.
    pub fn publish_transitions(&self, transitions: &[Transition]) {
        if self.alerts_topic.is_empty() {
            return;
        }
        for t in transitions {
            let a = &t.alert;
            let message = AlertMessage {
                schema: ALERT_SCHEMA,
                at: rfc3339(t.at_ms),
                alertname: &a.name,
                state: t.to,
                previous_state: t.from,
                severity: a.severity.as_str(),
                campaign: &a.key.campaign,
                channel: &a.key.channel,
                window: &a.window,
                value: a.value,
                threshold: a.threshold,
                condition: &a.condition,
                active_since: rfc3339(a.active_since_ms),
                resolved_reason: t.resolved_reason,
            };
            let payload = serde_json::to_vec(&message).expect("serialisable");
            self.send(&self.alerts_topic, &a.key.campaign, &payload);
        }
    }
}
