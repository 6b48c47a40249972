//! The reference Nexmark generator's distributions (as the Nexmark generators of Beam and of
//! Flink's Nexmark suite define them), so that weir's Nexmark numbers compare with published
//! ones:
//!
//! - ids: person `n / 50`, auction `3 · (n / 50) + …` (plus 1000), in the 1:3:46 mix;
//! - sellers and bidders are *hot* (the first, resp. second, person of the last block of 100)
//!   with probability 1 − 1/`hot_sellers_ratio` (resp. `hot_bidders_ratio`), otherwise one of
//!   the last `active_people` people or up to 10 not registered yet;
//! - bids go to a hot auction (the first of the last block of 100) with probability
//!   1 − 1/`hot_auction_ratio`, otherwise to one of the last `in_flight_auctions` auctions or up
//!   to 10 not opened yet;
//! - an auction runs 1 ms to twice the event time it takes to open `in_flight_auctions` more;
//! - prices are log-uniform in [1, 10⁶) dollars, in cents; categories 10..15;
//! - half the bids come from 4 hot channels, the rest from 10 000 channels whose URLs mostly
//!   carry a `channel_id`;
//! - every event is padded with an `extra` string to average sizes of 200 (person),
//!   500 (auction) and 100 (bid) bytes.
//!
//! Where the reference draws from an unseeded random source (its hot URLs and channel table)
//! or splits events between generators on parallel timelines, weir draws from the seed and
//! keeps one timeline, so that the stream is the same for every parallelism and run. The
//! reference adds the first person id to a bidder twice (a known slip); weir adds it once.

use std::sync::OnceLock;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{
    Auction, Bid, Event, NexmarkConfig, Person, AUCTIONS, FIRST_AUCTION_ID, FIRST_PERSON_ID, PERSONS, PROPORTION,
};

/// The reference generator's tunable parameters (its `NexmarkConfiguration` defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceParams {
    /// Average size of a person event, in bytes (padding included).
    pub avg_person_bytes: usize,
    /// Average size of an auction event, in bytes.
    pub avg_auction_bytes: usize,
    /// Average size of a bid event, in bytes.
    pub avg_bid_bytes: usize,
    /// 1 in this many bids is for a random in-flight auction; the rest for the hot one.
    pub hot_auction_ratio: u64,
    /// 1 in this many auctions is by a random active seller; the rest by the hot one.
    pub hot_sellers_ratio: u64,
    /// 1 in this many bids is by a random active bidder; the rest by the hot one.
    pub hot_bidders_ratio: u64,
    /// Auctions a random bid chooses among (the most recent ones).
    pub in_flight_auctions: u64,
    /// People a random seller or bidder is chosen among (the most recent ones).
    pub active_people: u64,
}

impl Default for ReferenceParams {
    fn default() -> Self {
        ReferenceParams {
            avg_person_bytes: 200,
            avg_auction_bytes: 500,
            avg_bid_bytes: 100,
            hot_auction_ratio: 2,
            hot_sellers_ratio: 4,
            hot_bidders_ratio: 4,
            in_flight_auctions: 100,
            active_people: 1000,
        }
    }
}

/// Hot people and auctions are the first (second, for bidders) of each block of this many.
const HOT_BLOCK: u64 = 100;
/// How far ahead of the last one a random person or auction id may be.
const ID_LEAD: u64 = 10;
const CATEGORIES: u64 = 5;
const FIRST_CATEGORY: u64 = 10;
const CHANNELS: u32 = 10_000;
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const CITIES: [&str; 10] =
    ["Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond", "Seattle", "Kent", "Cheyenne"];
const FIRST_NAMES: [&str; 11] =
    ["Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter"];
const LAST_NAMES: [&str; 9] = ["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris"];

