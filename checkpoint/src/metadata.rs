//! The `_metadata` file: what a checkpoint or savepoint holds, and where.
//!
//! Format (version 1), JSON: `{"format_version": 1, "checksum": "<xxh3 of body>", "body": {...}}`
//! where the body is a [`CheckpointMetadata`]. Every path in it is relative to the directory the
//! metadata describes paths from: the job's checkpoint directory for checkpoints (so incremental
//! files under `shared/` can be referenced), the savepoint directory itself for savepoints (so
//! savepoints can be moved). Each file carries its size and xxh3 checksum, so a truncated or
//! corrupt checkpoint is detected before it is used.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use weir_state::KeyGroupRange;
use xxhash_rust::xxh3::Xxh3;

/// Version of the format written by this build.
pub const FORMAT_VERSION: u32 = 1;

/// Name of the metadata file, the commit point of a checkpoint.
pub const METADATA_FILE: &str = "_metadata";

/// A checkpoint taken on a schedule, or a savepoint taken on request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    /// Periodic, incremental, owned by the job.
    Checkpoint,
    /// On request, self-contained, owned by the user.
    Savepoint,
}

/// A file of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// Path relative to the metadata's base directory.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// xxh3-64 of the content, as 16 hex digits.
    pub xxh3: String,
}

/// The snapshot of one subtask of one operator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubtaskSnapshot {
    /// Subtask index.
    pub subtask: usize,
    /// Key groups of its keyed state, if the operator is keyed.
    pub key_groups: Option<KeyGroupRange>,
    /// Files of its RocksDB checkpoint (empty when not keyed).
    pub keyed_files: Vec<FileRef>,
    /// Its operator state (JSON), if any.
    pub operator_state: Option<FileRef>,
    /// Its watermark when the snapshot was taken.
    pub watermark: i64,
}

/// The snapshot of one operator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperatorSnapshot {
    /// The operator's stable id.
    pub uid: String,
    /// Its display name.
    pub name: String,
    /// Its parallelism when the snapshot was taken.
    pub parallelism: usize,
    /// Whether it has keyed state.
    pub keyed: bool,
    /// One entry per subtask.
    pub subtasks: Vec<SubtaskSnapshot>,
}

/// Everything in a checkpoint or savepoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    /// The job's name.
    pub job: String,
    /// Checkpoint id (savepoints share the sequence).
    pub checkpoint_id: u64,
    /// Checkpoint or savepoint.
    pub kind: SnapshotKind,
    /// When it was triggered (epoch ms).
    pub timestamp: i64,
    /// Number of key groups.
    pub max_parallelism: usize,
    /// The operators' snapshots.
    pub operators: Vec<OperatorSnapshot>,
    /// From the trigger until every subtask's state was stored, in ms (absent in metadata
    /// written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

impl CheckpointMetadata {
    /// The snapshot of an operator by uid.
    pub fn operator(&self, uid: &str) -> Option<&OperatorSnapshot> {
        self.operators.iter().find(|o| o.uid == uid)
    }

    /// Every file the snapshot references.
    pub fn files(&self) -> impl Iterator<Item = &FileRef> {
        self.operators
            .iter()
            .flat_map(|o| o.subtasks.iter())
            .flat_map(|s| s.keyed_files.iter().chain(s.operator_state.iter()))
    }
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    format_version: u32,
    checksum: String,
    body: &'a RawValue,
}

#[derive(Deserialize)]
struct EnvelopeIn<'a> {
    format_version: u32,
    checksum: String,
    #[serde(borrow)]
    body: &'a RawValue,
}

pub(crate) fn hex(h: u64) -> String {
    format!("{h:016x}")
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("path without parent")?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// The bytes of a `_metadata` file describing `meta`.
pub fn metadata_bytes(meta: &CheckpointMetadata) -> Result<Vec<u8>> {
    let body = serde_json::to_string(meta)?;
    let raw = RawValue::from_string(body)?;
    let env = EnvelopeOut {
        format_version: FORMAT_VERSION,
        checksum: hex(xxhash_rust::xxh3::xxh3_64(raw.get().as_bytes())),
        body: &raw,
    };
    Ok(serde_json::to_vec_pretty(&env)?)
}

/// Writes `_metadata` into `dir` (the commit point of the snapshot).
pub fn write_metadata(dir: &Path, meta: &CheckpointMetadata) -> Result<()> {
    write_atomic(&dir.join(METADATA_FILE), &metadata_bytes(meta)?)
}

/// Reads and checks `dir/_metadata`.
pub fn read_metadata(dir: &Path) -> Result<CheckpointMetadata> {
    let path = dir.join(METADATA_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_metadata(&text, &path.display().to_string())
}

/// What a `_metadata` file holds instead of a checkpoint when the checkpoint was aborted: the
/// commit point taken by a newer coordinator, so that the coordinator that started the checkpoint
/// can never commit it (see [`crate::commit`]).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Tombstone {
    /// The checkpoint it closes.
    pub aborted_checkpoint: u64,
    /// Who closed it and why, for people reading the directory.
    pub reason: String,
}

impl Tombstone {
    /// The tombstone in `text`, if `text` is one (a checkpoint's metadata is not).
    pub(crate) fn parse(text: &str) -> Option<Tombstone> {
        serde_json::from_str(text).ok()
    }

    pub(crate) fn bytes(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(self)?)
    }
}

