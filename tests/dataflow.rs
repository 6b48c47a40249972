//! The dataflow core in-process: windows and timers against references, partitioning, failure
//! handling, backpressure and idle inputs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use common::Rng;
use weir::nexmark::{Event, NexmarkConfig, NexmarkSource};
use weir::prelude::*;
use weir::runtime::{SourceOutput, SourcePoll, SourceReader, TaskInfo};

fn args(p: usize) -> JobArgs {
    JobArgs { parallelism: p, progress_interval: Duration::ZERO, ..JobArgs::default() }
}

/// (key, ts, value) events with increasing time and some disorder, spread over `splits`.
fn events(n: usize, keys: u64, seed: u64) -> Vec<(u64, i64, i64)> {
    let mut rng = Rng::new(seed);
    (0..n).map(|i| (rng.below(keys), (i as i64) * 37 - rng.below(300) as i64, rng.below(1000) as i64)).collect()
}

fn ts_strategy(delay_ms: u64) -> WatermarkStrategy<(u64, i64, i64)> {
    WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(delay_ms))
        .with_timestamp_assigner(|e: &(u64, i64, i64)| e.1)
}

#[test]
fn sliding_windows_match_brute_force() {
    let evs = events(20_000, 13, 5);
    let (size, slide) = (5_000i64, 1_000i64);
    let mut expected: BTreeMap<(u64, i64), (i64, u64)> = BTreeMap::new();
    for &(k, ts, v) in &evs {
        let mut start = ts - ts.rem_euclid(slide);
        while start > ts - size {
            let e = expected.entry((k, start)).or_insert((0, 0));
            e.0 += v;
            e.1 += 1;
            start -= slide;
        }
    }
    for p in [1, 2] {
        let env = StreamEnv::new(args(p));
        let out = Collected::new();
        // Delay larger than the disorder: nothing is late, so the result is deterministic.
        env.add_source("events", VecSource::with_splits(vec![evs.clone()]), ts_strategy(1_000))
            .key_by(|e: &(u64, i64, i64)| e.0)
            .window(SlidingEventTimeWindows::of(
                Duration::from_millis(size as u64),
                Duration::from_millis(slide as u64),
            ))
            .aggregate_with(Sum::new(|e: &(u64, i64, i64)| e.2), |k: &u64, w: &TimeWindow, sum, out| {
                out.collect((*k, w.start, sum))
            })
            .collect_into(&out);
        let env_result = env.execute("sliding").unwrap();
        let got: BTreeMap<(u64, i64), i64> = out.take().into_iter().map(|(k, s, sum)| ((k, s), sum)).collect();
        let want: BTreeMap<(u64, i64), i64> = expected.iter().map(|(k, v)| (*k, v.0)).collect();
        assert_eq!(got, want, "parallelism {p}");
        assert_eq!(env_result.counter("window-aggregate-1.late_records"), 0);
    }
}

#[test]
fn session_windows_match_brute_force() {
    let gap = 400i64;
    let mut rng = Rng::new(77);
    // Bursts per key separated by random pauses, delivered out of order within 100 ms.
    let mut evs = Vec::new();
    for k in 0..20u64 {
        let mut t = 0i64;
        for _ in 0..300 {
            t += if rng.below(10) == 0 { 500 + rng.below(2_000) as i64 } else { rng.below(300) as i64 };
            evs.push((k, t, 1i64));
        }
    }
    evs.sort_by_key(|e| e.1 + (e.0 as i64 * 7919 % 100));
    let mut expected = BTreeSet::new();
    for k in 0..20u64 {
        let mut ts: Vec<i64> = evs.iter().filter(|e| e.0 == k).map(|e| e.1).collect();
        ts.sort();
        let (mut start, mut end, mut n) = (ts[0], ts[0] + gap, 0u64);
        for t in ts {
            if t > end {
                expected.insert((k, start, end, n));
                start = t;
                n = 0;
            }
            end = end.max(t + gap);
            n += 1;
        }
        expected.insert((k, start, end, n));
    }
    for p in [1, 2] {
        let env = StreamEnv::new(args(p));
        let out = Collected::new();
        env.add_source("events", VecSource::new(evs.clone()), ts_strategy(200))
            .key_by(|e: &(u64, i64, i64)| e.0)
            .window(EventTimeSessionWindows::with_gap(Duration::from_millis(gap as u64)))
            .aggregate_with(Count::default(), |k: &u64, w: &TimeWindow, n, out| out.collect((*k, w.start, w.end, n)))
            .collect_into(&out);
        env.execute("sessions").unwrap();
        let got: BTreeSet<_> = out.take().into_iter().collect();
        assert_eq!(got, expected, "parallelism {p}");
    }
}

