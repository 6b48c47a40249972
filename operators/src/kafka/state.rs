//! What the exactly-once Kafka sinks keep in a checkpoint: epochs of records, and the metadata
//! beside them; and the checks a restore makes on it.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use weir_runtime::OperatorContext;

use crate::sinks::two_phase::{SinkSnapshot, Transaction};

/// One record of an epoch, with the partition chosen for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutRecord {
    /// The output partition.
    pub partition: i32,
    /// The record's key, if any.
    pub key: Option<String>,
    /// The record's value.
    pub value: String,
}

/// The records of one checkpoint epoch, staged until the checkpoint completes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Epoch {
    /// The checkpoint whose completion commits (or publishes) the epoch.
    pub checkpoint: u64,
    /// End offsets of the output partitions when the epoch was snapshotted: its records can only
    /// be after them.
    pub start_offsets: BTreeMap<i32, i64>,
    /// The epoch's records in order.
    pub records: Vec<OutRecord>,
}

/// What a Kafka sink subtask keeps in a checkpoint beside its pending epochs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KafkaSinkMeta {
    /// `exactly-once-txn`: the transactional id; `exactly-once-publish`: the `weir.producer` header.
    pub producer_id: String,
    /// The output topic (tools read the transaction markers from it).
    #[serde(default)]
    pub topic: String,
    /// Whether `producer_id` is a transactional id (`exactly-once-txn`).
    #[serde(default)]
    pub transactional: bool,
}

/// What an exactly-once Kafka sink subtask keeps in a checkpoint; the `weir kafka transactions`
/// tool reads it through this type.
pub type KafkaSinkState = SinkSnapshot<Epoch, KafkaSinkMeta>;

impl SinkSnapshot<Epoch, KafkaSinkMeta> {
    /// Decodes a Kafka sink's operator state; an error for any other operator's state.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).context("not a Kafka sink's state")
    }
}

/// An exactly-once Kafka sink subtask's checkpointed state as the inspection tools show it.
pub(crate) fn pending(state: &serde_json::Value) -> Option<crate::describe::SinkPending> {
    let st: KafkaSinkState = serde_json::from_value(state.clone()).ok()?;
    let pending = st
        .pending
        .iter()
        .map(|e| crate::describe::PendingEpoch { checkpoint: e.checkpoint, records: e.records.len() })
        .collect();
    Some(crate::describe::SinkPending::Kafka {
        transactional: st.meta.transactional,
        producer_id: st.meta.producer_id,
        topic: st.meta.topic,
        pending,
    })
}

impl Transaction for Epoch {
    fn checkpoint(&self) -> u64 {
        self.checkpoint
    }
}

/// Refuses snapshots holding output of completed checkpoints that only another delivery mode
/// knows how to finish: this one would drop it. `transactional`: whether this sink is
/// `exactly-once-txn`; `None` for at-least-once, which finishes nothing.
pub(crate) fn refuse_other_delivery(
    snapshots: &[KafkaSinkState],
    transactional: impl Into<Option<bool>>,
) -> Result<()> {
    let mine = transactional.into();
    let Some(st) = snapshots.iter().find(|st| !st.pending.is_empty() && Some(st.meta.transactional) != mine) else {
        return Ok(());
    };
    let was = if st.meta.transactional { "exactly-once-txn" } else { "exactly-once-publish" };
    let msg = format!(
        "the restored snapshot holds output of completed checkpoints not yet written by --delivery {was} \
         (sink subtask {}): restore with --delivery {was}, let it finish or take a savepoint, then change it",
        st.subtask
    );
    // Logged here as well: tearing down a Kafka consumer that is still starting can abort the
    // process (a librdkafka assertion) before the job's error is printed.
    tracing::error!("{msg}");
    bail!(msg)
}

/// Exactly-once delivery commits at checkpoints: without them nothing would ever be written.
pub(crate) fn require_checkpoints(ctx: &OperatorContext) -> Result<()> {
    if !ctx.checkpointing() {
        bail!("exactly-once delivery needs checkpoints (--checkpoint-dir and --checkpoint-interval)");
    }
    Ok(())
}
