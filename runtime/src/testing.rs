//! An operator test harness (as Flink's `KeyedOneInputStreamOperatorTestHarness`): drives one
//! operator in-process, the way its task would, without threads, channels or checkpoint storage.
//!
//! Feed it records, watermarks and processing time; take snapshots and restore a new operator
//! from them; read the main output, side outputs and pending timers. Keyed operators get a real
//! RocksDB state backend in a temporary directory, and their timers fire on watermarks as in a
//! job.
//!
//! ```
//! use weir_runtime::testing::OperatorHarness;
//! use weir_runtime::{Collector, Operator, OperatorContext, Record};
//!
//! struct Double;
//! impl Operator for Double {
//!     type In = i64;
//!     type Out = i64;
//!     fn process(&mut self, r: Record<i64>, _: &mut OperatorContext, out: &mut Collector<i64>) -> anyhow::Result<()> {
//!         out.collect(r.value * 2);
//!         Ok(())
//!     }
//! }
//!
//! let mut h = OperatorHarness::new(Double).unwrap();
//! h.process_at(21, 1_000).unwrap();
//! assert_eq!(h.take_values(), vec![42]);
//! ```

use std::any::Any;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use weir_state::{KeyGroupRange, KeyedStateBackend, StateMemory, TimeDomain};

use crate::driver::{DriverEnv, DriverOp, Keyed, OneInput};
use crate::element::{Data, Record};
use crate::metrics::JobMetrics;
use crate::operator::{Collector, Counter, KeyedOperator, Operator, OperatorContext, OutputTag, SideOutputs, TaskInfo};

/// Where the harnessed operator runs: its subtask, parallelism and whether the job checkpoints.
#[derive(Clone, Debug)]
pub struct HarnessConfig {
    /// The subtask index.
    pub subtask: usize,
    /// The operator's parallelism.
    pub parallelism: usize,
    /// Key groups.
    pub max_parallelism: usize,
    /// Whether the job checkpoints (sinks write differently without).
    pub checkpointing: bool,
}

impl Default for HarnessConfig {
    fn default() -> Self {
        HarnessConfig { subtask: 0, parallelism: 1, max_parallelism: 128, checkpointing: true }
    }
}

impl HarnessConfig {
    /// Subtask `subtask` of `parallelism`, checkpointing, 128 key groups.
    pub fn subtask(subtask: usize, parallelism: usize) -> Self {
        HarnessConfig { subtask, parallelism, ..HarnessConfig::default() }
    }

    /// What the operator of `uid` sees of itself as this subtask (for operators whose
    /// constructor takes it, as the sinks do).
    pub fn task_info(&self, uid: &str) -> TaskInfo {
        TaskInfo {
            job_name: "harness".into(),
            operator_name: uid.into(),
            uid: uid.into(),
            subtask: self.subtask,
            parallelism: self.parallelism,
            max_parallelism: self.max_parallelism,
        }
    }
}

/// What [`OperatorHarness::snapshot`] took: the operator state and, for keyed operators, a
/// RocksDB checkpoint of the keyed state.
#[derive(Clone)]
pub struct HarnessSnapshot {
    /// The checkpoint id.
    pub id: u64,
    /// The operator's own state (`snapshot_state`).
    pub operator_state: Option<Vec<u8>>,
    /// The watermark at the snapshot.
    pub watermark: i64,
    keyed: Option<PathBuf>,
    /// Keeps the keyed state's directory alive as long as a snapshot refers to it.
    _dir: Arc<tempfile::TempDir>,
}

/// Drives one operator; see the module comment.
pub struct OperatorHarness<In, Out> {
    op: Box<dyn DriverOp<Out = Out>>,
    env: DriverEnv,
    output: Vec<Record<Out>>,
    sides: SideOutputs,
    dir: Arc<tempfile::TempDir>,
    _in: PhantomData<fn(In)>,
}

