//! The exactly-once file sink on an S3-compatible server (moto on loopback, `scripts/s3`).
//!
//! Driven in-process by the operator test harness: parts go up while records arrive, nothing is
//! visible before its checkpoint completes, a restore completes its checkpoint's uploads and
//! aborts the later ones, repeats commits harmlessly, removes what a skipped newer checkpoint
//! committed, and finishes every old subtask's uploads once after a rescale. End to end:
//! `station_hourly` writing hourly Parquet to S3 and checkpointing there, killed again and again
//! and restarted on an empty state directory, ends with the rows of a brute-force reference.

mod common;

use std::time::{Duration, Instant};

use common::s3::Bucket;
use weir::checkpoint::Location;
use weir::operators::sinks::FileSink;
use weir::runtime::testing::{HarnessConfig, OperatorHarness};
use weir::runtime::TaskInfo;

fn config(subtask: usize, parallelism: usize) -> HarnessConfig {
    HarnessConfig::subtask(subtask, parallelism)
}

fn info(c: &HarnessConfig) -> TaskInfo {
    c.task_info("sink")
}

/// The sink writing JSON lines to `out/` in the test's bucket.
struct S3Sink {
    bucket: Bucket,
    location: Location,
}

impl S3Sink {
    fn new(test: &str) -> Self {
        let bucket = common::s3::bucket(test);
        // The sink, running in this process, reads the AWS_* environment.
        bucket.export();
        let location = bucket.url("out").parse().unwrap();
        S3Sink { bucket, location }
    }

    fn start(&self, c: HarnessConfig) -> OperatorHarness<String, ()> {
        OperatorHarness::with_config(FileSink::<String>::json_lines(&self.location).operator(&info(&c)), c).unwrap()
    }

    fn restore(&self, c: HarnessConfig, states: Vec<Vec<u8>>, checkpoint: u64) -> OperatorHarness<String, ()> {
        let op = FileSink::<String>::json_lines(&self.location).operator(&info(&c));
        OperatorHarness::restored(op, c, states, checkpoint).unwrap()
    }

    /// The visible part files and their records.
    fn visible(&self) -> Vec<(String, Vec<String>)> {
        let mut files: Vec<(String, Vec<String>)> = self
            .bucket
            .list("out/")
            .into_iter()
            .filter(|(k, _)| !k.starts_with("out/_uploads/"))
            .map(|(k, _)| {
                let text = String::from_utf8(self.bucket.get(&k).unwrap()).unwrap();
                let rows = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
                (k.strip_prefix("out/").unwrap().to_string(), rows)
            })
            .collect();
        files.sort();
        files
    }

    /// Keys of upload records.
    fn records(&self) -> Vec<String> {
        self.bucket.list("out/_uploads/").into_iter().map(|(k, _)| k).collect()
    }

