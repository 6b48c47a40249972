//! The checkpoint coordinator as a state machine without threads (Flink's
//! `CheckpointCoordinator` with its `PendingCheckpoint` and `CheckpointFailureManager`).
//!
//! The job's attempt loop feeds it what happens (time passes, a source ended, a subtask's snapshot
//! was stored, the I/O thread completed or failed a checkpoint, a savepoint or a stop was asked
//! for) and carries out what it answers (inject a barrier, finalize a checkpoint, record it,
//! notify the tasks). Keeping channels and threads out of it lets its rules be tested alone:
//! at most one checkpoint in flight, a minimum pause between checkpoints, timeouts, a bounded
//! number of failures in a row, savepoints on request, and a terminal checkpoint when every
//! source ended or a stop was asked for, after which nothing more is triggered.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use weir_checkpoint::Location;

use anyhow::anyhow;
use crossbeam_channel::Sender;
use weir_checkpoint::{CheckpointMetadata, OperatorSnapshot, SnapshotKind, SubtaskSnapshot};

use super::task::SnapshotTiming;
use crate::control::{CheckpointInfo, SavepointRequest, SubtaskCheckpointInfo};
use crate::element::CheckpointBarrier;

/// When and how checkpoints are taken (from the job's flags).
#[derive(Clone, Debug)]
pub(crate) struct CheckpointConfig {
    /// Periodic checkpoints; `None` takes only savepoints and the terminal checkpoint.
    pub interval: Option<Duration>,
    /// The least time from the end of one checkpoint to the trigger of the next.
    pub min_pause: Duration,
    pub timeout: Duration,
    /// Failed checkpoints in a row that the job tolerates before it fails.
    pub tolerable_failures: u32,
    /// Where savepoints go; without it savepoint requests are refused.
    pub savepoint_dir: Option<Location>,
    /// Completed checkpoints kept in storage.
    pub retain: usize,
}

/// What the coordinator knows of the job: the operators a checkpoint's metadata lists.
#[derive(Clone, Debug)]
pub(crate) struct JobLayout {
    pub job: String,
    pub max_parallelism: usize,
    /// uid, name and parallelism of each operator, by node index.
    pub operators: Vec<(String, String, usize)>,
    /// Source subtasks, each of which reports the end of its input once.
    pub source_subtasks: usize,
}

impl JobLayout {
    fn subtasks(&self) -> usize {
        self.operators.iter().map(|o| o.2).sum()
    }
}

type Reply = Sender<Result<String, String>>;

/// One checkpoint in flight: the barrier, and the stored snapshots of the subtasks that
/// acknowledged it so far.
struct PendingCheckpoint {
    barrier: CheckpointBarrier,
    started: Instant,
    expected: usize,
    snapshots: HashMap<usize, Vec<SubtaskSnapshot>>,
    received: usize,
    new_bytes: u64,
    replies: Vec<Reply>,
    subtasks: Vec<SubtaskCheckpointInfo>,
}

impl PendingCheckpoint {
    /// Adds one subtask's stored snapshot; true when every subtask has acknowledged.
    fn acknowledge(&mut self, uid: &str, node: usize, stored: StoredSubtask) -> bool {
        let s = &stored.snapshot;
        self.subtasks.push(SubtaskCheckpointInfo {
            operator: uid.to_string(),
            subtask: s.subtask,
            ack_ms: stored.timing.acked_at.saturating_duration_since(self.started).as_secs_f64() * 1e3,
            alignment_ms: stored.timing.alignment_ms,
            sync_ms: stored.timing.sync_ms,
            async_ms: stored.async_ms,
            size_bytes: s.keyed_files.iter().chain(&s.operator_state).map(|f| f.size).sum(),
            incremental_bytes: stored.new_bytes,
        });
        self.snapshots.entry(node).or_default().push(stored.snapshot);
        self.new_bytes += stored.new_bytes;
        self.received += 1;
        self.received == self.expected
    }

    /// The checkpoint's metadata, every operator's subtasks in order.
    fn metadata(&mut self, layout: &JobLayout) -> CheckpointMetadata {
        let operators = layout
            .operators
            .iter()
            .enumerate()
            .map(|(n, (uid, name, parallelism))| {
                let mut subtasks = self.snapshots.remove(&n).unwrap_or_default();
                subtasks.sort_by_key(|s| s.subtask);
                OperatorSnapshot {
                    uid: uid.clone(),
                    name: name.clone(),
                    parallelism: *parallelism,
                    keyed: subtasks.iter().any(|s| s.key_groups.is_some()),
                    subtasks,
                }
            })
            .collect();
        CheckpointMetadata {
            job: layout.job.clone(),
            checkpoint_id: self.barrier.id,
            kind: SnapshotKind::Checkpoint,
            timestamp: self.barrier.timestamp,
            max_parallelism: layout.max_parallelism,
            operators,
            duration_ms: Some(self.started.elapsed().as_millis() as u64),
        }
    }

