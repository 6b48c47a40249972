//! Runs a job: plans it, prepares its state directory and checkpoint storage, finds the snapshot
//! to restore, serves the control endpoint, and runs attempts until one finishes, restarting
//! from the latest checkpoint after a failure (with backoff, up to `--restart-attempts`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::unbounded;
use weir_checkpoint::{Chain, CheckpointStorage, Stale};

use crate::args::JobArgs;
use crate::attempt::{run_attempt, AttemptEnd, AttemptEnv};
use crate::checkpointing::restore::{check_restore, initial_restore, Restore};
use crate::control::{
    CheckpointInfo, ControlState, EdgeInfo, ExceptionInfo, JobInfo, OperatorInfo, RestoreInfo, SavepointRequest,
};
use crate::graph::Graph;
use crate::metrics::JobMetrics;
use crate::net::{Mesh, MeshConfig};
use crate::plan::{plan, sanitize};

/// What a finished job reports.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// Counters summed over subtasks, by `<uid>.<name>` (e.g. `window.late_records`).
    pub counters: BTreeMap<String, u64>,
    /// Wall time from start to the end of the last task.
    pub elapsed: Duration,
    /// The job's checkpoints (the last 100, as `/checkpoints` showed them), terminal one included.
    pub checkpoints: Vec<CheckpointInfo>,
    /// Bytes and records this process sent to other processes of the job (0 in one process).
    pub network_out: (u64, u64),
}

impl JobResult {
    /// A counter by full name, 0 if absent.
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

/// The directory under a job's state directory that mirrors its checkpoints on an object store.
const CHECKPOINT_MIRROR: &str = "_checkpoints";

/// Where a savepoint named by `--restore s3://...` is downloaded to, under the job's state directory.
const RESTORE_SCRATCH: &str = "_restore";

/// Names the process that owns a temporary state directory.
const OWNER_FILE: &str = "owner.pid";

/// Removes temporary state directories whose owning process is gone: a job killed with
/// SIGKILL cannot remove its own, and they would pile up in the temporary directory. Working
/// state is never needed after its process died (recovery reads checkpoints).
fn remove_stale_state_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for e in entries.flatten() {
        let path = e.path();
        if !e.file_name().to_string_lossy().starts_with("weir-state-") {
            continue;
        }
        let Some(pid) = std::fs::read_to_string(path.join(OWNER_FILE)).ok().and_then(|s| s.trim().parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let alive =
            unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => tracing::debug!(dir = %path.display(), pid, "removed the state of a dead job"),
                Err(e) => tracing::debug!(dir = %path.display(), error = %e, "could not remove a dead job's state"),
            }
        }
    }
}

/// What `/job` shows of the plan: operators with their tasks, edges with their partitioning.
fn job_info(plan: &crate::plan::Plan, job_name: &str) -> JobInfo {
    let operators = (0..plan.graph.nodes.len())
        .map(|i| OperatorInfo {
            uid: plan.uids[i].clone(),
            name: plan.graph.nodes[i].name.clone(),
            parallelism: plan.parallelism[i],
            task: plan.uids[plan.head_of[i]].clone(),
        })
        .collect();
    let edges = plan
        .graph
        .edges
        .iter()
        .enumerate()
        .map(|(i, e)| EdgeInfo {
            from: plan.uids[e.from].clone(),
            to: plan.uids[e.to].clone(),
            partition: match plan.partitions[i] {
                crate::graph::Partition::Forward | crate::graph::Partition::Default => "forward",
                crate::graph::Partition::Rebalance => "rebalance",
                crate::graph::Partition::Broadcast => "broadcast",
                crate::graph::Partition::Hash { .. } => "hash",
            },
            chained: plan.chained[i],
        })
        .collect();
    JobInfo { name: job_name.to_string(), operators, edges }
}

fn restore_info(r: &weir_checkpoint::LoadedSnapshot) -> RestoreInfo {
    RestoreInfo {
        time: crate::time::now_millis(),
        checkpoint_id: r.meta.checkpoint_id,
        kind: match r.meta.kind {
            weir_checkpoint::SnapshotKind::Checkpoint => "checkpoint",
            weir_checkpoint::SnapshotKind::Savepoint => "savepoint",
        },
        path: r.dir.display().to_string(),
    }
}

