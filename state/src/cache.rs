//! The write cache: hot state entries kept in memory between flushes, so that the
//! read-modify-write of every record (a window accumulator, a running count) does not search the
//! memtable twice, and state that lives and dies between two flushes never reaches RocksDB.
//!
//! Entries are keyed by `state id (u16 BE) ‖ store key`. The cache knows nothing of the store: its
//! owner reads through it on a miss, and drains it into one write batch when it outgrows its byte
//! budget and before every scan.
//!
//! A checkpoint does not drain it on the task thread: it *freezes* the cache (the whole map
//! becomes an immutable [`Frozen`] generation, shared with the thread that writes its changes to
//! the store and checkpoints the store) and starts an empty one. Until the writer is done the task
//! reads through both: a key the new generation lacks is copied from the frozen one
//! ([`WriteCache::promote`]) before it is read or changed, so the frozen one never changes. Then
//! ([`WriteCache::thaw`]) the frozen map comes back and the smaller of the two maps is merged into
//! the larger (the new generation's entries win): one map again, live objects included. So hot
//! state stays decoded across checkpoints, and a checkpoint costs the task no encoding and no
//! lookup in a second map after its writer is done.
//!
//! Which entries the store lacks is told by epochs rather than a dirty flag, so that merging
//! needs no pass over the entries: an entry remembers the epoch of its last change, the cache the
//! epoch up to which every change is in the store (`written`). Each freeze starts a new epoch; a
//! writer writes the changes of the epochs its generation holds and its thaw advances `written`.
//! At most two generations exist: the owner waits for the previous checkpoint's writer before it
//! drains or freezes again, so the cache holds at most twice its budget.

use std::borrow::Cow;

use anyhow::Result;
use serde::{de::DeserializeOwned, Serialize};

/// Default byte budget of a backend's write cache.
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;

/// A cached entry: `None` means deleted.
struct CacheEntry {
    value: Option<Vec<u8>>,
    /// The value as a live Rust object, updated in place by read-modify-write accesses and
    /// encoded only when the cache is flushed or the bytes are read; when set it supersedes
    /// `value`.
    object: Option<Box<dyn StateObject>>,
    /// The epoch of the last change (0: unchanged since read from the store); the store lacks
    /// the change while it is above the cache's `written`.
    changed: u64,
    /// The store may hold a value for the key, as of the last change. When it certainly does not
    /// (a read found nothing), deleting the entry again needs no tombstone. See [`stored`].
    stored: bool,
    /// The bytes this entry counts against the cache's budget.
    accounted: usize,
}

/// Whether the store may hold a value for the entry's key once every change up to epoch `written`
/// is in it: as of its last change, or because that change was written since.
fn stored(e: &CacheEntry, written: u64) -> bool {
    e.stored || (e.changed != 0 && e.changed <= written)
}

impl CacheEntry {
    /// What the store lacks of this entry once every change up to epoch `written` is in it:
    /// `None` if nothing, else the value to write (`None` inside: a deletion). A deletion of a key
    /// the store never held needs no tombstone. A live object is encoded without changing it.
    fn unwritten(&self, written: u64) -> Result<Option<Option<Cow<'_, [u8]>>>> {
        if self.changed <= written {
            return Ok(None);
        }
        let value = match &self.object {
            Some(obj) => obj.encode()?.map(Cow::Owned),
            None => self.value.as_deref().map(Cow::Borrowed),
        };
        Ok((value.is_some() || self.stored).then_some(value))
    }

    /// Records a change in `epoch`.
    fn touch(&mut self, epoch: u64, written: u64) {
        self.stored = stored(self, written);
        self.changed = epoch;
    }

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
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

struct Object<T>(Option<T>);

impl<T: Serialize + Send + Sync + 'static> StateObject for Object<T> {
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

type Map = ahash::AHashMap<Vec<u8>, CacheEntry>;

/// A generation of the cache frozen by a checkpoint, whose changes the store lacks at the barrier
/// are written to it off the task thread (see the module comment).
pub(crate) struct Frozen {
    map: Map,
    bytes: usize,
    /// Changes of epochs up to this one were in the store when it froze.
    written: u64,
    /// The epoch it closed: once it is written, every change up to here is in the store.
    epoch: u64,
    /// The keys whose deletion the writer wrote: the thaw forgets them (see [`WriteCache::thaw`]).
    deleted: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl Frozen {
    /// Hands every change the store lacks to `write` as (cache key, value or `None` for a
    /// deletion), in key order, encoding live objects without changing them. In key order
    /// because RocksDB inserts sorted batches into its memtable several times faster: each insert
    /// starts its skip-list search where the previous one ended.
    pub(crate) fn write_to(&self, mut write: impl FnMut(&[u8], Option<&[u8]>) -> Result<()>) -> Result<()> {
        let mut changes: Vec<(&[u8], &CacheEntry)> =
            self.map.iter().filter(|(_, e)| e.changed > self.written).map(|(k, e)| (k.as_slice(), e)).collect();
        changes.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut deleted = Vec::new();
        for (k, e) in changes {
            if let Some(v) = e.unwritten(self.written)? {
                if v.is_none() {
                    deleted.push(k.to_vec());
                }
                write(k, v.as_deref())?;
            }
        }
        *self.deleted.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = deleted;
        Ok(())
    }
}

/// The write cache of one backend (see the module comment).
pub(crate) struct WriteCache {
    map: Map,
    bytes: usize,
    limit: usize,
    /// The epoch changes are made in now.
    epoch: u64,
    /// Every change of an epoch up to this one is in the store.
    written: u64,
    /// The generation a checkpoint froze, until its writer has put it into the store.
    frozen: Option<std::sync::Arc<Frozen>>,
    /// The emptied map of the last thaw, kept with its capacity for the next freeze's new
    /// generation: growing a fresh map from empty after every checkpoint (rehashing, and new pages
    /// from the kernel to zero) was a visible part of what checkpoints cost the task.
    spare: Map,
}

impl WriteCache {
    /// An empty cache with a budget of `limit` bytes (0: every write goes straight to the store).
    pub(crate) fn new(limit: usize) -> Self {
        WriteCache {
            map: Default::default(),
            bytes: 0,
            limit,
            epoch: 1,
            written: 0,
            frozen: None,
            spare: Default::default(),
        }
    }

