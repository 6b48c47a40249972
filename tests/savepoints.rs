//! Savepoints (on request over HTTP and on SIGTERM), restores at another parallelism, the `weir`
//! CLI on a real savepoint, broken checkpoints, and incremental checkpoint files.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{example, free_port, read_parts, run_ok, weir_cli, write_bids};

const HEADER: Option<&str> = Some("window_start,auction,count,max_price");

fn rows(dir: &Path) -> Vec<String> {
    let mut r = read_parts(dir, ".csv", HEADER);
    r.sort();
    r
}

fn spawn(args: &[&str]) -> Child {
    Command::new(example("auction_windows"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_output(child: Child) -> (std::process::ExitStatus, String) {
    let out = child.wait_with_output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "control endpoint on port {port} never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cli(args: &[&str]) -> String {
    let out = Command::new(weir_cli()).args(args).output().unwrap();
    assert!(out.status.success(), "weir {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The bids a file source had read at a snapshot, from the split offsets in its state.
fn bids_read(input: &Path, inspect: &serde_json::Value) -> Vec<(u64, u64, i64)> {
    let source = inspect["operators"].as_array().unwrap().iter().find(|o| o["uid"] == "bids").unwrap();
    let mut splits = Vec::new();
    for sub in source["subtasks"].as_array().unwrap() {
        assert_eq!(sub["source"]["type"], "file");
        for s in sub["source"]["splits"].as_array().unwrap() {
            splits.push((s["start"].as_u64().unwrap(), s["end"].as_u64().unwrap(), s["offset"].as_u64().unwrap()));
        }
    }
    let text = std::fs::read_to_string(input).unwrap();
    let mut out = Vec::new();
    let mut pos = 0u64;
    for line in text.split_inclusive('\n') {
        let split = splits.iter().find(|(s, e, _)| *s <= pos && pos < *e).expect("every line is in a split");
        if pos < split.2 {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            out.push((v["auction"].as_u64().unwrap(), v["price"].as_u64().unwrap(), v["date_time"].as_i64().unwrap()));
        }
        pos += line.len() as u64;
    }
    out
}

#[test]
fn savepoints_restore_at_other_parallelisms_and_the_cli_shows_their_real_state() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.jsonl");
    // Disorder below the 2 s delay: nothing is late, whatever the interleaving of two readers.
    write_bids(&input, 160_000, 1_500, 3);
    let p = |x: &PathBuf| x.to_str().unwrap().to_string();
    let (reference, out, chk, sp) =
        (dir.path().join("ref"), dir.path().join("out"), dir.path().join("chk"), dir.path().join("sp"));
    run_ok("auction_windows", &["--input", &p(&input), "--output", &p(&reference), "-p", "2"]);

    let port = free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let child = spawn(&[
        "--input",
        &p(&input),
        "--output",
        &p(&out),
        "-p",
        "2",
        "--checkpoint-dir",
        &p(&chk),
        "--checkpoint-interval",
        "300ms",
        "--savepoint-dir",
        &p(&sp),
        "--metrics-addr",
        &addr,
        "--rate",
        "20000",
    ]);
    wait_for_port(port.parse().unwrap());
    std::thread::sleep(Duration::from_millis(800));
    // A savepoint on request, while the job keeps running.
    let taken = PathBuf::from(cli(&["savepoint", "trigger", "--job", &format!("http://{addr}")]).trim());
    assert!(taken.join("_metadata").exists(), "savepoint at {}", taken.display());
    let metrics = http_get(&addr, "/metrics");
    assert!(metrics.contains("weir_records_out_total{operator=\"bids\",subtask=\"0\"}"), "{metrics}");
    let checkpoints = http_get(&addr, "/checkpoints");
    assert!(checkpoints.contains(&taken.display().to_string()), "{checkpoints}");
    std::thread::sleep(Duration::from_millis(500));
    // Stop with a savepoint.
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let (status, stderr) = wait_output(child);
    assert!(status.success(), "stop with savepoint exits 0: {stderr}");
    assert!(stderr.contains("stop requested"), "{stderr}");
    let stopped: PathBuf = std::fs::read_dir(&sp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| *p != taken)
        .max()
        .expect("a savepoint written on stop");
    assert!(rows(&out).len() < rows(&reference).len(), "the job was stopped before the end");

    // The CLI on the savepoint taken on request: counts must match what the input implies.
    let report: serde_json::Value =
        serde_json::from_str(&cli(&["savepoint", "inspect", "--json", taken.to_str().unwrap()])).unwrap();
    assert_eq!(report["kind"], "savepoint");
    assert_eq!(report["max_parallelism"], 128);
    let windows = report["operators"].as_array().unwrap().iter().find(|o| o["uid"] == "auction-windows").unwrap();
    assert_eq!(windows["parallelism"], 2);
    let ranges: Vec<(u64, u64)> = windows["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["key_groups"][0].as_u64().unwrap(), s["key_groups"][1].as_u64().unwrap()))
        .collect();
    assert_eq!(ranges, vec![(0, 63), (64, 127)]);
    let wm = windows["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["watermark"]["millis"].as_i64().unwrap())
        .min()
        .unwrap();
    let read = bids_read(&input, &report);
    assert!(!read.is_empty() && read.len() < 160_000, "the savepoint was taken mid-input ({} bids)", read.len());
    let mut open: BTreeMap<(u64, i64), (u64, u64)> = BTreeMap::new();
    for (auction, price, t) in &read {
        let start = t - t.rem_euclid(10_000);
        if start + 10_000 - 1 > wm {
            let e = open.entry((*auction, start)).or_insert((0, 0));
            e.0 += 1;
            e.1 = e.1.max(*price);
        }
    }
    let state = windows["states"].as_array().unwrap().iter().find(|s| s["name"] == "window-contents").unwrap();
    assert_eq!(state["entries"].as_u64().unwrap() as usize, open.len(), "entries of window-contents");
    assert!(state["bytes"].as_u64().unwrap() > 0);
    let dumped: BTreeMap<(u64, i64), (u64, u64)> = cli(&[
        "savepoint",
        "dump",
        taken.to_str().unwrap(),
        "--operator",
        "auction-windows",
        "--state",
        "window-contents",
    ])
    .lines()
    .map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let key = (v["key"].as_u64().unwrap(), v["namespace"]["start"].as_i64().unwrap());
        (key, (v["value"][0].as_u64().unwrap(), v["value"][1].as_u64().unwrap()))
    })
    .collect();
    assert_eq!(dumped, open, "dumped accumulators equal count and max price of the open windows");
    let text = cli(&["savepoint", "inspect", taken.to_str().unwrap()]);
    assert!(text.contains("\nauction-windows (") && text.contains("key groups  0..=63, 64..=127"), "{text}");
    // The source's summary adds up its splits: what the bids read above come to.
    let source = report["operators"].as_array().unwrap().iter().find(|o| o["uid"] == "bids").unwrap();
    let read_bytes: u64 = source["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["source"]["splits"].as_array().unwrap().iter())
        .map(|s| s["offset"].as_u64().unwrap() - s["start"].as_u64().unwrap())
        .sum();
    assert_eq!(source["source"]["bytes_read"].as_u64(), Some(read_bytes), "{}", source["source"]);
    assert_eq!(source["source"]["bytes_total"].as_u64(), Some(std::fs::metadata(&input).unwrap().len()));
    let listing = cli(&["checkpoints", "list", chk.to_str().unwrap()]);
    assert!(listing.contains("complete"), "{listing}");
    assert_eq!(listing.lines().filter(|l| l.ends_with("<- --restore latest")).count(), 1, "{listing}");
    // Complete checkpoints show their trigger time in UTC (`2026-12-04 02:36:33`).
    for line in listing.lines().filter(|l| l.contains(" complete")) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (date, time) = (fields[2].as_bytes(), fields[3].as_bytes());
        assert!(date.len() == 10 && date[4] == b'-' && date[7] == b'-', "{line}");
        assert!(time.len() == 8 && time[2] == b':' && time[5] == b':', "{line}");
    }

    // Resume from the stop savepoint at parallelism 1 and 3: the same final result.
    for p2 in ["1", "3"] {
        let copy = dir.path().join(format!("out-{p2}"));
        copy_dir(&out, &copy);
        let chk2 = dir.path().join(format!("chk-{p2}"));
        run_ok(
            "auction_windows",
            &[
                "--input",
                &p(&input),
                "--output",
                &p(&copy),
                "-p",
                p2,
                "--checkpoint-dir",
                &p(&chk2),
                "--checkpoint-interval",
                "300ms",
                "--restore",
                stopped.to_str().unwrap(),
            ],
        );
        assert_eq!(rows(&copy), rows(&reference), "restored at parallelism {p2}");
    }
}

/// A plain HTTP/1.1 GET on loopback; returns the body.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn complete_checkpoints(job_chk: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(job_chk) else { return Vec::new() };
    let mut v: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let id = e.file_name().to_str()?.strip_prefix("chk-")?.parse().ok()?;
            e.path().join("_metadata").exists().then(|| (id, e.path()))
        })
        .collect();
    v.sort();
    v
}

fn referenced(chk_dir: &Path) -> BTreeSet<String> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(chk_dir.join("_metadata")).unwrap()).unwrap();
    let mut out = BTreeSet::new();
    for op in v["body"]["operators"].as_array().unwrap() {
        for s in op["subtasks"].as_array().unwrap() {
            for f in s["keyed_files"].as_array().unwrap() {
                out.insert(f["path"].as_str().unwrap().to_string());
            }
        }
    }
    out
}

