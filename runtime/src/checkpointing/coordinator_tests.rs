//! Unit tests of the checkpoint coordinator's rules, driven with made-up times.

use super::*;
use crossbeam_channel::unbounded;
use std::path::PathBuf;

const S: Duration = Duration::from_secs(1);

fn config() -> CheckpointConfig {
    CheckpointConfig {
        interval: Some(10 * S),
        min_pause: Duration::ZERO,
        timeout: 60 * S,
        tolerable_failures: 1,
        savepoint_dir: Some(Location::Local(PathBuf::from("/savepoints"))),
        retain: 3,
    }
}

/// A source with 1 subtask and a keyed operator with 2.
fn layout() -> JobLayout {
    JobLayout {
        job: "job".into(),
        max_parallelism: 128,
        operators: vec![("src".into(), "source".into(), 1), ("counts".into(), "counts".into(), 2)],
        source_subtasks: 1,
    }
}

fn stored(subtask: usize, new_bytes: u64, acked_at: Instant) -> StoredSubtask {
    StoredSubtask {
        snapshot: SubtaskSnapshot {
            subtask,
            key_groups: None,
            keyed_files: Vec::new(),
            operator_state: None,
            watermark: 7,
        },
        new_bytes,
        timing: SnapshotTiming { alignment_ms: subtask as f64, sync_ms: 1.0, acked_at },
        async_ms: 2.0,
    }
}

/// Stores the snapshots of all three subtasks of checkpoint `id`, the last one returning
/// the finalize step.
fn store_all(c: &mut CheckpointCoordinator, id: u64, at: Instant) -> Finalize {
    assert!(c.stored(id, 1, stored(1, 10, at)).is_none());
    assert!(c.stored(id, 0, stored(0, 5, at)).is_none());
    c.stored(id, 1, stored(0, 20, at)).expect("all three subtasks acknowledged")
}

#[test]
fn triggers_after_the_interval_one_checkpoint_at_a_time() {
    let t0 = Instant::now();
    let mut c = CheckpointCoordinator::new(config(), layout(), 5, t0);
    assert!(c.trigger(t0 + 9 * S).is_none(), "not before the interval");
    let b = c.trigger(t0 + 10 * S).expect("due");
    assert_eq!((b.id, b.savepoint, b.terminal), (5, false, false));
    assert!(c.trigger(t0 + 30 * S).is_none(), "one checkpoint in flight at a time");
    store_all(&mut c, 5, t0 + 11 * S);
    c.completed(5, None, 100, t0 + 12 * S).expect("pending");
    // The interval counts from trigger to trigger (as in Flink), not from the end.
    assert!(c.trigger(t0 + 19 * S).is_none());
    assert_eq!(c.trigger(t0 + 20 * S).map(|b| b.id), Some(6));
    // A checkpoint longer than the interval is followed as soon as it ends.
    store_all(&mut c, 6, t0 + 32 * S);
    assert!(c.trigger(t0 + 32 * S).is_none(), "one checkpoint in flight at a time");
    c.completed(6, None, 100, t0 + 33 * S).expect("pending");
    assert_eq!(c.trigger(t0 + 33 * S).map(|b| b.id), Some(7));
}

#[test]
fn the_minimum_pause_stretches_a_short_interval() {
    let t0 = Instant::now();
    let cfg = CheckpointConfig { interval: Some(S), min_pause: 5 * S, ..config() };
    let mut c = CheckpointCoordinator::new(cfg, layout(), 1, t0);
    assert!(c.trigger(t0 + 4 * S).is_none());
    assert!(c.trigger(t0 + 5 * S).is_some());
    store_all(&mut c, 1, t0 + 6 * S);
    c.completed(1, None, 100, t0 + 7 * S).expect("pending");
    // The interval passed long ago; the pause counts from the end.
    assert!(c.trigger(t0 + 11 * S).is_none());
    assert_eq!(c.trigger(t0 + 12 * S).map(|b| b.id), Some(2));
}

#[test]
fn a_fully_acknowledged_checkpoint_is_finalized_with_every_subtask_in_order() {
    let t0 = Instant::now();
    let mut c = CheckpointCoordinator::new(config(), layout(), 1, t0);
    c.trigger(t0 + 10 * S).expect("due");
    let f = store_all(&mut c, 1, t0 + 11 * S);
    assert_eq!(f.meta.checkpoint_id, 1);
    assert_eq!(f.meta.max_parallelism, 128);
    assert_eq!(f.savepoint_root, None);
    assert_eq!(f.retain, 3);
    let ops: Vec<(&str, usize, Vec<usize>)> = f
        .meta
        .operators
        .iter()
        .map(|o| (o.uid.as_str(), o.parallelism, o.subtasks.iter().map(|s| s.subtask).collect()))
        .collect();
    assert_eq!(ops, vec![("src", 1, vec![0]), ("counts", 2, vec![0, 1])]);
    let info = c.completed(1, None, 999, t0 + 13 * S).expect("pending");
    assert_eq!((info.status, info.size_bytes, info.incremental_bytes), ("completed", 999, 35));
    assert_eq!(info.duration_ms, 3000);
    assert_eq!(info.alignment_ms, 1.0, "the slowest subtask's alignment");
    let order: Vec<(&str, usize)> = info.subtasks.iter().map(|s| (s.operator.as_str(), s.subtask)).collect();
    assert_eq!(order, vec![("counts", 0), ("counts", 1), ("src", 0)]);
}

