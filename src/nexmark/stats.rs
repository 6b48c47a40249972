//! Daily bidding statistics: q15 (per day), q16 (per channel and day) and q17 (per auction and
//! day). Flink runs them as unbounded group-bys; weir emits each group once, when its day
//! closes in event time (or the input ends).
//!
//! Distinct counts are split the way Flink splits distinct aggregates: a stage keyed by
//! (group, bidder or auction) notes which price ranks it has seen the id in and sends +1 the
//! first time; the daily sum adds those up, so no operator holds a set of ids.

use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{bids, sink, Bid, Digest, Events};
use crate::prelude::*;
use crate::state::AggregateFunction;

const DAY_MS: i64 = 86_400_000;

/// The price rank of q15–q17: 1 below $100, 2 below $10 000, 3 above.
pub fn price_rank(price: u64) -> usize {
    match price {
        0..10_000 => 1,
        10_000..1_000_000 => 2,
        _ => 3,
    }
}

/// `yyyy-MM-dd` of an epoch-millisecond time (UTC).
pub fn day(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%Y-%m-%d").to_string()).unwrap_or_default()
}

/// `HH:mm` of a minute of the day.
pub fn hour_minute(minute: u32) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

fn minute_of_day(ms: i64) -> u32 {
    (ms.rem_euclid(DAY_MS) / 60_000) as u32
}

/// Bids, distinct bidders and distinct auctions, each in all (`[0]`) and per price rank.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BidStats {
    pub bids: [u64; 4],
    pub bidders: [u64; 4],
    pub auctions: [u64; 4],
}

/// A contribution to a group's day: statistics to add and the latest minute seen.
type Part = (BidStats, u32);

struct SumParts;

impl AggregateFunction for SumParts {
    type In = (Vec<u8>, Part);
    type Acc = Part;
    type Out = Part;
    fn create_accumulator(&self) -> Part {
        (BidStats::default(), 0)
    }
    fn add(&self, acc: &mut Part, (_, (s, minute)): &(Vec<u8>, Part)) {
        for i in 0..4 {
            acc.0.bids[i] += s.bids[i];
            acc.0.bidders[i] += s.bidders[i];
            acc.0.auctions[i] += s.auctions[i];
        }
        acc.1 = acc.1.max(*minute);
    }
    fn get_result(&self, acc: &Part) -> Part {
        *acc
    }
    fn merge(&self, mut a: Part, b: Part) -> Part {
        self.add(&mut a, &(Vec::new(), b));
        a
    }
}

/// Notes the price ranks an id was seen in within its group and day; sends +1 to the group's
/// distinct bidders (`kind` 0) or auctions (1), in all and per rank, the first time.
#[derive(Clone)]
struct FirstSeen;

impl KeyedOperator for FirstSeen {
    type Key = (Vec<u8>, u8, u64);
    type In = (Vec<u8>, u8, u64, usize);
    type Out = (Vec<u8>, Part);
    fn process(
        &mut self,
        key: &(Vec<u8>, u8, u64),
        r: Record<(Vec<u8>, u8, u64, usize)>,
        ctx: &mut KeyedContext,
        out: &mut Collector<(Vec<u8>, Part)>,
    ) -> Result<()> {
        let desc = ValueStateDescriptor::<u8>::new("seen");
        let seen = ctx.state(&desc)?.value()?;
        let bits = (1u8 << r.value.3) | 1;
        let new = bits & !seen.unwrap_or(0);
        if new == 0 {
            return Ok(());
        }
        if seen.is_none() {
            // The group's day ends: its ids are not needed after that.
            let ts = r.ts.unwrap_or(0);
            ctx.register_event_timer(ts - ts.rem_euclid(DAY_MS) + DAY_MS - 1)?;
        }
        ctx.state(&desc)?.update(&(seen.unwrap_or(0) | new))?;
        let mut stats = BidStats::default();
        let counts = if key.1 == 0 { &mut stats.bidders } else { &mut stats.auctions };
        for (i, c) in counts.iter_mut().enumerate() {
            *c = u64::from(new >> i & 1);
        }
        out.collect((key.0.clone(), (stats, 0)));
        Ok(())
    }
    fn on_timer(
        &mut self,
        _key: &Self::Key,
        _t: FiredTimer,
        ctx: &mut KeyedContext,
        _out: &mut Collector<Self::Out>,
    ) -> Result<()> {
        ctx.state(&ValueStateDescriptor::<u8>::new("seen"))?.clear()
    }
}

