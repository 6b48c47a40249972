//! The dashboard in a real browser: Debian's headless Chromium, driven by playwright-core
//! (`tests/dashboard/drive.mjs`, installed by `npm ci` in `scripts/test`), on a running
//! `auction_windows` job: the graph with its tasks and edges, a slow operator and the
//! backpressure it causes upstream, numbers equal to `/job` and `/checkpoints`, the savepoint
//! button, and the control token. Screenshots go to `<target>/tmp/dashboard/`.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{example, free_port};
use serde_json::Value;

fn http(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn json(addr: &str, path: &str) -> Value {
    let (status, body) = http(addr, path, None);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn screenshots(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard").join(name)
}

/// Runs the browser driver; what the page showed. A page that loaded must have no errors.
fn drive(url: &str, shots: &Path, extra: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/drive.mjs");
    let out = Command::new("node")
        .arg(&script)
        .args([url, shots.to_str().unwrap()])
        .args(extra)
        .output()
        .expect("node runs the browser driver (scripts/test installs it with npm ci)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "driver failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    if v["status"] == 200 {
        assert_eq!(v["errors"], serde_json::json!([]), "no errors on the page");
    }
    assert_eq!(v["requests_elsewhere"], serde_json::json!([]), "nothing fetched from outside the job");
    v
}

/// `auction_windows` on 20,000 generated bids/s at parallelism 2 into `dir/out`, checkpoints
/// every 500 ms in `dir/chk`, and `extra`.
fn generated(dir: &Path, extra: &[&str]) -> Vec<String> {
    let p = |x: &str| dir.join(x).to_str().unwrap().to_string();
    let (out, chk) = (p("out"), p("chk"));
    let args = ["--generate", "100000000", "--rate", "20000", "-p", "2", "--output", &out, "--checkpoint-dir", &chk];
    [&args[..], &["--checkpoint-interval", "500ms"], extra].concat().iter().map(|s| s.to_string()).collect()
}

fn op<'a>(job: &'a Value, uid: &str) -> &'a Value {
    job["operators"].as_array().unwrap().iter().find(|o| o["uid"] == uid).unwrap_or_else(|| panic!("{uid} in {job}"))
}

/// A number as the page shows it (`1,234` → 1234).
fn shown(text: &str) -> f64 {
    text.replace(',', "").trim().parse().unwrap_or_else(|_| panic!("not a number: {text:?}"))
}

#[test]
fn the_dashboard_shows_a_running_job_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // The throttle step holds each bid 200 µs: at most ~5,000 bids/s per subtask, so the
    // source (offering 10,000/s per subtask) waits on it and the windows after it idle.
    let sp = dir.path().join("sp");
    let extra = ["--throttle", "200us", "--savepoint-dir", sp.to_str().unwrap(), "--metrics-addr", &addr];
    let mut job = common::spawn("auction_windows", &generated(dir.path(), &extra));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(job.child.try_wait().unwrap().is_none(), "the job ended:\n{}", job.log());
        assert!(Instant::now() < deadline, "no steady backpressure and checkpoints within 60 s:\n{}", job.log());
        if std::net::TcpStream::connect(&addr).is_ok() {
            let (j, c) = (json(&addr, "/job"), json(&addr, "/checkpoints"));
            let done = c.as_array().unwrap().iter().filter(|c| c["status"] == "completed").count();
            if done >= 2 && op(&j, "bids")["backpressured_ms_per_sec"].as_f64().unwrap() > 500.0 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let shots = screenshots("running");
    let seen = drive(&format!("http://{addr}/"), &shots, &["--select", "throttle", "--savepoint"]);
    let page = &seen["page"];
    let rendered = &seen["job"];
    assert_eq!(page["title"], "weir · auction_windows");

    // The graph: every operator in its task, edges between tasks with their partitioning,
    // chained operators linked inside their task.
    let live = json(&addr, "/job");
    let mut ops: Vec<(String, String)> = page["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["uid"].as_str().unwrap().into(), o["task"].as_str().unwrap().into()))
        .collect();
    let mut expected: Vec<(String, String)> = live["operators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["uid"].as_str().unwrap().into(), o["task"].as_str().unwrap().into()))
        .collect();
    ops.sort();
    expected.sort();
    assert_eq!(ops, expected, "operators and their tasks");
    for uid in ["nexmark", "bids", "throttle", "auction-windows", "window-sink"] {
        assert!(ops.iter().any(|(u, _)| u == uid), "{uid} drawn");
    }
    let edge = |from: &str, to: &str| {
        page["edges"].as_array().unwrap().iter().find(|e| e["from"] == from && e["to"] == to).cloned()
    };
    let hash = edge("throttle", "auction-windows").expect("throttle → windows drawn");
    assert_eq!((hash["partition"].as_str(), hash["label"].as_str()), (Some("hash"), Some("hash")));
    assert_eq!(edge("bids", "throttle").expect("bids → throttle drawn")["partition"], "forward");
    let chains: Vec<(&str, &str)> = page["chains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["from"].as_str().unwrap(), c["to"].as_str().unwrap()))
        .collect();
    assert!(
        chains.contains(&("nexmark", "bids")) && chains.contains(&("auction-windows", "window-sink")),
        "{chains:?}"
    );
    for e in live["edges"].as_array().unwrap() {
        let (from, to) = (e["from"].as_str().unwrap(), e["to"].as_str().unwrap());
        let drawn = if e["chained"] == true { chains.contains(&(from, to)) } else { edge(from, to).is_some() };
        assert!(drawn, "edge {e} drawn");
    }
    let tasks: Vec<&str> = page["tasks"].as_array().unwrap().iter().map(|t| t["label"].as_str().unwrap()).collect();
    assert!(tasks.contains(&"task throttle · parallelism 2"), "{tasks:?}");

    // The slow step is busy, the source before it backpressured, the windows after it idle.
    let state = |uid: &str| page["ops"].as_array().unwrap().iter().find(|o| o["uid"] == uid).unwrap()["state"].clone();
    assert_eq!(state("throttle"), "busy", "{page}");
    assert_eq!(state("bids"), "backpressured", "{page}");
    assert_eq!(state("nexmark"), "backpressured", "{page}");
    assert_eq!(state("auction-windows"), "idle", "{page}");

    // The operator's subtasks: the numbers of the /job answer that poll rendered.
    let detail = &page["detail"];
    assert!(detail["title"].as_str().unwrap().starts_with("throttle (map), parallelism 2"), "{detail}");
    let subtasks = op(rendered, "throttle")["subtasks"].as_array().unwrap();
    let rows = detail["rows"].as_array().unwrap();
    assert_eq!(rows.len(), subtasks.len());
    for (row, sub) in rows.iter().zip(subtasks) {
        let cell = |i: usize| shown(row[i].as_str().unwrap());
        assert_eq!(cell(0), sub["subtask"].as_f64().unwrap());
        assert_eq!(cell(1), sub["records_in"].as_f64().unwrap(), "records in: {row} vs {sub}");
        assert_eq!(cell(2), sub["records_out"].as_f64().unwrap(), "records out: {row} vs {sub}");
        assert_eq!(cell(3), sub["records_in_per_sec"].as_f64().unwrap().round(), "records in/s");
        assert_eq!(cell(5), sub["busy_ms_per_sec"].as_f64().unwrap().round(), "busy ms/s");
        assert!(cell(1) > 0.0, "records flowed: {row}");
    }
    // The graph shows the same rates.
    for o in rendered["operators"].as_array().unwrap() {
        let drawn = page["ops"].as_array().unwrap().iter().find(|d| d["uid"] == o["uid"]).unwrap();
        let rate = o["records_in_per_sec"].as_f64().unwrap();
        let rate = if rate == 0.0 { o["records_out_per_sec"].as_f64().unwrap() } else { rate };
        assert_eq!(shown(drawn["rate"].as_str().unwrap().trim_end_matches("/s")), rate.round(), "{o}");
    }
    let charts: Vec<&str> = page["charts"].as_array().unwrap().iter().map(|c| c["uid"].as_str().unwrap()).collect();
    assert_eq!(charts.len(), expected.len(), "a chart per operator");
    assert!(page["charts"].as_array().unwrap().iter().all(|c| c["points"].as_u64().unwrap() >= 3), "{page}");

    // The checkpoint table is /checkpoints, newest first; completed ones never change, so they
    // equal what /checkpoints says now as well.
    let table = page["checkpoints"].as_array().unwrap();
    let answered = seen["checkpoints"].as_array().unwrap();
    assert_eq!(table.len(), answered.len().min(100));
    let now = json(&addr, "/checkpoints");
    for (row, c) in table.iter().zip(answered.iter().rev()) {
        assert_eq!(shown(row[0].as_str().unwrap()), c["id"].as_f64().unwrap());
        assert!(row[1].as_str().unwrap().starts_with(c["status"].as_str().unwrap()), "{row} vs {c}");
        assert_eq!(shown(row[3].as_str().unwrap()), c["duration_ms"].as_f64().unwrap(), "duration: {row} vs {c}");
        let later = now.as_array().unwrap().iter().find(|n| n["id"] == c["id"]);
        if let (Some(later), "completed") = (later, c["status"].as_str().unwrap()) {
            for key in ["status", "trigger_time", "duration_ms", "size_bytes", "incremental_bytes"] {
                assert_eq!(later[key], c[key], "{key} of a completed checkpoint as /checkpoints shows it now");
            }
        }
    }
    // The clicked checkpoint (the newest when clicked; newer ones may have come since) per subtask.
    let cp_detail = &page["checkpoint_detail"];
    let id: u64 = cp_detail["id"].as_str().unwrap().parse().unwrap();
    let clicked = answered.iter().find(|c| c["id"] == id).expect("the clicked checkpoint is listed");
    let parts = clicked["subtasks"].as_array().unwrap();
    let rows = cp_detail["rows"].as_array().unwrap();
    assert_eq!(rows.len(), parts.len(), "{cp_detail}");
    for (row, part) in rows.iter().zip(parts) {
        assert_eq!(row[0], part["operator"]);
        assert_eq!(shown(row[1].as_str().unwrap()), part["subtask"].as_f64().unwrap());
        // One decimal, as the page rounds (a tie may round either way).
        let ack = part["ack_ms"].as_f64().unwrap();
        assert!((shown(row[2].as_str().unwrap()) - ack).abs() <= 0.051, "ack ms: {row} vs {part}");
    }
    assert_eq!(page["restore"], "Started without a restore.");
    assert_eq!(page["exceptions"], "No failures in this run.");

    // The savepoint button took a savepoint, on disk.
    let savepoint = PathBuf::from(seen["savepoint"].as_str().expect("the page shows the savepoint's path"));
    assert!(savepoint.starts_with(dir.path().join("sp")), "{}", savepoint.display());
    assert!(savepoint.join("_metadata").is_file(), "{} holds a savepoint", savepoint.display());
    assert!(shots.join("dashboard.png").is_file() && shots.join("savepoint.png").is_file());
    job.child.kill().unwrap();
    job.child.wait().unwrap();
}

/// This machine's address on its first non-loopback interface (no packet is sent).
fn outward_ip() -> std::net::IpAddr {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("192.0.2.1:9").expect("a route off loopback: the token test needs a non-loopback interface");
    let ip = s.local_addr().unwrap().ip();
    assert!(!ip.is_loopback(), "{ip}");
    ip
}

#[test]
fn off_loopback_the_control_endpoint_needs_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let sp = dir.path().join("sp");
    let args = |addr: &str, extra: &[&str]| -> Vec<String> {
        generated(dir.path(), &[&["--metrics-addr", addr, "--savepoint-dir", sp.to_str().unwrap()], extra].concat())
    };
    // Without a token it does not bind anywhere but loopback.
    let out =
        Command::new(example("auction_windows")).args(args("0.0.0.0:0", &[])).env("RUST_LOG", "warn").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not on loopback") && err.contains("--control-token"), "{err}");

    let port = free_port();
    let token = "s3cret-token";
    let mut job = common::spawn("auction_windows", &args(&format!("0.0.0.0:{port}"), &["--control-token", token]));
    let addr = format!("{}:{port}", outward_ip());
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline && job.child.try_wait().unwrap().is_none(), "{}", job.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    for path in ["/", "/job", "/metrics", "/checkpoints", "/exceptions"] {
        assert_eq!(http(&addr, path, None).0, 401, "{path} without the token");
        assert_eq!(http(&addr, path, Some("wrong")).0, 401, "{path} with a wrong token");
        assert_eq!(http(&addr, path, Some(token)).0, 200, "{path} with the token");
    }
    assert_eq!(http(&addr, &format!("/job?token={token}"), None).0, 200);
    // POST /savepoints is refused without it too.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(s, "POST /savepoints HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 401") || answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(!dir.path().join("sp").exists(), "no savepoint was taken without the token");

    // The CLI carries it too.
    let weir = |args: &[&str], token: Option<&str>| {
        let mut c = Command::new(common::weir_cli());
        c.args(args).env_remove("WEIR_CONTROL_TOKEN");
        if let Some(t) = token {
            c.env("WEIR_CONTROL_TOKEN", t);
        }
        c.output().unwrap()
    };
    let url = format!("http://{addr}");
    let top = weir(&["top", "--job", &url, "--once"], None);
    assert!(!top.status.success() && String::from_utf8_lossy(&top.stderr).contains("401"), "{top:?}");
    let top = weir(&["top", "--job", &url, "--once"], Some(token));
    assert!(top.status.success() && String::from_utf8_lossy(&top.stdout).contains("auction-windows"), "{top:?}");
    let sp = weir(&["savepoint", "trigger", "--job", &url, "--token", token], None);
    assert!(sp.status.success(), "{sp:?}");
    assert!(Path::new(String::from_utf8_lossy(&sp.stdout).trim()).join("_metadata").is_file(), "{sp:?}");

    // In the browser: the address without the token is refused; with it the page works.
    let refused = drive(&format!("http://{addr}/"), &screenshots("refused"), &[]);
    assert_eq!(refused["status"], 401, "{refused}");
    let seen = drive(&format!("http://{addr}/?token={token}"), &screenshots("token"), &[]);
    assert_eq!(seen["status"], 200);
    assert!(seen["page"]["ops"].as_array().unwrap().len() >= 4, "the page drew the job with its token: {seen}");
    job.child.kill().unwrap();
    job.child.wait().unwrap();
}

#[test]
fn failures_restarts_and_the_restore_show_on_the_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.jsonl");
    common::write_bids(&input, 40_000, 500, 5);
    // A line no bid parses from, at the end: the job fails there after some checkpoints, and
    // again after every restart from the latest of them.
    std::fs::OpenOptions::new().append(true).open(&input).unwrap().write_all(b"{not json\n").unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let p = |x: &Path| x.to_str().unwrap().to_string();
    let mut job = common::spawn(
        "auction_windows",
        &[
            "--input",
            &p(&input),
            "--rate",
            "20000",
            "--output",
            &p(&dir.path().join("out")),
            "--checkpoint-dir",
            &p(&dir.path().join("chk")),
            "--checkpoint-interval",
            "200ms",
            "--restart-attempts",
            "4",
            "--restart-delay",
            "3s",
            "--metrics-addr",
            &addr,
        ]
        .map(String::from),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let (exceptions, restored) = loop {
        assert!(job.child.try_wait().unwrap().is_none(), "the job ended:\n{}", job.log());
        assert!(Instant::now() < deadline, "no restart within 60 s:\n{}", job.log());
        if std::net::TcpStream::connect(&addr).is_ok() {
            let (e, j) = (json(&addr, "/exceptions"), json(&addr, "/job"));
            if !e.as_array().unwrap().is_empty() && !j["restored_from"].is_null() {
                break (e, j["restored_from"].clone());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let first = &exceptions[0];
    assert_eq!(first["restarting"], true);
    assert_eq!(first["attempt"], 1);
    let errors: Vec<&str> = first["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    assert!(errors.len() >= 2 && errors.iter().any(|e| e.contains("bids.jsonl")), "an error chain: {errors:?}");

    let seen = drive(&format!("http://{addr}/"), &screenshots("failures"), &[]);
    let page = &seen["page"];
    let shown_exceptions = page["exceptions"].as_str().unwrap();
    assert!(shown_exceptions.contains("restarting (attempt 1)"), "{shown_exceptions}");
    for e in &errors {
        assert!(shown_exceptions.contains(e), "the page shows {e:?}: {shown_exceptions}");
    }
    let restore = page["restore"].as_str().unwrap();
    let id = restored["checkpoint_id"].as_u64().unwrap();
    assert!(restore.starts_with(&format!("Restored from checkpoint {id} (")), "{restore}");
    assert!(restore.contains(restored["path"].as_str().unwrap()), "{restore}");
    job.child.kill().unwrap();
    job.child.wait().unwrap();
}

#[test]
fn the_coordinator_shows_the_whole_job_of_several_processes() {
    let dir = tempfile::tempdir().unwrap();
    let args = generated(dir.path(), &[]);
    // Two processes: subtask 1 of every operator runs in process 1.
    let mut cluster = common::cluster::Cluster::start(2, &args, &dir.path().join("run"), &[], None);
    let addr = cluster.control[0].clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no checkpoint of the two processes within 60 s:\n{}", cluster.logs());
        if std::net::TcpStream::connect(&addr).is_ok() {
            let c = json(&addr, "/checkpoints");
            if c.as_array().unwrap().iter().filter(|c| c["status"] == "completed").count() >= 2 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let seen = drive(&format!("http://{addr}/"), &screenshots("two-processes"), &["--select", "auction-windows"]);
    let page = &seen["page"];
    let rows = page["detail"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "both subtasks, one in each process: {}", page["detail"]);
    let subtasks = op(&seen["job"], "auction-windows")["subtasks"].as_array().unwrap();
    for (row, sub) in rows.iter().zip(subtasks) {
        let records = shown(row[1].as_str().unwrap());
        assert_eq!(records, sub["records_in"].as_f64().unwrap());
        assert!(records > 0.0, "subtask {} reports from its process: {row}", sub["subtask"]);
    }
    let table = page["checkpoints"].as_array().unwrap();
    assert!(table.len() >= 2, "process 0 shows the job's checkpoints: {table:?}");
    let parts = page["checkpoint_detail"]["rows"].as_array().unwrap();
    assert!(
        parts.iter().any(|r| r[0] == "auction-windows" && r[1] == "1"),
        "a checkpoint's parts include process 1's subtasks: {parts:?}"
    );
    // Killing the coordinator stops the other process too (fail-stop).
    cluster.kill_one(0);
}
