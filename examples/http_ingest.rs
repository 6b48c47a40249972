//! A REST endpoint that ingests station readings into the station job: `POST /events` with a
//! JSON object or array, answered 200 once a completed checkpoint covers the events.
//!
//! ```text
//! cargo run --release --example http_ingest -- --listen 127.0.0.1:8080 --archive /tmp/ingest/raw \
//!     --output /tmp/ingest/hourly --checkpoint-dir /tmp/ingest/chk --checkpoint-interval 1s
//! curl -s -XPOST localhost:8080/events -d '{"stationId":"ST-1","parkingBikeTotCnt":7,"event_time":"2026-01-01 08:00:00"}'
//! ```

use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use station::{Change, Reading};
use weir::checkpoint::Location;
use weir::prelude::*;

mod station;

/// Ingests bike-station readings over HTTP into the station pipeline.
///
/// `POST /events` takes one reading `{"stationId", "parkingBikeTotCnt", "event_time"}` or an
/// array of them. With checkpointing the answer is 200 only once a completed checkpoint covers
/// the readings, so an acknowledged reading is never lost; 400 says why a body is malformed;
/// 503 (with Retry-After) means the job is backpressured or restarting: send the request again.
/// Readings are archived as exactly-once JSON-lines files (--archive) and summed per station
/// and hour into Parquet files (--output), as `station_hourly` does.
#[derive(Parser, Debug)]
#[command(
    name = "http_ingest",
    version,
    group(clap::ArgGroup::new("sink").required(true).multiple(true).args(["archive", "output"]))
)]
struct Cli {
    /// Address the ingest endpoint listens on.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
    listen: String,

    /// Directory or `s3://bucket/prefix` for every accepted reading, as JSON lines (exactly once with checkpointing).
    #[arg(long, value_name = "DIR|URL")]
    archive: Option<Location>,

    /// Directory or `s3://bucket/prefix` for hourly rentals and returns per station, as Parquet.
    #[arg(long, value_name = "DIR|URL")]
    output: Option<Location>,

    /// Requests queued for the job before new ones get 503.
    #[arg(long, value_name = "N", default_value_t = 64)]
    queue: usize,

    /// How long a request waits for a checkpoint to cover it before it gets 503.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    ack_timeout: Duration,

    /// Allowed out-of-orderness of readings.
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration)]
    max_delay: Duration,

    #[command(flatten)]
    job: JobArgs,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging();
    if !cli.job.checkpointing() {
        tracing::warn!(
            "checkpointing is off: requests are acknowledged when they enter the job, and a failure loses them"
        );
    }
    let env = StreamEnv::new(cli.job.clone());
    let source = HttpSource::<Reading>::new(&cli.listen)
        .queue(cli.queue)
        .ack_timeout(cli.ack_timeout)
        .durable_acks(cli.job.checkpointing());
    let strategy = WatermarkStrategy::for_bounded_out_of_orderness(cli.max_delay)
        .with_timestamp_assigner(|r: &Reading| r.event_time)
        .with_idleness(Duration::from_secs(10));
    let readings = env.add_source("http", source, strategy).uid("http");
    if let Some(dir) = &cli.archive {
        readings.write_files(FileSink::json_lines(dir)).uid("archive");
    }
    if let Some(dir) = &cli.output {
        let late = OutputTag::<Change>::new("late-readings");
        station::hourly(&readings, &late).write_files(station::parquet_sink(dir)).uid("parquet-sink");
    }
    let result = env.execute("http_ingest")?;
    tracing::info!(readings = result.counter("http.records_out"), "stopped");
    Ok(())
}
