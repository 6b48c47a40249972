//! The Nexmark benchmark: queries q0–q22 (all but q23) over the built-in generator (the
//! reference generator's distributions by default), with RocksDB state and checkpoints, at
//! several parallelisms. Each run is a child process (so
//! its peak RSS is its own); the table shows medians over the runs.
//!
//! ```text
//! cargo build --release --examples
//! target/release/examples/nexmark --events 20000000 --runs 3          # the table
//! target/release/examples/nexmark run --query q5 --events 1000000 -p 2 # one query, this process
//! target/release/examples/nexmark --queries q5,q7 --parallelism 2 --processes 1,2  # processes
//! ```
//!
//! With `--processes`, a run is the job as that many processes on loopback; each reports its
//! share and the table adds them up (a digest is a wrapping sum, so the parts add up to the
//! whole) and shows the records and bytes sent between the processes per second.
//!
//! The queries live in the library (`weir::nexmark`); every query ends in a sink that counts its
//! rows and adds up a hash of each, so a run also says *what* it computed: the digest must not
//! depend on the parallelism.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use weir::nexmark::{
    build, write_side_input, Digest, Event, Generator, NexmarkConfig, NexmarkSource, Query, QueryOptions,
};
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
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q0,q1,q2,q3,q4,q5,q6,q7,q8,q9,q10,q11,q12,q13,q14,q15,q16,q17,q18,q19,q20,q21,q22"
    )]
    queries: Vec<Query>,
    /// Parallelisms to run each query at.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    parallelism: Vec<usize>,
    /// Numbers of processes to run each query as (on loopback; each up to the parallelism).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    processes: Vec<usize>,
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
    /// Watermark alignment of the source subtasks handed to every run (`off`: none).
    #[arg(long, default_value = "2s", value_parser = parse_alignment)]
    watermark_alignment: Alignment,
    /// Work directory for checkpoints and state [default: a temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
    #[command(flatten)]
    generator: GeneratorArgs,
}

/// The generator's settings, the same for the benchmark and each run.
#[derive(clap::Args, Debug, Clone)]
struct GeneratorArgs {
    /// The event generator: the reference Nexmark generator's distributions, or weir's lighter one.
    #[arg(long, value_enum, default_value = "reference")]
    generator: Generator,
    /// Events per second of event time (the reference generator's `firstEventRate`): sets how
    /// far event time advances per event, and with it window contents and auction lengths.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    event_rate: u64,
}

impl GeneratorArgs {
    fn flags(&self) -> Vec<String> {
        let generator = clap::ValueEnum::to_possible_value(&self.generator).map(|v| v.get_name().to_string());
        vec!["--generator".into(), generator.unwrap_or_default(), "--event-rate".into(), self.event_rate.to_string()]
    }
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
    /// The most a source subtask's watermark may run ahead of the slowest subtask's of its process
    /// (`off`: no alignment). Two source subtasks on two shared cores drift apart without it, and
    /// windows and joins hold state for the skew.
    #[arg(long, default_value = "2s", value_parser = parse_alignment)]
    watermark_alignment: Alignment,
    #[command(flatten)]
    generator: GeneratorArgs,
    /// q10's output: a directory or s3://bucket/prefix.
    #[arg(long)]
    output: Option<weir::checkpoint::Location>,
    /// q13's side input, a key,value CSV file [default: written into a temporary directory].
    #[arg(long)]
    side_input: Option<PathBuf>,
    #[command(flatten)]
    job: JobArgs,
}

/// A watermark alignment drift, or none.
#[derive(Clone, Copy, Debug)]
struct Alignment(Option<Duration>);

fn parse_alignment(s: &str) -> Result<Alignment, String> {
    match s {
        "off" => Ok(Alignment(None)),
        d => parse_duration(d).map(|d| Alignment(Some(d))),
    }
}

impl Alignment {
    fn flag(&self) -> String {
        self.0.map_or("off".into(), |d| format!("{}ms", d.as_millis()))
    }
}

/// What a child run reports on its last stdout line.
#[derive(Debug, Serialize, Deserialize)]
struct Summary {
    query: String,
    parallelism: usize,
    /// This process's part of the job (several processes each report theirs; the benchmark adds
    /// their events, rows, digests and network traffic up).
    process: usize,
    events: u64,
    seconds: f64,
    rows: u64,
    digest: String,
    /// Logical bytes of keyed state written (the `store` query).
    state_bytes: u64,
    /// End-to-end durations of the completed checkpoints (the final one included), as the job's
    /// checkpoint history (`/checkpoints`) has them.
    checkpoint_ms: Vec<f64>,
    /// Bytes and records this process sent to the others.
    network_bytes: u64,
    network_records: u64,
}

