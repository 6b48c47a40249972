//! A source from in-memory values, for tests and examples.

use anyhow::Result;
use weir_runtime::{Data, Source, SourceOutput, SourcePoll, SourceReader, TaskInfo};

/// Splits of values; split `i` is read by subtask `i % parallelism`. All splits of a subtask are
/// read side by side (like the partitions of a topic), a few records of each per poll, so each
/// split keeps its own watermark.
#[derive(Clone, Debug)]
pub struct VecSource<T> {
    splits: Vec<Vec<T>>,
    per_poll: usize,
}

impl<T: Data> VecSource<T> {
    /// One split.
    pub fn new(values: Vec<T>) -> Self {
        VecSource { splits: vec![values], per_poll: usize::MAX }
    }

    /// Several splits read side by side.
    pub fn with_splits(splits: Vec<Vec<T>>) -> Self {
        VecSource { splits, per_poll: 16 }
    }

    /// Records taken from each split per poll (watermarks are emitted after every poll).
    pub fn records_per_poll(mut self, n: usize) -> Self {
        self.per_poll = n.max(1);
        self
    }
}

struct VecReader<T> {
    splits: Vec<(u64, std::vec::IntoIter<T>)>,
    per_poll: usize,
    registered: bool,
}

impl<T: Data> Source<T> for VecSource<T> {
    fn create_reader(&self, info: &TaskInfo) -> Result<Box<dyn SourceReader<T>>> {
        let splits = self
            .splits
            .iter()
            .enumerate()
            .filter(|(i, _)| i % info.parallelism == info.subtask)
            .map(|(i, s)| (i as u64, s.clone().into_iter()))
            .collect();
        Ok(Box::new(VecReader { splits, per_poll: self.per_poll, registered: false }))
    }
}

impl<T: Data> SourceReader<T> for VecReader<T> {
    fn poll(&mut self, out: &mut SourceOutput<'_, T>) -> Result<SourcePoll> {
        if !self.registered {
            for (id, _) in &self.splits {
                out.register_split(*id);
            }
            self.registered = true;
        }
        let mut any = false;
        for (id, it) in &mut self.splits {
            for _ in 0..self.per_poll {
                if out.remaining() == 0 {
                    return Ok(SourcePoll::Ready);
                }
                match it.next() {
                    Some(v) => {
                        out.collect(*id, v);
                        any = true;
                    }
                    None => {
                        out.finish_split(*id);
                        break;
                    }
                }
            }
        }
        Ok(if any { SourcePoll::Ready } else { SourcePoll::Finished })
    }
}
