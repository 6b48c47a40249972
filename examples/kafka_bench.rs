//! `auction_windows` through Apache Kafka, with both exactly-once sinks.
//!
//! * Throughput: an input topic (`--partitions`, `--bids` Nexmark bids produced before the
//!   runs) → auction_windows (`-p 2`, checkpoints every `--checkpoint-interval`) → an output topic,
//!   bounded by `--stop-at-end`; each run a separate process, the modes interleaved run by run,
//!   medians reported. Every run's output is read back by a `read_committed` reader and must hold
//!   as many rows as the others.
//! * Latency: bids produced live at `--latency-rate` per second with event time = the time they
//!   are produced; a row's latency is the time a `read_committed` reader receives it minus the
//!   moment its window could first be closed (window end + the job's 2 s out-of-orderness bound).
//!
//! ```text
//! B=$(scripts/broker start | tail -1)
//! cargo build --release --examples && target/release/examples/kafka_bench --brokers $B
//! ```

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use weir::nexmark::{Event, NexmarkConfig};
use weir::operators::sources::nexmark::{bid_event_number, generate_event};

mod measure;

const MODES: [&str; 2] = ["exactly-once-txn", "exactly-once-publish"];
/// auction_windows' default window and out-of-orderness bound.
const WINDOW_MS: i64 = 10_000;
const MAX_DELAY_MS: i64 = 2_000;

/// Measures auction_windows from a Kafka topic to a Kafka topic.
#[derive(Parser, Debug)]
#[command(name = "kafka_bench")]
struct Cli {
    /// Kafka bootstrap servers (`scripts/broker start` prints them).
    #[arg(long, value_name = "HOST:PORT")]
    brokers: String,
    /// Bids in the input topic of the throughput runs.
    #[arg(long, default_value_t = 5_000_000)]
    bids: u64,
    /// Partitions of the input topics.
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// Runs per mode (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Parallelism of the job.
    #[arg(long, default_value_t = 2)]
    parallelism: usize,
    /// Checkpoint interval of the job.
    #[arg(long, default_value = "10s")]
    checkpoint_interval: String,
    /// Bids per second of the latency runs (0 skips them).
    #[arg(long, default_value_t = 100_000)]
    latency_rate: u64,
    /// Length of each latency run.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    latency_duration: Duration,
}

fn create_topic(brokers: &str, name: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in rt.block_on(admin.create_topics(&[NewTopic::new(name, partitions, TopicReplication::Fixed(1))], &opts))? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    Ok(())
}

fn producer(brokers: &str) -> Result<BaseProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "10")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?)
}

fn send(p: &BaseProducer, topic: &str, partition: i32, value: &str) -> Result<()> {
    let mut rec = BaseRecord::<(), str>::to(topic).partition(partition).payload(value);
    loop {
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((e, back)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                rec = back;
                p.poll(Duration::from_millis(5));
            }
            Err((e, _)) => bail!("producing to {topic}: {e}"),
        }
    }
}

