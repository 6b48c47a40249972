//! The job graph: operators (nodes) with their factories and output ports, and the edges between
//! them with their partitioning. The user API builds it; planning and the executor read it.

use std::any::Any;
use std::sync::Arc;

use anyhow::Result;

use crate::context::BuildContext;
use crate::output::TaskHead;
use crate::port::PortType;
use crate::source_task::RunnableSource;

/// How records of an edge are distributed over the consumer's subtasks.
#[derive(Clone)]
pub(crate) enum Partition {
    /// Forward when the parallelism matches, rebalance otherwise.
    Default,
    Forward,
    Rebalance,
    Broadcast,
    Hash {
        key_group: Arc<dyn Any + Send + Sync>,
        max_parallelism: usize,
    },
}

pub(crate) type OpFactory = Arc<dyn Fn(BuildContext) -> Result<Box<dyn TaskHead>> + Send + Sync>;
pub(crate) type SourceFactory = Arc<dyn Fn(BuildContext) -> Result<Box<dyn RunnableSource>> + Send + Sync>;

pub(crate) enum NodeKind {
    Source(SourceFactory),
    Operator { inputs: usize, factory: OpFactory },
}

pub(crate) struct PortSpec {
    pub tag: Option<Arc<str>>,
    pub ty: Arc<dyn PortType>,
}

pub(crate) struct NodeSpec {
    pub name: String,
    pub uid: Option<String>,
    pub parallelism: Option<usize>,
    pub max_parallelism: Option<usize>,
    pub kind: NodeKind,
    pub ports: Vec<PortSpec>,
    pub new_chain: bool,
}

pub(crate) struct EdgeSpec {
    pub from: usize,
    pub port: usize,
    pub to: usize,
    pub input: usize,
    pub partition: Partition,
}

#[derive(Default)]
pub(crate) struct Graph {
    pub nodes: Vec<NodeSpec>,
    pub edges: Vec<EdgeSpec>,
}
