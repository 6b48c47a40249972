//! The command-line flags every weir job binary shares.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
// Locations parse with `Location`'s `FromStr` (a local directory, `file://` or `s3://`; any other
// scheme is refused at start); local-only flags with `local_path`, which refuses URLs instead of
// making a directory named after their scheme.
use weir_checkpoint::location::local_path;
use weir_checkpoint::Location;

/// Parses durations written like `200ms`, `10s`, `1h`, `1m 30s`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(weir_runtime::parse_duration("200ms").unwrap(), Duration::from_millis(200));
/// assert_eq!(weir_runtime::parse_duration("1h").unwrap(), Duration::from_secs(3600));
/// assert!(weir_runtime::parse_duration("soon").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write durations like 200ms, 10s or 1h)"))
}

fn parse_parallelism(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not a parallelism between 1 and 1024")),
    }
}

fn parse_max_parallelism(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=weir_state::keygroup::MAX_MAX_PARALLELISM).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not a max parallelism between 1 and {}", weir_state::keygroup::MAX_MAX_PARALLELISM)),
    }
}

/// Runtime flags shared by every job binary; flatten it into the job's own clap struct.
///
/// ```
/// use clap::Parser;
/// #[derive(Parser)]
/// struct Cli {
///     #[command(flatten)]
///     job: weir_runtime::JobArgs,
/// }
/// let cli = Cli::parse_from(["job", "--parallelism", "2", "--buffer-timeout", "50ms"]);
/// assert_eq!(cli.job.parallelism, 2);
/// assert_eq!(cli.job.buffer_timeout, std::time::Duration::from_millis(50));
/// ```
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Runtime")]
pub struct JobArgs {
    /// Default number of parallel subtasks of every operator.
    #[arg(short = 'p', long, default_value = "1", value_parser = parse_parallelism)]
    pub parallelism: usize,

    /// Number of key groups: the upper bound of any keyed operator's parallelism, now and after
    /// a restore (keep it fixed for the life of a job).
    #[arg(long, default_value = "128", value_parser = parse_max_parallelism)]
    pub max_parallelism: usize,

    /// Directory for the RocksDB working state of stateful operators [default: a temporary
    /// directory removed when the job ends].
    #[arg(long, value_name = "DIR", value_parser = local_path)]
    pub state_dir: Option<PathBuf>,

    /// Longest time a partly filled batch waits before it is sent downstream (trades latency
    /// against throughput, like Flink's buffer timeout).
    #[arg(long, default_value = "100ms", value_parser = parse_duration, value_name = "DURATION")]
    pub buffer_timeout: std::time::Duration,

    /// Records per batch sent between tasks.
    #[arg(long, default_value = "1024", value_parser = clap::value_parser!(u32).range(1..=1_000_000), value_name = "N")]
    pub batch_size: u32,

    /// Batches a channel between two tasks holds before the sender blocks (backpressure).
    #[arg(long, default_value = "16", value_parser = clap::value_parser!(u32).range(1..=65_536), value_name = "N")]
    pub channel_capacity: u32,

    /// Where checkpoints are stored (a directory per job under it): a local directory, `file://`
    /// or `s3://bucket/prefix` (endpoint and credentials from the `AWS_*` environment). Required
    /// for checkpointing.
    #[arg(long, value_name = "DIR|URL", help_heading = "Checkpoints")]
    pub checkpoint_dir: Option<Location>,

    /// Take a checkpoint this often (off if not given).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "checkpoint_dir", help_heading = "Checkpoints")]
    pub checkpoint_interval: Option<Duration>,

    /// A checkpoint not complete after this long is aborted.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration, help_heading = "Checkpoints")]
    pub checkpoint_timeout: Duration,

    /// Least time between the end of one checkpoint and the start of the next.
    #[arg(long, value_name = "DURATION", default_value = "0ms", value_parser = parse_duration, help_heading = "Checkpoints")]
    pub min_pause: Duration,

    /// Failed or aborted checkpoints in a row the job tolerates before it fails.
    #[arg(long, value_name = "N", default_value_t = 3, help_heading = "Checkpoints")]
    pub tolerable_failed_checkpoints: u32,

