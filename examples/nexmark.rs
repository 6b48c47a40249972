//! The Nexmark benchmark: queries q0, q1, q2, q3, q4, q5, q7 and q8 over the built-in generator,
//! with RocksDB state and checkpoints, at several parallelisms. Each run is a child process (so
//! its peak RSS is its own); the table shows medians over the runs.
//!
//! ```text
//! cargo build --release --examples
//! target/release/examples/nexmark --events 20000000 --runs 3          # the table
//! target/release/examples/nexmark run --query q5 --events 1000000 -p 2 # one query, this process
//! ```
//!
//! Every query ends in a sink that counts its rows and adds up a hash of each, so a run also
//! says *what* it computed: the digest must not depend on the parallelism.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use weir::prelude::*;
use weir::runtime::KeyedCoOperator;

mod measure;
use measure::percentile;

// The allocator matters for a runtime that moves millions of small records a second: mimalloc
// halves the time glibc's malloc takes here (see the README's performance notes).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Nexmark queries on weir: events/s, events/s per core, peak RSS and checkpoint durations.
#[derive(Parser, Debug)]
#[command(name = "nexmark", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs one query in this process and prints a JSON summary line.
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Queries to run.
    #[arg(long, value_delimiter = ',', default_value = "q0,q1,q2,q3,q4,q5,q7,q8")]
    queries: Vec<Query>,
    /// Parallelisms to run each query at.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    parallelism: Vec<usize>,
    /// Generated events per run (people, auctions and bids, 1:3:46).
    #[arg(long, default_value_t = 20_000_000)]
    events: u64,
    /// Runs per configuration; the table shows medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Checkpoint interval of every run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    checkpoint_interval: Duration,
    /// Memory budget handed to every run.
    #[arg(long, value_name = "BYTES", default_value = "1GiB")]
    memory_budget: String,
    /// Work directory for checkpoints and state [default: a temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The query.
    #[arg(long)]
    query: Query,
    /// Generated events.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    job: JobArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Query {
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
    fn name(self) -> &'static str {
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
    fn what(self) -> &'static str {
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
struct Digest(Arc<(AtomicU64, AtomicU64)>);

impl Digest {
    fn get(&self) -> (u64, u64) {
        (self.0 .0.load(Ordering::Relaxed), self.0 .1.load(Ordering::Relaxed))
    }
}

