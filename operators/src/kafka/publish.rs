//! `exactly-once-publish`: works on any Kafka-protocol broker and needs no `read_committed`
//! readers, on the two-phase commit helper.
//!
//! The records of epoch `n` (between barriers `n-1` and `n`) are kept in the sink's checkpointed
//! state (the pre-commit) and published only once checkpoint `n` completes (the commit), each with
//! headers `weir.producer` (`<uid>-<subtask>`), `weir.epoch` and `weir.seq`. The state also holds,
//! per pending epoch, the end offsets of the output partitions when the epoch was snapshotted; a
//! restored sink reads its partitions back from there, finds which records of its pending epochs
//! were already published (a crash in the middle of publishing), and publishes only the rest.

use std::collections::{BTreeMap, HashSet};

use anyhow::Result;
use weir_runtime::{Data, OperatorContext};

use super::producer::KafkaWriter;
use super::sink::KafkaSink;
use super::state::{refuse_other_delivery, require_checkpoints, Epoch, KafkaSinkMeta, KafkaSinkState};
use crate::sinks::two_phase::{TwoPhaseCommitOperator, TwoPhaseCommitSink};

impl<T: Data> KafkaSink<T> {
    pub(crate) fn publish(&self, subtask: usize) -> TwoPhaseCommitOperator<KafkaPublishSink<T>> {
        TwoPhaseCommitOperator::new(KafkaPublishSink::new(KafkaWriter::new(self.clone())), subtask)
    }
}

/// The `exactly-once-publish` Kafka sink of one subtask.
pub struct KafkaPublishSink<T> {
    w: KafkaWriter<T>,
}

impl<T> KafkaPublishSink<T> {
    pub(crate) fn new(w: KafkaWriter<T>) -> Self {
        KafkaPublishSink { w }
    }

    fn connect(&mut self, ctx: &OperatorContext) -> Result<()> {
        if self.w.is_connected() {
            return Ok(());
        }
        let info = ctx.info();
        let producer = self.w.idempotent_producer()?;
        self.w.attach(info, format!("{}-{}", info.uid, info.subtask), producer)
    }
}

impl<T: Data> TwoPhaseCommitSink for KafkaPublishSink<T> {
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
        require_checkpoints(ctx)?;
        self.w.flush()
    }

    fn pre_commit(&mut self, checkpoint: u64, _pending: &[Epoch]) -> Result<Vec<Epoch>> {
        let records = self.w.take_staged();
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let start_offsets = self.w.end_offsets()?;
        Ok(vec![Epoch { checkpoint, start_offsets, records }])
    }

    fn meta(&self) -> KafkaSinkMeta {
        KafkaSinkMeta {
            producer_id: self.w.producer_id.clone(),
            topic: self.w.sink.topic.clone(),
            transactional: false,
        }
    }

    fn commit(&mut self, e: &Epoch) -> Result<()> {
        self.w.publish(&self.w.producer_id, e, &HashSet::new())
    }

    fn after_commit(&mut self, _committed: &[Epoch], _pending: &[Epoch]) -> Result<()> {
        self.w.flush()
    }

    fn check_restore(&self, snapshots: &[KafkaSinkState]) -> Result<()> {
        refuse_other_delivery(snapshots, false)
    }

    fn recover(&mut self, inherited: Vec<KafkaSinkState>, ctx: &mut OperatorContext) -> Result<()> {
        self.connect(ctx)?;
        for st in inherited.iter().filter(|st| !st.pending.is_empty()) {
            // Every pending epoch of a restored checkpoint is complete: publish what is missing.
            let mut from: BTreeMap<i32, i64> = BTreeMap::new();
            for e in &st.pending {
                for (&part, &o) in &e.start_offsets {
                    let v = from.entry(part).or_insert(o);
                    *v = (*v).min(o);
                }
            }
            let done = self.w.read_back(&st.meta.producer_id, &from)?;
            for e in &st.pending {
                self.w.publish(&st.meta.producer_id, e, &done)?;
            }
            self.w.flush()?;
        }
        Ok(())
    }
}