#[test]
fn window_process_sees_all_records_of_the_window() {
    let evs = events(5_000, 5, 9);
    let env = StreamEnv::new(args(2));
    let out = Collected::new();
    env.add_source("events", VecSource::new(evs.clone()), ts_strategy(1_000))
        .key_by(|e: &(u64, i64, i64)| e.0)
        .window(TumblingEventTimeWindows::of(Duration::from_secs(2)))
        .process(|k: &u64, w: &TimeWindow, items: Vec<(u64, i64, i64)>, out: &mut Collector<(u64, i64, Vec<i64>)>| {
            let mut vals: Vec<i64> = items.iter().map(|e| e.2).collect();
            vals.sort();
            out.collect((*k, w.start, vals))
        })
        .collect_into(&out);
    env.execute("process").unwrap();
    let mut expected: BTreeMap<(u64, i64), Vec<i64>> = BTreeMap::new();
    for &(k, ts, v) in &evs {
        expected.entry((k, ts - ts.rem_euclid(2_000))).or_default().push(v);
    }
    for v in expected.values_mut() {
        v.sort();
    }
    let got: BTreeMap<(u64, i64), Vec<i64>> = out.take().into_iter().map(|(k, s, v)| ((k, s), v)).collect();
    assert_eq!(got, expected);
}

#[test]
fn allowed_lateness_refires_and_later_records_go_to_the_side_output() {
    // One record per poll: the watermark follows every record, so lateness is exact.
    let evs: Vec<(u64, i64, i64)> = vec![
        (1, 1_000, 1),
        (1, 9_000, 2),
        (1, 12_500, 3), // wm 10_500: window [0,10s) fires with 1+2
        (1, 5_000, 4),  // late but within 1 s lateness: fires again with 1+2+4
        (1, 13_100, 5), // wm 11_100: window [0,10s) cleaned up
        (1, 6_000, 6),  // beyond lateness: side output
        (1, 30_000, 7),
    ];
    let late_tag = OutputTag::<(u64, i64, i64)>::new("late");
    let env = StreamEnv::new(args(1));
    let out = Collected::new();
    let late = Collected::new();
    let sums = env
        .add_source("events", VecSource::with_splits(vec![evs]).records_per_poll(1), ts_strategy(2_000))
        .key_by(|e: &(u64, i64, i64)| e.0)
        .window(TumblingEventTimeWindows::of(Duration::from_secs(10)))
        .allowed_lateness(Duration::from_secs(1))
        .side_output_late_data(&late_tag)
        .aggregate_with(Sum::new(|e: &(u64, i64, i64)| e.2), |_k: &u64, w: &TimeWindow, s, out| {
            out.collect((w.start, s))
        })
        .uid("w");
    sums.collect_into(&out);
    sums.side_output(&late_tag).collect_into(&late);
    let result = env.execute("lateness").unwrap();
    assert_eq!(out.take(), vec![(0, 3), (0, 7), (10_000, 8), (30_000, 7)]);
    assert_eq!(late.take(), vec![(1, 6_000, 6)]);
    assert_eq!(result.counter("w.late_records"), 1);
}

/// Emits, per key, the count of records seen when an event-time timer 1 s after the first record
/// of a run fires, and the order in which timers fired.
#[derive(Clone)]
struct RunCounter {
    count: ValueStateDescriptor<u64>,
}

