//! Thread wiring: a bounded channel for every pair of producer and consumer subtasks of an edge
//! between tasks, one thread per task subtask that builds its operator chain and runs it, and
//! the task's exit reported back to the attempt.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Result};
use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::args::JobArgs;
use crate::checkpointing::{CheckpointEnv, SharedRestore, TaskEvent};
use crate::context::BuildContext;
use crate::error::panic_message;
use crate::graph::{NodeKind, Partition};
use crate::metrics::{ChannelKey, JobMetrics};
use crate::net::{channel_id, process_of, Mesh};
use crate::operator::TaskInfo;
use crate::output::{SendEnv, TaskHead};
use crate::plan::Plan;
use crate::source_task::RunnableSource;
use crate::task::{run_input_task, Control, InputChannel, TaskEnv};

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
    placement: (usize, usize),
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
            placement: self.placement,
        };
        Ok(match &spec.kind {
            NodeKind::Source(f) => Built::Source(f(ctx)?),
            NodeKind::Operator { factory, .. } => Built::Operator(factory(ctx)?),
        })
    }
}

/// How one task subtask ended.
pub(crate) struct TaskExit {
    pub label: String,
    pub result: Result<()>,
}

/// The running task threads of one attempt and the channels to and from them.
pub(crate) struct Tasks {
    pub handles: Vec<JoinHandle<()>>,
    /// Control channels of every task subtask, sources included.
    pub controls: Vec<Sender<Control>>,
    pub source_controls: Vec<Sender<Control>>,
    pub exits: Receiver<TaskExit>,
    /// Acks and ends of input, from tasks to the coordinator.
    pub events: Receiver<TaskEvent>,
    /// Set on tear-down so that blocked sends give up.
    pub cancel: Arc<AtomicBool>,
}

impl Tasks {
    /// Tells every task to stop now.
    pub(crate) fn cancel_all(&self) {
        self.cancel.store(true, Ordering::Relaxed);
        for c in &self.controls {
            let _ = c.send(Control::Cancel);
        }
    }

    /// Sends `msg` to every task subtask.
    pub(crate) fn broadcast(&self, msg: Control) {
        for c in &self.controls {
            let _ = c.send(msg);
        }
    }
}

/// Where one attempt's tasks keep state and report.
pub(crate) struct LaunchEnv<'a> {
    pub args: &'a JobArgs,
    pub job_name: &'a str,
    pub state_root: &'a Path,
    pub restore: SharedRestore,
    pub metrics: &'a JobMetrics,
    pub checkpointing: bool,
    /// The other processes of the job, if it runs as several.
    pub mesh: Option<&'a Mesh>,
}

/// Wires a bounded channel for every (producer subtask, consumer subtask) pair of every edge
/// that crosses tasks, keyed by the (head node, subtask) of the task that owns each end. With
/// several processes only this process's ends are made: a pair within it gets a local channel,
/// a pair across processes a logical channel of the mesh, and other pairs nothing.
fn wire(
    plan: &Plan,
    capacity: usize,
    mesh: Option<&Mesh>,
    metrics: &JobMetrics,
) -> Result<HashMap<(usize, usize), Wiring>> {
    let (me, processes) = mesh.map_or((0, 1), |m| (m.index(), m.processes()));
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
            let from = process_of(s, pf, processes);
            for t in targets {
                let to = process_of(t, pt, processes);
                let stats = |direction: &str, peer| {
                    let (from_uid, to_uid) = (plan.uids[edge.from].clone(), plan.uids[edge.to].clone());
                    metrics.channel(ChannelKey {
                        process: me,
                        direction: direction.to_string(),
                        from: from_uid,
                        from_subtask: s,
                        to: to_uid,
                        to_subtask: t,
                        peer,
                    })
                };
                let (tx, rx) = match (mesh, from == me, to == me) {
                    (_, false, false) => continue,
                    (None, _, _) | (Some(_), true, true) => {
                        let (tx, rx) = ty.channel(capacity);
                        (Some(tx), Some(rx))
                    }
                    (Some(m), true, false) => {
                        (Some(ty.remote_sender(m.sender(to, channel_id(e, s, t), capacity, stats("out", to))?)), None)
                    }
                    (Some(m), false, true) => {
                        let rx: Box<dyn std::any::Any + Send> =
                            Box::new(m.receiver(from, channel_id(e, s, t), capacity, stats("in", from))?);
                        (None, Some(rx))
                    }
                };
                if let Some(tx) = tx {
                    wiring.entry((plan.head_of[edge.from], s)).or_default().senders.entry(e).or_default().push(tx);
                }
                if let Some(rx) = rx {
                    wiring.entry((plan.head_of[edge.to], t)).or_default().receivers.push((e, edge.input, rx));
                }
            }
        }
    }
    Ok(wiring)
}

