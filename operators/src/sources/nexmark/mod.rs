//! A deterministic Nexmark event generator (people, auctions and bids in the ratio 1:3:46).
//!
//! Event `n` is a pure function of the seed and `n`, so the generated stream is the same for any
//! parallelism (subtask `i` of `p` produces the events with `n % p == i`). Event time advances by
//! a fixed step per event (the reference generator's inter-event delay), optionally with bounded
//! random disorder.
//!
//! Two generators share the event model: [`Generator::Reference`] (the default) follows the
//! distributions of the reference Nexmark generator that Flink's, Beam's, RisingWave's and
//! Feldera's published numbers use; [`Generator::Light`] is weir's first, cheaper one.

#![allow(missing_docs)] // Field names and meanings follow the Nexmark benchmark schema.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use weir_runtime::{Source, SourceOutput, SourcePoll, SourceReader, TaskInfo};

/// A person registering.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Person {
    pub id: u64,
    pub name: String,
    pub email_address: String,
    pub credit_card: String,
    pub city: String,
    pub state: String,
    pub date_time: i64,
    pub extra: String,
}

/// An auction opening.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Auction {
    pub id: u64,
    pub item_name: String,
    pub description: String,
    pub initial_bid: u64,
    pub reserve: u64,
    pub date_time: i64,
    pub expires: i64,
    pub seller: u64,
    pub category: u64,
    pub extra: String,
}

/// A bid on an auction.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Bid {
    pub auction: u64,
    pub bidder: u64,
    pub price: u64,
    pub channel: String,
    pub url: String,
    pub date_time: i64,
    pub extra: String,
}

/// One Nexmark event.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Person(Person),
    Auction(Auction),
    Bid(Bid),
}

impl Event {
    /// The event time in epoch milliseconds.
    pub fn date_time(&self) -> i64 {
        match self {
            Event::Person(p) => p.date_time,
            Event::Auction(a) => a.date_time,
            Event::Bid(b) => b.date_time,
        }
    }
}
mod light;
mod reference;

pub use reference::ReferenceParams;

/// Events per epoch of the 1:3:46 mix, and the people and auctions at its start.
const PROPORTION: u64 = 50;
const PERSONS: u64 = 1;
const AUCTIONS: u64 = 3;
const FIRST_PERSON_ID: u64 = 1000;
const FIRST_AUCTION_ID: u64 = 1000;

/// Which generator makes the events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Generator {
    /// The reference Nexmark generator's distributions: events padded to average sizes of 200
    /// (person), 500 (auction) and 100 (bid) bytes, hot auctions, sellers and bidders, auction
    /// lengths from the event rate, 10 000 channels.
    #[default]
    Reference,
    /// weir's first generator: short strings (bids of about 70 bytes), its own hot-key ratios.
    Light,
}

/// Settings of the generator.
#[derive(Clone, Debug)]
pub struct NexmarkConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Stop after this many events (or bids, with `bids_only`); `None` runs forever.
    pub limit: Option<u64>,
    /// Emit only bids (their ids and times still follow the full event sequence).
    pub bids_only: bool,
    /// Wall-clock events per second over all subtasks; `None` is as fast as possible.
    pub rate: Option<u64>,
    /// Event time of the first event (epoch ms).
    pub base_time: i64,
    /// Event-time step between consecutive events, in nanoseconds (fine enough for live event time at millions of events per second).
    pub event_step_ns: u64,
    /// Largest random amount (ms) an event's time is moved back, making the stream out of order.
    pub max_out_of_order_ms: u64,
    /// Which generator.
    pub generator: Generator,
    /// The reference generator's parameters.
    pub reference: ReferenceParams,
}

impl NexmarkConfig {
    /// The event-time step for `events_per_second` of event time (the reference generator's
    /// `firstEventRate`; its default, 10 000, is [`NexmarkConfig::default`]'s step).
    pub fn step_for_rate(events_per_second: u64) -> u64 {
        1_000_000_000 / events_per_second.max(1)
    }

    /// Event time of event `n` before any disorder.
    pub fn event_time(&self, n: u64) -> i64 {
        self.base_time + (n as u128 * self.event_step_ns as u128 / 1_000_000) as i64
    }
}

impl Default for NexmarkConfig {
    fn default() -> Self {
        NexmarkConfig {
            seed: 42,
            limit: None,
            bids_only: false,
            rate: None,
            base_time: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            event_step_ns: 100_000,
            max_out_of_order_ms: 0,
            generator: Generator::Reference,
            reference: ReferenceParams::default(),
        }
    }
}

/// Generates event number `n`.
pub fn generate_event(cfg: &NexmarkConfig, n: u64) -> Event {
    match cfg.generator {
        Generator::Reference => reference::generate(cfg, n),
        Generator::Light => light::generate(cfg, n),
    }
}

