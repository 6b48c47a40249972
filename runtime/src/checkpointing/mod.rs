//! Exactly-once, end to end: the asynchronous barrier checkpoint protocol (Chandy-Lamport as in
//! Flink) and restoring from it. Read this module to trust the guarantee; each step names the
//! place that does it.
//!
//! 1. **Trigger** ([`coordinator`]). The coordinator decides that checkpoint `n` is due (interval,
//!    savepoint request, stop, or every source ended), reserves `n` in storage and sends
//!    `Control::Trigger(n)` to every source subtask. At most one checkpoint is in flight.
//! 2. **Sources** (`source.rs`). Between two reads a source subtask takes the trigger, snapshots
//!    its reader's position (offsets of its splits or partitions) and split watermarks, sends
//!    barrier `n` down every output channel and acks the snapshot. Records read before the
//!    barrier belong to `n`, all later ones to `n + 1`: the barrier is one message on the stream.
//! 3. **Alignment** ([`align`]). A task with several input channels stops reading a channel once
//!    its barrier arrived, until every open channel delivered it, so no record of `n + 1` reaches
//!    the operators before their snapshot for `n`.
//! 4. **Snapshot and ack** (`driver.rs`, [`task`]). Once aligned, each operator of the chain
//!    snapshots its operator state and its keyed state is checkpointed locally (a RocksDB
//!    checkpoint: hard links, taken synchronously and cheap); it passes the barrier on to the
//!    next operator of the chain or the output channels, then acks a [`LocalSnapshot`] to the
//!    coordinator. Sinks stage what they wrote before the barrier as pending for `n` (closed
//!    files, Kafka transactions) in that operator state, but do not commit it.
//! 5. **Storing** ([`io`]). The I/O thread uploads each acked local snapshot to checkpoint
//!    storage (new SST files once, under `shared/`; files already stored are referenced), off
//!    the task threads, and reports it stored.
//! 6. **Commit point** ([`coordinator`], `weir_checkpoint::storage`). When every subtask's
//!    snapshot is stored, the coordinator has the I/O thread write `chk-n/_metadata`. Only then is
//!    `n` complete; a crash before leaves an incomplete `chk-n` that restore skips and retention
//!    removes. A checkpoint that times out or fails is abandoned, late snapshots of it are
//!    discarded, and too many failures in a row fail the job.
//! 7. **Commit notification** (`Control::Complete(n)`). Every task is told; sinks commit what
//!    was pending for epochs up to `n` (rename files, commit transactions), idempotently, since a
//!    crash between 6 and 7 leaves the commit to the restored run.
//! 8. **Restore** ([`restore`]). A run (or a restart after a failure) starts from the latest
//!    complete checkpoint or a savepoint: sources seek to their snapshotted positions, operators
//!    get their operator state, and each subtask's keyed state is rebuilt from the key groups it
//!    now owns (copied as is when they did not move, imported from every old subtask that held
//!    some after a change of parallelism). Sinks commit the epochs their restored state still
//!    lists as pending and abort anything newer, so output matches the restored positions.
//!
//! Named crash points (`fault.rs`: mid-snapshot, after-checkpoint-complete, and the sinks' own)
//! let the tests kill a job at each of these steps.

mod align;
pub(crate) mod coordinator;
pub(crate) mod io;
pub(crate) mod peers;
pub(crate) mod restore;
pub(crate) mod task;

pub(crate) use align::BarrierAligner;
pub(crate) use restore::SharedRestore;
pub(crate) use task::{missing, CheckpointEnv, LocalSnapshot, SnapshotTiming, TaskEvent};