pub(crate) fn execute(graph: Graph, args: &JobArgs, job_name: &str) -> Result<JobResult> {
    let started = Instant::now();
    let plan = Arc::new(plan(graph, args)?);
    let (_tmp, state_root): (Option<tempfile::TempDir>, PathBuf) = match &args.state_dir {
        Some(dir) => (None, dir.join(sanitize(job_name))),
        None => {
            remove_stale_state_dirs(&std::env::temp_dir());
            let tmp = tempfile::Builder::new()
                .prefix("weir-state-")
                .tempdir()
                .context("creating a temporary state directory")?;
            let root = tmp.path().to_path_buf();
            // Whose it is, so that a later job can remove it if this process dies (kill -9)
            // before it could.
            std::fs::write(root.join(OWNER_FILE), std::process::id().to_string())?;
            (Some(tmp), root)
        }
    };
    std::fs::create_dir_all(&state_root)
        .with_context(|| format!("creating state directory {}", state_root.display()))?;
    let storage = match (&args.checkpoint_dir, args.checkpointing()) {
        // On an object store the job's files are mirrored locally beside its state, so that a
        // restart on this machine downloads only what it lacks.
        (Some(location), true) => {
            Some(CheckpointStorage::open(location, &sanitize(job_name), &state_root.join(CHECKPOINT_MIRROR))?)
        }
        _ => None,
    };
    let (mut restore, mut chain) = initial_restore(&args.restore, storage.as_ref(), &state_root.join(RESTORE_SCRATCH))?;
    if let Some(r) = &restore {
        check_restore(r, &plan.uids, plan.max_parallelism, args.allow_non_restored_state)?;
        tracing::info!(checkpoint = r.meta.checkpoint_id, path = %r.dir.display(), "restoring");
    }
    if let Some(s) = storage.as_ref().filter(|_| args.process_index == 0) {
        // Drops what a crashed run left behind: abandoned checkpoints and unreferenced shared files.
        // Only the coordinator (process 0) does: processes sharing the storage would race.
        s.retain(args.retained_checkpoints as usize)?;
    }
    let stop_signal = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // A second signal while stopping terminates at once.
        signal_hook::flag::register_conditional_shutdown(sig, 130, stop_signal.clone())?;
        signal_hook::flag::register(sig, stop_signal.clone())?;
    }
    let metrics = JobMetrics::default();
    let (savepoint_tx, savepoint_rx) = unbounded::<SavepointRequest>();
    let control = ControlState {
        metrics: metrics.clone(),
        job: Arc::new(job_info(&plan, job_name)),
        checkpoints: Default::default(),
        savepoints: savepoint_tx,
        started: Instant::now(),
        exceptions: Default::default(),
        restore: Default::default(),
        token: args.control_token.as_deref().map(Arc::from),
    };
    if let Some(r) = &restore {
        *control.restore.lock() = Some(restore_info(r));
    }
    let addr = crate::control::start(&args.metrics_addr, control.clone())?;
    tracing::info!("control endpoint on http://{addr}");
    let peers = args.peer_addresses()?;
    let mesh = match peers.is_empty() {
        true => None,
        false => Some(Mesh::new(MeshConfig {
            job: job_name.to_string(),
            index: args.process_index as usize,
            peers,
            listen: args.listen.clone(),
            fingerprint: plan.fingerprint(args),
            restore: restore.as_ref().map(|r| r.meta.checkpoint_id),
            peer_timeout: args.peer_timeout,
            connect_timeout: args.connect_timeout,
        })?),
    };
    let attempt_env = AttemptEnv {
        plan: &plan,
        args,
        job_name,
        state_root: &state_root,
        storage: storage.as_ref(),
        control: &control,
        savepoints: &savepoint_rx,
        stop_signal: &stop_signal,
        mesh: mesh.as_ref(),
    };
    let mut attempt = 0u32;
    loop {
        let shared = restore.take().map(|snapshot| Arc::new(Restore { snapshot }));
        let end = run_attempt(&attempt_env, shared.clone(), chain.clone())?;
        match end {
            AttemptEnd::Finished => break,
            AttemptEnd::Failed(e) => {
                // Several processes fail together (fail-stop) and restart together, from outside
                // (Kubernetes, the launcher): one process alone cannot restart its part.
                // A stale run stops: restarting it would only make it compete with its successor.
                let stale = e.chain().any(|c| c.is::<Stale>());
                let can_restart = storage.is_some() && attempt < args.restart_attempts && mesh.is_none() && !stale;
                control.exceptions.lock().push(ExceptionInfo {
                    time: crate::time::now_millis(),
                    errors: e.chain().map(|c| c.to_string()).collect(),
                    restarting: can_restart,
                    attempt: attempt + 1,
                });
                if !can_restart {
                    tracing::error!(error = format!("{e:#}"), "job '{job_name}' failed");
                    return Err(e.context(format!("job '{job_name}' failed")));
                }
                attempt += 1;
                let delay = args.restart_delay.saturating_mul(1 << (attempt - 1).min(16)).min(Duration::from_secs(60));
                tracing::warn!(
                    error = format!("{e:#}"),
                    attempt,
                    delay_ms = delay.as_millis() as u64,
                    "job failed; restarting from the latest checkpoint"
                );
                std::thread::sleep(delay);
                // (`can_restart` holds only with storage.)
                if let Some(st) = storage.as_ref() {
                    (restore, chain) = match st.restore_point()? {
                        (Some(latest), chain) => (Some(latest), chain),
                        // Nothing completed since the start: from the start again, in a new chain.
                        (None, _) => (shared.map(|r| r.snapshot.clone()), Chain::after(st.max_id()?)),
                    };
                    if let Some(r) = &restore {
                        *control.restore.lock() = Some(restore_info(r));
                    }
                }
            }
        }
    }
    let checkpoints = control.checkpoints.lock().clone();
    let network_out = metrics
        .channels()
        .iter()
        .filter(|(k, _)| k.direction == "out" && k.process == args.process_index as usize)
        .fold((0, 0), |(b, r), (_, [bytes, records, _])| (b + bytes, r + records));
    let result = JobResult { counters: metrics.counters(), elapsed: started.elapsed(), checkpoints, network_out };
    tracing::info!(elapsed_ms = result.elapsed.as_millis() as u64, "job '{job_name}' finished");
    Ok(result)
}
