//! The `nexmark` benchmark computes the right answers: every query at parallelism 1 and 2 with
//! checkpoints on, its row count and row digest compared with a brute-force evaluation of the
//! same query over the same generated events.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use common::example;
use weir::nexmark::{Auction, Bid, Event, NexmarkConfig, Person};
use weir::operators::sources::nexmark::generate_event;

const EVENTS: u64 = 150_000;

/// Row count and wrapping sum of the rows' xxh3 hashes, as the benchmark's sink computes them.
#[derive(Default, Debug, PartialEq)]
struct Digest {
    rows: u64,
    sum: u64,
}

impl Digest {
    fn add<T: Hash>(&mut self, row: &T) {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        row.hash(&mut h);
        self.rows += 1;
        self.sum = self.sum.wrapping_add(h.finish());
    }
    fn hex(&self) -> String {
        format!("{:016x}", self.sum)
    }
}

fn events() -> Vec<Event> {
    let cfg = NexmarkConfig { limit: Some(EVENTS), ..NexmarkConfig::default() };
    (0..EVENTS).map(|n| generate_event(&cfg, n)).collect()
}

fn bids(events: &[Event]) -> impl Iterator<Item = &Bid> {
    events.iter().filter_map(|e| match e {
        Event::Bid(b) => Some(b),
        _ => None,
    })
}

/// Rows with the highest value per window end, sorted, as `(end, row)`.
fn top_per_window<T: Ord + Clone>(values: BTreeMap<i64, Vec<(u64, T)>>) -> Vec<(i64, T)> {
    let mut out = Vec::new();
    for (end, rows) in values {
        let best = rows.iter().map(|(v, _)| *v).max().unwrap();
        let mut top: Vec<T> = rows.into_iter().filter(|(v, _)| *v == best).map(|(_, r)| r).collect();
        top.sort();
        out.extend(top.into_iter().map(|r| (end, r)));
    }
    out
}

fn reference(query: &str, events: &[Event]) -> Digest {
    let mut d = Digest::default();
    match query {
        "q0" => bids(events).for_each(|b| d.add(b)),
        "q1" => bids(events).for_each(|b| d.add(&(b.auction, b.bidder, b.price * 908 / 1000, b.date_time))),
        "q2" => bids(events).filter(|b| b.auction % 123 == 0).for_each(|b| d.add(&(b.auction, b.price))),
        "q3" => {
            let sellers: HashMap<u64, &Person> = events
                .iter()
                .filter_map(|e| match e {
                    Event::Person(p) if ["OR", "ID", "CA"].contains(&p.state.as_str()) => Some((p.id, p)),
                    _ => None,
                })
                .collect();
            for e in events {
                if let Event::Auction(a) = e {
                    if let Some(p) = sellers.get(&a.seller).filter(|_| a.category == 10) {
                        d.add(&(p.name.clone(), p.city.clone(), p.state.clone(), a.id));
                    }
                }
            }
        }
        "q4" => {
            // Winning bid of every auction (bids while it was open), averaged per category in
            // the order auctions closed (then by price).
            let auctions: HashMap<u64, &Auction> = events
                .iter()
                .filter_map(|e| match e {
                    Event::Auction(a) => Some((a.id, a)),
                    _ => None,
                })
                .collect();
            let mut best: HashMap<u64, u64> = HashMap::new();
            for b in bids(events) {
                let a = auctions[&b.auction];
                if b.date_time >= a.date_time && b.date_time <= a.expires {
                    let e = best.entry(a.id).or_insert(b.price);
                    *e = (*e).max(b.price);
                }
            }
            let mut closed: BTreeMap<u64, Vec<(i64, u64)>> = BTreeMap::new();
            for (id, price) in best {
                let a = auctions[&id];
                closed.entry(a.category).or_default().push((a.expires, price));
            }
            for (category, mut list) in closed {
                list.sort();
                let (mut sum, mut n) = (0, 0);
                for (_, price) in list {
                    sum += price;
                    n += 1;
                    d.add(&(category, sum / n));
                }
            }
        }
        "q5" => {
            let mut counts: HashMap<(i64, u64), u64> = HashMap::new();
            for b in bids(events) {
                let slide_start = b.date_time - b.date_time.rem_euclid(2_000);
                for k in 0..5 {
                    *counts.entry((slide_start + 2_000 + k * 2_000, b.auction)).or_default() += 1;
                }
            }
            let mut per_end: BTreeMap<i64, Vec<(u64, u64)>> = BTreeMap::new();
            for ((end, auction), n) in counts {
                per_end.entry(end).or_default().push((n, auction));
            }
            top_per_window(per_end).iter().for_each(|r| d.add(r));
        }
        "q7" => {
            type Highest = (u64, (u64, u64, i64));
            let mut per_end: BTreeMap<i64, Vec<Highest>> = BTreeMap::new();
            // Per window and auction the highest (price, bidder) bid, then the highest of those.
            let mut per_auction: HashMap<(i64, u64), &Bid> = HashMap::new();
            for b in bids(events) {
                let end = b.date_time - b.date_time.rem_euclid(10_000) + 10_000;
                let e = per_auction.entry((end, b.auction)).or_insert(b);
                if (b.price, b.bidder) > (e.price, e.bidder) {
                    *e = b;
                }
            }
            for ((end, _), b) in per_auction {
                per_end.entry(end).or_default().push((b.price, (b.auction, b.bidder, b.date_time)));
            }
            top_per_window(per_end).iter().for_each(|r| d.add(r));
        }
        "q8" => {
            let window = |t: i64| t - t.rem_euclid(10_000);
            let sellers: HashSet<(u64, i64)> = events
                .iter()
                .filter_map(|e| match e {
                    Event::Auction(a) => Some((a.seller, window(a.date_time))),
                    _ => None,
                })
                .collect();
            for e in events {
                if let Event::Person(p) = e {
                    if sellers.contains(&(p.id, window(p.date_time))) {
                        d.add(&(p.id, p.name.clone(), window(p.date_time)));
                    }
                }
            }
        }
        other => panic!("no reference for {other}"),
    }
    d
}

/// Runs the benchmark with `flags` and checks every row of its table against the brute-force
/// evaluation; returns the (query, parallelism, processes) it saw.
fn check_table(flags: &[&str]) -> HashSet<(String, String, String)> {
    let out = std::process::Command::new(example("nexmark"))
        .args(["--events", &EVENTS.to_string(), "--runs", "1"])
        .args(["--checkpoint-interval", "50ms", "--memory-budget", "192MiB"])
        .args(flags)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(table.contains("machine: "), "{table}");
    let events = events();
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
    let seen = check_table(&["--parallelism", "1,2"]);
    assert_eq!(seen.len(), 16, "8 queries at 2 parallelisms: {seen:?}");
}

/// The same queries as one, two and three processes on loopback (at parallelism 3, one
/// subtask of each operator per process at 3): every process reports its part, and the parts
/// add up to the brute-force answer.
#[test]
fn every_query_gives_the_same_answer_as_one_two_and_three_processes() {
    let seen = check_table(&["--parallelism", "3", "--processes", "1,2,3"]);
    assert_eq!(seen.len(), 24, "8 queries as 1, 2 and 3 processes: {seen:?}");
}
