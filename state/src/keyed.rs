//! The keyed state of one subtask as the typed views reach it: declared states, the current key,
//! the write cache in front of the store, and the TTL clock. Nothing here is RocksDB-specific in
//! its public surface: operators bind [`StateDescriptor`](crate::StateDescriptor)s to a
//! [`KeyedState`] and never see the store.

use std::collections::HashMap;

use anyhow::{bail, Result};
use serde::{de::DeserializeOwned, Serialize};

use crate::cache::{Lookup, WriteCache};
use crate::keygroup::{key_group_of, KeyGroupRange};
use crate::meta::{system_clock, Clock, StateKind, StateMeta, StateTtlConfig};
use crate::store::StateStore;

/// The keyed state of one subtask: what typed state views read and write for the current key.
///
/// The runtime owns it inside a [`KeyedStateBackend`](crate::KeyedStateBackend) and sets the
/// current key; operators reach it only through descriptors bound in their context.
pub struct KeyedState {
    store: StateStore,
    cache: WriteCache,
    states: Vec<StateMeta>,
    by_name: HashMap<String, usize>,
    /// `key_group ‖ key bytes` of the current key.
    key: Vec<u8>,
    range: KeyGroupRange,
    max_parallelism: usize,
    clock: Clock,
    scratch: Vec<u8>,
    /// Whether the write cache holds every key the store has (see [`Self::read_store`]): true
    /// from an empty store on, until something reaches the store past the cache (a drain when the
    /// cache is full or before a scan, a list append to an uncached key, an import, a cache turned
    /// off). Checkpoints keep it: a frozen generation is still read through, and merges back.
    complete: bool,
    /// Reads that went to the store (cache misses while not `complete`).
    store_reads: u64,
}

impl KeyedState {
    pub(crate) fn new(
        store: StateStore,
        cache: WriteCache,
        range: KeyGroupRange,
        max_parallelism: usize,
    ) -> Result<Self> {
        let mut state = KeyedState {
            store,
            cache,
            states: Vec::new(),
            by_name: HashMap::new(),
            key: Vec::new(),
            range,
            max_parallelism,
            clock: system_clock(),
            scratch: Vec::new(),
            complete: false,
            store_reads: 0,
        };
        for meta in state.store.load_metas()? {
            state.by_name.insert(meta.name.clone(), state.states.len());
            state.states.push(meta);
        }
        state.complete = state.cache.enabled() && state.store.holds_nothing_of(&state.states)?;
        Ok(state)
    }

    pub(crate) fn store(&self) -> &StateStore {
        &self.store
    }

    pub(crate) fn store_mut(&mut self) -> &mut StateStore {
        &mut self.store
    }

    /// Waits for the last checkpoint's writer and merges the generation it wrote back into the
    /// cache (its changes now count as written), so that the store may take newer writes.
    pub(crate) fn settle(&mut self) -> Result<()> {
        self.store.settle()?;
        if !self.cache.thaw() {
            self.incomplete("a frozen generation did not come back");
        }
        Ok(())
    }

