//! Windows: assigners (tumbling, sliding, session, global; event or processing time), allowed
//! lateness, late-data side output, and the window functions `aggregate`, `reduce` and `process`.
//!
//! Window state lives in keyed state under the window as namespace; a window fires through a timer
//! at its last timestamp and is cleaned up when the watermark passes its end plus the allowed
//! lateness. Records for windows already cleaned up are late: they are counted
//! (`<uid>.late_records`) and, if asked for, sent to a side output.

mod operator;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use weir_runtime::{Collector, Data, DataStream, KeyedStream, OutputTag};
use weir_state::AggregateFunction;

pub use operator::{Aggregating, Buffering, WindowContents, WindowOperator};

/// A half-open time interval `[start, end)` in epoch milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TimeWindow {
    /// First millisecond in the window.
    pub start: i64,
    /// First millisecond after the window.
    pub end: i64,
}

impl TimeWindow {
    /// The window `[start, end)`.
    pub fn new(start: i64, end: i64) -> Self {
        TimeWindow { start, end }
    }

    /// The last timestamp that belongs to the window; it fires when the watermark reaches it.
    ///
    /// ```
    /// assert_eq!(weir_operators::window::TimeWindow::new(0, 10_000).max_timestamp(), 9_999);
    /// ```
    pub fn max_timestamp(&self) -> i64 {
        self.end.saturating_sub(1)
    }

    /// Whether two windows overlap or touch (sessions merge then).
    pub fn intersects(&self, other: &TimeWindow) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// The smallest window covering both.
    pub fn cover(&self, other: &TimeWindow) -> TimeWindow {
        TimeWindow { start: self.start.min(other.start), end: self.end.max(other.end) }
    }

    /// The namespace bytes under which the window's state and timers are stored (MessagePack,
    /// so tools can decode it).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(24);
        // Encoding two integers into a vector cannot fail.
        let _ = weir_state::codec::encode_into(self, &mut b);
        b
    }

    /// The inverse of [`encode`](Self::encode).
    pub fn decode(bytes: &[u8]) -> Result<TimeWindow> {
        weir_state::codec::decode(bytes)
    }
}

/// Which windows a record belongs to.
pub trait WindowAssigner: Send + Sync + 'static {
    /// Adds the windows of a record with time `ts` to `out`.
    fn assign(&self, ts: i64, out: &mut Vec<TimeWindow>);
    /// Whether windows follow event time (watermarks) rather than the wall clock.
    fn is_event_time(&self) -> bool {
        true
    }
    /// The gap of session windows, which merge when they touch.
    fn session_gap(&self) -> Option<i64> {
        None
    }
    /// Whether records need no timestamp (the global window).
    fn accepts_untimed(&self) -> bool {
        false
    }
    /// `(size, slide)` of sliding windows that can be kept as slices: each record then updates
    /// one slice of `slide` instead of `size / slide` windows, and a window merges its slices
    /// when it fires.
    fn slices(&self) -> Option<(i64, i64)> {
        None
    }
}

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

/// Fixed-size, non-overlapping event-time windows.
///
/// ```
/// use weir_operators::window::{TumblingEventTimeWindows, WindowAssigner, TimeWindow};
/// let mut w = Vec::new();
/// TumblingEventTimeWindows::of(std::time::Duration::from_secs(10)).assign(12_345, &mut w);
/// assert_eq!(w, vec![TimeWindow::new(10_000, 20_000)]);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct TumblingEventTimeWindows {
    size: i64,
    offset: i64,
}

impl TumblingEventTimeWindows {
    /// Windows of `size`, aligned to the epoch.
    pub fn of(size: Duration) -> Self {
        TumblingEventTimeWindows { size: ms(size).max(1), offset: 0 }
    }
    /// Shifts window starts by `offset` (e.g. for time zones).
    pub fn with_offset(mut self, offset: Duration) -> Self {
        self.offset = ms(offset) % self.size;
        self
    }
}

fn tumbling_start(ts: i64, size: i64, offset: i64) -> i64 {
    ts - (ts - offset).rem_euclid(size)
}

