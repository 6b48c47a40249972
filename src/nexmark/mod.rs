//! Nexmark, the streaming benchmark the field runs (Flink, Arroyo, RisingWave, Feldera): the
//! event model and generator (from `weir-operators`), and the queries as weir jobs, each ending in
//! a sink that counts its rows and adds up a hash of each, so a run also says *what* it computed.
//!
//! ```
//! use weir::nexmark::{build, Digest, NexmarkConfig, NexmarkSource, Query, QueryOptions};
//! use weir::prelude::*;
//! let env = StreamEnv::new(JobArgs::default());
//! let cfg = NexmarkConfig { limit: Some(10_000), ..NexmarkConfig::default() };
//! let events = env.add_source("nexmark", NexmarkSource::new(cfg), WatermarkStrategy::for_monotonous_timestamps());
//! let digest = Digest::default();
//! build(Query::Q0, &events, &digest, &QueryOptions::default()).unwrap();
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
pub use weir_operators::sources::nexmark::{Generator, ReferenceParams};
pub use weir_operators::sources::{NexmarkConfig, NexmarkSource};

mod files;
mod joins;
mod queries;
mod ranking;
mod stateless;
mod stats;
mod winners;
pub use files::{q10_row, side_input_value, write_side_input, Q10Row, SIDE_INPUT_KEYS};
use queries::{Q3Join, Q8Join, StoreBids, TopPerWindow};
pub use ranking::{tie_break, top_order, TopChange};
pub use stateless::{bid_time_type, channel_id, count_char, q14_row, url_dirs, Q14Row};
pub use stats::{day, hour_minute, price_rank, AuctionStats, BidStats, Q17Row};

/// The queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Query {
    Q0,
    Q1,
    Q2,
    Q3,
    Q4,
    Q5,
    Q6,
    Q7,
    Q8,
    Q9,
    Q10,
    Q11,
    Q12,
    Q13,
    Q14,
    Q15,
    Q16,
    Q17,
    Q18,
    Q19,
    Q20,
    Q21,
    Q22,
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
            Query::Q6 => "q6",
            Query::Q7 => "q7",
            Query::Q8 => "q8",
            Query::Q9 => "q9",
            Query::Q10 => "q10",
            Query::Q11 => "q11",
            Query::Q12 => "q12",
            Query::Q13 => "q13",
            Query::Q14 => "q14",
            Query::Q15 => "q15",
            Query::Q16 => "q16",
            Query::Q17 => "q17",
            Query::Q18 => "q18",
            Query::Q19 => "q19",
            Query::Q20 => "q20",
            Query::Q21 => "q21",
            Query::Q22 => "q22",
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
            Query::Q6 => "avg price of a seller's last 10",
            Query::Q7 => "highest bid per window",
            Query::Q8 => "new users, windowed join",
            Query::Q9 => "winning bids",
            Query::Q10 => "log to partitioned files",
            Query::Q11 => "user sessions",
            Query::Q12 => "processing-time windows",
            Query::Q13 => "side-input join",
            Query::Q14 => "calculation, UDF",
            Query::Q15 => "daily bid statistics",
            Query::Q16 => "daily channel statistics",
            Query::Q17 => "daily auction statistics",
            Query::Q18 => "last bid per bidder, auction",
            Query::Q19 => "top 10 bids per auction",
            Query::Q20 => "bids of category-10 auctions",
            Query::Q21 => "channel id",
            Query::Q22 => "URL directories",
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

/// How a sink counts a row: rows it stands for, and what it adds to the digest.
type Weigh<T> = fn(&T) -> (u64, u64);

fn xxh3<T: Hash>(row: &T) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    row.hash(&mut h);
    h.finish()
}

/// The sink every query ends in (Nexmark's "blackhole", but checkable).
#[derive(Clone)]
pub struct DigestSink<T> {
    digest: Digest,
    weigh: Weigh<T>,
    count: u64,
    sum: u64,
}

impl<T: Data> Operator for DigestSink<T> {
    type In = T;
    type Out = ();
    fn process(&mut self, r: Record<T>, _ctx: &mut OperatorContext, _out: &mut Collector<()>) -> Result<()> {
        let (rows, hash) = (self.weigh)(&r.value);
        self.count += rows;
        self.sum = self.sum.wrapping_add(hash);
        Ok(())
    }
    fn end_input(&mut self, _ctx: &mut OperatorContext, _out: &mut Collector<()>) -> Result<()> {
        self.digest.0 .0.fetch_add(self.count, Ordering::Relaxed);
        self.digest.0 .1.fetch_add(self.sum, Ordering::Relaxed);
        Ok(())
    }
}

/// Ends `stream` in a digest sink: each row counts once, with its hash.
fn sink<T: Data + Hash>(stream: &DataStream<T>, digest: &Digest) {
    sink_weighed(stream, digest, |row| (1, xxh3(row)))
}

/// Ends `stream` in a digest sink that counts rows with `weigh` (q12: a count of bids stands
/// for that many bids, so that the digest does not depend on how processing time cut them).
fn sink_weighed<T: Data>(stream: &DataStream<T>, digest: &Digest, weigh: Weigh<T>) {
    let op = DigestSink { digest: digest.clone(), weigh, count: 0, sum: 0 };
    stream.process("sink", op).uid("sink");
}

