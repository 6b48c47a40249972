//! The checkpoint protocol across processes. Process 0 runs the coordinator; every process runs
//! its own subtasks and its own I/O thread, which stores their snapshots in the shared
//! checkpoint storage. The steps of the module walk-through stay the same; only who tells whom
//! changes:
//!
//! * **Trigger**: the coordinator sends the barrier to every process, which hands it to its
//!   source subtasks.
//! * **Stored**: a process reports each of its subtasks' stored snapshots (file references,
//!   not files) to the coordinator, which commits `_metadata` once it has every subtask's.
//! * **Complete**: the coordinator tells every process, whose tasks then commit their sinks.
//! * **Failed** snapshots and **source ends** go to the coordinator as they do locally.
//!
//! Besides, every process sends its metrics to process 0 once a second.
//!
//! Messages travel as control frames on the mesh's connections, in order per process pair.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use weir_checkpoint::SubtaskSnapshot;

use crate::element::CheckpointBarrier;
use crate::metrics::MetricsView;
use crate::net::Mesh;

/// The process that coordinates checkpoints.
pub(crate) const COORDINATOR: usize = 0;

/// One control-plane message between processes.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum PeerMsg {
    /// Coordinator → process: inject this barrier at your sources.
    Trigger(CheckpointBarrier),
    /// Coordinator → process: checkpoint `id` is complete.
    Complete(u64),
    /// Process → coordinator: one of its source subtasks ended.
    SourceEnded,
    /// Process → coordinator: a subtask's snapshot is stored.
    Stored {
        id: u64,
        node: usize,
        snapshot: SubtaskSnapshot,
        new_bytes: u64,
        alignment_ms: f64,
        sync_ms: f64,
        async_ms: f64,
    },
    /// Process → coordinator: a subtask's snapshot could not be stored.
    Failed { id: u64, error: String },
    /// Process → process 0, once a second: its metrics, so process 0's control endpoint shows
    /// the whole job.
    Metrics(Box<MetricsView>),
}

/// This process's side of the control plane.
pub(crate) struct Peers<'a> {
    mesh: &'a Mesh,
}

impl<'a> Peers<'a> {
    pub(crate) fn new(mesh: &'a Mesh) -> Self {
        Peers { mesh }
    }

    pub(crate) fn is_coordinator(&self) -> bool {
        self.mesh.index() == COORDINATOR
    }

    /// Sends `msg` to the coordinator.
    pub(crate) fn to_coordinator(&self, msg: &PeerMsg) -> Result<()> {
        self.mesh.send_control(COORDINATOR, serde_json::to_vec(msg)?)
    }

    /// Sends `msg` to every other process.
    pub(crate) fn to_all(&self, msg: &PeerMsg) -> Result<()> {
        let bytes = serde_json::to_vec(msg)?;
        for p in (0..self.mesh.processes()).filter(|&p| p != self.mesh.index()) {
            self.mesh.send_control(p, bytes.clone())?;
        }
        Ok(())
    }

    /// Decodes a message a peer sent.
    pub(crate) fn decode(from: usize, bytes: &[u8]) -> Result<PeerMsg> {
        serde_json::from_slice(bytes).with_context(|| format!("a malformed control message from process {from}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let b = CheckpointBarrier { id: 3, timestamp: 9, savepoint: true, terminal: false };
        let bytes = serde_json::to_vec(&PeerMsg::Trigger(b)).unwrap();
        assert!(matches!(Peers::decode(1, &bytes).unwrap(), PeerMsg::Trigger(got) if got == b));
        assert!(Peers::decode(1, b"{\"Nope\":1}").is_err());
    }
}
