//! Retention: keep the newest `n` complete checkpoints, delete older and abandoned ones, and
//! every shared file no kept checkpoint references. One plan, applied to the local directory and,
//! for an object store, to the store itself (the mirror is pruned the same way).

use std::collections::{BTreeSet, HashSet};

use anyhow::{Context, Result};

use crate::metadata::{parse_metadata, Tombstone, METADATA_FILE};
use crate::remote::Remote;
use crate::storage::CheckpointStorage;

/// Which checkpoint ids to keep and which to delete.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    keep: Vec<u64>,
    drop: Vec<u64>,
}

/// Of the checkpoint ids that exist (`all`, complete or not), keeps the newest `retain` complete
/// ones; deletes complete ones not kept and incomplete ones older than the newest complete one
/// (abandoned). Incomplete ones newer than it may still be in progress and stay.
fn plan(all: &BTreeSet<u64>, complete: &BTreeSet<u64>, retain: usize) -> Plan {
    let keep: Vec<u64> = complete.iter().rev().take(retain.max(1)).copied().collect();
    let newest = complete.last().copied().unwrap_or(0);
    let drop = all.iter().copied().filter(|id| !keep.contains(id) && (*id < newest || complete.contains(id))).collect();
    Plan { keep, drop }
}

impl CheckpointStorage {
    /// Keeps the newest `retain` complete checkpoints, deletes older and abandoned ones, and
    /// deletes every shared file no kept checkpoint references.
    pub fn retain(&self, retain: usize) -> Result<()> {
        if let Some(remote) = &self.remote {
            retain_remote(remote, retain)?;
        }
        self.retain_local(retain)
    }

    fn retain_local(&self, retain: usize) -> Result<()> {
        let all = self.list_local()?;
        let ids: BTreeSet<u64> = all.iter().map(|(id, _)| *id).collect();
        let committed = all.iter().filter(|(_, d)| d.join(METADATA_FILE).exists()).map(|(id, _)| *id);
        let (complete, referenced) = newest_complete(committed, retain, |id| {
            Ok(std::fs::read_to_string(self.chk_dir(id).join(METADATA_FILE)).ok())
        })?;
        let plan = plan(&ids, &complete, retain);
        for id in &plan.drop {
            let dir = self.chk_dir(*id);
            std::fs::remove_dir_all(&dir).with_context(|| format!("deleting {}", dir.display()))?;
        }
        self.taken.retain(|path| referenced.contains(path));
        for e in std::fs::read_dir(self.base.join("shared"))? {
            let e = e?;
            let rel = format!("shared/{}", e.file_name().to_string_lossy());
            if !referenced.contains(&rel) {
                match std::fs::remove_file(e.path()) {
                    // Gone already (another remover of the same directory): what was wanted.
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    r => r.with_context(|| format!("deleting {}", e.path().display()))?,
                }
            }
        }
        Ok(())
    }
}

/// Of the ids with a `_metadata` (`committed`), the complete ones as far as retention needs to
/// know: the newest `retain` checkpoints are read (tombstones of aborted ids among them do not
/// count, so they never push a checkpoint out), older ones are deleted either way. Also returns
/// the files the kept ones reference.
fn newest_complete(
    committed: impl Iterator<Item = u64>,
    retain: usize,
    read: impl Fn(u64) -> Result<Option<String>>,
) -> Result<(BTreeSet<u64>, HashSet<String>)> {
    let committed: BTreeSet<u64> = committed.collect();
    let (mut complete, mut referenced, mut kept) = (BTreeSet::new(), HashSet::new(), 0);
    for id in committed.into_iter().rev() {
        if kept >= retain.max(1) {
            complete.insert(id);
            continue;
        }
        let Some(text) = read(id)? else { continue };
        if Tombstone::parse(&text).is_some() {
            continue;
        }
        if let Ok(meta) = parse_metadata(&text, &format!("checkpoint {id}")) {
            referenced.extend(meta.files().map(|f| f.path.clone()));
        }
        complete.insert(id);
        kept += 1;
    }
    Ok((complete, referenced))
}

/// The checkpoint id a key of the job's prefix belongs to (`chk-<n>/...`).
fn chk_id(key: &str) -> Option<u64> {
    key.strip_prefix("chk-")?.split('/').next()?.parse().ok()
}

fn retain_remote(remote: &Remote, retain: usize) -> Result<()> {
    let keys = remote.list("")?;
    let all: BTreeSet<u64> = keys.iter().filter_map(|(k, _)| chk_id(k)).collect();
    let committed =
        keys.iter().filter(|(k, _)| k.ends_with(&format!("/{METADATA_FILE}"))).filter_map(|(k, _)| chk_id(k));
    let (complete, referenced) = newest_complete(committed, retain, |id| {
        let bytes = remote.get(&format!("chk-{id}/{METADATA_FILE}"))?;
        Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
    })?;
    let plan = plan(&all, &complete, retain);
    let doomed: Vec<String> = keys
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| match chk_id(k) {
            Some(id) => plan.drop.contains(&id),
            None => k.starts_with("shared/") && !referenced.contains(k),
        })
        .collect();
    remote.delete(doomed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_complete_and_what_may_still_be_in_progress() {
        let all: BTreeSet<u64> = [1, 2, 3, 4, 5, 6].into();
        let complete: BTreeSet<u64> = [2, 3, 5].into();
        // 1 and 4 were abandoned (older than 5), 6 may be in progress.
        assert_eq!(plan(&all, &complete, 2), Plan { keep: vec![5, 3], drop: vec![1, 2, 4] });
        assert_eq!(plan(&all, &BTreeSet::new(), 2), Plan { keep: vec![], drop: vec![] });
        assert_eq!(chk_id("chk-12/_metadata"), Some(12));
        assert_eq!(chk_id("shared/x.sst"), None);
    }
}
