//! The Kafka sink.
//!
//! * `at-least-once`: an idempotent producer, flushed at every checkpoint barrier.
//! * `exactly-once-txn` (Flink's two-phase commit; needs a broker with full transaction support):
//!   one transactional producer per sink subtask with the stable `transactional.id`
//!   `<prefix>-<uid>-<subtask>`. At barrier `n` the records of epoch `n` are sent in a transaction
//!   together with a marker (the offset `n` committed for the group `weir-txn-<transactional.id>`)
//!   and flushed (pre-commit); the epoch's records also go into the checkpoint. When checkpoint `n`
//!   completes the transaction is committed. A restored sink initialises its transactional id
//!   (which fences a zombie and aborts its open transaction) and re-produces, in new
//!   transactions, every epoch of the checkpoint whose marker is missing: the crash window between
//!   "checkpoint complete" and "committed". Ids of subtasks that vanished with a lower
//!   parallelism are initialised (fenced) and repaired by the subtask that inherits their state.
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
    /// Every record exactly once for `read_committed` readers: a Kafka transaction per checkpoint
    /// (needs full transaction support in the broker).
    ExactlyOnceTxn,
}

impl FromStr for Delivery {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "at-least-once" => Ok(Delivery::AtLeastOnce),
            "exactly-once-publish" => Ok(Delivery::ExactlyOncePublish),
            "exactly-once-txn" => Ok(Delivery::ExactlyOnceTxn),
            _ => Err(format!("'{s}' is not one of at-least-once, exactly-once-publish, exactly-once-txn")),
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
    transactional_prefix: String,
    transaction_timeout: Duration,
}

impl<T> Clone for KafkaSink<T> {
    fn clone(&self) -> Self {
        KafkaSink {
            brokers: self.brokers.clone(),
            topic: self.topic.clone(),
            delivery: self.delivery,
            serialize: self.serialize.clone(),
            transactional_prefix: self.transactional_prefix.clone(),
            transaction_timeout: self.transaction_timeout,
        }
    }
}

/// The default `transaction.timeout.ms` of `exactly-once-txn`: Kafka's default upper bound
/// (`transaction.max.timeout.ms`).
pub const DEFAULT_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Checks at start-up that a transaction of `exactly-once-txn` can outlive its checkpoint: it is
/// opened at a checkpoint's barrier and committed when the checkpoint completes, which can take
/// up to the checkpoint timeout, after up to an interval and a pause.
///
/// ```
/// use std::time::Duration;
/// use weir_operators::kafka::check_transaction_timeout;
/// let mut args = weir_runtime::JobArgs::default();
/// args.checkpoint_dir = Some("/tmp/chk".into());
/// args.checkpoint_interval = Some(Duration::from_secs(10));
/// assert!(check_transaction_timeout(Duration::from_secs(15 * 60), &args).is_ok());
/// assert!(check_transaction_timeout(Duration::from_secs(60), &args).is_err());
/// ```
pub fn check_transaction_timeout(timeout: Duration, args: &weir_runtime::JobArgs) -> Result<()> {
    let Some(interval) = args.checkpoint_interval.filter(|_| args.checkpointing()) else {
        bail!("--delivery exactly-once-txn needs checkpoints (--checkpoint-dir and --checkpoint-interval)");
    };
    let needed = interval + args.min_pause + args.checkpoint_timeout;
    if timeout <= needed {
        bail!(
            "--transaction-timeout {} is too short: a transaction stays open from a checkpoint's barrier until the \
             checkpoint completes, up to --checkpoint-interval + --min-pause + --checkpoint-timeout = {}; raise \
             --transaction-timeout (and the broker's transaction.max.timeout.ms) or lower --checkpoint-timeout",
            humantime::format_duration(timeout),
            humantime::format_duration(needed)
        );
    }
    Ok(())
}

