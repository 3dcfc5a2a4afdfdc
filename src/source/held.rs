//! The consuming thread's handles on partition state, and the messages it holds aside for a
//! partition whose lock a reader has, applied in order once the lock is free.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::pure::decode::{Reason, Rejection};
use crate::pure::partition::PartitionState;
use crate::pure::pipeline::Outcome;
use crate::runtime::telemetry::Tally;
use crate::source::context::{Origin, SourceContext, describe};
use crate::source::deadletter::{DeadLetters, Rejected};
use crate::state::store::{SharedPartition, TopicPartition};

/// The consuming task's handles on partition state, refreshed when the assignment changes.
/// Keyed by topic first so a lookup does not allocate, then indexed by partition number
/// (small and dense) so it does not hash either.
#[derive(Default)]
pub(super) struct Handles {
    pub(super) generation: u64,
    pub(super) topics: Vec<(Box<str>, Vec<Option<Entry>>)>,
    pub(super) pending: Pending,
    /// Outcomes counted since the consume loop last added them to the shared counters.
    pub(super) tally: Tally,
}

/// What is held, over all entries.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) messages: usize,
    /// Their payloads' bytes.
    pub(super) bytes: usize,
    /// Outcomes of held messages just applied, settled once their partition's lock is
    /// released (a buffer kept from one release to the next).
    pub(super) settled: Vec<(i64, Outcome)>,
}

pub(super) struct Entry {
    pub(super) state: SharedPartition,
    /// Offset to reach before the partition counts as caught up.
    pub(super) catching_up_to: Option<i64>,
    /// Messages that came while a reader (a scrape, a checkpoint) held the state's lock, in
    /// offset order. The consumer goes on with other partitions instead of waiting, and
    /// applies these before any later message of this partition. The state's offset moves
    /// only when they are applied, so a checkpoint never counts them before that.
    pub(super) held: VecDeque<Held>,
}

/// A message as the pipeline takes it: borrowed from librdkafka, or copied while held.
pub(super) struct Arrived<P> {
    pub(super) offset: i64,
    /// The record's timestamp, if it has one.
    pub(super) record_ts: Option<i64>,
    /// When it arrived: a held message is judged late or early against this, not against
    /// the moment a lock let it through.
    pub(super) now: i64,
    pub(super) payload: Option<P>,
    /// The record's key: a dead letter keeps it.
    pub(super) key: Option<P>,
}

pub(super) type Held = Arrived<Box<[u8]>>;

impl Held {
    pub(super) fn borrowed(&self) -> Arrived<&[u8]> {
        Arrived {
            offset: self.offset,
            record_ts: self.record_ts,
            now: self.now,
            payload: self.payload.as_deref(),
            key: self.key.as_deref(),
        }
    }

    pub(super) fn bytes(&self) -> usize {
        self.payload.as_ref().map_or(0, |p| p.len()) + self.key.as_ref().map_or(0, |k| k.len())
    }
}

/// Held messages (or bytes of them) beyond which the consumer waits for the locks instead. A
/// scrape holds one partition for about a millisecond, a checkpoint for the time it takes to
/// encode one, so at a million messages a second a few thousand are held at most.
pub(super) const MAX_HELD: usize = 16_384;
pub(super) const MAX_HELD_BYTES: usize = 16 << 20;

impl Handles {
    /// Applies `message` to its partition's state, or holds it while a reader has the lock.
    pub(super) fn offer(
        &mut self,
        ctx: &SourceContext,
        topic: &str,
        partition: i32,
        message: Arrived<&[u8]>,
    ) {
        self.refresh(ctx);
        if self.pending.messages >= MAX_HELD || self.pending.bytes >= MAX_HELD_BYTES {
            self.apply_held(ctx, true);
        }
        let Some(entry) = entry(&mut self.topics, ctx, topic, partition) else {
            return;
        };
        if !entry.held.is_empty() {
            self.pending
                .release(ctx, &mut self.tally, topic, partition, entry, false);
        }
        if entry.held.is_empty()
            && let Some(mut state) = entry.state.try_write()
        {
            let outcome = apply(ctx, topic, partition, &mut state, &message);
            drop(state);
            settle(
                ctx,
                &mut self.tally,
                &mut entry.catching_up_to,
                topic,
                partition,
                message.offset,
                &outcome,
            );
            return;
        }
        let held = Arrived {
            offset: message.offset,
            record_ts: message.record_ts,
            now: message.now,
            payload: message.payload.map(Box::from),
            key: message.key.map(Box::from),
        };
        self.pending.messages += 1;
        self.pending.bytes += held.bytes();
        entry.held.push_back(held);
    }

