//! The `weir` command-line tool: list checkpoints, inspect and dump savepoints, trigger
//! savepoints of a running job, watch a running job (`weir top`).

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use weir::checkpoint::open::snapshot_at;
use weir::checkpoint::{jobs_at, Location};
use weir::inspect::bytes;
use weir::operators::kafka::KafkaSinkState;

mod cluster;
mod savepoint;
mod top;

/// Tools for weir checkpoints and savepoints.
#[derive(Parser, Debug)]
#[command(name = "weir", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Checkpoints of jobs.
    Checkpoints {
        #[command(subcommand)]
        command: CheckpointsCommand,
    },
    /// Savepoints (and checkpoints, which read the same way).
    Savepoint {
        #[command(subcommand)]
        command: savepoint::SavepointCommand,
    },
    /// A live view of a running job: operators with their rates, busy/backpressured/idle time,
    /// input queue fill and watermark, and the last checkpoints; refreshed every interval.
    Top {
        /// The job's control address (`--metrics-addr`), e.g. http://127.0.0.1:9249.
        #[arg(long)]
        job: String,
        /// Time between refreshes.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        /// Print one frame and exit (scripts, tests).
        #[arg(long)]
        once: bool,
        /// The job's --control-token, if it has one.
        #[arg(long, env = "WEIR_CONTROL_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Several processes of one job on this machine (development and tests).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Kafka state of a job.
    Kafka {
        #[command(subcommand)]
        command: KafkaCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Runs a job binary as N processes (adding --processes, --process-index and --peers to its
    /// flags), and stops them together: if one fails, all do.
    Run(cluster::RunArgs),
}

#[derive(Subcommand, Debug)]
enum KafkaCommand {
    /// Lists the transactional ids of a job's `exactly-once-txn` sinks with their state (last
    /// committed epoch, epochs the checkpoint holds that are not committed yet), or aborts the
    /// open transaction of one id.
    Transactions {
        /// Kafka bootstrap servers.
        #[arg(long, value_name = "HOST:PORT")]
        brokers: String,
        /// The job's checkpoint directory (`<checkpoint-dir>/<job>`, a path or
        /// `s3://bucket/prefix`: its newest complete checkpoint is read), or a `chk-N` or
        /// savepoint directory.
        #[arg(long, value_name = "PATH|URL")]
        checkpoint: Location,
        /// Abort the open transaction of this transactional id by initialising it (this also
        /// fences a running producer that holds it: stop the job first).
        #[arg(long, value_name = "TRANSACTIONAL_ID")]
        abort: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum CheckpointsCommand {
    /// Lists the checkpoints under a checkpoint directory (`--checkpoint-dir` of a job, or one
    /// job's directory in it).
    List {
        /// The checkpoint directory (or one job's directory in it): a path or `s3://bucket/prefix`.
        dir: Location,
    },
}

fn list(location: &Location) -> Result<()> {
    let mirror = tempfile::tempdir()?;
    let jobs = jobs_at(location, mirror.path())?;
    println!(
        "{:<24} {:>8} {:<20} {:>9} {:>7} {:>11} {:>11}  status",
        "job", "id", "triggered (UTC)", "duration", "files", "size", "new"
    );
    for (name, storage) in jobs {
        let listed = storage.describe()?;
        // What `--restore latest` takes: the newest complete one (broken ones are skipped).
        let pick = listed.iter().rev().find(|c| c.status == "complete").map(|c| c.id);
        for c in listed {
            let dash = || "-".to_string();
            let triggered = c.triggered.map_or_else(dash, utc);
            let (files, size) = c.files.map_or_else(|| (dash(), dash()), |(n, b)| (n.to_string(), bytes(b)));
            let new = c.new_bytes.map_or_else(dash, bytes);
            let duration = c.duration_ms.map_or_else(dash, |d| format!("{d} ms"));
            let restore = if Some(c.id) == pick { "  <- --restore latest" } else { "" };
            println!(
                "{name:<24} {:>8} {triggered:<20} {duration:>9} {files:>7} {size:>11} {new:>11}  {}{restore}",
                c.id, c.status
            );
        }
    }
    Ok(())
}

/// Epoch milliseconds as `2026-12-04 02:33:12`.
fn utc(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string().trim_end_matches('Z').replace('T', " ")
}

/// Lists (or aborts) the transactional ids recorded in a job's checkpoint.
fn transactions(brokers: &str, location: &Location, abort: Option<&str>) -> Result<()> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseProducer, Producer};
    use rdkafka::{Offset, TopicPartitionList};
    let timeout = std::time::Duration::from_secs(30);
    let scratch = tempfile::tempdir()?;
    let snap = snapshot_at(location, scratch.path())?;
    let mut ids = Vec::new();
    for op in &snap.meta.operators {
        for sub in &op.subtasks {
            let Some(file) = &sub.operator_state else { continue };
            let bytes = std::fs::read(snap.base.join(&file.path)).with_context(|| format!("reading {}", file.path))?;
            // Other operators' states do not decode as a Kafka sink's: skip them.
            let Ok(state) = KafkaSinkState::decode(&bytes) else { continue };
            if !state.meta.transactional {
                continue;
            }
            let pending: Vec<(u64, usize)> = state.pending.iter().map(|e| (e.checkpoint, e.records.len())).collect();
            let (id, topic) = (state.meta.producer_id, state.meta.topic);
            ids.push((op.uid.clone(), id, topic, pending));
        }
    }
    if let Some(id) = abort {
        if !ids.iter().any(|(_, i, _, _)| i == id) {
            bail!("{id} is not a transactional id of this job's checkpoint");
        }
        let p: BaseProducer =
            ClientConfig::new().set("bootstrap.servers", brokers).set("transactional.id", id).create()?;
        p.init_transactions(timeout).with_context(|| format!("initialising {id}"))?;
        println!("{id}: any open transaction is aborted and earlier producers with this id are fenced");
        return Ok(());
    }
    println!("checkpoint {} of job {}", snap.meta.checkpoint_id, snap.meta.job);
    println!("{:<16} {:<40} {:<24} {:>10}  state", "operator", "transactional id", "topic", "committed");
    for (uid, id, topic, pending) in ids {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("weir-txn-{id}"))
            .set("enable.auto.commit", "false")
            .create()?;
        let mut q = TopicPartitionList::new();
        q.add_partition(&topic, 0);
        let committed =
            consumer.committed_offsets(q, timeout).with_context(|| format!("reading the marker of {id}"))?;
        let done = match committed.find_partition(&topic, 0).map(|e| e.offset()) {
            Some(Offset::Offset(o)) if o >= 0 => Some(o as u64),
            _ => None,
        };
        let waiting: Vec<String> = pending
            .iter()
            .filter(|(e, _)| done.is_none_or(|d| *e > d))
            .map(|(e, n)| format!("epoch {e} ({n} records)"))
            .collect();
        let state = if waiting.is_empty() {
            "up to date".to_string()
        } else {
            format!("not committed yet, committed on restore: {}", waiting.join(", "))
        };
        let done = done.map_or("-".to_string(), |d| d.to_string());
        println!("{uid:<16} {id:<40} {topic:<24} {done:>10}  {state}");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, as "what failed: why".
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Kafka { command: KafkaCommand::Transactions { brokers, checkpoint, abort } } => {
            transactions(&brokers, &checkpoint, abort.as_deref())
        }
        Command::Checkpoints { command: CheckpointsCommand::List { dir } } => list(&dir),
        Command::Top { job, interval, once, token } => top::run(&job, interval, once, token.as_deref()),
        Command::Cluster { command: ClusterCommand::Run(args) } => cluster::run(&args),
        Command::Savepoint { command } => savepoint::run(command),
    }
}
