//! Word count over text files (final counts) or a socket (continuously updated counts).
//!
//! ```text
//! cargo run --release --example wordcount -- --input book.txt --output /tmp/wc
//! nc -lk 9999 &   cargo run --release --example wordcount -- --socket 127.0.0.1:9999 --output /tmp/wc
//! ```

use std::path::PathBuf;

use anyhow::Result;
use clap::{ArgGroup, Parser};
use serde::{Deserialize, Serialize};
use weir::prelude::*;

/// Counts words and writes `word,count` rows as CSV part files.
///
/// Words are the maximal runs of letters and digits, lower-cased. From --input (a file or a
/// directory of files, bounded) the job writes each word's final count once; from --socket
/// (unbounded, like Spark's socket source) it writes a row with the new count every time a word
/// is seen, until the server closes the connection.
#[derive(Parser, Debug)]
#[command(name = "wordcount", version, group(ArgGroup::new("source").required(true).args(["input", "socket"])))]
struct Cli {
    /// Text file or directory of text files.
    #[arg(long, value_name = "PATH")]
    input: Option<PathBuf>,

    /// Read lines from a TCP server at HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    socket: Option<String>,

    /// Lines per second per source subtask when reading files [default: as fast as possible].
    #[arg(long, value_name = "N", requires = "input")]
    rate: Option<u64>,

    /// Directory for the result part files.
    #[arg(long, value_name = "DIR")]
    output: PathBuf,

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
    init_logging();
    let env = StreamEnv::new(cli.job.clone());
    let counts = match (&cli.input, &cli.socket) {
        (Some(path), _) => {
            let mut source = FileSource::text_lines(path);
            if let Some(rate) = cli.rate {
                source = source.rate_limit(rate);
            }
            env.add_source("lines", source, WatermarkStrategy::no_watermarks())
                .uid("lines")
                .flat_map(words)
                .key_by(|w: &String| w.clone())
                .window(GlobalWindows::create())
                .aggregate_with(Count::default(), |word: &String, _, count, out| {
                    out.collect(WordCount { word: word.clone(), count })
                })
                .uid("counts")
        }
        (None, Some(addr)) => env
            .add_source("lines", SocketSource::new(addr), WatermarkStrategy::no_watermarks())
            .uid("lines")
            .flat_map(words)
            .map(|word| WordCount { word, count: 1 })
            .key_by(|wc: &WordCount| wc.word.clone())
            .reduce(|a, b| WordCount { word: a.word.clone(), count: a.count + b.count })
            .uid("counts"),
        (None, None) => unreachable!("clap requires --input or --socket"),
    };
    counts.write_files(FileSink::csv(&cli.output)).uid("sink");
    let result = env.execute("wordcount")?;
    tracing::info!(lines = result.counter("lines.records_out"), rows = result.counter("sink.records_in"), "done");
    Ok(())
}
