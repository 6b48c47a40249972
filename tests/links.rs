//! The links between the processes of one job:
//! - shared by a slow channel and fast ones: credits per logical channel keep the fast ones
//!   flowing and checkpoints completing (two processes of one job in this test process, on real
//!   TCP connections, as Flink's MiniCluster runs several task managers);
//! - cut: a link in the test between two processes forwards their connection until the test
//!   cuts it, then drops every byte both ways while the connection stays open — a network
//!   partition (packets lost, no reset), not a crash.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{read_parts, run_ok};
use weir::prelude::*;

const HEADER: &str = "window_start,auction,count,max_price";

/// A TCP forwarder on loopback that can be cut.
struct Link {
    addr: String,
    cut: Arc<AtomicBool>,
}

impl Link {
    /// Forwards every connection made to [`Link::addr`] to `target`.
    fn to(target: &str) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let (target, c) = (target.to_string(), cut.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(a) = conn else { return };
                // The target may not listen yet (processes start together): wait for it, as the
                // process behind the link would.
                let deadline = Instant::now() + Duration::from_secs(20);
                let b = loop {
                    match TcpStream::connect(&target) {
                        Ok(b) => break Some(b),
                        Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                        Err(_) => break None,
                    }
                };
                let Some(b) = b else { continue };
                for (mut from, mut to) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
                    let cut = c.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 << 10];
                        // Reads on after the cut, so that the sender's writes never fail: the
                        // bytes are lost, as on a partitioned network.
                        while let Ok(n @ 1..) = from.read(&mut buf) {
                            if !cut.load(Ordering::Relaxed) && to.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Link { addr, cut }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }
}

/// The committed part files of sink subtask `subtask` under `dir`.
fn committed_parts(dir: &Path, subtask: usize) -> BTreeSet<String> {
    let prefix = format!("part-{subtask:05}");
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() {
                stack.push(e.path());
            } else if name.starts_with(&prefix) {
                out.insert(e.path().display().to_string());
            }
        }
    }
    out
}

fn sorted_rows(dir: &Path) -> Vec<String> {
    let mut rows = read_parts(dir, ".csv", Some(HEADER));
    rows.sort();
    rows
}

#[test]
fn a_process_cut_off_from_the_others_stops_them_all_and_commits_nothing_after() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bids.jsonl");
    common::write_bids(&input, 30_000, 3_000, 5);
    let ref_out = dir.path().join("ref-out");
    run_ok("auction_windows", &["--input", input.to_str().unwrap(), "--output", ref_out.to_str().unwrap()]);
    let (out, chk) = (dir.path().join("out"), dir.path().join("chk"));
    let args: Vec<String> = [
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--window-parallelism",
        "3",
        "--checkpoint-dir",
        chk.to_str().unwrap(),
        "--checkpoint-interval",
        "100ms",
        "--rate",
        "4000",
        "--progress-interval",
        "0s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Process 2 reaches processes 0 and 1 (it connects to both, the higher index connects)
    // through links the test can cut; 0 and 1 talk directly.
    let links: std::sync::Mutex<Vec<Link>> = Default::default();
    let route = |i: usize, j: usize, addr: &str| {
        if i == 2 && j < 2 {
            let link = Link::to(addr);
            let a = link.addr.clone();
            links.lock().unwrap().push(link);
            a
        } else {
            addr.to_string()
        }
    };
    let mut c = Cluster::start_via("auction_windows", 3, &args, &dir.path().join("run-0"), &[], &[], &route);
    let job_chk = chk.join("auction_windows");
    let deadline = Instant::now() + Duration::from_secs(60);
    while common::max_checkpoint(&job_chk) < 3 || committed_parts(&out, 2).is_empty() {
        assert!(Instant::now() < deadline, "no checkpoints with output of process 2:\n{}", c.logs());
        assert!(c.procs.iter_mut().all(|p| p.try_wait().unwrap().is_none()), "ended early:\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(10));
    }
    links.lock().unwrap().iter().for_each(Link::cut);
    let cut = Instant::now();
    // A commit that process 2 had been told of before the cut finishes within milliseconds.
    std::thread::sleep(Duration::from_millis(200));
    let before = committed_parts(&out, 2);
    let statuses = c.wait(Duration::from_secs(30));
    let took = cut.elapsed();
    assert!(statuses.iter().all(|s| !s.success()), "every process fails: {statuses:?}\n{}", c.logs());
    // --peer-timeout 5s: silence, not a closed connection, tells them.
    assert!(took >= Duration::from_secs(4) && took < Duration::from_secs(15), "stopped after {took:?}");
    // Process 2 hears nobody; of 0 and 1, whichever notices first fails, and the other loses it.
    assert!(c.log(2).contains("no word from it"), "process 2 names a silent peer:\n{}", c.log(2));
    let silent = (0..2).filter(|&i| c.log(i).contains("lost the connection to process 2")).count();
    assert!(silent >= 1 && c.logs().contains("no word from it"), "{}", c.logs());
    assert_eq!(committed_parts(&out, 2), before, "process 2 committed output after it was cut off");

    // Whole again, the job restarts from its last checkpoint and its output is exact.
    let mut c = Cluster::start_job("auction_windows", 3, &args, &dir.path().join("run-1"), &[], &[]);
    let statuses = c.wait(Duration::from_secs(300));
    assert!(statuses.iter().all(|s| s.success()), "{}", c.logs());
    assert_eq!(sorted_rows(&out), sorted_rows(&ref_out));
}

/// Passes records on; in subtask 1 (of two, so in process 1), slowly.
#[derive(Clone)]
struct SlowIn1 {
    slow: bool,
    pause: Duration,
}

impl KeyedOperator for SlowIn1 {
    type Key = u64;
    type In = u64;
    type Out = (u64, u64);
    fn process(
        &mut self,
        _key: &u64,
        r: Record<u64>,
        _ctx: &mut KeyedContext,
        out: &mut Collector<(u64, u64)>,
    ) -> anyhow::Result<()> {
        if self.slow {
            std::thread::sleep(self.pause);
        }
        out.collect((r.value, 0));
        Ok(())
    }
}

/// Milliseconds since `start`, stamped on each output row as it arrives.
fn stamp(start: Instant) -> impl Fn((u64, u64)) -> (u64, u64) + Send + Sync + 'static {
    move |(v, _)| (v, start.elapsed().as_millis() as u64)
}

