//! What `weir savepoint inspect` shows: every operator of a savepoint or checkpoint with what its
//! state says — keyed states with entry counts and sizes, timers, source positions, sink
//! transactions not yet committed, watermarks as times — decoded without the job's types.
//!
//! [`Inspection`] is also the `--json` document: its field names (and those of the types it
//! holds) are stable; only `operator_state`, the raw state of each subtask, follows the
//! operator's own format and may change between versions.

pub mod diff;
mod text;

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Serialize;
use weir_checkpoint::inspect::StateReport;
use weir_checkpoint::{LoadedSnapshot, SnapshotKind};
use weir_operators::describe::{sink_pending, source_position, SinkPending, SourcePosition};

pub use text::{bytes, render};

/// A snapshot as `weir savepoint inspect --json` prints it.
#[derive(Debug, Serialize)]
pub struct Inspection {
    /// The job's name.
    pub job: String,
    /// `checkpoint` or `savepoint`.
    pub kind: SnapshotKind,
    /// Its id in the job's checkpoint sequence.
    pub checkpoint_id: u64,
    /// When it was triggered, epoch ms.
    pub timestamp: i64,
    /// `timestamp` in UTC (RFC 3339).
    pub taken_at: String,
    /// Number of key groups (the largest parallelism a restore can have).
    pub max_parallelism: usize,
    /// Operators in the job's order.
    pub operators: Vec<OperatorInfo>,
}

/// What an operator is, as far as its snapshot tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads input; its state is its position.
    Source,
    /// A transactional sink; its state is what it has not committed yet.
    Sink,
    /// Holds keyed state.
    Keyed,
    /// Anything else.
    Operator,
}

/// A watermark with its meaning.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Watermark {
    /// Epoch ms (`i64::MIN`: none yet, `i64::MAX`: end of input).
    pub millis: i64,
    /// `none`, `end of input` or the time in UTC (RFC 3339 with ms).
    pub time: String,
}

impl Watermark {
    /// The watermark `millis`, described.
    ///
    /// ```
    /// use weir::inspect::Watermark;
    /// assert_eq!(Watermark::of(i64::MAX).time, "end of input");
    /// assert_eq!(Watermark::of(i64::MIN).time, "none");
    /// assert_eq!(Watermark::of(1_700_000_000_123).time, "2023-11-14T22:13:20.123Z");
    /// ```
    pub fn of(millis: i64) -> Self {
        let time = match millis {
            i64::MIN => "none".to_string(),
            i64::MAX => "end of input".to_string(),
            ms => utc_millis(ms),
        };
        Watermark { millis, time }
    }
}

/// Epoch ms in UTC (RFC 3339 with ms); times before 1970 as the number.
pub fn utc_millis(ms: i64) -> String {
    if ms < 0 {
        return ms.to_string();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// One operator.
#[derive(Debug, Serialize)]
pub struct OperatorInfo {
    /// Stable id (what restores match state by).
    pub uid: String,
    /// Display name (its kind of operator).
    pub name: String,
    /// Source, sink, keyed or operator.
    pub role: Role,
    /// Parallelism at the snapshot.
    pub parallelism: usize,
    /// Keyed states, summed over subtasks.
    pub states: Vec<StateReport>,
    /// Registered timers over all subtasks.
    pub timers: u64,
    /// The lowest watermark of its subtasks.
    pub watermark: Watermark,
    /// Sources: the position summed over subtasks.
    pub source: Option<SourceSummary>,
    /// Transactional sinks: what is pending over subtasks.
    pub sink: Option<SinkSummary>,
    /// Its subtasks.
    pub subtasks: Vec<SubtaskInfo>,
}

/// A source's position over all its subtasks.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceSummary {
    /// File source.
    File {
        /// Finished splits.
        splits_done: usize,
        /// All splits.
        splits_total: usize,
        /// Bytes read.
        bytes_read: u64,
        /// Bytes of all splits.
        bytes_total: u64,
    },
    /// Kafka source.
    Kafka {
        /// The topic.
        topic: String,
        /// Every partition read, in order.
        partitions: Vec<PartitionInfo>,
    },
    /// The Nexmark generator: next event index per subtask.
    Generator {
        /// Next event index of each subtask.
        next: Vec<u64>,
    },
    /// A source whose state weir does not know (see the subtasks' `operator_state`).
    Other,
}

/// A Kafka partition of a source.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PartitionInfo {
    /// Partition number.
    pub partition: i32,
    /// Offset of the next record to read: a restore starts here.
    pub next_offset: i64,
    /// With `--stop-at-end`: the offset reading stops at.
    pub stop_offset: Option<i64>,
    /// With `--brokers`: the partition's end offset now.
    pub end_offset: Option<i64>,
    /// With `--brokers`: records after `next_offset` now (`end_offset - next_offset`).
    pub lag: Option<i64>,
}

