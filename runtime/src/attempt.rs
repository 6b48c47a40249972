//! One attempt to run the job: starts the tasks, the checkpoint I/O thread and the sampler, then
//! drives the checkpoint coordinator from what the tasks and the I/O thread report until every
//! task ended, or tears the job down on the first failure.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use crossbeam_channel::{unbounded, Receiver, Sender};
use weir_checkpoint::CheckpointStorage;

use crate::args::JobArgs;
use crate::checkpointing::coordinator::{
    CheckpointConfig, CheckpointCoordinator, Finalize, JobLayout, StoredSubtask, SAVEPOINTS_NEED,
};
use crate::checkpointing::io::{io_thread, IoDone, IoJob};
use crate::checkpointing::restore::SharedRestore;
use crate::checkpointing::TaskEvent;
use crate::control::{ControlState, SavepointRequest};
use crate::error::is_cancelled;
use crate::launch::{launch, LaunchEnv, Tasks};
use crate::plan::{sanitize, Plan};
use crate::progress::Sampler;
use crate::task::Control;

/// How one attempt ended.
pub(crate) enum AttemptEnd {
    Finished,
    Failed(anyhow::Error),
}

/// What an attempt runs against; the same for every attempt of a job.
pub(crate) struct AttemptEnv<'a> {
    pub plan: &'a Arc<Plan>,
    pub args: &'a JobArgs,
    pub job_name: &'a str,
    pub state_root: &'a Path,
    pub storage: Option<&'a CheckpointStorage>,
    pub control: &'a ControlState,
    pub savepoints: &'a Receiver<SavepointRequest>,
    pub stop_signal: &'a Arc<AtomicBool>,
}

/// How long tasks get to stop after the job failed.
const TEAR_DOWN_GRACE: Duration = Duration::from_secs(10);

/// The first failure of an attempt, and how far tear-down got.
#[derive(Default)]
struct Failure {
    /// The cause: the first error that is not a cancellation.
    first: Option<anyhow::Error>,
    /// A cancellation seen before any cause (a task that stopped because another one failed).
    secondary: Option<anyhow::Error>,
    torn_down: bool,
    deadline: Option<Instant>,
}

impl Failure {
    /// Cancels every task once, and gives them the grace period to stop.
    fn tear_down(&mut self, tasks: &Tasks) {
        if !self.torn_down {
            self.torn_down = true;
            tasks.cancel_all();
            self.deadline = Some(Instant::now() + TEAR_DOWN_GRACE);
        }
    }

    fn task_failed(&mut self, label: &str, e: anyhow::Error, tasks: &Tasks) {
        let first = self.first.is_none() && self.secondary.is_none();
        if is_cancelled(&e) {
            self.secondary.get_or_insert(e.context(format!("task {label}")));
        } else if self.first.is_none() {
            self.first = Some(e);
        }
        if first {
            self.tear_down(tasks);
        }
    }

    fn fail(&mut self, e: anyhow::Error, tasks: &Tasks) {
        if self.first.is_none() {
            self.first = Some(e);
            self.tear_down(tasks);
        }
    }
}

/// Starts the checkpoint I/O thread, seeded with the files a restored snapshot already stored.
fn start_io(
    plan: &Plan,
    storage: &CheckpointStorage,
    restore: &SharedRestore,
    jobs: Receiver<IoJob>,
    done: Sender<IoDone>,
) -> Result<JoinHandle<()>> {
    let parallelism_of = |uid: &str| plan.uids.iter().position(|u| u == uid).map(|n| plan.parallelism[n]);
    let known = restore.as_ref().map(|r| r.known_files(storage, parallelism_of)).unwrap_or_default();
    // Names this run's new shared files apart from those of earlier runs.
    let run = format!(
        "{:x}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0)
    );
    let st = storage.clone();
    Ok(std::thread::Builder::new()
        .name("weir-checkpoint-io".into())
        .spawn(move || io_thread(st, run, known, jobs, done))?)
}

