//! `--memory-budget`: a job whose keyed state grows to more than ten times its budget keeps its
//! peak RSS under the budget (RocksDB spills to disk) and still computes the right result.

mod common;
#[path = "../examples/measure/mod.rs"]
mod measure;

use std::process::{Command, Stdio};

use common::example;

#[test]
// measure::wait_measured reaps the child with wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn peak_rss_stays_under_the_budget_with_state_ten_times_larger() {
    const BUDGET_MIB: u64 = 192;
    const EVENTS: u64 = 15_000_000;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(example("nexmark"))
        .args(["run", "--query", "store", "--events", &EVENTS.to_string(), "-p", "2"])
        .args(["--memory-budget", &format!("{BUDGET_MIB}MiB"), "--checkpoint-interval", "10s"])
        .arg("--checkpoint-dir")
        .arg(dir.path().join("chk"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    let run = measure::wait_measured(&child).unwrap();
    assert!(run.status.success(), "the job failed: {}", run.status);
    let summary: serde_json::Value = serde_json::from_str(reader.join().unwrap().lines().last().unwrap()).unwrap();

    let state_mib = summary["state_bytes"].as_u64().unwrap() >> 20;
    let peak_mib = run.max_rss_kib as u64 / 1024;
    eprintln!("state {state_mib} MiB, peak RSS {peak_mib} MiB, budget {BUDGET_MIB} MiB");
    assert!(state_mib >= 10 * BUDGET_MIB, "the state ({state_mib} MiB) is ten times the budget");
    assert!(peak_mib < BUDGET_MIB, "peak RSS {peak_mib} MiB exceeds the {BUDGET_MIB} MiB budget");
    // Every bid stored once: 46 of every 50 events are bids.
    assert_eq!(summary["rows"].as_u64(), Some(EVENTS / 50 * 46));
}