impl KeyedOperator for RunCounter {
    type Key = u64;
    type In = (u64, i64, i64);
    type Out = (u64, i64, u64);
    fn process(
        &mut self,
        _k: &u64,
        r: Record<(u64, i64, i64)>,
        ctx: &mut KeyedContext,
        _out: &mut Collector<(u64, i64, u64)>,
    ) -> Result<()> {
        let mut st = ctx.state(&self.count)?;
        let n = st.value()?.unwrap_or(0);
        st.update(&(n + 1))?;
        if n == 0 {
            let ts = r.ts.unwrap_or(0);
            ctx.register_event_timer(ts - ts.rem_euclid(1_000) + 1_000)?;
        }
        Ok(())
    }
    fn on_timer(
        &mut self,
        k: &u64,
        t: FiredTimer,
        ctx: &mut KeyedContext,
        out: &mut Collector<(u64, i64, u64)>,
    ) -> Result<()> {
        let mut st = ctx.state(&self.count)?;
        out.collect((*k, t.ts, st.value()?.unwrap_or(0)));
        st.clear()?;
        Ok(())
    }
}

#[test]
fn event_timers_fire_in_timestamp_order_with_their_keys_state() {
    let evs = events(10_000, 17, 21);
    let env = StreamEnv::new(args(1));
    let out = Collected::new();
    env.add_source("events", VecSource::new(evs.clone()), ts_strategy(500))
        .key_by(|e: &(u64, i64, i64)| e.0)
        .process("runs", RunCounter { count: ValueStateDescriptor::new("count") })
        .collect_into(&out);
    env.execute("timers").unwrap();
    let fired = out.take();
    let times: Vec<i64> = fired.iter().map(|f| f.1).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "timers fire in timestamp order");
    // Reference: replay with the same watermark rule (max ts − 500 after each batch of 1024).
    let total: u64 = fired.iter().map(|f| f.2).sum();
    assert_eq!(total, evs.len() as u64, "every record is counted in exactly one run");
    let keys: BTreeSet<u64> = fired.iter().map(|f| f.0).collect();
    assert_eq!(keys.len(), 17);
}

/// A source that emits `n` records, then stays idle (not finished) for `idle`, then finishes.
#[derive(Clone)]
struct PausingSource {
    n: u64,
    idle: Duration,
    split_count: u64,
    pace: Duration,
    finished_at: Arc<parking_lot_free::Slot>,
}

mod parking_lot_free {
    use std::sync::Mutex;
    use std::time::Instant;
    #[derive(Default)]
    pub struct Slot(Mutex<Option<Instant>>);
    impl Slot {
        pub fn set(&self, t: Instant) {
            *self.0.lock().unwrap() = Some(t);
        }
        pub fn get(&self) -> Option<Instant> {
            *self.0.lock().unwrap()
        }
    }
}

struct PausingReader {
    cfg: PausingSource,
    next: u64,
    idle_since: Option<Instant>,
}

impl weir::runtime::Source<(u64, i64, i64)> for PausingSource {
    fn create_reader(&self, _: &TaskInfo) -> Result<Box<dyn SourceReader<(u64, i64, i64)>>> {
        Ok(Box::new(PausingReader { cfg: self.clone(), next: 0, idle_since: None }))
    }
}

impl SourceReader<(u64, i64, i64)> for PausingReader {
    fn poll(&mut self, out: &mut SourceOutput<'_, (u64, i64, i64)>) -> Result<SourcePoll> {
        for s in 0..self.cfg.split_count {
            out.register_split(s);
        }
        if self.next < self.cfg.n {
            // Split 0 keeps producing, one record per `pace` (all at once without a pace);
            // split 1 (if any) produces only its first record.
            loop {
                let i = self.next;
                self.next += 1;
                out.collect(0, (i % 3, i as i64 * 100, 1));
                if i == 0 && self.cfg.split_count > 1 {
                    out.collect(1, (9, 0, 1));
                }
                if !self.cfg.pace.is_zero() || self.next == self.cfg.n {
                    return Ok(SourcePoll::Idle(self.cfg.pace));
                }
            }
        }
        let since = *self.idle_since.get_or_insert_with(Instant::now);
        if since.elapsed() < self.cfg.idle {
            return Ok(SourcePoll::Idle(Duration::from_millis(5)));
        }
        self.cfg.finished_at.set(Instant::now());
        Ok(SourcePoll::Finished)
    }
}

