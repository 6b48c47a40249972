//! Drives one operator inside a task: hands it batches, fires its timers on watermarks and on the
//! wall clock, and passes its results and the control events on, in order.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use weir_state::{KeyedStateBackend, TimeDomain};

use crate::checkpointing::{CheckpointEnv, LocalSnapshot};
use crate::element::{CheckpointBarrier, Data, Record};
use crate::error::panic_message;
use crate::operator::{
    CoOperator, Collector, Counter, FiredTimer, KeyedCoOperator, KeyedContext, KeyedOperator, Operator,
    OperatorContext, SideOutputs,
};
use crate::output::{min_opt, Downstream, ErasedOutput, Output, SidePort, TaskHead};

/// Encodes a record's key; shared by the partitioner and the keyed driver.
pub(crate) type KeyFn<T, K> = Arc<dyn Fn(&T) -> K + Send + Sync>;

pub(crate) struct DriverEnv {
    pub ctx: OperatorContext,
    pub checkpoint: Option<CheckpointEnv>,
    /// Operator states of the previous run, handed to the operator before `open`.
    pub restored: Option<Vec<Vec<u8>>>,
    pub backend: Option<KeyedStateBackend>,
    pub records_in: Counter,
    pub records_out: Counter,
    pub watermark_gauge: Arc<AtomicI64>,
}

impl DriverEnv {
    fn keyed(&mut self, ts: Option<i64>) -> Result<KeyedContext<'_>> {
        let backend = self.backend.as_mut().ok_or_else(|| anyhow!("keyed operator without state backend"))?;
        Ok(KeyedContext { op: &mut self.ctx, backend, ts })
    }
}

/// The operator kinds, seen uniformly by [`OperatorDriver`].
pub(crate) trait DriverOp: 'static {
    type Out: Data;
    fn open(&mut self, env: &mut DriverEnv) -> Result<()>;
    fn process(
        &mut self,
        input: usize,
        batch: &mut dyn Any,
        env: &mut DriverEnv,
        out: &mut Collector<Self::Out>,
    ) -> Result<()>;
    fn on_watermark(&mut self, wm: i64, env: &mut DriverEnv, out: &mut Collector<Self::Out>) -> Result<()>;
    fn on_time(&mut self, now: i64, env: &mut DriverEnv, out: &mut Collector<Self::Out>) -> Result<()>;
    fn next_wakeup(&self, env: &DriverEnv) -> Option<i64>;
    fn end_input(&mut self, env: &mut DriverEnv, out: &mut Collector<Self::Out>) -> Result<()>;
    fn snapshot(&mut self, _id: u64, _env: &mut DriverEnv) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
    fn restore(&mut self, _states: Vec<Vec<u8>>, _env: &mut DriverEnv) -> Result<()> {
        Ok(())
    }
    fn checkpoint_complete(&mut self, _id: u64, _env: &mut DriverEnv) -> Result<()> {
        Ok(())
    }
}

fn downcast<T: 'static>(batch: &mut dyn Any) -> Result<&mut Vec<Record<T>>> {
    batch
        .downcast_mut::<Vec<Record<T>>>()
        .ok_or_else(|| anyhow!("internal error: batch of the wrong type for this input"))
}

fn take_processing_timer(env: &mut DriverEnv, now: i64) -> bool {
    match env.ctx.processing_timer {
        Some(t) if t <= now => {
            env.ctx.processing_timer = None;
            true
        }
        _ => false,
    }
}

pub(crate) struct OneInput<Op>(pub Op);

