//! `exactly-once-txn`: one Kafka transaction per checkpoint epoch, on the two-phase commit
//! helper.
//!
//! Each sink subtask has one transactional producer with the stable `transactional.id`
//! `<prefix>-<uid>-<subtask>`. At barrier `n` the epoch's records are sent in a transaction
//! together with a marker (offset `n` committed for the group `weir-txn-<transactional.id>`) and
//! flushed: the pre-commit. When checkpoint `n` completes the transaction is committed. One
//! transaction is open at a time per producer: an epoch whose barrier comes while the previous
//! transaction is still open waits in the state and is sent once that one is committed.
//!
//! A restored subtask initialises its transactional id (which fences a zombie and aborts its
//! open transaction) and re-produces, in new transactions, every pending epoch whose marker is
//! missing: the crash window between "checkpoint complete" and "committed". Ids of subtasks that
//! vanished with a lower parallelism are initialised (fenced) and repaired by the subtask that
//! inherits their state.

use std::collections::BTreeMap;

use anyhow::{anyhow, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use weir_runtime::{Data, OperatorContext};

use super::producer::{KafkaWriter, TIMEOUT};
use super::sink::KafkaSink;
use super::state::{refuse_other_delivery, require_checkpoints, Epoch, KafkaSinkMeta, KafkaSinkState};
use crate::sinks::two_phase::{TwoPhaseCommitOperator, TwoPhaseCommitSink};

/// The group whose committed offset marks the last epoch committed under `transactional_id`.
pub(crate) fn marker_group(transactional_id: &str) -> String {
    format!("weir-txn-{transactional_id}")
}

impl<T: Data> KafkaSink<T> {
    pub(crate) fn transactional(&self, subtask: usize) -> TwoPhaseCommitOperator<KafkaTxnSink<T>> {
        TwoPhaseCommitOperator::new(KafkaTxnSink::new(KafkaWriter::new(self.clone())), subtask)
    }
}

/// The `exactly-once-txn` Kafka sink of one subtask.
pub struct KafkaTxnSink<T> {
    w: KafkaWriter<T>,
    /// The epoch whose transaction is open (sent and flushed, not committed).
    open_txn: Option<u64>,
    /// The consumer of this subtask's marker group.
    marker: Option<BaseConsumer>,
}

impl<T> KafkaTxnSink<T> {
    pub(crate) fn new(w: KafkaWriter<T>) -> Self {
        KafkaTxnSink { w, open_txn: None, marker: None }
    }

    fn connect(&mut self, ctx: &OperatorContext) -> Result<()> {
        if self.w.is_connected() {
            return Ok(());
        }
        let info = ctx.info();
        let id = format!("{}-{}-{}", self.w.sink.transactional_prefix, info.uid, info.subtask);
        let producer = self.w.txn_producer(&id)?;
        self.marker = Some(self.marker_consumer(&id)?);
        self.w.attach(info, id, producer)
    }

    fn marker_consumer(&self, transactional_id: &str) -> Result<BaseConsumer> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.w.sink.brokers)
            .set("group.id", marker_group(transactional_id))
            .set("enable.auto.commit", "false")
            .create()
            .context("creating the marker consumer")
    }

    /// The last epoch committed under the marker group `consumer` belongs to, if any.
    fn committed_epoch(&self, consumer: &BaseConsumer) -> Result<Option<u64>> {
        let topic = &self.w.sink.topic;
        let mut q = TopicPartitionList::new();
        q.add_partition(topic, 0);
        let committed = consumer.committed_offsets(q, TIMEOUT).context("reading the transaction marker")?;
        Ok(match committed.find_partition(topic, 0).map(|e| e.offset()) {
            Some(Offset::Offset(o)) if o >= 0 => Some(o as u64),
            _ => None,
        })
    }

    /// Sends `epoch` and its marker in a transaction of `producer` (begun here) and flushes it.
    fn send_epoch_in_txn(
        &self,
        producer: &BaseProducer,
        marker: &BaseConsumer,
        transactional_id: &str,
        epoch: &Epoch,
    ) -> Result<()> {
        producer.begin_transaction().context("beginning a transaction")?;
        for (seq, r) in epoch.records.iter().enumerate() {
            self.w.send_with(producer, r, Some(KafkaWriter::<T>::headers(transactional_id, epoch.checkpoint, seq)))?;
        }
        let mut offsets = TopicPartitionList::new();
        offsets.add_partition_offset(&self.w.sink.topic, 0, Offset::Offset(epoch.checkpoint as i64))?;
        let meta = marker.group_metadata().ok_or_else(|| anyhow!("no group metadata for the transaction marker"))?;
        producer.send_offsets_to_transaction(&offsets, &meta, TIMEOUT).context("adding the epoch marker")?;
        producer.flush(TIMEOUT).with_context(|| format!("flushing to {}", self.w.sink.topic))
    }

    /// Sends `epoch` in a transaction of this subtask's own producer.
    fn open_transaction(&mut self, epoch: &Epoch) -> Result<()> {
        let marker = self.marker.as_ref().ok_or_else(|| anyhow!("Kafka sink used before open"))?;
        self.send_epoch_in_txn(self.w.producer()?, marker, &self.w.producer_id, epoch)?;
        self.open_txn = Some(epoch.checkpoint);
        Ok(())
    }

    /// Commits, in new transactions, the epochs of `transactional_id` that its marker does not
    /// cover: a restored checkpoint is complete, so all of its epochs must be committed.
    fn repair(&self, producer: &BaseProducer, transactional_id: &str, pending: &[Epoch]) -> Result<()> {
        let marker = self.marker_consumer(transactional_id)?;
        let done = self.committed_epoch(&marker)?;
        for e in pending {
            if done.is_some_and(|d| e.checkpoint <= d) {
                continue;
            }
            tracing::info!(
                transactional_id,
                epoch = e.checkpoint,
                records = e.records.len(),
                "re-producing an uncommitted epoch"
            );
            self.send_epoch_in_txn(producer, &marker, transactional_id, e)?;
            producer.commit_transaction(TIMEOUT).context("committing a repaired epoch")?;
        }
        Ok(())
    }
}

