//! Restoring: which snapshot a run starts from, whether it fits the job, and how a subtask
//! rebuilds its keyed and operator state from it (also after a change of parallelism).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use weir_checkpoint::{materialize, Chain, CheckpointStorage, FileRef, LoadedSnapshot, Location, SnapshotKind};
use weir_state::snapshot::original_file_name;
use weir_state::{KeyGroupRange, KeyedStateBackend, StateMemory};

/// The snapshot a run starts from.
pub(crate) struct Restore {
    pub snapshot: LoadedSnapshot,
}

impl Restore {
    /// Operator states of every old subtask of `uid`, and the lowest of their watermarks.
    pub(crate) fn operator_states(&self, uid: &str) -> Result<Option<(Vec<Vec<u8>>, i64)>> {
        let Some(op) = self.snapshot.meta.operator(uid) else { return Ok(None) };
        let mut states = Vec::new();
        for sub in &op.subtasks {
            if let Some(f) = &sub.operator_state {
                states.push(std::fs::read(self.snapshot.base.join(&f.path))?);
            }
        }
        let wm = op.subtasks.iter().map(|s| s.watermark).min().unwrap_or(i64::MIN);
        Ok(Some((states, wm)))
    }

    /// Rebuilds the keyed state of one new subtask in `dir`: a direct copy when the key groups
    /// did not move, else the entries of its key groups from every old subtask that had some.
    pub(crate) fn restore_backend(
        &self,
        uid: &str,
        dir: &Path,
        range: KeyGroupRange,
        max_parallelism: usize,
        memory: &StateMemory,
    ) -> Result<Option<KeyedStateBackend>> {
        let Some(op) = self.snapshot.meta.operator(uid) else { return Ok(None) };
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        if let Some(sub) = op.subtasks.iter().find(|s| s.key_groups == Some(range) && !s.keyed_files.is_empty()) {
            materialize(&self.snapshot, sub, dir)?;
            return Ok(Some(KeyedStateBackend::open_with(dir, range, max_parallelism, memory)?));
        }
        let mut backend = KeyedStateBackend::open_with(dir, range, max_parallelism, memory)?;
        let scratch = dir.with_extension("import");
        for sub in &op.subtasks {
            let Some(old) = sub.key_groups else { continue };
            if sub.keyed_files.is_empty() || old.end < range.start || old.start > range.end {
                continue;
            }
            if scratch.exists() {
                std::fs::remove_dir_all(&scratch)?;
            }
            materialize(&self.snapshot, sub, &scratch)?;
            backend.import_key_groups(&[scratch.as_path()])?;
            std::fs::remove_dir_all(&scratch)?;
        }
        Ok(Some(backend))
    }

    /// SST files already in `storage` that a 1:1 restored subtask's database still has, so the
    /// next checkpoint need not store them again. `parallelism_of` gives each operator's
    /// parallelism in the new run.
    pub(crate) fn known_files(
        &self,
        storage: &CheckpointStorage,
        parallelism_of: impl Fn(&str) -> Option<usize>,
    ) -> HashMap<(String, usize), HashMap<String, FileRef>> {
        let mut out: HashMap<(String, usize), HashMap<String, FileRef>> = HashMap::new();
        if self.snapshot.meta.kind != SnapshotKind::Checkpoint || self.snapshot.base != storage.base() {
            return out;
        }
        for op in &self.snapshot.meta.operators {
            // Only at the same parallelism is new subtask i old subtask i with the same key
            // groups, its database a copy of the old one's files under the same names. After a
            // rescale each database is built anew by importing, and its `000010.sst` is another
            // file than the old subtask's `000010.sst`: reusing the stored one would make the
            // next checkpoint reference the wrong file.
            if parallelism_of(&op.uid) != Some(op.parallelism) {
                continue;
            }
            for sub in &op.subtasks {
                let files = out.entry((op.uid.clone(), sub.subtask)).or_default();
                for f in sub.keyed_files.iter().filter(|f| f.path.starts_with("shared/")) {
                    if let Some(name) = Path::new(&f.path).file_name().and_then(|n| n.to_str()) {
                        files.insert(original_file_name(name).to_string(), f.clone());
                    }
                }
            }
        }
        out
    }
}
/// Loads the snapshot `--restore` names: `none`, `latest`, a path, or the URL of a savepoint on
/// an object store (downloaded into `scratch` first); with it, the chain of checkpoints the
/// coordinator continues. `latest` continues the chain it restores; `none` and an explicit path
/// start a new one after every checkpoint id already used.
pub(crate) fn initial_restore(
    spec: &str,
    storage: Option<&CheckpointStorage>,
    scratch: &Path,
) -> Result<(Option<LoadedSnapshot>, Chain)> {
    let new_chain = || -> Result<Chain> { Ok(Chain::after(storage.map(|s| s.max_id()).transpose()?.unwrap_or(0))) };
    match spec {
        "none" => Ok((None, new_chain()?)),
        "latest" => match storage {
            Some(s) => s.restore_point(),
            None => Ok((None, Chain::default())),
        },
        path => {
            let location: Location = path.parse().with_context(|| format!("--restore {path}"))?;
            let dir =
                weir_checkpoint::local_snapshot(&location, scratch).with_context(|| format!("--restore {path}"))?;
            if !dir.exists() {
                bail!("--restore {path}: no such savepoint or checkpoint directory");
            }
            let snapshot = weir_checkpoint::load(&dir).with_context(|| format!("--restore {path}"))?;
            Ok((Some(snapshot), new_chain()?))
        }
    }
}

