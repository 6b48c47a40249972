//! Stamps: the files of a checkpoint this machine checksummed when it stored them, so that
//! verifying the checkpoint later (at every restore) does not read them again.
//!
//! Verifying a checkpoint compares every file's xxh3 with its metadata, which reads all of its
//! state: a GiB at every restart for a GiB of state, seconds from a cold disk. So when a subtask's
//! files are stored, the stamp of each — size, modification time and inode — goes into
//! `chk-<n>/<uid>-<subtask>/_stamps` beside them, with the checksum computed for that content.
//! A later verification takes a file whose stamp is unchanged as checked: a write to it changes
//! its modification time, a replaced file has another inode, a truncated one another size. Hard
//! links (the restored RocksDB directory links the checkpoint's files) change none of the three.
//!
//! The stamps are not part of the snapshot: `_metadata` does not list them, savepoints and copies
//! do not carry them (a copy has other inodes, so its files are read), and a stamps file that
//! cannot be read or parsed only means that every file is read. What is given up is the check of
//! a file whose bytes changed without a write (the disk flipping a bit): RocksDB's block
//! checksums catch that when the block is read.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::metadata::{CheckpointMetadata, FileRef, SnapshotKind};

/// Name of the stamps file in a subtask's directory of a checkpoint.
pub(crate) const STAMPS_FILE: &str = "_stamps";

/// What identifies a file's content on this machine without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stamp {
    pub(crate) size: u64,
    mtime_ns: i128,
    ino: u64,
}

#[cfg(unix)]
pub(crate) fn stamp_of(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        size: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ino: m.ino(),
    })
}

#[cfg(not(unix))]
pub(crate) fn stamp_of(_path: &Path) -> Option<Stamp> {
    // Without inode numbers a stamp proves too little: every file is read.
    None
}

/// One line of a stamps file: a file's path (relative to the checkpoint base), its checksum and
/// its stamp when that checksum was computed.
#[derive(Debug, Serialize, Deserialize)]
struct Stamped {
    path: String,
    xxh3: String,
    stamp: Stamp,
}

/// Records the stamps of `files` (paths relative to `base`, just checksummed) in `dir`.
/// Best effort: without stamps a verification reads the files, so a failure is only logged.
pub(crate) fn record(dir: &Path, base: &Path, files: &[&FileRef]) {
    let stamped: Vec<Stamped> = files
        .iter()
        .filter_map(|f| {
            let stamp = stamp_of(&base.join(&f.path)).filter(|s| s.size == f.size)?;
            Some(Stamped { path: f.path.clone(), xxh3: f.xxh3.clone(), stamp })
        })
        .collect();
    write(dir, stamped);
}

/// The stamps a storing process took right after it checksummed each file, by path. A subtask's
/// stamps file lists the shared files of earlier checkpoints too, and a stamp taken then could
/// vouch for bytes written after the checksum; so only these are recorded.
#[derive(Clone, Debug, Default)]
pub(crate) struct Taken(Arc<Mutex<HashMap<String, Stamp>>>);

impl Taken {
    /// Stamps `f` (relative to `base`), whose checksum was just computed.
    pub(crate) fn take(&self, base: &Path, f: &FileRef) {
        if let (Some(stamp), Ok(mut taken)) =
            (stamp_of(&base.join(&f.path)).filter(|s| s.size == f.size), self.0.lock())
        {
            taken.insert(f.path.clone(), stamp);
        }
    }

    /// Records in `dir` the stamps taken of `files` (the others will be read to verify them),
    /// then forgets those of files outside `shared/`, which no later checkpoint references.
    pub(crate) fn record(&self, dir: &Path, files: &[&FileRef]) {
        let Ok(mut taken) = self.0.lock() else { return };
        let stamped = files
            .iter()
            .filter_map(|f| Some(Stamped { path: f.path.clone(), xxh3: f.xxh3.clone(), stamp: *taken.get(&f.path)? }))
            .collect();
        taken.retain(|path, _| path.starts_with("shared/"));
        drop(taken);
        write(dir, stamped);
    }

