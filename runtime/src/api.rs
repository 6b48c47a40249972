//! The job graph API: [`StreamEnv`], [`DataStream`], [`KeyedStream`] and connected streams.
//!
//! Building a job only records nodes and edges; [`StreamEnv::execute`] turns them into tasks.
//! Operators such as `map` or `window` are added by extension traits in `weir-operators`, on top
//! of the core `transform` methods here.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::Result;

use crate::alignment::AlignmentGroup;
use crate::args::JobArgs;
use crate::context::BuildContext;
use crate::driver::{Co, DriverOp, Keyed, KeyedCo, OneInput, OperatorDriver};
use crate::element::Data;
use crate::exec::JobResult;
use crate::graph::{EdgeSpec, Graph, NodeKind, NodeSpec, OpFactory, Partition, PortSpec, SourceFactory};
use crate::operator::{CoOperator, KeyedCoOperator, KeyedOperator, Operator, OutputTag, TaskInfo};
use crate::output::{KeyGroupFn, TaskHead};
use crate::port::{typed_port, unbox_output, PortType};
use crate::source::Source;
use crate::source_task::{RunnableSource, SourceTask};
use crate::time::WatermarkStrategy;

/// The entry point of a job: add sources, transform streams, then [`execute`](StreamEnv::execute).
///
/// ```
/// use weir_runtime::{JobArgs, StreamEnv};
/// let env = StreamEnv::new(JobArgs::default());
/// assert_eq!(env.args().parallelism, 1);
/// ```
pub struct StreamEnv {
    graph: Rc<RefCell<Graph>>,
    args: JobArgs,
}

impl StreamEnv {
    /// An environment configured by the shared job flags.
    pub fn new(args: JobArgs) -> Self {
        StreamEnv { graph: Rc::new(RefCell::new(Graph::default())), args }
    }

    /// The job flags.
    pub fn args(&self) -> &JobArgs {
        &self.args
    }

    /// Adds a source; `strategy` assigns event time and generates watermarks per split.
    pub fn add_source<T: Data, S: Source<T>>(
        &self,
        name: &str,
        source: S,
        strategy: WatermarkStrategy<T>,
    ) -> DataStream<T> {
        let max_parallelism = source.max_parallelism();
        let source = Arc::new(source);
        let alignment = AlignmentGroup::default();
        let factory: SourceFactory = Arc::new(move |ctx: BuildContext| {
            let reader = source.create_reader(&ctx.info)?;
            let env = ctx.driver_env(false)?;
            let main = unbox_output::<T>(ctx.main)?;
            let task: Box<dyn RunnableSource> = Box::new(SourceTask {
                reader,
                strategy: strategy.clone(),
                main,
                sides: ctx.sides,
                env,
                alignment: alignment.clone(),
                placement: ctx.placement,
            });
            Ok(task)
        });
        let node = NodeSpec {
            name: name.to_string(),
            uid: None,
            parallelism: None,
            max_parallelism,
            kind: NodeKind::Source(factory),
            ports: vec![PortSpec { tag: None, ty: typed_port::<T>() }],
            new_chain: false,
        };
        let mut g = self.graph.borrow_mut();
        g.nodes.push(node);
        DataStream::from_node(self.graph.clone(), g.nodes.len() - 1, 0, self.args.max_parallelism)
    }

    /// Runs the job to completion (bounded inputs) or until it fails.
    pub fn execute(&self, job_name: &str) -> Result<JobResult> {
        let graph = std::mem::take(&mut *self.graph.borrow_mut());
        crate::exec::execute(graph, &self.args, job_name)
    }
}

/// A stream of records of type `T`.
pub struct DataStream<T> {
    graph: Rc<RefCell<Graph>>,
    inputs: Vec<(usize, usize)>,
    partition: Partition,
    max_parallelism: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for DataStream<T> {
    fn clone(&self) -> Self {
        DataStream {
            graph: self.graph.clone(),
            inputs: self.inputs.clone(),
            partition: self.partition.clone(),
            max_parallelism: self.max_parallelism,
            _t: PhantomData,
        }
    }
}

/// The producers feeding one input of a new node, how they are partitioned, and the input index.
type EdgeInputs<'a> = (&'a [(usize, usize)], Partition, usize);

fn add_operator_node(
    graph: &Rc<RefCell<Graph>>,
    name: &str,
    inputs: usize,
    factory: OpFactory,
    port: Arc<dyn PortType>,
    edges: Vec<EdgeInputs<'_>>,
) -> usize {
    let mut g = graph.borrow_mut();
    g.nodes.push(NodeSpec {
        name: name.to_string(),
        uid: None,
        parallelism: None,
        max_parallelism: None,
        kind: NodeKind::Operator { inputs, factory },
        ports: vec![PortSpec { tag: None, ty: port }],
        new_chain: false,
    });
    let to = g.nodes.len() - 1;
    for (sources, partition, input) in edges {
        for &(from, port) in sources {
            g.edges.push(EdgeSpec { from, port, to, input, partition: partition.clone() });
        }
    }
    to
}

