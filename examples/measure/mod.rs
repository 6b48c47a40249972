//! Measuring a benchmark's child process: wall time and peak RSS, shared by the `bench` and
//! `nexmark` binaries and the memory test (`#[path]`-included there).
//!
//! Each run is its own process so that its peak RSS is its own: `wait4` reports the child's
//! `ru_maxrss`, which `std::process::Child::wait` does not expose.

#![allow(dead_code)]

pub mod control;
pub mod goals;
pub mod latency;
pub mod processes;
pub mod restore;

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::time::Instant;

/// How a child process ended and what it cost.
pub struct Measured {
    pub status: ExitStatus,
    /// Wall time from the call to [`wait_measured`] (start the child just before).
    pub secs: f64,
    /// Peak resident set size in KiB.
    pub max_rss_kib: i64,
}

/// Reaps `child` with `wait4` and returns its exit status and peak RSS.
///
/// The child is reaped here: do not call `wait` on it afterwards.
pub fn wait_measured(child: &Child) -> std::io::Result<Measured> {
    let started = Instant::now();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our own child, and status/usage point to live locals.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Measured {
        status: ExitStatus::from_raw(status),
        secs: started.elapsed().as_secs_f64(),
        max_rss_kib: usage.ru_maxrss,
    })
}

/// The `p` quantile (0..=1, nearest rank) of `v`; `None` when `v` is empty.
pub fn percentile(mut v: Vec<f64>, p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[((v.len() - 1) as f64 * p).round() as usize])
}
