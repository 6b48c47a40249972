//! Feeds a Kafka topic: generated Nexmark bids (JSON) or the lines of a file, for demos and tests.
//!
//! ```text
//! kafka_feed --brokers 127.0.0.1:9092 --topic bids --partitions 3 --bids 1000000
//! kafka_feed --brokers 127.0.0.1:9092 --topic lines --input book.txt
//! ```

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Parser};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use weir::checkpoint::location::local_path;
use weir::nexmark::{Event, NexmarkConfig};
use weir::operators::sources::nexmark::{bid_event_number, generate_event};

/// Writes generated Nexmark bids or a file's lines to a Kafka topic (creating it if needed).
#[derive(Parser, Debug)]
#[command(name = "kafka_feed", version, group(ArgGroup::new("what").required(true).args(["bids", "input"])))]
struct Cli {
    /// Kafka bootstrap servers.
    #[arg(long, value_name = "HOST:PORT")]
    brokers: String,
    /// The topic.
    #[arg(long)]
    topic: String,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Generate this many Nexmark bids (JSON values, round robin over partitions).
    #[arg(long, value_name = "N")]
    bids: Option<u64>,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Send every line of this file as one record.
    #[arg(long, value_name = "FILE", value_parser = local_path)]
    input: Option<PathBuf>,
    /// With --input: parse each line as a JSON object and use this field as the record key, so
    /// that all records of a key land in one partition, in file order.
    #[arg(long, value_name = "FIELD", requires = "input")]
    key_field: Option<String>,
}

/// Counts records the broker did not take (librdkafka reports them only to a delivery callback),
/// so that the feed fails instead of leaving a topic with holes.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut first) = self.first_error.lock() {
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &cli.brokers).create()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let created = rt.block_on(admin.create_topics(
        &[NewTopic::new(&cli.topic, cli.partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))?;
    for r in created {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("creating topic {t}: {e}"),
        }
    }
    // Idempotent: a batch retried after a timeout or a leader change (a topic just created, a
    // loaded broker) is neither written twice nor overtaken by the next batch, so the records of
    // a key stay in file order, which jobs that compare consecutive records rely on.
    let producer: BaseProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", &cli.brokers)
        .set("linger.ms", "10")
        .set("enable.idempotence", "true")
        .create_with_context(Deliveries::default())?;
    let mut sent = 0u64;
    let mut send = |key: Option<String>, value: String| -> Result<()> {
        let mut rec = BaseRecord::<String, String>::to(&cli.topic).payload(&value);
        rec = match &key {
            // librdkafka's partitioner hashes the key: one partition per key.
            Some(k) => rec.key(k),
            None => rec.partition((sent % cli.partitions as u64) as i32),
        };
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((e, back)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    rec = back;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => bail!("producing to {}: {e}", cli.topic),
            }
        }
        sent += 1;
        if sent.is_multiple_of(10_000) {
            producer.poll(Duration::ZERO);
        }
        Ok(())
    };
    if let Some(n) = cli.bids {
        let cfg = NexmarkConfig { seed: cli.seed, ..NexmarkConfig::default() };
        for k in 0..n {
            if let Event::Bid(b) = generate_event(&cfg, bid_event_number(k)) {
                send(None, serde_json::to_string(&b)?)?;
            }
        }
    }
    if let Some(path) = &cli.input {
        let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line?;
            let key = match &cli.key_field {
                Some(field) => {
                    let v: serde_json::Value = serde_json::from_str(&line)
                        .with_context(|| format!("{} line {}: not JSON", path.display(), n + 1))?;
                    match v.get(field) {
                        Some(serde_json::Value::String(s)) => Some(s.clone()),
                        Some(other) => Some(other.to_string()),
                        None => bail!("{} line {}: no field {field}", path.display(), n + 1),
                    }
                }
                None => None,
            };
            send(key, line)?;
        }
    }
    producer.flush(Duration::from_secs(60))?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = producer.context().first_error.lock().ok().and_then(|f| f.clone()).unwrap_or_default();
        bail!("{failed} of {sent} records were not delivered to {} (first error: {first})", cli.topic);
    }
    eprintln!("sent {sent} records to {}", cli.topic);
    Ok(())
}
