//! Kafka helpers for the tests: topics with unique names, reading a whole topic as a reader with a
//! given isolation level sees it, and the end offsets such a reader sees.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};

/// Creates `name-<pid>-<n>` with `partitions` partitions and returns its name.
pub fn create_topic(addr: &str, name: &str, partitions: i32) -> String {
    let name = format!("{name}-{}-{}", std::process::id(), super::Rng::new(super::free_port() as u64).below(1_000_000));
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", addr).create().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for r in rt
        .block_on(admin.create_topics(
            &[NewTopic::new(&name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .unwrap()
    {
        r.unwrap();
    }
    name
}

/// One record of a topic with its `weir.*` headers.
#[derive(Clone, Debug)]
pub struct TopicRecord {
    pub partition: i32,
    pub offset: i64,
    pub value: String,
    pub headers: BTreeMap<String, String>,
}

impl TopicRecord {
    /// The sink's record identity: (`weir.producer`, `weir.epoch`, `weir.seq`).
    pub fn identity(&self) -> (String, u64, usize) {
        let h = |k: &str| self.headers.get(k).unwrap_or_else(|| panic!("record without {k}: {self:?}"));
        (h("weir.producer").clone(), h("weir.epoch").parse().unwrap(), h("weir.seq").parse().unwrap())
    }
}

fn consumer(addr: &str, isolation: &str, eof: bool) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", format!("test-reader-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .set("enable.partition.eof", if eof { "true" } else { "false" })
        .create()
        .unwrap()
}

fn partitions(c: &BaseConsumer, topic: &str) -> Vec<i32> {
    let meta = c.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    meta.topics()[0].partitions().iter().map(|p| p.id()).collect()
}

/// Every record of `topic` as a reader with `isolation` (`read_committed` or
/// `read_uncommitted`) sees it, partition by partition in offset order. A read_committed reader
/// ends at the last stable offset. Reading ends at each partition's end-of-partition event, not
/// at an offset: transaction markers take offsets but are never delivered.
pub fn read_topic(addr: &str, topic: &str, isolation: &str) -> Vec<TopicRecord> {
    let c = consumer(addr, isolation, true);
    let parts = partitions(&c, topic);
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut at_end = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while at_end.len() < parts.len() {
        assert!(Instant::now() < deadline, "reading {topic} ({isolation}) timed out");
        match c.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                (x.key.to_string(), String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(TopicRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    value: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                    headers,
                });
            }
        }
    }
    out
}

/// The sorted record values of `topic` as a `read_committed` reader sees them.
pub fn committed_values(addr: &str, topic: &str) -> Vec<String> {
    let mut v: Vec<String> = read_topic(addr, topic, "read_committed").into_iter().map(|r| r.value).collect();
    v.sort();
    v
}

/// Per partition, the end offset a reader with `isolation` sees: the high watermark for
/// `read_uncommitted`, the last stable offset for `read_committed`.
pub fn end_offsets(addr: &str, topic: &str, isolation: &str) -> BTreeMap<i32, i64> {
    let c = consumer(addr, isolation, false);
    let mut tpl = TopicPartitionList::new();
    for p in partitions(&c, topic) {
        tpl.add_partition_offset(topic, p, Offset::End).unwrap();
    }
    let got = c.offsets_for_times(tpl, Duration::from_secs(10)).unwrap();
    got.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => (e.partition(), o),
            other => panic!("end offset of {topic}/{}: {other:?}", e.partition()),
        })
        .collect()
}

