//! Asynchronous snapshot parts (`OperatorContext::snapshot_async`): work a checkpoint cannot
//! complete without runs off the task thread, before the checkpoint completes, and its failure
//! fails the checkpoint.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use weir::nexmark::{Event, NexmarkConfig, NexmarkSource};
use weir::prelude::*;

/// Passes nothing on; at every barrier hands the runtime a slow part that records its
/// checkpoint (or fails, from checkpoint `fail_from` on), and checks on completion that the
/// part of that checkpoint ran first.
struct SlowPart {
    ran: Arc<Mutex<BTreeSet<u64>>>,
    completed: Arc<Mutex<Vec<u64>>>,
    task_threads: Arc<Mutex<BTreeSet<String>>>,
    fail_from: u64,
}

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("?").to_string()
}

impl Operator for SlowPart {
    type In = Event;
    type Out = ();

    fn process(&mut self, _: Record<Event>, _: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        Ok(())
    }

    fn snapshot_state(&mut self, id: u64, ctx: &mut OperatorContext) -> Result<Option<Vec<u8>>> {
        self.task_threads.lock().unwrap().insert(thread_name());
        let (ran, fail) = (self.ran.clone(), id >= self.fail_from);
        let threads = self.task_threads.clone();
        ctx.snapshot_async(move || {
            // Slow enough that completing without waiting for it would be seen.
            std::thread::sleep(Duration::from_millis(100));
            if threads.lock().unwrap().contains(&thread_name()) {
                bail!("the asynchronous part ran on the task thread");
            }
            if fail {
                bail!("injected failure of the asynchronous part of checkpoint {id}");
            }
            ran.lock().unwrap().insert(id);
            Ok(())
        });
        Ok(None)
    }

    fn notify_checkpoint_complete(&mut self, id: u64, _: &mut OperatorContext) -> Result<()> {
        if !self.ran.lock().unwrap().contains(&id) {
            bail!("checkpoint {id} completed before its asynchronous part ran");
        }
        self.completed.lock().unwrap().push(id);
        Ok(())
    }
}

struct Run {
    result: Result<weir::runtime::JobResult>,
    ran: BTreeSet<u64>,
    completed: Vec<u64>,
}

fn run(fail_from: u64) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let ran = Arc::new(Mutex::new(BTreeSet::new()));
    let completed = Arc::new(Mutex::new(Vec::new()));
    let env = StreamEnv::new(JobArgs {
        parallelism: 2,
        progress_interval: Duration::ZERO,
        checkpoint_dir: Some(dir.path().join("chk").into()),
        checkpoint_interval: Some(Duration::from_millis(50)),
        tolerable_failed_checkpoints: 0,
        restart_attempts: 0,
        ..JobArgs::default()
    });
    let nexmark = NexmarkConfig { limit: Some(40_000), rate: Some(40_000), ..NexmarkConfig::default() };
    let (r, c) = (ran.clone(), completed.clone());
    let threads = Arc::new(Mutex::new(BTreeSet::new()));
    env.add_source("events", NexmarkSource::new(nexmark), WatermarkStrategy::no_watermarks())
        .uid("events")
        .transform("slow-part", move |_| SlowPart {
            ran: r.clone(),
            completed: c.clone(),
            task_threads: threads.clone(),
            fail_from,
        })
        .uid("slow-part");
    let result = env.execute("async-snapshot");
    let ran = ran.lock().unwrap().clone();
    let completed = completed.lock().unwrap().clone();
    Run { result, ran, completed }
}

#[test]
fn checkpoints_complete_after_their_asynchronous_parts_ran_off_the_task_thread() {
    let r = run(u64::MAX);
    r.result.unwrap();
    assert!(r.completed.len() >= 4, "several checkpoints in a 1 s job: {:?}", r.completed);
    for id in &r.completed {
        assert!(r.ran.contains(id), "checkpoint {id} completed without its part");
    }
}

#[test]
fn a_failed_asynchronous_part_fails_its_checkpoint() {
    let r = run(3);
    let err = format!("{:#}", r.result.expect_err("no checkpoint failure is tolerated"));
    assert!(err.contains("injected failure of the asynchronous part of checkpoint 3"), "{err}");
    assert!(r.completed.iter().all(|&id| id < 3), "checkpoint 3 or later completed: {:?}", r.completed);
    assert!(r.completed.contains(&2), "the checkpoints before the failing one completed: {:?}", r.completed);
}
