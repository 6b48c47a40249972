//! The keyed state backend of one stateful subtask: its [`KeyedState`] (states, write cache and
//! store) and its [`TimerService`], opened, flushed, checkpointed and restored together by the
//! runtime.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::cache::{WriteCache, DEFAULT_CACHE_BYTES};
use crate::keyed::KeyedState;
use crate::keygroup::KeyGroupRange;
use crate::memory::{default_memory, StateMemory};
use crate::meta::{Clock, StateMeta};
use crate::store::StateStore;
use crate::timers::{TimeDomain, Timer, TimerService};

/// Keyed state and timers of one subtask of one operator, stored in RocksDB.
///
/// Operators never hold this: the runtime sets the current key and hands operators the
/// [`KeyedState`] (through typed views such as [`ValueState`](crate::ValueState)) and the
/// [`TimerService`] through their context.
///
/// ```
/// use weir_state::{KeyedStateBackend, KeyGroupRange, ValueStateDescriptor};
/// let dir = tempfile::tempdir().unwrap();
/// let mut backend = KeyedStateBackend::open(dir.path(), KeyGroupRange::for_subtask(128, 1, 0), 128).unwrap();
/// let count = ValueStateDescriptor::<u64>::new("count");
/// backend.set_current_key(&"apple").unwrap();
/// backend.value_state(&count).unwrap().update(&3).unwrap();
/// assert_eq!(backend.value_state(&count).unwrap().value().unwrap(), Some(3));
/// backend.set_current_key(&"pear").unwrap();
/// assert_eq!(backend.value_state(&count).unwrap().value().unwrap(), None);
/// ```
pub struct KeyedStateBackend {
    state: KeyedState,
    timers: TimerService,
}

impl Drop for KeyedStateBackend {
    fn drop(&mut self) {
        // Nothing durable depends on this (checkpoints flush explicitly), but a backend reopened
        // from the same directory should see every write.
        if let Err(e) = self.flush_cache() {
            tracing::warn!(error = %e, "flushing keyed state on close failed");
        }
    }
}

impl KeyedStateBackend {
    /// Opens (or creates) the backend in `dir` for the key groups in `range`, in the process's
    /// default memory budget.
    pub fn open(dir: &Path, range: KeyGroupRange, max_parallelism: usize) -> Result<Self> {
        Self::open_with(dir, range, max_parallelism, default_memory())
    }

    /// Opens (or creates) the backend in `dir` for the key groups in `range`, sharing `memory`.
    pub fn open_with(dir: &Path, range: KeyGroupRange, max_parallelism: usize, memory: &StateMemory) -> Result<Self> {
        let store = StateStore::open(dir, memory)?;
        let cache = WriteCache::new(memory.write_cache_bytes.min(DEFAULT_CACHE_BYTES));
        let mut state = KeyedState::new(store, cache, range, max_parallelism)?;
        let mut timers = TimerService::default();
        timers.load(state.store_mut(), range)?;
        Ok(KeyedStateBackend { state, timers })
    }

    /// The keyed state (what state descriptors bind to) and the timers, borrowed together for an
    /// operator's context.
    pub fn parts(&mut self) -> (&mut KeyedState, &mut TimerService) {
        (&mut self.state, &mut self.timers)
    }

    /// The keyed state, for binding descriptors outside an operator (tools and tests).
    pub fn state(&mut self) -> &mut KeyedState {
        &mut self.state
    }

    /// The directory holding this backend's files.
    pub fn dir(&self) -> &Path {
        self.state.store().dir()
    }

    /// The key groups this backend serves.
    pub fn key_group_range(&self) -> KeyGroupRange {
        self.state.range()
    }

    /// Replaces the processing-time clock used for TTL (tests use a manual clock).
    pub fn set_clock(&mut self, clock: Clock) {
        self.state.set_clock(clock);
    }

    /// Sets the key that subsequent state accesses and timer registrations refer to.
    pub fn set_current_key<K: Serialize + ?Sized>(&mut self, key: &K) -> Result<()> {
        self.state.set_current_key(key)
    }

    /// Sets the current key from its encoded bytes (without key-group prefix).
    pub fn set_current_key_bytes(&mut self, key_bytes: &[u8]) {
        self.state.set_current_key_bytes(key_bytes);
    }

    /// Sets the current key from `key_group ‖ key bytes`, as stored in a [`Timer`].
    pub fn set_current_key_prefixed(&mut self, prefixed: &[u8]) {
        self.state.set_current_key_prefixed(prefixed);
    }

    /// The encoded current key, without key-group prefix.
    pub fn current_key_bytes(&self) -> &[u8] {
        self.state.current_key_bytes()
    }

    /// The key group of the current key.
    pub fn current_key_group(&self) -> u16 {
        match self.state.current_key_prefixed() {
            [a, b, ..] => u16::from_be_bytes([*a, *b]),
            _ => 0,
        }
    }

    /// The declared states.
    pub fn states(&self) -> &[StateMeta] {
        self.state.states()
    }

    /// Sets the byte budget of the in-memory write cache (0 disables it).
    pub fn set_cache_limit(&mut self, bytes: usize) -> Result<()> {
        self.state.set_cache_limit(bytes)
    }

    /// Writes every cached change (state and timers) to RocksDB and empties the cache.
    pub fn flush_cache(&mut self) -> Result<()> {
        self.state.flush_cache()?;
        self.timers.flush(self.state.store_mut())
    }

    /// Registers a timer for the current key; registering the same timer twice keeps one.
    pub fn register_timer(&mut self, domain: TimeDomain, ts: i64, ns: &[u8]) -> Result<()> {
        self.timers.register(domain, ts, self.state.current_key_prefixed(), ns)
    }

