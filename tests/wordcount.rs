//! `wordcount` on files (final counts) and on a socket (updated counts), as a real job binary.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Stdio};

use common::{example, read_parts, run_ok, Rng};

const VOCAB: &[&str] =
    &["the", "Stream", "river", "weir", "Flow", "water", "DAM", "fish", "rock", "x9", "über", "naïve"];

fn corpus(lines: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng::new(seed);
    (0..lines)
        .map(|_| {
            let n = rng.below(12);
            let mut line = String::new();
            for i in 0..n {
                let w = VOCAB[rng.below(VOCAB.len() as u64) as usize];
                let sep = [" ", ", ", "  ", "; ", "--", "\t"][rng.below(6) as usize];
                if i > 0 {
                    line.push_str(sep);
                }
                line.push_str(w);
            }
            if rng.below(5) == 0 {
                line.push('.');
            }
            line
        })
        .collect()
}

/// The reference: words are maximal alphanumeric runs, lower-cased.
fn reference(lines: &[String]) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for l in lines {
        for w in l.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
            *counts.entry(w.to_lowercase()).or_insert(0) += 1;
        }
    }
    counts
}

fn read_counts(dir: &std::path::Path) -> Vec<(String, u64)> {
    read_parts(dir, ".csv", Some("word,count"))
        .iter()
        .map(|l| {
            let (w, c) = l.rsplit_once(',').unwrap();
            (w.to_string(), c.parse().unwrap())
        })
        .collect()
}

#[test]
fn file_word_counts_equal_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let mut all = Vec::new();
    for (i, n) in [3_000, 10, 25_000].into_iter().enumerate() {
        let lines = corpus(n, i as u64 + 1);
        std::fs::write(input.join(format!("book-{i}.txt")), lines.join("\n")).unwrap();
        all.extend(lines);
    }
    // Hidden files are not input, as in Spark and Hadoop.
    std::fs::write(input.join(".hidden.txt"), "ghost ghost").unwrap();
    let expected = reference(&all);
    for p in ["1", "2", "3"] {
        let out = dir.path().join(format!("out-{p}"));
        run_ok("wordcount", &["--input", input.to_str().unwrap(), "--output", out.to_str().unwrap(), "-p", p]);
        let rows = read_counts(&out);
        assert_eq!(rows.len(), expected.len(), "one row per word (parallelism {p})");
        let got: HashMap<String, u64> = rows.into_iter().collect();
        assert_eq!(got, expected, "parallelism {p}");
    }
}

#[test]
fn socket_word_counts_are_updated_per_word() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut child = Command::new(example("wordcount"))
        .args(["--socket", &addr, "--output", out.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    let lines = corpus(2_000, 99);
    for chunk in lines.chunks(100) {
        for l in chunk {
            writeln!(conn, "{l}").unwrap();
        }
        conn.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    drop(conn);
    let status = child.wait().unwrap();
    assert!(status.success(), "wordcount on a socket exits 0 when the server closes");
    let expected = reference(&lines);
    let rows = read_counts(&out);
    assert_eq!(rows.len() as u64, expected.values().sum::<u64>(), "one updated row per word occurrence");
    let mut last: HashMap<String, u64> = HashMap::new();
    for (w, c) in rows {
        let prev = last.insert(w.clone(), c).unwrap_or(0);
        assert_eq!(c, prev + 1, "counts of {w} go up one at a time");
    }
    assert_eq!(last, expected);
}

/// One printed batch of the console table: its number, its rows, whether rows were left out.
type Batch = (u64, Vec<(String, u64)>, bool);

fn console_batches(stdout: &str) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut lines = stdout.lines().peekable();
    while let Some(l) = lines.next() {
        let Some(n) = l.strip_prefix("Batch: ") else { continue };
        let n: u64 = n.parse().unwrap();
        assert!(lines.next().unwrap().starts_with("----"));
        assert!(lines.next().unwrap().starts_with("+-"));
        let header: Vec<String> = lines.next().unwrap().split('|').map(|c| c.trim().to_string()).collect();
        assert_eq!(header, ["", "word", "count", ""]);
        assert!(lines.next().unwrap().starts_with("+-"));
        let mut rows = Vec::new();
        for row in lines.by_ref() {
            if row.starts_with("+-") {
                break;
            }
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            rows.push((cells[1].to_string(), cells[2].parse().unwrap()));
        }
        let truncated = lines.peek().is_some_and(|l| l.starts_with("only showing top"));
        batches.push((n, rows, truncated));
    }
    batches
}

#[test]
fn socket_word_counts_print_the_complete_table_every_trigger() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let child = Command::new(example("wordcount"))
        .args(["--socket", &addr, "--console", "--trigger", "200ms", "--console-rows", "5"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    let lines = corpus(3_000, 7);
    for chunk in lines.chunks(300) {
        for l in chunk {
            writeln!(conn, "{l}").unwrap();
        }
        conn.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    drop(conn);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let batches = console_batches(&String::from_utf8_lossy(&out.stdout));
    assert!(batches.len() >= 3, "a table per trigger while lines arrive, got {}", batches.len());
    for (i, (n, rows, truncated)) in batches.iter().enumerate() {
        assert_eq!(*n, i as u64, "batches are numbered from 0");
        assert_eq!(rows.len(), 5, "--console-rows rows per batch");
        assert!(truncated, "more words than rows shown");
        assert!(rows.windows(2).all(|w| w[0].1 >= w[1].1), "most frequent first: {rows:?}");
    }
    // The last table is complete mode's final result: the top words of the whole input.
    let mut expected: Vec<(String, u64)> = reference(&lines).into_iter().collect();
    expected.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    expected.truncate(5);
    assert_eq!(batches.last().unwrap().1, expected);
    // Earlier tables show smaller counts: the table is updated, not appended.
    assert!(batches[0].1[0].1 < expected[0].1);
}

/// The same job as three processes on loopback: words hashed to counting subtasks in all three
/// processes, each process's sink writing its part; together exactly the reference counts.
#[test]
fn file_word_counts_as_three_processes_equal_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let mut all = Vec::new();
    for (i, n) in [20_000, 7, 9_000].into_iter().enumerate() {
        let lines = corpus(n, i as u64 + 10);
        std::fs::write(input.join(format!("book-{i}.txt")), lines.join("\n")).unwrap();
        all.extend(lines);
    }
    let expected = reference(&all);
    let out = dir.path().join("out");
    let args: Vec<String> = ["--input", input.to_str().unwrap(), "--output", out.to_str().unwrap(), "-p", "3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut c = common::cluster::Cluster::start_job("wordcount", 3, &args, &dir.path().join("run"), &[], &[]);
    let statuses = c.wait(std::time::Duration::from_secs(120));
    assert!(statuses.iter().all(|s| s.success()), "{}", c.logs());
    let rows = read_counts(&out);
    assert_eq!(rows.len(), expected.len(), "one row per word");
    let got: HashMap<String, u64> = rows.into_iter().collect();
    assert_eq!(got, expected);
}
