//! Two-phase commit, written once for every exactly-once sink (Flink's
//! `TwoPhaseCommitSinkFunction`).
//!
//! A sink implements [`TwoPhaseCommitSink`]: how to write a record, how to close what it wrote
//! since the last barrier as one pre-committed transaction, how to commit one, and how to finish
//! what a restored snapshot left. [`TwoPhaseCommitOperator`] does the rest, the same for all:
//!
//! * at barrier `n` it asks the sink to pre-commit and keeps the transaction as pending for `n`,
//!   in the checkpoint, beside the sink's own metadata; what the sink has left to make it durable
//!   (an fsync) runs off the task thread as the snapshot's asynchronous part;
//! * when checkpoint `n` completes it commits every pending transaction up to `n`, in order, with
//!   the named crash points `before-sink-commit` and `mid-sink-commit` (after the first commit);
//! * on restore it decodes every old subtask's snapshot and hands each to exactly one new subtask
//!   (old subtask `s` goes to new subtask `s % parallelism`), which finishes its pending
//!   transactions: they belong to checkpoints that completed, but their commit may not have run.
//!
//! It also measures what the sink is for: the time from a record's event time to the commit
//! that makes it visible, in the histogram `commit_latency_ms` of `/metrics` (`latency.rs`).
//!
//! The snapshot is JSON: `{"subtask": s, "pending": [...], ...meta}`.

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use weir_runtime::fault::crash_point;
use weir_runtime::{now_millis, AsyncSnapshotPart, Collector, Data, Histogram, Operator, OperatorContext, Record};

use super::latency::CommitLatency;

/// How often buffered output is flushed when no watermark comes.
const FLUSH_EVERY_MS: i64 = 1000;

/// One pre-committed transaction: the staged output of one checkpoint.
pub trait Transaction: Serialize + DeserializeOwned + Clone + Send + 'static {
    /// The checkpoint whose completion commits it.
    fn checkpoint(&self) -> u64;
}

/// What a subtask of a two-phase-commit sink keeps in a checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SinkSnapshot<X, M> {
    /// The subtask that wrote it.
    pub subtask: usize,
    /// Pre-committed transactions not known to be committed, oldest first.
    pub pending: Vec<X>,
    /// The sink's own metadata.
    #[serde(flatten)]
    pub meta: M,
}

/// What an exactly-once sink does; [`TwoPhaseCommitOperator`] drives it.
pub trait TwoPhaseCommitSink: Send + 'static {
    /// The records written.
    type In: Data;
    /// A pre-committed transaction.
    type Txn: Transaction;
    /// What the sink keeps in its checkpoint besides pending transactions.
    type Meta: Serialize + DeserializeOwned + Default + Send + 'static;

    /// Connects or creates what writing needs (also after a restore).
    fn open(&mut self, _ctx: &mut OperatorContext) -> Result<()> {
        Ok(())
    }
    /// Writes one record into the current transaction.
    fn write(&mut self, value: Self::In, ctx: &mut OperatorContext) -> Result<()>;
    /// Pushes buffered output along (on watermarks and once a second); nothing becomes visible.
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    /// Barrier `checkpoint`: closes what was written since the last barrier as transactions of
    /// this checkpoint (none if nothing was written; a file sink has one per open file).
    /// `pending` are earlier transactions still waiting for their commit.
    fn pre_commit(&mut self, checkpoint: u64, pending: &[Self::Txn]) -> Result<Vec<Self::Txn>>;
    /// Right after `pre_commit`: what is left to make its transactions durable that may run off
    /// the task thread (fsyncing closed files). The checkpoint completes only once it succeeded.
    fn pre_commit_async(&mut self) -> Option<AsyncSnapshotPart> {
        None
    }
    /// The metadata to keep in the checkpoint.
    fn meta(&self) -> Self::Meta;
    /// Makes `txn` visible. Must be idempotent: a restore repeats commits that may have run.
    fn commit(&mut self, txn: &Self::Txn) -> Result<()>;
    /// After the commits of one completed checkpoint: `committed` were just committed, `pending`
    /// wait for later checkpoints (e.g. make renames durable, or start the next transaction).
    fn after_commit(&mut self, _committed: &[Self::Txn], _pending: &[Self::Txn]) -> Result<()> {
        Ok(())
    }
    /// Refuses snapshots this sink cannot finish (all old subtasks', before anything is done).
    fn check_restore(&self, _snapshots: &[SinkSnapshot<Self::Txn, Self::Meta>]) -> Result<()> {
        Ok(())
    }
    /// Finishes what the old subtasks this subtask inherits left: commits their pending
    /// transactions and removes or aborts output written after their snapshot.
    fn recover(&mut self, inherited: Vec<SinkSnapshot<Self::Txn, Self::Meta>>, ctx: &mut OperatorContext)
        -> Result<()>;
    /// The input ended (a final checkpoint follows when checkpointing).
    fn end_input(&mut self, _ctx: &mut OperatorContext) -> Result<()> {
        self.flush()
    }
}

