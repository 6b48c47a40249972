//! The Kafka sink.
//!
//! * `at-least-once`: an idempotent producer, flushed at every checkpoint barrier.
//! * `exactly-once-publish` (works on any Kafka-protocol broker, needs no `read_committed`): the
//!   records of epoch `n` (between barriers `n-1` and `n`) are kept in the sink's checkpointed state
//!   and published only once checkpoint `n` completes, each with headers `weir.producer`
//!   (`<uid>-<subtask>`), `weir.epoch` and `weir.seq`. The state also holds, per pending epoch, the
//!   end offsets of the output partitions when the epoch was snapshotted; a restored sink reads its
//!   partitions back from there, finds which records of its pending epochs were already published
//!   (a crash in the middle of publishing), and publishes only the rest.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::marker::PhantomData;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use weir_runtime::fault::crash_point;
use weir_runtime::{Collector, Data, Operator, OperatorContext, Record};

const TIMEOUT: Duration = Duration::from_secs(30);

/// How the Kafka sink delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Every record at least once (duplicates possible after a failure).
    AtLeastOnce,
    /// Every record exactly once, published after its checkpoint completes (any broker).
    ExactlyOncePublish,
}

impl FromStr for Delivery {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "at-least-once" => Ok(Delivery::AtLeastOnce),
            "exactly-once-publish" => Ok(Delivery::ExactlyOncePublish),
            "exactly-once-txn" => Err("exactly-once-txn is not built yet; use exactly-once-publish".into()),
            _ => Err(format!("'{s}' is not one of at-least-once, exactly-once-publish")),
        }
    }
}

/// Turns a record into an optional key and a value.
pub type Serializer<T> = Arc<dyn Fn(&T) -> (Option<String>, String) + Send + Sync>;

/// Writes records to a Kafka topic.
pub struct KafkaSink<T> {
    brokers: String,
    topic: String,
    delivery: Delivery,
    serialize: Serializer<T>,
}

impl<T> Clone for KafkaSink<T> {
    fn clone(&self) -> Self {
        KafkaSink {
            brokers: self.brokers.clone(),
            topic: self.topic.clone(),
            delivery: self.delivery,
            serialize: self.serialize.clone(),
        }
    }
}

impl<T: Data> KafkaSink<T> {
    /// Records of `topic`, turned into (key, value) by `serialize`.
    pub fn new(
        brokers: &str,
        topic: &str,
        delivery: Delivery,
        serialize: impl Fn(&T) -> (Option<String>, String) + Send + Sync + 'static,
    ) -> Self {
        KafkaSink { brokers: brokers.to_string(), topic: topic.to_string(), delivery, serialize: Arc::new(serialize) }
    }

    pub(crate) fn operator(&self) -> KafkaSinkOperator<T> {
        KafkaSinkOperator {
            sink: self.clone(),
            producer: None,
            partitions: 0,
            producer_id: String::new(),
            subtask: 0,
            current: Vec::new(),
            pending: Vec::new(),
            next_partition: 0,
            _t: PhantomData,
        }
    }
}

/// One record of an epoch, with the partition chosen for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct OutRecord {
    partition: i32,
    key: Option<String>,
    value: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Epoch {
    checkpoint: u64,
    /// End offsets of the output partitions when the epoch was snapshotted: its records can only
    /// be after them.
    start_offsets: BTreeMap<i32, i64>,
    records: Vec<OutRecord>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SinkState {
    subtask: usize,
    producer_id: String,
    pending: Vec<Epoch>,
}

/// The sink operator of one subtask.
pub struct KafkaSinkOperator<T> {
    sink: KafkaSink<T>,
    producer: Option<BaseProducer>,
    partitions: i32,
    producer_id: String,
    subtask: usize,
    current: Vec<OutRecord>,
    pending: Vec<Epoch>,
    next_partition: i32,
    _t: PhantomData<fn(T)>,
}

fn header_str<'a>(headers: &'a rdkafka::message::BorrowedHeaders, name: &str) -> Option<&'a str> {
    headers.iter().find(|h| h.key == name).and_then(|h| h.value).and_then(|v| std::str::from_utf8(v).ok())
}

impl<T> KafkaSinkOperator<T> {
    fn producer(&self) -> Result<&BaseProducer> {
        self.producer.as_ref().ok_or_else(|| anyhow!("Kafka sink used before open"))
    }

