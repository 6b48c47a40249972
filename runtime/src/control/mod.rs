//! The job's HTTP control plane (`--metrics-addr`): the dashboard at `/` (`dashboard.rs`),
//! `GET /metrics` (Prometheus text, `prometheus.rs`), `GET /job` (`job.rs`), `GET /checkpoints`,
//! `GET /exceptions`, and `POST /savepoints`, which takes a savepoint and answers with its path
//! once it is complete. With a token (`--control-token`) every request must carry it (`auth.rs`).
//!
//! It runs on a small tokio runtime of its own thread, so it never competes with task threads.

mod auth;
mod dashboard;
mod job;
mod prometheus;

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

use crate::metrics::JobMetrics;

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

/// What `/job` reports of the graph.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct JobInfo {
    pub name: String,
    pub operators: Vec<OperatorInfo>,
    pub edges: Vec<EdgeInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct OperatorInfo {
    pub uid: String,
    pub name: String,
    pub parallelism: usize,
    /// Uid of the first operator of its task (chain).
    pub task: String,
}

/// An edge of the graph.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct EdgeInfo {
    pub from: String,
    pub to: String,
    /// `forward`, `hash`, `rebalance` or `broadcast`.
    pub partition: &'static str,
    /// A call inside one task rather than a channel between tasks.
    pub chained: bool,
}

/// A failure of a run of the job, as `/exceptions` shows it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ExceptionInfo {
    /// When it happened (epoch ms).
    pub time: i64,
    /// The error and its causes, outermost first.
    pub errors: Vec<String>,
    /// Whether the job restarts after it (else it failed for good).
    pub restarting: bool,
    /// The restart it led to (1 for the first).
    pub attempt: u32,
}

/// What the job restored from.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RestoreInfo {
    /// When (epoch ms).
    pub time: i64,
    /// The checkpoint or savepoint id.
    pub checkpoint_id: u64,
    /// `checkpoint` or `savepoint`.
    pub kind: &'static str,
    /// Its directory.
    pub path: String,
}

/// Shared between the coordinator (writer) and the control plane (reader).
#[derive(Clone)]
pub(crate) struct ControlState {
    pub metrics: JobMetrics,
    pub job: Arc<JobInfo>,
    pub checkpoints: Arc<Mutex<Vec<CheckpointInfo>>>,
    pub savepoints: Sender<SavepointRequest>,
    pub started: std::time::Instant,
    pub exceptions: Arc<Mutex<Vec<ExceptionInfo>>>,
    pub restore: Arc<Mutex<Option<RestoreInfo>>>,
    /// Every request must carry it, if set.
    pub token: Option<Arc<str>>,
}

impl ControlState {
    pub(crate) fn record(&self, info: CheckpointInfo) {
        let mut c = self.checkpoints.lock();
        c.push(info);
        let excess = c.len().saturating_sub(100);
        c.drain(..excess);
    }
}

async fn metrics(State(s): State<ControlState>) -> Response {
    ([("content-type", "text/plain; version=0.0.4")], prometheus::prometheus(&s)).into_response()
}

async fn exceptions(State(s): State<ControlState>) -> Json<Vec<ExceptionInfo>> {
    Json(s.exceptions.lock().clone())
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

/// Starts the control plane on `addr`; returns the address it listens on. An address other
/// than loopback needs a token: the endpoint can take savepoints and shows the job's insides.
pub(crate) fn start(addr: &str, state: ControlState) -> Result<SocketAddr> {
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("binding the control endpoint to {addr}"))?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() && state.token.is_none() {
        anyhow::bail!(
            "the control endpoint {addr} is not on loopback: give it a token with --control-token \
             (or WEIR_CONTROL_TOKEN), which every request must then carry"
        );
    }
    listener.set_nonblocking(true)?;
    let app = Router::new()
        .route("/", get(dashboard::index))
        .route("/metrics", get(metrics))
        .route("/job", get(job::job))
        .route("/checkpoints", get(checkpoints))
        .route("/exceptions", get(exceptions))
        .route("/savepoints", post(savepoint))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::check))
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
