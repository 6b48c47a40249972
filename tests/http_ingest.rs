//! `http_ingest`: readings posted by concurrent clients while the job is killed with SIGKILL and
//! restarted; every reading answered 200 must be in the committed archive exactly once, and
//! nothing that was never sent may appear. Also the 400 answers for malformed bodies.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{example, free_port, Rng};

type Key = (String, i64);

struct Job {
    child: Child,
}

impl Job {
    fn start(args: &[String], port: u16) -> Job {
        let child = Command::new(example("http_ingest"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting http_ingest");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(60), "http_ingest did not listen within 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Job { child }
    }
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
    fn stop(self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let mut child = self.child;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "http_ingest stopped with {status}");
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "http_ingest did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn args(port: u16, dir: &Path) -> Vec<String> {
    [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--archive",
        dir.join("archive").to_str().unwrap(),
        "--output",
        dir.join("hourly").to_str().unwrap(),
        "--checkpoint-dir",
        dir.join("chk").to_str().unwrap(),
        "--checkpoint-interval",
        "150ms",
        "--progress-interval",
        "0s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn post(port: u16, body: &str) -> Result<(u16, String), String> {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
    match agent
        .post(&format!("http://127.0.0.1:{port}/events"))
        .set("Content-Type", "application/json")
        .send_string(body)
    {
        Ok(r) => Ok((r.status(), r.into_string().unwrap_or_default())),
        Err(ureq::Error::Status(code, r)) => Ok((code, r.into_string().unwrap_or_default())),
        Err(e) => Err(e.to_string()),
    }
}

/// Keys of every reading in the committed archive files (hidden in-progress files excluded).
fn archived(dir: &Path) -> BTreeMap<Key, usize> {
    let mut seen = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let key = (v["stationId"].as_str().unwrap().to_string(), v["event_time"].as_i64().unwrap());
            *seen.entry(key).or_insert(0) += 1;
        }
    }
    seen
}

#[test]
fn malformed_bodies_get_400_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let job = Job::start(&args(port, dir.path()), port);
    // The first request right after the port opened was once reset by the server under a loaded
    // CI (rare; not understood yet). A malformed body ingests nothing, so repeating it is safe.
    let started = Instant::now();
    let (code, body) = loop {
        match post(port, "{not json") {
            Err(e) if started.elapsed() < Duration::from_secs(10) => eprintln!("retrying the first request: {e}"),
            r => break r.unwrap(),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, 400);
    assert!(body.contains("malformed JSON"), "{body}");
    let (code, body) =
        post(port, r#"[{"stationId":"A","parkingBikeTotCnt":3,"event_time":1000}, {"stationId":"B"}]"#).unwrap();
    assert_eq!(code, 400);
    assert!(body.contains("event 1") && body.contains("missing field"), "{body}");
    let (code, body) =
        post(port, r#"{"stationId":"A","parkingBikeTotCnt":3,"event_time":"2026-13-01 00:00:00"}"#).unwrap();
    assert_eq!(code, 400);
    assert!(body.contains("event_time"), "{body}");
    let (code, body) =
        post(port, r#"{"stationId":"A","parkingBikeTotCnt":3,"event_time":"2026-01-01 10:00:00"}"#).unwrap();
    assert_eq!(code, 200, "{body}");
    let ack: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ack["accepted"], 1);
    assert!(ack["checkpoint"].as_u64().is_some(), "acknowledged by a checkpoint: {body}");
    job.stop();
    let seen = archived(&dir.path().join("archive"));
    assert_eq!(seen.len(), 1, "only the valid reading is archived: {seen:?}");
    assert_eq!(seen.get(&("A".to_string(), 1_767_261_600_000)), Some(&1));
}

#[test]
fn acknowledged_readings_survive_kills_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let args = args(port, dir.path());
    let sent = Arc::new(Mutex::new(BTreeSet::<Key>::new()));
    let acked = Arc::new(Mutex::new(BTreeSet::<Key>::new()));
    let mut job = Job::start(&args, port);

    let clients: Vec<_> = (0..6u64)
        .map(|c| {
            let (sent, acked) = (sent.clone(), acked.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(100 + c);
                let base = 1_767_225_600_000i64 + c as i64 * 1_000_000_000;
                let mut n = 0i64;
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(12) {
                    let mut batch = Vec::new();
                    for _ in 0..1 + rng.below(4) {
                        let station = format!("ST-{:02}", rng.below(20));
                        let t = base + n * 1000;
                        n += 1;
                        batch.push(serde_json::json!({
                            "stationId": station, "parkingBikeTotCnt": rng.below(30), "event_time": t,
                        }));
                    }
                    let keys: Vec<Key> = batch
                        .iter()
                        .map(|v| (v["stationId"].as_str().unwrap().to_string(), v["event_time"].as_i64().unwrap()))
                        .collect();
                    sent.lock().unwrap().extend(keys.iter().cloned());
                    match post(port, &serde_json::Value::Array(batch).to_string()) {
                        Ok((200, _)) => acked.lock().unwrap().extend(keys),
                        Ok((503, _)) | Err(_) => std::thread::sleep(Duration::from_millis(20)),
                        Ok((code, body)) => panic!("unexpected answer {code}: {body}"),
                    }
                }
            })
        })
        .collect();

    let mut rng = Rng::new(7);
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(1200 + rng.below(1000)));
        job.kill();
        job = Job::start(&args, port);
    }
    for c in clients {
        c.join().unwrap();
    }
    job.stop();

    let (sent, acked) = (sent.lock().unwrap(), acked.lock().unwrap());
    let seen = archived(&dir.path().join("archive"));
    assert!(acked.len() > 200, "too few acknowledged readings to mean anything: {}", acked.len());
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "readings archived twice: {duplicated:?}");
    let lost: Vec<_> = acked.iter().filter(|k| !seen.contains_key(*k)).collect();
    assert!(lost.is_empty(), "{} acknowledged readings lost, e.g. {:?}", lost.len(), lost.first());
    let invented: Vec<_> = seen.keys().filter(|k| !sent.contains(*k)).collect();
    assert!(invented.is_empty(), "readings nobody sent: {invented:?}");
}
