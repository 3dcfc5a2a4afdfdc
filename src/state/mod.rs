//! The state the core's values live in: the store of partitions the consumer shares with the
//! read side, and the checkpoint format that saves a partition with its offset.

pub mod checkpoint;
pub mod pipeline;
pub mod store;

#[cfg(test)]
mod tests;