    /// Waits until `f` holds for the store (uploads run beside the writer).
    fn eventually(&self, what: &str, f: impl Fn(&Self) -> bool) {
        let start = Instant::now();
        while !f(self) {
            assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn rows(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{i:08}-{}", "x".repeat(100))).collect()
}

fn write(h: &mut OperatorHarness<String, ()>, values: &[String]) {
    for v in values {
        h.process(v.clone()).unwrap();
    }
}

/// Pushes the writer's buffers into the upload, as the sink does once a second.
fn flush(h: &mut OperatorHarness<String, ()>) {
    h.processing_time(weir::runtime::now_millis() + 10_000).unwrap();
}

#[test]
fn parts_go_up_as_records_arrive_and_become_visible_when_the_checkpoint_completes() {
    let s = S3Sink::new("sink-visible");
    let mut h = s.start(config(0, 1));
    // About 6.6 MB: more than one 5 MiB part.
    let first = rows(0..60_000);
    write(&mut h, &first);
    s.eventually("a part uploaded before any barrier", |s| s.bucket.uploads("out/").iter().any(|u| u.2 >= 1));
    assert!(s.visible().is_empty(), "nothing is visible before checkpoint 1 completes");
    assert_eq!(s.records().len(), 1, "the open upload's id is recorded: {:?}", s.records());

    h.snapshot(1).unwrap();
    write(&mut h, &rows(60_000..60_010));
    flush(&mut h);
    assert!(s.visible().is_empty(), "nothing is visible before checkpoint 1 completes");
    h.notify_complete(1).unwrap();
    assert_eq!(s.visible(), vec![("part-00000-000000-1.jsonl".to_string(), first)]);
    s.eventually("the next file's upload started", |s| s.records().len() == 1);
    let uploads = s.bucket.uploads("out/");
    assert_eq!(uploads.len(), 1, "only the upload of the records after the barrier is open: {uploads:?}");
    assert_eq!(uploads[0].0, "out/part-00000-000001-2.jsonl");
}

#[test]
fn a_restore_completes_its_checkpoints_upload_and_aborts_the_later_one() {
    let s = S3Sink::new("sink-restore");
    let mut h = s.start(config(0, 1));
    write(&mut h, &rows(0..2));
    let state = h.snapshot(1).unwrap().operator_state.expect("the sink keeps its uploads in its state");
    // Checkpoint 1 completes, but the process dies before the sink commits, while an upload of
    // the next epoch is open.
    write(&mut h, &rows(2..3));
    flush(&mut h);
    s.eventually("the second upload recorded", |s| s.records().len() == 2);
    drop(h);

    let mut r = s.restore(config(0, 1), vec![state], 1);
    assert_eq!(s.visible(), vec![("part-00000-000000-1.jsonl".to_string(), rows(0..2))]);
    assert!(s.bucket.uploads("out/").is_empty(), "the later upload is aborted: {:?}", s.bucket.uploads("out/"));
    assert!(s.records().is_empty(), "no upload record is left: {:?}", s.records());
    // The replayed record goes to a new file.
    write(&mut r, &rows(2..3));
    r.snapshot(2).unwrap();
    r.notify_complete(2).unwrap();
    assert_eq!(
        s.visible(),
        vec![
            ("part-00000-000000-1.jsonl".to_string(), rows(0..2)),
            ("part-00000-000001-2.jsonl".to_string(), rows(2..3))
        ]
    );
}

#[test]
fn repeated_commits_change_nothing_and_files_of_a_skipped_checkpoint_go() {
    let s = S3Sink::new("sink-repeat");
    let mut h = s.start(config(0, 1));
    write(&mut h, &rows(0..5));
    let state = h.snapshot(1).unwrap().operator_state.unwrap();
    h.notify_complete(1).unwrap();
    let committed = s.visible();
    // Checkpoint 2 completes and commits; a restore that skips it (say its metadata broke)
    // must take its file away, as its records are replayed.
    write(&mut h, &rows(5..7));
    h.snapshot(2).unwrap();
    h.notify_complete(2).unwrap();
    assert_eq!(s.visible().len(), 2);
    drop(h);
    s.restore(config(0, 1), vec![state], 1);
    assert_eq!(s.visible(), committed, "checkpoint 1's file committed once, checkpoint 2's gone");
    assert!(s.records().is_empty() && s.bucket.uploads("out/").is_empty());
}

#[test]
fn after_a_rescale_each_old_subtasks_uploads_are_completed_once() {
    let s = S3Sink::new("sink-rescale");
    let mut states = Vec::new();
    for sub in 0..2 {
        let mut h = s.start(config(sub, 2));
        write(&mut h, &rows(10 * sub..10 * sub + 2));
        states.push(h.snapshot(1).unwrap().operator_state.unwrap());
    }
    // Scaled to 3, old subtask s goes to new subtask s: subtask 2 inherits nothing to commit.
    s.restore(config(2, 3), states.clone(), 1);
    assert!(s.visible().is_empty(), "subtask 2 of 3 inherits no old subtask");
    // Scaled to 1, both old subtasks' uploads reach the one new subtask.
    s.restore(config(0, 1), states, 1);
    assert_eq!(
        s.visible(),
        vec![
            ("part-00000-000000-1.jsonl".to_string(), rows(0..2)),
            ("part-00001-000000-1.jsonl".to_string(), rows(10..12))
        ]
    );
    assert!(s.records().is_empty() && s.bucket.uploads("out/").is_empty());
}
