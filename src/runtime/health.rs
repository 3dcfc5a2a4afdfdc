//! Readiness: whether the consumer is connected, assigned and caught up, where each assigned
//! partition stands, and which partitions this instance's numbers cover.

use crate::state::store::TopicPartition;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Where an assigned partition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// High watermark when it was assigned: reaching it means caught up. `None` if unknown
    /// (then librdkafka's statistics decide).
    pub target: Option<i64>,
    pub caught_up: bool,
}

/// Which input partitions an instance's numbers come from, against all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// The partitions this instance holds.
    pub held: Vec<TopicPartition>,
    /// Partitions of the consumed topics, in the metadata; 0 while unknown.
    pub total: usize,
}

impl Coverage {
    /// True when this instance holds every partition of the consumed topics: its numbers
    /// are the whole fleet's.
    pub fn complete(&self) -> bool {
        self.total > 0 && self.held.len() >= self.total
    }
}

/// How an assigned partition moves: what the statistics last said of it, and when it last
/// advanced. A partition that has lag but does not advance is stalled (an unreadable batch, a
/// fetch the broker keeps failing), which nothing else shows: the consumer, readiness and the
/// other partitions all carry on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Messages behind the high watermark; `None` until a report gave it.
    pub lag: Option<i64>,
    /// Offset of the next message to apply, as last seen.
    pub next_offset: i64,
    /// Wall-clock time it was assigned or last seen to advance.
    pub advanced_at_ms: i64,
    /// The high watermark last asked of the broker apart from the consumer's fetches, if any.
    pub probed_high: Option<i64>,
    /// Being taken over (its checkpoint read, its state restored) since `advanced_at_ms`:
    /// there is work waiting, and it is not being done.
    pub restoring: bool,
}

/// Readiness: connection, assignment and catch-up.
#[derive(Debug, Default)]
pub struct Health {
    connected: AtomicBool,
    /// Set while newly assigned partitions are being restored.
    restoring: AtomicBool,
    /// `None` until the group has given this instance its first assignment.
    assignment: Mutex<Option<BTreeMap<TopicPartition, Progress>>>,
    /// Per assigned partition, from the statistics each second.
    flows: Mutex<BTreeMap<TopicPartition, Flow>>,
    /// Partition count of each consumed topic, as the client's metadata last had it.
    topic_partitions: Mutex<BTreeMap<String, usize>>,
    /// A task that stopped early, once one has: never ready again.
    failed: Mutex<Option<String>>,
    /// Shutting down (a signal, or a failure): draining, not ready.
    stopping: AtomicBool,
    /// Partitions of the consumed topics with events waiting that no member has committed
    /// progress on lately (see `source::probe_loop`).
    unconsumed: AtomicU64,
}

