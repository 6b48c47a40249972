//! Drives one operator inside a task: hands it batches, fires its timers on watermarks and on the
//! wall clock, and passes its results and the control events on, in order.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use weir_state::KeyedStateBackend;

use crate::checkpointing::{CheckpointEnv, LocalSnapshot};
use crate::element::{CheckpointBarrier, Data, Record};
use crate::error::panic_message;
use crate::operator::{Collector, Counter, KeyedContext, OperatorContext, SideOutputs};
use crate::output::{min_opt, Downstream, ErasedOutput, Output, SidePort, TaskHead};

pub(crate) use crate::driver_ops::{Co, Keyed, KeyedCo, OneInput};

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
    pub(crate) fn keyed(&mut self, ts: Option<i64>) -> Result<KeyedContext<'_>> {
        let backend = self.backend.as_mut().ok_or_else(|| anyhow!("keyed operator without state backend"))?;
        let (state, timers) = backend.parts();
        Ok(KeyedContext { op: &mut self.ctx, state, timers, ts })
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
            let async_parts = std::mem::take(&mut env.ctx.async_parts);
            crate::fault::crash_point("mid-snapshot", id);
            self.forward_all(|d| d.barrier(barrier))?;
            let watermark = self.env.ctx.watermark;
            let timing = crate::checkpointing::SnapshotTiming::since(started, cp.stats.alignment_ms(id));
            let snapshot =
                LocalSnapshot { local_db, async_parts, operator_state: state, watermark, key_groups, timing };
            cp.ack(id, info.subtask, snapshot);
            Ok(())
        } else {
            // Without checkpoints nothing waits for asynchronous parts: run them now.
            for part in std::mem::take(&mut self.env.ctx.async_parts) {
                part()?;
            }
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
