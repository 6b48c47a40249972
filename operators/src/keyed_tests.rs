//! Keyed process functions driven in-process by the operator test harness: per-key state that
//! survives a snapshot and restore, and event-time timers that see the state of their own key.

use std::sync::Arc;

use anyhow::Result;
use weir_runtime::testing::OperatorHarness;
use weir_runtime::{Collector, FiredTimer, KeyedContext, KeyedOperator, Record, TimeDomain};
use weir_state::ValueStateDescriptor;

use super::keyed::RollingReduce;

type Sum = RollingReduce<String, (String, i64), fn(&(String, i64), &(String, i64)) -> (String, i64)>;

fn add(a: &(String, i64), b: &(String, i64)) -> (String, i64) {
    (a.0.clone(), a.1 + b.1)
}

fn sum() -> Sum {
    RollingReduce::new(Arc::new(add as fn(&(String, i64), &(String, i64)) -> (String, i64)))
}

fn key(r: &(String, i64)) -> String {
    r.0.clone()
}

fn rec(k: &str, v: i64) -> (String, i64) {
    (k.to_string(), v)
}

#[test]
fn a_rolling_reduce_keeps_one_value_per_key_across_a_restore() {
    let mut h = OperatorHarness::keyed(sum(), key).unwrap();
    for r in [rec("a", 1), rec("b", 10), rec("a", 2)] {
        h.process(r).unwrap();
    }
    assert_eq!(h.take_values(), vec![rec("a", 1), rec("b", 10), rec("a", 3)]);
    let snapshot = h.snapshot(1).unwrap();
    h.process(rec("a", 100)).unwrap(); // lost with the failed operator
    drop(h);

    let mut restored = OperatorHarness::keyed_restored(sum(), key, &snapshot).unwrap();
    restored.process(rec("a", 4)).unwrap();
    restored.process(rec("b", 5)).unwrap();
    assert_eq!(restored.take_values(), vec![rec("a", 7), rec("b", 15)]);
}

/// Emits a key once it saw no record for `GAP` ms of event time (a keyed process function with a
/// value state and event-time timers, as Flink's docs' `CountWithTimeoutFunction`).
struct Inactive {
    last: ValueStateDescriptor<i64>,
}

const GAP: i64 = 1000;

impl KeyedOperator for Inactive {
    type Key = String;
    type In = (String, i64);
    type Out = (String, i64);

    fn process(
        &mut self,
        _: &String,
        r: Record<(String, i64)>,
        ctx: &mut KeyedContext,
        _: &mut Collector<(String, i64)>,
    ) -> Result<()> {
        let ts = r.ts.unwrap_or_default();
        ctx.state(&self.last)?.update(&ts)?;
        ctx.register_event_timer(ts + GAP)
    }

    fn on_timer(
        &mut self,
        key: &String,
        t: FiredTimer,
        ctx: &mut KeyedContext,
        out: &mut Collector<(String, i64)>,
    ) -> Result<()> {
        let mut last = ctx.state(&self.last)?;
        // Only the timer of the latest record counts; earlier ones are stale.
        if last.value()? == Some(t.ts - GAP) {
            last.clear()?;
            out.collect((key.clone(), t.ts));
        }
        Ok(())
    }
}

#[test]
fn event_time_timers_fire_per_key_with_that_keys_state() {
    let op = Inactive { last: ValueStateDescriptor::new("last-seen") };
    let mut h = OperatorHarness::keyed(op, key).unwrap();
    h.process_at(rec("a", 0), 0).unwrap();
    h.process_at(rec("b", 0), 200).unwrap();
    h.process_at(rec("a", 0), 500).unwrap();
    assert_eq!(h.next_timer(TimeDomain::EventTime), Some(1000));
    h.watermark(1200).unwrap();
    // a's timer at 1000 is stale (a was seen at 500); b's at 1200 fires.
    assert_eq!(h.take_values(), vec![rec("b", 1200)]);
    h.watermark(1500).unwrap();
    let fired = h.take_output();
    assert_eq!(fired.iter().map(|r| (r.value.clone(), r.ts)).collect::<Vec<_>>(), vec![(rec("a", 1500), Some(1500))]);
    assert_eq!(h.next_timer(TimeDomain::EventTime), None, "every timer fired once");
}
