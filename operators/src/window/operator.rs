//! The window operator: a keyed operator that keeps per-window state and fires windows by timers.

use std::marker::PhantomData;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use weir_runtime::{
    Collector, Counter, Data, FiredTimer, KeyedContext, KeyedOperator, OperatorContext, OutputTag, Record,
};
use weir_state::{AggregateFunction, ListStateDescriptor, TimeDomain, ValueStateDescriptor};

use super::{TimeWindow, WindowAssigner};

/// Turns a fired window's content into output records.
pub(crate) type EmitFn<K, C, O> = Arc<dyn Fn(&K, &TimeWindow, C, &mut Collector<O>) + Send + Sync>;

/// How a window keeps its records: folded into an accumulator, or buffered whole.
pub trait WindowContents: 'static {
    /// The records windows take.
    type In: Data;
    /// What a fired window hands to the window function.
    type Content;
    /// Adds a record to the window stored under `ns`; returns whether the window was empty.
    fn add(&self, ctx: &mut KeyedContext, ns: &[u8], value: &Self::In) -> Result<bool>;
    /// The window's content, if it has any.
    fn get(&self, ctx: &mut KeyedContext, ns: &[u8]) -> Result<Option<Self::Content>>;
    /// Drops the window's state.
    fn clear(&self, ctx: &mut KeyedContext, ns: &[u8]) -> Result<()>;
    /// Moves the content of the windows `sources` into `target` (session merges).
    fn merge_into(&self, ctx: &mut KeyedContext, sources: &[Vec<u8>], target: &[u8]) -> Result<()>;
    /// The combined content of the windows stored under `nss`.
    fn get_merged(&self, ctx: &mut KeyedContext, nss: &[Vec<u8>]) -> Result<Option<Self::Content>>;
    /// Sliding windows kept as slices of `slide`: adds a record to the slice starting at
    /// `start`; returns whether the slice is new.
    fn add_to_slice(&self, ctx: &mut KeyedContext, start: i64, slide: i64, value: &Self::In) -> Result<bool> {
        self.add(ctx, &TimeWindow::new(start, start + slide).encode(), value)
    }
    /// The content of window `w` made of slices of `slide`; drops its first slice, which no
    /// later window has.
    fn take_window(&self, ctx: &mut KeyedContext, w: &TimeWindow, slide: i64) -> Result<Option<Self::Content>> {
        let slices: Vec<Vec<u8>> = (0..(w.end - w.start) / slide)
            .map(|i| TimeWindow::new(w.start + i * slide, w.start + (i + 1) * slide).encode())
            .collect();
        let content = self.get_merged(ctx, &slices)?;
        self.clear(ctx, &slices[0])?;
        Ok(content)
    }
}

/// Incremental aggregation: one accumulator per window.
pub struct Aggregating<A: AggregateFunction> {
    agg: Arc<A>,
    state: ValueStateDescriptor<A::Acc>,
    /// Sliding windows: every live slice of a key in one entry, `(slice start, accumulator)` in
    /// start order, so that a record is one read-modify-write and a firing window one read
    /// (slices a key has no records in cost nothing).
    slices: ValueStateDescriptor<Vec<(i64, A::Acc)>>,
}

impl<A: AggregateFunction> Clone for Aggregating<A> {
    fn clone(&self) -> Self {
        Aggregating { agg: self.agg.clone(), state: self.state.clone(), slices: self.slices.clone() }
    }
}

impl<A: AggregateFunction> Aggregating<A> {
    /// Windows folded with `agg`.
    pub fn new(agg: A) -> Self {
        Aggregating {
            agg: Arc::new(agg),
            state: ValueStateDescriptor::new("window-contents"),
            slices: ValueStateDescriptor::new("window-slices"),
        }
    }
}

