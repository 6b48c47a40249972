//! The loop of a task with inputs: waits on its input channels, tracks the watermark of each,
//! and drives the operator chain.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use crossbeam_channel::{Receiver, Select, TryRecvError};

use crate::checkpointing::BarrierAligner;
use crate::element::{CheckpointBarrier, Data, Record, StreamElement, MAX_WATERMARK};
use crate::error::Cancelled;
use crate::metrics::TaskStats;
use crate::output::TaskHead;

/// Messages from the executor to a task.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Control {
    /// Stop now: the job is being torn down.
    Cancel,
    /// Sources only: snapshot and emit this barrier.
    Trigger(CheckpointBarrier),
    /// Checkpoint complete: commit, and exit if it was the terminal one.
    Complete(u64),
}

/// Settings every task needs, and where it accounts its time.
#[derive(Clone)]
pub(crate) struct TaskEnv {
    pub batch_size: usize,
    pub buffer_timeout: Duration,
    pub checkpointing: bool,
    pub stats: Arc<TaskStats>,
}

pub(crate) enum Event {
    Empty,
    Data,
    Watermark(i64),
    Idle,
    Barrier(CheckpointBarrier),
    End,
    Disconnected,
}

/// One input channel of a task, with its record type erased.
pub(crate) trait InputChannel {
    fn register<'a>(&'a self, sel: &mut Select<'a>) -> usize;
    /// Takes one element if there is one; batches go straight to `head`.
    fn poll(&self, head: &mut dyn TaskHead) -> Result<Event>;
    /// Batches waiting in the channel.
    fn queued(&self) -> usize;
}

pub(crate) struct ChannelIn<T> {
    pub rx: Receiver<StreamElement<T>>,
    pub input: usize,
}

impl<T: Data> InputChannel for ChannelIn<T> {
    fn register<'a>(&'a self, sel: &mut Select<'a>) -> usize {
        sel.recv(&self.rx)
    }

    fn poll(&self, head: &mut dyn TaskHead) -> Result<Event> {
        match self.rx.try_recv() {
            Ok(el) => deliver(el, self.input, head),
            Err(TryRecvError::Empty) => Ok(Event::Empty),
            Err(TryRecvError::Disconnected) => Ok(Event::Disconnected),
        }
    }

    fn queued(&self) -> usize {
        self.rx.len()
    }
}

/// What one element taken off an input channel means to the task; batches go straight to `head`.
fn deliver<T: Data>(el: StreamElement<T>, input: usize, head: &mut dyn TaskHead) -> Result<Event> {
    Ok(match el {
        StreamElement::Batch(mut b) => {
            head.process(input, &mut b)?;
            Event::Data
        }
        StreamElement::Watermark(w) => Event::Watermark(w),
        StreamElement::Idle => Event::Idle,
        StreamElement::Barrier(b) => Event::Barrier(b),
        StreamElement::EndOfInput => Event::End,
    })
}

/// An input channel from a task in another process: elements arrive encoded and are decoded
/// on this task's thread, batches into the vector the previous batch used.
pub(crate) struct RemoteIn<T> {
    rx: crate::net::RemoteRx,
    input: usize,
    spare: std::cell::Cell<Vec<Record<T>>>,
}

impl<T> RemoteIn<T> {
    pub(crate) fn new(rx: crate::net::RemoteRx, input: usize) -> Self {
        RemoteIn { rx, input, spare: Default::default() }
    }
}

impl<T: Data> InputChannel for RemoteIn<T> {
    fn register<'a>(&'a self, sel: &mut Select<'a>) -> usize {
        sel.recv(&self.rx.rx)
    }

    fn poll(&self, head: &mut dyn TaskHead) -> Result<Event> {
        let body = match self.rx.try_take() {
            Ok(b) => b,
            Err(TryRecvError::Empty) => return Ok(Event::Empty),
            Err(TryRecvError::Disconnected) => return Ok(Event::Disconnected),
        };
        let el = crate::net::codec::decode::<T>(&body[crate::net::frame::DATA_AT..], self.spare.take())?;
        self.rx.link.received.give(body);
        match el {
            StreamElement::Batch(mut b) => {
                self.rx.stats.records.fetch_add(b.len() as u64, Ordering::Relaxed);
                head.process(self.input, &mut b)?;
                // Whatever the head left (it may have kept the records and left an empty
                // vector) is cleared and reused for the next batch.
                b.clear();
                self.spare.set(b);
                Ok(Event::Data)
            }
            other => deliver(other, self.input, head),
        }
    }

    fn queued(&self) -> usize {
        self.rx.queued()
    }
}

