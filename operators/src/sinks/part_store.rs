//! Where a file sink's part files go, and how a part file becomes visible exactly once.
//!
//! * **A local directory.** A part file is written under a hidden in-progress name
//!   (`.part-<subtask>-<seq>.<ext>.inprogress`), closed and fsynced at the barrier, and renamed to
//!   `part-<subtask>-<checkpoint>.<ext>` when its checkpoint completes.
//! * **An object store** (`s3://bucket/prefix`). There is no rename, so a part file is one
//!   multipart upload on its final key, named when it starts (before its checkpoint id is known):
//!   `part-<subtask>-<base>-<seq>.<ext>`, where `base` is the last barrier the subtask passed
//!   before opening it. Parts go up as data arrives; the barrier uploads the rest; the upload is
//!   completed when the checkpoint completes. Its id is recorded at `_uploads/<key>` when it
//!   starts, so a restore can abort uploads no checkpoint knows.
//!
//! Either way a restore commits what its checkpoint holds and removes what was written after it:
//! in-progress files and uploads of the subtasks it inherits, and files committed by a newer
//! checkpoint that was skipped (their records are replayed).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use weir_checkpoint::remote::Remote;
use weir_checkpoint::upload::{upload_record, PartUpload, Uploaded, UPLOAD_RECORDS};
use weir_checkpoint::Location;

use super::two_phase::Transaction;

/// A closed part file waiting for its checkpoint to complete: one transaction.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingFile {
    checkpoint: u64,
    /// The in-progress name (local directories; empty on object stores).
    hidden: String,
    /// The name once committed, relative to the output location.
    visible: String,
    /// The multipart upload to complete (object stores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upload: Option<Uploaded>,
}

impl PendingFile {
    /// How the inspection tools show it.
    pub(crate) fn describe(&self) -> crate::describe::PendingPart {
        crate::describe::PendingPart { checkpoint: self.checkpoint, file: self.visible.clone() }
    }
}

impl Transaction for PendingFile {
    fn checkpoint(&self) -> u64 {
        self.checkpoint
    }
}

/// A part file being written.
pub(crate) enum PartFile {
    Local(File),
    Upload(Box<PartUpload>),
}

impl Write for PartFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            PartFile::Local(f) => f.write(buf),
            PartFile::Upload(u) => u.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            PartFile::Local(f) => f.flush(),
            PartFile::Upload(u) => u.flush(),
        }
    }
}

/// The output location of one sink subtask.
pub(crate) enum PartStore {
    Local(PathBuf),
    Object(Remote),
}

/// Names and places of one subtask's part files.
pub(crate) struct PartName<'a> {
    pub(crate) subtask: usize,
    /// The bucket subdirectory (`year=2026/month=01`), empty for none.
    pub(crate) bucket: &'a str,
    pub(crate) ext: &'static str,
}

impl PartName<'_> {
    fn in_bucket(&self, name: String) -> String {
        if self.bucket.is_empty() {
            name
        } else {
            format!("{}/{name}", self.bucket)
        }
    }
}

impl PartStore {
    pub(crate) fn open(location: &Location) -> Result<Self> {
        Ok(match location {
            Location::Local(dir) => PartStore::Local(dir.clone()),
            Location::S3 { bucket, prefix } => PartStore::Object(Remote::s3(bucket, prefix)?),
        })
    }

    /// `rel` as a path or URL, for messages.
    pub(crate) fn show(&self, rel: &str) -> String {
        match self {
            PartStore::Local(dir) => dir.join(rel).display().to_string(),
            PartStore::Object(remote) => format!("{}/{rel}", remote.url()),
        }
    }

    /// Creates the output directory (object stores need none).
    pub(crate) fn prepare(&self) -> Result<()> {
        match self {
            PartStore::Local(dir) => {
                std::fs::create_dir_all(dir).with_context(|| format!("creating output directory {}", dir.display()))
            }
            PartStore::Object(_) => Ok(()),
        }
    }

    /// Without checkpoints: the subtask's one file of a bucket, visible as written (local) or
    /// when finished (object stores).
    pub(crate) fn create_plain(&self, n: &PartName) -> Result<(PartFile, String)> {
        let rel = n.in_bucket(format!("part-{:05}.{}", n.subtask, n.ext));
        let file = match self {
            PartStore::Local(dir) => PartFile::Local(create_file(&dir.join(&rel))?),
            PartStore::Object(remote) => PartFile::Upload(Box::new(remote.start_upload(&rel, None)?)),
        };
        Ok((file, rel))
    }

