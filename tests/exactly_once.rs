//! Exactly-once under failure: the job binaries run as child processes with frequent
//! checkpoints, are killed with SIGKILL at random moments and at every named crash point, and are
//! restarted with the same flags until they finish. The committed output must equal the output of
//! a failure-free run, row for row.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{example, read_parts, run_ok, Rng};

/// Crash points that happen while data flows (every checkpoint reaches them).
const RUNNING_POINTS: &[&str] = &["mid-snapshot", "after-checkpoint-complete", "before-sink-commit", "mid-sink-commit"];

/// Highest checkpoint id under the job's checkpoint directory.
fn max_checkpoint(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("chk-")?.parse().ok()).max().unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Runs `job args` until it exits 0: first once per point of `early` (each crashes itself at the
/// first checkpoint from a little ahead on), then with SIGKILLs at random moments until
/// `min_kills`, then once per point of `late` (reached only at the final checkpoint of the input).
/// Returns the number of kills.
fn run_with_kills(
    job: &str,
    args: &[String],
    job_chk: &Path,
    early: &[&str],
    late: &[&str],
    min_kills: usize,
    seed: u64,
) -> usize {
    let mut rng = Rng::new(seed);
    let mut kills = 0;
    let mut point = 0;
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(240), "{job} did not finish within 4 minutes ({kills} kills)");
        let mut cmd = Command::new(example(job));
        cmd.args(args).env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::piped());
        let random_phase_done = point >= early.len() && kills >= min_kills + early.len();
        let named = if point < early.len() {
            cmd.env("WEIR_CRASH_AT", format!("{}:{}", early[point], max_checkpoint(job_chk) + 2));
            point += 1;
            true
        } else if random_phase_done && point < early.len() + late.len() {
            cmd.env("WEIR_CRASH_AT", format!("{}:{}", late[point - early.len()], max_checkpoint(job_chk) + 1));
            point += 1;
            true
        } else {
            false
        };
        let mut child = cmd.spawn().expect("starting the job");
        let deadline = if named {
            Instant::now() + Duration::from_secs(120)
        } else if kills < min_kills + early.len() {
            Instant::now() + Duration::from_millis(60 + rng.below(400))
        } else {
            Instant::now() + Duration::from_secs(120)
        };
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let status = match status {
            Some(s) => s,
            None => {
                child.kill().unwrap();
                child.wait().unwrap()
            }
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        if status.success() {
            assert!(!named, "{job} finished without reaching its crash point");
            if kills >= min_kills && point >= early.len() + late.len() {
                return kills;
            }
            panic!("{job} finished after only {kills} kills; give it more input");
        }
        assert_eq!(status.signal(), Some(9), "{job} must only die by SIGKILL, got {status:?}:\n{stderr}");
        if named {
            assert!(stderr.contains("WEIR_CRASH_AT: crashing at"), "the named crash point was reached: {stderr}");
        }
        kills += 1;
    }
}

fn sorted_rows(dir: &Path, ext: &str, header: Option<&str>) -> Vec<String> {
    let mut rows = read_parts(dir, ext, header);
    rows.sort();
    rows
}

fn assert_no_in_progress(dir: &Path) {
    let leftovers: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str().map(String::from))
        .filter(|n| n.ends_with(".inprogress"))
        .collect();
    assert!(leftovers.is_empty(), "in-progress files left behind: {leftovers:?}");
}

#[test]
fn auction_windows_survives_kills_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.jsonl");
    let mut rng = Rng::new(5);
    let base = 1_767_225_600_000i64;
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        for i in 0..100_000i64 {
            let mut t = base + i * 20 - rng.below(3_000) as i64;
            if rng.below(50) == 0 {
                t -= 15_000; // late
            }
            writeln!(
                f,
                r#"{{"auction":{},"bidder":1,"price":{},"channel":"c","url":"u","date_time":{t},"extra":""}}"#,
                1000 + rng.below(50),
                rng.below(100_000)
            )
            .unwrap();
        }
    }
    let common = |out: &Path, late: &Path| -> Vec<String> {
        [
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--late-output",
            late.to_str().unwrap(),
            "--window-parallelism",
            "2",
            "--progress-interval",
            "0s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (ref_out, ref_late) = (dir.path().join("ref-out"), dir.path().join("ref-late"));
    run_ok("auction_windows", &common(&ref_out, &ref_late).iter().map(String::as_str).collect::<Vec<_>>());

    let (out, late, chk) = (dir.path().join("out"), dir.path().join("late"), dir.path().join("chk"));
    let mut args = common(&out, &late);
    args.extend(
        ["--checkpoint-dir", chk.to_str().unwrap(), "--checkpoint-interval", "100ms", "--rate", "10000"]
            .iter()
            .map(|s| s.to_string()),
    );
    let kills = run_with_kills("auction_windows", &args, &chk.join("auction_windows"), RUNNING_POINTS, &[], 30, 17);
    assert!(kills >= 30);

    let header = Some("window_start,auction,count,max_price");
    let expected = sorted_rows(&ref_out, ".csv", header);
    assert!(expected.len() > 1_000);
    assert_eq!(sorted_rows(&out, ".csv", header), expected, "committed windows equal the failure-free run");
    let expected_late = sorted_rows(&ref_late, ".jsonl", None);
    assert!(!expected_late.is_empty());
    assert_eq!(sorted_rows(&late, ".jsonl", None), expected_late, "late bids committed exactly once");
    assert_no_in_progress(&out);
    assert_no_in_progress(&late);
}

#[test]
fn wordcount_survives_kills_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"];
    let mut rng = Rng::new(9);
    for file in 0..3 {
        let mut text = String::new();
        for _ in 0..15_000 {
            for _ in 0..rng.below(6) {
                text.push_str(words[rng.below(words.len() as u64) as usize]);
                text.push_str(&format!("{} ", rng.below(300)));
            }
            text.push('\n');
        }
        std::fs::write(input.join(format!("part-{file}.txt")), text).unwrap();
    }
    let ref_out = dir.path().join("ref");
    run_ok("wordcount", &["--input", input.to_str().unwrap(), "--output", ref_out.to_str().unwrap(), "-p", "2"]);
    let (out, chk) = (dir.path().join("out"), dir.path().join("chk"));
    let args: Vec<String> = [
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "-p",
        "2",
        "--checkpoint-dir",
        chk.to_str().unwrap(),
        "--checkpoint-interval",
        "100ms",
        "--rate",
        "1500",
        "--progress-interval",
        "0s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Counts are written at the end of the input only, so the sink's commit points come last: the
    // final commit crashes, and the restart repairs it from the final checkpoint.
    let kills = run_with_kills(
        "wordcount",
        &args,
        &chk.join("wordcount"),
        &["mid-snapshot", "after-checkpoint-complete"],
        &["before-sink-commit"],
        30,
        23,
    );
    assert!(kills >= 30);
    let counts = |d: &Path| -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for l in read_parts(d, ".csv", Some("word,count")) {
            let (w, c) = l.rsplit_once(',').unwrap();
            assert!(m.insert(w.to_string(), c.parse().unwrap()).is_none(), "word {w} written twice");
        }
        m
    };
    let expected = counts(&ref_out);
    assert!(expected.len() > 1_000);
    assert_eq!(counts(&out), expected);
    assert_no_in_progress(&out);
}
