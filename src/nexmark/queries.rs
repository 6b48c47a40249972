//! The stateful operators of the Nexmark queries.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{Auction, Bid, Person};
use crate::prelude::*;
use crate::runtime::KeyedCoOperator;

/// q3 output: who sells what, for sellers in some states.
#[derive(Clone, Debug, Hash, Serialize, Deserialize)]
pub(crate) struct Q3Row {
    name: String,
    city: String,
    state: String,
    auction: u64,
}

/// q3: auctions of category 10 joined with their sellers from OR, ID or CA, incrementally: the
/// person's fields are kept; auctions that arrive before their seller wait in a list.
#[derive(Clone)]
pub(crate) struct Q3Join;

impl KeyedCoOperator for Q3Join {
    type Key = u64;
    type In1 = Person;
    type In2 = Auction;
    type Out = Q3Row;
    fn process1(
        &mut self,
        _key: &u64,
        p: Record<Person>,
        ctx: &mut KeyedContext,
        out: &mut Collector<Q3Row>,
    ) -> Result<()> {
        let p = p.value;
        let waiting = ctx.state(&ListStateDescriptor::<u64>::new("auctions"))?.get()?;
        for auction in waiting {
            out.collect(Q3Row { name: p.name.clone(), city: p.city.clone(), state: p.state.clone(), auction });
        }
        ctx.state(&ListStateDescriptor::<u64>::new("auctions"))?.clear()?;
        ctx.state(&ValueStateDescriptor::<(String, String, String)>::new("person"))?.update(&(p.name, p.city, p.state))
    }
    fn process2(
        &mut self,
        _key: &u64,
        a: Record<Auction>,
        ctx: &mut KeyedContext,
        out: &mut Collector<Q3Row>,
    ) -> Result<()> {
        match ctx.state(&ValueStateDescriptor::<(String, String, String)>::new("person"))?.value()? {
            Some((name, city, state)) => out.collect(Q3Row { name, city, state, auction: a.value.id }),
            None => ctx.state(&ListStateDescriptor::<u64>::new("auctions"))?.add(&a.value.id)?,
        }
        Ok(())
    }
}

/// q4, step one: the winning (highest) bid of each auction among the bids made before it
/// expired, emitted as `(category, price)` when it expires.
#[derive(Clone)]
pub(crate) struct Q4Winner;

/// The longest an auction runs (the generator's `expires` is at most 20 s after it opens).
const MAX_AUCTION_MS: i64 = 20_000;

impl KeyedCoOperator for Q4Winner {
    type Key = u64;
    type In1 = Auction;
    type In2 = Bid;
    type Out = (u64, u64, i64);
    fn process1(
        &mut self,
        _key: &u64,
        a: Record<Auction>,
        ctx: &mut KeyedContext,
        _out: &mut Collector<(u64, u64, i64)>,
    ) -> Result<()> {
        let a = a.value;
        // Bids that came first (from another source subtask) count if they were in time.
        let early = ctx.state(&ListStateDescriptor::<(i64, u64)>::new("early-bids"))?.get()?;
        let best = early.iter().filter(|(t, _)| *t >= a.date_time && *t <= a.expires).map(|(_, p)| *p).max();
        ctx.state(&ListStateDescriptor::<(i64, u64)>::new("early-bids"))?.clear()?;
        ctx.state(&ValueStateDescriptor::<(u64, i64, i64, Option<u64>)>::new("auction"))?.update(&(
            a.category,
            a.date_time,
            a.expires,
            best,
        ))?;
        ctx.register_event_timer(a.expires)
    }
    fn process2(
        &mut self,
        _key: &u64,
        b: Record<Bid>,
        ctx: &mut KeyedContext,
        _out: &mut Collector<(u64, u64, i64)>,
    ) -> Result<()> {
        let b = b.value;
        let desc = ValueStateDescriptor::<(u64, i64, i64, Option<u64>)>::new("auction");
        let mut auction = ctx.state(&desc)?;
        match auction.value()? {
            Some((category, opened, expires, best))
                if b.date_time >= opened && b.date_time <= expires && best.is_none_or(|p| b.price > p) =>
            {
                auction.update(&(category, opened, expires, Some(b.price)))?;
            }
            Some(_) => {}
            None if b.date_time + MAX_AUCTION_MS > ctx.current_watermark() => {
                ctx.state(&ListStateDescriptor::<(i64, u64)>::new("early-bids"))?.add(&(b.date_time, b.price))?;
                // Its auction opened before the bid, so by then it has come and gone.
                ctx.register_event_timer(b.date_time + MAX_AUCTION_MS + 1)?;
            }
            // A bid for an auction that already closed.
            None => {}
        }
        Ok(())
    }
    fn on_timer(
        &mut self,
        _key: &u64,
        timer: FiredTimer,
        ctx: &mut KeyedContext,
        out: &mut Collector<(u64, u64, i64)>,
    ) -> Result<()> {
        let desc = ValueStateDescriptor::<(u64, i64, i64, Option<u64>)>::new("auction");
        if let Some((category, _, expires, best)) = ctx.state(&desc)?.value()? {
            if expires == timer.ts {
                if let Some(price) = best {
                    out.collect((category, price, expires));
                }
                ctx.state(&desc)?.clear()?;
            }
        } else {
            ctx.state(&ListStateDescriptor::<(i64, u64)>::new("early-bids"))?.clear()?;
        }
        Ok(())
    }
}

