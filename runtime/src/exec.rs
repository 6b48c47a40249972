//! Turns a job graph into running tasks: resolves parallelism and partitioning, chains operators,
//! wires bounded channels, runs one thread per task and tears the job down on the first failure.

use std::collections::{BTreeMap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::args::JobArgs;
use crate::checkpointing::{
    check_restore, initial_restore, io_thread, CheckpointEnv, IoDone, IoJob, Restore, SharedRestore, TaskEvent,
};
use crate::control::{CheckpointInfo, ControlState, JobInfo, OperatorInfo, SavepointRequest, SubtaskCheckpointInfo};
use crate::element::CheckpointBarrier;
use crate::error::{is_cancelled, panic_message};
use crate::graph::{BuildContext, Graph, NodeKind, Partition};
use crate::metrics::{JobMetrics, SamplerState};
use crate::operator::TaskInfo;
use crate::output::{SendEnv, TaskHead};
use crate::source::RunnableSource;
use crate::task::{run_input_task, Control, InputChannel, TaskEnv};
use weir_checkpoint::{CheckpointMetadata, CheckpointStorage, OperatorSnapshot, SnapshotKind, SubtaskSnapshot};

/// What a finished job reports.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// Counters summed over subtasks, by `<uid>.<name>` (e.g. `window.late_records`).
    pub counters: BTreeMap<String, u64>,
    /// Wall time from start to the end of the last task.
    pub elapsed: Duration,
}

impl JobResult {
    /// A counter by full name, 0 if absent.
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

struct Plan {
    graph: Graph,
    parallelism: Vec<usize>,
    uids: Vec<String>,
    partitions: Vec<Partition>,
    chained: Vec<bool>,
    head_of: Vec<usize>,
    /// For each (node, port): the edges leaving it.
    consumers: HashMap<(usize, usize), Vec<usize>>,
    max_parallelism: usize,
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

fn plan(graph: Graph, args: &JobArgs) -> Result<Plan> {
    let n = graph.nodes.len();
    if n == 0 {
        bail!("the job has no operators");
    }
    let mut parallelism = Vec::with_capacity(n);
    for node in &graph.nodes {
        let p = match (node.parallelism, node.max_parallelism) {
            (Some(p), Some(max)) if p > max => {
                bail!("operator '{}' supports at most parallelism {max}, but {p} was set", node.name)
            }
            (Some(p), _) => p,
            (None, Some(max)) => args.parallelism.min(max),
            (None, None) => args.parallelism,
        };
        if p == 0 {
            bail!("operator '{}' has parallelism 0", node.name);
        }
        if p > args.max_parallelism {
            bail!(
                "operator '{}' has parallelism {p}, above the max parallelism {} (--max-parallelism)",
                node.name,
                args.max_parallelism
            );
        }
        parallelism.push(p);
    }
    let mut uids = Vec::with_capacity(n);
    let mut seen = HashMap::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        let uid = node.uid.clone().unwrap_or_else(|| format!("{}-{i}", sanitize(&node.name)));
        if let Some(other) = seen.insert(uid.clone(), i) {
            bail!("operators '{}' and '{}' share the uid '{uid}'", graph.nodes[other].name, node.name);
        }
        uids.push(uid);
    }
    let mut partitions = Vec::with_capacity(graph.edges.len());
    let mut in_degree = vec![0usize; n];
    let mut consumers: HashMap<(usize, usize), Vec<usize>> = HashMap::new();
    for (i, e) in graph.edges.iter().enumerate() {
        let (pf, pt) = (parallelism[e.from], parallelism[e.to]);
        let part = match &e.partition {
            Partition::Default if pf == pt => Partition::Forward,
            Partition::Default => Partition::Rebalance,
            Partition::Forward if pf != pt => bail!(
                "forward edge from '{}' (parallelism {pf}) to '{}' (parallelism {pt}) needs equal parallelism",
                graph.nodes[e.from].name,
                graph.nodes[e.to].name
            ),
            p => p.clone(),
        };
        partitions.push(part);
        in_degree[e.to] += 1;
        consumers.entry((e.from, e.port)).or_default().push(i);
    }
    let mut chained = vec![false; graph.edges.len()];
    let mut head_of: Vec<usize> = (0..n).collect();
    // Node ids are in creation order, so every edge goes from a lower to a higher id and one
    // pass in id order settles each node's chain head before its consumers are looked at.
    for (i, e) in graph.edges.iter().enumerate() {
        let to = &graph.nodes[e.to];
        let chainable = matches!(partitions[i], Partition::Forward)
            && in_degree[e.to] == 1
            && !to.new_chain
            && matches!(to.kind, NodeKind::Operator { inputs: 1, .. });
        if chainable {
            chained[i] = true;
            head_of[e.to] = head_of[e.from];
        }
    }
    Ok(Plan {
        graph,
        parallelism,
        uids,
        partitions,
        chained,
        head_of,
        consumers,
        max_parallelism: args.max_parallelism,
    })
}

/// Channels ends of one task, before its thread builds the operators.
#[derive(Default)]
struct Wiring {
    senders: HashMap<usize, Vec<Box<dyn std::any::Any + Send>>>,
    receivers: Vec<(usize, usize, Box<dyn std::any::Any + Send>)>,
}

enum Built {
    Source(Box<dyn RunnableSource>),
    Operator(Box<dyn TaskHead>),
}

struct TaskBuilder<'a> {
    plan: &'a Plan,
    subtask: usize,
    events: Option<Sender<TaskEvent>>,
    restore: SharedRestore,
    job_name: &'a str,
    state_root: &'a std::path::Path,
    metrics: &'a JobMetrics,
    send_env: SendEnv,
    state_memory: &'a weir_state::StateMemory,
}

