//! Recycled frame buffers: Flink's network buffer pool in miniature.
//!
//! A data frame carries a whole batch (about 100 KiB for 1024 Nexmark bids). Allocating one per
//! frame and freeing it on another thread (the task encodes, the connection's writer frees; the
//! reader allocates, the task frees) cost the receiving process fresh pages from the kernel, page
//! faults and zeroing included, and the sender a chain of reallocations while the encoding grew.
//! Each connection keeps two pools instead, one per direction: a buffer goes back to its pool once
//! its frame is written or decoded and comes out again, capacity intact, for the next frame. The
//! pools are bounded (by count and by the size of a buffer kept), so they never hold more than a
//! few channels' worth of frames.

use parking_lot::Mutex;

/// Buffers kept per pool: enough for the frames in flight on a connection's busy channels.
const KEPT: usize = 64;

/// A buffer larger than this (an unusually large batch) is freed instead of kept.
const LARGEST_KEPT: usize = 4 << 20;

/// A bounded stack of empty buffers.
#[derive(Default)]
pub(crate) struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// An empty buffer, with the capacity of one returned earlier if there is one.
    pub(crate) fn take(&self) -> Vec<u8> {
        self.free.lock().pop().unwrap_or_default()
    }

    /// Returns `buf` for reuse (its contents are dropped).
    pub(crate) fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > LARGEST_KEPT {
            return;
        }
        buf.clear();
        let mut free = self.free.lock();
        if free.len() < KEPT {
            free.push(buf);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.free.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_comes_back_empty_with_its_capacity() {
        let pool = BufferPool::default();
        assert_eq!(pool.take().capacity(), 0, "nothing to reuse yet");
        let mut b = Vec::with_capacity(1000);
        b.extend_from_slice(b"frame");
        pool.give(b);
        let again = pool.take();
        assert!(again.is_empty());
        assert!(again.capacity() >= 1000);
    }

    #[test]
    fn the_pool_is_bounded_in_count_and_in_buffer_size() {
        let pool = BufferPool::default();
        for _ in 0..KEPT + 10 {
            pool.give(Vec::with_capacity(16));
        }
        assert_eq!(pool.len(), KEPT);
        let pool = BufferPool::default();
        pool.give(Vec::with_capacity(LARGEST_KEPT + 1));
        pool.give(Vec::new());
        assert_eq!(pool.len(), 0, "huge and capacity-less buffers are not kept");
    }
}
