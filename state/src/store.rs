//! The RocksDB database under one backend: how it is opened (column families, merge operator,
//! memory), the state metadata kept beside the data, batched writes and checkpoints. Only this
//! module, the write cache's flush and the snapshot reader know that the state lives in RocksDB.
//!
//! Layout (see `ARCHITECTURE.md`): a column family per declared state; each entry's key is
//! `key_group (u16 BE) ‖ key ‖ namespace [‖ map key]`, every part self-delimiting, so the entries of one
//! key group (and of one key) are contiguous and prefix scans are cheap. The WAL is off: durability
//! comes from checkpoints, which are RocksDB checkpoints (hard links) of this directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, MergeOperands, Options, WriteOptions, DB};

use crate::ingest::Ingest;
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
    /// Shared with the thread that finishes a checkpoint (see [`Self::begin_checkpoint`]).
    db: Arc<DB>,
    dir: PathBuf,
    wo: WriteOptions,
    memory: StateMemory,
    /// The writer of the last checkpoint, while it may still run: it writes the frozen write
    /// cache and then checkpoints the database, so nothing else may write until it is done.
    writer: Option<JoinHandle<Result<()>>>,
}

impl Drop for StateStore {
    fn drop(&mut self) {
        // The writer holds the database open; whoever reopens the directory next needs it closed.
        if let Err(e) = self.settle() {
            tracing::warn!(error = %e, "the last checkpoint's writer failed");
        }
    }
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
        let wo = no_wal();
        Ok(StateStore { db: Arc::new(db), dir: dir.to_path_buf(), wo, memory: memory.clone(), writer: None })
    }

    /// Waits for the last checkpoint's writer, if any; true if there was one. Its error (the
    /// frozen write cache did not reach the database) is this store's error: state is lost.
    pub(crate) fn settle(&mut self) -> Result<bool> {
        let Some(writer) = self.writer.take() else { return Ok(false) };
        match writer.join() {
            Ok(r) => r.context("writing a checkpoint's state changes to RocksDB").map(|()| true),
            Err(_) => Err(anyhow!("the checkpoint writer thread panicked")),
        }
    }

    /// Whether the last checkpoint's writer has finished (so [`settle`](Self::settle) will not wait).
    pub(crate) fn writer_finished(&self) -> bool {
        self.writer.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Starts the asynchronous part of a checkpoint on a thread of its own: `write` puts the
    /// changes the task froze at the barrier into the database, then a RocksDB checkpoint (memtable
    /// flush and hard links) goes to `path`, and `done` learns where (or why not). Until that
    /// thread is done, every write to this store waits for it ([`settle`](Self::settle)), so the
    /// checkpoint holds exactly the state at the barrier.
    pub(crate) fn begin_checkpoint(
        &mut self,
        path: PathBuf,
        write: impl FnOnce(&mut Ingest) -> Result<()> + Send + 'static,
        done: std::sync::mpsc::Sender<Result<PathBuf, String>>,
    ) -> Result<()> {
        self.settle()?;
        let db = self.db.clone();
        let opts = self.memory.cf_options();
        let files = self.ingest_dir();
        let writer = std::thread::Builder::new()
            .name("weir-checkpoint-writer".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let mut built = started;
                let written = Ingest::new(&db, &opts, &files).and_then(|mut ingest| {
                    write(&mut ingest)?;
                    built = std::time::Instant::now();
                    ingest.commit()
                });
                let ingested = std::time::Instant::now();
                let checkpoint = match &written {
                    Ok(()) => checkpoint_db(&db, &path).map(|()| path).map_err(|e| format!("{e:#}")),
                    Err(e) => Err(format!("{e:#}")),
                };
                // Where the asynchronous part of a checkpoint goes, for whoever chases its latency.
                let ms = |a: std::time::Instant, b: std::time::Instant| (b - a).as_secs_f64() * 1e3;
                tracing::debug!(
                    build_ms = ms(started, built),
                    ingest_ms = ms(built, ingested),
                    checkpoint_ms = ms(ingested, std::time::Instant::now()),
                    "keyed state checkpoint written"
                );
                // Nobody waiting for the checkpoint (a failed attempt) is no error here.
                let _ = done.send(checkpoint);
                written
            })
            .context("starting the checkpoint writer thread")?;
        self.writer = Some(writer);
        Ok(())
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a checkpoint's writer builds its SST files: beside the database (never inside, where
    /// RocksDB owns every file), on the same file system, so that ingestion links them.
    fn ingest_dir(&self) -> PathBuf {
        let name = self.dir.file_name().map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
        self.dir.with_file_name(format!("{name}.ingest"))
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
        self.settle()?;
        if self.db.cf_handle(&meta.name).is_none() {
            // Settled: the writer thread, the only other holder, has ended.
            let db = Arc::get_mut(&mut self.db).ok_or_else(|| anyhow!("the state store is shared"))?;
            db.create_cf(&meta.name, &self.memory.cf_options())?;
        }
        let cf = self.cf(META_CF)?;
        self.db.put_cf_opt(cf, meta.name.as_bytes(), serde_json::to_vec(meta)?, &self.wo)?;
        Ok(())
    }

    /// Writes a batch (without WAL: checkpoints make state durable).
    pub(crate) fn write(&mut self, batch: rocksdb::WriteBatch) -> Result<()> {
        self.settle()?;
        Ok(self.db.write_opt(batch, &self.wo)?)
    }

    pub(crate) fn put(&mut self, cf: &str, key: &[u8], value: Vec<u8>) -> Result<()> {
        self.settle()?;
        Ok(self.db.put_cf_opt(self.cf(cf)?, key, value, &self.wo)?)
    }

    pub(crate) fn merge(&mut self, cf: &str, key: &[u8], value: &[u8]) -> Result<()> {
        self.settle()?;
        Ok(self.db.merge_cf_opt(self.cf(cf)?, key, value, &self.wo)?)
    }

    pub(crate) fn delete(&mut self, cf: &str, key: &[u8]) -> Result<()> {
        self.settle()?;
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

    /// Whether none of `states` holds an entry (a new store, or one whose states are all empty).
    pub(crate) fn holds_nothing_of(&self, states: &[StateMeta]) -> Result<bool> {
        for meta in states {
            let mut it = self.db.raw_iterator_cf(self.cf(&meta.name)?);
            it.seek_to_first();
            if it.valid() {
                return Ok(false);
            }
            it.status()?;
        }
        Ok(true)
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
}

/// The column family and store key of a write-cache key (`state id (u16 BE) ‖ store key`);
/// `names` holds the column family of each state id.
pub(crate) fn split_cache_key<'k>(names: &'k [String], key: &'k [u8]) -> Result<(&'k str, &'k [u8])> {
    let (id, store_key) =
        key.split_at_checked(2).ok_or_else(|| anyhow!("internal error: a cache key without state id"))?;
    let name = names
        .get(u16::from_be_bytes([id[0], id[1]]) as usize)
        .ok_or_else(|| anyhow!("internal error: a cache key of an undeclared state"))?;
    Ok((name, store_key))
}

/// Adds one change of the write cache to `batch` (see [`split_cache_key`]), `value` `None` for
/// a deletion.
pub(crate) fn batch_change(
    db: &DB,
    names: &[String],
    batch: &mut rocksdb::WriteBatch,
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<()> {
    let (name, store_key) = split_cache_key(names, key)?;
    let cf = db.cf_handle(name).ok_or_else(|| anyhow!("state column family '{name}' is missing"))?;
    match value {
        Some(v) => batch.put_cf(cf, store_key, v),
        None => batch.delete_cf(cf, store_key),
    }
    Ok(())
}

fn no_wal() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.disable_wal(true);
    wo
}

/// A consistent, self-contained copy of the database (hard links where possible) at `path`.
/// RocksDB flushes the memtables first, so this is safe with the WAL disabled.
fn checkpoint_db(db: &DB, path: &Path) -> Result<()> {
    let cp = rocksdb::checkpoint::Checkpoint::new(db)?;
    cp.create_checkpoint(path).with_context(|| format!("creating RocksDB checkpoint at {}", path.display()))?;
    Ok(())
}