/// What a transactional sink has pending over all its subtasks.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkSummary {
    /// File sink: part files that become visible when their checkpoint completes (or on restore).
    Files {
        /// Pending part files.
        pending_files: usize,
        /// The checkpoints that commit them.
        checkpoints: Vec<u64>,
    },
    /// Exactly-once Kafka sink.
    Kafka {
        /// `exactly-once-txn` rather than `exactly-once-publish`.
        transactional: bool,
        /// The output topic.
        topic: String,
        /// Transactional ids (or producer headers), one per subtask.
        producer_ids: Vec<String>,
        /// Epochs (transactions) not known to be committed.
        pending_epochs: usize,
        /// Records in them.
        pending_records: usize,
        /// The checkpoints that commit them.
        checkpoints: Vec<u64>,
    },
}

/// One subtask of an operator.
#[derive(Debug, Serialize)]
pub struct SubtaskInfo {
    /// Index.
    pub subtask: usize,
    /// Key groups (inclusive), if keyed.
    pub key_groups: Option<[u16; 2]>,
    /// Its watermark.
    pub watermark: Watermark,
    /// Registered timers.
    pub timers: u64,
    /// Sources: its position.
    pub source: Option<SourcePosition>,
    /// Transactional sinks: what it has pending.
    pub sink: Option<SinkPending>,
    /// The operator state as stored (the operator's own format: not stable).
    pub operator_state: Option<serde_json::Value>,
}

/// Builds the inspection of a loaded snapshot (reads every subtask's files).
pub fn inspect(snapshot: &LoadedSnapshot) -> Result<Inspection> {
    let report = weir_checkpoint::inspect::inspect(snapshot)?;
    let operators = report.operators.into_iter().map(operator_info).collect();
    Ok(Inspection {
        job: report.job,
        kind: report.kind,
        checkpoint_id: report.checkpoint_id,
        timestamp: report.timestamp,
        taken_at: utc_millis(report.timestamp),
        max_parallelism: report.max_parallelism,
        operators,
    })
}

fn operator_info(op: weir_checkpoint::inspect::OperatorReport) -> OperatorInfo {
    let subtasks: Vec<SubtaskInfo> = op
        .subtasks
        .into_iter()
        .map(|s| {
            let state = s.operator_state;
            let source = state.as_ref().and_then(source_position).map(|(p, _)| p);
            let sink = if source.is_none() { state.as_ref().and_then(sink_pending) } else { None };
            SubtaskInfo {
                subtask: s.subtask,
                key_groups: s.key_groups,
                watermark: Watermark::of(s.watermark),
                timers: s.timers,
                source,
                sink,
                operator_state: state,
            }
        })
        .collect();
    let keyed = subtasks.iter().any(|s| s.key_groups.is_some());
    let role = if subtasks.iter().any(|s| s.source.is_some()) {
        Role::Source
    } else if subtasks.iter().any(|s| s.sink.is_some()) {
        Role::Sink
    } else if keyed {
        Role::Keyed
    } else {
        Role::Operator
    };
    let watermark = Watermark::of(subtasks.iter().map(|s| s.watermark.millis).min().unwrap_or(i64::MIN));
    OperatorInfo {
        uid: op.uid,
        name: op.name,
        role,
        parallelism: op.parallelism,
        states: op.states,
        timers: subtasks.iter().map(|s| s.timers).sum(),
        watermark,
        source: source_summary(&subtasks),
        sink: sink_summary(&subtasks),
        subtasks,
    }
}

