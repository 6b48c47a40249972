//! Typed views of keyed state: they read and write one declared state for the current key.

use std::marker::PhantomData;
use std::sync::Arc;

use anyhow::Result;
use serde::{de::DeserializeOwned, Serialize};

use crate::codec;
use crate::descriptors::{AggregateFunction, ReduceFn};
use crate::keyed::KeyedState;
use crate::meta::StateTtlConfig;

fn now_expiry(b: &KeyedState, ttl: &StateTtlConfig) -> i64 {
    b.now().saturating_add(ttl.ttl_ms)
}

/// Splits a stored value into (expiry, payload) given the state's TTL.
fn split_ttl<'a>(bytes: &'a [u8], ttl: Option<&StateTtlConfig>) -> Result<(Option<i64>, &'a [u8])> {
    match ttl {
        None => Ok((None, bytes)),
        Some(_) => {
            let head: [u8; 8] = bytes
                .get(..8)
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| anyhow::anyhow!("state value shorter than its TTL header"))?;
            Ok((Some(i64::from_be_bytes(head)), &bytes[8..]))
        }
    }
}

fn encode_value<T: Serialize + ?Sized>(b: &KeyedState, ttl: Option<&StateTtlConfig>, value: &T) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(32);
    if let Some(ttl) = ttl {
        buf.extend_from_slice(&now_expiry(b, ttl).to_be_bytes());
    }
    codec::encode_into(value, &mut buf)?;
    Ok(buf)
}

/// Reads one value of state `id`, honouring TTL (expired entries are deleted and not returned).
fn read_value<T: DeserializeOwned>(b: &mut KeyedState, id: usize, ns: &[u8], extra: &[u8]) -> Result<Option<T>> {
    let ttl = b.meta(id).ttl;
    let Some(ttl) = ttl else {
        return b.raw_get_with(id, ns, extra, |bytes| bytes.map(codec::decode).transpose());
    };
    let now = b.now();
    let refreshed_expiry = ttl.update_on_read.then(|| now_expiry(b, &ttl));
    // (value, the entry with a refreshed expiry) of a live entry; Some(None) when it expired.
    let read = b.raw_get_with(id, ns, extra, |bytes| {
        let Some(bytes) = bytes else { return Ok(None) };
        let (expiry, payload) = split_ttl(bytes, Some(&ttl))?;
        if expiry.is_some_and(|e| e <= now) {
            return Ok(Some(None));
        }
        let refreshed = refreshed_expiry.map(|e| {
            let mut r = e.to_be_bytes().to_vec();
            r.extend_from_slice(payload);
            r
        });
        Ok(Some(Some((codec::decode::<T>(payload)?, refreshed))))
    })?;
    match read {
        None => Ok(None),
        Some(None) => {
            b.raw_delete(id, ns, extra)?;
            Ok(None)
        }
        Some(Some((value, refreshed))) => {
            if let Some(r) = refreshed {
                b.raw_put(id, ns, extra, r)?;
            }
            Ok(Some(value))
        }
    }
}

fn write_value<T: Serialize + ?Sized>(b: &mut KeyedState, id: usize, ns: &[u8], extra: &[u8], value: &T) -> Result<()> {
    let ttl = b.meta(id).ttl;
    let bytes = encode_value(b, ttl.as_ref(), value)?;
    b.raw_put(id, ns, extra, bytes)
}