/// Starts one thread per subtask of every task.
pub(crate) fn launch(plan: &Arc<Plan>, env: LaunchEnv<'_>) -> Result<Tasks> {
    let args = env.args;
    let mut wiring = wire(plan, args.channel_capacity as usize, env.mesh, env.metrics)?;
    if let Some(m) = env.mesh {
        // Every channel is registered: now the peers may send.
        m.connect()?;
    }
    let (me, processes) = env.mesh.map_or((0, 1), |m| (m.index(), m.processes()));
    let total_subtasks: usize = plan.parallelism.iter().sum();
    let state_memory =
        weir_state::StateMemory::new(crate::args::state_share(args.memory_budget) as usize, total_subtasks);
    let (events_tx, events) = unbounded::<TaskEvent>();
    let cancel = Arc::new(AtomicBool::new(false));
    let (exit_tx, exits) = unbounded::<TaskExit>();
    let mut controls: Vec<Sender<Control>> = Vec::new();
    let mut source_controls: Vec<Sender<Control>> = Vec::new();
    let mut handles = Vec::new();
    let heads: Vec<usize> = (0..plan.graph.nodes.len()).filter(|&i| plan.head_of[i] == i).collect();
    for &head in &heads {
        let is_source = matches!(plan.graph.nodes[head].kind, NodeKind::Source(_));
        for subtask in 0..plan.parallelism[head] {
            if process_of(subtask, plan.parallelism[head], processes) != me {
                continue;
            }
            let mut w = wiring.remove(&(head, subtask)).unwrap_or_default();
            let (ctl_tx, ctl_rx) = unbounded::<Control>();
            if is_source {
                source_controls.push(ctl_tx.clone());
            }
            controls.push(ctl_tx);
            let label = format!("{} {}/{}", plan.graph.nodes[head].name, subtask + 1, plan.parallelism[head]);
            let stats = env.metrics.task(&plan.uids[head], subtask, &plan.chain(head));
            stats.capacity.store((w.receivers.len() * args.channel_capacity as usize) as u64, Ordering::Relaxed);
            let task_env = TaskEnv {
                batch_size: args.batch_size as usize,
                buffer_timeout: args.buffer_timeout,
                checkpointing: env.checkpointing,
                stats: stats.clone(),
            };
            let (plan, metrics, exit_tx) = (plan.clone(), env.metrics.clone(), exit_tx.clone());
            let state_memory = state_memory.clone();
            let (state_root, job_name) = (env.state_root.to_path_buf(), env.job_name.to_string());
            let events = env.checkpointing.then(|| events_tx.clone());
            let restore = env.restore.clone();
            let send_env =
                SendEnv { cancel: cancel.clone(), batch_size: args.batch_size as usize, stats: stats.clone() };
            let thread_name: String = format!("weir-{}-{subtask}", plan.uids[head]).chars().take(15).collect();
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
                        placement: (me, processes),
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
                    Err(p) => Err(anyhow!("task {label} panicked: {}", panic_message(&*p))),
                };
                stats.finished.store(true, Ordering::Relaxed);
                let _ = exit_tx.send(TaskExit { label, result });
            })?;
            handles.push(handle);
        }
    }
    Ok(Tasks { handles, controls, source_controls, exits, events, cancel })
}
