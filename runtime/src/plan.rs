//! Planning: turns the job graph into a plan the executor runs — each operator's parallelism and
//! uid, each edge's partitioning, and which operators are chained into one task.

use std::collections::HashMap;

use anyhow::{bail, Result};

use crate::args::JobArgs;
use crate::graph::{Graph, NodeKind, Partition};

/// The job graph with everything the executor decides before it starts tasks; indexed like the
/// graph's nodes and edges.
pub(crate) struct Plan {
    pub graph: Graph,
    pub parallelism: Vec<usize>,
    pub uids: Vec<String>,
    /// Each edge's partitioning, `Default` resolved.
    pub partitions: Vec<Partition>,
    /// Whether an edge is a call within one task rather than a channel between tasks.
    pub chained: Vec<bool>,
    /// The first operator of each node's task.
    pub head_of: Vec<usize>,
    /// For each (node, port): the edges leaving it.
    pub consumers: HashMap<(usize, usize), Vec<usize>>,
    pub max_parallelism: usize,
}

impl Plan {
    /// The nodes that are sources.
    pub(crate) fn sources(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.graph.nodes.len()).filter(|&i| matches!(self.graph.nodes[i].kind, NodeKind::Source(_)))
    }

    /// A hash of everything processes of one job must agree on to exchange data: operators,
    /// parallelism, edges, their partitioning and chaining, key groups, and the channel flags.
    pub(crate) fn fingerprint(&self, args: &JobArgs) -> u64 {
        use std::hash::{Hash, Hasher};
        // Every process runs the same binary, so the same hasher with the same keys.
        let mut h = std::hash::DefaultHasher::new();
        (&self.uids, &self.parallelism, &self.chained, &self.head_of, self.max_parallelism).hash(&mut h);
        for (e, p) in self.graph.edges.iter().zip(&self.partitions) {
            let kind = match p {
                Partition::Forward => 0u8,
                Partition::Default => 1,
                Partition::Rebalance => 2,
                Partition::Broadcast => 3,
                Partition::Hash { .. } => 4,
            };
            (e.from, e.to, e.port, e.input, kind).hash(&mut h);
        }
        (args.channel_capacity, args.checkpointing(), args.processes).hash(&mut h);
        JobArgs::command_line_fingerprint().hash(&mut h);
        h.finish()
    }

    /// The uids of the operators chained into the task headed by `head`, in order.
    pub(crate) fn chain(&self, head: usize) -> Vec<String> {
        (0..self.graph.nodes.len()).filter(|&n| self.head_of[n] == head).map(|n| self.uids[n].clone()).collect()
    }
}

/// A name usable in file names.
pub(crate) fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// Resolves parallelism, uids, partitioning and chaining, refusing what cannot run.
pub(crate) fn plan(graph: Graph, args: &JobArgs) -> Result<Plan> {
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
