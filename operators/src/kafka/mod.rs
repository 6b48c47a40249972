//! Kafka: a checkpointed source that assigns partitions to subtasks without group rebalancing,
//! and a sink that delivers at least once or exactly once.

mod args;
mod sink;
mod source;

pub use args::KafkaArgs;
pub use sink::{
    check_transaction_timeout, published_ids, Delivery, KafkaSink, KafkaSinkOperator, Serializer,
    DEFAULT_TRANSACTION_TIMEOUT,
};
pub use source::{KafkaSource, StartOffsets};
