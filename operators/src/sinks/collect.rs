//! Collects records into memory, for tests and small examples.

use std::sync::Arc;

use anyhow::Result;
use parking_lot::Mutex;
use weir_runtime::{Collector, Data, Operator, OperatorContext, Record};

/// A shared list that a [`CollectSink`] fills; read it after the job ended.
///
/// ```
/// let results = weir_operators::sinks::Collected::<u32>::new();
/// assert!(results.take().is_empty());
/// ```
pub struct Collected<T> {
    inner: Arc<Mutex<Vec<Record<T>>>>,
}

impl<T> Clone for Collected<T> {
    fn clone(&self) -> Self {
        Collected { inner: self.inner.clone() }
    }
}

impl<T> Default for Collected<T> {
    fn default() -> Self {
        Collected { inner: Arc::new(Mutex::new(Vec::new())) }
    }
}

impl<T> Collected<T> {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }
    /// Takes the collected values out.
    pub fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.inner.lock()).into_iter().map(|r| r.value).collect()
    }
    /// Takes the collected records (with their timestamps) out.
    pub fn take_records(&self) -> Vec<Record<T>> {
        std::mem::take(&mut *self.inner.lock())
    }
}

/// Appends every record to a [`Collected`] list.
pub struct CollectSink<T> {
    target: Collected<T>,
    buf: Vec<Record<T>>,
}

impl<T> CollectSink<T> {
    pub(crate) fn new(target: Collected<T>) -> Self {
        CollectSink { target, buf: Vec::new() }
    }
}

impl<T: Data> Operator for CollectSink<T> {
    type In = T;
    type Out = ();
    fn process(&mut self, r: Record<T>, _: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        self.buf.push(r);
        if self.buf.len() >= 1024 {
            self.target.inner.lock().append(&mut self.buf);
        }
        Ok(())
    }
    fn on_watermark(&mut self, _: i64, _: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        self.target.inner.lock().append(&mut self.buf);
        Ok(())
    }
    fn end_input(&mut self, _: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        self.target.inner.lock().append(&mut self.buf);
        Ok(())
    }
}
