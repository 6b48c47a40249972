//! `auction_windows` against a brute-force reference, run as a real job binary.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use common::{read_parts, run, run_ok, Rng};
use serde_json::json;

const WINDOW: i64 = 10_000;
const DELAY: i64 = 2_000;
const BATCH: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Bid {
    auction: u64,
    price: u64,
    date_time: i64,
}

/// Bids with event time advancing ~1 s per 50 bids, disorder up to `disorder` ms, and a share of
/// stragglers `straggle` ms behind.
fn make_bids(n: usize, disorder: u64, straggle_every: u64, straggle: i64, seed: u64) -> Vec<Bid> {
    let mut rng = Rng::new(seed);
    let base = 1_767_225_600_000i64;
    (0..n)
        .map(|i| {
            let mut t = base + (i as i64) * 20 - rng.below(disorder + 1) as i64;
            if straggle_every > 0 && rng.below(straggle_every) == 0 {
                t -= straggle;
            }
            Bid { auction: 1000 + rng.below(40), price: rng.below(1_000_000), date_time: t }
        })
        .collect()
}

fn write_bids(path: &Path, bids: &[Bid]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for b in bids {
        let v = json!({"auction": b.auction, "bidder": 7, "price": b.price, "channel": "Google",
                       "url": "https://www.nexmark.com/x", "date_time": b.date_time, "extra": ""});
        writeln!(f, "{v}").unwrap();
    }
}

type Rows = BTreeMap<(i64, u64), (u64, u64)>;

fn brute_force(bids: impl Iterator<Item = Bid>) -> Rows {
    let mut rows = Rows::new();
    for b in bids {
        let start = b.date_time - b.date_time.rem_euclid(WINDOW);
        let e = rows.entry((start, b.auction)).or_insert((0, 0));
        e.0 += 1;
        e.1 = e.1.max(b.price);
    }
    rows
}

/// Which bids the watermark makes late when one source subtask reads the file: the watermark
/// (max event time so far − delay) is emitted after every batch of `BATCH` records, and a bid is
/// late when its window's last millisecond is at or below the watermark it meets.
fn reference_late(bids: &[Bid]) -> Vec<Bid> {
    let mut late = Vec::new();
    let mut wm = i64::MIN;
    let mut max = i64::MIN;
    for chunk in bids.chunks(BATCH) {
        for b in chunk {
            let end = b.date_time - b.date_time.rem_euclid(WINDOW) + WINDOW;
            if end - 1 <= wm {
                late.push(*b);
            }
            max = max.max(b.date_time);
        }
        wm = wm.max(max - DELAY);
    }
    late
}

fn read_rows(dir: &Path) -> Rows {
    let mut rows = Rows::new();
    for l in read_parts(dir, ".csv", Some("window_start,auction,count,max_price")) {
        let f: Vec<i64> = l.split(',').map(|x| x.parse().unwrap()).collect();
        let prev = rows.insert((f[0], f[1] as u64), (f[2] as u64, f[3] as u64));
        assert!(prev.is_none(), "window ({}, {}) emitted twice", f[0], f[1]);
    }
    rows
}

fn read_late(dir: &Path) -> Vec<Bid> {
    let mut late: Vec<Bid> = read_parts(dir, ".jsonl", None)
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Bid {
                auction: v["auction"].as_u64().unwrap(),
                price: v["price"].as_u64().unwrap(),
                date_time: v["date_time"].as_i64().unwrap(),
            }
        })
        .collect();
    late.sort();
    late
}

#[test]
fn out_of_order_bids_with_late_records_match_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.jsonl");
    // Disorder beyond the 2 s delay plus 1 % stragglers 15 s behind: plenty of late bids.
    let bids = make_bids(60_000, 3_000, 40, 15_000, 7);
    write_bids(&input, &bids);
    let (out, late_dir) = (dir.path().join("out"), dir.path().join("late"));
    for window_parallelism in ["1", "2"] {
        let _ = std::fs::remove_dir_all(&out);
        let _ = std::fs::remove_dir_all(&late_dir);
        // One source subtask keeps the watermark sequence deterministic; the windows run in
        // `window_parallelism` subtasks (the source's parallelism is the job default).
        run_ok(
            "auction_windows",
            &[
                "--input",
                input.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
                "--late-output",
                late_dir.to_str().unwrap(),
                "--max-delay-ms",
                "2000",
                "--batch-size",
                &BATCH.to_string(),
                "--parallelism",
                "1",
                "--window-parallelism",
                window_parallelism,
            ],
        );
        let mut expected_late = reference_late(&bids);
        expected_late.sort();
        let late = read_late(&late_dir);
        assert!(expected_late.len() > 300, "the input must produce late bids, got {}", expected_late.len());
        assert_eq!(late.len(), expected_late.len(), "number of late bids (window parallelism {window_parallelism})");
        assert_eq!(late, expected_late, "late bids are exactly those the watermark made late");

        let mut on_time: HashMap<Bid, usize> = HashMap::new();
        for b in &bids {
            *on_time.entry(*b).or_default() += 1;
        }
        for b in &late {
            *on_time.get_mut(b).unwrap() -= 1;
        }
        let expected = brute_force(on_time.into_iter().flat_map(|(b, n)| std::iter::repeat_n(b, n)));
        let rows = read_rows(&out);
        assert!(rows.len() > 1_000, "expected many windows, got {}", rows.len());
        assert_eq!(rows, expected, "window rows equal the brute force over the on-time bids");
    }
}

