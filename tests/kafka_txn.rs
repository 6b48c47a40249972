//! `--delivery exactly-once-txn` against Apache Kafka: Kafka topic (4 partitions) →
//! auction_windows → Kafka topic, killed at random moments and at every named crash point, frozen
//! as a zombie while its successor runs, and rescaled over open transactions. Each test reads the
//! output with `read_committed` and compares it with a failure-free run: one lost or duplicated
//! row fails it.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::kafka::{
    assert_exactly, auction_kafka_args, create_topic, end_offsets, produce_bids, read_topic, reference_rows, Scenario,
};
use common::{crash_at, max_checkpoint, run};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// The kill tests run one at a time: two at once on two cores would mostly measure contention.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// auction_windows with the txn sink: `input` → `output`, checkpoints every 150 ms in `chk`.
fn txn_args(addr: &str, input: &str, output: &str, chk: &Path, prefix: &str, parallelism: usize) -> Vec<String> {
    auction_kafka_args(addr, (input, output), "exactly-once-txn", prefix, parallelism, chk, "150ms")
}

fn with(mut args: Vec<String>, more: &[&str]) -> Vec<String> {
    args.extend(more.iter().map(|s| s.to_string()));
    args
}

/// The last epoch committed under `transactional_id`: the offset its marker group holds.
fn marker(addr: &str, transactional_id: &str, output: &str) -> Option<u64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", format!("weir-txn-{transactional_id}"))
        .create()
        .unwrap();
    let mut q = TopicPartitionList::new();
    q.add_partition(output, 0);
    match c.committed_offsets(q, Duration::from_secs(10)).unwrap().find_partition(output, 0).unwrap().offset() {
        Offset::Offset(o) => Some(o as u64),
        _ => None,
    }
}