impl<T: Data> KafkaSink<T> {
    /// Records of `topic`, turned into (key, value) by `serialize`.
    pub fn new(
        brokers: &str,
        topic: &str,
        delivery: Delivery,
        serialize: impl Fn(&T) -> (Option<String>, String) + Send + Sync + 'static,
    ) -> Self {
        KafkaSink {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            delivery,
            serialize: Arc::new(serialize),
            transactional_prefix: "weir".to_string(),
            transaction_timeout: DEFAULT_TRANSACTION_TIMEOUT,
        }
    }

    /// `exactly-once-txn`: transactional ids are `<prefix>-<uid>-<subtask>` (default prefix
    /// `weir`); give each job writing to one cluster its own prefix.
    pub fn transactional_id_prefix(mut self, prefix: &str) -> Self {
        self.transactional_prefix = prefix.to_string();
        self
    }

    /// `exactly-once-txn`: the producers' `transaction.timeout.ms` (check it against the job's
    /// checkpoint settings with [`check_transaction_timeout`]).
    pub fn transaction_timeout(mut self, timeout: Duration) -> Self {
        self.transaction_timeout = timeout;
        self
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
            open_txn: None,
            marker: None,
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
    /// `exactly-once-txn`: the transactional id; `exactly-once-publish`: the `weir.producer` header.
    producer_id: String,
    pending: Vec<Epoch>,
    /// The output topic (tools read the transaction markers from it).
    #[serde(default)]
    topic: String,
    /// Whether `producer_id` is a transactional id (`exactly-once-txn`).
    #[serde(default)]
    transactional: bool,
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
    /// `exactly-once-txn`: the epoch whose transaction is open (sent and flushed, not committed).
    open_txn: Option<u64>,
    /// `exactly-once-txn`: the consumer of this subtask's marker group.
    marker: Option<BaseConsumer>,
    _t: PhantomData<fn(T)>,
}

/// The group whose committed offset marks the last epoch committed under `transactional_id`.
fn marker_group(transactional_id: &str) -> String {
    format!("weir-txn-{transactional_id}")
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
        self.producer_id = match self.sink.delivery {
            Delivery::ExactlyOnceTxn => format!("{}-{}-{}", self.sink.transactional_prefix, info.uid, info.subtask),
            _ => format!("{}-{}", info.uid, info.subtask),
        };
        let producer = match self.sink.delivery {
            Delivery::ExactlyOnceTxn => {
                let p = self.txn_producer(&self.producer_id)?;
                self.marker = Some(self.marker_consumer(&self.producer_id)?);
                p
            }
            _ => ClientConfig::new()
                .set("bootstrap.servers", &self.sink.brokers)
                .set("enable.idempotence", "true")
                .set("linger.ms", "5")
                .create()
                .context("creating the Kafka producer")?,
        };
        let meta = producer.client().fetch_metadata(Some(&self.sink.topic), TIMEOUT)?;
        let n = meta.topics().iter().find(|t| t.name() == self.sink.topic).map_or(0, |t| t.partitions().len());
        if n == 0 {
            bail!("output topic {} does not exist or has no partitions", self.sink.topic);
        }
        self.partitions = n as i32;
        self.subtask = info.subtask;
        self.producer = Some(producer);
        Ok(())
    }

