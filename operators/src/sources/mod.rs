//! Sources: files, sockets, HTTP ingest, the Nexmark generator and in-memory collections.

mod collection;
pub(crate) mod file;
mod http;
pub mod nexmark;
mod pace;
mod socket;

pub use collection::VecSource;
pub use file::{list_files, plan_splits, DeadLetter, FileSource, FileSplit, LineParser, OnMalformed};
pub use http::HttpSource;
pub use nexmark::{NexmarkConfig, NexmarkSource};
pub use pace::Pace;
pub use socket::SocketSource;