impl<In: Data, Out: Data> OperatorHarness<In, Out> {
    /// A harness for `op`, opened, as subtask 0 of 1 of a checkpointing job.
    pub fn new<Op: Operator<In = In, Out = Out>>(op: Op) -> Result<Self> {
        Self::with_config(op, HarnessConfig::default())
    }

    /// A harness for `op`, opened, running as `config` says.
    pub fn with_config<Op: Operator<In = In, Out = Out>>(op: Op, config: HarnessConfig) -> Result<Self> {
        let mut h = Self::build(Box::new(OneInput(op)), config, false, None)?;
        h.open()?;
        Ok(h)
    }

    /// A harness for `op`, restored from the operator states of (possibly several) old subtasks,
    /// then opened, as a restored subtask is.
    pub fn restored<Op: Operator<In = In, Out = Out>>(
        op: Op,
        config: HarnessConfig,
        states: Vec<Vec<u8>>,
        checkpoint: u64,
    ) -> Result<Self> {
        let mut h = Self::build(Box::new(OneInput(op)), config, false, None)?;
        h.env.ctx.restored_checkpoint = Some(checkpoint);
        h.op.restore(states, &mut h.env)?;
        h.open()?;
        Ok(h)
    }

    /// A harness for the keyed operator `op` with keys from `key`, with an empty state backend
    /// owning every key group, opened.
    pub fn keyed<Op: KeyedOperator<In = In, Out = Out>>(
        op: Op,
        key: impl Fn(&In) -> Op::Key + Send + Sync + 'static,
    ) -> Result<Self> {
        let keyed = Keyed { op, key_fn: Arc::new(key), key_buf: Vec::new() };
        let mut h = Self::build(Box::new(keyed), HarnessConfig::default(), true, None)?;
        h.open()?;
        Ok(h)
    }

    /// A harness for the keyed operator `op`, restored from `snapshot` (its keyed state, timers
    /// and operator state), then opened.
    pub fn keyed_restored<Op: KeyedOperator<In = In, Out = Out>>(
        op: Op,
        key: impl Fn(&In) -> Op::Key + Send + Sync + 'static,
        snapshot: &HarnessSnapshot,
    ) -> Result<Self> {
        let keyed = Keyed { op, key_fn: Arc::new(key), key_buf: Vec::new() };
        let mut h = Self::build(Box::new(keyed), HarnessConfig::default(), true, snapshot.keyed.as_deref())?;
        h.env.ctx.restored_checkpoint = Some(snapshot.id);
        h.env.ctx.watermark = snapshot.watermark;
        if let Some(state) = &snapshot.operator_state {
            h.op.restore(vec![state.clone()], &mut h.env)?;
        }
        h.open()?;
        Ok(h)
    }

    fn build(
        op: Box<dyn DriverOp<Out = Out>>,
        config: HarnessConfig,
        keyed: bool,
        restore_from: Option<&Path>,
    ) -> Result<Self> {
        let dir = Arc::new(tempfile::tempdir().context("creating the harness directory")?);
        let info = config.task_info("operator");
        let backend = match keyed {
            false => None,
            true => {
                let state_dir = dir.path().join("state");
                if let Some(from) = restore_from {
                    copy_dir(from, &state_dir)?;
                }
                let range = KeyGroupRange::for_subtask(config.max_parallelism, config.parallelism, config.subtask);
                let memory = StateMemory::new(64 << 20, 1);
                Some(KeyedStateBackend::open_with(&state_dir, range, config.max_parallelism, &memory)?)
            }
        };
        let metrics = JobMetrics::default().group(&info.uid, info.subtask);
        let env = DriverEnv {
            ctx: OperatorContext::new(info, metrics.clone(), config.checkpointing),
            checkpoint: None,
            restored: None,
            backend,
            records_in: Counter(metrics.counter("records_in")),
            records_out: Counter(metrics.counter("records_out")),
            watermark_gauge: metrics.watermark_gauge(),
        };
        Ok(OperatorHarness { op, env, output: Vec::new(), sides: SideOutputs::default(), dir, _in: PhantomData })
    }

