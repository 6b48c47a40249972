//! Rankings in event-time order: q18 (each bidder's last bid on an auction, a deduplication)
//! and q19 (each auction's ten highest bids, a top-N). Flink evaluates both on the rowtime
//! attribute, buffering rows until the watermark passes them; so does weir: every bid waits in
//! state for the watermark to reach its time, then the rows due are ranked in time order, so
//! that the output does not depend on the order in which parallel sources deliver bids.

use anyhow::Result;

use super::{bids, sink, Bid, Digest, Events};
use crate::prelude::*;

/// A total order on bids for ties: equal times and prices still rank the same in every run.
pub fn tie_break(b: &Bid) -> (i64, u64, &str, &str, &str, u64) {
    (b.date_time, b.price, b.extra.as_str(), b.url.as_str(), b.channel.as_str(), b.bidder)
}

/// The bids waiting for the watermark to reach their time, one list per key and time (a live
/// object in the write cache: a list that comes and goes between two flushes never reaches
/// RocksDB, and a key with many bids waiting is not reread at every timer).
fn pending() -> ValueStateDescriptor<Vec<Bid>> {
    ValueStateDescriptor::new("pending")
}

/// The bids made at the fired timer's time, in [`tie_break`] order.
fn take_due(ctx: &mut KeyedContext, timer: &FiredTimer) -> Result<Vec<Bid>> {
    let mut due = ctx.state(&pending())?.in_namespace(&timer.namespace).update_with(Option::take)?.unwrap_or_default();
    due.sort_by(|a, b| tie_break(a).cmp(&tie_break(b)));
    Ok(due)
}

/// Keeps `b` until the watermark reaches its time.
fn hold(ctx: &mut KeyedContext, b: Bid) -> Result<()> {
    let ns = b.date_time.to_be_bytes();
    ctx.register_timer_in(TimeDomain::EventTime, b.date_time, &ns)?;
    ctx.state(&pending())?.in_namespace(&ns).update_with(|list| list.get_or_insert_with(Vec::new).push(b))
}

/// q18: per (bidder, auction), the latest bid as of each time a bid was made (an upsert
/// stream: the row at a later time replaces the earlier one).
#[derive(Clone)]
struct LastBid;

impl KeyedOperator for LastBid {
    type Key = (u64, u64);
    type In = Bid;
    type Out = Bid;
    fn process(
        &mut self,
        _k: &(u64, u64),
        b: Record<Bid>,
        ctx: &mut KeyedContext,
        _out: &mut Collector<Bid>,
    ) -> Result<()> {
        hold(ctx, b.value)
    }
    fn on_timer(
        &mut self,
        _k: &(u64, u64),
        t: FiredTimer,
        ctx: &mut KeyedContext,
        out: &mut Collector<Bid>,
    ) -> Result<()> {
        if let Some(last) = take_due(ctx, &t)?.pop() {
            out.collect(last);
        }
        Ok(())
    }
}

/// q19's change to an auction's top 10: a bid entering at a rank (`true`), or leaving (`false`).
pub type TopChange = (bool, u64, Bid);

/// How a bid ranks within an auction: higher price first, then the earlier (by [`tie_break`]).
pub fn top_order(a: &Bid, b: &Bid) -> std::cmp::Ordering {
    b.price.cmp(&a.price).then_with(|| tie_break(a).cmp(&tie_break(b)))
}

/// q19: each auction's ten highest bids, as changes in event-time order.
#[derive(Clone)]
struct TopBids;

const TOP_N: usize = 10;

impl KeyedOperator for TopBids {
    type Key = u64;
    type In = Bid;
    type Out = TopChange;
    fn process(
        &mut self,
        _k: &u64,
        b: Record<Bid>,
        ctx: &mut KeyedContext,
        _out: &mut Collector<TopChange>,
    ) -> Result<()> {
        hold(ctx, b.value)
    }
    fn on_timer(
        &mut self,
        _k: &u64,
        t: FiredTimer,
        ctx: &mut KeyedContext,
        out: &mut Collector<TopChange>,
    ) -> Result<()> {
        let desc = ValueStateDescriptor::<Vec<Bid>>::new("top");
        let mut top = ctx.state(&desc)?.value()?.unwrap_or_default();
        let mut changed = false;
        for b in take_due(ctx, &t)? {
            let at = top.partition_point(|x| top_order(x, &b).is_lt());
            if at < TOP_N {
                top.insert(at, b.clone());
                out.collect((true, at as u64 + 1, b));
                if top.len() > TOP_N {
                    if let Some(gone) = top.pop() {
                        out.collect((false, TOP_N as u64 + 1, gone));
                    }
                }
                changed = true;
            }
        }
        if changed {
            ctx.state(&desc)?.update(&top)?;
        }
        Ok(())
    }
}

/// q18: the last bid of each bidder on each auction.
pub(super) fn q18(events: &Events, digest: &Digest) {
    let rows = bids(events).key_by(|b: &Bid| (b.bidder, b.auction)).process("last-bid", LastBid).uid("last-bid");
    sink(&rows, digest)
}

/// q19: the ten highest bids of each auction.
pub(super) fn q19(events: &Events, digest: &Digest) {
    let rows = bids(events).key_by(|b: &Bid| b.auction).process("top-10", TopBids).uid("top-10");
    sink(&rows, digest)
}