/// Generates event number `n` with the reference generator's distributions.
pub(super) fn generate(cfg: &NexmarkConfig, n: u64) -> Event {
    let mut rng = SmallRng::seed_from_u64(cfg.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut ts = cfg.event_time(n);
    if cfg.max_out_of_order_ms > 0 {
        ts -= rng.gen_range(0..=cfg.max_out_of_order_ms) as i64;
    }
    let offset = n % PROPORTION;
    if offset < PERSONS {
        Event::Person(person(cfg, n, ts, &mut rng))
    } else if offset < PERSONS + AUCTIONS {
        Event::Auction(auction(cfg, n, ts, &mut rng))
    } else {
        Event::Bid(bid(cfg, n, ts, &mut rng))
    }
}

fn person(cfg: &NexmarkConfig, n: u64, ts: i64, rng: &mut SmallRng) -> Person {
    let name = format!("{} {}", pick(rng, &FIRST_NAMES), pick(rng, &LAST_NAMES));
    let email_address = format!("{}@{}.com", next_string(rng, 7, ' '), next_string(rng, 5, ' '));
    let credit_card = format!(
        "{:04} {:04} {:04} {:04}",
        rng.gen_range(0..10_000),
        rng.gen_range(0..10_000),
        rng.gen_range(0..10_000),
        rng.gen_range(0..10_000)
    );
    let city = pick(rng, &CITIES).to_string();
    let state = pick(rng, &STATES).to_string();
    let size = 8 + name.len() + email_address.len() + credit_card.len() + city.len() + state.len();
    let extra = next_extra(rng, size, cfg.reference.avg_person_bytes);
    Person { id: last_person(n) + FIRST_PERSON_ID, name, email_address, credit_card, city, state, date_time: ts, extra }
}

fn auction(cfg: &NexmarkConfig, n: u64, ts: i64, rng: &mut SmallRng) -> Auction {
    let p = &cfg.reference;
    let seller = if rng.gen_range(0..p.hot_sellers_ratio) > 0 {
        (last_person(n) / HOT_BLOCK) * HOT_BLOCK
    } else {
        random_person(p, n, rng)
    };
    let category = FIRST_CATEGORY + rng.gen_range(0..CATEGORIES);
    let initial_bid = price(rng);
    // Long enough, on average, for `in_flight_auctions` auctions to be open at any time.
    let events_for_auctions = p.in_flight_auctions * PROPORTION / AUCTIONS;
    let horizon_ms = cfg.event_time(n + events_for_auctions) - cfg.event_time(n);
    let expires = ts + 1 + rng.gen_range(0..(horizon_ms * 2).max(1));
    let item_name = next_string(rng, 20, ' ');
    let description = next_string(rng, 100, ' ');
    let reserve = initial_bid + price(rng);
    let size = 8 + item_name.len() + description.len() + 5 * 8;
    let extra = next_extra(rng, size, p.avg_auction_bytes);
    Auction {
        id: last_auction(n) as u64 + FIRST_AUCTION_ID,
        item_name,
        description,
        initial_bid,
        reserve,
        date_time: ts,
        expires,
        seller: seller + FIRST_PERSON_ID,
        category,
        extra,
    }
}

fn bid(cfg: &NexmarkConfig, n: u64, ts: i64, rng: &mut SmallRng) -> Bid {
    let p = &cfg.reference;
    let auction = if rng.gen_range(0..p.hot_auction_ratio) > 0 {
        (last_auction(n).max(0) as u64 / HOT_BLOCK) * HOT_BLOCK
    } else {
        let last = last_auction(n).max(0) as u64;
        let first = last.saturating_sub(p.in_flight_auctions);
        first + rng.gen_range(0..last - first + 1 + ID_LEAD)
    };
    // The second person of the block, so that hot bidders and hot sellers differ.
    let bidder = if rng.gen_range(0..p.hot_bidders_ratio) > 0 {
        (last_person(n) / HOT_BLOCK) * HOT_BLOCK + 1
    } else {
        random_person(p, n, rng)
    };
    let price = price(rng);
    let (channel, url) = if rng.gen_range(0..2) > 0 {
        let i = rng.gen_range(0..HOT_CHANNELS.len());
        (HOT_CHANNELS[i].to_string(), channel_table().hot_urls[i].clone())
    } else {
        let (channel, url) = &channel_table().channels[rng.gen_range(0..CHANNELS) as usize];
        (channel.clone(), url.clone())
    };
    let extra = next_extra(rng, 4 * 8, p.avg_bid_bytes);
    Bid {
        auction: auction + FIRST_AUCTION_ID,
        bidder: bidder + FIRST_PERSON_ID,
        price,
        channel,
        url,
        date_time: ts,
        extra,
    }
}

/// The last person registered by event `n` (base 0): one per epoch of the mix.
fn last_person(n: u64) -> u64 {
    n / PROPORTION
}

/// The last auction opened by event `n` (base 0; −1 before the first).
fn last_auction(n: u64) -> i64 {
    let (epoch, offset) = ((n / PROPORTION) as i64, n % PROPORTION);
    if offset < PERSONS {
        epoch * AUCTIONS as i64 - 1
    } else {
        epoch * AUCTIONS as i64 + (offset - PERSONS).min(AUCTIONS - 1) as i64
    }
}

/// One of the active people, or a few registering soon.
fn random_person(p: &ReferenceParams, n: u64, rng: &mut SmallRng) -> u64 {
    let people = last_person(n) + 1;
    let active = people.min(p.active_people);
    people - active + rng.gen_range(0..active + ID_LEAD)
}

/// Log-uniform in [100, 10⁸) cents.
fn price(rng: &mut SmallRng) -> u64 {
    (10f64.powf(rng.gen::<f64>() * 6.0) * 100.0).round() as u64
}

fn pick<'a>(rng: &mut SmallRng, from: &[&'a str]) -> &'a str {
    from[rng.gen_range(0..from.len())]
}