impl<Op: Operator> DriverOp for OneInput<Op> {
    type Out = Op::Out;
    fn open(&mut self, env: &mut DriverEnv) -> Result<()> {
        self.0.open(&mut env.ctx)
    }
    fn process(
        &mut self,
        _input: usize,
        batch: &mut dyn Any,
        env: &mut DriverEnv,
        out: &mut Collector<Op::Out>,
    ) -> Result<()> {
        let batch = downcast::<Op::In>(batch)?;
        env.records_in.add(batch.len() as u64);
        for r in batch.drain(..) {
            out.set_timestamp(r.ts);
            self.0.process(r, &mut env.ctx, out)?;
        }
        Ok(())
    }
    fn on_watermark(&mut self, wm: i64, env: &mut DriverEnv, out: &mut Collector<Op::Out>) -> Result<()> {
        out.set_timestamp(None);
        self.0.on_watermark(wm, &mut env.ctx, out)
    }
    fn on_time(&mut self, now: i64, env: &mut DriverEnv, out: &mut Collector<Op::Out>) -> Result<()> {
        if take_processing_timer(env, now) {
            out.set_timestamp(None);
            self.0.on_processing_time(now, &mut env.ctx, out)?;
        }
        Ok(())
    }
    fn next_wakeup(&self, env: &DriverEnv) -> Option<i64> {
        env.ctx.processing_timer
    }
    fn end_input(&mut self, env: &mut DriverEnv, out: &mut Collector<Op::Out>) -> Result<()> {
        out.set_timestamp(None);
        self.0.end_input(&mut env.ctx, out)
    }
    fn snapshot(&mut self, id: u64, env: &mut DriverEnv) -> Result<Option<Vec<u8>>> {
        self.0.snapshot_state(id, &mut env.ctx)
    }
    fn restore(&mut self, states: Vec<Vec<u8>>, env: &mut DriverEnv) -> Result<()> {
        self.0.restore_state(states, &mut env.ctx)
    }
    fn checkpoint_complete(&mut self, id: u64, env: &mut DriverEnv) -> Result<()> {
        self.0.notify_checkpoint_complete(id, &mut env.ctx)
    }
}

/// Fires due timers of one domain, setting the current key of each before the call.
fn fire_timers<K: Data>(
    domain: TimeDomain,
    time: i64,
    env: &mut DriverEnv,
    mut call: impl FnMut(&K, FiredTimer, &mut KeyedContext) -> Result<()>,
) -> Result<()> {
    loop {
        let backend = env.backend.as_mut().ok_or_else(|| anyhow!("keyed operator without state backend"))?;
        let Some(timer) = backend.pop_due_timer(domain, time)? else { return Ok(()) };
        let key: K = weir_state::codec::decode(timer.key_bytes()).context("decoding a timer's key")?;
        backend.set_current_key_prefixed(&timer.key);
        let ts = timer.ts;
        let fired = FiredTimer { ts, domain, namespace: timer.ns };
        let mut kctx = env.keyed(match domain {
            TimeDomain::EventTime => Some(ts),
            TimeDomain::ProcessingTime => None,
        })?;
        call(&key, fired, &mut kctx)?;
    }
}

pub(crate) struct Keyed<Op: KeyedOperator> {
    pub op: Op,
    pub key_fn: KeyFn<Op::In, Op::Key>,
    pub key_buf: Vec<u8>,
}

fn set_key<K: Data>(env: &mut DriverEnv, key: &K, buf: &mut Vec<u8>) -> Result<()> {
    buf.clear();
    weir_state::codec::encode_into(key, buf)?;
    env.backend.as_mut().ok_or_else(|| anyhow!("keyed operator without state backend"))?.set_current_key_bytes(buf);
    Ok(())
}