impl TaskBuilder<'_> {
    fn build(&self, node: usize, wiring: &mut Wiring) -> Result<Built> {
        let plan = self.plan;
        let spec = &plan.graph.nodes[node];
        let mut main: Option<Box<dyn std::any::Any>> = None;
        let mut sides: Vec<crate::output::SidePort> = Vec::new();
        for (port, pspec) in spec.ports.iter().enumerate() {
            let mut outs = Vec::new();
            for &e in plan.consumers.get(&(node, port)).map(Vec::as_slice).unwrap_or(&[]) {
                let edge = &plan.graph.edges[e];
                if plan.chained[e] {
                    match self.build(edge.to, wiring)? {
                        Built::Operator(head) => outs.push(pspec.ty.chained(head)),
                        Built::Source(_) => bail!("internal error: a source cannot be chained"),
                    }
                } else {
                    let senders = wiring.senders.remove(&e).unwrap_or_default();
                    outs.push(pspec.ty.network_output(senders, &plan.partitions[e], self.send_env.clone())?);
                }
            }
            let out = match outs.len() {
                0 => pspec.ty.discard(),
                1 => outs.pop().ok_or_else(|| anyhow!("internal error"))?,
                _ => pspec.ty.tee(outs),
            };
            match &pspec.tag {
                None => main = Some(out),
                Some(tag) => sides.push((tag.clone(), pspec.ty.erase(out), pspec.ty.empty_buffer())),
            }
        }
        let uid = &plan.uids[node];
        let info = TaskInfo {
            job_name: self.job_name.to_string(),
            operator_name: spec.name.clone(),
            uid: uid.clone(),
            subtask: self.subtask,
            parallelism: plan.parallelism[node],
            max_parallelism: plan.max_parallelism,
        };
        let checkpoint = self.events.as_ref().map(|events| CheckpointEnv {
            events: events.clone(),
            local_root: self.state_root.join(".snapshots"),
            node,
            stats: self.send_env.stats.clone(),
        });
        let ctx = BuildContext {
            info,
            checkpoint,
            restore: self.restore.clone(),
            metrics: self.metrics.group(uid, self.subtask),
            state_dir: self.state_root.join(format!("{uid}-{}", self.subtask)),
            state_memory: self.state_memory.clone(),
            main: main.ok_or_else(|| anyhow!("internal error: node without main port"))?,
            sides,
        };
        Ok(match &spec.kind {
            NodeKind::Source(f) => Built::Source(f(ctx)?),
            NodeKind::Operator { factory, .. } => Built::Operator(factory(ctx)?),
        })
    }
}

