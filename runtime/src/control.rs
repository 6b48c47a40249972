//! The job's HTTP control plane (`--metrics-addr`): `GET /metrics` (Prometheus text),
//! `GET /job`, `GET /checkpoints`, and `POST /savepoints`, which takes a savepoint and answers
//! with its path once it is complete.
//!
//! It runs on a small tokio runtime of its own thread, so it never competes with task threads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use crossbeam_channel::Sender;
use parking_lot::Mutex;
use serde::Serialize;

use crate::metrics::{JobMetrics, SubtaskSample};

/// A request for a savepoint, answered with its path once complete.
pub(crate) struct SavepointRequest {
    pub reply: Sender<Result<String, String>>,
}

/// What `/checkpoints` reports about one checkpoint (and [`JobResult::checkpoints`](crate::JobResult)
/// keeps of it once the job ended).
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckpointInfo {
    /// The checkpoint id.
    pub id: u64,
    /// `completed`, `failed` or `expired`.
    pub status: &'static str,
    /// Epoch ms at which the barriers were injected.
    pub trigger_time: i64,
    /// End to end: from the trigger to the checkpoint's metadata being stored.
    pub duration_ms: u64,
    /// The job ends once this checkpoint completes (the final checkpoint of a bounded job, or
    /// stop-with-savepoint); the others are periodic or requested savepoints.
    pub terminal: bool,
    /// Bytes the checkpoint refers to (shared files included).
    pub size_bytes: u64,
    /// Bytes this checkpoint stored anew.
    pub incremental_bytes: u64,
    /// The slowest subtask's barrier alignment.
    pub alignment_ms: f64,
    /// The slowest subtask's synchronous part (its task thread not processing records).
    pub sync_ms: f64,
    /// The slowest subtask's asynchronous part (storing its files).
    pub async_ms: f64,
    /// Where the savepoint was written, if this was one.
    pub savepoint: Option<String>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Every subtask's part.
    pub subtasks: Vec<SubtaskCheckpointInfo>,
}

/// One subtask's part of a checkpoint.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SubtaskCheckpointInfo {
    /// The operator's uid.
    pub operator: String,
    /// The subtask index.
    pub subtask: usize,
    /// From the trigger to the subtask's acknowledgement (its barrier arrived and it snapshotted).
    pub ack_ms: f64,
    /// Its barrier alignment.
    pub alignment_ms: f64,
    /// Its synchronous part.
    pub sync_ms: f64,
    /// Its asynchronous part.
    pub async_ms: f64,
    /// Bytes its snapshot refers to.
    pub size_bytes: u64,
    /// Bytes it stored anew.
    pub incremental_bytes: u64,
}

/// What `/job` reports.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct JobInfo {
    pub name: String,
    pub operators: Vec<OperatorInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct OperatorInfo {
    pub uid: String,
    pub name: String,
    pub parallelism: usize,
}

/// Shared between the coordinator (writer) and the control plane (reader).
#[derive(Clone)]
pub(crate) struct ControlState {
    pub metrics: JobMetrics,
    pub job: Arc<JobInfo>,
    pub checkpoints: Arc<Mutex<Vec<CheckpointInfo>>>,
    pub savepoints: Sender<SavepointRequest>,
    pub started: std::time::Instant,
}

impl ControlState {
    pub(crate) fn record(&self, info: CheckpointInfo) {
        let mut c = self.checkpoints.lock();
        c.push(info);
        let excess = c.len().saturating_sub(100);
        c.drain(..excess);
    }
}

/// A Prometheus label value: backslashes, quotes and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A metric name from an operator's counter name.
fn metric_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}

