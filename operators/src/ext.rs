//! The builder methods jobs call on streams (`map`, `window`, `write_csv`, ...), added to the
//! runtime's stream types by extension traits.

use std::sync::Arc;

use anyhow::Result;
use serde::Serialize;
use weir_runtime::{Data, DataStream, KeyedOperator, KeyedStream, Operator};
use weir_state::AggregateFunction;

use crate::basic::{Filter, FlatMap, Map, TryMap};
use crate::kafka::Delivery;
use crate::keyed::{RollingAggregate, RollingReduce};
use crate::sinks::{CollectSink, Collected, ConsoleTable, FileSink, PrintSink};
use crate::window::{WindowAssigner, WindowedStream};

/// Transformations and sinks of any stream.
pub trait DataStreamExt<T: Data> {
    /// Applies `f` to every record.
    ///
    /// ```
    /// use weir_operators::{sinks::Collected, sources::VecSource, DataStreamExt};
    /// use weir_runtime::{JobArgs, StreamEnv, WatermarkStrategy};
    /// let env = StreamEnv::new(JobArgs::default());
    /// let out = Collected::new();
    /// env.add_source("numbers", VecSource::new(vec![1, 2, 3]), WatermarkStrategy::no_watermarks())
    ///     .map(|x: i32| x * 10)
    ///     .collect_into(&out);
    /// env.execute("map").unwrap();
    /// assert_eq!(out.take(), vec![10, 20, 30]);
    /// ```
    fn map<O: Data, F: Fn(T) -> O + Send + Sync + 'static>(&self, f: F) -> DataStream<O>;
    /// Applies a fallible `f`; an error fails the job.
    fn try_map<O: Data, F: Fn(T) -> Result<O> + Send + Sync + 'static>(&self, f: F) -> DataStream<O>;
    /// Keeps records for which `f` holds.
    fn filter<F: Fn(&T) -> bool + Send + Sync + 'static>(&self, f: F) -> DataStream<T>;
    /// Turns every record into zero or more.
    fn flat_map<O: Data, I: IntoIterator<Item = O>, F: Fn(T) -> I + Send + Sync + 'static>(
        &self,
        f: F,
    ) -> DataStream<O>;
    /// Adds an operator; each subtask gets a clone of `op`.
    fn process<Op: Operator<In = T> + Clone + Send + Sync>(&self, name: &str, op: Op) -> DataStream<Op::Out>;
    /// Prints every record to standard output.
    fn print(&self) -> DataStream<()>
    where
        T: std::fmt::Debug;
    /// Prints the latest row per key as a table every trigger interval, like Spark's console
    /// sink in complete mode (one subtask).
    fn print_table(&self, table: ConsoleTable<T>) -> DataStream<()>;
    /// Writes part files (CSV, JSON lines or Parquet) under the sink's directory.
    fn write_files(&self, sink: FileSink<T>) -> DataStream<()>
    where
        T: Serialize;
    /// Appends every record to `target` (tests, small examples).
    fn collect_into(&self, target: &Collected<T>) -> DataStream<()>;
    /// Writes records to a Kafka topic.
    fn write_kafka(&self, sink: crate::kafka::KafkaSink<T>) -> DataStream<()>;
}