/// Adds an operator node whose subtasks run the driver op `make` builds (on their own thread),
/// fed by `edges` (one per input), and returns its main output. Graph and maximum parallelism
/// come from `first`, the stream of input 0.
fn add_driven<T, D, F>(
    first: &DataStream<T>,
    name: &str,
    keyed: bool,
    edges: Vec<EdgeInputs<'_>>,
    make: F,
) -> DataStream<D::Out>
where
    T: Data,
    D: DriverOp,
    F: Fn(&TaskInfo) -> D + Send + Sync + 'static,
{
    let factory: OpFactory = Arc::new(move |ctx: BuildContext| {
        let driven = make(&ctx.info);
        let env = ctx.driver_env(keyed)?;
        let main = unbox_output::<D::Out>(ctx.main)?;
        let head: Box<dyn TaskHead> = Box::new(OperatorDriver::new(driven, env, main, ctx.sides)?);
        Ok(head)
    });
    let inputs = edges.len();
    let node = add_operator_node(&first.graph, name, inputs, factory, typed_port::<D::Out>(), edges);
    DataStream::from_node(first.graph.clone(), node, 0, first.max_parallelism)
}

impl<T: Data> DataStream<T> {
    /// This stream as input `input` of a new node.
    fn edge(&self, input: usize) -> EdgeInputs<'_> {
        (&self.inputs, self.partition.clone(), input)
    }

    fn from_node(graph: Rc<RefCell<Graph>>, node: usize, port: usize, max_parallelism: usize) -> Self {
        DataStream {
            graph,
            inputs: vec![(node, port)],
            partition: Partition::Default,
            max_parallelism,
            _t: PhantomData,
        }
    }

    fn with_partition(&self, partition: Partition) -> Self {
        DataStream { partition, ..self.clone() }
    }

    fn each_node(&self, f: impl Fn(&mut NodeSpec)) {
        let mut g = self.graph.borrow_mut();
        for &(node, _) in &self.inputs {
            f(&mut g.nodes[node]);
        }
    }

    /// Adds a one-input operator; `factory` builds one instance per subtask, on its thread.
    pub fn transform<Op, F>(&self, name: &str, factory: F) -> DataStream<Op::Out>
    where
        Op: Operator<In = T>,
        F: Fn(&TaskInfo) -> Op + Send + Sync + 'static,
    {
        add_driven(self, name, false, vec![self.edge(0)], move |info| OneInput(factory(info)))
    }

    /// Partitions the stream by key: records with equal keys go to the same subtask (through
    /// its key group), where keyed state and timers are scoped to the key.
    pub fn key_by<K: Data>(&self, key: impl Fn(&T) -> K + Send + Sync + 'static) -> KeyedStream<K, T> {
        let key: Arc<dyn Fn(&T) -> K + Send + Sync> = Arc::new(key);
        let k = key.clone();
        let max_p = self.max_parallelism;
        let key_group: KeyGroupFn<T> = Arc::new(move |v: &T, buf: &mut Vec<u8>| {
            buf.clear();
            weir_state::codec::encode_into(&k(v), buf)?;
            Ok(weir_state::keygroup::key_group_of(buf, max_p))
        });
        let partition = Partition::Hash { key_group: Arc::new(key_group), max_parallelism: max_p };
        KeyedStream { stream: self.with_partition(partition), key }
    }

    /// Merges streams of the same type.
    pub fn union(&self, others: &[&DataStream<T>]) -> DataStream<T> {
        let mut s = self.clone();
        for o in others {
            s.inputs.extend(o.inputs.iter().copied());
        }
        s
    }

    /// Pairs this stream with another (possibly of another type) for a two-input operator.
    pub fn connect<U: Data>(&self, other: &DataStream<U>) -> ConnectedStreams<T, U> {
        ConnectedStreams { first: self.clone(), second: other.clone() }
    }

    /// Sends records round-robin to the next operator's subtasks.
    pub fn rebalance(&self) -> DataStream<T> {
        self.with_partition(Partition::Rebalance)
    }

    /// Sends every record to every subtask of the next operator.
    pub fn broadcast(&self) -> DataStream<T> {
        self.with_partition(Partition::Broadcast)
    }

    /// Sends records of subtask i to subtask i of the next operator (same parallelism required).
    pub fn forward(&self) -> DataStream<T> {
        self.with_partition(Partition::Forward)
    }

    /// The records the producing operator emitted to the side output `tag`.
    pub fn side_output<X: Data>(&self, tag: &OutputTag<X>) -> DataStream<X> {
        let (node, _) = self.inputs[0];
        let mut g = self.graph.borrow_mut();
        let ports = &mut g.nodes[node].ports;
        let port = match ports.iter().position(|p| p.tag.as_deref() == Some(tag.name())) {
            Some(p) => p,
            None => {
                ports.push(PortSpec { tag: Some(tag.shared_name()), ty: typed_port::<X>() });
                ports.len() - 1
            }
        };
        drop(g);
        DataStream::from_node(self.graph.clone(), node, port, self.max_parallelism)
    }

    /// Sets the parallelism of the operator that produces this stream.
    pub fn set_parallelism(self, parallelism: usize) -> Self {
        self.each_node(|n| n.parallelism = Some(parallelism));
        self
    }

    /// Sets the stable id of the producing operator, under which its state is checkpointed.
    pub fn uid(self, uid: &str) -> Self {
        self.each_node(|n| n.uid = Some(uid.to_string()));
        self
    }

    /// Renames the producing operator (for logs and metrics).
    pub fn name(self, name: &str) -> Self {
        self.each_node(|n| n.name = name.to_string());
        self
    }

    /// Runs the producing operator in a task of its own instead of chaining it to its input.
    pub fn start_new_chain(self) -> Self {
        self.each_node(|n| n.new_chain = true);
        self
    }

    /// The parallelism set on the producing operator, if any.
    pub fn parallelism(&self) -> Option<usize> {
        let g = self.graph.borrow();
        g.nodes[self.inputs[0].0].parallelism
    }
}