fn source_summary(subtasks: &[SubtaskInfo]) -> Option<SourceSummary> {
    let positions: Vec<&SourcePosition> = subtasks.iter().filter_map(|s| s.source.as_ref()).collect();
    let first = positions.first()?;
    Some(match first {
        SourcePosition::File(_) => {
            let files = positions.iter().filter_map(|p| if let SourcePosition::File(f) = p { Some(f) } else { None });
            let (mut done, mut total, mut read, mut bytes) = (0, 0, 0, 0);
            for f in files {
                done += f.splits_done();
                total += f.splits.len();
                read += f.bytes_read();
                bytes += f.bytes_total();
            }
            SourceSummary::File { splits_done: done, splits_total: total, bytes_read: read, bytes_total: bytes }
        }
        SourcePosition::Kafka(k) => {
            let mut partitions: Vec<PartitionInfo> = positions
                .iter()
                .filter_map(|p| if let SourcePosition::Kafka(k) = p { Some(&k.partitions) } else { None })
                .flatten()
                .map(|p| PartitionInfo {
                    partition: p.partition,
                    next_offset: p.next_offset,
                    stop_offset: p.stop_offset,
                    end_offset: None,
                    lag: None,
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            SourceSummary::Kafka { topic: k.topic.clone(), partitions }
        }
        SourcePosition::Generator { .. } => SourceSummary::Generator {
            next: positions
                .iter()
                .filter_map(|p| if let SourcePosition::Generator { next } = p { Some(*next) } else { None })
                .collect(),
        },
        SourcePosition::Other { .. } => SourceSummary::Other,
    })
}

fn sink_summary(subtasks: &[SubtaskInfo]) -> Option<SinkSummary> {
    let pending: Vec<&SinkPending> = subtasks.iter().filter_map(|s| s.sink.as_ref()).collect();
    let first = pending.first()?;
    let mut checkpoints: Vec<u64> = pending.iter().flat_map(|p| p.checkpoints()).collect();
    checkpoints.sort_unstable();
    checkpoints.dedup();
    Some(match first {
        SinkPending::Files { .. } => {
            SinkSummary::Files { pending_files: pending.iter().map(|p| p.checkpoints().len()).sum(), checkpoints }
        }
        SinkPending::Kafka { transactional, topic, .. } => {
            let (mut ids, mut epochs, mut records) = (Vec::new(), 0, 0);
            for p in &pending {
                if let SinkPending::Kafka { producer_id, pending, .. } = p {
                    ids.push(producer_id.clone());
                    epochs += pending.len();
                    records += pending.iter().map(|e| e.records).sum::<usize>();
                }
            }
            SinkSummary::Kafka {
                transactional: *transactional,
                topic: topic.clone(),
                producer_ids: ids,
                pending_epochs: epochs,
                pending_records: records,
                checkpoints,
            }
        }
    })
}

/// Adds each Kafka source partition's end offset now and the lag behind it, asking `brokers`.
pub fn add_kafka_lag(inspection: &mut Inspection, brokers: &str) -> Result<()> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let timeout = std::time::Duration::from_secs(30);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "weir-inspect")
        .set("enable.auto.commit", "false")
        .create()
        .context("creating a Kafka consumer")?;
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for op in &mut inspection.operators {
        let Some(SourceSummary::Kafka { topic, partitions }) = &mut op.source else { continue };
        for p in partitions {
            let key = (topic.clone(), p.partition);
            let end = match ends.get(&key) {
                Some(e) => *e,
                None => {
                    let (_, high) = consumer.fetch_watermarks(topic, p.partition, timeout).with_context(|| {
                        format!("reading the end of {topic} partition {} from {brokers}", p.partition)
                    })?;
                    ends.insert(key, high);
                    high
                }
            };
            p.end_offset = Some(end);
            p.lag = Some((end - p.next_offset).max(0));
        }
    }
    Ok(())
}
