//! The write cache: hot state entries kept in memory between flushes, so that the
//! read-modify-write of every record (a window accumulator, a running count) does not search the
//! memtable twice, and state that lives and dies between two flushes never reaches RocksDB.
//!
//! Entries are keyed by `state id (u16 BE) ‖ store key`. The cache knows nothing of the store: its
//! owner reads through it on a miss, and drains it into one write batch when it outgrows its byte
//! budget and before every scan.
//!
//! A checkpoint does not drain it on the task thread: it *freezes* the cache (the whole map
//! becomes an immutable [`Frozen`] generation, shared with the thread that writes it to the store
//! and checkpoints the store) and starts an empty one. Until the frozen generation is in the store
//! the task reads through both: a key the new generation lacks is copied from the frozen one
//! ([`WriteCache::promote`]) before it is read or changed, so the frozen one never changes. Once
//! the writer is done the frozen map comes back as the *thawed* generation: clean entries, live
//! objects included, that move (not copy) into the current generation when touched. What nobody
//! touched until the next checkpoint is cold and is dropped then, on the next writer's thread. So
//! hot state stays decoded across checkpoints and a checkpoint costs the task no encoding, no
//! copy and no free.
//!
//! A key is in the current generation or in an older one, never changed in an older one, and an
//! older one is consulted only for keys the current one lacks. At most two generations exist: the
//! owner waits for the previous checkpoint's writer before it drains or freezes again, so the
//! cache holds at most twice its budget.

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