impl<A> WindowContents for Aggregating<A>
where
    A: AggregateFunction,
    A::In: Data,
{
    type In = A::In;
    type Content = A::Out;

    fn add(&self, ctx: &mut KeyedContext, ns: &[u8], value: &A::In) -> Result<bool> {
        let agg = &self.agg;
        ctx.state(&self.state)?.in_namespace(ns).update_with(|acc| {
            let new = acc.is_none();
            agg.add(acc.get_or_insert_with(|| agg.create_accumulator()), value);
            new
        })
    }

    fn get(&self, ctx: &mut KeyedContext, ns: &[u8]) -> Result<Option<A::Out>> {
        Ok(ctx.state(&self.state)?.in_namespace(ns).value()?.map(|acc| self.agg.get_result(&acc)))
    }

    fn clear(&self, ctx: &mut KeyedContext, ns: &[u8]) -> Result<()> {
        ctx.state(&self.state)?.in_namespace(ns).clear()
    }

    fn merge_into(&self, ctx: &mut KeyedContext, sources: &[Vec<u8>], target: &[u8]) -> Result<()> {
        let mut merged = ctx.state(&self.state)?.in_namespace(target).value()?;
        for src in sources.iter().filter(|s| s.as_slice() != target) {
            let mut st = ctx.state(&self.state)?.in_namespace(src);
            if let Some(acc) = st.value()? {
                merged = Some(match merged {
                    Some(m) => self.agg.merge(m, acc),
                    None => acc,
                });
            }
            st.clear()?;
        }
        if let Some(m) = merged {
            ctx.state(&self.state)?.in_namespace(target).update(&m)?;
        }
        Ok(())
    }

    fn get_merged(&self, ctx: &mut KeyedContext, nss: &[Vec<u8>]) -> Result<Option<A::Out>> {
        let mut merged: Option<A::Acc> = None;
        for ns in nss {
            if let Some(acc) = ctx.state(&self.state)?.in_namespace(ns).value()? {
                merged = Some(match merged {
                    Some(m) => self.agg.merge(m, acc),
                    None => acc,
                });
            }
        }
        Ok(merged.map(|acc| self.agg.get_result(&acc)))
    }

    fn add_to_slice(&self, ctx: &mut KeyedContext, start: i64, _slide: i64, value: &A::In) -> Result<bool> {
        let agg = &self.agg;
        ctx.state(&self.slices)?.update_with(|slices| {
            let slices = slices.get_or_insert_with(Vec::new);
            match slices.binary_search_by_key(&start, |(s, _)| *s) {
                Ok(i) => {
                    agg.add(&mut slices[i].1, value);
                    false
                }
                Err(i) => {
                    let mut acc = agg.create_accumulator();
                    agg.add(&mut acc, value);
                    slices.insert(i, (start, acc));
                    true
                }
            }
        })
    }

    fn take_window(&self, ctx: &mut KeyedContext, w: &TimeWindow, _slide: i64) -> Result<Option<A::Out>> {
        let mut st = ctx.state(&self.slices)?;
        let Some(slices) = st.value()? else { return Ok(None) };
        // Accumulators need not be Clone: the later slices are read a second time to keep them.
        let mut keep =
            if slices.iter().any(|(start, _)| *start > w.start) { st.value()?.unwrap_or_default() } else { Vec::new() };
        keep.retain(|(start, _)| *start > w.start);
        let mut merged: Option<A::Acc> = None;
        for (start, acc) in slices {
            if start >= w.start && start < w.end {
                merged = Some(match merged {
                    Some(m) => self.agg.merge(m, acc),
                    None => acc,
                });
            }
        }
        if keep.is_empty() {
            st.clear()?;
        } else {
            st.update(&keep)?;
        }
        Ok(merged.map(|acc| self.agg.get_result(&acc)))
    }
}

/// Buffers every record of a window (for window functions that need them all).
pub struct Buffering<T> {
    state: ListStateDescriptor<T>,
}

