//! The loop of a source subtask: polls its reader, stamps and emits records, generates
//! watermarks per split (with idleness and watermark alignment), and takes part in checkpoints:
//! it snapshots the reader at a trigger and injects the barrier (step 2 of the protocol in
//! `checkpointing/mod.rs`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use crate::alignment::{publish, too_far_ahead, AlignmentGroup};
use crate::checkpointing::{missing, LocalSnapshot, SnapshotTiming, TaskEvent};
use crate::driver::DriverEnv;
use crate::element::{CheckpointBarrier, Data, Record, MAX_WATERMARK};
use crate::error::{panic_message, Cancelled};
use crate::operator::SideOutputs;
use crate::output::{Downstream, ErasedOutput, Output, SidePort};
use crate::source::{SourceOutput, SourcePoll, SourceReader};
use crate::task::{Control, TaskEnv};
use crate::time::{SplitStatus, SplitWatermarks, WatermarkStrategy};

/// Runs one source subtask and the operators chained to it.
pub(crate) struct SourceTask<T: Data> {
    pub reader: Box<dyn SourceReader<T>>,
    pub strategy: WatermarkStrategy<T>,
    pub main: Box<dyn Output<T>>,
    pub sides: Vec<SidePort>,
    pub env: DriverEnv,
    /// The watermarks of every subtask of this source, for watermark alignment.
    pub alignment: AlignmentGroup,
    /// `(this process, processes)`: where the subtasks of the alignment group run.
    pub placement: (usize, usize),
}

/// A source task with its type erased, so the executor can run any of them.
pub(crate) trait RunnableSource {
    fn run(self: Box<Self>, control: &Receiver<Control>, task: &TaskEnv) -> Result<()>;
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SourceState {
    reader: serde_json::Value,
    split_watermarks: Vec<(u64, i64)>,
}

/// What a source subtask keeps in a checkpoint, for tools: its reader's state (the format of the
/// source) and the highest timestamp seen per split. `None` for any other operator's state.
pub fn source_snapshot(state: &serde_json::Value) -> Option<(serde_json::Value, Vec<(u64, i64)>)> {
    let st: SourceState = serde_json::from_value(state.clone()).ok()?;
    Some((st.reader, st.split_watermarks))
}

/// What to do after a control message.
enum Step {
    Continue,
    Exit,
}

/// A running source subtask.
struct SourceRun<T: Data> {
    label: String,
    reader: Box<dyn SourceReader<T>>,
    strategy: WatermarkStrategy<T>,
    main: Box<dyn Output<T>>,
    side_outs: Vec<Box<dyn ErasedOutput>>,
    side_bufs: SideOutputs,
    env: DriverEnv,
    alignment: AlignmentGroup,
    placement: (usize, usize),
    splits: SplitWatermarks,
    buf: Vec<Record<T>>,
    last_wm: i64,
    idle_sent: bool,
    last_flush: Instant,
    /// After its input is exhausted (or a terminal barrier passed) a checkpointing source stays
    /// alive to take part in the final checkpoint, then exits when it completes.
    ended: bool,
    stopping: bool,
    terminal: Option<u64>,
}

impl<T: Data> RunnableSource for SourceTask<T> {
    fn run(self: Box<Self>, control: &Receiver<Control>, task: &TaskEnv) -> Result<()> {
        let mut run = SourceRun::start(*self, task)?;
        let mut pending: Option<Control> = None;
        loop {
            match run.next_control(control, task, pending.take())? {
                Some(msg) => match run.on_control(msg)? {
                    Step::Exit => return Ok(()),
                    Step::Continue => continue,
                },
                None if run.ended || run.stopping => continue,
                None => {}
            }
            if run.too_far_ahead() {
                // Ahead of the slowest subtask: hand on what is buffered and wait for it.
                run.main.flush()?;
                pending = wait_for_control(control, task, Duration::from_millis(2))?;
                continue;
            }
            let poll = run.poll(task)?;
            if poll == SourcePoll::Finished {
                if run.finish()? {
                    return Ok(());
                }
                continue;
            }
            run.advance_watermark()?;
            let now_ms = run.timers_and_flush(task)?;
            if let SourcePoll::Idle(wait) = poll {
                run.flush_all()?;
                let mut wait = wait.min(task.buffer_timeout);
                if let Some(t) = run.main.next_wakeup() {
                    wait = wait.min(Duration::from_millis(t.saturating_sub(now_ms).max(0) as u64));
                }
                // Wake up early for a control message; it is handled at the top of the loop.
                pending = wait_for_control(control, task, wait)?;
            }
        }
    }
}

/// Waits up to `wait` for a control message, accounting the time as idle.
fn wait_for_control(control: &Receiver<Control>, task: &TaskEnv, wait: Duration) -> Result<Option<Control>> {
    let waiting = Instant::now();
    let m = control.recv_timeout(wait);
    task.stats.add_idle(waiting);
    match m {
        Ok(m) => Ok(Some(m)),
        Err(RecvTimeoutError::Timeout) => Ok(None),
        Err(RecvTimeoutError::Disconnected) => Err(Cancelled.into()),
    }
}

impl<T: Data> SourceRun<T> {
    fn start(task: SourceTask<T>, env_task: &TaskEnv) -> Result<Self> {
        let SourceTask { mut reader, strategy, main, sides, mut env, alignment, placement } = task;
        let label = {
            let i = env.ctx.info();
            format!("source '{}' (uid {}, subtask {}/{})", i.operator_name, i.uid, i.subtask + 1, i.parallelism)
        };
        let mut splits = SplitWatermarks::new(strategy.out_of_orderness_ms, strategy.idleness);
        if let Some(states) = env.restored.take() {
            let restore = || -> Result<()> {
                let mut readers = Vec::new();
                for bytes in states {
                    let st: SourceState = serde_json::from_slice(&bytes).context("decoding a source snapshot")?;
                    splits.restore(st.split_watermarks);
                    readers.push(st.reader);
                }
                reader.restore_state(readers)
            };
            restore().with_context(|| format!("{label} failed to restore"))?;
        }
        let mut side_bufs = SideOutputs::default();
        let mut side_outs = Vec::new();
        for (name, out, buf) in sides {
            side_bufs.ports.push((name, buf));
            side_outs.push(out);
        }
        let last_wm = env.ctx.watermark;
        let run = SourceRun {
            label,
            reader,
            strategy,
            main,
            side_outs,
            side_bufs,
            env,
            alignment,
            placement,
            splits,
            buf: Vec::with_capacity(env_task.batch_size),
            last_wm,
            idle_sent: false,
            last_flush: Instant::now(),
            ended: false,
            stopping: false,
            terminal: None,
        };
        run.align(last_wm);
        Ok(run)
    }

