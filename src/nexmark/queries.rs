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
