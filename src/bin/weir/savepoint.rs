//! `weir savepoint …`: inspect, dump and compare snapshots; trigger a savepoint of a running job.

use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use weir::checkpoint::inspect::DumpFilter;
use weir::checkpoint::open::snapshot_at;
use weir::checkpoint::Location;
use weir::inspect;

/// Where to find a snapshot: a savepoint, a `chk-N` directory, or a job's checkpoint directory
/// (its newest complete checkpoint); a path or `s3://bucket/prefix`.
const SNAPSHOT_HELP: &str = "A savepoint or chk-N directory, or a job's checkpoint directory (its newest \
                             complete checkpoint): a path or s3://bucket/prefix";

#[derive(Subcommand, Debug)]
pub enum SavepointCommand {
    /// A readable summary of a savepoint or checkpoint: per operator its role, parallelism, key
    /// groups, states with entry counts and sizes, timers, watermark, source position and what a
    /// sink has not committed yet.
    Inspect(InspectArgs),
    /// Streams the entries of one state as JSON lines or CSV (key group, key, namespace, map
    /// key, value), optionally only one key or key group.
    Dump(DumpArgs),
    /// Compares two snapshots: per operator parallelism, watermark, entries and bytes of each
    /// state, timers, source positions and pending sink output side by side; with `--keys`, the
    /// keys of one state that were added, removed or changed.
    Diff(DiffArgs),
    /// Asks a running job to take a savepoint and prints its path.
    Trigger {
        /// The job's control address, e.g. http://127.0.0.1:9249.
        #[arg(long)]
        job: String,
        /// The job's --control-token, if it has one.
        #[arg(long, env = "WEIR_CONTROL_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[arg(help = SNAPSHOT_HELP)]
    path: Location,
    /// One JSON document with everything (field names documented in the README).
    #[arg(long)]
    json: bool,
    /// Every subtask, split, partition and pending file.
    #[arg(long, short)]
    verbose: bool,
    /// Kafka bootstrap servers: adds each source partition's lag behind its end now.
    #[arg(long, value_name = "HOST:PORT")]
    brokers: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// Comma-separated values with a header; structured cells as JSON.
    Csv,
}

#[derive(Args, Debug)]
pub struct DumpArgs {
    #[arg(help = SNAPSHOT_HELP)]
    path: Location,
    /// The operator's uid.
    #[arg(long)]
    operator: String,
    /// The state's name.
    #[arg(long)]
    state: String,
    /// Only this key, as JSON (`42`, `"berlin"`, `["a", 1]`), encoded the way jobs encode keys.
    #[arg(long, value_name = "JSON", value_parser = parse_json)]
    key: Option<serde_json::Value>,
    /// Only this key group.
    #[arg(long, value_name = "N")]
    key_group: Option<u16>,
    /// At most this many entries.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The first snapshot (a savepoint or chk-N directory, or s3://bucket/prefix).
    a: Location,
    /// The second snapshot.
    b: Location,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// With --keys: the operator whose state to compare.
    #[arg(long, requires = "keys")]
    operator: Option<String>,
    /// With --keys: the state to compare.
    #[arg(long, requires = "keys")]
    state: Option<String>,
    /// List the entries of --state that were added, removed or changed, as JSON lines.
    #[arg(long, requires_all = ["operator", "state"])]
    keys: bool,
}

fn parse_json(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON ({e}); a string key needs quotes: '\"{s}\"'"))
}

/// Writes to stdout; a reader that went away (`| head`) ends the output without an error.
fn out_ok(r: std::io::Result<()>) -> Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(anyhow::Error::new(Closed)),
        other => Ok(other?),
    }
}

/// Stdout was closed by its reader: stop quietly.
#[derive(Debug)]
pub struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "output closed")
    }
}

impl std::error::Error for Closed {}

pub fn run(command: SavepointCommand) -> Result<()> {
    match command {
        SavepointCommand::Inspect(a) => inspect_cmd(a),
        SavepointCommand::Dump(a) => dump_cmd(a),
        SavepointCommand::Diff(a) => diff_cmd(a),
        SavepointCommand::Trigger { job, token } => trigger(&job, token.as_deref()),
    }
}

