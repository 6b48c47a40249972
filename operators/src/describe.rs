//! What the checkpointed state of weir's sources and sinks says, for `weir savepoint inspect` and
//! `diff`. Each format is decoded by the module that writes it (with its own private types), so
//! this module only names the views and tries them in turn.
//!
//! ```
//! use weir_operators::describe::{source_position, SourcePosition};
//! let state = serde_json::json!({
//!     "reader": {"splits": [{"id": 0, "path": "in.txt", "start": 0, "end": 52, "offset": 20, "done": false}]},
//!     "split_watermarks": [[0, 1000]],
//! });
//! let (position, _) = source_position(&state).unwrap();
//! let SourcePosition::File(file) = position else { panic!("a file source") };
//! assert_eq!((file.bytes_read(), file.bytes_total()), (20, 52));
//! ```

use serde::Serialize;
use serde_json::Value;

/// Where a source subtask stands in its input.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourcePosition {
    /// A file source: its splits.
    File(FilePosition),
    /// A Kafka source: its topic and partitions.
    Kafka(KafkaPosition),
    /// The Nexmark generator: the index of the next event this subtask generates.
    Generator {
        /// Next event index.
        next: u64,
    },
    /// A source whose state weir does not know (a user's own source): shown as it is.
    Other {
        /// The reader's state.
        state: Value,
    },
}

/// The splits of a file source subtask.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FilePosition {
    /// Splits assigned to the subtask, finished or not.
    pub splits: Vec<SplitPosition>,
}

impl FilePosition {
    /// Finished splits.
    pub fn splits_done(&self) -> usize {
        self.splits.iter().filter(|s| s.done).count()
    }

    /// Bytes read over all splits.
    pub fn bytes_read(&self) -> u64 {
        self.splits.iter().map(|s| if s.done { s.end - s.start } else { s.offset.saturating_sub(s.start) }).sum()
    }

    /// Bytes of all splits.
    pub fn bytes_total(&self) -> u64 {
        self.splits.iter().map(|s| s.end - s.start).sum()
    }
}

/// One split of a file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SplitPosition {
    /// Split id (stable across restores).
    pub id: u64,
    /// The file.
    pub path: String,
    /// First byte of the split.
    pub start: u64,
    /// Byte after the split.
    pub end: u64,
    /// Next byte to read.
    pub offset: u64,
    /// Whether the split is finished.
    pub done: bool,
}

/// The partitions of a Kafka source subtask.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KafkaPosition {
    /// The topic.
    pub topic: String,
    /// Its partitions read by this subtask.
    pub partitions: Vec<PartitionPosition>,
}

/// One Kafka partition.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PartitionPosition {
    /// Partition number.
    pub partition: i32,
    /// Offset of the next record to read (a restore starts here).
    pub next_offset: i64,
    /// With `--stop-at-end`: the offset reading stops at.
    pub stop_offset: Option<i64>,
}

/// What a transactional sink subtask has pre-committed but not yet seen committed.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkPending {
    /// The file sink: part files waiting to become visible.
    Files {
        /// Pending files, oldest first.
        pending: Vec<PendingPart>,
    },
    /// An exactly-once Kafka sink: epochs of records.
    Kafka {
        /// `exactly-once-txn` (a Kafka transaction per epoch) rather than `exactly-once-publish`.
        transactional: bool,
        /// The transactional id, or the producer header of published epochs.
        producer_id: String,
        /// The output topic.
        topic: String,
        /// Pending epochs, oldest first.
        pending: Vec<PendingEpoch>,
    },
}

impl SinkPending {
    /// The checkpoints whose completion commits something pending here.
    pub fn checkpoints(&self) -> Vec<u64> {
        match self {
            SinkPending::Files { pending } => pending.iter().map(|p| p.checkpoint).collect(),
            SinkPending::Kafka { pending, .. } => pending.iter().map(|p| p.checkpoint).collect(),
        }
    }
}

/// A part file waiting for its checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PendingPart {
    /// The checkpoint that commits it.
    pub checkpoint: u64,
    /// Its name once committed, relative to the output location.
    pub file: String,
}

/// An epoch of Kafka records waiting for its checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PendingEpoch {
    /// The checkpoint that commits (or publishes) it.
    pub checkpoint: u64,
    /// Records in it.
    pub records: usize,
}

/// The position of a source subtask and its per-split highest timestamps, from its operator
/// state; `None` if the state is not a source's.
pub fn source_position(state: &Value) -> Option<(SourcePosition, Vec<(u64, i64)>)> {
    let (reader, split_watermarks) = weir_runtime::source_snapshot(state)?;
    let position = crate::sources::file::position(&reader)
        .map(SourcePosition::File)
        .or_else(|| crate::kafka::source::position(&reader).map(SourcePosition::Kafka))
        .or_else(|| crate::sources::nexmark::position(&reader).map(|next| SourcePosition::Generator { next }))
        .unwrap_or(SourcePosition::Other { state: reader });
    Some((position, split_watermarks))
}

/// What a transactional sink subtask has pending, from its operator state; `None` if the state
/// is not one of weir's transactional sinks'.
pub fn sink_pending(state: &Value) -> Option<SinkPending> {
    // The Kafka sink's state names its producer id, the file sink's its file sequence: try the
    // Kafka form first so that an empty pending list is told apart by those fields.
    crate::kafka::state::pending(state).or_else(|| crate::sinks::file::pending(state))
}
