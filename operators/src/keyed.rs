//! Rolling keyed operators: reduce and aggregate emit the updated result for every record.

use std::marker::PhantomData;
use std::sync::Arc;

use anyhow::Result;
use weir_runtime::{Collector, Data, KeyedContext, KeyedOperator, Record};
use weir_state::{AggregateFunction, AggregatingStateDescriptor, ValueStateDescriptor};

/// Keeps one value per key, folds every record into it and emits the new value (Flink's
/// `KeyedStream.reduce`).
pub struct RollingReduce<K, T, F> {
    f: Arc<F>,
    state: ValueStateDescriptor<T>,
    _k: PhantomData<fn() -> K>,
}

impl<K, T, F> RollingReduce<K, T, F> {
    /// A rolling reduce with `f`.
    pub fn new(f: Arc<F>) -> Self {
        RollingReduce { f, state: ValueStateDescriptor::new("reduce"), _k: PhantomData }
    }
}

impl<K: Data, T: Data, F: Fn(&T, &T) -> T + Send + Sync + 'static> KeyedOperator for RollingReduce<K, T, F> {
    type Key = K;
    type In = T;
    type Out = T;
    fn process(&mut self, _key: &K, r: Record<T>, ctx: &mut KeyedContext, out: &mut Collector<T>) -> Result<()> {
        let mut st = ctx.state(&self.state)?;
        let next = match st.value()? {
            Some(cur) => (self.f)(&cur, &r.value),
            None => r.value,
        };
        st.update(&next)?;
        out.collect(next);
        Ok(())
    }
}

/// Keeps an accumulator per key and emits the key with its updated result for every record.
pub struct RollingAggregate<K, A: AggregateFunction> {
    state: AggregatingStateDescriptor<A>,
    _k: PhantomData<fn() -> K>,
}

impl<K, A: AggregateFunction> RollingAggregate<K, A> {
    /// A rolling aggregate with `agg`.
    pub fn new(agg: A) -> Self {
        RollingAggregate { state: AggregatingStateDescriptor::new("aggregate", agg), _k: PhantomData }
    }
}

impl<K: Data, A> KeyedOperator for RollingAggregate<K, A>
where
    A: AggregateFunction,
    A::In: Data,
    A::Out: Data,
{
    type Key = K;
    type In = A::In;
    type Out = (K, A::Out);
    fn process(
        &mut self,
        key: &K,
        r: Record<A::In>,
        ctx: &mut KeyedContext,
        out: &mut Collector<(K, A::Out)>,
    ) -> Result<()> {
        let mut st = ctx.state(&self.state)?;
        st.add(&r.value)?;
        if let Some(result) = st.get()? {
            out.collect((key.clone(), result));
        }
        Ok(())
    }
}