    /// Freezes the current generation for a checkpoint and starts an empty one; `None` when there
    /// is nothing to write. The caller must have [`thaw`](Self::thaw)ed the previous one.
    pub(crate) fn freeze(&mut self) -> Option<std::sync::Arc<Frozen>> {
        debug_assert!(self.frozen.is_none(), "a frozen generation is still pending");
        if self.map.is_empty() {
            return None;
        }
        let map = std::mem::replace(&mut self.map, std::mem::take(&mut self.spare));
        let frozen = std::sync::Arc::new(Frozen {
            map,
            bytes: self.bytes,
            written: self.written,
            epoch: self.epoch,
            deleted: Default::default(),
        });
        self.bytes = 0;
        self.epoch += 1;
        self.frozen = Some(frozen.clone());
        Some(frozen)
    }

    /// The frozen generation's writer has put its changes into the store: they count as written,
    /// and the frozen map merges back (the smaller map into the larger; what the task changed
    /// since the barrier wins). Must happen before anything newer reaches the store. Returns false
    /// if the frozen map could not come back, so the cache no longer holds every key the store has.
    pub(crate) fn thaw(&mut self) -> bool {
        let Some(frozen) = self.frozen.take() else { return true };
        self.written = frozen.epoch;
        // The writer has dropped its reference by now; if not, the entries are in the store
        // anyway and only their cached form is lost.
        let Ok(Frozen { map: mut old, bytes: old_bytes, deleted, .. }) = std::sync::Arc::try_unwrap(frozen) else {
            return false;
        };
        if old.len() > self.map.len() {
            let mut bytes = old_bytes;
            for (k, e) in self.map.drain() {
                bytes += e.accounted;
                if let Some(replaced) = old.insert(k, e) {
                    bytes = bytes.saturating_sub(replaced.accounted);
                }
            }
            self.spare = std::mem::replace(&mut self.map, old);
            self.bytes = bytes;
        } else {
            for (k, e) in old.drain() {
                if let std::collections::hash_map::Entry::Vacant(v) = self.map.entry(k) {
                    self.bytes += e.accounted;
                    v.insert(e);
                }
            }
            self.spare = old;
        }
        self.forget_written_deletions(deleted.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner));
        true
    }

    /// Drops the entries of `keys` that are still deletions the store has: a window's state,
    /// deleted when it fires, would otherwise stay in the cache as a tombstone for good, filling
    /// its budget until a drain. The store answers a read of such a key with nothing, as the cache
    /// did. Costs a lookup per deletion written, not a pass over the cache.
    fn forget_written_deletions(&mut self, keys: Vec<Vec<u8>>) {
        for k in keys {
            let Some(e) = self.map.get(&k) else { continue };
            if e.changed <= self.written && e.value.is_none() && e.object.is_none() {
                self.bytes = self.bytes.saturating_sub(e.accounted);
                self.map.remove(&k);
            }
        }
    }

