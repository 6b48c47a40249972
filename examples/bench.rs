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

use anyhow::{bail, Context, Result};
use clap::Parser;
use weir::nexmark::{Event, NexmarkConfig};
use weir::operators::sources::nexmark::{bid_event_number, generate_event};

mod measure;
use measure::goals::Goal;

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
    /// Bids per run of the checkpoint comparison (generator, parallelism 2); 0 skips it.
    #[arg(long, default_value_t = 10_000_000)]
    checkpoint_bids: u64,
    /// Also checkpoint to this object-store location (e.g. `s3://bucket/bench`, endpoint and
    /// credentials from the AWS_* environment), at each interval, beside the local runs.
    #[arg(long, value_name = "URL")]
    object_store: Option<String>,

    /// Checkpoint intervals of the checkpoint comparison (each also against --object-store).
    #[arg(long, value_delimiter = ',', default_value = "10s,1s")]
    checkpoint_intervals: Vec<String>,

    /// Keyed state (MiB of values) for the checkpoint-and-restore table of the `keyed_state`
    /// job: checkpoint durations once it is full, and restart time after SIGKILL to the first
    /// record, on the local disk and on --object-store; 0 skips it.
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    restore_mib: u64,

    /// Bids per run of the comparison of one process against several on loopback (generator);
    /// 0 skips it.
    #[arg(long, value_name = "N", default_value_t = 0)]
    process_bids: u64,

    /// Bids/s of the end-to-end latency table (live event time, files, parallelism 2; pick
    /// half the generator's bids/s at parallelism 2 from the first table); 0 skips it.
    #[arg(long, value_name = "N", default_value_t = 0)]
    latency_rate: u64,
    /// Seconds each latency run is measured (after a 5 s warm-up).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    latency_secs: u64,
    /// An `auction_windows` binary of another build (say, before a change): the checkpoint
    /// comparison runs it too, interleaved with this build's runs, as rows marked "before".
    #[arg(long, value_name = "PATH")]
    before: Option<PathBuf>,
}

struct Run {
    secs: f64,
    max_rss_kib: i64,
}

fn run_child(cmd: &mut Command) -> Result<Run> {
    let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().context("starting auction_windows")?;
    let mut pipe = child.stderr.take().context("stderr")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut pipe, &mut s);
        s
    });
    let run = measure::wait_measured(&child).context("waiting for auction_windows")?;
    let stderr = reader.join().unwrap_or_default();
    if !run.status.success() {
        bail!("auction_windows failed with {}: {stderr}", run.status);
    }
    Ok(Run { secs: run.secs, max_rss_kib: run.max_rss_kib })
}

fn percentile(v: Vec<f64>, p: f64) -> f64 {
    measure::percentile(v, p).unwrap_or(f64::NAN)
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
    let mut goals = Vec::new();
    if cli.checkpoint_bids > 0 {
        goals.extend(checkpoint_table(&cli, &job, &dir)?);
    }
    if cli.process_bids > 0 {
        measure::processes::table(&job, &dir, cli.process_bids, cli.runs)?;
    }
    if cli.restore_mib > 0 {
        goals.extend(restore_table(&cli, &exe.with_file_name("keyed_state"), &dir)?);
    }
    if cli.latency_rate > 0 {
        goals.extend(latency_table(&cli, &job, &dir)?);
    }
    measure::goals::print(&goals);
    Ok(())
}

/// Checkpoint durations and restore times of large keyed state, local disk vs object store.
fn restore_table(cli: &Cli, job: &Path, dir: &Path) -> Result<Vec<Goal>> {
    use measure::restore::{measure, Target};
    let mut targets =
        vec![Target { label: "local disk".into(), location: dir.join("restore-chk").display().to_string() }];
    if let Some(url) = cli.object_store.as_deref() {
        let location = format!("{}/{}-restore", url.trim_end_matches('/'), std::process::id());
        targets.push(Target { label: url.to_string(), location });
    }
    let mut rows = Vec::new();
    for t in &targets {
        rows.push(measure(job, dir, t, cli.restore_mib, cli.runs)?);
        let _ = std::fs::remove_dir_all(dir.join("restore-chk"));
    }
    println!(
        "\nLarge state ({} MiB of values in `keyed_state`, parallelism 2, checkpoints every 2 s; restarts after SIGKILL, median of {}):\n",
        cli.restore_mib, cli.runs
    );
    println!("| checkpoints on | state MiB | checkpoint p50 ms | checkpoint p99 ms | incremental p50 MiB | restart to first record, same machine s | same, page cache dropped s | same, dropped, every file read s | restart, new machine s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let cold = |v: Vec<f64>| if v.is_empty() { "-".to_string() } else { format!("{:.2}", median(v)) };
    let mut no_cold = false;
    let mut goals = Vec::new();
    if let Some(local) = rows.first() {
        // The cold restart when the page cache could be dropped, else the warm one.
        let s = if local.cold_s.is_empty() { &local.same_machine_s } else { &local.cold_s };
        goals.push(Goal::at_most(
            format!("restart after kill -9 to the first record, {:.0} MiB of state, local disk", local.state_mib),
            "≤ 1 s",
            (!s.is_empty()).then(|| median(s.clone())),
            1.0,
            |v| format!("{v:.2} s"),
        ));
    }
    for r in rows {
        no_cold |= r.cold_s.is_empty();
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.2} | {} | {} | {:.2} |",
            r.label,
            r.state_mib,
            percentile(r.durations_ms.clone(), 0.5),
            percentile(r.durations_ms, 0.99),
            percentile(r.incremental_mib, 0.5),
            median(r.same_machine_s),
            cold(r.cold_s),
            cold(r.cold_unstamped_s),
            median(r.new_machine_s),
        );
    }
    if no_cold {
        println!("\n(\"-\": the page cache could not be dropped here; that needs root.)");
    }
    Ok(goals)
}