/// 3 to `max_len − 1` lower-case letters, about one in 13 replaced by `space` (trimmed when it
/// is a blank).
fn next_string(rng: &mut SmallRng, max_len: usize, space: char) -> String {
    let len = 3 + rng.gen_range(0..max_len - 3);
    let s: String = (0..len)
        .map(|_| if rng.gen_range(0..13) == 0 { space } else { (b'a' + rng.gen_range(0..26u8)) as char })
        .collect();
    match space {
        ' ' => s.trim().to_string(),
        _ => s,
    }
}

/// Padding that brings an event of `size` bytes to `average` bytes on average (±20 %).
fn next_extra(rng: &mut SmallRng, size: usize, average: usize) -> String {
    if size > average {
        return String::new();
    }
    let want = average - size;
    let delta = (want as f64 * 0.2).round() as usize;
    let len = want - delta + if delta == 0 { 0 } else { rng.gen_range(0..2 * delta) };
    let mut s = String::with_capacity(len);
    // Thirteen letters from each 64-bit draw (26¹³ < 2⁶⁴): the padding is most of the
    // generator's random numbers otherwise.
    while s.len() < len {
        let mut r: u64 = rng.gen();
        for _ in 0..(len - s.len()).min(13) {
            s.push((b'a' + (r % 26) as u8) as char);
            r /= 26;
        }
    }
    s
}

/// The hot channels' URLs and the 10 000 other channels with theirs, the same in every run.
struct ChannelTable {
    hot_urls: Vec<String>,
    channels: Vec<(String, String)>,
}

fn channel_table() -> &'static ChannelTable {
    static TABLE: OnceLock<ChannelTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut rng = SmallRng::seed_from_u64(0x006e_6578_6d61_726b);
        let hot_urls = (0..HOT_CHANNELS.len()).map(|_| base_url(&mut rng)).collect();
        let channels = (0..CHANNELS)
            .map(|c| {
                let mut url = base_url(&mut rng);
                // Most channels say who they are in the URL (queries 21 and 22 parse it).
                if rng.gen_range(0..10) > 0 {
                    url.push_str(&format!("&channel_id={}", (c as i32).reverse_bits().unsigned_abs()));
                }
                (format!("channel-{c}"), url)
            })
            .collect();
        ChannelTable { hot_urls, channels }
    })
}

