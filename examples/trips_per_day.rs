//! Trips per pickup date of the NYC for-hire-vehicle trip records (CSV), like a Spark batch job.
//!
//! ```text
//! cargo run --release --example trips_per_day -- --input fhv/ --output /tmp/trips --dead-letters /tmp/bad
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::{Deserialize, Serialize};
use weir::checkpoint::location::local_path;
use weir::checkpoint::Location;
use weir::prelude::*;

/// Counts trips per pickup date in CSV files with the columns hvfhs_license_num,
/// dispatching_base_num, pickup_datetime, dropoff_datetime, PULocationID, DOLocationID, SR_Flag
/// (a header line per file is skipped). Writes `pickup_date,trips` rows as CSV part files.
/// Rows that cannot be parsed go to --dead-letters with their file, line and reason, and are
/// counted; none is dropped silently.
#[derive(Parser, Debug)]
#[command(name = "trips_per_day", version)]
struct Cli {
    /// A CSV file or a directory of CSV files.
    #[arg(long, value_name = "PATH", value_parser = local_path)]
    input: PathBuf,

    /// Directory or `s3://bucket/prefix` for the result part files.
    #[arg(long, value_name = "DIR|URL")]
    output: Location,

    /// Directory or `s3://bucket/prefix` for malformed rows (JSON lines: origin, line, offset, raw, error).
    #[arg(long, value_name = "DIR|URL")]
    dead_letters: Location,

    #[command(flatten)]
    job: JobArgs,
}

/// One trip record; only the pickup time is used, but every column must be present.
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // Columns are parsed to validate rows, not all are used.
struct Trip {
    hvfhs_license_num: String,
    dispatching_base_num: String,
    pickup_datetime: String,
    dropoff_datetime: String,
    #[serde(rename = "PULocationID")]
    pu_location_id: Option<u32>,
    #[serde(rename = "DOLocationID")]
    do_location_id: Option<u32>,
    #[serde(rename = "SR_Flag")]
    sr_flag: Option<String>,
}

/// A trip reduced to what the job needs: its pickup date, or `None` for a header line.
fn parse(line: &[u8]) -> Result<Option<String>> {
    if line.starts_with(b"hvfhs_license_num,") {
        return Ok(None);
    }
    let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(line);
    let header = csv::StringRecord::from(vec![
        "hvfhs_license_num",
        "dispatching_base_num",
        "pickup_datetime",
        "dropoff_datetime",
        "PULocationID",
        "DOLocationID",
        "SR_Flag",
    ]);
    let record = reader.records().next().context("empty row")??;
    if record.len() != header.len() {
        bail!("{} columns, expected {}", record.len(), header.len());
    }
    let trip: Trip = record.deserialize(Some(&header))?;
    let date = trip.pickup_datetime.get(..10).context("pickup_datetime too short")?;
    let valid = date.len() == 10
        && date.as_bytes()[4] == b'-'
        && date.as_bytes()[7] == b'-'
        && date.bytes().enumerate().all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit());
    if !valid {
        bail!("pickup_datetime '{}' is not YYYY-MM-DD HH:MM:SS", trip.pickup_datetime);
    }
    Ok(Some(date.to_string()))
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct DayCount {
    pickup_date: String,
    trips: u64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging();
    let env = StreamEnv::new(cli.job.clone());
    let bad = OutputTag::<DeadLetter>::new("malformed");
    let trips = env
        .add_source(
            "trips",
            FileSource::new(&cli.input, parse).skip_blank_lines().dead_letters(&bad),
            WatermarkStrategy::no_watermarks(),
        )
        .uid("trips");
    trips.side_output(&bad).write_files(FileSink::json_lines(&cli.dead_letters)).uid("dead-letters");
    trips
        .flat_map(|date: Option<String>| date)
        .key_by(|d: &String| d.clone())
        .window(GlobalWindows::create())
        .aggregate_with(Count::default(), |day: &String, _, trips, out| {
            out.collect(DayCount { pickup_date: day.clone(), trips })
        })
        .uid("per-day")
        .write_files(FileSink::csv(&cli.output))
        .uid("sink");
    let result = env.execute("trips_per_day")?;
    tracing::info!(
        rows_read = result.counter("trips.records_out"),
        malformed = result.counter("dead-letters.records_in"),
        days = result.counter("sink.records_in"),
        "done"
    );
    Ok(())
}