    /// With checkpoints: a new part file of a bucket that no reader sees until committed. `base`
    /// is the last barrier the subtask passed, `seq` a number the subtask never used before.
    pub(crate) fn create_staged(&self, n: &PartName, base: u64, seq: u64) -> Result<(PartFile, String)> {
        Ok(match self {
            PartStore::Local(dir) => {
                let rel = n.in_bucket(format!(".part-{}-{seq}.{}.inprogress", n.subtask, n.ext));
                (PartFile::Local(create_file(&dir.join(&rel))?), rel)
            }
            PartStore::Object(remote) => {
                let rel = n.in_bucket(format!("part-{:05}-{base:06}-{seq}.{}", n.subtask, n.ext));
                let upload = remote.start_upload(&rel, Some(&upload_record(&rel)))?;
                (PartFile::Upload(Box::new(upload)), rel)
            }
        })
    }

    /// Finishes a file of [`PartStore::create_plain`]: it is visible and durable.
    pub(crate) fn publish(&self, file: PartFile, rel: &str) -> Result<()> {
        match (self, file) {
            (_, PartFile::Local(f)) => f.sync_all().with_context(|| format!("syncing {}", self.show(rel))),
            (PartStore::Object(remote), PartFile::Upload(u)) => remote.complete_upload(rel, &u.finish()?),
            (PartStore::Local(_), PartFile::Upload(_)) => bail!("an upload in a local directory"),
        }
    }

    /// Barrier `checkpoint`: finishes a file of [`PartStore::create_staged`] as a transaction of
    /// that checkpoint. A local file is closed but not yet durable: it joins `unsynced`, which
    /// the checkpoint fsyncs off the task thread ([`sync_files`]); an upload has every part
    /// uploaded.
    pub(crate) fn stage(
        &self,
        file: PartFile,
        rel: String,
        n: &PartName,
        checkpoint: u64,
        unsynced: &mut Vec<(File, String)>,
    ) -> Result<PendingFile> {
        Ok(match file {
            PartFile::Local(f) => {
                unsynced.push((f, self.show(&rel)));
                let visible = n.in_bucket(format!("part-{:05}-{checkpoint:06}.{}", n.subtask, n.ext));
                PendingFile { checkpoint, hidden: rel, visible, upload: None }
            }
            PartFile::Upload(u) => {
                PendingFile { checkpoint, hidden: String::new(), visible: rel, upload: Some(u.finish()?) }
            }
        })
    }

    /// Makes a pending file visible; idempotent, so restores may repeat it.
    pub(crate) fn commit(&self, p: &PendingFile) -> Result<()> {
        match (self, &p.upload) {
            (PartStore::Object(remote), Some(up)) => remote.complete_upload(&p.visible, up),
            (PartStore::Local(dir), None) => {
                let hidden = dir.join(&p.hidden);
                let visible = dir.join(&p.visible);
                if hidden.exists() {
                    std::fs::rename(&hidden, &visible).with_context(|| format!("committing {}", visible.display()))?;
                } else if !visible.exists() {
                    bail!(
                        "the output of checkpoint {} is lost: neither {} nor {} exists",
                        p.checkpoint,
                        hidden.display(),
                        visible.display()
                    );
                }
                Ok(())
            }
            _ => bail!("{} was staged on another kind of store than the sink writes to", p.visible),
        }
    }

    /// After commits: makes local renames durable, drops the upload records of completed uploads.
    pub(crate) fn after_commit(&self, committed: &[PendingFile]) -> Result<()> {
        match self {
            PartStore::Local(dir) => sync_dirs_of(dir, committed.iter().map(|p| p.visible.as_str())),
            PartStore::Object(remote) => remote.delete(committed.iter().map(|p| upload_record(&p.visible)).collect()),
        }
    }

    /// On restore, after the inherited pending files are committed: removes what the old
    /// subtasks `handled` wrote after checkpoint `restored` (see the module comment).
    pub(crate) fn remove_strays(
        &self,
        handled: &[usize],
        ext: &str,
        restored: u64,
        committed: &[PendingFile],
    ) -> Result<()> {
        match self {
            PartStore::Local(dir) => {
                let removed = remove_local_strays(dir, handled, ext, restored)?;
                sync_dir(dir)?;
                sync_dirs_of(
                    dir,
                    committed.iter().map(|p| p.visible.as_str()).chain(removed.iter().map(String::as_str)),
                )
            }
            PartStore::Object(remote) => remove_object_strays(remote, handled, ext, restored, committed),
        }
    }
}

