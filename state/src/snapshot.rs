//! Reading and moving RocksDB snapshots of keyed state: restoring a backend from one or several
//! old snapshots (rescaling moves key groups), and decoding entries without the job's types.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, DB};

use crate::backend::KeyedStateBackend;
use crate::codec::{Codec, DefaultCodec};
use crate::meta::{StateKind, StateMeta};
use crate::store::{cf_options, META_CF, TIMERS_CF};

/// The file name a RocksDB file had in its database, given the name it is stored under
/// (shared SST files are stored as `<uid>-<subtask>-<run>-<name>`).
///
/// ```
/// assert_eq!(weir_state::snapshot::original_file_name("win-0-18f3a-000012.sst"), "000012.sst");
/// assert_eq!(weir_state::snapshot::original_file_name("MANIFEST-000005"), "MANIFEST-000005");
/// ```
pub fn original_file_name(stored: &str) -> &str {
    if stored.ends_with(".sst") {
        stored.rsplit_once('-').map_or(stored, |(_, n)| n)
    } else {
        stored
    }
}

fn open_snapshot(dir: &Path) -> Result<DB> {
    let cfs = DB::list_cf(&Options::default(), dir)
        .with_context(|| format!("listing column families in {}", dir.display()))?;
    let descriptors = cfs.iter().map(|n| ColumnFamilyDescriptor::new(n, cf_options()));
    DB::open_cf_descriptors_read_only(&cf_options(), dir, descriptors, false)
        .with_context(|| format!("opening state snapshot {}", dir.display()))
}

impl KeyedStateBackend {
    /// Copies the entries of the key groups this backend owns from old snapshots (each a RocksDB
    /// checkpoint directory) into this backend, then reloads its timers. Used when the
    /// parallelism changed, so that key groups move between subtasks.
    pub fn import_key_groups(&mut self, snapshots: &[&Path]) -> Result<()> {
        let range = self.key_group_range();
        for dir in snapshots {
            let src = open_snapshot(dir)?;
            let metas: Vec<StateMeta> = src
                .iterator_cf(
                    src.cf_handle(META_CF).ok_or_else(|| anyhow!("snapshot without {META_CF}"))?,
                    IteratorMode::Start,
                )
                .map(|item| -> Result<StateMeta> { Ok(serde_json::from_slice(&item?.1)?) })
                .collect::<Result<_>>()?;
            for meta in &metas {
                self.declare(meta)?;
            }
            let mut names: Vec<String> = metas.iter().map(|m| m.name.clone()).collect();
            names.push(TIMERS_CF.to_string());
            for name in names {
                let Some(src_cf) = src.cf_handle(&name) else { continue };
                let mut batch = rocksdb::WriteBatch::default();
                for item in src.iterator_cf(src_cf, IteratorMode::Start) {
                    let (k, v) = item?;
                    if k.len() >= 2 && range.contains(u16::from_be_bytes([k[0], k[1]])) {
                        batch.put_cf(self.store().cf(&name)?, &k, &v);
                    }
                }
                self.write_import(batch)?;
            }
        }
        self.reload_timers()
    }
}

/// Statistics of one state in a snapshot.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StateStats {
    /// The state's description.
    pub meta: StateMeta,
    /// Number of entries.
    pub entries: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
}

/// Read-only access to a RocksDB snapshot of keyed state.
pub struct SnapshotReader {
    db: DB,
    metas: Vec<StateMeta>,
}

impl SnapshotReader {
    /// Opens a snapshot directory (its files under their original names).
    pub fn open(dir: &Path) -> Result<Self> {
        let db = open_snapshot(dir)?;
        let mut metas = Vec::new();
        if let Some(cf) = db.cf_handle(META_CF) {
            for item in db.iterator_cf(cf, IteratorMode::Start) {
                metas.push(serde_json::from_slice(&item?.1)?);
            }
        }
        Ok(SnapshotReader { db, metas })
    }

    /// The declared states.
    pub fn states(&self) -> &[StateMeta] {
        &self.metas
    }

    /// Entry count and size of every state, and of the timers (as kind `None`).
    pub fn stats(&self) -> Result<(Vec<StateStats>, u64)> {
        let mut out = Vec::new();
        for meta in &self.metas {
            let (mut entries, mut bytes) = (0, 0);
            if let Some(cf) = self.db.cf_handle(&meta.name) {
                for item in self.db.iterator_cf(cf, IteratorMode::Start) {
                    let (k, v) = item?;
                    entries += 1;
                    bytes += (k.len() + v.len()) as u64;
                }
            }
            out.push(StateStats { meta: meta.clone(), entries, bytes });
        }
        let timers = match self.db.cf_handle(TIMERS_CF) {
            Some(cf) => self.db.iterator_cf(cf, IteratorMode::Start).count() as u64,
            None => 0,
        };
        Ok((out, timers))
    }

