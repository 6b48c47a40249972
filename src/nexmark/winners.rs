//! Winning bids: the core that q4 (average price per category), q6 (average selling price per
//! seller) and q9 (winning bids) share. An auction's winner is its highest bid made while it
//! was open (ties: the earlier bid, then the lower bidder id), found when it expires.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{bids, sink, Auction, Bid, Digest, Events};
use crate::prelude::*;
use crate::runtime::KeyedCoOperator;

/// A closed auction with its winning bid: what the query keeps of each (`A`, `B`), the price
/// and when the auction closed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Won<A, B> {
    pub auction: A,
    pub bid: B,
    pub price: u64,
    pub closed: i64,
}

/// A bid's rank among an auction's bids: higher wins.
type Rank = (u64, std::cmp::Reverse<i64>, std::cmp::Reverse<u64>);

fn rank(b: &Bid) -> Rank {
    (b.price, std::cmp::Reverse(b.date_time), std::cmp::Reverse(b.bidder))
}

/// A bid waiting for its auction: its time, rank and what the query keeps of it.
type EarlyBid<B> = (i64, Rank, B);

/// An auction's state, one entry per auction kept as a live object in the write cache (updated
/// in place: no decoding and encoding per bid, no RocksDB merge per early bid).
#[derive(Clone, Serialize, Deserialize)]
enum Slot<A, B> {
    /// Not here yet, but bids for it came first (from a source subtask ahead of the other).
    Early(Vec<EarlyBid<B>>),
    /// Open: what the query keeps, when it opened and expires, its best bid so far.
    Open(A, i64, i64, Option<(Rank, B)>),
    /// Closed at a time; kept for [`CLOSED_KEPT_MS`] so that the many bids for auctions
    /// already closed (half the bids go to the hot auction, which often closes before the next
    /// one opens) are dropped at once instead of waiting as early bids.
    Closed(i64),
}

/// The winning bid of each auction among the bids made while it was open, emitted when the
/// auction expires; `keep_auction` and `keep_bid` choose what of each the state holds (q4 keeps
/// a category and no bid; q9 keeps both whole).
pub(crate) struct WinningBids<A, B> {
    keep_auction: fn(&Auction) -> A,
    keep_bid: fn(&Bid) -> B,
}

impl<A, B> Clone for WinningBids<A, B> {
    fn clone(&self) -> Self {
        WinningBids { keep_auction: self.keep_auction, keep_bid: self.keep_bid }
    }
}

impl<A, B> WinningBids<A, B> {
    pub(crate) fn new(keep_auction: fn(&Auction) -> A, keep_bid: fn(&Bid) -> B) -> Self {
        WinningBids { keep_auction, keep_bid }
    }
}

/// How long after a bid its auction's state may still be missing (the bid came first, from
/// another source subtask): by then the auction either arrived or opened after the bid, which
/// then cannot win. Only bounds how long such bids are kept.
const EARLY_BID_MS: i64 = 1_000;

/// How long a closed auction's marker stays (event time after it closed).
const CLOSED_KEPT_MS: i64 = 10_000;

fn slot<A, B>() -> ValueStateDescriptor<Slot<A, B>> {
    ValueStateDescriptor::new("auction")
}

/// When the early bids made at `t` are dropped if their auction has not come: rounded up to a
/// whole second, so that a key has one cleanup timer per second, not one per bid.
fn early_cleanup(t: i64) -> i64 {
    let due = t + EARLY_BID_MS;
    due - due.rem_euclid(EARLY_BID_MS) + EARLY_BID_MS
}

impl<A: Data, B: Data> KeyedCoOperator for WinningBids<A, B> {
    type Key = u64;
    type In1 = Auction;
    type In2 = Bid;
    type Out = Won<A, B>;
    fn process1(
        &mut self,
        _key: &u64,
        a: Record<Auction>,
        ctx: &mut KeyedContext,
        _out: &mut Collector<Won<A, B>>,
    ) -> Result<()> {
        let a = a.value;
        let kept = (self.keep_auction)(&a);
        ctx.state(&slot::<A, B>())?.update_with(|slot| {
            // Bids that came first count if they were made while it was open.
            let best = match slot.take() {
                Some(Slot::Early(early)) => early
                    .into_iter()
                    .filter(|(t, _, _)| *t >= a.date_time && *t <= a.expires)
                    .map(|(_, r, b)| (r, b))
                    .max_by(|x, y| x.0.cmp(&y.0)),
                _ => None,
            };
            *slot = Some(Slot::Open(kept, a.date_time, a.expires, best));
        })?;
        ctx.register_event_timer(a.expires)
    }
    fn process2(
        &mut self,
        _key: &u64,
        b: Record<Bid>,
        ctx: &mut KeyedContext,
        _out: &mut Collector<Won<A, B>>,
    ) -> Result<()> {
        let b = b.value;
        let (keep_bid, wm, r) = (self.keep_bid, ctx.current_watermark(), rank(&b));
        let waits = ctx.state(&slot::<A, B>())?.update_with(|slot| match slot {
            Some(Slot::Open(_, opened, expires, best)) => {
                if b.date_time >= *opened && b.date_time <= *expires && best.as_ref().is_none_or(|(top, _)| r > *top) {
                    *best = Some((r, keep_bid(&b)));
                }
                false
            }
            Some(Slot::Closed(_)) => false,
            Some(Slot::Early(early)) => {
                early.push((b.date_time, r, keep_bid(&b)));
                true
            }
            None if b.date_time + EARLY_BID_MS > wm => {
                *slot = Some(Slot::Early(vec![(b.date_time, r, keep_bid(&b))]));
                true
            }
            // A bid for an auction that closed long ago.
            None => false,
        })?;
        if waits {
            ctx.register_event_timer(early_cleanup(b.date_time))?;
        }
        Ok(())
    }
    fn on_timer(
        &mut self,
        _key: &u64,
        timer: FiredTimer,
        ctx: &mut KeyedContext,
        out: &mut Collector<Won<A, B>>,
    ) -> Result<()> {
        let ts = timer.ts;
        let (won, closed) = ctx.state(&slot::<A, B>())?.update_with(|slot| match slot.take() {
            Some(Slot::Open(kept, _, expires, best)) if expires == ts => {
                *slot = Some(Slot::Closed(expires));
                let won = best.map(|((price, _, _), bid)| Won { auction: kept, bid, price, closed: expires });
                (won, true)
            }
            Some(Slot::Closed(at)) if at + CLOSED_KEPT_MS == ts => (None, false),
            // Early bids whose auction did not come in time cannot win any more.
            Some(Slot::Early(mut early)) => {
                early.retain(|(t, _, _)| early_cleanup(*t) > ts);
                if !early.is_empty() {
                    *slot = Some(Slot::Early(early));
                }
                (None, false)
            }
            other => {
                *slot = other;
                (None, false)
            }
        })?;
        if let Some(won) = won {
            out.collect(won);
        }
        if closed {
            ctx.register_event_timer(ts + CLOSED_KEPT_MS)?;
        }
        Ok(())
    }
}