impl<T> Clone for Buffering<T> {
    fn clone(&self) -> Self {
        Buffering { state: self.state.clone() }
    }
}

impl<T> Buffering<T> {
    /// Windows that keep their records.
    pub fn new() -> Self {
        Buffering { state: ListStateDescriptor::new("window-contents") }
    }
}

impl<T> Default for Buffering<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Data> WindowContents for Buffering<T> {
    type In = T;
    type Content = Vec<T>;

    fn add(&self, ctx: &mut KeyedContext, ns: &[u8], value: &T) -> Result<bool> {
        // A list append is a blind merge; whether the window is new does not matter because
        // registering the same timer twice keeps one.
        ctx.state(&self.state)?.in_namespace(ns).add(value)?;
        Ok(true)
    }

    fn get(&self, ctx: &mut KeyedContext, ns: &[u8]) -> Result<Option<Vec<T>>> {
        let v = ctx.state(&self.state)?.in_namespace(ns).get()?;
        Ok(if v.is_empty() { None } else { Some(v) })
    }

    fn clear(&self, ctx: &mut KeyedContext, ns: &[u8]) -> Result<()> {
        ctx.state(&self.state)?.in_namespace(ns).clear()
    }

    fn merge_into(&self, ctx: &mut KeyedContext, sources: &[Vec<u8>], target: &[u8]) -> Result<()> {
        for src in sources.iter().filter(|s| s.as_slice() != target) {
            let mut st = ctx.state(&self.state)?.in_namespace(src);
            let items = st.get()?;
            st.clear()?;
            let mut t = ctx.state(&self.state)?.in_namespace(target);
            for item in &items {
                t.add(item)?;
            }
        }
        Ok(())
    }

    fn get_merged(&self, ctx: &mut KeyedContext, nss: &[Vec<u8>]) -> Result<Option<Vec<T>>> {
        let mut all = Vec::new();
        for ns in nss {
            all.extend(ctx.state(&self.state)?.in_namespace(ns).get()?);
        }
        Ok(if all.is_empty() { None } else { Some(all) })
    }
}

/// The keyed operator behind every windowed stream.
pub struct WindowOperator<K, C: WindowContents, O> {
    assigner: Arc<dyn WindowAssigner>,
    contents: C,
    emit: EmitFn<K, C::Content, O>,
    lateness: i64,
    late_tag: Option<OutputTag<C::In>>,
    late: Option<Counter>,
    sessions: ValueStateDescriptor<Vec<TimeWindow>>,
    windows: Vec<TimeWindow>,
    /// `(size, slide)` when sliding windows are kept as slices (event time, no allowed lateness).
    sliced: Option<(i64, i64)>,
    _k: PhantomData<fn() -> K>,
}

impl<K, C: WindowContents, O> WindowOperator<K, C, O> {
    pub(crate) fn new(
        assigner: Arc<dyn WindowAssigner>,
        contents: C,
        emit: EmitFn<K, C::Content, O>,
        lateness: i64,
        late_tag: Option<OutputTag<C::In>>,
    ) -> Self {
        let sliced = assigner.slices().filter(|_| lateness == 0 && assigner.is_event_time());
        WindowOperator {
            assigner,
            contents,
            emit,
            lateness,
            late_tag,
            late: None,
            sessions: ValueStateDescriptor::new("window-sessions"),
            windows: Vec::new(),
            sliced,
            _k: PhantomData,
        }
    }
}

impl<K: Data, C: WindowContents, O: Data> WindowOperator<K, C, O> {
    fn domain(&self) -> TimeDomain {
        if self.assigner.is_event_time() {
            TimeDomain::EventTime
        } else {
            TimeDomain::ProcessingTime
        }
    }

    fn cleanup_time(&self, w: &TimeWindow) -> i64 {
        if self.assigner.is_event_time() {
            w.max_timestamp().saturating_add(self.lateness)
        } else {
            w.max_timestamp()
        }
    }

