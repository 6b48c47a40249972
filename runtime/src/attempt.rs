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
use weir_checkpoint::{Chain, CheckpointStorage};

use crate::args::JobArgs;
use crate::checkpointing::coordinator::{
    CheckpointConfig, CheckpointCoordinator, Finalize, JobLayout, StoredSubtask, SAVEPOINTS_NEED,
};
use crate::checkpointing::io::{io_thread, IoDone, IoJob};
use crate::checkpointing::peers::{PeerMsg, Peers};
use crate::checkpointing::restore::SharedRestore;
use crate::checkpointing::{SnapshotTiming, TaskEvent};
use crate::control::{ControlState, SavepointRequest};
use crate::element::CheckpointBarrier;
use crate::error::is_cancelled;
use crate::launch::{launch, LaunchEnv, Tasks};
use crate::net::Mesh;
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
    /// The other processes of the job, if it runs as several.
    pub mesh: Option<&'a Mesh>,
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
    chain: Chain,
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
        .spawn(move || io_thread(st, run, known, chain, jobs, done))?)
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

/// What the attempt loop carries between events.
struct Run<'a> {
    env: &'a AttemptEnv<'a>,
    tasks: Tasks,
    /// The checkpoint coordinator: in this process if checkpointing and it is process 0.
    coord: Option<CheckpointCoordinator>,
    /// The other processes' control plane, if the job runs as several.
    peers: Option<Peers<'a>>,
    io: Sender<IoJob>,
    failure: Failure,
    stop_requested: bool,
    /// When this process last sent its metrics to process 0.
    metrics_sent: Instant,
}

