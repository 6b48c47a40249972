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

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use weir_state::snapshot::original_file_name;

use crate::metadata::{
    checksum_file, load, read_metadata, write_metadata, CheckpointMetadata, FileRef, LoadedSnapshot, SnapshotKind,
    SubtaskSnapshot, METADATA_FILE,
};

/// Hard-links `src` to `dst`, or copies it where links are impossible (another file system).
pub fn link_or_copy(src: &Path, dst: &Path) -> Result<()> {
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst).with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    }
    Ok(())
}

fn file_ref(base: &Path, path: &Path) -> Result<FileRef> {
    let (size, xxh3) = checksum_file(path)?;
    let rel = path.strip_prefix(base).with_context(|| format!("{} is outside {}", path.display(), base.display()))?;
    Ok(FileRef { path: rel.to_string_lossy().into_owned(), size, xxh3 })
}

/// The checkpoints of one job.
#[derive(Clone, Debug)]
pub struct CheckpointStorage {
    base: PathBuf,
}

impl CheckpointStorage {
    /// The storage of `job` under `checkpoint_dir` (created if missing).
    pub fn new(checkpoint_dir: &Path, job: &str) -> Result<Self> {
        let base = checkpoint_dir.join(job);
        std::fs::create_dir_all(base.join("shared")).with_context(|| format!("creating {}", base.display()))?;
        Ok(CheckpointStorage { base })
    }

    /// `<checkpoint-dir>/<job>`.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The directory of checkpoint `id`.
    pub fn chk_dir(&self, id: u64) -> PathBuf {
        self.base.join(format!("chk-{id}"))
    }

    /// Records on disk that checkpoint `id` was started, before its barriers flow: ids are never
    /// reused after a crash, so what sinks did under an id (a transaction, a file) is never
    /// confused with a later checkpoint's.
    pub fn reserve(&self, id: u64) -> Result<()> {
        let dir = self.chk_dir(id);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::File::open(&self.base)?.sync_all()?;
        Ok(())
    }

    /// Every `chk-<n>` directory, complete or not, by increasing id.
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>> {
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
        for (id, dir) in self.list()?.into_iter().rev() {
            if !dir.join(METADATA_FILE).exists() {
                continue;
            }
            match load(&dir) {
                Ok(s) => return Ok(Some(s)),
                Err(e) => tracing::warn!(checkpoint = id, error = format!("{e:#}"), "skipping a broken checkpoint"),
            }
        }
        Ok(None)
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
                    let f = file_ref(&self.base, &dst)?;
                    known.insert(name, f.clone());
                    files.push(f);
                } else {
                    let dst = private.join(&name);
                    std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
                    files.push(file_ref(&self.base, &dst)?);
                }
            }
        }
        let state = match operator_state {
            Some(bytes) => {
                let path = private.join("operator_state.json");
                std::fs::write(&path, bytes)?;
                Some(file_ref(&self.base, &path)?)
            }
            None => None,
        };
        Ok((files, state))
    }

    /// Completes checkpoint `meta.checkpoint_id` by writing its metadata.
    pub fn complete(&self, meta: &CheckpointMetadata) -> Result<()> {
        let dir = self.chk_dir(meta.checkpoint_id);
        std::fs::create_dir_all(&dir)?;
        write_metadata(&dir, meta)
    }

    /// Keeps the newest `retain` complete checkpoints, deletes older and abandoned ones, and
    /// deletes every shared file no kept checkpoint references.
    pub fn retain(&self, retain: usize) -> Result<()> {
        let all = self.list()?;
        let complete: Vec<u64> =
            all.iter().filter(|(_, d)| d.join(METADATA_FILE).exists()).map(|(id, _)| *id).collect();
        let keep: HashSet<u64> = complete.iter().rev().take(retain.max(1)).copied().collect();
        let newest = complete.last().copied().unwrap_or(0);
        let mut referenced = HashSet::new();
        for (id, dir) in &all {
            if keep.contains(id) {
                if let Ok(meta) = read_metadata(dir) {
                    referenced.extend(meta.files().map(|f| f.path.clone()));
                }
            } else if *id < newest || dir.join(METADATA_FILE).exists() {
                // Older than the newest complete one (or complete but not kept): never needed again.
                std::fs::remove_dir_all(dir).with_context(|| format!("deleting {}", dir.display()))?;
            }
        }
        for e in std::fs::read_dir(self.base.join("shared"))? {
            let e = e?;
            let rel = format!("shared/{}", e.file_name().to_string_lossy());
            if !referenced.contains(&rel) {
                std::fs::remove_file(e.path())?;
            }
        }
        Ok(())
    }

    /// Copies checkpoint `snapshot` into a self-contained savepoint directory under `root`.
    pub fn write_savepoint(&self, snapshot: &CheckpointMetadata, root: &Path) -> Result<PathBuf> {
        let dir = root.join(format!("savepoint-{}-{}", snapshot.job, snapshot.checkpoint_id));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let mut meta = snapshot.clone();
        meta.kind = SnapshotKind::Savepoint;
        for op in &mut meta.operators {
            for st in &mut op.subtasks {
                let sub = format!("{}-{}", op.uid, st.subtask);
                std::fs::create_dir_all(dir.join(&sub))?;
                for f in st.keyed_files.iter_mut().chain(st.operator_state.iter_mut()) {
                    let name =
                        Path::new(&f.path).file_name().context("file without name")?.to_string_lossy().into_owned();
                    let rel = format!("{sub}/{name}");
                    std::fs::copy(self.base.join(&f.path), dir.join(&rel))?;
                    f.path = rel;
                }
            }
        }
        write_metadata(&dir, &meta)?;
        Ok(dir)
    }
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