/// Every shared file is referenced by a retained checkpoint and every reference exists.
fn assert_no_orphans(job_chk: &Path, retained: usize) {
    let complete = complete_checkpoints(job_chk);
    assert!(complete.len() <= retained, "{} complete checkpoints kept, retained {retained}", complete.len());
    let mut refs = BTreeSet::new();
    for (_, d) in &complete {
        refs.extend(referenced(d).into_iter().filter(|p| p.starts_with("shared/")));
    }
    let files: BTreeSet<String> = std::fs::read_dir(job_chk.join("shared"))
        .unwrap()
        .map(|e| format!("shared/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    assert_eq!(files, refs, "shared files are exactly those retained checkpoints reference");
}

#[test]
fn incremental_checkpoints_share_files_and_leave_no_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.jsonl");
    write_bids(&input, 120_000, 1_000, 8);
    let p = |x: &PathBuf| x.to_str().unwrap().to_string();
    let (out, chk) = (dir.path().join("out"), dir.path().join("chk"));
    let job_chk = chk.join("auction_windows");
    let args = [
        "--input".to_string(),
        p(&input),
        "--output".into(),
        p(&out),
        "--checkpoint-dir".into(),
        p(&chk),
        "--checkpoint-interval".into(),
        "100ms".into(),
        "--retained-checkpoints".into(),
        "2".into(),
        "--rate".into(),
        "30000".into(),
        "--max-delay-ms".into(),
        "60000".into(),
    ];
    let child = spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // Watch checkpoints complete and remember which shared files each references.
    let mut seen: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        if job_chk.exists() {
            for (id, d) in complete_checkpoints(&job_chk) {
                if let std::collections::btree_map::Entry::Vacant(e) = seen.entry(id) {
                    if let Ok(text) = std::fs::read_to_string(d.join("_metadata")) {
                        if text.ends_with('}') {
                            e.insert(referenced(&d));
                        }
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut child = child;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen.len() >= 5, "several checkpoints completed: {:?}", seen.keys());
    let shared_pairs = seen
        .values()
        .zip(seen.values().skip(1))
        .filter(|(a, b)| a.iter().any(|f| f.starts_with("shared/") && b.contains(f)))
        .count();
    assert!(shared_pairs > 0, "consecutive checkpoints reuse SST files instead of copying them again");
    // After a crash, a restart cleans up and finishes; nothing is orphaned.
    let o = Command::new(example("auction_windows"))
        .args(args.iter().filter(|a| *a != "--rate" && *a != "30000"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_no_orphans(&job_chk, 2);
    let left: HashSet<String> = std::fs::read_dir(&job_chk)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str().map(String::from))
        .filter(|n| n.starts_with("chk-"))
        .collect();
    assert_eq!(left.len(), 2, "only the retained checkpoints remain: {left:?}");
}

#[test]
fn a_truncated_checkpoint_is_skipped_for_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.jsonl");
    write_bids(&input, 100_000, 1_000, 21);
    let p = |x: &PathBuf| x.to_str().unwrap().to_string();
    let reference = dir.path().join("ref");
    run_ok("auction_windows", &["--input", &p(&input), "--output", &p(&reference)]);
    for target in ["_metadata", "operator_state.json"] {
        let (out, chk) = (dir.path().join(format!("out-{target}")), dir.path().join(format!("chk-{target}")));
        let job_chk = chk.join("auction_windows");
        let base = [
            "--input".to_string(),
            p(&input),
            "--output".into(),
            p(&out),
            "--checkpoint-dir".into(),
            p(&chk),
            "--checkpoint-interval".into(),
            "150ms".into(),
            "--retained-checkpoints".into(),
            "3".into(),
        ];
        let mut args = base.to_vec();
        args.extend(["--rate".to_string(), "20000".to_string()]);
        let mut child = spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let deadline = Instant::now() + Duration::from_secs(20);
        while complete_checkpoints(&job_chk).len() < 3 {
            assert!(Instant::now() < deadline, "checkpoints never completed");
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let complete = complete_checkpoints(&job_chk);
        let (newest, newest_dir) = complete.last().cloned().unwrap();
        let victim = if target == "_metadata" {
            newest_dir.join("_metadata")
        } else {
            std::fs::read_dir(&newest_dir)
                .unwrap()
                .map(|e| e.unwrap().path().join("operator_state.json"))
                .find(|p| p.exists())
                .unwrap()
        };
        let len = std::fs::metadata(&victim).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&victim).unwrap().set_len(len / 2).unwrap();
        let listing = cli(&["checkpoints", "list", chk.to_str().unwrap()]);
        assert!(listing.contains("broken"), "the list shows the broken checkpoint:\n{listing}");
        // ... and marks the one a restore takes instead.
        let picked = listing.lines().find(|l| l.ends_with("<- --restore latest")).unwrap_or_default();
        let previous_id = complete[complete.len() - 2].0.to_string();
        assert_eq!(picked.split_whitespace().nth(1), Some(previous_id.as_str()), "{listing}");
        let o = Command::new(example("auction_windows")).args(&base).env("RUST_LOG", "info").output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{stderr}");
        assert!(stderr.contains("skipping a broken checkpoint"), "{stderr}");
        let previous = complete[complete.len() - 2].0;
        assert!(
            stderr.contains(&format!("restoring checkpoint={previous}")),
            "restores {previous}, not {newest}: {stderr}"
        );
        assert_eq!(rows(&out), rows(&reference), "the output is still exact ({target} truncated)");
    }
}

#[test]
fn state_of_a_missing_operator_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.jsonl");
    write_bids(&input, 20_000, 500, 4);
    let p = |x: &PathBuf| x.to_str().unwrap().to_string();
    let (out, late, chk) = (dir.path().join("out"), dir.path().join("late"), dir.path().join("chk"));
    run_ok(
        "auction_windows",
        &[
            "--input",
            &p(&input),
            "--output",
            &p(&out),
            "--late-output",
            &p(&late),
            "--checkpoint-dir",
            &p(&chk),
            "--checkpoint-interval",
            "1s",
        ],
    );
    let (_, last) = complete_checkpoints(&chk.join("auction_windows")).pop().unwrap();
    // The same job without --late-output has no operator "late-sink", whose state is in the snapshot.
    let args = ["--input", &p(&input), "--output", &p(&out), "--restore", last.to_str().unwrap()];
    let o = Command::new(example("auction_windows")).args(args).output().unwrap();
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("late-sink") && stderr.contains("--allow-non-restored-state"), "{stderr}");
    let mut allowed = args.to_vec();
    allowed.push("--allow-non-restored-state");
    run_ok("auction_windows", &allowed);
}
