//! Sinks: part files (CSV, JSON lines, Parquet), standard output, and in-memory collection, and
//! the two-phase commit every exactly-once sink is built on.

mod collect;
mod console;
pub(crate) mod file;
#[cfg(test)]
mod file_tests;
mod latency;
mod parquet;
mod part_store;
mod print;
pub mod two_phase;

pub use collect::{CollectSink, Collected};
pub use console::{ConsoleTable, ConsoleTableOperator};
pub use file::{FileFormat, FileSink, FileSinkMeta, FileSinkWriter};
pub use part_store::PendingFile;
pub use print::PrintSink;
