//! Kafka: a checkpointed source that assigns partitions to subtasks without group rebalancing,
//! and a sink that delivers at least once or exactly once.

mod sink;
mod source;

pub use sink::{published_ids, Delivery, KafkaSink, KafkaSinkOperator, Serializer};
pub use source::{KafkaSource, StartOffsets};
