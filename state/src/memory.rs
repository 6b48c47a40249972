//! The memory budget the keyed state backends of a job share.

use rocksdb::Options;

use crate::store::cf_options;

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
    /// Each backend's write-cache share of the budget.
    pub(crate) write_cache_bytes: usize,
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

    pub(crate) fn cf_options(&self) -> Options {
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

    pub(crate) fn db_options(&self) -> Options {
        let mut opts = self.cf_options();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_write_buffer_manager(&self.write_buffers);
        opts
    }
}

/// What [`KeyedStateBackend::open`](crate::KeyedStateBackend::open) uses: one budget per process of [`DEFAULT_STATE_MEMORY`].
pub(crate) fn default_memory() -> &'static StateMemory {
    static MEMORY: std::sync::OnceLock<StateMemory> = std::sync::OnceLock::new();
    MEMORY.get_or_init(|| StateMemory::new(DEFAULT_STATE_MEMORY, 1))
}

/// Budget of the backends opened without a [`StateMemory`] of their own.
pub const DEFAULT_STATE_MEMORY: usize = 256 << 20;
