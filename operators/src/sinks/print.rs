//! Prints records to standard output, like Flink's `print()` and Spark's console sink.

use std::io::Write;
use std::marker::PhantomData;

use anyhow::Result;
use weir_runtime::{Collector, Data, Operator, OperatorContext, Record};

/// Writes each record's `Debug` form on its own line, prefixed by the subtask when parallel.
pub struct PrintSink<T> {
    prefix: String,
    _t: PhantomData<fn(T)>,
}

impl<T> PrintSink<T> {
    pub(crate) fn new(subtask: usize, parallelism: usize) -> Self {
        let prefix = if parallelism > 1 { format!("{}> ", subtask + 1) } else { String::new() };
        PrintSink { prefix, _t: PhantomData }
    }
}

impl<T: Data + std::fmt::Debug> Operator for PrintSink<T> {
    type In = T;
    type Out = ();
    fn process(&mut self, r: Record<T>, _: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}{:?}", self.prefix, r.value)?;
        Ok(())
    }
}
