//! The weir runtime: the job graph API, task threads connected by bounded channels, event time,
//! and the flags every job binary shares.
//!
//! ```
//! use weir_runtime::{JobArgs, StreamEnv};
//! let env = StreamEnv::new(JobArgs { parallelism: 2, ..JobArgs::default() });
//! // Sources, transformations and sinks come from `weir-operators`; see the `weir` crate.
//! assert_eq!(env.args().parallelism, 2);
//! ```

#![warn(missing_docs)]

mod alignment;
mod api;
mod args;
mod attempt;
mod checkpointing;
mod collector;
mod context;
mod control;
mod driver;
mod driver_ops;
mod element;
mod error;
mod exec;
pub mod fault;
mod graph;
mod launch;
mod metrics;
mod net;
mod operator;
mod operator_context;
mod output;
mod plan;
mod port;
mod progress;
mod source;
mod source_task;
mod task;
pub mod testing;
mod time;

pub use api::{ConnectedStreams, DataStream, KeyedConnectedStreams, KeyedStream, StreamEnv};
pub use args::{parse_bytes, parse_duration, JobArgs};
pub use control::{CheckpointInfo, SubtaskCheckpointInfo};
pub use element::{CheckpointBarrier, Data, Record, StreamElement, MAX_WATERMARK};
pub use error::Cancelled;
pub use exec::JobResult;
pub use metrics::JobMetrics;
pub use operator::{
    AsyncSnapshotPart, CoOperator, Collector, Counter, FiredTimer, Histogram, KeyedCoOperator, KeyedContext,
    KeyedOperator, Operator, OperatorContext, OutputTag, SideOutputs, TaskInfo, LATENCY_BUCKETS_MS,
};
pub use source::{Source, SourceOutput, SourcePoll, SourceReader};
pub use source_task::source_snapshot;
pub use time::{now_millis, WatermarkStrategy};
pub use weir_state::TimeDomain;

/// Sets up `tracing` output for a job binary: compact lines on stderr, filtered by `RUST_LOG`
/// (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .compact()
        .try_init();
}
