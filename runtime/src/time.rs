//! Event time: timestamp assignment and watermark generation per source split.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// The wall clock in epoch milliseconds.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Extracts a record's event time (epoch ms).
pub(crate) type TimestampFn<T> = Arc<dyn Fn(&T) -> i64 + Send + Sync>;

/// How a source assigns event timestamps and generates watermarks (Flink's `WatermarkStrategy`).
///
/// Watermarks are generated per source split (file range, Kafka partition): a split's watermark is
/// the highest timestamp it has produced minus the allowed out-of-orderness minus 1 ms, and a source subtask
/// emits the minimum over its active splits after every batch it reads. A split that produced
/// nothing for the idleness timeout stops holding the watermark back until it produces again.
///
/// ```
/// use std::time::Duration;
/// use weir_runtime::WatermarkStrategy;
/// #[derive(Clone)]
/// struct Bid { date_time: i64 }
/// let strategy = WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_secs(2))
///     .with_timestamp_assigner(|b: &Bid| b.date_time)
///     .with_idleness(Duration::from_secs(30));
/// assert_eq!(strategy.timestamp_of(&Bid { date_time: 5 }), Some(5));
/// ```
pub struct WatermarkStrategy<T> {
    pub(crate) assigner: Option<TimestampFn<T>>,
    pub(crate) out_of_orderness_ms: i64,
    pub(crate) idleness: Option<Duration>,
    pub(crate) generates: bool,
    /// Max drift (ms) of a subtask's watermark ahead of the slowest subtask of the same source.
    pub(crate) alignment_ms: Option<i64>,
}

impl<T> Clone for WatermarkStrategy<T> {
    fn clone(&self) -> Self {
        WatermarkStrategy {
            assigner: self.assigner.clone(),
            out_of_orderness_ms: self.out_of_orderness_ms,
            idleness: self.idleness,
            generates: self.generates,
            alignment_ms: self.alignment_ms,
        }
    }
}

impl<T> WatermarkStrategy<T> {
    /// Records carry no event time and no watermarks are generated (until the final one at the
    /// end of a bounded input).
    pub fn no_watermarks() -> Self {
        WatermarkStrategy {
            assigner: None,
            out_of_orderness_ms: 0,
            idleness: None,
            generates: false,
            alignment_ms: None,
        }
    }

    /// Watermark = highest timestamp seen − `max_out_of_orderness` − 1 ms (records at the highest
    /// timestamp seen are not late).
    pub fn for_bounded_out_of_orderness(max_out_of_orderness: Duration) -> Self {
        WatermarkStrategy {
            assigner: None,
            out_of_orderness_ms: max_out_of_orderness.as_millis() as i64,
            idleness: None,
            generates: true,
            alignment_ms: None,
        }
    }

    /// Timestamps never decrease: watermark = highest timestamp seen − 1 ms.
    pub fn for_monotonous_timestamps() -> Self {
        Self::for_bounded_out_of_orderness(Duration::ZERO)
    }

    /// Takes each record's event time (epoch ms) from the record.
    pub fn with_timestamp_assigner(mut self, f: impl Fn(&T) -> i64 + Send + Sync + 'static) -> Self {
        self.assigner = Some(Arc::new(f));
        self
    }

    /// A split with no data for `timeout` no longer holds the watermark back.
    pub fn with_idleness(mut self, timeout: Duration) -> Self {
        self.idleness = Some(timeout);
        self
    }

    /// Watermark alignment (Flink's `withWatermarkAlignment`): a source subtask whose watermark is
    /// more than `max_drift` ahead of the slowest subtask of the same source pauses until that one
    /// catches up, so that state waiting for the slowest input (windows, joins) does not grow with
    /// the skew between subtasks. A subtask without a watermark yet holds the others back until it
    /// has one; finished and idle subtasks do not. So every subtask must produce data, finish, or
    /// become idle (`with_idleness`) — a subtask that waits forever without data stalls the others.
    pub fn with_watermark_alignment(mut self, max_drift: Duration) -> Self {
        self.alignment_ms = Some(max_drift.as_millis() as i64);
        self
    }

    /// The timestamp the strategy gives `value`.
    pub fn timestamp_of(&self, value: &T) -> Option<i64> {
        self.assigner.as_ref().map(|f| f(value))
    }
}

struct SplitState {
    id: u64,
    max_ts: i64,
    last_data: Instant,
    finished: bool,
}

/// What a source subtask's splits say about event time right now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SplitStatus {
    Watermark(i64),
    Idle,
}

