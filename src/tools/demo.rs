//! `ecom-pulse demo`: the whole product with nothing installed.
//!
//! librdkafka's in-process mock cluster stands in for Kafka (real wire protocol on a loopback
//! port), the generator produces shop traffic into it, and the service consumes it exactly as
//! it would a production cluster.

use crate::config::KafkaProperties;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::service::{Service, ServiceError};
use crate::tools::generate;

/// Partitions per demo topic. The mock keeps ~5 MiB per partition, so spread the traffic.
const PARTITIONS: i32 = 6;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the in-process Kafka mock cluster: {0}")]
    Mock(#[source] rdkafka::error::KafkaError),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// Runs the demo until `shutdown`.
pub async fn run(
    mut config: Config,
    visits_per_sec: f64,
    shutdown: CancellationToken,
) -> Result<(), DemoError> {
    let mock = MockCluster::new(3).map_err(DemoError::Mock)?;
    for topic in &config.kafka.topics {
        mock.create_topic(topic, PARTITIONS, 1)
            .map_err(DemoError::Mock)?;
    }
    // The mock cannot create topics through the admin API; make the checkpoint topic here.
    let checkpoints = config.checkpoint.topic_name(&config.kafka.group_id);
    mock.create_topic(&checkpoints, config.checkpoint.partitions, 1)
        .map_err(DemoError::Mock)?;
    config.kafka.brokers = mock.bootstrap_servers();
    // The mock cluster's group coordinator is quick to re-balance with short sessions.
    config
        .kafka
        .properties
        .set_default("session.timeout.ms", "6000");

    let service = Service::start(&config).await?;
    let addr = service.local_addr();

    let brokers = config.kafka.brokers.clone();
    let topics = config.kafka.topics.clone();
    let generator_stop = shutdown.clone();
    let generator = std::thread::spawn(move || {
        generate::run(
            &brokers,
            &topics,
            visits_per_sec,
            0.002,
            &KafkaProperties::default(),
            generator_stop,
        )
    });

    println!(
        "ecom-pulse demo: in-process Kafka at {} ({} topics x {PARTITIONS} partitions), ~{visits_per_sec} visits/s\n\
         \n  metrics      http://{addr}/metrics\
         \n  KPIs (JSON)  http://{addr}/api/v1/kpis?window=5m\
         \n  by campaign  http://{addr}/api/v1/kpis?window=1h&group_by=campaign\
         \n  readiness    http://{addr}/readyz\
         \n  alerts       http://{addr}/api/v1/alerts\
         \n\nCampaign influencer_q4 drifts below ROAS 2 over ten minutes. Ctrl-C stops.",
        config.kafka.brokers,
        config.kafka.topics.len(),
    );

    let result = service.run(shutdown.clone()).await;
    shutdown.cancel();
    match tokio::task::spawn_blocking(move || generator.join()).await {
        Ok(Ok(Ok(sent))) => tracing::info!(sent, "generator stopped"),
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "generator failed"),
        _ => tracing::warn!("generator thread panicked"),
    }
    // Give librdkafka clients a moment to close against the mock before it goes away.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(mock);
    Ok(result?)
}
