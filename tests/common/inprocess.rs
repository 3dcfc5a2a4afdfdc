//! The service in the test's own process, on librdkafka's in-process mock cluster: for fault
//! injection and for what Tansu cannot serve.

use std::time::Duration;

use ecom_pulse::config::Config;
use ecom_pulse::service::{Service as Ecom, ServiceError};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::service::service_config;
use super::{TOPICS, free_port, now_ms};

pub type Mock<'a> = MockCluster<'a, DefaultProducerContext>;

/// The input topics on `mock`, `partitions` each replicated `replication` times, and a
/// checkpoint topic for a new group named after `group_prefix`: the brokers and the group.
pub fn mock_topics(
    mock: &Mock<'_>,
    partitions: i32,
    replication: i32,
    group_prefix: &str,
) -> (String, String) {
    for topic in TOPICS {
        mock.create_topic(topic, partitions, replication).unwrap();
    }
    let group = format!("{group_prefix}-{}", now_ms());
    mock.create_topic(&format!("{group}-checkpoints"), 4, replication)
        .unwrap();
    (mock.bootstrap_servers(), group)
}

/// The service on `brokers` in `group`, in-process and not yet running: its HTTP port and
/// itself.
pub async fn in_process(brokers: &str, group: &str, extra_config: &str) -> (u16, Ecom) {
    let port = free_port();
    let config = Config::from_toml(&service_config(brokers, group, port, extra_config)).unwrap();
    (port, Ecom::start(&config).await.unwrap())
}

/// [`mock_topics`] and [`in_process`] together: the brokers, the group, the port, the service.
pub async fn service_on(
    mock: &Mock<'_>,
    partitions: i32,
    replication: i32,
    group_prefix: &str,
    extra_config: &str,
) -> (String, String, u16, Ecom) {
    let (brokers, group) = mock_topics(mock, partitions, replication, group_prefix);
    let (port, service) = in_process(&brokers, &group, extra_config).await;
    (brokers, group, port, service)
}

/// Stops the service and requires a clean exit.
pub async fn shut_down(stop: CancellationToken, running: JoinHandle<Result<(), ServiceError>>) {
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the service stops")
        .unwrap()
        .unwrap();
}
