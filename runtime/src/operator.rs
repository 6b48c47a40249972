//! The traits operators implement, and the context and collector the runtime hands them.
//!
//! An operator sees records, watermarks and timers; it never sees channels, RocksDB or checkpoint
//! files. Keyed operators reach their state through [`KeyedContext::state`] and register timers
//! through the same context; the runtime sets the current key before every call.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use weir_state::{KeyedStateBackend, StateDescriptor, TimeDomain};

use crate::element::{Data, Record};
use crate::metrics::MetricGroup;

/// Names a side output of type `T` (Flink's `OutputTag`).
///
/// ```
/// use weir_runtime::OutputTag;
/// let late: OutputTag<String> = OutputTag::new("late-bids");
/// assert_eq!(late.name(), "late-bids");
/// ```
pub struct OutputTag<T> {
    name: Arc<str>,
    _t: PhantomData<fn() -> T>,
}

impl<T> OutputTag<T> {
    /// A tag with a name unique within the operator that emits to it.
    pub fn new(name: &str) -> Self {
        OutputTag { name: name.into(), _t: PhantomData }
    }
    /// The tag's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    pub(crate) fn shared_name(&self) -> Arc<str> {
        self.name.clone()
    }
}

impl<T> Clone for OutputTag<T> {
    fn clone(&self) -> Self {
        OutputTag { name: self.name.clone(), _t: PhantomData }
    }
}

/// Buffers for the side outputs of one operator that something downstream consumes.
#[derive(Default)]
pub struct SideOutputs {
    pub(crate) ports: Vec<(Arc<str>, Box<dyn Any>)>,
}

/// Where an operator emits its results.
///
/// `collect` keeps the timestamp of the record being processed (or of the timer being fired);
/// `collect_at` sets one explicitly.
pub struct Collector<'a, T> {
    main: &'a mut Vec<Record<T>>,
    sides: &'a mut SideOutputs,
    ts: Option<i64>,
}

impl<'a, T> Collector<'a, T> {
    /// A collector writing into `main` and `sides`; runtimes and tests use it.
    pub fn new(main: &'a mut Vec<Record<T>>, sides: &'a mut SideOutputs) -> Self {
        Collector { main, sides, ts: None }
    }

    /// Sets the timestamp `collect` gives records from now on.
    pub fn set_timestamp(&mut self, ts: Option<i64>) {
        self.ts = ts;
    }

    /// Emits `value` with the current timestamp.
    #[inline]
    pub fn collect(&mut self, value: T) {
        self.main.push(Record { ts: self.ts, value });
    }

    /// Emits `value` with timestamp `ts`.
    #[inline]
    pub fn collect_at(&mut self, value: T, ts: Option<i64>) {
        self.main.push(Record { ts, value });
    }

    /// Emits `value` to the side output `tag` (dropped if nothing consumes that side output).
    pub fn side<X: Data>(&mut self, tag: &OutputTag<X>, value: X) {
        let ts = self.ts;
        for (name, buf) in &mut self.sides.ports {
            if **name == *tag.name {
                if let Some(buf) = buf.downcast_mut::<Vec<Record<X>>>() {
                    buf.push(Record { ts, value });
                }
                return;
            }
        }
    }
}

/// Identity of the subtask an operator runs in.
#[derive(Clone, Debug)]
pub struct TaskInfo {
    /// The job's name.
    pub job_name: String,
    /// The operator's display name.
    pub operator_name: String,
    /// The operator's stable id (used for state and checkpoints).
    pub uid: String,
    /// This subtask's index, from 0.
    pub subtask: usize,
    /// The operator's parallelism.
    pub parallelism: usize,
    /// Number of key groups.
    pub max_parallelism: usize,
}

/// What every operator can ask the runtime for.
pub struct OperatorContext {
    pub(crate) info: TaskInfo,
    pub(crate) checkpointing: bool,
    pub(crate) restored_checkpoint: Option<u64>,
    pub(crate) watermark: i64,
    pub(crate) processing_timer: Option<i64>,
    pub(crate) metrics: MetricGroup,
}

impl OperatorContext {
    pub(crate) fn new(info: TaskInfo, metrics: MetricGroup, checkpointing: bool) -> Self {
        OperatorContext {
            info,
            checkpointing,
            restored_checkpoint: None,
            watermark: i64::MIN,
            processing_timer: None,
            metrics,
        }
    }

    /// The id of the checkpoint or savepoint this run restored from, if any.
    pub fn restored_checkpoint(&self) -> Option<u64> {
        self.restored_checkpoint
    }

    /// Whether the job takes checkpoints (sinks then commit per checkpoint).
    pub fn checkpointing(&self) -> bool {
        self.checkpointing
    }

    /// Which subtask this is.
    pub fn info(&self) -> &TaskInfo {
        &self.info
    }

    /// The operator's current event time (`i64::MIN` before the first watermark).
    pub fn current_watermark(&self) -> i64 {
        self.watermark
    }