fn coordinator(
    env: &AttemptEnv<'_>,
    storage: &CheckpointStorage,
    restore: &SharedRestore,
) -> Result<CheckpointCoordinator> {
    let (plan, args) = (env.plan, env.args);
    let config = CheckpointConfig {
        interval: args.checkpoint_interval,
        min_pause: args.min_pause,
        timeout: args.checkpoint_timeout,
        tolerable_failures: args.tolerable_failed_checkpoints,
        savepoint_dir: args.savepoint_dir.clone(),
        retain: args.retained_checkpoints as usize,
    };
    let layout = JobLayout {
        job: sanitize(env.job_name),
        max_parallelism: plan.max_parallelism,
        operators: (0..plan.graph.nodes.len())
            .map(|n| (plan.uids[n].clone(), plan.graph.nodes[n].name.clone(), plan.parallelism[n]))
            .collect(),
        source_subtasks: plan.sources().map(|n| plan.parallelism[n]).sum(),
    };
    // Ids only grow, over restarts and restores from older snapshots alike.
    let first_id = storage.max_id()?.max(restore.as_ref().map_or(0, |r| r.snapshot.meta.checkpoint_id)) + 1;
    Ok(CheckpointCoordinator::new(config, layout, first_id, Instant::now()))
}

/// Runs the job's tasks once, from `restore` if given.
pub(crate) fn run_attempt(env: &AttemptEnv<'_>, restore: SharedRestore) -> Result<AttemptEnd> {
    let (plan, args, control) = (env.plan, env.args, env.control);
    let launch_env = LaunchEnv {
        args,
        job_name: env.job_name,
        state_root: env.state_root,
        restore: restore.clone(),
        metrics: &control.metrics,
        checkpointing: env.storage.is_some(),
    };
    let tasks = launch(plan, launch_env)?;
    let source_uids = plan.sources().map(|n| plan.uids[n].clone()).collect();
    let sampler = Sampler::start(control.clone(), source_uids, args.progress_interval)?;

    let (io_tx, io_rx) = unbounded::<IoJob>();
    let (done_tx, mut done_rx) = unbounded::<IoDone>();
    let (io, mut coord) = match env.storage {
        Some(st) => (Some(start_io(plan, st, &restore, io_rx, done_tx)?), Some(coordinator(env, st, &restore)?)),
        None => (None, None),
    };
    let mut events_rx = tasks.events.clone();
    let mut failure = Failure::default();
    let mut stop_requested = false;
    let mut done = 0;
    while done < tasks.handles.len() {
        if let Some(c) = coord.as_mut().filter(|_| !failure.torn_down) {
            if env.stop_signal.load(Ordering::Relaxed) && c.request_stop() {
                stop_requested = true;
                tracing::info!("stop requested: taking a final savepoint");
            }
            if let Some(barrier) = c.trigger(Instant::now()) {
                if let Some(st) = env.storage {
                    st.reserve(barrier.id)?;
                }
                for s in &tasks.source_controls {
                    let _ = s.send(Control::Trigger(barrier));
                }
            }
        }
        crossbeam_channel::select! {
            recv(tasks.exits) -> exit => {
                let Ok(exit) = exit else {
                    failure.first.get_or_insert(anyhow!("internal error: task exits lost"));
                    break;
                };
                done += 1;
                if let Err(e) = exit.result {
                    failure.task_failed(&exit.label, e, &tasks);
                }
            }
            // The control plane keeps its sender for the life of the job.
            recv(env.savepoints) -> req => if let Ok(req) = req {
                match coord.as_mut() {
                    Some(c) => c.request_savepoint(req),
                    None => { let _ = req.reply.send(Err(SAVEPOINTS_NEED.into())); }
                }
            },
            recv(events_rx) -> ev => match ev {
                Ok(TaskEvent::SourceEnded) => { if let Some(c) = coord.as_mut() { c.source_ended() } }
                Ok(TaskEvent::Ack { id, node, subtask, snapshot }) => {
                    let wanted = coord.as_ref().is_some_and(|c| c.wants(id)) && !failure.torn_down;
                    let job = match wanted {
                        true => IoJob::Upload { id, node, uid: plan.uids[node].clone(), subtask, snapshot },
                        false => IoJob::Discard { snapshot },
                    };
                    let _ = io_tx.send(job);
                }
                // Every task is gone (or checkpointing is off): stop selecting on it.
                Err(_) => events_rx = crossbeam_channel::never(),
            },
            recv(done_rx) -> d => match (d, coord.as_mut()) {
                (Ok(done), Some(c)) => on_io_done(c, done, &io_tx, &tasks, control),
                _ => done_rx = crossbeam_channel::never(),
            },
            default(Duration::from_millis(20)) => {}
        }
        if let Some(c) = coord.as_mut().filter(|_| !failure.torn_down) {
            if let Some(info) = c.check_timeout(Instant::now()) {
                control.record(info);
            }
            if let Some(e) = c.failure_exceeded() {
                failure.fail(e, &tasks);
            }
        }
        if failure.deadline.is_some_and(|d| Instant::now() > d) {
            failure.first.get_or_insert(anyhow!("tasks did not stop within 10 s after the job failed"));
            break;
        }
        if coord.is_none() && env.stop_signal.load(Ordering::Relaxed) && !failure.torn_down {
            tracing::info!("stop requested; checkpointing is off, so the job is cancelled");
            failure.tear_down(&tasks);
            stop_requested = true;
        }
    }
    drop(io_tx);
    drop(sampler);
    let checkpointing = coord.is_some();
    if let Some(e) = failure.first.or(failure.secondary) {
        // A task reports its exit just before its thread ends; the next attempt may reopen the
        // same RocksDB directories only once every thread of this one is gone.
        let stopped = join_within(tasks.handles, TEAR_DOWN_GRACE);
        if stop_requested && !checkpointing && is_cancelled(&e) {
            return Ok(AttemptEnd::Finished);
        }
        if !stopped {
            return Err(e.context("task threads did not stop within 10 s after the job failed"));
        }
        return Ok(AttemptEnd::Failed(e));
    }
    tasks.handles.into_iter().for_each(|h| drop(h.join()));
    if let Some(io) = io {
        let _ = io.join();
    }
    Ok(AttemptEnd::Finished)
}

