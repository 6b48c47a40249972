//! The operator kinds (one input, keyed, two inputs, keyed two inputs) as [`DriverOp`]s: how
//! each hands records to its operator, sets the current key and fires timers.

use std::any::Any;

use anyhow::{anyhow, Context, Result};
use weir_state::TimeDomain;

use crate::driver::{DriverEnv, DriverOp, KeyFn};
use crate::element::{Data, Record};
use crate::operator::{
    CoOperator, Collector, FiredTimer, KeyedCoOperator, KeyedContext, KeyedOperator, Operator, OperatorContext,
};

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

/// Hands every record of `batch` to `call`, stamping what it emits with the record's time.
fn process_each<T: Data, O>(
    batch: &mut dyn Any,
    env: &mut DriverEnv,
    out: &mut Collector<O>,
    mut call: impl FnMut(Record<T>, &mut OperatorContext, &mut Collector<O>) -> Result<()>,
) -> Result<()> {
    let batch = downcast::<T>(batch)?;
    env.records_in.add(batch.len() as u64);
    for r in batch.drain(..) {
        out.set_timestamp(r.ts);
        call(r, &mut env.ctx, out)?;
    }
    Ok(())
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
        let op = &mut self.0;
        process_each(batch, env, out, |r, c, o| op.process(r, c, o))
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

/// Fires due timers of one domain (at most `limit` of them), setting the current key of each
/// before the call.
fn fire_timers<K: Data>(
    domain: TimeDomain,
    time: i64,
    limit: usize,
    env: &mut DriverEnv,
    mut call: impl FnMut(&K, FiredTimer, &mut KeyedContext) -> Result<()>,
) -> Result<()> {
    for _ in 0..limit {
        let backend = env.backend.as_mut().ok_or_else(|| anyhow!("keyed operator without state backend"))?;
        let Some(timer) = backend.pop_due_timer(domain, time) else { return Ok(()) };
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
    Ok(())
}

/// Fires due timers of `domain` through `on_timer`, stamping what they emit: event-time timers
/// with their time, processing-time ones with none.
fn fire_keyed_timers<K: Data, O>(
    domain: TimeDomain,
    time: i64,
    limit: usize,
    env: &mut DriverEnv,
    out: &mut Collector<O>,
    mut on_timer: impl FnMut(&K, FiredTimer, &mut KeyedContext, &mut Collector<O>) -> Result<()>,
) -> Result<()> {
    fire_timers::<K>(domain, time, limit, env, |key, t, kctx| {
        out.set_timestamp(match domain {
            TimeDomain::EventTime => Some(t.ts),
            TimeDomain::ProcessingTime => None,
        });
        on_timer(key, t, kctx, out)
    })
}

/// Hands every record of `batch` to `call` with its key set as the current key.
fn process_keyed<T: Data, K: Data, O>(
    batch: &mut dyn Any,
    key_fn: &KeyFn<T, K>,
    key_buf: &mut Vec<u8>,
    env: &mut DriverEnv,
    out: &mut Collector<O>,
    mut call: impl FnMut(&K, Record<T>, &mut KeyedContext, &mut Collector<O>) -> Result<()>,
) -> Result<()> {
    let batch = downcast::<T>(batch)?;
    env.records_in.add(batch.len() as u64);
    for r in batch.drain(..) {
        let key = key_fn(&r.value);
        set_key(env, &key, key_buf)?;
        out.set_timestamp(r.ts);
        let mut kctx = env.keyed(r.ts)?;
        call(&key, r, &mut kctx, out)?;
    }
    Ok(())
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

/// What differs between the one- and the two-input keyed operator: how records reach it. Timers,
/// the end of input and opening are the same for both and live in one [`DriverOp`] impl below.
pub(crate) trait KeyedDriven: 'static {
    type Key: Data;
    type Out: Data;
    fn open(&mut self, env: &mut DriverEnv) -> Result<()>;
    fn process(
        &mut self,
        input: usize,
        batch: &mut dyn Any,
        env: &mut DriverEnv,
        out: &mut Collector<Self::Out>,
    ) -> Result<()>;
    fn on_timer(
        &mut self,
        key: &Self::Key,
        timer: FiredTimer,
        ctx: &mut KeyedContext,
        out: &mut Collector<Self::Out>,
    ) -> Result<()>;
    fn end_input(&mut self, env: &mut DriverEnv, out: &mut Collector<Self::Out>) -> Result<()>;
}

impl<K: KeyedDriven> DriverOp for K {
    type Out = K::Out;
    fn open(&mut self, env: &mut DriverEnv) -> Result<()> {
        KeyedDriven::open(self, env)
    }
    fn process(
        &mut self,
        input: usize,
        batch: &mut dyn Any,
        env: &mut DriverEnv,
        out: &mut Collector<K::Out>,
    ) -> Result<()> {
        KeyedDriven::process(self, input, batch, env, out)
    }
    fn on_watermark(&mut self, wm: i64, env: &mut DriverEnv, out: &mut Collector<K::Out>) -> Result<()> {
        fire_keyed_timers(TimeDomain::EventTime, wm, usize::MAX, env, out, |k, t, c, o| self.on_timer(k, t, c, o))
    }
    fn on_time(&mut self, now: i64, env: &mut DriverEnv, out: &mut Collector<K::Out>) -> Result<()> {
        fire_keyed_timers(TimeDomain::ProcessingTime, now, usize::MAX, env, out, |k, t, c, o| self.on_timer(k, t, c, o))
    }
    fn next_wakeup(&self, env: &DriverEnv) -> Option<i64> {
        env.backend.as_ref().and_then(|b| b.next_timer(TimeDomain::ProcessingTime))
    }
    fn end_input(&mut self, env: &mut DriverEnv, out: &mut Collector<K::Out>) -> Result<()> {
        // A bounded input has ended: processing time is taken to run on, as in Flink's batch
        // execution, so that the processing-time timers registered so far fire (a job's last
        // processing-time windows are emitted, not dropped). Only as many as there are now:
        // a timer that re-arms itself would otherwise fire forever.
        let pending = env.backend.as_ref().map_or(0, |b| b.timer_count(TimeDomain::ProcessingTime));
        fire_keyed_timers(TimeDomain::ProcessingTime, i64::MAX, pending, env, out, |k, t, c, o| {
            self.on_timer(k, t, c, o)
        })?;
        out.set_timestamp(None);
        KeyedDriven::end_input(self, env, out)
    }
}

impl<Op: KeyedOperator> KeyedDriven for Keyed<Op> {
    type Key = Op::Key;
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
        let op = &mut self.op;
        process_keyed(batch, &self.key_fn, &mut self.key_buf, env, out, |k, r, c, o| op.process(k, r, c, o))
    }
    fn on_timer(
        &mut self,
        key: &Op::Key,
        timer: FiredTimer,
        ctx: &mut KeyedContext,
        out: &mut Collector<Op::Out>,
    ) -> Result<()> {
        self.op.on_timer(key, timer, ctx, out)
    }
    fn end_input(&mut self, env: &mut DriverEnv, out: &mut Collector<Op::Out>) -> Result<()> {
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
        let op = &mut self.0;
        if input == 0 {
            process_each(batch, env, out, |r, c, o| op.process1(r, c, o))
        } else {
            process_each(batch, env, out, |r, c, o| op.process2(r, c, o))
        }
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

impl<Op: KeyedCoOperator> KeyedDriven for KeyedCo<Op> {
    type Key = Op::Key;
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
        let op = &mut self.op;
        if input == 0 {
            process_keyed(batch, &self.key1, &mut self.key_buf, env, out, |k, r, c, o| op.process1(k, r, c, o))
        } else {
            process_keyed(batch, &self.key2, &mut self.key_buf, env, out, |k, r, c, o| op.process2(k, r, c, o))
        }
    }
    fn on_timer(
        &mut self,
        key: &Op::Key,
        timer: FiredTimer,
        ctx: &mut KeyedContext,
        out: &mut Collector<Op::Out>,
    ) -> Result<()> {
        self.op.on_timer(key, timer, ctx, out)
    }
    fn end_input(&mut self, env: &mut DriverEnv, out: &mut Collector<Op::Out>) -> Result<()> {
        self.op.end_input(&mut env.ctx, out)
    }
}
