//! Reading a running job's control endpoint from a benchmark: the checkpoint history comes from
//! `GET /checkpoints` (what the dashboard and `weir top` read), not from parsing log lines.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A loopback address with a port free right now, for a child's `--metrics-addr` or
/// `--peers`: below Linux's ephemeral range (32768–60999), so that no other process's `:0`
/// bind or outgoing connection takes it before the child binds it; in turn from a random start.
pub fn free_local_addr() -> std::io::Result<String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let seed = nanos ^ std::process::id().wrapping_mul(2_654_435_761);
        let _ = NEXT.compare_exchange(u32::MAX, seed % SPAN, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(format!("127.0.0.1:{port}"));
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no free port below the ephemeral range"))
}

/// One completed checkpoint as `/checkpoints` reports it.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct CheckpointStat {
    pub id: u64,
    pub status: String,
    pub trigger_time: i64,
    pub duration_ms: f64,
    pub size_bytes: f64,
    pub incremental_bytes: f64,
    #[serde(default)]
    pub terminal: bool,
    pub savepoint: Option<String>,
    /// The slowest subtask's synchronous part (its task thread not processing records).
    #[serde(default)]
    pub sync_ms: f64,
    #[serde(default)]
    pub subtasks: Vec<SubtaskStat>,
}

/// One subtask's part of a checkpoint.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct SubtaskStat {
    pub operator: String,
    pub subtask: usize,
    pub sync_ms: f64,
}

/// Polls a job's `/checkpoints` on a thread until [`finish`](Self::finish), keeping every entry it
/// saw by id (the endpoint keeps the last 100). A bounded job's periodic checkpoints all complete
/// before its terminal one is triggered, and that one takes longer than a poll interval, so the
/// periodic ones are all seen while the job still runs; the terminal one is seen unless the job
/// exits within a poll interval of completing it.
pub struct CheckpointWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeMap<u64, CheckpointStat>>>,
    thread: JoinHandle<()>,
}

impl CheckpointWatch {
    /// Starts polling `http://{addr}/checkpoints` every 20 ms (connection errors mean the job is
    /// not up yet or has gone, and are retried).
    pub fn start(addr: &str) -> Self {
        let url = format!("http://{addr}/checkpoints");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let (done, found) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let got =
                    ureq::get(&url).timeout(Duration::from_secs(1)).call().ok().and_then(|r| r.into_string().ok());
                if let Some(list) = got.and_then(|body| serde_json::from_str::<Vec<CheckpointStat>>(&body).ok()) {
                    let mut found = found.lock().unwrap_or_else(|e| e.into_inner());
                    for c in list {
                        found.insert(c.id, c);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        CheckpointWatch { stop, seen, thread }
    }

    /// The completed checkpoints seen so far, in id order.
    pub fn seen(&self) -> Vec<CheckpointStat> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.values().filter(|c| c.status == "completed" && c.savepoint.is_none()).cloned().collect()
    }

    /// Stops polling; returns the completed checkpoints (no savepoints) in id order, the
    /// terminal one a bounded job ends with included if it was seen (see [`CheckpointStat::terminal`]).
    pub fn finish(self) -> Vec<CheckpointStat> {
        self.stop.store(true, Ordering::Relaxed);
        let CheckpointWatch { seen, thread, .. } = self;
        let _ = thread.join();
        let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.values().filter(|c| c.status == "completed" && c.savepoint.is_none()).cloned().collect()
    }
}
