//! The control endpoint against running jobs: `/job`, `/metrics` and `/checkpoints` report what
//! the job processed, where its tasks spend their time, and its checkpoints; `weir top` draws
//! them; the progress log line carries rates, watermark and the last checkpoint.

mod common;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{example, free_port, weir_cli};
use weir::prelude::*;

fn get(addr: &str, path: &str) -> String {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    agent.get(&format!("http://{addr}{path}")).call().unwrap().into_string().unwrap()
}

fn get_json(addr: &str, path: &str) -> serde_json::Value {
    serde_json::from_str(&get(addr, path)).unwrap()
}

fn wait_for(addr: &str) {
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "{addr} did not listen within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sums a Prometheus metric's samples whose labels contain every `(label, value)` given.
fn prom_sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else { continue };
        let (name, lbl) = name_labels.split_once('{').unwrap_or((name_labels, ""));
        if name != metric || !labels.iter().all(|(k, v)| lbl.contains(&format!("{k}=\"{v}\""))) {
            continue;
        }
        *total.get_or_insert(0.0) += value.parse::<f64>().unwrap();
    }
    total
}

/// Posts readings to an `http_ingest` job; its answer's status.
fn post(agent: &ureq::Agent, port: u16, readings: Vec<serde_json::Value>) -> u16 {
    agent
        .post(&format!("http://127.0.0.1:{port}/events"))
        .send_string(&serde_json::Value::Array(readings).to_string())
        .unwrap()
        .status()
}

fn operator<'a>(job: &'a serde_json::Value, uid: &str) -> &'a serde_json::Value {
    job["operators"].as_array().unwrap().iter().find(|o| o["uid"] == uid).unwrap_or_else(|| panic!("{uid} in {job}"))
}

fn archived_lines(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|p| std::fs::read_to_string(p).unwrap().lines().count())
        .sum()
}