struct TaskExit {
    label: String,
    result: Result<()>,
}

/// Samples the job's metrics every second (the rates `/job` and `/metrics` serve) and logs a
/// progress line every `interval` (zero: never).
fn sampler(control: ControlState, source_uids: Vec<String>, interval: Duration, stop: Arc<AtomicBool>) {
    let metrics = &control.metrics;
    let mut state = SamplerState::default();
    metrics.sample(&mut state);
    let mut last = 0u64;
    let mut last_log = Instant::now();
    let step = Duration::from_millis(50);
    while !stop.load(Ordering::Relaxed) {
        let mut waited = Duration::ZERO;
        while waited < Duration::from_secs(1) && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(step);
            waited += step;
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        metrics.sample(&mut state);
        if interval.is_zero() || last_log.elapsed() < interval {
            continue;
        }
        let counters = metrics.counters();
        let total: u64 =
            source_uids.iter().map(|u| counters.get(&format!("{u}.records_out")).copied().unwrap_or(0)).sum();
        let rate = total.saturating_sub(last) as f64 / last_log.elapsed().as_secs_f64();
        last = total;
        last_log = Instant::now();
        let wm = metrics.min_watermark().map(crate::time::format_millis);
        let (chk, chk_ms) = control
            .checkpoints
            .lock()
            .iter()
            .rev()
            .find(|c| c.status == "completed")
            .map_or((None, None), |c| (Some(c.id), Some(c.duration_ms)));
        tracing::info!(
            records = total,
            records_per_sec = rate as u64,
            watermark = wm.as_deref().unwrap_or("-"),
            last_checkpoint = chk,
            checkpoint_ms = chk_ms,
            "progress"
        );
    }
}

/// How one attempt ended.
enum AttemptEnd {
    Finished,
    Failed(anyhow::Error),
}

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
        (Some(dir), true) => Some(CheckpointStorage::new(dir, &sanitize(job_name))?),
        _ => None,
    };
    let mut restore = initial_restore(&args.restore, storage.as_ref())?;
    if let Some(r) = &restore {
        check_restore(r, &plan.uids, plan.max_parallelism, args.allow_non_restored_state)?;
        tracing::info!(checkpoint = r.meta.checkpoint_id, path = %r.dir.display(), "restoring");
    }
    if let Some(s) = &storage {
        // Drops what a crashed run left behind: abandoned checkpoints and unreferenced shared files.
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
        job: Arc::new(JobInfo {
            name: job_name.to_string(),
            operators: (0..plan.graph.nodes.len())
                .map(|i| OperatorInfo {
                    uid: plan.uids[i].clone(),
                    name: plan.graph.nodes[i].name.clone(),
                    parallelism: plan.parallelism[i],
                })
                .collect(),
        }),
        checkpoints: Default::default(),
        savepoints: savepoint_tx,
        started: Instant::now(),
    };
    let addr = crate::control::start(&args.metrics_addr, control.clone())?;
    tracing::info!("control endpoint on http://{addr}");
    let mut attempt = 0u32;
    loop {
        let shared = restore.take().map(|snapshot| Arc::new(Restore { snapshot }));
        let end = run_attempt(
            &plan,
            args,
            job_name,
            &state_root,
            storage.as_ref(),
            shared.clone(),
            &control,
            &savepoint_rx,
            &stop_signal,
        )?;
        match end {
            AttemptEnd::Finished => break,
            AttemptEnd::Failed(e) => {
                let can_restart = storage.is_some() && attempt < args.restart_attempts;
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
                restore = match storage.as_ref().map(|s| s.latest_valid()).transpose()?.flatten() {
                    Some(latest) => Some(latest),
                    None => shared.map(|r| r.snapshot.clone()),
                };
            }
        }
    }
    let result = JobResult { counters: metrics.counters(), elapsed: started.elapsed() };
    tracing::info!(elapsed_ms = result.elapsed.as_millis() as u64, "job '{job_name}' finished");
    Ok(result)
}

