//! Nexmark, the streaming benchmark the field runs (Flink, Arroyo, RisingWave, Feldera): the
//! event model and generator (from `weir-operators`), and the queries as weir jobs, each ending in
//! a sink that counts its rows and adds up a hash of each, so a run also says *what* it computed.
//!
//! ```
//! use weir::nexmark::{build, Digest, NexmarkConfig, NexmarkSource, Query};
//! use weir::prelude::*;
//! let env = StreamEnv::new(JobArgs::default());
//! let cfg = NexmarkConfig { limit: Some(10_000), ..NexmarkConfig::default() };
//! let events = env.add_source("nexmark", NexmarkSource::new(cfg), WatermarkStrategy::for_monotonous_timestamps());
//! let digest = Digest::default();
//! build(Query::Q0, &events, &digest);
//! env.execute("q0").unwrap();
//! assert!(digest.get().0 > 0, "q0 passes every bid on");
//! ```

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::prelude::*;
pub use weir_operators::sources::nexmark::{Auction, Bid, Event, Person};
pub use weir_operators::sources::{NexmarkConfig, NexmarkSource};

mod queries;
use queries::{AvgPrice, Q3Join, Q4Winner, Q8Join, StoreBids, TopPerWindow};

/// The queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Query {
    Q0,
    Q1,
    Q2,
    Q3,
    Q4,
    Q5,
    Q7,
    Q8,
    /// Not a Nexmark query: keeps every bid in keyed state, for state far larger than
    /// --memory-budget (peak RSS must stay under the budget; RocksDB spills to disk).
    Store,
}

impl Query {
    /// The query's name (`q0`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Query::Q0 => "q0",
            Query::Q1 => "q1",
            Query::Q2 => "q2",
            Query::Q3 => "q3",
            Query::Q4 => "q4",
            Query::Q5 => "q5",
            Query::Q7 => "q7",
            Query::Q8 => "q8",
            Query::Store => "store",
        }
    }
    /// What the query computes, in a few words.
    pub fn what(self) -> &'static str {
        match self {
            Query::Q0 => "pass-through",
            Query::Q1 => "currency conversion",
            Query::Q2 => "filter",
            Query::Q3 => "person-auction join",
            Query::Q4 => "avg price per category",
            Query::Q5 => "hot items, sliding",
            Query::Q7 => "highest bid per window",
            Query::Q8 => "new users, windowed join",
            Query::Store => "every bid in keyed state",
        }
    }
}

/// Row count and an order-independent hash of the rows a sink received.
#[derive(Clone, Default)]
pub struct Digest(Arc<(AtomicU64, AtomicU64)>);

impl Digest {
    /// Rows received and the sum of their hashes.
    pub fn get(&self) -> (u64, u64) {
        (self.0 .0.load(Ordering::Relaxed), self.0 .1.load(Ordering::Relaxed))
    }
}

/// The sink every query ends in (Nexmark's "blackhole", but checkable).
#[derive(Clone)]
pub struct DigestSink<T> {
    digest: Digest,
    count: u64,
    sum: u64,
    _t: std::marker::PhantomData<fn(T)>,
}

impl<T: Data + Hash> Operator for DigestSink<T> {
    type In = T;
    type Out = ();
    fn process(&mut self, r: Record<T>, _ctx: &mut OperatorContext, _out: &mut Collector<()>) -> Result<()> {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        r.value.hash(&mut h);
        self.count += 1;
        self.sum = self.sum.wrapping_add(h.finish());
        Ok(())
    }
    fn end_input(&mut self, _ctx: &mut OperatorContext, _out: &mut Collector<()>) -> Result<()> {
        self.digest.0 .0.fetch_add(self.count, Ordering::Relaxed);
        self.digest.0 .1.fetch_add(self.sum, Ordering::Relaxed);
        Ok(())
    }
}

fn sink<T: Data + Hash>(stream: &DataStream<T>, digest: &Digest) {
    let op = DigestSink { digest: digest.clone(), count: 0, sum: 0, _t: std::marker::PhantomData };
    stream.process("sink", op).uid("sink");
}

fn bids(events: &DataStream<Event>) -> DataStream<Bid> {
    events
        .flat_map(|e: Event| match e {
            Event::Bid(b) => Some(b),
            _ => None,
        })
        .uid("bids")
}

