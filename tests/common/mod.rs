//! Helpers shared by the integration tests: locating the job binaries, running them and reading
//! their part files.

#![allow(dead_code)]

pub mod cluster;
// The benchmarks' helpers for a job's control endpoint; tests/memory.rs also loads them, as
// part of the whole measure module.
#[allow(clippy::duplicate_mod)]
#[path = "../../examples/measure/control.rs"]
mod control;
pub mod kafka;
pub mod s3;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The path of an example binary built by `cargo test` next to the test executables.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/examples/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target profile directory");
    let path = dir.join("examples").join(name);
    assert!(path.exists(), "{} is missing: cargo test builds examples, run the tests through cargo", path.display());
    path
}

/// The `weir` CLI, built next to the examples by `scripts/test` (`cargo build --all-targets`).
pub fn weir_cli() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target profile directory");
    let path = dir.join("weir");
    assert!(path.exists(), "{} is missing: run the tests with scripts/test, which builds every target", path.display());
    path
}

/// A free loopback port (bound, then released), below Linux's ephemeral range: see
/// `free_local_addr` in the benchmarks' `measure/control.rs`, which this shares.
pub fn free_port() -> u16 {
    let addr = control::free_local_addr().expect("a free port");
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("host:port")
}

/// Writes `n` Nexmark-shaped bids as JSON lines: event time advancing 20 ms per bid with up to
/// `disorder` ms of disorder, 50 auctions.
pub fn write_bids(path: &Path, n: usize, disorder: u64, seed: u64) -> Vec<(u64, u64, i64)> {
    use std::io::Write;
    let mut rng = Rng::new(seed);
    let base = 1_767_225_600_000i64;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut bids = Vec::with_capacity(n);
    for i in 0..n as i64 {
        let t = base + i * 20 - rng.below(disorder + 1) as i64;
        let (auction, price) = (1000 + rng.below(50), rng.below(100_000));
        writeln!(
            f,
            r#"{{"auction":{auction},"bidder":1,"price":{price},"channel":"c","url":"u","date_time":{t},"extra":"{}"}}"#,
            "x".repeat(rng.below(40) as usize)
        )
        .unwrap();
        bids.push((auction, price, t));
    }
    bids
}

/// Runs a job binary to completion and returns its output, failing the test on a non-zero exit.
pub fn run_ok(name: &str, args: &[&str]) -> Output {
    let out = run(name, args);
    assert!(
        out.status.success(),
        "{name} {args:?} failed with {}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Starts a job binary in the background (RUST_LOG=warn): its log goes to a file, stdout is
/// discarded.
pub fn spawn(name: &str, args: &[String]) -> Job {
    spawn_with_env(name, args, &[])
}

/// [`spawn`] with extra environment variables (e.g. `WEIR_PAUSE_AT`).
pub fn spawn_with_env(name: &str, args: &[String], env: &[(&str, &str)]) -> Job {
    // The log goes to a file: a pipe that nobody reads before the job ends stalls a job that
    // logs more than the pipe holds (a broker outage makes librdkafka and the job log a lot).
    let log = tempfile::NamedTempFile::new().expect("creating a job log");
    let child = Command::new(example(name))
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log.reopen().expect("opening the job log"))
        .spawn()
        .expect("starting job binary");
    Job { child, log }
}

/// A job binary running in the background, as [`spawn`] started it.
pub struct Job {
    pub child: std::process::Child,
    log: tempfile::NamedTempFile,
}

impl Job {
    /// What the job logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl std::ops::Deref for Job {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.child
    }
}

impl std::ops::DerefMut for Job {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.child
    }
}

