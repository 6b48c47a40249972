//! Where a task's records go: to the next chained operator (a function call), to other tasks
//! through bounded channels (with a partitioner), to several of those at once, or nowhere.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use crossbeam_channel::{SendTimeoutError, Sender};

use crate::element::{CheckpointBarrier, Data, Record, StreamElement};
use crate::error::Cancelled;
use crate::metrics::TaskStats;

/// Control events that travel down a chain and out of a task, in order with the records.
pub(crate) trait Downstream {
    fn watermark(&mut self, wm: i64) -> Result<()>;
    fn idle(&mut self) -> Result<()>;
    fn barrier(&mut self, barrier: CheckpointBarrier) -> Result<()>;
    fn end_of_input(&mut self) -> Result<()>;
    /// Sends partly filled batches (buffer timeout).
    fn flush(&mut self) -> Result<()>;
    // The defaults below suit a leaf that holds no operator (a channel to other tasks, a discard):
    // only operators have processing-time callbacks and commit on completed checkpoints, so every
    // output that contains one (a chain, a tee, the driver) forwards these explicitly.
    /// The earliest processing time (epoch ms) at which something in this subtree wants `on_time`.
    fn next_wakeup(&self) -> Option<i64> {
        None
    }
    fn on_time(&mut self, _now: i64) -> Result<()> {
        Ok(())
    }
    /// Checkpoint `id` is complete (sinks commit).
    fn checkpoint_complete(&mut self, _id: u64) -> Result<()> {
        Ok(())
    }
}

/// A typed sink of record batches. `push` drains the batch and leaves the vector for reuse.
pub(crate) trait Output<T>: Downstream {
    fn push(&mut self, batch: &mut Vec<Record<T>>) -> Result<()>;
}

/// The operator at the head of a chain (or chained into one): takes batches of any of its inputs.
pub(crate) trait TaskHead: Downstream {
    fn process(&mut self, input: usize, batch: &mut dyn Any) -> Result<()>;
}

/// A side output port: its tag, its output, and an empty buffer of its record type.
pub(crate) type SidePort = (Arc<str>, Box<dyn ErasedOutput>, Box<dyn Any>);

/// An output whose record type is known only at run time (side outputs).
pub(crate) trait ErasedOutput: Downstream {
    fn push_any(&mut self, batch: &mut dyn Any) -> Result<()>;
}

pub(crate) fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Shared by every sender of a job: set when the job is being torn down.
#[derive(Clone)]
pub(crate) struct SendEnv {
    pub cancel: Arc<AtomicBool>,
    pub batch_size: usize,
    /// Where the task accounts the time it spends blocked on full channels.
    pub stats: Arc<TaskStats>,
}

/// Where a network output sends one target subtask's elements: a channel in this process or a
/// logical channel to another process.
pub(crate) enum ChannelTx<T> {
    Local(Sender<StreamElement<T>>),
    Remote(crate::net::RemoteTx),
}

