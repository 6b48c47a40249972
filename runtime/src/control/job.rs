//! `GET /job`: the graph (operators, their tasks, the edges and their partitioning) and per
//! operator its subtasks' counts, rates, watermarks and time split; the latest restore.

use axum::extract::State;
use axum::Json;

use super::ControlState;
use crate::metrics::SubtaskSample;

/// `/job`: the graph, and per operator its subtasks' counts, rates, watermarks and time split.
pub(super) async fn job(State(s): State<ControlState>) -> Json<serde_json::Value> {
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
                "task": op.task,
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
        "now_ms": crate::time::now_millis(),
        "uptime_ms": s.started.elapsed().as_millis() as u64,
        "watermark": view.watermark,
        "operators": operators,
        "edges": s.job.edges,
        "restored_from": *s.restore.lock(),
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
