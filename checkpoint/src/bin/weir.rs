//! The `weir` command-line tool: list checkpoints, inspect and dump savepoints, trigger
//! savepoints of a running job.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use weir_checkpoint::{inspect, load, read_metadata, CheckpointStorage, METADATA_FILE_NAME};

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
        command: SavepointCommand,
    },
}

#[derive(Subcommand, Debug)]
enum CheckpointsCommand {
    /// Lists the checkpoints under a checkpoint directory (`--checkpoint-dir` of a job, or one
    /// job's directory in it).
    List {
        /// The checkpoint directory.
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum SavepointCommand {
    /// Shows operators, key groups, states with entry counts, source offsets, pending sink
    /// epochs and watermarks of a savepoint or checkpoint directory.
    Inspect {
        /// The savepoint (or `chk-N`) directory.
        path: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Prints every entry of one state as JSON lines (key group, key, namespace, value).
    Dump {
        /// The savepoint (or `chk-N`) directory.
        path: PathBuf,
        /// The operator's uid.
        #[arg(long)]
        operator: String,
        /// The state's name.
        #[arg(long)]
        state: String,
    },
    /// Asks a running job to take a savepoint and prints its path.
    Trigger {
        /// The job's control address, e.g. http://127.0.0.1:9249.
        #[arg(long)]
        job: String,
    },
}

fn list(dir: &std::path::Path) -> Result<()> {
    let mut jobs = Vec::new();
    if dir.join("shared").is_dir() {
        jobs.push(dir.to_path_buf());
    } else {
        for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let p = e?.path();
            if p.join("shared").is_dir() {
                jobs.push(p);
            }
        }
    }
    jobs.sort();
    println!("{:<24} {:>8} {:<10} {:>10} {:>12}  status", "job", "id", "kind", "files", "bytes");
    for job in jobs {
        let name = job.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let parent = job.parent().context("job directory without parent")?;
        let storage = CheckpointStorage::new(parent, &name)?;
        for (id, d) in storage.list()? {
            if !d.join(METADATA_FILE_NAME).exists() {
                println!("{name:<24} {id:>8} {:<10} {:>10} {:>12}  incomplete", "-", "-", "-");
                continue;
            }
            let (status, files, bytes) = match read_metadata(&d) {
                Ok(m) => {
                    let (n, b) = m.files().fold((0u64, 0u64), |(n, b), f| (n + 1, b + f.size));
                    let status = match load(&d) {
                        Ok(_) => "complete".to_string(),
                        Err(e) => format!("broken: {e:#}"),
                    };
                    (status, n.to_string(), b.to_string())
                }
                Err(e) => (format!("broken: {e:#}"), "-".into(), "-".into()),
            };
            println!("{name:<24} {id:>8} {:<10} {files:>10} {bytes:>12}  {status}", "checkpoint");
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Checkpoints { command: CheckpointsCommand::List { dir } } => list(&dir),
        Command::Savepoint { command: SavepointCommand::Inspect { path, json } } => {
            let snap = load(&path)?;
            let report = inspect::inspect(&snap)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", inspect::render(&report));
            }
            Ok(())
        }
        Command::Savepoint { command: SavepointCommand::Dump { path, operator, state } } => {
            let snap = load(&path)?;
            for entry in inspect::dump(&snap, &operator, &state)? {
                println!("{entry}");
            }
            Ok(())
        }
        Command::Savepoint { command: SavepointCommand::Trigger { job } } => {
            let url = format!("{}/savepoints", job.trim_end_matches('/'));
            let resp = ureq::post(&url).call();
            match resp {
                Ok(r) => {
                    let v: serde_json::Value = r.into_json()?;
                    match v.get("path").and_then(|p| p.as_str()) {
                        Some(p) => println!("{p}"),
                        None => bail!("unexpected answer from {url}: {v}"),
                    }
                    Ok(())
                }
                Err(ureq::Error::Status(code, r)) => {
                    bail!("{url} answered {code}: {}", r.into_string().unwrap_or_default())
                }
                Err(e) => bail!("could not reach {url}: {e}"),
            }
        }
    }
}