/// q4, step two: the running average of winning prices per category, updated in the order the
/// auctions closed (event time, then price), so that the updates do not depend on the order in
/// which parallel subtasks deliver the winners.
#[derive(Clone)]
pub(crate) struct AvgPrice;

impl KeyedOperator for AvgPrice {
    type Key = u64;
    type In = (u64, u64, i64);
    type Out = (u64, u64);
    fn process(
        &mut self,
        _category: &u64,
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
        category: &u64,
        timer: FiredTimer,
        ctx: &mut KeyedContext,
        out: &mut Collector<(u64, u64)>,
    ) -> Result<()> {
        let mut closed = ctx.state(&ListStateDescriptor::<(i64, u64)>::new("closed"))?.get()?;
        closed.sort_unstable();
        let (due, later): (Vec<_>, Vec<_>) = closed.into_iter().partition(|(t, _)| *t <= timer.ts);
        let totals = ValueStateDescriptor::<(u64, u64)>::new("sum-count");
        let (mut sum, mut count) = ctx.state(&totals)?.value()?.unwrap_or((0, 0));
        for (_, price) in due {
            sum += price;
            count += 1;
            out.collect((*category, sum / count));
        }
        ctx.state(&totals)?.update(&(sum, count))?;
        ctx.state(&ListStateDescriptor::<(i64, u64)>::new("closed"))?.update(&later)
    }
}

/// Per window (by its end), the rows with the highest value seen so far, from
/// `(window_end, (value, row))` records; emitted when the watermark passes the window. Used by
/// q5 (hot auctions) and q7 (highest bid).
#[derive(Clone)]
pub(crate) struct TopPerWindow<T>(std::marker::PhantomData<fn(T)>);

impl<T> TopPerWindow<T> {
    pub(crate) fn new() -> Self {
        TopPerWindow(std::marker::PhantomData)
    }
}

impl<T: Data + Ord> KeyedOperator for TopPerWindow<T> {
    type Key = i64;
    type In = (i64, (u64, T));
    type Out = (i64, T);
    fn process(
        &mut self,
        window_end: &i64,
        r: Record<(i64, (u64, T))>,
        ctx: &mut KeyedContext,
        _out: &mut Collector<(i64, T)>,
    ) -> Result<()> {
        let (value, row) = r.value.1;
        let desc = ValueStateDescriptor::<(u64, Vec<T>)>::new("top");
        let mut top = ctx.state(&desc)?;
        let next = match top.value()? {
            None => Some((value, vec![row])),
            Some((best, _)) if value > best => Some((value, vec![row])),
            Some((best, mut rows)) if value == best => {
                rows.push(row);
                Some((best, rows))
            }
            Some(_) => None,
        };
        if let Some(next) = next {
            top.update(&next)?;
        }
        ctx.register_event_timer(*window_end - 1)
    }
    fn on_timer(
        &mut self,
        window_end: &i64,
        _timer: FiredTimer,
        ctx: &mut KeyedContext,
        out: &mut Collector<(i64, T)>,
    ) -> Result<()> {
        let desc = ValueStateDescriptor::<(u64, Vec<T>)>::new("top");
        if let Some((_, mut rows)) = ctx.state(&desc)?.value()? {
            rows.sort();
            for row in rows {
                out.collect((*window_end, row));
            }
        }
        ctx.state(&desc)?.clear()
    }
}

