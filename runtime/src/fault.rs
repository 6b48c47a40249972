//! Named crash points for tests: `WEIR_CRASH_AT=<point>:<checkpoint id>` kills the process with
//! SIGKILL the first time execution reaches that point for that checkpoint or a later one, so
//! recovery can be tested at the most delicate moments. Unset (always, outside tests) it costs one relaxed load.
//!
//! Points: `mid-snapshot` (a task took its local snapshot but has not acknowledged it),
//! `after-checkpoint-complete` (metadata written, tasks not yet notified), `before-sink-commit`
//! and `mid-sink-commit` (in the exactly-once file sink's commit of that epoch), `mid-publish`
//! (the Kafka exactly-once-publish sink published the first record of that epoch).

use std::sync::OnceLock;

fn target() -> &'static Option<(String, u64)> {
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    TARGET.get_or_init(|| {
        let v = std::env::var("WEIR_CRASH_AT").ok()?;
        let (point, id) = v.rsplit_once(':')?;
        Some((point.to_string(), id.parse().ok()?))
    })
}

/// Kills the process if `WEIR_CRASH_AT` names this point and this or an earlier checkpoint.
pub fn crash_point(point: &str, checkpoint_id: u64) {
    if let Some((p, id)) = target() {
        if p == point && *id <= checkpoint_id {
            eprintln!("WEIR_CRASH_AT: crashing at {point}:{checkpoint_id}");
            // SAFETY: sending SIGKILL to our own process has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}