    /// Complete checkpoints kept on disk.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Checkpoints")]
    pub retained_checkpoints: u32,

    /// What to start from: `latest` (the newest intact checkpoint in --checkpoint-dir, if any),
    /// `none`, or the path of a savepoint or checkpoint directory.
    #[arg(long, value_name = "latest|none|PATH", default_value = "latest", help_heading = "Checkpoints")]
    pub restore: String,

    /// Start even if the snapshot holds state of operators this job does not have.
    #[arg(long, help_heading = "Checkpoints")]
    pub allow_non_restored_state: bool,

    /// Where savepoints go (taken on request and when the job is stopped with SIGTERM/SIGINT): a
    /// local directory, `file://` or `s3://bucket/prefix`.
    #[arg(long, value_name = "DIR|URL", help_heading = "Checkpoints")]
    pub savepoint_dir: Option<Location>,

    /// Times the job restarts in-process from its latest checkpoint after a failure (0: exit).
    #[arg(long, value_name = "N", default_value_t = 3, help_heading = "Checkpoints")]
    pub restart_attempts: u32,

    /// First delay before an in-process restart; it doubles with every attempt, up to 1 minute.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration, help_heading = "Checkpoints")]
    pub restart_delay: Duration,

    /// Address of the HTTP control endpoint (the dashboard at /, /metrics, /job, /checkpoints,
    /// /exceptions, POST /savepoints); port 0 picks a free port (logged at start). An address
    /// other than loopback needs --control-token.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:0")]
    pub metrics_addr: String,

    /// A secret every request to the control endpoint must carry (`Authorization: Bearer
    /// <token>`, or `?token=<token>` to open the dashboard in a browser); required to bind it
    /// anywhere but loopback.
    #[arg(long, value_name = "TOKEN", env = "WEIR_CONTROL_TOKEN", hide_env_values = true)]
    pub control_token: Option<String>,

    /// Seconds between progress lines in the log (records/s, watermark); 0 turns them off.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub progress_interval: Duration,

    /// Memory of the whole job, like 512MiB or 2GiB: peak RSS stays under it however large the
    /// keyed state grows (state beyond it spills to disk). What is left after a fixed reserve
    /// for the process and the records in flight goes to RocksDB and the state write caches.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes, value_name = "BYTES")]
    pub memory_budget: u64,

    /// Processes the job runs as: each runs this binary with the same flags and its own
    /// --process-index; subtask s of an operator with parallelism p runs in process s * N / p.
    #[arg(long, value_name = "N", default_value_t = 1, env = "WEIR_PROCESSES",
          value_parser = clap::value_parser!(u32).range(1..=1024), help_heading = "Processes")]
    pub processes: u32,

    /// Which of the --processes this one is (0 is the checkpoint coordinator).
    #[arg(long, value_name = "I", default_value_t = 0, env = "WEIR_PROCESS_INDEX", help_heading = "Processes")]
    pub process_index: u32,

    /// host:port of every process in index order, comma-separated, or one pattern with `{i}`
    /// for the index (e.g. `job-{i}.job-svc:7070` for a Kubernetes StatefulSet).
    #[arg(long, value_name = "HOST:PORT,...", env = "WEIR_PEERS", value_delimiter = ',', help_heading = "Processes")]
    pub peers: Vec<String>,

    /// Where this process accepts its peers' connections [default: its own --peers entry].
    #[arg(long, value_name = "HOST:PORT", env = "WEIR_LISTEN", help_heading = "Processes")]
    pub listen: Option<String>,

    /// A peer silent this long (no data, no heartbeat) is lost, and the job fails.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, help_heading = "Processes")]
    pub peer_timeout: Duration,

    /// How long a process waits at start for every peer to be reachable.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration, help_heading = "Processes")]
    pub connect_timeout: Duration,
}

/// The smallest `--memory-budget`: the process itself (code, threads, allocator arenas, RocksDB's
/// fixed structures) takes about 80 MiB whatever the state.
pub const MIN_MEMORY_BUDGET: u64 = 128 << 20;

