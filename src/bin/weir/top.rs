//! `weir top`: a terminal view of a running job, drawn from its control endpoint's `/job` and
//! `/checkpoints`, refreshed every interval.

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::Value;

fn get(agent: &ureq::Agent, base: &str, path: &str, token: Option<&str>) -> Result<Value> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut req = agent.get(&url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let r = req.call().with_context(|| format!("could not reach {url}"))?;
    r.into_json().with_context(|| format!("{url} did not answer JSON"))
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A count per second, short: `1.23M`, `45.6K`, `789`.
fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}K", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn bytes(v: u64) -> String {
    match v {
        v if v >= 1 << 30 => format!("{:.1} GiB", v as f64 / (1u64 << 30) as f64),
        v if v >= 1 << 20 => format!("{:.1} MiB", v as f64 / (1u64 << 20) as f64),
        v if v >= 1 << 10 => format!("{:.1} KiB", v as f64 / 1024.0),
        v => format!("{v} B"),
    }
}

/// How far a watermark is behind the wall clock, or the watermark itself when it is far from
/// it (replays of old data).
fn watermark(w: Option<i64>, now: i64) -> String {
    match w {
        None => "-".into(),
        Some(w) if w >= i64::MAX / 2 => "end".into(),
        Some(w) => {
            let lag = (now - w) as f64 / 1000.0;
            if (0.0..3600.0).contains(&lag) {
                format!("lag {lag:.1}s")
            } else {
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(w.max(0) as u64)).to_string()
            }
        }
    }
}

/// One frame of the view.
pub(crate) fn frame(job: &Value, checkpoints: &Value, now: i64) -> String {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "job {}   up {}s   watermark {}",
        job["name"].as_str().unwrap_or("?"),
        job["uptime_ms"].as_u64().unwrap_or(0) / 1000,
        watermark(job["watermark"].as_i64(), now),
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<24} {:>3} {:>10} {:>10} {:>6} {:>6} {:>6} {:>6}  WATERMARK",
        "OPERATOR", "P", "IN/s", "OUT/s", "BUSY", "BACKPR", "IDLE", "QUEUE"
    );
    for op in job["operators"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<24} {:>3} {:>10} {:>10} {:>5.0}% {:>5.0}% {:>5.0}% {:>5.0}%  {}",
            op["uid"].as_str().unwrap_or("?").chars().take(24).collect::<String>(),
            op["parallelism"].as_u64().unwrap_or(0),
            rate(f(op, "records_in_per_sec")),
            rate(f(op, "records_out_per_sec")),
            f(op, "busy_ms_per_sec") / 10.0,
            f(op, "backpressured_ms_per_sec") / 10.0,
            f(op, "idle_ms_per_sec") / 10.0,
            f(op, "input_fill") * 100.0,
            watermark(op["watermark"].as_i64(), now),
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:>6} {:<10} {:>9} {:>11} {:>11} {:>8} {:>8} {:>8}",
        "CHK", "STATUS", "DURATION", "SIZE", "NEW", "ALIGN", "SYNC", "ASYNC"
    );
    let list = checkpoints.as_array().cloned().unwrap_or_default();
    for c in list.iter().rev().take(5) {
        let _ = writeln!(
            out,
            "{:>6} {:<10} {:>7}ms {:>11} {:>11} {:>6.0}ms {:>6.0}ms {:>6.0}ms",
            c["id"].as_u64().unwrap_or(0),
            c["status"].as_str().unwrap_or("?"),
            c["duration_ms"].as_u64().unwrap_or(0),
            bytes(c["size_bytes"].as_u64().unwrap_or(0)),
            bytes(c["incremental_bytes"].as_u64().unwrap_or(0)),
            f(c, "alignment_ms"),
            f(c, "sync_ms"),
            f(c, "async_ms"),
        );
    }
    if list.is_empty() {
        let _ = writeln!(out, "{:>6} (no checkpoint yet)", "-");
    }
    out
}

/// Draws the view every `interval` until interrupted; with `once`, prints one frame and returns.
pub(crate) fn run(job: &str, interval: Duration, once: bool, token: Option<&str>) -> Result<()> {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
    loop {
        let view = get(&agent, job, "/job", token).and_then(|j| Ok((j, get(&agent, job, "/checkpoints", token)?)));
        match view {
            Ok((j, c)) => {
                let text = frame(&j, &c, now_ms());
                if once {
                    print!("{text}");
                    return Ok(());
                }
                // Clear the screen and home the cursor, then draw.
                print!("\x1b[2J\x1b[H{text}");
            }
            Err(e) if once => return Err(e),
            Err(e) => println!("\x1b[2J\x1b[H{job}: {e:#} (retrying)"),
        }
        std::io::Write::flush(&mut std::io::stdout())?;
        std::thread::sleep(interval);
    }
}