    /// What `/checkpoints` shows of a checkpoint that ended without completing.
    fn ended(&self, status: &'static str, error: Option<String>, now: Instant) -> CheckpointInfo {
        CheckpointInfo {
            id: self.barrier.id,
            status,
            trigger_time: self.barrier.timestamp,
            duration_ms: now.saturating_duration_since(self.started).as_millis() as u64,
            terminal: self.barrier.terminal,
            error,
            ..Default::default()
        }
    }

    fn reply_all(self, answer: Result<String, String>) {
        for r in self.replies {
            let _ = r.send(answer.clone());
        }
    }
}

/// Counts failed checkpoints in a row and says when the job must fail (Flink's
/// `CheckpointFailureManager`).
#[derive(Debug, Default)]
struct FailureManager {
    tolerable: u32,
    in_a_row: u32,
    /// Why the last one failed, for the job's error.
    last: Option<String>,
}

impl FailureManager {
    fn failed(&mut self, why: String) {
        self.in_a_row += 1;
        self.last = Some(why);
    }

    fn completed(&mut self) {
        self.in_a_row = 0;
        self.last = None;
    }

    fn exceeded(&self) -> Option<anyhow::Error> {
        (self.in_a_row > self.tolerable).then(|| {
            anyhow!(
                "{} checkpoints in a row failed (--tolerable-failed-checkpoints {}); the last: {}",
                self.in_a_row,
                self.tolerable,
                self.last.as_deref().unwrap_or("unknown")
            )
        })
    }
}

/// A subtask's snapshot as the I/O thread stored it.
pub(crate) struct StoredSubtask {
    pub snapshot: SubtaskSnapshot,
    /// Bytes stored anew for it (files already stored are referenced).
    pub new_bytes: u64,
    pub timing: SnapshotTiming,
    pub async_ms: f64,
}

/// What to store as the commit point of a fully acknowledged checkpoint.
pub(crate) struct Finalize {
    pub meta: CheckpointMetadata,
    pub savepoint_root: Option<Location>,
    pub retain: usize,
}

/// Triggers checkpoints and follows each to its end; see the module comment.
pub(crate) struct CheckpointCoordinator {
    config: CheckpointConfig,
    layout: JobLayout,
    next_id: u64,
    pending: Option<PendingCheckpoint>,
    /// When the last checkpoint was triggered (or the coordinator started): the interval counts
    /// from here, trigger to trigger, as in Flink, so that a record waits at most one interval
    /// for its checkpoint's barrier however long checkpoints take.
    last_trigger: Instant,
    /// When the last checkpoint ended (or the coordinator started): the minimum pause counts
    /// from here.
    last_end: Instant,
    failures: FailureManager,
    sources_ended: usize,
    stop_requested: bool,
    savepoint_waiters: Vec<Reply>,
    terminal_done: bool,
}

impl CheckpointCoordinator {
    /// A coordinator whose first checkpoint gets id `first_id`.
    pub(crate) fn new(config: CheckpointConfig, layout: JobLayout, first_id: u64, now: Instant) -> Self {
        let failures = FailureManager { tolerable: config.tolerable_failures, in_a_row: 0, last: None };
        CheckpointCoordinator {
            config,
            layout,
            next_id: first_id,
            pending: None,
            last_trigger: now,
            last_end: now,
            failures,
            sources_ended: 0,
            stop_requested: false,
            savepoint_waiters: Vec::new(),
            terminal_done: false,
        }
    }

    /// Asks for a final savepoint, after which the job ends; true the first time.
    pub(crate) fn request_stop(&mut self) -> bool {
        !std::mem::replace(&mut self.stop_requested, true)
    }

    /// Queues a savepoint request, or refuses it at once when savepoints are not configured.
    pub(crate) fn request_savepoint(&mut self, req: SavepointRequest) {
        if self.config.savepoint_dir.is_none() {
            let _ = req.reply.send(Err(SAVEPOINTS_NEED.into()));
        } else {
            self.savepoint_waiters.push(req.reply);
        }
    }

    /// A source subtask read all its input.
    pub(crate) fn source_ended(&mut self) {
        self.sources_ended += 1;
    }

    /// The barrier to inject now, if a checkpoint is due: the interval passed since the last
    /// trigger and the minimum pause since the last end (a checkpoint that took longer than the
    /// interval is followed at once, unless a pause is asked for), every source ended (the
    /// terminal checkpoint), or a savepoint or stop was asked for.
    pub(crate) fn trigger(&mut self, now: Instant) -> Option<CheckpointBarrier> {
        if self.pending.is_some() || self.terminal_done {
            return None;
        }
        let since_trigger = now.saturating_duration_since(self.last_trigger);
        let since_end = now.saturating_duration_since(self.last_end);
        let interval_due =
            self.config.interval.is_some_and(|iv| since_trigger >= iv && since_end >= self.config.min_pause);
        let all_ended = self.sources_ended >= self.layout.source_subtasks;
        let want_savepoint = !self.savepoint_waiters.is_empty() || self.stop_requested;
        if !(interval_due || all_ended || want_savepoint) {
            return None;
        }
        let barrier = CheckpointBarrier {
            id: self.next_id,
            timestamp: crate::time::now_millis(),
            savepoint: want_savepoint && self.config.savepoint_dir.is_some(),
            terminal: all_ended || self.stop_requested,
        };
        self.next_id += 1;
        self.last_trigger = now;
        self.pending = Some(PendingCheckpoint {
            barrier,
            started: now,
            expected: self.layout.subtasks(),
            snapshots: HashMap::new(),
            received: 0,
            new_bytes: 0,
            replies: std::mem::take(&mut self.savepoint_waiters),
            subtasks: Vec::new(),
        });
        tracing::debug!(checkpoint = barrier.id, terminal = barrier.terminal, "checkpoint triggered");
        Some(barrier)
    }

