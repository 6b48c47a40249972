//! The `nexmark` benchmark computes the right answers: every query at parallelism 1 and 2 with
//! checkpoints on, its row count and row digest compared with a brute-force evaluation of the
//! same query over the same generated events.

mod common;
#[path = "nexmark/reference.rs"]
mod reference;

use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use common::example;
use reference::reference;
use weir::nexmark::{Bid, Event, Generator, NexmarkConfig};
use weir::operators::sources::nexmark::generate_event;

const EVENTS: u64 = 150_000;
/// The queries the benchmark runs by default: q0–q22.
const QUERIES: usize = 23;

/// Row count and wrapping sum of the rows' xxh3 hashes, as the benchmark's sink computes them.
#[derive(Default, Debug, PartialEq)]
pub struct Digest {
    rows: u64,
    sum: u64,
}

impl Digest {
    pub fn add<T: Hash>(&mut self, row: &T) {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        row.hash(&mut h);
        self.add_weighed(1, h.finish());
    }
    /// Adds what a row that stands for `rows` rows adds (q12's counts).
    pub fn add_weighed(&mut self, rows: u64, hash: u64) {
        self.rows += rows;
        self.sum = self.sum.wrapping_add(hash);
    }
    fn hex(&self) -> String {
        format!("{:016x}", self.sum)
    }
}

fn generated(cfg: NexmarkConfig) -> Vec<Event> {
    (0..EVENTS).map(|n| generate_event(&cfg, n)).collect()
}

pub fn bids(events: &[Event]) -> impl Iterator<Item = &Bid> {
    events.iter().filter_map(|e| match e {
        Event::Bid(b) => Some(b),
        _ => None,
    })
}

/// Runs the benchmark with `flags` and checks every row of its table against the brute-force
/// evaluation; returns the (query, parallelism, processes) it saw.
fn check_table(flags: &[&str], cfg: NexmarkConfig) -> HashSet<(String, String, String)> {
    let out = std::process::Command::new(example("nexmark"))
        .args(["--events", &EVENTS.to_string(), "--runs", "1"])
        .args(["--checkpoint-interval", "50ms", "--memory-budget", "192MiB"])
        .args(flags)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(table.contains("machine: "), "{table}");
    let events = generated(cfg);
    let mut seen = HashSet::new();
    for line in table.lines().filter(|l| l.starts_with("| q") && !l.starts_with("| query")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (query, p, procs, n) = (cells[1], cells[3], cells[4], cells[5]);
        assert_eq!(n, EVENTS.to_string(), "{line}");
        assert!(cells[7].parse::<f64>().unwrap() > 0.0, "events/s: {line}");
        assert!(cells[10].parse::<u64>().unwrap() >= 1, "at least the final checkpoint: {line}");
        let expected = reference(query, &events);
        assert!(expected.rows > 0, "{query}: the reference has rows");
        assert_eq!(cells[13], expected.rows.to_string(), "{query} at p={p} as {procs} processes: row count");
        assert_eq!(cells[14], expected.hex(), "{query} at p={p} as {procs} processes: row digest");
        seen.insert((query.to_string(), p.to_string(), procs.to_string()));
    }
    seen
}

#[test]
fn every_query_matches_a_brute_force_evaluation_at_parallelism_1_and_2() {
    let seen = check_table(&["--parallelism", "1,2"], NexmarkConfig::default());
    assert_eq!(seen.len(), 2 * QUERIES, "{QUERIES} queries at 2 parallelisms: {seen:?}");
}

/// The same queries as one, two and three processes on loopback (at parallelism 3, one
/// subtask of each operator per process at 3): every process reports its part, and the parts
/// add up to the brute-force answer.
#[test]
fn every_query_gives_the_same_answer_as_one_two_and_three_processes() {
    let seen = check_table(&["--parallelism", "3", "--processes", "1,2,3"], NexmarkConfig::default());
    assert_eq!(seen.len(), 3 * QUERIES, "{QUERIES} queries as 1, 2 and 3 processes: {seen:?}");
}

/// The light generator (`--generator light`) still drives the queries, with their answers.
#[test]
fn the_light_generator_still_drives_the_queries() {
    let cfg = NexmarkConfig { generator: Generator::Light, ..NexmarkConfig::default() };
    let seen = check_table(&["--parallelism", "2", "--generator", "light", "--queries", "q4,q5,q19,q20"], cfg);
    assert_eq!(seen.len(), 4, "{seen:?}");
}

/// q10's files: every bid once, in CSV files under the directory of its day and minute, and
/// nothing else there (uncommitted files are hidden until their checkpoint completes).
#[test]
fn q10_files_hold_every_bid_once_under_its_day_and_minute() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let status = std::process::Command::new(example("nexmark"))
        .args(["run", "--query", "q10", "--events", &EVENTS.to_string(), "-p", "2"])
        .args(["--checkpoint-interval", "50ms", "--progress-interval", "0s"])
        // 150 s of event time: bids over three minutes.
        .args(["--event-rate", "1000"])
        .arg("--checkpoint-dir")
        .arg(dir.path().join("chk"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--output")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let mut got = Digest::default();
    let mut minutes = HashSet::new();
    for entry in walk(&out) {
        let rel = entry.strip_prefix(&out).unwrap().to_string_lossy().into_owned();
        assert!(rel.ends_with(".csv"), "only committed CSV part files: {rel}");
        let mut reader = csv::Reader::from_path(&entry).unwrap();
        for row in reader.deserialize::<weir::nexmark::Q10Row>() {
            let row = row.unwrap();
            assert!(rel.starts_with(&format!("dt={}/hm={}/", row.dt, row.hm)), "{rel}: {row:?}");
            minutes.insert(row.hm.clone());
            got.add(&row);
        }
    }
    let cfg = NexmarkConfig { event_step_ns: NexmarkConfig::step_for_rate(1000), ..NexmarkConfig::default() };
    let expected = reference("q10", &generated(cfg));
    assert_eq!(minutes.len(), 3, "{minutes:?}");
    assert_eq!((got.rows, got.hex()), (expected.rows, expected.hex()));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
