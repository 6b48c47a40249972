//! The RocksDB keyed state backend: one instance per stateful subtask.
//!
//! Layout (see `ARCHITECTURE.md`): a column family per declared state; each entry's key is
//! `key_group (u16 BE) ‖ key ‖ namespace [‖ map key]`, every part self-delimiting, so the entries of one
//! key group (and of one key) are contiguous and prefix scans are cheap. The WAL is off: durability
//! comes from checkpoints, which are RocksDB checkpoints (hard links) of this directory.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, MergeOperands, Options, WriteOptions, DB};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::keygroup::{key_group_of, KeyGroupRange};

/// A source of the current processing time in epoch milliseconds (replaceable in tests).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The wall clock in epoch milliseconds.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    })
}

/// What kind of state a column family holds; recorded so tools can decode it without the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    /// One value per key and namespace.
    Value,
    /// An appendable list per key and namespace.
    List,
    /// A map per key and namespace.
    Map,
    /// A value folded with a reduce function.
    Reducing,
    /// An accumulator of an aggregate function.
    Aggregating,
}

/// Time-to-live of state entries, measured in processing time (like Flink's `StateTtlConfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateTtlConfig {
    /// How long an entry lives after it was written (or read, with `update_on_read`).
    pub ttl_ms: i64,
    /// Whether reading an entry extends its life (Flink's `OnReadAndWrite`).
    pub update_on_read: bool,
}

impl StateTtlConfig {
    /// Entries expire `ttl` after their last write; expired entries are never returned.
    ///
    /// ```
    /// let ttl = weir_state::StateTtlConfig::new(std::time::Duration::from_secs(60));
    /// assert_eq!(ttl.ttl_ms, 60_000);
    /// ```
    pub fn new(ttl: std::time::Duration) -> Self {
        StateTtlConfig { ttl_ms: ttl.as_millis() as i64, update_on_read: false }
    }

    /// Reading an entry also extends its life.
    pub fn update_on_read(mut self) -> Self {
        self.update_on_read = true;
        self
    }
}

/// The description of one declared state, stored beside the data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMeta {
    /// The state's name (its column family).
    pub name: String,
    /// Its kind.
    pub kind: StateKind,
    /// Its time-to-live, if any. With a TTL every stored value starts with an 8-byte expiry.
    pub ttl: Option<StateTtlConfig>,
}

/// Name of the column family that stores registered timers.
pub const TIMERS_CF: &str = "_timers";
/// Name of the column family that stores state metadata.
pub const META_CF: &str = "_meta";
const LIST_MERGE: &str = "weir_list_append";

/// Which clock a timer follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TimeDomain {
    /// Fires when the watermark passes the timer's timestamp.
    EventTime,
    /// Fires when the wall clock passes the timer's timestamp.
    ProcessingTime,
}

/// A registered timer: when, for which key (key-group-prefixed key bytes) and namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timer {
    /// The timestamp at which the timer fires.
    pub ts: i64,
    /// `key_group ‖ key bytes` of the key it belongs to.
    pub key: Box<[u8]>,
    /// The namespace it was registered in (e.g. an encoded window), possibly empty.
    pub ns: Box<[u8]>,
}

impl Timer {
    /// The encoded key, without the key-group prefix.
    pub fn key_bytes(&self) -> &[u8] {
        &self.key[2..]
    }
}

fn list_append(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut out = existing.map(<[u8]>::to_vec).unwrap_or_default();
    for op in operands {
        out.extend_from_slice(op);
    }
    Some(out)
}

/// Options every column family is opened with. The merge operator must be the same on every open
/// of the same files (opening a list column family without it crashes RocksDB).
pub(crate) fn cf_options() -> Options {
    let mut opts = Options::default();
    opts.set_compression_type(DBCompressionType::Lz4);
    opts.set_merge_operator_associative(LIST_MERGE, list_append);
    opts
}

