//! The commit point of a checkpoint, and how a stale coordinator is kept from committing.
//!
//! A checkpoint is committed by creating its `_metadata` (create-only: a put with
//! `If-None-Match` on an object store, a no-clobber hard link on a local disk), and only then are
//! the sinks told to commit their output. Create-only alone does not stop a *stale* coordinator
//! (a process frozen for a while, whose successor has already restored): the ids the stale one
//! reserved are not the successor's, so nobody else writes them. If it then committed one, its
//! sinks would commit output for input that the successor replays from an older checkpoint.
//!
//! So the committed checkpoints of a job form one chain, and every commit extends it:
//!
//! 1. A coordinator knows the checkpoint its chain continues from ([`Chain`]): the one it restored,
//!    then each one it committed.
//! 2. To commit id `n`, it first closes every id between its previous commit and `n` with a
//!    *tombstone*, a `_metadata` that aborts that id, written create-only. If one of these ids
//!    already holds a checkpoint, somebody else committed after this coordinator chose where to
//!    continue from: it is stale and commits nothing.
//! 3. It creates `n`'s `_metadata`; failing to means somebody else holds `n`.
//! 4. It checks that no id above `n` is committed or closed; if one is, a newer coordinator has
//!    already continued the chain, and this one must not tell its sinks to commit.
//!
//! Of a stale coordinator's commit and its successor's tombstone on the same id exactly one is
//! created first. If the tombstone wins, the stale one fails at 3. If the stale commit wins, the
//! successor fails at 2 and restarts from that checkpoint, which is consistent: the stale one
//! committed its output for exactly that checkpoint. Retention may later delete tombstones; a
//! stale coordinator committing such an id again is caught at 4, since its successor's commits
//! lie above it.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use crate::metadata::{
    load_verified_elsewhere, metadata_bytes, verify_stamping, write_atomic, write_metadata, CheckpointMetadata,
    LoadedSnapshot, Tombstone, METADATA_FILE,
};
use crate::storage::CheckpointStorage;

/// Where the checkpoints a coordinator commits continue from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    previous: u64,
    /// Ids after `previous` that hold a checkpoint the restore skipped as broken: they were
    /// committed before the restore looked, so they do not mean another coordinator is newer.
    passed_over: BTreeSet<u64>,
}

impl Chain {
    /// A chain that continues from checkpoint `previous` (0: from nothing).
    ///
    /// ```
    /// assert_eq!(weir_checkpoint::Chain::after(7).previous(), 7);
    /// ```
    pub fn after(previous: u64) -> Chain {
        Chain { previous, passed_over: BTreeSet::new() }
    }

    /// The last checkpoint of the chain.
    pub fn previous(&self) -> u64 {
        self.previous
    }
}

/// A commit refused because another coordinator of the job committed after this one chose where
/// to continue from. The job must stop: its sinks must not commit.
#[derive(Debug)]
pub struct Stale {
    /// The checkpoint that was not committed.
    pub checkpoint: u64,
    /// What showed it.
    pub reason: String,
}

impl fmt::Display for Stale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "checkpoint {} not committed: {}; a newer run of this job has taken over, so this one is stale and stops",
            self.checkpoint, self.reason
        )
    }
}

impl std::error::Error for Stale {}

