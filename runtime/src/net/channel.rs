//! The two ends of a logical channel between processes, with credit-based flow control.
//!
//! The sender starts with as many credits as the receiver's queue holds (`--channel-capacity`
//! elements, like a local channel) and spends one per element; the receiver returns one each
//! time its task takes an element off the queue. So the receiving process never buffers more
//! than the capacity per channel, the connection's reader never blocks on a full queue, and a
//! channel whose task stopped reading (barrier alignment, a slow operator) stalls only its own
//! sender, never the other channels that share the connection (the reason Flink moved to credits).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use crossbeam_channel::{Receiver, TryRecvError};
use parking_lot::{Condvar, Mutex};

use super::frame::Frame;
use super::mesh::Link;
use crate::error::Cancelled;
use crate::metrics::ChannelStats;

/// Elements a sender may still send on one channel.
pub(crate) struct Credits {
    n: Mutex<u32>,
    granted: Condvar,
}

impl Credits {
    pub(crate) fn new(n: u32) -> Self {
        Credits { n: Mutex::new(n), granted: Condvar::new() }
    }

    /// Takes one credit, waiting at most `wait` for it; false if none came.
    pub(crate) fn take(&self, wait: Duration) -> bool {
        let mut n = self.n.lock();
        if *n == 0 {
            self.granted.wait_for(&mut n, wait);
        }
        if *n == 0 {
            return false;
        }
        *n -= 1;
        true
    }

    pub(crate) fn grant(&self, k: u32) {
        *self.n.lock() += k;
        self.granted.notify_one();
    }

    #[cfg(test)]
    pub(crate) fn available(&self) -> u32 {
        *self.n.lock()
    }
}

/// The sending end of a channel to a task in another process.
pub(crate) struct RemoteTx {
    pub(crate) channel: u64,
    pub(crate) credits: Arc<Credits>,
    pub(crate) link: Arc<Link>,
    pub(crate) stats: Arc<ChannelStats>,
}

impl RemoteTx {
    /// Waits for a credit, then queues the data frame `body` on the connection. Gives up with
    /// [`Cancelled`] when `cancel` is set or the connection is gone (the mesh reports why).
    /// Returns whether it had to wait.
    pub(crate) fn send(&self, body: Vec<u8>, cancel: &AtomicBool) -> Result<bool> {
        let mut waited = false;
        let mut since = std::time::Instant::now();
        while !self.credits.take(Duration::from_millis(50)) {
            waited = true;
            // Accounted slice by slice, so a sender stuck for good shows in the metrics too.
            let now = std::time::Instant::now();
            self.stats.backpressure_ns.fetch_add((now - since).as_nanos() as u64, Ordering::Relaxed);
            since = now;
            if cancel.load(Ordering::Relaxed) || self.link.is_down() {
                return Err(Cancelled.into());
            }
        }
        if waited {
            self.stats.backpressure_ns.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        self.stats.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        self.link.send(Frame::Data(body)).map_err(|_| Cancelled)?;
        Ok(waited)
    }
}

/// The receiving end of a channel from a task in another process: data frame bodies, in order.
pub(crate) struct RemoteRx {
    pub(crate) channel: u64,
    pub(crate) rx: Receiver<Vec<u8>>,
    pub(crate) link: Arc<Link>,
    pub(crate) stats: Arc<ChannelStats>,
    /// Credits taken but not yet returned, and how many are returned at once: a quarter of the
    /// capacity, so the connection carries one credit frame per few elements, and a sender that
    /// used all its credits always gets some back once the task took its elements.
    pub(crate) owed: std::cell::Cell<u32>,
    pub(crate) return_at: u32,
}

impl RemoteRx {
    /// Takes one frame body; its credit goes back to the sender (with others, see `owed`).
    pub(crate) fn try_take(&self) -> Result<Vec<u8>, TryRecvError> {
        // Every element is delivered before the end is seen: the connection's reader drops its
        // side only after the last frame, so a disconnect loses nothing.
        let body = self.rx.try_recv()?;
        self.stats.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        let owed = self.owed.get() + 1;
        if owed >= self.return_at {
            // A lost connection fails the job through the mesh; the credits can go nowhere then.
            let _ = self.link.send(Frame::Credit { channel: self.channel, n: owed });
            self.owed.set(0);
        } else {
            self.owed.set(owed);
        }
        Ok(body)
    }

    pub(crate) fn queued(&self) -> usize {
        self.rx.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_block_at_zero_and_wake_on_a_grant() {
        let c = Arc::new(Credits::new(2));
        assert!(c.take(Duration::ZERO));
        assert!(c.take(Duration::ZERO));
        assert!(!c.take(Duration::from_millis(20)), "no credit left");
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.take(Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(50));
        c.grant(1);
        assert!(t.join().unwrap(), "a grant wakes the waiting sender");
        assert_eq!(c.available(), 0);
    }
}
