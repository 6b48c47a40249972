//! A job that holds as much keyed state as asked: a counter source whose record `n` updates key
//! `n % keys` with `value-bytes` of incompressible bytes. After one pass over the keys the state
//! is about `keys × value-bytes` and stays there, every later record overwriting one key. It
//! exists to measure checkpoints and restores of large state (`bench --restore-mib`).
//!
//! ```text
//! cargo run --release --example keyed_state -- --keys 4000000 --value-bytes 256 \
//!     --checkpoint-dir /tmp/chk --checkpoint-interval 10s
//! ```

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use weir::prelude::*;
use weir::runtime::{Source, SourceOutput, SourcePoll, SourceReader, TaskInfo};

#[derive(Parser, Debug)]
#[command(about = "Keeps keys × value-bytes of keyed state, updated without end (or for --records)")]
struct Cli {
    /// Distinct keys.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,

    /// Bytes of each key's value.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,

    /// Stop after this many records [default: never].
    #[arg(long)]
    records: Option<u64>,

    /// Once every key has a value, at most this many records per second (per source subtask):
    /// the steady state of a job that holds large state [default: as fast as possible].
    #[arg(long)]
    steady_rate: Option<u64>,

    #[command(flatten)]
    job: JobArgs,
}

/// Record numbers `subtask, subtask + p, subtask + 2p, ...`, resumable from a checkpoint.
struct Counter {
    limit: Option<u64>,
    keys: u64,
    steady_rate: Option<u64>,
}

struct CounterReader {
    subtask: u64,
    parallelism: u64,
    next: u64,
    limit: Option<u64>,
    keys: u64,
    steady_rate: Option<u64>,
    /// When the steady phase started here, and records emitted since.
    steady: Option<(Instant, u64)>,
}

impl Source<u64> for Counter {
    fn create_reader(&self, info: &TaskInfo) -> Result<Box<dyn SourceReader<u64>>> {
        Ok(Box::new(CounterReader {
            subtask: info.subtask as u64,
            parallelism: info.parallelism as u64,
            next: info.subtask as u64,
            limit: self.limit,
            keys: self.keys,
            steady_rate: self.steady_rate,
            steady: None,
        }))
    }
}

impl SourceReader<u64> for CounterReader {
    fn poll(&mut self, out: &mut SourceOutput<'_, u64>) -> Result<SourcePoll> {
        let mut budget = out.remaining() as u64;
        if let (Some(rate), true) = (self.steady_rate, self.next >= self.keys) {
            let (since, emitted) = *self.steady.get_or_insert((Instant::now(), 0));
            let due = (since.elapsed().as_secs_f64() * rate as f64) as u64;
            if emitted >= due {
                return Ok(SourcePoll::Idle(Duration::from_millis(5)));
            }
            budget = budget.min(due - emitted);
        }
        for _ in 0..budget {
            if self.limit.is_some_and(|l| self.next >= l) {
                return Ok(SourcePoll::Finished);
            }
            out.collect(self.subtask, self.next);
            self.next += self.parallelism;
            if let Some((_, emitted)) = &mut self.steady {
                *emitted += 1;
            }
        }
        Ok(SourcePoll::Ready)
    }

    fn snapshot_state(&mut self, _checkpoint_id: u64) -> Result<serde_json::Value> {
        Ok(serde_json::json!({ "subtask": self.subtask, "next": self.next }))
    }

    fn restore_state(&mut self, states: Vec<serde_json::Value>) -> Result<()> {
        // Same parallelism only: each subtask resumes its own sequence.
        for s in states {
            if s["subtask"].as_u64() == Some(self.subtask) {
                self.next = s["next"].as_u64().unwrap_or(self.next);
            }
        }
        Ok(())
    }
}

/// Overwrites the key's value with bytes derived from the record number.
#[derive(Clone)]
struct Overwrite {
    value: ValueStateDescriptor<Vec<u8>>,
    value_bytes: usize,
}

impl KeyedOperator for Overwrite {
    type Key = u64;
    type In = u64;
    type Out = ();

    fn process(&mut self, _key: &u64, r: Record<u64>, ctx: &mut KeyedContext, _out: &mut Collector<()>) -> Result<()> {
        // xorshift64*: incompressible, so RocksDB's compression does not shrink the state.
        let mut x = r.value.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut bytes = Vec::with_capacity(self.value_bytes + 8);
        while bytes.len() < self.value_bytes {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            bytes.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        bytes.truncate(self.value_bytes);
        ctx.state(&self.value)?.update(&bytes)
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging();
    let env = StreamEnv::new(cli.job.clone());
    let keys = cli.keys.max(1);
    let counter = Counter { limit: cli.records, keys, steady_rate: cli.steady_rate };
    env.add_source("counter", counter, WatermarkStrategy::no_watermarks())
        .uid("counter")
        .key_by(move |n: &u64| n % keys)
        .process("overwrite", Overwrite { value: ValueStateDescriptor::new("value"), value_bytes: cli.value_bytes })
        .uid("overwrite");
    env.execute("keyed_state")?;
    Ok(())
}