    /// Keeps the stamps of the shared files among `verified` (path → the stamp that vouches for
    /// its checksum): a restore verified them, and later checkpoints of this run reuse them.
    pub(crate) fn adopt(&self, verified: HashMap<String, Stamp>) {
        if let Ok(mut taken) = self.0.lock() {
            taken.extend(verified.into_iter().filter(|(path, _)| path.starts_with("shared/")));
        }
    }

    /// Forgets the stamps of shared files `keep` does not want (deleted by retention).
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) {
        if let Ok(mut taken) = self.0.lock() {
            taken.retain(|path, _| keep(path));
        }
    }
}

fn write(dir: &Path, stamped: Vec<Stamped>) {
    if stamped.is_empty() {
        return;
    }
    let written = serde_json::to_vec(&stamped)
        .map_err(anyhow::Error::from)
        .and_then(|bytes| std::fs::write(dir.join(STAMPS_FILE), bytes).map_err(anyhow::Error::from));
    if let Err(e) = written {
        tracing::debug!(dir = %dir.display(), error = %e, "could not record stamps; the files will be read to verify them");
    }
}

/// The directory of subtask `subtask` of operator `uid` in checkpoint `id`, where its stamps go.
fn subtask_dir(base: &Path, id: u64, uid: &str, subtask: usize) -> std::path::PathBuf {
    base.join(format!("chk-{id}")).join(format!("{uid}-{subtask}"))
}

/// Records the stamps of every file of checkpoint `meta`, all of which the caller just checked.
pub(crate) fn record_checkpoint(meta: &CheckpointMetadata, base: &Path) {
    for op in &meta.operators {
        for st in &op.subtasks {
            let dir = subtask_dir(base, meta.checkpoint_id, &op.uid, st.subtask);
            if std::fs::create_dir_all(&dir).is_ok() {
                record(&dir, base, &st.keyed_files.iter().chain(st.operator_state.iter()).collect::<Vec<_>>());
            }
        }
    }
}

