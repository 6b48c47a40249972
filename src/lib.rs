//! weir: an exactly-once stream processing runtime in the style of Flink's DataStream API.
//!
//! A job is a binary: it parses its flags (with [`JobArgs`](prelude::JobArgs) flattened in),
//! builds a graph on a [`StreamEnv`](prelude::StreamEnv) and executes it.
//!
//! ```
//! use weir::prelude::*;
//! let env = StreamEnv::new(JobArgs::default());
//! let counts = Collected::new();
//! env.add_source("words", VecSource::new(vec!["a".to_string(), "b".into(), "a".into()]), WatermarkStrategy::no_watermarks())
//!     .key_by(|w: &String| w.clone())
//!     .window(GlobalWindows::create())
//!     .aggregate_with(Count::default(), |word: &String, _w, n, out| out.collect((word.clone(), n)))
//!     .collect_into(&counts);
//! env.execute("count").unwrap();
//! let mut counts = counts.take();
//! counts.sort();
//! assert_eq!(counts, vec![("a".to_string(), 2), ("b".to_string(), 1)]);
//! ```

pub use weir_checkpoint as checkpoint;
pub use weir_operators as operators;
pub use weir_runtime as runtime;
pub use weir_state as state;

mod functions;
pub mod inspect;
pub mod nexmark;

/// Everything a job needs, in one import.
pub mod prelude {
    pub use crate::functions::{Count, Max, Sum};
    pub use weir_operators::sinks::{Collected, ConsoleTable, FileSink};
    pub use weir_operators::sources::{DeadLetter, FileSource, HttpSource, SocketSource, VecSource};
    pub use weir_operators::window::{
        EventTimeSessionWindows, GlobalWindows, SlidingEventTimeWindows, TimeWindow, TumblingEventTimeWindows,
        TumblingProcessingTimeWindows,
    };
    pub use weir_operators::{DataStreamExt, KeyedStreamExt};
    pub use weir_runtime::{
        init_logging, parse_duration, Collector, Data, DataStream, FiredTimer, JobArgs, JobResult, KeyedContext,
        KeyedOperator, KeyedStream, Operator, OperatorContext, OutputTag, Record, StreamEnv, TimeDomain,
        WatermarkStrategy,
    };
    pub use weir_state::{
        AggregateFunction, ListStateDescriptor, MapStateDescriptor, ReducingStateDescriptor, StateTtlConfig,
        ValueStateDescriptor,
    };
}
