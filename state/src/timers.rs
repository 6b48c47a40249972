//! The timer service: event-time and processing-time timers of one keyed subtask.
//!
//! Timers live in memory, ordered by time; the store's timer column family only has to be right
//! when a checkpoint is taken, so changes wait in memory until the next flush and a timer
//! registered and fired between two checkpoints never reaches RocksDB.

use std::collections::BTreeSet;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::keygroup::KeyGroupRange;
use crate::store::{StateStore, TIMERS_CF};

/// Which clock a timer follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TimeDomain {
    /// Fires when the watermark passes the timer's timestamp.
    EventTime,
    /// Fires when the wall clock passes the timer's timestamp.
    ProcessingTime,
}

/// A registered timer: when, for which key (key-group-prefixed key bytes) and namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timer {
    /// The timestamp at which the timer fires.
    pub ts: i64,
    /// `key_group ‖ key bytes` of the key it belongs to.
    pub key: Box<[u8]>,
    /// The namespace it was registered in (e.g. an encoded window), possibly empty.
    pub ns: Box<[u8]>,
}

impl Timer {
    /// The encoded key, without the key-group prefix.
    pub fn key_bytes(&self) -> &[u8] {
        &self.key[2..]
    }
}

/// The timer column family's key of a timer: `key group ‖ domain ‖ time ‖ key ‖ namespace`, so
/// that one key group's timers are contiguous (rescaling moves them with their state).
fn timer_cf_key(domain: TimeDomain, t: &Timer) -> Vec<u8> {
    let mut k = Vec::with_capacity(11 + t.key.len() + t.ns.len());
    k.extend_from_slice(&t.key[..2]);
    k.push(domain as u8);
    // Flip the sign bit so that byte order equals numeric order for negative timestamps too.
    k.extend_from_slice(&((t.ts as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(&t.key[2..]);
    k.extend_from_slice(&t.ns);
    k
}

/// A timer change waiting for the next flush.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TimerChange {
    /// Registered; the store does not have it (so deleting it again leaves nothing to do).
    New {
        key_len: u32,
    },
    /// Registered again after a deletion of a stored one.
    Put {
        key_len: u32,
    },
    Delete,
}

/// Timer changes taken from the service, to be written into the store's timer column family.
pub(crate) struct TimerChanges(rustc_hash::FxHashMap<Vec<u8>, TimerChange>);

impl TimerChanges {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The changes in key order (which RocksDB's memtable inserts several times faster, and an
    /// SST file requires): (key, the value to put or `None` to delete).
    fn sorted(&self) -> Vec<(&[u8], Option<[u8; 4]>)> {
        let mut changes: Vec<_> = self
            .0
            .iter()
            .map(|(k, change)| {
                let value = match change {
                    TimerChange::New { key_len } | TimerChange::Put { key_len } => Some(key_len.to_be_bytes()),
                    TimerChange::Delete => None,
                };
                (k.as_slice(), value)
            })
            .collect();
        changes.sort_unstable_by(|a, b| a.0.cmp(b.0));
        changes
    }

    /// Adds the changes to `batch`.
    pub(crate) fn write_into(&self, db: &rocksdb::DB, batch: &mut rocksdb::WriteBatch) -> Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let cf = db.cf_handle(TIMERS_CF).ok_or_else(|| anyhow::anyhow!("the timer column family is missing"))?;
        for (k, value) in self.sorted() {
            match value {
                Some(v) => batch.put_cf(cf, k, v),
                None => batch.delete_cf(cf, k),
            }
        }
        Ok(())
    }

    /// Adds the changes to a checkpoint's SST files.
    pub(crate) fn ingest_into(&self, ingest: &mut crate::ingest::Ingest) -> Result<()> {
        for (k, value) in self.sorted() {
            ingest.change(TIMERS_CF, k, value.as_ref().map(|v| v.as_slice()))?;
        }
        Ok(())
    }
}

/// The timers of one keyed subtask (see the module comment).
#[derive(Default)]
pub struct TimerService {
    event: BTreeSet<Timer>,
    processing: BTreeSet<Timer>,
    /// Changes not yet in the store, by timer column family key.
    changes: rustc_hash::FxHashMap<Vec<u8>, TimerChange>,
}

impl TimerService {
    fn set(&mut self, domain: TimeDomain) -> &mut BTreeSet<Timer> {
        match domain {
            TimeDomain::EventTime => &mut self.event,
            TimeDomain::ProcessingTime => &mut self.processing,
        }
    }

    /// Registers a timer for `key` (`key_group ‖ key bytes`); registering the same timer twice
    /// keeps one.
    pub fn register(&mut self, domain: TimeDomain, ts: i64, key: &[u8], ns: &[u8]) -> Result<()> {
        if key.len() < 2 {
            bail!("timer registered without a current key");
        }
        let timer = Timer { ts, key: key.into(), ns: ns.into() };
        let set = self.set(domain);
        if set.contains(&timer) {
            return Ok(());
        }
        let cf_key = timer_cf_key(domain, &timer);
        let key_len = (timer.key.len() - 2) as u32;
        set.insert(timer);
        let change = match self.changes.get(&cf_key) {
            Some(TimerChange::Delete) => TimerChange::Put { key_len },
            _ => TimerChange::New { key_len },
        };
        self.changes.insert(cf_key, change);
        Ok(())
    }

    /// Deletes a timer of `key`, if registered.
    pub fn delete(&mut self, domain: TimeDomain, ts: i64, key: &[u8], ns: &[u8]) -> Result<()> {
        if key.len() < 2 {
            bail!("timer deleted without a current key");
        }
        let timer = Timer { ts, key: key.into(), ns: ns.into() };
        if self.set(domain).remove(&timer) {
            self.removed(timer_cf_key(domain, &timer));
        }
        Ok(())
    }

    fn removed(&mut self, cf_key: Vec<u8>) {
        match self.changes.get(&cf_key) {
            Some(TimerChange::New { .. }) => {
                self.changes.remove(&cf_key);
            }
            _ => {
                self.changes.insert(cf_key, TimerChange::Delete);
            }
        }
    }

    /// The earliest registered timer of `domain`.
    pub fn next(&self, domain: TimeDomain) -> Option<i64> {
        match domain {
            TimeDomain::EventTime => self.event.first().map(|t| t.ts),
            TimeDomain::ProcessingTime => self.processing.first().map(|t| t.ts),
        }
    }

    /// Removes and returns the earliest timer of `domain` if it is due at `time` (ts ≤ time).
    pub fn pop_due(&mut self, domain: TimeDomain, time: i64) -> Option<Timer> {
        let set = self.set(domain);
        if set.first().is_none_or(|t| t.ts > time) {
            return None;
        }
        let timer = set.pop_first()?;
        self.removed(timer_cf_key(domain, &timer));
        Some(timer)
    }

    /// Number of registered timers of `domain`.
    pub fn count(&self, domain: TimeDomain) -> usize {
        match domain {
            TimeDomain::EventTime => self.event.len(),
            TimeDomain::ProcessingTime => self.processing.len(),
        }
    }

    /// Writes the changes since the last flush to the store in one batch.
    pub(crate) fn flush(&mut self, store: &mut StateStore) -> Result<()> {
        let changes = self.take_changes();
        if changes.is_empty() {
            return Ok(());
        }
        let mut batch = rocksdb::WriteBatch::default();
        changes.write_into(store.db(), &mut batch)?;
        store.write(batch)
    }

    /// Takes the changes since the last flush, for a checkpoint to write off the task thread.
    /// Later changes are relative to a store that has these: a timer registered before and
    /// deleted after is written as a deletion.
    pub(crate) fn take_changes(&mut self) -> TimerChanges {
        TimerChanges(std::mem::take(&mut self.changes))
    }

    /// Replaces the timers in memory by the stored timers of the key groups in `range`.
    pub(crate) fn load(&mut self, store: &mut StateStore, range: KeyGroupRange) -> Result<()> {
        self.flush(store)?;
        self.event.clear();
        self.processing.clear();
        let corrupt = || anyhow::anyhow!("corrupt timer entry in {}", store.dir().display());
        for item in store.db().iterator_cf(store.cf(TIMERS_CF)?, rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            if k.len() < 11 || v.len() != 4 {
                return Err(corrupt());
            }
            let kg = u16::from_be_bytes([k[0], k[1]]);
            if !range.contains(kg) {
                continue;
            }
            let key_len = u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize;
            let ts = (u64::from_be_bytes(k[3..11].try_into()?) ^ (1 << 63)) as i64;
            let rest = &k[11..];
            if rest.len() < key_len {
                return Err(corrupt());
            }
            let mut key = Vec::with_capacity(2 + key_len);
            key.extend_from_slice(&k[..2]);
            key.extend_from_slice(&rest[..key_len]);
            let timer = Timer { ts, key: key.into(), ns: rest[key_len..].into() };
            match k[2] {
                0 => self.event.insert(timer),
                _ => self.processing.insert(timer),
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_in_time_order_once_each_per_domain() {
        let mut timers = TimerService::default();
        let key = [0u8, 7, 1];
        timers.register(TimeDomain::EventTime, 30, &key, b"").unwrap();
        timers.register(TimeDomain::EventTime, -5, &key, b"").unwrap();
        timers.register(TimeDomain::EventTime, 30, &key, b"").unwrap();
        timers.register(TimeDomain::EventTime, 30, &key, b"w").unwrap();
        timers.register(TimeDomain::ProcessingTime, 1, &key, b"").unwrap();
        assert_eq!(timers.count(TimeDomain::EventTime), 3);
        assert_eq!(timers.next(TimeDomain::EventTime), Some(-5));
        assert!(timers.pop_due(TimeDomain::EventTime, -6).is_none());
        let fired: Vec<(i64, Box<[u8]>)> =
            std::iter::from_fn(|| timers.pop_due(TimeDomain::EventTime, 30)).map(|t| (t.ts, t.ns)).collect();
        assert_eq!(fired, vec![(-5, b"".as_slice().into()), (30, b"".as_slice().into()), (30, b"w".as_slice().into())]);
        assert_eq!(timers.count(TimeDomain::ProcessingTime), 1);
    }

    #[test]
    fn a_timer_registered_and_removed_between_flushes_leaves_no_change() {
        let mut timers = TimerService::default();
        let key = [0u8, 1, 9];
        timers.register(TimeDomain::EventTime, 10, &key, b"").unwrap();
        timers.delete(TimeDomain::EventTime, 10, &key, b"").unwrap();
        timers.register(TimeDomain::EventTime, 11, &key, b"").unwrap();
        timers.pop_due(TimeDomain::EventTime, 11);
        assert!(timers.changes.is_empty());
        assert!(timers.register(TimeDomain::EventTime, 1, &[], b"").is_err());
    }
}