/// Waits (up to 60 s) until the job writing checkpoints to `job_chk` completed checkpoint `n`,
/// failing the test if the job ends first.
pub fn await_checkpoint(job: &mut std::process::Child, job_chk: &Path, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while max_checkpoint(job_chk) < n {
        assert!(Instant::now() < deadline, "no checkpoint {n} within 60 s");
        assert!(job.try_wait().expect("waiting for the job").is_none(), "the job ended before checkpoint {n}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a job binary to completion within `limit`, failing the test (after killing the job) if
/// it takes longer.
pub fn run_within(name: &str, args: &[&str], limit: Duration) -> Output {
    // Output goes to files, read at the end: pipes nobody reads while the job runs would stall
    // a job that writes more than a pipe holds.
    let (out, err) = (tempfile::tempfile().expect("stdout file"), tempfile::tempfile().expect("stderr file"));
    let mut child = Command::new(example(name))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(out.try_clone().expect("stdout file"))
        .stderr(err.try_clone().expect("stderr file"))
        .spawn()
        .expect("starting job binary");
    let deadline = Instant::now() + limit;
    let read = |mut f: &std::fs::File| {
        use std::io::{Read, Seek};
        let mut v = Vec::new();
        f.seek(std::io::SeekFrom::Start(0)).and_then(|_| f.read_to_end(&mut v)).expect("reading job output");
        v
    };
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the job") {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().expect("killing the job");
            let _ = child.wait();
            panic!("{name} {args:?} did not finish within {limit:?}:\n{}", String::from_utf8_lossy(&read(&err)));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: read(&out), stderr: read(&err) }
}

/// Runs a job binary to completion.
pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(example(name)).args(args).env("RUST_LOG", "warn").output().expect("starting job binary")
}

/// The lines of all part files under `dir` whose name ends with `ext`, without CSV headers.
pub fn read_parts(dir: &Path, ext: &str, header: Option<&str>) -> Vec<String> {
    let mut lines = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("output directory").map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if !path.to_string_lossy().ends_with(ext) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for l in text.lines() {
            if Some(l) == header || l.is_empty() {
                continue;
            }
            lines.push(l.to_string());
        }
    }
    lines
}

/// A small deterministic pseudo-random generator for test data (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Starts (or finds) the test broker with `scripts/broker start` and returns its address.
/// Fails the test loudly if there is no broker: Kafka tests never skip.
pub fn broker() -> String {
    broker_in(None)
}

/// Like [`broker`], for a separate broker instance whose state lives in `dir`.
pub fn broker_in(dir: Option<&Path>) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/broker");
    let mut cmd = Command::new(&script);
    cmd.arg("start");
    if let Some(d) = dir {
        cmd.env("WEIR_BROKER_DIR", d);
    }
    let out = cmd.output().expect("running scripts/broker");
    assert!(
        out.status.success(),
        "no Kafka broker: scripts/broker start failed\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().last().expect("broker address").trim().to_string()
}

