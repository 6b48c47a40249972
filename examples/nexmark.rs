//! The Nexmark benchmark: queries q0, q1, q2, q3, q4, q5, q7 and q8 over the built-in generator,
//! with RocksDB state and checkpoints, at several parallelisms. Each run is a child process (so
//! its peak RSS is its own); the table shows medians over the runs.
//!
//! ```text
//! cargo build --release --examples
//! target/release/examples/nexmark --events 20000000 --runs 3          # the table
//! target/release/examples/nexmark run --query q5 --events 1000000 -p 2 # one query, this process
//! ```
//!
//! The queries live in the library (`weir::nexmark`); every query ends in a sink that counts its
//! rows and adds up a hash of each, so a run also says *what* it computed: the digest must not
//! depend on the parallelism.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use weir::nexmark::{build, Digest, Event, NexmarkConfig, NexmarkSource, Query};
use weir::prelude::*;

mod measure;
use measure::percentile;

// The allocator matters for a runtime that moves millions of small records a second: mimalloc
// halves the time glibc's malloc takes here (see the README's performance notes).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Nexmark queries on weir: events/s, events/s per core, peak RSS and checkpoint durations.
#[derive(Parser, Debug)]
#[command(name = "nexmark", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs one query in this process and prints a JSON summary line.
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Queries to run.
    #[arg(long, value_delimiter = ',', default_value = "q0,q1,q2,q3,q4,q5,q7,q8")]
    queries: Vec<Query>,
    /// Parallelisms to run each query at.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    parallelism: Vec<usize>,
    /// Generated events per run (people, auctions and bids, 1:3:46).
    #[arg(long, default_value_t = 20_000_000)]
    events: u64,
    /// Runs per configuration; the table shows medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Checkpoint interval of every run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    checkpoint_interval: Duration,
    /// Memory budget handed to every run.
    #[arg(long, value_name = "BYTES", default_value = "1GiB")]
    memory_budget: String,
    /// Work directory for checkpoints and state [default: a temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The query.
    #[arg(long)]
    query: Query,
    /// Generated events.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    job: JobArgs,
}

/// What a child run reports on its last stdout line.
#[derive(Debug, Serialize, Deserialize)]
struct Summary {
    query: String,
    parallelism: usize,
    events: u64,
    seconds: f64,
    rows: u64,
    digest: String,
    /// Logical bytes of keyed state written (the `store` query).
    state_bytes: u64,
    /// End-to-end durations of the completed checkpoints (the final one included), as the job's
    /// checkpoint history (`/checkpoints`) has them.
    checkpoint_ms: Vec<f64>,
}

