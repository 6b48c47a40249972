//! Word count over text files or a Kafka topic read to its end (final counts), or over a socket or
//! a live topic (continuously updated counts).
//!
//! ```text
//! cargo run --release --example wordcount -- --input book.txt --output /tmp/wc
//! nc -lk 9999 &   cargo run --release --example wordcount -- --socket 127.0.0.1:9999 --console
//! ```

use std::path::PathBuf;

use anyhow::Result;
use clap::{ArgGroup, CommandFactory, Parser};
use serde::{Deserialize, Serialize};
use weir::checkpoint::location::local_path;
use weir::checkpoint::Location;
use weir::operators::kafka::KafkaArgs;
use weir::prelude::*;

/// Counts words and writes `word,count` rows as CSV part files, to a Kafka topic and/or as a
/// table on the console.
///
/// Words are the maximal runs of letters and digits, lower-cased. From --input (a file or a
/// directory of files) or from --input-topic with --stop-at-end the input is bounded and each
/// word's final count is written once; from --socket (like Spark's socket source) or a live
/// --input-topic the job writes a row with the new count every time a word is seen (Spark's
/// update mode), and --console prints the whole table every --trigger (complete mode).
#[derive(Parser, Debug)]
#[command(
    name = "wordcount",
    version,
    group(ArgGroup::new("source").required(true).args(["input", "socket", "input_topic"])),
    group(ArgGroup::new("sink").required(true).multiple(true).args(["output", "output_topic", "console"]))
)]
struct Cli {
    /// Text file or directory of text files.
    #[arg(long, value_name = "PATH", value_parser = local_path)]
    input: Option<PathBuf>,

    /// Read lines from a TCP server at HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    socket: Option<String>,

    /// Read lines (record values) from this Kafka topic.
    #[arg(long, value_name = "TOPIC", requires = "brokers")]
    input_topic: Option<String>,

    /// Lines per second per source subtask [default: as fast as possible].
    #[arg(long, value_name = "N")]
    rate: Option<u64>,

    /// Directory or `s3://bucket/prefix` for the result part files.
    #[arg(long, value_name = "DIR|URL")]
    output: Option<Location>,

    /// Write rows as the text `word,count` (key: the word) to this Kafka topic.
    #[arg(long, value_name = "TOPIC", requires = "brokers")]
    output_topic: Option<String>,

    /// Emit a word's running count at each occurrence (Spark's update mode) instead of one final
    /// count per word when a bounded input ends; the counts stay in keyed state.
    #[arg(long)]
    running: bool,

    /// Print the whole table of counts to standard output every --trigger, like Spark's console
    /// sink in complete mode.
    #[arg(long)]
    console: bool,

    /// How often --console prints the table (when it changed).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    trigger: std::time::Duration,

    /// Rows --console shows, most frequent words first.
    #[arg(long, value_name = "N", default_value_t = 20)]
    console_rows: usize,

    #[command(flatten)]
    kafka: KafkaArgs,

    #[command(flatten)]
    job: JobArgs,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct WordCount {
    word: String,
    count: u64,
}

fn words(line: String) -> Vec<String> {
    line.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    cli.kafka.check(&cli.job, cli.output_topic.is_some()).unwrap_or_else(|e| e.format(&mut Cli::command()).exit());
    init_logging();
    let env = StreamEnv::new(cli.job.clone());
    let (lines, bounded) = match (&cli.input, &cli.socket, &cli.input_topic) {
        (Some(path), _, _) => {
            let mut source = FileSource::text_lines(path);
            if let Some(rate) = cli.rate {
                source = source.rate_limit(rate);
            }
            (env.add_source("lines", source, WatermarkStrategy::no_watermarks()), true)
        }
        (_, Some(addr), _) => {
            (env.add_source("lines", SocketSource::new(addr), WatermarkStrategy::no_watermarks()), false)
        }
        (_, _, Some(topic)) => {
            let mut source = cli.kafka.text_source(topic);
            if let Some(rate) = cli.rate {
                source = source.rate_limit(rate);
            }
            (env.add_source("lines", source, WatermarkStrategy::no_watermarks()), cli.kafka.stop_at_end)
        }
        _ => unreachable!("clap requires --input, --socket or --input-topic"),
    };
    let words = lines.uid("lines").flat_map(words);
    let counts = if bounded && !cli.running {
        words
            .key_by(|w: &String| w.clone())
            .window(GlobalWindows::create())
            .aggregate_with(Count::default(), |word: &String, _, count, out| {
                out.collect(WordCount { word: word.clone(), count })
            })
            .uid("counts")
    } else {
        words
            .map(|word| WordCount { word, count: 1 })
            .key_by(|wc: &WordCount| wc.word.clone())
            .reduce(|a, b| WordCount { word: a.word.clone(), count: a.count + b.count })
            .uid("counts")
    };
    if let Some(dir) = &cli.output {
        counts.write_files(FileSink::csv(dir)).uid("sink");
    }
    if cli.console {
        let table = ConsoleTable::new(&["word", "count"], |r: &WordCount| {
            (r.word.clone(), vec![r.word.clone(), r.count.to_string()])
        })
        .trigger(cli.trigger)
        .rows(cli.console_rows)
        .sort_desc_by("count");
        counts.print_table(table).uid("console");
    }
    if let Some(topic) = &cli.output_topic {
        let sink = cli.kafka.sink(topic, |r: &WordCount| (Some(r.word.clone()), format!("{},{}", r.word, r.count)));
        counts.write_kafka(sink).uid("kafka-sink");
    }
    let result = env.execute("wordcount")?;
    tracing::info!(lines = result.counter("lines.records_out"), rows = result.counter("sink.records_in"), "done");
    Ok(())
}