const SLOW_RECORDS: u64 = 800;
const FAST_RECORDS: u64 = 200_000;

/// One process of a job with two independent pipelines whose keyed operators (parallelism 2)
/// have subtask 1 in process 1: one slow (10 ms a record in subtask 1), one fast. Every channel
/// into process 1 shares the one connection from process 0.
fn two_pipelines(
    args: JobArgs,
    start: Instant,
    slow: &Collected<(u64, u64)>,
    fast: &Collected<(u64, u64)>,
) -> JobResult {
    let env = StreamEnv::new(args);
    let none = || WatermarkStrategy::no_watermarks();
    let pause = Duration::from_millis(10);
    env.add_source("slow-source", VecSource::new((0..SLOW_RECORDS).collect()).records_per_poll(8), none())
        .set_parallelism(1)
        .key_by(|v: &u64| *v)
        .transform("slow", move |info| SlowIn1 { slow: info.subtask == 1, pause })
        .set_parallelism(2)
        .map(stamp(start))
        .collect_into(slow);
    env.add_source("fast-source", VecSource::new((0..FAST_RECORDS).collect()), none())
        .set_parallelism(1)
        .key_by(|v: &u64| *v)
        .transform("fast", move |_| SlowIn1 { slow: false, pause })
        .set_parallelism(2)
        .map(stamp(start))
        .collect_into(fast);
    env.execute("two-pipelines").unwrap()
}

#[test]
fn a_slow_channel_does_not_stall_fast_ones_on_the_same_connection() {
    let dir = tempfile::tempdir().unwrap();
    let peers = vec![format!("127.0.0.1:{}", common::free_port()), format!("127.0.0.1:{}", common::free_port())];
    let (slow, fast) = (Collected::new(), Collected::new());
    let start = Instant::now();
    let results: Vec<JobResult> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|i| {
                let args = JobArgs {
                    parallelism: 2,
                    processes: 2,
                    process_index: i,
                    peers: peers.clone(),
                    state_dir: Some(dir.path().join(format!("state-{i}"))),
                    checkpoint_dir: Some(dir.path().join("chk").into()),
                    checkpoint_interval: Some(Duration::from_millis(200)),
                    checkpoint_timeout: Duration::from_secs(5),
                    // Few credits of small batches: the slow subtask's queue is full at once.
                    channel_capacity: 2,
                    batch_size: 16,
                    buffer_timeout: Duration::from_millis(5),
                    progress_interval: Duration::ZERO,
                    ..JobArgs::default()
                };
                let (slow, fast) = (&slow, &fast);
                s.spawn(move || two_pipelines(args, start, slow, fast))
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let (slow, fast) = (slow.take(), fast.take());
    assert_eq!(slow.len() as u64, SLOW_RECORDS);
    assert_eq!(fast.len() as u64, FAST_RECORDS);
    let slow_done = slow.iter().map(|r| r.1).max().unwrap();
    let fast_done = fast.iter().map(|r| r.1).max().unwrap();
    // ~400 slow records at 10 ms in subtask 1: about 4 s. The fast pipeline's 100,000 records
    // for process 1 pass the same connection meanwhile, long before the slow ones are through.
    assert!(slow_done >= 3_500, "the slow subtask took {slow_done} ms");
    assert!(fast_done * 2 < slow_done, "fast pipeline done at {fast_done} ms, slow at {slow_done} ms");
    // Checkpoints complete while the slow subtask works through its queue, each well within its
    // 5 s timeout: a barrier waits only for the few batches the credits let in before it.
    let completed: Vec<u64> = results[0]
        .checkpoints
        .iter()
        .filter(|c| c.status == "completed" && !c.terminal)
        .map(|c| c.duration_ms)
        .collect();
    assert!(completed.len() >= 4 && completed.iter().all(|&ms| ms < 2_500), "{:?}", results[0].checkpoints);
    let sent_to_1 = results[0].network_out.1;
    assert!(sent_to_1 >= FAST_RECORDS / 3, "process 0 sent {sent_to_1} records to process 1");
}
