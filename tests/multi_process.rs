//! One job as several processes, each on its own loopback "host" (127.0.0.1, .2, .3) with its own
//! empty `--state-dir` every run (a new machine), checkpoints and output on the S3-compatible
//! server: killed again and again at random moments and at named crash points (every process
//! fails with the one killed, fail-stop), the coordinator and the workers 10 times each,
//! restarted with the same flags, then rescaled to other
//! numbers of processes and parallelisms; the committed output always equals a failure-free run
//! in one process.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{example, read_parts, run_ok, Rng};

const HEADER: &str = "window_start,auction,count,max_price";

/// Bids with up to 3 s of disorder (late ones included), the same for every run of a test.
fn write_bids(path: &Path, n: usize) {
    common::write_bids(path, n, 3_000, 5);
}

fn sorted_rows(dir: &Path) -> Vec<String> {
    let mut rows = read_parts(dir, ".csv", Some(HEADER));
    rows.sort();
    rows
}

/// The sum of the Prometheus samples whose line starts with `prefix` and contains `has`.
fn sum(metrics: &str, prefix: &str, has: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix) && l.contains(has))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Fails with the rows that differ (not all of them).
fn assert_same_rows(got: &[String], expected: &[String]) {
    let missing: Vec<&String> = expected.iter().filter(|r| got.binary_search(r).is_err()).take(5).collect();
    let extra: Vec<&String> = got.iter().filter(|r| expected.binary_search(r).is_err()).take(5).collect();
    assert!(
        got == expected,
        "committed windows differ from the failure-free run: {} rows vs {}, missing {missing:?}, extra {extra:?}",
        got.len(),
        expected.len()
    );
}

