//! The task side of a checkpoint: what a subtask hands the coordinator when its barrier passes.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use crossbeam_channel::Sender;
use weir_state::{KeyGroupRange, KeyedStateBackend, PendingCheckpoint};

use crate::metrics::TaskStats;

/// What a task needs to take part in checkpoints.
#[derive(Clone)]
pub(crate) struct CheckpointEnv {
    pub events: Sender<TaskEvent>,
    /// Where local RocksDB checkpoints are made (same file system as the working state).
    pub local_root: PathBuf,
    pub node: usize,
    /// The task's time accounting (alignment durations).
    pub stats: Arc<TaskStats>,
}

/// The synchronous part of one subtask's snapshot, before it is stored.
pub(crate) struct LocalSnapshot {
    /// The keyed state's RocksDB checkpoint, which its writer thread may still be taking.
    pub local_db: Option<PendingCheckpoint>,
    /// What the operator left to do off the task thread before its snapshot counts as stored.
    pub async_parts: Vec<crate::AsyncSnapshotPart>,
    pub operator_state: Option<Vec<u8>>,
    pub watermark: i64,
    pub key_groups: Option<KeyGroupRange>,
    pub timing: SnapshotTiming,
}

/// How long the task side of one subtask's snapshot took.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SnapshotTiming {
    /// From the first barrier to the last one of the inputs.
    pub alignment_ms: f64,
    /// The synchronous part: operator state, and freezing the keyed state's changes (the
    /// RocksDB checkpoint is taken asynchronously).
    pub sync_ms: f64,
    pub acked_at: std::time::Instant,
}

impl SnapshotTiming {
    pub(crate) fn since(started: std::time::Instant, alignment_ms: f64) -> Self {
        SnapshotTiming {
            alignment_ms,
            sync_ms: started.elapsed().as_secs_f64() * 1e3,
            acked_at: std::time::Instant::now(),
        }
    }
}

/// Sent by tasks to the coordinator.
pub(crate) enum TaskEvent {
    Ack {
        id: u64,
        node: usize,
        subtask: usize,
        snapshot: LocalSnapshot,
    },
    /// A source subtask read all its input and waits for the final checkpoint.
    SourceEnded,
}

impl CheckpointEnv {
    pub(crate) fn ack(&self, id: u64, subtask: usize, snapshot: LocalSnapshot) {
        // The coordinator only goes away when the job is torn down; then nobody needs the ack.
        let _ = self.events.send(TaskEvent::Ack { id, node: self.node, subtask, snapshot });
    }

    /// Starts a local RocksDB checkpoint of `backend` for checkpoint `id`; the backend's writer
    /// thread finishes it while the task goes on.
    pub(crate) fn snapshot_backend(
        &self,
        backend: &mut KeyedStateBackend,
        uid: &str,
        subtask: usize,
        id: u64,
    ) -> Result<PendingCheckpoint> {
        let dir = self.local_root.join(format!("{uid}-{subtask}-{id}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&self.local_root)?;
        backend.begin_checkpoint(&dir)
    }
}

pub(crate) fn missing(what: &str) -> anyhow::Error {
    anyhow::anyhow!("internal error: {what}")
}
