//! The Kafka source: partitions are assigned to subtasks deterministically (`partition %
//! parallelism == subtask`, no consumer-group rebalancing in the data path); the offsets are part
//! of every checkpoint, which is their source of truth, and are committed back to the consumer
//! group when a checkpoint completes, for lag tools.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use weir_runtime::{Data, Source, SourceOutput, SourcePoll, SourceReader, TaskInfo};

use crate::sources::{DeadLetter, LineParser, OnMalformed};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Where a partition starts when no checkpoint says otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartOffsets {
    /// The oldest record still in the partition.
    Earliest,
    /// Only records produced from now on.
    Latest,
    /// The consumer group's committed offset (earliest where there is none).
    Committed,
    /// The first record with a timestamp at or after this (epoch ms).
    Timestamp(i64),
}

impl FromStr for StartOffsets {
    type Err = String;
    /// Parses `earliest`, `latest`, `committed` or `timestamp:MS`.
    ///
    /// ```
    /// use weir_operators::kafka::StartOffsets;
    /// assert_eq!("timestamp:1700000000000".parse(), Ok(StartOffsets::Timestamp(1_700_000_000_000)));
    /// assert!("yesterday".parse::<StartOffsets>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => Ok(StartOffsets::Earliest),
            "latest" => Ok(StartOffsets::Latest),
            "committed" => Ok(StartOffsets::Committed),
            _ => match s.strip_prefix("timestamp:").map(str::parse) {
                Some(Ok(ms)) => Ok(StartOffsets::Timestamp(ms)),
                _ => Err(format!("'{s}' is not one of earliest, latest, committed, timestamp:MS")),
            },
        }
    }
}

/// Records of a Kafka topic, parsed from their values.
pub struct KafkaSource<T> {
    brokers: String,
    topic: String,
    group: String,
    start: StartOffsets,
    stop_at_end: bool,
    parse: LineParser<T>,
    on_malformed: OnMalformed,
    config: Vec<(String, String)>,
    rate: Option<u64>,
}

impl<T> Clone for KafkaSource<T> {
    fn clone(&self) -> Self {
        KafkaSource {
            brokers: self.brokers.clone(),
            topic: self.topic.clone(),
            group: self.group.clone(),
            start: self.start,
            stop_at_end: self.stop_at_end,
            parse: self.parse.clone(),
            on_malformed: self.on_malformed.clone(),
            config: self.config.clone(),
            rate: self.rate,
        }
    }
}

impl<T: DeserializeOwned + 'static> KafkaSource<T> {
    /// Record values of `topic` parsed as JSON into `T`.
    pub fn json(brokers: &str, topic: &str) -> Self {
        KafkaSource::new(brokers, topic, |v| Ok(serde_json::from_slice(v)?))
    }
}

impl KafkaSource<String> {
    /// Record values of `topic` as UTF-8 text.
    pub fn text(brokers: &str, topic: &str) -> Self {
        KafkaSource::new(brokers, topic, |v| Ok(std::str::from_utf8(v).context("value is not UTF-8")?.to_string()))
    }
}

impl<T> KafkaSource<T> {
    /// Record values of `topic` parsed by `parse`.
    pub fn new(brokers: &str, topic: &str, parse: impl Fn(&[u8]) -> Result<T> + Send + Sync + 'static) -> Self {
        KafkaSource {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            group: format!("weir-{topic}"),
            start: StartOffsets::Earliest,
            stop_at_end: false,
            parse: Arc::new(parse),
            on_malformed: OnMalformed::Fail,
            config: Vec::new(),
            rate: None,
        }
    }

    /// Reads at most `records_per_second` per subtask (whole batches at a time).
    pub fn rate_limit(mut self, records_per_second: u64) -> Self {
        self.rate = Some(records_per_second.max(1));
        self
    }

    /// Where partitions start without a checkpoint (default: earliest).
    pub fn start_offsets(mut self, start: StartOffsets) -> Self {
        self.start = start;
        self
    }

    /// Reads up to the end offsets seen when the job first started, then ends (bounded).
    pub fn stop_at_end(mut self, stop: bool) -> Self {
        self.stop_at_end = stop;
        self
    }

    /// The consumer group offsets are committed to (default `weir-<topic>`).
    pub fn group(mut self, group: &str) -> Self {
        self.group = group.to_string();
        self
    }

    /// Sends unparsable records to a dead-letter side output instead of failing the job.
    pub fn dead_letters(mut self, tag: &weir_runtime::OutputTag<DeadLetter>) -> Self {
        self.on_malformed = OnMalformed::DeadLetter(tag.clone());
        self
    }

