//! Sinks: part files (CSV, JSON lines, Parquet), standard output, and in-memory collection.

mod collect;
mod console;
mod file;
mod parquet;
mod print;

pub use collect::{CollectSink, Collected};
pub use console::{ConsoleTable, ConsoleTableOperator};
pub use file::{FileFormat, FileSink, FileSinkOperator};
pub use print::PrintSink;
