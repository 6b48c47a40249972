//! What flows through the channels between tasks.

use serde::{de::DeserializeOwned, Serialize};

/// Bound on everything that flows between operators: records must be cloneable (for broadcast and
/// fan-out), sendable to other task threads and serializable (for state and checkpoints).
pub trait Data: Clone + Send + Sync + Serialize + DeserializeOwned + 'static {}
impl<T: Clone + Send + Sync + Serialize + DeserializeOwned + 'static> Data for T {}

/// A value with its event timestamp (epoch milliseconds), if it has one.
///
/// ```
/// let r = weir_runtime::Record::new(Some(1_000), "bid");
/// assert_eq!(r.ts, Some(1_000));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<T> {
    /// Event time in epoch milliseconds, assigned by a source's timestamp assigner.
    pub ts: Option<i64>,
    /// The payload.
    pub value: T,
}

impl<T> Record<T> {
    /// A record with the given timestamp.
    pub fn new(ts: Option<i64>, value: T) -> Self {
        Record { ts, value }
    }
}

/// A checkpoint barrier: everything before it on a channel belongs to checkpoint `id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointBarrier {
    /// Checkpoint id, increasing across restarts.
    pub id: u64,
    /// When the coordinator triggered it (epoch ms).
    pub timestamp: i64,
    /// Whether this is a savepoint.
    pub savepoint: bool,
    /// Whether the job ends once this checkpoint completes (the final checkpoint of a bounded
    /// job, or stop-with-savepoint): sources emit nothing after it.
    pub terminal: bool,
}

/// One element on a channel between two tasks.
#[derive(Debug)]
pub enum StreamElement<T> {
    /// Records, batched to amortise the channel cost.
    Batch(Vec<Record<T>>),
    /// No record with a timestamp at or below this will follow on this channel.
    Watermark(i64),
    /// The sender has no data for now; exclude this channel from the watermark until data comes.
    Idle,
    /// A checkpoint barrier.
    Barrier(CheckpointBarrier),
    /// The sender has finished; nothing follows.
    EndOfInput,
}

/// The watermark that ends event time: sent when a bounded input is exhausted, so every pending
/// window and timer fires.
pub const MAX_WATERMARK: i64 = i64::MAX;
