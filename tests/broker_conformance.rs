//! What weir's Kafka sinks and source rely on, checked against the Apache Kafka broker that
//! `scripts/broker` runs. Every check runs, prints PASS or FAIL, and must pass: a broker that
//! lacks any of this cannot carry weir's exactly-once claims.

mod common;

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

use common::kafka::create_topic as topic;

type Check = Result<(), String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn producer(addr: &str, extra: &[(&str, &str)]) -> Result<BaseProducer, String> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", addr).set("message.timeout.ms", "10000");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().map_err(err)
}

fn send(p: &BaseProducer, topic: &str, partition: i32, payload: &str) -> Result<(), String> {
    p.send(BaseRecord::<(), str>::to(topic).partition(partition).payload(payload)).map_err(|(e, _)| err(e))?;
    p.flush(Duration::from_secs(10)).map_err(err)
}

fn consumer(addr: &str, group: &str, isolation: &str) -> Result<BaseConsumer, String> {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .map_err(err)
}

/// Reads partition 0 of `topic` from `from` until `want` records or a quiet 1.5 s.
fn read(addr: &str, topic: &str, from: i64, isolation: &str, want: usize) -> Result<Vec<String>, String> {
    let c = consumer(addr, &format!("reader-{}", std::process::id()), isolation)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(from)).map_err(err)?;
    c.assign(&tpl).map_err(err)?;
    let mut out = Vec::new();
    let mut quiet = Instant::now();
    while out.len() < want && quiet.elapsed() < Duration::from_millis(1500) {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.map_err(err)?;
            out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
            quiet = Instant::now();
        }
    }
    Ok(out)
}

/// The end offset of partition 0 as a reader with `isolation` sees it.
fn end_offset(addr: &str, topic: &str, isolation: &str) -> Result<i64, String> {
    common::kafka::end_offsets(addr, topic, isolation)
        .get(&0)
        .copied()
        .ok_or_else(|| format!("no partition 0 in {topic}"))
}

fn fenced(e: &KafkaError) -> bool {
    let code = e.rdkafka_error_code();
    matches!(code, Some(RDKafkaErrorCode::ProducerFenced) | Some(RDKafkaErrorCode::InvalidProducerEpoch))
        || matches!(e, KafkaError::Transaction(t) if t.is_fatal() || t.code() == RDKafkaErrorCode::ProducerFenced)
        || e.to_string().to_lowercase().contains("fenced")
}

fn expect(got: Vec<String>, want: &[&str], what: &str) -> Check {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: read {got:?}, expected {want:?}"))
    }
}

fn assign_and_seek(addr: &str) -> Check {
    let t = topic(addr, "seek", 1);
    let p = producer(addr, &[])?;
    for i in 0..10 {
        send(&p, &t, 0, &format!("m{i}"))?;
    }
    expect(read(addr, &t, 5, "read_uncommitted", 5)?, &["m5", "m6", "m7", "m8", "m9"], "from offset 5")
}

fn idempotent_producer(addr: &str) -> Check {
    let t = topic(addr, "idem", 1);
    let p = producer(addr, &[("enable.idempotence", "true")])?;
    for i in 0..20 {
        send(&p, &t, 0, &format!("i{i}"))?;
    }
    let got = read(addr, &t, 0, "read_uncommitted", 20)?;
    let want: Vec<String> = (0..20).map(|i| format!("i{i}")).collect();
    if got == want {
        Ok(())
    } else {
        Err(format!("read {got:?}"))
    }
}

fn txn_producer(addr: &str, id: &str, timeout_ms: u64) -> Result<BaseProducer, String> {
    let timeout = timeout_ms.to_string();
    // librdkafka wants message.timeout.ms <= transaction.timeout.ms.
    let message_timeout = timeout_ms.min(10_000).to_string();
    let p = producer(
        addr,
        &[("transactional.id", id), ("transaction.timeout.ms", &timeout), ("message.timeout.ms", &message_timeout)],
    )?;
    p.init_transactions(Duration::from_secs(10)).map_err(err)?;
    Ok(p)
}