/// Memory that the keyed state backends of a job share, so that the job's state stays within
/// `--memory-budget` however large it grows (RocksDB spills to disk): one block cache that the
/// memtables are charged to as well (a write buffer manager), index and filter blocks inside
/// it, and each backend's write cache sized from the same budget.
///
/// ```
/// use weir_state::{KeyGroupRange, KeyedStateBackend, StateMemory};
/// let memory = StateMemory::new(64 << 20, 2);
/// let dir = tempfile::tempdir().unwrap();
/// let b = KeyedStateBackend::open_with(dir.path(), KeyGroupRange::for_subtask(128, 1, 0), 128, &memory).unwrap();
/// assert_eq!(b.key_group_range(), KeyGroupRange::for_subtask(128, 1, 0));
/// ```
#[derive(Clone)]
pub struct StateMemory {
    cache: rocksdb::Cache,
    write_buffers: rocksdb::WriteBufferManager,
    memtable_bytes: usize,
    write_cache_bytes: usize,
}

impl StateMemory {
    /// Memory for `backends` backends sharing `bytes`: three quarters go to the block cache
    /// (a quarter of `bytes` of it to memtables), a quarter to the backends' write caches.
    pub fn new(bytes: usize, backends: usize) -> Self {
        let cache = rocksdb::Cache::new_lru_cache(bytes / 4 * 3);
        let memtables = bytes / 4;
        let write_buffers =
            rocksdb::WriteBufferManager::new_write_buffer_manager_with_cache(memtables, false, cache.clone());
        StateMemory { cache, write_buffers, memtable_bytes: memtables, write_cache_bytes: bytes / 4 / backends.max(1) }
    }

    fn cf_options(&self) -> Options {
        let mut opts = cf_options();
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&self.cache);
        table.set_cache_index_and_filter_blocks(true);
        // Most reads of a new key (a window's first record) find nothing: a filter answers
        // those without reading data blocks.
        table.set_bloom_filter(10.0, false);
        opts.set_memtable_whole_key_filtering(true);
        opts.set_memtable_prefix_bloom_ratio(0.05);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        opts.set_block_based_table_factory(&table);
        // A memtable fills in a slice of the shared limit, so that many column families of
        // many backends can each hold one without the manager flushing all the time.
        opts.set_write_buffer_size((self.memtable_bytes / 4).clamp(1 << 20, 32 << 20));
        opts
    }

    fn db_options(&self) -> Options {
        let mut opts = self.cf_options();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_write_buffer_manager(&self.write_buffers);
        opts
    }
}

/// What [`KeyedStateBackend::open`] uses: one budget per process of [`DEFAULT_STATE_MEMORY`].
fn default_memory() -> &'static StateMemory {
    static MEMORY: std::sync::OnceLock<StateMemory> = std::sync::OnceLock::new();
    MEMORY.get_or_init(|| StateMemory::new(DEFAULT_STATE_MEMORY, 1))
}

/// Budget of the backends opened without a [`StateMemory`] of their own.
pub const DEFAULT_STATE_MEMORY: usize = 256 << 20;

