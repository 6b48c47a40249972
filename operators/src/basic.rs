//! Stateless one-input operators: map, filter, flat_map.

use std::marker::PhantomData;
use std::sync::Arc;

use anyhow::Result;
use weir_runtime::{Collector, Data, Operator, OperatorContext, Record};

/// Applies a function to every record.
pub struct Map<F, I, O> {
    f: Arc<F>,
    _t: PhantomData<fn(I) -> O>,
}

impl<F, I, O> Map<F, I, O> {
    /// A map operator sharing `f` between subtasks.
    pub fn new(f: Arc<F>) -> Self {
        Map { f, _t: PhantomData }
    }
}

impl<F, I, O> Operator for Map<F, I, O>
where
    F: Fn(I) -> O + Send + Sync + 'static,
    I: Data,
    O: Data,
{
    type In = I;
    type Out = O;
    #[inline]
    fn process(&mut self, r: Record<I>, _: &mut OperatorContext, out: &mut Collector<O>) -> Result<()> {
        out.collect((self.f)(r.value));
        Ok(())
    }
}

/// Keeps the records for which a predicate holds.
pub struct Filter<F, T> {
    f: Arc<F>,
    _t: PhantomData<fn(T)>,
}

impl<F, T> Filter<F, T> {
    /// A filter operator sharing `f` between subtasks.
    pub fn new(f: Arc<F>) -> Self {
        Filter { f, _t: PhantomData }
    }
}

impl<F, T> Operator for Filter<F, T>
where
    F: Fn(&T) -> bool + Send + Sync + 'static,
    T: Data,
{
    type In = T;
    type Out = T;
    #[inline]
    fn process(&mut self, r: Record<T>, _: &mut OperatorContext, out: &mut Collector<T>) -> Result<()> {
        if (self.f)(&r.value) {
            out.collect(r.value);
        }
        Ok(())
    }
}

/// Turns every record into zero or more records.
pub struct FlatMap<F, I, O> {
    f: Arc<F>,
    _t: PhantomData<fn(I) -> O>,
}

impl<F, I, O> FlatMap<F, I, O> {
    /// A flat-map operator sharing `f` between subtasks.
    pub fn new(f: Arc<F>) -> Self {
        FlatMap { f, _t: PhantomData }
    }
}

impl<F, I, O, It> Operator for FlatMap<F, I, O>
where
    F: Fn(I) -> It + Send + Sync + 'static,
    It: IntoIterator<Item = O>,
    I: Data,
    O: Data,
{
    type In = I;
    type Out = O;
    #[inline]
    fn process(&mut self, r: Record<I>, _: &mut OperatorContext, out: &mut Collector<O>) -> Result<()> {
        for v in (self.f)(r.value) {
            out.collect(v);
        }
        Ok(())
    }
}

/// A fallible map: records whose function fails stop the job with the error (use `flat_map` with
/// a side output to divert them instead).
pub struct TryMap<F, I, O> {
    f: Arc<F>,
    _t: PhantomData<fn(I) -> O>,
}

impl<F, I, O> TryMap<F, I, O> {
    /// A fallible map operator sharing `f` between subtasks.
    pub fn new(f: Arc<F>) -> Self {
        TryMap { f, _t: PhantomData }
    }
}

impl<F, I, O> Operator for TryMap<F, I, O>
where
    F: Fn(I) -> Result<O> + Send + Sync + 'static,
    I: Data,
    O: Data,
{
    type In = I;
    type Out = O;
    #[inline]
    fn process(&mut self, r: Record<I>, _: &mut OperatorContext, out: &mut Collector<O>) -> Result<()> {
        out.collect((self.f)(r.value)?);
        Ok(())
    }
}
