//! Counters, gauges and task time accounting of a running job, and the once-a-second sample
//! that turns them into rates (records/s, busy/backpressured/idle ms per second).
//!
//! Tasks only touch atomics; the sampler thread and the control plane read them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;

/// `(operator uid, subtask, metric name)`.
pub(crate) type CounterKey = (String, usize, String);

#[derive(Default)]
struct Registry {
    counters: BTreeMap<CounterKey, Arc<AtomicU64>>,
    /// Watermark of every operator subtask, by `(uid, subtask)`.
    watermarks: BTreeMap<(String, usize), Arc<AtomicI64>>,
    /// Time accounting of every task, by `(head uid, subtask)`.
    tasks: BTreeMap<(String, usize), Arc<TaskStats>>,
    /// The task each operator subtask runs in.
    task_of: BTreeMap<(String, usize), String>,
    /// Logical channels to and from other processes.
    channels: BTreeMap<ChannelKey, Arc<ChannelStats>>,
}

/// One end of a logical channel between processes, as `/metrics` labels it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub(crate) struct ChannelKey {
    /// The process this end is in.
    pub process: usize,
    /// `"out"` (this process sends) or `"in"`.
    pub direction: String,
    pub from: String,
    pub from_subtask: usize,
    pub to: String,
    pub to_subtask: usize,
    /// The other process.
    pub peer: usize,
}

/// What went through one end of a channel between processes.
#[derive(Default)]
pub(crate) struct ChannelStats {
    pub bytes: AtomicU64,
    pub records: AtomicU64,
    /// Sender side: time spent waiting for credits.
    pub backpressure_ns: AtomicU64,
}

/// Every metric of a job. Cheap to clone; tasks update atomics, readers take snapshots.
#[derive(Clone, Default)]
pub struct JobMetrics {
    registry: Arc<Mutex<Registry>>,
    latest: Arc<Mutex<Sample>>,
    /// What the other processes of the job last reported (process 0 only), by process.
    remote: Arc<Mutex<BTreeMap<usize, MetricsView>>>,
}

/// The metrics of one process (or, merged, of the whole job) as the control plane shows them;
/// the other processes send theirs to process 0 once a second.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub(crate) struct MetricsView {
    pub subtasks: Vec<SubtaskSample>,
    pub counters: Vec<(CounterKey, u64)>,
    /// Channels between processes with `(bytes, records, backpressure ns)`.
    pub channels: Vec<(ChannelKey, [u64; 3])>,
    pub watermark: Option<i64>,
}

/// Where one task's wall-clock time went, in nanoseconds since it started; Flink's
/// `idleTimeMsPerSecond` and `backPressuredTimeMsPerSecond` are the rates of these.
pub(crate) struct TaskStats {
    started: Instant,
    /// Waiting for input (or, for a source, for its reader to have data).
    pub idle_ns: AtomicU64,
    /// Blocked on a full output channel.
    pub backpressure_ns: AtomicU64,
    /// Batches queued in the task's input channels at the last look.
    pub queued: AtomicU64,
    /// Batches the task's input channels can hold in all.
    pub capacity: AtomicU64,
    /// Duration of the last barrier alignment, and the checkpoint it was for.
    pub alignment_ns: AtomicU64,
    pub alignment_id: AtomicU64,
    pub finished: AtomicBool,
}

impl TaskStats {
    pub(crate) fn new() -> Self {
        TaskStats {
            started: Instant::now(),
            idle_ns: AtomicU64::new(0),
            backpressure_ns: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            capacity: AtomicU64::new(0),
            alignment_ns: AtomicU64::new(0),
            alignment_id: AtomicU64::new(u64::MAX),
            finished: AtomicBool::new(false),
        }
    }

    pub(crate) fn add_idle(&self, since: Instant) {
        self.idle_ns.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Milliseconds the alignment for checkpoint `id` took (0 when the task did not align for it:
    /// sources, or one input).
    pub(crate) fn alignment_ms(&self, id: u64) -> f64 {
        if self.alignment_id.load(Ordering::Relaxed) == id {
            self.alignment_ns.load(Ordering::Relaxed) as f64 / 1e6
        } else {
            0.0
        }
    }
}

/// One operator subtask in a [`Sample`].
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct SubtaskSample {
    /// Operator uid.
    pub uid: String,
    /// Subtask index.
    pub subtask: usize,
    /// Uid of the operator at the head of the task (chain) this subtask runs in.
    pub task: String,
    /// Records received since the job started.
    pub records_in: u64,
    /// Records emitted since the job started.
    pub records_out: u64,
    /// Records received per second over the last sample interval.
    pub records_in_per_sec: f64,
    /// Records emitted per second over the last sample interval.
    pub records_out_per_sec: f64,
    /// The subtask's current event-time watermark (epoch ms), if it has one.
    pub watermark: Option<i64>,
    /// Of each second, milliseconds the task spent working.
    pub busy_ms_per_sec: f64,
    /// Of each second, milliseconds the task spent blocked on full output channels.
    pub backpressured_ms_per_sec: f64,
    /// Of each second, milliseconds the task spent waiting for input.
    pub idle_ms_per_sec: f64,
    /// Batches queued in the task's input channels.
    pub input_queued: u64,
    /// How full the task's input channels are, 0 to 1.
    pub input_fill: f64,
    /// The task has finished.
    pub finished: bool,
}

/// The rates and values of every operator subtask, as of the last sample.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    /// Per operator subtask, in uid order.
    pub subtasks: Vec<SubtaskSample>,
}

/// What the sampler remembers between samples.
#[derive(Default)]
pub(crate) struct SamplerState {
    at: Option<Instant>,
    counters: BTreeMap<CounterKey, u64>,
    tasks: BTreeMap<(String, usize), (u64, u64, Instant)>,
}

impl JobMetrics {
    pub(crate) fn group(&self, uid: &str, subtask: usize) -> MetricGroup {
        MetricGroup { uid: uid.to_string(), subtask, registry: self.clone() }
    }