impl<Op: KeyedOperator> DriverOp for Keyed<Op> {
    type Out = Op::Out;
    fn open(&mut self, env: &mut DriverEnv) -> Result<()> {
        self.op.open(&mut env.ctx)
    }
    fn process(
        &mut self,
        _input: usize,
        batch: &mut dyn Any,
        env: &mut DriverEnv,
        out: &mut Collector<Op::Out>,
    ) -> Result<()> {
        let batch = downcast::<Op::In>(batch)?;
        env.records_in.add(batch.len() as u64);
        for r in batch.drain(..) {
            let key = (self.key_fn)(&r.value);
            set_key(env, &key, &mut self.key_buf)?;
            out.set_timestamp(r.ts);
            let mut kctx = env.keyed(r.ts)?;
            self.op.process(&key, r, &mut kctx, out)?;
        }
        Ok(())
    }
    fn on_watermark(&mut self, wm: i64, env: &mut DriverEnv, out: &mut Collector<Op::Out>) -> Result<()> {
        let op = &mut self.op;
        fire_timers::<Op::Key>(TimeDomain::EventTime, wm, env, |key, t, kctx| {
            out.set_timestamp(Some(t.ts));
            op.on_timer(key, t, kctx, out)
        })
    }
    fn on_time(&mut self, now: i64, env: &mut DriverEnv, out: &mut Collector<Op::Out>) -> Result<()> {
        let op = &mut self.op;
        fire_timers::<Op::Key>(TimeDomain::ProcessingTime, now, env, |key, t, kctx| {
            out.set_timestamp(None);
            op.on_timer(key, t, kctx, out)
        })
    }
    fn next_wakeup(&self, env: &DriverEnv) -> Option<i64> {
        env.backend.as_ref().and_then(|b| b.next_timer(TimeDomain::ProcessingTime))
    }
    fn end_input(&mut self, env: &mut DriverEnv, out: &mut Collector<Op::Out>) -> Result<()> {
        out.set_timestamp(None);
        self.op.end_input(&mut env.ctx, out)
    }
}

pub(crate) struct Co<Op>(pub Op);

impl<Op: CoOperator> DriverOp for Co<Op> {
    type Out = Op::Out;
    fn open(&mut self, env: &mut DriverEnv) -> Result<()> {
        self.0.open(&mut env.ctx)
    }
    fn process(
        &mut self,
        input: usize,
        batch: &mut dyn Any,
        env: &mut DriverEnv,
        out: &mut Collector<Op::Out>,
    ) -> Result<()> {
        if input == 0 {
            let batch = downcast::<Op::In1>(batch)?;
            env.records_in.add(batch.len() as u64);
            for r in batch.drain(..) {
                out.set_timestamp(r.ts);
                self.0.process1(r, &mut env.ctx, out)?;
            }
        } else {
            let batch = downcast::<Op::In2>(batch)?;
            env.records_in.add(batch.len() as u64);
            for r in batch.drain(..) {
                out.set_timestamp(r.ts);
                self.0.process2(r, &mut env.ctx, out)?;
            }
        }
        Ok(())
    }
    fn on_watermark(&mut self, wm: i64, env: &mut DriverEnv, out: &mut Collector<Op::Out>) -> Result<()> {
        out.set_timestamp(None);
        self.0.on_watermark(wm, &mut env.ctx, out)
    }
    fn on_time(&mut self, _now: i64, _env: &mut DriverEnv, _out: &mut Collector<Op::Out>) -> Result<()> {
        Ok(())
    }
    fn next_wakeup(&self, _env: &DriverEnv) -> Option<i64> {
        None
    }
    fn end_input(&mut self, env: &mut DriverEnv, out: &mut Collector<Op::Out>) -> Result<()> {
        out.set_timestamp(None);
        self.0.end_input(&mut env.ctx, out)
    }
}

pub(crate) struct KeyedCo<Op: KeyedCoOperator> {
    pub op: Op,
    pub key1: KeyFn<Op::In1, Op::Key>,
    pub key2: KeyFn<Op::In2, Op::Key>,
    pub key_buf: Vec<u8>,
}