/// The files of checkpoint `meta` (paths relative to `base`) whose recorded stamp and checksum
/// still match, with that stamp: verified without reading them. Empty for savepoints.
pub(crate) fn unchanged(meta: &CheckpointMetadata, base: &Path) -> HashMap<String, Stamp> {
    let mut out = HashMap::new();
    if meta.kind != SnapshotKind::Checkpoint {
        return out;
    }
    for op in &meta.operators {
        for st in &op.subtasks {
            let dir = subtask_dir(base, meta.checkpoint_id, &op.uid, st.subtask);
            let Ok(bytes) = std::fs::read(dir.join(STAMPS_FILE)) else { continue };
            let Ok(stamped) = serde_json::from_slice::<Vec<Stamped>>(&bytes) else { continue };
            let stamped: HashMap<&str, &Stamped> = stamped.iter().map(|s| (s.path.as_str(), s)).collect();
            for f in st.keyed_files.iter().chain(st.operator_state.iter()) {
                let Some(s) = stamped.get(f.path.as_str()) else { continue };
                if s.xxh3 == f.xxh3 && s.stamp.size == f.size && stamp_of(&base.join(&f.path)) == Some(s.stamp) {
                    out.insert(f.path.clone(), s.stamp);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{checksum_file, verify_reading, OperatorSnapshot, SubtaskSnapshot};

    fn file_ref(base: &Path, rel: &str, bytes: &[u8]) -> FileRef {
        let path = base.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        let (size, xxh3) = checksum_file(&path).unwrap();
        FileRef { path: rel.into(), size, xxh3 }
    }

    /// Checkpoint 1 of a job with one keyed subtask: a shared SST file and a private one, stored
    /// (and stamped) as the storage stores them.
    fn stored(base: &Path) -> CheckpointMetadata {
        let sst = file_ref(base, "shared/op-0-run-000009.sst", b"sorted strings");
        let manifest = file_ref(base, "chk-1/op-0/MANIFEST-000005", b"manifest");
        record(&base.join("chk-1/op-0"), base, &[&sst, &manifest]);
        CheckpointMetadata {
            job: "j".into(),
            checkpoint_id: 1,
            kind: SnapshotKind::Checkpoint,
            timestamp: 0,
            max_parallelism: 128,
            operators: vec![OperatorSnapshot {
                uid: "op".into(),
                name: "op".into(),
                parallelism: 1,
                keyed: true,
                subtasks: vec![SubtaskSnapshot {
                    subtask: 0,
                    key_groups: None,
                    keyed_files: vec![sst, manifest],
                    operator_state: None,
                    watermark: 0,
                }],
            }],
            duration_ms: None,
        }
    }

    #[test]
    fn stored_files_verify_without_being_read_until_one_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let meta = stored(base);
        assert_eq!(verify_reading(&meta, base).unwrap(), 0, "nothing read: every stamp matches");
        // A hard link (a restored RocksDB directory links the files) changes no stamp.
        std::fs::hard_link(base.join("shared/op-0-run-000009.sst"), base.join("linked.sst")).unwrap();
        std::fs::remove_file(base.join("linked.sst")).unwrap();
        assert_eq!(verify_reading(&meta, base).unwrap(), 0);

        // The same number of bytes written again, changed: its modification time moved on, so it
        // is read, and the corruption found.
        std::thread::sleep(std::time::Duration::from_millis(30));
        std::fs::write(base.join("shared/op-0-run-000009.sst"), b"sorted strinGs").unwrap();
        let err = verify_reading(&meta, base).unwrap_err().to_string();
        assert!(err.contains("corrupt") && err.contains("000009.sst"), "{err}");
        // Its right content back: read, and good.
        std::fs::write(base.join("shared/op-0-run-000009.sst"), b"sorted strings").unwrap();
        assert_eq!(verify_reading(&meta, base).unwrap(), 1);

        // Cut short: another size.
        std::fs::write(base.join("chk-1/op-0/MANIFEST-000005"), b"mani").unwrap();
        assert!(verify_reading(&meta, base).is_err());
    }

    #[test]
    fn a_stored_subtask_is_stamped_and_its_checkpoint_loads_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::CheckpointStorage::new(dir.path(), "job").unwrap();
        let db = tempfile::tempdir().unwrap();
        std::fs::write(db.path().join("000012.sst"), b"sst bytes".repeat(1000)).unwrap();
        std::fs::write(db.path().join("MANIFEST-000003"), b"manifest").unwrap();
        storage.reserve(4).unwrap();
        let mut known = HashMap::new();
        let (files, state) =
            storage.upload_subtask(4, "op", 0, "r1", Some(db.path()), Some(b"{}"), &mut known).unwrap();
        let meta = CheckpointMetadata {
            checkpoint_id: 4,
            operators: vec![OperatorSnapshot {
                subtasks: vec![SubtaskSnapshot { keyed_files: files, operator_state: state, ..stored_subtask() }],
                ..stored_operator()
            }],
            ..stored(tempfile::tempdir().unwrap().path())
        };
        storage.complete(&meta).unwrap();
        assert_eq!(meta.files().count(), 3);
        assert_eq!(verify_reading(&meta, storage.base()).unwrap(), 0, "every file stamped when stored");
        let loaded = storage.latest_valid().unwrap().expect("checkpoint 4");
        assert_eq!(loaded.meta.checkpoint_id, 4);

        // The shared file written between two checkpoints (same size): the next checkpoint reuses
        // it unread, and its stamps must not vouch for the new bytes.
        std::thread::sleep(std::time::Duration::from_millis(30));
        let shared = meta.files().find(|f| f.path.starts_with("shared/")).unwrap().path.clone();
        std::fs::write(dir.path().join("job").join(&shared), b"SST bytes".repeat(1000)).unwrap();
        storage.reserve(5).unwrap();
        let (files, state) = storage.upload_subtask(5, "op", 0, "r1", Some(db.path()), None, &mut known).unwrap();
        let next = CheckpointMetadata {
            checkpoint_id: 5,
            operators: vec![OperatorSnapshot {
                subtasks: vec![SubtaskSnapshot { keyed_files: files, operator_state: state, ..stored_subtask() }],
                ..stored_operator()
            }],
            ..meta.clone()
        };
        let err = verify_reading(&next, storage.base()).unwrap_err().to_string();
        assert!(err.contains("corrupt") && err.contains(&shared), "{err}");
    }

    #[test]
    fn a_restarted_run_stamps_the_shared_files_it_restored_when_it_reuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = tempfile::tempdir().unwrap();
        std::fs::write(db.path().join("000012.sst"), b"sst bytes".repeat(1000)).unwrap();
        std::fs::write(db.path().join("MANIFEST-000003"), b"manifest").unwrap();
        let checkpoint = |storage: &crate::CheckpointStorage, id, run, known: &mut HashMap<String, FileRef>| {
            storage.reserve(id).unwrap();
            let (files, state) = storage.upload_subtask(id, "op", 0, run, Some(db.path()), None, known).unwrap();
            let meta = CheckpointMetadata {
                checkpoint_id: id,
                operators: vec![OperatorSnapshot {
                    subtasks: vec![SubtaskSnapshot { keyed_files: files, operator_state: state, ..stored_subtask() }],
                    ..stored_operator()
                }],
                ..stored(tempfile::tempdir().unwrap().path())
            };
            storage.complete(&meta).unwrap();
            meta
        };
        let mut known = HashMap::new();
        checkpoint(&crate::CheckpointStorage::new(dir.path(), "job").unwrap(), 4, "r1", &mut known);

        // A new process restores checkpoint 4 (reading what its stamps do not cover), and its first
        // checkpoint reuses the shared SST file without checksumming it again.
        let restarted = crate::CheckpointStorage::new(dir.path(), "job").unwrap();
        let (restored, _) = restarted.restore_point().unwrap();
        assert_eq!(restored.unwrap().meta.checkpoint_id, 4);
        let next = checkpoint(&restarted, 5, "r2", &mut known);
        assert!(next.files().any(|f| f.path.starts_with("shared/") && f.path.contains("-r1-")), "reused");
        assert_eq!(verify_reading(&next, restarted.base()).unwrap(), 0, "the reused file is stamped too");
    }

    fn stored_operator() -> OperatorSnapshot {
        stored(tempfile::tempdir().unwrap().path()).operators.remove(0)
    }

    fn stored_subtask() -> SubtaskSnapshot {
        stored_operator().subtasks.remove(0)
    }

    #[test]
    fn copies_savepoints_and_unreadable_stamps_are_read_in_full() {
        let dir = tempfile::tempdir().unwrap();
        let meta = stored(dir.path());
        // A copy, stamps included: other inodes and times, so every file is read.
        let copy = tempfile::tempdir().unwrap();
        for rel in ["shared/op-0-run-000009.sst", "chk-1/op-0/MANIFEST-000005", "chk-1/op-0/_stamps"] {
            std::fs::create_dir_all(copy.path().join(rel).parent().unwrap()).unwrap();
            std::fs::copy(dir.path().join(rel), copy.path().join(rel)).unwrap();
        }
        assert_eq!(verify_reading(&meta, copy.path()).unwrap(), 2);
        let savepoint = CheckpointMetadata { kind: SnapshotKind::Savepoint, ..meta.clone() };
        assert_eq!(verify_reading(&savepoint, dir.path()).unwrap(), 2, "savepoints carry no stamps");
        std::fs::write(dir.path().join("chk-1/op-0/_stamps"), b"[{\"path\": tru").unwrap();
        assert_eq!(verify_reading(&meta, dir.path()).unwrap(), 2, "stamps that do not parse prove nothing");
        // Recorded again (as a restore from an object store does after checking every file).
        record_checkpoint(&meta, dir.path());
        assert_eq!(verify_reading(&meta, dir.path()).unwrap(), 0);
    }
}
