//! Barrier alignment in a task with several input channels.
//!
//! A channel that delivered the barrier of checkpoint n is not read again until every other open
//! channel delivered it too: records behind the barrier belong to checkpoint n + 1 and must not
//! reach the operator before its snapshot for n. Once all have, the task snapshots and passes the
//! barrier on, and every channel is read again.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::element::CheckpointBarrier;

/// Which input channels wait for the others' barrier.
pub(crate) struct BarrierAligner {
    blocked: Vec<bool>,
    pending: Option<CheckpointBarrier>,
    started: Instant,
}

impl BarrierAligner {
    /// Alignment over `channels` input channels.
    pub(crate) fn new(channels: usize) -> Self {
        BarrierAligner { blocked: vec![false; channels], pending: None, started: Instant::now() }
    }

    /// Whether channel `i` must not be read now.
    pub(crate) fn is_blocked(&self, i: usize) -> bool {
        self.blocked[i]
    }

    /// Barrier `b` arrived on channel `i`. When every channel for which `open` holds has delivered
    /// it, returns it with the time alignment took, and unblocks all channels.
    pub(crate) fn on_barrier(
        &mut self,
        i: usize,
        b: CheckpointBarrier,
        open: impl Fn(usize) -> bool,
    ) -> Result<Option<(CheckpointBarrier, Duration)>> {
        match self.pending {
            Some(p) if p.id != b.id => bail!("internal error: barrier {} arrived while aligning {}", b.id, p.id),
            Some(_) => {}
            None => {
                self.pending = Some(b);
                self.started = Instant::now();
            }
        }
        self.blocked[i] = true;
        if (0..self.blocked.len()).any(|j| !self.blocked[j] && open(j)) {
            return Ok(None);
        }
        self.pending = None;
        self.blocked.iter_mut().for_each(|x| *x = false);
        Ok(Some((b, self.started.elapsed())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn barrier(id: u64) -> CheckpointBarrier {
        CheckpointBarrier { id, timestamp: 0, savepoint: false, terminal: false }
    }

    #[test]
    fn a_barrier_passes_once_every_open_channel_delivered_it() {
        let mut a = BarrierAligner::new(3);
        assert!(a.on_barrier(1, barrier(4), |_| true).unwrap().is_none());
        assert!(a.is_blocked(1) && !a.is_blocked(0), "only the channel that delivered waits");
        assert!(a.on_barrier(0, barrier(4), |_| true).unwrap().is_none());
        let (b, _) = a.on_barrier(2, barrier(4), |_| true).unwrap().expect("aligned");
        assert_eq!(b.id, 4);
        assert!((0..3).all(|i| !a.is_blocked(i)), "all channels are read again");
    }

    #[test]
    fn closed_channels_are_not_waited_for() {
        let mut a = BarrierAligner::new(2);
        assert!(a.on_barrier(0, barrier(1), |j| j != 1).unwrap().is_some());
    }

    #[test]
    fn another_barrier_while_aligning_is_an_error() {
        let mut a = BarrierAligner::new(2);
        a.on_barrier(0, barrier(1), |_| true).unwrap();
        assert!(a.on_barrier(1, barrier(2), |_| true).is_err());
    }
}
