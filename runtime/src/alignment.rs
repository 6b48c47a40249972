//! Watermark alignment (Flink's `withWatermarkAlignment`): a source subtask whose watermark runs
//! more than the allowed drift ahead of its source's slowest subtask pauses reading, so that a
//! fast split does not make windows and joins hold state for the skew.
//!
//! The subtasks of one source share an [`AlignmentGroup`]: the latest watermark of each. With
//! several processes a group holds only the subtasks of its own process; the others do not count.
//! Sharing watermarks between processes was built and measured (every process sending its
//! subtasks' watermarks to the others every 100 ms, as Flink's source coordinator announces
//! them): Nexmark q5 as two processes fell from 0.66× to 0.08× of one process, since two seconds
//! of its event time pass in about 17 ms of a source's wall time, less than a report takes to
//! arrive. Alignment across processes needs drifts far longer than that; per process it keeps
//! the subtasks that share a machine's cores together, which is where skew comes from here.

use std::sync::Arc;

use crate::element::MAX_WATERMARK;

/// The latest watermark of every subtask of one source (`MAX_WATERMARK` when finished or idle).
pub(crate) type AlignmentGroup = Arc<parking_lot::Mutex<Vec<i64>>>;

/// Whether `own` is more than `drift` ahead of the slowest subtask. A subtask without a watermark
/// yet (not started, or no data) counts as the slowest of all, so a fast subtask cannot run ahead
/// before a slow one has even begun; it stops counting once it is idle or finished.
pub(crate) fn too_far_ahead(group: &AlignmentGroup, own: i64, drift: i64) -> bool {
    let slowest = group.lock().iter().copied().min();
    own > i64::MIN && slowest.is_some_and(|m| m < MAX_WATERMARK && own > m.saturating_add(drift))
}

/// The starting watermarks of a source's alignment group in process `placement.0` of
/// `placement.1`: its own subtasks have none yet; subtasks in other processes never publish here,
/// so they do not count (as finished ones), or they would hold this process's back forever.
pub(crate) fn alignment_slots(parallelism: usize, (me, processes): (usize, usize)) -> Vec<i64> {
    (0..parallelism)
        .map(|s| if crate::net::process_of(s, parallelism, processes) == me { i64::MIN } else { MAX_WATERMARK })
        .collect()
}

/// Publishes subtask `subtask`'s watermark `wm` in `group` (of a source of `parallelism`).
pub(crate) fn publish(group: &AlignmentGroup, parallelism: usize, placement: (usize, usize), subtask: usize, wm: i64) {
    let mut g = group.lock();
    if g.len() != parallelism {
        *g = alignment_slots(parallelism, placement);
    }
    g[subtask] = wm;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(slots: Vec<i64>) -> AlignmentGroup {
        Arc::new(parking_lot::Mutex::new(slots))
    }

    /// Nexmark q5 as two processes stood still after its first batch when subtasks elsewhere,
    /// whose watermarks never reach this process, counted as "no watermark yet".
    #[test]
    fn alignment_counts_only_this_processs_subtasks() {
        assert_eq!(alignment_slots(2, (0, 1)), [i64::MIN, i64::MIN]);
        assert_eq!(alignment_slots(2, (0, 2)), [i64::MIN, MAX_WATERMARK]);
        assert_eq!(alignment_slots(4, (1, 2)), [MAX_WATERMARK, MAX_WATERMARK, i64::MIN, i64::MIN]);
        let two = group(Vec::new());
        publish(&two, 2, (0, 2), 0, 5_000);
        assert!(!too_far_ahead(&two, 5_000, 1_000), "the only local subtask is never too far ahead");
        // In one process the other subtask without a watermark holds it back, and then its own.
        let one = group(Vec::new());
        publish(&one, 2, (0, 1), 0, 5_000);
        assert!(too_far_ahead(&one, 5_000, 1_000));
        publish(&one, 2, (0, 1), 1, 4_500);
        assert!(!too_far_ahead(&one, 5_000, 1_000));
    }
}