impl Summary {
    /// One job's summary from its processes' (in process order): events, rows and network
    /// traffic add up, and so do digests (a wrapping sum of row hashes); the time is the
    /// slowest process's, the checkpoints the coordinator's (process 0).
    fn combine(parts: Vec<Summary>) -> Result<Summary> {
        let mut parts = parts.into_iter();
        let mut all = parts.next().context("no process reported")?;
        let mut sum = u64::from_str_radix(&all.digest, 16)?;
        for s in parts {
            all.events += s.events;
            all.rows += s.rows;
            all.state_bytes += s.state_bytes;
            all.network_bytes += s.network_bytes;
            all.network_records += s.network_records;
            all.seconds = all.seconds.max(s.seconds);
            sum = sum.wrapping_add(u64::from_str_radix(&s.digest, 16)?);
        }
        all.digest = format!("{sum:016x}");
        Ok(all)
    }
}

fn run_query(args: RunArgs) -> Result<()> {
    let cfg = NexmarkConfig {
        seed: args.seed,
        limit: Some(args.events),
        generator: args.generator.generator,
        event_step_ns: NexmarkConfig::step_for_rate(args.generator.event_rate),
        ..NexmarkConfig::default()
    };
    let env = StreamEnv::new(args.job.clone());
    let strategy = WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|e: &Event| e.date_time());
    let strategy = match args.watermark_alignment.0 {
        Some(drift) => strategy.with_watermark_alignment(drift),
        None => strategy,
    };
    let events = env.add_source("nexmark", NexmarkSource::new(cfg), strategy).uid("nexmark");
    let digest = Digest::default();
    let side = tempfile::tempdir()?;
    let side_input = match args.side_input.clone() {
        Some(path) => path,
        None => {
            let path = side.path().join("side_input.csv");
            write_side_input(&path)?;
            path
        }
    };
    let opts = QueryOptions { output: args.output.clone(), side_input: Some(side_input) };
    build(args.query, &events, &digest, &opts)?;
    let started = Instant::now();
    let result = env.execute(&format!("nexmark-{}", args.query.name()))?;
    let seconds = started.elapsed().as_secs_f64();
    let generated = result.counter("nexmark.records_out");
    // With several processes each generates its share; the benchmark checks the sum.
    if args.job.processes <= 1 && generated != args.events {
        bail!("the generator emitted {generated} events, not {}", args.events);
    }
    let (rows, sum) = digest.get();
    let summary = Summary {
        query: args.query.name().into(),
        parallelism: args.job.parallelism,
        process: args.job.process_index as usize,
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
        network_bytes: result.network_out.0,
        network_records: result.network_out.1,
    };
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

struct Child {
    summary: Summary,
    /// Peak RSS, added up over the processes.
    max_rss_kib: i64,
}

/// Runs one job as the processes `cmds` make (started together) and combines their summaries.
fn run_children(cmds: Vec<Command>) -> Result<Child> {
    let mut running = Vec::new();
    for mut cmd in cmds {
        let out_file = tempfile::NamedTempFile::new()?;
        let err_file = tempfile::NamedTempFile::new()?;
        let child = cmd.stdout(out_file.reopen()?).stderr(err_file.reopen()?).spawn().context("starting a run")?;
        running.push((child, out_file, err_file));
    }
    let (mut parts, mut rss) = (Vec::new(), 0);
    for (child, out_file, err_file) in running {
        let run = measure::wait_measured(&child).context("waiting for a run")?;
        let stdout = std::fs::read_to_string(out_file.path())?;
        let stderr = std::fs::read_to_string(err_file.path())?;
        if !run.status.success() {
            bail!("the run failed with {}: {stderr}", run.status);
        }
        let line = stdout.lines().last().context("the run printed no summary")?;
        parts.push(serde_json::from_str(line).with_context(|| format!("summary line {line:?}"))?);
        rss += run.max_rss_kib;
    }
    Ok(Child { max_rss_kib: rss, summary: Summary::combine(parts)? })
}

/// The commands of one run of query `q` at parallelism `p` as `n` processes on loopback.
fn run_commands(exe: &Path, b: &BenchArgs, q: Query, p: usize, n: usize, work: &Path) -> Result<Vec<Command>> {
    let peers: Vec<String> = (0..n).map(|_| measure::control::free_local_addr()).collect::<std::io::Result<_>>()?;
    let mut cmds = Vec::new();
    for i in 0..n {
        let mut cmd = Command::new(exe);
        cmd.args(["run", "--query", q.name(), "--events", &b.events.to_string(), "-p", &p.to_string()])
            .arg("--checkpoint-dir")
            .arg(work.join("chk"))
            .arg("--state-dir")
            .arg(work.join(format!("state-{i}")))
            .args(["--checkpoint-interval", &format!("{}ms", b.checkpoint_interval.as_millis())])
            .args(["--memory-budget", &b.memory_budget, "--progress-interval", "0s"])
            .args(["--watermark-alignment", &b.watermark_alignment.flag()])
            .args(b.generator.flags())
            .arg("--output")
            .arg(work.join("output"))
            .env("RUST_LOG", "warn");
        if n > 1 {
            cmd.args(["--processes", &n.to_string(), "--process-index", &i.to_string(), "--peers", &peers.join(",")]);
        }
        cmds.push(cmd);
    }
    Ok(cmds)
}

