//! The `weir` inspection tools on real jobs' snapshots: golden outputs of `savepoint inspect`,
//! `dump` against what the job computed, `diff` against what was read between two checkpoints,
//! a dump of 10 M entries in bounded memory, and one-line refusals of what is not a snapshot.
//!
//! Golden files live in `tests/golden/`; `WEIR_BLESS=1` rewrites them from the current output
//! (review the change before committing it).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{example, free_port, weir_cli, Rng};

/// Runs the `weir` CLI in `cwd`.
fn weir_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(weir_cli()).args(args).current_dir(cwd).output().expect("starting weir")
}

/// Runs the `weir` CLI in `cwd`, failing the test on a non-zero exit; its standard output.
fn weir_ok(cwd: &Path, args: &[&str]) -> String {
    let out = weir_in(cwd, args);
    assert!(out.status.success(), "weir {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs the wordcount example in `cwd` to completion.
fn wordcount(cwd: &Path, args: &[&str]) {
    let out = Command::new(example("wordcount"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .expect("starting wordcount");
    assert!(out.status.success(), "wordcount {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// wordcount over `in.txt` in `cwd` with running counts, at parallelism `p`, into `output`, with
/// only the final checkpoint in `chk` (the interval never elapses).
fn running_wordcount(cwd: &Path, p: &str, output: &str, chk: &str) {
    let args = ["--input", "in.txt", "--running", "-p", p, "--output", output, "--checkpoint-dir", chk];
    wordcount(cwd, &[&args[..], &["--checkpoint-interval", "1h"]].concat());
}

/// Compares `actual` with the golden file `name` (or rewrites it with `WEIR_BLESS=1`).
fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("WEIR_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if expected != actual {
        let first = expected.lines().zip(actual.lines()).position(|(e, a)| e != a);
        panic!(
            "{name} differs from the golden file (first different line {first:?}; WEIR_BLESS=1 rewrites it)\n\
             --- expected\n{expected}\n--- actual\n{actual}"
        );
    }
}

/// Replaces the time a snapshot was taken (the only thing a rerun changes) in inspect output.
fn mask_time(text: &str, taken_at: &str, timestamp: i64) -> String {
    assert!(text.contains(taken_at), "the output shows when the snapshot was taken: {text}");
    text.replace(taken_at, "<taken at>").replace(&timestamp.to_string(), "<timestamp>")
}

fn inspect_json(cwd: &Path, path: &str) -> serde_json::Value {
    serde_json::from_str(&weir_ok(cwd, &["savepoint", "inspect", "--json", path])).expect("inspect --json is JSON")
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// Sum of a counter over the subtasks of one operator in a Prometheus text page.
fn counter(metrics: &str, name: &str, operator: &str) -> u64 {
    let prefix = format!("{name}{{operator=\"{operator}\",");
    metrics
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

const TEXT: &str = "the quick brown fox\njumps over the lazy dog\nthe end\n";

#[test]
fn inspect_output_of_a_deterministic_savepoint_and_checkpoint_matches_the_golden_files() {
    let dir = tempfile::tempdir().unwrap();
    // A savepoint taken once the job has counted every word of a socket's text, which stays open
    // so that the job keeps running: its state is the same at every run.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let socket = listener.local_addr().unwrap().to_string();
    let control = format!("127.0.0.1:{}", free_port());
    let mut job = Command::new(example("wordcount"))
        .args(["--socket", &socket, "--running", "-p", "2", "--output", "out", "--checkpoint-dir", "chk"])
        .args(["--checkpoint-interval", "1h", "--savepoint-dir", "sp", "--metrics-addr", &control])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    conn.write_all(TEXT.as_bytes()).unwrap();
    let words = TEXT.split_whitespace().count() as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while counter(&http_get(&control, "/metrics"), "weir_records_in_total", "counts") < words {
        assert!(Instant::now() < deadline, "the job never counted the {words} words");
        std::thread::sleep(Duration::from_millis(50));
    }
    let taken = weir_ok(dir.path(), &["savepoint", "trigger", "--job", &format!("http://{control}")]);
    job.kill().unwrap();
    job.wait().unwrap();
    // The path as the job knows it: relative to its working directory, as its flags were.
    let taken = taken.trim();
    assert!(dir.path().join(taken).join("_metadata").is_file(), "a savepoint at {taken}");
    let json_text = weir_ok(dir.path(), &["savepoint", "inspect", "--json", taken]);
    let json: serde_json::Value = serde_json::from_str(&json_text).unwrap();
    let (at, ts) = (json["taken_at"].as_str().unwrap().to_string(), json["timestamp"].as_i64().unwrap());
    golden("savepoint.txt", &mask_time(&weir_ok(dir.path(), &["savepoint", "inspect", taken]), &at, ts));
    golden("savepoint.json", &mask_time(&json_text, &at, ts));

    // The final checkpoint of the same job on a file: a source position and pending part files.
    std::fs::write(dir.path().join("in.txt"), TEXT).unwrap();
    running_wordcount(dir.path(), "2", "out2", "chk3");
    let json = inspect_json(dir.path(), "chk3/wordcount");
    let (at, ts) = (json["taken_at"].as_str().unwrap().to_string(), json["timestamp"].as_i64().unwrap());
    let text = weir_ok(dir.path(), &["savepoint", "inspect", "--verbose", "chk3/wordcount"]);
    golden("checkpoint-verbose.txt", &mask_time(&text, &at, ts));
}

/// The words of `n` lines, one word a line, from a vocabulary of `vocabulary` with skewed
/// frequencies; every line is 6 bytes (`w0042\n`).
fn word_lines(n: usize, vocabulary: u64, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let upto = rng.below(vocabulary) + 1;
            format!("w{:04}\n", rng.below(upto))
        })
        .collect()
}

/// Rows `word,count` of the part files under `dir`.
fn count_rows(dir: &Path) -> Vec<(String, u64)> {
    common::read_parts(dir, ".csv", Some("word,count"))
        .iter()
        .map(|l| {
            let (w, c) = l.split_once(',').unwrap();
            (w.to_string(), c.parse().unwrap())
        })
        .collect()
}

#[test]
fn dump_returns_what_the_job_holds_for_a_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), word_lines(20_000, 400, 7)).unwrap();
    running_wordcount(dir.path(), "2", "out", "chk");
    // The job's answer: its running count rows, of which a word's highest is its final count.
    let mut held: BTreeMap<String, u64> = BTreeMap::new();
    for (w, c) in count_rows(&dir.path().join("out")) {
        let e = held.entry(w).or_default();
        *e = (*e).max(c);
    }
    assert!(held.len() > 100, "{} words", held.len());
    let snap = "chk/wordcount";
    let dump = |extra: &[&str]| -> Vec<serde_json::Value> {
        let mut args = vec!["savepoint", "dump", snap, "--operator", "counts", "--state", "reduce"];
        args.extend_from_slice(extra);
        weir_ok(dir.path(), &args).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    for word in held.keys().step_by(37) {
        let key = serde_json::to_string(word).unwrap();
        let found = dump(&["--key", &key]);
        assert_eq!(found.len(), 1, "one entry for {key}: {found:?}");
        assert_eq!(found[0]["key"], *word);
        assert_eq!(found[0]["value"]["count"].as_u64(), Some(held[word]), "the count the job emitted last for {word}");
    }
    let out = weir_in(
        dir.path(),
        &["savepoint", "dump", snap, "--operator", "counts", "--state", "reduce", "--key", "\"absent\""],
    );
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no entry"), "{out:?}");

    // Everything, then by key group and limited, as JSON lines and as CSV.
    let all = dump(&[]);
    let all_words: BTreeMap<String, u64> =
        all.iter().map(|e| (e["key"].as_str().unwrap().to_string(), e["value"]["count"].as_u64().unwrap())).collect();
    assert_eq!(all_words, held, "the dump holds exactly the job's final counts");
    let groups: BTreeSet<u64> = all.iter().map(|e| e["key_group"].as_u64().unwrap()).collect();
    let mut by_group = 0;
    for g in &groups {
        let part = dump(&["--key-group", &g.to_string()]);
        assert!(part.iter().all(|e| e["key_group"].as_u64() == Some(*g)), "key group {g}");
        by_group += part.len();
    }
    assert_eq!(by_group, all.len(), "the key groups partition the state");
    assert_eq!(dump(&["--limit", "3"]).len(), 3);
    let csv = weir_ok(
        dir.path(),
        &["savepoint", "dump", snap, "--operator", "counts", "--state", "reduce", "--format", "csv"],
    );
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        ["key_group", "key", "namespace", "map_key", "value"]
    );
    let from_csv: BTreeMap<String, u64> = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            let value: serde_json::Value = serde_json::from_str(&r[4]).unwrap();
            (r[1].to_string(), value["count"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(from_csv, held);
}

/// Complete checkpoint ids under a job's checkpoint directory.
fn complete(job_chk: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(job_chk)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let id = e.file_name().to_str()?.strip_prefix("chk-")?.parse().ok()?;
            e.path().join("_metadata").exists().then_some(id)
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn diff_shows_the_source_moving_by_the_records_read_between_two_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let text = word_lines(6_000, 300, 11);
    std::fs::write(dir.path().join("in.txt"), &text).unwrap();
    wordcount(
        dir.path(),
        &[
            "--input",
            "in.txt",
            "--running",
            "-p",
            "1",
            "--rate",
            "5000",
            "--output",
            "out",
            "--checkpoint-dir",
            "chk",
            "--checkpoint-interval",
            "150ms",
            "--retained-checkpoints",
            "100",
        ],
    );
    let ids = complete(&dir.path().join("chk/wordcount"));
    let pairs: Vec<(u64, u64)> = ids.windows(2).filter(|w| w[1] == w[0] + 1).map(|w| (w[0], w[1])).collect();
    assert!(pairs.len() >= 3, "consecutive checkpoints: {ids:?}");
    let mut moved = 0;
    for (a, b) in pairs {
        let (pa, pb) = (format!("chk/wordcount/chk-{a}"), format!("chk/wordcount/chk-{b}"));
        let diff: serde_json::Value =
            serde_json::from_str(&weir_ok(dir.path(), &["savepoint", "diff", "--json", &pa, &pb])).unwrap();
        let lines = diff["operators"].as_array().unwrap().iter().find(|o| o["uid"] == "lines").unwrap();
        let row = lines["rows"].as_array().unwrap().iter().find(|r| r["what"] == "bytes read").unwrap();
        let delta = row["change"].as_i64().unwrap();
        assert_eq!(row["b"].as_i64().unwrap() - row["a"].as_i64().unwrap(), delta);

        // What was read between the two barriers is exactly what the sink wrote in epoch b: its
        // part files pending at checkpoint b (one row per word, one word per 6-byte line).
        let inspect_b = inspect_json(dir.path(), &pb);
        let sink = inspect_b["operators"].as_array().unwrap().iter().find(|o| o["uid"] == "sink").unwrap();
        let mut epoch: Vec<(String, u64)> = Vec::new();
        for sub in sink["subtasks"].as_array().unwrap() {
            for p in sub["sink"]["pending"].as_array().unwrap() {
                if p["checkpoint"].as_u64() == Some(b) {
                    let path = dir.path().join("out").join(p["file"].as_str().unwrap());
                    let rows = std::fs::read_to_string(&path).unwrap();
                    epoch.extend(rows.lines().filter(|l| *l != "word,count").map(|l| {
                        let (w, c) = l.split_once(',').unwrap();
                        (w.to_string(), c.parse().unwrap())
                    }));
                }
            }
        }
        assert_eq!(delta, 6 * epoch.len() as i64, "checkpoints {a} → {b}: bytes read vs records written");
        moved += epoch.len();

        // Keys: a word seen first in the epoch is added, others changed by their occurrences.
        let out = weir_in(
            dir.path(),
            &["savepoint", "diff", &pa, &pb, "--operator", "counts", "--state", "reduce", "--keys"],
        );
        assert!(out.status.success(), "{out:?}");
        let mut occurrences: BTreeMap<&str, u64> = BTreeMap::new();
        let mut last: BTreeMap<&str, u64> = BTreeMap::new();
        for (w, c) in &epoch {
            *occurrences.entry(w).or_default() += 1;
            last.insert(w, *c);
        }
        let changes: Vec<serde_json::Value> =
            String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(changes.len(), occurrences.len(), "one change per word of the epoch");
        for c in &changes {
            let w = c["key"].as_str().unwrap();
            let new = c["new"]["count"].as_u64().or(c["value"]["count"].as_u64()).unwrap();
            assert_eq!(new, last[w], "{c}");
            match c["change"].as_str().unwrap() {
                "added" => assert_eq!(new, occurrences[w], "{c}"),
                "changed" => assert_eq!(new - c["old"]["count"].as_u64().unwrap(), occurrences[w], "{c}"),
                other => panic!("a running count is never {other}: {c}"),
            }
        }
        let summary = String::from_utf8(out.stderr).unwrap();
        let added = changes.iter().filter(|c| c["change"] == "added").count();
        assert!(summary.contains(&format!("{added} added, 0 removed")), "{summary}");
    }
    assert!(moved > 0, "records were read between the checkpoints compared");
}

/// Runs `weir` with standard output counted, not kept; its lines and peak RSS in KiB.
// The child is reaped by wait4 (which also reports its peak RSS), not by Child::wait.
#[allow(clippy::zombie_processes)]
fn weir_rss(args: &[&str]) -> (u64, u64, u64) {
    let mut child = Command::new(weir_cli()).args(args).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (mut lines, mut bytes, mut buf) = (0u64, 0u64, vec![0u8; 1 << 16]);
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        bytes += n as u64;
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 reaps our own child and fills both.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "weir {args:?} failed");
    (lines, bytes, usage.ru_maxrss as u64)
}

#[test]
fn a_dump_of_ten_million_entries_runs_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("chk");
    let keys = 10_000_000u64;
    let out = Command::new(example("keyed_state"))
        .args(["--keys", &keys.to_string(), "--value-bytes", "8", "--records", &keys.to_string(), "-p", "1"])
        .args(["--checkpoint-dir", chk.to_str().unwrap(), "--checkpoint-interval", "1h"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let job = std::fs::read_dir(&chk).unwrap().next().unwrap().unwrap().path();
    let report: serde_json::Value =
        serde_json::from_str(&weir_ok(dir.path(), &["savepoint", "inspect", "--json", job.to_str().unwrap()])).unwrap();
    let keyed = report["operators"].as_array().unwrap().iter().find(|o| o["role"] == "keyed").unwrap();
    let state = &keyed["states"][0];
    assert_eq!(state["entries"].as_u64(), Some(keys));
    let (uid, name) = (keyed["uid"].as_str().unwrap(), state["name"].as_str().unwrap());
    let (lines, bytes, rss_kib) =
        weir_rss(&["savepoint", "dump", job.to_str().unwrap(), "--operator", uid, "--state", name]);
    assert_eq!(lines, keys, "every entry dumped");
    println!("dumped {lines} entries, {} MiB of JSON, peak RSS {} MiB", bytes >> 20, rss_kib >> 10);
    // Collecting the entries would take gigabytes (the JSON alone is `bytes`); streaming keeps
    // the tool at RocksDB's block cache and a buffer.
    assert!(bytes > 500 << 20, "{bytes} bytes of output");
    assert!(rss_kib < 150 << 10, "peak RSS {} MiB while dumping {} MiB", rss_kib >> 10, bytes >> 20);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn paths_that_are_not_snapshots_get_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), TEXT).unwrap();
    // Twice: the second run restores checkpoint 1 and ends with checkpoint 2, whose files are
    // its own.
    for _ in 0..2 {
        running_wordcount(dir.path(), "1", "out", "chk");
    }
    let job = dir.path().join("chk/wordcount");
    assert!(job.join("chk-2/_metadata").exists());
    // A copy of checkpoint 1 as 7 with a changed byte in its metadata body, and checkpoint 2
    // with a state file cut short.
    copy_dir(&job.join("chk-1"), &job.join("chk-7"));
    let meta = std::fs::read_to_string(job.join("chk-7/_metadata")).unwrap();
    std::fs::write(job.join("chk-7/_metadata"), meta.replacen("\"lines\"", "\"linez\"", 1)).unwrap();
    // (A file the metadata lists, not the stamps kept beside them.)
    let state = std::fs::read_dir(job.join("chk-2/lines-0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| !p.file_name().unwrap().to_string_lossy().starts_with('_'))
        .unwrap();
    let len = std::fs::metadata(&state).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&state).unwrap().set_len(len / 2).unwrap();
    std::fs::create_dir_all(dir.path().join("empty")).unwrap();
    std::fs::write(dir.path().join("a-file"), "not a snapshot").unwrap();

    let cases = [
        ("empty", "is not a savepoint or checkpoint"),
        ("missing", "does not exist"),
        ("a-file", "is not a savepoint or checkpoint"),
        ("chk/wordcount/chk-7", "corrupt"),
        ("chk/wordcount/chk-2", "lines-0"),
    ];
    for (path, why) in cases {
        for args in [
            vec!["savepoint", "inspect", path],
            vec!["savepoint", "dump", path, "--operator", "counts", "--state", "reduce"],
        ] {
            let out = weir_in(dir.path(), &args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} refused");
            assert_eq!(err.lines().count(), 1, "one line for {args:?}: {err}");
            assert!(err.starts_with("error: ") && err.contains(path) && err.contains(why), "{args:?}: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    // The listing says why the broken ones are skipped and which one a restore takes.
    let listing = weir_ok(dir.path(), &["checkpoints", "list", "chk"]);
    let line = |id: &str| listing.lines().find(|l| l.split_whitespace().nth(1) == Some(id)).unwrap().to_string();
    assert!(line("7").contains("broken:") && line("7").contains("corrupt"), "{listing}");
    assert!(line("2").contains("broken:") && line("2").contains("lines-0"), "{listing}");
    assert!(line("1").ends_with("<- --restore latest"), "{listing}");
    assert!(line("1").contains(" ms "), "the duration of checkpoint 1: {listing}");
}
