//! The checkpoint directory of a job: `<checkpoint-dir>/<job>/chk-<n>/` per checkpoint and
//! `shared/` for RocksDB SST files reused by several checkpoints (incremental checkpoints).
//!
//! ```text
//! <checkpoint-dir>/<job>/
//!   chk-7/_metadata                      written last: the commit point
//!   chk-7/<uid>-<subtask>/MANIFEST-…     private files of one subtask's RocksDB checkpoint
//!   chk-7/<uid>-<subtask>/operator_state.json
//!   shared/<uid>-<subtask>-<run>-000012.sst
//! ```
//!
//! Shared files are reference-counted by recount: after each completed checkpoint, a shared file
//! that no retained checkpoint references is deleted.
//!
//! On an object store (`s3://bucket/prefix`) the layout is the same under `prefix/<job>/`, and a
//! local directory mirrors it: every file is placed in the mirror as on a local disk, then
//! uploaded; restores download into the mirror what it lacks (a new machine downloads everything,
//! a restart on the same machine nothing unchanged) and then read it as a local checkpoint. Object
//! stores have no rename, so checkpoint ids are reserved and `_metadata` committed with create-only
//! puts: of two coordinators (a stale one and a new one), exactly one commits an id.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use weir_state::snapshot::original_file_name;

use crate::location::Location;
use crate::metadata::{
    checksum_file, load, metadata_bytes, parse_metadata, write_atomic, write_metadata, CheckpointMetadata, FileRef,
    LoadedSnapshot, SnapshotKind, SubtaskSnapshot, Tombstone, METADATA_FILE,
};
use crate::remote::Remote;
use crate::stamps::Taken;

/// The object that reserves a checkpoint id on an object store.
const RESERVED_FILE: &str = "_reserved";

/// Hard-links `src` to `dst`, or copies it where links are impossible (another file system).
pub fn link_or_copy(src: &Path, dst: &Path) -> Result<()> {
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst).with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    }
    Ok(())
}

/// The reference of `path` (under `base`), checksummed, and stamped in `taken` right after.
fn file_ref(base: &Path, path: &Path, taken: &Taken) -> Result<FileRef> {
    let (size, xxh3) = checksum_file(path)?;
    let rel = path.strip_prefix(base).with_context(|| format!("{} is outside {}", path.display(), base.display()))?;
    let f = FileRef { path: rel.to_string_lossy().into_owned(), size, xxh3 };
    taken.take(base, &f);
    Ok(f)
}

/// The checkpoints of one job.
#[derive(Clone, Debug)]
pub struct CheckpointStorage {
    /// The job's checkpoint directory, or the local mirror of its object-store prefix.
    pub(crate) base: PathBuf,
    /// The job's prefix on an object store.
    pub(crate) remote: Option<Remote>,
    /// Stamps of the files this process checksummed as it stored them (see `stamps.rs`).
    pub(crate) taken: Taken,
}

impl CheckpointStorage {
    /// The storage of `job` under `checkpoint_dir` (created if missing).
    pub fn new(checkpoint_dir: &Path, job: &str) -> Result<Self> {
        let base = checkpoint_dir.join(job);
        std::fs::create_dir_all(base.join("shared")).with_context(|| format!("creating {}", base.display()))?;
        Ok(CheckpointStorage { base, remote: None, taken: Taken::default() })
    }

    /// The storage of `job` at `location`. For an object store, `mirror` is the local directory
    /// that keeps copies of the files this process wrote or read (see the module comment).
    pub fn open(location: &Location, job: &str, mirror: &Path) -> Result<Self> {
        match location {
            Location::Local(dir) => Self::new(dir, job),
            Location::S3 { bucket, prefix } => {
                let remote = Remote::s3(bucket, prefix)?.child(job);
                std::fs::create_dir_all(mirror.join("shared"))
                    .with_context(|| format!("creating {}", mirror.display()))?;
                Ok(CheckpointStorage { base: mirror.to_path_buf(), remote: Some(remote), taken: Taken::default() })
            }
        }
    }

    /// `<checkpoint-dir>/<job>`, or the local mirror of an object-store location.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Where the checkpoints are, for messages: a directory or `s3://bucket/prefix/<job>`.
    pub fn location(&self) -> String {
        match &self.remote {
            Some(r) => r.url().to_string(),
            None => self.base.display().to_string(),
        }
    }