/// Blocking send that gives up when the job is cancelled, so a full channel never hangs teardown.
fn send<T: Data>(tx: &ChannelTx<T>, el: StreamElement<T>, env: &SendEnv) -> Result<()> {
    let tx = match tx {
        ChannelTx::Local(tx) => tx,
        ChannelTx::Remote(remote) => {
            let mut body = crate::net::frame::data_frame(remote.channel, remote.link.sent.take());
            crate::net::codec::encode(&el, &mut body)?;
            if let StreamElement::Batch(b) = &el {
                remote.stats.records.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
            let started = Instant::now();
            if remote.send(body, &env.cancel)? {
                env.stats.backpressure_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
            return Ok(());
        }
    };
    let mut el = match tx.try_send(el) {
        Ok(()) => return Ok(()),
        Err(crossbeam_channel::TrySendError::Full(el)) => el,
        Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Err(Cancelled.into()),
    };
    let started = Instant::now();
    loop {
        match tx.send_timeout(el, Duration::from_millis(50)) {
            Ok(()) => break,
            Err(SendTimeoutError::Timeout(back)) => {
                if env.cancel.load(Ordering::Relaxed) {
                    return Err(Cancelled.into());
                }
                el = back;
            }
            Err(SendTimeoutError::Disconnected(_)) => return Err(Cancelled.into()),
        }
    }
    env.stats.backpressure_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    Ok(())
}

/// Computes the key group of a record (hash partitioning).
pub(crate) type KeyGroupFn<T> = Arc<dyn Fn(&T, &mut Vec<u8>) -> Result<u16> + Send + Sync>;

pub(crate) enum Mode<T> {
    Forward,
    Rebalance,
    Broadcast,
    Hash { key_group: KeyGroupFn<T>, max_parallelism: usize },
}

/// Sends records of one edge to the subtasks of the consuming operator.
pub(crate) struct NetworkOutput<T> {
    senders: Vec<ChannelTx<T>>,
    buffers: Vec<Vec<Record<T>>>,
    mode: Mode<T>,
    next: usize,
    key_buf: Vec<u8>,
    env: SendEnv,
}

impl<T: Data> NetworkOutput<T> {
    pub(crate) fn new(senders: Vec<ChannelTx<T>>, mode: Mode<T>, env: SendEnv) -> Self {
        let buffers = senders.iter().map(|_| Vec::new()).collect();
        NetworkOutput { senders, buffers, mode, next: 0, key_buf: Vec::new(), env }
    }

    fn send_buffer(&mut self, i: usize) -> Result<()> {
        if self.buffers[i].is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.buffers[i], Vec::with_capacity(self.env.batch_size));
        send(&self.senders[i], StreamElement::Batch(batch), &self.env)
    }

    fn broadcast_control(&mut self, make: impl Fn() -> StreamElement<T>) -> Result<()> {
        self.flush()?;
        for tx in &self.senders {
            send(tx, make(), &self.env)?;
        }
        Ok(())
    }

    #[inline]
    fn append(&mut self, i: usize, batch: &mut Vec<Record<T>>) -> Result<()> {
        let size = self.env.batch_size;
        if self.buffers[i].is_empty() && batch.len() >= size / 2 {
            // Big enough already: hand the whole vector over instead of copying.
            let full = std::mem::replace(batch, Vec::with_capacity(size));
            return send(&self.senders[i], StreamElement::Batch(full), &self.env);
        }
        for r in batch.drain(..) {
            self.buffers[i].push(r);
            if self.buffers[i].len() >= size {
                self.send_buffer(i)?;
            }
        }
        Ok(())
    }
}

impl<T: Data> Output<T> for NetworkOutput<T> {
    fn push(&mut self, batch: &mut Vec<Record<T>>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        match &self.mode {
            Mode::Forward => self.append(0, batch),
            Mode::Rebalance => {
                // Record by record, like Flink, so that even one big batch is spread evenly.
                let n = self.senders.len();
                let size = self.env.batch_size;
                for r in batch.drain(..) {
                    let i = self.next;
                    self.next = (self.next + 1) % n;
                    self.buffers[i].push(r);
                    if self.buffers[i].len() >= size {
                        self.send_buffer(i)?;
                    }
                }
                Ok(())
            }
            Mode::Broadcast => {
                let n = self.senders.len();
                for i in 0..n - 1 {
                    let mut copy = batch.clone();
                    self.append(i, &mut copy)?;
                }
                self.append(n - 1, batch)
            }
            Mode::Hash { key_group, max_parallelism } => {
                let (key_group, max_p) = (key_group.clone(), *max_parallelism);
                let p = self.senders.len();
                let size = self.env.batch_size;
                for r in batch.drain(..) {
                    let kg = key_group(&r.value, &mut self.key_buf)?;
                    let i = weir_state::keygroup::subtask_for_key_group(max_p, p, kg);
                    self.buffers[i].push(r);
                    if self.buffers[i].len() >= size {
                        self.send_buffer(i)?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl<T: Data> Downstream for NetworkOutput<T> {
    fn watermark(&mut self, wm: i64) -> Result<()> {
        self.broadcast_control(|| StreamElement::Watermark(wm))
    }
    fn idle(&mut self) -> Result<()> {
        self.broadcast_control(|| StreamElement::Idle)
    }
    fn barrier(&mut self, barrier: CheckpointBarrier) -> Result<()> {
        self.broadcast_control(|| StreamElement::Barrier(barrier))
    }
    fn end_of_input(&mut self) -> Result<()> {
        self.broadcast_control(|| StreamElement::EndOfInput)
    }
    fn flush(&mut self) -> Result<()> {
        for i in 0..self.buffers.len() {
            self.send_buffer(i)?;
        }
        Ok(())
    }
}

/// Feeds a chained operator by direct call.
pub(crate) struct Chained<T> {
    head: Box<dyn TaskHead>,
    _t: std::marker::PhantomData<fn(T)>,
}

impl<T> Chained<T> {
    pub(crate) fn new(head: Box<dyn TaskHead>) -> Self {
        Chained { head, _t: std::marker::PhantomData }
    }
}

macro_rules! forward_downstream {
    ($field:tt) => {
        fn watermark(&mut self, wm: i64) -> Result<()> {
            self.$field.watermark(wm)
        }
        fn idle(&mut self) -> Result<()> {
            self.$field.idle()
        }
        fn barrier(&mut self, barrier: CheckpointBarrier) -> Result<()> {
            self.$field.barrier(barrier)
        }
        fn end_of_input(&mut self) -> Result<()> {
            self.$field.end_of_input()
        }
        fn flush(&mut self) -> Result<()> {
            self.$field.flush()
        }
        fn next_wakeup(&self) -> Option<i64> {
            self.$field.next_wakeup()
        }
        fn on_time(&mut self, now: i64) -> Result<()> {
            self.$field.on_time(now)
        }
        fn checkpoint_complete(&mut self, id: u64) -> Result<()> {
            self.$field.checkpoint_complete(id)
        }
    };
}

impl<T: Data> Downstream for Chained<T> {
    forward_downstream!(head);
}

impl<T: Data> Output<T> for Chained<T> {
    fn push(&mut self, batch: &mut Vec<Record<T>>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.head.process(0, batch)?;
        batch.clear();
        Ok(())
    }
}

/// Sends the same records to several outputs.
pub(crate) struct Tee<T> {
    outs: Vec<Box<dyn Output<T>>>,
}

impl<T> Tee<T> {
    pub(crate) fn new(outs: Vec<Box<dyn Output<T>>>) -> Self {
        Tee { outs }
    }
}

impl<T: Data> Downstream for Tee<T> {
    fn watermark(&mut self, wm: i64) -> Result<()> {
        self.outs.iter_mut().try_for_each(|o| o.watermark(wm))
    }
    fn idle(&mut self) -> Result<()> {
        self.outs.iter_mut().try_for_each(|o| o.idle())
    }
    fn barrier(&mut self, barrier: CheckpointBarrier) -> Result<()> {
        self.outs.iter_mut().try_for_each(|o| o.barrier(barrier))
    }
    fn end_of_input(&mut self) -> Result<()> {
        self.outs.iter_mut().try_for_each(|o| o.end_of_input())
    }
    fn flush(&mut self) -> Result<()> {
        self.outs.iter_mut().try_for_each(|o| o.flush())
    }
    fn next_wakeup(&self) -> Option<i64> {
        self.outs.iter().fold(None, |acc, o| min_opt(acc, o.next_wakeup()))
    }
    fn on_time(&mut self, now: i64) -> Result<()> {
        self.outs.iter_mut().try_for_each(|o| o.on_time(now))
    }
    fn checkpoint_complete(&mut self, id: u64) -> Result<()> {
        self.outs.iter_mut().try_for_each(|o| o.checkpoint_complete(id))
    }
}

impl<T: Data> Output<T> for Tee<T> {
    fn push(&mut self, batch: &mut Vec<Record<T>>) -> Result<()> {
        let n = self.outs.len();
        for o in &mut self.outs[..n - 1] {
            let mut copy = batch.clone();
            o.push(&mut copy)?;
        }
        self.outs[n - 1].push(batch)
    }
}

/// An output nobody consumes.
pub(crate) struct Discard;

impl Downstream for Discard {
    fn watermark(&mut self, _wm: i64) -> Result<()> {
        Ok(())
    }
    fn idle(&mut self) -> Result<()> {
        Ok(())
    }
    fn barrier(&mut self, _barrier: CheckpointBarrier) -> Result<()> {
        Ok(())
    }
    fn end_of_input(&mut self) -> Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

impl<T> Output<T> for Discard {
    fn push(&mut self, batch: &mut Vec<Record<T>>) -> Result<()> {
        batch.clear();
        Ok(())
    }
}

/// A typed output behind the erased interface.
pub(crate) struct Erased<T>(pub Box<dyn Output<T>>);

impl<T: Data> Downstream for Erased<T> {
    forward_downstream!(0);
}

impl<T: Data> ErasedOutput for Erased<T> {
    fn push_any(&mut self, batch: &mut dyn Any) -> Result<()> {
        match batch.downcast_mut::<Vec<Record<T>>>() {
            Some(b) => self.0.push(b),
            None => bail!("internal error: side output batch of the wrong type"),
        }
    }
}
