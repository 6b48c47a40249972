//! Bids per auction in tumbling event-time windows: the job users compare with Flink and Spark.
//!
//! ```text
//! cargo run --release --example auction_windows -- --generate 1000000 --output /tmp/aw
//! cargo run --release --example auction_windows -- --input bids.jsonl --output /tmp/aw -p 2
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{CommandFactory, Parser};
use serde::{Deserialize, Serialize};
use weir::checkpoint::location::local_path;
use weir::checkpoint::Location;
use weir::nexmark::{Event, NexmarkConfig, NexmarkSource};
use weir::operators::kafka::KafkaArgs;
use weir::prelude::*;

// A job binary picks its allocator. mimalloc keeps allocation cheap when one thread frees what
// another allocated (checkpoint writers drop state the task thread built), where glibc's malloc
// spent a sixth of the window task's time with checkpoints every second.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Counts Nexmark bids per auction in tumbling event-time windows and writes
/// `window_start,auction,count,max_price` rows as CSV part files.
///
/// Event time is each bid's `date_time` (epoch ms). The watermark is the highest event time
/// seen minus --max-delay-ms, per input split, emitted after every batch read. Bids that arrive
/// after their window fired are late: they are dropped and counted (and written to
/// --late-output if given).
#[derive(Parser, Debug)]
#[command(
    name = "auction_windows",
    version,
    group(clap::ArgGroup::new("source").required(true).args(["input", "generate", "input_topic"])),
    group(clap::ArgGroup::new("sink").required(true).multiple(true).args(["output", "output_topic"]))
)]
struct Cli {
    /// JSON-lines file or directory of bids, with keys auction, bidder, price, channel, url,
    /// date_time and extra.
    #[arg(long, value_name = "PATH", value_parser = local_path)]
    input: Option<PathBuf>,

    /// Generate N bids with the built-in Nexmark generator instead of reading --input.
    #[arg(long, value_name = "N")]
    generate: Option<u64>,

    /// Read bids (JSON values) from this Kafka topic.
    #[arg(long, value_name = "TOPIC", requires = "brokers")]
    input_topic: Option<String>,

    /// Directory or `s3://bucket/prefix` for the result part files.
    #[arg(long, value_name = "DIR|URL")]
    output: Option<Location>,

    /// Write each row as the CSV text `window_start,auction,count,max_price` (key: the auction) to
    /// this Kafka topic.
    #[arg(long, value_name = "TOPIC", requires = "brokers")]
    output_topic: Option<String>,

    /// Allowed out-of-orderness: the watermark trails the highest event time by this much.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    max_delay_ms: u64,

    /// Window length.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    window: Duration,

    /// Parallelism of the window operator and the sinks [default: --parallelism].
    #[arg(long, value_name = "N")]
    window_parallelism: Option<usize>,

    /// Directory or `s3://bucket/prefix` for late bids (JSON lines); without it late bids are only counted.
    #[arg(long, value_name = "DIR|URL")]
    late_output: Option<Location>,

    /// Directory or `s3://bucket/prefix` for unparsable input lines (JSON lines with file and offset); without it (and
    /// without --dead-letter-topic) an unparsable line fails the job, naming its file and offset.
    #[arg(long, value_name = "DIR|URL")]
    dead_letters: Option<Location>,

    /// Kafka topic for unparsable records (JSON values with origin topic/partition, offset, raw
    /// text and reason), delivered as --delivery says.
    #[arg(long, value_name = "TOPIC", requires = "brokers")]
    dead_letter_topic: Option<String>,

    /// Bids per second per source subtask (file) or over all subtasks (generator)
    /// [default: as fast as possible].
    #[arg(long, value_name = "N")]
    rate: Option<u64>,

    /// Generator: random seed.
    #[arg(long, default_value_t = 42, requires = "generate")]
    seed: u64,

    /// Generator: move each bid's event time back by up to this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0, requires = "generate")]
    disorder_ms: u64,

    /// With --generate and --rate: event time follows the wall clock (the first bid is stamped
    /// now, each next one as much later as the rate spaces them), as for a live feed; latency
    /// from event time to committed output is then meaningful (`weir_commit_latency_ms`).
    #[arg(long, requires_all = ["generate", "rate"])]
    live: bool,

    /// Hold every bid this long in a step of its own between the source and the windows: a slow
    /// operator, to watch backpressure reach the source in the dashboard or `weir top`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    throttle: Option<Duration>,

    #[command(flatten)]
    kafka: KafkaArgs,

    #[command(flatten)]
    job: JobArgs,
}

/// The fields of a bid this job needs (other keys of the input are ignored).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct BidIn {
    auction: u64,
    price: u64,
    date_time: i64,
}

/// One output row.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct WindowRow {
    window_start: i64,
    auction: u64,
    count: u64,
    max_price: u64,
}

/// Count and highest price of a window's bids.
#[derive(Clone)]
struct CountMax;