impl WindowAssigner for TumblingEventTimeWindows {
    fn assign(&self, ts: i64, out: &mut Vec<TimeWindow>) {
        let start = tumbling_start(ts, self.size, self.offset);
        out.push(TimeWindow::new(start, start.saturating_add(self.size)));
    }
}

/// Fixed-size, non-overlapping windows of the wall clock.
#[derive(Clone, Copy, Debug)]
pub struct TumblingProcessingTimeWindows {
    size: i64,
}

impl TumblingProcessingTimeWindows {
    /// Windows of `size`, aligned to the epoch.
    pub fn of(size: Duration) -> Self {
        TumblingProcessingTimeWindows { size: ms(size).max(1) }
    }
}

impl WindowAssigner for TumblingProcessingTimeWindows {
    fn assign(&self, ts: i64, out: &mut Vec<TimeWindow>) {
        let start = tumbling_start(ts, self.size, 0);
        out.push(TimeWindow::new(start, start + self.size));
    }
    fn is_event_time(&self) -> bool {
        false
    }
    fn accepts_untimed(&self) -> bool {
        true
    }
}

/// Fixed-size event-time windows that start every `slide` (a record is in `size / slide` windows).
///
/// ```
/// use weir_operators::window::{SlidingEventTimeWindows, WindowAssigner, TimeWindow};
/// use std::time::Duration;
/// let mut w = Vec::new();
/// SlidingEventTimeWindows::of(Duration::from_secs(10), Duration::from_secs(5)).assign(12_000, &mut w);
/// assert_eq!(w, vec![TimeWindow::new(10_000, 20_000), TimeWindow::new(5_000, 15_000)]);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct SlidingEventTimeWindows {
    size: i64,
    slide: i64,
}

impl SlidingEventTimeWindows {
    /// Windows of `size` starting every `slide`.
    pub fn of(size: Duration, slide: Duration) -> Self {
        SlidingEventTimeWindows { size: ms(size).max(1), slide: ms(slide).max(1) }
    }
}

impl WindowAssigner for SlidingEventTimeWindows {
    fn assign(&self, ts: i64, out: &mut Vec<TimeWindow>) {
        let mut start = tumbling_start(ts, self.slide, 0);
        while start > ts - self.size {
            out.push(TimeWindow::new(start, start + self.size));
            start -= self.slide;
        }
    }
    fn slices(&self) -> Option<(i64, i64)> {
        (self.size > self.slide && self.size % self.slide == 0).then_some((self.size, self.slide))
    }
}

/// Event-time sessions: a key's records closer than `gap` to each other form one window.
#[derive(Clone, Copy, Debug)]
pub struct EventTimeSessionWindows {
    gap: i64,
}

impl EventTimeSessionWindows {
    /// Sessions that close after `gap` without records.
    pub fn with_gap(gap: Duration) -> Self {
        EventTimeSessionWindows { gap: ms(gap).max(1) }
    }
}

impl WindowAssigner for EventTimeSessionWindows {
    fn assign(&self, ts: i64, out: &mut Vec<TimeWindow>) {
        out.push(TimeWindow::new(ts, ts + self.gap));
    }
    fn session_gap(&self) -> Option<i64> {
        Some(self.gap)
    }
}

/// One window holding all records of a key; it fires when the input ends (for bounded jobs).
#[derive(Clone, Copy, Debug)]
pub struct GlobalWindows;

impl GlobalWindows {
    /// The global window assigner.
    pub fn create() -> Self {
        GlobalWindows
    }
}

impl WindowAssigner for GlobalWindows {
    fn assign(&self, _ts: i64, out: &mut Vec<TimeWindow>) {
        out.push(TimeWindow::new(i64::MIN, i64::MAX));
    }
    fn accepts_untimed(&self) -> bool {
        true
    }
}

/// A keyed stream cut into windows; finish it with `aggregate`, `reduce` or `process`.
pub struct WindowedStream<K, T> {
    keyed: KeyedStream<K, T>,
    assigner: Arc<dyn WindowAssigner>,
    lateness: i64,
    late_tag: Option<OutputTag<T>>,
}