/// Watermark bookkeeping over the input channels of one task.
struct InputWatermarks {
    wm: Vec<i64>,
    idle: Vec<bool>,
    ended: Vec<bool>,
    current: i64,
    all_idle: bool,
}

impl InputWatermarks {
    fn new(n: usize) -> Self {
        InputWatermarks {
            wm: vec![i64::MIN; n],
            idle: vec![false; n],
            ended: vec![false; n],
            current: i64::MIN,
            all_idle: false,
        }
    }

    /// The new combined watermark, if it advanced.
    fn advance(&mut self) -> Option<i64> {
        let min = (0..self.wm.len()).filter(|&i| !self.ended[i] && !self.idle[i]).map(|i| self.wm[i]).min();
        let min = match min {
            Some(m) => m,
            None if self.ended.iter().all(|e| *e) => MAX_WATERMARK,
            None => return None,
        };
        if min > self.current {
            self.current = min;
            Some(min)
        } else {
            None
        }
    }

    fn activate(&mut self, i: usize) {
        self.idle[i] = false;
        self.all_idle = false;
    }

    /// Whether all inputs just became idle.
    fn set_idle(&mut self, i: usize) -> bool {
        self.idle[i] = true;
        let all = (0..self.idle.len()).all(|j| self.idle[j] || self.ended[j]);
        let newly = all && !self.all_idle;
        self.all_idle = all;
        newly
    }
}

/// What a task with inputs tracks between elements.
struct InputState {
    marks: InputWatermarks,
    aligner: BarrierAligner,
    disconnected: Vec<bool>,
    end_handled: bool,
    /// The terminal checkpoint passed: exit once it completes.
    terminal: Option<u64>,
}

/// What to do after one element.
enum Flow {
    /// Take the next element of the same channel.
    Next,
    /// Go back to waiting on all channels.
    Wait,
    /// The task is done.
    Exit,
}

impl InputState {
    /// Handles a control message: `Exit` once the terminal checkpoint completed, an error on cancel.
    fn on_control(&mut self, msg: Result<Control, TryRecvError>, head: &mut dyn TaskHead) -> Result<Flow> {
        match msg {
            Ok(Control::Cancel) | Err(TryRecvError::Disconnected) => Err(Cancelled.into()),
            Ok(Control::Complete(id)) => {
                head.checkpoint_complete(id)?;
                if self.terminal.is_some_and(|t| id >= t) {
                    head.flush()?;
                    return Ok(Flow::Exit);
                }
                Ok(Flow::Wait)
            }
            Ok(Control::Trigger(_)) => bail!("internal error: checkpoint trigger sent to a task with inputs"),
            Err(TryRecvError::Empty) => Ok(Flow::Wait),
        }
    }

