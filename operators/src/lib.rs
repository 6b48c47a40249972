//! Operators of weir: stateless transformations, keyed rolling aggregations, windows, sources
//! and sinks. They are added to the runtime's stream types by [`DataStreamExt`] and
//! [`KeyedStreamExt`].

#![warn(missing_docs)]

mod basic;
pub mod describe;
mod ext;
pub mod kafka;
mod keyed;
#[cfg(test)]
mod keyed_tests;
pub mod sinks;
pub mod sources;
pub mod window;

pub use basic::{Filter, FlatMap, FnOperator, Keep, Many, Map, OneOrError, OneToOne, TryMap};
pub use ext::{DataStreamExt, KeyedStreamExt};
pub use keyed::{RollingAggregate, RollingReduce};
