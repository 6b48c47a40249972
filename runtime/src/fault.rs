//! Named crash points for tests: `WEIR_CRASH_AT=<point>:<checkpoint id>` kills the process with
//! SIGKILL the first time execution reaches that point for that checkpoint or a later one, so
//! recovery can be tested at the most delicate moments. Unset (always, outside tests) it costs one relaxed load.
//!
//! Points: `mid-snapshot` (a task took its local snapshot but has not acknowledged it),
//! `after-checkpoint-complete` (metadata written, tasks not yet notified), `before-sink-commit`
//! and `mid-sink-commit` (in the exactly-once file sink's commit of that epoch), `mid-publish`
//! (the Kafka exactly-once-publish sink published the first record of that epoch).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

type Target = Option<(String, u64)>;

fn parse(var: &str) -> Target {
    let v = std::env::var(var).ok()?;
    let (point, id) = v.rsplit_once(':')?;
    Some((point.to_string(), id.parse().ok()?))
}

fn crash_target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| parse("WEIR_CRASH_AT"))
}

fn pause_target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| parse("WEIR_PAUSE_AT"))
}

fn reached(target: &Target, point: &str, checkpoint_id: u64) -> bool {
    target.as_ref().is_some_and(|(p, id)| p == point && *id <= checkpoint_id)
}

fn signal_self(signal: libc::c_int) {
    // To this thread (`raise`), not to the process (`kill(getpid())`): the kernel hands a
    // process-directed signal to some thread, usually the main one, and the caller runs on until
    // that thread gets the CPU and stops the others. The coordinator's I/O thread went on that
    // way into the commit it was to pause before (created the commit point's directory and file)
    // when the machine was busy. A stop or kill directed at the caller takes effect before
    // `raise` returns, and stops or kills every other thread of the process as well.
    // SAFETY: sending a signal to our own thread has no memory-safety preconditions.
    unsafe {
        libc::raise(signal);
    }
}

/// Kills the process if `WEIR_CRASH_AT` names this point and this or an earlier checkpoint.
pub fn crash_point(point: &str, checkpoint_id: u64) {
    if reached(crash_target(), point, checkpoint_id) {
        eprintln!("WEIR_CRASH_AT: crashing at {point}:{checkpoint_id}");
        signal_self(libc::SIGKILL);
    }
}

/// Stops the whole process (SIGSTOP, as a long pause or a frozen machine would) the first time
/// `WEIR_PAUSE_AT=<point>:<id>` names this point and this or an earlier checkpoint; it goes on
/// when a test sends SIGCONT. Point: `before-checkpoint-commit` (every subtask acknowledged, the
/// coordinator about to commit).
pub fn pause_point(point: &str, checkpoint_id: u64) {
    static PAUSED: AtomicBool = AtomicBool::new(false);
    if reached(pause_target(), point, checkpoint_id) && !PAUSED.swap(true, Ordering::Relaxed) {
        eprintln!("WEIR_PAUSE_AT: pausing at {point}:{checkpoint_id}");
        signal_self(libc::SIGSTOP);
    }
}