/// A state value held decoded in the write cache: `None` inside means deleted. `Sync`, since a
/// frozen generation is encoded on the checkpoint's writer thread while the task reads it.
trait StateObject: Send + Sync {
    fn encode(&self) -> Result<Option<Vec<u8>>>;
    /// Whether it holds a value (not deleted).
    fn present(&self) -> bool;
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

struct Object<T>(Option<T>);

impl<T: Serialize + Send + Sync + 'static> StateObject for Object<T> {
    fn encode(&self) -> Result<Option<Vec<u8>>> {
        self.0.as_ref().map(crate::codec::encode).transpose()
    }
    fn present(&self) -> bool {
        self.0.is_some()
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

type Map = ahash::AHashMap<Vec<u8>, CacheEntry>;

/// A generation of the cache frozen by a checkpoint: what the store lacks at the barrier,
/// written to it off the task thread (see the module comment).
pub(crate) struct Frozen {
    map: Map,
}

/// Entries of an older generation nobody touched for a whole checkpoint interval, handed to a
/// thread that frees them (dropping 100 000 entries is milliseconds the task need not spend).
pub(crate) struct Cold(#[allow(dead_code)] Option<Map>);

impl Frozen {
    /// Hands every change the store lacks to `write` as (cache key, value or `None` for a
    /// deletion), encoding live objects without changing them.
    pub(crate) fn write_to(&self, mut write: impl FnMut(&[u8], Option<&[u8]>) -> Result<()>) -> Result<()> {
        for (k, e) in &self.map {
            if !e.dirty {
                continue;
            }
            match &e.object {
                Some(obj) => {
                    let v = obj.encode()?;
                    if v.is_some() || e.stored {
                        write(k, v.as_deref())?;
                    }
                }
                None if e.value.is_none() && !e.stored => {}
                None => write(k, e.value.as_deref())?,
            }
        }
        Ok(())
    }

    /// The bytes of `key` in this generation (`Some(None)`: deleted), if it has the key.
    fn bytes_of(&self, key: &[u8]) -> Result<Option<Option<Vec<u8>>>> {
        let Some(e) = self.map.get(key) else { return Ok(None) };
        Ok(Some(match &e.object {
            Some(obj) => obj.encode()?,
            None => e.value.clone(),
        }))
    }
}

/// The write cache of one backend (see the module comment).
pub(crate) struct WriteCache {
    map: ahash::AHashMap<Vec<u8>, CacheEntry>,
    bytes: usize,
    limit: usize,
    /// The generation a checkpoint froze, until its writer has put it into the store.
    frozen: Option<std::sync::Arc<Frozen>>,
    /// The frozen generation after its writer finished: clean entries not touched since.
    thawed: Option<Map>,
}

impl WriteCache {
    /// An empty cache with a budget of `limit` bytes (0: every write goes straight to the store).
    pub(crate) fn new(limit: usize) -> Self {
        WriteCache { map: Default::default(), bytes: 0, limit, frozen: None, thawed: None }
    }

    /// Freezes the current generation for a checkpoint and starts an empty one (the frozen one is
    /// `None` when there is nothing to write); the thawed generation's leftovers are cold and come
    /// back to be dropped elsewhere. The caller must have [`thaw`](Self::thaw)ed the previous one.
    pub(crate) fn freeze(&mut self) -> (Option<std::sync::Arc<Frozen>>, Cold) {
        debug_assert!(self.frozen.is_none(), "a frozen generation is still pending");
        let cold = Cold(self.thawed.take());
        if self.map.is_empty() {
            return (None, cold);
        }
        self.bytes = 0;
        let frozen = std::sync::Arc::new(Frozen { map: std::mem::take(&mut self.map) });
        self.frozen = Some(frozen.clone());
        (Some(frozen), cold)
    }

    /// The frozen generation's writer has put it into the store, which now answers for its keys:
    /// it becomes the thawed generation. Must happen before anything newer reaches the store.
    pub(crate) fn thaw(&mut self) {
        if let Some(frozen) = self.frozen.take() {
            // The writer has dropped its reference by now; if not, the entries are in the store
            // anyway and only their decoded form is lost.
            self.thawed = std::sync::Arc::try_unwrap(frozen).ok().map(|f| f.map);
        }
    }

    /// Makes sure the current generation has `key` if an older one has it, so that reads and
    /// changes never go past a newer value to the store: copied as clean bytes from the frozen
    /// generation (its writer stores that value), moved as it is from the thawed one. Only looks
    /// when an older generation exists, so that the common case costs no second hash lookup.
    fn promote(&mut self, key: &[u8]) -> Result<()> {
        if self.frozen.is_none() && self.thawed.is_none() {
            return Ok(());
        }
        if self.map.contains_key(key) {
            return Ok(());
        }
        if let Some(frozen) = &self.frozen {
            let Some(value) = frozen.bytes_of(key)? else { return Ok(()) };
            let cost = entry_cost(key.len(), value.as_ref().map_or(0, Vec::len));
            // Once the frozen generation is written, the store holds the key exactly when it has
            // a value (a deletion of a stored key is written as a tombstone).
            let stored = value.is_some();
            self.bytes += cost;
            self.map.insert(key.to_vec(), CacheEntry { value, object: None, dirty: false, stored, accounted: cost });
        } else if let Some((k, mut e)) = self.thawed.as_mut().and_then(|t| t.remove_entry(key)) {
            // Written: clean, and stored exactly when it has a value (as above).
            e.dirty = false;
            e.stored = match &e.object {
                Some(obj) => obj.present(),
                None => e.value.is_some(),
            };
            self.bytes += e.accounted;
            self.map.insert(k, e);
        }
        Ok(())
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
        self.promote(key)?;
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
        self.promote(key)?;
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
    pub(crate) fn put(&mut self, key: &[u8], value: Option<Vec<u8>>, dirty: bool, stored: bool) -> Result<()> {
        self.promote(key)?;
        let cost = entry_cost(key.len(), value.as_ref().map_or(0, Vec::len));
        match self.map.get_mut(key) {
            Some(e) if value.is_none() && !e.stored => {
                // Deleted before it ever reached the store: forget it (no tombstone, no memory).
                // An older generation has no value either (else the store would have it), so it
                // may forget the key too.
                let gone = e.accounted;
                self.map.remove(key);
                if let Some(t) = self.thawed.as_mut() {
                    t.remove(key);
                }
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
        Ok(())
    }

    /// Caches `value` as a live object for `key`, dirty. `encoded`: the size it was read with.
    pub(crate) fn put_object<T: Serialize + Send + Sync + 'static>(
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
        self.promote(key)?;
        let Some(e) = self.map.get_mut(key) else { return Ok(false) };
        e.materialize()?;
        let mut merged = e.value.take().unwrap_or_default();
        merged.extend_from_slice(value);
        self.put(key, Some(merged), true, true)?;
        Ok(true)
    }

    /// Empties the cache, handing every change the store lacks to `write` as (cache key, value or
    /// `None` for a deletion).
    pub(crate) fn drain(&mut self, mut write: impl FnMut(&[u8], Option<Vec<u8>>) -> Result<()>) -> Result<()> {
        self.bytes = 0;
        // The thawed generation is in the store too, and would be older than what is drained.
        self.thawed = None;
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

    /// Whether a frozen generation may still be unwritten (and waits to be thawed).
    pub(crate) fn has_frozen(&self) -> bool {
        self.frozen.is_some()
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
        cache.put(b"new", Some(b"v".to_vec()), true, false).unwrap();
        cache.put(b"new", None, true, false).unwrap();
        cache.put(b"old", Some(b"v".to_vec()), true, true).unwrap();
        cache.put(b"old", None, true, true).unwrap();
        cache.put(b"clean", Some(b"v".to_vec()), false, true).unwrap();
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
        cache.put(b"a", Some(vec![0; 50]), true, true).unwrap();
        cache.put(b"a", Some(vec![0; 60]), true, true).unwrap();
        assert!(!cache.over_limit(), "rewriting a key replaces its cost");
        cache.put(b"b", Some(vec![0; 100]), true, true).unwrap();
        assert!(cache.over_limit());
        drained(&mut cache);
        assert!(!cache.over_limit());
    }
}
