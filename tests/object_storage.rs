//! Checkpoints on an S3-compatible server (moto on loopback, `scripts/s3`): a job writing its
//! output and checkpoints there, killed again and again and restarted every time on an empty
//! `--state-dir` as on a new machine, ends with exactly the output of a failure-free run; two coordinators never both commit an id; a restore
//! on a new machine downloads and verifies, skips a checkpoint whose files are broken on the store,
//! and a restore on the same machine downloads nothing it still has.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;

use common::s3::Bucket;
use common::{read_parts, run_ok, KillRuns, Rng};
use weir::checkpoint::metadata::parse_metadata;
use weir::checkpoint::{CheckpointMetadata, CheckpointStorage, Location, SnapshotKind, SubtaskSnapshot};

const RUNNING_POINTS: &[&str] = &["mid-snapshot", "after-checkpoint-complete", "before-sink-commit", "mid-sink-commit"];

fn write_bids(path: &Path, n: i64) {
    let mut rng = Rng::new(11);
    let base = 1_767_225_600_000i64;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..n {
        let t = base + i * 20 - rng.below(3_000) as i64;
        writeln!(
            f,
            r#"{{"auction":{},"bidder":1,"price":{},"channel":"c","url":"u","date_time":{t},"extra":""}}"#,
            1000 + rng.below(50),
            rng.below(100_000)
        )
        .unwrap();
    }
}

fn sorted_rows(dir: &Path) -> Vec<String> {
    let mut rows = read_parts(dir, ".csv", Some("window_start,auction,count,max_price"));
    rows.sort();
    rows
}

/// Checks the store after retention: at most `retained` complete checkpoints, every file they
/// reference present with its size, and no shared file that none of them references.
fn assert_retention(bucket: &Bucket, job_prefix: &str, retained: usize) {
    let keys: BTreeMap<String, u64> = bucket.list(&format!("{job_prefix}/")).into_iter().collect();
    let metas: Vec<CheckpointMetadata> = keys
        .keys()
        .filter(|k| k.ends_with("/_metadata"))
        .map(|k| parse_metadata(&String::from_utf8(bucket.get(k).unwrap()).unwrap(), k).unwrap())
        .collect();
    assert!(!metas.is_empty() && metas.len() <= retained, "{} complete checkpoints kept", metas.len());
    let mut referenced = HashSet::new();
    for m in &metas {
        for f in m.files() {
            let key = format!("{job_prefix}/{}", f.path);
            assert_eq!(keys.get(&key), Some(&f.size), "{key} referenced by checkpoint {}", m.checkpoint_id);
            referenced.insert(key);
        }
    }
    let stray: Vec<&String> =
        keys.keys().filter(|k| k.starts_with(&format!("{job_prefix}/shared/")) && !referenced.contains(*k)).collect();
    assert!(stray.is_empty(), "shared files no kept checkpoint references: {stray:?}");
}