    /// Publishes this subtask's watermark to its alignment group (when aligning).
    fn align(&self, wm: i64) {
        if self.strategy.alignment_ms.is_none() {
            return;
        }
        let info = self.env.ctx.info();
        publish(&self.alignment, info.parallelism, self.placement, info.subtask, wm);
    }

    fn too_far_ahead(&self) -> bool {
        self.strategy.alignment_ms.is_some_and(|drift| too_far_ahead(&self.alignment, self.last_wm, drift))
    }

    /// Sends the same control element down the main output and every side output.
    fn each_output(&mut self, mut f: impl FnMut(&mut dyn Downstream) -> Result<()>) -> Result<()> {
        f(&mut *self.main)?;
        for s in &mut self.side_outs {
            f(&mut **s)?;
        }
        Ok(())
    }

    fn flush_all(&mut self) -> Result<()> {
        self.each_output(|o| o.flush())?;
        self.last_flush = Instant::now();
        Ok(())
    }

    /// The next control message: one that arrived while waiting, else one waiting now; after the
    /// input ended, waits for one (up to the buffer timeout).
    fn next_control(
        &self,
        control: &Receiver<Control>,
        task: &TaskEnv,
        pending: Option<Control>,
    ) -> Result<Option<Control>> {
        if pending.is_some() {
            return Ok(pending);
        }
        if self.ended || self.stopping {
            return wait_for_control(control, task, task.buffer_timeout);
        }
        match control.try_recv() {
            Ok(m) => Ok(Some(m)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(Cancelled.into()),
        }
    }

    fn on_control(&mut self, msg: Control) -> Result<Step> {
        match msg {
            Control::Cancel => Err(Cancelled.into()),
            Control::Trigger(barrier) => {
                self.checkpoint(barrier)?;
                Ok(Step::Continue)
            }
            Control::Complete(id) => {
                let label = &self.label;
                self.reader.notify_checkpoint_complete(id).with_context(|| format!("{label} failed"))?;
                self.each_output(|o| o.checkpoint_complete(id))?;
                if self.terminal.is_some_and(|t| id >= t) {
                    self.main.flush()?;
                    return Ok(Step::Exit);
                }
                Ok(Step::Continue)
            }
        }
    }

    /// Snapshots the reader, injects the barrier and acks the snapshot.
    fn checkpoint(&mut self, barrier: CheckpointBarrier) -> Result<()> {
        let started = Instant::now();
        let cp = self.env.checkpoint.clone().ok_or_else(|| missing("trigger without checkpointing"))?;
        let label = &self.label;
        let state = SourceState {
            reader: self.reader.snapshot_state(barrier.id).with_context(|| format!("{label} failed to snapshot"))?,
            split_watermarks: self.splits.snapshot(),
        };
        let snapshot = LocalSnapshot {
            local_db: None,
            async_parts: Vec::new(),
            operator_state: Some(serde_json::to_vec(&state)?),
            watermark: self.last_wm,
            key_groups: None,
            timing: SnapshotTiming::since(started, 0.0),
        };
        self.each_output(|o| o.barrier(barrier))?;
        cp.ack(barrier.id, self.env.ctx.info().subtask, snapshot);
        if barrier.terminal {
            self.stopping = true;
            self.terminal = Some(barrier.id);
        }
        Ok(())
    }

    /// Polls the reader once and emits what it read.
    fn poll(&mut self, task: &TaskEnv) -> Result<SourcePoll> {
        let now = Instant::now();
        let poll = catch_unwind(AssertUnwindSafe(|| {
            let mut out = SourceOutput {
                buf: &mut self.buf,
                sides: &mut self.side_bufs,
                splits: &mut self.splits,
                strategy: &self.strategy,
                limit: task.batch_size,
                now,
            };
            self.reader.poll(&mut out)
        }));
        let poll = match poll {
            Ok(r) => r.with_context(|| format!("{} failed", self.label))?,
            Err(p) => bail!("{} panicked: {}", self.label, panic_message(&*p)),
        };
        if !self.buf.is_empty() {
            self.env.records_out.add(self.buf.len() as u64);
            self.main.push(&mut self.buf)?;
            self.idle_sent = false;
        }
        for (i, out) in self.side_outs.iter_mut().enumerate() {
            out.push_any(&mut *self.side_bufs.ports[i].1)?;
        }
        Ok(poll)
    }

    /// The input is exhausted: the final watermark and end of input go out. Returns whether the
    /// task is done (without checkpoints); with them it waits for the final checkpoint.
    fn finish(&mut self) -> Result<bool> {
        self.each_output(|o| {
            o.watermark(MAX_WATERMARK)?;
            o.end_of_input()
        })?;
        self.align(MAX_WATERMARK);
        match &self.env.checkpoint {
            Some(cp) => {
                self.last_wm = MAX_WATERMARK;
                self.ended = true;
                let _ = cp.events.send(TaskEvent::SourceEnded);
                Ok(false)
            }
            None => Ok(true),
        }
    }

    /// Emits the watermark when the splits' combined watermark advanced, or idleness when every
    /// split went idle.
    fn advance_watermark(&mut self) -> Result<()> {
        if !self.strategy.generates {
            return Ok(());
        }
        match self.splits.status(Instant::now()) {
            Some(SplitStatus::Watermark(w)) if w > self.last_wm => {
                self.last_wm = w;
                self.align(w);
                self.env.watermark_gauge.store(w, std::sync::atomic::Ordering::Relaxed);
                self.each_output(|o| o.watermark(w))
            }
            Some(SplitStatus::Idle) if !self.idle_sent => {
                self.idle_sent = true;
                // An idle subtask must not hold the others back.
                self.align(MAX_WATERMARK);
                self.each_output(|o| o.idle())
            }
            _ => Ok(()),
        }
    }

    /// Fires due processing-time timers of the chain and flushes after the buffer timeout;
    /// returns the wall clock it used.
    fn timers_and_flush(&mut self, task: &TaskEnv) -> Result<i64> {
        let now_ms = crate::time::now_millis();
        if self.main.next_wakeup().is_some_and(|t| t <= now_ms) {
            self.main.on_time(now_ms)?;
        }
        if self.last_flush.elapsed() >= task.buffer_timeout {
            self.flush_all()?;
        }
        Ok(now_ms)
    }
}