impl Health {
    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Release);
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn set_restoring(&self, restoring: bool) {
        self.restoring.store(restoring, Ordering::Release);
    }

    /// Records newly assigned (and already restored) partitions.
    pub fn assign(&self, partitions: &[(TopicPartition, Progress)]) {
        let now = crate::now_ms();
        let mut assignment = self.assignment.lock();
        let map = assignment.get_or_insert_with(BTreeMap::new);
        let mut flows = self.flows.lock();
        for (tp, progress) in partitions {
            map.insert(tp.clone(), *progress);
            flows.insert(
                tp.clone(),
                Flow {
                    lag: None,
                    next_offset: i64::MIN,
                    advanced_at_ms: now,
                    probed_high: None,
                    restoring: false,
                },
            );
        }
    }

    /// Partitions the group just gave this instance, not restored yet (see [`Flow`]).
    pub fn taking_over(&self, tps: &[TopicPartition], now_ms: i64) {
        let mut flows = self.flows.lock();
        for tp in tps {
            flows.insert(
                tp.clone(),
                Flow {
                    lag: None,
                    next_offset: i64::MIN,
                    advanced_at_ms: now_ms,
                    probed_high: None,
                    restoring: true,
                },
            );
        }
    }

    /// Every partition of the consumed topics, as the metadata last had them.
    pub fn topic_partition_list(&self) -> Vec<TopicPartition> {
        self.topic_partitions
            .lock()
            .iter()
            .flat_map(|(topic, &n)| (0..n as i32).map(move |p| TopicPartition::new(topic, p)))
            .collect()
    }

    /// How many partitions of the group are consumed by no one (see `unconsumed`).
    pub fn set_unconsumed(&self, partitions: usize) {
        self.unconsumed.store(partitions as u64, Ordering::Release);
    }

    pub fn unconsumed(&self) -> u64 {
        self.unconsumed.load(Ordering::Acquire)
    }

    /// Shutdown began: not ready from now on, while the service drains.
    pub fn shut_down(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// A task stopped before shutdown: not ready from now on, with the reason.
    pub fn fail(&self, failure: &crate::runtime::task::TaskFailure) {
        tracing::error!(task = failure.task, cause = %failure.cause, "a task of the service stopped; shutting down to be restarted");
        self.failed
            .lock()
            .get_or_insert_with(|| failure.to_string());
    }

    /// Records a topic's partition count (a count of 0, a topic not known yet, is ignored).
    pub fn set_topic_partitions(&self, topic: &str, partitions: usize) {
        if partitions > 0 {
            self.topic_partitions
                .lock()
                .insert(topic.to_string(), partitions);
        }
    }

    /// The partition count of `topic`, if known.
    pub fn topic_partitions(&self, topic: &str) -> Option<usize> {
        self.topic_partitions.lock().get(topic).copied()
    }

    /// Every known partition of the consumed topics, and how many of them are assigned here.
    pub fn coverage(&self) -> Coverage {
        let total = self.topic_partitions.lock().values().sum();
        let held = self.assigned();
        Coverage { held, total }
    }

    /// Records a statistics report's view of an assigned partition at `now_ms`.
    pub fn flow(&self, tp: &TopicPartition, next_offset: i64, lag: Option<i64>, now_ms: i64) {
        if let Some(f) = self.flows.lock().get_mut(tp) {
            // Nothing to read is not a stall: the clock starts when there is lag and the
            // partition stops moving.
            if next_offset > f.next_offset || lag.is_some_and(|l| l <= 0) {
                f.advanced_at_ms = now_ms;
            }
            f.next_offset = f.next_offset.max(next_offset);
            if lag.is_some() {
                f.lag = lag;
            }
        }
    }

    /// Records a high watermark asked of the broker apart from the consumer's own fetches
    /// (see `source::probe_loop`): a fetch the broker keeps failing leaves the statistics'
    /// high watermark where it was, and the partition would look idle instead of stalled.
    pub fn probed(&self, tp: &TopicPartition, high: i64) {
        if let Some(f) = self.flows.lock().get_mut(tp) {
            f.probed_high = f.probed_high.max(Some(high));
        }
    }

    /// The high watermark last probed for `tp`, if any.
    pub fn probed_high(&self, tp: &TopicPartition) -> Option<i64> {
        self.flows.lock().get(tp).and_then(|f| f.probed_high)
    }

    /// Each assigned partition's next offset as the statistics last saw it (`i64::MIN` before
    /// the first report).
    pub fn next_offsets(&self) -> Vec<(TopicPartition, i64)> {
        self.flows
            .lock()
            .iter()
            .map(|(tp, f)| (tp.clone(), f.next_offset))
            .collect()
    }

    /// Per assigned partition, how long it has had lag without advancing, at `now_ms` (zero
    /// when it has no lag, or none is known yet).
    pub fn stalled(&self, now_ms: i64) -> Vec<(TopicPartition, Duration)> {
        self.flows
            .lock()
            .iter()
            .map(|(tp, f)| {
                let stalled = match f.lag {
                    _ if f.restoring => (now_ms - f.advanced_at_ms).max(0),
                    Some(lag) if lag > 0 => (now_ms - f.advanced_at_ms).max(0),
                    _ => 0,
                };
                (tp.clone(), Duration::from_millis(stalled as u64))
            })
            .collect()
    }

    /// Marks the start of an assignment that may be empty (an idle group member).
    pub fn assignment_received(&self) {
        self.assignment.lock().get_or_insert_with(BTreeMap::new);
    }

    pub fn revoke(&self, tps: &[TopicPartition]) {
        if let Some(map) = self.assignment.lock().as_mut() {
            for tp in tps {
                map.remove(tp);
            }
        }
        let mut flows = self.flows.lock();
        for tp in tps {
            flows.remove(tp);
        }
    }

    /// Marks a partition as having reached its target once.
    pub fn caught_up(&self, tp: &TopicPartition) {
        if let Some(p) = self.assignment.lock().as_mut().and_then(|m| m.get_mut(tp)) {
            p.caught_up = true;
        }
    }

    pub fn progress(&self, tp: &TopicPartition) -> Option<Progress> {
        self.assignment
            .lock()
            .as_ref()
            .and_then(|m| m.get(tp).copied())
    }

    pub fn assigned(&self) -> Vec<TopicPartition> {
        self.assignment
            .lock()
            .as_ref()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Assigned partitions not caught up yet.
    pub fn catching_up(&self) -> Vec<TopicPartition> {
        self.assignment
            .lock()
            .as_ref()
            .map(|m| {
                m.iter()
                    .filter(|(_, p)| !p.caught_up)
                    .map(|(tp, _)| tp.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `Ok` when ready to serve trustworthy numbers, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if let Some(failed) = self.failed.lock().as_ref() {
            return Err(format!("{failed}; shutting down"));
        }
        if self.stopping.load(Ordering::Acquire) {
            return Err("shutting down".into());
        }
        // Before the connection: a restore under way holds the consuming thread, whose
        // statistics report the connection.
        if self.restoring.load(Ordering::Acquire) {
            return Err("restoring newly assigned partitions from their checkpoints".into());
        }
        if !self.connected() {
            return Err("not connected to Kafka".into());
        }
        if self.assignment.lock().is_none() {
            return Err("waiting for a partition assignment from the consumer group".into());
        }
        let unconsumed = self.unconsumed();
        if unconsumed > 0 && self.assigned().is_empty() {
            return Err(format!(
                "this instance holds no partition while {unconsumed} partitions of its group have events no one consumes"
            ));
        }
        let behind: Vec<String> = self
            .catching_up()
            .iter()
            .map(|tp| format!("{}/{}", tp.topic, tp.partition))
            .collect();
        if behind.is_empty() {
            Ok(())
        } else {
            Err(format!("restoring or catching up on {}", behind.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stalled means lag without progress: idling caught up is not, and neither is a
    /// partition that keeps advancing however far behind it is.
    #[test]
    fn a_partition_is_stalled_only_while_it_has_lag_and_does_not_advance() {
        let h = Health::default();
        let tp = TopicPartition::new("visits", 0);
        h.assign(&[(
            tp.clone(),
            Progress {
                target: Some(0),
                caught_up: true,
            },
        )]);
        let stalled = |at: i64| h.stalled(at)[0].1.as_millis() as i64;
        let t = crate::now_ms();
        assert_eq!(stalled(t + 5_000), 0, "no lag known yet");
        h.flow(&tp, 10, Some(0), t);
        h.flow(&tp, 10, Some(0), t + 60_000);
        assert_eq!(stalled(t + 61_000), 0, "idle, caught up");
        // Messages arrive but the partition does not move.
        h.flow(&tp, 10, Some(5), t + 62_000);
        h.flow(&tp, 10, Some(9), t + 70_000);
        assert_eq!(stalled(t + 72_000), 72_000 - 60_000);
        // It moves again, still behind: not stalled.
        h.flow(&tp, 11, Some(8), t + 73_000);
        assert_eq!(stalled(t + 73_500), 500);
        h.revoke(std::slice::from_ref(&tp));
        assert!(h.stalled(t + 80_000).is_empty());
    }

    /// A task that stopped, or a shutdown, makes an otherwise ready instance not ready, with
    /// the reason; a failure is never forgotten.
    #[test]
    fn a_failed_task_or_a_shutdown_is_not_ready() {
        let h = Health::default();
        h.set_connected(true);
        h.assignment_received();
        assert_eq!(h.readiness(), Ok(()));
        h.fail(&crate::runtime::task::TaskFailure::new(
            "checkpoint writer",
            "panicked: boom",
        ));
        let why = h.readiness().unwrap_err();
        assert!(
            why.contains("checkpoint writer stopped: panicked: boom"),
            "{why}"
        );
        h.fail(&crate::runtime::task::TaskFailure::new("other", "later"));
        assert!(h.readiness().unwrap_err().contains("checkpoint writer"));
        let h = Health::default();
        h.set_connected(true);
        h.assignment_received();
        h.shut_down();
        assert_eq!(h.readiness(), Err("shutting down".to_string()));
    }

    #[test]
    fn readiness_needs_connection_assignment_and_catch_up() {
        let h = Health::default();
        assert!(h.readiness().unwrap_err().contains("not connected"));
        h.set_connected(true);
        assert!(h.readiness().unwrap_err().contains("assignment"));
        let tps = [
            TopicPartition::new("visits", 0),
            TopicPartition::new("orders", 0),
        ];
        let behind = Progress {
            target: Some(10),
            caught_up: false,
        };
        h.assign(&[(tps[0].clone(), behind), (tps[1].clone(), behind)]);
        let why = h.readiness().unwrap_err();
        assert!(
            why.contains("visits/0") && why.contains("orders/0"),
            "{why}"
        );
        h.caught_up(&tps[0]);
        h.caught_up(&tps[1]);
        assert_eq!(h.readiness(), Ok(()));
        h.set_restoring(true);
        assert!(h.readiness().unwrap_err().contains("restoring"));
        h.set_restoring(false);
        h.revoke(&tps);
        assert_eq!(
            h.readiness(),
            Ok(()),
            "an empty assignment is a valid, idle member"
        );
        h.set_connected(false);
        assert!(h.readiness().is_err());
    }
}
