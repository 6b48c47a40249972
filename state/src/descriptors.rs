//! Descriptors say what a state is (name, kind, TTL, the function it folds with); bound to the
//! keyed state they give the typed views of `handles`.

use std::marker::PhantomData;
use std::sync::Arc;

use anyhow::Result;
use serde::{de::DeserializeOwned, Serialize};

use crate::backend::KeyedStateBackend;
use crate::handles::{AggregatingState, ListState, MapState, ReducingState, ValueState};
use crate::keyed::KeyedState;
use crate::meta::{StateKind, StateTtlConfig};

/// Folds values into an accumulator and produces a result from it (Flink's `AggregateFunction`).
///
/// ```
/// use weir_state::AggregateFunction;
/// struct Avg;
/// impl AggregateFunction for Avg {
///     type In = f64;
///     type Acc = (f64, u64);
///     type Out = f64;
///     fn create_accumulator(&self) -> (f64, u64) { (0.0, 0) }
///     fn add(&self, acc: &mut (f64, u64), v: &f64) { acc.0 += v; acc.1 += 1; }
///     fn get_result(&self, acc: &(f64, u64)) -> f64 { acc.0 / acc.1 as f64 }
///     fn merge(&self, a: (f64, u64), b: (f64, u64)) -> (f64, u64) { (a.0 + b.0, a.1 + b.1) }
/// }
/// let mut acc = Avg.create_accumulator();
/// Avg.add(&mut acc, &1.0);
/// Avg.add(&mut acc, &3.0);
/// assert_eq!(Avg.get_result(&acc), 2.0);
/// ```
pub trait AggregateFunction: Send + Sync + 'static {
    /// The input values.
    type In;
    /// The accumulator kept in state (between checkpoints as a live object, hence `Send`).
    type Acc: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The result.
    type Out;
    /// A fresh accumulator.
    fn create_accumulator(&self) -> Self::Acc;
    /// Adds one value to an accumulator.
    fn add(&self, acc: &mut Self::Acc, value: &Self::In);
    /// The result of an accumulator.
    fn get_result(&self, acc: &Self::Acc) -> Self::Out;
    /// Merges two accumulators (used by session windows).
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Self::Acc;
}

/// The function a reducing state folds values with.
pub type ReduceFn<T> = Arc<dyn Fn(&T, &T) -> T + Send + Sync>;

macro_rules! descriptor {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        pub struct $name<T> {
            name: Arc<str>,
            ttl: Option<StateTtlConfig>,
            _t: PhantomData<fn() -> T>,
        }

        impl<T> $name<T> {
            /// A state called `name` (unique within the operator).
            pub fn new(name: &str) -> Self {
                $name { name: name.into(), ttl: None, _t: PhantomData }
            }

            /// Entries of this state expire after `ttl`.
            pub fn with_ttl(mut self, ttl: StateTtlConfig) -> Self {
                self.ttl = Some(ttl);
                self
            }

            /// The state's name.
            pub fn name(&self) -> &str {
                &self.name
            }

            fn id(&self, b: &mut KeyedState) -> Result<usize> {
                b.state_id(&self.name, $kind, self.ttl)
            }
        }

        impl<T> Clone for $name<T> {
            fn clone(&self) -> Self {
                $name { name: self.name.clone(), ttl: self.ttl, _t: PhantomData }
            }
        }
    };
}

descriptor!(
    /// Declares a [`ValueState`].
    ValueStateDescriptor,
    StateKind::Value
);
descriptor!(
    /// Declares a [`ListState`].
    ListStateDescriptor,
    StateKind::List
);

/// Declares a [`MapState`] from `UK` to `UV`.
pub struct MapStateDescriptor<UK, UV> {
    inner: ValueStateDescriptor<(UK, UV)>,
}

impl<UK, UV> MapStateDescriptor<UK, UV> {
    /// A map state called `name`.
    pub fn new(name: &str) -> Self {
        MapStateDescriptor { inner: ValueStateDescriptor::new(name) }
    }
    /// Entries of this map expire after `ttl` (each entry on its own).
    pub fn with_ttl(self, ttl: StateTtlConfig) -> Self {
        MapStateDescriptor { inner: self.inner.with_ttl(ttl) }
    }
    /// The state's name.
    pub fn name(&self) -> &str {
        self.inner.name()
    }
}

impl<UK, UV> Clone for MapStateDescriptor<UK, UV> {
    fn clone(&self) -> Self {
        MapStateDescriptor { inner: self.inner.clone() }
    }
}

/// Declares a [`ReducingState`] that folds values with a reduce function.
pub struct ReducingStateDescriptor<T> {
    inner: ValueStateDescriptor<T>,
    reduce: ReduceFn<T>,
}

impl<T> ReducingStateDescriptor<T> {
    /// A reducing state called `name` that combines values with `reduce`.
    pub fn new(name: &str, reduce: impl Fn(&T, &T) -> T + Send + Sync + 'static) -> Self {
        ReducingStateDescriptor { inner: ValueStateDescriptor::new(name), reduce: Arc::new(reduce) }
    }
    /// Entries expire after `ttl`.
    pub fn with_ttl(self, ttl: StateTtlConfig) -> Self {
        ReducingStateDescriptor { inner: self.inner.with_ttl(ttl), reduce: self.reduce }
    }
    /// The state's name.
    pub fn name(&self) -> &str {
        self.inner.name()
    }
}