    fn open(&mut self) -> Result<()> {
        self.op.open(&mut self.env)
    }

    fn call(
        &mut self,
        f: impl FnOnce(&mut dyn DriverOp<Out = Out>, &mut DriverEnv, &mut Collector<Out>) -> Result<()>,
    ) -> Result<()> {
        let mut out = Collector::new(&mut self.output, &mut self.sides);
        f(&mut *self.op, &mut self.env, &mut out)
    }

    /// Collects what the operator emits to the side output `tag` from now on.
    pub fn capture_side_output<X: Data>(&mut self, tag: &OutputTag<X>) {
        self.sides.ports.push((Arc::from(tag.name()), Box::new(Vec::<Record<X>>::new())));
    }

    /// Processes `value` without a timestamp.
    pub fn process(&mut self, value: In) -> Result<()> {
        self.process_record(Record { ts: None, value })
    }

    /// Processes `value` with event time `ts`.
    pub fn process_at(&mut self, value: In, ts: i64) -> Result<()> {
        self.process_record(Record { ts: Some(ts), value })
    }

    fn process_record(&mut self, r: Record<In>) -> Result<()> {
        let mut batch = vec![r];
        self.call(|op, env, out| op.process(0, &mut batch as &mut dyn Any, env, out))
    }

    /// Advances the watermark to `wm` (ignored unless it advances), firing due event-time timers.
    pub fn watermark(&mut self, wm: i64) -> Result<()> {
        if wm <= self.env.ctx.watermark {
            return Ok(());
        }
        self.env.ctx.watermark = wm;
        self.call(|op, env, out| op.on_watermark(wm, env, out))
    }

    /// Sets the processing-time clock to `now`, firing due processing-time timers.
    pub fn processing_time(&mut self, now: i64) -> Result<()> {
        self.call(|op, env, out| op.on_time(now, env, out))
    }

    /// Ends the input.
    pub fn end_input(&mut self) -> Result<()> {
        self.call(|op, env, out| op.end_input(env, out))
    }

    /// Takes the snapshot of checkpoint `id`, as at its barrier, and runs its asynchronous parts
    /// (as the runtime does before it stores a snapshot).
    pub fn snapshot(&mut self, id: u64) -> Result<HarnessSnapshot> {
        let operator_state = self.op.snapshot(id, &mut self.env)?;
        for part in std::mem::take(&mut self.env.ctx.async_parts) {
            part()?;
        }
        let keyed = match self.env.backend.as_mut() {
            None => None,
            Some(b) => {
                let path = self.dir.path().join(format!("chk-{id}"));
                b.checkpoint_to(&path)?;
                Some(path)
            }
        };
        let watermark = self.env.ctx.watermark;
        Ok(HarnessSnapshot { id, operator_state, watermark, keyed, _dir: self.dir.clone() })
    }

    /// Checkpoint `id` completed.
    pub fn notify_complete(&mut self, id: u64) -> Result<()> {
        self.op.checkpoint_complete(id, &mut self.env)
    }

    /// The main output so far, taken.
    pub fn take_output(&mut self) -> Vec<Record<Out>> {
        std::mem::take(&mut self.output)
    }

    /// The values of the main output so far, taken.
    pub fn take_values(&mut self) -> Vec<Out> {
        self.take_output().into_iter().map(|r| r.value).collect()
    }

    /// What the operator emitted to the side output `tag` since it was captured, taken.
    pub fn take_side_output<X: Data>(&mut self, tag: &OutputTag<X>) -> Vec<Record<X>> {
        self.sides
            .ports
            .iter_mut()
            .find(|(name, _)| **name == *tag.name())
            .and_then(|(_, buf)| buf.downcast_mut::<Vec<Record<X>>>())
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The earliest pending timer of `domain`, if any (keyed operators).
    pub fn next_timer(&self, domain: TimeDomain) -> Option<i64> {
        self.env.backend.as_ref().and_then(|b| b.next_timer(domain))
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}
