//! Checkpoints and restores of large keyed state (`bench --restore-mib`): the `keyed_state` job
//! fills its state, checkpoints it a few times, is killed with SIGKILL, and is restarted; the
//! time from starting the new process to its first record processed is the restore time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::control::{free_local_addr, CheckpointWatch};

/// Bytes per key's value; the key count follows from the state size asked for.
const VALUE_BYTES: u64 = 256;

/// Checkpoints taken after the state is full, for the duration figures.
const FULL_CHECKPOINTS: usize = 5;

/// Where the checkpoints go, and how the restarts find their local state.
pub struct Target {
    pub label: String,
    /// `--checkpoint-dir`.
    pub location: String,
}

/// One row of the table.
pub struct RestoreRow {
    pub label: String,
    pub state_mib: f64,
    pub durations_ms: Vec<f64>,
    pub incremental_mib: Vec<f64>,
    /// Restarts on the machine that ran the job (its state directory kept).
    pub same_machine_s: Vec<f64>,
    /// The same after dropping the page cache (as after a reboot): empty where it cannot be
    /// dropped (not root).
    pub cold_s: Vec<f64>,
    /// Cold, with the checkpoint's stamps put aside, so that verifying it reads every file (what
    /// every restore did before stamps).
    pub cold_unstamped_s: Vec<f64>,
    /// Restarts on an empty state directory (a new machine).
    pub new_machine_s: Vec<f64>,
}

/// A running `keyed_state` job.
struct Job {
    child: Child,
    addr: String,
}

impl Job {
    fn start(exe: &Path, args: &[String], state: &Path, restore: &str) -> Result<Job> {
        let addr = free_local_addr()?;
        let child = Command::new(exe)
            .args(args)
            .arg("--state-dir")
            .arg(state)
            .args(["--restore", restore, "--metrics-addr", &addr])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting keyed_state")?;
        Ok(Job { child, addr })
    }

    /// Records the keyed operator has processed, from the live counters of `/metrics`; `None`
    /// while the endpoint is not up.
    fn processed(&self) -> Option<u64> {
        let url = format!("http://{}/metrics", self.addr);
        let text = ureq::get(&url).timeout(Duration::from_secs(1)).call().ok()?.into_string().ok()?;
        let prefix = "weir_records_in_total{operator=\"overwrite\"";
        Some(
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum(),
        )
    }

    fn alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("keyed_state exited with {status}");
        }
        Ok(())
    }

    /// SIGKILL, as a lost machine.
    fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

/// Fills `state_mib` of keyed state checkpointing to `target`, then measures `restarts`
/// restarts on the same machine and on a new one.
pub fn measure(exe: &Path, work: &Path, target: &Target, state_mib: u64, restarts: usize) -> Result<RestoreRow> {
    let keys = state_mib * (1 << 20) / VALUE_BYTES;
    let args: Vec<String> = [
        "--keys",
        &keys.to_string(),
        "--value-bytes",
        &VALUE_BYTES.to_string(),
        "--steady-rate",
        "5000",
        "-p",
        "2",
        "--checkpoint-dir",
        &target.location,
        "--checkpoint-interval",
        "2s",
        "--progress-interval",
        "0s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let state = |name: &str| -> PathBuf { work.join(format!("restore-state-{name}")) };
    let job = Job::start(exe, &args, &state("first"), "none")?;
    let mut job = job;
    let watch = CheckpointWatch::start(&job.addr);
    let filled = wait_for(&mut job, Duration::from_secs(600), |n| n >= keys, "the state to fill")?;
    eprintln!("{}: {keys} keys written in {:.1} s; checkpointing", target.label, filled.as_secs_f64());
    // Checkpoints that start after the fill hold the full state.
    let fill_done = weir::runtime::now_millis();
    let mut after = Vec::new();
    let started = Instant::now();
    while after.len() < FULL_CHECKPOINTS {
        if started.elapsed() > Duration::from_secs(300) {
            bail!("{}: {} checkpoints of the full state in 300 s", target.label, after.len());
        }
        std::thread::sleep(Duration::from_millis(200));
        job.alive()?;
        after = watch.seen().into_iter().filter(|c| c.trigger_time >= fill_done).collect();
    }
    job.kill()?;
    let checkpoints = watch.finish();
    let last = checkpoints.last().context("no checkpoint")?;
    let mib = |b: f64| b / (1u64 << 20) as f64;
    let mut row = RestoreRow {
        label: target.label.clone(),
        state_mib: mib(last.size_bytes),
        durations_ms: after.iter().map(|c| c.duration_ms).collect(),
        incremental_mib: after.iter().map(|c| mib(c.incremental_bytes)).collect(),
        same_machine_s: Vec::new(),
        cold_s: Vec::new(),
        cold_unstamped_s: Vec::new(),
        new_machine_s: Vec::new(),
    };
    let restart = |dir: &Path| -> Result<f64> {
        let t = Instant::now();
        let mut job = Job::start(exe, &args, dir, "latest")?;
        wait_for(&mut job, Duration::from_secs(600), |n| n > 0, "the first record after the restore")?;
        let secs = t.elapsed().as_secs_f64();
        job.kill()?;
        Ok(secs)
    };
    for r in 0..restarts {
        row.same_machine_s.push(restart(&state("first"))?);
        if drop_page_cache() {
            row.cold_s.push(restart(&state("first"))?);
            let aside = set_stamps_aside(work, true)?;
            let dropped = drop_page_cache();
            let unstamped = restart(&state("first"));
            set_stamps_aside(work, false)?;
            if dropped {
                row.cold_unstamped_s.push(unstamped?);
            }
            eprintln!("{}: restart {r}: {aside} stamps files put aside for the unstamped restart", target.label);
        }
        let dir = state(&format!("new-{r}"));
        row.new_machine_s.push(restart(&dir)?);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(state("first"));
    Ok(row)
}

/// Writes back dirty pages and drops the page cache, so the next restart reads from the disk;
/// false where that is not allowed.
fn drop_page_cache() -> bool {
    let synced = Command::new("sync").status().is_ok_and(|s| s.success());
    synced && std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Renames every `_stamps` file under `dir` to `_stamps.aside` (or back): how many it renamed.
fn set_stamps_aside(dir: &Path, aside: bool) -> Result<usize> {
    let (from, to) = if aside { ("_stamps", "_stamps.aside") } else { ("_stamps.aside", "_stamps") };
    let mut n = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(path);
            } else if e.file_name() == from {
                std::fs::rename(&path, path.with_file_name(to))?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Polls the job until `done(processed records)`; returns how long that took.
fn wait_for(job: &mut Job, limit: Duration, done: impl Fn(u64) -> bool, what: &str) -> Result<Duration> {
    let start = Instant::now();
    loop {
        job.alive()?;
        if job.processed().is_some_and(&done) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("no {what} within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
