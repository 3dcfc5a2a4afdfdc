//! Rejected events, unchanged, to `kafka.dead_letter_topic`, each once: a team can read why
//! a producer's events were refused, fix it, and replay them.
//!
//! A dead letter keeps the record's key and value as they were and its timestamp; headers say
//! why (`ecom_pulse.reason`, `ecom_pulse.field`, `ecom_pulse.detail`) and where it came from
//! (`ecom_pulse.topic`, `ecom_pulse.partition`, `ecom_pulse.offset`). The dead letters of one
//! input partition all go to one partition of the topic, in order (an idempotent producer),
//! so that "once" can be kept through a crash without transactions (which Tansu does not
//! offer):
//!
//! - a checkpoint is written only once every dead letter of the offsets it covers has been
//!   delivered (the checkpoint writer waits for them, holding the partition), and it records
//!   where in its dead-letter partition the ones after it will be;
//! - the next owner reads that partition from there and does not send again what it finds
//!   for its input partition ([`DeadLetters::last_sent`]).
//!
//! A member that lost its partitions without noticing can still send a few after the new
//! owner has looked: the same limit as for any Kafka output without transactions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, DeliveryResult, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::config::{KafkaConfig, Redactor};
use crate::pure::decode::Rejection;
use crate::runtime::telemetry::Telemetry;
use crate::source::client::Quiet;
use crate::state::store::TopicPartition;

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("kafka.dead_letter_topic producer: {0}")]
    Create(#[source] rdkafka::error::KafkaError),
    #[error("dead letters not all delivered within {0:?}")]
    NotDelivered(Duration),
    #[error("reading the dead-letter topic: {0}")]
    Read(#[source] rdkafka::error::KafkaError),
    #[error("the dead-letter topic {0} does not exist yet")]
    NoTopic(String),
    #[error("a dead letter could not be queued: {0}")]
    Queue(#[source] rdkafka::error::KafkaError),
}

/// Where a message came from, with what a dead letter copies of it.
pub struct Rejected<'a> {
    pub from: &'a TopicPartition,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub timestamp_ms: Option<i64>,
    pub rejection: &'a Rejection,
}

/// Counts deliveries and remembers, per dead-letter partition, the offset after the last one
/// delivered: where a checkpoint says the next owner should start looking.
pub struct Deliveries {
    telemetry: Arc<Telemetry>,
    quiet: Quiet,
    delivered: Mutex<HashMap<i32, i64>>,
}

impl ClientContext for Deliveries {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.quiet.log(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.quiet.error(error, reason);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                self.telemetry.dead_letter(true);
                let mut delivered = self.delivered.lock();
                let next = delivered.entry(m.partition()).or_insert(0);
                *next = (*next).max(m.offset() + 1);
            }
            // Only a permanent error ends up here (the producer retries until it is
            // delivered otherwise): a record too large for the topic, or one it may not
            // write to. It is counted and logged; it cannot be sent again as it is.
            Err((e, m)) => {
                self.telemetry.dead_letter(false);
                tracing::warn!(error = %e, topic = m.topic(), "a dead letter could not be delivered");
            }
        }
    }
}

/// The dead-letter topic's producer and reader.
pub struct DeadLetters {
    producer: ThreadedProducer<Deliveries>,
    topic: String,
    /// Partitions of the dead-letter topic, once known.
    partitions: Mutex<Option<i32>>,
    client_config: ClientConfig,
    redactor: Redactor,
}

/// Header names.
pub const REASON: &str = "ecom_pulse.reason";
pub const FIELD: &str = "ecom_pulse.field";
pub const DETAIL: &str = "ecom_pulse.detail";
pub const TOPIC: &str = "ecom_pulse.topic";
pub const PARTITION: &str = "ecom_pulse.partition";
pub const OFFSET: &str = "ecom_pulse.offset";