/// Stops a broker instance started with [`broker_in`].
pub fn stop_broker(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/broker");
    let out = Command::new(&script).arg("stop").env("WEIR_BROKER_DIR", dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Kills a broker instance started with [`broker_in`] with SIGKILL, as a crash would; its
/// storage stays for the next [`broker_in`].
pub fn kill_broker(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/broker");
    let out = Command::new(&script).arg("kill").env("WEIR_BROKER_DIR", dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `job` until it SIGKILLs itself at the named crash `point`, at the first checkpoint from
/// `at` on; fails the test if the point is not reached.
pub fn crash_at(job: &str, args: &[String], point: &str, at: u64) {
    let o = Command::new(example(job))
        .args(args)
        .env("RUST_LOG", "warn")
        .env("WEIR_CRASH_AT", format!("{point}:{at}"))
        .output()
        .expect("starting the job");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.signal(), Some(9), "{job} crashed by SIGKILL at {point}:\n{stderr}");
    assert!(stderr.contains("WEIR_CRASH_AT: crashing at"), "the crash point {point} was reached:\n{stderr}");
}

/// Highest checkpoint id under the job's checkpoint directory.
pub fn max_checkpoint(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("chk-")?.parse().ok()).max().unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Runs `job args` until it exits 0: first once per point of `early` (each crashes itself at the
/// first checkpoint from a little ahead on), then with SIGKILLs at random moments until
/// `min_kills`, then once per point of `late` (reached only at the final checkpoint of the input).
/// Returns the number of kills.
pub fn kill_until_done(
    job: &str,
    args: &[String],
    job_chk: &Path,
    early: &[&str],
    late: &[&str],
    min_kills: usize,
    seed: u64,
) -> usize {
    let runs = KillRuns { max_checkpoint: &|| max_checkpoint(job_chk), per_run: &|_| Vec::new(), env: &[] };
    kill_until_done_with(job, args, &runs, early, late, min_kills, seed)
}

/// What [`kill_until_done_with`] needs besides the job: where its checkpoints are counted, the
/// arguments that change from run to run (a fresh `--state-dir`, a new machine), and environment.
pub struct KillRuns<'a> {
    pub max_checkpoint: &'a dyn Fn() -> u64,
    pub per_run: &'a dyn Fn(usize) -> Vec<String>,
    pub env: &'a [(String, String)],
}

/// [`kill_until_done`] with checkpoints anywhere (an object store) and per-run arguments.
pub fn kill_until_done_with(
    job: &str,
    args: &[String],
    runs: &KillRuns,
    early: &[&str],
    late: &[&str],
    min_kills: usize,
    seed: u64,
) -> usize {
    let mut run = 0;
    let mut rng = Rng::new(seed);
    let mut kills = 0;
    let mut point = 0;
    let started = Instant::now();
    loop {
        // Generous: on a loaded machine the kills, restores and the final run together can take
        // minutes; a job that never finishes still fails here.
        assert!(started.elapsed() < Duration::from_secs(700), "{job} did not finish within 700 s ({kills} kills)");
        let mut cmd = Command::new(example(job));
        // WEIR_DEBUG_KILLS=1: the jobs log at info, and every killed run's log tail is printed.
        let log = if std::env::var_os("WEIR_DEBUG_KILLS").is_some() { "info" } else { "warn" };
        cmd.args(args).args((runs.per_run)(run)).envs(runs.env.iter().cloned());
        cmd.env("RUST_LOG", log).stdout(Stdio::null()).stderr(Stdio::piped());
        run += 1;
        let random_phase_done = point >= early.len() && kills >= min_kills + early.len();
        let named = if point < early.len() {
            cmd.env("WEIR_CRASH_AT", format!("{}:{}", early[point], (runs.max_checkpoint)() + 2));
            point += 1;
            true
        } else if random_phase_done && point < early.len() + late.len() {
            cmd.env("WEIR_CRASH_AT", format!("{}:{}", late[point - early.len()], (runs.max_checkpoint)() + 1));
            point += 1;
            true
        } else {
            false
        };
        let mut child = cmd.spawn().expect("starting the job");
        let deadline = if named {
            Instant::now() + Duration::from_secs(120)
        } else if kills < min_kills + early.len() {
            Instant::now() + Duration::from_millis(60 + rng.below(400))
        } else {
            Instant::now() + Duration::from_secs(300)
        };
        let meant_to_finish = !named && kills >= min_kills + early.len();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let status = match status {
            Some(s) => s,
            None => {
                child.kill().unwrap();
                child.wait().unwrap()
            }
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        if status.success() {
            assert!(!named, "{job} finished without reaching its crash point");
            if kills >= min_kills && point >= early.len() + late.len() {
                return kills;
            }
            panic!("{job} finished after only {kills} kills; give it more input");
        }
        assert_eq!(status.signal(), Some(9), "{job} must only die by SIGKILL, got {status:?}:\n{stderr}");
        if meant_to_finish || std::env::var_os("WEIR_DEBUG_KILLS").is_some() {
            let lines: Vec<&str> = stderr.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!("--- {job} killed ({kills} kills, named: {named}); its log ends:\n{tail}");
        }
        if named {
            assert!(stderr.contains("WEIR_CRASH_AT: crashing at"), "the named crash point was reached: {stderr}");
        }
        kills += 1;
    }
}