fn prometheus(s: &ControlState) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    // Counters per operator subtask, grouped by name as the format requires.
    // The whole job: with several processes, process 0 shows what the others reported too.
    let view = s.metrics.job_view();
    let mut by_name: std::collections::BTreeMap<String, Vec<(String, usize, u64)>> = Default::default();
    for ((uid, subtask, name), v) in view.counters.iter().cloned() {
        by_name.entry(metric_name(&name)).or_default().push((uid, subtask, v));
    }
    for (name, rows) in by_name {
        let _ = writeln!(out, "# TYPE weir_{name}_total counter");
        for (uid, subtask, v) in rows {
            let _ = writeln!(out, "weir_{name}_total{{operator=\"{}\",subtask=\"{subtask}\"}} {v}", label(&uid));
        }
    }
    type Gauge = (&'static str, &'static str, fn(&SubtaskSample) -> Option<f64>);
    let gauges: [Gauge; 7] = [
        ("records_in_per_second", "Records received per second.", |t| Some(t.records_in_per_sec)),
        ("records_out_per_second", "Records emitted per second.", |t| Some(t.records_out_per_sec)),
        ("busy_time_ms_per_second", "Milliseconds of each second the task worked.", |t| Some(t.busy_ms_per_sec)),
        (
            "backpressured_time_ms_per_second",
            "Milliseconds of each second the task was blocked on full output channels.",
            |t| Some(t.backpressured_ms_per_sec),
        ),
        ("idle_time_ms_per_second", "Milliseconds of each second the task waited for input.", |t| {
            Some(t.idle_ms_per_sec)
        }),
        ("input_queue_fill", "How full the task's input channels are (0 to 1).", |t| Some(t.input_fill)),
        ("watermark_ms", "Event-time watermark (epoch ms).", |t| t.watermark.map(|w| w as f64)),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(out, "# HELP weir_{name} {help}\n# TYPE weir_{name} gauge");
        for t in &view.subtasks {
            if let Some(v) = get(t) {
                let _ = writeln!(
                    out,
                    "weir_{name}{{operator=\"{}\",subtask=\"{}\",task=\"{}\"}} {v}",
                    label(&t.uid),
                    t.subtask,
                    label(&t.task)
                );
            }
        }
    }
    if let Some(wm) = view.watermark {
        let _ = writeln!(out, "# HELP weir_job_watermark_ms The lowest watermark of the job.\n# TYPE weir_job_watermark_ms gauge\nweir_job_watermark_ms {wm}");
    }
    network(&mut out, &view.channels);
    let checkpoints = s.checkpoints.lock();
    let _ = writeln!(out, "# TYPE weir_checkpoints_total counter");
    for status in ["completed", "failed", "timed out"] {
        let n = checkpoints.iter().filter(|c| c.status == status).count();
        let _ = writeln!(out, "weir_checkpoints_total{{status=\"{status}\"}} {n}");
    }
    if let Some(c) = checkpoints.iter().rev().find(|c| c.status == "completed") {
        let last: [(&str, f64); 6] = [
            ("id", c.id as f64),
            ("duration_ms", c.duration_ms as f64),
            ("size_bytes", c.size_bytes as f64),
            ("incremental_bytes", c.incremental_bytes as f64),
            ("alignment_ms", c.alignment_ms),
            ("sync_ms", c.sync_ms),
        ];
        for (name, v) in last {
            let _ = writeln!(out, "# TYPE weir_last_checkpoint_{name} gauge\nweir_last_checkpoint_{name} {v}");
        }
    }
    out
}

/// Channels to and from other processes: bytes, records and (sending) time waiting for credits.
fn network(out: &mut String, channels: &[(crate::metrics::ChannelKey, [u64; 3])]) {
    use std::fmt::Write;
    if channels.is_empty() {
        return;
    }
    // (name, help, value from (bytes, records, backpressure ns), sender side only)
    type Family = (&'static str, &'static str, fn(&[u64; 3]) -> f64, bool);
    let families: [Family; 3] = [
        (
            "network_bytes_total",
            "Bytes of stream elements sent to or received from another process.",
            |v| v[0] as f64,
            false,
        ),
        ("network_records_total", "Records sent to or received from another process.", |v| v[1] as f64, false),
        (
            "network_backpressured_ms_total",
            "Milliseconds a sender waited for credits of a channel.",
            |v| v[2] as f64 / 1e6,
            true,
        ),
    ];
    for (name, help, get, out_only) in families {
        let _ = writeln!(out, "# HELP weir_{name} {help}\n# TYPE weir_{name} counter");
        for (k, v) in channels.iter().filter(|(k, _)| !out_only || k.direction == "out") {
            let _ = writeln!(
                out,
                "weir_{name}{{process=\"{}\",direction=\"{}\",from=\"{}\",from_subtask=\"{}\",to=\"{}\",to_subtask=\"{}\",peer=\"{}\"}} {}",
                k.process,
                k.direction,
                label(&k.from),
                k.from_subtask,
                label(&k.to),
                k.to_subtask,
                k.peer,
                get(v)
            );
        }
    }
}

