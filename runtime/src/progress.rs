//! The metrics sampler thread: samples the job's metrics every second (the rates `/job` and
//! `/metrics` serve) and logs a progress line every `--progress-interval`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::control::ControlState;
use crate::metrics::SamplerState;

/// The running sampler; stops and joins on drop.
pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling; progress lines count the records of the sources `source_uids`.
    pub(crate) fn start(control: ControlState, source_uids: Vec<String>, interval: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("weir-sampler".into())
            .spawn(move || sampler(control, source_uids, interval, s))?;
        Ok(Sampler { stop, thread: Some(thread) })
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Samples the job's metrics every second (the rates `/job` and `/metrics` serve) and logs a
/// progress line every `interval` (zero: never).
fn sampler(control: ControlState, source_uids: Vec<String>, interval: Duration, stop: Arc<AtomicBool>) {
    let metrics = &control.metrics;
    let mut state = SamplerState::default();
    metrics.sample(&mut state);
    let mut last = 0u64;
    let mut last_log = Instant::now();
    let step = Duration::from_millis(50);
    while !stop.load(Ordering::Relaxed) {
        let mut waited = Duration::ZERO;
        while waited < Duration::from_secs(1) && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(step);
            waited += step;
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        metrics.sample(&mut state);
        if interval.is_zero() || last_log.elapsed() < interval {
            continue;
        }
        let counters = metrics.counters();
        let total: u64 =
            source_uids.iter().map(|u| counters.get(&format!("{u}.records_out")).copied().unwrap_or(0)).sum();
        let rate = total.saturating_sub(last) as f64 / last_log.elapsed().as_secs_f64();
        last = total;
        last_log = Instant::now();
        let wm = metrics.min_watermark().map(crate::time::format_millis);
        let (chk, chk_ms) = control
            .checkpoints
            .lock()
            .iter()
            .rev()
            .find(|c| c.status == "completed")
            .map_or((None, None), |c| (Some(c.id), Some(c.duration_ms)));
        tracing::info!(
            records = total,
            records_per_sec = rate as u64,
            watermark = wm.as_deref().unwrap_or("-"),
            last_checkpoint = chk,
            checkpoint_ms = chk_ms,
            "progress"
        );
    }
}
