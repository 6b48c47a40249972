//! The Kafka broker dies (SIGKILL) in the middle of a job and comes back: Kafka source →
//! auction_windows → Kafka sink, for both exactly-once modes. The job may ride it out or fail;
//! restarted with the same flags (as a supervisor would), its output is exactly that of a
//! failure-free run.

mod common;

use std::time::{Duration, Instant};

use common::kafka::{assert_exactly, auction_kafka_args, committed_values, Scenario};
use common::{broker_in, kill_broker, stop_broker};

/// One broker restart at a time: each test runs a broker of its own beside its job.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A broker of the test's own, so that killing it disturbs no other test. Stopped when dropped.
struct OwnBroker {
    dir: tempfile::TempDir,
    addr: String,
}

impl OwnBroker {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr = broker_in(Some(dir.path()));
        OwnBroker { dir, addr }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        stop_broker(self.dir.path());
    }
}

/// Runs the job, kills the broker once the job has completed `after` checkpoints, starts the
/// broker again, and restarts the job whenever it fails until it finishes. Returns the number of
/// job starts.
fn run_through_broker_restart(broker: &OwnBroker, args: &[String], job_chk: &std::path::Path, after: u64) -> usize {
    let spawn = || common::spawn("auction_windows", args);
    let mut job = spawn();
    common::await_checkpoint(&mut job.child, job_chk, after);
    kill_broker(broker.dir.path());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(broker_in(Some(broker.dir.path())), broker.addr, "the broker came back on its address");
    let mut starts = 1;
    let deadline = Instant::now() + Duration::from_secs(400);
    loop {
        let status = loop {
            if let Some(s) = job.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                panic!("the job did not finish within 400 s of the broker restart\n{}", hung_job_report(&mut job));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if status.success() {
            return starts;
        }
        let stderr = job.log();
        assert!(starts < 5, "the job failed {starts} times after the broker restart; last:\n{stderr}");
        eprintln!("the job failed after the broker restart (start {starts}); starting it again:\n{stderr}");
        job = spawn();
        starts += 1;
    }
}

/// What a job that hangs is doing: its threads' stacks (where gdb is installed) and its log,
/// after it is killed.
fn hung_job_report(job: &mut common::Job) -> String {
    let stacks = std::process::Command::new("gdb")
        .args(["-p", &job.id().to_string(), "-batch", "-ex", "thread apply all bt 12"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("(no stacks: gdb: {e})"));
    let _ = job.kill();
    let _ = job.wait();
    let stderr = job.log();
    format!("threads:\n{stacks}\nlog:\n{stderr}")
}

fn job_args(addr: &str, input: &str, output: &str, chk: &std::path::Path, delivery: &str) -> Vec<String> {
    let prefix = format!("restart-{}", std::process::id());
    let mut args = auction_kafka_args(addr, (input, output), delivery, &prefix, 2, chk, "200ms");
    args.extend(["--rate".to_string(), "2500".to_string()]);
    args
}

fn broker_restart(delivery: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let broker = OwnBroker::start();
    let addr = broker.addr.clone();
    let sc = Scenario::new(&addr, "restart", 30_000, 2);
    let (input, output, expected, chk) = (&sc.input, &sc.output, &sc.expected, sc.chk());
    let args = job_args(&addr, input, output, &chk, delivery);
    let starts = run_through_broker_restart(&broker, &args, &chk.join("auction_windows"), 5);
    println!("{delivery}: finished after {starts} start(s)");
    if delivery == "exactly-once-txn" {
        assert_exactly(&addr, output, expected);
    } else {
        assert_eq!(&committed_values(&addr, output), expected, "the rows of a failure-free run");
        let ids = weir::operators::kafka::published_ids(&addr, output).unwrap();
        assert!(ids.values().all(|n| *n == 1), "every (producer, epoch, seq) published once");
    }
}

#[test]
fn a_broker_restart_mid_run_keeps_txn_output_exact() {
    broker_restart("exactly-once-txn");
}

#[test]
fn a_broker_restart_mid_run_keeps_published_output_exact() {
    broker_restart("exactly-once-publish");
}