/// q8: people who opened an auction in the 10 s window they registered in.
#[derive(Clone)]
pub(crate) struct Q8Join;

const Q8_WINDOW_MS: i64 = 10_000;

impl KeyedCoOperator for Q8Join {
    type Key = u64;
    type In1 = Person;
    type In2 = Auction;
    type Out = (u64, String, i64);
    fn process1(
        &mut self,
        _key: &u64,
        p: Record<Person>,
        ctx: &mut KeyedContext,
        _out: &mut Collector<(u64, String, i64)>,
    ) -> Result<()> {
        let start = p.value.date_time - p.value.date_time.rem_euclid(Q8_WINDOW_MS);
        let ns = start.to_be_bytes();
        ctx.state(&ValueStateDescriptor::<String>::new("person"))?.in_namespace(&ns).update(&p.value.name)?;
        ctx.register_timer_in(TimeDomain::EventTime, start + Q8_WINDOW_MS - 1, &ns)
    }
    fn process2(
        &mut self,
        _key: &u64,
        a: Record<Auction>,
        ctx: &mut KeyedContext,
        _out: &mut Collector<(u64, String, i64)>,
    ) -> Result<()> {
        let start = a.value.date_time - a.value.date_time.rem_euclid(Q8_WINDOW_MS);
        let ns = start.to_be_bytes();
        let mut seen = ctx.state(&ValueStateDescriptor::<bool>::new("sold"))?.in_namespace(&ns);
        if seen.value()?.is_none() {
            seen.update(&true)?;
            ctx.register_timer_in(TimeDomain::EventTime, start + Q8_WINDOW_MS - 1, &ns)?;
        }
        Ok(())
    }
    fn on_timer(
        &mut self,
        person: &u64,
        timer: FiredTimer,
        ctx: &mut KeyedContext,
        out: &mut Collector<(u64, String, i64)>,
    ) -> Result<()> {
        let ns = timer.namespace;
        let name = ctx.state(&ValueStateDescriptor::<String>::new("person"))?.in_namespace(&ns).value()?;
        let sold = ctx.state(&ValueStateDescriptor::<bool>::new("sold"))?.in_namespace(&ns).value()?;
        if let (Some(name), Some(true)) = (name, sold) {
            out.collect((*person, name, timer.ts + 1 - Q8_WINDOW_MS));
        }
        ctx.state(&ValueStateDescriptor::<String>::new("person"))?.in_namespace(&ns).clear()?;
        ctx.state(&ValueStateDescriptor::<bool>::new("sold"))?.in_namespace(&ns).clear()
    }
}

/// Keeps each bid under its own key (so state grows with the input) and passes its auction on.
#[derive(Clone, Default)]
pub(crate) struct StoreBids {
    state_bytes: Option<crate::runtime::Counter>,
    buf: Vec<u8>,
}

impl KeyedOperator for StoreBids {
    type Key = (u64, u64, i64);
    type In = Bid;
    type Out = u64;
    fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        self.state_bytes = Some(ctx.counter("state_bytes"));
        Ok(())
    }
    fn process(
        &mut self,
        _key: &(u64, u64, i64),
        b: Record<Bid>,
        ctx: &mut KeyedContext,
        out: &mut Collector<u64>,
    ) -> Result<()> {
        ctx.state(&ValueStateDescriptor::<Bid>::new("bids"))?.update(&b.value)?;
        // The state's logical size: what the bid takes encoded, before RocksDB compresses it.
        self.buf.clear();
        crate::state::codec::encode_into(&b.value, &mut self.buf)?;
        if let Some(c) = &self.state_bytes {
            c.add(self.buf.len() as u64);
        }
        out.collect(b.value.auction);
        Ok(())
    }
}