impl DeadLetters {
    /// `None` when `kafka.dead_letter_topic` is empty.
    pub fn new(
        kafka: &KafkaConfig,
        telemetry: Arc<Telemetry>,
    ) -> Result<Option<DeadLetters>, DeadLetterError> {
        if kafka.dead_letter_topic.is_empty() {
            return Ok(None);
        }
        let mut config = crate::source::client::side_client(kafka);
        let client_config = config.clone();
        let redactor = kafka.properties.redactor();
        let producer = config
            .set("client.id", "ecom-pulse-dead-letters")
            // In order and without duplicates from retries, and never given up on: a dead
            // letter that timed out and was sent again later could land after the ones that
            // followed it, which the restore's reading relies on.
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "0")
            .set("linger.ms", "5")
            .create_with_context(Deliveries {
                telemetry,
                quiet: Quiet {
                    client: "dead-letters",
                    redactor: redactor.clone(),
                },
                delivered: Mutex::new(HashMap::new()),
            })
            .map_err(DeadLetterError::Create)?;
        Ok(Some(DeadLetters {
            producer,
            topic: kafka.dead_letter_topic.clone(),
            partitions: Mutex::new(None),
            client_config,
            redactor,
        }))
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The dead-letter partition of an input partition: the same number where the topic has
    /// as many, so each input partition's dead letters stay in one partition, in order.
    pub fn partition_of(&self, from: &TopicPartition) -> Result<i32, DeadLetterError> {
        let count = self.partition_count()?;
        Ok(from.partition.rem_euclid(count))
    }

    fn partition_count(&self) -> Result<i32, DeadLetterError> {
        if let Some(n) = *self.partitions.lock() {
            return Ok(n);
        }
        let metadata = self
            .producer
            .client()
            .fetch_metadata(Some(&self.topic), Duration::from_secs(10))
            .map_err(DeadLetterError::Read)?;
        let n = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .map_or(0, |t| t.partitions().len()) as i32;
        if n == 0 {
            return Err(DeadLetterError::NoTopic(self.topic.clone()));
        }
        *self.partitions.lock() = Some(n);
        Ok(n)
    }