    /// Whether the window's state is already gone (or would be by now).
    fn is_late(&self, w: &TimeWindow, wm: i64) -> bool {
        self.assigner.is_event_time() && self.cleanup_time(w) <= wm
    }

    fn register(&self, ctx: &mut KeyedContext, w: &TimeWindow, ns: &[u8]) -> Result<()> {
        let domain = self.domain();
        ctx.register_timer_in(domain, w.max_timestamp(), ns)?;
        let cleanup = self.cleanup_time(w);
        if cleanup != w.max_timestamp() {
            ctx.register_timer_in(domain, cleanup, ns)?;
        }
        Ok(())
    }

    fn unregister(&self, ctx: &mut KeyedContext, w: &TimeWindow, ns: &[u8]) -> Result<()> {
        let domain = self.domain();
        ctx.delete_timer_in(domain, w.max_timestamp(), ns)?;
        ctx.delete_timer_in(domain, self.cleanup_time(w), ns)
    }

    fn fire(&self, key: &K, w: &TimeWindow, ns: &[u8], ctx: &mut KeyedContext, out: &mut Collector<O>) -> Result<()> {
        let content = self.contents.get(ctx, ns)?;
        self.emit_window(key, w, content, out);
        Ok(())
    }

    /// Hands a fired window's content (if it has any) to the window function, stamped with the
    /// window's last timestamp.
    fn emit_window(&self, key: &K, w: &TimeWindow, content: Option<C::Content>, out: &mut Collector<O>) {
        if let Some(content) = content {
            out.set_timestamp(Some(w.max_timestamp()));
            (self.emit)(key, w, content, out);
        }
    }

    fn late_record(&self, r: Record<C::In>, out: &mut Collector<O>) {
        if let Some(c) = &self.late {
            c.add(1);
        }
        if let Some(tag) = &self.late_tag {
            out.set_timestamp(r.ts);
            out.side(tag, r.value);
        }
    }

    /// A record of sliding windows kept as slices: it updates its slice only. A new slice
    /// registers the timers of the windows it belongs to that have not fired yet.
    fn process_sliced(
        &mut self,
        size: i64,
        slide: i64,
        r: Record<C::In>,
        ts: i64,
        ctx: &mut KeyedContext,
        out: &mut Collector<O>,
    ) -> Result<()> {
        let wm = ctx.current_watermark();
        let start = ts - ts.rem_euclid(slide);
        if start + size - 1 <= wm {
            // Every window of the slice has fired.
            self.late_record(r, out);
            return Ok(());
        }
        if self.contents.add_to_slice(ctx, start, slide, &r.value)? {
            let mut end = start + slide;
            while end <= start + size {
                if end - 1 > wm {
                    let w = TimeWindow::new(end - size, end);
                    self.register(ctx, &w, &w.encode())?;
                }
                end += slide;
            }
        }
        Ok(())
    }

    /// Fires a window made of slices, then drops its first slice, which no later window has.
    fn fire_sliced(
        &mut self,
        key: &K,
        w: &TimeWindow,
        slide: i64,
        ctx: &mut KeyedContext,
        out: &mut Collector<O>,
    ) -> Result<()> {
        let content = self.contents.take_window(ctx, w, slide)?;
        self.emit_window(key, w, content, out);
        Ok(())
    }

