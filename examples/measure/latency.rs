//! End-to-end latency of `auction_windows` into files: a live run (event time = wall clock) at a
//! given rate, with its sink's `weir_commit_latency_ms` histogram read from `/metrics` while it
//! runs, and percentiles interpolated within its buckets.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Percentiles of one run.
pub struct Latency {
    pub rows: f64,
    /// Checkpoints completed while measuring.
    pub checkpoints: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Cumulative buckets `(le, count)` of `metric` summed over the series of `operator`.
fn buckets(text: &str, metric: &str, operator: &str) -> Vec<(f64, f64)> {
    let mut by_le: std::collections::BTreeMap<u64, f64> = Default::default();
    let op = format!("operator=\"{operator}\"");
    for line in text.lines().filter(|l| l.starts_with(&format!("{metric}_bucket{{")) && l.contains(&op)) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let Some(le) = labels.split("le=\"").nth(1).and_then(|s| s.split('"').next()) else { continue };
        let le = if le == "+Inf" { u64::MAX } else { le.parse().unwrap_or(u64::MAX) };
        *by_le.entry(le).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    by_le.into_iter().map(|(le, n)| (if le == u64::MAX { f64::INFINITY } else { le as f64 }, n)).collect()
}

/// The `p` quantile of cumulative buckets, linear within its bucket.
fn quantile(b: &[(f64, f64)], p: f64) -> f64 {
    let total = b.last().map_or(0.0, |x| x.1);
    let want = total * p;
    let mut below = (0.0, 0.0);
    for &(le, n) in b {
        if n >= want {
            if le.is_infinite() {
                return below.0;
            }
            let frac = if n > below.1 { (want - below.1) / (n - below.1) } else { 1.0 };
            return below.0 + frac * (le - below.0);
        }
        below = (le, n);
    }
    f64::NAN
}

/// Runs `job` live at `rate` bids/s (parallelism 2, checkpoints every `interval`) for `secs`,
/// without out-of-orderness (a window closes at its end), and reads the window sink's latency
/// histogram just before stopping it; the first `warmup` seconds are subtracted.
///
/// Windows are 1.3 s long, so that their ends fall at every phase of a 1 s checkpoint cycle: with
/// 1 s windows every row of a run would meet the checkpoints at the same phase, and a run would
/// measure that phase (its luck), not the distribution.
pub fn run(job: &Path, dir: &Path, rate: u64, secs: u64, interval: &str, min_pause: &str) -> Result<Latency> {
    let addr = super::control::free_local_addr()?;
    let mut child = Command::new(job)
        .args(["--generate", &(rate * (secs + 60)).to_string(), "--rate", &rate.to_string(), "--live"])
        .args(["--max-delay-ms", "0", "--window", "1300ms", "-p", "2", "--progress-interval", "0s"])
        .arg("--output")
        .arg(dir.join("out"))
        .arg("--checkpoint-dir")
        .arg(dir.join("chk"))
        .args(["--checkpoint-interval", interval, "--min-pause", min_pause, "--metrics-addr", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting auction_windows")?;
    // The sink's latency buckets, and the checkpoints completed so far.
    let scrape = || -> Result<(Vec<(f64, f64)>, f64)> {
        let text = ureq::get(&format!("http://{addr}/metrics")).call()?.into_string()?;
        let completed = text
            .lines()
            .find_map(|l| l.strip_prefix("weir_checkpoints_total{status=\"completed\"} "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0.0);
        Ok((buckets(&text, "weir_commit_latency_ms", "window-sink"), completed))
    };
    let started = Instant::now();
    let warm = loop {
        std::thread::sleep(Duration::from_millis(200));
        if child.try_wait()?.is_some() {
            bail!("auction_windows ended early");
        }
        if started.elapsed() >= Duration::from_secs(5) {
            break scrape().unwrap_or_default();
        }
    };
    std::thread::sleep(Duration::from_secs(secs));
    let end = scrape();
    let _ = child.kill();
    let _ = child.wait();
    let ((end, end_checkpoints), (warm, warm_checkpoints)) = (end?, warm);
    // What committed after the warm-up: the end's cumulative counts minus the warm-up's.
    let diff: Vec<(f64, f64)> =
        end.iter().map(|(le, n)| (*le, n - warm.iter().find(|(l, _)| l == le).map_or(0.0, |w| w.1))).collect();
    let rows = diff.last().map_or(0.0, |x| x.1);
    if rows == 0.0 {
        bail!("no rows committed in {secs} s");
    }
    Ok(Latency {
        rows,
        checkpoints: end_checkpoints - warm_checkpoints,
        p50_ms: quantile(&diff, 0.5),
        p99_ms: quantile(&diff, 0.99),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantiles_interpolate_within_buckets() {
        let b = [(100.0, 0.0), (200.0, 50.0), (300.0, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(super::quantile(&b, 0.5), 200.0);
        assert_eq!(super::quantile(&b, 0.75), 250.0);
    }
}