/// Refuses a snapshot that does not fit the job.
pub(crate) fn check_restore(
    snapshot: &LoadedSnapshot,
    uids: &[String],
    max_parallelism: usize,
    allow_non_restored: bool,
) -> Result<()> {
    if snapshot.meta.max_parallelism != max_parallelism {
        bail!(
            "the snapshot has max parallelism {} but the job has {max_parallelism}; key groups cannot be mapped (keep --max-parallelism fixed)",
            snapshot.meta.max_parallelism
        );
    }
    // Only operators that hold state matter; a stateless operator may come and go.
    let has_state = |o: &&weir_checkpoint::OperatorSnapshot| {
        o.subtasks.iter().any(|s| !s.keyed_files.is_empty() || s.operator_state.is_some())
    };
    let unknown: Vec<&str> = snapshot
        .meta
        .operators
        .iter()
        .filter(has_state)
        .map(|o| o.uid.as_str())
        .filter(|u| !uids.iter().any(|x| x == u))
        .collect();
    if !unknown.is_empty() && !allow_non_restored {
        bail!(
            "the snapshot has state for operators this job does not have (uids: {}); pass --allow-non-restored-state to drop it",
            unknown.join(", ")
        );
    }
    Ok(())
}

/// A shared, immutable restore source.
pub(crate) type SharedRestore = Option<Arc<Restore>>;

#[cfg(test)]
mod tests {
    use super::*;
    use weir_checkpoint::{CheckpointMetadata, OperatorSnapshot, SubtaskSnapshot};

    /// A checkpoint of operator `counts` at `parallelism`, each subtask with a stored
    /// `000010.sst` of its own.
    fn restore(storage: &CheckpointStorage, parallelism: usize) -> Restore {
        let subtasks = (0..parallelism)
            .map(|s| SubtaskSnapshot {
                subtask: s,
                key_groups: Some(KeyGroupRange::for_subtask(128, parallelism, s)),
                keyed_files: vec![FileRef {
                    path: format!("shared/counts-{s}-18f3a-000010.sst"),
                    size: 10,
                    xxh3: String::new(),
                }],
                operator_state: None,
                watermark: i64::MIN,
            })
            .collect();
        let meta = CheckpointMetadata {
            job: "job".into(),
            checkpoint_id: 7,
            kind: SnapshotKind::Checkpoint,
            timestamp: 0,
            max_parallelism: 128,
            operators: vec![OperatorSnapshot {
                uid: "counts".into(),
                name: "counts".into(),
                parallelism,
                keyed: true,
                subtasks,
            }],
            duration_ms: None,
        };
        let base = storage.base().to_path_buf();
        Restore { snapshot: LoadedSnapshot { meta, dir: base.join("chk-7"), base } }
    }

    #[test]
    fn stored_files_are_reused_only_by_subtasks_restored_one_to_one() {
        let dir = tempfile::tempdir().unwrap();
        let storage = CheckpointStorage::new(dir.path(), "job").unwrap();
        let r = restore(&storage, 2);
        // Same parallelism: subtask 1's database is old subtask 1's, file for file.
        let same = r.known_files(&storage, |_| Some(2));
        assert_eq!(same[&("counts".to_string(), 1)]["000010.sst"].path, "shared/counts-1-18f3a-000010.sst");
        // Rescaled: new subtask 1's 000010.sst, if it has one, is a file of its own.
        assert!(r.known_files(&storage, |_| Some(3)).is_empty());
        assert!(r.known_files(&storage, |_| Some(1)).is_empty());
        // An operator the new job does not have reuses nothing.
        assert!(r.known_files(&storage, |_| None).is_empty());
    }
}