/// Creates `path` with `bytes` unless it exists (a temporary file hard-linked to the name, which
/// fails if the name is taken): `Ok(false)` if it existed.
fn create_new_file(path: &Path, bytes: &[u8]) -> Result<bool> {
    let dir = path.parent().context("path without parent")?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let tmp = dir.join(format!(".commit-{}-{nanos}.tmp", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            std::fs::File::open(dir)?.sync_all()?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

impl CheckpointStorage {
    /// The newest complete and intact checkpoint, and the chain a coordinator restoring it
    /// continues. Broken checkpoints are skipped with a warning, aborted ones quietly.
    pub fn restore_point(&self) -> Result<(Option<LoadedSnapshot>, Chain)> {
        let mut passed_over = BTreeSet::new();
        for (id, dir) in self.list()?.into_iter().rev() {
            let mut skip = |e: anyhow::Error| {
                tracing::warn!(checkpoint = id, error = format!("{e:#}"), "skipping a broken checkpoint");
                passed_over.insert(id);
            };
            if let Some(remote) = &self.remote {
                match self.fetch(remote, id) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        skip(e);
                        continue;
                    }
                }
            }
            match std::fs::read_to_string(dir.join(METADATA_FILE)) {
                Err(_) => continue,
                Ok(text) if Tombstone::parse(&text).is_some() => continue,
                Ok(_) => {}
            }
            // Verified here or by the fetch (which stamped what it checked); either way the stamps
            // of its shared files go to this run, whose checkpoints reuse those files unread.
            let loaded = load_verified_elsewhere(&dir).and_then(|s| {
                let (_, stamps) = verify_stamping(&s.meta, &s.base)?;
                self.taken.adopt(stamps);
                Ok(s)
            });
            match loaded {
                Ok(s) => {
                    let chain = Chain { previous: id, passed_over };
                    return Ok((Some(s), chain));
                }
                Err(e) => skip(e),
            }
        }
        Ok((None, Chain { previous: 0, passed_over }))
    }

    /// Creates checkpoint `id`'s `_metadata` with `bytes` unless it exists: `Ok(false)` if it did.
    pub(crate) fn create_commit_point(&self, id: u64, bytes: Vec<u8>) -> Result<bool> {
        match &self.remote {
            Some(remote) => remote.put_new(&format!("chk-{id}/{METADATA_FILE}"), bytes),
            None => {
                let dir = self.chk_dir(id);
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                create_new_file(&dir.join(METADATA_FILE), &bytes)
            }
        }
    }

    /// Replaces checkpoint `id`'s `_metadata`, which this coordinator created.
    fn overwrite_commit_point(&self, id: u64, bytes: Vec<u8>) -> Result<()> {
        match &self.remote {
            Some(remote) => remote.put(&format!("chk-{id}/{METADATA_FILE}"), bytes),
            None => write_atomic(&self.chk_dir(id).join(METADATA_FILE), &bytes),
        }
    }

    /// The text of checkpoint `id`'s `_metadata`, if it exists.
    fn commit_point(&self, id: u64) -> Result<Option<String>> {
        let bytes = match &self.remote {
            Some(remote) => remote.get(&format!("chk-{id}/{METADATA_FILE}"))?,
            None => match std::fs::read(self.chk_dir(id).join(METADATA_FILE)) {
                Ok(b) => Some(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e).context(format!("reading checkpoint {id}")),
            },
        };
        Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// The lowest id above `id` with a `_metadata` (a checkpoint or a tombstone), if any.
    fn committed_above(&self, id: u64) -> Result<Option<u64>> {
        for (above, dir) in self.list()?.into_iter().filter(|(i, _)| *i > id) {
            let exists = match &self.remote {
                Some(remote) => remote.exists(&format!("chk-{above}/{METADATA_FILE}"))?,
                None => dir.join(METADATA_FILE).exists(),
            };
            if exists {
                return Ok(Some(above));
            }
        }
        Ok(None)
    }

    /// Completes checkpoint `meta.checkpoint_id` as the next link of `chain` (see the module
    /// comment), or fails with [`Stale`] if another coordinator of the job committed after this
    /// one chose where to continue from. Only after `Ok` may sinks commit the checkpoint's output.
    pub fn commit(&self, meta: &CheckpointMetadata, chain: &mut Chain) -> Result<()> {
        let id = meta.checkpoint_id;
        let stale = |reason: String| anyhow::Error::new(Stale { checkpoint: id, reason });
        for gap in (chain.previous + 1)..id {
            if chain.passed_over.contains(&gap) {
                continue;
            }
            let reason = format!("closed when checkpoint {id} was committed after {}", chain.previous);
            let tombstone = Tombstone { aborted_checkpoint: gap, reason }.bytes()?;
            if !self.create_commit_point(gap, tombstone)? {
                let text = self.commit_point(gap)?.unwrap_or_default();
                if Tombstone::parse(&text).is_none() {
                    return Err(stale(format!(
                        "checkpoint {gap} was committed by another coordinator after this one continued from {}",
                        chain.previous
                    )));
                }
            }
        }
        if !self.create_commit_point(id, metadata_bytes(meta)?)? {
            return Err(stale(format!("checkpoint {id} was committed or aborted by another coordinator")));
        }
        if let Some(above) = self.committed_above(id)? {
            let reason = format!("checkpoint {above} above it is committed or aborted by another coordinator");
            // This commit point is ours (we created it), so overwriting it races with nobody:
            // it becomes a tombstone, and nobody takes it for a complete checkpoint.
            let tombstone = Tombstone { aborted_checkpoint: id, reason: reason.clone() }.bytes()?;
            self.overwrite_commit_point(id, tombstone)?;
            return Err(stale(reason));
        }
        if self.remote.is_some() {
            // The mirror keeps a copy, so that a restart on this machine downloads nothing.
            let dir = self.chk_dir(id);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            write_metadata(&dir, meta)?;
        }
        chain.previous = id;
        chain.passed_over.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::SnapshotKind;

    fn meta(id: u64) -> CheckpointMetadata {
        CheckpointMetadata {
            job: "job".into(),
            checkpoint_id: id,
            kind: SnapshotKind::Checkpoint,
            timestamp: 0,
            max_parallelism: 8,
            operators: vec![],
            duration_ms: None,
        }
    }

    fn is_stale(r: Result<()>) -> bool {
        r.is_err_and(|e| e.downcast_ref::<Stale>().is_some())
    }

    fn storage() -> (tempfile::TempDir, CheckpointStorage) {
        let dir = tempfile::tempdir().unwrap();
        let s = CheckpointStorage::new(dir.path(), "job").unwrap();
        (dir, s)
    }

    #[test]
    fn a_successor_closes_what_the_stale_coordinator_had_reserved() {
        let (_d, s) = storage();
        let mut old = Chain::after(0);
        s.commit(&meta(1), &mut old).unwrap();
        s.commit(&meta(2), &mut old).unwrap();
        s.reserve(3).unwrap(); // the old coordinator freezes with 3 acknowledged
        let (restored, mut new) = s.restore_point().unwrap();
        assert_eq!(restored.unwrap().meta.checkpoint_id, 2);
        s.reserve(4).unwrap();
        s.commit(&meta(4), &mut new).unwrap();
        // The old one wakes and tries to commit 3: closed.
        assert!(is_stale(s.commit(&meta(3), &mut old)));
        let (restored, _) = s.restore_point().unwrap();
        assert_eq!(restored.unwrap().meta.checkpoint_id, 4);
        let listed: Vec<String> = s.describe().unwrap().into_iter().map(|l| format!("{} {}", l.id, l.status)).collect();
        assert_eq!(listed[2], "3 aborted");
    }

    #[test]
    fn a_stale_commit_that_came_first_makes_the_successor_restart_from_it() {
        let (_d, s) = storage();
        let mut old = Chain::after(0);
        s.commit(&meta(1), &mut old).unwrap();
        s.reserve(2).unwrap();
        let (_, mut new) = s.restore_point().unwrap();
        assert_eq!(new.previous(), 1);
        s.commit(&meta(2), &mut old).unwrap(); // the old one commits 2 before the new one's first commit
        s.reserve(3).unwrap();
        assert!(is_stale(s.commit(&meta(3), &mut new)));
        let (restored, _) = s.restore_point().unwrap();
        assert_eq!(restored.unwrap().meta.checkpoint_id, 2);
    }

    #[test]
    fn a_stale_commit_below_a_newer_chain_is_caught_even_after_retention() {
        let (_d, s) = storage();
        let mut old = Chain::after(0);
        s.commit(&meta(1), &mut old).unwrap();
        s.reserve(2).unwrap();
        let (_, mut new) = s.restore_point().unwrap();
        for id in 3..=6 {
            s.reserve(id).unwrap();
            s.commit(&meta(id), &mut new).unwrap();
        }
        s.retain(1).unwrap(); // deletes 1..5, the tombstone of 2 among them
        assert!(!s.chk_dir(2).exists());
        assert!(is_stale(s.commit(&meta(2), &mut old)));
        let listed: Vec<String> = s.describe().unwrap().into_iter().map(|l| format!("{} {}", l.id, l.status)).collect();
        assert_eq!(listed, ["2 aborted", "6 complete"]);
    }

    #[test]
    fn broken_checkpoints_the_restore_skipped_are_not_a_newer_coordinator() {
        let (_d, s) = storage();
        let mut c = Chain::after(0);
        s.commit(&meta(1), &mut c).unwrap();
        s.commit(&meta(2), &mut c).unwrap();
        std::fs::write(s.chk_dir(2).join(METADATA_FILE), b"garbage").unwrap();
        let (restored, mut chain) = s.restore_point().unwrap();
        assert_eq!(restored.unwrap().meta.checkpoint_id, 1);
        s.commit(&meta(3), &mut chain).unwrap();
        assert_eq!(chain.previous(), 3);
    }

    #[test]
    fn retention_does_not_count_tombstones_as_checkpoints() {
        let (_d, s) = storage();
        let mut c = Chain::after(0);
        s.commit(&meta(1), &mut c).unwrap();
        s.commit(&meta(2), &mut c).unwrap();
        // 3 and 4 are closed by the commit of 5.
        s.commit(&meta(5), &mut c).unwrap();
        s.retain(2).unwrap();
        let ids: Vec<u64> = s.list().unwrap().into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![2, 5]);
    }
}