    /// Whether a subtask's snapshot for checkpoint `id` is still wanted (else it is discarded:
    /// its checkpoint timed out or failed).
    pub(crate) fn wants(&self, id: u64) -> bool {
        self.pending.as_ref().is_some_and(|p| p.barrier.id == id)
    }

    /// A subtask's snapshot was stored; once every subtask's is, the checkpoint is finalized.
    pub(crate) fn stored(&mut self, id: u64, node: usize, stored: StoredSubtask) -> Option<Finalize> {
        let p = self.pending.as_mut().filter(|p| p.barrier.id == id)?;
        let uid = &self.layout.operators.get(node)?.0;
        if !p.acknowledge(uid, node, stored) {
            return None;
        }
        let savepoint_root = if p.barrier.savepoint { self.config.savepoint_dir.clone() } else { None };
        Some(Finalize { meta: p.metadata(&self.layout), savepoint_root, retain: self.config.retain })
    }

    /// Checkpoint `id`'s metadata is stored: it is complete. Answers savepoint requests and
    /// returns what `/checkpoints` shows of it. The tasks must be told in any case.
    pub(crate) fn completed(
        &mut self,
        id: u64,
        savepoint: Option<String>,
        bytes: u64,
        now: Instant,
    ) -> Option<CheckpointInfo> {
        self.failures.completed();
        self.last_end = now;
        let p = self.pending.take_if(|p| p.barrier.id == id)?;
        self.terminal_done |= p.barrier.terminal;
        let mut subtasks = p.subtasks.clone();
        subtasks.sort_by(|a, b| (&a.operator, a.subtask).cmp(&(&b.operator, b.subtask)));
        let slowest = |f: fn(&SubtaskCheckpointInfo) -> f64| subtasks.iter().map(f).fold(0.0, f64::max);
        let info = CheckpointInfo {
            id,
            status: "completed",
            trigger_time: p.barrier.timestamp,
            duration_ms: now.saturating_duration_since(p.started).as_millis() as u64,
            terminal: p.barrier.terminal,
            size_bytes: bytes,
            incremental_bytes: p.new_bytes,
            alignment_ms: slowest(|s| s.alignment_ms),
            sync_ms: slowest(|s| s.sync_ms),
            async_ms: slowest(|s| s.async_ms),
            savepoint: savepoint.clone(),
            error: None,
            subtasks,
        };
        match &savepoint {
            Some(path) => {
                tracing::info!(checkpoint = id, duration_ms = info.duration_ms, size_bytes = bytes, path = %path, "savepoint complete")
            }
            None => tracing::info!(
                checkpoint = id,
                duration_ms = info.duration_ms,
                size_bytes = bytes,
                incremental_bytes = info.incremental_bytes,
                "checkpoint complete"
            ),
        }
        p.reply_all(savepoint.ok_or_else(|| "no --savepoint-dir configured".to_string()));
        Some(info)
    }

    /// Storing checkpoint `id` failed.
    pub(crate) fn failed(&mut self, id: u64, error: String, now: Instant) -> Option<CheckpointInfo> {
        let p = self.pending.take_if(|p| p.barrier.id == id)?;
        tracing::warn!(checkpoint = id, error, "checkpoint failed");
        self.failures.failed(format!("checkpoint {id}: {error}"));
        self.last_end = now;
        let info = p.ended("failed", Some(error.clone()), now);
        p.reply_all(Err(error));
        Some(info)
    }

    /// Abandons the checkpoint in flight if it took longer than the timeout.
    pub(crate) fn check_timeout(&mut self, now: Instant) -> Option<CheckpointInfo> {
        let timeout = self.config.timeout;
        let p = self.pending.take_if(|p| now.saturating_duration_since(p.started) > timeout)?;
        tracing::warn!(checkpoint = p.barrier.id, "checkpoint timed out");
        self.failures.failed(format!("checkpoint {} timed out after {timeout:?}", p.barrier.id));
        self.last_end = now;
        let info = p.ended("timed out", None, now);
        p.reply_all(Err("the savepoint timed out".into()));
        Some(info)
    }

    /// The error that fails the job once more checkpoints failed in a row than tolerated.
    pub(crate) fn failure_exceeded(&self) -> Option<anyhow::Error> {
        self.failures.exceeded()
    }
}

/// Why a savepoint request is refused when savepoints are not configured.
pub(crate) const SAVEPOINTS_NEED: &str = "savepoints need --checkpoint-dir, --checkpoint-interval and --savepoint-dir";

#[cfg(test)]
#[path = "coordinator_tests.rs"]
mod tests;
