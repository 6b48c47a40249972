//! `station_hourly`: hourly rentals and returns per station, written as partitioned Parquet,
//! compared with a brute-force reference computed from the generated feed; and the same job
//! killed with SIGKILL again and again, whose committed Parquet output must not change, on the
//! local disk and with output and checkpoints on S3.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::{TimestampMillisecondType, UInt64Type};
use arrow_array::Array;
use chrono::{DateTime, Datelike, NaiveDateTime, Timelike};
use common::cluster::Cluster;
use common::{broker, example, kill_until_done, kill_until_done_with, run_ok, KillRuns};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// (window_start, stationId) -> (window_end, total_rental, total_return)
type Rows = BTreeMap<(i64, String), (i64, u64, u64)>;

const HOUR: i64 = 3_600_000;

fn feed(path: &Path, extra: &[&str]) {
    let mut args = vec!["--output", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = Command::new(example("station_feed")).args(&args).output().unwrap();
    assert!(out.status.success(), "station_feed failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The result the job must produce, computed the obvious way: readings in file order, the
/// previous count per station, changes summed per (hour, station).
fn reference(path: &Path) -> Rows {
    let mut previous: BTreeMap<String, i64> = BTreeMap::new();
    let mut rows = Rows::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let station = v["stationId"].as_str().unwrap().to_string();
        let bikes = v["parkingBikeTotCnt"].as_i64().unwrap();
        let t = match &v["event_time"] {
            serde_json::Value::String(s) => {
                NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap().and_utc().timestamp_millis()
            }
            n => n.as_i64().unwrap(),
        };
        let (rent, ret) = match previous.insert(station.clone(), bikes) {
            Some(before) => ((before - bikes).max(0) as u64, (bikes - before).max(0) as u64),
            None => (0, 0),
        };
        let start = t.div_euclid(HOUR) * HOUR;
        let e = rows.entry((start, station)).or_insert((start + HOUR, 0, 0));
        e.1 += rent;
        e.2 += ret;
    }
    rows
}

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// Every row of the committed Parquet files, checking that each sits in the partition of its
/// window start and that no hidden in-progress file is left.
fn read_output(dir: &Path) -> Rows {
    let mut rows = Rows::new();
    for path in parquet_files(dir) {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(!name.starts_with('.'), "in-progress file left behind: {}", path.display());
        assert!(name.ends_with(".parquet"), "unexpected file {}", path.display());
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap().build().unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let starts = batch.column_by_name("window_start").unwrap().as_primitive::<TimestampMillisecondType>();
            let ends = batch.column_by_name("window_end").unwrap().as_primitive::<TimestampMillisecondType>();
            let stations = batch.column_by_name("stationId").unwrap().as_string::<i32>();
            let rentals = batch.column_by_name("total_rental").unwrap().as_primitive::<UInt64Type>();
            let returns = batch.column_by_name("total_return").unwrap().as_primitive::<UInt64Type>();
            assert_eq!(starts.null_count(), 0);
            for i in 0..batch.num_rows() {
                let start = starts.value(i);
                let t = DateTime::from_timestamp_millis(start).unwrap();
                let partition =
                    format!("year={}/month={:02}/day={:02}/hour={:02}", t.year(), t.month(), t.day(), t.hour());
                assert!(
                    path.parent().unwrap().ends_with(&partition),
                    "row of window {start} in {}, expected under {partition}",
                    path.display()
                );
                let key = (start, stations.value(i).to_string());
                let value = (ends.value(i), rentals.value(i), returns.value(i));
                assert!(rows.insert(key.clone(), value).is_none(), "row {key:?} written twice");
            }
        }
    }
    rows
}

/// Fails with the first differences, not two huge maps.
fn assert_rows_eq(got: &Rows, expected: &Rows, what: &str) {
    if got == expected {
        return;
    }
    let missing: Vec<_> = expected.iter().filter(|(k, _)| !got.contains_key(*k)).take(5).collect();
    let extra: Vec<_> = got.iter().filter(|(k, _)| !expected.contains_key(*k)).take(5).collect();
    let differ: Vec<_> =
        expected.iter().filter_map(|(k, v)| got.get(k).filter(|g| *g != v).map(|g| (k, v, g))).take(5).collect();
    panic!(
        "{what}: {} rows, expected {}; missing {missing:?}; unexpected {extra:?}; different (expected, got) {differ:?}",
        got.len(),
        expected.len()
    );
}

fn s(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[test]
fn station_hourly_matches_a_brute_force_reference() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("readings.jsonl");
    feed(&input, &["--stations", "40", "--readings", "50000", "--step", "3s", "--disorder", "40s"]);
    // A few readings with epoch-millisecond times, as the job also accepts them.
    let millis = dir.path().join("millis.jsonl");
    feed(&millis, &["--stations", "40", "--readings", "2000", "--epoch-millis", "--start", "2026-01-03 00:00:00"]);
    let mut text = std::fs::read_to_string(&input).unwrap();
    text.push_str(&std::fs::read_to_string(&millis).unwrap());
    std::fs::write(&input, text).unwrap();

    let expected = reference(&input);
    assert!(expected.len() > 1_000, "{} rows", expected.len());
    assert!(expected.values().any(|r| r.1 > 0) && expected.values().any(|r| r.2 > 0));
    let out = dir.path().join("out");
    let run = run_ok(
        "station_hourly",
        &["--input", input.to_str().unwrap(), "--output", out.to_str().unwrap(), "-p", "2", "--max-delay", "1m"],
    );
    assert!(run.status.success());
    assert_rows_eq(&read_output(&out), &expected, "the job's Parquet rows");
}

/// The job reading `input` slowly enough to be killed many times, checkpointing every 100 ms.
fn kill_args(input: &Path, out: &str, chk: &str) -> Vec<String> {
    let input = input.to_str().unwrap();
    s(&["--input", input, "--output", out, "-p", "2", "--checkpoint-dir", chk, "--checkpoint-interval", "100ms"])
        .into_iter()
        .chain(s(&["--rate", "4000", "--progress-interval", "0s"]))
        .collect()
}

#[test]
fn station_hourly_survives_kills_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("readings.jsonl");
    feed(&input, &["--stations", "30", "--readings", "40000", "--step", "4s", "--seed", "11"]);
    let expected = reference(&input);
    let (out, chk) = (dir.path().join("out"), dir.path().join("chk"));
    let args = kill_args(&input, out.to_str().unwrap(), chk.to_str().unwrap());
    let kills = kill_until_done(
        "station_hourly",
        &args,
        &chk.join("station_hourly"),
        &["mid-snapshot", "after-checkpoint-complete", "before-sink-commit", "mid-sink-commit"],
        &[],
        12,
        31,
    );
    assert!(kills >= 12);
    // A restart that forgot a station's previous count would count its next reading as neither
    // rental nor return, and a replayed reading would be counted twice: both change the sums.
    assert_rows_eq(&read_output(&out), &expected, "committed Parquet rows after kills");
}

