//! The Kafka source end to end against the real broker from `scripts/broker`: offsets live in
//! checkpoints (kill -9 and restart lose and duplicate nothing), `--stop-at-end` bounds the read,
//! offsets are committed back to the group, and malformed records go to dead letters.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{broker, example, read_parts, run, run_ok, Rng};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

fn create_topic(addr: &str, name: &str, partitions: i32) -> String {
    let name = format!("{name}-{}-{}", std::process::id(), Rng::new(common::free_port() as u64).below(1_000_000));
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

/// Produces `n` bids (disorder below the job's 2 s delay) round-robin over the partitions.
fn produce_bids(addr: &str, topic: &str, partitions: i32, n: usize, malformed_at: Option<usize>) {
    let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", addr).set("linger.ms", "5").create().unwrap();
    let mut rng = Rng::new(31);
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

fn rows(dir: &Path) -> Vec<String> {
    let mut r = read_parts(dir, ".csv", Some("window_start,auction,count,max_price"));
    r.sort();
    r
}

#[test]
fn kafka_source_offsets_survive_kills_exactly_once() {
    let addr = broker();
    let topic = create_topic(&addr, "bids", 3);
    produce_bids(&addr, &topic, 3, 60_000, None);
    let dir = tempfile::tempdir().unwrap();
    let p = |x: &Path| x.to_str().unwrap().to_string();
    let reference = dir.path().join("ref");
    run_ok(
        "auction_windows",
        &[
            "--brokers",
            &addr,
            "--input-topic",
            &topic,
            "--stop-at-end",
            "--output",
            &p(&reference),
            "--window-parallelism",
            "2",
        ],
    );
    let expected = rows(&reference);
    assert!(expected.len() > 300, "{} rows", expected.len());

    let (out, chk) = (dir.path().join("out"), dir.path().join("chk"));
    let args = [
        "--brokers".to_string(),
        addr.clone(),
        "--input-topic".into(),
        topic.clone(),
        "--stop-at-end".into(),
        "--output".into(),
        p(&out),
        "--window-parallelism".into(),
        "2".into(),
        "--checkpoint-dir".into(),
        p(&chk),
        "--checkpoint-interval".into(),
        "100ms".into(),
        "--rate".into(),
        "8000".into(),
        "--progress-interval".into(),
        "0s".into(),
    ];
    let mut rng = Rng::new(77);
    let mut kills = 0;
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(180), "did not finish ({kills} kills)");
        let mut child = Command::new(example("auction_windows"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = if kills < 30 {
            Instant::now() + Duration::from_millis(100 + rng.below(400))
        } else {
            Instant::now() + Duration::from_secs(120)
        };
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                child.kill().unwrap();
                break child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if status.success() {
            break;
        }
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert_eq!(status.signal(), Some(9), "only SIGKILL may end a run: {err}");
        kills += 1;
    }
    assert!(kills >= 30, "only {kills} kills before the input was consumed");
    assert_eq!(rows(&out), expected, "committed rows equal the failure-free run");

    // The offsets were committed back to the job's consumer group.
    let c: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &addr).set("group.id", format!("weir-{topic}")).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for part in 0..3 {
        tpl.add_partition(&topic, part);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            other => panic!("partition {} has no committed offset: {other:?}", e.partition()),
        })
        .sum();
    assert_eq!(total, 60_000, "committed offsets cover the whole topic");
}

#[test]
fn malformed_kafka_records_fail_with_their_offset_or_go_to_dead_letters() {
    let addr = broker();
    let topic = create_topic(&addr, "malformed", 1);
    produce_bids(&addr, &topic, 1, 500, Some(123));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = run(
        "auction_windows",
        &["--brokers", &addr, "--input-topic", &topic, "--stop-at-end", "--output", out.to_str().unwrap()],
    );
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains(&format!("topic {topic} partition 0 at offset 123")), "{stderr}");
    let dead = dir.path().join("dead");
    run_ok(
        "auction_windows",
        &[
            "--brokers",
            &addr,
            "--input-topic",
            &topic,
            "--stop-at-end",
            "--output",
            out.to_str().unwrap(),
            "--dead-letters",
            dead.to_str().unwrap(),
        ],
    );
    let letters = read_parts(&dead, ".jsonl", None);
    assert_eq!(letters.len(), 1);
    let v: serde_json::Value = serde_json::from_str(&letters[0]).unwrap();
    assert_eq!(v["origin"], format!("{topic}/0"));
    assert_eq!(v["offset"], 123);
    let counted: u64 = rows(&out).iter().map(|r| r.split(',').nth(2).unwrap().parse::<u64>().unwrap()).sum();
    assert_eq!(counted, 499);
}