impl<Op: KeyedCoOperator> DriverOp for KeyedCo<Op> {
    type Out = Op::Out;
    fn open(&mut self, env: &mut DriverEnv) -> Result<()> {
        self.op.open(&mut env.ctx)
    }
    fn process(
        &mut self,
        input: usize,
        batch: &mut dyn Any,
        env: &mut DriverEnv,
        out: &mut Collector<Op::Out>,
    ) -> Result<()> {
        if input == 0 {
            let batch = downcast::<Op::In1>(batch)?;
            env.records_in.add(batch.len() as u64);
            for r in batch.drain(..) {
                let key = (self.key1)(&r.value);
                set_key(env, &key, &mut self.key_buf)?;
                out.set_timestamp(r.ts);
                let mut kctx = env.keyed(r.ts)?;
                self.op.process1(&key, r, &mut kctx, out)?;
            }
        } else {
            let batch = downcast::<Op::In2>(batch)?;
            env.records_in.add(batch.len() as u64);
            for r in batch.drain(..) {
                let key = (self.key2)(&r.value);
                set_key(env, &key, &mut self.key_buf)?;
                out.set_timestamp(r.ts);
                let mut kctx = env.keyed(r.ts)?;
                self.op.process2(&key, r, &mut kctx, out)?;
            }
        }
        Ok(())
    }
    fn on_watermark(&mut self, wm: i64, env: &mut DriverEnv, out: &mut Collector<Op::Out>) -> Result<()> {
        let op = &mut self.op;
        fire_timers::<Op::Key>(TimeDomain::EventTime, wm, env, |key, t, kctx| {
            out.set_timestamp(Some(t.ts));
            op.on_timer(key, t, kctx, out)
        })
    }
    fn on_time(&mut self, now: i64, env: &mut DriverEnv, out: &mut Collector<Op::Out>) -> Result<()> {
        let op = &mut self.op;
        fire_timers::<Op::Key>(TimeDomain::ProcessingTime, now, env, |key, t, kctx| {
            out.set_timestamp(None);
            op.on_timer(key, t, kctx, out)
        })
    }
    fn next_wakeup(&self, env: &DriverEnv) -> Option<i64> {
        env.backend.as_ref().and_then(|b| b.next_timer(TimeDomain::ProcessingTime))
    }
    fn end_input(&mut self, env: &mut DriverEnv, out: &mut Collector<Op::Out>) -> Result<()> {
        out.set_timestamp(None);
        self.op.end_input(&mut env.ctx, out)
    }
}

/// Owns one operator, its outputs and its output buffers.
pub(crate) struct OperatorDriver<D: DriverOp> {
    op: D,
    env: DriverEnv,
    main: Box<dyn Output<D::Out>>,
    sides: Vec<Box<dyn ErasedOutput>>,
    side_bufs: SideOutputs,
    buf: Vec<Record<D::Out>>,
    label: String,
}

impl<D: DriverOp> OperatorDriver<D> {
    pub(crate) fn new(
        mut op: D,
        mut env: DriverEnv,
        main: Box<dyn Output<D::Out>>,
        sides: Vec<SidePort>,
    ) -> Result<Self> {
        let info = env.ctx.info();
        let label = format!(
            "operator '{}' (uid {}, subtask {}/{})",
            info.operator_name,
            info.uid,
            info.subtask + 1,
            info.parallelism
        );
        let mut side_bufs = SideOutputs::default();
        let mut side_outs = Vec::new();
        for (name, out, buf) in sides {
            side_bufs.ports.push((name, buf));
            side_outs.push(out);
        }
        match catch_unwind(AssertUnwindSafe(|| -> Result<()> {
            if let Some(states) = env.restored.take() {
                op.restore(states, &mut env)?;
            }
            op.open(&mut env)
        })) {
            Ok(r) => r.with_context(|| format!("{label} failed to open"))?,
            Err(p) => bail!("{label} panicked while opening: {}", panic_message(&*p)),
        }
        Ok(OperatorDriver { op, env, main, sides: side_outs, side_bufs, buf: Vec::new(), label })
    }

