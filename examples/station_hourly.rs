//! Hourly bike rentals and returns per station, from station readings: the Spark job
//! "Kafka → parse JSON → hourly event-time window per station → Parquet", in weir.
//!
//! ```text
//! cargo run --release --example station_feed -- --stations 50 --readings 100000 --output readings.jsonl
//! cargo run --release --example station_hourly -- --input readings.jsonl --output /tmp/stations \
//!     --checkpoint-dir /tmp/stations-chk --checkpoint-interval 10s
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{CommandFactory, Parser};
use station::{Change, HourRow, Reading};
use weir::checkpoint::location::local_path;
use weir::checkpoint::Location;
use weir::operators::kafka::KafkaArgs;
use weir::prelude::*;

mod station;

/// Turns bike-station readings into hourly rentals and returns per station.
///
/// Each reading is a JSON object `{"stationId": "...", "parkingBikeTotCnt": 12,
/// "event_time": "2026-01-01 08:15:00"}` (UTC; epoch milliseconds are accepted too). Per
/// station the previous bike count is kept in checkpointed keyed state: a rise is returns, a drop
/// is rentals, the first reading of a station counts as neither. The changes are summed per
/// station in 1-hour event-time windows and written as Parquet files partitioned
/// year=/month=/day=/hour= by window start, with the columns window_start, window_end,
/// stationId, total_rental, total_return.
#[derive(Parser, Debug)]
#[command(
    name = "station_hourly",
    version,
    group(clap::ArgGroup::new("source").required(true).args(["input", "input_topic"])),
    group(clap::ArgGroup::new("sink").required(true).multiple(true).args(["output", "output_topic"]))
)]
struct Cli {
    /// JSON-lines file or directory of readings.
    #[arg(long, value_name = "PATH", value_parser = local_path)]
    input: Option<PathBuf>,

    /// Read readings (JSON values) from this Kafka topic.
    #[arg(long, value_name = "TOPIC", requires = "brokers")]
    input_topic: Option<String>,

    /// Directory or `s3://bucket/prefix` for the Parquet output (year=/month=/day=/hour= subdirectories).
    #[arg(long, value_name = "DIR|URL")]
    output: Option<Location>,

    /// Also write each row as a JSON object to this Kafka topic (key: the station).
    #[arg(long, value_name = "TOPIC", requires = "brokers")]
    output_topic: Option<String>,

    /// Allowed out-of-orderness of readings: the watermark trails the newest event time by this.
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration)]
    max_delay: Duration,

    /// Directory or `s3://bucket/prefix` for readings that arrive after their hour was written (JSON lines); without it
    /// they are only counted. Their bike counts still update the station's previous count.
    #[arg(long, value_name = "DIR|URL")]
    late_output: Option<Location>,

    /// Directory or `s3://bucket/prefix` for unparsable readings (JSON lines with their origin and offset); without it an
    /// unparsable reading fails the job, naming its file or partition and offset.
    #[arg(long, value_name = "DIR|URL")]
    dead_letters: Option<Location>,

    /// Readings per second per source subtask [default: as fast as possible].
    #[arg(long, value_name = "N")]
    rate: Option<u64>,

    #[command(flatten)]
    kafka: KafkaArgs,

    #[command(flatten)]
    job: JobArgs,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    cli.kafka.check(&cli.job, cli.output_topic.is_some()).unwrap_or_else(|e| e.format(&mut Cli::command()).exit());
    init_logging();
    let env = StreamEnv::new(cli.job.clone());
    let malformed = OutputTag::<DeadLetter>::new("dead-letters");
    let late = OutputTag::<Change>::new("late-readings");
    let strategy = WatermarkStrategy::for_bounded_out_of_orderness(cli.max_delay)
        .with_timestamp_assigner(|r: &Reading| r.event_time);

    let readings = match (&cli.input, &cli.input_topic) {
        (_, Some(topic)) => {
            let mut source = cli.kafka.json_source::<Reading>(topic);
            if let Some(rate) = cli.rate {
                source = source.rate_limit(rate);
            }
            if cli.dead_letters.is_some() {
                source = source.dead_letters(&malformed);
            }
            env.add_source("readings", source, strategy)
        }
        (Some(path), _) => {
            let mut source = FileSource::<Reading>::json_lines(path).skip_blank_lines();
            if let Some(rate) = cli.rate {
                source = source.rate_limit(rate);
            }
            if cli.dead_letters.is_some() {
                source = source.dead_letters(&malformed);
            }
            // One reader keeps the file's order, which is each station's arrival order (parallel
            // readers would split the file and interleave its parts).
            env.add_source("readings", source, strategy).set_parallelism(1)
        }
        _ => unreachable!("clap requires --input or --input-topic with --brokers"),
    }
    .uid("readings");
    if let Some(dir) = &cli.dead_letters {
        readings.side_output(&malformed).write_files(FileSink::json_lines(dir)).uid("dead-letter-sink");
    }

    let hours = station::hourly(&readings, &late);
    if let Some(dir) = &cli.output {
        hours.write_files(station::parquet_sink(dir)).uid("parquet-sink");
    }
    if let Some(topic) = &cli.output_topic {
        let sink = cli
            .kafka
            .sink(topic, |r: &HourRow| (Some(r.station_id.clone()), serde_json::to_string(r).unwrap_or_default()));
        hours.write_kafka(sink).uid("kafka-sink");
    }
    if let Some(dir) = &cli.late_output {
        hours.side_output(&late).write_files(FileSink::json_lines(dir)).uid("late-sink");
    }

    let result = env.execute("station_hourly")?;
    tracing::info!(
        readings = result.counter("readings.records_out"),
        rows = result.counter("station-hours.records_out"),
        late_readings = result.counter("station-hours.late_records"),
        "done in {:.2} s",
        result.elapsed.as_secs_f64()
    );
    Ok(())
}