    fn connect(&mut self, info: &weir_runtime::TaskInfo) -> Result<()> {
        if self.producer.is_some() {
            return Ok(());
        }
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.sink.brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .context("creating the Kafka producer")?;
        let meta = producer.client().fetch_metadata(Some(&self.sink.topic), TIMEOUT)?;
        let n = meta.topics().iter().find(|t| t.name() == self.sink.topic).map_or(0, |t| t.partitions().len());
        if n == 0 {
            bail!("output topic {} does not exist or has no partitions", self.sink.topic);
        }
        self.partitions = n as i32;
        self.subtask = info.subtask;
        self.producer_id = format!("{}-{}", info.uid, info.subtask);
        self.producer = Some(producer);
        Ok(())
    }

    fn send(&self, r: &OutRecord, headers: Option<OwnedHeaders>) -> Result<()> {
        let p = self.producer()?;
        let mut rec = BaseRecord::<String, String>::to(&self.sink.topic).partition(r.partition).payload(&r.value);
        if let Some(k) = &r.key {
            rec = rec.key(k);
        }
        if let Some(h) = headers {
            rec = rec.headers(h);
        }
        let mut rec = rec;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match p.send(rec) {
                Ok(()) => return Ok(()),
                Err((e, back)) => {
                    if Instant::now() > deadline {
                        bail!("producing to {}: {e}", self.sink.topic);
                    }
                    rec = back;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }

    fn flush(&self) -> Result<()> {
        self.producer()?.flush(TIMEOUT).with_context(|| format!("flushing to {}", self.sink.topic))
    }

    fn end_offsets(&self) -> Result<BTreeMap<i32, i64>> {
        let p = self.producer()?;
        let mut out = BTreeMap::new();
        for part in 0..self.partitions {
            let (_, high) = p.client().fetch_watermarks(&self.sink.topic, part, TIMEOUT)?;
            out.insert(part, high);
        }
        Ok(out)
    }

    /// Publishes the records of `epoch` under `producer_id`, skipping those already published.
    fn publish(&self, producer_id: &str, epoch: &Epoch, skip: &HashSet<(u64, usize)>) -> Result<()> {
        for (seq, r) in epoch.records.iter().enumerate() {
            if skip.contains(&(epoch.checkpoint, seq)) {
                continue;
            }
            let headers = OwnedHeaders::new()
                .insert(Header { key: "weir.producer", value: Some(producer_id) })
                .insert(Header { key: "weir.epoch", value: Some(&epoch.checkpoint.to_string()) })
                .insert(Header { key: "weir.seq", value: Some(&seq.to_string()) });
            self.send(r, Some(headers))?;
            if seq == 0 {
                crash_point("mid-publish", epoch.checkpoint);
            }
        }
        Ok(())
    }

    /// Which (epoch, seq) of `producer_id` are already in the topic after `from` offsets.
    fn read_back(&self, producer_id: &str, from: &BTreeMap<i32, i64>) -> Result<HashSet<(u64, usize)>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.sink.brokers)
            .set("group.id", format!("weir-readback-{producer_id}"))
            .set("enable.auto.commit", "false")
            .create()?;
        let mut seen = HashSet::new();
        for (&part, &start) in from {
            let (_, high) = consumer.fetch_watermarks(&self.sink.topic, part, TIMEOUT)?;
            if start >= high {
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.sink.topic, part, Offset::Offset(start))?;
            consumer.assign(&tpl)?;
            let deadline = Instant::now() + TIMEOUT;
            let mut next = start;
            while next < high {
                if Instant::now() > deadline {
                    bail!("reading back partition {part} of {} timed out at offset {next}", self.sink.topic);
                }
                let Some(m) = consumer.poll(Duration::from_millis(100)) else { continue };
                let m = m?;
                next = m.offset() + 1;
                let Some(h) = m.headers() else { continue };
                if header_str(h, "weir.producer") != Some(producer_id) {
                    continue;
                }
                let epoch = header_str(h, "weir.epoch").and_then(|v| v.parse().ok());
                let seq = header_str(h, "weir.seq").and_then(|v| v.parse().ok());
                if let (Some(e), Some(s)) = (epoch, seq) {
                    seen.insert((e, s));
                }
            }
        }
        Ok(seen)
    }
}

impl<T: Data> Operator for KafkaSinkOperator<T> {
    type In = T;
    type Out = ();

