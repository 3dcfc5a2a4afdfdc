//! Watching the group from outside the consumer: high watermarks of partitions that did not
//! move, asked of the brokers on connections of their own, so a stalled partition shows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::runtime::health::Health;
use crate::source::client::Quiet;
use crate::source::{Kafka, SHUTDOWN_STEP};
use crate::state::store::TopicPartition;

/// How often the high watermarks of partitions that did not move are asked of the brokers.
/// A stall shows this much later at most; the shipped alert waits minutes.
pub(super) const PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// How long one partition's probe may take; shutdown waits for one at most.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The probing client: the consumer's connection settings, none of its group's.
pub(super) fn probe_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = crate::source::client::side_client(cfg);
    c.set("client.id", "ecom-pulse-watermarks");
    c
}

/// Keeps the high watermarks of assigned partitions that stopped moving up to date, asked of
/// the brokers by a client of its own. The statistics' high watermarks come from the
/// consumer's fetches, so when the broker fails every fetch of a partition (Tansu does with
/// a snappy batch, dropping the connection) they stay where they were: the partition looks
/// caught up and idle, and its stall would be quiet. A partition that moved since the last
/// round is being fetched, so its statistics are fresh and it is not asked about.
///
/// It also watches the group as a whole: a partition of the consumed topics whose committed
/// offset has not moved for `unconsumed_after` while it has events waiting is consumed by no
/// one (or stalled where it is). An instance holding nothing while its group has such
/// partitions is not ready: every member must be at work, and one that is not says so.
pub(super) async fn probe_loop(
    consumer: Arc<Kafka>,
    probe: Arc<BaseConsumer<Quiet>>,
    topics: Vec<String>,
    unconsumed_after: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut previous = ProbeState::default();
    let mut round: Option<tokio::task::JoinHandle<ProbeState>> = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                crate::runtime::fault::trip("probe");
                // A round still going (a broker that does not answer) skips this tick.
                if round.as_ref().is_some_and(|r| !r.is_finished()) {
                    continue;
                }
                if let Some(r) = round.take() {
                    previous = r.await.unwrap_or_default();
                }
                let (consumer, probe, stop) = (consumer.clone(), probe.clone(), shutdown.clone());
                let topics = topics.clone();
                let previous = std::mem::take(&mut previous);
                round = Some(tokio::task::spawn_blocking(move || {
                    let health = &consumer.context().health;
                    let next_offsets = probe_round(health, &probe, &previous.next_offsets, &stop);
                    let commits = watch_group(
                        &consumer,
                        &probe,
                        &topics,
                        previous.commits,
                        unconsumed_after,
                        &stop,
                    );
                    ProbeState { next_offsets, commits }
                }));
            }
        }
    }
    if let Some(r) = round {
        let _ = tokio::time::timeout(SHUTDOWN_STEP, r).await;
    }
}

/// What one probing round hands the next.
#[derive(Default)]
pub(super) struct ProbeState {
    /// Each assigned partition's next offset.
    pub(super) next_offsets: BTreeMap<TopicPartition, i64>,
    /// Each partition of the consumed topics: its committed offset, and since when it has
    /// been that.
    pub(super) commits: BTreeMap<TopicPartition, (i64, i64)>,
}

/// The group's committed offsets and the partitions' high watermarks: counts the partitions
/// with events waiting whose committed offset has not moved for `after` (see `probe_loop`)
/// into `Health`, and returns the commits for the next round.
pub(super) fn watch_group(
    consumer: &Kafka,
    probe: &BaseConsumer<Quiet>,
    topics: &[String],
    mut commits: BTreeMap<TopicPartition, (i64, i64)>,
    after: Duration,
    shutdown: &CancellationToken,
) -> BTreeMap<TopicPartition, (i64, i64)> {
    let health = &consumer.context().health;
    // An instance that holds nothing may have no statistics on the topics: ask.
    for topic in topics {
        if health.topic_partitions(topic).is_none()
            && let Ok(metadata) = probe.fetch_metadata(Some(topic), PROBE_TIMEOUT)
        {
            for t in metadata.topics() {
                health.set_topic_partitions(t.name(), t.partitions().len());
            }
        }
    }
    let all = health.topic_partition_list();
    if all.is_empty() || shutdown.is_cancelled() {
        return commits;
    }
    let mut list = TopicPartitionList::new();
    for tp in &all {
        list.add_partition(&tp.topic, tp.partition);
    }
    let Ok(committed) = consumer.committed_offsets(list, PROBE_TIMEOUT) else {
        return commits;
    };
    let now = crate::now_ms();
    let mut unconsumed = 0;
    for e in committed.elements() {
        let tp = TopicPartition::new(e.topic(), e.partition());
        // Never committed: as from the start.
        let offset = e.offset().to_raw().filter(|o| *o >= 0).unwrap_or(0);
        let since = match commits.get(&tp) {
            Some(&(was, since)) if was == offset => since,
            _ => now,
        };
        commits.insert(tp.clone(), (offset, since));
        if now - since < after.as_millis() as i64 || shutdown.is_cancelled() {
            continue;
        }
        if let Ok((_, high)) = probe.fetch_watermarks(&tp.topic, tp.partition, PROBE_TIMEOUT)
            && high > offset
        {
            unconsumed += 1;
        }
    }
    commits.retain(|tp, _| all.contains(tp));
    health.set_unconsumed(unconsumed);
    commits
}

/// Probes the assigned partitions whose next offset is the same as in `previous`; returns
/// every assigned partition's next offset, for the next round.
pub(super) fn probe_round(
    health: &Health,
    probe: &BaseConsumer<Quiet>,
    previous: &BTreeMap<TopicPartition, i64>,
    shutdown: &CancellationToken,
) -> BTreeMap<TopicPartition, i64> {
    let now = health.next_offsets();
    for (tp, next) in &now {
        if previous.get(tp) != Some(next) || shutdown.is_cancelled() {
            continue;
        }
        // A failure here says nothing the consumer's own errors do not say better.
        if let Ok((_, high)) = probe.fetch_watermarks(&tp.topic, tp.partition, PROBE_TIMEOUT) {
            health.probed(tp, high);
        }
    }
    // Errors and logs queue up on a client that is never polled otherwise.
    probe.poll(Duration::from_millis(10));
    now.into_iter().collect()
}
