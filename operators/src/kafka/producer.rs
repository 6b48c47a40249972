//! What every delivery mode of the Kafka sink shares: one producer per sink subtask, the choice
//! of partition per record, sending with retries, and reading back which records of a producer a
//! topic already holds (by the `weir.producer` / `weir.epoch` / `weir.seq` headers).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use weir_runtime::fault::crash_point;
use weir_runtime::TaskInfo;

use super::sink::KafkaSink;
use super::state::{Epoch, OutRecord};

/// How long a Kafka call may take before the sink fails.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn header_str<'a>(headers: &'a rdkafka::message::BorrowedHeaders, name: &str) -> Option<&'a str> {
    headers.iter().find(|h| h.key == name).and_then(|h| h.value).and_then(|v| std::str::from_utf8(v).ok())
}

/// One sink subtask's producer and the output topic's layout.
pub(crate) struct KafkaWriter<T> {
    pub sink: KafkaSink<T>,
    producer: Option<BaseProducer>,
    partitions: i32,
    /// `exactly-once-txn`: the transactional id; otherwise the `weir.producer` header.
    pub producer_id: String,
    pub subtask: usize,
    next_partition: i32,
    /// Exactly-once modes: the records since the last barrier, with their partitions chosen.
    staged: Vec<OutRecord>,
}

impl<T> KafkaWriter<T> {
    pub(crate) fn new(sink: KafkaSink<T>) -> Self {
        KafkaWriter {
            sink,
            producer: None,
            partitions: 0,
            producer_id: String::new(),
            subtask: 0,
            next_partition: 0,
            staged: Vec::new(),
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.producer.is_some()
    }

    pub(crate) fn producer(&self) -> Result<&BaseProducer> {
        self.producer.as_ref().ok_or_else(|| anyhow!("Kafka sink used before open"))
    }

    /// An idempotent, non-transactional producer.
    pub(crate) fn idempotent_producer(&self) -> Result<BaseProducer> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.sink.brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .context("creating the Kafka producer")
    }

    /// A producer with `transactional_id`, initialised: a zombie holding the id is fenced and its
    /// open transaction aborted.
    pub(crate) fn txn_producer(&self, transactional_id: &str) -> Result<BaseProducer> {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.sink.brokers)
            .set("transactional.id", transactional_id)
            .set("transaction.timeout.ms", self.sink.transaction_timeout.as_millis().to_string())
            .set("linger.ms", "5")
            .create()
            .context("creating the transactional Kafka producer")?;
        producer
            .init_transactions(TIMEOUT)
            .with_context(|| format!("initialising transactional id {transactional_id}"))?;
        Ok(producer)
    }

    /// Takes `producer` as this subtask's, named `producer_id`, once the output topic is known
    /// to exist.
    pub(crate) fn attach(&mut self, info: &TaskInfo, producer_id: String, producer: BaseProducer) -> Result<()> {
        let meta = producer.client().fetch_metadata(Some(&self.sink.topic), TIMEOUT)?;
        let n = meta.topics().iter().find(|t| t.name() == self.sink.topic).map_or(0, |t| t.partitions().len());
        if n == 0 {
            bail!("output topic {} does not exist or has no partitions", self.sink.topic);
        }
        self.partitions = n as i32;
        self.subtask = info.subtask;
        self.producer_id = producer_id;
        self.producer = Some(producer);
        Ok(())
    }

    /// The record for `(key, value)`: keyed records go to the partition of their key's hash,
    /// others round robin.
    pub(crate) fn record(&mut self, key: Option<String>, value: String) -> OutRecord {
        let partition = match &key {
            Some(k) => (xxhash_rust::xxh3::xxh3_64(k.as_bytes()) % self.partitions as u64) as i32,
            None => {
                self.next_partition = (self.next_partition + 1) % self.partitions;
                self.next_partition
            }
        };
        OutRecord { partition, key, value }
    }

    /// Exactly-once modes: serializes `value` and keeps it for the epoch of the next barrier.
    pub(crate) fn stage(&mut self, value: &T) {
        let (key, value) = (self.sink.serialize)(value);
        let r = self.record(key, value);
        self.staged.push(r);
    }

    /// The records staged since the last barrier, taken.
    pub(crate) fn take_staged(&mut self) -> Vec<OutRecord> {
        std::mem::take(&mut self.staged)
    }

    pub(crate) fn headers(producer_id: &str, epoch: u64, seq: usize) -> OwnedHeaders {
        OwnedHeaders::new()
            .insert(Header { key: "weir.producer", value: Some(producer_id) })
            .insert(Header { key: "weir.epoch", value: Some(&epoch.to_string()) })
            .insert(Header { key: "weir.seq", value: Some(&seq.to_string()) })
    }

    pub(crate) fn send(&self, r: &OutRecord, headers: Option<OwnedHeaders>) -> Result<()> {
        self.send_with(self.producer()?, r, headers)
    }

    /// Sends `r` with `p`, waiting while the producer's queue is full.
    pub(crate) fn send_with(&self, p: &BaseProducer, r: &OutRecord, headers: Option<OwnedHeaders>) -> Result<()> {
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

    pub(crate) fn flush(&self) -> Result<()> {
        self.producer()?.flush(TIMEOUT).with_context(|| format!("flushing to {}", self.sink.topic))
    }

    /// The end offset of every output partition now.
    pub(crate) fn end_offsets(&self) -> Result<BTreeMap<i32, i64>> {
        let p = self.producer()?;
        let mut out = BTreeMap::new();
        for part in 0..self.partitions {
            let (_, high) = p.client().fetch_watermarks(&self.sink.topic, part, TIMEOUT)?;
            out.insert(part, high);
        }
        Ok(out)
    }

    /// Publishes the records of `epoch` under `producer_id`, skipping those already published.
    pub(crate) fn publish(&self, producer_id: &str, epoch: &Epoch, skip: &HashSet<(u64, usize)>) -> Result<()> {
        for (seq, r) in epoch.records.iter().enumerate() {
            if skip.contains(&(epoch.checkpoint, seq)) {
                continue;
            }
            self.send(r, Some(Self::headers(producer_id, epoch.checkpoint, seq)))?;
            if seq == 0 {
                crash_point("mid-publish", epoch.checkpoint);
            }
        }
        Ok(())
    }

    /// Which (epoch, seq) of `producer_id` are already in the topic after `from` offsets.
    pub(crate) fn read_back(&self, producer_id: &str, from: &BTreeMap<i32, i64>) -> Result<HashSet<(u64, usize)>> {
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