    /// After a rebalance: the entries of partitions still assigned, with the same state, are
    /// kept, held messages and all (applied later, in order, before anything newer). The
    /// others go, and their held messages with them: the checkpoint written when the
    /// partition was revoked did not count those, so its next owner (maybe this instance
    /// again, from that checkpoint, with a new state) consumes them again.
    pub(super) fn refresh(&mut self, ctx: &SourceContext) {
        let generation = ctx.store.generation();
        if generation == self.generation {
            return;
        }
        for (topic, partitions) in &mut self.topics {
            for (index, slot) in partitions.iter_mut().enumerate() {
                let Some(entry) = slot else {
                    continue;
                };
                let tp = TopicPartition::new(topic, index as i32 - 1);
                if !ctx
                    .store
                    .get(&tp)
                    .is_some_and(|state| Arc::ptr_eq(&state, &entry.state))
                {
                    self.pending.messages -= entry.held.len();
                    self.pending.bytes -= entry.held.iter().map(Held::bytes).sum::<usize>();
                    *slot = None;
                }
            }
        }
        self.generation = generation;
    }

    /// Applies the held messages whose partitions are free, or, with `wait`, all of them.
    pub(super) fn release_held(&mut self, ctx: &SourceContext, wait: bool) {
        self.refresh(ctx);
        self.apply_held(ctx, wait);
    }

    pub(super) fn apply_held(&mut self, ctx: &SourceContext, wait: bool) {
        if self.pending.messages == 0 {
            return;
        }
        for (topic, partitions) in &mut self.topics {
            for (index, slot) in partitions.iter_mut().enumerate() {
                if let Some(entry) = slot.as_mut().filter(|e| !e.held.is_empty()) {
                    let partition = index as i32 - 1;
                    self.pending
                        .release(ctx, &mut self.tally, topic, partition, entry, wait);
                }
            }
        }
    }
}

impl Pending {
    /// Applies `entry`'s held messages if its lock is free (with `wait`, once it is), then
    /// settles them, in offset order, after releasing the lock.
    pub(super) fn release(
        &mut self,
        ctx: &SourceContext,
        tally: &mut Tally,
        topic: &str,
        partition: i32,
        entry: &mut Entry,
        wait: bool,
    ) {
        let state = if wait {
            Some(entry.state.write())
        } else {
            entry.state.try_write()
        };
        let Some(mut state) = state else {
            return;
        };
        for message in entry.held.drain(..) {
            self.messages -= 1;
            self.bytes -= message.bytes();
            let outcome = apply(ctx, topic, partition, &mut state, &message.borrowed());
            self.settled.push((message.offset, outcome));
        }
        drop(state);
        for (offset, outcome) in self.settled.drain(..) {
            settle(
                ctx,
                tally,
                &mut entry.catching_up_to,
                topic,
                partition,
                offset,
                &outcome,
            );
        }
    }
}

pub(super) fn apply(
    ctx: &SourceContext,
    topic: &str,
    partition: i32,
    state: &mut PartitionState,
    message: &Arrived<&[u8]>,
) -> Outcome {
    let record_ts = message.record_ts.unwrap_or(message.now);
    let outcome = match message.payload {
        // Read again for windows a configuration change could not carry over.
        Some(payload) if state.rebuilding(message.offset) => {
            ctx.pipeline.replay(state, payload, record_ts, message.now)
        }
        Some(payload) => ctx.pipeline.process(state, payload, record_ts, message.now),
        None if state.rebuilding(message.offset) => Outcome::Rebuilt { timestamp_ms: None },
        None => Outcome::Rejected(Rejection {
            reason: Reason::MalformedJson,
            field: None,
            detail: "message has no value",
        }),
    };
    // The offset moves with the state, under the same lock: a checkpoint never holds one
    // without the other.
    let time = match outcome {
        Outcome::Accepted { timestamp_ms, .. }
        | Outcome::Rebuilt {
            timestamp_ms: Some(timestamp_ms),
        } => timestamp_ms,
        _ => record_ts,
    };
    if let (Outcome::Rejected(rejection), Some(dead_letters)) = (&outcome, &ctx.dead_letters) {
        dead_letter(
            ctx,
            dead_letters,
            topic,
            partition,
            state,
            message,
            rejection,
        );
    }
    state.applied(message.offset, message.now, time);
    outcome
}