/// Joins `handles`, waiting at most `grace` for them to finish; false if some did not.
fn join_within(handles: Vec<std::thread::JoinHandle<()>>, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    while handles.iter().any(|h| !h.is_finished()) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    handles.into_iter().for_each(|h| drop(h.join()));
    true
}

/// Carries out what the I/O thread reports: finalize a fully stored checkpoint, record a
/// completed or failed one, and tell the tasks of a completion.
fn on_io_done(c: &mut CheckpointCoordinator, done: IoDone, io: &Sender<IoJob>, tasks: &Tasks, control: &ControlState) {
    match done {
        IoDone::Uploaded { id, node, snapshot, new_bytes, timing, async_ms } => {
            let stored = StoredSubtask { snapshot, new_bytes, timing, async_ms };
            if let Some(Finalize { meta, savepoint_root, retain }) = c.stored(id, node, stored) {
                let _ = io.send(IoJob::Finalize { meta, savepoint_root, retain });
            }
        }
        IoDone::Finalized { id, savepoint, bytes } => {
            crate::fault::crash_point("after-checkpoint-complete", id);
            if let Some(info) = c.completed(id, savepoint, bytes, Instant::now()) {
                control.record(info);
            }
            tasks.broadcast(Control::Complete(id));
        }
        IoDone::Failed { id, error } => {
            if let Some(info) = c.failed(id, error, Instant::now()) {
                control.record(info);
            }
        }
    }
}
