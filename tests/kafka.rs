//! The Kafka source end to end against the real broker from `scripts/broker`: offsets live in
//! checkpoints (kill -9 and restart lose and duplicate nothing), `--stop-at-end` bounds the read,
//! offsets are committed back to the group, and malformed records go to dead letters.

mod common;

use std::path::Path;
use std::time::Duration;

use common::kafka::{auction_rows, committed_values, create_topic, produce_bids};
use common::{read_parts, run, run_ok, Rng};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// The kill tests run one at a time: two at once on two cores would mostly measure contention.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rows(dir: &Path) -> Vec<String> {
    auction_rows(dir)
}

#[test]
fn kafka_source_offsets_survive_kills_exactly_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let addr = common::broker();
    let topic = create_topic(&addr, "bids", 3);
    produce_bids(&addr, &topic, 3, 40_000, None);
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
        // Slow enough that the input outlasts 30 short runs: each makes progress before its kill.
        "--rate".into(),
        "4000".into(),
        "--progress-interval".into(),
        "0s".into(),
    ];
    let kills = common::kill_until_done("auction_windows", &args, &chk.join("auction_windows"), &[], &[], 30, 77);
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
    assert_eq!(total, 40_000, "committed offsets cover the whole topic");
}

#[test]
fn malformed_kafka_records_fail_with_their_offset_or_go_to_dead_letters() {
    let addr = common::broker();
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

    // The same dead letter, to a topic.
    let dead_topic = create_topic(&addr, "malformed-dead", 1);
    let out2 = dir.path().join("out2");
    run_ok(
        "auction_windows",
        &[
            "--brokers",
            &addr,
            "--input-topic",
            &topic,
            "--stop-at-end",
            "--output",
            out2.to_str().unwrap(),
            "--dead-letter-topic",
            &dead_topic,
            "--delivery",
            "at-least-once",
        ],
    );
    let values = committed_values(&addr, &dead_topic);
    assert_eq!(values.len(), 1, "{values:?}");
    let v: serde_json::Value = serde_json::from_str(&values[0]).unwrap();
    assert_eq!(v["origin"], format!("{topic}/0"));
    assert_eq!(v["offset"], 123);
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    assert_eq!(rows(&out2), rows(&out), "the same windows either way");
}

#[test]
fn exactly_once_publish_survives_kills_and_crash_points() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let addr = common::broker();
    let input = create_topic(&addr, "eo-in", 3);
    let output = create_topic(&addr, "eo-out", 2);
    produce_bids(&addr, &input, 3, 40_000, None);
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("ref");
    run_ok(
        "auction_windows",
        &["--brokers", &addr, "--input-topic", &input, "--stop-at-end", "--output", reference.to_str().unwrap()],
    );
    let expected = rows(&reference);
    assert!(expected.len() > 300);
    let chk = dir.path().join("chk");
    let args: Vec<String> = [
        "--brokers",
        &addr,
        "--input-topic",
        &input,
        "--stop-at-end",
        "--output-topic",
        &output,
        "--delivery",
        "exactly-once-publish",
        "--window-parallelism",
        "2",
        "--checkpoint-dir",
        chk.to_str().unwrap(),
        "--checkpoint-interval",
        "100ms",
        "--rate",
        "3000",
        "--progress-interval",
        "0s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let points = ["mid-snapshot", "after-checkpoint-complete", "mid-publish"];
    let kills = common::kill_until_done("auction_windows", &args, &chk.join("auction_windows"), &points, &[], 30, 41);
    assert!(kills >= 30);
    let got = committed_values(&addr, &output);
    assert_eq!(got.len(), expected.len(), "as many records as rows of the failure-free run");
    assert_eq!(got, expected, "a plain consumer sees exactly the rows of a failure-free run");
    let ids = weir::operators::kafka::published_ids(&addr, &output).unwrap();
    assert!(ids.values().all(|n| *n == 1), "every (producer, epoch, seq) published once");
}

