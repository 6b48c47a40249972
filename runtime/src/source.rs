//! Sources: a [`Source`] describes where data comes from and creates one [`SourceReader`] per
//! subtask; the runtime polls readers, stamps records with event time and generates watermarks
//! per split.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::element::{Data, Record};
use crate::operator::{OutputTag, SideOutputs, TaskInfo};
use crate::time::{SplitWatermarks, WatermarkStrategy};

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
    pub(crate) buf: &'a mut Vec<Record<T>>,
    pub(crate) sides: &'a mut SideOutputs,
    pub(crate) splits: &'a mut SplitWatermarks,
    pub(crate) strategy: &'a WatermarkStrategy<T>,
    pub(crate) limit: usize,
    pub(crate) now: Instant,
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
