//! Stateless one-input operators: map, filter, flat_map, try_map. One struct holds the user's
//! function for all four; a marker type says how its result becomes output records.

use std::marker::PhantomData;
use std::sync::Arc;

use anyhow::Result;
use weir_runtime::{Collector, Data, Operator, OperatorContext, Record};

/// A stateless operator applying a function shared between subtasks; `How` is one of the marker
/// types below. Use it through the aliases [`Map`], [`Filter`], [`FlatMap`] and [`TryMap`].
pub struct FnOperator<F, I, O, How> {
    f: Arc<F>,
    _t: PhantomData<fn(I, How) -> O>,
}

impl<F, I, O, How> FnOperator<F, I, O, How> {
    /// An operator sharing `f` between subtasks.
    pub fn new(f: Arc<F>) -> Self {
        FnOperator { f, _t: PhantomData }
    }
}

/// Marker: one output record per input record.
pub enum OneToOne {}
/// Marker: the input record if the predicate holds.
pub enum Keep {}
/// Marker: every item the function returns.
pub enum Many {}
/// Marker: one output record, or the function's error stops the job.
pub enum OneOrError {}

/// Applies a function to every record.
pub type Map<F, I, O> = FnOperator<F, I, O, OneToOne>;
/// Keeps the records for which a predicate holds.
pub type Filter<F, T> = FnOperator<F, T, T, Keep>;
/// Turns every record into zero or more records.
pub type FlatMap<F, I, O> = FnOperator<F, I, O, Many>;
/// A fallible map: records whose function fails stop the job with the error (use `flat_map` with
/// a side output to divert them instead).
pub type TryMap<F, I, O> = FnOperator<F, I, O, OneOrError>;

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
