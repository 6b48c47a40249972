//! Sources: a [`Source`] describes where data comes from and creates one [`SourceReader`] per
//! subtask; the runtime polls readers, stamps records with event time and generates watermarks
//! per split.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::checkpointing::{LocalSnapshot, TaskEvent};
use crate::driver::DriverEnv;
use crate::element::{Data, Record, MAX_WATERMARK};
use crate::error::{panic_message, Cancelled};
use crate::operator::{OutputTag, SideOutputs, TaskInfo};
use crate::output::{Output, SidePort};
use crate::task::{Control, TaskEnv};
use crate::time::{SplitStatus, SplitWatermarks, WatermarkStrategy};

/// What a reader's poll found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourcePoll {
    /// Records were emitted (or may be available right away): poll again.
    Ready,
    /// Nothing is available now; poll again after at most this long.
    Idle(Duration),
    /// The input is exhausted (bounded sources only).
    Finished,
}

/// A description of a source, shared by all subtasks.
pub trait Source<T>: Send + Sync + 'static {
    /// The most subtasks this source can run in (a socket: 1).
    fn max_parallelism(&self) -> Option<usize> {
        None
    }
    /// Whether the source can replay its input after a failure (files, Kafka: yes; a socket: no).
    fn replayable(&self) -> bool {
        true
    }
    /// Creates the reader of subtask `info.subtask` of `info.parallelism`.
    fn create_reader(&self, info: &TaskInfo) -> Result<Box<dyn SourceReader<T>>>;
}

/// Reads the splits of one source subtask. Runs on the task thread; may block only briefly.
pub trait SourceReader<T>: 'static {
    /// Emits up to `out.remaining()` records and says what to do next.
    fn poll(&mut self, out: &mut SourceOutput<'_, T>) -> Result<SourcePoll>;

    /// The reader's position (e.g. split offsets) for checkpoint `checkpoint_id`, as JSON.
    fn snapshot_state(&mut self, _checkpoint_id: u64) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }

    /// Checkpoint `checkpoint_id` is complete (e.g. commit its offsets back to Kafka for lag tools).
    fn notify_checkpoint_complete(&mut self, _checkpoint_id: u64) -> Result<()> {
        Ok(())
    }

    /// Restores from the states of every subtask of the previous run (a reader takes the splits
    /// it owns now). Called before the first poll.
    fn restore_state(&mut self, _states: Vec<serde_json::Value>) -> Result<()> {
        Ok(())
    }
}

/// Where a reader emits records, per split.
pub struct SourceOutput<'a, T> {
    buf: &'a mut Vec<Record<T>>,
    sides: &'a mut SideOutputs,
    splits: &'a mut SplitWatermarks,
    strategy: &'a WatermarkStrategy<T>,
    limit: usize,
    now: Instant,
}

impl<T: Data> SourceOutput<'_, T> {
    /// How many more records this poll should emit.
    pub fn remaining(&self) -> usize {
        self.limit.saturating_sub(self.buf.len())
    }

    /// Emits a record of `split`, stamped by the watermark strategy's timestamp assigner.
    #[inline]
    pub fn collect(&mut self, split: u64, value: T) {
        let ts = self.strategy.timestamp_of(&value);
        self.splits.observe(split, ts, self.now);
        self.buf.push(Record { ts, value });
    }

    /// Emits a record of `split`, stamped by the timestamp assigner if the strategy has one, else
    /// with `ts` (e.g. the Kafka record timestamp).
    #[inline]
    pub fn collect_or_at(&mut self, split: u64, value: T, ts: Option<i64>) {
        let ts = self.strategy.timestamp_of(&value).or(ts);
        self.splits.observe(split, ts, self.now);
        self.buf.push(Record { ts, value });
    }

    /// Emits a record of `split` with an explicit event time.
    pub fn collect_at(&mut self, split: u64, value: T, ts: i64) {
        self.splits.observe(split, Some(ts), self.now);
        self.buf.push(Record { ts: Some(ts), value });
    }

    /// Announces a split before it has data, so it holds the watermark back (e.g. a partition).
    pub fn register_split(&mut self, split: u64) {
        self.splits.register(split);
    }

    /// A split is exhausted and no longer holds the watermark back.
    pub fn finish_split(&mut self, split: u64) {
        self.splits.finish(split);
    }

    /// Emits to a side output (e.g. dead letters).
    pub fn side<X: Data>(&mut self, tag: &OutputTag<X>, value: X) {
        let mut dummy = Vec::<Record<T>>::new();
        crate::operator::Collector::new(&mut dummy, self.sides).side(tag, value);
    }
}

