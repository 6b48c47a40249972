//! Key groups: the unit in which keyed state is partitioned and moved between subtasks.
//!
//! A key is hashed to one of `max_parallelism` key groups; subtask `i` of `p` owns a contiguous range
//! of them, computed exactly as Flink's `KeyGroupRangeAssignment` does. Because state keys start with
//! the key group, a subtask's state is one contiguous key range in RocksDB, and restoring with another
//! parallelism means handing each new subtask the key groups of its new range.

use xxhash_rust::xxh3::xxh3_64;

/// The default number of key groups, as in Flink.
pub const DEFAULT_MAX_PARALLELISM: usize = 128;

/// Largest allowed max parallelism: key groups are stored as big-endian `u16` prefixes.
pub const MAX_MAX_PARALLELISM: usize = 1 << 15;

/// The key group of a key, given the key's encoded bytes.
///
/// ```
/// let kg = weir_state::keygroup::key_group_of(b"some key", 128);
/// assert!(kg < 128);
/// ```
#[inline]
pub fn key_group_of(key_bytes: &[u8], max_parallelism: usize) -> u16 {
    (xxh3_64(key_bytes) % max_parallelism as u64) as u16
}

/// The subtask (of `parallelism`) that owns `key_group`.
///
/// ```
/// use weir_state::keygroup::{subtask_for_key_group, KeyGroupRange};
/// for kg in 0..128u16 {
///     let s = subtask_for_key_group(128, 3, kg);
///     assert!(KeyGroupRange::for_subtask(128, 3, s).contains(kg));
/// }
/// ```
#[inline]
pub fn subtask_for_key_group(max_parallelism: usize, parallelism: usize, key_group: u16) -> usize {
    key_group as usize * parallelism / max_parallelism
}

/// An inclusive range of key groups owned by one subtask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyGroupRange {
    /// First key group of the range.
    pub start: u16,
    /// Last key group of the range (inclusive).
    pub end: u16,
}

impl KeyGroupRange {
    /// The range owned by `subtask` of `parallelism` subtasks.
    ///
    /// ```
    /// use weir_state::keygroup::KeyGroupRange;
    /// assert_eq!(KeyGroupRange::for_subtask(128, 2, 0), KeyGroupRange { start: 0, end: 63 });
    /// assert_eq!(KeyGroupRange::for_subtask(128, 2, 1), KeyGroupRange { start: 64, end: 127 });
    /// ```
    pub fn for_subtask(max_parallelism: usize, parallelism: usize, subtask: usize) -> Self {
        let start = (subtask * max_parallelism).div_ceil(parallelism);
        let end = ((subtask + 1) * max_parallelism - 1) / parallelism;
        KeyGroupRange { start: start as u16, end: end as u16 }
    }

    /// Whether the range holds `key_group`.
    pub fn contains(&self, key_group: u16) -> bool {
        self.start <= key_group && key_group <= self.end
    }

    /// The number of key groups in the range.
    pub fn len(&self) -> usize {
        if self.end < self.start {
            0
        } else {
            (self.end - self.start) as usize + 1
        }
    }

    /// Whether the range holds no key group.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_partition_all_key_groups() {
        for p in 1..=10 {
            let mut next = 0u16;
            for s in 0..p {
                let r = KeyGroupRange::for_subtask(128, p, s);
                assert_eq!(r.start, next, "p={p} s={s}");
                next = r.end + 1;
                for kg in r.start..=r.end {
                    assert_eq!(subtask_for_key_group(128, p, kg), s);
                }
            }
            assert_eq!(next, 128);
        }
    }
}