    fn restore_state(&mut self, states: Vec<Vec<u8>>, ctx: &mut OperatorContext) -> Result<()> {
        if self.sink.delivery != Delivery::ExactlyOncePublish {
            return Ok(());
        }
        self.connect(ctx.info())?;
        let p = ctx.info().parallelism;
        for bytes in states {
            let st: SinkState = serde_json::from_slice(&bytes).context("decoding a Kafka sink snapshot")?;
            if st.subtask % p != self.subtask || st.pending.is_empty() {
                continue;
            }
            // Every pending epoch of a restored checkpoint is complete: publish what is missing.
            let mut from: BTreeMap<i32, i64> = BTreeMap::new();
            for e in &st.pending {
                for (&part, &o) in &e.start_offsets {
                    let v = from.entry(part).or_insert(o);
                    *v = (*v).min(o);
                }
            }
            let done = self.read_back(&st.producer_id, &from)?;
            for e in &st.pending {
                self.publish(&st.producer_id, e, &done)?;
            }
            self.flush()?;
        }
        Ok(())
    }

    fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        self.connect(ctx.info())
    }

    fn process(&mut self, r: Record<T>, _: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        let (key, value) = (self.sink.serialize)(&r.value);
        let partition = match &key {
            Some(k) => (xxhash_rust::xxh3::xxh3_64(k.as_bytes()) % self.partitions as u64) as i32,
            None => {
                self.next_partition = (self.next_partition + 1) % self.partitions;
                self.next_partition
            }
        };
        let rec = OutRecord { partition, key, value };
        match self.sink.delivery {
            Delivery::ExactlyOncePublish => self.current.push(rec),
            Delivery::AtLeastOnce => {
                self.send(&rec, None)?;
                self.producer()?.poll(Duration::ZERO);
            }
        }
        Ok(())
    }

    fn end_input(&mut self, ctx: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        if self.sink.delivery == Delivery::ExactlyOncePublish && !ctx.checkpointing() {
            bail!("exactly-once-publish needs checkpoints (--checkpoint-dir and --checkpoint-interval)");
        }
        self.flush()
    }

    fn snapshot_state(&mut self, checkpoint_id: u64, _: &mut OperatorContext) -> Result<Option<Vec<u8>>> {
        match self.sink.delivery {
            Delivery::AtLeastOnce => {
                self.flush()?;
                Ok(None)
            }
            Delivery::ExactlyOncePublish => {
                if !self.current.is_empty() {
                    let start_offsets = self.end_offsets()?;
                    let records = std::mem::take(&mut self.current);
                    self.pending.push(Epoch { checkpoint: checkpoint_id, start_offsets, records });
                }
                let st = SinkState {
                    subtask: self.subtask,
                    producer_id: self.producer_id.clone(),
                    pending: self.pending.clone(),
                };
                Ok(Some(serde_json::to_vec(&st)?))
            }
        }
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64, _: &mut OperatorContext) -> Result<()> {
        let (ready, later): (Vec<Epoch>, Vec<Epoch>) =
            std::mem::take(&mut self.pending).into_iter().partition(|e| e.checkpoint <= checkpoint_id);
        self.pending = later;
        if ready.is_empty() {
            return Ok(());
        }
        let none = HashSet::new();
        for e in &ready {
            self.publish(&self.producer_id, e, &none)?;
        }
        self.flush()
    }
}

/// Counts what a topic holds per (producer, epoch, seq), for tests and tools.
pub fn published_ids(brokers: &str, topic: &str) -> Result<HashMap<(String, u64, usize), usize>> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", "weir-published-ids").create()?;
    let meta = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let parts: Vec<i32> = meta
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let mut out = HashMap::new();
    for part in parts {
        let (low, high) = consumer.fetch_watermarks(topic, part, TIMEOUT)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, part, Offset::Offset(low))?;
        consumer.assign(&tpl)?;
        let mut next = low;
        while next < high {
            let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
            let m = m?;
            next = m.offset() + 1;
            if let Some(h) = m.headers() {
                let p = header_str(h, "weir.producer").unwrap_or_default().to_string();
                let e = header_str(h, "weir.epoch").and_then(|v| v.parse().ok()).unwrap_or(0);
                let s = header_str(h, "weir.seq").and_then(|v| v.parse().ok()).unwrap_or(0);
                *out.entry((p, e, s)).or_insert(0) += 1;
            }
        }
    }
    Ok(out)
}
