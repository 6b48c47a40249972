//! Counters and gauges of a running job, registered per operator and subtask.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// Named metrics of one kind, one entry per subtask that registered it.
type Registry<T> = Arc<Mutex<Vec<(String, Arc<T>)>>>;

/// Every metric of a job. Cheap to clone; tasks update atomics, readers take snapshots.
#[derive(Clone, Default)]
pub struct JobMetrics {
    counters: Registry<AtomicU64>,
    watermarks: Registry<AtomicI64>,
}

impl JobMetrics {
    pub(crate) fn group(&self, uid: &str) -> MetricGroup {
        MetricGroup { uid: uid.to_string(), registry: self.clone() }
    }

    /// Counters summed over subtasks, by `<uid>.<name>`.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (name, c) in self.counters.lock().iter() {
            *out.entry(name.clone()).or_insert(0) += c.load(Ordering::Relaxed);
        }
        out
    }

    /// The lowest watermark any subtask of any operator has reached, if all have one.
    pub fn min_watermark(&self) -> Option<i64> {
        let wms = self.watermarks.lock();
        let mut min = None::<i64>;
        for (_, w) in wms.iter() {
            let w = w.load(Ordering::Relaxed);
            min = Some(min.map_or(w, |m| m.min(w)));
        }
        min.filter(|w| *w > i64::MIN)
    }
}

/// The metrics of one subtask of one operator.
#[derive(Clone)]
pub struct MetricGroup {
    uid: String,
    registry: JobMetrics,
}

impl MetricGroup {
    pub(crate) fn counter(&self, name: &str) -> Arc<AtomicU64> {
        let c = Arc::new(AtomicU64::new(0));
        self.registry.counters.lock().push((format!("{}.{}", self.uid, name), c.clone()));
        c
    }

    pub(crate) fn watermark_gauge(&self) -> Arc<AtomicI64> {
        let g = Arc::new(AtomicI64::new(i64::MIN));
        self.registry.watermarks.lock().push((self.uid.clone(), g.clone()));
        g
    }
}
