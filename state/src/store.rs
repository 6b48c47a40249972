//! The RocksDB database under one backend: how it is opened (column families, merge operator,
//! memory), the state metadata kept beside the data, batched writes and checkpoints. Only this
//! module, the write cache's flush and the snapshot reader know that the state lives in RocksDB.
//!
//! Layout (see `ARCHITECTURE.md`): a column family per declared state; each entry's key is
//! `key_group (u16 BE) ‖ key ‖ namespace [‖ map key]`, every part self-delimiting, so the entries of one
//! key group (and of one key) are contiguous and prefix scans are cheap. The WAL is off: durability
//! comes from checkpoints, which are RocksDB checkpoints (hard links) of this directory.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, MergeOperands, Options, WriteOptions, DB};

use crate::memory::StateMemory;
use crate::meta::StateMeta;

/// Name of the column family that stores registered timers.
pub const TIMERS_CF: &str = "_timers";
/// Name of the column family that stores state metadata.
pub const META_CF: &str = "_meta";
const LIST_MERGE: &str = "weir_list_append";

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

/// One backend's RocksDB database.
pub(crate) struct StateStore {
    db: DB,
    dir: PathBuf,
    wo: WriteOptions,
    memory: StateMemory,
}

impl StateStore {
    /// Opens (or creates) the database in `dir` with every column family it already has, plus
    /// the metadata and timer families.
    pub(crate) fn open(dir: &Path, memory: &StateMemory) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating state directory {}", dir.display()))?;
        let mut names = DB::list_cf(&Options::default(), dir).unwrap_or_default();
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
        Ok(StateStore { db, dir: dir.to_path_buf(), wo, memory: memory.clone() })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    pub(crate) fn cf(&self, name: &str) -> Result<&ColumnFamily> {
        self.db.cf_handle(name).ok_or_else(|| anyhow!("state column family '{name}' is missing"))
    }

    /// The states declared in earlier runs, in the order of their names.
    pub(crate) fn load_metas(&self) -> Result<Vec<StateMeta>> {
        let cf = self.cf(META_CF)?;
        let mut metas = Vec::new();
        for item in self.db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (_, v) = item?;
            metas.push(serde_json::from_slice(&v).context("reading state metadata")?);
        }
        Ok(metas)
    }

    /// Creates the column family of a newly declared state and records its description.
    pub(crate) fn declare(&mut self, meta: &StateMeta) -> Result<()> {
        if self.db.cf_handle(&meta.name).is_none() {
            self.db.create_cf(&meta.name, &self.memory.cf_options())?;
        }
        let cf = self.cf(META_CF)?;
        self.db.put_cf_opt(cf, meta.name.as_bytes(), serde_json::to_vec(meta)?, &self.wo)?;
        Ok(())
    }

    /// Writes a batch (without WAL: checkpoints make state durable).
    pub(crate) fn write(&self, batch: rocksdb::WriteBatch) -> Result<()> {
        Ok(self.db.write_opt(batch, &self.wo)?)
    }

    pub(crate) fn put(&self, cf: &str, key: &[u8], value: Vec<u8>) -> Result<()> {
        Ok(self.db.put_cf_opt(self.cf(cf)?, key, value, &self.wo)?)
    }

    pub(crate) fn merge(&self, cf: &str, key: &[u8], value: &[u8]) -> Result<()> {
        Ok(self.db.merge_cf_opt(self.cf(cf)?, key, value, &self.wo)?)
    }

    pub(crate) fn delete(&self, cf: &str, key: &[u8]) -> Result<()> {
        Ok(self.db.delete_cf_opt(self.cf(cf)?, key, &self.wo)?)
    }

    /// All entries of `cf` whose key starts with `prefix`, as (suffix after the prefix, value).
    pub(crate) fn scan(&self, cf: &str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut it = self.db.raw_iterator_cf(self.cf(cf)?);
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
    }

    /// Number of entries in `cf`.
    pub(crate) fn count(&self, cf: &str) -> Result<u64> {
        let mut it = self.db.raw_iterator_cf(self.cf(cf)?);
        it.seek_to_first();
        let mut n = 0;
        while it.valid() {
            n += 1;
            it.next();
        }
        it.status()?;
        Ok(n)
    }

    /// A consistent, self-contained copy of the database (hard links where possible) at `path`.
    /// RocksDB flushes the memtables first, so this is safe with the WAL disabled.
    pub(crate) fn checkpoint_to(&self, path: &Path) -> Result<()> {
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db)?;
        cp.create_checkpoint(path).with_context(|| format!("creating RocksDB checkpoint at {}", path.display()))?;
        Ok(())
    }
}