fn run_query(args: RunArgs) -> Result<()> {
    let cfg = NexmarkConfig { seed: args.seed, limit: Some(args.events), ..NexmarkConfig::default() };
    let env = StreamEnv::new(args.job.clone());
    // Two source subtasks drift apart on two shared cores; alignment keeps windows and joins from
    // holding state for the skew.
    let strategy = WatermarkStrategy::for_monotonous_timestamps()
        .with_timestamp_assigner(|e: &Event| e.date_time())
        .with_watermark_alignment(Duration::from_secs(2));
    let events = env.add_source("nexmark", NexmarkSource::new(cfg), strategy).uid("nexmark");
    let digest = Digest::default();
    build(args.query, &events, &digest);
    let started = Instant::now();
    let result = env.execute(&format!("nexmark-{}", args.query.name()))?;
    let seconds = started.elapsed().as_secs_f64();
    let generated = result.counter("nexmark.records_out");
    if generated != args.events {
        bail!("the generator emitted {generated} events, not {}", args.events);
    }
    let (rows, sum) = digest.get();
    let summary = Summary {
        query: args.query.name().into(),
        parallelism: args.job.parallelism,
        events: generated,
        seconds,
        rows,
        digest: format!("{sum:016x}"),
        state_bytes: result.counter("store.state_bytes"),
        checkpoint_ms: result
            .checkpoints
            .iter()
            .filter(|c| c.status == "completed" && c.savepoint.is_none())
            .map(|c| c.duration_ms as f64)
            .collect(),
    };
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

struct Child {
    summary: Summary,
    max_rss_kib: i64,
}

fn run_child(cmd: &mut Command) -> Result<Child> {
    let out_file = tempfile::NamedTempFile::new()?;
    let err_file = tempfile::NamedTempFile::new()?;
    let child = cmd.stdout(out_file.reopen()?).stderr(err_file.reopen()?).spawn().context("starting a run")?;
    let run = measure::wait_measured(&child).context("waiting for a run")?;
    let stdout = std::fs::read_to_string(out_file.path())?;
    let stderr = std::fs::read_to_string(err_file.path())?;
    if !run.status.success() {
        bail!("the run failed with {}: {stderr}", run.status);
    }
    let line = stdout.lines().last().context("the run printed no summary")?;
    let summary: Summary = serde_json::from_str(line).with_context(|| format!("summary line {line:?}"))?;
    Ok(Child { max_rss_kib: run.max_rss_kib, summary })
}

fn bench(b: BenchArgs) -> Result<()> {
    let exe = std::env::current_exe()?;
    let tmp = tempfile::tempdir()?;
    let dir = b.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "| query | what | p | events | median s | events/s | events/s per core | peak RSS MiB | checkpoints | checkpoint p50 ms | checkpoint p99 ms | rows | digest | state MiB |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    let mut failures = Vec::new();
    for &q in &b.queries {
        let mut digests = Vec::new();
        for &p in &b.parallelism {
            let (mut secs, mut rss, mut chk) = (Vec::new(), Vec::new(), Vec::new());
            let mut last = None;
            for r in 0..b.runs {
                let work = dir.join(format!("{}-p{p}-{r}", q.name()));
                let mut cmd = Command::new(&exe);
                cmd.args(["run", "--query", q.name(), "--events", &b.events.to_string(), "-p", &p.to_string()])
                    .arg("--checkpoint-dir")
                    .arg(work.join("chk"))
                    .arg("--state-dir")
                    .arg(work.join("state"))
                    .args(["--checkpoint-interval", &format!("{}ms", b.checkpoint_interval.as_millis())])
                    .args(["--memory-budget", &b.memory_budget, "--progress-interval", "0s"])
                    .env("RUST_LOG", "warn");
                let child = run_child(&mut cmd).with_context(|| format!("{} at parallelism {p}", q.name()))?;
                let _ = std::fs::remove_dir_all(&work);
                secs.push(child.summary.seconds);
                rss.push(child.max_rss_kib as f64 / 1024.0);
                chk.extend(child.summary.checkpoint_ms.iter().copied());
                last = Some(child.summary);
            }
            let s = last.context("no run")?;
            let median = percentile(secs, 0.5).unwrap_or(f64::NAN);
            let rate = s.events as f64 / median;
            let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
            println!(
                "| {} | {} | {p} | {} | {median:.2} | {rate:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} |",
                q.name(),
                q.what(),
                s.events,
                rate / p.min(cores) as f64,
                percentile(rss, 0.5).unwrap_or(f64::NAN),
                chk.len(),
                fmt(percentile(chk.clone(), 0.5)),
                fmt(percentile(chk, 0.99)),
                s.rows,
                s.digest,
                if s.state_bytes > 0 {
                    format!("{:.0}", s.state_bytes as f64 / (1u64 << 20) as f64)
                } else {
                    "-".into()
                },
            );
            digests.push((p, s.rows, s.digest));
        }
        if digests.windows(2).any(|w| (w[0].1, &w[0].2) != (w[1].1, &w[1].2)) {
            failures.push(format!("{}: results differ between parallelisms: {digests:?}", q.name()));
        }
    }
    println!();
    println!("machine: {} cores, {}", cores, machine());
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// The CPU model, for the table's caption.
fn machine() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Run(args)) => {
            init_logging();
            run_query(args)
        }
        None => bench(cli.bench),
    }
}