    /// Creates the topic if it does not exist, with as many partitions as the widest of
    /// `inputs` (so each input partition has one of its own), retrying until it exists or
    /// `shutdown`. Dead letters wait for it (see [`Self::send`]).
    pub async fn ensure_topic(
        self: Arc<Self>,
        inputs: Vec<String>,
        replication: i32,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut logged = false;
        while !shutdown.is_cancelled() {
            let this = self.clone();
            let wanted = inputs.clone();
            // `Ok(None)`: it exists; `Ok(Some(n))`: to be made with `n` partitions.
            let needed = tokio::task::spawn_blocking(move || {
                if this.partition_count().is_ok() {
                    return Ok(None);
                }
                let metadata = this
                    .producer
                    .client()
                    .fetch_metadata(None, Duration::from_secs(10))?;
                let widest = metadata
                    .topics()
                    .iter()
                    .filter(|t| wanted.iter().any(|w| w == t.name()))
                    .map(|t| t.partitions().len() as i32)
                    .max();
                Ok::<_, rdkafka::error::KafkaError>(Some(widest.unwrap_or(1)))
            })
            .await;
            match needed {
                Ok(Ok(None)) => return,
                Ok(Ok(Some(partitions))) if self.create_topic(partitions, replication).await => {
                    return;
                }
                _ => {}
            }
            if !logged {
                tracing::warn!(topic = %self.topic, "dead-letter topic not available yet; rejected events wait for it");
                logged = true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    async fn create_topic(&self, partitions: i32, replication: i32) -> bool {
        let quiet = Quiet {
            client: "admin",
            redactor: self.redactor.clone(),
        };
        let Ok(admin) = self
            .client_config
            .create_with_context::<_, rdkafka::admin::AdminClient<Quiet>>(quiet)
        else {
            return false;
        };
        let topic = rdkafka::admin::NewTopic::new(
            &self.topic,
            partitions.max(1),
            rdkafka::admin::TopicReplication::Fixed(replication),
        );
        let options =
            rdkafka::admin::AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let created = tokio::time::timeout(
            Duration::from_secs(15),
            admin.create_topics([&topic], &options),
        )
        .await;
        match created {
            Ok(Ok(results)) => match results.into_iter().next() {
                Some(Ok(_)) => {
                    tracing::info!(topic = %self.topic, partitions, "created the dead-letter topic");
                    true
                }
                Some(Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))) => true,
                Some(Err((_, code))) => {
                    tracing::warn!(topic = %self.topic, error = ?code, "cannot create the dead-letter topic");
                    false
                }
                None => false,
            },
            _ => false,
        }
    }

    /// Sends a rejected message's dead letter. Only queued here; [`Self::settle`] waits for
    /// delivery. While the topic does not exist yet or the producer's queue is full (the
    /// topic is out of reach), it waits: a dead letter is never dropped. It gives up only
    /// when `stop` says so (shutting down), with an error; the caller must then not let a
    /// checkpoint cover the message, so that the next start reads it again.
    pub fn send(
        &self,
        rejected: &Rejected<'_>,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), DeadLetterError> {
        let partition = loop {
            match self.partition_of(rejected.from) {
                Ok(p) => break p,
                Err(e) if stop() => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let r = rejected.rejection;
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: REASON,
                value: Some(r.reason.as_str()),
            })
            .insert(Header {
                key: DETAIL,
                value: Some(r.detail),
            });
        if let Some(field) = r.field {
            headers = headers.insert(Header {
                key: FIELD,
                value: Some(field),
            });
        }
        let (partition_text, offset_text) = (
            rejected.from.partition.to_string(),
            rejected.offset.to_string(),
        );
        headers = headers
            .insert(Header {
                key: TOPIC,
                value: Some(&*rejected.from.topic),
            })
            .insert(Header {
                key: PARTITION,
                value: Some(&partition_text),
            })
            .insert(Header {
                key: OFFSET,
                value: Some(&offset_text),
            });
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic)
            .partition(partition)
            .headers(headers);
        if let Some(key) = rejected.key {
            record = record.key(key);
        }
        if let Some(value) = rejected.value {
            record = record.payload(value);
        }
        if let Some(ts) = rejected.timestamp_ms {
            record = record.timestamp(ts);
        }
        // The queue is full only while the topic cannot be reached: wait rather than lose one.
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((e, back)) => {
                    let full = matches!(
                        e.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    );
                    if !full || stop() {
                        tracing::warn!(error = %e, "a dead letter could not be queued");
                        return Err(DeadLetterError::Queue(e));
                    }
                    record = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// Waits until every dead letter sent so far is delivered; then returns, for the
    /// dead-letter partition of `from`, the offset after its last delivered one: where the
    /// next owner of `from` starts looking. Called with `from`'s state held, so that no
    /// dead letter of an offset a checkpoint covers is still on its way.
    pub fn settle(
        &self,
        from: &TopicPartition,
        within: Duration,
    ) -> Result<(i32, i64), DeadLetterError> {
        let partition = self.partition_of(from)?;
        if self.producer.in_flight_count() > 0 && self.producer.flush(within).is_err() {
            return Err(DeadLetterError::NotDelivered(within));
        }
        let next = self
            .producer
            .context()
            .delivered
            .lock()
            .get(&partition)
            .copied();
        let next = match next {
            Some(next) => next,
            // Nothing delivered there by this process: its end now.
            None => {
                self.producer
                    .client()
                    .fetch_watermarks(&self.topic, partition, Duration::from_secs(10))
                    .map_err(DeadLetterError::Read)?
                    .1
            }
        };
        Ok((partition, next))
    }

    /// The highest offset of `from` that has a dead letter in `partition` at or after
    /// `start` (`None`: from the beginning); `None` if it has none there. What a new owner
    /// must not send again.
    pub fn last_sent(
        &self,
        from: &TopicPartition,
        partition: i32,
        start: Option<i64>,
    ) -> Result<Option<i64>, DeadLetterError> {
        let quiet = Quiet {
            client: "dead-letter-reader",
            redactor: self.redactor.clone(),
        };
        let reader: BaseConsumer<Quiet> = self
            .client_config
            .clone()
            .set("group.id", "ecom-pulse-dead-letter-reader")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create_with_context(quiet)
            .map_err(DeadLetterError::Read)?;
        let (_, end) = reader
            .fetch_watermarks(&self.topic, partition, Duration::from_secs(10))
            .map_err(DeadLetterError::Read)?;
        let begin = start.unwrap_or(0);
        if begin >= end {
            return Ok(None);
        }
        let mut assignment = TopicPartitionList::new();
        let from_offset = start.map_or(Offset::Beginning, Offset::Offset);
        assignment
            .add_partition_offset(&self.topic, partition, from_offset)
            .map_err(DeadLetterError::Read)?;
        reader.assign(&assignment).map_err(DeadLetterError::Read)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = None;
        loop {
            match reader.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    if let Some(offset) = source_offset(&m, from) {
                        last = last.max(Some(offset));
                    }
                    if m.offset() + 1 >= end {
                        return Ok(last);
                    }
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return Ok(last),
                Some(Err(e)) => return Err(DeadLetterError::Read(e)),
                None => {}
            }
            if Instant::now() > deadline {
                return Err(DeadLetterError::NotDelivered(Duration::from_secs(60)));
            }
        }
    }
}

/// The input offset a dead letter came from, if it came from `from`.
fn source_offset(m: &BorrowedMessage<'_>, from: &TopicPartition) -> Option<i64> {
    let headers = m.headers()?;
    let get = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    };
    if get(TOPIC)? != &*from.topic || get(PARTITION)?.parse::<i32>().ok()? != from.partition {
        return None;
    }
    get(OFFSET)?.parse().ok()
}
