//! Brute-force evaluations of the Nexmark queries over a generated event list: what each query
//! means, written as plainly as possible, for the benchmark's digests to be compared with.

use std::collections::{BTreeMap, HashMap, HashSet};

use weir::nexmark::{
    channel_id, day, hour_minute, price_rank, q10_row, q12_weight, q14_row, side_input_value, tie_break, top_order,
    url_dirs, Auction, Bid, BidStats, Event, Person, TopChange, SIDE_INPUT_KEYS,
};

use super::{bids, Digest};

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

fn auctions(events: &[Event]) -> HashMap<u64, &Auction> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Auction(a) => Some((a.id, a)),
            _ => None,
        })
        .collect()
}

/// Every auction that got a bid while open, with its winning bid: the highest price, then the
/// earliest, then the lowest bidder.
fn winners(events: &[Event]) -> Vec<(&Auction, &Bid)> {
    let auctions = auctions(events);
    let mut best: BTreeMap<u64, &Bid> = BTreeMap::new();
    let rank = |b: &Bid| (b.price, std::cmp::Reverse(b.date_time), std::cmp::Reverse(b.bidder));
    for b in bids(events) {
        let Some(a) = auctions.get(&b.auction) else { continue };
        if b.date_time >= a.date_time && b.date_time <= a.expires {
            let e = best.entry(a.id).or_insert(b);
            if rank(b) > rank(e) {
                *e = b;
            }
        }
    }
    best.into_iter().map(|(id, b)| (auctions[&id], b)).collect()
}

/// q15/q16: bid statistics and the latest minute per group and day.
fn daily<G: Ord + Clone + std::hash::Hash>(
    events: &[Event],
    group: impl Fn(&Bid) -> G,
) -> BTreeMap<(G, String), (BidStats, u32)> {
    let mut out: BTreeMap<(G, String), (BidStats, u32)> = BTreeMap::new();
    let mut seen: HashSet<(G, String, u8, u64, usize)> = HashSet::new();
    for b in bids(events) {
        let (g, d, r) = (group(b), day(b.date_time), price_rank(b.price));
        let e = out.entry((g.clone(), d.clone())).or_default();
        e.0.bids[0] += 1;
        e.0.bids[r] += 1;
        e.1 = e.1.max((b.date_time.rem_euclid(86_400_000) / 60_000) as u32);
        for (kind, id) in [(0u8, b.bidder), (1, b.auction)] {
            let counts = if kind == 0 { &mut e.0.bidders } else { &mut e.0.auctions };
            for i in [0, r] {
                if seen.insert((g.clone(), d.clone(), kind, id, i)) {
                    counts[i] += 1;
                }
            }
        }
    }
    out
}