/// Per group (encoded by `group`) and day: the bid statistics and the latest minute of a bid.
fn daily_stats(events: &Events, group: fn(&Bid) -> Vec<u8>) -> DataStream<(Vec<u8>, Part, i64)> {
    let bids = bids(events);
    let counts = bids
        .map(move |b: Bid| {
            let mut s = BidStats::default();
            s.bids[0] = 1;
            s.bids[price_rank(b.price)] = 1;
            (group(&b), (s, minute_of_day(b.date_time)))
        })
        .uid("bid-counts");
    let distinct = bids
        .flat_map(move |b: Bid| {
            let (g, rank) = (group(&b), price_rank(b.price));
            [(g.clone(), 0, b.bidder, rank), (g, 1, b.auction, rank)]
        })
        .uid("ids")
        .key_by(|r: &(Vec<u8>, u8, u64, usize)| (r.0.clone(), r.1, r.2))
        .process("distinct", FirstSeen)
        .uid("distinct");
    counts
        .union(&[&distinct])
        .key_by(|r: &(Vec<u8>, Part)| r.0.clone())
        .window(TumblingEventTimeWindows::of(Duration::from_millis(DAY_MS as u64)))
        .aggregate_with(SumParts, |g: &Vec<u8>, w: &TimeWindow, part: Part, out| {
            out.collect((g.clone(), part, w.start))
        })
        .uid("daily")
}

/// q15: bid statistics per day.
pub(super) fn q15(events: &Events, digest: &Digest) {
    let rows =
        daily_stats(events, |_| Vec::new()).map(|(_, (s, _), start): (Vec<u8>, Part, i64)| (day(start), s)).uid("rows");
    sink(&rows, digest)
}

/// q16: bid statistics per channel and day, with the day's latest minute of a bid.
pub(super) fn q16(events: &Events, digest: &Digest) {
    let rows = daily_stats(events, |b| b.channel.as_bytes().to_vec())
        .map(|(g, (s, minute), start): (Vec<u8>, Part, i64)| {
            (String::from_utf8_lossy(&g).into_owned(), day(start), hour_minute(minute), s)
        })
        .uid("rows");
    sink(&rows, digest)
}

/// q17's accumulator: bids (in all and per rank), lowest, highest and total price.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct AuctionStats {
    pub bids: [u64; 4],
    pub min: u64,
    pub max: u64,
    pub sum: u64,
}

struct SumAuction;

impl AggregateFunction for SumAuction {
    type In = Bid;
    type Acc = AuctionStats;
    type Out = AuctionStats;
    fn create_accumulator(&self) -> AuctionStats {
        AuctionStats { min: u64::MAX, ..AuctionStats::default() }
    }
    fn add(&self, acc: &mut AuctionStats, b: &Bid) {
        acc.bids[0] += 1;
        acc.bids[price_rank(b.price)] += 1;
        acc.min = acc.min.min(b.price);
        acc.max = acc.max.max(b.price);
        acc.sum += b.price;
    }
    fn get_result(&self, acc: &AuctionStats) -> AuctionStats {
        *acc
    }
    fn merge(&self, a: AuctionStats, b: AuctionStats) -> AuctionStats {
        let mut bids = a.bids;
        bids.iter_mut().zip(b.bids).for_each(|(x, y)| *x += y);
        AuctionStats { bids, min: a.min.min(b.min), max: a.max.max(b.max), sum: a.sum + b.sum }
    }
}

/// q17's row: auction, day, bids (all, per rank), min, max, average and total price.
pub type Q17Row = (u64, String, [u64; 4], u64, u64, u64, u64);

/// q17: per auction and day, how many bids at which prices.
pub(super) fn q17(events: &Events, digest: &Digest) {
    let rows = bids(events)
        .key_by(|b: &Bid| (b.auction, b.date_time.div_euclid(DAY_MS)))
        .window(TumblingEventTimeWindows::of(Duration::from_millis(DAY_MS as u64)))
        .aggregate_with(SumAuction, |k: &(u64, i64), w: &TimeWindow, s: AuctionStats, out| {
            let row: Q17Row = (k.0, day(w.start), s.bids, s.min, s.max, s.sum / s.bids[0].max(1), s.sum);
            out.collect(row)
        })
        .uid("auction-stats");
    sink(&rows, digest)
}
