//! Checkpoint and savepoint storage of weir (the `weir` command-line tool that reads it is in the
//! top-level package).
//!
//! * [`metadata`]: the versioned `_metadata` format with checksums, and verification (which
//!   skips the files this machine checksummed and nobody wrote since: `stamps.rs`).
//! * [`storage`]: the layout of a job's checkpoint directory, incremental shared files,
//!   retention, and savepoint copies.
//! * [`commit`]: the commit point, and the chain of commits that keeps a stale coordinator
//!   from committing.
//! * [`inspect`]: reading a snapshot's keyed state without the job's Rust types.
//! * [`location`]: where checkpoints live (a directory or `s3://bucket/prefix`); [`remote`] does
//!   the object-store transfers behind [`CheckpointStorage`] (and behind the file sinks' output on
//!   object stores), [`upload`] the multipart uploads a checkpoint completes later.

#![warn(missing_docs)]

pub mod commit;
pub mod inspect;
pub mod location;
pub mod metadata;
pub mod open;
pub mod remote;
mod retention;
mod stamps;
pub mod storage;
pub mod upload;

pub use commit::{Chain, Stale};
pub use location::Location;
pub use metadata::{
    load, read_metadata, verify, write_metadata, CheckpointMetadata, FileRef, LoadedSnapshot, OperatorSnapshot,
    SnapshotKind, SubtaskSnapshot, FORMAT_VERSION, METADATA_FILE as METADATA_FILE_NAME,
};
pub use storage::{jobs_at, link_or_copy, local_snapshot, materialize, CheckpointStorage, Listed};
