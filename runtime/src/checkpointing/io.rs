//! The checkpoint I/O thread: stores subtask snapshots and completes checkpoints in order, off
//! the task threads, so a slow store delays only checkpoints, never records.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use crossbeam_channel::{Receiver, Sender};
use weir_checkpoint::{Chain, CheckpointMetadata, CheckpointStorage, FileRef, Location, Stale, SubtaskSnapshot};
use weir_state::PendingCheckpoint;

use super::task::{LocalSnapshot, SnapshotTiming};

/// Work for the checkpoint I/O thread, done in order.
pub(crate) enum IoJob {
    Upload { id: u64, node: usize, uid: String, subtask: usize, snapshot: LocalSnapshot },
    Finalize { meta: CheckpointMetadata, savepoint_root: Option<Location>, retain: usize },
    Discard { snapshot: LocalSnapshot },
}

/// What the I/O thread reports.
pub(crate) enum IoDone {
    Uploaded {
        id: u64,
        node: usize,
        snapshot: SubtaskSnapshot,
        new_bytes: u64,
        timing: SnapshotTiming,
        async_ms: f64,
    },
    Finalized {
        id: u64,
        savepoint: Option<String>,
        bytes: u64,
    },
    Failed {
        id: u64,
        error: String,
    },
    /// A newer run of the job took over: this one must stop without committing (see
    /// [`weir_checkpoint::commit`]).
    Stale(Stale),
}

/// Finishes the asynchronous parts of a snapshot: the operator's (in the order it handed them
/// over; all run, the first error wins) and the local RocksDB checkpoint, if it has keyed state,
/// whose directory it returns.
fn finish_async(snapshot: &mut LocalSnapshot) -> Result<Option<PathBuf>> {
    let mut failed = None;
    for part in std::mem::take(&mut snapshot.async_parts) {
        if let Err(e) = part() {
            failed.get_or_insert(e);
        }
    }
    let db = snapshot.local_db.take().map(PendingCheckpoint::wait).transpose();
    match failed {
        Some(e) => {
            discard(db.ok().flatten().as_deref());
            Err(e)
        }
        None => db,
    }
}