/// Checks and decodes the text of a `_metadata` file; `origin` names it in errors.
pub fn parse_metadata(text: &str, origin: &str) -> Result<CheckpointMetadata> {
    if let Some(t) = Tombstone::parse(text) {
        bail!("{origin}: checkpoint {} was aborted ({})", t.aborted_checkpoint, t.reason);
    }
    let env: EnvelopeIn = serde_json::from_str(text).with_context(|| format!("{origin} is not valid metadata"))?;
    if env.format_version != FORMAT_VERSION {
        bail!("{origin} has format version {}, this build reads version {FORMAT_VERSION}", env.format_version);
    }
    let actual = hex(xxhash_rust::xxh3::xxh3_64(env.body.get().as_bytes()));
    if actual != env.checksum {
        bail!("{origin} is corrupt: checksum {actual}, expected {}", env.checksum);
    }
    serde_json::from_str(env.body.get()).with_context(|| format!("decoding {origin}"))
}

/// xxh3-64 of a file's content and its size.
pub fn checksum_file(path: &Path) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Xxh3::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, hex(h.digest())))
}

/// Checks that every file of `meta` exists under `base` with its recorded size and checksum.
/// Files this machine checksummed when it stored them and that were not written since (see
/// [`crate::stamps`]) count as checked without being read.
pub fn verify(meta: &CheckpointMetadata, base: &Path) -> Result<()> {
    verify_reading(meta, base).map(|_| ())
}

/// [`verify`], returning how many files it had to read (the others' stamps matched).
pub fn verify_reading(meta: &CheckpointMetadata, base: &Path) -> Result<usize> {
    verify_stamping(meta, base).map(|(read, _)| read)
}

/// [`verify_reading`], also returning a stamp for each file that vouches for its checksum: the
/// recorded one where it matched, one taken right after reading the file otherwise.
pub(crate) fn verify_stamping(
    meta: &CheckpointMetadata,
    base: &Path,
) -> Result<(usize, HashMap<String, crate::stamps::Stamp>)> {
    let mut stamps = crate::stamps::unchanged(meta, base);
    let mut read = 0;
    for f in meta.files() {
        if stamps.contains_key(&f.path) {
            continue;
        }
        read += 1;
        let path = base.join(&f.path);
        let (size, sum) = checksum_file(&path)?;
        if size != f.size {
            bail!("{} has {size} bytes, expected {}", path.display(), f.size);
        }
        if sum != f.xxh3 {
            bail!("{} is corrupt: checksum {sum}, expected {}", path.display(), f.xxh3);
        }
        if let Some(stamp) = crate::stamps::stamp_of(&path).filter(|s| s.size == f.size) {
            stamps.insert(f.path.clone(), stamp);
        }
    }
    Ok((read, stamps))
}

/// A snapshot found on disk: its metadata and the directory its paths are relative to.
#[derive(Clone, Debug)]
pub struct LoadedSnapshot {
    /// The metadata.
    pub meta: CheckpointMetadata,
    /// Base directory of its file paths.
    pub base: PathBuf,
    /// The directory holding `_metadata`.
    pub dir: PathBuf,
}

/// Loads a snapshot directory (checkpoint `chk-N` or savepoint) and verifies all its files.
pub fn load(dir: &Path) -> Result<LoadedSnapshot> {
    let snapshot = load_verified_elsewhere(dir)?;
    verify(&snapshot.meta, &snapshot.base)?;
    Ok(snapshot)
}

/// [`load`] without reading the files: for a snapshot whose every file the caller has just
/// checked against the metadata (a fetch from an object store checksums what it keeps and what it
/// downloads), so that a restore reads nothing twice.
pub(crate) fn load_verified_elsewhere(dir: &Path) -> Result<LoadedSnapshot> {
    let meta = read_metadata(dir)?;
    let base = match meta.kind {
        SnapshotKind::Savepoint => dir.to_path_buf(),
        SnapshotKind::Checkpoint => dir.parent().context("checkpoint directory without parent")?.to_path_buf(),
    };
    Ok(LoadedSnapshot { meta, base, dir: dir.to_path_buf() })
}
