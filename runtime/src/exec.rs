//! Turns a job graph into running tasks: resolves parallelism and partitioning, chains operators,
//! wires bounded channels, runs one thread per task and tears the job down on the first failure.

use std::collections::{BTreeMap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{unbounded, Sender};

use crate::args::JobArgs;
use crate::error::{is_cancelled, panic_message};
use crate::graph::{BuildContext, Graph, NodeKind, Partition};
use crate::metrics::JobMetrics;
use crate::operator::TaskInfo;
use crate::output::{SendEnv, TaskHead};
use crate::source::RunnableSource;
use crate::task::{run_input_task, Control, InputChannel, TaskEnv};

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
    job_name: &'a str,
    state_root: &'a std::path::Path,
    metrics: &'a JobMetrics,
    send_env: SendEnv,
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
        let ctx = BuildContext {
            info,
            metrics: self.metrics.group(uid),
            state_dir: self.state_root.join(format!("{uid}-{}", self.subtask)),
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

fn progress_reporter(metrics: JobMetrics, source_uids: Vec<String>, interval: Duration, stop: Arc<AtomicBool>) {
    let mut last = 0u64;
    let mut last_t = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let step = Duration::from_millis(100);
        let mut waited = Duration::ZERO;
        while waited < interval && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(step);
            waited += step;
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let counters = metrics.counters();
        let total: u64 =
            source_uids.iter().map(|u| counters.get(&format!("{u}.records_out")).copied().unwrap_or(0)).sum();
        let rate = (total - last) as f64 / last_t.elapsed().as_secs_f64();
        last = total;
        last_t = Instant::now();
        match metrics.min_watermark() {
            Some(wm) => tracing::info!(records = total, records_per_sec = rate as u64, watermark = wm, "progress"),
            None => tracing::info!(records = total, records_per_sec = rate as u64, "progress"),
        }
    }
}

pub(crate) fn execute(graph: Graph, args: &JobArgs, job_name: &str) -> Result<JobResult> {
    let started = Instant::now();
    let plan = Arc::new(plan(graph, args)?);
    let (_tmp, state_root): (Option<tempfile::TempDir>, PathBuf) = match &args.state_dir {
        Some(dir) => (None, dir.join(sanitize(job_name))),
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("weir-state-")
                .tempdir()
                .context("creating a temporary state directory")?;
            let root = tmp.path().to_path_buf();
            (Some(tmp), root)
        }
    };
    std::fs::create_dir_all(&state_root)
        .with_context(|| format!("creating state directory {}", state_root.display()))?;

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

    let metrics = JobMetrics::default();
    let cancel = Arc::new(AtomicBool::new(false));
    let (exit_tx, exit_rx) = unbounded::<TaskExit>();
    let mut controls: Vec<Sender<Control>> = Vec::new();
    let mut handles = Vec::new();
    let task_env = TaskEnv { batch_size: args.batch_size as usize, buffer_timeout: args.buffer_timeout };
    let heads: Vec<usize> = (0..plan.graph.nodes.len()).filter(|&i| plan.head_of[i] == i).collect();
    for &head in &heads {
        for subtask in 0..plan.parallelism[head] {
            let mut w = wiring.remove(&(head, subtask)).unwrap_or_default();
            let (ctl_tx, ctl_rx) = unbounded::<Control>();
            controls.push(ctl_tx);
            let label = format!("{} {}/{}", plan.graph.nodes[head].name, subtask + 1, plan.parallelism[head]);
            let (plan, metrics, exit_tx, task_env) = (plan.clone(), metrics.clone(), exit_tx.clone(), task_env.clone());
            let (state_root, job_name) = (state_root.clone(), job_name.to_string());
            let send_env = SendEnv {
                cancel: cancel.clone(),
                batch_size: args.batch_size as usize,
                backpressure_ns: Arc::new(AtomicU64::new(0)),
            };
            let thread_name: String = format!("weir-{}-{subtask}", plan.uids[head]).chars().take(15).collect();
            let l = label.clone();
            let handle = std::thread::Builder::new().name(thread_name).spawn(move || {
                let result = catch_unwind(AssertUnwindSafe(|| -> Result<()> {
                    let builder = TaskBuilder {
                        plan: &plan,
                        subtask,
                        job_name: &job_name,
                        state_root: &state_root,
                        metrics: &metrics,
                        send_env,
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
                let _ = exit_tx.send(TaskExit { label: l, result });
            })?;
            handles.push(handle);
        }
    }
    drop(exit_tx);
    let source_uids: Vec<String> = (0..plan.graph.nodes.len())
        .filter(|&i| matches!(plan.graph.nodes[i].kind, NodeKind::Source(_)))
        .map(|i| plan.uids[i].clone())
        .collect();
    let stop_reporter = Arc::new(AtomicBool::new(false));
    let reporter = if !args.progress_interval.is_zero() {
        let (m, s, stop, iv) = (metrics.clone(), source_uids, stop_reporter.clone(), args.progress_interval);
        Some(std::thread::spawn(move || progress_reporter(m, s, iv, stop)))
    } else {
        None
    };

    let total = handles.len();
    let mut failure: Option<anyhow::Error> = None;
    let mut secondary: Option<anyhow::Error> = None;
    let mut done = 0;
    let mut deadline: Option<Instant> = None;
    while done < total {
        let exit = match deadline {
            None => exit_rx.recv().map_err(|_| anyhow!("internal error: task exits lost")),
            Some(d) => {
                exit_rx.recv_deadline(d).map_err(|_| anyhow!("tasks did not stop within 10 s after the job failed"))
            }
        };
        let exit = match exit {
            Ok(e) => e,
            Err(e) => {
                failure.get_or_insert(e);
                break;
            }
        };
        done += 1;
        if let Err(e) = exit.result {
            let first_failure = failure.is_none() && secondary.is_none();
            if is_cancelled(&e) {
                secondary.get_or_insert(e.context(format!("task {}", exit.label)));
            } else if failure.is_none() {
                failure = Some(e);
            }
            if first_failure {
                cancel.store(true, Ordering::Relaxed);
                for c in &controls {
                    let _ = c.send(Control::Cancel);
                }
                deadline = Some(Instant::now() + Duration::from_secs(10));
            }
        }
    }
    stop_reporter.store(true, Ordering::Relaxed);
    if let Some(r) = reporter {
        let _ = r.join();
    }
    if let Some(e) = failure.or(secondary) {
        tracing::error!(error = format!("{e:#}"), "job '{job_name}' failed");
        return Err(e.context(format!("job '{job_name}' failed")));
    }
    for h in handles {
        let _ = h.join();
    }
    let result = JobResult { counters: metrics.counters(), elapsed: started.elapsed() };
    tracing::info!(elapsed_ms = result.elapsed.as_millis() as u64, "job '{job_name}' finished");
    Ok(result)
}
