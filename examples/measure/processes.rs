//! The network data plane's cost: `auction_windows` on the generator as one process against the
//! same job split over several processes on loopback (every record of a hash edge whose target
//! subtask is in another process is encoded, sent over TCP and decoded), interleaved runs,
//! medians.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Runs the job as `processes` processes of parallelism `p` and returns the wall time until the
/// last one ended.
fn run(job: &Path, dir: &Path, bids: u64, p: usize, processes: usize) -> Result<f64> {
    let peers: Vec<String> =
        (0..processes).map(|_| super::control::free_local_addr()).collect::<std::io::Result<_>>()?;
    let out = dir.join("processes-out");
    let started = Instant::now();
    let mut children = Vec::new();
    for i in 0..processes {
        let mut cmd = Command::new(job);
        cmd.args(["--generate", &bids.to_string(), "--parallelism", &p.to_string(), "--progress-interval", "0s"])
            .arg("--output")
            .arg(&out)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if processes > 1 {
            cmd.args(["--processes", &processes.to_string(), "--process-index", &i.to_string()]);
            cmd.args(["--peers", &peers.join(",")]);
        }
        children.push(cmd.spawn().context("starting auction_windows")?);
    }
    for c in children {
        let o = c.wait_with_output()?;
        if !o.status.success() {
            bail!("auction_windows failed: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&out);
    Ok(secs)
}

/// Prints the table: one row per (processes, parallelism), with the ratio to one process.
pub fn table(job: &Path, dir: &Path, bids: u64, runs: usize) -> Result<()> {
    let settings = [(1, 2), (2, 2), (2, 4)];
    println!("\nSeveral processes on loopback (generator, {bids} bids, median of {runs} interleaved runs):\n");
    println!("| processes | parallelism | median s | bids/s | vs 1 process |");
    println!("|---:|---:|---:|---:|---:|");
    let mut secs = vec![Vec::new(); settings.len()];
    for _ in 0..runs {
        for (k, &(n, p)) in settings.iter().enumerate() {
            secs[k].push(run(job, dir, bids, p, n)?);
        }
    }
    let medians: Vec<f64> = secs.into_iter().map(|v| super::percentile(v, 0.5).unwrap_or(f64::NAN)).collect();
    for (k, &(n, p)) in settings.iter().enumerate() {
        let ratio = medians[0] / medians[k];
        println!("| {n} | {p} | {:.2} | {:.0} | {ratio:.2}× |", medians[k], bids as f64 / medians[k]);
    }
    Ok(())
}