/// Per-split watermark generation inside one source subtask.
pub(crate) struct SplitWatermarks {
    splits: Vec<SplitState>,
    /// Highest timestamps per split from the snapshot a run restored, applied when a split shows up.
    restored: std::collections::HashMap<u64, i64>,
    last: usize,
    out_of_orderness_ms: i64,
    idleness: Option<Duration>,
}

impl SplitWatermarks {
    pub(crate) fn new(out_of_orderness_ms: i64, idleness: Option<Duration>) -> Self {
        SplitWatermarks { splits: Vec::new(), restored: Default::default(), last: 0, out_of_orderness_ms, idleness }
    }

    fn index(&mut self, id: u64) -> usize {
        if self.splits.get(self.last).is_some_and(|s| s.id == id) {
            return self.last;
        }
        let i = match self.splits.iter().position(|s| s.id == id) {
            Some(i) => i,
            None => {
                self.splits.push(SplitState { id, max_ts: i64::MIN, last_data: Instant::now(), finished: false });
                self.splits.len() - 1
            }
        };
        self.last = i;
        i
    }

    pub(crate) fn register(&mut self, id: u64) {
        self.index(id);
    }

    #[inline]
    pub(crate) fn observe(&mut self, id: u64, ts: Option<i64>, now: Instant) {
        let i = self.index(id);
        let s = &mut self.splits[i];
        s.last_data = now;
        s.finished = false;
        if let Some(ts) = ts {
            if ts > s.max_ts {
                s.max_ts = ts;
            }
        }
    }

    /// Highest timestamp per split, for a checkpoint (including restored splits not seen since).
    pub(crate) fn snapshot(&self) -> Vec<(u64, i64)> {
        let mut all = self.restored.clone();
        for s in &self.splits {
            all.insert(s.id, s.max_ts);
        }
        let mut v: Vec<(u64, i64)> = all.into_iter().collect();
        v.sort();
        v
    }

    /// Takes the highest timestamps of a snapshot (the maximum where several subtasks had a split).
    pub(crate) fn restore(&mut self, entries: impl IntoIterator<Item = (u64, i64)>) {
        for (id, ts) in entries {
            let e = self.restored.entry(id).or_insert(i64::MIN);
            *e = (*e).max(ts);
        }
    }

    pub(crate) fn finish(&mut self, id: u64) {
        let i = self.index(id);
        self.splits[i].finished = true;
    }

    /// The watermark of the active splits, or `Idle` when every unfinished split is idle.
    /// `None` when no split is active or idle (nothing registered yet, or all finished).
    pub(crate) fn status(&self, now: Instant) -> Option<SplitStatus> {
        let mut min: Option<i64> = None;
        let mut any_idle = false;
        for s in self.splits.iter().filter(|s| !s.finished) {
            if self.idleness.is_some_and(|t| now.duration_since(s.last_data) >= t) {
                any_idle = true;
                continue;
            }
            // Minus one more, as in Flink: a watermark W promises no more records at or before W,
            // and another record with the highest timestamp seen may still come.
            let wm =
                if s.max_ts == i64::MIN { i64::MIN } else { s.max_ts.saturating_sub(self.out_of_orderness_ms + 1) };
            min = Some(min.map_or(wm, |m: i64| m.min(wm)));
        }
        match (min, any_idle) {
            (Some(w), _) => Some(SplitStatus::Watermark(w)),
            (None, true) => Some(SplitStatus::Idle),
            (None, false) => None,
        }
    }
}

/// An epoch-millisecond time as RFC 3339 (UTC), for logs and terminal views.
pub(crate) fn format_millis(ms: i64) -> String {
    // Beyond year 9999 (the end-of-input watermark) RFC 3339 has no form.
    if !(0..253_402_300_800_000).contains(&ms) {
        return if ms > 0 { "end".to_string() } else { ms.to_string() };
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_is_min_over_active_splits_and_idle_splits_drop_out() {
        let t0 = Instant::now();
        let mut w = SplitWatermarks::new(10, Some(Duration::from_secs(1)));
        assert_eq!(w.status(t0), None);
        w.observe(1, Some(100), t0);
        w.observe(2, Some(50), t0);
        assert_eq!(w.status(t0), Some(SplitStatus::Watermark(39)));
        let later = t0 + Duration::from_secs(2);
        w.observe(1, Some(120), later);
        assert_eq!(w.status(later), Some(SplitStatus::Watermark(109)), "split 2 idle");
        w.finish(1);
        assert_eq!(w.status(later), Some(SplitStatus::Idle));
        w.observe(2, Some(60), later);
        assert_eq!(w.status(later), Some(SplitStatus::Watermark(49)), "split 2 rejoined");
    }
}