/// One source subtask (in process 0), so that which bids are late is the same in every run;
/// the windows and sinks at `parallelism`, spread over the processes.
fn job_args(input: &Path, out: &str, chk: &str, parallelism: usize) -> Vec<String> {
    let p = parallelism.to_string();
    ["--input", input.to_str().unwrap(), "--output", out, "--window-parallelism", &p, "--progress-interval", "0s"]
        .iter()
        .chain(&["--checkpoint-dir", chk, "--checkpoint-interval", "100ms", "--rate", "4000"])
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn three_processes_survive_kills_of_any_process_on_new_machines() {
    let bucket = common::s3::bucket("multi-kills");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.jsonl");
    write_bids(&input, 40_000);
    let ref_out = dir.path().join("ref-out");
    let reference = ["--input", input.to_str().unwrap(), "--output", ref_out.to_str().unwrap()];
    run_ok("auction_windows", &reference);
    let expected = sorted_rows(&ref_out);
    assert!(expected.len() > 500);

    let args = job_args(&input, &bucket.url("out"), &bucket.url("chk"), 3);
    let env = bucket.env();
    let mut rng = Rng::new(15);
    // The coordinator (process 0) completes checkpoints; every process snapshots and commits.
    let named =
        [(1, "mid-snapshot"), (0, "after-checkpoint-complete"), (0, "before-sink-commit"), (2, "mid-sink-commit")];
    let mut kills = 0;
    let mut run = 0;
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(600), "not done within 600 s ({kills} kills)");
        run += 1;
        let run_dir = dir.path().join(format!("run-{run}"));
        std::fs::create_dir_all(&run_dir).unwrap();
        let next = bucket.max_checkpoint("chk/auction_windows") + 2;
        if kills < named.len() {
            // A named crash point in one process: it kills itself there, the others follow.
            let (p, point) = named[kills];
            let mut c = Cluster::start(3, &args, &run_dir, &env, Some((p, format!("{point}:{next}"))));
            let statuses = c.wait(Duration::from_secs(120));
            assert_eq!(statuses[p].signal(), Some(9), "process {p} crashes at {point}:\n{}", c.logs());
            assert!(c.log(p).contains("WEIR_CRASH_AT: crashing at"), "{}", c.log(p));
            kills += 1;
        } else if kills < named.len() + 20 {
            let before = bucket.max_checkpoint("chk/auction_windows");
            let mut c = Cluster::start(3, &args, &run_dir, &env, None);
            // Three kills in four hit a running job (after its first checkpoint); the rest any
            // moment, start-up included.
            let running = rng.below(4) != 0;
            if running {
                let deadline = Instant::now() + Duration::from_secs(60);
                while bucket.max_checkpoint("chk/auction_windows") <= before {
                    assert!(Instant::now() < deadline, "no checkpoint after a restart:\n{}", c.logs());
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            std::thread::sleep(Duration::from_millis(if running { rng.below(600) } else { 100 + rng.below(1_400) }));
            if c.procs.iter_mut().any(|p| p.try_wait().unwrap().is_some()) {
                let statuses = c.wait(Duration::from_secs(60));
                assert!(statuses.iter().all(|s| s.success()), "ended early:\n{}", c.logs());
                panic!("the job finished after {kills} kills; give it more input");
            }
            // Alternately the coordinator (process 0) and a worker: 10 kills each.
            let victim = if kills % 2 == 0 { 0 } else { 1 + rng.below(2) as usize };
            let took = c.kill_one(victim);
            // Connected processes notice a lost peer at once (its kernel closes the sockets).
            assert!(!running || took < Duration::from_secs(5), "fail-stop took {took:?}:\n{}", c.logs());
            kills += 1;
        } else {
            let mut c = Cluster::start(3, &args, &run_dir, &env, None);
            let statuses = c.wait(Duration::from_secs(300));
            assert!(statuses.iter().all(|s| s.success()), "the last run fails:\n{}", c.logs());
            break;
        }
    }
    bucket.assert_no_open_uploads("out/");
    let out = dir.path().join("out");
    bucket.download("out", &out);
    assert_same_rows(&sorted_rows(&out), &expected);
}

#[test]
fn a_job_moves_between_numbers_of_processes_and_parallelisms() {
    let bucket = common::s3::bucket("multi-rescale");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.jsonl");
    write_bids(&input, 40_000);
    let ref_out = dir.path().join("ref-out");
    run_ok("auction_windows", &["--input", input.to_str().unwrap(), "--output", ref_out.to_str().unwrap()]);
    let env = bucket.env();
    let (out, chk) = (bucket.url("out"), bucket.url("chk"));
    // 2 processes at parallelism 2, 3 at 3, 2 at 4, each killed after a few checkpoints; then 1
    // process at parallelism 2 finishes.
    for (run, (n, p)) in [(2, 2), (3, 3), (2, 4)].into_iter().enumerate() {
        let run_dir = dir.path().join(format!("run-{run}"));
        let first = bucket.max_checkpoint("chk/auction_windows");
        let mut c = Cluster::start(n, &job_args(&input, &out, &chk, p), &run_dir, &env, None);
        let started = Instant::now();
        while bucket.max_checkpoint("chk/auction_windows") < first + 4 {
            assert!(c.procs.iter_mut().all(|x| x.try_wait().unwrap().is_none()), "ended early:\n{}", c.logs());
            assert!(started.elapsed() < Duration::from_secs(60), "no checkpoints:\n{}", c.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
        c.kill_one(n - 1);
    }
    let last = dir.path().join("run-last");
    let mut c = Cluster::start(1, &job_args(&input, &out, &chk, 2), &last, &env, None);
    assert!(c.wait(Duration::from_secs(300))[0].success(), "{}", c.logs());
    let local = dir.path().join("out");
    bucket.download("out", &local);
    assert_same_rows(&sorted_rows(&local), &sorted_rows(&ref_out));
}

#[test]
fn a_frozen_process_fails_the_job_within_the_peer_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.jsonl");
    write_bids(&input, 20_000);
    let chk = dir.path().join("chk");
    let mut args = job_args(&input, dir.path().join("out").to_str().unwrap(), chk.to_str().unwrap(), 2);
    // Few credits, so that the frozen process's queue fills within a second.
    args.extend(["--channel-capacity".to_string(), "2".to_string()]);
    let mut c = Cluster::start(2, &args, dir.path(), &[], None);
    common::await_checkpoint(&mut c.procs[0], &chk.join("auction_windows"), 2);
    let metrics =
        |c: &Cluster| ureq::get(&format!("http://{}/metrics", c.control[0])).call().unwrap().into_string().unwrap();
    // Records cross to process 1 and come back from it (its window subtask's output goes to
    // its own sink, but the source in process 0 feeds both window subtasks).
    let sent = || sum(&metrics(&c), "weir_network_records_total{process=\"0\",direction=\"out\"", "peer=\"1\"");
    let deadline = Instant::now() + Duration::from_secs(10);
    while sent() == 0.0 {
        assert!(Instant::now() < deadline, "process 0 counts the records it sent to process 1:\n{}", metrics(&c));
        std::thread::sleep(Duration::from_millis(50));
    }
    // Process 0's control endpoint shows the whole job: the window subtask of process 1 with the
    // records it took in, and process 1's ends of the channels.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let job: serde_json::Value =
            ureq::get(&format!("http://{}/job", c.control[0])).call().unwrap().into_json().unwrap();
        let windows = job["operators"].as_array().unwrap().iter().find(|o| o["uid"] == "auction-windows").unwrap();
        let subtasks = windows["subtasks"].as_array().unwrap();
        let remote_in = subtasks.iter().find(|t| t["subtask"] == 1).and_then(|t| t["records_in"].as_u64());
        if subtasks.len() == 2 && remote_in.is_some_and(|n| n > 0) {
            break;
        }
        assert!(Instant::now() < deadline, "process 0 does not show process 1's subtask: {windows}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = metrics(&c);
    assert!(m.contains("weir_network_records_total{process=\"1\",direction=\"in\""), "{m}");
    // SIGSTOP: the connection stays open, but the process says nothing any more.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(c.procs[1].id() as i32, libc::SIGSTOP) };
    let stopped = Instant::now();
    // Process 1 takes nothing any more: the channel to it runs out of credits and its sender
    // waits, which the metrics show before the peer timeout fails the job.
    std::thread::sleep(Duration::from_millis(3_500));
    let m = metrics(&c);
    let waited = sum(&m, "weir_network_backpressured_ms_total{process=\"0\",direction=\"out\"", "peer=\"1\"");
    assert!(waited > 300.0, "the sender to the frozen process waited for credits ({waited} ms):\n{m}");
    let status = c.wait_for(0, Duration::from_secs(20));
    let took = stopped.elapsed();
    c.procs[1].kill().unwrap();
    c.procs[1].wait().unwrap();
    assert!(!status.success());
    let log = c.log(0);
    assert!(log.contains("lost the connection to process 1") && log.contains("no word from it"), "{log}");
    // --peer-timeout 5s; the loss was noticed by silence, not by a closed connection.
    assert!(took >= Duration::from_secs(4) && took < Duration::from_secs(12), "failed after {took:?}");
}

#[test]
fn the_launcher_runs_and_stops_a_job_as_processes_and_refuses_mismatched_flags() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.jsonl");
    write_bids(&input, 20_000);
    let ref_out = dir.path().join("ref-out");
    run_ok("auction_windows", &["--input", input.to_str().unwrap(), "--output", ref_out.to_str().unwrap()]);
    let out = dir.path().join("out");
    let state = dir.path().join("state-{i}");
    let job = example("auction_windows");
    // The launcher uses base-port + i. Below the kernel's ephemeral range (32768 and up), so the
    // ports other tests of this binary take with `free_port` running at the same time never collide.
    let port = (20_000 + (std::process::id() % 5_000) * 2).to_string();
    let launch = |extra: &[&str]| {
        Command::new(common::weir_cli())
            .args(["cluster", "run", "--processes", "2", "--base-port", &port, "--hosts", "127.0.0.1,127.0.0.2", "--"])
            .arg(&job)
            .args(["--input", input.to_str().unwrap(), "--output", out.to_str().unwrap(), "--window-parallelism", "2"])
            .args(["--state-dir", state.to_str().unwrap(), "--progress-interval", "0s", "--connect-timeout", "5s"])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = launch(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_rows(&sorted_rows(&out), &sorted_rows(&ref_out));
    assert!(dir.path().join("state-0").exists() && dir.path().join("state-1").exists(), "{{i}} is the process index");

    // Process 1 with another window length runs another job: refused, and both fail.
    std::fs::remove_dir_all(&out).unwrap();
    let o = launch(&["--window", "1{i}s"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("every process must run the same binary with the same flags"), "{err}");

    // Stop with a savepoint: SIGTERM to the launcher reaches process 0, the coordinator, which
    // takes a final savepoint; every process ends cleanly. Then the job goes on from it.
    let _ = std::fs::remove_dir_all(&out);
    let (chk, sp) = (dir.path().join("chk"), dir.path().join("sp"));
    let checkpointed = ["--checkpoint-dir", chk.to_str().unwrap(), "--checkpoint-interval", "200ms"];
    let mut stopped: Vec<&str> = checkpointed.to_vec();
    stopped.extend(["--savepoint-dir", sp.to_str().unwrap(), "--rate", "4000"]);
    let mut cmd = Command::new(common::weir_cli());
    cmd.args(["cluster", "run", "--processes", "2", "--base-port", &port, "--"]).arg(&job);
    cmd.args(["--input", input.to_str().unwrap(), "--output", out.to_str().unwrap(), "--window-parallelism", "2"]);
    cmd.args(["--state-dir", state.to_str().unwrap(), "--progress-interval", "0s"]).args(&stopped);
    let log = dir.path().join("launcher.log");
    let mut launcher = cmd.stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while common::max_checkpoint(&chk.join("auction_windows")) < 2 {
        let ended = launcher.try_wait().unwrap().is_some();
        assert!(!ended && Instant::now() < deadline, "no checkpoint 2:\n{}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(launcher.id() as i32, libc::SIGTERM) };
    let status = launcher.wait().unwrap();
    assert!(status.success(), "a stop is no failure: {}", std::fs::read_to_string(&log).unwrap());
    let savepoints: Vec<PathBuf> = std::fs::read_dir(&sp).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(savepoints.len(), 1, "one final savepoint: {savepoints:?}");
    let partial = sorted_rows(&out).len();
    assert!(partial < sorted_rows(&ref_out).len(), "the job was stopped before its end ({partial} rows)");
    let o = launch(&["--restore", savepoints[0].to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_rows(&sorted_rows(&out), &sorted_rows(&ref_out));
}

#[test]
fn a_coordinator_that_wakes_after_its_successor_took_over_commits_nothing() {
    let bucket = common::s3::bucket("multi-stale");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.jsonl");
    write_bids(&input, 20_000);
    let ref_out = dir.path().join("ref-out");
    run_ok("auction_windows", &["--input", input.to_str().unwrap(), "--output", ref_out.to_str().unwrap()]);
    let env = bucket.env();
    let args = job_args(&input, &bucket.url("out"), &bucket.url("chk"), 2);
    // Process 0 freezes with every acknowledgement of checkpoint 3 in hand, about to commit it
    // (a long pause, a suspended machine). Process 1 gives up on it after the peer timeout.
    let pause = [(0, "WEIR_PAUSE_AT", "before-checkpoint-commit:3")];
    let mut old = Cluster::start_job("auction_windows", 2, &args, &dir.path().join("old"), &env, &pause);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !old.log(0).contains("WEIR_PAUSE_AT: pausing at before-checkpoint-commit:3") {
        assert!(Instant::now() < deadline, "process 0 never paused:\n{}", old.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!old.wait_for(1, Duration::from_secs(30)).success());
    // The job is restarted (as Kubernetes would, on other machines): it restores checkpoint 2,
    // closes 3 and runs to the end.
    let mut new = Cluster::start(2, &args, &dir.path().join("new"), &env, None);
    let statuses = new.wait(Duration::from_secs(300));
    assert!(statuses.iter().all(|s| s.success()), "the new run fails:\n{}", new.logs());
    // The new coordinator closed checkpoint 3 with a tombstone at its first commit; retention
    // may have deleted it since (it lies below the newest checkpoint), but 3 was never completed.
    let three = bucket.get("chk/auction_windows/chk-3/_metadata").map(|b| String::from_utf8(b).unwrap());
    assert!(three.as_ref().is_none_or(|t| t.contains("aborted_checkpoint")), "{three:?}");
    let out = dir.path().join("out");
    bucket.download("out", &out);
    let expected = sorted_rows(&ref_out);
    assert_same_rows(&sorted_rows(&out), &expected);

    // The old coordinator wakes: it must not commit checkpoint 3, and its sinks nothing.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(old.procs[0].id() as i32, libc::SIGCONT) };
    assert!(!old.wait_for(0, Duration::from_secs(30)).success());
    let log = old.log(0);
    assert!(log.contains("checkpoint 3 not committed") && log.contains("is stale"), "{log}");
    let three = bucket.get("chk/auction_windows/chk-3/_metadata").map(|b| String::from_utf8(b).unwrap());
    assert!(three.as_ref().is_none_or(|t| t.contains("aborted_checkpoint")), "{three:?}");
    let _ = std::fs::remove_dir_all(&out);
    bucket.download("out", &out);
    assert_same_rows(&sorted_rows(&out), &expected);
}
