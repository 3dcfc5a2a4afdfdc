//! Taking over newly assigned partitions: reading their checkpoints, restoring or starting
//! their state, and saying where each one's consumption starts.
//!
//! This runs on a thread of its own, not in the rebalance callback: a restore takes seconds
//! (reading the checkpoint topic, the watermarks, maybe the dead-letter topic), and a member
//! that spends them inside the callback is late for the group's next rebalance, which sets
//! off another one; two such members kept a group rebalancing for good, each holding its
//! partitions a few seconds at a time. The consumer assigns the partitions at once, paused,
//! and installs each state and seeks to its start when this is done (`Source`).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::Offset;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_util::sync::CancellationToken;

use super::{describe, warn_within};
use crate::pure::partition::PartitionState;
use crate::pure::pipeline::Pipeline;
use crate::runtime::health::{Health, Progress};
use crate::runtime::rate_limit::RateLimit;
use crate::runtime::telemetry::Telemetry;
use crate::source::checkpoints::CheckpointStore;
use crate::source::client::Quiet;
use crate::source::deadletter::DeadLetters;
use crate::state::store::TopicPartition;

/// A partition taken over: its state, where its consumption starts, and how far it has to
/// catch up.
pub struct Restored {
    pub tp: TopicPartition,
    pub state: PartitionState,
    pub start: Offset,
    pub progress: Progress,
}

/// What taking partitions over needs, cheap to clone onto the thread that does it.
#[derive(Clone)]
pub struct Restorer {
    pub pipeline: Arc<Pipeline>,
    pub telemetry: Arc<Telemetry>,
    pub health: Arc<Health>,
    pub checkpoints: Arc<CheckpointStore>,
    pub dead_letters: Option<Arc<DeadLetters>>,
    pub shutdown: CancellationToken,
    /// Watermarks and metadata, asked on connections of its own (the group consumer's
    /// thread is not this one).
    pub probe: Arc<BaseConsumer<Quiet>>,
    pub errors: Arc<RateLimit>,
}