#[test]
fn a_job_checkpointing_to_s3_survives_kills_on_a_new_machine_every_time() {
    let bucket = common::s3::bucket("kills");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.jsonl");
    write_bids(&input, 60_000);
    let common_args = |out: &Path| -> Vec<String> {
        ["--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()]
            .iter()
            .chain(&["--window-parallelism", "2", "--progress-interval", "0s"])
            .map(|s| s.to_string())
            .collect()
    };
    let ref_out = dir.path().join("ref-out");
    run_ok("auction_windows", &common_args(&ref_out).iter().map(String::as_str).collect::<Vec<_>>());

    // Output and checkpoints on the store; only the input is local.
    let mut args = common_args(Path::new(&bucket.url("out")));
    let chk = bucket.url("chk");
    args.extend(
        ["--checkpoint-dir", &chk, "--checkpoint-interval", "100ms", "--rate", "10000"].iter().map(|s| s.to_string()),
    );
    let env = bucket.env();
    // Every run gets an empty state directory: what it restores comes from the store alone.
    let states = dir.path().to_path_buf();
    let per_run = move |run: usize| -> Vec<String> {
        vec!["--state-dir".to_string(), states.join(format!("state-{run}")).to_str().unwrap().to_string()]
    };
    let runs =
        KillRuns { max_checkpoint: &|| bucket.max_checkpoint("chk/auction_windows"), per_run: &per_run, env: &env };
    let kills = common::kill_until_done_with("auction_windows", &args, &runs, RUNNING_POINTS, &[], 20, 23);
    assert!(kills >= 20);

    let expected = sorted_rows(&ref_out);
    assert!(expected.len() > 500);
    bucket.assert_no_open_uploads("out/");
    let out = dir.path().join("out");
    bucket.download("out", &out);
    assert_eq!(sorted_rows(&out), expected, "committed windows equal the failure-free run");
    assert_retention(&bucket, "chk/auction_windows", 2);
}

/// A metadata with one keyed subtask whose files are `files` (already stored).
fn metadata(id: u64, files: Vec<weir::checkpoint::FileRef>) -> CheckpointMetadata {
    CheckpointMetadata {
        job: "race".into(),
        checkpoint_id: id,
        kind: SnapshotKind::Checkpoint,
        timestamp: 0,
        max_parallelism: 128,
        operators: vec![weir::checkpoint::OperatorSnapshot {
            uid: "op".into(),
            name: "op".into(),
            parallelism: 1,
            keyed: true,
            subtasks: vec![SubtaskSnapshot {
                subtask: 0,
                key_groups: None,
                keyed_files: files,
                operator_state: None,
                watermark: 0,
            }],
        }],
        duration_ms: None,
    }
}

/// Stores a fake database of `ssts` SST files (plus a MANIFEST) as checkpoint `id`'s snapshot.
fn store_checkpoint(
    storage: &CheckpointStorage,
    id: u64,
    ssts: &[&str],
    known: &mut std::collections::HashMap<String, weir::checkpoint::FileRef>,
) -> CheckpointMetadata {
    let db = tempfile::tempdir().unwrap();
    for name in ssts {
        // A "big" file is larger than the upload buffer (8 MiB): it goes up as a multipart upload.
        let bytes: Vec<u8> = if name.contains("big") {
            let mut rng = Rng::new(3);
            (0..20 << 20).map(|_| rng.below(256) as u8).collect()
        } else {
            format!("contents of {name}").repeat(100).into_bytes()
        };
        std::fs::write(db.path().join(name), bytes).unwrap();
    }
    std::fs::write(db.path().join("MANIFEST-000001"), format!("manifest of {id}")).unwrap();
    storage.reserve(id).unwrap();
    let (files, _) = storage.upload_subtask(id, "op", 0, "r1", Some(db.path()), None, known).unwrap();
    let meta = metadata(id, files);
    storage.complete(&meta).unwrap();
    meta
}

#[test]
fn two_coordinators_never_both_use_a_checkpoint_id() {
    let bucket = common::s3::bucket("race");
    bucket.export();
    let location: Location = bucket.url("chk").parse().unwrap();
    let (m1, m2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = CheckpointStorage::open(&location, "race", m1.path()).unwrap();
    let b = CheckpointStorage::open(&location, "race", m2.path()).unwrap();

    a.reserve(1).unwrap();
    let err = b.reserve(1).unwrap_err().to_string();
    assert!(err.contains("already reserved"), "{err}");

    // Both commit the same id at the same moment: exactly one wins.
    let meta = metadata(7, Vec::new());
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> =
            [&a, &b].map(|st| s.spawn(|| st.complete(&meta).map_err(|e| e.to_string()))).into_iter().collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{results:?}");
    let loss = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert!(loss.contains("committed by another coordinator"), "{loss}");
}

#[test]
fn restores_download_verify_and_skip_what_is_broken_on_the_store() {
    let bucket = common::s3::bucket("restore");
    bucket.export();
    let location: Location = bucket.url("chk").parse().unwrap();
    let writer_mirror = tempfile::tempdir().unwrap();
    let writer = CheckpointStorage::open(&location, "race", writer_mirror.path()).unwrap();
    let mut known = Default::default();
    store_checkpoint(&writer, 1, &["000009-big.sst", "000010.sst"], &mut known);
    let second = store_checkpoint(&writer, 2, &["000009-big.sst", "000010.sst", "000011.sst"], &mut known);
    writer.retain(2).unwrap();
    // The SST only checkpoint 2 has.
    let only_second = second.files().find(|f| f.path.ends_with("000011.sst")).unwrap().path.clone();

    // A new machine: everything comes from the store and is verified.
    let machine = tempfile::tempdir().unwrap();
    let fresh = CheckpointStorage::open(&location, "race", machine.path()).unwrap();
    let latest = fresh.latest_valid().unwrap().expect("a checkpoint");
    assert_eq!(latest.meta.checkpoint_id, 2);
    assert!(machine.path().join(&only_second).exists(), "downloaded into the mirror");
    let big = second.files().find(|f| f.path.ends_with("big.sst")).unwrap();
    assert_eq!(big.size, 20 << 20);
    assert_eq!(std::fs::metadata(machine.path().join(&big.path)).unwrap().len(), big.size, "the big file, whole");
    // Checked while they streamed in and stamped: verifying them again reads none.
    assert_eq!(weir::checkpoint::metadata::verify_reading(&latest.meta, machine.path()).unwrap(), 0);

    // Corrupt that SST on the store: a new machine falls back to checkpoint 1 ...
    bucket.put(&format!("chk/race/{only_second}"), b"garbage");
    let other = tempfile::tempdir().unwrap();
    let restored = CheckpointStorage::open(&location, "race", other.path()).unwrap().latest_valid().unwrap();
    assert_eq!(restored.expect("the previous checkpoint").meta.checkpoint_id, 1);

    // `weir checkpoints list` says so, from the store's listing.
    let listing = std::process::Command::new(common::weir_cli())
        .args(["checkpoints", "list", &bucket.url("chk")])
        .output()
        .unwrap();
    assert!(listing.status.success(), "{}", String::from_utf8_lossy(&listing.stderr));
    let listing = String::from_utf8_lossy(&listing.stdout).to_string();
    let line = |id: &str| listing.lines().find(|l| l.split_whitespace().nth(1) == Some(id)).unwrap_or("").to_string();
    assert!(line("1").starts_with("race") && line("1").contains(" complete"), "{listing}");
    assert!(line("1").ends_with("<- --restore latest"), "the restore skips the broken one:\n{listing}");
    assert!(line("2").contains("broken:") && line("2").contains("000011.sst"), "{listing}");

    // ... while the machine that already holds a verified copy downloads nothing and keeps 2:
    // its file is the one checkpoint 2 committed (size and checksum in the metadata).
    let local = machine.path().join(&only_second);
    let before = std::fs::metadata(&local).unwrap().modified().unwrap();
    let again = CheckpointStorage::open(&location, "race", machine.path()).unwrap().latest_valid().unwrap();
    assert_eq!(again.expect("checkpoint 2").meta.checkpoint_id, 2);
    assert_eq!(std::fs::metadata(&local).unwrap().modified().unwrap(), before, "not downloaded again");

    // A `_metadata` corrupted on the store is skipped too.
    let key = "chk/race/chk-2/_metadata";
    let mut bytes = bucket.get(key).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    bucket.put(key, &bytes);
    let third = tempfile::tempdir().unwrap();
    let restored = CheckpointStorage::open(&location, "race", third.path()).unwrap().latest_valid().unwrap();
    assert_eq!(restored.expect("the previous checkpoint").meta.checkpoint_id, 1);
}

#[test]
fn location_flags_refuse_what_weir_cannot_write() {
    let out = common::run("auction_windows", &["--generate", "10", "--state-dir", "s3://bucket/state"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("this flag takes a local directory; s3:// is not supported here"), "{err}");
    assert!(!Path::new("s3:").exists(), "no local directory named after the scheme");
    for flag in ["--checkpoint-dir", "--output"] {
        let out = common::run("auction_windows", &["--generate", "10", flag, "gs://bucket/x"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        assert!(err.contains("weir does not support gs:// locations"), "{flag}: {err}");
    }
}

#[test]
fn checkpoints_on_s3_restore_at_other_parallelisms() {
    let bucket = common::s3::bucket("rescale");
    // The jobs below inherit the AWS_* environment.
    bucket.export();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.jsonl");
    write_bids(&input, 60_000);
    let args = |out: &Path, p: usize, extra: &[&str]| -> Vec<String> {
        let p = p.to_string();
        ["--input", input.to_str().unwrap(), "--output", out.to_str().unwrap(), "--window-parallelism", &p]
            .iter()
            .chain(&["--progress-interval", "0s"])
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let ref_out = dir.path().join("ref-out");
    run_ok("auction_windows", &args(&ref_out, 2, &[]).iter().map(String::as_str).collect::<Vec<_>>());

    let out = bucket.url("out");
    let chk = bucket.url("chk");
    let checkpointed = |p: usize, state: &str| {
        let state = dir.path().join(state);
        let extra = ["--checkpoint-dir", &chk, "--checkpoint-interval", "100ms", "--rate", "10000"];
        let mut a = args(Path::new(&out), p, &extra);
        a.extend(["--state-dir".to_string(), state.to_str().unwrap().to_string()]);
        a
    };
    let completed = || bucket.list("chk/auction_windows/").iter().filter(|(k, _)| k.ends_with("/_metadata")).count();
    // Killed at parallelism 2, then at 3 (each on a new machine), finished at 1.
    for (p, state) in [(2, "state-a"), (3, "state-b")] {
        let first = bucket.max_checkpoint("chk/auction_windows");
        let mut job = common::spawn("auction_windows", &checkpointed(p, state));
        let started = std::time::Instant::now();
        while bucket.max_checkpoint("chk/auction_windows") < first + 4 {
            assert!(job.child.try_wait().unwrap().is_none(), "the job ended early:\n{}", job.log());
            assert!(started.elapsed().as_secs() < 60, "no checkpoints at parallelism {p}:\n{}", job.log());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        job.child.kill().unwrap();
        job.child.wait().unwrap();
        assert!(completed() > 0, "a complete checkpoint to restore from");
    }
    // The tools read checkpoints where they are: the job's newest, one by id, two compared.
    let mut ids: Vec<u64> = bucket
        .list("chk/auction_windows/")
        .iter()
        .filter_map(|(k, _)| k.strip_suffix("/_metadata")?.rsplit_once("/chk-")?.1.parse().ok())
        .collect();
    ids.sort();
    assert!(ids.len() >= 2, "two retained checkpoints: {ids:?}");
    let (older, newest) = (ids[ids.len() - 2], ids[ids.len() - 1]);
    let weir_json = |args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new(common::weir_cli()).args(args).output().unwrap();
        assert!(out.status.success(), "weir {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let job_url = bucket.url("chk/auction_windows");
    assert_eq!(weir_json(&["savepoint", "inspect", "--json", &job_url])["checkpoint_id"], newest);
    let older_url = format!("{job_url}/chk-{older}");
    let report = weir_json(&["savepoint", "inspect", "--json", &older_url]);
    assert_eq!(report["checkpoint_id"], older);
    let windows = report["operators"].as_array().unwrap().iter().find(|o| o["uid"] == "auction-windows").unwrap();
    assert_eq!(windows["parallelism"], 3);
    let diff = weir_json(&["savepoint", "diff", "--json", &older_url, &format!("{job_url}/chk-{newest}")]);
    let bids = diff["operators"].as_array().unwrap().iter().find(|o| o["uid"] == "bids").unwrap();
    let read = bids["rows"].as_array().unwrap().iter().find(|r| r["what"] == "bytes read").unwrap();
    assert!(read["change"].as_i64().unwrap() > 0, "the source moved between {older} and {newest}: {read}");

    run_ok("auction_windows", &checkpointed(1, "state-c").iter().map(String::as_str).collect::<Vec<_>>());
    bucket.assert_no_open_uploads("out/");
    let local = dir.path().join("out");
    bucket.download("out", &local);
    assert_eq!(sorted_rows(&local), sorted_rows(&ref_out), "committed windows equal the failure-free run");
    assert_retention(&bucket, "chk/auction_windows", 2);
}

#[test]
fn savepoints_on_s3_are_inspected_and_restored_on_a_new_machine() {
    let bucket = common::s3::bucket("savepoints");
    bucket.export();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.jsonl");
    write_bids(&input, 60_000);
    let p = |x: &Path| x.to_str().unwrap().to_string();
    let (reference, out) = (dir.path().join("ref"), dir.path().join("out"));
    run_ok("auction_windows", &["--input", &p(&input), "--output", &p(&reference), "--window-parallelism", "2"]);

    let (chk, sp) = (bucket.url("chk"), bucket.url("sp"));
    let args: Vec<String> = [
        "--input",
        &p(&input),
        "--output",
        &p(&out),
        "--window-parallelism",
        "2",
        "--checkpoint-dir",
        &chk,
        "--checkpoint-interval",
        "200ms",
        "--savepoint-dir",
        &sp,
        "--rate",
        "10000",
        "--state-dir",
        &p(&dir.path().join("machine-1")),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut job = common::spawn("auction_windows", &args);
    let started = std::time::Instant::now();
    while bucket.max_checkpoint("chk/auction_windows") < 3 {
        assert!(job.child.try_wait().unwrap().is_none(), "the job ended early:\n{}", job.log());
        assert!(started.elapsed().as_secs() < 60, "no checkpoints:\n{}", job.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Stop with a savepoint, which goes to the store.
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(job.child.id() as i32, libc::SIGTERM) };
    assert!(job.child.wait().unwrap().success(), "stop with savepoint exits 0:\n{}", job.log());
    let saved: Vec<String> =
        bucket.list("sp/").into_iter().filter_map(|(k, _)| k.strip_suffix("/_metadata").map(String::from)).collect();
    assert_eq!(saved.len(), 1, "one savepoint on the store: {saved:?}\n{}", job.log());
    let url = format!("s3://{}/{}", bucket.name, saved[0]);
    assert!(sorted_rows(&out).len() < sorted_rows(&reference).len(), "stopped before the end");

    // The CLI reads it where it is.
    let inspect =
        std::process::Command::new(common::weir_cli()).args(["savepoint", "inspect", "--json", &url]).output().unwrap();
    assert!(inspect.status.success(), "{}", String::from_utf8_lossy(&inspect.stderr));
    let report: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(report["kind"], "savepoint");
    let windows = report["operators"].as_array().unwrap().iter().find(|o| o["uid"] == "auction-windows").unwrap();
    assert_eq!(windows["parallelism"], 2);

    // Restored from the store on a new machine at parallelism 3: the same final output.
    let mut resumed = args.clone();
    let n = resumed.len();
    resumed[n - 1] = p(&dir.path().join("machine-2"));
    resumed[5] = "3".into();
    resumed.extend(["--restore".to_string(), url.clone()]);
    run_ok("auction_windows", &resumed.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(sorted_rows(&out), sorted_rows(&reference), "restored at parallelism 3 from {url}");
}