/// Processing-time timer: emits how many records a key had when a timer 100 ms after its first
/// record fired, while the source is idle.
#[derive(Clone)]
struct ProcTimer {
    count: ValueStateDescriptor<u64>,
}

impl KeyedOperator for ProcTimer {
    type Key = u64;
    type In = (u64, i64, i64);
    type Out = (u64, u64);
    fn process(
        &mut self,
        _k: &u64,
        _r: Record<(u64, i64, i64)>,
        ctx: &mut KeyedContext,
        _out: &mut Collector<(u64, u64)>,
    ) -> Result<()> {
        let mut st = ctx.state(&self.count)?;
        let n = st.value()?.unwrap_or(0);
        st.update(&(n + 1))?;
        if n == 0 {
            let at = ctx.processing_time() + 100;
            ctx.register_processing_timer(at)?;
        }
        Ok(())
    }
    fn on_timer(
        &mut self,
        k: &u64,
        t: FiredTimer,
        ctx: &mut KeyedContext,
        out: &mut Collector<(u64, u64)>,
    ) -> Result<()> {
        assert_eq!(t.domain, TimeDomain::ProcessingTime);
        out.collect((*k, ctx.state(&self.count)?.value()?.unwrap_or(0)));
        Ok(())
    }
}

#[test]
fn processing_time_timers_fire_on_the_wall_clock() {
    let env = StreamEnv::new(args(1));
    let out = Collected::new();
    let src = PausingSource {
        n: 30,
        idle: Duration::from_millis(400),
        split_count: 1,
        pace: Duration::ZERO,
        finished_at: Default::default(),
    };
    env.add_source("pausing", src, WatermarkStrategy::no_watermarks())
        .key_by(|e: &(u64, i64, i64)| e.0)
        .process("proc", ProcTimer { count: ValueStateDescriptor::new("count") })
        .collect_into(&out);
    env.execute("proc-timers").unwrap();
    let mut got = out.take();
    got.sort();
    assert_eq!(got, vec![(0, 10), (1, 10), (2, 10)]);
}

#[test]
fn an_idle_split_stops_holding_back_the_watermark() {
    for idleness in [Some(Duration::from_millis(100)), None] {
        let finished_at: Arc<parking_lot_free::Slot> = Default::default();
        let src = PausingSource {
            n: 40,
            idle: Duration::ZERO,
            split_count: 2,
            pace: Duration::from_millis(15),
            finished_at: finished_at.clone(),
        };
        let mut strategy = ts_strategy(0);
        if let Some(t) = idleness {
            strategy = strategy.with_idleness(t);
        }
        let first_result: Arc<parking_lot_free::Slot> = Default::default();
        let seen = first_result.clone();
        let env = StreamEnv::new(args(1));
        env.add_source("pausing", src, strategy)
            .key_by(|e: &(u64, i64, i64)| e.0)
            .window(TumblingEventTimeWindows::of(Duration::from_millis(500)))
            .aggregate(Count::default())
            .map(move |c| {
                if seen.get().is_none() {
                    seen.set(Instant::now());
                }
                c
            });
        env.execute("idleness").unwrap();
        let (first, end) = (first_result.get().unwrap(), finished_at.get().unwrap());
        match idleness {
            Some(_) => {
                assert!(first + Duration::from_millis(200) < end, "windows fire while the idle split is excluded")
            }
            None => assert!(first >= end, "without idleness the silent split holds every window until the end"),
        }
    }
}

