//! Ready-made aggregate functions.

use std::marker::PhantomData;

use weir_state::AggregateFunction;

/// Counts records.
pub struct Count<T>(PhantomData<fn(T)>);

impl<T> Default for Count<T> {
    fn default() -> Self {
        Count(PhantomData)
    }
}

impl<T> Clone for Count<T> {
    fn clone(&self) -> Self {
        Count(PhantomData)
    }
}

impl<T: 'static> AggregateFunction for Count<T> {
    type In = T;
    type Acc = u64;
    type Out = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _: &T) {
        *acc += 1;
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
    fn merge(&self, a: u64, b: u64) -> u64 {
        a + b
    }
}

/// Sums a numeric field of records.
///
/// ```
/// use weir::prelude::*;
/// let sum = Sum::new(|x: &(String, i64)| x.1);
/// let mut acc = sum.create_accumulator();
/// sum.add(&mut acc, &("a".into(), 5));
/// sum.add(&mut acc, &("a".into(), 7));
/// assert_eq!(sum.get_result(&acc), 12);
/// ```
pub struct Sum<T, F> {
    field: F,
    _t: PhantomData<fn(T)>,
}

impl<T, F: Clone> Clone for Sum<T, F> {
    fn clone(&self) -> Self {
        Sum { field: self.field.clone(), _t: PhantomData }
    }
}

impl<T, F: Fn(&T) -> i64> Sum<T, F> {
    /// Sums `field(record)`.
    pub fn new(field: F) -> Self {
        Sum { field, _t: PhantomData }
    }
}

impl<T: 'static, F: Fn(&T) -> i64 + Send + Sync + 'static> AggregateFunction for Sum<T, F> {
    type In = T;
    type Acc = i64;
    type Out = i64;
    fn create_accumulator(&self) -> i64 {
        0
    }
    fn add(&self, acc: &mut i64, v: &T) {
        *acc += (self.field)(v);
    }
    fn get_result(&self, acc: &i64) -> i64 {
        *acc
    }
    fn merge(&self, a: i64, b: i64) -> i64 {
        a + b
    }
}

/// The largest value of a numeric field (`None` for no record).
pub struct Max<T, F> {
    field: F,
    _t: PhantomData<fn(T)>,
}

impl<T, F: Clone> Clone for Max<T, F> {
    fn clone(&self) -> Self {
        Max { field: self.field.clone(), _t: PhantomData }
    }
}

impl<T, F: Fn(&T) -> i64> Max<T, F> {
    /// The maximum of `field(record)`.
    pub fn new(field: F) -> Self {
        Max { field, _t: PhantomData }
    }
}

impl<T: 'static, F: Fn(&T) -> i64 + Send + Sync + 'static> AggregateFunction for Max<T, F> {
    type In = T;
    type Acc = Option<i64>;
    type Out = Option<i64>;
    fn create_accumulator(&self) -> Option<i64> {
        None
    }
    fn add(&self, acc: &mut Option<i64>, v: &T) {
        let x = (self.field)(v);
        *acc = Some(acc.map_or(x, |m| m.max(x)));
    }
    fn get_result(&self, acc: &Option<i64>) -> Option<i64> {
        *acc
    }
    fn merge(&self, a: Option<i64>, b: Option<i64>) -> Option<i64> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, None) => a,
            (None, b) => b,
        }
    }
}