#[test]
fn late_snapshots_of_an_abandoned_checkpoint_are_not_wanted() {
    let t0 = Instant::now();
    let mut c = CheckpointCoordinator::new(config(), layout(), 1, t0);
    c.trigger(t0 + 10 * S).expect("due");
    assert!(c.wants(1));
    assert!(c.check_timeout(t0 + 70 * S).is_none(), "exactly the timeout is still in time");
    let info = c.check_timeout(t0 + 71 * S).expect("timed out");
    assert_eq!(info.status, "timed out");
    assert!(!c.wants(1));
    assert!(c.stored(1, 0, stored(0, 1, t0)).is_none());
    assert!(c.completed(1, None, 0, t0 + 72 * S).is_none(), "a stale completion records nothing");
}

#[test]
fn failures_in_a_row_beyond_the_tolerance_fail_the_job_and_a_completion_resets_them() {
    let t0 = Instant::now();
    let mut c = CheckpointCoordinator::new(config(), layout(), 1, t0);
    let mut at = t0;
    let mut fail = |c: &mut CheckpointCoordinator| {
        at += 20 * S;
        let id = c.trigger(at).expect("due").id;
        let info = c.failed(id, "disk full".into(), at).expect("pending");
        assert_eq!((info.status, info.error.as_deref()), ("failed", Some("disk full")));
    };
    fail(&mut c);
    assert!(c.failure_exceeded().is_none(), "one failure is tolerated");
    fail(&mut c);
    let e = c.failure_exceeded().expect("two in a row are not");
    assert!(e.to_string().contains("2 checkpoints in a row failed"), "{e}");
    assert!(e.to_string().ends_with("the last: checkpoint 2: disk full"), "{e}");
    let id = c.trigger(at + 20 * S).expect("due").id;
    store_all(&mut c, id, at + 21 * S);
    c.completed(id, None, 0, at + 21 * S);
    assert!(c.failure_exceeded().is_none());
}

#[test]
fn a_savepoint_request_triggers_at_once_and_is_answered_with_its_path() {
    let t0 = Instant::now();
    let mut c = CheckpointCoordinator::new(config(), layout(), 1, t0);
    let (tx, rx) = unbounded();
    c.request_savepoint(SavepointRequest { reply: tx });
    let b = c.trigger(t0).expect("a savepoint is due at once");
    assert!(b.savepoint && !b.terminal);
    let f = store_all(&mut c, b.id, t0 + S);
    assert_eq!(f.savepoint_root, Some(Location::Local(PathBuf::from("/savepoints"))));
    c.completed(b.id, Some("/savepoints/sp-1".to_string()), 0, t0 + S);
    assert_eq!(rx.try_recv().unwrap(), Ok("/savepoints/sp-1".to_string()));
}

#[test]
fn savepoints_without_a_savepoint_dir_are_refused_and_trigger_nothing() {
    let t0 = Instant::now();
    let cfg = CheckpointConfig { savepoint_dir: None, ..config() };
    let mut c = CheckpointCoordinator::new(cfg, layout(), 1, t0);
    let (tx, rx) = unbounded();
    c.request_savepoint(SavepointRequest { reply: tx });
    assert_eq!(rx.try_recv().unwrap(), Err(SAVEPOINTS_NEED.to_string()));
    assert!(c.trigger(t0).is_none());
}

#[test]
fn a_failed_savepoint_answers_its_request_with_the_error() {
    let t0 = Instant::now();
    let mut c = CheckpointCoordinator::new(config(), layout(), 1, t0);
    let (tx, rx) = unbounded();
    c.request_savepoint(SavepointRequest { reply: tx });
    let id = c.trigger(t0).expect("due").id;
    c.failed(id, "no space".into(), t0);
    assert_eq!(rx.try_recv().unwrap(), Err("no space".to_string()));
}

#[test]
fn when_every_source_ended_the_terminal_checkpoint_is_the_last() {
    let t0 = Instant::now();
    let mut c = CheckpointCoordinator::new(config(), layout(), 1, t0);
    c.source_ended();
    let b = c.trigger(t0 + S).expect("the terminal checkpoint does not wait for the interval");
    assert!(b.terminal && !b.savepoint);
    store_all(&mut c, b.id, t0 + S);
    c.completed(b.id, None, 0, t0 + S);
    assert!(c.trigger(t0 + 100 * S).is_none(), "nothing after the terminal checkpoint");
}

#[test]
fn a_stop_takes_a_terminal_savepoint() {
    let t0 = Instant::now();
    let mut c = CheckpointCoordinator::new(config(), layout(), 1, t0);
    assert!(c.request_stop());
    assert!(!c.request_stop(), "only the first request counts");
    let b = c.trigger(t0).expect("due at once");
    assert!(b.terminal && b.savepoint);
}

#[test]
fn a_terminal_checkpoint_that_failed_is_taken_again() {
    let t0 = Instant::now();
    let mut c = CheckpointCoordinator::new(config(), layout(), 1, t0);
    c.source_ended();
    let first = c.trigger(t0).expect("due").id;
    c.failed(first, "flaky disk".into(), t0);
    let again = c.trigger(t0).expect("the final checkpoint is retried");
    assert!(again.terminal);
    assert_eq!(again.id, first + 1, "ids are never reused");
}