fn timer_cf_key(domain: TimeDomain, t: &Timer) -> Vec<u8> {
    let mut k = Vec::with_capacity(11 + t.key.len() + t.ns.len());
    k.extend_from_slice(&t.key[..2]);
    k.push(domain as u8);
    // Flip the sign bit so that byte order equals numeric order for negative timestamps too.
    k.extend_from_slice(&((t.ts as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(&t.key[2..]);
    k.extend_from_slice(&t.ns);
    k
}

/// Keyed state of one subtask of one operator, stored in RocksDB.
///
/// Operators never hold this directly: the runtime sets the current key and hands operators typed
/// views ([`ValueState`](crate::ValueState) and friends) through their context.
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
    db: DB,
    dir: PathBuf,
    states: Vec<StateMeta>,
    by_name: HashMap<String, usize>,
    /// `key_group ‖ key bytes` of the current key.
    key: Vec<u8>,
    range: KeyGroupRange,
    max_parallelism: usize,
    wo: WriteOptions,
    clock: Clock,
    scratch: Vec<u8>,
    event_timers: BTreeSet<Timer>,
    processing_timers: BTreeSet<Timer>,
    cache: WriteCache,
    memory: StateMemory,
    /// Timer changes not yet in RocksDB, by timer column family key. Timers live in memory; the
    /// column family only has to be right when a checkpoint is taken, so a timer registered and
    /// fired between two checkpoints never reaches RocksDB.
    timer_changes: rustc_hash::FxHashMap<Vec<u8>, TimerChange>,
}

/// A timer change waiting for the next flush.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TimerChange {
    /// Registered; RocksDB does not have it (so deleting it again leaves nothing to do).
    New {
        key_len: u32,
    },
    /// Registered again after a deletion of a stored one.
    Put {
        key_len: u32,
    },
    Delete,
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

/// A cached entry: `None` means deleted; `dirty` entries still have to reach RocksDB.
struct CacheEntry {
    value: Option<Vec<u8>>,
    /// The value as a live Rust object, updated in place by read-modify-write accesses
    /// ([`KeyedStateBackend::raw_update_with`]) and encoded only when the cache is flushed or the
    /// bytes are read; when set it supersedes `value`.
    object: Option<Box<dyn StateObject>>,
    dirty: bool,
    /// RocksDB may hold a value for the key. When it certainly does not (a read found nothing),
    /// deleting the entry again needs no tombstone: window state that lives and dies between two
    /// flushes never reaches RocksDB.
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

/// Hot state entries kept in memory between flushes, so that the read-modify-write of every
/// record (a window accumulator, a running count) does not search the memtable twice. Entries
/// are keyed by `state id (u16 BE) ‖ RocksDB key`. The whole cache is written to RocksDB in one
/// `WriteBatch` when it outgrows its byte budget, before every scan, and before a checkpoint.
struct WriteCache {
    map: ahash::AHashMap<Vec<u8>, CacheEntry>,
    bytes: usize,
    limit: usize,
}

/// Default byte budget of a backend's write cache.
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;

impl KeyedStateBackend {
    /// Opens (or creates) the backend in `dir` for the key groups in `range`, in the process's
    /// default memory budget.
    pub fn open(dir: &Path, range: KeyGroupRange, max_parallelism: usize) -> Result<Self> {
        Self::open_with(dir, range, max_parallelism, default_memory())
    }

    /// Opens (or creates) the backend in `dir` for the key groups in `range`, sharing `memory`.
    pub fn open_with(dir: &Path, range: KeyGroupRange, max_parallelism: usize, memory: &StateMemory) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating state directory {}", dir.display()))?;
        let existing = DB::list_cf(&Options::default(), dir).unwrap_or_default();
        let mut names: Vec<String> = existing;
        for required in [META_CF, TIMERS_CF] {
            if !names.iter().any(|n| n == required) {
                names.push(required.to_string());
            }
        }
        let descriptors = names.iter().map(|n| ColumnFamilyDescriptor::new(n, memory.cf_options()));
        let db = DB::open_cf_descriptors(&memory.db_options(), dir, descriptors)
            .with_context(|| format!("opening RocksDB state in {}", dir.display()))?;
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        let mut backend = KeyedStateBackend {
            db,
            dir: dir.to_path_buf(),
            states: Vec::new(),
            by_name: HashMap::new(),
            key: Vec::new(),
            range,
            max_parallelism,
            wo,
            clock: system_clock(),
            scratch: Vec::new(),
            event_timers: BTreeSet::new(),
            processing_timers: BTreeSet::new(),
            cache: WriteCache {
                map: Default::default(),
                bytes: 0,
                limit: memory.write_cache_bytes.min(DEFAULT_CACHE_BYTES),
            },
            memory: memory.clone(),
            timer_changes: Default::default(),
        };
        backend.load_meta()?;
        backend.load_timers()?;
        Ok(backend)
    }

    fn load_meta(&mut self) -> Result<()> {
        let cf = self.cf(META_CF)?;
        let mut metas = Vec::new();
        for item in self.db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (_, v) = item?;
            let meta: StateMeta = serde_json::from_slice(&v).context("reading state metadata")?;
            metas.push(meta);
        }
        for meta in metas {
            self.by_name.insert(meta.name.clone(), self.states.len());
            self.states.push(meta);
        }
        Ok(())
    }

    pub(crate) fn cf_for_import(&self, name: &str) -> Result<&ColumnFamily> {
        self.cf(name)
    }

    pub(crate) fn write_import(&mut self, batch: rocksdb::WriteBatch) -> Result<()> {
        self.flush_cache()?;
        self.db.write_opt(batch, &self.wo)?;
        Ok(())
    }

    pub(crate) fn reload_timers(&mut self) -> Result<()> {
        self.flush_timers()?;
        self.event_timers.clear();
        self.processing_timers.clear();
        self.load_timers()
    }

    fn load_timers(&mut self) -> Result<()> {
        let cf = self.cf(TIMERS_CF)?;
        for item in self.db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            if k.len() < 11 || v.len() != 4 {
                bail!("corrupt timer entry in {}", self.dir.display());
            }
            let kg = u16::from_be_bytes([k[0], k[1]]);
            if !self.range.contains(kg) {
                continue;
            }
            let key_len = u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize;
            let ts = (u64::from_be_bytes(k[3..11].try_into()?) ^ (1 << 63)) as i64;
            let rest = &k[11..];
            if rest.len() < key_len {
                bail!("corrupt timer entry in {}", self.dir.display());
            }
            let mut key = Vec::with_capacity(2 + key_len);
            key.extend_from_slice(&k[..2]);
            key.extend_from_slice(&rest[..key_len]);
            let timer = Timer { ts, key: key.into(), ns: rest[key_len..].into() };
            match k[2] {
                0 => self.event_timers.insert(timer),
                _ => self.processing_timers.insert(timer),
            };
        }
        Ok(())
    }

    /// The directory holding this backend's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key groups this backend serves.
    pub fn key_group_range(&self) -> KeyGroupRange {
        self.range
    }

    /// Replaces the processing-time clock used for TTL (tests use a manual clock).
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// The current processing time of this backend's clock.
    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    /// Sets the key that subsequent state accesses and timer registrations refer to.
    pub fn set_current_key<K: Serialize + ?Sized>(&mut self, key: &K) -> Result<()> {
        let mut bytes = std::mem::take(&mut self.scratch);
        bytes.clear();
        crate::codec::encode_into(key, &mut bytes)?;
        self.set_current_key_bytes(&bytes);
        self.scratch = bytes;
        Ok(())
    }

    /// Sets the current key from its encoded bytes (without key-group prefix).
    pub fn set_current_key_bytes(&mut self, key_bytes: &[u8]) {
        let kg = key_group_of(key_bytes, self.max_parallelism);
        self.key.clear();
        self.key.extend_from_slice(&kg.to_be_bytes());
        self.key.extend_from_slice(key_bytes);
    }

    /// Sets the current key from `key_group ‖ key bytes`, as stored in a [`Timer`].
    pub fn set_current_key_prefixed(&mut self, prefixed: &[u8]) {
        self.key.clear();
        self.key.extend_from_slice(prefixed);
    }

    /// The encoded current key, without key-group prefix.
    pub fn current_key_bytes(&self) -> &[u8] {
        self.key.get(2..).unwrap_or(&[])
    }

    /// The key group of the current key.
    pub fn current_key_group(&self) -> u16 {
        match self.key.as_slice() {
            [a, b, ..] => u16::from_be_bytes([*a, *b]),
            _ => 0,
        }
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily> {
        self.db.cf_handle(name).ok_or_else(|| anyhow!("state column family '{name}' is missing"))
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
        if self.db.cf_handle(name).is_none() {
            self.db.create_cf(name, &self.memory.cf_options())?;
        }
        let meta = StateMeta { name: name.to_string(), kind, ttl };
        let cf = self.cf(META_CF)?;
        self.db.put_cf_opt(cf, name.as_bytes(), serde_json::to_vec(&meta)?, &self.wo)?;
        let id = self.states.len();
        self.states.push(meta);
        self.by_name.insert(name.to_string(), id);
        Ok(id)
    }

    /// The declared states.
    pub fn states(&self) -> &[StateMeta] {
        &self.states
    }

    pub(crate) fn meta(&self, id: usize) -> &StateMeta {
        &self.states[id]
    }

    /// Sets the byte budget of the in-memory write cache (0 disables it).
    pub fn set_cache_limit(&mut self, bytes: usize) -> Result<()> {
        self.cache.limit = bytes;
        if self.cache.bytes > bytes {
            self.flush_cache()?;
        }
        Ok(())
    }

    /// Writes every cached change (state and timers) to RocksDB and empties the cache.
    pub fn flush_cache(&mut self) -> Result<()> {
        self.flush_timers()?;
        if self.cache.map.is_empty() {
            return Ok(());
        }
        let mut batch = rocksdb::WriteBatch::default();
        for (k, mut e) in self.cache.map.drain() {
            e.materialize()?;
            if !e.dirty || (e.value.is_none() && !e.stored) {
                continue;
            }
            let id = u16::from_be_bytes([k[0], k[1]]) as usize;
            let cf = self
                .db
                .cf_handle(&self.states[id].name)
                .ok_or_else(|| anyhow!("state column family '{}' is missing", self.states[id].name))?;
            match e.value {
                Some(v) => batch.put_cf(cf, &k[2..], v),
                None => batch.delete_cf(cf, &k[2..]),
            }
        }
        self.cache.bytes = 0;
        self.db.write_opt(batch, &self.wo)?;
        Ok(())
    }

    /// Builds `state id ‖ current key ‖ ns ‖ extra` into the scratch buffer and runs `f` with it;
    /// the RocksDB key is everything after the first two bytes.
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

    /// `stored`: whether RocksDB may hold the key, for entries new to the cache.
    fn cache_store(&mut self, key: &[u8], value: Option<Vec<u8>>, dirty: bool, stored: bool) -> Result<()> {
        let cost = entry_cost(key.len(), value.as_ref().map_or(0, Vec::len));
        match self.cache.map.get_mut(key) {
            Some(e) if value.is_none() && !e.stored => {
                // Deleted before it ever reached RocksDB: forget it (no tombstone, no memory).
                let gone = e.accounted;
                self.cache.map.remove(key);
                self.cache.bytes = self.cache.bytes.saturating_sub(gone);
                return Ok(());
            }
            Some(e) => {
                self.cache.bytes = (self.cache.bytes + cost).saturating_sub(e.accounted);
                e.accounted = cost;
                e.value = value;
                e.object = None;
                e.dirty |= dirty;
            }
            None => {
                self.cache.bytes += cost;
                self.cache.map.insert(key.to_vec(), CacheEntry { value, object: None, dirty, stored, accounted: cost });
            }
        }
        if self.cache.bytes > self.cache.limit {
            self.flush_cache()?;
        }
        Ok(())
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
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        // Without a write cache (limit 0) this still works: the new object is flushed at once.
        self.with_full_key(id, ns, extra, |b, k| {
            let (mut v, encoded, stored): (Option<T>, usize, bool) = match b.cache.map.get_mut(k) {
                Some(e) => {
                    if let Some(obj) = e.object.as_mut() {
                        if let Some(o) = obj.as_any_mut().downcast_mut::<Object<T>>() {
                            e.dirty = true;
                            return Ok(f(&mut o.0));
                        }
                        // The same state read as another type: go through its bytes.
                        e.materialize()?;
                    }
                    let encoded = e.value.as_ref().map_or(0, Vec::len);
                    (e.value.as_deref().map(crate::codec::decode).transpose()?, encoded, e.stored)
                }
                None => {
                    let cf = b.cf(&b.states[id].name)?;
                    match b.db.get_pinned_cf(cf, &k[2..])? {
                        Some(bytes) => (Some(crate::codec::decode(&bytes)?), bytes.len(), true),
                        None => (None, 0, false),
                    }
                }
            };
            let r = f(&mut v);
            // Objects are charged their inline size plus the encoded size they were read with (at
            // least 64 bytes for their heap parts): an estimate, as a value that grows in place
            // is charged its first size until the next flush empties the cache.
            let cost = entry_cost(k.len(), std::mem::size_of::<T>() + encoded.max(64));
            let entry =
                CacheEntry { value: None, object: Some(Box::new(Object(v))), dirty: true, stored, accounted: cost };
            let old = b.cache.map.insert(k.to_vec(), entry).map_or(0, |e| e.accounted);
            b.cache.bytes = (b.cache.bytes + cost).saturating_sub(old);
            if b.cache.bytes > b.cache.limit {
                b.flush_cache()?;
            }
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
        self.with_full_key(id, ns, extra, |b, k| {
            if let Some(e) = b.cache.map.get_mut(k) {
                e.materialize()?;
                return f(e.value.as_deref());
            }
            let cf = b.cf(&b.states[id].name)?;
            let v = b.db.get_pinned_cf(cf, &k[2..])?.map(|v| v.to_vec());
            let r = f(v.as_deref())?;
            if b.cache.limit > 0 {
                let stored = v.is_some();
                b.cache_store(k, v, false, stored)?;
            }
            Ok(r)
        })
    }

    /// Stores `value` (taken, so that the write cache keeps it without a copy).
    pub(crate) fn raw_put(&mut self, id: usize, ns: &[u8], extra: &[u8], value: Vec<u8>) -> Result<()> {
        self.with_full_key(id, ns, extra, |b, k| {
            if b.cache.limit > 0 {
                return b.cache_store(k, Some(value), true, true);
            }
            let cf = b.cf(&b.states[id].name)?;
            Ok(b.db.put_cf_opt(cf, &k[2..], value, &b.wo)?)
        })
    }

    pub(crate) fn raw_merge(&mut self, id: usize, ns: &[u8], value: &[u8]) -> Result<()> {
        self.with_full_key(id, ns, &[], |b, k| {
            if let Some(e) = b.cache.map.get_mut(k) {
                // The only merge operator is concatenation, so the cache can apply it itself.
                e.materialize()?;
                let mut merged = e.value.take().unwrap_or_default();
                merged.extend_from_slice(value);
                return b.cache_store(k, Some(merged), true, true);
            }
            let cf = b.cf(&b.states[id].name)?;
            Ok(b.db.merge_cf_opt(cf, &k[2..], value, &b.wo)?)
        })
    }

    pub(crate) fn raw_delete(&mut self, id: usize, ns: &[u8], extra: &[u8]) -> Result<()> {
        self.with_full_key(id, ns, extra, |b, k| {
            if b.cache.limit > 0 {
                return b.cache_store(k, None, true, true);
            }
            let cf = b.cf(&b.states[id].name)?;
            Ok(b.db.delete_cf_opt(cf, &k[2..], &b.wo)?)
        })
    }

    /// All entries whose key starts with `current key ‖ ns`, as (suffix after the prefix, value).
    pub(crate) fn raw_scan(&mut self, id: usize, ns: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.flush_cache()?;
        self.with_full_key(id, ns, &[], |b, prefix| {
            let prefix = &prefix[2..];
            let cf = b.cf(&b.states[id].name)?;
            let mut it = b.db.raw_iterator_cf(cf);
            it.seek(prefix);
            let mut out = Vec::new();
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                if !k.starts_with(prefix) {
                    break;
                }
                out.push((k[prefix.len()..].to_vec(), v.to_vec()));
                it.next();
            }
            it.status()?;
            Ok(out)
        })
    }

    /// Registers a timer for the current key; registering the same timer twice keeps one.
    pub fn register_timer(&mut self, domain: TimeDomain, ts: i64, ns: &[u8]) -> Result<()> {
        if self.key.is_empty() {
            bail!("timer registered without a current key");
        }
        let timer = Timer { ts, key: self.key.as_slice().into(), ns: ns.into() };
        let set = match domain {
            TimeDomain::EventTime => &mut self.event_timers,
            TimeDomain::ProcessingTime => &mut self.processing_timers,
        };
        if set.contains(&timer) {
            return Ok(());
        }
        let cf_key = timer_cf_key(domain, &timer);
        let key_len = (timer.key.len() - 2) as u32;
        set.insert(timer);
        let change = match self.timer_changes.get(&cf_key) {
            Some(TimerChange::Delete) => TimerChange::Put { key_len },
            _ => TimerChange::New { key_len },
        };
        self.timer_changes.insert(cf_key, change);
        Ok(())
    }

    fn timer_removed(&mut self, cf_key: Vec<u8>) {
        match self.timer_changes.get(&cf_key) {
            Some(TimerChange::New { .. }) => {
                self.timer_changes.remove(&cf_key);
            }
            _ => {
                self.timer_changes.insert(cf_key, TimerChange::Delete);
            }
        }
    }

    /// Writes the timer changes since the last flush to RocksDB in one batch.
    fn flush_timers(&mut self) -> Result<()> {
        if self.timer_changes.is_empty() {
            return Ok(());
        }
        let cf = self.cf(TIMERS_CF)?;
        let mut batch = rocksdb::WriteBatch::default();
        for (k, change) in self.timer_changes.iter() {
            match change {
                TimerChange::New { key_len } | TimerChange::Put { key_len } => {
                    batch.put_cf(cf, k, key_len.to_be_bytes())
                }
                TimerChange::Delete => batch.delete_cf(cf, k),
            }
        }
        self.db.write_opt(batch, &self.wo)?;
        self.timer_changes.clear();
        Ok(())
    }

    /// Deletes a timer of the current key, if registered.
    pub fn delete_timer(&mut self, domain: TimeDomain, ts: i64, ns: &[u8]) -> Result<()> {
        let timer = Timer { ts, key: self.key.as_slice().into(), ns: ns.into() };
        let set = match domain {
            TimeDomain::EventTime => &mut self.event_timers,
            TimeDomain::ProcessingTime => &mut self.processing_timers,
        };
        if set.remove(&timer) {
            self.timer_removed(timer_cf_key(domain, &timer));
        }
        Ok(())
    }

    /// The earliest registered timer of `domain`.
    pub fn next_timer(&self, domain: TimeDomain) -> Option<i64> {
        match domain {
            TimeDomain::EventTime => self.event_timers.first().map(|t| t.ts),
            TimeDomain::ProcessingTime => self.processing_timers.first().map(|t| t.ts),
        }
    }

    /// Removes and returns the earliest timer of `domain` if it is due at `time` (ts ≤ time).
    pub fn pop_due_timer(&mut self, domain: TimeDomain, time: i64) -> Result<Option<Timer>> {
        let set = match domain {
            TimeDomain::EventTime => &mut self.event_timers,
            TimeDomain::ProcessingTime => &mut self.processing_timers,
        };
        match set.first() {
            Some(t) if t.ts <= time => {}
            _ => return Ok(None),
        }
        let Some(timer) = set.pop_first() else { return Ok(None) };
        self.timer_removed(timer_cf_key(domain, &timer));
        Ok(Some(timer))
    }

    /// Number of registered timers of `domain`.
    pub fn timer_count(&self, domain: TimeDomain) -> usize {
        match domain {
            TimeDomain::EventTime => self.event_timers.len(),
            TimeDomain::ProcessingTime => self.processing_timers.len(),
        }
    }

    /// Counts the entries of a state over all keys (for metrics, tests and tools).
    pub fn count_entries(&mut self, name: &str) -> Result<u64> {
        self.flush_cache()?;
        let cf = self.cf(name)?;
        let mut it = self.db.raw_iterator_cf(cf);
        it.seek_to_first();
        let mut n = 0;
        while it.valid() {
            n += 1;
            it.next();
        }
        it.status()?;
        Ok(n)
    }

    /// Writes a consistent, self-contained copy of the state (hard links where possible) to `path`.
    ///
    /// Flushes the memtables first, so this is safe with the WAL disabled.
    pub fn checkpoint_to(&mut self, path: &Path) -> Result<()> {
        self.flush_cache()?;
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db)?;
        cp.create_checkpoint(path).with_context(|| format!("creating RocksDB checkpoint at {}", path.display()))?;
        Ok(())
    }
}