    /// A producer with `transactional_id`, initialised: a zombie holding the id is fenced and its
    /// open transaction aborted.
    fn txn_producer(&self, transactional_id: &str) -> Result<BaseProducer> {
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

    fn marker_consumer(&self, transactional_id: &str) -> Result<BaseConsumer> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.sink.brokers)
            .set("group.id", marker_group(transactional_id))
            .set("enable.auto.commit", "false")
            .create()
            .context("creating the marker consumer")
    }

    /// The last epoch committed under the marker group `consumer` belongs to, if any.
    fn committed_epoch(&self, consumer: &BaseConsumer) -> Result<Option<u64>> {
        let mut q = TopicPartitionList::new();
        q.add_partition(&self.sink.topic, 0);
        let committed = consumer.committed_offsets(q, TIMEOUT).context("reading the transaction marker")?;
        Ok(match committed.find_partition(&self.sink.topic, 0).map(|e| e.offset()) {
            Some(Offset::Offset(o)) if o >= 0 => Some(o as u64),
            _ => None,
        })
    }

    /// Sends `epoch` and its marker in a transaction of `producer` (begun here) and flushes it.
    fn send_epoch_in_txn(
        &self,
        producer: &BaseProducer,
        marker: &BaseConsumer,
        transactional_id: &str,
        epoch: &Epoch,
    ) -> Result<()> {
        producer.begin_transaction().context("beginning a transaction")?;
        for (seq, r) in epoch.records.iter().enumerate() {
            self.send_with(producer, r, Some(Self::headers(transactional_id, epoch.checkpoint, seq)))?;
        }
        let mut offsets = TopicPartitionList::new();
        offsets.add_partition_offset(&self.sink.topic, 0, Offset::Offset(epoch.checkpoint as i64))?;
        let meta = marker.group_metadata().ok_or_else(|| anyhow!("no group metadata for the transaction marker"))?;
        producer.send_offsets_to_transaction(&offsets, &meta, TIMEOUT).context("adding the epoch marker")?;
        producer.flush(TIMEOUT).with_context(|| format!("flushing to {}", self.sink.topic))
    }

    /// Commits, in new transactions, the epochs of `transactional_id` that its marker does not
    /// cover: a restored checkpoint is complete, so all of its epochs must be committed.
    fn repair_txn(&self, producer: &BaseProducer, transactional_id: &str, pending: &[Epoch]) -> Result<()> {
        let marker = self.marker_consumer(transactional_id)?;
        let done = self.committed_epoch(&marker)?;
        for e in pending {
            if done.is_some_and(|d| e.checkpoint <= d) {
                continue;
            }
            tracing::info!(
                transactional_id,
                epoch = e.checkpoint,
                records = e.records.len(),
                "re-producing an uncommitted epoch"
            );
            self.send_epoch_in_txn(producer, &marker, transactional_id, e)?;
            producer.commit_transaction(TIMEOUT).context("committing a repaired epoch")?;
        }
        Ok(())
    }

    /// The checkpointed state: the epochs not yet known to be written.
    fn state_bytes(&self) -> Result<Option<Vec<u8>>> {
        let st = SinkState {
            subtask: self.subtask,
            producer_id: self.producer_id.clone(),
            pending: self.pending.clone(),
            topic: self.sink.topic.clone(),
            transactional: self.sink.delivery == Delivery::ExactlyOnceTxn,
        };
        Ok(Some(serde_json::to_vec(&st)?))
    }

    fn headers(producer_id: &str, epoch: u64, seq: usize) -> OwnedHeaders {
        OwnedHeaders::new()
            .insert(Header { key: "weir.producer", value: Some(producer_id) })
            .insert(Header { key: "weir.epoch", value: Some(&epoch.to_string()) })
            .insert(Header { key: "weir.seq", value: Some(&seq.to_string()) })
    }

    fn send(&self, r: &OutRecord, headers: Option<OwnedHeaders>) -> Result<()> {
        self.send_with(self.producer()?, r, headers)
    }

    fn send_with(&self, p: &BaseProducer, r: &OutRecord, headers: Option<OwnedHeaders>) -> Result<()> {
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
            self.send(r, Some(Self::headers(producer_id, epoch.checkpoint, seq)))?;
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
        let states: Vec<SinkState> = states
            .iter()
            .map(|b| serde_json::from_slice(b).context("decoding a Kafka sink snapshot"))
            .collect::<Result<_>>()?;
        // Pending epochs are output of completed checkpoints that only the delivery mode which
        // wrote them knows how to finish: another mode would drop them.
        let txn = self.sink.delivery == Delivery::ExactlyOnceTxn;
        if let Some(st) = states.iter().find(|st| {
            !st.pending.is_empty() && (st.transactional != txn || !txn && self.sink.delivery == Delivery::AtLeastOnce)
        }) {
            let was = if st.transactional { "exactly-once-txn" } else { "exactly-once-publish" };
            let msg = format!(
                "the restored snapshot holds output of completed checkpoints not yet written by --delivery {was} \
                 (sink subtask {}): restore with --delivery {was}, let it finish or take a savepoint, then change it",
                st.subtask
            );
            // Logged here as well: tearing down a Kafka consumer that is still starting can abort
            // the process (a librdkafka assertion) before the job's error is printed.
            tracing::error!("{msg}");
            bail!(msg);
        }
        if self.sink.delivery == Delivery::AtLeastOnce {
            return Ok(());
        }
        self.connect(ctx.info())?;
        let p = ctx.info().parallelism;
        for st in states {
            if txn {
                if st.subtask % p != self.subtask {
                    continue;
                }
                if st.producer_id == self.producer_id {
                    self.repair_txn(self.producer()?, &st.producer_id, &st.pending)?;
                } else {
                    // A vanished (or renamed) subtask's id: fence its zombie, then repair.
                    let other = self.txn_producer(&st.producer_id)?;
                    self.repair_txn(&other, &st.producer_id, &st.pending)?;
                }
                continue;
            }
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
            Delivery::ExactlyOncePublish | Delivery::ExactlyOnceTxn => self.current.push(rec),
            Delivery::AtLeastOnce => {
                self.send(&rec, None)?;
                self.producer()?.poll(Duration::ZERO);
            }
        }
        Ok(())
    }

    fn end_input(&mut self, ctx: &mut OperatorContext, _: &mut Collector<()>) -> Result<()> {
        if self.sink.delivery != Delivery::AtLeastOnce && !ctx.checkpointing() {
            bail!("exactly-once delivery needs checkpoints (--checkpoint-dir and --checkpoint-interval)");
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
                self.state_bytes()
            }
            Delivery::ExactlyOnceTxn => {
                if !self.current.is_empty() {
                    let epoch = Epoch {
                        checkpoint: checkpoint_id,
                        start_offsets: BTreeMap::new(),
                        records: std::mem::take(&mut self.current),
                    };
                    // One transaction at a time per producer: while the previous epoch's is still
                    // open, this epoch waits in the state and is sent when it is committed.
                    if self.open_txn.is_none() && self.pending.is_empty() {
                        let marker = self.marker.as_ref().ok_or_else(|| anyhow!("Kafka sink used before open"))?;
                        self.send_epoch_in_txn(self.producer()?, marker, &self.producer_id, &epoch)?;
                        self.open_txn = Some(checkpoint_id);
                    }
                    self.pending.push(epoch);
                }
                self.state_bytes()
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
        if self.sink.delivery == Delivery::ExactlyOnceTxn {
            let producer = self.producer()?;
            let marker = self.marker.as_ref().ok_or_else(|| anyhow!("Kafka sink used before open"))?;
            for e in &ready {
                if self.open_txn != Some(e.checkpoint) {
                    self.send_epoch_in_txn(producer, marker, &self.producer_id, e)?;
                }
                crash_point("before-sink-commit", checkpoint_id);
                producer.commit_transaction(TIMEOUT).with_context(|| format!("committing epoch {}", e.checkpoint))?;
                crash_point("mid-sink-commit", checkpoint_id);
            }
            // A later epoch that waited for this transaction is sent now, in its own.
            let next_open = match self.pending.first() {
                Some(next) => {
                    self.send_epoch_in_txn(producer, marker, &self.producer_id, next)?;
                    Some(next.checkpoint)
                }
                None => None,
            };
            self.open_txn = next_open;
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