/// Produces `n` bids (disorder below auction_windows' 2 s delay) round-robin over the
/// partitions; the one at `malformed_at` is not JSON.
pub fn produce_bids(addr: &str, topic: &str, partitions: i32, n: usize, malformed_at: Option<usize>) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", addr).set("linger.ms", "5").create().unwrap();
    let mut rng = super::Rng::new(31);
    let base = 1_767_225_600_000i64;
    for i in 0..n {
        let t = base + i as i64 * 20 - rng.below(1_500) as i64;
        let value = if Some(i) == malformed_at {
            "{not json".to_string()
        } else {
            format!(
                r#"{{"auction":{},"bidder":1,"price":{},"channel":"c","url":"u","date_time":{t},"extra":""}}"#,
                1000 + rng.below(40),
                rng.below(100_000)
            )
        };
        loop {
            match p
                .send(BaseRecord::<(), String>::to(topic).partition((i % partitions as usize) as i32).payload(&value))
            {
                Ok(()) => break,
                Err((_, _)) => {
                    p.poll(Duration::from_millis(10));
                }
            }
        }
        if i % 1000 == 0 {
            p.poll(Duration::ZERO);
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// The sorted rows of auction_windows' CSV part files under `dir`.
pub fn auction_rows(dir: &std::path::Path) -> Vec<String> {
    let mut r = super::read_parts(dir, ".csv", Some("window_start,auction,count,max_price"));
    r.sort();
    r
}

/// The rows of a failure-free auction_windows run over `input`, written as files under `dir`.
pub fn reference_rows(addr: &str, input: &str, dir: &std::path::Path) -> Vec<String> {
    super::run_ok(
        "auction_windows",
        &["--brokers", addr, "--input-topic", input, "--stop-at-end", "--output", dir.to_str().unwrap()],
    );
    auction_rows(dir)
}

/// Checks a topic written by an exactly-once sink against the rows of a failure-free run: a
/// read_committed reader sees every row once, and every record identity (producer, epoch, seq)
/// once. Returns the committed records.
pub fn assert_exactly(addr: &str, topic: &str, expected: &[String]) -> Vec<TopicRecord> {
    let records = read_topic(addr, topic, "read_committed");
    let mut seen = std::collections::HashMap::new();
    for r in &records {
        if let Some(other) = seen.insert(r.identity(), r.offset) {
            panic!("{:?} committed twice: offsets {other} and {} of partition {}", r.identity(), r.offset, r.partition);
        }
    }
    let mut got: Vec<String> = records.iter().map(|r| r.value.clone()).collect();
    got.sort();
    let missing: Vec<&String> = expected.iter().filter(|r| got.binary_search(r).is_err()).collect();
    assert!(missing.is_empty(), "no loss: {} rows missing, e.g. {:?}", missing.len(), missing.first());
    assert_eq!(got.len(), expected.len(), "no duplicates: as many records as rows of the failure-free run");
    assert_eq!(got, expected, "read_committed sees exactly the rows of a failure-free run");
    records
}

/// auction_windows from `input` to `output` with `--delivery delivery`, transactional ids
/// `<prefix>-kafka-sink-<subtask>`, window and sink parallelism `parallelism`, checkpoints every
/// `interval` in `chk`, reading to the end of the input.
pub fn auction_kafka_args(
    addr: &str,
    (input, output): (&str, &str),
    delivery: &str,
    prefix: &str,
    parallelism: usize,
    chk: &std::path::Path,
    interval: &str,
) -> Vec<String> {
    let parallelism = parallelism.to_string();
    let args = [
        "--brokers",
        addr,
        "--input-topic",
        input,
        "--stop-at-end",
        "--output-topic",
        output,
        "--delivery",
        delivery,
        "--transactional-id-prefix",
        prefix,
        "--window-parallelism",
        &parallelism,
        "--checkpoint-dir",
        chk.to_str().unwrap(),
        "--checkpoint-interval",
        interval,
        "--progress-interval",
        "0s",
    ];
    args.iter().map(|s| s.to_string()).collect()
}

/// The set-up of a Kafka job test: an input topic (4 partitions) holding `bids` bids, an empty
/// output topic with `out_partitions`, a directory, and the rows of a failure-free run.
pub struct Scenario {
    pub input: String,
    pub output: String,
    pub dir: tempfile::TempDir,
    pub expected: Vec<String>,
}

impl Scenario {
    pub fn new(addr: &str, name: &str, bids: usize, out_partitions: i32) -> Scenario {
        let input = create_topic(addr, &format!("{name}-in"), 4);
        let output = create_topic(addr, &format!("{name}-out"), out_partitions);
        produce_bids(addr, &input, 4, bids, None);
        let dir = tempfile::tempdir().unwrap();
        let expected = reference_rows(addr, &input, &dir.path().join("ref"));
        assert!(expected.len() > 100, "{} rows", expected.len());
        Scenario { input, output, dir, expected }
    }

    /// The job's checkpoint directory (`--checkpoint-dir`).
    pub fn chk(&self) -> std::path::PathBuf {
        self.dir.path().join("chk")
    }
}