    fn process_session(
        &mut self,
        key: &K,
        gap: i64,
        r: Record<C::In>,
        ts: i64,
        ctx: &mut KeyedContext,
        out: &mut Collector<O>,
    ) -> Result<()> {
        let wm = ctx.current_watermark();
        let new = TimeWindow::new(ts, ts.saturating_add(gap));
        if self.is_late(&new, wm) {
            self.late_record(r, out);
            return Ok(());
        }
        let mut sessions = ctx.state(&self.sessions)?.value()?.unwrap_or_default();
        let mut merged = new;
        let mut absorbed: Vec<TimeWindow> = Vec::new();
        loop {
            let before = absorbed.len();
            sessions.retain(|s| {
                if s.intersects(&merged) {
                    merged = merged.cover(s);
                    absorbed.push(*s);
                    false
                } else {
                    true
                }
            });
            if absorbed.len() == before {
                break;
            }
        }
        let target = merged.encode();
        if !absorbed.is_empty() {
            let sources: Vec<Vec<u8>> = absorbed.iter().map(TimeWindow::encode).collect();
            for (w, ns) in absorbed.iter().zip(&sources) {
                if *w != merged {
                    self.unregister(ctx, w, ns)?;
                }
            }
            self.contents.merge_into(ctx, &sources, &target)?;
        }
        self.contents.add(ctx, &target, &r.value)?;
        self.register(ctx, &merged, &target)?;
        sessions.push(merged);
        sessions.sort();
        ctx.state(&self.sessions)?.update(&sessions)?;
        if merged.max_timestamp() <= wm {
            self.fire(key, &merged, &target, ctx, out)?;
        }
        Ok(())
    }
}

impl<K: Data, C: WindowContents, O: Data> KeyedOperator for WindowOperator<K, C, O> {
    type Key = K;
    type In = C::In;
    type Out = O;

    fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        self.late = Some(ctx.counter("late_records"));
        Ok(())
    }

    fn process(&mut self, key: &K, r: Record<C::In>, ctx: &mut KeyedContext, out: &mut Collector<O>) -> Result<()> {
        let ts = if self.assigner.is_event_time() {
            match r.ts {
                Some(ts) => ts,
                None if self.assigner.accepts_untimed() => 0,
                None => {
                    return Err(anyhow!(
                        "a record without event timestamp reached an event-time window; give the source a timestamp assigner"
                    ))
                }
            }
        } else {
            ctx.processing_time()
        };
        if let Some(gap) = self.assigner.session_gap() {
            return self.process_session(key, gap, r, ts, ctx, out);
        }
        if let Some((size, slide)) = self.sliced {
            return self.process_sliced(size, slide, r, ts, ctx, out);
        }
        let wm = ctx.current_watermark();
        let mut windows = std::mem::take(&mut self.windows);
        windows.clear();
        self.assigner.assign(ts, &mut windows);
        let mut accepted = false;
        for w in &windows {
            if self.is_late(w, wm) {
                continue;
            }
            accepted = true;
            let ns = w.encode();
            if self.contents.add(ctx, &ns, &r.value)? {
                self.register(ctx, w, &ns)?;
            }
            if self.assigner.is_event_time() && w.max_timestamp() <= wm {
                // Late but within the allowed lateness: the window fires again with the record.
                self.fire(key, w, &ns, ctx, out)?;
            }
        }
        let any = !windows.is_empty();
        self.windows = windows;
        if any && !accepted {
            self.late_record(r, out);
        }
        Ok(())
    }

    fn on_timer(&mut self, key: &K, t: FiredTimer, ctx: &mut KeyedContext, out: &mut Collector<O>) -> Result<()> {
        let w = TimeWindow::decode(&t.namespace)?;
        if let Some((_, slide)) = self.sliced {
            return self.fire_sliced(key, &w, slide, ctx, out);
        }
        if t.ts == w.max_timestamp() {
            self.fire(key, &w, &t.namespace, ctx, out)?;
        }
        if t.ts == self.cleanup_time(&w) {
            self.contents.clear(ctx, &t.namespace)?;
            if self.assigner.session_gap().is_some() {
                let mut st = ctx.state(&self.sessions)?;
                let mut sessions = st.value()?.unwrap_or_default();
                sessions.retain(|s| *s != w);
                if sessions.is_empty() {
                    st.clear()?;
                } else {
                    st.update(&sessions)?;
                }
            }
        }
        Ok(())
    }
}