/// The operator that runs a [`TwoPhaseCommitSink`]; see the module comment.
pub struct TwoPhaseCommitOperator<S: TwoPhaseCommitSink> {
    sink: S,
    subtask: usize,
    pending: Vec<S::Txn>,
    latency: CommitLatency,
    histogram: Option<Histogram>,
}

impl<S: TwoPhaseCommitSink> TwoPhaseCommitOperator<S> {
    /// Runs `sink` as subtask `subtask`.
    pub fn new(sink: S, subtask: usize) -> Self {
        TwoPhaseCommitOperator {
            sink,
            subtask,
            pending: Vec::new(),
            latency: CommitLatency::default(),
            histogram: None,
        }
    }
}

impl<S: TwoPhaseCommitSink> Operator for TwoPhaseCommitOperator<S> {
    type In = S::In;
    type Out = ();

    fn restore_state(&mut self, states: Vec<Vec<u8>>, ctx: &mut OperatorContext) -> Result<()> {
        let snapshots = states
            .iter()
            .map(|b| serde_json::from_slice(b).context("decoding a sink snapshot"))
            .collect::<Result<Vec<SinkSnapshot<S::Txn, S::Meta>>>>()?;
        self.sink.check_restore(&snapshots)?;
        let p = ctx.info().parallelism;
        // Each old subtask's transactions are finished by exactly one new subtask.
        let inherited = snapshots.into_iter().filter(|s| s.subtask % p == self.subtask).collect();
        self.sink.recover(inherited, ctx)
    }

    fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        self.histogram = Some(ctx.histogram("commit_latency_ms"));
        self.sink.open(ctx)?;
        ctx.request_processing_time(ctx.processing_time().saturating_add(FLUSH_EVERY_MS));
        Ok(())
    }

    fn process(&mut self, r: Record<S::In>, ctx: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        if let Some(ts) = r.ts {
            self.latency.written(ts, now_millis);
        }
        self.sink.write(r.value, ctx)
    }

    fn on_watermark(&mut self, _: i64, _: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        self.sink.flush()
    }

    fn on_processing_time(&mut self, now: i64, ctx: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        ctx.request_processing_time(now.saturating_add(FLUSH_EVERY_MS));
        self.sink.flush()
    }

    fn end_input(&mut self, ctx: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        self.sink.end_input(ctx)
    }

    fn snapshot_state(&mut self, checkpoint_id: u64, ctx: &mut OperatorContext) -> Result<Option<Vec<u8>>> {
        let txns = self.sink.pre_commit(checkpoint_id, &self.pending)?;
        self.latency.barrier(checkpoint_id);
        if let Some(part) = self.sink.pre_commit_async() {
            ctx.snapshot_async(part);
        }
        self.pending.extend(txns);
        let snapshot = SinkSnapshot { subtask: self.subtask, pending: self.pending.clone(), meta: self.sink.meta() };
        Ok(Some(serde_json::to_vec(&snapshot)?))
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64, _: &mut OperatorContext) -> Result<()> {
        let (ready, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.pending).into_iter().partition(|t| t.checkpoint() <= checkpoint_id);
        self.pending = later;
        if ready.is_empty() {
            return Ok(());
        }
        crash_point("before-sink-commit", checkpoint_id);
        for (i, txn) in ready.iter().enumerate() {
            self.sink
                .commit(txn)
                .with_context(|| format!("committing the output of checkpoint {}", txn.checkpoint()))?;
            if i == 0 {
                crash_point("mid-sink-commit", checkpoint_id);
            }
        }
        if let Some(h) = &self.histogram {
            self.latency.committed(checkpoint_id, now_millis(), &mut |ms, n| h.observe(ms, n));
        }
        self.sink.after_commit(&ready, &self.pending)
    }
}