impl<T: Data> DataStreamExt<T> for DataStream<T> {
    fn map<O: Data, F: Fn(T) -> O + Send + Sync + 'static>(&self, f: F) -> DataStream<O> {
        let f = Arc::new(f);
        self.transform("map", move |_| Map::new(f.clone()))
    }
    fn try_map<O: Data, F: Fn(T) -> Result<O> + Send + Sync + 'static>(&self, f: F) -> DataStream<O> {
        let f = Arc::new(f);
        self.transform("map", move |_| TryMap::new(f.clone()))
    }
    fn filter<F: Fn(&T) -> bool + Send + Sync + 'static>(&self, f: F) -> DataStream<T> {
        let f = Arc::new(f);
        self.transform("filter", move |_| Filter::new(f.clone()))
    }
    fn flat_map<O: Data, I: IntoIterator<Item = O>, F: Fn(T) -> I + Send + Sync + 'static>(
        &self,
        f: F,
    ) -> DataStream<O> {
        let f = Arc::new(f);
        self.transform("flat-map", move |_| FlatMap::new(f.clone()))
    }
    fn process<Op: Operator<In = T> + Clone + Send + Sync>(&self, name: &str, op: Op) -> DataStream<Op::Out> {
        self.transform(name, move |_| op.clone())
    }
    fn print(&self) -> DataStream<()>
    where
        T: std::fmt::Debug,
    {
        self.transform("print", |info| PrintSink::new(info.subtask, info.parallelism))
    }
    fn print_table(&self, table: ConsoleTable<T>) -> DataStream<()> {
        self.transform("console", move |_| table.operator()).set_parallelism(1)
    }
    fn write_files(&self, sink: FileSink<T>) -> DataStream<()>
    where
        T: Serialize,
    {
        self.transform("file-sink", move |info| sink.operator(info))
    }
    fn collect_into(&self, target: &Collected<T>) -> DataStream<()> {
        let target = target.clone();
        self.transform("collect", move |_| CollectSink::new(target.clone()))
    }
    fn write_kafka(&self, sink: crate::kafka::KafkaSink<T>) -> DataStream<()> {
        // Each delivery mode is an operator type of its own.
        match sink.delivery() {
            Delivery::AtLeastOnce => self.transform("kafka-sink", move |_| sink.at_least_once()),
            Delivery::ExactlyOncePublish => self.transform("kafka-sink", move |info| sink.publish(info.subtask)),
            Delivery::ExactlyOnceTxn => self.transform("kafka-sink", move |info| sink.transactional(info.subtask)),
        }
    }
}

/// Keyed transformations.
pub trait KeyedStreamExt<K: Data, T: Data> {
    /// Adds a keyed operator with state and timers; each subtask gets a clone of `op`.
    fn process<Op: KeyedOperator<Key = K, In = T> + Clone + Send + Sync>(
        &self,
        name: &str,
        op: Op,
    ) -> DataStream<Op::Out>;
    /// Folds each key's records with `f`, emitting the running value.
    fn reduce<F: Fn(&T, &T) -> T + Send + Sync + 'static>(&self, f: F) -> DataStream<T>;
    /// Aggregates each key's records, emitting `(key, result)` on every record.
    fn aggregate<A>(&self, agg: A) -> DataStream<(K, A::Out)>
    where
        A: AggregateFunction<In = T> + Clone,
        A::Out: Data;
    /// Cuts each key's records into windows.
    fn window<W: WindowAssigner>(&self, assigner: W) -> WindowedStream<K, T>;
}

impl<K: Data, T: Data> KeyedStreamExt<K, T> for KeyedStream<K, T> {
    fn process<Op: KeyedOperator<Key = K, In = T> + Clone + Send + Sync>(
        &self,
        name: &str,
        op: Op,
    ) -> DataStream<Op::Out> {
        self.transform(name, move |_| op.clone())
    }
    fn reduce<F: Fn(&T, &T) -> T + Send + Sync + 'static>(&self, f: F) -> DataStream<T> {
        let f = Arc::new(f);
        self.transform("reduce", move |_| RollingReduce::<K, T, F>::new(f.clone()))
    }
    fn aggregate<A>(&self, agg: A) -> DataStream<(K, A::Out)>
    where
        A: AggregateFunction<In = T> + Clone,
        A::Out: Data,
    {
        self.transform("aggregate", move |_| RollingAggregate::<K, A>::new(agg.clone()))
    }
    fn window<W: WindowAssigner>(&self, assigner: W) -> WindowedStream<K, T> {
        WindowedStream::new(self.clone(), Arc::new(assigner))
    }
}
