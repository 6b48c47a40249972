//! What the runtime hands an operator besides its records: the [`OperatorContext`] (identity,
//! watermark, processing-time timer, metrics) and, for keyed operators, the [`KeyedContext`]
//! (state and timers of the current key).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use weir_state::{KeyedState, StateDescriptor, TimeDomain, TimerService};

use crate::metrics::MetricGroup;

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
    /// Asynchronous parts of the snapshot being taken (see [`Self::snapshot_async`]).
    pub(crate) async_parts: Vec<AsyncSnapshotPart>,
}

/// Work a checkpoint cannot complete without that runs off the task thread (see
/// [`OperatorContext::snapshot_async`]).
pub type AsyncSnapshotPart = Box<dyn FnOnce() -> Result<()> + Send>;

impl OperatorContext {
    pub(crate) fn new(info: TaskInfo, metrics: MetricGroup, checkpointing: bool) -> Self {
        OperatorContext {
            info,
            checkpointing,
            restored_checkpoint: None,
            watermark: i64::MIN,
            processing_timer: None,
            metrics,
            async_parts: Vec::new(),
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

    /// From `snapshot_state`: hands the runtime work that the checkpoint being taken cannot
    /// complete without but that need not stop the task, such as fsyncing the files a sink closed
    /// at the barrier (Flink's asynchronous snapshot part). The runtime runs it on the checkpoint
    /// I/O thread before it stores this subtask's snapshot; an error fails the checkpoint. Work
    /// of a checkpoint that is abandoned still runs, since later checkpoints may build on it.
    pub fn snapshot_async(&mut self, work: impl FnOnce() -> Result<()> + Send + 'static) {
        self.async_parts.push(Box::new(work));
    }

    /// A counter reported with the job's metrics as `<uid>.<name>`, summed over subtasks.
    pub fn counter(&self, name: &str) -> Counter {
        Counter(self.metrics.counter(name))
    }

    /// A histogram of milliseconds with the buckets of [`LATENCY_BUCKETS_MS`], shown in
    /// `/metrics` as the Prometheus histogram `weir_<name>` (`_bucket{le}`, `_sum`, `_count`).
    /// Its buckets are counters (`<name>.bucket.<le>`), so they add up over subtasks and
    /// processes like every counter.
    pub fn histogram(&self, name: &str) -> Histogram {
        let mut buckets: Vec<(u64, Counter)> =
            LATENCY_BUCKETS_MS.iter().map(|b| (*b, self.counter(&format!("{name}.bucket.{b}")))).collect();
        buckets.push((u64::MAX, self.counter(&format!("{name}.bucket.+Inf"))));
        Histogram { buckets, sum: self.counter(&format!("{name}.sum")), count: self.counter(&format!("{name}.count")) }
    }
}

/// Upper bounds (ms, inclusive) of a [`Histogram`]'s buckets, from 5 ms to 10 minutes, at most
/// 10 % apart above 1 s and 100 ms apart below it (checkpoint intervals of a second and of ten
/// are common: percentiles are read off within a bucket); larger values go to `+Inf`.
pub const LATENCY_BUCKETS_MS: [u64; 45] = [
    5, 10, 25, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1_000, 1_100, 1_200, 1_300, 1_400, 1_500, 1_650, 1_800,
    2_000, 2_200, 2_400, 2_700, 3_000, 3_300, 3_600, 4_000, 4_400, 4_800, 5_300, 5_800, 6_400, 7_000, 7_700, 8_500,
    9_300, 10_000, 11_000, 12_000, 15_000, 30_000, 60_000, 600_000,
];

/// A distribution of milliseconds (latencies), as [`OperatorContext::histogram`] makes it.
#[derive(Clone)]
pub struct Histogram {
    /// Per bucket (not cumulative): its upper bound and count; the last one is `+Inf`.
    buckets: Vec<(u64, Counter)>,
    sum: Counter,
    count: Counter,
}

impl Histogram {
    /// Records `n` observations of `ms`.
    pub fn observe(&self, ms: u64, n: u64) {
        if let Some((_, c)) = self.buckets.iter().find(|(bound, _)| ms <= *bound) {
            c.add(n);
        }
        self.sum.add(ms.saturating_mul(n));
        self.count.add(n);
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
///
/// State is reached through descriptors bound to the subtask's [`KeyedState`] and timers through its
/// [`TimerService`]; where either is stored is the runtime's business.
pub struct KeyedContext<'a> {
    pub(crate) op: &'a mut OperatorContext,
    pub(crate) state: &'a mut KeyedState,
    pub(crate) timers: &'a mut TimerService,
    pub(crate) ts: Option<i64>,
}

impl<'a> KeyedContext<'a> {
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
        descriptor.bind(self.state)
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
        self.register_timer_in(TimeDomain::EventTime, ts, &[])
    }

    /// Calls `on_timer` for the current key once the wall clock reaches `ts` (epoch ms).
    pub fn register_processing_timer(&mut self, ts: i64) -> Result<()> {
        self.register_timer_in(TimeDomain::ProcessingTime, ts, &[])
    }

    /// Removes an event-time timer of the current key.
    pub fn delete_event_timer(&mut self, ts: i64) -> Result<()> {
        self.delete_timer_in(TimeDomain::EventTime, ts, &[])
    }

    /// Removes a processing-time timer of the current key.
    pub fn delete_processing_timer(&mut self, ts: i64) -> Result<()> {
        self.delete_timer_in(TimeDomain::ProcessingTime, ts, &[])
    }

    /// Registers a timer in a namespace (windows use the encoded window).
    pub fn register_timer_in(&mut self, domain: TimeDomain, ts: i64, ns: &[u8]) -> Result<()> {
        self.timers.register(domain, ts, self.state.current_key_prefixed(), ns)
    }

    /// Removes a timer registered with [`register_timer_in`](Self::register_timer_in).
    pub fn delete_timer_in(&mut self, domain: TimeDomain, ts: i64, ns: &[u8]) -> Result<()> {
        self.timers.delete(domain, ts, self.state.current_key_prefixed(), ns)
    }

    /// The operator context (subtask info, counters).
    pub fn operator(&mut self) -> &mut OperatorContext {
        self.op
    }
}
