use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weir_state::*;

fn open(dir: &std::path::Path) -> KeyedStateBackend {
    KeyedStateBackend::open(dir, KeyGroupRange::for_subtask(128, 1, 0), 128).unwrap()
}

struct SumCount;
impl AggregateFunction for SumCount {
    type In = u64;
    type Acc = (u64, u64);
    type Out = f64;
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, u64), v: &u64) {
        acc.0 += v;
        acc.1 += 1;
    }
    fn get_result(&self, acc: &(u64, u64)) -> f64 {
        acc.0 as f64 / acc.1 as f64
    }
    fn merge(&self, a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
        (a.0 + b.0, a.1 + b.1)
    }
}

#[test]
fn every_state_kind_is_scoped_to_the_current_key_and_namespace() {
    // Without the write cache, with one so small it flushes all the time, and with the default.
    for limit in [0, 300, DEFAULT_CACHE_BYTES] {
        every_state_kind_with_cache(limit);
    }
}

fn every_state_kind_with_cache(limit: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(dir.path());
    b.set_cache_limit(limit).unwrap();
    let value = ValueStateDescriptor::<String>::new("value");
    let list = ListStateDescriptor::<u32>::new("list");
    let map = MapStateDescriptor::<String, i64>::new("map");
    let red = ReducingStateDescriptor::<u64>::new("max", |a, b| *a.max(b));
    let agg = AggregatingStateDescriptor::new("avg", SumCount);

    for key in 0..50u64 {
        b.set_current_key(&key).unwrap();
        value.bind(b.state()).unwrap().update(&format!("v{key}")).unwrap();
        for i in 0..(key % 5) as u32 {
            list.bind(b.state()).unwrap().add(&i).unwrap();
        }
        map.bind(b.state()).unwrap().put(&"a".into(), &(key as i64)).unwrap();
        map.bind(b.state()).unwrap().put(&"b".into(), &-(key as i64)).unwrap();
        for v in [key, key * 3, 2] {
            red.bind(b.state()).unwrap().add(&v).unwrap();
            agg.bind(b.state()).unwrap().add(&v).unwrap();
        }
        // The same key in another namespace is a separate entry.
        value.bind(b.state()).unwrap().in_namespace(b"ns1").update(&"other".into()).unwrap();
    }
    for key in 0..50u64 {
        b.set_current_key(&key).unwrap();
        assert_eq!(value.bind(b.state()).unwrap().value().unwrap(), Some(format!("v{key}")));
        assert_eq!(value.bind(b.state()).unwrap().in_namespace(b"ns1").value().unwrap(), Some("other".to_string()));
        let expect: Vec<u32> = (0..(key % 5) as u32).collect();
        assert_eq!(list.bind(b.state()).unwrap().get().unwrap(), expect);
        assert_eq!(
            map.bind(b.state()).unwrap().entries().unwrap(),
            vec![("a".to_string(), key as i64), ("b".to_string(), -(key as i64))]
        );
        assert_eq!(red.bind(b.state()).unwrap().get().unwrap(), Some((key * 3).max(2)));
        let avg = agg.bind(b.state()).unwrap().get().unwrap().unwrap();
        assert!((avg - (key as f64 * 4.0 + 2.0) / 3.0).abs() < 1e-9);
    }
    b.set_current_key(&7u64).unwrap();
    map.bind(b.state()).unwrap().remove(&"a".into()).unwrap();
    assert_eq!(map.bind(b.state()).unwrap().entries().unwrap(), vec![("b".to_string(), -7)]);
    map.bind(b.state()).unwrap().clear().unwrap();
    assert!(map.bind(b.state()).unwrap().is_empty().unwrap());
    b.set_current_key(&8u64).unwrap();
    assert_eq!(map.bind(b.state()).unwrap().entries().unwrap().len(), 2, "other keys untouched");
    assert_eq!(b.count_entries("value").unwrap(), 100);
}