/// The `k`-th generated bid, with its event time replaced by `date_time` if given.
fn bid_json(cfg: &NexmarkConfig, k: u64, date_time: Option<i64>) -> Result<Option<String>> {
    match generate_event(cfg, bid_event_number(k)) {
        Event::Bid(mut b) => {
            if let Some(t) = date_time {
                b.date_time = t;
            }
            Ok(Some(serde_json::to_string(&b)?))
        }
        _ => Ok(None),
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The job reading `input` and writing `output` in `mode`.
fn job(cli: &Cli, exe: &Path, input: &str, output: &str, mode: &str, chk: &Path, bounded: bool) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["--brokers", &cli.brokers, "--input-topic", input, "--output-topic", output, "--delivery", mode])
        .args(["--parallelism", &cli.parallelism.to_string(), "--checkpoint-interval", &cli.checkpoint_interval])
        .arg("--checkpoint-dir")
        .arg(chk)
        .args(["--transactional-id-prefix", output, "--progress-interval", "0s"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    if bounded {
        cmd.arg("--stop-at-end");
    }
    cmd
}

/// Reads `topic` as a read_committed reader until every partition is at its end.
fn committed_rows(brokers: &str, topic: &str) -> Result<u64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-count-{topic}"))
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()?;
    let meta = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let parts: Vec<i32> = meta.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let (mut ended, mut rows) = (std::collections::BTreeSet::new(), 0);
    let deadline = Instant::now() + Duration::from_secs(300);
    while ended.len() < parts.len() {
        if Instant::now() > deadline {
            bail!("reading {topic} back timed out");
        }
        match c.poll(Duration::from_millis(100)) {
            Some(Err(KafkaError::PartitionEOF(p))) => {
                ended.insert(p);
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(_)) => rows += 1,
            None => {}
        }
    }
    Ok(rows)
}

fn throughput(cli: &Cli, exe: &Path, dir: &Path) -> Result<()> {
    let input = format!("bench-bids-{}", std::process::id());
    create_topic(&cli.brokers, &input, cli.partitions)?;
    let cfg = NexmarkConfig::default();
    let p = producer(&cli.brokers)?;
    let started = Instant::now();
    let mut sent = 0u64;
    for k in 0..cli.bids {
        if let Some(v) = bid_json(&cfg, k, None)? {
            send(&p, &input, (sent % cli.partitions as u64) as i32, &v)?;
            sent += 1;
            if sent.is_multiple_of(100_000) {
                p.poll(Duration::ZERO);
            }
        }
    }
    p.flush(Duration::from_secs(120))?;
    eprintln!("produced {sent} bids to {input} in {:.1} s", started.elapsed().as_secs_f64());
    let mut secs = vec![Vec::new(); MODES.len()];
    let mut rss = vec![Vec::new(); MODES.len()];
    let mut rows = Vec::new();
    for r in 0..cli.runs {
        for (m, mode) in MODES.iter().enumerate() {
            let output = format!("bench-out-{}-{m}-{r}", std::process::id());
            create_topic(&cli.brokers, &output, 4)?;
            let chk = dir.join(&output);
            let child = job(cli, exe, &input, &output, mode, &chk, true).spawn().context("starting auction_windows")?;
            let run = measure::wait_measured(&child)?;
            if !run.status.success() {
                bail!("auction_windows ({mode}) failed with {}", run.status);
            }
            secs[m].push(run.secs);
            rss[m].push(run.max_rss_kib as f64 / 1024.0);
            rows.push(committed_rows(&cli.brokers, &output)?);
            let _ = std::fs::remove_dir_all(&chk);
            eprintln!("run {r} {mode}: {:.2} s", run.secs);
        }
    }
    if rows.iter().any(|n| *n != rows[0]) {
        bail!("the runs committed different numbers of rows: {rows:?}");
    }
    println!(
        "\nThroughput: {sent} bids, {} input partitions, parallelism {}, checkpoints every {}, median of {} runs\n",
        cli.partitions, cli.parallelism, cli.checkpoint_interval, cli.runs
    );
    println!("| delivery | median s | bids/s | peak RSS MiB | rows committed |");
    println!("|---|---:|---:|---:|---:|");
    for (m, mode) in MODES.iter().enumerate() {
        let s = measure::percentile(secs[m].clone(), 0.5).unwrap_or(f64::NAN);
        let mem = measure::percentile(rss[m].clone(), 0.5).unwrap_or(f64::NAN);
        println!("| {mode} | {s:.2} | {:.0} | {mem:.0} | {} |", sent as f64 / s, rows[0]);
    }
    Ok(())
}

/// Produces live bids at `rate` for `duration` while the job runs and a read_committed reader
/// times each row; returns the latencies in ms.
fn latency_run(cli: &Cli, exe: &Path, dir: &Path, mode: &str) -> Result<Vec<f64>> {
    let tag = format!("{}-{}", std::process::id(), mode);
    let (input, output) = (format!("bench-live-{tag}"), format!("bench-live-out-{tag}"));
    create_topic(&cli.brokers, &input, cli.partitions)?;
    create_topic(&cli.brokers, &output, 4)?;
    let chk = dir.join(&output);
    let mut child = job(cli, exe, &input, &output, mode, &chk, false).spawn().context("starting auction_windows")?;
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (brokers, output, stop) = (cli.brokers.clone(), output.clone(), stop.clone());
        std::thread::spawn(move || -> Result<Vec<(i64, f64)>> {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", format!("bench-latency-{output}"))
                .set("isolation.level", "read_committed")
                .set("auto.offset.reset", "earliest")
                .set("fetch.wait.max.ms", "10")
                .create()?;
            c.subscribe(&[&output])?;
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Some(m) = c.poll(Duration::from_millis(50)) else { continue };
                let m = m?;
                let received = now_ms();
                let row = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                let start: i64 =
                    row.split(',').next().and_then(|s| s.parse().ok()).context("row without window_start")?;
                lat.push((start, (received - (start + WINDOW_MS + MAX_DELAY_MS)) as f64));
            }
            Ok(lat)
        })
    };
    let cfg = NexmarkConfig::default();
    let p = producer(&cli.brokers)?;
    let started = Instant::now();
    let first_ms = now_ms();
    let (mut sent, mut k) = (0u64, 0u64);
    while started.elapsed() < cli.latency_duration {
        let due = (started.elapsed().as_secs_f64() * cli.latency_rate as f64) as u64;
        while sent < due {
            if let Some(v) = bid_json(&cfg, k, Some(now_ms()))? {
                send(&p, &input, (sent % cli.partitions as u64) as i32, &v)?;
                sent += 1;
            }
            k += 1;
        }
        p.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
    }
    p.flush(Duration::from_secs(30))?;
    // Let the last closed windows reach the reader, then stop everything.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    child.kill()?;
    child.wait()?;
    let lat = reader.join().map_err(|_| anyhow::anyhow!("the latency reader panicked"))??;
    let _ = std::fs::remove_dir_all(&chk);
    eprintln!("latency run {mode}: {sent} bids, {} rows", lat.len());
    // The first windows overlap the job's start-up: only windows that began 10 s after the first
    // bid count.
    Ok(lat.into_iter().filter(|(start, _)| *start >= first_ms + WINDOW_MS).map(|(_, l)| l).collect())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let exe = std::env::current_exe()?.with_file_name("auction_windows");
    if !exe.exists() {
        bail!("{} not found: build it with `cargo build --release --examples`", exe.display());
    }
    let tmp = tempfile::tempdir()?;
    throughput(&cli, &exe, tmp.path())?;
    if cli.latency_rate > 0 {
        println!(
            "\nLatency: {} bids/s live for {}, window closed (end + 2 s) → row seen by a read_committed reader\n",
            cli.latency_rate,
            humantime::format_duration(cli.latency_duration)
        );
        println!("| delivery | rows | p50 ms | p99 ms | max ms |");
        println!("|---|---:|---:|---:|---:|");
        for mode in MODES {
            let lat = latency_run(&cli, &exe, tmp.path(), mode)?;
            let q = |p: f64| measure::percentile(lat.clone(), p).unwrap_or(f64::NAN);
            println!("| {mode} | {} | {:.0} | {:.0} | {:.0} |", lat.len(), q(0.5), q(0.99), q(1.0));
        }
    }
    println!("\nmachine: {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    Ok(())
}