/// The seed job where its users run it: readings → hourly windows → Parquet on S3, checkpoints
/// on S3, killed at random and at the named crash points, and every restart on an empty state
/// directory (a new machine).
#[test]
fn station_hourly_on_s3_survives_kills_on_a_new_machine_every_time() {
    let bucket = common::s3::bucket("station-hourly");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("readings.jsonl");
    feed(&input, &["--stations", "30", "--readings", "40000", "--step", "4s", "--seed", "12"]);
    let expected = reference(&input);
    let args = kill_args(&input, &bucket.url("out"), &bucket.url("chk"));
    let states = dir.path().to_path_buf();
    let per_run = move |run: usize| s(&["--state-dir", states.join(format!("state-{run}")).to_str().unwrap()]);
    let env = bucket.env();
    let runs =
        KillRuns { max_checkpoint: &|| bucket.max_checkpoint("chk/station_hourly"), per_run: &per_run, env: &env };
    let points = ["mid-snapshot", "after-checkpoint-complete", "before-sink-commit", "mid-sink-commit"];
    let kills = kill_until_done_with("station_hourly", &args, &runs, &points, &[], 20, 37);
    assert!(kills >= 20);
    bucket.assert_no_open_uploads("out/");
    let local = dir.path().join("out");
    bucket.download("out", &local);
    assert_rows_eq(&read_output(&local), &expected, "committed Parquet rows on S3 after kills");
}

#[test]
fn station_hourly_reads_a_kafka_topic_keyed_by_station() {
    let addr = broker();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("readings.jsonl");
    feed(&input, &["--stations", "12", "--readings", "6000", "--step", "5s", "--seed", "5"]);
    let expected = reference(&input);
    let topic = format!("readings-{}-{}", std::process::id(), common::free_port());
    // Keyed by station: each station's readings stay in one partition, in file order.
    let fed = Command::new(example("kafka_feed"))
        .args(["--brokers", &addr, "--topic", &topic, "--partitions", "3", "--key-field", "stationId", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(fed.status.success(), "{}", String::from_utf8_lossy(&fed.stderr));
    let out = dir.path().join("out");
    run_ok(
        "station_hourly",
        &["--brokers", &addr, "--input-topic", &topic, "--stop-at-end", "--output", out.to_str().unwrap(), "-p", "3"],
    );
    assert_rows_eq(&read_output(&out), &expected, "rows from the Kafka topic");
}

/// The job as three processes on loopback (readings hashed by station to window subtasks in all
/// three), Parquet and checkpoints on S3: a process killed at a random moment after a
/// checkpoint, twice, then the job runs to its end; the committed rows equal the reference.
#[test]
fn station_hourly_as_three_processes_survives_kills_and_equals_the_reference() {
    let bucket = common::s3::bucket("station-hourly-processes");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("readings.jsonl");
    feed(&input, &["--stations", "30", "--readings", "40000", "--step", "4s", "--seed", "13"]);
    let expected = reference(&input);
    let mut args = kill_args(&input, &bucket.url("out"), &bucket.url("chk"));
    let p = args.iter().position(|a| a == "-p").unwrap();
    args[p + 1] = "3".into();
    let env = bucket.env();
    let mut rng = common::Rng::new(3);
    for run in 0..3 {
        let run_dir = dir.path().join(format!("run-{run}"));
        let before = bucket.max_checkpoint("chk/station_hourly");
        let mut c = Cluster::start_job("station_hourly", 3, &args, &run_dir, &env, &[]);
        if run == 2 {
            let statuses = c.wait(Duration::from_secs(300));
            assert!(statuses.iter().all(|s| s.success()), "the last run fails:\n{}", c.logs());
            break;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while bucket.max_checkpoint("chk/station_hourly") < before + 2 {
            assert!(Instant::now() < deadline, "no checkpoints:\n{}", c.logs());
            assert!(c.procs.iter_mut().all(|p| p.try_wait().unwrap().is_none()), "ended early:\n{}", c.logs());
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(rng.below(500)));
        c.kill_one(rng.below(3) as usize);
    }
    bucket.assert_no_open_uploads("out/");
    let local = dir.path().join("out");
    bucket.download("out", &local);
    assert_rows_eq(&read_output(&local), &expected, "committed Parquet rows of three processes");
}
