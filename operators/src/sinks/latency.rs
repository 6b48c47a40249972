//! End-to-end latency of committed output: for every record a transactional sink writes, the
//! time from its event time to the commit that makes it visible, recorded in the histogram
//! `commit_latency_ms` when its checkpoint completes.
//!
//! Records are not kept: each epoch (the records between two barriers) keeps a histogram of
//! `anchor − event time` in buckets 5 % wide (the anchor is the wall clock when the epoch began),
//! so at the commit every bucket's latency is `commit − anchor + its offset`: memory stays a few
//! hundred buckets per pending epoch, and the error within 5 % of a record's offset.

use std::collections::BTreeMap;

/// Bucket `k > 0` holds offsets in `[1.05^(k-1), 1.05^k)` ms, `-k` the same below zero, `0`
/// those under 1 ms in size.
fn bucket(offset_ms: i64) -> i32 {
    let a = offset_ms.unsigned_abs();
    if a < 1 {
        return 0;
    }
    let k = ((a as f64).ln() / 1.05f64.ln()).floor() as i32 + 1;
    if offset_ms < 0 {
        -k
    } else {
        k
    }
}

/// The middle of a bucket, in ms.
fn middle(k: i32) -> f64 {
    if k == 0 {
        return 0.0;
    }
    let lo = 1.05f64.powi(k.abs() - 1);
    let mid = lo * (1.0 + 1.05) / 2.0;
    if k < 0 {
        -mid
    } else {
        mid
    }
}

/// The event times of one epoch, as offsets from its anchor.
#[derive(Default)]
struct Epoch {
    anchor: i64,
    offsets: BTreeMap<i32, u64>,
}

/// Tracks the epochs of one sink subtask from write to commit.
#[derive(Default)]
pub(crate) struct CommitLatency {
    open: Epoch,
    /// The last event time seen and its bucket: consecutive records often share one.
    last: Option<(i64, i32)>,
    /// Epochs pre-committed for a checkpoint, waiting for it to complete.
    pending: BTreeMap<u64, Vec<Epoch>>,
}

impl CommitLatency {
    /// A record with event time `ts` was written; `now` reads the wall clock, which only the
    /// first record of an epoch needs (the hot path reads no clock).
    pub(crate) fn written(&mut self, ts: i64, now: impl FnOnce() -> i64) {
        if self.open.offsets.is_empty() {
            self.open.anchor = now();
            self.last = None;
        }
        let k = match self.last {
            Some((t, k)) if t == ts => k,
            _ => bucket(self.open.anchor.saturating_sub(ts)),
        };
        self.last = Some((ts, k));
        *self.open.offsets.entry(k).or_default() += 1;
    }

    /// The records written since the last barrier belong to `checkpoint`.
    pub(crate) fn barrier(&mut self, checkpoint: u64) {
        if !self.open.offsets.is_empty() {
            self.pending.entry(checkpoint).or_default().push(std::mem::take(&mut self.open));
        }
    }

    /// The output of every checkpoint up to `checkpoint` was committed at wall time `now`:
    /// `observe(latency_ms, records)` for each part of it.
    pub(crate) fn committed(&mut self, checkpoint: u64, now: i64, observe: &mut dyn FnMut(u64, u64)) {
        let later = self.pending.split_off(&(checkpoint + 1));
        for epoch in std::mem::replace(&mut self.pending, later).into_values().flatten() {
            let since = (now - epoch.anchor) as f64;
            for (k, n) in epoch.offsets {
                observe((since + middle(k)).max(0.0).round() as u64, n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_five_percent_wide_and_their_middle_is_inside() {
        for x in [1i64, 2, 7, 100, 999, 12_345, 3_600_000, -5, -20_000] {
            let m = middle(bucket(x));
            assert!((m - x as f64).abs() <= 0.05 * x.abs() as f64 + 0.5, "{x}: {m}");
        }
        assert_eq!(bucket(0), 0);
    }

    #[test]
    fn each_record_is_counted_once_with_its_checkpoint_and_its_latency() {
        let mut l = CommitLatency::default();
        // Epoch of checkpoint 1 begins at wall time 10,000: records 400 ms and 3 s old.
        l.written(9_600, || 10_000);
        l.written(7_000, || 10_050);
        l.written(7_000, || 10_060);
        l.barrier(1);
        l.written(10_900, || 11_000);
        l.barrier(2);
        let mut seen = Vec::new();
        // Checkpoint 1 commits at 10,500: only its epoch.
        l.committed(1, 10_500, &mut |ms, n| seen.push((ms, n)));
        seen.sort();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!((seen[0].0 as i64 - 900).abs() <= 45 && seen[0].1 == 1, "{seen:?}");
        assert!((seen[1].0 as i64 - 3_500).abs() <= 175 && seen[1].1 == 2, "{seen:?}");
        seen.clear();
        l.committed(1, 10_600, &mut |ms, n| seen.push((ms, n)));
        assert!(seen.is_empty(), "nothing twice");
        l.committed(5, 12_000, &mut |ms, n| seen.push((ms, n)));
        assert_eq!(seen.len(), 1);
        assert!((seen[0].0 as i64 - 1_100).abs() <= 55 && seen[0].1 == 1, "{seen:?}");
    }
}