fn inspect_cmd(a: InspectArgs) -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let snap = snapshot_at(&a.path, scratch.path())?;
    let mut report = inspect::inspect(&snap)?;
    if let Some(brokers) = &a.brokers {
        inspect::add_kafka_lag(&mut report, brokers)?;
    }
    let text = if a.json { serde_json::to_string_pretty(&report)? + "\n" } else { inspect::render(&report, a.verbose) };
    out_ok(std::io::stdout().lock().write_all(text.as_bytes()))
}

/// A CSV cell: strings as they are, null empty, anything else as JSON.
fn cell(v: Option<&serde_json::Value>) -> String {
    match v {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

fn dump_cmd(a: DumpArgs) -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let snap = snapshot_at(&a.path, scratch.path())?;
    let filter = DumpFilter { key: a.key.clone(), key_group: a.key_group, limit: a.limit };
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let n = match a.format {
        Format::Json => weir::checkpoint::inspect::dump(&snap, &a.operator, &a.state, &filter, &mut |v| {
            out_ok(serde_json::to_writer(&mut w, v).map_err(std::io::Error::from).and_then(|_| w.write_all(b"\n")))
        }),
        Format::Csv => {
            let mut csv = csv::Writer::from_writer(&mut w);
            out_ok(
                csv.write_record(["key_group", "key", "namespace", "map_key", "value"]).map_err(std::io::Error::from),
            )?;
            let n = weir::checkpoint::inspect::dump(&snap, &a.operator, &a.state, &filter, &mut |v| {
                let cells = ["key_group", "key", "namespace", "map_key", "value"].map(|f| cell(v.get(f)));
                out_ok(csv.write_record(&cells).map_err(std::io::Error::from))
            });
            out_ok(csv.flush())?;
            n
        }
    };
    let n = match n {
        Err(e) if e.is::<Closed>() => return Ok(()),
        other => other?,
    };
    out_ok(w.flush())?;
    if n == 0 && (a.key.is_some() || a.key_group.is_some()) {
        eprintln!("no entry of state '{}' matches", a.state);
    }
    Ok(())
}

fn diff_cmd(a: DiffArgs) -> Result<()> {
    let (sa, sb) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (snap_a, snap_b) = (snapshot_at(&a.a, sa.path())?, snapshot_at(&a.b, sb.path())?);
    if a.keys {
        let (Some(op), Some(state)) = (&a.operator, &a.state) else { bail!("--keys needs --operator and --state") };
        let stdout = std::io::stdout();
        let mut w = std::io::BufWriter::new(stdout.lock());
        let counts = inspect::diff::key_changes(&snap_a, &snap_b, op, state, &mut |v| {
            out_ok(serde_json::to_writer(&mut w, v).map_err(std::io::Error::from).and_then(|_| w.write_all(b"\n")))
        });
        let counts = match counts {
            Err(e) if e.is::<Closed>() => return Ok(()),
            other => other?,
        };
        out_ok(w.flush())?;
        eprintln!("{} added, {} removed, {} changed", counts.added, counts.removed, counts.changed);
        return Ok(());
    }
    let d = inspect::diff::diff(&inspect::inspect(&snap_a)?, &inspect::inspect(&snap_b)?);
    let text = if a.json { serde_json::to_string_pretty(&d)? + "\n" } else { inspect::diff::render(&d) };
    out_ok(std::io::stdout().lock().write_all(text.as_bytes()))
}

fn trigger(job: &str, token: Option<&str>) -> Result<()> {
    let url = format!("{}/savepoints", job.trim_end_matches('/'));
    let mut req = ureq::post(&url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    match req.call() {
        Ok(r) => {
            let v: serde_json::Value = r.into_json().with_context(|| format!("reading the answer of {url}"))?;
            match v.get("path").and_then(|p| p.as_str()) {
                Some(p) => println!("{p}"),
                None => bail!("unexpected answer from {url}: {v}"),
            }
            Ok(())
        }
        Err(ureq::Error::Status(code, r)) => bail!("{url} answered {code}: {}", r.into_string().unwrap_or_default()),
        Err(e) => bail!("could not reach {url}: {e}"),
    }
}