    /// Handles one element of channel `i`.
    fn on_event(&mut self, i: usize, event: Event, head: &mut dyn TaskHead, env: &TaskEnv) -> Result<Flow> {
        let marks = &mut self.marks;
        match event {
            Event::Empty => return Ok(Flow::Wait),
            Event::Data => {
                if marks.idle[i] {
                    marks.activate(i);
                }
            }
            Event::Watermark(w) => {
                marks.wm[i] = marks.wm[i].max(w);
                marks.activate(i);
                if let Some(w) = marks.advance() {
                    head.watermark(w)?;
                }
            }
            Event::Idle => {
                if marks.set_idle(i) {
                    head.flush()?;
                    head.idle()?;
                } else if let Some(w) = marks.advance() {
                    head.watermark(w)?;
                }
            }
            Event::Barrier(b) => {
                let disconnected = &self.disconnected;
                if let Some((b, took)) = self.aligner.on_barrier(i, b, |j| !disconnected[j])? {
                    env.stats.alignment_ns.store(took.as_nanos() as u64, Ordering::Relaxed);
                    env.stats.alignment_id.store(b.id, Ordering::Relaxed);
                    head.barrier(b)?;
                    if b.terminal {
                        self.terminal = Some(b.id);
                    }
                }
                return Ok(Flow::Wait);
            }
            Event::End => {
                marks.ended[i] = true;
                if let Some(w) = marks.advance() {
                    head.watermark(w)?;
                }
                if marks.ended.iter().all(|e| *e) && !self.end_handled {
                    self.end_handled = true;
                    head.end_of_input()?;
                    head.flush()?;
                    if !env.checkpointing {
                        return Ok(Flow::Exit);
                    }
                }
                return Ok(Flow::Wait);
            }
            // After a terminal barrier nothing follows on any channel; its sender may be gone
            // before this task hears of the completion (another process that already ended).
            Event::Disconnected if marks.ended[i] || self.terminal.is_some() => {
                self.disconnected[i] = true;
                return Ok(Flow::Wait);
            }
            Event::Disconnected => return Err(Cancelled.into()),
        }
        Ok(Flow::Next)
    }
}

/// Runs a task with inputs until its input ended (and, when checkpointing, its terminal
/// checkpoint completed), it is cancelled, or it fails.
pub(crate) fn run_input_task(
    head: &mut dyn TaskHead,
    inputs: Vec<Box<dyn InputChannel>>,
    control: &Receiver<Control>,
    env: &TaskEnv,
) -> Result<()> {
    let n = inputs.len();
    if n == 0 {
        bail!("internal error: a task without inputs that is not a source");
    }
    let mut st = InputState {
        marks: InputWatermarks::new(n),
        aligner: BarrierAligner::new(n),
        disconnected: vec![false; n],
        end_handled: false,
        terminal: None,
    };
    let mut last_flush = Instant::now();
    let mut last_look = Instant::now();
    let stats = &env.stats;
    loop {
        if last_look.elapsed() >= Duration::from_millis(100) {
            // A look at the input queues now and then: cheap enough, and what a fill gauge needs.
            stats.queued.store(inputs.iter().map(|c| c.queued() as u64).sum(), Ordering::Relaxed);
            last_look = Instant::now();
        }
        let now_ms = crate::time::now_millis();
        let wakeup = head.next_wakeup();
        if wakeup.is_some_and(|t| t <= now_ms) {
            head.on_time(now_ms)?;
        }
        let since_flush = last_flush.elapsed();
        if since_flush >= env.buffer_timeout {
            head.flush()?;
            last_flush = Instant::now();
        }
        let mut timeout = env.buffer_timeout.saturating_sub(last_flush.elapsed());
        if let Some(t) = head.next_wakeup() {
            timeout = timeout.min(Duration::from_millis(t.saturating_sub(now_ms).max(0) as u64));
        }
        let ready = {
            let mut sel = Select::new();
            let mut which = Vec::with_capacity(n + 1);
            for (i, ch) in inputs.iter().enumerate() {
                // Ended channels stay open under checkpointing: the final barrier still comes through.
                let open = !st.marks.ended[i] || env.checkpointing;
                if open && !st.disconnected[i] && !st.aligner.is_blocked(i) {
                    ch.register(&mut sel);
                    which.push(Some(i));
                }
            }
            sel.recv(control);
            which.push(None);
            let waiting = Instant::now();
            let r = match sel.ready_timeout(timeout) {
                Ok(idx) => Some(which[idx]),
                Err(_) => None,
            };
            stats.add_idle(waiting);
            r
        };
        let flow = match ready {
            None => Flow::Wait,
            Some(None) => st.on_control(control.try_recv(), head)?,
            // Drain a few elements from the ready channel to amortise the select.
            Some(Some(i)) => {
                let mut flow = Flow::Wait;
                for _ in 0..32 {
                    flow = st.on_event(i, inputs[i].poll(head)?, head, env)?;
                    if !matches!(flow, Flow::Next) {
                        break;
                    }
                }
                flow
            }
        };
        if matches!(flow, Flow::Exit) {
            return Ok(());
        }
    }
}