impl<T: Data> TwoPhaseCommitSink for KafkaTxnSink<T> {
    type In = T;
    type Txn = Epoch;
    type Meta = KafkaSinkMeta;

    fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        self.connect(ctx)
    }

    fn write(&mut self, value: T, _: &mut OperatorContext) -> Result<()> {
        self.w.stage(&value);
        Ok(())
    }

    fn end_input(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        require_checkpoints(ctx)
    }

    fn pre_commit(&mut self, checkpoint: u64, pending: &[Epoch]) -> Result<Vec<Epoch>> {
        let records = self.w.take_staged();
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let epoch = Epoch { checkpoint, start_offsets: BTreeMap::new(), records };
        // One transaction at a time per producer: while an earlier epoch's is still open, this
        // epoch waits in the state and is sent once that one is committed.
        if self.open_txn.is_none() && pending.is_empty() {
            self.open_transaction(&epoch)?;
        }
        Ok(vec![epoch])
    }

    fn meta(&self) -> KafkaSinkMeta {
        KafkaSinkMeta { producer_id: self.w.producer_id.clone(), topic: self.w.sink.topic.clone(), transactional: true }
    }

    fn commit(&mut self, e: &Epoch) -> Result<()> {
        if self.open_txn != Some(e.checkpoint) {
            self.open_transaction(e)?;
        }
        self.w.producer()?.commit_transaction(TIMEOUT).with_context(|| format!("committing epoch {}", e.checkpoint))?;
        self.open_txn = None;
        Ok(())
    }

    fn after_commit(&mut self, _committed: &[Epoch], pending: &[Epoch]) -> Result<()> {
        // A later epoch that waited for the committed transaction is sent now, in its own.
        if let Some(next) = pending.first() {
            self.open_transaction(next)?;
        }
        Ok(())
    }

    fn check_restore(&self, snapshots: &[KafkaSinkState]) -> Result<()> {
        refuse_other_delivery(snapshots, true)
    }

    fn recover(&mut self, inherited: Vec<KafkaSinkState>, ctx: &mut OperatorContext) -> Result<()> {
        self.connect(ctx)?;
        for st in inherited {
            if st.meta.producer_id == self.w.producer_id {
                self.repair(self.w.producer()?, &st.meta.producer_id, &st.pending)?;
            } else {
                // A vanished (or renamed) subtask's id: fence its zombie, then repair.
                let other = self.w.txn_producer(&st.meta.producer_id)?;
                self.repair(&other, &st.meta.producer_id, &st.pending)?;
            }
        }
        Ok(())
    }
}