#[test]
fn a_panicking_operator_fails_the_job_quickly_with_its_name() {
    let panicked_at: Arc<parking_lot_free::Slot> = Default::default();
    let p = panicked_at.clone();
    let env = StreamEnv::new(args(2));
    env.add_source("nexmark", NexmarkSource::new(NexmarkConfig::default()), WatermarkStrategy::no_watermarks())
        .map(move |e: Event| {
            if let Event::Bid(b) = &e {
                if b.price == 4242 {
                    p.set(Instant::now());
                    panic!("bad bid {}", b.price);
                }
            }
            e
        })
        .name("validate")
        .key_by(|e: &Event| e.date_time() % 7)
        .reduce(|a, _| a.clone());
    let err = env.execute("panics").unwrap_err();
    let returned = Instant::now();
    let msg = format!("{err:#}");
    assert!(msg.contains("operator 'validate'") && msg.contains("bad bid 4242"), "{msg}");
    assert!(msg.contains("subtask"), "{msg}");
    let elapsed = returned - panicked_at.get().unwrap();
    assert!(elapsed < Duration::from_secs(1), "job failed {elapsed:?} after the panic");
}

#[test]
fn an_operator_error_fails_the_job_instead_of_hanging() {
    let env = StreamEnv::new(args(1));
    env.add_source("numbers", VecSource::new((0..100_000u64).collect()), WatermarkStrategy::no_watermarks())
        .try_map(|x: u64| if x == 50_000 { anyhow::bail!("no fifty thousand") } else { Ok(x) })
        .name("checker")
        .start_new_chain()
        .collect_into(&Collected::new());
    let err = env.execute("errors").unwrap_err();
    assert!(format!("{err:#}").contains("no fifty thousand"), "{err:#}");
}

/// A source that counts what it emitted.
#[derive(Clone)]
struct CountingSource(Arc<AtomicU64>);

struct CountingReader(Arc<AtomicU64>);

impl weir::runtime::Source<u64> for CountingSource {
    fn create_reader(&self, _: &TaskInfo) -> Result<Box<dyn SourceReader<u64>>> {
        Ok(Box::new(CountingReader(self.0.clone())))
    }
}

impl SourceReader<u64> for CountingReader {
    fn poll(&mut self, out: &mut SourceOutput<'_, u64>) -> Result<SourcePoll> {
        let n = out.remaining();
        for _ in 0..n {
            let i = self.0.fetch_add(1, Ordering::SeqCst);
            out.collect(0, i);
        }
        Ok(SourcePoll::Ready)
    }
}

#[test]
fn a_slow_sink_blocks_the_source_through_bounded_channels() {
    let emitted = Arc::new(AtomicU64::new(0));
    let (batch, capacity) = (16u32, 4u32);
    let env = StreamEnv::new(JobArgs { batch_size: batch, channel_capacity: capacity, ..args(1) });
    let seen_at_stop = Arc::new(AtomicU64::new(0));
    let (e, s) = (emitted.clone(), seen_at_stop.clone());
    let processed = Arc::new(AtomicU64::new(0));
    let stopped = Arc::new(AtomicBool::new(false));
    env.add_source("fast", CountingSource(emitted.clone()), WatermarkStrategy::no_watermarks())
        .try_map(move |x: u64| {
            std::thread::sleep(Duration::from_millis(1));
            let n = processed.fetch_add(1, Ordering::SeqCst) + 1;
            if n == 500 {
                s.store(e.load(Ordering::SeqCst), Ordering::SeqCst);
                stopped.store(true, Ordering::SeqCst);
                anyhow::bail!("enough");
            }
            Ok(x)
        })
        .name("slow")
        .start_new_chain();
    let err = env.execute("backpressure").unwrap_err();
    assert!(format!("{err:#}").contains("enough"));
    let at_stop = seen_at_stop.load(Ordering::SeqCst);
    // In flight at most: the channel (capacity batches), the source's partly filled output
    // buffer and the batch being read, and the sink's current batch.
    let bound = 500 + (capacity as u64 + 3) * batch as u64;
    assert!(at_stop <= bound, "source ran ahead: {at_stop} emitted while the sink had taken 500 (bound {bound})");
}