    /// Deletes a timer of the current key, if registered.
    pub fn delete_timer(&mut self, domain: TimeDomain, ts: i64, ns: &[u8]) -> Result<()> {
        self.timers.delete(domain, ts, self.state.current_key_prefixed(), ns)
    }

    /// The earliest registered timer of `domain`.
    pub fn next_timer(&self, domain: TimeDomain) -> Option<i64> {
        self.timers.next(domain)
    }

    /// Removes and returns the earliest timer of `domain` if it is due at `time` (ts ≤ time).
    pub fn pop_due_timer(&mut self, domain: TimeDomain, time: i64) -> Option<Timer> {
        self.timers.pop_due(domain, time)
    }

    /// Number of registered timers of `domain`.
    pub fn timer_count(&self, domain: TimeDomain) -> usize {
        self.timers.count(domain)
    }

    /// How many state reads went past the write cache to RocksDB. None do while the cache holds
    /// every key the store has: from an empty store on, until the cache is drained (full, or before
    /// a scan), a list append reaches the store directly, or state is imported.
    pub fn store_reads(&self) -> u64 {
        self.state.store_reads()
    }

    /// Counts the entries of a state over all keys (for metrics, tests and tools).
    pub fn count_entries(&mut self, name: &str) -> Result<u64> {
        self.state.count_entries(name)
    }

    /// Writes a consistent, self-contained copy of the state (hard links where possible) to
    /// `path` and waits for it.
    pub fn checkpoint_to(&mut self, path: &Path) -> Result<()> {
        self.begin_checkpoint(path)?.wait().map(drop)
    }

    /// Takes a checkpoint of the state as it is now into `path`, doing on the caller's thread only
    /// what must happen before the next state change: the write cache's generation and the timer
    /// changes are frozen (no copy, no encoding). A thread of the store's own writes them to
    /// RocksDB and takes the RocksDB checkpoint (memtable flush, hard links) while the caller
    /// goes on reading and changing state; its next write to RocksDB waits for that thread.
    ///
    /// ```
    /// use weir_state::{KeyedStateBackend, KeyGroupRange, ValueStateDescriptor};
    /// let dir = tempfile::tempdir().unwrap();
    /// let mut backend = KeyedStateBackend::open(&dir.path().join("db"), KeyGroupRange::for_subtask(128, 1, 0), 128).unwrap();
    /// let count = ValueStateDescriptor::<u64>::new("count");
    /// backend.set_current_key(&"apple").unwrap();
    /// backend.value_state(&count).unwrap().update(&1).unwrap();
    /// let pending = backend.begin_checkpoint(&dir.path().join("chk-1")).unwrap();
    /// // Changes after the barrier go on at once and are not part of checkpoint 1.
    /// backend.value_state(&count).unwrap().update(&2).unwrap();
    /// let files = pending.wait().unwrap();
    /// let restored = KeyedStateBackend::open(&files, KeyGroupRange::for_subtask(128, 1, 0), 128);
    /// let mut restored = restored.unwrap();
    /// restored.set_current_key(&"apple").unwrap();
    /// assert_eq!(restored.value_state(&count).unwrap().value().unwrap(), Some(1));
    /// ```
    pub fn begin_checkpoint(&mut self, path: &Path) -> Result<PendingCheckpoint> {
        let frozen = self.state.freeze()?;
        let timers = self.timers.take_changes();
        let names: Vec<String> = self.state.states().iter().map(|m| m.name.clone()).collect();
        let (done, rx) = std::sync::mpsc::channel();
        let write = move |ingest: &mut crate::ingest::Ingest| -> Result<()> {
            if let Some(frozen) = &frozen {
                frozen.write_to(|k, v| {
                    let (cf, key) = crate::store::split_cache_key(&names, k)?;
                    ingest.change(cf, key, v)
                })?;
            }
            timers.ingest_into(ingest)
        };
        self.state.store_mut().begin_checkpoint(path.to_path_buf(), write, done)?;
        Ok(PendingCheckpoint { done: rx })
    }

    /// Writes imported entries (already filtered to this backend's key groups) to the store.
    pub(crate) fn write_import(&mut self, batch: rocksdb::WriteBatch) -> Result<()> {
        self.flush_cache()?;
        self.state.store_mut().write(batch)
    }

    pub(crate) fn store(&self) -> &StateStore {
        self.state.store()
    }

    pub(crate) fn declare(&mut self, meta: &StateMeta) -> Result<()> {
        self.state.state_id(&meta.name, meta.kind, meta.ttl).map(drop)
    }

    /// Reloads the timers of this backend's key groups from the store (after an import).
    pub(crate) fn reload_timers(&mut self) -> Result<()> {
        let range = self.state.range();
        self.timers.load(self.state.store_mut(), range)
    }
}

/// The asynchronous part of a backend's checkpoint (see
/// [`KeyedStateBackend::begin_checkpoint`]), for whoever stores the checkpoint's files.
pub struct PendingCheckpoint {
    done: std::sync::mpsc::Receiver<Result<std::path::PathBuf, String>>,
}

impl PendingCheckpoint {
    /// Waits until the RocksDB checkpoint is complete; returns its directory.
    pub fn wait(self) -> Result<std::path::PathBuf> {
        match self.done.recv() {
            Ok(r) => r.map_err(|e| anyhow::anyhow!(e)),
            Err(_) => Err(anyhow::anyhow!("the checkpoint writer thread ended without a result")),
        }
    }
}