/// The committed offset of `group` for partition 0 of `topic`, as a plain (read_uncommitted)
/// client sees it: it does not wait for pending transactional commits.
/// The offset `group` committed on partition 0 of `topic`. A `read_committed` consumer (as the
/// sink's marker consumer, librdkafka's default) asks for stable offsets (KIP-447): it waits out a
/// transaction whose commit markers are still being written after `commit_transaction` returned,
/// where a `read_uncommitted` one may for a moment still see the offset from before the commit.
/// Neither ever sees the offset of a transaction that is still open.
fn committed(addr: &str, group: &str, topic: &str, isolation: &str) -> Result<Option<i64>, String> {
    let c = consumer(addr, group, isolation)?;
    let mut q = TopicPartitionList::new();
    q.add_partition(topic, 0);
    let got = c.committed_offsets(q, Duration::from_secs(10)).map_err(err)?;
    Ok(match got.find_partition(topic, 0).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    })
}

/// `send_offsets_to_transaction` (the sink's epoch marker) takes effect with the commit and
/// never with an abort.
fn offsets_in_transaction(addr: &str) -> Check {
    let t = topic(addr, "txoffsets", 1);
    let group = format!("txgroup-{}", std::process::id());
    let meta_consumer = consumer(addr, &group, "read_committed")?;
    let meta = meta_consumer.group_metadata().ok_or("no group metadata")?;
    let p = txn_producer(addr, &format!("tx-offsets-{}", std::process::id()), 60_000)?;
    let mark = |offset: i64| -> Check {
        p.begin_transaction().map_err(err)?;
        send(&p, &t, 0, "x")?;
        let mut offsets = TopicPartitionList::new();
        offsets.add_partition_offset(&t, 0, Offset::Offset(offset)).map_err(err)?;
        p.send_offsets_to_transaction(&offsets, &meta, Duration::from_secs(10)).map_err(err)
    };
    mark(42)?;
    // A stable read would wait for the open transaction to end: read what is committed now.
    if let Some(o) = committed(addr, &group, &t, "read_uncommitted")? {
        return Err(format!("offset {o} visible before the commit"));
    }
    p.commit_transaction(Duration::from_secs(10)).map_err(err)?;
    match committed(addr, &group, &t, "read_committed")? {
        Some(42) => {}
        other => return Err(format!("after commit: {other:?}")),
    }
    mark(43)?;
    p.abort_transaction(Duration::from_secs(10)).map_err(err)?;
    match committed(addr, &group, &t, "read_committed")? {
        Some(42) => Ok(()),
        other => Err(format!("after an aborted transaction with offset 43 the group has {other:?}")),
    }
}

fn read_committed_isolation(addr: &str) -> Check {
    let t = topic(addr, "isolation", 1);
    let p = txn_producer(addr, &format!("tx-iso-{}", std::process::id()), 60_000)?;
    for (value, commit) in [("committed", true), ("aborted", false), ("committed-2", true)] {
        p.begin_transaction().map_err(err)?;
        send(&p, &t, 0, value)?;
        if commit {
            p.commit_transaction(Duration::from_secs(10)).map_err(err)?;
        } else {
            p.abort_transaction(Duration::from_secs(10)).map_err(err)?;
        }
    }
    expect(read(addr, &t, 0, "read_committed", 3)?, &["committed", "committed-2"], "read_committed")?;
    expect(read(addr, &t, 0, "read_uncommitted", 3)?, &["committed", "aborted", "committed-2"], "read_uncommitted")
}

