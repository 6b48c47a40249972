//! The queries that touch files: q10 (every bid logged to CSV files partitioned by day and
//! minute, through weir's exactly-once file sink) and q13 (bids enriched from a bounded side
//! input, a `key,value` file read when the job is built, as Flink's lookup join reads its
//! file-system table).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{bids, sink, stats::day, Bid, Digest, Events, QueryOptions};
use crate::prelude::*;

/// q10's row: a bid with the day and minute it is filed under.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Q10Row {
    pub auction: u64,
    pub bidder: u64,
    pub price: u64,
    pub date_time: i64,
    pub extra: String,
    /// `yyyy-MM-dd`.
    pub dt: String,
    /// `HH:mm`.
    pub hm: String,
}

/// q10 for one bid.
pub fn q10_row(b: Bid) -> Q10Row {
    Q10Row {
        auction: b.auction,
        bidder: b.bidder,
        price: b.price,
        dt: day(b.date_time),
        hm: super::stats::hour_minute(super::stats::minute_of_day(b.date_time)),
        date_time: b.date_time,
        extra: b.extra,
    }
}

/// q10: every bid to CSV files under `dt=<day>/hm=<HH:mm>/` (exactly once with checkpoints);
/// the digest sink sees the same rows.
pub(super) fn q10(events: &Events, digest: &Digest, opts: &QueryOptions) -> Result<()> {
    let Some(output) = opts.output.clone() else { bail!("q10 writes files: give it an output location") };
    let rows = bids(events).map(q10_row).uid("rows");
    rows.write_files(FileSink::csv(output).bucket_by(|r: &Q10Row| format!("dt={}/hm={}", r.dt, r.hm))).uid("files");
    sink(&rows, digest);
    Ok(())
}

/// Keys of the side input: q13 joins a bid on `auction % SIDE_INPUT_KEYS`.
pub const SIDE_INPUT_KEYS: u64 = 10_000;

/// The side input's value for `key` (the file [`write_side_input`] writes holds these).
pub fn side_input_value(key: u64) -> String {
    format!("side-{key:05}")
}

/// Writes q13's side input, `key,value` lines for every key but those divisible by 7 (so that
/// the inner join drops some bids), as Flink's Nexmark generates `side_input.txt`.
pub fn write_side_input(path: &Path) -> Result<()> {
    let mut text = String::new();
    for key in (0..SIDE_INPUT_KEYS).filter(|k| !k.is_multiple_of(7)) {
        text.push_str(&format!("{key},{}\n", side_input_value(key)));
    }
    std::fs::write(path, text).with_context(|| format!("writing the side input {}", path.display()))
}

fn read_side_input(path: &Path) -> Result<HashMap<u64, String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the side input {}", path.display()))?;
    let mut table = HashMap::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let (key, value) =
            line.split_once(',').with_context(|| format!("{}:{}: not key,value", path.display(), i + 1))?;
        let key = key.trim().parse().with_context(|| format!("{}:{}: key {key:?}", path.display(), i + 1))?;
        table.insert(key, value.to_string());
    }
    Ok(table)
}

/// q13: bids joined with the side input on `auction % 10 000` (bids without a match dropped).
pub(super) fn q13(events: &Events, digest: &Digest, opts: &QueryOptions) -> Result<()> {
    let Some(path) = &opts.side_input else { bail!("q13 joins a side input: give it a key,value file") };
    let table = Arc::new(read_side_input(path)?);
    let rows = bids(events)
        .flat_map(move |b: Bid| {
            let value = table.get(&(b.auction % SIDE_INPUT_KEYS))?;
            Some((b.auction, b.bidder, b.price, b.date_time, value.clone()))
        })
        .uid("side-input-join");
    sink(&rows, digest);
    Ok(())
}
