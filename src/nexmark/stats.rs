//! Daily bidding statistics: q15 (per day), q16 (per channel and day) and q17 (per auction and
//! day). Flink runs them as unbounded group-bys; weir emits each group once, when its day
//! closes in event time (or the input ends).
//!
//! Distinct counts come from a map state per group and day of the ids seen (each its own
//! RocksDB entry, so a day with millions of bidders stays within the memory budget), dropped
//! when the day closes.

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

pub(super) fn minute_of_day(ms: i64) -> u32 {
    (ms.rem_euclid(DAY_MS) / 60_000) as u32
}

/// Bids, distinct bidders and distinct auctions, each in all (`[0]`) and per price rank.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BidStats {
    pub bids: [u64; 4],
    pub bidders: [u64; 4],
    pub auctions: [u64; 4],
}

/// A group's day so far: its statistics and the latest minute of a bid.
type Part = (BidStats, u32);

/// Per group and day (the key): counts bids and, through a map of the bidders and auctions seen
/// (with the price ranks each was seen in), distinct bidders and auctions; emits the day's row
/// when the watermark passes its end (one timer per group and day) and forgets the day.
#[derive(Clone)]
struct DailyStats;

fn part() -> ValueStateDescriptor<Part> {
    ValueStateDescriptor::new("day")
}

fn seen() -> MapStateDescriptor<(u8, u64), u8> {
    MapStateDescriptor::new("seen")
}

impl KeyedOperator for DailyStats {
    type Key = (Vec<u8>, i64);
    type In = Bid;
    type Out = (Vec<u8>, Part, i64);
    fn process(
        &mut self,
        key: &(Vec<u8>, i64),
        b: Record<Bid>,
        ctx: &mut KeyedContext,
        _out: &mut Collector<Self::Out>,
    ) -> Result<()> {
        let b = b.value;
        let rank = price_rank(b.price);
        // Bit 0: seen at all; bit r: seen at price rank r.
        let bits = 1u8 | (1 << rank);
        let mut new = [0u8; 2];
        for (kind, id) in [(0u8, b.bidder), (1, b.auction)] {
            let mut ids = ctx.state(&seen())?;
            let old = ids.get(&(kind, id))?.unwrap_or(0);
            if bits & !old != 0 {
                ids.put(&(kind, id), &(old | bits))?;
                new[kind as usize] = bits & !old;
            }
        }
        let first = ctx.state(&part())?.update_with(|p| {
            let first = p.is_none();
            let (s, minute) = p.get_or_insert_with(Default::default);
            s.bids[0] += 1;
            s.bids[rank] += 1;
            for (counts, new) in [(&mut s.bidders, new[0]), (&mut s.auctions, new[1])] {
                for (i, c) in counts.iter_mut().enumerate() {
                    *c += u64::from(new >> i & 1);
                }
            }
            *minute = (*minute).max(minute_of_day(b.date_time));
            first
        })?;
        if first {
            ctx.register_event_timer(key.1 * DAY_MS + DAY_MS - 1)?;
        }
        Ok(())
    }
    fn on_timer(
        &mut self,
        key: &(Vec<u8>, i64),
        _t: FiredTimer,
        ctx: &mut KeyedContext,
        out: &mut Collector<Self::Out>,
    ) -> Result<()> {
        if let Some(p) = ctx.state(&part())?.value()? {
            out.collect((key.0.clone(), p, key.1 * DAY_MS));
        }
        ctx.state(&part())?.clear()?;
        ctx.state(&seen())?.clear()
    }
}

/// Per group (encoded by `group`) and day: the bid statistics and the latest minute of a bid.
fn daily_stats(events: &Events, group: fn(&Bid) -> Vec<u8>) -> DataStream<(Vec<u8>, Part, i64)> {
    bids(events)
        .key_by(move |b: &Bid| (group(b), b.date_time.div_euclid(DAY_MS)))
        .process("daily", DailyStats)
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