/// Sends a rejected message to the dead-letter topic, unless an earlier owner of the
/// partition already did (see `deadletter`). Under the partition's lock: a checkpoint never
/// covers a message whose dead letter is not on its way.
pub(super) fn dead_letter(
    ctx: &SourceContext,
    dead_letters: &DeadLetters,
    topic: &str,
    partition: i32,
    state: &mut PartitionState,
    message: &Arrived<&[u8]>,
    rejection: &Rejection,
) {
    if !state.dead_letter_due(message.offset) {
        return;
    }
    let from = TopicPartition::new(topic, partition);
    let rejected = Rejected {
        from: &from,
        offset: message.offset,
        key: message.key,
        value: message.payload,
        timestamp_ms: message.record_ts,
        rejection,
    };
    if let Err(e) = dead_letters.send(&rejected, &|| ctx.shutdown.is_cancelled()) {
        // Only when shutting down with the topic out of reach: no checkpoint may cover this
        // message now, so that the next start reads it, and sends it, again.
        ctx.warn_limited(
            "a dead letter could not be sent; the partition is not checkpointed again",
            &e,
        );
        state.hold_checkpoints();
    }
}

/// What follows an applied message outside its state: catch-up progress and telemetry.
pub(super) fn settle(
    ctx: &SourceContext,
    tally: &mut Tally,
    catching_up_to: &mut Option<i64>,
    topic: &str,
    partition: i32,
    offset: i64,
    outcome: &Outcome,
) {
    let origin = Origin {
        topic,
        partition,
        offset,
    };
    tally.record(&ctx.telemetry, outcome, &origin);
    if let Some(target) = *catching_up_to {
        tally.replayed();
        if offset + 1 >= target {
            *catching_up_to = None;
            let tp = TopicPartition::new(topic, partition);
            // Counted before ready: the first scrape after /readyz turns 200 must hold every
            // event applied so far, this one included.
            ctx.telemetry.add(tally);
            ctx.caught_up(&tp);
            tracing::info!(partition = %describe(&[tp]), "caught up");
        }
    }
}

/// The handle on `topic`/`partition`, created on first use.
pub(super) fn entry<'a>(
    topics: &'a mut Vec<(Box<str>, Vec<Option<Entry>>)>,
    ctx: &SourceContext,
    topic: &str,
    partition: i32,
) -> Option<&'a mut Entry> {
    let t = match topics.iter().position(|(t, _)| **t == *topic) {
        Some(t) => t,
        None => {
            topics.push((topic.into(), Vec::new()));
            topics.len() - 1
        }
    };
    // One past the partition number: a consumed message always carries its partition,
    // but should one ever come with librdkafka's "unassigned" -1, it gets a slot of its
    // own rather than partition 0's.
    let index = usize::try_from(i64::from(partition) + 1).unwrap_or_default();
    let partitions = &mut topics[t].1;
    if partitions.len() <= index {
        partitions.resize_with(index + 1, || None);
    }
    if partitions[index].is_none() {
        let tp = TopicPartition::new(topic, partition);
        // No state installed: the partition is being taken over (its messages until then
        // were fetched before it was paused, and its take-over seeks back before them) or
        // was just revoked. Its messages are not this state's to apply.
        let state = ctx.store.get(&tp)?;
        let catching_up_to = ctx
            .health
            .progress(&tp)
            .filter(|p| !p.caught_up)
            .and_then(|p| p.target);
        partitions[index] = Some(Entry {
            state,
            catching_up_to,
            held: VecDeque::new(),
        });
    }
    partitions[index].as_mut()
}
