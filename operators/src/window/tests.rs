//! The window operator driven in-process by the operator test harness: firing on watermarks,
//! allowed lateness and late data, sliding and session windows, and a restore in the middle.

use std::sync::Arc;
use std::time::Duration;

use weir_runtime::testing::OperatorHarness;
use weir_runtime::OutputTag;
use weir_state::{AggregateFunction, TimeDomain};

use super::operator::{Aggregating, WindowOperator};
use super::{EventTimeSessionWindows, SlidingEventTimeWindows, TumblingEventTimeWindows, WindowAssigner};

/// Counts records.
struct CountAgg;

impl AggregateFunction for CountAgg {
    type In = (String, i64);
    type Acc = u64;
    type Out = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _: &(String, i64)) {
        *acc += 1;
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
    fn merge(&self, a: u64, b: u64) -> u64 {
        a + b
    }
}

/// (key, window start, window end, count)
type Row = (String, i64, i64, u64);

type CountWindows = WindowOperator<String, Aggregating<CountAgg>, Row>;

fn counting(assigner: Arc<dyn WindowAssigner>, lateness: i64, late: Option<OutputTag<(String, i64)>>) -> CountWindows {
    WindowOperator::new(
        assigner,
        Aggregating::new(CountAgg),
        Arc::new(|k: &String, w: &super::TimeWindow, n: u64, out: &mut weir_runtime::Collector<Row>| {
            out.collect((k.clone(), w.start, w.end, n))
        }),
        lateness,
        late,
    )
}

fn harness(op: CountWindows) -> OperatorHarness<(String, i64), Row> {
    OperatorHarness::keyed(op, |r: &(String, i64)| r.0.clone()).unwrap()
}

fn feed(h: &mut OperatorHarness<(String, i64), Row>, records: &[(&str, i64)]) {
    for &(k, ts) in records {
        h.process_at((k.to_string(), ts), ts).unwrap();
    }
}

fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort();
    rows
}

fn row(k: &str, start: i64, end: i64, n: u64) -> Row {
    (k.to_string(), start, end, n)
}

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn tumbling_windows_fire_when_the_watermark_passes_their_end_and_leave_no_timers() {
    let mut h = harness(counting(Arc::new(TumblingEventTimeWindows::of(SECOND)), 0, None));
    feed(&mut h, &[("a", 100), ("b", 200), ("a", 999), ("a", 1000)]);
    h.watermark(998).unwrap();
    assert!(h.take_output().is_empty(), "the window [0, 1000) is not complete before watermark 999");
    h.watermark(999).unwrap();
    let fired = h.take_output();
    assert!(fired.iter().all(|r| r.ts == Some(999)), "a window's result carries its max timestamp");
    let values = fired.into_iter().map(|r| r.value).collect();
    assert_eq!(sorted(values), vec![row("a", 0, 1000, 2), row("b", 0, 1000, 1)]);
    assert_eq!(h.next_timer(TimeDomain::EventTime), Some(1999), "only the window [1000, 2000) of a is left");
    h.watermark(5000).unwrap();
    assert_eq!(h.take_values(), vec![row("a", 1000, 2000, 1)]);
    assert_eq!(h.next_timer(TimeDomain::EventTime), None);
}

#[test]
fn late_records_within_the_lateness_fire_again_and_later_ones_go_to_the_side_output() {
    let late = OutputTag::<(String, i64)>::new("late");
    let mut h = harness(counting(Arc::new(TumblingEventTimeWindows::of(SECOND)), 500, Some(late.clone())));
    h.capture_side_output(&late);
    feed(&mut h, &[("a", 100)]);
    h.watermark(1000).unwrap();
    assert_eq!(h.take_values(), vec![row("a", 0, 1000, 1)]);
    // Within the lateness of 500 ms: the window fires again with the record counted.
    feed(&mut h, &[("a", 300)]);
    h.watermark(1100).unwrap();
    assert_eq!(h.take_values(), vec![row("a", 0, 1000, 2)]);
    // Past the window's end + lateness: dropped from the window, kept in the side output.
    h.watermark(1600).unwrap();
    feed(&mut h, &[("a", 400)]);
    h.watermark(3000).unwrap();
    assert!(h.take_values().is_empty());
    let side: Vec<(String, i64)> = h.take_side_output(&late).into_iter().map(|r| r.value).collect();
    assert_eq!(side, vec![("a".to_string(), 400)]);
}

#[test]
fn sliding_windows_count_a_record_in_every_window_it_falls_in() {
    let mut h = harness(counting(Arc::new(SlidingEventTimeWindows::of(2 * SECOND, SECOND)), 0, None));
    feed(&mut h, &[("a", 1500), ("a", 2500)]);
    h.watermark(10_000).unwrap();
    assert_eq!(sorted(h.take_values()), vec![row("a", 0, 2000, 1), row("a", 1000, 3000, 2), row("a", 2000, 4000, 1)]);
}

#[test]
fn session_windows_merge_when_a_record_bridges_the_gap() {
    let mut h = harness(counting(Arc::new(EventTimeSessionWindows::with_gap(SECOND)), 0, None));
    // Two sessions of a, [0, 1000) and [1800, 2800), then a record whose [900, 1900) bridges them.
    feed(&mut h, &[("a", 0), ("a", 1800), ("b", 100), ("a", 900)]);
    h.watermark(2000).unwrap();
    assert_eq!(h.take_values(), vec![row("b", 100, 1100, 1)], "a's merged session is still open");
    h.watermark(10_000).unwrap();
    assert_eq!(h.take_values(), vec![row("a", 0, 2800, 3)]);
}

#[test]
fn a_restored_operator_fires_the_windows_of_its_snapshot_with_their_contents() {
    let assigner: Arc<dyn WindowAssigner> = Arc::new(TumblingEventTimeWindows::of(SECOND));
    let mut h = harness(counting(assigner.clone(), 0, None));
    feed(&mut h, &[("a", 100), ("b", 200)]);
    let snapshot = h.snapshot(1).unwrap();
    // What happens after the snapshot is lost with the failed operator.
    feed(&mut h, &[("a", 300)]);
    drop(h);

    let mut restored =
        OperatorHarness::keyed_restored(counting(assigner, 0, None), |r: &(String, i64)| r.0.clone(), &snapshot)
            .unwrap();
    assert_eq!(restored.next_timer(TimeDomain::EventTime), Some(999), "timers are part of the snapshot");
    feed(&mut restored, &[("a", 400)]);
    restored.watermark(999).unwrap();
    assert_eq!(sorted(restored.take_values()), vec![row("a", 0, 1000, 2), row("b", 0, 1000, 1)]);
}
