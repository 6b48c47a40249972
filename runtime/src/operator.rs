//! The traits operators implement (the context and collector the runtime hands them live in
//! `operator_context.rs` and `collector.rs`, re-exported here).
//!
//! An operator sees records, watermarks and timers; it never sees channels, RocksDB or checkpoint
//! files. Keyed operators reach their state through [`KeyedContext::state`] and register timers
//! through the same context; the runtime sets the current key before every call.

use anyhow::Result;

pub use crate::collector::{Collector, OutputTag, SideOutputs};
use crate::element::{Data, Record};
pub use crate::operator_context::{
    AsyncSnapshotPart, Counter, FiredTimer, Histogram, KeyedContext, OperatorContext, TaskInfo, LATENCY_BUCKETS_MS,
};

/// A one-input operator without keyed state (map, filter, sinks, ...).
pub trait Operator: 'static {
    /// Input records.
    type In: Data;
    /// Output records.
    type Out: Data;

    /// Called once in the task thread before the first record.
    fn open(&mut self, _ctx: &mut OperatorContext) -> Result<()> {
        Ok(())
    }

    /// Processes one record.
    fn process(
        &mut self,
        record: Record<Self::In>,
        ctx: &mut OperatorContext,
        out: &mut Collector<Self::Out>,
    ) -> Result<()>;

    /// Called when the operator's watermark advances, before it is forwarded.
    fn on_watermark(
        &mut self,
        _watermark: i64,
        _ctx: &mut OperatorContext,
        _out: &mut Collector<Self::Out>,
    ) -> Result<()> {
        Ok(())
    }

    /// Called once the time asked for with [`OperatorContext::request_processing_time`] has come.
    fn on_processing_time(
        &mut self,
        _now: i64,
        _ctx: &mut OperatorContext,
        _out: &mut Collector<Self::Out>,
    ) -> Result<()> {
        Ok(())
    }

    /// Called when every input has ended, after the final watermark.
    fn end_input(&mut self, _ctx: &mut OperatorContext, _out: &mut Collector<Self::Out>) -> Result<()> {
        Ok(())
    }

    /// Returns the operator's state for checkpoint `checkpoint_id` (JSON is recommended: tools
    /// show it). Called when the barrier passes, after every earlier record was processed.
    fn snapshot_state(&mut self, _checkpoint_id: u64, _ctx: &mut OperatorContext) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }

    /// Restores from the states every subtask of the previous run snapshotted (all of them, so
    /// that a rescaled job can redistribute them). Called before `open`.
    fn restore_state(&mut self, _states: Vec<Vec<u8>>, _ctx: &mut OperatorContext) -> Result<()> {
        Ok(())
    }

    /// Checkpoint `checkpoint_id` is complete: everything it covers is durable (sinks commit).
    fn notify_checkpoint_complete(&mut self, _checkpoint_id: u64, _ctx: &mut OperatorContext) -> Result<()> {
        Ok(())
    }
}

/// A one-input operator on a keyed stream, with keyed state and timers (Flink's
/// `KeyedProcessFunction`).
pub trait KeyedOperator: 'static {
    /// The key type.
    type Key: Data;
    /// Input records.
    type In: Data;
    /// Output records.
    type Out: Data;

    /// Called once in the task thread before the first record.
    fn open(&mut self, _ctx: &mut OperatorContext) -> Result<()> {
        Ok(())
    }

    /// Processes one record of `key`.
    fn process(
        &mut self,
        key: &Self::Key,
        record: Record<Self::In>,
        ctx: &mut KeyedContext,
        out: &mut Collector<Self::Out>,
    ) -> Result<()>;

    /// A timer of `key` fired.
    fn on_timer(
        &mut self,
        _key: &Self::Key,
        _timer: FiredTimer,
        _ctx: &mut KeyedContext,
        _out: &mut Collector<Self::Out>,
    ) -> Result<()> {
        Ok(())
    }

    /// Called when every input has ended, after the final watermark fired all event-time timers.
    fn end_input(&mut self, _ctx: &mut OperatorContext, _out: &mut Collector<Self::Out>) -> Result<()> {
        Ok(())
    }
}

/// A two-input operator without keyed state (Flink's `CoProcessFunction`).
pub trait CoOperator: 'static {
    /// Records of the first input.
    type In1: Data;
    /// Records of the second input.
    type In2: Data;
    /// Output records.
    type Out: Data;

    /// Called once in the task thread before the first record.
    fn open(&mut self, _ctx: &mut OperatorContext) -> Result<()> {
        Ok(())
    }
    /// Processes a record of the first input.
    fn process1(
        &mut self,
        record: Record<Self::In1>,
        ctx: &mut OperatorContext,
        out: &mut Collector<Self::Out>,
    ) -> Result<()>;
    /// Processes a record of the second input.
    fn process2(
        &mut self,
        record: Record<Self::In2>,
        ctx: &mut OperatorContext,
        out: &mut Collector<Self::Out>,
    ) -> Result<()>;
    /// Called when the combined watermark of both inputs advances.
    fn on_watermark(
        &mut self,
        _watermark: i64,
        _ctx: &mut OperatorContext,
        _out: &mut Collector<Self::Out>,
    ) -> Result<()> {
        Ok(())
    }
    /// Called when both inputs have ended.
    fn end_input(&mut self, _ctx: &mut OperatorContext, _out: &mut Collector<Self::Out>) -> Result<()> {
        Ok(())
    }
}

/// A two-input operator on two streams keyed the same way (Flink's `KeyedCoProcessFunction`),
/// used for joins.
pub trait KeyedCoOperator: 'static {
    /// The key type shared by both inputs.
    type Key: Data;
    /// Records of the first input.
    type In1: Data;
    /// Records of the second input.
    type In2: Data;
    /// Output records.
    type Out: Data;

    /// Called once in the task thread before the first record.
    fn open(&mut self, _ctx: &mut OperatorContext) -> Result<()> {
        Ok(())
    }
    /// Processes a record of the first input.
    fn process1(
        &mut self,
        key: &Self::Key,
        record: Record<Self::In1>,
        ctx: &mut KeyedContext,
        out: &mut Collector<Self::Out>,
    ) -> Result<()>;
    /// Processes a record of the second input.
    fn process2(
        &mut self,
        key: &Self::Key,
        record: Record<Self::In2>,
        ctx: &mut KeyedContext,
        out: &mut Collector<Self::Out>,
    ) -> Result<()>;
    /// A timer of `key` fired.
    fn on_timer(
        &mut self,
        _key: &Self::Key,
        _timer: FiredTimer,
        _ctx: &mut KeyedContext,
        _out: &mut Collector<Self::Out>,
    ) -> Result<()> {
        Ok(())
    }
    /// Called when both inputs have ended.
    fn end_input(&mut self, _ctx: &mut OperatorContext, _out: &mut Collector<Self::Out>) -> Result<()> {
        Ok(())
    }
}
