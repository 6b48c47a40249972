//! q20: bids expanded with their auction, for auctions of category 10 (a regular inner join:
//! Flink keeps both sides in state without time bounds, and so does weir, except that an
//! auction of another category is kept as a marker only).

use anyhow::Result;

use super::{bids, sink, Auction, Bid, Digest, Events};
use crate::prelude::*;
use crate::runtime::KeyedCoOperator;

/// An auction as q20's state holds it: whole if its category matches, else a marker.
type Kept = Option<Auction>;

#[derive(Clone)]
struct ExpandBids;

const CATEGORY: u64 = 10;

impl KeyedCoOperator for ExpandBids {
    type Key = u64;
    type In1 = Auction;
    type In2 = Bid;
    type Out = (Bid, Auction);
    fn process1(
        &mut self,
        _k: &u64,
        a: Record<Auction>,
        ctx: &mut KeyedContext,
        out: &mut Collector<(Bid, Auction)>,
    ) -> Result<()> {
        let a = a.value;
        let waiting = ListStateDescriptor::<Bid>::new("waiting-bids");
        let kept: Kept = (a.category == CATEGORY).then_some(a);
        if let Some(a) = &kept {
            for b in ctx.state(&waiting)?.get()? {
                out.collect((b, a.clone()));
            }
        }
        ctx.state(&waiting)?.clear()?;
        ctx.state(&ValueStateDescriptor::<Kept>::new("auction"))?.update(&kept)
    }
    fn process2(
        &mut self,
        _k: &u64,
        b: Record<Bid>,
        ctx: &mut KeyedContext,
        out: &mut Collector<(Bid, Auction)>,
    ) -> Result<()> {
        match ctx.state(&ValueStateDescriptor::<Kept>::new("auction"))?.value()? {
            Some(Some(a)) => out.collect((b.value, a)),
            Some(None) => {}
            // The auction has not arrived yet (bids may name an auction a little ahead).
            None => ctx.state(&ListStateDescriptor::<Bid>::new("waiting-bids"))?.add(&b.value)?,
        }
        Ok(())
    }
}

/// q20: bids joined with their auction, for category 10.
pub(super) fn q20(events: &Events, digest: &Digest) {
    let rows = events
        .auctions
        .key_by(|a: &Auction| a.id)
        .connect(&bids(events).key_by(|b: &Bid| b.auction))
        .transform("expand", |_| ExpandBids)
        .uid("expand");
    sink(&rows, digest)
}
