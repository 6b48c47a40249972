//! Keyed state for weir: a RocksDB backend organised in key groups, typed state handles with TTL,
//! and timer storage.
//!
//! Operators never use this crate's backend directly: the runtime owns one [`KeyedStateBackend`] per
//! stateful subtask, sets the current key, and operators reach state through descriptors bound via
//! their context.

#![warn(missing_docs)]

mod backend;
pub mod codec;
mod handles;
pub mod keygroup;
pub mod snapshot;

pub use backend::{
    system_clock, Clock, KeyedStateBackend, StateKind, StateMemory, StateMeta, StateTtlConfig, TimeDomain, Timer,
    DEFAULT_CACHE_BYTES, DEFAULT_STATE_MEMORY, META_CF, TIMERS_CF,
};
pub use handles::{
    AggregateFunction, AggregatingState, AggregatingStateDescriptor, ListState, ListStateDescriptor, MapState,
    MapStateDescriptor, ReducingState, ReducingStateDescriptor, StateDescriptor, ValueState, ValueStateDescriptor,
};
pub use keygroup::{KeyGroupRange, DEFAULT_MAX_PARALLELISM};