    /// Runs one call of the operator, turning errors and panics into an error naming it, then
    /// passes on what it emitted.
    fn call(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut D, &mut DriverEnv, &mut Collector<D::Out>) -> Result<()>,
    ) -> Result<()> {
        let (op, env, buf, sides) = (&mut self.op, &mut self.env, &mut self.buf, &mut self.side_bufs);
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut out = Collector::new(buf, sides);
            f(op, env, &mut out)
        }));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) if crate::error::is_cancelled(&e) => return Err(e),
            Ok(Err(e)) => return Err(e.context(format!("{} failed in {what}", self.label))),
            Err(p) => bail!("{} panicked in {what}: {}", self.label, panic_message(&*p)),
        }
        self.emit()
    }

    fn emit(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.env.records_out.add(self.buf.len() as u64);
            self.main.push(&mut self.buf)?;
        }
        for (i, out) in self.sides.iter_mut().enumerate() {
            out.push_any(&mut *self.side_bufs.ports[i].1)?;
        }
        Ok(())
    }

    fn forward_all(&mut self, f: impl Fn(&mut dyn Downstream) -> Result<()>) -> Result<()> {
        f(&mut *self.main)?;
        for s in &mut self.sides {
            f(&mut **s)?;
        }
        Ok(())
    }
}

impl<D: DriverOp> TaskHead for OperatorDriver<D> {
    fn process(&mut self, input: usize, batch: &mut dyn Any) -> Result<()> {
        self.call("process", |op, env, out| op.process(input, batch, env, out))
    }
}

impl<D: DriverOp> Downstream for OperatorDriver<D> {
    fn watermark(&mut self, wm: i64) -> Result<()> {
        if wm <= self.env.ctx.watermark {
            return Ok(());
        }
        self.env.ctx.watermark = wm;
        self.env.watermark_gauge.store(wm, Ordering::Relaxed);
        self.call("on_watermark", |op, env, out| op.on_watermark(wm, env, out))?;
        self.forward_all(|d| d.watermark(wm))
    }
    fn idle(&mut self) -> Result<()> {
        self.forward_all(|d| d.idle())
    }
    fn barrier(&mut self, barrier: CheckpointBarrier) -> Result<()> {
        let id = barrier.id;
        let started = std::time::Instant::now();
        let mut state = None;
        self.call("snapshot_state", |op, env, _| {
            state = op.snapshot(id, env)?;
            Ok(())
        })?;
        let env = &mut self.env;
        if let Some(cp) = env.checkpoint.clone() {
            let info = env.ctx.info().clone();
            let (local_db, key_groups) = match env.backend.as_mut() {
                Some(b) => (Some(cp.snapshot_backend(b, &info.uid, info.subtask, id)?), Some(b.key_group_range())),
                None => (None, None),
            };
            crate::fault::crash_point("mid-snapshot", id);
            self.forward_all(|d| d.barrier(barrier))?;
            let watermark = self.env.ctx.watermark;
            let timing = crate::checkpointing::SnapshotTiming::since(started, cp.stats.alignment_ms(id));
            cp.ack(id, info.subtask, LocalSnapshot { local_db, operator_state: state, watermark, key_groups, timing });
            Ok(())
        } else {
            self.forward_all(|d| d.barrier(barrier))
        }
    }
    fn checkpoint_complete(&mut self, id: u64) -> Result<()> {
        self.call("notify_checkpoint_complete", |op, env, _| op.checkpoint_complete(id, env))?;
        self.forward_all(|d| d.checkpoint_complete(id))
    }
    fn end_of_input(&mut self) -> Result<()> {
        self.call("end_input", |op, env, out| op.end_input(env, out))?;
        self.forward_all(|d| d.end_of_input())
    }
    fn flush(&mut self) -> Result<()> {
        self.forward_all(|d| d.flush())
    }
    fn next_wakeup(&self) -> Option<i64> {
        let mut next = min_opt(self.op.next_wakeup(&self.env), self.main.next_wakeup());
        for s in &self.sides {
            next = min_opt(next, s.next_wakeup());
        }
        next
    }
    fn on_time(&mut self, now: i64) -> Result<()> {
        if self.op.next_wakeup(&self.env).is_some_and(|t| t <= now) {
            self.call("on_processing_time", |op, env, out| op.on_time(now, env, out))?;
        }
        self.forward_all(|d| d.on_time(now))
    }
}
