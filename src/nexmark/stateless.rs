//! The queries that look at one bid at a time: q14 (calculation with a user function), q21
//! (channel id from a `CASE` or the URL) and q22 (URL directories).

use super::{bids, sink, Bid, Digest, Events};
use crate::prelude::*;

/// q14's row: the price in thousandths (0.908 × price exactly, as Flink's `DECIMAL(23, 3)`).
pub type Q14Row = (u64, u64, u64, String, i64, String, u64);

/// q14's user function: how often `c` occurs in `s` (Flink's Nexmark `count_char`).
pub fn count_char(s: &str, c: char) -> u64 {
    s.chars().filter(|&x| x == c).count() as u64
}

/// The time of day a bid was made at (UTC hours).
pub fn bid_time_type(date_time: i64) -> &'static str {
    match date_time.rem_euclid(86_400_000) / 3_600_000 {
        8..=18 => "dayTime",
        0..=6 | 20..=23 => "nightTime",
        _ => "otherTime",
    }
}

/// q14 for one bid: `None` unless 0.908 × price is strictly between 1 000 000 and 50 000 000.
pub fn q14_row(b: Bid) -> Option<Q14Row> {
    let price = b.price * 908;
    (price > 1_000_000_000 && price < 50_000_000_000).then(|| {
        let c = count_char(&b.extra, 'c');
        (b.auction, b.bidder, price, bid_time_type(b.date_time).to_string(), b.date_time, b.extra, c)
    })
}

/// q21's channel id: the hot channels' by name, the others' from the URL's `channel_id`
/// parameter; `None` (the row is dropped) when neither says.
pub fn channel_id(channel: &str, url: &str) -> Option<String> {
    // `lower(channel) = …` without lower-casing a copy of every bid's channel.
    const KNOWN: [(&str, &str); 4] = [("apple", "0"), ("google", "1"), ("facebook", "2"), ("baidu", "3")];
    if let Some((_, id)) = KNOWN.iter().find(|(name, _)| channel.eq_ignore_ascii_case(name)) {
        return Some(id.to_string());
    }
    // `(&|^)channel_id=([^&]*)`: the parameter at the start or after an `&`.
    let mut at = 0;
    while let Some(i) = url[at..].find("channel_id=") {
        let start = at + i;
        if start == 0 || url.as_bytes()[start - 1] == b'&' {
            let value = &url[start + "channel_id=".len()..];
            return Some(value.split('&').next().unwrap_or("").to_string());
        }
        at = start + 1;
    }
    None
}

/// q22's directories: `SPLIT_INDEX(url, '/', 3..=5)`.
pub fn url_dirs(url: &str) -> (Option<String>, Option<String>, Option<String>) {
    let mut parts = url.split('/').skip(3).map(str::to_string);
    (parts.next(), parts.next(), parts.next())
}

/// q14: bids in a price band with their price in euros, time of day and a user function.
pub(super) fn q14(events: &Events, digest: &Digest) {
    sink(&bids(events).flat_map(q14_row).uid("calc"), digest)
}

/// q21: bids with a channel id.
pub(super) fn q21(events: &Events, digest: &Digest) {
    let rows = bids(events)
        .flat_map(|b: Bid| channel_id(&b.channel, &b.url).map(|id| (b.auction, b.bidder, b.price, b.channel, id)))
        .uid("channel-id");
    sink(&rows, digest)
}

/// q22: bids with the first three directories of their URL.
pub(super) fn q22(events: &Events, digest: &Digest) {
    let rows = bids(events)
        .map(|b: Bid| {
            let (d1, d2, d3) = url_dirs(&b.url);
            (b.auction, b.bidder, b.price, b.channel, d1, d2, d3)
        })
        .uid("url-dirs");
    sink(&rows, digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_ids_come_from_the_name_or_the_url() {
        assert_eq!(channel_id("Apple", "x").as_deref(), Some("0"));
        assert_eq!(
            channel_id("channel-7", "https://a/b/c/d/item.htm?query=1&channel_id=123&x=1").as_deref(),
            Some("123")
        );
        assert_eq!(channel_id("channel-7", "channel_id=9").as_deref(), Some("9"));
        assert_eq!(channel_id("channel-7", "https://a/item.htm?query=1&xchannel_id=5"), None);
        assert_eq!(channel_id("channel-7", "https://a/item.htm?query=1"), None);
    }

    #[test]
    fn url_dirs_split_at_slashes() {
        let (a, b, c) = url_dirs("https://www.nexmark.com/abc/de_f/g/item.htm?query=1");
        assert_eq!((a.as_deref(), b.as_deref(), c.as_deref()), (Some("abc"), Some("de_f"), Some("g")));
        assert_eq!(url_dirs("https://x/y"), (Some("y".into()), None, None));
    }

    #[test]
    fn q14_keeps_a_price_band() {
        let bid = |price| Bid {
            auction: 1,
            bidder: 2,
            price,
            channel: "Google".into(),
            url: String::new(),
            date_time: 9 * 3_600_000,
            extra: "abcc".into(),
        };
        // 0.908 × 1 101 322 = 1 000 000.376; 0.908 × 1 101 321 = 999 999.468.
        assert!(q14_row(bid(1_101_322)).is_some());
        assert!(q14_row(bid(1_101_321)).is_none());
        let row = q14_row(bid(2_000_000)).unwrap();
        assert_eq!((row.2, row.3.as_str(), row.6), (1_816_000_000, "dayTime", 2));
        assert!(q14_row(bid(1_000_000)).is_none());
        assert!(q14_row(bid(60_000_000)).is_none());
    }
}
