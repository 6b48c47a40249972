//! Checkpoint and savepoint storage of weir, and the `weir` command-line tool.
//!
//! The storage layout, metadata format and CLI arrive with checkpointing; this crate already fixes
//! the on-disk format version so that everything written later carries it.

#![warn(missing_docs)]

/// Version of the checkpoint and savepoint format written by this build.
pub const FORMAT_VERSION: u32 = 1;