fn bench(b: BenchArgs) -> Result<()> {
    let exe = std::env::current_exe()?;
    let tmp = tempfile::tempdir()?;
    let dir = b.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "| query | what | p | processes | events | median s | events/s | events/s per core | peak RSS MiB | checkpoints | checkpoint p50 ms | checkpoint p99 ms | rows | digest | state MiB | network records/s / MiB/s | vs 1 process |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|");
    let mut failures = Vec::new();
    for &q in &b.queries {
        let settings: Vec<(usize, usize)> = b
            .parallelism
            .iter()
            .flat_map(|&p| b.processes.iter().filter(move |&&n| n <= p).map(move |&n| (p, n)))
            .collect();
        let mut runs: Vec<Runs> = settings.iter().map(|_| Runs::default()).collect();
        // Interleaved: run r of every setting before run r + 1 of any, so that the machine's
        // swings over time hit every setting alike.
        for r in 0..b.runs {
            for (k, &(p, n)) in settings.iter().enumerate() {
                let work = dir.join(format!("{}-p{p}-n{n}-{r}", q.name()));
                let cmds = run_commands(&exe, &b, q, p, n, &work)?;
                let what = || format!("{} at parallelism {p} as {n} processes", q.name());
                let child = run_children(cmds).with_context(what)?;
                let _ = std::fs::remove_dir_all(&work);
                if child.summary.events != b.events {
                    bail!("{}: the generators emitted {} events, not {}", what(), child.summary.events, b.events);
                }
                runs[k].add(child);
            }
        }
        let mut digests = Vec::new();
        for (k, &(p, n)) in settings.iter().enumerate() {
            let one = settings.iter().position(|&(p1, n1)| p1 == p && n1 == 1).map(|i| runs[i].median());
            let s = runs[k].print(q, p, n, cores, one)?;
            digests.push(((p, n), s.0, s.1));
        }
        if digests.windows(2).any(|w| (w[0].1, &w[0].2) != (w[1].1, &w[1].2)) {
            failures.push(format!("{}: results differ between parallelisms or processes: {digests:?}", q.name()));
        }
    }
    println!();
    println!("machine: {} cores, {}", cores, machine());
    println!(
        "generator: {:?}, {} events/s of event time, {} events per run, medians of {} runs",
        b.generator.generator, b.generator.event_rate, b.events, b.runs
    );
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// The runs of one setting (query, parallelism, processes).
#[derive(Default)]
struct Runs {
    secs: Vec<f64>,
    rss: Vec<f64>,
    chk: Vec<f64>,
    last: Option<Summary>,
}

impl Runs {
    fn add(&mut self, child: Child) {
        self.secs.push(child.summary.seconds);
        self.rss.push(child.max_rss_kib as f64 / 1024.0);
        self.chk.extend(child.summary.checkpoint_ms.iter().copied());
        self.last = Some(child.summary);
    }

    fn median(&self) -> f64 {
        percentile(self.secs.clone(), 0.5).unwrap_or(f64::NAN)
    }

    /// Prints the table row; `one_process` is the median time of the same query and
    /// parallelism in one process, if it ran. Returns the rows and digest.
    fn print(&self, q: Query, p: usize, n: usize, cores: usize, one_process: Option<f64>) -> Result<(u64, String)> {
        let s = self.last.as_ref().context("no run")?;
        let median = self.median();
        let rate = s.events as f64 / median;
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        let mib = (1u64 << 20) as f64;
        let network = match n > 1 {
            true => format!("{:.0} / {:.1}", s.network_records as f64 / median, s.network_bytes as f64 / mib / median),
            false => "-".into(),
        };
        let state = if s.state_bytes > 0 { format!("{:.0}", s.state_bytes as f64 / mib) } else { "-".into() };
        let ratio = match one_process {
            Some(one) if n > 1 => format!("{:.2}×", one / median),
            _ => "-".into(),
        };
        println!(
            "| {} | {} | {p} | {n} | {} | {median:.2} | {rate:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {state} | {network} | {ratio} |",
            q.name(),
            q.what(),
            s.events,
            rate / p.min(cores) as f64,
            percentile(self.rss.clone(), 0.5).unwrap_or(f64::NAN),
            self.chk.len(),
            fmt(percentile(self.chk.clone(), 0.5)),
            fmt(percentile(self.chk.clone(), 0.99)),
            s.rows,
            s.digest,
        );
        Ok((s.rows, s.digest.clone()))
    }
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