    /// The directory of checkpoint `id`.
    pub fn chk_dir(&self, id: u64) -> PathBuf {
        self.base.join(format!("chk-{id}"))
    }

    /// Records on disk that checkpoint `id` was started, before its barriers flow: ids are never
    /// reused after a crash, so what sinks did under an id (a transaction, a file) is never
    /// confused with a later checkpoint's.
    ///
    /// On an object store the reservation is a create-only put, so two coordinators of the same
    /// job can never both use an id: the second fails here.
    pub fn reserve(&self, id: u64) -> Result<()> {
        let dir = self.chk_dir(id);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::File::open(&self.base)?.sync_all()?;
        if let Some(remote) = &self.remote {
            if !remote.put_new(&format!("chk-{id}/{RESERVED_FILE}"), Vec::new())? {
                bail!(
                    "checkpoint {id} in {} is already reserved: another coordinator of this job is running",
                    remote.url()
                );
            }
        }
        Ok(())
    }

    /// Every `chk-<n>` directory, complete or not, by increasing id.
    /// The paths are local (in the mirror, for an object store).
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>> {
        let mut out = Vec::new();
        if let Some(remote) = &self.remote {
            for name in remote.list_dirs("")? {
                if let Some(id) = name.strip_prefix("chk-").and_then(|n| n.parse().ok()) {
                    out.push((id, self.chk_dir(id)));
                }
            }
            out.sort();
            return Ok(out);
        }
        self.list_local()
    }