/// Throughput with checkpoints off, every 10 s and every 1 s (on the local disk, and on an object
/// store if asked), with checkpoint durations and sizes.
fn checkpoint_table(cli: &Cli, job: &Path, dir: &Path) -> Result<Vec<Goal>> {
    println!("\nCheckpoints (generator, {} bids, parallelism 2, median of {} runs):\n", cli.checkpoint_bids, cli.runs);
    println!("| checkpoints | bids/s | vs off | taken per run | duration p50 ms | duration max ms | sync p50 ms | sync p99 ms | size p50 MiB | incremental p50 MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mib = |b: f64| b / (1u64 << 20) as f64;
    // (label, interval, object-store location, job binary)
    let mut settings: Vec<(String, Option<&str>, Option<&str>, &Path)> = vec![("off".into(), None, None, job)];
    for iv in &cli.checkpoint_intervals {
        settings.push((iv.clone(), Some(iv), None, job));
    }
    if let Some(url) = cli.object_store.as_deref() {
        for iv in &cli.checkpoint_intervals {
            settings.push((format!("{iv}, {url}"), Some(iv), Some(url), job));
        }
    }
    if let Some(before) = cli.before.as_deref() {
        let ours = settings.clone();
        settings.extend(ours.into_iter().map(|(label, iv, url, _)| (format!("before: {label}"), iv, url, before)));
    }
    // Runs of the settings alternate, so that noise on a shared machine hits all alike.
    let mut secs = vec![Vec::new(); settings.len()];
    let mut stats = vec![(Vec::new(), Vec::new(), Vec::new()); settings.len()];
    // Every subtask's synchronous part of every periodic checkpoint.
    let mut sync = vec![Vec::new(); settings.len()];
    for r in 0..cli.runs {
        for (k, (_, interval, remote, job)) in settings.iter().enumerate() {
            let out = dir.join(format!("cp-out-{r}"));
            let chk = dir.join(format!("cp-chk-{r}"));
            let mut cmd = Command::new(job);
            cmd.arg("--output").arg(&out).arg("--parallelism").arg("2").arg("--progress-interval").arg("0s");
            cmd.arg("--generate").arg(cli.checkpoint_bids.to_string());
            // Every run starts afresh, whatever an earlier bench left at the location.
            cmd.arg("--state-dir").arg(dir.join(format!("cp-state-{r}"))).arg("--restore").arg("none");
            if let Some(iv) = interval {
                // Every run checkpoints under a prefix of its own, so none restores another's.
                let location = match remote {
                    Some(url) => format!("{}/{}-run-{r}-{k}", url.trim_end_matches('/'), std::process::id()),
                    None => chk.display().to_string(),
                };
                cmd.arg("--checkpoint-dir").arg(location).arg("--checkpoint-interval").arg(iv);
            }
            let addr = measure::control::free_local_addr()?;
            cmd.arg("--metrics-addr").arg(&addr);
            let watch = measure::control::CheckpointWatch::start(&addr);
            let run = run_child(&mut cmd);
            // The periodic checkpoints, as the job's control endpoint reported them.
            let taken: Vec<_> = watch.finish().into_iter().filter(|c| !c.terminal).collect();
            secs[k].push(run?.secs);
            for c in taken {
                sync[k].extend(c.subtasks.iter().map(|s| s.sync_ms));
                stats[k].0.push(c.duration_ms);
                stats[k].1.push(mib(c.size_bytes));
                stats[k].2.push(mib(c.incremental_bytes));
            }
            let _ = std::fs::remove_dir_all(&out);
            let _ = std::fs::remove_dir_all(&chk);
            let _ = std::fs::remove_dir_all(dir.join(format!("cp-state-{r}")));
        }
    }
    // "vs off" compares each build with its own run without checkpoints.
    let ours = if cli.before.is_some() { settings.len() / 2 } else { settings.len() };
    let mut goals = Vec::new();
    let off_rate = cli.checkpoint_bids as f64 / median(secs[0].clone());
    for (k, (label, interval, remote, _)) in settings.iter().enumerate().take(ours) {
        let limit = match *interval {
            Some("1s") => 5.0,
            Some("10s") => 1.0,
            _ => continue,
        };
        let loss = (1.0 - cli.checkpoint_bids as f64 / median(secs[k].clone()) / off_rate) * 100.0;
        let place = if remote.is_some() { label.clone() } else { format!("{label}, local disk") };
        let mut goal = Goal::at_most(
            format!("throughput loss, checkpoints every {place} (median of {})", cli.runs),
            format!("≤ {limit} %"),
            Some(loss),
            limit,
            |v| format!("{v:.1} %"),
        );
        if stats[k].0.is_empty() {
            // Runs shorter than the interval say nothing about what its checkpoints cost.
            goal.measured = "no checkpoint in a run".into();
            goal.met = None;
        }
        goals.push(goal);
    }
    let all_sync: Vec<f64> = sync.iter().take(ours).flatten().copied().collect();
    goals.push(Goal::at_most(
        "synchronous part of a checkpoint, p99 over every subtask",
        "≤ 5 ms",
        (!all_sync.is_empty()).then(|| percentile(all_sync, 0.99)),
        5.0,
        |v| format!("{v:.1} ms"),
    ));
    for (k, (label, _, _, _)) in settings.iter().enumerate() {
        let off = cli.checkpoint_bids as f64 / median(secs[if k < ours { 0 } else { ours }].clone());
        let rate = cli.checkpoint_bids as f64 / median(secs[k].clone());
        let (d, s, i) = stats[k].clone();
        // "-" where there is nothing to take a percentile of (the run without checkpoints).
        let show = |v: Vec<f64>, p: f64, digits: usize| {
            if v.is_empty() {
                "-".to_string()
            } else {
                format!("{:.*}", digits, percentile(v, p))
            }
        };
        println!(
            "| {} | {rate:.0} | {:+.1} % | {:.1} | {} | {} | {} | {} | {} | {} |",
            label,
            (rate / off - 1.0) * 100.0,
            d.len() as f64 / cli.runs as f64,
            show(d.clone(), 0.5, 0),
            show(d, 1.0, 0),
            show(sync[k].clone(), 0.5, 1),
            show(sync[k].clone(), 0.99, 1),
            show(s, 0.5, 1),
            show(i, 0.5, 1),
        );
    }
    Ok(goals)
}

/// Event time → committed file rows (the sink's `weir_commit_latency_ms`), live, by checkpoint
/// interval; medians over runs, the settings alternating run by run. `1s` with `--min-pause 1s`
/// is the schedule of before the interval ran from trigger to trigger (the next checkpoint a whole
/// interval after the end of the last).
fn latency_table(cli: &Cli, job: &Path, dir: &Path) -> Result<Vec<Goal>> {
    let settings = [("1s", "0ms"), ("1s", "1s"), ("10s", "0ms")];
    let mut got: Vec<Vec<measure::latency::Latency>> = settings.iter().map(|_| Vec::new()).collect();
    for r in 0..cli.runs {
        for (k, (interval, pause)) in settings.iter().enumerate() {
            let run_dir = dir.join(format!("latency-{k}-{r}"));
            eprintln!("latency run {r}: checkpoints every {interval}, min pause {pause}, {} bids/s", cli.latency_rate);
            got[k].push(measure::latency::run(job, &run_dir, cli.latency_rate, cli.latency_secs, interval, pause)?);
            let _ = std::fs::remove_dir_all(&run_dir);
        }
    }
    println!("\n| sink | checkpoints | min pause | bids/s | rows per run | checkpoints per run | p50 ms | p99 ms |");
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    for (k, (interval, pause)) in settings.iter().enumerate() {
        let runs = &got[k];
        println!(
            "| files | every {interval} | {pause} | {} | {:.0} | {:.1} | {:.0} | {:.0} |",
            cli.latency_rate,
            median(runs.iter().map(|l| l.rows).collect()),
            median(runs.iter().map(|l| l.checkpoints).collect()),
            median(runs.iter().map(|l| l.p50_ms).collect()),
            median(runs.iter().map(|l| l.p99_ms).collect()),
        );
    }
    // The target is on the schedule of today (no minimum pause): interval + 100 ms.
    let goals = settings
        .iter()
        .zip(&got)
        .filter(|((_, pause), _)| *pause == "0ms")
        .map(|((interval, _), runs)| {
            let ms = humantime::parse_duration(interval).map(|d| d.as_millis() as f64).unwrap_or(f64::NAN);
            Goal::at_most(
                format!(
                    "event time to committed file row, p99, checkpoints every {interval}, {} bids/s",
                    cli.latency_rate
                ),
                format!("≤ {:.0} ms", ms + 100.0),
                Some(median(runs.iter().map(|l| l.p99_ms).collect())),
                ms + 100.0,
                |v| format!("{v:.0} ms"),
            )
        })
        .collect();
    Ok(goals)
}