#[test]
fn union_connect_broadcast_and_rebalance_route_records() {
    use weir::runtime::{CoOperator, OperatorContext as Ctx};
    #[derive(Clone)]
    struct Tag;
    impl CoOperator for Tag {
        type In1 = u64;
        type In2 = String;
        type Out = String;
        fn process1(&mut self, r: Record<u64>, _: &mut Ctx, out: &mut Collector<String>) -> Result<()> {
            out.collect(format!("n{}", r.value));
            Ok(())
        }
        fn process2(&mut self, r: Record<String>, _: &mut Ctx, out: &mut Collector<String>) -> Result<()> {
            out.collect(format!("s{}", r.value));
            Ok(())
        }
    }
    let env = StreamEnv::new(args(2));
    let a = env.add_source("a", VecSource::new((0..1000u64).collect()), WatermarkStrategy::no_watermarks());
    let b = env.add_source("b", VecSource::new((1000..1500u64).collect()), WatermarkStrategy::no_watermarks());
    let union = Collected::new();
    a.union(&[&b]).map(|x| x + 1).collect_into(&union);
    let broadcast = Collected::new();
    b.broadcast().map(|x| x).set_parallelism(3).collect_into(&broadcast);
    let subtasks = Collected::new();
    #[derive(Clone)]
    struct WhoAmI(usize);
    impl weir::runtime::Operator for WhoAmI {
        type In = u64;
        type Out = usize;
        fn open(&mut self, ctx: &mut Ctx) -> Result<()> {
            self.0 = ctx.info().subtask;
            Ok(())
        }
        fn process(&mut self, _: Record<u64>, _: &mut Ctx, out: &mut Collector<usize>) -> Result<()> {
            out.collect(self.0);
            Ok(())
        }
    }
    a.rebalance().process("who", WhoAmI(0)).set_parallelism(2).collect_into(&subtasks);
    let connected = Collected::new();
    let words =
        env.add_source("w", VecSource::new(vec!["x".to_string(), "y".to_string()]), WatermarkStrategy::no_watermarks());
    a.connect(&words).transform("tag", |_| Tag).collect_into(&connected);
    env.execute("routing").unwrap();

    let mut u = union.take();
    u.sort();
    assert_eq!(u, (1..1501).collect::<Vec<u64>>());
    let bc = broadcast.take();
    assert_eq!(bc.len(), 1500, "each of 3 subtasks gets all 500");
    let who = subtasks.take();
    assert_eq!(who.len(), 1000);
    assert!(who.iter().filter(|s| **s == 0).count() > 0 && who.iter().filter(|s| **s == 1).count() > 0);
    let c = connected.take();
    assert_eq!(c.len(), 1002);
    assert!(c.contains(&"sx".to_string()) && c.contains(&"n999".to_string()));
}

#[test]
fn keyed_state_with_many_keys_and_rolling_aggregates() {
    let env = StreamEnv::new(args(2));
    let out = Collected::new();
    let n = 30_000u64;
    env.add_source("numbers", VecSource::new((0..n).collect()), WatermarkStrategy::no_watermarks())
        .key_by(|x: &u64| x % 1000)
        .aggregate(Count::default())
        .collect_into(&out);
    env.execute("rolling").unwrap();
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    let all = out.take();
    assert_eq!(all.len() as u64, n, "one update per record");
    for (k, c) in all {
        let prev = last.insert(k, c).unwrap_or(0);
        assert_eq!(c, prev + 1);
    }
    assert_eq!(last.len(), 1000);
    assert!(last.values().all(|c| *c == 30));
}

