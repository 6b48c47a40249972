//! Keyed state for weir: a RocksDB backend organised in key groups, typed state handles with TTL,
//! and timer storage.
//!
//! Operators never use this crate's backend directly: the runtime owns one [`KeyedStateBackend`] per
//! stateful subtask, sets the current key, and operators reach its [`KeyedState`] through
//! descriptors bound via their context, and its [`TimerService`] through the same context.
//!
//! One concern a module: `meta` (what a state is), `descriptors` (declaring one), `handles` (its typed views), `keyed` (the state views read and write),
//! `cache` (the write cache), `timers` (the timer service), `store` (the RocksDB database),
//! `memory` (the shared budget), `backend` (all of it for one subtask), `snapshot` (reading and
//! moving snapshots).

#![warn(missing_docs)]

mod backend;
mod cache;
pub mod codec;
mod descriptors;
mod handles;
mod ingest;
mod keyed;
pub mod keygroup;
mod memory;
mod meta;
pub mod snapshot;
mod store;
mod timers;

pub use backend::{KeyedStateBackend, PendingCheckpoint};
pub use cache::DEFAULT_CACHE_BYTES;
pub use descriptors::{
    AggregateFunction, AggregatingStateDescriptor, ListStateDescriptor, MapStateDescriptor, ReducingStateDescriptor,
    StateDescriptor, ValueStateDescriptor,
};
pub use handles::{AggregatingState, ListState, MapState, ReducingState, ValueState};
pub use keyed::KeyedState;
pub use keygroup::{KeyGroupRange, DEFAULT_MAX_PARALLELISM};
pub use memory::{StateMemory, DEFAULT_STATE_MEMORY};
pub use meta::{system_clock, Clock, StateKind, StateMeta, StateTtlConfig};
pub use store::{META_CF, TIMERS_CF};
pub use timers::{TimeDomain, Timer, TimerService};