impl Run<'_> {
    /// Triggers a checkpoint if one is due (coordinator only).
    fn maybe_trigger(&mut self) -> Result<()> {
        let Some(c) = self.coord.as_mut().filter(|_| !self.failure.torn_down) else { return Ok(()) };
        if self.env.stop_signal.load(Ordering::Relaxed) && c.request_stop() {
            self.stop_requested = true;
            tracing::info!("stop requested: taking a final savepoint");
        }
        if let Some(barrier) = c.trigger(Instant::now()) {
            if let Some(st) = self.env.storage {
                st.reserve(barrier.id)?;
            }
            self.inject(barrier);
            if let Some(p) = &self.peers {
                if let Err(e) = p.to_all(&PeerMsg::Trigger(barrier)) {
                    self.failure.fail(e, &self.tasks);
                }
            }
        }
        Ok(())
    }

    fn inject(&self, barrier: CheckpointBarrier) {
        for s in &self.tasks.source_controls {
            let _ = s.send(Control::Trigger(barrier));
        }
    }

    /// Sends a message to the coordinator; failing to is the job's failure.
    fn tell_coordinator(&mut self, msg: PeerMsg) {
        if let Some(Err(e)) = self.peers.as_ref().map(|p| p.to_coordinator(&msg)) {
            self.failure.fail(e, &self.tasks);
        }
    }

    fn on_task_event(&mut self, ev: TaskEvent) {
        match ev {
            TaskEvent::SourceEnded => match self.coord.as_mut() {
                Some(c) => c.source_ended(),
                None => self.tell_coordinator(PeerMsg::SourceEnded),
            },
            TaskEvent::Ack { id, node, subtask, snapshot } => {
                // Another process's coordinator decides what it wants; it ignores late snapshots.
                let wanted =
                    self.coord.as_ref().map_or(self.peers.is_some(), |c| c.wants(id)) && !self.failure.torn_down;
                let uid = self.env.plan.uids[node].clone();
                let job = match wanted {
                    true => IoJob::Upload { id, node, uid, subtask, snapshot },
                    false => IoJob::Discard { snapshot },
                };
                let _ = self.io.send(job);
            }
        }
    }

    fn on_io_done(&mut self, done: IoDone) {
        match (self.coord.as_mut(), done) {
            (_, IoDone::Stale(stale)) => self.failure.fail(anyhow::Error::new(stale), &self.tasks),
            (Some(c), done) => on_io_done(c, done, &self.io, &self.tasks, self.env.control, self.peers.as_ref()),
            (None, IoDone::Uploaded { id, node, snapshot, new_bytes, timing, async_ms }) => {
                let (alignment_ms, sync_ms) = (timing.alignment_ms, timing.sync_ms);
                self.tell_coordinator(PeerMsg::Stored {
                    id,
                    node,
                    snapshot,
                    new_bytes,
                    alignment_ms,
                    sync_ms,
                    async_ms,
                })
            }
            (None, IoDone::Failed { id, error }) => self.tell_coordinator(PeerMsg::Failed { id, error }),
            (None, IoDone::Finalized { .. }) => {}
        }
    }

    fn on_peer_message(&mut self, from: usize, bytes: &[u8]) {
        let msg = match Peers::decode(from, bytes) {
            Ok(m) => m,
            Err(e) => return self.failure.fail(e, &self.tasks),
        };
        if self.failure.torn_down {
            return;
        }
        match (msg, self.coord.as_mut()) {
            (PeerMsg::Metrics(view), _) if self.peers.as_ref().is_some_and(Peers::is_coordinator) => {
                self.env.control.metrics.set_remote(from, *view)
            }
            (PeerMsg::Trigger(barrier), None) => self.inject(barrier),
            (PeerMsg::Complete(id), None) => self.tasks.broadcast(Control::Complete(id)),
            (PeerMsg::SourceEnded, Some(c)) => c.source_ended(),
            (PeerMsg::Stored { id, node, snapshot, new_bytes, alignment_ms, sync_ms, async_ms }, Some(_)) => {
                let timing = SnapshotTiming { alignment_ms, sync_ms, acked_at: Instant::now() };
                self.on_io_done(IoDone::Uploaded { id, node, snapshot, new_bytes, timing, async_ms })
            }
            (PeerMsg::Failed { id, error }, Some(_)) => self.on_io_done(IoDone::Failed { id, error }),
            (msg, _) => self.failure.fail(anyhow!("process {from} sent {msg:?} to the wrong process"), &self.tasks),
        }
    }

    /// Sends this process's metrics to process 0 once a second (other processes only).
    fn report_metrics(&mut self) {
        let Some(p) = self.peers.as_ref().filter(|p| !p.is_coordinator()) else { return };
        if self.metrics_sent.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.metrics_sent = Instant::now();
        // Best effort: a lost connection fails the job through the mesh anyway.
        let _ = p.to_coordinator(&PeerMsg::Metrics(Box::new(self.env.control.metrics.view())));
    }

    fn check_coordinator(&mut self) {
        let Some(c) = self.coord.as_mut().filter(|_| !self.failure.torn_down) else { return };
        if let Some(info) = c.check_timeout(Instant::now()) {
            self.env.control.record(info);
        }
        if let Some(e) = c.failure_exceeded() {
            self.failure.fail(e, &self.tasks);
        }
    }
}