    /// Every `chk-<n>` directory of the local directory (the mirror, for an object store).
    pub(crate) fn list_local(&self) -> Result<Vec<(u64, PathBuf)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.base)? {
            let e = e?;
            if let Some(id) = e.file_name().to_str().and_then(|n| n.strip_prefix("chk-")).and_then(|n| n.parse().ok()) {
                out.push((id, e.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The highest checkpoint id ever started here (0 if none): new ids continue after it.
    pub fn max_id(&self) -> Result<u64> {
        Ok(self.list()?.last().map_or(0, |(id, _)| *id))
    }

    /// The newest checkpoint that is complete and intact; broken ones are skipped with a warning.
    pub fn latest_valid(&self) -> Result<Option<LoadedSnapshot>> {
        Ok(self.restore_point()?.0)
    }

    /// Checkpoint `id`, verified (brought from the object store first, if there is one).
    pub fn checkpoint(&self, id: u64) -> Result<LoadedSnapshot> {
        if let Some(remote) = &self.remote {
            if !self.fetch(remote, id)? {
                bail!("{}/chk-{id} is not a complete checkpoint (no _metadata, or aborted)", remote.url());
            }
        }
        load(&self.chk_dir(id))
    }

    /// Brings checkpoint `id` from the object store into the mirror: its `_metadata` and every
    /// file the mirror lacks or holds differently. `false` when it has no `_metadata` (abandoned
    /// or in progress) or when it was aborted.
    pub(crate) fn fetch(&self, remote: &Remote, id: u64) -> Result<bool> {
        let key = format!("chk-{id}/{METADATA_FILE}");
        let Some(bytes) = remote.get(&key)? else { return Ok(false) };
        let text = String::from_utf8(bytes).with_context(|| format!("{}/{key} is not text", remote.url()))?;
        if Tombstone::parse(&text).is_some() {
            return Ok(false);
        }
        let meta = parse_metadata(&text, &format!("{}/{key}", remote.url()))?;
        // Every file is checked here, the kept ones by their stamps (see `stamps.rs`) or by reading
        // them, the downloaded ones as they stream in, so the restore loads the checkpoint without
        // reading its files again.
        let unchanged = crate::stamps::unchanged(&meta, &self.base);
        let missing: Vec<(String, PathBuf, u64, String)> = meta
            .files()
            .filter(|f| {
                let local = self.base.join(&f.path);
                !unchanged.contains_key(&f.path)
                    && !checksum_file(&local).is_ok_and(|(size, sum)| size == f.size && sum == f.xxh3)
            })
            .map(|f| (f.path.clone(), self.base.join(&f.path), f.size, f.xxh3.clone()))
            .collect();
        if !missing.is_empty() {
            tracing::info!(checkpoint = id, files = missing.len(), from = remote.url(), "downloading a checkpoint");
        }
        remote.download(missing)?;
        // All checked now: the next restore on this machine reads none of them.
        crate::stamps::record_checkpoint(&meta, &self.base);
        let dir = self.chk_dir(id);
        std::fs::create_dir_all(&dir)?;
        write_atomic(&dir.join(METADATA_FILE), text.as_bytes())?;
        Ok(true)
    }

    /// Stores one subtask's snapshot of checkpoint `id`: the files of a local RocksDB checkpoint
    /// (SST files go to `shared/` once; `known` remembers which are there already) and its
    /// operator state.
    #[allow(clippy::too_many_arguments)]
    pub fn upload_subtask(
        &self,
        id: u64,
        uid: &str,
        subtask: usize,
        run: &str,
        local_db: Option<&Path>,
        operator_state: Option<&[u8]>,
        known: &mut HashMap<String, FileRef>,
    ) -> Result<(Vec<FileRef>, Option<FileRef>)> {
        let private = self.chk_dir(id).join(format!("{uid}-{subtask}"));
        std::fs::create_dir_all(&private)?;
        let mut files = Vec::new();
        // Files this call placed, to upload when the checkpoints live on an object store.
        let mut placed: Vec<(PathBuf, String)> = Vec::new();
        if let Some(local) = local_db {
            let mut names: Vec<String> = std::fs::read_dir(local)?
                .filter_map(|e| e.ok().and_then(|e| e.file_name().to_str().map(String::from)))
                .collect();
            names.sort();
            for name in names {
                let src = local.join(&name);
                if name.ends_with(".sst") {
                    if let Some(f) = known.get(&name) {
                        files.push(f.clone());
                        continue;
                    }
                    let dst = self.base.join("shared").join(format!("{uid}-{subtask}-{run}-{name}"));
                    link_or_copy(&src, &dst)?;
                    let f = file_ref(&self.base, &dst, &self.taken)?;
                    known.insert(name, f.clone());
                    placed.push((dst, f.path.clone()));
                    files.push(f);
                } else {
                    let dst = private.join(&name);
                    std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
                    let f = file_ref(&self.base, &dst, &self.taken)?;
                    placed.push((dst, f.path.clone()));
                    files.push(f);
                }
            }
        }
        let state = match operator_state {
            Some(bytes) => {
                let path = private.join("operator_state.json");
                std::fs::write(&path, bytes)?;
                let f = file_ref(&self.base, &path, &self.taken)?;
                placed.push((path, f.path.clone()));
                Some(f)
            }
            None => None,
        };
        self.taken.record(&private, &files.iter().chain(state.iter()).collect::<Vec<_>>());
        if let Some(remote) = &self.remote {
            remote.upload(placed)?;
        }
        Ok((files, state))
    }

    /// Completes checkpoint `meta.checkpoint_id` by writing its metadata. On an object store the
    /// write is create-only: if another coordinator committed the id, this fails and nothing of
    /// this checkpoint is visible.
    ///
    /// This is the commit point alone; a coordinator commits with [`CheckpointStorage::commit`],
    /// which also keeps a stale coordinator from committing.
    pub fn complete(&self, meta: &CheckpointMetadata) -> Result<()> {
        let id = meta.checkpoint_id;
        if !self.create_commit_point(id, metadata_bytes(meta)?)? {
            bail!("checkpoint {id} in {} was committed by another coordinator of this job", self.location());
        }
        if self.remote.is_some() {
            let dir = self.chk_dir(id);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            write_metadata(&dir, meta)?;
        }
        Ok(())
    }

    /// Copies checkpoint `snapshot` into a self-contained savepoint `savepoint-<job>-<n>` under
    /// `root` (a directory or an object-store prefix) and returns where it is.
    pub fn write_savepoint(&self, snapshot: &CheckpointMetadata, root: &Location) -> Result<String> {
        let name = format!("savepoint-{}-{}", snapshot.job, snapshot.checkpoint_id);
        let mut meta = snapshot.clone();
        meta.kind = SnapshotKind::Savepoint;
        // (the file in this storage's directory, its path in the savepoint)
        let mut copies: Vec<(PathBuf, String)> = Vec::new();
        for op in &mut meta.operators {
            for st in &mut op.subtasks {
                let sub = format!("{}-{}", op.uid, st.subtask);
                for f in st.keyed_files.iter_mut().chain(st.operator_state.iter_mut()) {
                    let file = Path::new(&f.path).file_name().context("file without name")?.to_string_lossy();
                    let rel = format!("{sub}/{file}");
                    copies.push((self.base.join(&f.path), rel.clone()));
                    f.path = rel;
                }
            }
        }
        match root {
            Location::Local(root) => {
                let dir = root.join(&name);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)?;
                }
                for (src, rel) in &copies {
                    let dst = dir.join(rel);
                    std::fs::create_dir_all(dst.parent().context("savepoint file without directory")?)?;
                    std::fs::copy(src, &dst).with_context(|| format!("copying {}", src.display()))?;
                }
                std::fs::create_dir_all(&dir)?;
                write_metadata(&dir, &meta)?;
                Ok(dir.display().to_string())
            }
            Location::S3 { bucket, prefix } => {
                let remote = Remote::s3(bucket, prefix)?.child(&name);
                remote.upload(copies)?;
                if !remote.put_new(METADATA_FILE, metadata_bytes(&meta)?)? {
                    bail!("{} exists already", remote.url());
                }
                Ok(remote.url().to_string())
            }
        }
    }
}

/// One checkpoint as `weir checkpoints list` shows it.
#[derive(Clone, Debug)]
pub struct Listed {
    /// The checkpoint id.
    pub id: u64,
    /// Files its metadata references, and their bytes (unknown without readable metadata).
    pub files: Option<(u64, u64)>,
    /// When it was triggered (epoch ms; unknown without readable metadata).
    pub triggered: Option<i64>,
    /// How long it took until every subtask's state was stored (unknown for older metadata).
    pub duration_ms: Option<u64>,
    /// Bytes of the files the previous listed checkpoint with metadata did not reference: what
    /// this one stored anew.
    pub new_bytes: Option<u64>,
    /// `complete`, `incomplete` (no `_metadata`: in progress or abandoned) or `broken: <why>`.
    pub status: String,
}

impl CheckpointStorage {
    /// Every checkpoint here with its status. Local files are verified by size and checksum; on
    /// an object store by size, from one listing (nothing is downloaded but the metadata).
    pub fn describe(&self) -> Result<Vec<Listed>> {
        let stored: Option<HashMap<String, u64>> = match &self.remote {
            Some(remote) => Some(remote.list("")?.into_iter().collect()),
            None => None,
        };
        let mut out = Vec::new();
        let mut previous: HashSet<String> = HashSet::new();
        let unknown = |id: u64, status: String| Listed {
            id,
            files: None,
            triggered: None,
            duration_ms: None,
            new_bytes: None,
            status,
        };
        for (id, dir) in self.list()? {
            let meta = match (&self.remote, &stored) {
                (Some(remote), Some(keys)) => {
                    let key = format!("chk-{id}/{METADATA_FILE}");
                    if !keys.contains_key(&key) {
                        out.push(unknown(id, "incomplete".into()));
                        continue;
                    }
                    let bytes = remote.get(&key)?.unwrap_or_default();
                    if Tombstone::parse(&String::from_utf8_lossy(&bytes)).is_some() {
                        out.push(unknown(id, "aborted".into()));
                        continue;
                    }
                    parse_metadata(&String::from_utf8_lossy(&bytes), &format!("{}/{key}", remote.url()))
                }
                _ => {
                    if !dir.join(METADATA_FILE).exists() {
                        out.push(unknown(id, "incomplete".into()));
                        continue;
                    }
                    let text = std::fs::read_to_string(dir.join(METADATA_FILE)).unwrap_or_default();
                    if Tombstone::parse(&text).is_some() {
                        out.push(unknown(id, "aborted".into()));
                        continue;
                    }
                    crate::metadata::read_metadata(&dir)
                }
            };
            let meta = match meta {
                Ok(m) => m,
                Err(e) => {
                    out.push(unknown(id, format!("broken: {e:#}")));
                    continue;
                }
            };
            let files = meta.files().fold((0, 0), |(n, b), f| (n + 1, b + f.size));
            let new_bytes = meta.files().filter(|f| !previous.contains(&f.path)).map(|f| f.size).sum();
            previous = meta.files().map(|f| f.path.clone()).collect();
            let problem = match &stored {
                Some(keys) => meta
                    .files()
                    .find(|f| keys.get(&f.path) != Some(&f.size))
                    .map(|f| format!("{} is missing or has the wrong size", f.path)),
                None => load(&dir).err().map(|e| format!("{e:#}")),
            };
            let status = problem.map_or_else(|| "complete".to_string(), |p| format!("broken: {p}"));
            out.push(Listed {
                id,
                files: Some(files),
                triggered: Some(meta.timestamp),
                duration_ms: meta.duration_ms,
                new_bytes: Some(new_bytes),
                status,
            });
        }
        Ok(out)
    }
}

/// The jobs with checkpoints at `location`, by name: the location itself if it is one job's
/// directory (it has `shared/`), else every job directly under it. For an object store, `mirror`
/// holds the (small) local copies that reading needs.
pub fn jobs_at(location: &Location, mirror: &Path) -> Result<Vec<(String, CheckpointStorage)>> {
    let mut out = Vec::new();
    match location {
        Location::Local(dir) => {
            let mut dirs = Vec::new();
            if dir.join("shared").is_dir() {
                dirs.push(dir.clone());
            } else {
                for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
                    let p = e?.path();
                    if p.join("shared").is_dir() {
                        dirs.push(p);
                    }
                }
            }
            for d in dirs {
                let name = d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let parent = d.parent().context("job directory without parent")?;
                out.push((name.clone(), CheckpointStorage::new(parent, &name)?));
            }
        }
        Location::S3 { bucket, prefix } => {
            let remote = Remote::s3(bucket, prefix)?;
            let at = |parent: &str, job: &str| -> Result<(String, CheckpointStorage)> {
                let parent = Location::S3 { bucket: bucket.clone(), prefix: parent.to_string() };
                Ok((job.to_string(), CheckpointStorage::open(&parent, job, &mirror.join(job))?))
            };
            if remote.list_dirs("")?.iter().any(|d| d == "shared") {
                let (parent, job) = prefix.rsplit_once('/').unwrap_or(("", prefix.as_str()));
                out.push(at(parent, job)?);
            } else {
                for job in remote.list_dirs("")? {
                    if remote.child(&job).list_dirs("")?.iter().any(|d| d == "shared") {
                        out.push(at(prefix, &job)?);
                    }
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The directory of a snapshot on this machine: a local path as it is; a savepoint on an object
/// store downloaded into `scratch` (its `_metadata` last, so a partial download is never taken
/// for a savepoint). Loading the result verifies every file.
pub fn local_snapshot(location: &Location, scratch: &Path) -> Result<PathBuf> {
    let (bucket, prefix) = match location {
        Location::Local(p) => return Ok(p.clone()),
        Location::S3 { bucket, prefix } => (bucket, prefix),
    };
    let remote = Remote::s3(bucket, prefix)?;
    let bytes =
        remote.get(METADATA_FILE)?.with_context(|| format!("{location} has no {METADATA_FILE}: not a savepoint"))?;
    let text = String::from_utf8(bytes).with_context(|| format!("{location}/{METADATA_FILE} is not text"))?;
    let meta = parse_metadata(&text, &format!("{location}/{METADATA_FILE}"))?;
    if meta.kind != SnapshotKind::Savepoint {
        bail!("{location} is a checkpoint: restore checkpoints on object storage with --checkpoint-dir and --restore latest");
    }
    if scratch.exists() {
        std::fs::remove_dir_all(scratch).with_context(|| format!("clearing {}", scratch.display()))?;
    }
    remote.download(meta.files().map(|f| (f.path.clone(), scratch.join(&f.path), f.size, f.xxh3.clone())).collect())?;
    std::fs::create_dir_all(scratch)?;
    write_atomic(&scratch.join(METADATA_FILE), text.as_bytes())?;
    Ok(scratch.to_path_buf())
}

/// Puts a subtask's keyed files under their original names into `dest`, ready to open.
pub fn materialize(snapshot: &LoadedSnapshot, sub: &SubtaskSnapshot, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest)?;
    for f in &sub.keyed_files {
        let stored =
            Path::new(&f.path).file_name().and_then(|n| n.to_str()).ok_or_else(|| anyhow!("bad path {}", f.path))?;
        link_or_copy(&snapshot.base.join(&f.path), &dest.join(original_file_name(stored)))?;
    }
    Ok(())
}
