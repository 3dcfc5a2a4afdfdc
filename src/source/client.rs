//! What every Kafka client of the service besides the group consumer shares: quiet callbacks
//! (the consumer reports broker trouble once) and the properties only a group consumer takes.

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, ProducerContext};

use crate::config::{KafkaConfig, Redactor};

/// Settings of `kafka.properties` that only the group consumer understands.
pub const CONSUMER_ONLY: [&str; 10] = [
    "group.id",
    "session.timeout.ms",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "statistics.interval.ms",
    "partition.assignment.strategy",
    "max.poll.interval.ms",
    "heartbeat.interval.ms",
    "group.instance.id",
];

/// The connection settings of a client besides the group consumer: the brokers and
/// `kafka.properties` (security above all), without the group's settings, which mean
/// nothing to it and which librdkafka would warn about.
pub fn side_client(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    for key in CONSUMER_ONLY {
        config.remove(key);
    }
    config
}

/// The callbacks of the clients besides the main consumer (checkpoints, admin, feed,
/// generator). Broker trouble is already reported by the main consumer (metrics, readiness,
/// one warning per change); these clients' copies of it go to debug level instead of
/// repeating it. Messages pass through the redactor, like the consumer's.
pub struct Quiet {
    pub client: &'static str,
    pub redactor: Redactor,
}

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // Failures that matter here surface as save/load errors, logged by their callers.
        if tracing::enabled!(tracing::Level::DEBUG) {
            let message = self.redactor.apply(message);
            tracing::debug!(target: "librdkafka", client = self.client, ?level, facility = fac, "{message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            let error = self.redactor.apply(&error.to_string());
            let reason = self.redactor.apply(reason);
            tracing::debug!(error = %error, client = self.client, "{reason}");
        }
    }
}

impl ConsumerContext for Quiet {}

/// The generator's producer ignores delivery reports: its rate is what it is.
impl ProducerContext for Quiet {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}