pub fn reference(query: &str, events: &[Event]) -> Digest {
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
            let mut closed: BTreeMap<u64, Vec<(i64, u64)>> = BTreeMap::new();
            for (a, b) in winners(events) {
                closed.entry(a.category).or_default().push((a.expires, b.price));
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
        "q6" => {
            let mut closed: BTreeMap<u64, Vec<(i64, u64)>> = BTreeMap::new();
            for (a, b) in winners(events) {
                closed.entry(a.seller).or_default().push((a.expires, b.price));
            }
            for (seller, mut list) in closed {
                list.sort();
                for i in 0..list.len() {
                    let last = &list[i.saturating_sub(9)..=i];
                    d.add(&(seller, last.iter().map(|(_, p)| p).sum::<u64>() / last.len() as u64));
                }
            }
        }
        "q9" => winners(events).into_iter().for_each(|(a, b)| d.add(&(a.clone(), b.clone()))),
        "q10" => bids(events).for_each(|b| d.add(&q10_row(b.clone()))),
        "q12" => {
            // However processing time cut them into windows: per bidder, its bids times its hash.
            let mut per_bidder: BTreeMap<u64, u64> = BTreeMap::new();
            bids(events).for_each(|b| *per_bidder.entry(b.bidder).or_default() += 1);
            for (bidder, n) in per_bidder {
                let (rows, hash) = q12_weight(&(bidder, n, 0, 0));
                d.add_weighed(rows, hash);
            }
        }
        "q13" => bids(events).filter(|b| !(b.auction % SIDE_INPUT_KEYS).is_multiple_of(7)).for_each(|b| {
            d.add(&(b.auction, b.bidder, b.price, b.date_time, side_input_value(b.auction % SIDE_INPUT_KEYS)))
        }),
        "q11" => {
            let mut times: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
            bids(events).for_each(|b| times.entry(b.bidder).or_default().push(b.date_time));
            for (bidder, mut ts) in times {
                ts.sort();
                let (mut start, mut last, mut n) = (ts[0], ts[0], 0u64);
                for t in ts {
                    if t >= last + 10_000 {
                        d.add(&(bidder, n, start, last + 10_000));
                        (start, n) = (t, 0);
                    }
                    last = t;
                    n += 1;
                }
                d.add(&(bidder, n, start, last + 10_000));
            }
        }
        "q14" => bids(events).filter_map(|b| q14_row(b.clone())).for_each(|r| d.add(&r)),
        "q15" => daily(events, |_| ()).into_iter().for_each(|((_, day), (s, _))| d.add(&(day, s))),
        "q16" => daily(events, |b| b.channel.clone())
            .into_iter()
            .for_each(|((channel, day), (s, minute))| d.add(&(channel, day, hour_minute(minute), s))),
        "q17" => {
            let mut groups: BTreeMap<(u64, String), Vec<u64>> = BTreeMap::new();
            bids(events).for_each(|b| groups.entry((b.auction, day(b.date_time))).or_default().push(b.price));
            for ((auction, day), prices) in groups {
                let mut ranks = [prices.len() as u64, 0, 0, 0];
                prices.iter().for_each(|p| ranks[price_rank(*p)] += 1);
                let sum: u64 = prices.iter().sum();
                let (min, max) = (*prices.iter().min().unwrap(), *prices.iter().max().unwrap());
                d.add(&(auction, day, ranks, min, max, sum / prices.len() as u64, sum));
            }
        }
        "q18" => {
            // Per (bidder, auction) and per time a bid was made: the last bid so far.
            let mut last: BTreeMap<(u64, u64, i64), &Bid> = BTreeMap::new();
            for b in bids(events) {
                let e = last.entry((b.bidder, b.auction, b.date_time)).or_insert(b);
                if tie_break(b) > tie_break(e) {
                    *e = b;
                }
            }
            last.into_values().for_each(|b| d.add(b));
        }
        "q19" => {
            let mut per_auction: BTreeMap<u64, Vec<&Bid>> = BTreeMap::new();
            bids(events).for_each(|b| per_auction.entry(b.auction).or_default().push(b));
            for (_, mut list) in per_auction {
                list.sort_by(|a, b| tie_break(a).cmp(&tie_break(b)));
                let mut top: Vec<&Bid> = Vec::new();
                for b in list {
                    let at = top.iter().filter(|x| top_order(x, b).is_lt()).count();
                    if at < 10 {
                        top.insert(at, b);
                        d.add::<TopChange>(&(true, at as u64 + 1, b.clone()));
                        if top.len() > 10 {
                            d.add::<TopChange>(&(false, 11, top.pop().unwrap().clone()));
                        }
                    }
                }
            }
        }
        "q20" => {
            let auctions = auctions(events);
            for b in bids(events) {
                if let Some(a) = auctions.get(&b.auction).filter(|a| a.category == 10) {
                    d.add(&(b.clone(), (*a).clone()));
                }
            }
        }
        "q21" => bids(events)
            .filter_map(|b| {
                channel_id(&b.channel, &b.url).map(|id| (b.auction, b.bidder, b.price, b.channel.clone(), id))
            })
            .for_each(|r| d.add(&r)),
        "q22" => bids(events).for_each(|b| {
            let (d1, d2, d3) = url_dirs(&b.url);
            d.add(&(b.auction, b.bidder, b.price, b.channel.clone(), d1, d2, d3))
        }),
        other => panic!("no reference for {other}"),
    }
    d
}