/// No transaction is left open on `topic`: every partition's last stable offset is its end.
fn assert_no_open_transaction(addr: &str, topic: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (lso, hw) = (end_offsets(addr, topic, "read_committed"), end_offsets(addr, topic, "read_uncommitted"));
        if lso == hw {
            return;
        }
        // Markers of a commit just made can take a moment to be written.
        assert!(Instant::now() < deadline, "a transaction is left open on {topic}: LSO {lso:?}, end {hw:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn exactly_once_txn_survives_kills_and_repairs_the_commit_window() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let addr = common::broker();
    let sc = Scenario::new(&addr, "txn", 40_000, 2);
    let (input, output, expected) = (&sc.input, &sc.output, &sc.expected);
    assert!(expected.len() > 300, "{} rows", expected.len());

    // The transaction timeout is checked against the checkpoint settings at start-up.
    let chk = sc.chk();
    let prefix = format!("txn-test-{}", std::process::id());
    let o = run(
        "auction_windows",
        &with(txn_args(&addr, input, output, &chk, &prefix, 2), &["--transaction-timeout", "100ms"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(o.status.code(), Some(2), "a clap usage error");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--transaction-timeout 100ms is too short"));

    // Slow enough that the input outlasts 30 short runs: each makes progress before its kill.
    let args = with(txn_args(&addr, input, output, &chk, &prefix, 2), &["--rate", "2500"]);
    let points = ["before-sink-commit", "after-checkpoint-complete", "mid-sink-commit", "mid-snapshot"];
    let kills = common::kill_until_done("auction_windows", &args, &chk.join("auction_windows"), &points, &[], 30, 43);
    assert!(kills >= 30 + points.len());

    let committed = assert_exactly(&addr, output, expected);
    assert!(
        committed.iter().all(|r| r.identity().0.starts_with(&prefix)),
        "transactional ids are <prefix>-<uid>-<subtask>"
    );
    assert_no_open_transaction(&addr, output);
    // The aborted attempts exist: a read_uncommitted reader sees records of transactions that
    // the restarts aborted, among them an epoch re-produced whole after the crash before its
    // commit (so the test would notice if isolation broke).
    let all = read_topic(&addr, output, "read_uncommitted");
    assert!(all.len() > committed.len(), "read_uncommitted shows the aborted attempts ({} records)", all.len());
    let mut copies: HashMap<(String, u64, usize), usize> = HashMap::new();
    for r in &all {
        *copies.entry(r.identity()).or_default() += 1;
    }
    let mut epochs: BTreeMap<(String, u64), Vec<usize>> = BTreeMap::new();
    for ((p, e, _), n) in &copies {
        epochs.entry((p.clone(), *e)).or_default().push(*n);
    }
    assert!(
        epochs.values().any(|counts| counts.iter().all(|n| *n >= 2)),
        "an epoch re-produced whole after the crash before its commit"
    );
    // Each subtask's marker is the last epoch it committed.
    for sub in 0..2 {
        let id = format!("{prefix}-kafka-sink-{sub}");
        let m = marker(&addr, &id, output).unwrap_or_else(|| panic!("no marker for {id}"));
        assert!(epochs.contains_key(&(id.clone(), m)), "{id}: the marker {m} is an epoch it sent");
        assert!(epochs.keys().filter(|(p, _)| *p == id).all(|(_, e)| *e <= m), "{id}: every epoch is committed");
    }
    // The CLI lists the job's transactional ids from its last checkpoint, with their markers.
    let listed = Command::new(common::weir_cli())
        .args(["kafka", "transactions", "--brokers", &addr, "--checkpoint"])
        .arg(chk.join("auction_windows"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    for sub in 0..2 {
        let id = format!("{prefix}-kafka-sink-{sub}");
        let line = text.lines().find(|l| l.contains(&id)).unwrap_or_else(|| panic!("{id} not listed:\n{text}"));
        assert!(line.contains("up to date"), "{line}");
    }
    // A transaction left open under one of the job's ids (a producer that died mid-epoch) holds
    // read_committed readers until `weir kafka transactions --abort` ends it.
    let id0 = format!("{prefix}-kafka-sink-0");
    let lingering: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", &addr).set("transactional.id", &id0).create().unwrap();
    lingering.init_transactions(Duration::from_secs(10)).unwrap();
    lingering.begin_transaction().unwrap();
    lingering.send(BaseRecord::<(), str>::to(output).partition(0).payload("lingering")).unwrap();
    lingering.flush(Duration::from_secs(10)).unwrap();
    std::mem::forget(lingering);
    let (lso, end) = (end_offsets(&addr, output, "read_committed"), end_offsets(&addr, output, "read_uncommitted"));
    assert!(lso[&0] < end[&0], "the lingering transaction holds the LSO: {lso:?} {end:?}");
    let aborted = Command::new(common::weir_cli())
        .args(["kafka", "transactions", "--brokers", &addr, "--checkpoint"])
        .arg(chk.join("auction_windows"))
        .args(["--abort", &id0])
        .output()
        .unwrap();
    assert!(aborted.status.success(), "{}", String::from_utf8_lossy(&aborted.stderr));
    assert!(String::from_utf8_lossy(&aborted.stdout).contains("aborted"));
    assert_no_open_transaction(&addr, output);
    assert_exactly(&addr, output, expected);
}

/// Sends `signal` to `pid`.
fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a child process of this test.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "signalling {pid}");
}

#[test]
fn a_frozen_zombie_cannot_write_once_its_successor_runs() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let addr = common::broker();
    let sc = Scenario::new(&addr, "zombie", 20_000, 2);
    let (input, output, expected, chk) = (&sc.input, &sc.output, &sc.expected, sc.chk());
    let prefix = format!("zombie-{}", std::process::id());
    let args = with(txn_args(&addr, input, output, &chk, &prefix, 2), &["--restart-attempts", "0"]);

    // The zombie: frozen with SIGSTOP after a few checkpoints, with a transaction open.
    let mut zombie = common::spawn("auction_windows", &with(args.clone(), &["--rate", "1000"]));
    common::await_checkpoint(&mut zombie.child, &chk.join("auction_windows"), 5);
    signal(zombie.id(), libc::SIGSTOP);

    // Its successor restores the latest checkpoint (fencing the zombie's transactional ids and
    // aborting their open transactions) and runs to the end.
    common::run_ok("auction_windows", &args.iter().map(String::as_str).collect::<Vec<_>>());
    let before = read_topic(&addr, output, "read_uncommitted").len();

    // The zombie wakes up and carries on where it was: it may write, but none of it may become
    // visible, and it must fail on the fencing rather than finish.
    signal(zombie.id(), libc::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = zombie.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the zombie neither failed nor finished in 120 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = zombie.log();
    assert!(!status.success(), "the zombie must not complete after being fenced:\n{stderr}");
    // Fenced by Kafka (its producer epoch is old) or by the checkpoint chain (its next commit
    // finds its successor's checkpoints), whichever it meets first.
    let fenced = stderr.to_lowercase().contains("fenced") || stderr.contains("this one is stale and stops");
    assert!(fenced, "the zombie fails on the fencing:\n{stderr}");
    let after = read_topic(&addr, output, "read_uncommitted").len();
    println!("the zombie wrote {} records after it woke up, none committed", after - before);
    assert_exactly(&addr, output, expected);
    assert_no_open_transaction(&addr, output);
}

#[test]
fn rescaling_over_open_transactions_commits_or_aborts_vanished_ids() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let addr = common::broker();
    let sc = Scenario::new(&addr, "rescale", 30_000, 3);
    let (input, output, expected, chk) = (&sc.input, &sc.output, &sc.expected, sc.chk());
    let job_chk = chk.join("auction_windows");
    let prefix = format!("rescale-{}", std::process::id());
    let args = |p: usize| with(txn_args(&addr, input, output, &chk, &prefix, p), &["--rate", "3000"]);

    // At parallelism 2, die with checkpoint n complete and its transactions open (not committed).
    crash_at("auction_windows", &args(2), "before-sink-commit", 4);
    // At 3 from 2: ids 0 and 1 repair their epochs, id 2 is new; die the same way.
    crash_at("auction_windows", &args(3), "before-sink-commit", max_checkpoint(&job_chk) + 3);
    let open = end_offsets(&addr, output, "read_committed") != end_offsets(&addr, output, "read_uncommitted");
    assert!(open, "the crash left transactions open");
    // At 1 from 3: ids 1 and 2 vanish; subtask 0 fences them and commits what the checkpoint
    // holds for them.
    common::run_ok("auction_windows", &args(1).iter().map(String::as_str).collect::<Vec<_>>());
    let committed = assert_exactly(&addr, output, expected);
    assert_no_open_transaction(&addr, output);
    let ids: std::collections::BTreeSet<String> = committed.iter().map(|r| r.identity().0).collect();
    let want: std::collections::BTreeSet<String> = (0..3).map(|s| format!("{prefix}-kafka-sink-{s}")).collect();
    assert_eq!(ids, want, "all three ids wrote committed output");
    for id in &want {
        let m = marker(&addr, id, output).unwrap_or_else(|| panic!("no marker for {id}"));
        let last = committed.iter().filter(|r| r.identity().0 == *id).map(|r| r.identity().1).max().unwrap();
        assert_eq!(m, last, "{id}: the marker is its last committed epoch");
    }
}

/// A downstream job reads a transactional topic (as weir's txn output is) with `--stop-at-end`:
/// it skips the aborted records and ends, although the last offsets of each partition are
/// transaction markers that are never delivered.
#[test]
fn a_transactional_topic_is_read_to_its_end_without_aborted_records() {
    let addr = common::broker();
    let plain = create_topic(&addr, "plain-in", 2);
    produce_bids(&addr, &plain, 2, 6_000, None);
    let dir = tempfile::tempdir().unwrap();
    let expected = reference_rows(&addr, &plain, &dir.path().join("ref"));

    // The same bids in transactions of 500 per partition, each followed by an aborted one with
    // a bid that would change its window's count and maximum.
    let txn = create_topic(&addr, "txn-copy", 2);
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set("transactional.id", format!("copy-{}", std::process::id()))
        .create()
        .unwrap();
    p.init_transactions(Duration::from_secs(10)).unwrap();
    let records = read_topic(&addr, &plain, "read_uncommitted");
    let send = |partition: i32, value: &str| {
        p.send(BaseRecord::<(), str>::to(&txn).partition(partition).payload(value)).unwrap();
    };
    for chunk in records.chunks(500) {
        p.begin_transaction().unwrap();
        for r in chunk {
            send(r.partition, &r.value);
        }
        p.commit_transaction(Duration::from_secs(10)).unwrap();
        p.begin_transaction().unwrap();
        let last = chunk.last().unwrap();
        send(last.partition, &last.value.replacen(r#""price":"#, r#""price":999999999,"was":"#, 1));
        p.flush(Duration::from_secs(10)).unwrap();
        p.abort_transaction(Duration::from_secs(10)).unwrap();
    }
    let hw = end_offsets(&addr, &txn, "read_uncommitted");
    assert!(hw.values().sum::<i64>() > 6_000 + 2 * 12, "the topic holds aborted records and markers: {hw:?}");

    let out = dir.path().join("out");
    let o = common::run_within(
        "auction_windows",
        &["--brokers", &addr, "--input-topic", &txn, "--stop-at-end", "--output", out.to_str().unwrap()],
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(!stderr.contains("ERROR"), "reaching the end of a partition is no error:\n{stderr}");
    assert_eq!(common::kafka::auction_rows(&out), expected, "the committed bids only, and all of them");
}

/// The transactional ids of a job checkpointing to S3 are listed from its checkpoint there, as
/// from a local one (on a new machine: the CLI downloads what it reads).
#[test]
fn transactions_are_listed_from_checkpoints_on_s3() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let addr = common::broker();
    let bucket = common::s3::bucket("txn-list");
    let sc = Scenario::new(&addr, "txn-s3", 5_000, 1);
    let prefix = format!("txn-s3-{}", std::process::id());
    let chk = bucket.url("chk");
    let args = txn_args(&addr, &sc.input, &sc.output, Path::new(&chk), &prefix, 2);
    let mut job = Command::new(common::example("auction_windows"));
    let out = job.args(&args).envs(bucket.env()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_exactly(&addr, &sc.output, &sc.expected);

    let listed = Command::new(common::weir_cli())
        .args(["kafka", "transactions", "--brokers", &addr, "--checkpoint", &format!("{chk}/auction_windows")])
        .envs(bucket.env())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let last = bucket.max_checkpoint("chk/auction_windows");
    assert!(text.starts_with(&format!("checkpoint {last} of job auction_windows")), "{text}");
    for sub in 0..2 {
        let id = format!("{prefix}-kafka-sink-{sub}");
        let line = text.lines().find(|l| l.contains(&id)).unwrap_or_else(|| panic!("{id} not listed:\n{text}"));
        assert!(line.contains("up to date"), "{line}");
    }
}

/// Two processes read the 4 input partitions (two source subtasks, one per process) and write
/// Kafka transactions from both processes' sink subtasks; the coordinator and the worker are
/// killed at named crash points and 10 times each at random moments while the job runs, and all
/// restart with the same flags: `read_committed` sees exactly the failure-free rows.
#[test]
fn two_processes_read_and_write_kafka_exactly_once_across_kills() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let addr = common::broker();
    let sc = Scenario::new(&addr, "procs", 60_000, 2);
    let chk = sc.chk();
    let prefix = format!("procs-test-{}", std::process::id());
    // Bids are at most 1.5 s out of order, within the watermark's 2 s: none is late, so two
    // source subtasks give the rows of the reference's one.
    let args =
        with(txn_args(&addr, &sc.input, &sc.output, &chk, &prefix, 2), &["--parallelism", "2", "--rate", "3000"]);
    let mut rng = common::Rng::new(9);
    // Named crash points in the coordinator (process 0) and the worker, then 10 kills of each
    // at random moments after progress, alternately.
    let named =
        [(0, "after-checkpoint-complete"), (1, "before-sink-commit"), (0, "mid-sink-commit"), (1, "mid-snapshot")];
    for (kill, &(p, point)) in named.iter().enumerate() {
        let next = max_checkpoint(&chk.join("auction_windows")) + 2;
        let run_dir = sc.dir.path().join(format!("named-{kill}"));
        let mut c = common::cluster::Cluster::start(2, &args, &run_dir, &[], Some((p, format!("{point}:{next}"))));
        let statuses = c.wait(Duration::from_secs(120));
        assert_eq!(statuses[p].signal(), Some(9), "process {p} crashes at {point}:\n{}", c.logs());
    }
    for kill in 0..20 {
        let before = max_checkpoint(&chk.join("auction_windows"));
        let run_dir = sc.dir.path().join(format!("run-{kill}"));
        let mut c = common::cluster::Cluster::start(2, &args, &run_dir, &[], None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while max_checkpoint(&chk.join("auction_windows")) <= before + 1 {
            assert!(Instant::now() < deadline, "no checkpoint after a restart:\n{}", c.logs());
            assert!(c.procs.iter_mut().all(|p| p.try_wait().unwrap().is_none()), "ended early:\n{}", c.logs());
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        let took = c.kill_one(kill % 2);
        assert!(took < Duration::from_secs(5), "fail-stop took {took:?}");
    }
    let mut c = common::cluster::Cluster::start(2, &args, &sc.dir.path().join("run-last"), &[], None);
    assert!(c.wait(Duration::from_secs(300)).iter().all(|s| s.success()), "{}", c.logs());
    let committed = assert_exactly(&addr, &sc.output, &sc.expected);
    // Both processes' sink subtasks committed transactions.
    for s in 0..2 {
        assert!(committed.iter().any(|r| r.identity().0.ends_with(&format!("-{s}"))), "sink subtask {s} wrote");
    }
}