#[test]
fn a_state_name_cannot_change_kind() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(dir.path());
    b.set_current_key(&1).unwrap();
    ValueStateDescriptor::<u64>::new("s").bind(b.state()).unwrap();
    let err = ListStateDescriptor::<u64>::new("s").bind(b.state()).err().unwrap();
    assert!(err.to_string().contains("declared as Value"), "{err}");
    assert!(ValueStateDescriptor::<u64>::new("_x").bind(b.state()).is_err());
}

#[test]
fn ttl_hides_and_removes_expired_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(dir.path());
    let now = Arc::new(AtomicI64::new(1_000));
    let clock = now.clone();
    b.set_clock(Arc::new(move || clock.load(Ordering::SeqCst)));
    let ttl = StateTtlConfig::new(Duration::from_millis(100));
    let v = ValueStateDescriptor::<u64>::new("v").with_ttl(ttl);
    let touched = ValueStateDescriptor::<u64>::new("touched").with_ttl(ttl.update_on_read());
    let l = ListStateDescriptor::<u64>::new("l").with_ttl(ttl);
    let m = MapStateDescriptor::<u64, u64>::new("m").with_ttl(ttl);
    b.set_current_key(&"k").unwrap();
    v.bind(b.state()).unwrap().update(&1).unwrap();
    touched.bind(b.state()).unwrap().update(&1).unwrap();
    l.bind(b.state()).unwrap().add(&1).unwrap();
    m.bind(b.state()).unwrap().put(&1, &1).unwrap();
    now.store(1_060, Ordering::SeqCst);
    l.bind(b.state()).unwrap().add(&2).unwrap();
    m.bind(b.state()).unwrap().put(&2, &2).unwrap();
    assert_eq!(touched.bind(b.state()).unwrap().value().unwrap(), Some(1), "read extends life");
    assert_eq!(v.bind(b.state()).unwrap().value().unwrap(), Some(1));
    now.store(1_100, Ordering::SeqCst);
    assert_eq!(v.bind(b.state()).unwrap().value().unwrap(), None, "expired at write + ttl");
    assert_eq!(touched.bind(b.state()).unwrap().value().unwrap(), Some(1));
    assert_eq!(l.bind(b.state()).unwrap().get().unwrap(), vec![2], "list elements expire one by one");
    assert_eq!(m.bind(b.state()).unwrap().entries().unwrap(), vec![(2, 2)]);
    assert_eq!(b.count_entries("v").unwrap(), 0, "expired value was deleted on read");
    assert_eq!(b.count_entries("m").unwrap(), 1, "expired map entry was deleted on read");
}

#[test]
fn timers_fire_in_order_deduplicate_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut b = open(dir.path());
        for (key, ts) in [("a", 30), ("b", 10), ("a", 10), ("c", -5), ("b", 10)] {
            b.set_current_key(&key).unwrap();
            b.register_timer(TimeDomain::EventTime, ts, b"w").unwrap();
        }
        b.set_current_key(&"p").unwrap();
        b.register_timer(TimeDomain::ProcessingTime, 99, b"").unwrap();
        b.set_current_key(&"a").unwrap();
        b.register_timer(TimeDomain::EventTime, 20, b"").unwrap();
        b.delete_timer(TimeDomain::EventTime, 20, b"").unwrap();
        assert_eq!(b.timer_count(TimeDomain::EventTime), 4, "duplicate (b,10) kept once");
        let t = b.pop_due_timer(TimeDomain::EventTime, 0).unwrap();
        assert_eq!((t.ts, weir_state::codec::decode::<String>(t.key_bytes()).unwrap()), (-5, "c".into()));
    }
    let mut b = open(dir.path());
    assert_eq!(b.timer_count(TimeDomain::ProcessingTime), 1);
    let mut fired = Vec::new();
    while let Some(t) = b.pop_due_timer(TimeDomain::EventTime, 25) {
        fired.push((t.ts, weir_state::codec::decode::<String>(t.key_bytes()).unwrap()));
    }
    // Equal timestamps fire in key-group order, which is not the keys' order.
    fired.sort();
    assert_eq!(fired, vec![(10, "a".to_string()), (10, "b".to_string())]);
    assert_eq!(b.next_timer(TimeDomain::EventTime), Some(30));
}