/// A stream partitioned by key.
pub struct KeyedStream<K, T> {
    stream: DataStream<T>,
    key: Arc<dyn Fn(&T) -> K + Send + Sync>,
}

impl<K, T> Clone for KeyedStream<K, T> {
    fn clone(&self) -> Self {
        KeyedStream { stream: self.stream.clone(), key: self.key.clone() }
    }
}

impl<K: Data, T: Data> KeyedStream<K, T> {
    /// The key of a record.
    pub fn key_of(&self, value: &T) -> K {
        (self.key)(value)
    }

    /// Adds a keyed operator with state and timers.
    pub fn transform<Op, F>(&self, name: &str, factory: F) -> DataStream<Op::Out>
    where
        Op: KeyedOperator<Key = K, In = T>,
        F: Fn(&TaskInfo) -> Op + Send + Sync + 'static,
    {
        let key_fn = self.key.clone();
        let s = &self.stream;
        add_driven(s, name, true, vec![s.edge(0)], move |info| Keyed {
            op: factory(info),
            key_fn: key_fn.clone(),
            key_buf: Vec::new(),
        })
    }

    /// Pairs this keyed stream with another keyed the same way, for a keyed two-input operator.
    pub fn connect<U: Data>(&self, other: &KeyedStream<K, U>) -> KeyedConnectedStreams<K, T, U> {
        KeyedConnectedStreams { first: self.clone(), second: other.clone() }
    }

    /// The underlying stream (partitioned by key).
    pub fn stream(&self) -> &DataStream<T> {
        &self.stream
    }
}

/// Two streams feeding one two-input operator.
pub struct ConnectedStreams<A, B> {
    first: DataStream<A>,
    second: DataStream<B>,
}

impl<A: Data, B: Data> ConnectedStreams<A, B> {
    /// Adds a two-input operator.
    pub fn transform<Op, F>(&self, name: &str, factory: F) -> DataStream<Op::Out>
    where
        Op: CoOperator<In1 = A, In2 = B>,
        F: Fn(&TaskInfo) -> Op + Send + Sync + 'static,
    {
        let (a, b) = (&self.first, &self.second);
        add_driven(a, name, false, vec![a.edge(0), b.edge(1)], move |info| Co(factory(info)))
    }
}

/// Two streams keyed the same way feeding one keyed two-input operator.
pub struct KeyedConnectedStreams<K, A, B> {
    first: KeyedStream<K, A>,
    second: KeyedStream<K, B>,
}

impl<K: Data, A: Data, B: Data> KeyedConnectedStreams<K, A, B> {
    /// Adds a keyed two-input operator (joins, enrichment).
    pub fn transform<Op, F>(&self, name: &str, factory: F) -> DataStream<Op::Out>
    where
        Op: KeyedCoOperator<Key = K, In1 = A, In2 = B>,
        F: Fn(&TaskInfo) -> Op + Send + Sync + 'static,
    {
        let (k1, k2) = (self.first.key.clone(), self.second.key.clone());
        let (a, b) = (&self.first.stream, &self.second.stream);
        add_driven(a, name, true, vec![a.edge(0), b.edge(1)], move |info| KeyedCo {
            op: factory(info),
            key1: k1.clone(),
            key2: k2.clone(),
            key_buf: Vec::new(),
        })
    }
}