impl AggregateFunction for CountMax {
    type In = BidIn;
    type Acc = (u64, u64);
    type Out = (u64, u64);
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, u64), bid: &BidIn) {
        acc.0 += 1;
        acc.1 = acc.1.max(bid.price);
    }
    fn get_result(&self, acc: &(u64, u64)) -> (u64, u64) {
        *acc
    }
    fn merge(&self, a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
        (a.0 + b.0, a.1.max(b.1))
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let to_kafka = cli.output_topic.is_some() || cli.dead_letter_topic.is_some();
    cli.kafka.check(&cli.job, to_kafka).unwrap_or_else(|e| e.format(&mut Cli::command()).exit());
    init_logging();
    let env = StreamEnv::new(cli.job.clone());
    let delay = Duration::from_millis(cli.max_delay_ms);
    let late = OutputTag::<BidIn>::new("late-bids");
    let malformed = OutputTag::<DeadLetter>::new("dead-letters");
    let dead_letters_wanted = cli.dead_letters.is_some() || cli.dead_letter_topic.is_some();

    let bids: DataStream<BidIn> = match (&cli.input, cli.generate) {
        _ if cli.input_topic.is_some() => {
            let topic = cli.input_topic.as_deref().unwrap_or_default();
            let mut source = cli.kafka.json_source::<BidIn>(topic);
            if let Some(rate) = cli.rate {
                source = source.rate_limit(rate);
            }
            if dead_letters_wanted {
                source = source.dead_letters(&malformed);
            }
            let strategy =
                WatermarkStrategy::for_bounded_out_of_orderness(delay).with_timestamp_assigner(|b: &BidIn| b.date_time);
            env.add_source("bids", source, strategy).uid("bids")
        }
        (Some(path), _) => {
            let mut source = FileSource::<BidIn>::json_lines(path);
            if dead_letters_wanted {
                source = source.dead_letters(&malformed);
            }
            if let Some(rate) = cli.rate {
                source = source.rate_limit(rate);
            }
            let strategy =
                WatermarkStrategy::for_bounded_out_of_orderness(delay).with_timestamp_assigner(|b: &BidIn| b.date_time);
            env.add_source("bids", source, strategy).uid("bids")
        }
        (None, Some(n)) => {
            let cfg = NexmarkConfig {
                seed: cli.seed,
                limit: Some(n),
                bids_only: true,
                rate: cli.rate,
                max_out_of_order_ms: cli.disorder_ms,
                ..NexmarkConfig::default()
            };
            // 46 events in 50 are bids: at `rate` bids/s, events are 50/46/rate s apart.
            let cfg = match (cli.live, cli.rate) {
                (true, Some(rate)) => NexmarkConfig {
                    base_time: weir::runtime::now_millis(),
                    event_step_ns: (46_000_000_000 / (50 * rate.max(1))).max(1),
                    ..cfg
                },
                _ => cfg,
            };
            let strategy = WatermarkStrategy::for_bounded_out_of_orderness(delay)
                .with_timestamp_assigner(|e: &Event| e.date_time());
            env.add_source("nexmark", NexmarkSource::new(cfg), strategy)
                .uid("nexmark")
                .flat_map(|e: Event| match e {
                    Event::Bid(b) => Some(BidIn { auction: b.auction, price: b.price, date_time: b.date_time }),
                    _ => None,
                })
                .uid("bids")
        }
        (None, None) => unreachable!("clap requires --input, --generate or --input-topic"),
    };

    if dead_letters_wanted && cli.generate.is_none() {
        let letters = bids.side_output(&malformed);
        if let Some(dir) = &cli.dead_letters {
            letters.write_files(FileSink::json_lines(dir)).uid("dead-letter-sink");
        }
        if let Some(topic) = &cli.dead_letter_topic {
            let sink = cli.kafka.sink(topic, |d: &DeadLetter| (None, serde_json::to_string(d).unwrap_or_default()));
            letters.write_kafka(sink).uid("dead-letter-topic-sink");
        }
    }
    let window_parallelism = cli.window_parallelism.unwrap_or(cli.job.parallelism);
    let bids = match cli.throttle {
        Some(pause) => bids
            .map(move |b: BidIn| {
                std::thread::sleep(pause);
                b
            })
            .uid("throttle")
            .start_new_chain(),
        None => bids,
    };
    let rows = bids
        .key_by(|b: &BidIn| b.auction)
        .window(TumblingEventTimeWindows::of(cli.window))
        .side_output_late_data(&late)
        .aggregate_with(CountMax, |auction: &u64, w: &TimeWindow, (count, max_price), out| {
            out.collect(WindowRow { window_start: w.start, auction: *auction, count, max_price })
        })
        .uid("auction-windows")
        .set_parallelism(window_parallelism);
    if let Some(dir) = &cli.output {
        rows.write_files(FileSink::csv(dir)).uid("window-sink").set_parallelism(window_parallelism);
    }
    if let Some(topic) = &cli.output_topic {
        let sink = cli.kafka.sink(topic, |r: &WindowRow| {
            (Some(r.auction.to_string()), format!("{},{},{},{}", r.window_start, r.auction, r.count, r.max_price))
        });
        rows.write_kafka(sink).uid("kafka-sink").set_parallelism(window_parallelism);
    }
    if let Some(dir) = &cli.late_output {
        rows.side_output(&late)
            .write_files(FileSink::json_lines(dir))
            .uid("late-sink")
            .set_parallelism(window_parallelism);
    }

    let result = env.execute("auction_windows")?;
    let read = result.counter("bids.records_out");
    let late_count = result.counter("auction-windows.late_records");
    let secs = result.elapsed.as_secs_f64();
    tracing::info!(
        bids = read,
        rows = result.counter("window-sink.records_in"),
        late_bids = late_count,
        bids_per_sec = (read as f64 / secs) as u64,
        "done in {secs:.2} s"
    );
    Ok(())
}