    /// Registers a task (a chain of operators) and returns where it accounts its time. A new
    /// attempt replaces the task's stats of the previous one.
    pub(crate) fn task(&self, head: &str, subtask: usize, operators: &[String]) -> Arc<TaskStats> {
        let stats = Arc::new(TaskStats::new());
        let mut r = self.registry.lock();
        r.tasks.insert((head.to_string(), subtask), stats.clone());
        for op in operators {
            r.task_of.insert((op.clone(), subtask), head.to_string());
        }
        stats
    }

    /// Registers one end of a channel between processes.
    pub(crate) fn channel(&self, key: ChannelKey) -> Arc<ChannelStats> {
        self.registry.lock().channels.entry(key).or_default().clone()
    }

    /// Every channel end between processes with its `(bytes, records, backpressure ns)`.
    pub(crate) fn channels(&self) -> Vec<(ChannelKey, [u64; 3])> {
        let r = self.registry.lock();
        let load = |c: &ChannelStats| {
            [
                c.bytes.load(Ordering::Relaxed),
                c.records.load(Ordering::Relaxed),
                c.backpressure_ns.load(Ordering::Relaxed),
            ]
        };
        r.channels.iter().map(|(k, c)| (k.clone(), load(c))).collect()
    }

    /// This process's metrics.
    pub(crate) fn view(&self) -> MetricsView {
        MetricsView {
            subtasks: self.latest().subtasks,
            counters: self.subtask_counters(),
            channels: self.channels(),
            watermark: self.min_watermark(),
        }
    }

    /// Keeps what process `process` reported last.
    pub(crate) fn set_remote(&self, process: usize, view: MetricsView) {
        self.remote.lock().insert(process, view);
    }

    /// The whole job: this process's metrics with what the others reported last.
    pub(crate) fn job_view(&self) -> MetricsView {
        let mut v = self.view();
        for r in self.remote.lock().values() {
            v.subtasks.extend(r.subtasks.iter().cloned());
            v.counters.extend(r.counters.iter().cloned());
            v.channels.extend(r.channels.iter().cloned());
            v.watermark = match (v.watermark, r.watermark) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        v.subtasks.sort_by(|a, b| (&a.uid, a.subtask).cmp(&(&b.uid, b.subtask)));
        v.counters.sort();
        v.channels.sort();
        v
    }

    /// Counters summed over subtasks, by `<uid>.<name>`.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for ((uid, _, name), c) in self.registry.lock().counters.iter() {
            *out.entry(format!("{uid}.{name}")).or_insert(0) += c.load(Ordering::Relaxed);
        }
        out
    }

    /// Counters per subtask: `((uid, subtask, name), value)`.
    pub(crate) fn subtask_counters(&self) -> Vec<(CounterKey, u64)> {
        self.registry.lock().counters.iter().map(|(k, c)| (k.clone(), c.load(Ordering::Relaxed))).collect()
    }

    /// The lowest watermark any subtask of any operator has reached, if all have one.
    pub fn min_watermark(&self) -> Option<i64> {
        let r = self.registry.lock();
        let mut min = None::<i64>;
        for w in r.watermarks.values() {
            let w = w.load(Ordering::Relaxed);
            min = Some(min.map_or(w, |m| m.min(w)));
        }
        min.filter(|w| *w > i64::MIN)
    }

    /// The last sample the sampler took.
    pub fn latest(&self) -> Sample {
        self.latest.lock().clone()
    }