impl Restorer {
    /// Restores (or starts fresh) the state of newly assigned partitions and says where each
    /// one's consumption starts. `None` if shutting down before the checkpoints could be read.
    pub fn take_over(&self, tps: &[TopicPartition]) -> Option<Vec<Restored>> {
        crate::runtime::fault::hang("restore", &|| self.shutdown.is_cancelled());
        let mut loaded = loop {
            match self.checkpoints.load(tps, Duration::from_secs(60)) {
                Ok(loaded) => break loaded,
                // Starting without the checkpoint would count events twice or lose them, so
                // keep trying; the group waits (readiness says so).
                Err(e) => {
                    self.telemetry.kafka_error("checkpoint_read");
                    warn_within(&self.errors, "cannot read checkpoints yet; retrying", &e);
                    if self.shutdown.is_cancelled() {
                        return None;
                    }
                    // Back-off between attempts against an unavailable broker.
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        };
        self.learn_partition_counts(tps);
        let mut restored = Vec::with_capacity(tps.len());
        for tp in tps {
            let watermarks = self
                .probe
                .fetch_watermarks(&tp.topic, tp.partition, Duration::from_secs(10))
                .ok();
            let low = watermarks.map(|(low, _)| low);
            let (mut state, start, how) = match loaded.remove(tp) {
                Some(l) => {
                    let mut state = l.state;
                    let reshape = state.reconfigure(&self.pipeline, &l.layout, crate::now_ms());
                    let (how, start) = if reshape.kept_all() {
                        ("restored", l.manifest.next_offset)
                    } else {
                        (
                            "reconfigured",
                            self.plan_rebuild(tp, &mut state, &reshape, low),
                        )
                    };
                    if let Some(low) = low.filter(|low| *low > l.manifest.next_offset) {
                        tracing::warn!(
                            partition = %describe(std::slice::from_ref(tp)),
                            checkpoint = l.manifest.next_offset,
                            retained_from = low,
                            "the topic no longer holds everything after the checkpoint; those events are lost"
                        );
                        state.cover_from_next_message();
                    }
                    self.skip_dead_lettered(tp, &mut state, l.manifest.dead_letters);
                    (state, Offset::Offset(start), how)
                }
                None => {
                    let mut state = self.pipeline.new_partition();
                    state.start_at(low.unwrap_or(0));
                    // Retention removed the start of the topic: the windows hold what is
                    // left, from its first record on.
                    if low.is_some_and(|low| low > 0) {
                        state.cover_from_next_message();
                    }
                    self.skip_dead_lettered(tp, &mut state, None);
                    (state, Offset::Beginning, "fresh")
                }
            };
            self.telemetry.restored(how);
            // Until the metadata is known, the assignment's own partitions of the topic: a
            // larger share than the exact one, never a smaller one.
            let partitions = self
                .health
                .topic_partitions(&tp.topic)
                .unwrap_or_else(|| tps.iter().filter(|other| other.topic == tp.topic).count());
            state.set_key_share(self.pipeline.key_share(partitions));
            let target = watermarks.map(|(_, high)| high);
            let caught_up =
                target.is_some_and(|t| state.next_offset() >= t) && !state.is_rebuilding();
            if caught_up {
                state.cover_pending_from(crate::now_ms());
                state.settle();
            }
            tracing::info!(
                partition = %describe(std::slice::from_ref(tp)),
                state = how,
                from = state.next_offset(),
                to = ?target,
                "taking over partition"
            );
            restored.push(Restored {
                tp: tp.clone(),
                state,
                start,
                progress: Progress { target, caught_up },
            });
        }
        Some(restored)
    }

    /// Reads the dead-letter topic from where the checkpoint says its dead letters after it
    /// go (`mark`; `None`: no checkpoint says, so from the beginning) for those of `tp` an
    /// earlier owner already sent, which replaying `tp` must not send again.
    fn skip_dead_lettered(
        &self,
        tp: &TopicPartition,
        state: &mut PartitionState,
        mark: Option<crate::state::checkpoint::DeadLetterMark>,
    ) {
        let Some(dead_letters) = &self.dead_letters else {
            return;
        };
        let found = match mark {
            Some(mark) => dead_letters.last_sent(tp, mark.partition, Some(mark.offset)),
            None => dead_letters
                .partition_of(tp)
                .and_then(|partition| dead_letters.last_sent(tp, partition, None)),
        };
        match found {
            Ok(Some(through)) => state.dead_lettered_through(through),
            Ok(None) => {}
            // Not there yet (nothing was ever sent), or not readable: at worst a few dead
            // letters are sent twice.
            Err(e) => warn_within(
                &self.errors,
                "cannot read the dead-letter topic; rejected events replayed may be sent again",
                &e,
            ),
        }
    }

    /// Where a restored partition whose windows the configuration changed starts reading:
    /// from where its offset index says the rebuilt windows' events begin, or, if it does
    /// not reach back that far, from the oldest record the topic retains (`low`).
    fn plan_rebuild(
        &self,
        tp: &TopicPartition,
        state: &mut PartitionState,
        reshape: &crate::pure::partition::Reshape,
        low: Option<i64>,
    ) -> i64 {
        use crate::pure::rebuild::{COMPLETE, UNKNOWN};
        let indexed = state
            .rebuild_start(&self.pipeline, reshape, crate::now_ms())
            .filter(|&(offset, _)| low.is_none_or(|low| offset >= low));
        let (from, covers) = match (indexed, low) {
            (Some(found), _) => found,
            // The whole topic is still there: rebuilt from its beginning, complete.
            (None, Some(0)) => (0, COMPLETE),
            // Partly: complete from its oldest record's time.
            (None, Some(low)) => (low, UNKNOWN),
            // Watermarks unknown: nothing to rebuild from; the windows fill from now.
            (None, None) => (state.next_offset(), UNKNOWN),
        };
        let start = state.start_rebuild(reshape, from, covers, self.pipeline.new_dedup());
        tracing::info!(
            partition = %describe(std::slice::from_ref(tp)),
            from = start,
            to = state.next_offset(),
            "the window configuration changed: reading the partition again for the windows it cannot carry over"
        );
        start
    }

    /// Makes sure the partition counts of the assigned partitions' topics are known (the
    /// statistics report them each second, but the first assignment can come before the
    /// first report): they set each partition's share of `limits.max_keys`.
    fn learn_partition_counts(&self, tps: &[TopicPartition]) {
        let unknown: std::collections::BTreeSet<&str> = tps
            .iter()
            .map(|tp| &*tp.topic)
            .filter(|topic| self.health.topic_partitions(topic).is_none())
            .collect();
        for topic in unknown {
            match self
                .probe
                .fetch_metadata(Some(topic), Duration::from_secs(10))
            {
                Ok(metadata) => {
                    for t in metadata.topics() {
                        self.health
                            .set_topic_partitions(t.name(), t.partitions().len());
                    }
                }
                Err(e) => warn_within(&self.errors, "cannot read topic metadata", &e),
            }
        }
    }
}
