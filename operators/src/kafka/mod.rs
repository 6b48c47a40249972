//! Kafka: a checkpointed source that assigns partitions to subtasks without group rebalancing.

mod source;

pub use source::{KafkaSource, StartOffsets};