/// An open transaction holds read_committed readers at its first offset (the last stable
/// offset), also for transactions committed after it by other producers.
fn last_stable_offset(addr: &str) -> Check {
    let t = topic(addr, "lso", 1);
    let plain = producer(addr, &[])?;
    send(&plain, &t, 0, "before")?;
    let open = txn_producer(addr, &format!("tx-lso-open-{}", std::process::id()), 60_000)?;
    open.begin_transaction().map_err(err)?;
    send(&open, &t, 0, "open")?;
    let other = txn_producer(addr, &format!("tx-lso-other-{}", std::process::id()), 60_000)?;
    other.begin_transaction().map_err(err)?;
    send(&other, &t, 0, "later")?;
    other.commit_transaction(Duration::from_secs(10)).map_err(err)?;
    // A commit or abort returns once the coordinator has it; the partition's marker follows
    // asynchronously, so the offsets are read until they settle (10 s at most).
    let settled = |want: &dyn Fn(i64, i64) -> bool| -> Result<(i64, i64), String> {
        let started = Instant::now();
        loop {
            let (lso, hw) = (end_offset(addr, &t, "read_committed")?, end_offset(addr, &t, "read_uncommitted")?);
            if want(lso, hw) || started.elapsed() > Duration::from_secs(10) {
                return Ok((lso, hw));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (lso, hw) = settled(&|_, hw| hw >= 4)?;
    // Offsets: 0 before, 1 open, 2 later, 3 later's commit marker.
    if (lso, hw) != (1, 4) {
        return Err(format!("with a transaction open at offset 1: LSO {lso}, high watermark {hw}"));
    }
    expect(read(addr, &t, 0, "read_committed", 3)?, &["before"], "read_committed behind an open transaction")?;
    open.abort_transaction(Duration::from_secs(10)).map_err(err)?;
    // Offsets: 0 before, 1 open, 2 later, 3 later's commit marker, 4 open's abort marker.
    let (lso, _) = settled(&|lso, _| lso >= 4)?;
    if lso < 4 {
        return Err(format!("after the abort the LSO is {lso}, expected past the abort marker"));
    }
    expect(read(addr, &t, 0, "read_committed", 3)?, &["before", "later"], "read_committed after the abort")
}

fn zombie_fencing(addr: &str) -> Check {
    let t = topic(addr, "fence", 1);
    let id = format!("tx-fence-{}", std::process::id());
    let old = txn_producer(addr, &id, 60_000)?;
    old.begin_transaction().map_err(err)?;
    send(&old, &t, 0, "before-the-successor")?;
    let new = txn_producer(addr, &id, 60_000)?;
    // The zombie writes after its successor registered: the broker must refuse it, on the
    // write or at the latest on the commit.
    let write = old
        .send(BaseRecord::<(), str>::to(&t).partition(0).payload("zombie"))
        .map_err(|(e, _)| e)
        .and_then(|()| old.flush(Duration::from_secs(10)));
    match write.and_then(|()| old.commit_transaction(Duration::from_secs(10))) {
        Err(e) if fenced(&e) => {}
        Err(e) => return Err(format!("the old producer failed, but not as fenced: {e}")),
        Ok(()) => return Err("the old producer committed after a new one took its transactional id".into()),
    }
    new.begin_transaction().map_err(err)?;
    send(&new, &t, 0, "successor")?;
    new.commit_transaction(Duration::from_secs(10)).map_err(err)?;
    expect(read(addr, &t, 0, "read_committed", 3)?, &["successor"], "read_committed after fencing")
}

/// A successor's `init_transactions` aborts the open transaction of its predecessor at once.
fn successor_aborts_open_transaction(addr: &str) -> Check {
    let t = topic(addr, "killed", 1);
    let id = format!("tx-killed-{}", std::process::id());
    let p = txn_producer(addr, &id, 60_000)?;
    p.begin_transaction().map_err(err)?;
    send(&p, &t, 0, "from-the-dead")?;
    // Vanish without ending the transaction, as a SIGKILLed process would (its client makes no
    // further request about the transaction).
    std::mem::forget(p);
    let next = txn_producer(addr, &id, 60_000)?;
    next.begin_transaction().map_err(err)?;
    send(&next, &t, 0, "after")?;
    next.commit_transaction(Duration::from_secs(10)).map_err(err)?;
    expect(read(addr, &t, 0, "read_committed", 2)?, &["after"], "read_committed")
}

/// A transaction whose producer vanished and never came back is aborted by the broker after its
/// `transaction.timeout.ms`, which unblocks read_committed readers.
fn abandoned_transaction_times_out(addr: &str) -> Check {
    let t = topic(addr, "timeout", 1);
    let p = txn_producer(addr, &format!("tx-timeout-{}", std::process::id()), 3_000)?;
    p.begin_transaction().map_err(err)?;
    send(&p, &t, 0, "abandoned")?;
    let started = Instant::now();
    std::mem::forget(p);
    let plain = producer(addr, &[])?;
    send(&plain, &t, 0, "plain")?;
    if end_offset(addr, &t, "read_committed")? != 0 {
        return Err("the LSO moved past an open transaction".into());
    }
    loop {
        let lso = end_offset(addr, &t, "read_committed")?;
        if lso >= 3 {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("the abandoned transaction was not aborted within 30 s (LSO {lso})"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if started.elapsed() < Duration::from_millis(2_500) {
        return Err(format!("aborted after {:?}, before its 3 s timeout", started.elapsed()));
    }
    expect(read(addr, &t, 0, "read_committed", 2)?, &["plain"], "read_committed after the timeout")
}

/// Data, committed offsets and transactions survive a restart and a kill -9 of the broker.
fn persistence_across_restarts() -> Check {
    let dir = tempfile::tempdir().map_err(err)?;
    let addr = common::broker_in(Some(dir.path()));
    let t = topic(&addr, "persist", 1);
    let p = producer(&addr, &[])?;
    for i in 0..5 {
        send(&p, &t, 0, &format!("p{i}"))?;
    }
    drop(p);
    common::stop_broker(dir.path());
    let addr = common::broker_in(Some(dir.path()));
    let tp = txn_producer(&addr, &format!("tx-persist-{}", std::process::id()), 60_000)?;
    tp.begin_transaction().map_err(err)?;
    send(&tp, &t, 0, "t0")?;
    tp.commit_transaction(Duration::from_secs(10)).map_err(err)?;
    drop(tp);
    common::kill_broker(dir.path());
    let addr = common::broker_in(Some(dir.path()));
    // What a restored txn sink does next: the same transactional id, a new transaction, commit.
    // A single-replica partition has no leader while the restarted broker is fenced (until its
    // old session expires); a coordinator completing the acknowledged commit of t0 in that window
    // skips the partition's marker ("likely deleted"), so t0 stays pending and holds the last
    // stable offset until the producer's next marker there completes it. t0 must then be
    // committed, never lost.
    let tp = txn_producer(&addr, &format!("tx-persist-{}", std::process::id()), 60_000)?;
    tp.begin_transaction().map_err(err)?;
    send(&tp, &t, 0, "t1")?;
    tp.commit_transaction(Duration::from_secs(10)).map_err(err)?;
    let started = Instant::now();
    let (mut lso, mut hw) = (0, 1);
    while lso < hw {
        (lso, hw) = (end_offset(&addr, &t, "read_committed")?, end_offset(&addr, &t, "read_uncommitted")?);
        if started.elapsed() > Duration::from_secs(30) {
            common::stop_broker(dir.path());
            return Err(format!("a transaction stays open after the restart: LSO {lso}, end {hw}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = read(&addr, &t, 0, "read_committed", 7);
    common::stop_broker(dir.path());
    expect(got?, &["p0", "p1", "p2", "p3", "p4", "t0", "t1"], "after a restart and a kill -9")
}

#[test]
fn the_broker_does_what_weir_relies_on() {
    let addr = common::broker();
    let checks: Vec<(&str, Check)> = vec![
        ("assign + seek", assign_and_seek(&addr)),
        ("idempotent producer", idempotent_producer(&addr)),
        ("offsets in a transaction take effect on commit only", offsets_in_transaction(&addr)),
        ("read_committed hides aborted transactions", read_committed_isolation(&addr)),
        ("an open transaction holds the last stable offset", last_stable_offset(&addr)),
        ("zombie fencing", zombie_fencing(&addr)),
        ("a successor aborts its predecessor's open transaction", successor_aborts_open_transaction(&addr)),
        ("an abandoned transaction is aborted after its timeout", abandoned_transaction_times_out(&addr)),
        ("persistence across a restart and a kill -9", persistence_across_restarts()),
    ];
    let mut failed = Vec::new();
    for (name, result) in &checks {
        match result {
            Ok(()) => println!("PASS  {name}"),
            Err(e) => {
                println!("FAIL  {name}: {e}");
                failed.push(format!("{name}: {e}"));
            }
        }
    }
    assert!(failed.is_empty(), "the broker lacks what weir relies on: {failed:#?}");
}