/// The checkpoint in progress.
struct Pending {
    barrier: CheckpointBarrier,
    started: Instant,
    expected: usize,
    snapshots: HashMap<usize, Vec<SubtaskSnapshot>>,
    received: usize,
    new_bytes: u64,
    savepoint: bool,
    replies: Vec<Sender<Result<PathBuf, String>>>,
    subtasks: Vec<SubtaskCheckpointInfo>,
}

#[allow(clippy::too_many_arguments)]
fn run_attempt(
    plan: &Arc<Plan>,
    args: &JobArgs,
    job_name: &str,
    state_root: &Path,
    storage: Option<&CheckpointStorage>,
    restore: SharedRestore,
    control: &ControlState,
    savepoint_rx: &Receiver<SavepointRequest>,
    stop_signal: &Arc<AtomicBool>,
) -> Result<AttemptEnd> {
    let metrics = &control.metrics;
    // Wire a bounded channel for every (producer subtask, consumer subtask) pair of every edge
    // that crosses tasks.
    let mut wiring: HashMap<(usize, usize), Wiring> = HashMap::new();
    for (e, edge) in plan.graph.edges.iter().enumerate() {
        if plan.chained[e] {
            continue;
        }
        let ty = plan.graph.nodes[edge.from].ports[edge.port].ty.clone();
        let (pf, pt) = (plan.parallelism[edge.from], plan.parallelism[edge.to]);
        for s in 0..pf {
            let targets: Vec<usize> =
                if matches!(plan.partitions[e], Partition::Forward) { vec![s] } else { (0..pt).collect() };
            for t in targets {
                let (tx, rx) = ty.channel(args.channel_capacity as usize);
                wiring.entry((plan.head_of[edge.from], s)).or_default().senders.entry(e).or_default().push(tx);
                wiring.entry((plan.head_of[edge.to], t)).or_default().receivers.push((e, edge.input, rx));
            }
        }
    }

    let checkpointing = storage.is_some();
    let total_subtasks: usize = plan.parallelism.iter().sum();
    let state_memory =
        weir_state::StateMemory::new(crate::args::state_share(args.memory_budget) as usize, total_subtasks);
    let (events_tx, mut events_rx) = unbounded::<TaskEvent>();
    let cancel = Arc::new(AtomicBool::new(false));
    let (exit_tx, exit_rx) = unbounded::<TaskExit>();
    let mut controls: Vec<Sender<Control>> = Vec::new();
    let mut source_controls: Vec<Sender<Control>> = Vec::new();
    let mut handles = Vec::new();
    let heads: Vec<usize> = (0..plan.graph.nodes.len()).filter(|&i| plan.head_of[i] == i).collect();
    for &head in &heads {
        let is_source = matches!(plan.graph.nodes[head].kind, NodeKind::Source(_));
        for subtask in 0..plan.parallelism[head] {
            let mut w = wiring.remove(&(head, subtask)).unwrap_or_default();
            let (ctl_tx, ctl_rx) = unbounded::<Control>();
            if is_source {
                source_controls.push(ctl_tx.clone());
            }
            controls.push(ctl_tx);
            let label = format!("{} {}/{}", plan.graph.nodes[head].name, subtask + 1, plan.parallelism[head]);
            let chain: Vec<String> = (0..plan.graph.nodes.len())
                .filter(|&n| plan.head_of[n] == head)
                .map(|n| plan.uids[n].clone())
                .collect();
            let stats = metrics.task(&plan.uids[head], subtask, &chain);
            stats.capacity.store((w.receivers.len() * args.channel_capacity as usize) as u64, Ordering::Relaxed);
            let task_env = TaskEnv {
                batch_size: args.batch_size as usize,
                buffer_timeout: args.buffer_timeout,
                checkpointing,
                stats: stats.clone(),
            };
            let (plan, metrics, exit_tx) = (plan.clone(), metrics.clone(), exit_tx.clone());
            let state_memory = state_memory.clone();
            let (state_root, job_name) = (state_root.to_path_buf(), job_name.to_string());
            let events = checkpointing.then(|| events_tx.clone());
            let restore = restore.clone();
            let send_env =
                SendEnv { cancel: cancel.clone(), batch_size: args.batch_size as usize, stats: stats.clone() };
            let thread_name: String = format!("weir-{}-{subtask}", plan.uids[head]).chars().take(15).collect();
            let l = label.clone();
            let handle = std::thread::Builder::new().name(thread_name).spawn(move || {
                let result = catch_unwind(AssertUnwindSafe(|| -> Result<()> {
                    let builder = TaskBuilder {
                        plan: &plan,
                        subtask,
                        events,
                        restore,
                        job_name: &job_name,
                        state_root: &state_root,
                        metrics: &metrics,
                        send_env,
                        state_memory: &state_memory,
                    };
                    match builder.build(head, &mut w)? {
                        Built::Source(src) => src.run(&ctl_rx, &task_env),
                        Built::Operator(mut op) => {
                            let inputs: Vec<Box<dyn InputChannel>> = w
                                .receivers
                                .into_iter()
                                .map(|(e, input, rx)| {
                                    let edge = &plan.graph.edges[e];
                                    plan.graph.nodes[edge.from].ports[edge.port].ty.input_channel(rx, input)
                                })
                                .collect();
                            run_input_task(&mut *op, inputs, &ctl_rx, &task_env)
                        }
                    }
                }));
                let result = match result {
                    Ok(r) => r,
                    Err(p) => Err(anyhow!("task {l} panicked: {}", panic_message(&*p))),
                };
                stats.finished.store(true, Ordering::Relaxed);
                let _ = exit_tx.send(TaskExit { label: l, result });
            })?;
            handles.push(handle);
        }
    }
    drop(exit_tx);
    drop(events_tx);
    let source_uids: Vec<String> = (0..plan.graph.nodes.len())
        .filter(|&i| matches!(plan.graph.nodes[i].kind, NodeKind::Source(_)))
        .map(|i| plan.uids[i].clone())
        .collect();
    let stop_reporter = Arc::new(AtomicBool::new(false));
    let reporter = {
        let (c, s, stop, iv) = (control.clone(), source_uids, stop_reporter.clone(), args.progress_interval);
        Some(std::thread::Builder::new().name("weir-sampler".into()).spawn(move || sampler(c, s, iv, stop))?)
    };

    // The checkpoint coordinator: triggers checkpoints, collects acknowledgements, hands the
    // storing to the I/O thread and notifies tasks of completions.
    let (io_tx, io_rx) = unbounded::<IoJob>();
    let (done_tx, mut done_rx) = unbounded::<IoDone>();
    let io = storage.map(|st| {
        let parallelism_of = |uid: &str| plan.uids.iter().position(|u| u == uid).map(|n| plan.parallelism[n]);
        let known = restore.as_ref().map(|r| r.known_files(st, parallelism_of)).unwrap_or_default();
        let run = format!(
            "{:x}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0)
        );
        let st = st.clone();
        std::thread::Builder::new()
            .name("weir-checkpoint-io".into())
            .spawn(move || io_thread(st, run, known, io_rx, done_tx))
    });
    let io = io.transpose()?;
    let mut next_id = match storage {
        Some(s) => s.max_id()?.max(restore.as_ref().map_or(0, |r| r.snapshot.meta.checkpoint_id)) + 1,
        None => 0,
    };
    let source_subtasks: usize = (0..plan.graph.nodes.len())
        .filter(|&i| matches!(plan.graph.nodes[i].kind, NodeKind::Source(_)))
        .map(|i| plan.parallelism[i])
        .sum();
    let mut sources_ended = 0usize;
    let mut pending: Option<Pending> = None;
    let mut last_end = Instant::now();
    let mut failures = 0u32;
    let mut stop_requested = false;
    let mut savepoint_waiters: Vec<SavepointRequest> = Vec::new();
    let mut terminal_done = false;

    let total = handles.len();
    let mut failure: Option<anyhow::Error> = None;
    let mut secondary: Option<anyhow::Error> = None;
    let mut done = 0;
    let mut deadline: Option<Instant> = None;
    let tear_down = |failure_seen: &mut bool| {
        if !*failure_seen {
            *failure_seen = true;
            cancel.store(true, Ordering::Relaxed);
            for c in &controls {
                let _ = c.send(Control::Cancel);
            }
        }
    };
    let mut torn_down = false;
    while done < total {
        // Trigger a checkpoint when one is due, when every source has ended (the final one) or
        // when a savepoint or a stop was asked for.
        // After a terminal checkpoint completed the tasks are only winding down: no more checkpoints.
        if checkpointing && pending.is_none() && !torn_down && !terminal_done {
            if stop_signal.load(Ordering::Relaxed) && !stop_requested {
                stop_requested = true;
                tracing::info!("stop requested: taking a final savepoint");
            }
            let interval_due = args.checkpoint_interval.is_some_and(|iv| last_end.elapsed() >= iv.max(args.min_pause));
            let all_ended = sources_ended >= source_subtasks;
            let want_savepoint = !savepoint_waiters.is_empty() || stop_requested;
            if interval_due || all_ended || want_savepoint {
                let terminal = all_ended || stop_requested;
                let savepoint = want_savepoint && args.savepoint_dir.is_some();
                let barrier =
                    CheckpointBarrier { id: next_id, timestamp: crate::time::now_millis(), savepoint, terminal };
                next_id += 1;
                if let Some(st) = storage {
                    st.reserve(barrier.id)?;
                }
                for c in &source_controls {
                    let _ = c.send(Control::Trigger(barrier));
                }
                let replies = savepoint_waiters.drain(..).map(|w| w.reply).collect();
                pending = Some(Pending {
                    barrier,
                    started: Instant::now(),
                    expected: total_subtasks,
                    snapshots: HashMap::new(),
                    received: 0,
                    new_bytes: 0,
                    savepoint,
                    replies,
                    subtasks: Vec::new(),
                });
                tracing::debug!(checkpoint = barrier.id, terminal, "checkpoint triggered");
            }
        }
        let wait = Duration::from_millis(20);
        crossbeam_channel::select! {
            recv(exit_rx) -> exit => {
                let exit = match exit {
                    Ok(e) => e,
                    Err(_) => { failure.get_or_insert(anyhow!("internal error: task exits lost")); break; }
                };
                done += 1;
                if let Err(e) = exit.result {
                    let first = failure.is_none() && secondary.is_none();
                    if is_cancelled(&e) {
                        secondary.get_or_insert(e.context(format!("task {}", exit.label)));
                    } else if failure.is_none() {
                        failure = Some(e);
                    }
                    if first {
                        tear_down(&mut torn_down);
                        deadline = Some(Instant::now() + Duration::from_secs(10));
                    }
                }
            }
            recv(savepoint_rx) -> req => {
                // The control plane keeps its sender for the life of the job.
                if let Ok(req) = req {
                    if !checkpointing || args.savepoint_dir.is_none() {
                        let _ = req.reply.send(Err("savepoints need --checkpoint-dir, --checkpoint-interval and --savepoint-dir".into()));
                    } else {
                        savepoint_waiters.push(req);
                    }
                }
            }
            recv(events_rx) -> ev => match ev {
                Ok(TaskEvent::SourceEnded) => sources_ended += 1,
                Ok(TaskEvent::Ack { id, node, subtask, snapshot }) => {
                    if pending.as_ref().is_some_and(|p| p.barrier.id == id) && !torn_down {
                        let _ = io_tx.send(IoJob::Upload { id, node, uid: plan.uids[node].clone(), subtask, snapshot });
                    } else {
                        let _ = io_tx.send(IoJob::Discard { snapshot });
                    }
                }
                // Every task is gone (or checkpointing is off): stop selecting on it.
                Err(_) => events_rx = crossbeam_channel::never(),
            },
            recv(done_rx) -> d => match d {
                Ok(IoDone::Uploaded { id, node, snapshot, new_bytes, timing, async_ms }) => {
                    if let Some(p) = pending.as_mut().filter(|p| p.barrier.id == id) {
                        p.subtasks.push(SubtaskCheckpointInfo {
                            operator: plan.uids[node].clone(),
                            subtask: snapshot.subtask,
                            ack_ms: timing.acked_at.saturating_duration_since(p.started).as_secs_f64() * 1e3,
                            alignment_ms: timing.alignment_ms,
                            sync_ms: timing.sync_ms,
                            async_ms,
                            size_bytes: snapshot.keyed_files.iter().chain(&snapshot.operator_state).map(|f| f.size).sum(),
                            incremental_bytes: new_bytes,
                        });
                        p.snapshots.entry(node).or_default().push(snapshot);
                        p.new_bytes += new_bytes;
                        p.received += 1;
                        if p.received == p.expected {
                            let meta = CheckpointMetadata {
                                job: sanitize(job_name),
                                checkpoint_id: id,
                                kind: SnapshotKind::Checkpoint,
                                timestamp: p.barrier.timestamp,
                                max_parallelism: plan.max_parallelism,
                                operators: (0..plan.graph.nodes.len()).map(|n| {
                                    let mut subtasks = p.snapshots.remove(&n).unwrap_or_default();
                                    subtasks.sort_by_key(|s| s.subtask);
                                    OperatorSnapshot {
                                        uid: plan.uids[n].clone(),
                                        name: plan.graph.nodes[n].name.clone(),
                                        parallelism: plan.parallelism[n],
                                        keyed: subtasks.iter().any(|s| s.key_groups.is_some()),
                                        subtasks,
                                    }
                                }).collect(),
                            };
                            let savepoint_root = if p.savepoint { args.savepoint_dir.clone() } else { None };
                            let _ = io_tx.send(IoJob::Finalize { meta, savepoint_root, retain: args.retained_checkpoints as usize });
                        }
                    }
                }
                Ok(IoDone::Finalized { id, savepoint, bytes }) => {
                    crate::fault::crash_point("after-checkpoint-complete", id);
                    if let Some(p) = pending.take() {
                        terminal_done |= p.barrier.terminal;
                        let ms = p.started.elapsed().as_millis() as u64;
                        let mut subtasks = p.subtasks;
                        subtasks.sort_by(|a, b| (&a.operator, a.subtask).cmp(&(&b.operator, b.subtask)));
                        let slowest = |f: fn(&SubtaskCheckpointInfo) -> f64| subtasks.iter().map(f).fold(0.0, f64::max);
                        control.record(CheckpointInfo {
                            id,
                            status: "completed",
                            trigger_time: p.barrier.timestamp,
                            duration_ms: ms,
                            size_bytes: bytes,
                            incremental_bytes: p.new_bytes,
                            alignment_ms: slowest(|s| s.alignment_ms),
                            sync_ms: slowest(|s| s.sync_ms),
                            async_ms: slowest(|s| s.async_ms),
                            savepoint: savepoint.as_ref().map(|p| p.display().to_string()),
                            error: None,
                            subtasks,
                        });
                        let new_bytes = p.new_bytes;
                        match &savepoint {
                            Some(path) => tracing::info!(checkpoint = id, duration_ms = ms, size_bytes = bytes, path = %path.display(), "savepoint complete"),
                            None => tracing::info!(checkpoint = id, duration_ms = ms, size_bytes = bytes, incremental_bytes = new_bytes, "checkpoint complete"),
                        }
                        for r in p.replies {
                            let _ = r.send(savepoint.clone().ok_or_else(|| "no --savepoint-dir configured".to_string()));
                        }
                    }
                    failures = 0;
                    last_end = Instant::now();
                    for c in &controls {
                        let _ = c.send(Control::Complete(id));
                    }
                }
                Ok(IoDone::Failed { id, error }) => {
                    if pending.as_ref().is_some_and(|p| p.barrier.id == id) {
                        let p = pending.take();
                        failures += 1;
                        tracing::warn!(checkpoint = id, error, "checkpoint failed");
                        if let Some(p) = &p {
                            control.record(CheckpointInfo {
                                id,
                                status: "failed",
                                trigger_time: p.barrier.timestamp,
                                duration_ms: p.started.elapsed().as_millis() as u64,
                                error: Some(error.clone()),
                                ..Default::default()
                            });
                        }
                        for r in p.into_iter().flat_map(|p| p.replies) {
                            let _ = r.send(Err(error.clone()));
                        }
                        last_end = Instant::now();
                    }
                }
                Err(_) => done_rx = crossbeam_channel::never(),
            },
            default(wait) => {}
        }
        if let Some(p) = &pending {
            if p.started.elapsed() > args.checkpoint_timeout && !torn_down {
                tracing::warn!(checkpoint = p.barrier.id, "checkpoint timed out");
                control.record(CheckpointInfo {
                    id: p.barrier.id,
                    status: "timed out",
                    trigger_time: p.barrier.timestamp,
                    duration_ms: p.started.elapsed().as_millis() as u64,
                    ..Default::default()
                });
                for r in pending.take().into_iter().flat_map(|p| p.replies) {
                    let _ = r.send(Err("the savepoint timed out".into()));
                }
                failures += 1;
                last_end = Instant::now();
            }
        }
        if failures > args.tolerable_failed_checkpoints && failure.is_none() {
            failure = Some(anyhow!(
                "{failures} checkpoints in a row failed (--tolerable-failed-checkpoints {})",
                args.tolerable_failed_checkpoints
            ));
            tear_down(&mut torn_down);
            deadline = Some(Instant::now() + Duration::from_secs(10));
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            failure.get_or_insert(anyhow!("tasks did not stop within 10 s after the job failed"));
            break;
        }
        if !checkpointing && stop_signal.load(Ordering::Relaxed) && !torn_down {
            tracing::info!("stop requested; checkpointing is off, so the job is cancelled");
            tear_down(&mut torn_down);
            stop_requested = true;
            deadline = Some(Instant::now() + Duration::from_secs(10));
        }
    }
    drop(io_tx);
    stop_reporter.store(true, Ordering::Relaxed);
    if let Some(r) = reporter {
        let _ = r.join();
    }
    if let Some(e) = failure.or(secondary) {
        if stop_requested && !checkpointing && is_cancelled(&e) {
            for h in handles {
                let _ = h.join();
            }
            return Ok(AttemptEnd::Finished);
        }
        return Ok(AttemptEnd::Failed(e));
    }
    for h in handles {
        let _ = h.join();
    }
    if let Some(io) = io {
        let _ = io.join();
    }
    Ok(AttemptEnd::Finished)
}
