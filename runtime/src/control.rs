//! The job's HTTP control plane (`--metrics-addr`): `GET /metrics` (Prometheus text),
//! `GET /job`, `GET /checkpoints`, and `POST /savepoints`, which takes a savepoint and answers
//! with its path once it is complete.
//!
//! It runs on a small tokio runtime of its own thread, so it never competes with task threads.

use std::net::SocketAddr;
use std::path::PathBuf;
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
    pub reply: Sender<Result<PathBuf, String>>,
}

/// What `/checkpoints` reports about one checkpoint.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct CheckpointInfo {
    pub id: u64,
    pub status: &'static str,
    pub trigger_time: i64,
    pub duration_ms: u64,
    pub savepoint: Option<String>,
    pub error: Option<String>,
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
}

impl ControlState {
    pub(crate) fn record(&self, info: CheckpointInfo) {
        let mut c = self.checkpoints.lock();
        c.push(info);
        let excess = c.len().saturating_sub(100);
        c.drain(..excess);
    }
}

fn prometheus(metrics: &JobMetrics) -> String {
    let mut out = String::new();
    let mut seen = std::collections::BTreeSet::new();
    for (name, value) in metrics.counters() {
        let (uid, metric) = name.rsplit_once('.').unwrap_or(("job", name.as_str()));
        let metric: String = metric.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        if seen.insert(metric.clone()) {
            out.push_str(&format!("# TYPE weir_{metric} counter\n"));
        }
        out.push_str(&format!("weir_{metric}{{operator=\"{uid}\"}} {value}\n"));
    }
    if let Some(wm) = metrics.min_watermark() {
        out.push_str(&format!("# TYPE weir_watermark gauge\nweir_watermark {wm}\n"));
    }
    out
}

async fn metrics(State(s): State<ControlState>) -> Response {
    ([("content-type", "text/plain; version=0.0.4")], prometheus(&s.metrics)).into_response()
}

async fn job(State(s): State<ControlState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "job": &*s.job,
        "counters": s.metrics.counters(),
        "watermark": s.metrics.min_watermark(),
    }))
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
