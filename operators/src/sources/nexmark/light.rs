//! The light generator: weir's first Nexmark generator, with short strings (bids of about 70
//! bytes) and hot-key ratios of its own. Kept for the benchmarks whose published numbers were
//! measured with it; [`super::reference`] follows the reference generator.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{
    Auction, Bid, Event, NexmarkConfig, Person, AUCTIONS, FIRST_AUCTION_ID, FIRST_PERSON_ID, PERSONS, PROPORTION,
};

const HOT_RATIO: u64 = 100;
const IN_FLIGHT_AUCTIONS: u64 = 100;
const ACTIVE_PEOPLE: u64 = 1000;
const CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const CITIES: [&str; 6] = ["Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Seattle"];
const STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const FIRST_NAMES: [&str; 6] = ["Peter", "Paul", "Luke", "John", "Saul", "Vicky"];
const LAST_NAMES: [&str; 6] = ["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton"];

/// Generates event number `n` with the light generator.
pub(super) fn generate(cfg: &NexmarkConfig, n: u64) -> Event {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bids_refer_to_auctions_that_exist() {
        let cfg = NexmarkConfig::default();
        let mut max_auction = 0;
        for n in 0..20_000 {
            match generate(&cfg, n) {
                Event::Auction(a) => max_auction = max_auction.max(a.id),
                Event::Bid(b) => assert!(b.auction <= max_auction && b.auction >= FIRST_AUCTION_ID),
                Event::Person(_) => {}
            }
        }
    }
}
