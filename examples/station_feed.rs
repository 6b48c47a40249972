//! Generates a realistic feed of bike-station readings for `station_hourly`, as JSON lines.
//!
//! ```text
//! cargo run --release --example station_feed -- --stations 50 --readings 100000 --output readings.jsonl
//! ```

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, NaiveDateTime};
use clap::Parser;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use weir::checkpoint::location::local_path;
use weir::prelude::parse_duration;

/// Writes bike-station readings `{"stationId", "parkingBikeTotCnt", "event_time"}` as JSON
/// lines: each station's bike count drifts as bikes are rented and returned, readings come from
/// random stations with event times advancing by --step and up to --disorder out of order.
/// The same flags always give the same feed. Send it to Kafka with
/// `kafka_feed --input FILE --key-field stationId` to keep each station's readings in order.
#[derive(Parser, Debug)]
#[command(name = "station_feed", version)]
struct Cli {
    /// Number of stations.
    #[arg(long, default_value_t = 50)]
    stations: u32,
    /// Number of readings.
    #[arg(long, default_value_t = 100_000)]
    readings: u64,
    /// Output file [default: standard output].
    #[arg(long, value_name = "FILE", value_parser = local_path)]
    output: Option<PathBuf>,
    /// Event time of the first reading (UTC).
    #[arg(long, default_value = "2026-01-01 00:00:00", value_parser = parse_time)]
    start: i64,
    /// Event time between consecutive readings.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    step: Duration,
    /// Move each reading's event time back by up to this much.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    disorder: Duration,
    /// Write event_time as epoch milliseconds instead of "YYYY-MM-DD HH:MM:SS".
    #[arg(long)]
    epoch_millis: bool,
    /// Random seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

fn parse_time(s: &str) -> Result<i64, String> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .map(|t| t.and_utc().timestamp_millis())
        .map_err(|e| format!("'{s}' is not YYYY-MM-DD HH:MM:SS: {e}"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut rng = ChaCha8Rng::seed_from_u64(cli.seed);
    let capacity: Vec<i64> = (0..cli.stations).map(|_| rng.gen_range(10..=40)).collect();
    let mut bikes: Vec<i64> = capacity.iter().map(|c| rng.gen_range(0..=*c)).collect();
    let out: Box<dyn Write> = match &cli.output {
        Some(p) => Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::new(out);
    let (step, disorder) = (cli.step.as_millis() as i64, cli.disorder.as_millis() as i64);
    for i in 0..cli.readings as i64 {
        let s = rng.gen_range(0..cli.stations.max(1)) as usize;
        // Stations near empty are refilled and near full are emptied more often, as in a city.
        let drift = if bikes[s] < capacity[s] / 4 {
            1
        } else if bikes[s] > capacity[s] * 3 / 4 {
            -1
        } else {
            0
        };
        bikes[s] = (bikes[s] + rng.gen_range(-3..=3) + drift).clamp(0, capacity[s]);
        let t = cli.start + i * step - rng.gen_range(0..=disorder);
        let station = format!("ST-{s:04}");
        if cli.epoch_millis {
            writeln!(out, r#"{{"stationId":"{station}","parkingBikeTotCnt":{},"event_time":{t}}}"#, bikes[s])?;
        } else {
            let time = DateTime::from_timestamp_millis(t).context("event time out of range")?;
            writeln!(
                out,
                r#"{{"stationId":"{station}","parkingBikeTotCnt":{},"event_time":"{}"}}"#,
                bikes[s],
                time.format("%Y-%m-%d %H:%M:%S")
            )?;
        }
    }
    out.flush()?;
    Ok(())
}
