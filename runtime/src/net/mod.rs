//! The network data plane: a job run as several processes of the same binary.
//!
//! 1. **Placement** ([`process_of`]). Every process plans the whole job the same way and runs
//!    only its share of subtasks: subtask `s` of an operator with parallelism `p` runs in
//!    process `s * N / p` of `N`. Chained operators share their parallelism, so a chain stays
//!    in one process.
//! 2. **Channels.** An edge between two subtasks of one process is a bounded crossbeam channel
//!    as always. Between processes it is a logical channel ([`channel_id`]) on the one TCP
//!    connection of that process pair ([`mesh`]): the producing task encodes each element
//!    ([`codec`]) into a data frame ([`frame`]) and queues it once it holds a credit; the
//!    connection's reader puts the frame on the consuming task's queue, which decodes it and
//!    returns the credit ([`channel`]). Frame buffers are recycled per connection ([`buffers`]). Elements of one channel arrive in order, so barriers,
//!    watermarks and end-of-input mean what they mean locally.
//! 3. **Failure** is fail-stop: a connection closed without a goodbye, a peer silent for
//!    `--peer-timeout` or a protocol error fails the job in every process.

pub(crate) mod buffers;
pub(crate) mod channel;
pub(crate) mod codec;
pub(crate) mod frame;
pub(crate) mod mesh;

pub(crate) use channel::{RemoteRx, RemoteTx};
pub(crate) use mesh::{Mesh, MeshConfig};

/// The process that runs subtask `subtask` of an operator with parallelism `parallelism`, when
/// the job runs as `processes` processes.
///
/// Contiguous ranges, spread evenly: with 3 processes, parallelism 2 runs in processes 0 and 1,
/// parallelism 4 in 0, 0, 1, 2 and parallelism 6 in 0, 0, 1, 1, 2, 2.
pub(crate) fn process_of(subtask: usize, parallelism: usize, processes: usize) -> usize {
    subtask * processes / parallelism.max(1)
}

/// The id of the logical channel from subtask `from` to subtask `to` of edge `edge`, the same
/// in every process.
pub(crate) fn channel_id(edge: usize, from: usize, to: usize) -> u64 {
    ((edge as u64) << 40) | ((from as u64) << 20) | to as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_contiguous_even_and_covers_every_process_it_can() {
        assert_eq!((0..2).map(|s| process_of(s, 2, 3)).collect::<Vec<_>>(), [0, 1]);
        assert_eq!((0..4).map(|s| process_of(s, 4, 3)).collect::<Vec<_>>(), [0, 0, 1, 2]);
        assert_eq!((0..6).map(|s| process_of(s, 6, 3)).collect::<Vec<_>>(), [0, 0, 1, 1, 2, 2]);
        assert_eq!((0..5).map(|s| process_of(s, 5, 1)).collect::<Vec<_>>(), [0; 5]);
        for p in 1..20 {
            for n in 1..6 {
                let procs: Vec<usize> = (0..p).map(|s| process_of(s, p, n)).collect();
                assert!(procs.windows(2).all(|w| w[0] <= w[1]) && procs.iter().all(|&x| x < n), "{p} {n}");
                if p >= n {
                    assert_eq!(procs.iter().collect::<std::collections::BTreeSet<_>>().len(), n, "{p} {n}");
                }
            }
        }
    }

    #[test]
    fn channel_ids_differ_for_different_pairs() {
        let mut ids = std::collections::HashSet::new();
        for e in 0..5 {
            for f in 0..9 {
                for t in 0..9 {
                    assert!(ids.insert(channel_id(e, f, t)));
                }
            }
        }
    }
}