/// q12's digest of one row `(bidder, bids, window start, window end)`: the bids, each adding
/// the bidder's hash; over a run, the sum of every bidder's bids times its hash, however
/// processing time split them into windows.
pub fn q12_weight(row: &(u64, u64, i64, i64)) -> (u64, u64) {
    (row.1, row.1.wrapping_mul(xxh3(&row.0)))
}

/// Where the queries that read or write files do so.
#[derive(Clone, Debug, Default)]
pub struct QueryOptions {
    /// q10's output: CSV files under `dt=<day>/hm=<HH:mm>/` (a directory or `s3://…`).
    pub output: Option<crate::checkpoint::Location>,
    /// q13's side input, a `key,value` CSV file (see [`write_side_input`]).
    pub side_input: Option<std::path::PathBuf>,
}

/// The event stream split by kind: people, auctions and bids, each its own stream.
///
/// One operator moves each event to the stream of its kind (bids on its main output, people and
/// auctions on side outputs). Separate filters on the event stream would each get a copy of
/// every event: with a query reading two kinds, every bid would be copied to be dropped.
pub struct Events {
    pub persons: DataStream<Person>,
    pub auctions: DataStream<Auction>,
    pub bids: DataStream<Bid>,
}

impl Events {
    /// Splits `events` (one operator, chained to the source).
    pub fn split(events: &DataStream<Event>) -> Events {
        let (persons, auctions) = (OutputTag::new("persons"), OutputTag::new("auctions"));
        let split = SplitEvents { persons: persons.clone(), auctions: auctions.clone() };
        let bids = events.process("split", split).uid("split");
        Events { persons: bids.side_output(&persons), auctions: bids.side_output(&auctions), bids }
    }
}

#[derive(Clone)]
struct SplitEvents {
    persons: OutputTag<Person>,
    auctions: OutputTag<Auction>,
}

impl Operator for SplitEvents {
    type In = Event;
    type Out = Bid;
    fn process(&mut self, r: Record<Event>, _ctx: &mut OperatorContext, out: &mut Collector<Bid>) -> Result<()> {
        match r.value {
            Event::Bid(b) => out.collect(b),
            Event::Auction(a) => out.side(&self.auctions, a),
            Event::Person(p) => out.side(&self.persons, p),
        }
        Ok(())
    }
}

fn bids(events: &Events) -> DataStream<Bid> {
    events.bids.clone()
}

/// Builds query `q` on `events` and ends it in a digest sink (q10 also writes files).
pub fn build(q: Query, events: &DataStream<Event>, digest: &Digest, opts: &QueryOptions) -> Result<()> {
    let events = &Events::split(events);
    match q {
        Query::Q0 => sink(&bids(events), digest),
        Query::Q1 => {
            let rows = bids(events)
                .map(|b: Bid| (b.auction, b.bidder, b.price * 908 / 1000, b.date_time))
                .uid("dollars-to-euros");
            sink(&rows, digest)
        }
        Query::Q2 => {
            let rows = bids(events)
                .flat_map(|b: Bid| b.auction.is_multiple_of(123).then_some((b.auction, b.price)))
                .uid("filter");
            sink(&rows, digest)
        }
        Query::Q3 => {
            let persons =
                events.persons.filter(|p: &Person| ["OR", "ID", "CA"].contains(&p.state.as_str())).uid("persons");
            let auctions = events.auctions.filter(|a: &Auction| a.category == 10).uid("auctions");
            let rows = persons
                .key_by(|p: &Person| p.id)
                .connect(&auctions.key_by(|a: &Auction| a.seller))
                .transform("join", |_| Q3Join)
                .uid("join");
            sink(&rows, digest)
        }
        Query::Q4 => winners::q4(events, digest),
        Query::Q6 => winners::q6(events, digest),
        Query::Q9 => winners::q9(events, digest),
        Query::Q11 => {
            let rows = bids(events)
                .key_by(|b: &Bid| b.bidder)
                .window(EventTimeSessionWindows::with_gap(Duration::from_secs(10)))
                .aggregate_with(Count::default(), |bidder: &u64, w: &TimeWindow, n: u64, out| {
                    out.collect((*bidder, n, w.start, w.end))
                })
                .uid("sessions");
            sink(&rows, digest)
        }
        Query::Q10 => files::q10(events, digest, opts)?,
        Query::Q12 => {
            let rows = bids(events)
                .key_by(|b: &Bid| b.bidder)
                .window(TumblingProcessingTimeWindows::of(Duration::from_secs(10)))
                .aggregate_with(Count::default(), |bidder: &u64, w: &TimeWindow, n: u64, out| {
                    out.collect((*bidder, n, w.start, w.end))
                })
                .uid("processing-time-counts");
            sink_weighed(&rows, digest, q12_weight)
        }
        Query::Q13 => files::q13(events, digest, opts)?,
        Query::Q14 => stateless::q14(events, digest),
        Query::Q15 => stats::q15(events, digest),
        Query::Q16 => stats::q16(events, digest),
        Query::Q17 => stats::q17(events, digest),
        Query::Q18 => ranking::q18(events, digest),
        Query::Q19 => ranking::q19(events, digest),
        Query::Q20 => joins::q20(events, digest),
        Query::Q21 => stateless::q21(events, digest),
        Query::Q22 => stateless::q22(events, digest),
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
            let rows = events
                .persons
                .key_by(|p: &Person| p.id)
                .connect(&events.auctions.key_by(|a: &Auction| a.seller))
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
    Ok(())
}