/// Builds query `q` on `events` and ends it in a digest sink.
pub fn build(q: Query, events: &DataStream<Event>, digest: &Digest) {
    match q {
        Query::Q0 => sink(&bids(events), digest),
        Query::Q1 => {
            let rows = bids(events)
                .map(|b: Bid| (b.auction, b.bidder, b.price * 908 / 1000, b.date_time))
                .uid("dollars-to-euros");
            sink(&rows, digest)
        }
        Query::Q2 => {
            let rows = events
                .flat_map(|e: Event| match e {
                    Event::Bid(b) if b.auction % 123 == 0 => Some((b.auction, b.price)),
                    _ => None,
                })
                .uid("filter");
            sink(&rows, digest)
        }
        Query::Q3 => {
            let persons = events
                .flat_map(|e: Event| match e {
                    Event::Person(p) if ["OR", "ID", "CA"].contains(&p.state.as_str()) => Some(p),
                    _ => None,
                })
                .uid("persons");
            let auctions = events
                .flat_map(|e: Event| match e {
                    Event::Auction(a) if a.category == 10 => Some(a),
                    _ => None,
                })
                .uid("auctions");
            let rows = persons
                .key_by(|p: &Person| p.id)
                .connect(&auctions.key_by(|a: &Auction| a.seller))
                .transform("join", |_| Q3Join)
                .uid("join");
            sink(&rows, digest)
        }
        Query::Q4 => {
            let auctions = events
                .flat_map(|e: Event| match e {
                    Event::Auction(a) => Some(a),
                    _ => None,
                })
                .uid("auctions");
            let winners = auctions
                .key_by(|a: &Auction| a.id)
                .connect(&bids(events).key_by(|b: &Bid| b.auction))
                .transform("winning-bids", |_| Q4Winner)
                .uid("winning-bids");
            let rows = winners.key_by(|w: &(u64, u64, i64)| w.0).process("average", AvgPrice).uid("average");
            sink(&rows, digest)
        }
        Query::Q5 => {
            let counts = bids(events)
                .key_by(|b: &Bid| b.auction)
                .window(SlidingEventTimeWindows::of(Duration::from_secs(10), Duration::from_secs(2)))
                .aggregate_with(Count::default(), |auction: &u64, w: &TimeWindow, n: u64, out| {
                    out.collect((w.end, (n, *auction)))
                })
                .uid("counts");
            let rows =
                counts.key_by(|r: &(i64, (u64, u64))| r.0).process("hot-items", TopPerWindow::new()).uid("hot-items");
            sink(&rows, digest)
        }
        Query::Q7 => {
            let highest = bids(events)
                .key_by(|b: &Bid| b.auction)
                .window(TumblingEventTimeWindows::of(Duration::from_secs(10)))
                .reduce(
                    |a: &Bid, b: &Bid| if (b.price, b.bidder) > (a.price, a.bidder) { b.clone() } else { a.clone() },
                )
                .uid("highest-per-auction");
            let rows = highest
                .map(|b: Bid| {
                    let end = b.date_time - b.date_time.rem_euclid(10_000) + 10_000;
                    (end, (b.price, (b.auction, b.bidder, b.date_time)))
                })
                .key_by(|r: &(i64, (u64, (u64, u64, i64)))| r.0)
                .process("highest", TopPerWindow::new())
                .uid("highest");
            sink(&rows, digest)
        }
        Query::Q8 => {
            let persons = events
                .flat_map(|e: Event| match e {
                    Event::Person(p) => Some(p),
                    _ => None,
                })
                .uid("persons");
            let auctions = events
                .flat_map(|e: Event| match e {
                    Event::Auction(a) => Some(a),
                    _ => None,
                })
                .uid("auctions");
            let rows = persons
                .key_by(|p: &Person| p.id)
                .connect(&auctions.key_by(|a: &Auction| a.seller))
                .transform("new-users", |_| Q8Join)
                .uid("new-users");
            sink(&rows, digest)
        }
        Query::Store => {
            let rows = bids(events)
                .key_by(|b: &Bid| (b.auction, b.bidder, b.date_time))
                .process("store", StoreBids::default())
                .uid("store");
            sink(&rows, digest)
        }
    }
}
