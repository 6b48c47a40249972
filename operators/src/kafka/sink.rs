//! The Kafka sink's builder and its delivery modes; each mode is an operator of its own:
//!
//! * `at-least-once` ([`KafkaAtLeastOnceSink`](super::KafkaAtLeastOnceSink)): an idempotent
//!   producer, flushed at every checkpoint barrier.
//! * `exactly-once-txn` ([`KafkaTxnSink`](super::KafkaTxnSink)): a Kafka transaction per
//!   checkpoint epoch; needs a broker with full transaction support and `read_committed` readers.
//! * `exactly-once-publish` ([`KafkaPublishSink`](super::KafkaPublishSink)): epochs kept in the
//!   checkpoint and published once it completes; works on any Kafka-protocol broker.
//!
//! Both exactly-once modes run on the two-phase commit helper
//! ([`TwoPhaseCommitOperator`](crate::sinks::two_phase::TwoPhaseCommitOperator)) and keep a
//! [`KafkaSinkState`](super::KafkaSinkState) per subtask.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use weir_runtime::Data;

/// How the Kafka sink delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Every record at least once (duplicates possible after a failure).
    AtLeastOnce,
    /// Every record exactly once, published after its checkpoint completes (any broker).
    ExactlyOncePublish,
    /// Every record exactly once for `read_committed` readers: a Kafka transaction per checkpoint
    /// (needs full transaction support in the broker).
    ExactlyOnceTxn,
}

impl FromStr for Delivery {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "at-least-once" => Ok(Delivery::AtLeastOnce),
            "exactly-once-publish" => Ok(Delivery::ExactlyOncePublish),
            "exactly-once-txn" => Ok(Delivery::ExactlyOnceTxn),
            _ => Err(format!("'{s}' is not one of at-least-once, exactly-once-publish, exactly-once-txn")),
        }
    }
}

/// Turns a record into an optional key and a value.
pub type Serializer<T> = Arc<dyn Fn(&T) -> (Option<String>, String) + Send + Sync>;

/// Writes records to a Kafka topic.
pub struct KafkaSink<T> {
    pub(crate) brokers: String,
    pub(crate) topic: String,
    delivery: Delivery,
    pub(crate) serialize: Serializer<T>,
    pub(crate) transactional_prefix: String,
    pub(crate) transaction_timeout: Duration,
}

impl<T> Clone for KafkaSink<T> {
    fn clone(&self) -> Self {
        KafkaSink {
            brokers: self.brokers.clone(),
            topic: self.topic.clone(),
            delivery: self.delivery,
            serialize: self.serialize.clone(),
            transactional_prefix: self.transactional_prefix.clone(),
            transaction_timeout: self.transaction_timeout,
        }
    }
}

/// The default `transaction.timeout.ms` of `exactly-once-txn`: Kafka's default upper bound
/// (`transaction.max.timeout.ms`).
pub const DEFAULT_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Checks at start-up that a transaction of `exactly-once-txn` can outlive its checkpoint: it is
/// opened at a checkpoint's barrier and committed when the checkpoint completes, which can take
/// up to the checkpoint timeout, after up to an interval and a pause.
///
/// ```
/// use std::time::Duration;
/// use weir_operators::kafka::check_transaction_timeout;
/// let mut args = weir_runtime::JobArgs::default();
/// args.checkpoint_dir = Some("/tmp/chk".parse().unwrap());
/// args.checkpoint_interval = Some(Duration::from_secs(10));
/// assert!(check_transaction_timeout(Duration::from_secs(15 * 60), &args).is_ok());
/// assert!(check_transaction_timeout(Duration::from_secs(60), &args).is_err());
/// ```
pub fn check_transaction_timeout(timeout: Duration, args: &weir_runtime::JobArgs) -> Result<()> {
    let Some(interval) = args.checkpoint_interval.filter(|_| args.checkpointing()) else {
        bail!("--delivery exactly-once-txn needs checkpoints (--checkpoint-dir and --checkpoint-interval)");
    };
    let needed = interval + args.min_pause + args.checkpoint_timeout;
    if timeout <= needed {
        bail!(
            "--transaction-timeout {} is too short: a transaction stays open from a checkpoint's barrier until the \
             checkpoint completes, up to --checkpoint-interval + --min-pause + --checkpoint-timeout = {}; raise \
             --transaction-timeout (and the broker's transaction.max.timeout.ms) or lower --checkpoint-timeout",
            humantime::format_duration(timeout),
            humantime::format_duration(needed)
        );
    }
    Ok(())
}

impl<T: Data> KafkaSink<T> {
    /// Records of `topic`, turned into (key, value) by `serialize`.
    pub fn new(
        brokers: &str,
        topic: &str,
        delivery: Delivery,
        serialize: impl Fn(&T) -> (Option<String>, String) + Send + Sync + 'static,
    ) -> Self {
        KafkaSink {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            delivery,
            serialize: Arc::new(serialize),
            transactional_prefix: "weir".to_string(),
            transaction_timeout: DEFAULT_TRANSACTION_TIMEOUT,
        }
    }

    /// `exactly-once-txn`: transactional ids are `<prefix>-<uid>-<subtask>` (default prefix
    /// `weir`); give each job writing to one cluster its own prefix.
    pub fn transactional_id_prefix(mut self, prefix: &str) -> Self {
        self.transactional_prefix = prefix.to_string();
        self
    }

    /// `exactly-once-txn`: the producers' `transaction.timeout.ms` (check it against the job's
    /// checkpoint settings with [`check_transaction_timeout`]).
    pub fn transaction_timeout(mut self, timeout: Duration) -> Self {
        self.transaction_timeout = timeout;
        self
    }

    /// How the sink delivers.
    pub fn delivery(&self) -> Delivery {
        self.delivery
    }
}
