//! `at-least-once`: an idempotent producer that sends at once and flushes at every barrier.

use std::time::Duration;

use anyhow::{Context, Result};
use weir_runtime::{Collector, Data, Operator, OperatorContext, Record};

use super::producer::KafkaWriter;
use super::sink::KafkaSink;
use super::state::{refuse_other_delivery, KafkaSinkState};

impl<T: Data> KafkaSink<T> {
    pub(crate) fn at_least_once(&self) -> KafkaAtLeastOnceSink<T> {
        KafkaAtLeastOnceSink { w: KafkaWriter::new(self.clone()) }
    }
}

/// The `at-least-once` Kafka sink of one subtask: sends at once, flushes at every barrier.
pub struct KafkaAtLeastOnceSink<T> {
    w: KafkaWriter<T>,
}

impl<T: Data> Operator for KafkaAtLeastOnceSink<T> {
    type In = T;
    type Out = ();

    fn restore_state(&mut self, states: Vec<Vec<u8>>, _: &mut OperatorContext) -> Result<()> {
        let snapshots = states
            .iter()
            .map(|b| KafkaSinkState::decode(b))
            .collect::<Result<Vec<_>>>()
            .context("decoding a Kafka sink snapshot")?;
        refuse_other_delivery(&snapshots, None)
    }

    fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        if !self.w.is_connected() {
            let info = ctx.info();
            let producer = self.w.idempotent_producer()?;
            self.w.attach(info, format!("{}-{}", info.uid, info.subtask), producer)?;
        }
        Ok(())
    }

    fn process(&mut self, r: Record<T>, _: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        let (key, value) = (self.w.sink.serialize)(&r.value);
        let rec = self.w.record(key, value);
        self.w.send(&rec, None)?;
        self.w.producer()?.poll(Duration::ZERO);
        Ok(())
    }

    fn end_input(&mut self, _: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        self.w.flush()
    }

    fn snapshot_state(&mut self, _: u64, _: &mut OperatorContext) -> Result<Option<Vec<u8>>> {
        self.w.flush()?;
        Ok(None)
    }
}
