//! The write cache: hot state entries kept in memory between flushes, so that the
//! read-modify-write of every record (a window accumulator, a running count) does not search the
//! memtable twice, and state that lives and dies between two flushes never reaches RocksDB.
//!
//! Entries are keyed by `state id (u16 BE) ‖ store key`. The cache knows nothing of the store: its
//! owner reads through it on a miss, and drains it into one write batch when it outgrows its byte
//! budget, before every scan, and before a checkpoint.

use anyhow::Result;
use serde::{de::DeserializeOwned, Serialize};

/// Default byte budget of a backend's write cache.
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;

/// A cached entry: `None` means deleted; `dirty` entries still have to reach the store.
struct CacheEntry {
    value: Option<Vec<u8>>,
    /// The value as a live Rust object, updated in place by read-modify-write accesses and
    /// encoded only when the cache is flushed or the bytes are read; when set it supersedes
    /// `value`.
    object: Option<Box<dyn StateObject>>,
    dirty: bool,
    /// The store may hold a value for the key. When it certainly does not (a read found nothing),
    /// deleting the entry again needs no tombstone.
    stored: bool,
    /// The bytes this entry counts against the cache's budget.
    accounted: usize,
}

impl CacheEntry {
    /// Turns a live object back into bytes (for readers of bytes and for flushes).
    fn materialize(&mut self) -> Result<()> {
        if let Some(obj) = self.object.take() {
            self.value = obj.encode()?;
        }
        Ok(())
    }
}

