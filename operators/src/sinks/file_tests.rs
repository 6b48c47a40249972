//! The file sink's two-phase commit driven in-process by the operator test harness: nothing is
//! visible before its checkpoint completes, a restore finishes the commits a crash interrupted
//! and removes what was written after the snapshot, and a rescaled restore finishes every old
//! subtask's commits exactly once.

use std::path::Path;

use weir_runtime::testing::{HarnessConfig, OperatorHarness};
use weir_runtime::TaskInfo;

use super::file::FileSink;

fn config(subtask: usize, parallelism: usize) -> HarnessConfig {
    HarnessConfig::subtask(subtask, parallelism)
}

fn info(c: &HarnessConfig) -> TaskInfo {
    c.task_info("sink")
}

fn sink(dir: &Path, c: HarnessConfig) -> OperatorHarness<i64, ()> {
    OperatorHarness::with_config(FileSink::<i64>::json_lines(dir).operator(&info(&c)), c).unwrap()
}

fn restored(dir: &Path, c: HarnessConfig, states: Vec<Vec<u8>>, checkpoint: u64) -> OperatorHarness<i64, ()> {
    OperatorHarness::restored(FileSink::<i64>::json_lines(dir).operator(&info(&c)), c, states, checkpoint).unwrap()
}

/// Visible part files and their values, and the names of hidden files.
fn listing(dir: &Path) -> (Vec<(String, Vec<i64>)>, Vec<String>) {
    let mut visible = Vec::new();
    let mut hidden = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            hidden.push(name);
        } else {
            let text = std::fs::read_to_string(dir.join(&name)).unwrap();
            visible.push((name, text.lines().map(|l| l.parse().unwrap()).collect()));
        }
    }
    visible.sort();
    hidden.sort();
    (visible, hidden)
}

fn write(h: &mut OperatorHarness<i64, ()>, values: &[i64]) {
    for &v in values {
        h.process(v).unwrap();
    }
}

#[test]
fn output_becomes_visible_only_when_its_checkpoint_completes() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = sink(dir.path(), config(0, 1));
    write(&mut h, &[1, 2, 3]);
    h.snapshot(1).unwrap();
    write(&mut h, &[4]);
    let (visible, hidden) = listing(dir.path());
    assert!(visible.is_empty(), "nothing is visible before checkpoint 1 completes: {visible:?}");
    assert_eq!(hidden.len(), 2, "the closed file of checkpoint 1 and the open one: {hidden:?}");
    h.notify_complete(1).unwrap();
    let (visible, hidden) = listing(dir.path());
    assert_eq!(visible, vec![("part-00000-000001.jsonl".to_string(), vec![1, 2, 3])]);
    assert_eq!(hidden.len(), 1, "the record after the barrier waits for checkpoint 2");
}

#[test]
fn a_restore_commits_what_a_crash_left_pending_and_drops_what_came_after_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = sink(dir.path(), config(0, 1));
    write(&mut h, &[1, 2]);
    let snapshot = h.snapshot(1).unwrap();
    // Checkpoint 1 completes, but the process dies before the sink commits, and after it wrote
    // records of the next epoch.
    write(&mut h, &[3]);
    // Once a second the open file is flushed, so the later record is on disk when the process dies.
    h.processing_time(weir_runtime::now_millis() + 10_000).unwrap();
    drop(h);
    let state = snapshot.operator_state.expect("the sink keeps its pending files in its state");

    let mut r = restored(dir.path(), config(0, 1), vec![state], 1);
    let (visible, hidden) = listing(dir.path());
    assert_eq!(visible, vec![("part-00000-000001.jsonl".to_string(), vec![1, 2])]);
    assert!(hidden.is_empty(), "the in-progress file after the snapshot is gone: {hidden:?}");
    // The replayed record goes to a new file, never to a name used before.
    write(&mut r, &[3]);
    r.snapshot(2).unwrap();
    r.notify_complete(2).unwrap();
    let (visible, _) = listing(dir.path());
    assert_eq!(visible.len(), 2);
    assert_eq!(visible[1], ("part-00000-000002.jsonl".to_string(), vec![3]));
}

#[test]
fn a_commit_repeated_by_a_restore_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = sink(dir.path(), config(0, 1));
    write(&mut h, &[7]);
    let state = h.snapshot(1).unwrap().operator_state.unwrap();
    h.notify_complete(1).unwrap();
    let before = listing(dir.path());
    drop(h);
    restored(dir.path(), config(0, 1), vec![state], 1);
    assert_eq!(listing(dir.path()), before);
}

#[test]
fn after_a_rescale_each_old_subtasks_pending_files_are_committed_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut states = Vec::new();
    for s in 0..2 {
        let mut h = sink(dir.path(), config(s, 2));
        write(&mut h, &[10 * s as i64, 10 * s as i64 + 1]);
        states.push(h.snapshot(1).unwrap().operator_state.unwrap());
    }
    // Scaled to 3, old subtask s goes to new subtask s: subtask 2 inherits nothing to commit.
    restored(dir.path(), config(2, 3), states.clone(), 1);
    assert!(listing(dir.path()).0.is_empty(), "subtask 2 of 3 inherits no old subtask");
    // Scaled to 1, both old subtasks' states reach the one new subtask.
    restored(dir.path(), config(0, 1), states, 1);
    let (visible, hidden) = listing(dir.path());
    assert_eq!(
        visible,
        vec![
            ("part-00000-000001.jsonl".to_string(), vec![0, 1]),
            ("part-00001-000001.jsonl".to_string(), vec![10, 11])
        ]
    );
    assert!(hidden.is_empty());
}
