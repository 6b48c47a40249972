//! Finding the snapshot a tool is pointed at: a savepoint, one `chk-N`, or a job's checkpoint
//! directory (its newest complete checkpoint), on local disk or an object store, with a one-line
//! refusal for anything else.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::location::Location;
use crate::metadata::{load, LoadedSnapshot, METADATA_FILE};
use crate::storage::{jobs_at, local_snapshot, CheckpointStorage};

/// `chk-N` → `N`.
fn checkpoint_id(name: &str) -> Option<u64> {
    name.strip_prefix("chk-")?.parse().ok()
}

/// The snapshot `location` names: a savepoint or `chk-N` directory, or the newest complete
/// checkpoint of the one job whose checkpoint directory it is (`<checkpoint-dir>/<job>`, or a
/// `--checkpoint-dir` holding one job). Object-store files are downloaded into `scratch`.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let err = weir_checkpoint::open::snapshot_at(&weir_checkpoint::Location::Local(dir.path().into()), dir.path())
///     .unwrap_err();
/// assert!(format!("{err:#}").contains("is not a savepoint or checkpoint"));
/// ```
pub fn snapshot_at(location: &Location, scratch: &Path) -> Result<LoadedSnapshot> {
    match location {
        Location::Local(path) => {
            if !path.exists() {
                bail!("{} does not exist", path.display());
            }
            if path.join(METADATA_FILE).is_file() {
                return load(path).with_context(|| format!("{} is not a usable snapshot", path.display()));
            }
            let mut jobs = if path.is_dir() { jobs_at(location, scratch)? } else { Vec::new() };
            match jobs.len() {
                0 => bail!(
                    "{} is not a savepoint or checkpoint: it has no {METADATA_FILE}, nor checkpoints of a job",
                    path.display()
                ),
                1 => latest(jobs.remove(0).1, location),
                _ => several(location, jobs),
            }
        }
        Location::S3 { bucket, prefix } => {
            let (parent, last) = prefix.rsplit_once('/').unwrap_or(("", prefix));
            if let Some(id) = checkpoint_id(last) {
                // One checkpoint: its files are referenced from the job's directory above it.
                let (root, job) = parent.rsplit_once('/').unwrap_or(("", parent));
                let root = Location::S3 { bucket: bucket.clone(), prefix: root.to_string() };
                return CheckpointStorage::open(&root, job, scratch)?.checkpoint(id);
            }
            let mut jobs = jobs_at(location, scratch)?;
            match jobs.len() {
                0 => load(&local_snapshot(location, scratch)?),
                1 => latest(jobs.remove(0).1, location),
                _ => several(location, jobs),
            }
        }
    }
}

fn latest(storage: CheckpointStorage, location: &Location) -> Result<LoadedSnapshot> {
    storage.latest_valid()?.with_context(|| format!("no complete checkpoint under {location}"))
}

fn several(location: &Location, jobs: Vec<(String, CheckpointStorage)>) -> Result<LoadedSnapshot> {
    let names: Vec<String> = jobs.into_iter().map(|(name, _)| name).collect();
    bail!("{location} holds the checkpoints of several jobs ({}): name one", names.join(", "))
}
