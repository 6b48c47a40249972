//! `GET /metrics`: counters, gauges, checkpoints and network channels in Prometheus text.

use super::ControlState;
use crate::metrics::SubtaskSample;

/// A Prometheus label value: backslashes, quotes and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A metric name from an operator's counter name.
fn metric_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}

/// One histogram series: buckets by upper bound (`u64::MAX` for `+Inf`), not cumulative.
#[derive(Default)]
struct Series {
    buckets: std::collections::BTreeMap<u64, u64>,
    sum: u64,
    count: u64,
}

type Histograms = std::collections::BTreeMap<String, std::collections::BTreeMap<(String, usize), Series>>;

/// Splits the counters that make up histograms (`<name>.bucket.<le>`, `<name>.sum`,
/// `<name>.count`, see `OperatorContext::histogram`) from the others.
fn histograms(counters: &[(crate::metrics::CounterKey, u64)]) -> (Histograms, Vec<(crate::metrics::CounterKey, u64)>) {
    let bases: std::collections::BTreeSet<&str> =
        counters.iter().filter_map(|((_, _, n), _)| n.split_once(".bucket.").map(|(b, _)| b)).collect();
    let mut hist = Histograms::new();
    let mut rest = Vec::new();
    for ((uid, subtask, name), v) in counters {
        let (base, part) = name.rsplit_once('.').map_or((name.as_str(), ""), |(b, p)| (b, p));
        if let Some((b, le)) = name.split_once(".bucket.") {
            let le = if le == "+Inf" { u64::MAX } else { le.parse().unwrap_or(u64::MAX) };
            let s = hist.entry(metric_name(b)).or_default().entry((uid.clone(), *subtask)).or_default();
            *s.buckets.entry(le).or_default() += v;
        } else if bases.contains(base) && (part == "sum" || part == "count") {
            let s = hist.entry(metric_name(base)).or_default().entry((uid.clone(), *subtask)).or_default();
            if part == "sum" {
                s.sum += v;
            } else {
                s.count += v;
            }
        } else {
            rest.push(((uid.clone(), *subtask, name.clone()), *v));
        }
    }
    (hist, rest)
}

pub(super) fn prometheus(s: &ControlState) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    // Counters per operator subtask, grouped by name as the format requires.
    // The whole job: with several processes, process 0 shows what the others reported too.
    let view = s.metrics.job_view();
    let (histograms, counters) = histograms(&view.counters);
    let mut by_name: std::collections::BTreeMap<String, Vec<(String, usize, u64)>> = Default::default();
    for ((uid, subtask, name), v) in counters {
        by_name.entry(metric_name(&name)).or_default().push((uid, subtask, v));
    }
    for (name, rows) in by_name {
        let _ = writeln!(out, "# TYPE weir_{name}_total counter");
        for (uid, subtask, v) in rows {
            let _ = writeln!(out, "weir_{name}_total{{operator=\"{}\",subtask=\"{subtask}\"}} {v}", label(&uid));
        }
    }
    for (name, series) in histograms {
        let _ = writeln!(out, "# TYPE weir_{name} histogram");
        for ((uid, subtask), h) in series {
            let labels = format!("operator=\"{}\",subtask=\"{subtask}\"", label(&uid));
            let mut below = 0;
            for (le, n) in &h.buckets {
                below += n;
                let le = if *le == u64::MAX { "+Inf".to_string() } else { le.to_string() };
                let _ = writeln!(out, "weir_{name}_bucket{{{labels},le=\"{le}\"}} {below}");
            }
            let _ = writeln!(out, "weir_{name}_sum{{{labels}}} {}\nweir_{name}_count{{{labels}}} {}", h.sum, h.count);
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