/// The subtask and base of an object-store part name `part-<subtask>-<base>-<seq>.<ext>`.
fn object_part(name: &str, ext: &str) -> Option<(usize, u64)> {
    let stem = name.strip_prefix("part-")?.strip_suffix(ext)?.strip_suffix('.')?;
    let mut fields = stem.splitn(3, '-');
    let subtask = fields.next()?.parse().ok()?;
    let base = fields.next()?.parse().ok()?;
    fields.next()?.parse::<u64>().ok()?;
    Some((subtask, base))
}

fn file_name(rel: &str) -> &str {
    rel.rsplit('/').next().unwrap_or(rel)
}

fn remove_object_strays(
    remote: &Remote,
    handled: &[usize],
    ext: &str,
    restored: u64,
    committed: &[PendingFile],
) -> Result<()> {
    let keep: Vec<&str> = committed.iter().filter_map(|p| p.upload.as_ref()).map(|u| u.upload_id.as_str()).collect();
    let mut stray = Vec::new();
    for (key, _) in remote.list("")? {
        if let Some(target) = key.strip_prefix(UPLOAD_RECORDS).and_then(|k| k.strip_prefix('/')) {
            // An upload of a handled subtask: aborted unless just committed; its record goes.
            if object_part(file_name(target), ext).is_some_and(|(s, _)| handled.contains(&s)) {
                remote.abort_recorded(&key, &keep)?;
            }
        } else if object_part(file_name(&key), ext).is_some_and(|(s, base)| handled.contains(&s) && base >= restored) {
            // Opened after the restored barrier, so committed by a newer (skipped) checkpoint.
            stray.push(key);
        }
    }
    if !stray.is_empty() {
        tracing::info!(files = stray.len(), "removing output committed after the restored checkpoint");
    }
    remote.delete(stray)
}

fn create_file(path: &Path) -> Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    File::create(path).with_context(|| format!("creating {}", path.display()))
}

/// Fsyncs closed part files (named for messages): the asynchronous part of a local file sink's
/// checkpoint.
pub(crate) fn sync_files(files: Vec<(File, String)>) -> Result<()> {
    for (f, name) in files {
        f.sync_all().with_context(|| format!("syncing {name}"))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Fsyncs the directories holding `files` (relative to `dir`), so renames survive a crash.
fn sync_dirs_of<'a>(dir: &Path, files: impl Iterator<Item = &'a str>) -> Result<()> {
    let mut dirs: Vec<PathBuf> = files.filter_map(|f| dir.join(f).parent().map(Path::to_path_buf)).collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        sync_dir(&d)?;
    }
    Ok(())
}

/// Paths of all files under `dir`, relative to it.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for e in std::fs::read_dir(dir.join(&rel)).with_context(|| format!("listing {}", dir.join(&rel).display()))? {
            let e = e?;
            let path = rel.join(e.file_name());
            if e.file_type()?.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    Ok(out)
}

/// Removes the in-progress files of the subtasks `handled` and their files committed by
/// checkpoints newer than `restored`. Returns the removed paths.
fn remove_local_strays(dir: &Path, handled: &[usize], ext: &str, restored: u64) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for rel in files_under(dir)? {
        let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
        let stray = handled.iter().any(|s| {
            let in_progress = name.starts_with(&format!(".part-{s}-")) && name.ends_with(&format!(".{ext}.inprogress"));
            let newer = name
                .strip_prefix(&format!("part-{s:05}-"))
                .and_then(|rest| rest.strip_suffix(&format!(".{ext}")))
                .and_then(|id| id.parse::<u64>().ok())
                .is_some_and(|id| id > restored);
            in_progress || newer
        });
        if stray {
            std::fs::remove_file(dir.join(&rel))?;
            removed.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::object_part;

    /// A restore deletes an object-store part file only if its name parses as one of the sink's
    /// own, of a subtask it inherits, opened after the restored barrier.
    #[test]
    fn object_part_names_parse_only_for_the_sinks_own_files() {
        assert_eq!(object_part("part-00001-000012-3.parquet", "parquet"), Some((1, 12)));
        assert_eq!(object_part("part-00001-000012-3.csv", "parquet"), None, "another format's file");
        assert_eq!(object_part("part-00001-000012.parquet", "parquet"), None, "a local-style name");
        assert_eq!(object_part("part-00001.parquet", "parquet"), None, "a file written without checkpoints");
        assert_eq!(object_part("notes-00001-000012-3.parquet", "parquet"), None);
    }
}