    /// The description of `state`, or an error naming the states there are.
    pub fn meta(&self, state: &str) -> Result<&StateMeta> {
        self.metas.iter().find(|m| m.name == state).ok_or_else(|| {
            let names: Vec<&str> = self.metas.iter().map(|m| m.name.as_str()).collect();
            anyhow!("no state '{state}' here; states: {}", names.join(", "))
        })
    }

    /// The raw entries of `state` whose stored key starts with `prefix` (`key group ‖ key bytes`
    /// or a prefix of it), in key order, read one at a time: nothing is buffered, so tools can
    /// walk states of any size. A state declared but never written has no entries.
    pub fn entries<'a>(&'a self, state: &str, prefix: &'a [u8]) -> Result<impl Iterator<Item = Result<Entry>> + 'a> {
        self.meta(state)?;
        let cf = self.db.cf_handle(state);
        let iter = cf.map(|cf| self.db.iterator_cf(cf, IteratorMode::From(prefix, rocksdb::Direction::Forward)));
        Ok(iter
            .into_iter()
            .flatten()
            .map(|item| item.map_err(anyhow::Error::from))
            .take_while(move |item| item.as_ref().map_or(true, |(k, _)| k.starts_with(prefix))))
    }
}

/// One stored entry: `key group ‖ key ‖ namespace [‖ map key]` and the value bytes.
pub type Entry = (Box<[u8]>, Box<[u8]>);

/// The key group a stored key belongs to.
pub fn entry_key_group(stored_key: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*stored_key.first()?, *stored_key.get(1)?]))
}

/// A stored value decoded to JSON (a list state's elements as an array; no TTL header).
pub fn decode_value(meta: &StateMeta, mut v: &[u8]) -> Result<serde_json::Value> {
    let one = |v: &mut &[u8]| -> Result<serde_json::Value> {
        if meta.ttl.is_some() {
            *v = v.get(8..).ok_or_else(|| anyhow!("value shorter than its TTL header"))?;
        }
        DefaultCodec::decode_json(v)
    };
    if meta.kind == StateKind::List {
        let mut items = Vec::new();
        while !v.is_empty() {
            items.push(one(&mut v)?);
        }
        Ok(serde_json::Value::Array(items))
    } else {
        one(&mut v)
    }
}

/// An entry decoded to JSON without the job's types: `key_group`, `key`, `namespace`, `value`
/// and, for map state, `map_key`. A TTL's expiry header is not part of the value.
pub fn decode_entry(meta: &StateMeta, k: &[u8], v: &[u8]) -> Result<serde_json::Value> {
    let kg = entry_key_group(k).ok_or_else(|| anyhow!("stored key shorter than its key group"))?;
    let mut rest = &k[2..];
    let key = DefaultCodec::decode_json(&mut rest)?;
    let mut parts = Vec::new();
    while !rest.is_empty() {
        parts.push(DefaultCodec::decode_json(&mut rest)?);
    }
    let (namespace, user_key) = match (meta.kind, parts.len()) {
        (StateKind::Map, 1) => (serde_json::Value::Null, parts.pop()),
        (StateKind::Map, _) => {
            let uk = parts.pop();
            (parts.pop().unwrap_or(serde_json::Value::Null), uk)
        }
        (_, _) => (parts.pop().unwrap_or(serde_json::Value::Null), None),
    };
    let mut obj =
        serde_json::json!({"key_group": kg, "key": key, "namespace": namespace, "value": decode_value(meta, v)?});
    if let Some(uk) = user_key {
        obj["map_key"] = uk;
    }
    Ok(obj)
}

/// The key groups that have entries in a snapshot (used by tests and tools).
pub fn key_groups_of(dir: &Path) -> Result<Vec<u16>> {
    let db = open_snapshot(dir)?;
    let mut kgs = std::collections::BTreeSet::new();
    for name in DB::list_cf(&Options::default(), dir)? {
        if name == META_CF || name == "default" {
            continue;
        }
        if let Some(cf) = db.cf_handle(&name) {
            for item in db.iterator_cf(cf, IteratorMode::Start) {
                let (k, _) = item?;
                kgs.insert(u16::from_be_bytes([k[0], k[1]]));
            }
        }
    }
    Ok(kgs.into_iter().collect())
}