async fn metrics(State(s): State<ControlState>) -> Response {
    ([("content-type", "text/plain; version=0.0.4")], prometheus(&s)).into_response()
}

/// `/job`: the graph, and per operator its subtasks' counts, rates, watermarks and time split.
async fn job(State(s): State<ControlState>) -> Json<serde_json::Value> {
    let view = s.metrics.job_view();
    let operators: Vec<serde_json::Value> = s
        .job
        .operators
        .iter()
        .map(|op| {
            let subs: Vec<&SubtaskSample> = view.subtasks.iter().filter(|t| t.uid == op.uid).collect();
            let sum = |f: fn(&SubtaskSample) -> f64| subs.iter().map(|t| f(t)).sum::<f64>();
            let max = |f: fn(&SubtaskSample) -> f64| subs.iter().map(|t| f(t)).fold(0.0, f64::max);
            let watermark = if subs.iter().all(|t| t.watermark.is_some()) {
                subs.iter().filter_map(|t| t.watermark).min()
            } else {
                None
            };
            serde_json::json!({
                "uid": op.uid,
                "name": op.name,
                "parallelism": op.parallelism,
                "task": subs.first().map(|t| t.task.clone()),
                "records_in": subs.iter().map(|t| t.records_in).sum::<u64>(),
                "records_out": subs.iter().map(|t| t.records_out).sum::<u64>(),
                "records_in_per_sec": sum(|t| t.records_in_per_sec),
                "records_out_per_sec": sum(|t| t.records_out_per_sec),
                "watermark": watermark,
                "busy_ms_per_sec": max(|t| t.busy_ms_per_sec),
                "backpressured_ms_per_sec": max(|t| t.backpressured_ms_per_sec),
                "idle_ms_per_sec": max(|t| t.idle_ms_per_sec),
                "input_fill": max(|t| t.input_fill),
                "subtasks": subs,
            })
        })
        .collect();
    Json(serde_json::json!({
        "name": s.job.name,
        "uptime_ms": s.started.elapsed().as_millis() as u64,
        "watermark": view.watermark,
        "operators": operators,
        "counters": summed(&view.counters),
    }))
}

/// Counters summed over subtasks, by `<uid>.<name>`.
fn summed(counters: &[(crate::metrics::CounterKey, u64)]) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for ((uid, _, name), v) in counters {
        *out.entry(format!("{uid}.{name}")).or_insert(0) += v;
    }
    out
}

async fn checkpoints(State(s): State<ControlState>) -> Json<Vec<CheckpointInfo>> {
    Json(s.checkpoints.lock().clone())
}

async fn savepoint(State(s): State<ControlState>) -> Response {
    let (tx, rx) = crossbeam_channel::bounded(1);
    if s.savepoints.send(SavepointRequest { reply: tx }).is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"error": "the job is not running"})))
            .into_response();
    }
    let answer = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(600))).await;
    match answer {
        Ok(Ok(Ok(path))) => Json(serde_json::json!({"path": path})).into_response(),
        Ok(Ok(Err(e))) => (StatusCode::INTERNAL_SERVER_ERROR, Json(serde_json::json!({"error": e}))).into_response(),
        _ => (StatusCode::GATEWAY_TIMEOUT, Json(serde_json::json!({"error": "the savepoint did not complete"})))
            .into_response(),
    }
}

/// Starts the control plane on `addr`; returns the address it listens on.
pub(crate) fn start(addr: &str, state: ControlState) -> Result<SocketAddr> {
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("binding the control endpoint to {addr}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/job", get(job))
        .route("/checkpoints", get(checkpoints))
        .route("/savepoints", post(savepoint))
        .with_state(state);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("weir-control".into()).spawn(move || {
        rt.block_on(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => {
                    if let Err(e) = axum::serve(l, app).await {
                        tracing::error!(error = %e, "control endpoint stopped");
                    }
                }
                Err(e) => tracing::error!(error = %e, "control endpoint failed to start"),
            }
        })
    })?;
    Ok(local)
}