    /// The stored value of state `id` at cache key `k` (`state id ‖ store key`), for a key the
    /// write cache lacks. While the cache holds every key the store has, a miss is an absent key
    /// and the store is not asked: a job whose state fits in the cache never reads RocksDB, and
    /// the files that checkpoints leave in it (each a bloom filter to check per read of a new key)
    /// cost its reads nothing.
    fn read_store(&mut self, id: usize, k: &[u8]) -> Result<Option<rocksdb::DBPinnableSlice<'_>>> {
        if self.complete {
            return Ok(None);
        }
        self.store_reads += 1;
        let cf = self.store.cf(&self.states[id].name)?;
        Ok(self.store.db().get_pinned_cf(cf, &k[2..])?)
    }

    /// From now on the store may hold keys the cache lacks: misses read the store.
    fn incomplete(&mut self, why: &str) {
        if self.complete {
            // Once per backend and run: from here on, reads of keys new to the cache cost a
            // RocksDB lookup each.
            tracing::debug!(reason = why, dir = %self.store.dir().display(), "keyed state reads go to RocksDB from now on");
            self.complete = false;
        }
    }

    /// How many reads went to the store (for tests and metrics).
    pub(crate) fn store_reads(&self) -> u64 {
        self.store_reads
    }

    /// Thaws the frozen generation once its writer is done, without waiting, so that the task
    /// works on one map again (checked before every access: an atomic load).
    fn release_written(&mut self) -> Result<()> {
        if self.cache.has_frozen() && self.store.writer_finished() {
            self.settle()?;
        }
        Ok(())
    }

    /// Freezes the write cache for a checkpoint (see `cache.rs`): what is frozen is the state at
    /// the barrier that the store lacks, and the task goes on with an empty generation.
    pub(crate) fn freeze(&mut self) -> Result<Option<std::sync::Arc<crate::cache::Frozen>>> {
        self.settle()?;
        Ok(self.cache.freeze())
    }

    pub(crate) fn range(&self) -> KeyGroupRange {
        self.range
    }

    pub(crate) fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// The current processing time of the TTL clock.
    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    /// The declared states.
    pub fn states(&self) -> &[StateMeta] {
        &self.states
    }

    pub(crate) fn set_current_key<K: Serialize + ?Sized>(&mut self, key: &K) -> Result<()> {
        let mut bytes = std::mem::take(&mut self.scratch);
        bytes.clear();
        crate::codec::encode_into(key, &mut bytes)?;
        self.set_current_key_bytes(&bytes);
        self.scratch = bytes;
        Ok(())
    }

    pub(crate) fn set_current_key_bytes(&mut self, key_bytes: &[u8]) {
        let kg = key_group_of(key_bytes, self.max_parallelism);
        self.key.clear();
        self.key.extend_from_slice(&kg.to_be_bytes());
        self.key.extend_from_slice(key_bytes);
    }

    pub(crate) fn set_current_key_prefixed(&mut self, prefixed: &[u8]) {
        self.key.clear();
        self.key.extend_from_slice(prefixed);
    }

    /// `key_group ‖ key bytes` of the current key (empty before one is set), as timers store it.
    pub fn current_key_prefixed(&self) -> &[u8] {
        &self.key
    }

    /// The encoded current key, without key-group prefix.
    pub fn current_key_bytes(&self) -> &[u8] {
        self.key.get(2..).unwrap_or(&[])
    }

    /// Registers (or looks up) a state by name and returns its id.
    pub(crate) fn state_id(&mut self, name: &str, kind: StateKind, ttl: Option<StateTtlConfig>) -> Result<usize> {
        if let Some(&id) = self.by_name.get(name) {
            let meta = &self.states[id];
            if meta.kind != kind || meta.ttl != ttl {
                bail!(
                    "state '{name}' was declared as {:?} (ttl {:?}) and is now used as {:?} (ttl {:?})",
                    meta.kind,
                    meta.ttl,
                    kind,
                    ttl
                );
            }
            return Ok(id);
        }
        if name.starts_with('_') || name == "default" || name.is_empty() {
            bail!("state name '{name}' is reserved; names must not be empty or start with '_'");
        }
        let meta = StateMeta { name: name.to_string(), kind, ttl };
        self.store.declare(&meta)?;
        let id = self.states.len();
        self.states.push(meta);
        self.by_name.insert(name.to_string(), id);
        Ok(id)
    }

    pub(crate) fn meta(&self, id: usize) -> &StateMeta {
        &self.states[id]
    }

    pub(crate) fn set_cache_limit(&mut self, bytes: usize) -> Result<()> {
        self.cache.set_limit(bytes);
        if !self.cache.enabled() {
            self.incomplete("the write cache was turned off");
        }
        if self.cache.over_limit() {
            self.flush_cache()?;
        }
        Ok(())
    }

    /// Writes every cached state change to the store in one batch and empties the cache.
    pub(crate) fn flush_cache(&mut self) -> Result<()> {
        // The frozen generation goes first: what follows is newer.
        self.settle()?;
        // Drained, the cache no longer holds what the store has; callers that write the store
        // directly (imports) flush first, so this covers them too.
        self.incomplete("the write cache was drained (full, before a scan, or for an import)");
        if self.cache.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = self.states.iter().map(|m| m.name.clone()).collect();
        let mut batch = rocksdb::WriteBatch::default();
        let db = self.store.db();
        self.cache.drain(|k, v| crate::store::batch_change(db, &names, &mut batch, k, v))?;
        self.store.write(batch)
    }

    fn flush_if_full(&mut self) -> Result<()> {
        if self.cache.over_limit() {
            self.flush_cache()?;
        }
        Ok(())
    }

    /// Builds `state id ‖ current key ‖ ns ‖ extra` into the scratch buffer and runs `f` with it;
    /// the store's key is everything after the first two bytes.
    fn with_full_key<R>(
        &mut self,
        id: usize,
        ns: &[u8],
        extra: &[u8],
        f: impl FnOnce(&mut Self, &[u8]) -> Result<R>,
    ) -> Result<R> {
        if self.key.is_empty() {
            bail!("keyed state accessed without a current key");
        }
        self.release_written()?;
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        buf.extend_from_slice(&(id as u16).to_be_bytes());
        buf.extend_from_slice(&self.key);
        buf.extend_from_slice(ns);
        buf.extend_from_slice(extra);
        let r = f(self, &buf);
        self.scratch = buf;
        r
    }

    /// Read-modify-write of the value of state `id` (`None`: absent; leave `None` to delete it)
    /// without encoding or decoding it on every call: the value stays a live object in the write
    /// cache until the next flush. Only for states without TTL (their expiry lives in the bytes).
    pub(crate) fn raw_update_with<T, R>(
        &mut self,
        id: usize,
        ns: &[u8],
        extra: &[u8],
        f: impl FnOnce(&mut Option<T>) -> R,
    ) -> Result<R>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        // Without a write cache (limit 0) this still works: the new object is flushed at once.
        self.with_full_key(id, ns, extra, |s, k| {
            let (mut v, encoded, stored) = match s.cache.lookup::<T>(k)? {
                Lookup::Live(v) => return Ok(f(v)),
                Lookup::Decoded(v, encoded, stored) => (v, encoded, stored),
                Lookup::Miss => match s.read_store(id, k)? {
                    Some(bytes) => (Some(crate::codec::decode(&bytes)?), bytes.len(), true),
                    None => (None, 0, false),
                },
            };
            let r = f(&mut v);
            s.cache.put_object(k, v, encoded, stored);
            s.flush_if_full()?;
            Ok(r)
        })
    }

    /// Runs `f` on the stored value of state `id` (`None` when absent) without copying it out of
    /// the write cache: per-record reads decode straight from the cached bytes.
    pub(crate) fn raw_get_with<R>(
        &mut self,
        id: usize,
        ns: &[u8],
        extra: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> Result<R>,
    ) -> Result<R> {
        self.with_full_key(id, ns, extra, |s, k| {
            if let Some(cached) = s.cache.get(k)? {
                return f(cached);
            }
            let v = s.read_store(id, k)?.map(|v| v.to_vec());
            let r = f(v.as_deref())?;
            // A complete cache's miss is an absent key already: caching that is only memory.
            if s.cache.enabled() && (v.is_some() || !s.complete) {
                let stored = v.is_some();
                s.cache.put(k, v, false, stored)?;
                s.flush_if_full()?;
            }
            Ok(r)
        })
    }

    /// Stores `value` (taken, so that the write cache keeps it without a copy).
    pub(crate) fn raw_put(&mut self, id: usize, ns: &[u8], extra: &[u8], value: Vec<u8>) -> Result<()> {
        self.with_full_key(id, ns, extra, |s, k| {
            if s.cache.enabled() {
                s.cache.put(k, Some(value), true, true)?;
                return s.flush_if_full();
            }
            s.store.put(&s.states[id].name, &k[2..], value)
        })
    }

    pub(crate) fn raw_merge(&mut self, id: usize, ns: &[u8], value: &[u8]) -> Result<()> {
        self.with_full_key(id, ns, &[], |s, k| {
            if s.cache.append(k, value)? {
                return s.flush_if_full();
            }
            if s.cache.enabled() && !s.store.writer_finished() {
                // A checkpoint's writer owns the store for now: append to what it holds at the
                // barrier in the cache instead of waiting (the key is in no frozen generation).
                let mut merged = s.read_store(id, k)?.map(|v| v.to_vec()).unwrap_or_default();
                merged.extend_from_slice(value);
                s.cache.put(k, Some(merged), true, true)?;
                return s.flush_if_full();
            }
            // Appended in the store, past the cache.
            s.incomplete("a list append of an uncached key");
            s.store.merge(&s.states[id].name, &k[2..], value)
        })
    }

    pub(crate) fn raw_delete(&mut self, id: usize, ns: &[u8], extra: &[u8]) -> Result<()> {
        self.with_full_key(id, ns, extra, |s, k| {
            if s.cache.enabled() {
                s.cache.put(k, None, true, true)?;
                return s.flush_if_full();
            }
            s.store.delete(&s.states[id].name, &k[2..])
        })
    }

    /// All entries whose key starts with `current key ‖ ns`, as (suffix after the prefix, value).
    pub(crate) fn raw_scan(&mut self, id: usize, ns: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.flush_cache()?;
        self.with_full_key(id, ns, &[], |s, prefix| s.store.scan(&s.states[id].name, &prefix[2..]))
    }

    /// Counts the entries of a state over all keys.
    pub(crate) fn count_entries(&mut self, name: &str) -> Result<u64> {
        self.flush_cache()?;
        self.store.count(name)
    }
}