impl<T> Clone for ReducingStateDescriptor<T> {
    fn clone(&self) -> Self {
        ReducingStateDescriptor { inner: self.inner.clone(), reduce: self.reduce.clone() }
    }
}

/// Declares an [`AggregatingState`] that keeps the accumulator of an [`AggregateFunction`].
pub struct AggregatingStateDescriptor<A: AggregateFunction> {
    inner: ValueStateDescriptor<A::Acc>,
    agg: Arc<A>,
}

impl<A: AggregateFunction> AggregatingStateDescriptor<A> {
    /// An aggregating state called `name` using `agg`.
    pub fn new(name: &str, agg: A) -> Self {
        AggregatingStateDescriptor { inner: ValueStateDescriptor::new(name), agg: Arc::new(agg) }
    }
    /// Entries expire after `ttl`.
    pub fn with_ttl(self, ttl: StateTtlConfig) -> Self {
        AggregatingStateDescriptor { inner: self.inner.with_ttl(ttl), agg: self.agg }
    }
    /// The state's name.
    pub fn name(&self) -> &str {
        self.inner.name()
    }
    /// The aggregate function.
    pub fn function(&self) -> &A {
        &self.agg
    }
}

impl<A: AggregateFunction> Clone for AggregatingStateDescriptor<A> {
    fn clone(&self) -> Self {
        AggregatingStateDescriptor { inner: self.inner.clone(), agg: self.agg.clone() }
    }
}

/// Anything that declares a state and can be bound to the keyed state to give a typed view.
///
/// ```
/// use weir_state::{KeyedStateBackend, KeyGroupRange, ListStateDescriptor, StateDescriptor};
/// let dir = tempfile::tempdir().unwrap();
/// let mut b = KeyedStateBackend::open(dir.path(), KeyGroupRange::for_subtask(128, 1, 0), 128).unwrap();
/// let seen = ListStateDescriptor::<String>::new("seen");
/// b.set_current_key(&1u32).unwrap();
/// seen.bind(b.state()).unwrap().add(&"a".to_string()).unwrap();
/// seen.bind(b.state()).unwrap().add(&"b".to_string()).unwrap();
/// assert_eq!(seen.bind(b.state()).unwrap().get().unwrap(), vec!["a", "b"]);
/// ```
pub trait StateDescriptor {
    /// The typed view.
    type Handle<'a>;
    /// Declares the state in `state` (once) and returns a view for the current key.
    fn bind<'a>(&self, state: &'a mut KeyedState) -> Result<Self::Handle<'a>>;
}

impl<T: Serialize + DeserializeOwned> StateDescriptor for ValueStateDescriptor<T> {
    type Handle<'a> = ValueState<'a, T>;
    fn bind<'a>(&self, b: &'a mut KeyedState) -> Result<ValueState<'a, T>> {
        let id = self.id(b)?;
        Ok(ValueState { b, id, ns: Vec::new(), _t: PhantomData })
    }
}

impl<T: Serialize + DeserializeOwned> StateDescriptor for ListStateDescriptor<T> {
    type Handle<'a> = ListState<'a, T>;
    fn bind<'a>(&self, b: &'a mut KeyedState) -> Result<ListState<'a, T>> {
        let id = self.id(b)?;
        Ok(ListState { b, id, ns: Vec::new(), _t: PhantomData })
    }
}

impl<UK: Serialize + DeserializeOwned, UV: Serialize + DeserializeOwned> StateDescriptor
    for MapStateDescriptor<UK, UV>
{
    type Handle<'a> = MapState<'a, UK, UV>;
    fn bind<'a>(&self, b: &'a mut KeyedState) -> Result<MapState<'a, UK, UV>> {
        let id = b.state_id(self.inner.name(), StateKind::Map, self.inner.ttl)?;
        Ok(MapState { b, id, ns: Vec::new(), _t: PhantomData })
    }
}

impl<T: Serialize + DeserializeOwned> StateDescriptor for ReducingStateDescriptor<T> {
    type Handle<'a> = ReducingState<'a, T>;
    fn bind<'a>(&self, b: &'a mut KeyedState) -> Result<ReducingState<'a, T>> {
        let id = b.state_id(self.inner.name(), StateKind::Reducing, self.inner.ttl)?;
        let inner = ValueState { b, id, ns: Vec::new(), _t: PhantomData };
        Ok(ReducingState { inner, reduce: self.reduce.clone() })
    }
}

impl<A: AggregateFunction> StateDescriptor for AggregatingStateDescriptor<A> {
    type Handle<'a> = AggregatingState<'a, A>;
    fn bind<'a>(&self, b: &'a mut KeyedState) -> Result<AggregatingState<'a, A>> {
        let id = b.state_id(self.inner.name(), StateKind::Aggregating, self.inner.ttl)?;
        let inner = ValueState { b, id, ns: Vec::new(), _t: PhantomData };
        Ok(AggregatingState { inner, agg: self.agg.clone() })
    }
}

impl KeyedStateBackend {
    /// A view of a value state for the current key.
    pub fn value_state<T: Serialize + DeserializeOwned>(
        &mut self,
        d: &ValueStateDescriptor<T>,
    ) -> Result<ValueState<'_, T>> {
        d.bind(self.state())
    }
}