    /// Any other librdkafka consumer setting.
    pub fn config(mut self, key: &str, value: &str) -> Self {
        self.config.push((key.to_string(), value.to_string()));
        self
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct PartitionState {
    partition: i32,
    /// Next offset to read.
    next: i64,
    /// With stop-at-end: the offset the partition ends at.
    end: Option<i64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct KafkaState {
    topic: String,
    partitions: Vec<PartitionState>,
}

/// A Kafka source reader's checkpointed state as the inspection tools show it.
pub(crate) fn position(reader: &serde_json::Value) -> Option<crate::describe::KafkaPosition> {
    let st: KafkaState = serde_json::from_value(reader.clone()).ok()?;
    let mut partitions: Vec<_> = st
        .partitions
        .into_iter()
        .map(|p| crate::describe::PartitionPosition { partition: p.partition, next_offset: p.next, stop_offset: p.end })
        .collect();
    partitions.sort_by_key(|p| p.partition);
    Some(crate::describe::KafkaPosition { topic: st.topic, partitions })
}

/// librdkafka's errors go to the log as with rdkafka's default context, except end-of-partition
/// events: a bounded read asks for them and handles them (they are not errors).
struct SourceContext;

impl ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if !eof {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for SourceContext {}

struct KafkaReader<T> {
    source: KafkaSource<T>,
    consumer: BaseConsumer<SourceContext>,
    partitions: BTreeMap<i32, PartitionState>,
    finished: Vec<i32>,
    /// Partitions are assigned at the first poll, once a restore has set the offsets: assigning
    /// at creation and again on restore made librdkafka stop partitions that were still starting,
    /// which can abort the process in its teardown (librdkafka#5573).
    assigned: bool,
    registered: bool,
    snapshots: BTreeMap<u64, Vec<(i32, i64)>>,
    pace: Option<crate::sources::Pace>,
}

impl<T> KafkaReader<T> {
    fn assign(&self) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for p in self.partitions.values() {
            tpl.add_partition_offset(&self.source.topic, p.partition, Offset::Offset(p.next))?;
        }
        self.consumer.assign(&tpl).context("assigning partitions")?;
        Ok(())
    }

    /// The consumer caught up with `partition`: it read everything up to the partition's current
    /// end (the last stable offset for a `read_committed` reader), which is at or beyond the
    /// bounded end taken at the first start, since that end only grows. So nothing before the
    /// bounded end is left, also where the offsets up to it are transaction markers that never
    /// arrive as records.
    fn reached_end(&mut self, partition: i32) {
        if let Some(st) = self.partitions.get_mut(&partition) {
            if let Some(end) = st.end {
                st.next = st.next.max(end);
            }
        }
    }

    fn done(&self, p: &PartitionState) -> bool {
        p.end.is_some_and(|e| p.next >= e)
    }
}

impl<T: Data> Source<T> for KafkaSource<T> {
    fn create_reader(&self, info: &TaskInfo) -> Result<Box<dyn SourceReader<T>>> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            // End-of-partition events tell a bounded read that it is done even where the last
            // offsets before its end are transaction markers, which are never delivered.
            .set("enable.partition.eof", if self.stop_at_end { "true" } else { "false" })
            // librdkafka postpones a partition's next fetch by this much whenever its local queue
            // is over queued.min.messages; the default (1 s) left the source idle three quarters
            // of the time once it drained the queue faster than that (5 M bids, 8 partitions,
            // p=2: 12.8 s with the default, 3.0 s with 10 ms, the same CPU time).
            .set("fetch.queue.backoff.ms", "10");
        for (k, v) in &self.config {
            cfg.set(k, v);
        }
        let consumer: BaseConsumer<SourceContext> =
            cfg.create_with_context(SourceContext).context("creating the Kafka consumer")?;
        let meta = consumer
            .fetch_metadata(Some(&self.topic), TIMEOUT)
            .with_context(|| format!("reading metadata of topic {}", self.topic))?;
        let topic =
            meta.topics().iter().find(|t| t.name() == self.topic).ok_or_else(|| anyhow!("no topic {}", self.topic))?;
        if topic.partitions().is_empty() {
            bail!("topic {} does not exist or has no partitions", self.topic);
        }
        let owned: Vec<i32> = topic
            .partitions()
            .iter()
            .map(|p| p.id())
            .filter(|p| *p as usize % info.parallelism == info.subtask)
            .collect();
        let mut partitions = BTreeMap::new();
        let committed = if self.start == StartOffsets::Committed {
            let mut tpl = TopicPartitionList::new();
            for p in &owned {
                tpl.add_partition(&self.topic, *p);
            }
            Some(consumer.committed_offsets(tpl, TIMEOUT).context("reading committed offsets")?)
        } else {
            None
        };
        for p in owned {
            let (low, high) = consumer.fetch_watermarks(&self.topic, p, TIMEOUT)?;
            let next = match self.start {
                StartOffsets::Earliest => low,
                StartOffsets::Latest => high,
                StartOffsets::Committed => {
                    match committed.as_ref().and_then(|c| c.find_partition(&self.topic, p)).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => o,
                        _ => low,
                    }
                }
                StartOffsets::Timestamp(ms) => {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition_offset(&self.topic, p, Offset::Offset(ms))?;
                    let found = consumer.offsets_for_times(tpl, TIMEOUT)?;
                    match found.find_partition(&self.topic, p).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => o,
                        _ => high,
                    }
                }
            };
            let end = self.stop_at_end.then_some(high);
            partitions.insert(p, PartitionState { partition: p, next, end });
        }
        let reader = KafkaReader {
            source: self.clone(),
            consumer,
            partitions,
            finished: Vec::new(),
            assigned: false,
            registered: false,
            snapshots: BTreeMap::new(),
            pace: self.rate.map(crate::sources::Pace::new),
        };
        Ok(Box::new(reader))
    }
}