/// Runs one source subtask and the operators chained to it.
pub(crate) struct SourceTask<T: Data> {
    pub reader: Box<dyn SourceReader<T>>,
    pub strategy: WatermarkStrategy<T>,
    pub main: Box<dyn Output<T>>,
    pub sides: Vec<SidePort>,
    pub env: DriverEnv,
    /// The watermarks of every subtask of this source, for watermark alignment.
    pub alignment: AlignmentGroup,
}

/// The latest watermark of every subtask of one source (`i64::MAX` when finished or idle).
pub(crate) type AlignmentGroup = Arc<parking_lot::Mutex<Vec<i64>>>;

/// Whether `own` is more than `drift` ahead of the slowest subtask. A subtask without a watermark
/// yet (not started, or no data) counts as the slowest of all, so a fast subtask cannot run ahead
/// before a slow one has even begun; it stops counting once it is idle or finished.
fn too_far_ahead(group: &AlignmentGroup, own: i64, drift: i64) -> bool {
    let slowest = group.lock().iter().copied().min();
    own > i64::MIN && slowest.is_some_and(|m| m < MAX_WATERMARK && own > m.saturating_add(drift))
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

impl<T: Data> SourceTask<T> {
    fn restore(&mut self, splits: &mut SplitWatermarks) -> Result<()> {
        let Some(states) = self.env.restored.take() else { return Ok(()) };
        let mut readers = Vec::new();
        for bytes in states {
            let st: SourceState = serde_json::from_slice(&bytes).context("decoding a source snapshot")?;
            splits.restore(st.split_watermarks);
            readers.push(st.reader);
        }
        self.reader.restore_state(readers)
    }
}

impl<T: Data> RunnableSource for SourceTask<T> {
    fn run(mut self: Box<Self>, control: &Receiver<Control>, task: &TaskEnv) -> Result<()> {
        let label = {
            let i = self.env.ctx.info();
            format!("source '{}' (uid {}, subtask {}/{})", i.operator_name, i.uid, i.subtask + 1, i.parallelism)
        };
        let mut splits = SplitWatermarks::new(self.strategy.out_of_orderness_ms, self.strategy.idleness);
        self.restore(&mut splits).with_context(|| format!("{label} failed to restore"))?;
        let SourceTask { mut reader, strategy, mut main, sides, env, alignment } = *self;
        let (subtask, parallelism) = (env.ctx.info().subtask, env.ctx.info().parallelism);
        let set_aligned = |wm: i64| {
            let mut g = alignment.lock();
            if g.len() != parallelism {
                *g = vec![i64::MIN; parallelism];
            }
            g[subtask] = wm;
        };
        let mut side_bufs = SideOutputs::default();
        let mut side_outs = Vec::new();
        for (name, out, buf) in sides {
            side_bufs.ports.push((name, buf));
            side_outs.push(out);
        }
        let mut buf: Vec<Record<T>> = Vec::with_capacity(task.batch_size);
        let mut last_wm = env.ctx.watermark;
        let drift = strategy.alignment_ms;
        if drift.is_some() {
            set_aligned(last_wm);
        }
        let mut idle_sent = false;
        let mut last_flush = Instant::now();
        // After its input is exhausted (or a terminal barrier passed) a checkpointing source
        // stays alive to take part in the final checkpoint, then exits when it completes.
        let mut ended = false;
        let mut stopping = false;
        let mut terminal: Option<u64> = None;
        let mut pending: Option<Control> = None;
        loop {
            let msg = if let Some(m) = pending.take() {
                Some(m)
            } else if ended || stopping {
                let waiting = Instant::now();
                let m = control.recv_timeout(task.buffer_timeout);
                task.stats.add_idle(waiting);
                match m {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return Err(Cancelled.into()),
                }
            } else {
                match control.try_recv() {
                    Ok(m) => Some(m),
                    Err(crossbeam_channel::TryRecvError::Empty) => None,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => return Err(Cancelled.into()),
                }
            };
            match msg {
                Some(Control::Cancel) => return Err(Cancelled.into()),
                Some(Control::Trigger(barrier)) => {
                    let started = Instant::now();
                    let cp = env
                        .checkpoint
                        .as_ref()
                        .ok_or_else(|| crate::checkpointing::missing("trigger without checkpointing"))?;
                    let state = SourceState {
                        reader: reader
                            .snapshot_state(barrier.id)
                            .with_context(|| format!("{label} failed to snapshot"))?,
                        split_watermarks: splits.snapshot(),
                    };
                    let snapshot = LocalSnapshot {
                        local_db: None,
                        operator_state: Some(serde_json::to_vec(&state)?),
                        watermark: last_wm,
                        key_groups: None,
                        timing: crate::checkpointing::SnapshotTiming::since(started, 0.0),
                    };
                    main.barrier(barrier)?;
                    for s in &mut side_outs {
                        s.barrier(barrier)?;
                    }
                    cp.ack(barrier.id, env.ctx.info().subtask, snapshot);
                    if barrier.terminal {
                        stopping = true;
                        terminal = Some(barrier.id);
                    }
                    continue;
                }
                Some(Control::Complete(id)) => {
                    reader.notify_checkpoint_complete(id).with_context(|| format!("{label} failed"))?;
                    main.checkpoint_complete(id)?;
                    for s in &mut side_outs {
                        s.checkpoint_complete(id)?;
                    }
                    if terminal.is_some_and(|t| id >= t) {
                        main.flush()?;
                        return Ok(());
                    }
                    continue;
                }
                None if ended || stopping => continue,
                None => {}
            }
            if let Some(drift) = drift {
                if too_far_ahead(&alignment, last_wm, drift) {
                    // Ahead of the slowest subtask: hand on what is buffered and wait for it.
                    main.flush()?;
                    let waiting = Instant::now();
                    let m = control.recv_timeout(Duration::from_millis(2));
                    task.stats.add_idle(waiting);
                    match m {
                        Ok(m) => pending = Some(m),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return Err(Cancelled.into()),
                    }
                    continue;
                }
            }
            let now = Instant::now();
            let poll = catch_unwind(AssertUnwindSafe(|| {
                let mut out = SourceOutput {
                    buf: &mut buf,
                    sides: &mut side_bufs,
                    splits: &mut splits,
                    strategy: &strategy,
                    limit: task.batch_size,
                    now,
                };
                reader.poll(&mut out)
            }));
            let poll = match poll {
                Ok(r) => r.with_context(|| format!("{label} failed"))?,
                Err(p) => bail!("{label} panicked: {}", panic_message(&*p)),
            };
            if !buf.is_empty() {
                env.records_out.add(buf.len() as u64);
                main.push(&mut buf)?;
                idle_sent = false;
            }
            for (i, out) in side_outs.iter_mut().enumerate() {
                out.push_any(&mut *side_bufs.ports[i].1)?;
            }
            if poll == SourcePoll::Finished {
                main.watermark(MAX_WATERMARK)?;
                main.end_of_input()?;
                for s in &mut side_outs {
                    s.watermark(MAX_WATERMARK)?;
                    s.end_of_input()?;
                }
                if drift.is_some() {
                    set_aligned(MAX_WATERMARK);
                }
                match &env.checkpoint {
                    Some(cp) => {
                        last_wm = MAX_WATERMARK;
                        ended = true;
                        let _ = cp.events.send(TaskEvent::SourceEnded);
                        continue;
                    }
                    None => return Ok(()),
                }
            }
            if strategy.generates {
                match splits.status(Instant::now()) {
                    Some(SplitStatus::Watermark(w)) if w > last_wm => {
                        last_wm = w;
                        if drift.is_some() {
                            set_aligned(w);
                        }
                        env.watermark_gauge.store(w, std::sync::atomic::Ordering::Relaxed);
                        main.watermark(w)?;
                        for s in &mut side_outs {
                            s.watermark(w)?;
                        }
                    }
                    Some(SplitStatus::Idle) if !idle_sent => {
                        idle_sent = true;
                        if drift.is_some() {
                            // An idle subtask must not hold the others back.
                            set_aligned(MAX_WATERMARK);
                        }
                        main.idle()?;
                        for s in &mut side_outs {
                            s.idle()?;
                        }
                    }
                    _ => {}
                }
            }
            let now_ms = crate::time::now_millis();
            if main.next_wakeup().is_some_and(|t| t <= now_ms) {
                main.on_time(now_ms)?;
            }
            if last_flush.elapsed() >= task.buffer_timeout {
                main.flush()?;
                for s in &mut side_outs {
                    s.flush()?;
                }
                last_flush = Instant::now();
            }
            if let SourcePoll::Idle(wait) = poll {
                main.flush()?;
                for s in &mut side_outs {
                    s.flush()?;
                }
                last_flush = Instant::now();
                let mut wait = wait.min(task.buffer_timeout);
                if let Some(t) = main.next_wakeup() {
                    wait = wait.min(Duration::from_millis(t.saturating_sub(now_ms).max(0) as u64));
                }
                // Wake up early for a control message; it is handled at the top of the loop.
                let waiting = Instant::now();
                let m = control.recv_timeout(wait);
                task.stats.add_idle(waiting);
                match m {
                    Ok(m) => pending = Some(m),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return Err(Cancelled.into()),
                }
            }
        }
    }
}