/// A single value per key (and namespace).
pub struct ValueState<'a, T> {
    pub(crate) b: &'a mut KeyedState,
    pub(crate) id: usize,
    pub(crate) ns: Vec<u8>,
    pub(crate) _t: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> ValueState<'_, T> {
    /// Scopes the view to a namespace (e.g. a window) given as encoded bytes.
    pub fn in_namespace(mut self, ns: &[u8]) -> Self {
        self.ns = ns.to_vec();
        self
    }
    /// The value, or `None` if unset or expired.
    pub fn value(&mut self) -> Result<Option<T>> {
        read_value(self.b, self.id, &self.ns, &[])
    }
    /// Sets the value.
    pub fn update(&mut self, value: &T) -> Result<()> {
        write_value(self.b, self.id, &self.ns, &[], value)
    }
    /// Removes the value.
    pub fn clear(&mut self) -> Result<()> {
        self.b.raw_delete(self.id, &self.ns, &[])
    }
}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> ValueState<'_, T> {
    /// Read-modify-write in place: `f` gets the value (`None` if unset) and may change, set or
    /// take it (`None` afterwards removes it). Between checkpoints the value stays decoded in the
    /// state's write cache, so a hot key costs no decoding or encoding per call — the way to keep
    /// an accumulator that every record updates.
    ///
    /// ```
    /// use weir_state::{KeyedStateBackend, KeyGroupRange, StateDescriptor, ValueStateDescriptor};
    /// let dir = tempfile::tempdir().unwrap();
    /// let mut b = KeyedStateBackend::open(dir.path(), KeyGroupRange::for_subtask(128, 1, 0), 128).unwrap();
    /// let count = ValueStateDescriptor::<u64>::new("count");
    /// b.set_current_key(&"k").unwrap();
    /// for _ in 0..3 {
    ///     count.bind(b.state()).unwrap().update_with(|c| *c.get_or_insert(0) += 1).unwrap();
    /// }
    /// assert_eq!(count.bind(b.state()).unwrap().value().unwrap(), Some(3));
    /// ```
    pub fn update_with<R>(&mut self, f: impl FnOnce(&mut Option<T>) -> R) -> Result<R> {
        if self.b.meta(self.id).ttl.is_some() {
            // Entries with TTL carry their expiry in the stored bytes.
            let mut v = self.value()?;
            let r = f(&mut v);
            match &v {
                Some(v) => self.update(v)?,
                None => self.clear()?,
            }
            return Ok(r);
        }
        self.b.raw_update_with(self.id, &self.ns, &[], f)
    }
}

/// An appendable list per key (and namespace); appends are RocksDB merges, no read needed.
pub struct ListState<'a, T> {
    pub(crate) b: &'a mut KeyedState,
    pub(crate) id: usize,
    pub(crate) ns: Vec<u8>,
    pub(crate) _t: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> ListState<'_, T> {
    /// Scopes the view to a namespace given as encoded bytes.
    pub fn in_namespace(mut self, ns: &[u8]) -> Self {
        self.ns = ns.to_vec();
        self
    }
    /// Appends one element.
    pub fn add(&mut self, value: &T) -> Result<()> {
        let ttl = self.b.meta(self.id).ttl;
        let bytes = encode_value(self.b, ttl.as_ref(), value)?;
        self.b.raw_merge(self.id, &self.ns, &bytes)
    }
    /// All live elements in insertion order.
    pub fn get(&mut self) -> Result<Vec<T>> {
        let ttl = self.b.meta(self.id).ttl;
        // The clock is only read for entries that can expire.
        let now = if ttl.is_some() { self.b.now() } else { i64::MAX };
        let (out, expired) = self.b.raw_get_with(self.id, &self.ns, &[], |bytes| {
            let mut rest = bytes.unwrap_or_default();
            let mut out = Vec::new();
            let mut expired = 0;
            while !rest.is_empty() {
                let (expiry, payload) = split_ttl(rest, ttl.as_ref())?;
                let mut p = payload;
                let v: T = codec::decode_from(&mut p)?;
                rest = p;
                match expiry {
                    Some(e) if e <= now => expired += 1,
                    _ => out.push(v),
                }
            }
            Ok((out, expired))
        })?;
        if expired > 0 {
            self.update(&out)?;
        }
        Ok(out)
    }
    /// Replaces the list.
    pub fn update(&mut self, values: &[T]) -> Result<()> {
        let ttl = self.b.meta(self.id).ttl;
        let mut bytes = Vec::new();
        for v in values {
            bytes.extend_from_slice(&encode_value(self.b, ttl.as_ref(), v)?);
        }
        if bytes.is_empty() {
            self.clear()
        } else {
            self.b.raw_put(self.id, &self.ns, &[], bytes)
        }
    }
    /// Removes the list.
    pub fn clear(&mut self) -> Result<()> {
        self.b.raw_delete(self.id, &self.ns, &[])
    }
}

/// A map per key (and namespace); each entry is its own RocksDB entry.
pub struct MapState<'a, UK, UV> {
    pub(crate) b: &'a mut KeyedState,
    pub(crate) id: usize,
    pub(crate) ns: Vec<u8>,
    pub(crate) _t: PhantomData<fn() -> (UK, UV)>,
}