/// The sink every query ends in (Nexmark's "blackhole", but checkable).
#[derive(Clone)]
struct DigestSink<T> {
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

/// q3 output: who sells what, for sellers in some states.
#[derive(Clone, Debug, Hash, Serialize, Deserialize)]
struct Q3Row {
    name: String,
    city: String,
    state: String,
    auction: u64,
}

/// q3: auctions of category 10 joined with their sellers from OR, ID or CA, incrementally: the
/// person's fields are kept; auctions that arrive before their seller wait in a list.
#[derive(Clone)]
struct Q3Join;

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
struct Q4Winner;

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
struct AvgPrice;

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
struct TopPerWindow<T>(std::marker::PhantomData<fn(T)>);

impl<T> TopPerWindow<T> {
    fn new() -> Self {
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
struct Q8Join;

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
struct StoreBids {
    state_bytes: Option<weir::runtime::Counter>,
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
        weir::state::codec::encode_into(&b.value, &mut self.buf)?;
        if let Some(c) = &self.state_bytes {
            c.add(self.buf.len() as u64);
        }
        out.collect(b.value.auction);
        Ok(())
    }
}

/// Builds query `q` on `events` and ends it in a digest sink.
fn build(q: Query, events: &DataStream<Event>, digest: &Digest) {
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

/// What a child run reports on its last stdout line.
#[derive(Debug, Serialize, Deserialize)]
struct Summary {
    query: String,
    parallelism: usize,
    events: u64,
    seconds: f64,
    rows: u64,
    digest: String,
    /// Logical bytes of keyed state written (the `store` query).
    state_bytes: u64,
}

fn run_query(args: RunArgs) -> Result<()> {
    let cfg = NexmarkConfig { seed: args.seed, limit: Some(args.events), ..NexmarkConfig::default() };
    let env = StreamEnv::new(args.job.clone());
    // Two source subtasks drift apart on two shared cores; alignment keeps windows and joins from
    // holding state for the skew.
    let strategy = WatermarkStrategy::for_monotonous_timestamps()
        .with_timestamp_assigner(|e: &Event| e.date_time())
        .with_watermark_alignment(Duration::from_secs(2));
    let events = env.add_source("nexmark", NexmarkSource::new(cfg), strategy).uid("nexmark");
    let digest = Digest::default();
    build(args.query, &events, &digest);
    let started = Instant::now();
    let result = env.execute(&format!("nexmark-{}", args.query.name()))?;
    let seconds = started.elapsed().as_secs_f64();
    let generated = result.counter("nexmark.records_out");
    if generated != args.events {
        bail!("the generator emitted {generated} events, not {}", args.events);
    }
    let (rows, sum) = digest.get();
    let summary = Summary {
        query: args.query.name().into(),
        parallelism: args.job.parallelism,
        events: generated,
        seconds,
        rows,
        digest: format!("{sum:016x}"),
        state_bytes: result.counter("store.state_bytes"),
    };
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

struct Child {
    summary: Summary,
    max_rss_kib: i64,
    checkpoint_ms: Vec<f64>,
}

fn run_child(cmd: &mut Command) -> Result<Child> {
    let out_file = tempfile::NamedTempFile::new()?;
    let err_file = tempfile::NamedTempFile::new()?;
    let child = cmd.stdout(out_file.reopen()?).stderr(err_file.reopen()?).spawn().context("starting a run")?;
    let run = measure::wait_measured(&child).context("waiting for a run")?;
    let stdout = std::fs::read_to_string(out_file.path())?;
    let stderr = std::fs::read_to_string(err_file.path())?;
    if !run.status.success() {
        bail!("the run failed with {}: {stderr}", run.status);
    }
    let line = stdout.lines().last().context("the run printed no summary")?;
    let summary: Summary = serde_json::from_str(line).with_context(|| format!("summary line {line:?}"))?;
    let checkpoint_ms = stderr
        .lines()
        .filter(|l| l.contains("checkpoint complete") && !l.contains("savepoint"))
        .filter_map(|l| {
            let rest = &l[l.find("duration_ms=")? + "duration_ms=".len()..];
            rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
        .collect();
    Ok(Child { summary, max_rss_kib: run.max_rss_kib, checkpoint_ms })
}

fn bench(b: BenchArgs) -> Result<()> {
    let exe = std::env::current_exe()?;
    let tmp = tempfile::tempdir()?;
    let dir = b.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "| query | what | p | events | median s | events/s | events/s per core | peak RSS MiB | checkpoints | checkpoint p50 ms | checkpoint p99 ms | rows | digest | state MiB |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    let mut failures = Vec::new();
    for &q in &b.queries {
        let mut digests = Vec::new();
        for &p in &b.parallelism {
            let (mut secs, mut rss, mut chk) = (Vec::new(), Vec::new(), Vec::new());
            let mut last = None;
            for r in 0..b.runs {
                let work = dir.join(format!("{}-p{p}-{r}", q.name()));
                let mut cmd = Command::new(&exe);
                cmd.args(["run", "--query", q.name(), "--events", &b.events.to_string(), "-p", &p.to_string()])
                    .arg("--checkpoint-dir")
                    .arg(work.join("chk"))
                    .arg("--state-dir")
                    .arg(work.join("state"))
                    .args(["--checkpoint-interval", &format!("{}ms", b.checkpoint_interval.as_millis())])
                    .args(["--memory-budget", &b.memory_budget, "--progress-interval", "0s"])
                    .env("RUST_LOG", "info");
                let child = run_child(&mut cmd).with_context(|| format!("{} at parallelism {p}", q.name()))?;
                let _ = std::fs::remove_dir_all(&work);
                secs.push(child.summary.seconds);
                rss.push(child.max_rss_kib as f64 / 1024.0);
                chk.extend(child.checkpoint_ms);
                last = Some(child.summary);
            }
            let s = last.context("no run")?;
            let median = percentile(secs, 0.5).unwrap_or(f64::NAN);
            let rate = s.events as f64 / median;
            let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
            println!(
                "| {} | {} | {p} | {} | {median:.2} | {rate:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} |",
                q.name(),
                q.what(),
                s.events,
                rate / p.min(cores) as f64,
                percentile(rss, 0.5).unwrap_or(f64::NAN),
                chk.len(),
                fmt(percentile(chk.clone(), 0.5)),
                fmt(percentile(chk, 0.99)),
                s.rows,
                s.digest,
                if s.state_bytes > 0 {
                    format!("{:.0}", s.state_bytes as f64 / (1u64 << 20) as f64)
                } else {
                    "-".into()
                },
            );
            digests.push((p, s.rows, s.digest));
        }
        if digests.windows(2).any(|w| (w[0].1, &w[0].2) != (w[1].1, &w[1].2)) {
            failures.push(format!("{}: results differ between parallelisms: {digests:?}", q.name()));
        }
    }
    println!();
    println!("machine: {} cores, {}", cores, machine());
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// The CPU model, for the table's caption.
fn machine() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Run(args)) => {
            init_logging();
            run_query(args)
        }
        None => bench(cli.bench),
    }
}