/// The part of `--memory-budget` not given to keyed state: 96 MiB for the process and an
/// eighth of the budget for records in flight (channels, batches, operator buffers).
pub(crate) fn state_share(budget: u64) -> u64 {
    budget.saturating_sub((96 << 20) + budget / 8).max(16 << 20)
}

/// Parses a byte size: a number with an optional unit (B, KiB, MiB, GiB, KB, MB, GB).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("'{s}' is not a size like 512MiB or 2GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("unknown size unit '{other}' in '{s}' (use B, KiB, MiB or GiB)")),
    };
    let bytes = (n * mult as f64) as u64;
    if bytes < MIN_MEMORY_BUDGET {
        return Err(format!("'{s}' is below the smallest budget, {}MiB", MIN_MEMORY_BUDGET >> 20));
    }
    Ok(bytes)
}

impl JobArgs {
    /// The address of every process, `{i}` patterns expanded; empty for a single process.
    ///
    /// ```
    /// let args = weir_runtime::JobArgs { processes: 3, peers: vec!["job-{i}.svc:7070".into()], ..Default::default() };
    /// assert_eq!(args.peer_addresses().unwrap()[2], "job-2.svc:7070");
    /// ```
    pub fn peer_addresses(&self) -> anyhow::Result<Vec<String>> {
        let n = self.processes as usize;
        if self.process_index as usize >= n {
            anyhow::bail!("--process-index {} is not below --processes {n}", self.process_index);
        }
        if n == 1 {
            return Ok(Vec::new());
        }
        let peers: Vec<String> = match self.peers.as_slice() {
            [pattern] if pattern.contains("{i}") => (0..n).map(|i| pattern.replace("{i}", &i.to_string())).collect(),
            list => list.to_vec(),
        };
        if peers.len() != n {
            anyhow::bail!(
                "--processes {n} needs {n} addresses in --peers (or one pattern with {{i}}), got {}",
                peers.len()
            );
        }
        Ok(peers)
    }

    /// A hash of this process's command line without the flags that differ between the
    /// processes of one job (`--process-index`, `--state-dir`, `--listen`, `--metrics-addr`,
    /// `--peers`), so processes started with different job flags refuse each other.
    pub(crate) fn command_line_fingerprint() -> u64 {
        use std::hash::{Hash, Hasher};
        const PER_PROCESS: [&str; 5] = ["--process-index", "--state-dir", "--listen", "--metrics-addr", "--peers"];
        let mut h = std::hash::DefaultHasher::new();
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let name = a.split('=').next().unwrap_or(&a);
            if PER_PROCESS.contains(&name) {
                if !a.contains('=') {
                    args.next();
                }
                continue;
            }
            a.hash(&mut h);
        }
        h.finish()
    }

    /// Whether checkpoints are taken.
    pub fn checkpointing(&self) -> bool {
        self.checkpoint_dir.is_some() && self.checkpoint_interval.is_some()
    }
}

impl Default for JobArgs {
    fn default() -> Self {
        JobArgs {
            parallelism: 1,
            max_parallelism: weir_state::DEFAULT_MAX_PARALLELISM,
            state_dir: None,
            buffer_timeout: Duration::from_millis(100),
            batch_size: 1024,
            channel_capacity: 16,
            progress_interval: Duration::from_secs(5),
            metrics_addr: "127.0.0.1:0".to_string(),
            control_token: None,
            checkpoint_dir: None,
            checkpoint_interval: None,
            checkpoint_timeout: Duration::from_secs(600),
            min_pause: Duration::ZERO,
            tolerable_failed_checkpoints: 3,
            retained_checkpoints: 2,
            restore: "latest".to_string(),
            allow_non_restored_state: false,
            savepoint_dir: None,
            restart_attempts: 3,
            restart_delay: Duration::from_millis(500),
            memory_budget: 1 << 30,
            processes: 1,
            process_index: 0,
            peers: Vec::new(),
            listen: None,
            peer_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(120),
        }
    }
}
