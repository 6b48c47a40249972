//! Throughput and memory of `auction_windows`, on the generator and on a JSON-lines file, at
//! parallelism 1 and 2. Each run is a separate process (so peak RSS is its own); the table shows
//! the median of the runs.
//!
//! ```text
//! cargo build --release --examples && target/release/examples/bench --bids 2000000 --runs 3
//! ```

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use weir::operators::sources::nexmark::{bid_event_number, generate_event};
use weir::prelude::*;

/// Measures auction_windows: bids/s and peak RSS, median of several runs.
#[derive(Parser, Debug)]
#[command(name = "bench")]
struct Cli {
    /// Bids per run.
    #[arg(long, default_value_t = 2_000_000)]
    bids: u64,
    /// Runs per configuration (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Parallelisms to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    parallelism: Vec<usize>,
    /// Work directory (input file and outputs) [default: a temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
}

struct Run {
    secs: f64,
    max_rss_kib: i64,
}

fn run_child(cmd: &mut Command) -> Result<Run> {
    let started = Instant::now();
    let child = cmd.spawn().context("starting auction_windows")?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our own child, and status/usage point to live locals.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let secs = started.elapsed().as_secs_f64();
    if pid < 0 {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("auction_windows failed with status {status}");
    }
    Ok(Run { secs, max_rss_kib: usage.ru_maxrss })
}

fn write_bids(path: &Path, n: u64) -> Result<()> {
    let cfg = NexmarkConfig::default();
    let mut w = BufWriter::new(std::fs::File::create(path)?);
    for k in 0..n {
        if let Event::Bid(b) = generate_event(&cfg, bid_event_number(k)) {
            serde_json::to_writer(&mut w, &b)?;
            w.write_all(b"\n")?;
        }
    }
    w.flush()?;
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let exe = std::env::current_exe()?;
    let job = exe.with_file_name("auction_windows");
    if !job.exists() {
        bail!("{} not found: build it with `cargo build --release --examples`", job.display());
    }
    let tmp = tempfile::tempdir()?;
    let dir = cli.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("bids.jsonl");
    eprintln!("writing {} bids to {}", cli.bids, input.display());
    write_bids(&input, cli.bids)?;
    let size_mb = std::fs::metadata(&input)?.len() as f64 / 1e6;

    println!("| source | parallelism | bids | median s | bids/s | peak RSS MiB |");
    println!("|---|---:|---:|---:|---:|---:|");
    for source in ["generator", "file"] {
        for &p in &cli.parallelism {
            let mut secs = Vec::new();
            let mut rss = Vec::new();
            for r in 0..cli.runs {
                let out = dir.join(format!("out-{source}-{p}-{r}"));
                let mut cmd = Command::new(&job);
                cmd.arg("--output")
                    .arg(&out)
                    .arg("--parallelism")
                    .arg(p.to_string())
                    .arg("--progress-interval")
                    .arg("0s");
                match source {
                    "generator" => cmd.arg("--generate").arg(cli.bids.to_string()),
                    _ => cmd.arg("--input").arg(&input),
                };
                cmd.env("RUST_LOG", "warn");
                let run = run_child(&mut cmd)?;
                secs.push(run.secs);
                rss.push(run.max_rss_kib as f64 / 1024.0);
                let _ = std::fs::remove_dir_all(&out);
            }
            let s = median(secs);
            println!("| {source} | {p} | {} | {s:.2} | {:.0} | {:.0} |", cli.bids, cli.bids as f64 / s, median(rss));
        }
    }
    println!(
        "\ninput file: {size_mb:.0} MB; machine: {} cores",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    Ok(())
}