#[test]
fn parallel_reads_without_late_data_match_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.jsonl");
    // Disorder within the delay: nothing may be late, whatever the interleaving of 2 readers.
    let bids = make_bids(120_000, 1_500, 0, 0, 11);
    write_bids(&input, &bids);
    let out = dir.path().join("out");
    let o = run_ok(
        "auction_windows",
        &["--input", input.to_str().unwrap(), "--output", out.to_str().unwrap(), "--parallelism", "2"],
    );
    assert!(String::from_utf8_lossy(&o.stderr).is_empty() || !String::from_utf8_lossy(&o.stderr).contains("ERROR"));
    assert_eq!(read_rows(&out), brute_force(bids.iter().copied()));
}

#[test]
fn generated_bids_give_the_same_result_at_any_parallelism() {
    use weir::operators::sources::nexmark::{bid_event_number, generate_event, Event};
    use weir::operators::sources::NexmarkConfig;
    let n = 50_000u64;
    let cfg = NexmarkConfig::default();
    let expected = brute_force((0..n).map(|k| match generate_event(&cfg, bid_event_number(k)) {
        Event::Bid(b) => Bid { auction: b.auction, price: b.price, date_time: b.date_time },
        other => panic!("expected a bid, got {other:?}"),
    }));
    let dir = tempfile::tempdir().unwrap();
    for p in ["1", "2"] {
        let out = dir.path().join(format!("out-{p}"));
        run_ok("auction_windows", &["--generate", &n.to_string(), "--output", out.to_str().unwrap(), "-p", p]);
        assert_eq!(read_rows(&out), expected, "parallelism {p}");
    }
}

#[test]
fn a_malformed_line_fails_the_job_with_its_offset_or_goes_to_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.jsonl");
    let bids = make_bids(100, 0, 0, 0, 3);
    write_bids(&input, &bids);
    let good = std::fs::read_to_string(&input).unwrap();
    let offset = good.len();
    std::fs::write(&input, format!("{good}{{\"auction\": oops}}\n{good}")).unwrap();
    let out = dir.path().join("out");
    let failed = run("auction_windows", &["--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()]);
    assert!(!failed.status.success(), "a malformed line must fail the job by default");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains(&format!("byte offset {offset}")), "error names the offset: {stderr}");
    assert!(stderr.contains("bids.jsonl"), "error names the file: {stderr}");

    let dead = dir.path().join("dead");
    run_ok(
        "auction_windows",
        &[
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--dead-letters",
            dead.to_str().unwrap(),
        ],
    );
    let letters = read_parts(&dead, ".jsonl", None);
    assert_eq!(letters.len(), 1);
    let v: serde_json::Value = serde_json::from_str(&letters[0]).unwrap();
    assert_eq!(v["offset"].as_u64(), Some(offset as u64));
    assert_eq!(v["raw"].as_str(), Some("{\"auction\": oops}"));
    let rows = read_rows(&out);
    let total: u64 = rows.values().map(|r| r.0).sum();
    assert_eq!(total, 200, "every good line was counted");
}

#[test]
fn bad_flags_get_a_usage_message_not_a_panic() {
    let o = run("auction_windows", &["--output", "/tmp/x", "--parallelism", "zero"]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("--parallelism") && !stderr.contains("panicked"), "{stderr}");
    let o = run("auction_windows", &["--output", "/tmp/x"]);
    assert_eq!(o.status.code(), Some(2), "--input or --generate is required");
    let help = run_ok("auction_windows", &["--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in ["--input", "--generate", "--max-delay-ms", "--parallelism", "--state-dir", "--buffer-timeout"] {
        assert!(help.contains(flag), "--help lists {flag}");
    }
}