fn discard(dir: Option<&Path>) {
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Stores snapshots and completes checkpoints; runs until `jobs` is closed.
pub(crate) fn io_thread(
    storage: CheckpointStorage,
    run: String,
    mut known: HashMap<(String, usize), HashMap<String, FileRef>>,
    mut chain: Chain,
    jobs: Receiver<IoJob>,
    done: Sender<IoDone>,
) {
    // Set when work a later checkpoint builds on failed; fails every later snapshot.
    let mut poisoned: Option<String> = None;
    for job in jobs {
        let report = match job {
            IoJob::Upload { id, node, uid, subtask, mut snapshot } => {
                let started = std::time::Instant::now();
                let timing = snapshot.timing;
                let files = known.entry((uid.clone(), subtask)).or_default();
                let before: u64 = files.values().map(|f| f.size).sum();
                let r = match &poisoned {
                    Some(why) => {
                        if let Ok(db) = finish_async(&mut snapshot) {
                            discard(db.as_deref());
                        }
                        Err(anyhow::anyhow!("{why}"))
                    }
                    None => finish_async(&mut snapshot).and_then(|db| {
                        let r = storage.upload_subtask(
                            id,
                            &uid,
                            subtask,
                            &run,
                            db.as_deref(),
                            snapshot.operator_state.as_deref(),
                            files,
                        );
                        discard(db.as_deref());
                        r
                    }),
                };
                let after: u64 = files.values().map(|f| f.size).sum();
                match r {
                    Ok((keyed_files, operator_state)) => IoDone::Uploaded {
                        id,
                        node,
                        timing,
                        async_ms: started.elapsed().as_secs_f64() * 1e3,
                        new_bytes: after.saturating_sub(before)
                            + operator_state.as_ref().map_or(0, |f| f.size)
                            + keyed_files
                                .iter()
                                .filter(|f| !f.path.starts_with("shared/"))
                                .map(|f| f.size)
                                .sum::<u64>(),
                        snapshot: SubtaskSnapshot {
                            subtask,
                            key_groups: snapshot.key_groups,
                            keyed_files,
                            operator_state,
                            watermark: snapshot.watermark,
                        },
                    },
                    Err(e) => {
                        IoDone::Failed { id, error: format!("storing the snapshot of {uid} subtask {subtask}: {e:#}") }
                    }
                }
            }
            IoJob::Finalize { meta, savepoint_root, retain } => {
                let id = meta.checkpoint_id;
                let bytes = meta.files().map(|f| f.size).sum();
                crate::fault::pause_point("before-checkpoint-commit", id);
                let r = (|| -> Result<Option<String>> {
                    storage.commit(&meta, &mut chain)?;
                    let sp = match savepoint_root {
                        Some(root) => Some(storage.write_savepoint(&meta, &root)?),
                        None => None,
                    };
                    // The checkpoint is committed: a failed cleanup must not fail it (a stop-with-
                    // savepoint would take a second savepoint); the next checkpoint retries it.
                    if let Err(e) = storage.retain(retain) {
                        tracing::warn!(
                            checkpoint = id,
                            error = format!("{e:#}"),
                            "retention failed; retried after the next checkpoint"
                        );
                    }
                    Ok(sp)
                })();
                match r {
                    Ok(savepoint) => IoDone::Finalized { id, savepoint, bytes },
                    Err(e) => match e.downcast::<Stale>() {
                        Ok(stale) => {
                            tracing::error!(checkpoint = id, "{stale}");
                            IoDone::Stale(stale)
                        }
                        Err(e) => IoDone::Failed { id, error: format!("completing checkpoint {id}: {e:#}") },
                    },
                }
            }
            IoJob::Discard { mut snapshot } => {
                match finish_async(&mut snapshot) {
                    Ok(db) => discard(db.as_deref()),
                    // Later checkpoints would commit what this part was to make durable (a sink's
                    // pending files stay pending): none of this attempt may complete, so the job
                    // fails over to the last complete checkpoint, which does not include them.
                    Err(e) => {
                        let why = format!("an abandoned checkpoint's asynchronous part failed: {e:#}");
                        tracing::error!(error = why, "no later checkpoint of this run can complete");
                        poisoned = Some(why);
                    }
                }
                continue;
            }
        };
        if done.send(report).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(part: impl FnOnce() -> Result<()> + Send + 'static) -> LocalSnapshot {
        let now = std::time::Instant::now();
        LocalSnapshot {
            local_db: None,
            async_parts: vec![Box::new(part)],
            operator_state: Some(b"{}".to_vec()),
            watermark: 0,
            key_groups: None,
            timing: SnapshotTiming { alignment_ms: 0.0, sync_ms: 0.0, acked_at: now },
        }
    }

    fn upload(id: u64, part: impl FnOnce() -> Result<()> + Send + 'static) -> IoJob {
        IoJob::Upload { id, node: 0, uid: "op".into(), subtask: 0, snapshot: snapshot(part) }
    }

    /// Runs the I/O thread over `jobs`; what it reported, as (checkpoint, error if it failed).
    fn run(jobs: Vec<IoJob>) -> Vec<(u64, Option<String>)> {
        let dir = tempfile::tempdir().unwrap();
        let storage = CheckpointStorage::new(dir.path(), "job").unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let (done_tx, done) = crossbeam_channel::unbounded();
        for j in jobs {
            tx.send(j).unwrap();
        }
        drop(tx);
        io_thread(storage, "run".into(), HashMap::new(), Chain::default(), rx, done_tx);
        done.try_iter()
            .map(|d| match d {
                IoDone::Uploaded { id, .. } | IoDone::Finalized { id, .. } => (id, None),
                IoDone::Failed { id, error } => (id, Some(error)),
                IoDone::Stale(stale) => (stale.checkpoint, Some(stale.to_string())),
            })
            .collect()
    }

    #[test]
    fn a_failed_asynchronous_part_fails_its_snapshot_and_only_it() {
        let got = run(vec![upload(1, || Ok(())), upload(2, || anyhow::bail!("fsync failed")), upload(3, || Ok(()))]);
        assert_eq!(got[0], (1, None));
        assert!(got[1].1.as_deref().is_some_and(|e| e.contains("fsync failed")), "{got:?}");
        assert_eq!(got[2], (3, None), "a failure in a reported snapshot fails its checkpoint, not the next");
    }

    #[test]
    fn a_failed_part_of_an_abandoned_snapshot_fails_every_later_one() {
        let discard = IoJob::Discard { snapshot: snapshot(|| anyhow::bail!("fsync failed")) };
        let got = run(vec![upload(1, || Ok(())), discard, upload(3, || Ok(())), upload(4, || Ok(()))]);
        assert_eq!(got[0], (1, None));
        for (id, error) in &got[1..] {
            let error = error.as_deref().unwrap_or_default();
            assert!(error.contains("abandoned checkpoint") && error.contains("fsync failed"), "{id}: {error}");
        }
        assert_eq!(got.len(), 3);
    }
}