    /// Makes sure the current generation has `key` if the frozen one has it, so that reads and
    /// changes never go past a newer value to the store: copied as bytes, unchanged since the
    /// frozen generation's writer stores that value. Only looks while a frozen generation exists,
    /// so that the common case costs no second hash lookup.
    fn promote(&mut self, key: &[u8]) -> Result<()> {
        let Some(frozen) = &self.frozen else { return Ok(()) };
        if self.map.contains_key(key) {
            return Ok(());
        }
        let Some(e) = frozen.map.get(key) else { return Ok(()) };
        let value = match &e.object {
            Some(obj) => obj.encode()?,
            None => e.value.clone(),
        };
        let cost = entry_cost(key.len(), value.as_ref().map_or(0, Vec::len));
        // Once the writer is done the store holds a value if it has one.
        let stored = e.stored || value.is_some();
        let copy = CacheEntry { value, object: None, changed: e.changed, stored, accounted: cost };
        self.bytes += cost;
        self.map.insert(key.to_vec(), copy);
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
    /// handed out counts as changed, since the caller changes it.
    pub(crate) fn lookup<T: DeserializeOwned + 'static>(&mut self, key: &[u8]) -> Result<Lookup<'_, T>> {
        self.promote(key)?;
        let (epoch, written) = (self.epoch, self.written);
        let Some(e) = self.map.get_mut(key) else { return Ok(Lookup::Miss) };
        if e.object.as_mut().is_some_and(|o| o.as_any_mut().is::<Object<T>>()) {
            e.touch(epoch, written);
            let o = e.object.as_mut().and_then(|o| o.as_any_mut().downcast_mut::<Object<T>>());
            return o.map(|o| Lookup::Live(&mut o.0)).ok_or_else(|| anyhow::anyhow!("cached object changed type"));
        }
        // Cached as bytes, or as an object of another type: go through its bytes.
        e.materialize()?;
        let encoded = e.value.as_ref().map_or(0, Vec::len);
        let stored = stored(e, written);
        Ok(Lookup::Decoded(e.value.as_deref().map(crate::codec::decode).transpose()?, encoded, stored))
    }

    /// Caches `value` for `key` (`None`: deleted). `stored`: whether the store may hold the key,
    /// for entries new to the cache.
    pub(crate) fn put(&mut self, key: &[u8], value: Option<Vec<u8>>, dirty: bool, stored: bool) -> Result<()> {
        self.promote(key)?;
        let cost = entry_cost(key.len(), value.as_ref().map_or(0, Vec::len));
        let (epoch, written) = (self.epoch, self.written);
        match self.map.get_mut(key) {
            Some(e) if value.is_none() && !self::stored(e, written) => {
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
                if dirty {
                    e.touch(epoch, written);
                }
            }
            None => {
                self.bytes += cost;
                let changed = if dirty { epoch } else { 0 };
                self.map.insert(key.to_vec(), CacheEntry { value, object: None, changed, stored, accounted: cost });
            }
        }
        Ok(())
    }

    /// Caches `value` as a live object for `key`, changed. `encoded`: the size it was read with.
    pub(crate) fn put_object<T: Serialize + Send + Sync + 'static>(
        &mut self,
        key: &[u8],
        value: Option<T>,
        encoded: usize,
        stored: bool,
    ) {
        // Objects are charged their inline size plus the encoded size they were read with (at
        // least 64 bytes for their heap parts): an estimate, as a value that grows in place is
        // charged its first size until the next drain empties the cache.
        let cost = entry_cost(key.len(), std::mem::size_of::<T>() + encoded.max(64));
        let object = Some(Box::new(Object(value)) as Box<dyn StateObject>);
        let entry = CacheEntry { value: None, object, changed: self.epoch, stored, accounted: cost };
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
    pub(crate) fn drain(&mut self, mut write: impl FnMut(&[u8], Option<&[u8]>) -> Result<()>) -> Result<()> {
        debug_assert!(self.frozen.is_none(), "draining while a frozen generation is pending");
        self.bytes = 0;
        let written = self.written;
        for (k, e) in self.map.drain() {
            if let Some(v) = e.unwritten(written)? {
                write(&k, v.as_deref())?;
            }
        }
        // Every change so far is in the store; later ones belong to a new epoch.
        self.written = self.epoch;
        self.epoch += 1;
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
                out.push((k.to_vec(), v.map(<[u8]>::to_vec)));
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
    fn a_deletion_written_by_a_checkpoint_leaves_the_cache_at_the_thaw() {
        let mut cache = WriteCache::new(1 << 20);
        for k in [&b"gone"[..], b"back", b"kept"] {
            cache.put(k, Some(b"v".to_vec()), true, true).unwrap();
        }
        drained(&mut cache);
        for k in [&b"gone"[..], b"back", b"kept"] {
            cache.put(k, Some(b"v2".to_vec()), true, true).unwrap();
        }
        cache.put(b"gone", None, true, true).unwrap();
        cache.put(b"back", None, true, true).unwrap();
        let frozen = cache.freeze().unwrap();
        let mut written = Vec::new();
        frozen
            .write_to(|k, v| {
                written.push((k.to_vec(), v.map(<[u8]>::to_vec)));
                Ok(())
            })
            .unwrap();
        drop(frozen);
        assert!(written.contains(&(b"gone".to_vec(), None)), "the tombstone is written");
        // Changed again after the barrier: the new value stays.
        cache.put(b"back", Some(b"v3".to_vec()), true, true).unwrap();
        assert!(cache.thaw());
        assert!(cache.get(b"gone").unwrap().is_none(), "the written deletion is forgotten");
        assert_eq!(cache.get(b"back").unwrap(), Some(Some(&b"v3"[..])));
        assert_eq!(cache.get(b"kept").unwrap(), Some(Some(&b"v2"[..])));
        assert_eq!(cache.map.len(), 2);
        assert_eq!(
            cache.bytes,
            cache.map.values().map(|e| e.accounted).sum::<usize>(),
            "the budget no longer counts it"
        );
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
