//! A deterministic Nexmark event generator (people, auctions and bids in the ratio 1:3:46).
//!
//! Event `n` is a pure function of the seed and `n`, so the generated stream is the same for any
//! parallelism (subtask `i` of `p` produces the events with `n % p == i`). Event time advances by
//! a fixed step per event, optionally with bounded random disorder.

#![allow(missing_docs)] // Field names and meanings follow the Nexmark benchmark schema.

use std::time::{Duration, Instant};

use anyhow::Result;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
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

const PROPORTION: u64 = 50;
const PERSONS: u64 = 1;
const AUCTIONS: u64 = 3;
const FIRST_PERSON_ID: u64 = 1000;
const FIRST_AUCTION_ID: u64 = 1000;
const HOT_RATIO: u64 = 100;
const IN_FLIGHT_AUCTIONS: u64 = 100;
const ACTIVE_PEOPLE: u64 = 1000;
const CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const CITIES: [&str; 6] = ["Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Seattle"];
const STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const FIRST_NAMES: [&str; 6] = ["Peter", "Paul", "Luke", "John", "Saul", "Vicky"];
const LAST_NAMES: [&str; 6] = ["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton"];

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
        }
    }
}

/// Generates event number `n`.
pub fn generate_event(cfg: &NexmarkConfig, n: u64) -> Event {
    let mut rng = SmallRng::seed_from_u64(cfg.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut ts = cfg.base_time + (n.saturating_mul(cfg.event_step_ns) / 1_000_000) as i64;
    if cfg.max_out_of_order_ms > 0 {
        ts -= rng.gen_range(0..=cfg.max_out_of_order_ms) as i64;
    }
    let epoch = n / PROPORTION;
    let offset = n % PROPORTION;
    let last_person = epoch; // persons 0..=epoch exist once offset >= 0
    let last_auction = epoch * AUCTIONS + offset.saturating_sub(PERSONS).min(AUCTIONS - 1);
    let extra_len = rng.gen_range(0..24);
    let extra: String = (0..extra_len).map(|_| rng.gen_range(b'a'..=b'z') as char).collect();
    if offset < PERSONS {
        let id = FIRST_PERSON_ID + epoch;
        let first = FIRST_NAMES[rng.gen_range(0..FIRST_NAMES.len())];
        let last = LAST_NAMES[rng.gen_range(0..LAST_NAMES.len())];
        Event::Person(Person {
            id,
            name: format!("{first} {last}"),
            email_address: format!("{}@{}.com", first.to_lowercase(), last.to_lowercase()),
            credit_card: format!(
                "{:04} {:04} {:04} {:04}",
                rng.gen_range(0..10000),
                rng.gen_range(0..10000),
                rng.gen_range(0..10000),
                rng.gen_range(0..10000)
            ),
            city: CITIES[rng.gen_range(0..CITIES.len())].to_string(),
            state: STATES[rng.gen_range(0..STATES.len())].to_string(),
            date_time: ts,
            extra,
        })
    } else if offset < PERSONS + AUCTIONS {
        let id = FIRST_AUCTION_ID + epoch * AUCTIONS + (offset - PERSONS);
        let seller = if rng.gen_range(0..HOT_RATIO) > 0 {
            FIRST_PERSON_ID + (last_person / HOT_RATIO) * HOT_RATIO
        } else {
            FIRST_PERSON_ID + last_person - rng.gen_range(0..=last_person.min(ACTIVE_PEOPLE))
        };
        let initial_bid = price(&mut rng);
        Event::Auction(Auction {
            id,
            item_name: format!("item-{}", rng.gen_range(0..10_000)),
            description: format!("description-{}", rng.gen_range(0..10_000)),
            initial_bid,
            reserve: initial_bid + price(&mut rng),
            date_time: ts,
            expires: ts + rng.gen_range(1_000..=20_000),
            seller,
            category: 10 + rng.gen_range(0..5),
            extra,
        })
    } else {
        let auction = if rng.gen_range(0..2) > 0 {
            FIRST_AUCTION_ID + (last_auction / HOT_RATIO) * HOT_RATIO
        } else {
            FIRST_AUCTION_ID + last_auction - rng.gen_range(0..=last_auction.min(IN_FLIGHT_AUCTIONS))
        };
        let bidder = if rng.gen_range(0..4) > 0 {
            FIRST_PERSON_ID + (last_person / HOT_RATIO) * HOT_RATIO
        } else {
            FIRST_PERSON_ID + last_person - rng.gen_range(0..=last_person.min(ACTIVE_PEOPLE))
        };
        let channel_id = rng.gen_range(0..10_000u32);
        Event::Bid(Bid {
            auction,
            bidder,
            price: price(&mut rng),
            channel: CHANNELS[(channel_id % 4) as usize].to_string(),
            url: format!("https://www.nexmark.com/item.htm?query=1&channel_id={channel_id}"),
            date_time: ts,
            extra,
        })
    }
}

fn price(rng: &mut SmallRng) -> u64 {
    (10f64.powf(rng.gen::<f64>() * 6.0) * 100.0).round() as u64
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
    fn events_follow_the_1_3_46_mix_and_are_deterministic() {
        let cfg = NexmarkConfig::default();
        let (mut p, mut a, mut b) = (0, 0, 0);
        for n in 0..5_000 {
            match generate_event(&cfg, n) {
                Event::Person(_) => p += 1,
                Event::Auction(_) => a += 1,
                Event::Bid(_) => b += 1,
            }
            assert_eq!(generate_event(&cfg, n), generate_event(&cfg, n));
        }
        assert_eq!((p, a, b), (100, 300, 4600));
        for k in 0..500 {
            assert!(matches!(generate_event(&cfg, bid_event_number(k)), Event::Bid(_)));
        }
    }

    #[test]
    fn bids_refer_to_auctions_that_exist() {
        let cfg = NexmarkConfig::default();
        let mut max_auction = 0;
        for n in 0..20_000 {
            match generate_event(&cfg, n) {
                Event::Auction(a) => max_auction = max_auction.max(a.id),
                Event::Bid(b) => assert!(b.auction <= max_auction && b.auction >= FIRST_AUCTION_ID),
                Event::Person(_) => {}
            }
        }
    }
}