impl<K: Data, T: Data> WindowedStream<K, T> {
    pub(crate) fn new(keyed: KeyedStream<K, T>, assigner: Arc<dyn WindowAssigner>) -> Self {
        WindowedStream { keyed, assigner, lateness: 0, late_tag: None }
    }

    /// Keeps windows for `lateness` after they fired; late records within it update the result
    /// (the window fires again).
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.lateness = ms(lateness);
        self
    }

    /// Sends records that arrive after their windows were cleaned up to the side output `tag`
    /// (read it with `DataStream::side_output`).
    pub fn side_output_late_data(mut self, tag: &OutputTag<T>) -> Self {
        self.late_tag = Some(tag.clone());
        self
    }

    fn build<C, O>(self, name: &str, contents: C, emit: operator::EmitFn<K, C::Content, O>) -> DataStream<O>
    where
        C: WindowContents<In = T> + Clone + Send + Sync,
        O: Data,
    {
        let (assigner, lateness, late_tag) = (self.assigner, self.lateness, self.late_tag);
        self.keyed.transform(name, move |_| {
            WindowOperator::new(assigner.clone(), contents.clone(), emit.clone(), lateness, late_tag.clone())
        })
    }

    /// Aggregates each window incrementally and emits the result.
    pub fn aggregate<A>(self, agg: A) -> DataStream<A::Out>
    where
        A: AggregateFunction<In = T>,
        A::Out: Data,
    {
        let emit: operator::EmitFn<K, A::Out, A::Out> = Arc::new(|_k, _w, r, out| out.collect(r));
        self.build("window-aggregate", Aggregating::new(agg), emit)
    }

    /// Aggregates each window incrementally, then turns the key, window and result into output
    /// (Flink's `aggregate(aggFn, windowFn)`).
    pub fn aggregate_with<A, O, F>(self, agg: A, f: F) -> DataStream<O>
    where
        A: AggregateFunction<In = T>,
        O: Data,
        F: Fn(&K, &TimeWindow, A::Out, &mut Collector<O>) + Send + Sync + 'static,
    {
        self.build("window-aggregate", Aggregating::new(agg), Arc::new(f))
    }

    /// Reduces each window's records to one.
    pub fn reduce<F>(self, f: F) -> DataStream<T>
    where
        F: Fn(&T, &T) -> T + Send + Sync + 'static,
    {
        let emit: operator::EmitFn<K, Option<T>, T> = Arc::new(|_k, _w, r, out| {
            if let Some(v) = r {
                out.collect(v)
            }
        });
        self.build("window-reduce", Aggregating::new(ReduceAgg { f: Arc::new(f), _t: std::marker::PhantomData }), emit)
    }

    /// Hands all records of a window to `f` when it fires (keeps every record in state).
    pub fn process<O, F>(self, f: F) -> DataStream<O>
    where
        O: Data,
        F: Fn(&K, &TimeWindow, Vec<T>, &mut Collector<O>) + Send + Sync + 'static,
    {
        self.build("window-process", Buffering::<T>::new(), Arc::new(f))
    }
}

/// A reduce function seen as an aggregate function (accumulator: the reduced value so far).
pub struct ReduceAgg<T, F> {
    f: Arc<F>,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T: Data, F: Fn(&T, &T) -> T + Send + Sync + 'static> AggregateFunction for ReduceAgg<T, F> {
    type In = T;
    type Acc = Option<T>;
    type Out = Option<T>;
    fn create_accumulator(&self) -> Option<T> {
        None
    }
    fn add(&self, acc: &mut Option<T>, v: &T) {
        *acc = Some(match acc.take() {
            Some(cur) => (self.f)(&cur, v),
            None => v.clone(),
        });
    }
    fn get_result(&self, acc: &Option<T>) -> Option<T> {
        acc.clone()
    }
    fn merge(&self, a: Option<T>, b: Option<T>) -> Option<T> {
        match (a, b) {
            (Some(a), Some(b)) => Some((self.f)(&a, &b)),
            (a, None) => a,
            (None, b) => b,
        }
    }
}
