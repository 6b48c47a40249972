//! Where operators emit: the [`Collector`] and side outputs named by [`OutputTag`].

use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::element::{Data, Record};

/// Names a side output of type `T` (Flink's `OutputTag`).
///
/// ```
/// use weir_runtime::OutputTag;
/// let late: OutputTag<String> = OutputTag::new("late-bids");
/// assert_eq!(late.name(), "late-bids");
/// ```
pub struct OutputTag<T> {
    name: Arc<str>,
    _t: PhantomData<fn() -> T>,
}

impl<T> OutputTag<T> {
    /// A tag with a name unique within the operator that emits to it.
    pub fn new(name: &str) -> Self {
        OutputTag { name: name.into(), _t: PhantomData }
    }
    /// The tag's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    pub(crate) fn shared_name(&self) -> Arc<str> {
        self.name.clone()
    }
}

impl<T> Clone for OutputTag<T> {
    fn clone(&self) -> Self {
        OutputTag { name: self.name.clone(), _t: PhantomData }
    }
}

/// Buffers for the side outputs of one operator that something downstream consumes.
#[derive(Default)]
pub struct SideOutputs {
    pub(crate) ports: Vec<(Arc<str>, Box<dyn Any>)>,
}

/// Where an operator emits its results.
///
/// `collect` keeps the timestamp of the record being processed (or of the timer being fired);
/// `collect_at` sets one explicitly.
pub struct Collector<'a, T> {
    main: &'a mut Vec<Record<T>>,
    sides: &'a mut SideOutputs,
    ts: Option<i64>,
}

impl<'a, T> Collector<'a, T> {
    /// A collector writing into `main` and `sides`; runtimes and tests use it.
    pub fn new(main: &'a mut Vec<Record<T>>, sides: &'a mut SideOutputs) -> Self {
        Collector { main, sides, ts: None }
    }

    /// Sets the timestamp `collect` gives records from now on.
    pub fn set_timestamp(&mut self, ts: Option<i64>) {
        self.ts = ts;
    }

    /// Emits `value` with the current timestamp.
    #[inline]
    pub fn collect(&mut self, value: T) {
        self.main.push(Record { ts: self.ts, value });
    }

    /// Emits `value` with timestamp `ts`.
    #[inline]
    pub fn collect_at(&mut self, value: T, ts: Option<i64>) {
        self.main.push(Record { ts, value });
    }

    /// Emits `value` to the side output `tag` (dropped if nothing consumes that side output).
    pub fn side<X: Data>(&mut self, tag: &OutputTag<X>, value: X) {
        let ts = self.ts;
        for (name, buf) in &mut self.sides.ports {
            if **name == *tag.name {
                if let Some(buf) = buf.downcast_mut::<Vec<Record<X>>>() {
                    buf.push(Record { ts, value });
                }
                return;
            }
        }
    }
}