/// A job that takes exactly what is posted to it: every endpoint must account for each reading.
#[test]
fn endpoints_report_what_the_job_processed() {
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let log = dir.path().join("job.log");
    let mut child = Command::new(example("http_ingest"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--archive", dir.path().join("archive").to_str().unwrap()])
        .args(["--checkpoint-dir", dir.path().join("chk").to_str().unwrap()])
        .args(["--checkpoint-interval", "200ms", "--progress-interval", "1s", "-p", "2"])
        .args(["--metrics-addr", &metrics_addr])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for(&format!("127.0.0.1:{port}"));
    wait_for(&metrics_addr);

    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
    let mut posted = 0u64;
    for batch in 0..10 {
        let readings: Vec<_> = (0..7)
            .map(|i| {
                serde_json::json!({"stationId": format!("ST-{i}"), "parkingBikeTotCnt": i,
                "event_time": 1_767_225_600_000i64 + batch * 60_000 + i})
            })
            .collect();
        assert_eq!(post(&agent, port, readings), 200);
        posted += 7;
    }
    // Acknowledged means checkpointed: the archive holds them all once the sink subtasks, told
    // of the completed checkpoint on their own threads at the same moment as the source, have
    // renamed its files (a client can be a few milliseconds faster than that).
    let archive_dir = dir.path().join("archive");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while archived_lines(&archive_dir) < posted as usize && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(archived_lines(&archive_dir), posted as usize);
    // Give the sampler (once a second) and the progress line (every second) time to see the
    // final counts.
    std::thread::sleep(Duration::from_millis(2500));

    let job = get_json(&metrics_addr, "/job");
    assert_eq!(job["name"], "http_ingest");
    let (http, archive) = (operator(&job, "http"), operator(&job, "archive"));
    assert_eq!(http["records_out"].as_u64(), Some(posted), "{job:#}");
    assert_eq!(archive["records_in"].as_u64(), Some(posted), "{job:#}");
    assert_eq!(archive["parallelism"], 2);
    let subtasks = archive["subtasks"].as_array().unwrap();
    assert_eq!(subtasks.len(), 2, "{archive:#}");
    assert_eq!(subtasks.iter().map(|s| s["records_in"].as_u64().unwrap()).sum::<u64>(), posted);
    for op in job["operators"].as_array().unwrap() {
        for s in op["subtasks"].as_array().unwrap() {
            let split: f64 = ["busy_ms_per_sec", "backpressured_ms_per_sec", "idle_ms_per_sec"]
                .iter()
                .map(|k| s[*k].as_f64().unwrap())
                .sum();
            assert!((split - 1000.0).abs() < 1.0, "busy + backpressured + idle is a second: {s}");
            // Nothing arrives any more: the tasks wait for input.
            assert!(s["idle_ms_per_sec"].as_f64().unwrap() > 900.0, "an idle job is idle: {s}");
            let fill = s["input_fill"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&fill), "{s}");
            assert_eq!(s["records_in_per_sec"].as_f64(), Some(0.0), "{s}");
        }
    }

    let metrics = get(&metrics_addr, "/metrics");
    assert_eq!(prom_sum(&metrics, "weir_records_out_total", &[("operator", "http")]), Some(posted as f64), "{metrics}");
    assert_eq!(prom_sum(&metrics, "weir_records_in_total", &[("operator", "archive")]), Some(posted as f64));
    for sub in ["0", "1"] {
        assert!(prom_sum(&metrics, "weir_records_in_total", &[("operator", "archive"), ("subtask", sub)]).is_some());
        let idle = prom_sum(&metrics, "weir_idle_time_ms_per_second", &[("operator", "archive"), ("subtask", sub)]);
        assert!(idle.is_some_and(|v| v > 900.0), "{metrics}");
    }
    let completed = prom_sum(&metrics, "weir_checkpoints_total", &[("status", "completed")]).unwrap();
    assert!(completed >= 10.0, "one checkpoint per acknowledged request at least: {metrics}");
    assert!(prom_sum(&metrics, "weir_last_checkpoint_size_bytes", &[]).is_some_and(|v| v > 0.0), "{metrics}");

    let checkpoints = get_json(&metrics_addr, "/checkpoints");
    let done: Vec<_> = checkpoints.as_array().unwrap().iter().filter(|c| c["status"] == "completed").collect();
    assert!(done.len() >= 10, "{checkpoints:#}");
    for c in &done {
        // One part per subtask: the source and two archive writers.
        let parts = c["subtasks"].as_array().unwrap();
        let who: BTreeMap<(String, u64), ()> = parts
            .iter()
            .map(|p| ((p["operator"].as_str().unwrap().to_string(), p["subtask"].as_u64().unwrap()), ()))
            .collect();
        assert_eq!(who.len(), 3, "{c:#}");
        assert!(who.contains_key(&("archive".to_string(), 1)) && who.contains_key(&("http".to_string(), 0)));
        let size: u64 = parts.iter().map(|p| p["size_bytes"].as_u64().unwrap()).sum();
        assert_eq!(c["size_bytes"].as_u64(), Some(size), "the total is the subtasks' sum: {c:#}");
        assert!(size > 0, "{c:#}");
        assert!(c["incremental_bytes"].as_u64().unwrap() <= size);
        let slowest_ack = parts.iter().map(|p| p["ack_ms"].as_f64().unwrap()).fold(0.0, f64::max);
        assert!(c["duration_ms"].as_f64().unwrap() + 1.0 >= slowest_ack, "end to end covers every ack: {c:#}");
        for key in ["alignment_ms", "sync_ms", "async_ms"] {
            let max = parts.iter().map(|p| p[key].as_f64().unwrap()).fold(0.0, f64::max);
            assert_eq!(c[key].as_f64(), Some(max), "{key} is the slowest subtask's: {c:#}");
        }
    }

    // weir top draws the same numbers.
    let top =
        Command::new(weir_cli()).args(["top", "--job", &format!("http://{metrics_addr}"), "--once"]).output().unwrap();
    assert!(top.status.success(), "{}", String::from_utf8_lossy(&top.stderr));
    let view = String::from_utf8_lossy(&top.stdout);
    assert!(view.starts_with("job http_ingest"), "{view}");
    let row =
        |uid: &str| view.lines().find(|l| l.starts_with(uid)).unwrap_or_else(|| panic!("{uid}: {view}")).to_string();
    let archive_row = row("archive");
    assert_eq!(archive_row.split_whitespace().nth(1), Some("2"), "parallelism column: {view}");
    assert!(row("http").contains("0%"), "{view}");
    let last_id = done.last().unwrap()["id"].as_u64().unwrap();
    assert!(
        view.lines().any(|l| l.split_whitespace().next() == Some(&last_id.to_string()) && l.contains("completed")),
        "checkpoint {last_id} listed: {view}"
    );

    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let log = std::fs::read_to_string(&log).unwrap();
    let progress: Vec<&str> = log.lines().filter(|l| l.contains("progress")).collect();
    assert!(!progress.is_empty(), "{log}");
    assert!(
        progress.iter().any(|l| l.contains(&format!("records={posted}")) && l.contains("last_checkpoint=")),
        "a progress line with the count and the last checkpoint: {progress:#?}"
    );

    // A stopped job has no endpoint: weir top says so and fails.
    let top =
        Command::new(weir_cli()).args(["top", "--job", &format!("http://{metrics_addr}"), "--once"]).output().unwrap();
    assert!(!top.status.success());
    assert!(String::from_utf8_lossy(&top.stderr).contains("could not reach"));
}

/// A slow operator behind a fast source: the source shows backpressure, the slow task shows
/// busy time and a full input queue.
#[test]
fn backpressure_and_busy_time_show_where_the_bottleneck_is() {
    let metrics_port = free_port();
    let addr = format!("127.0.0.1:{metrics_port}");
    let args = JobArgs {
        metrics_addr: addr.clone(),
        batch_size: 64,
        channel_capacity: 4,
        progress_interval: Duration::ZERO,
        ..JobArgs::default()
    };
    let out = Collected::new();
    let sink = out.clone();
    let job = std::thread::spawn(move || {
        let env = StreamEnv::new(args);
        env.add_source("numbers", VecSource::new((0..40_000u64).collect()), WatermarkStrategy::no_watermarks())
            .uid("numbers")
            .rebalance()
            .map(|x: u64| {
                std::thread::sleep(Duration::from_micros(100));
                x
            })
            .uid("slow")
            .collect_into(&sink);
        env.execute("slow").unwrap()
    });
    wait_for(&addr);
    std::thread::sleep(Duration::from_millis(2500));
    let view = get_json(&addr, "/job");
    let (source, slow) = (operator(&view, "numbers"), operator(&view, "slow"));
    assert!(source["backpressured_ms_per_sec"].as_f64().unwrap() > 800.0, "the source waits on the slow map: {view:#}");
    assert!(slow["busy_ms_per_sec"].as_f64().unwrap() > 800.0, "the map is the bottleneck: {view:#}");
    assert!(slow["input_fill"].as_f64().unwrap() >= 0.5, "its input queue is full: {view:#}");
    let rate = slow["records_in_per_sec"].as_f64().unwrap();
    assert!(rate > 500.0 && rate < 10_000.0, "about one record per 100 µs and a bit: {rate}");
    let metrics = get(&addr, "/metrics");
    assert!(
        prom_sum(&metrics, "weir_backpressured_time_ms_per_second", &[("operator", "numbers")]).unwrap() > 800.0,
        "{metrics}"
    );
    let result = job.join().unwrap();
    assert_eq!(out.take().len(), 40_000);
    assert_eq!(result.counter("slow.records_in"), 40_000);
}

/// Readings stamped with the wall clock when posted: the archive sink's commit latency
/// histogram counts each once, between 0 and the time its request took to be acknowledged
/// (acknowledged means committed by a completed checkpoint).
#[test]
fn commit_latency_runs_from_event_time_to_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut child = Command::new(example("http_ingest"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--archive", dir.path().join("archive").to_str().unwrap()])
        .args(["--checkpoint-dir", dir.path().join("chk").to_str().unwrap()])
        .args(["--checkpoint-interval", "300ms", "--metrics-addr", &metrics_addr])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&format!("127.0.0.1:{port}"));
    wait_for(&metrics_addr);
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
    let (mut posted, mut slowest) = (0u64, Duration::ZERO);
    for batch in 0..20 {
        let sent = Instant::now();
        let now = weir::runtime::now_millis();
        let readings: Vec<_> = (0..5)
            .map(|i| serde_json::json!({"stationId": format!("ST-{i}"), "parkingBikeTotCnt": batch, "event_time": now}))
            .collect();
        assert_eq!(post(&agent, port, readings), 200);
        slowest = slowest.max(sent.elapsed());
        posted += 5;
        std::thread::sleep(Duration::from_millis(37));
    }
    // The sinks commit on their own threads as the source acknowledges: give them a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let m = get(&metrics_addr, "/metrics");
        let count = prom_sum(&m, "weir_commit_latency_ms_count", &[("operator", "archive")]).unwrap_or(0.0);
        if count as u64 >= posted || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let archive = [("operator", "archive")];
    assert_eq!(prom_sum(&metrics, "weir_commit_latency_ms_count", &archive), Some(posted as f64), "{metrics}");
    assert!(metrics.contains("# TYPE weir_commit_latency_ms histogram"), "{metrics}");
    let bucket =
        |le: &str| prom_sum(&metrics, "weir_commit_latency_ms_bucket", &[("operator", "archive"), ("le", le)]).unwrap();
    assert_eq!(bucket("+Inf"), posted as f64);
    // Every record within the slowest acknowledgement (plus the moment the sink commits after
    // the source acknowledged, and one 5 % bucket of rounding), in the first bucket above it.
    let bound = weir::runtime::LATENCY_BUCKETS_MS
        .iter()
        .find(|b| **b as f64 >= (slowest.as_millis() as f64 + 50.0) * 1.05)
        .unwrap();
    assert_eq!(bucket(&bound.to_string()), posted as f64, "slowest acknowledgement {slowest:?}:\n{metrics}");
    // Acknowledged after a checkpoint: none committed within 5 ms of being posted.
    assert_eq!(bucket("5"), 0.0, "{metrics}");
    let mean = prom_sum(&metrics, "weir_commit_latency_ms_sum", &archive).unwrap() / posted as f64;
    assert!(mean > 5.0 && mean <= slowest.as_millis() as f64 * 1.05 + 50.0, "mean {mean} ms, slowest ack {slowest:?}");
    child.kill().unwrap();
    child.wait().unwrap();
}
