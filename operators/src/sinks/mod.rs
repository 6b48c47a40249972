//! Sinks: part files (CSV, JSON lines), standard output, and in-memory collection.

mod collect;
mod file;
mod print;

pub use collect::{CollectSink, Collected};
pub use file::{FileFormat, FileSink, FileSinkOperator};
pub use print::PrintSink;