    /// The wall clock in epoch milliseconds.
    pub fn processing_time(&self) -> i64 {
        crate::time::now_millis()
    }

    /// Asks for one call of `on_processing_time` at or after `ts` (epoch ms); the earliest request
    /// wins until it fired.
    pub fn request_processing_time(&mut self, ts: i64) {
        self.processing_timer = Some(self.processing_timer.map_or(ts, |t| t.min(ts)));
    }

    /// A counter reported with the job's metrics as `<uid>.<name>`, summed over subtasks.
    pub fn counter(&self, name: &str) -> Counter {
        Counter(self.metrics.counter(name))
    }
}

/// A monotonically increasing metric.
#[derive(Clone)]
pub struct Counter(pub(crate) Arc<AtomicU64>);

impl Counter {
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A timer that fired, as a keyed operator sees it.
#[derive(Clone, Debug)]
pub struct FiredTimer {
    /// The timestamp it was registered for.
    pub ts: i64,
    /// Which clock it followed.
    pub domain: TimeDomain,
    /// The namespace it was registered in (empty unless the operator used one).
    pub namespace: Box<[u8]>,
}

/// The context of a keyed operator: the operator context plus state and timers of the current key.
pub struct KeyedContext<'a> {
    pub(crate) op: &'a mut OperatorContext,
    pub(crate) backend: &'a mut KeyedStateBackend,
    pub(crate) ts: Option<i64>,
}

impl<'a> KeyedContext<'a> {
    /// A keyed context over a backend whose current key is already set (for runtimes and tests).
    pub fn new(op: &'a mut OperatorContext, backend: &'a mut KeyedStateBackend) -> Self {
        KeyedContext { op, backend, ts: None }
    }

    /// A typed view of a declared state, for the current key.
    ///
    /// ```
    /// use weir_runtime::{Collector, KeyedContext, KeyedOperator, Record};
    /// use weir_state::ValueStateDescriptor;
    ///
    /// /// Counts the records of each key.
    /// struct CountPerKey {
    ///     count: ValueStateDescriptor<u64>,
    /// }
    ///
    /// impl KeyedOperator for CountPerKey {
    ///     type Key = String;
    ///     type In = String;
    ///     type Out = (String, u64);
    ///     fn process(
    ///         &mut self,
    ///         key: &String,
    ///         _record: Record<String>,
    ///         ctx: &mut KeyedContext,
    ///         out: &mut Collector<(String, u64)>,
    ///     ) -> anyhow::Result<()> {
    ///         let mut count = ctx.state(&self.count)?;
    ///         let n = count.value()?.unwrap_or(0) + 1;
    ///         count.update(&n)?;
    ///         out.collect((key.clone(), n));
    ///         Ok(())
    ///     }
    /// }
    /// let _op = CountPerKey { count: ValueStateDescriptor::new("count") };
    /// ```
    pub fn state<D: StateDescriptor>(&mut self, descriptor: &D) -> Result<D::Handle<'_>> {
        descriptor.bind(self.backend)
    }

    /// The event timestamp of the record being processed, or of the timer being fired.
    pub fn timestamp(&self) -> Option<i64> {
        self.ts
    }

    /// The operator's current event time.
    pub fn current_watermark(&self) -> i64 {
        self.op.watermark
    }

    /// The wall clock in epoch milliseconds.
    pub fn processing_time(&self) -> i64 {
        self.op.processing_time()
    }

    /// Calls `on_timer` for the current key once the watermark reaches `ts`.
    pub fn register_event_timer(&mut self, ts: i64) -> Result<()> {
        self.backend.register_timer(TimeDomain::EventTime, ts, &[])
    }

    /// Calls `on_timer` for the current key once the wall clock reaches `ts` (epoch ms).
    pub fn register_processing_timer(&mut self, ts: i64) -> Result<()> {
        self.backend.register_timer(TimeDomain::ProcessingTime, ts, &[])
    }

    /// Removes an event-time timer of the current key.
    pub fn delete_event_timer(&mut self, ts: i64) -> Result<()> {
        self.backend.delete_timer(TimeDomain::EventTime, ts, &[])
    }

    /// Removes a processing-time timer of the current key.
    pub fn delete_processing_timer(&mut self, ts: i64) -> Result<()> {
        self.backend.delete_timer(TimeDomain::ProcessingTime, ts, &[])
    }

    /// Registers a timer in a namespace (windows use the encoded window).
    pub fn register_timer_in(&mut self, domain: TimeDomain, ts: i64, ns: &[u8]) -> Result<()> {
        self.backend.register_timer(domain, ts, ns)
    }

    /// Removes a timer registered with [`register_timer_in`](Self::register_timer_in).
    pub fn delete_timer_in(&mut self, domain: TimeDomain, ts: i64, ns: &[u8]) -> Result<()> {
        self.backend.delete_timer(domain, ts, ns)
    }

    /// The operator context (subtask info, counters).
    pub fn operator(&mut self) -> &mut OperatorContext {
        self.op
    }
}

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
