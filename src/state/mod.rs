//! The state the core's values live in: per-partition aggregates, the store the read side
//! shares with the consumer, and the checkpoint format that saves them.

pub mod aggregate;
pub mod checkpoint;