/// Average winning price per key (q4: category; q6: seller), updated in the order the auctions
/// closed (then by price), so that the updates do not depend on the order in which parallel
/// subtasks deliver the winners: over all of them (`last: None`) or the last `n`.
#[derive(Clone)]
pub(crate) struct AvgPrice {
    pub last: Option<usize>,
}

impl KeyedOperator for AvgPrice {
    type Key = u64;
    type In = (u64, u64, i64);
    type Out = (u64, u64);
    fn process(
        &mut self,
        _key: &u64,
        r: Record<(u64, u64, i64)>,
        ctx: &mut KeyedContext,
        _out: &mut Collector<(u64, u64)>,
    ) -> Result<()> {
        let (_, price, closed) = r.value;
        ctx.state(&ListStateDescriptor::<(i64, u64)>::new("closed"))?.add(&(closed, price))?;
        ctx.register_event_timer(closed)
    }
    fn on_timer(
        &mut self,
        key: &u64,
        timer: FiredTimer,
        ctx: &mut KeyedContext,
        out: &mut Collector<(u64, u64)>,
    ) -> Result<()> {
        let mut closed = ctx.state(&ListStateDescriptor::<(i64, u64)>::new("closed"))?.get()?;
        closed.sort_unstable();
        let (due, later): (Vec<_>, Vec<_>) = closed.into_iter().partition(|(t, _)| *t <= timer.ts);
        match self.last {
            None => {
                let totals = ValueStateDescriptor::<(u64, u64)>::new("sum-count");
                let (mut sum, mut count) = ctx.state(&totals)?.value()?.unwrap_or((0, 0));
                for (_, price) in due {
                    sum += price;
                    count += 1;
                    out.collect((*key, sum / count));
                }
                ctx.state(&totals)?.update(&(sum, count))?;
            }
            Some(n) => {
                let recent = ValueStateDescriptor::<Vec<u64>>::new("recent");
                let mut prices = ctx.state(&recent)?.value()?.unwrap_or_default();
                for (_, price) in due {
                    if prices.len() == n {
                        prices.remove(0);
                    }
                    prices.push(price);
                    out.collect((*key, prices.iter().sum::<u64>() / prices.len() as u64));
                }
                ctx.state(&recent)?.update(&prices)?;
            }
        }
        ctx.state(&ListStateDescriptor::<(i64, u64)>::new("closed"))?.update(&later)
    }
}

fn winners<A: Data, B: Data>(events: &Events, op: WinningBids<A, B>) -> DataStream<Won<A, B>> {
    events
        .auctions
        .key_by(|a: &Auction| a.id)
        .connect(&bids(events).key_by(|b: &Bid| b.auction))
        .transform("winning-bids", move |_| op.clone())
        .uid("winning-bids")
}

/// q4: the average winning price per category.
pub(super) fn q4(events: &Events, digest: &Digest) {
    let won = winners(events, WinningBids::new(|a| a.category, |_| ()));
    let rows = won
        .map(|w: Won<u64, ()>| (w.auction, w.price, w.closed))
        .key_by(|w: &(u64, u64, i64)| w.0)
        .process("average", AvgPrice { last: None })
        .uid("average");
    sink(&rows, digest)
}

/// q6: per seller, the average selling price of their last 10 auctions.
pub(super) fn q6(events: &Events, digest: &Digest) {
    let won = winners(events, WinningBids::new(|a| a.seller, |_| ()));
    let rows = won
        .map(|w: Won<u64, ()>| (w.auction, w.price, w.closed))
        .key_by(|w: &(u64, u64, i64)| w.0)
        .process("average", AvgPrice { last: Some(10) })
        .uid("average");
    sink(&rows, digest)
}

/// q9: every auction with its winning bid.
pub(super) fn q9(events: &Events, digest: &Digest) {
    let won = winners(events, WinningBids::new(Auction::clone, Bid::clone));
    sink(&won.map(|w: Won<Auction, Bid>| (w.auction, w.bid)).uid("rows"), digest)
}
