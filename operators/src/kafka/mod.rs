//! Kafka: a checkpointed source that assigns partitions to subtasks without group rebalancing,
//! and a sink that delivers at least once or exactly once.

mod args;
mod at_least_once;
mod producer;
mod publish;
mod sink;
pub(crate) mod source;
pub(crate) mod state;
mod txn;

pub use args::KafkaArgs;
pub use at_least_once::KafkaAtLeastOnceSink;
pub use producer::published_ids;
pub use publish::KafkaPublishSink;
pub use sink::{check_transaction_timeout, Delivery, KafkaSink, Serializer, DEFAULT_TRANSACTION_TIMEOUT};
pub use source::{KafkaSource, StartOffsets};
pub use state::{Epoch, KafkaSinkMeta, KafkaSinkState, OutRecord};
pub use txn::KafkaTxnSink;