#[test]
fn a_failed_task_restarts_the_job_from_its_last_checkpoint() {
    static FAILED: AtomicBool = AtomicBool::new(false);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let n = 200_000u64;
    let job = |restart_attempts: u32, chk: &std::path::Path| {
        let env = StreamEnv::new(JobArgs {
            checkpoint_dir: Some(chk.to_path_buf().into()),
            checkpoint_interval: Some(Duration::from_millis(20)),
            restart_attempts,
            restart_delay: Duration::from_millis(10),
            batch_size: 64,
            ..args(1)
        });
        let nexmark =
            NexmarkConfig { limit: Some(n), bids_only: true, rate: Some(400_000), ..NexmarkConfig::default() };
        env.add_source("bids", NexmarkSource::new(nexmark), WatermarkStrategy::no_watermarks())
            .uid("bids")
            .map(|e: Event| match e {
                Event::Bid(b) => {
                    if b.date_time > 1_767_225_600_000 + 3_000 && !FAILED.swap(true, Ordering::SeqCst) {
                        panic!("injected failure");
                    }
                    (b.auction, b.date_time)
                }
                _ => (0, 0),
            })
            .uid("fail-once")
            .key_by(|x: &(u64, i64)| x.0)
            .window(GlobalWindows::create())
            .aggregate_with(Count::default(), |k: &u64, _, c, out| out.collect((*k, c)))
            .uid("counts")
            .write_files(FileSink::csv(&out))
            .uid("sink");
        env.execute("restarts")
    };
    // Without restarts the failure ends the job.
    let err = job(0, &dir.path().join("chk-a")).unwrap_err();
    assert!(format!("{err:#}").contains("injected failure"));
    // With one restart it resumes from its last checkpoint and the counts are exact.
    FAILED.store(false, Ordering::SeqCst);
    let _ = std::fs::remove_dir_all(&out);
    job(1, &dir.path().join("chk-b")).unwrap();
    assert!(FAILED.load(Ordering::SeqCst), "the failure happened");
    let mut total = 0u64;
    let mut keys = BTreeSet::new();
    for l in common::read_parts(&out, ".csv", None) {
        let (k, c) = l.split_once(',').unwrap();
        assert!(keys.insert(k.to_string()), "key {k} written twice");
        total += c.parse::<u64>().unwrap();
    }
    assert_eq!(total, n, "every bid counted once across the restart");
}

/// Two subtasks of one source at very different speeds: `(subtask, ts)` records.
#[derive(Clone)]
struct SkewedSource {
    n: i64,
}

struct SkewedReader {
    subtask: usize,
    next: i64,
    n: i64,
}

impl weir::runtime::Source<(usize, i64)> for SkewedSource {
    fn create_reader(&self, info: &TaskInfo) -> Result<Box<dyn SourceReader<(usize, i64)>>> {
        Ok(Box::new(SkewedReader { subtask: info.subtask, next: 0, n: self.n }))
    }
}

impl SourceReader<(usize, i64)> for SkewedReader {
    fn poll(&mut self, out: &mut SourceOutput<'_, (usize, i64)>) -> Result<SourcePoll> {
        // Subtask 0 makes 100 ms of event time per poll, subtask 1 10 ms per poll and 1 ms of sleep.
        let step = if self.subtask == 0 { 100 } else { 10 };
        if self.subtask == 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        for _ in 0..step {
            if self.next >= self.n {
                return Ok(SourcePoll::Finished);
            }
            out.collect_at(0, (self.subtask, self.next), self.next);
            self.next += 1;
        }
        Ok(SourcePoll::Ready)
    }
}

/// The largest lead of subtask 0's event time over subtask 1's, in arrival order at the sink.
fn largest_lead(alignment: Option<Duration>) -> i64 {
    let out = Collected::new();
    let env = StreamEnv::new(JobArgs { buffer_timeout: Duration::from_millis(1), batch_size: 10, ..args(2) });
    let mut strategy = WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|r: &(usize, i64)| r.1);
    if let Some(drift) = alignment {
        strategy = strategy.with_watermark_alignment(drift);
    }
    env.add_source("skewed", SkewedSource { n: 5_000 }, strategy).rebalance().collect_into(&out).set_parallelism(1);
    env.execute("alignment").unwrap();
    let mut max = [-1i64; 2];
    let mut lead = 0;
    let records = out.take();
    assert_eq!(records.len(), 10_000);
    for (subtask, ts) in records {
        max[subtask] = max[subtask].max(ts);
        if max[1] < 4_900 {
            lead = lead.max(max[0] - max[1]);
        }
    }
    lead
}

#[test]
fn watermark_alignment_holds_a_fast_subtask_near_the_slowest() {
    let unaligned = largest_lead(None);
    assert!(unaligned > 1_500, "without alignment the fast subtask runs far ahead: {unaligned}");
    let aligned = largest_lead(Some(Duration::from_millis(100)));
    // Drift, plus one poll of the fast subtask, plus what is in flight.
    assert!(aligned <= 400, "with 100 ms alignment the lead stays small: {aligned}");
}