#[test]
fn reopening_keeps_state_and_only_owned_timers_are_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let v = ValueStateDescriptor::<u64>::new("v");
    let mut owners = Vec::new();
    {
        let mut b = open(dir.path());
        for key in 0..20u64 {
            b.set_current_key(&key).unwrap();
            v.bind(b.state()).unwrap().update(&(key * 10)).unwrap();
            b.register_timer(TimeDomain::EventTime, key as i64, b"").unwrap();
            owners.push(b.current_key_group() < 64);
        }
    }
    // A backend that owns only the lower half of the key groups, as subtask 0 of 2 would.
    let mut b = KeyedStateBackend::open(dir.path(), KeyGroupRange::for_subtask(128, 2, 0), 128).unwrap();
    assert_eq!(b.timer_count(TimeDomain::EventTime), owners.iter().filter(|o| **o).count());
    b.set_current_key(&3u64).unwrap();
    assert_eq!(v.bind(b.state()).unwrap().value().unwrap(), Some(30));
}

/// In-place updates (`ValueState::update_with`, which aggregating and reducing state and the window
/// operator use) interleaved with byte reads and writes, deletes, flushes, checkpoints and
/// reopening, against a plain map: the values the backend returns and persists are the model's.
#[test]
fn in_place_updates_agree_with_reads_writes_flushes_and_reopens() {
    for limit in [0, 300, DEFAULT_CACHE_BYTES] {
        let dir = tempfile::tempdir().unwrap();
        let count = ValueStateDescriptor::<Vec<u64>>::new("count");
        let mut model: std::collections::HashMap<u64, Vec<u64>> = Default::default();
        let mut b = Some(open(dir.path()));
        // xorshift: a fixed, varied sequence of operations.
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ limit as u64;
        for step in 0..4000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = x % 23;
            let be = b.as_mut().unwrap();
            be.set_cache_limit(limit).unwrap();
            be.set_current_key(&key).unwrap();
            match (x >> 8) % 10 {
                0..=4 => {
                    let seen = count.bind(be.state()).unwrap().update_with(|v| {
                        let before = v.clone();
                        v.get_or_insert_with(Vec::new).push(step);
                        before
                    });
                    assert_eq!(seen.unwrap(), model.get(&key).cloned(), "limit {limit} step {step}");
                    model.entry(key).or_default().push(step);
                }
                5 => {
                    count.bind(be.state()).unwrap().update_with(|v| *v = None).unwrap();
                    model.remove(&key);
                }
                6 => assert_eq!(count.bind(be.state()).unwrap().value().unwrap(), model.get(&key).cloned()),
                7 => {
                    count.bind(be.state()).unwrap().update(&vec![step]).unwrap();
                    model.insert(key, vec![step]);
                }
                8 => {
                    count.bind(be.state()).unwrap().clear().unwrap();
                    model.remove(&key);
                }
                _ => match step % 3 {
                    0 => be.flush_cache().unwrap(),
                    1 => {
                        let chk = tempfile::tempdir().unwrap();
                        be.checkpoint_to(&chk.path().join("db")).unwrap();
                        let mut copy = open(&chk.path().join("db"));
                        for k in 0..23u64 {
                            copy.set_current_key(&k).unwrap();
                            let v = count.bind(copy.state()).unwrap().value().unwrap();
                            assert_eq!(v, model.get(&k).cloned(), "checkpoint at step {step}, key {k}");
                        }
                    }
                    _ => {
                        drop(b.take());
                        b = Some(open(dir.path()));
                    }
                },
            }
        }
        let be = b.as_mut().unwrap();
        for key in 0..23u64 {
            be.set_current_key(&key).unwrap();
            assert_eq!(
                count.bind(be.state()).unwrap().value().unwrap(),
                model.get(&key).cloned(),
                "limit {limit} key {key}"
            );
        }
        assert_eq!(be.count_entries("count").unwrap(), model.len() as u64);
    }
}