impl<UK: Serialize + DeserializeOwned, UV: Serialize + DeserializeOwned> MapState<'_, UK, UV> {
    /// Scopes the view to a namespace given as encoded bytes.
    pub fn in_namespace(mut self, ns: &[u8]) -> Self {
        self.ns = ns.to_vec();
        self
    }
    /// The value under `key`.
    pub fn get(&mut self, key: &UK) -> Result<Option<UV>> {
        let uk = codec::encode(key)?;
        read_value(self.b, self.id, &self.ns, &uk)
    }
    /// Sets the value under `key`.
    pub fn put(&mut self, key: &UK, value: &UV) -> Result<()> {
        let uk = codec::encode(key)?;
        write_value(self.b, self.id, &self.ns, &uk, value)
    }
    /// Removes `key`.
    pub fn remove(&mut self, key: &UK) -> Result<()> {
        let uk = codec::encode(key)?;
        self.b.raw_delete(self.id, &self.ns, &uk)
    }
    /// Whether `key` has a live value.
    pub fn contains(&mut self, key: &UK) -> Result<bool> {
        Ok(self.get(key)?.is_some())
    }
    /// All live entries, ordered by encoded key.
    pub fn entries(&mut self) -> Result<Vec<(UK, UV)>> {
        let raw = self.b.raw_scan(self.id, &self.ns)?;
        let ttl = self.b.meta(self.id).ttl;
        let now = self.b.now();
        let mut out = Vec::with_capacity(raw.len());
        for (k, v) in raw {
            let (expiry, payload) = split_ttl(&v, ttl.as_ref())?;
            if matches!(expiry, Some(e) if e <= now) {
                self.b.raw_delete(self.id, &self.ns, &k)?;
                continue;
            }
            out.push((codec::decode(&k)?, codec::decode(payload)?));
        }
        Ok(out)
    }
    /// Whether the map has no live entry.
    pub fn is_empty(&mut self) -> Result<bool> {
        Ok(self.entries()?.is_empty())
    }
    /// Removes every entry of the map.
    pub fn clear(&mut self) -> Result<()> {
        for (k, _) in self.b.raw_scan(self.id, &self.ns)? {
            self.b.raw_delete(self.id, &self.ns, &k)?;
        }
        Ok(())
    }
}

/// A value folded with a reduce function on every add.
pub struct ReducingState<'a, T> {
    pub(crate) inner: ValueState<'a, T>,
    pub(crate) reduce: ReduceFn<T>,
}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> ReducingState<'_, T> {
    /// Scopes the view to a namespace given as encoded bytes.
    pub fn in_namespace(mut self, ns: &[u8]) -> Self {
        self.inner = self.inner.in_namespace(ns);
        self
    }
    /// The reduced value so far.
    pub fn get(&mut self) -> Result<Option<T>> {
        self.inner.value()
    }
    /// Folds `value` in.
    pub fn add(&mut self, value: &T) -> Result<()> {
        let reduce = &self.reduce;
        let first = self.inner.update_with(|cur| match cur {
            Some(c) => {
                *c = reduce(c, value);
                false
            }
            None => true,
        })?;
        if first {
            // T need not be Clone: the first value is stored as bytes, the next add decodes it.
            self.inner.update(value)?;
        }
        Ok(())
    }
    /// Removes the value.
    pub fn clear(&mut self) -> Result<()> {
        self.inner.clear()
    }
}

/// The accumulator of an aggregate function per key (and namespace).
pub struct AggregatingState<'a, A: AggregateFunction> {
    pub(crate) inner: ValueState<'a, A::Acc>,
    pub(crate) agg: Arc<A>,
}

impl<A: AggregateFunction> AggregatingState<'_, A> {
    /// Scopes the view to a namespace given as encoded bytes.
    pub fn in_namespace(mut self, ns: &[u8]) -> Self {
        self.inner = self.inner.in_namespace(ns);
        self
    }
    /// The current result, or `None` if nothing was added.
    pub fn get(&mut self) -> Result<Option<A::Out>> {
        Ok(self.inner.value()?.map(|acc| self.agg.get_result(&acc)))
    }
    /// The raw accumulator.
    pub fn accumulator(&mut self) -> Result<Option<A::Acc>> {
        self.inner.value()
    }
    /// Replaces the raw accumulator.
    pub fn set_accumulator(&mut self, acc: &A::Acc) -> Result<()> {
        self.inner.update(acc)
    }
    /// Adds one value.
    pub fn add(&mut self, value: &A::In) -> Result<()> {
        let agg = &self.agg;
        self.inner.update_with(|acc| agg.add(acc.get_or_insert_with(|| agg.create_accumulator()), value))
    }
    /// Removes the accumulator.
    pub fn clear(&mut self) -> Result<()> {
        self.inner.clear()
    }
}