fn base_url(rng: &mut SmallRng) -> String {
    format!(
        "https://www.nexmark.com/{}/{}/{}/item.htm?query=1",
        next_string(rng, 5, '_'),
        next_string(rng, 5, '_'),
        next_string(rng, 5, '_')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: u64) -> Vec<Event> {
        let cfg = NexmarkConfig::default();
        (0..n).map(|i| generate(&cfg, i)).collect()
    }

    /// Serialized sizes close to the reference's averages (its sizes count ids as 8 bytes).
    #[test]
    fn events_are_padded_to_the_reference_average_sizes() {
        let (mut sizes, mut counts) = ([0usize; 3], [0usize; 3]);
        for e in events(50_000) {
            let (k, size) = match &e {
                Event::Person(p) => (
                    0,
                    8 + p.name.len()
                        + p.email_address.len()
                        + p.credit_card.len()
                        + p.city.len()
                        + p.state.len()
                        + p.extra.len(),
                ),
                Event::Auction(a) => (1, 8 + a.item_name.len() + a.description.len() + 40 + a.extra.len()),
                Event::Bid(b) => (2, 32 + b.extra.len()),
            };
            sizes[k] += size;
            counts[k] += 1;
        }
        let avg: Vec<f64> = (0..3).map(|k| sizes[k] as f64 / counts[k] as f64).collect();
        for (got, want) in avg.iter().zip([200.0, 500.0, 100.0]) {
            assert!((got - want).abs() < want * 0.03, "average sizes {avg:?}");
        }
    }

    #[test]
    fn hot_keys_and_channels_follow_the_reference_ratios() {
        let bids: Vec<Bid> = events(100_000)
            .into_iter()
            .filter_map(|e| match e {
                Event::Bid(b) => Some(b),
                _ => None,
            })
            .collect();
        let share = |f: &dyn Fn(&Bid) -> bool| bids.iter().filter(|b| f(b)).count() as f64 / bids.len() as f64;
        let hot_auction = share(&|b| (b.auction - FIRST_AUCTION_ID).is_multiple_of(HOT_BLOCK));
        let hot_bidder = share(&|b| (b.bidder - FIRST_PERSON_ID) % HOT_BLOCK == 1);
        let hot_channel = share(&|b| HOT_CHANNELS.contains(&b.channel.as_str()));
        let with_id = share(&|b| b.url.contains("&channel_id="));
        // Hot: 1 − 1/2 and 1 − 1/4, plus the random picks that land on a hot key.
        assert!((0.5..0.53).contains(&hot_auction), "{hot_auction}");
        assert!((0.75..0.77).contains(&hot_bidder), "{hot_bidder}");
        assert!((0.49..0.51).contains(&hot_channel), "{hot_channel}");
        assert!((0.43..0.47).contains(&with_id), "half the bids, 9 in 10 of those: {with_id}");
    }

    #[test]
    fn random_ids_stay_near_the_last_ones() {
        let p = ReferenceParams::default();
        for e in events(200_000) {
            match e {
                Event::Bid(b) => {
                    let n_auctions = (b.date_time - NexmarkConfig::default().base_time) as u64; // ms ~ 10 events
                    assert!(b.auction >= FIRST_AUCTION_ID);
                    assert!(b.auction - FIRST_AUCTION_ID <= n_auctions * 3 / 5 + 3 + ID_LEAD, "{b:?}");
                }
                Event::Auction(a) => {
                    assert!((10..15).contains(&a.category));
                    assert!(a.reserve >= a.initial_bid && a.expires > a.date_time);
                    // At 10 000 events/s, 100 auctions open in 167 ms.
                    assert!(a.expires - a.date_time <= 2 * 167 + 1, "{a:?}");
                    assert!(a.seller - FIRST_PERSON_ID <= (a.id - FIRST_AUCTION_ID) / 3 + ID_LEAD + p.active_people);
                }
                Event::Person(_) => {}
            }
        }
    }
}