    /// Takes a sample: rates are over the time since the previous call with the same `state`.
    pub(crate) fn sample(&self, state: &mut SamplerState) {
        let now = Instant::now();
        let dt = state.at.map(|t| now.duration_since(t).as_secs_f64()).unwrap_or(0.0);
        let rate = |new: u64, old: Option<&u64>| match old {
            Some(o) if dt > 0.0 => new.saturating_sub(*o) as f64 / dt,
            _ => 0.0,
        };
        let r = self.registry.lock();
        // Per task, the time split and queue (the other fields unused).
        let mut task_rates: BTreeMap<(String, usize), SubtaskSample> = BTreeMap::new();
        let mut task_prev = BTreeMap::new();
        for (key, t) in &r.tasks {
            let (idle, bp) = (t.idle_ns.load(Ordering::Relaxed), t.backpressure_ns.load(Ordering::Relaxed));
            let finished = t.finished.load(Ordering::Relaxed);
            let (idle_ms, bp_ms) = match state.tasks.get(key) {
                // Same task (not a new attempt's): rates over the interval.
                Some((pi, pb, started)) if *started == t.started && dt > 0.0 => {
                    (idle.saturating_sub(*pi) as f64 / 1e6 / dt, bp.saturating_sub(*pb) as f64 / 1e6 / dt)
                }
                _ => {
                    let alive = t.started.elapsed().as_secs_f64().max(1e-9);
                    (idle as f64 / 1e6 / alive, bp as f64 / 1e6 / alive)
                }
            };
            let (idle_ms, bp_ms) = (idle_ms.min(1000.0), bp_ms.min(1000.0 - idle_ms.min(1000.0)));
            let busy = if finished { 0.0 } else { (1000.0 - idle_ms - bp_ms).max(0.0) };
            let (idle_ms, bp_ms) = if finished { (1000.0, 0.0) } else { (idle_ms, bp_ms) };
            let queued = t.queued.load(Ordering::Relaxed);
            let cap = t.capacity.load(Ordering::Relaxed);
            let fill = if cap > 0 { queued as f64 / cap as f64 } else { 0.0 };
            let split = SubtaskSample {
                busy_ms_per_sec: busy,
                backpressured_ms_per_sec: bp_ms,
                idle_ms_per_sec: idle_ms,
                input_queued: queued,
                input_fill: fill,
                finished,
                ..Default::default()
            };
            task_rates.insert(key.clone(), split);
            task_prev.insert(key.clone(), (idle, bp, t.started));
        }
        let mut subtasks: BTreeMap<(String, usize), SubtaskSample> = BTreeMap::new();
        let mut counters = BTreeMap::new();
        for (key, c) in &r.counters {
            let v = c.load(Ordering::Relaxed);
            let (uid, subtask, name) = key;
            if name == "records_in" || name == "records_out" {
                let s = subtasks.entry((uid.clone(), *subtask)).or_default();
                let per_sec = rate(v, state.counters.get(key));
                if name == "records_in" {
                    (s.records_in, s.records_in_per_sec) = (v, per_sec);
                } else {
                    (s.records_out, s.records_out_per_sec) = (v, per_sec);
                }
            }
            counters.insert(key.clone(), v);
        }
        for ((uid, subtask), w) in &r.watermarks {
            let w = w.load(Ordering::Relaxed);
            subtasks.entry((uid.clone(), *subtask)).or_default().watermark = (w > i64::MIN).then_some(w);
        }
        for ((uid, subtask), s) in subtasks.iter_mut() {
            s.uid = uid.clone();
            s.subtask = *subtask;
            if let Some(head) = r.task_of.get(&(uid.clone(), *subtask)) {
                s.task = head.clone();
                if let Some(t) = task_rates.get(&(head.clone(), *subtask)) {
                    s.busy_ms_per_sec = t.busy_ms_per_sec;
                    s.backpressured_ms_per_sec = t.backpressured_ms_per_sec;
                    s.idle_ms_per_sec = t.idle_ms_per_sec;
                    s.input_queued = t.input_queued;
                    s.input_fill = t.input_fill;
                    s.finished = t.finished;
                }
            }
        }
        drop(r);
        *self.latest.lock() = Sample { subtasks: subtasks.into_values().collect() };
        state.at = Some(now);
        state.counters = counters;
        state.tasks = task_prev;
    }
}

/// The metrics of one subtask of one operator.
#[derive(Clone)]
pub struct MetricGroup {
    uid: String,
    subtask: usize,
    registry: JobMetrics,
}

impl MetricGroup {
    /// The counter `name` of this subtask; a restarted attempt continues the previous count.
    pub(crate) fn counter(&self, name: &str) -> Arc<AtomicU64> {
        let key = (self.uid.clone(), self.subtask, name.to_string());
        self.registry.registry.lock().counters.entry(key).or_default().clone()
    }

    /// The watermark gauge of this subtask, reset for a new attempt.
    pub(crate) fn watermark_gauge(&self) -> Arc<AtomicI64> {
        let g = Arc::new(AtomicI64::new(i64::MIN));
        self.registry.registry.lock().watermarks.insert((self.uid.clone(), self.subtask), g.clone());
        g
    }
}