impl<T: Data> SourceReader<T> for KafkaReader<T> {
    fn poll(&mut self, out: &mut SourceOutput<'_, T>) -> Result<SourcePoll> {
        if !self.assigned {
            self.assign()?;
            self.assigned = true;
        }
        if !self.registered {
            for p in self.partitions.keys() {
                out.register_split(*p as u64);
            }
            self.registered = true;
        }
        if let Some(wait) = self.pace.as_mut().and_then(|p| p.admit(out.remaining())) {
            return Ok(SourcePoll::Idle(wait));
        }
        let mut any = false;
        while out.remaining() > 0 {
            let msg = match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    self.reached_end(partition);
                    continue;
                }
                Some(msg) => msg.context("reading from Kafka")?,
            };
            let (partition, offset) = (msg.partition(), msg.offset());
            let Some(state) = self.partitions.get_mut(&partition) else { continue };
            if offset < state.next || state.end.is_some_and(|e| offset >= e) {
                continue;
            }
            state.next = offset + 1;
            any = true;
            let payload = msg.payload().unwrap_or_default();
            match (self.source.parse)(payload) {
                Ok(v) => out.collect_or_at(partition as u64, v, msg.timestamp().to_millis()),
                Err(e) => match &self.source.on_malformed {
                    OnMalformed::Fail => bail!(
                        "malformed record in topic {} partition {partition} at offset {offset}: {e:#}",
                        self.source.topic
                    ),
                    OnMalformed::DeadLetter(tag) => out.side(
                        tag,
                        DeadLetter {
                            origin: format!("{}/{partition}", self.source.topic),
                            offset: offset as u64,
                            line: None,
                            raw: String::from_utf8_lossy(payload).into_owned(),
                            error: format!("{e:#}"),
                        },
                    ),
                },
            }
        }
        for (p, st) in &self.partitions {
            if self.done(st) && !self.finished.contains(p) {
                self.finished.push(*p);
                out.finish_split(*p as u64);
            }
        }
        if self.source.stop_at_end && self.finished.len() == self.partitions.len() {
            return Ok(SourcePoll::Finished);
        }
        Ok(if any { SourcePoll::Ready } else { SourcePoll::Idle(Duration::from_millis(10)) })
    }

    fn snapshot_state(&mut self, checkpoint_id: u64) -> Result<serde_json::Value> {
        let partitions: Vec<PartitionState> = self.partitions.values().cloned().collect();
        self.snapshots.insert(checkpoint_id, partitions.iter().map(|p| (p.partition, p.next)).collect());
        Ok(serde_json::to_value(KafkaState { topic: self.source.topic.clone(), partitions })?)
    }

    fn restore_state(&mut self, states: Vec<serde_json::Value>) -> Result<()> {
        let mut restored: HashMap<i32, PartitionState> = HashMap::new();
        for st in states {
            let st: KafkaState = serde_json::from_value(st).context("decoding a Kafka source snapshot")?;
            if st.topic != self.source.topic {
                continue;
            }
            for p in st.partitions {
                restored.insert(p.partition, p);
            }
        }
        for (p, st) in self.partitions.iter_mut() {
            if let Some(r) = restored.remove(p) {
                *st = r;
            }
        }
        Ok(())
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        let Some(offsets) = self.snapshots.remove(&checkpoint_id) else { return Ok(()) };
        self.snapshots.retain(|id, _| *id > checkpoint_id);
        let mut tpl = TopicPartitionList::new();
        for (p, next) in offsets {
            tpl.add_partition_offset(&self.source.topic, p, Offset::Offset(next))?;
        }
        // Only informative (lag tools): the checkpoint holds the offsets that matter.
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!(error = %e, "committing offsets to the consumer group failed");
        }
        Ok(())
    }
}