/// Runs the job's tasks once, from `restore` if given.
///
/// `chain` is where the checkpoints this attempt commits continue from (see
/// [`weir_checkpoint::commit`]).
pub(crate) fn run_attempt(env: &AttemptEnv<'_>, restore: SharedRestore, chain: Chain) -> Result<AttemptEnd> {
    let (plan, args, control) = (env.plan, env.args, env.control);
    let launch_env = LaunchEnv {
        args,
        job_name: env.job_name,
        state_root: env.state_root,
        restore: restore.clone(),
        metrics: &control.metrics,
        checkpointing: env.storage.is_some(),
        mesh: env.mesh,
    };
    let tasks = launch(plan, launch_env)?;
    let source_uids = plan.sources().map(|n| plan.uids[n].clone()).collect();
    let sampler = Sampler::start(control.clone(), source_uids, args.progress_interval)?;

    let (io_tx, io_rx) = unbounded::<IoJob>();
    let (done_tx, mut done_rx) = unbounded::<IoDone>();
    let peers = env.mesh.map(Peers::new);
    let coordinating = peers.as_ref().is_none_or(Peers::is_coordinator);
    let (io, coord) = match env.storage {
        Some(st) => (
            Some(start_io(plan, st, &restore, chain, io_rx, done_tx)?),
            coordinating.then(|| coordinator(env, st, &restore)).transpose()?,
        ),
        None => (None, None),
    };
    let mut events_rx = tasks.events.clone();
    let mut peer_failures = env.mesh.map_or_else(crossbeam_channel::never, |m| m.failures().clone());
    let mut peer_control = env.mesh.map_or_else(crossbeam_channel::never, |m| m.control().clone());
    let mut run = Run {
        env,
        tasks,
        coord,
        peers,
        io: io_tx,
        failure: Failure::default(),
        stop_requested: false,
        metrics_sent: Instant::now(),
    };
    let mut done = 0;
    while done < run.tasks.handles.len() {
        run.maybe_trigger()?;
        crossbeam_channel::select! {
            recv(run.tasks.exits) -> exit => {
                let Ok(exit) = exit else {
                    run.failure.first.get_or_insert(anyhow!("internal error: task exits lost"));
                    break;
                };
                done += 1;
                if let Err(e) = exit.result {
                    run.failure.task_failed(&exit.label, e, &run.tasks);
                }
            }
            // The control plane keeps its sender for the life of the job.
            recv(env.savepoints) -> req => if let Ok(req) = req {
                match run.coord.as_mut() {
                    Some(c) => c.request_savepoint(req),
                    None if run.peers.is_some() => {
                        let _ = req.reply.send(Err("savepoints are taken by process 0's control endpoint".into()));
                    }
                    None => { let _ = req.reply.send(Err(SAVEPOINTS_NEED.into())); }
                }
            },
            recv(events_rx) -> ev => match ev {
                Ok(ev) => run.on_task_event(ev),
                // Every task is gone (or checkpointing is off): stop selecting on it.
                Err(_) => events_rx = crossbeam_channel::never(),
            },
            recv(done_rx) -> d => match d {
                Ok(d) => run.on_io_done(d),
                Err(_) => done_rx = crossbeam_channel::never(),
            },
            recv(peer_control) -> m => match m {
                Ok((from, bytes)) => run.on_peer_message(from, &bytes),
                Err(_) => peer_control = crossbeam_channel::never(),
            },
            recv(peer_failures) -> e => match e {
                Ok(e) => run.failure.fail(e, &run.tasks),
                Err(_) => peer_failures = crossbeam_channel::never(),
            },
            default(Duration::from_millis(20)) => {}
        }
        run.check_coordinator();
        run.report_metrics();
        if run.failure.deadline.is_some_and(|d| Instant::now() > d) {
            run.failure.first.get_or_insert(anyhow!("tasks did not stop within 10 s after the job failed"));
            break;
        }
        let checkpointing = env.storage.is_some();
        if !checkpointing && env.stop_signal.load(Ordering::Relaxed) && !run.failure.torn_down {
            tracing::info!("stop requested; checkpointing is off, so the job is cancelled");
            run.failure.tear_down(&run.tasks);
            run.stop_requested = true;
        }
    }
    let Run { tasks, failure, stop_requested, io: io_tx, .. } = run;
    drop(io_tx);
    drop(sampler);
    let checkpointing = env.storage.is_some();
    if let Some(e) = failure.first.or(failure.secondary) {
        // A task reports its exit just before its thread ends; the next attempt may reopen the
        // same RocksDB directories only once every thread of this one is gone.
        let stopped = join_within(tasks.handles, TEAR_DOWN_GRACE);
        // The I/O thread finishes what it was given (a commit under way ends as committed or
        // refused, never half-seen by the next attempt's restore); a long upload is not waited for.
        if let Some(io) = io {
            if !join_within(vec![io], TEAR_DOWN_GRACE) {
                tracing::warn!("the checkpoint I/O thread did not stop within 10 s after the job failed");
            }
        }
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
    if let Some(m) = env.mesh {
        m.close();
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
fn on_io_done(
    c: &mut CheckpointCoordinator,
    done: IoDone,
    io: &Sender<IoJob>,
    tasks: &Tasks,
    control: &ControlState,
    peers: Option<&Peers>,
) {
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
            if let Some(p) = peers {
                // A process that misses this fails with its connection; its sinks' pending
                // output is then committed by the restored run.
                let _ = p.to_all(&PeerMsg::Complete(id));
            }
        }
        IoDone::Failed { id, error } => {
            if let Some(info) = c.failed(id, error, Instant::now()) {
                control.record(info);
            }
        }
        IoDone::Stale(_) => {}
    }
}
