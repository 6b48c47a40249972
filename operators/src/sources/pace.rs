//! Pacing a source to a rate, a whole batch at a time (so batches, and the watermarks emitted after
//! them, are the same as at full speed).

use std::time::{Duration, Instant};

/// Admits batches so that at most `rate` records per second pass on average.
///
/// ```
/// use std::time::Duration;
/// let mut pace = weir_operators::sources::Pace::new(1_000);
/// // 100 records at 1000/s are due 100 ms after the start: wait (at most 50 ms at a time).
/// let wait = pace.admit(100).expect("too early");
/// assert!(wait <= Duration::from_millis(50));
/// std::thread::sleep(Duration::from_millis(110));
/// assert_eq!(pace.admit(100), None);
/// ```
#[derive(Debug)]
pub struct Pace {
    rate: u64,
    started: Instant,
    admitted: u64,
}

impl Pace {
    /// At most `records_per_second` on average.
    pub fn new(records_per_second: u64) -> Self {
        Pace { rate: records_per_second.max(1), started: Instant::now(), admitted: 0 }
    }

    /// `None` if a batch of `n` records may go now (and counts it), else how long to wait.
    pub fn admit(&mut self, n: usize) -> Option<Duration> {
        let want = self.admitted + n as u64;
        let due = Duration::from_secs_f64(want as f64 / self.rate as f64);
        let elapsed = self.started.elapsed();
        if elapsed < due {
            return Some((due - elapsed).min(Duration::from_millis(50)));
        }
        self.admitted = want;
        None
    }
}