#[test]
fn wordcount_reads_and_writes_kafka_topics() {
    let addr = common::broker();
    let input = create_topic(&addr, "wc-in", 2);
    let output = create_topic(&addr, "wc-out", 2);
    let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", &addr).create().unwrap();
    let mut rng = Rng::new(3);
    let vocab = ["kafka", "weir", "stream", "River", "flow"];
    let mut expected: std::collections::BTreeMap<String, u64> = Default::default();
    for i in 0..2_000 {
        let line: Vec<&str> = (0..rng.below(6)).map(|_| vocab[rng.below(5) as usize]).collect();
        for w in &line {
            *expected.entry(w.to_lowercase()).or_default() += 1;
        }
        let line = line.join(" ");
        p.send(BaseRecord::<(), String>::to(&input).partition(i % 2).payload(&line)).unwrap();
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("chk");
    run_ok(
        "wordcount",
        &[
            "--brokers",
            &addr,
            "--input-topic",
            &input,
            "--stop-at-end",
            "--output-topic",
            &output,
            "-p",
            "2",
            "--checkpoint-dir",
            chk.to_str().unwrap(),
            "--checkpoint-interval",
            "200ms",
        ],
    );
    let got: std::collections::BTreeMap<String, u64> = committed_values(&addr, &output)
        .iter()
        .map(|l| {
            let (w, c) = l.rsplit_once(',').unwrap();
            (w.to_string(), c.parse().unwrap())
        })
        .collect();
    assert_eq!(got, expected);
    assert_eq!(committed_values(&addr, &output).len(), expected.len(), "one record per word");

    // `weir savepoint inspect --brokers` on the final checkpoint: every partition read to its
    // end (1,000 records each), then behind by what is produced afterwards.
    let job = chk.join("wordcount");
    let inspect = |extra: &[&str]| -> String {
        let mut args = vec!["savepoint", "inspect", job.to_str().unwrap(), "--brokers", addr.as_str()];
        args.extend_from_slice(extra);
        let out = std::process::Command::new(common::weir_cli()).args(&args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let partitions = |report: &serde_json::Value| -> Vec<(i64, i64)> {
        let lines = report["operators"].as_array().unwrap().iter().find(|o| o["uid"] == "lines").unwrap();
        assert_eq!(lines["source"]["topic"], input.as_str());
        lines["source"]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["next_offset"].as_i64().unwrap(), p["lag"].as_i64().unwrap()))
            .collect()
    };
    let report: serde_json::Value = serde_json::from_str(&inspect(&["--json"])).unwrap();
    assert_eq!(partitions(&report), vec![(1000, 0), (1000, 0)]);
    let late = "late words".to_string();
    for (partition, n) in [(0, 7), (1, 3)] {
        for _ in 0..n {
            p.send(BaseRecord::<(), String>::to(&input).partition(partition).payload(&late)).unwrap();
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let report: serde_json::Value = serde_json::from_str(&inspect(&["--json"])).unwrap();
    assert_eq!(partitions(&report), vec![(1000, 7), (1000, 3)]);
    let text = inspect(&[]);
    assert!(text.contains("0 at 1000 (lag 7), 1 at 1000 (lag 3)") && text.contains("lag         10 records"), "{text}");
    let sink = report["operators"].as_array().unwrap().iter().find(|o| o["role"] == "sink").unwrap();
    assert_eq!(sink["sink"]["type"], "kafka", "{sink}");
    assert_eq!(sink["sink"]["topic"], output.as_str());
}

#[test]
fn changing_the_delivery_mode_over_unwritten_output_is_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let addr = common::broker();
    let input = create_topic(&addr, "mode-in", 1);
    let output = create_topic(&addr, "mode-out", 1);
    produce_bids(&addr, &input, 1, 6_000, None);
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("ref");
    run_ok(
        "auction_windows",
        &["--brokers", &addr, "--input-topic", &input, "--stop-at-end", "--output", reference.to_str().unwrap()],
    );
    let chk = dir.path().join("chk");
    let args = |delivery: &str| -> Vec<String> {
        [
            "--brokers",
            &addr,
            "--input-topic",
            &input,
            "--stop-at-end",
            "--output-topic",
            &output,
            "--delivery",
            delivery,
            "--checkpoint-dir",
            chk.to_str().unwrap(),
            "--checkpoint-interval",
            "100ms",
            "--rate",
            "3000",
            "--restart-attempts",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    // Crash while publishing: the checkpoint holds an epoch that is only partly written.
    let o = std::process::Command::new(common::example("auction_windows"))
        .args(args("exactly-once-publish"))
        .env("WEIR_CRASH_AT", "mid-publish:3")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("WEIR_CRASH_AT: crashing at"), "the crash point was reached");
    for other in ["exactly-once-txn", "at-least-once"] {
        let o = run("auction_windows", &args(other).iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!o.status.success(), "--delivery {other} must not drop the unwritten epoch");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains("restore with --delivery exactly-once-publish"), "{stderr}");
    }
    run_ok("auction_windows", &args("exactly-once-publish").iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(committed_values(&addr, &output), rows(&reference), "the original mode finishes the output exactly");
}

/// A job that fails while its Kafka consumers are still starting (every partition begins with a
/// malformed record) exits with its own error, every time: tearing the consumers down must never
/// abort the process inside librdkafka (`rd_kafka_assignment_partition_stopped: Assertion
/// rktp_started`, librdkafka#5573: a partition removed a second time while its first stop is
/// outstanding, which weir's old double assignment did).
#[test]
fn a_job_failing_during_consumer_start_up_always_reports_its_own_error() {
    let addr = common::broker();
    let topic = create_topic(&addr, "start-fail", 4);
    let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", &addr).create().unwrap();
    for partition in 0..4 {
        p.send(BaseRecord::<(), str>::to(&topic).partition(partition).payload("{not json")).unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
    produce_bids(&addr, &topic, 4, 2_000, None);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    for attempt in 0..20 {
        let o = run(
            "auction_windows",
            &[
                "--brokers",
                &addr,
                "--input-topic",
                &topic,
                "--stop-at-end",
                "--output",
                out.to_str().unwrap(),
                "-p",
                "2",
                "--restart-attempts",
                "1",
                "--restart-delay",
                "10ms",
            ],
        );
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "run {attempt}: the job's own failure, not {:?}:\n{stderr}", o.status);
        assert!(stderr.contains(&format!("malformed record in topic {topic} partition")), "run {attempt}:\n{stderr}");
    }
}