/// A state value held decoded in the write cache: `None` inside means deleted.
trait StateObject: Send {
    fn encode(&self) -> Result<Option<Vec<u8>>>;
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

struct Object<T>(Option<T>);

impl<T: Serialize + Send + 'static> StateObject for Object<T> {
    fn encode(&self) -> Result<Option<Vec<u8>>> {
        self.0.as_ref().map(crate::codec::encode).transpose()
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// What an entry of `key_len` holding `value_len` bytes counts against the cache budget.
fn entry_cost(key_len: usize, value_len: usize) -> usize {
    key_len + value_len + 48
}

/// What the cache holds of a key read to be modified.
pub(crate) enum Lookup<'a, T> {
    /// A live object of the type asked for, to change in place.
    Live(&'a mut Option<T>),
    /// The value decoded from the cached bytes (`None`: deleted), its encoded size, and whether
    /// the store may hold the key.
    Decoded(Option<T>, usize, bool),
    /// Not cached.
    Miss,
}

/// The write cache of one backend (see the module comment).
pub(crate) struct WriteCache {
    map: ahash::AHashMap<Vec<u8>, CacheEntry>,
    bytes: usize,
    limit: usize,
}

impl WriteCache {
    /// An empty cache with a budget of `limit` bytes (0: every write goes straight to the store).
    pub(crate) fn new(limit: usize) -> Self {
        WriteCache { map: Default::default(), bytes: 0, limit }
    }

    /// Whether writes are cached at all.
    pub(crate) fn enabled(&self) -> bool {
        self.limit > 0
    }

    /// Whether the cache holds more than its budget and should be flushed.
    pub(crate) fn over_limit(&self) -> bool {
        self.bytes > self.limit
    }

    pub(crate) fn set_limit(&mut self, bytes: usize) {
        self.limit = bytes;
    }

    /// The cached bytes of `key` (`Some(None)`: cached as deleted; `None`: not cached). A live
    /// object is encoded first.
    pub(crate) fn get(&mut self, key: &[u8]) -> Result<Option<Option<&[u8]>>> {
        match self.map.get_mut(key) {
            Some(e) => {
                e.materialize()?;
                Ok(Some(e.value.as_deref()))
            }
            None => Ok(None),
        }
    }

    /// One lookup for a read-modify-write of `key` as a `T` (see [`Lookup`]); a live object
    /// handed out is marked dirty, since the caller changes it.
    pub(crate) fn lookup<T: DeserializeOwned + 'static>(&mut self, key: &[u8]) -> Result<Lookup<'_, T>> {
        let Some(e) = self.map.get_mut(key) else { return Ok(Lookup::Miss) };
        if e.object.as_mut().is_some_and(|o| o.as_any_mut().is::<Object<T>>()) {
            e.dirty = true;
            let o = e.object.as_mut().and_then(|o| o.as_any_mut().downcast_mut::<Object<T>>());
            return o.map(|o| Lookup::Live(&mut o.0)).ok_or_else(|| anyhow::anyhow!("cached object changed type"));
        }
        // Cached as bytes, or as an object of another type: go through its bytes.
        e.materialize()?;
        let encoded = e.value.as_ref().map_or(0, Vec::len);
        Ok(Lookup::Decoded(e.value.as_deref().map(crate::codec::decode).transpose()?, encoded, e.stored))
    }

    /// Caches `value` for `key` (`None`: deleted). `stored`: whether the store may hold the key,
    /// for entries new to the cache.
    pub(crate) fn put(&mut self, key: &[u8], value: Option<Vec<u8>>, dirty: bool, stored: bool) {
        let cost = entry_cost(key.len(), value.as_ref().map_or(0, Vec::len));
        match self.map.get_mut(key) {
            Some(e) if value.is_none() && !e.stored => {
                // Deleted before it ever reached the store: forget it (no tombstone, no memory).
                let gone = e.accounted;
                self.map.remove(key);
                self.bytes = self.bytes.saturating_sub(gone);
            }
            Some(e) => {
                self.bytes = (self.bytes + cost).saturating_sub(e.accounted);
                e.accounted = cost;
                e.value = value;
                e.object = None;
                e.dirty |= dirty;
            }
            None => {
                self.bytes += cost;
                self.map.insert(key.to_vec(), CacheEntry { value, object: None, dirty, stored, accounted: cost });
            }
        }
    }

    /// Caches `value` as a live object for `key`, dirty. `encoded`: the size it was read with.
    pub(crate) fn put_object<T: Serialize + Send + 'static>(
        &mut self,
        key: &[u8],
        value: Option<T>,
        encoded: usize,
        stored: bool,
    ) {
        // Objects are charged their inline size plus the encoded size they were read with (at
        // least 64 bytes for their heap parts): an estimate, as a value that grows in place is
        // charged its first size until the next flush empties the cache.
        let cost = entry_cost(key.len(), std::mem::size_of::<T>() + encoded.max(64));
        let entry =
            CacheEntry { value: None, object: Some(Box::new(Object(value))), dirty: true, stored, accounted: cost };
        let old = self.map.insert(key.to_vec(), entry).map_or(0, |e| e.accounted);
        self.bytes = (self.bytes + cost).saturating_sub(old);
    }

    /// Appends `value` to the cached bytes of `key`, taking them rather than copying (the store's
    /// only merge operator is concatenation, so the cache can apply it itself); false when `key`
    /// is not cached.
    pub(crate) fn append(&mut self, key: &[u8], value: &[u8]) -> Result<bool> {
        let Some(e) = self.map.get_mut(key) else { return Ok(false) };
        e.materialize()?;
        let mut merged = e.value.take().unwrap_or_default();
        merged.extend_from_slice(value);
        self.put(key, Some(merged), true, true);
        Ok(true)
    }

    /// Empties the cache, handing every change the store lacks to `write` as (cache key, value or
    /// `None` for a deletion).
    pub(crate) fn drain(&mut self, mut write: impl FnMut(&[u8], Option<Vec<u8>>) -> Result<()>) -> Result<()> {
        self.bytes = 0;
        for (k, mut e) in self.map.drain() {
            e.materialize()?;
            if !e.dirty || (e.value.is_none() && !e.stored) {
                continue;
            }
            write(&k, e.value)?;
        }
        Ok(())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drained(cache: &mut WriteCache) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        cache
            .drain(|k, v| {
                out.push((k.to_vec(), v));
                Ok(())
            })
            .unwrap();
        out.sort();
        out
    }

    #[test]
    fn a_key_deleted_before_it_reached_the_store_leaves_nothing_to_write() {
        let mut cache = WriteCache::new(1 << 20);
        cache.put(b"new", Some(b"v".to_vec()), true, false);
        cache.put(b"new", None, true, false);
        cache.put(b"old", Some(b"v".to_vec()), true, true);
        cache.put(b"old", None, true, true);
        cache.put(b"clean", Some(b"v".to_vec()), false, true);
        assert_eq!(drained(&mut cache), vec![(b"old".to_vec(), None)]);
        assert!(cache.is_empty());
        assert!(!cache.over_limit());
    }

    #[test]
    fn live_objects_change_in_place_and_are_encoded_once_when_drained() {
        let mut cache = WriteCache::new(1 << 20);
        cache.put_object::<u64>(b"k", Some(1), 0, false);
        for _ in 0..9 {
            match cache.lookup::<u64>(b"k").unwrap() {
                Lookup::Live(v) => *v.as_mut().unwrap() += 1,
                _ => panic!("the live object"),
            }
        }
        // Read as another type, the object is not handed out; its bytes still are.
        match cache.lookup::<u32>(b"k").unwrap() {
            Lookup::Decoded(v, _, stored) => assert_eq!((v, stored), (Some(10), false)),
            _ => panic!("the value through its bytes"),
        }
        assert!(matches!(cache.lookup::<u64>(b"missing").unwrap(), Lookup::Miss));
        assert_eq!(drained(&mut cache), vec![(b"k".to_vec(), Some(crate::codec::encode(&10u64).unwrap()))]);
    }

    #[test]
    fn the_budget_counts_every_entry_once() {
        let mut cache = WriteCache::new(200);
        cache.put(b"a", Some(vec![0; 50]), true, true);
        cache.put(b"a", Some(vec![0; 60]), true, true);
        assert!(!cache.over_limit(), "rewriting a key replaces its cost");
        cache.put(b"b", Some(vec![0; 100]), true, true);
        assert!(cache.over_limit());
        drained(&mut cache);
        assert!(!cache.over_limit());
    }
}