/// Event number of the `k`-th bid (bids fill offsets 4..50 of every 50 events).
pub fn bid_event_number(k: u64) -> u64 {
    let per_epoch = PROPORTION - PERSONS - AUCTIONS;
    (k / per_epoch) * PROPORTION + PERSONS + AUCTIONS + k % per_epoch
}

/// The generator as a source of [`Event`]s.
#[derive(Clone, Debug)]
pub struct NexmarkSource {
    cfg: NexmarkConfig,
}

impl NexmarkSource {
    /// A generator with these settings.
    pub fn new(cfg: NexmarkConfig) -> Self {
        NexmarkSource { cfg }
    }
}

#[derive(Serialize, Deserialize)]
struct NexmarkState {
    subtask: usize,
    parallelism: usize,
    next: u64,
}

/// The generator's checkpointed state as the inspection tools show it: the next event index.
pub(crate) fn position(reader: &serde_json::Value) -> Option<u64> {
    serde_json::from_value::<NexmarkState>(reader.clone()).ok().map(|s| s.next)
}

struct NexmarkReader {
    cfg: NexmarkConfig,
    subtask: usize,
    parallelism: usize,
    /// Index (event or bid) this subtask produces next.
    next: u64,
    step: u64,
    started: Instant,
    emitted: u64,
    per_subtask_rate: Option<f64>,
}

impl Source<Event> for NexmarkSource {
    fn create_reader(&self, info: &TaskInfo) -> Result<Box<dyn SourceReader<Event>>> {
        Ok(Box::new(NexmarkReader {
            cfg: self.cfg.clone(),
            subtask: info.subtask,
            parallelism: info.parallelism,
            next: info.subtask as u64,
            step: info.parallelism as u64,
            started: Instant::now(),
            emitted: 0,
            per_subtask_rate: self.cfg.rate.map(|r| r as f64 / info.parallelism as f64),
        }))
    }
}

impl SourceReader<Event> for NexmarkReader {
    fn poll(&mut self, out: &mut SourceOutput<'_, Event>) -> Result<SourcePoll> {
        let mut budget = out.remaining() as u64;
        if let Some(rate) = self.per_subtask_rate {
            let allowed = (self.started.elapsed().as_secs_f64() * rate) as u64;
            if allowed <= self.emitted {
                let wait = ((self.emitted + 1) as f64 / rate) - self.started.elapsed().as_secs_f64();
                return Ok(SourcePoll::Idle(Duration::from_secs_f64(wait.clamp(0.0, 0.1))));
            }
            budget = budget.min(allowed - self.emitted);
        }
        for _ in 0..budget {
            if self.cfg.limit.is_some_and(|l| self.next >= l) {
                return Ok(SourcePoll::Finished);
            }
            let n = if self.cfg.bids_only { bid_event_number(self.next) } else { self.next };
            let ev = generate_event(&self.cfg, n);
            let ts = ev.date_time();
            out.collect_at(0, ev, ts);
            self.next += self.step;
            self.emitted += 1;
        }
        Ok(SourcePoll::Ready)
    }

    fn snapshot_state(&mut self, _checkpoint_id: u64) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(NexmarkState {
            subtask: self.subtask,
            parallelism: self.parallelism,
            next: self.next,
        })?)
    }

    fn restore_state(&mut self, states: Vec<serde_json::Value>) -> Result<()> {
        for st in states {
            let st: NexmarkState = serde_json::from_value(st)?;
            if st.parallelism != self.parallelism {
                anyhow::bail!(
                    "the Nexmark generator restores only at the parallelism it was checkpointed with ({}, now {})",
                    st.parallelism,
                    self.parallelism
                );
            }
            if st.subtask == self.subtask {
                self.next = st.next;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_generators_follow_the_1_3_46_mix_and_are_deterministic() {
        for generator in [Generator::Reference, Generator::Light] {
            let cfg = NexmarkConfig { generator, ..NexmarkConfig::default() };
            let (mut p, mut a, mut b) = (0, 0, 0);
            for n in 0..5_000 {
                match generate_event(&cfg, n) {
                    Event::Person(_) => p += 1,
                    Event::Auction(_) => a += 1,
                    Event::Bid(_) => b += 1,
                }
                assert_eq!(generate_event(&cfg, n), generate_event(&cfg, n));
            }
            assert_eq!((p, a, b), (100, 300, 4600), "{generator:?}");
            for k in 0..500 {
                assert!(matches!(generate_event(&cfg, bid_event_number(k)), Event::Bid(_)));
            }
        }
    }

    #[test]
    fn event_time_follows_the_rate() {
        let cfg = NexmarkConfig { event_step_ns: NexmarkConfig::step_for_rate(10_000), ..NexmarkConfig::default() };
        assert_eq!(cfg.event_time(10_000) - cfg.event_time(0), 1_000);
        assert_eq!(generate_event(&cfg, 25_000).date_time(), cfg.base_time + 2_500);
    }
}
