//! Checkpoints whose RocksDB part runs on the store's writer thread while the task goes on
//! changing state: every checkpoint must hold exactly the state at its barrier, and the live
//! backend must never lose or resurrect a change, whatever the interleaving.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use weir_state::*;

const KEYS: u64 = 40;

fn open(dir: &std::path::Path) -> KeyedStateBackend {
    KeyedStateBackend::open(dir, KeyGroupRange::for_subtask(128, 1, 0), 128).unwrap()
}

/// Everything the test keeps per key: a value changed in place, a list appended to (RocksDB
/// merges), a map (scans) and event-time timers.
#[derive(Clone, Debug, Default, PartialEq)]
struct Model {
    values: HashMap<u64, Vec<u64>>,
    lists: HashMap<u64, Vec<u64>>,
    maps: HashMap<u64, BTreeMap<u64, u64>>,
    timers: BTreeSet<(i64, u64)>,
}

struct States {
    value: ValueStateDescriptor<Vec<u64>>,
    list: ListStateDescriptor<u64>,
    map: MapStateDescriptor<u64, u64>,
}

fn read_all(be: &mut KeyedStateBackend, s: &States) -> Model {
    let mut m = Model::default();
    for k in 0..KEYS {
        be.set_current_key(&k).unwrap();
        if let Some(v) = s.value.bind(be.state()).unwrap().value().unwrap() {
            m.values.insert(k, v);
        }
        let l = s.list.bind(be.state()).unwrap().get().unwrap();
        if !l.is_empty() {
            m.lists.insert(k, l);
        }
        let e: BTreeMap<u64, u64> = s.map.bind(be.state()).unwrap().entries().unwrap().into_iter().collect();
        if !e.is_empty() {
            m.maps.insert(k, e);
        }
    }
    while let Some(t) = be.pop_due_timer(TimeDomain::EventTime, i64::MAX) {
        m.timers.insert((t.ts, weir_state::codec::decode::<u64>(t.key_bytes()).unwrap()));
    }
    m
}

#[test]
fn background_checkpoints_hold_the_state_at_their_barrier() {
    let s = States {
        value: ValueStateDescriptor::new("value"),
        list: ListStateDescriptor::new("list"),
        map: MapStateDescriptor::new("map"),
    };
    for limit in [0, 2_000, DEFAULT_CACHE_BYTES] {
        let dir = tempfile::tempdir().unwrap();
        let mut be = open(&dir.path().join("db"));
        be.set_cache_limit(limit).unwrap();
        let mut model = Model::default();
        // (directory, the model at the barrier, the pending checkpoint if not waited for yet)
        let mut taken: Vec<(std::path::PathBuf, Model, Option<PendingCheckpoint>)> = Vec::new();
        let mut x = 0x2545_F491_4F6C_DD1Du64 ^ limit as u64;
        for step in 0..12_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = x % KEYS;
            be.set_current_key(&key).unwrap();
            match (x >> 16) % 100 {
                0..=39 | 94..=96 => {
                    s.value
                        .bind(be.state())
                        .unwrap()
                        .update_with(|v| v.get_or_insert_with(Vec::new).push(step))
                        .unwrap();
                    model.values.entry(key).or_default().push(step);
                }
                40..=44 => {
                    s.value.bind(be.state()).unwrap().clear().unwrap();
                    model.values.remove(&key);
                }
                45..=49 => {
                    let got = s.value.bind(be.state()).unwrap().value().unwrap();
                    assert_eq!(got, model.values.get(&key).cloned(), "limit {limit} step {step}");
                }
                50..=64 => {
                    s.list.bind(be.state()).unwrap().add(&step).unwrap();
                    model.lists.entry(key).or_default().push(step);
                }
                65..=66 => {
                    s.list.bind(be.state()).unwrap().clear().unwrap();
                    model.lists.remove(&key);
                }
                67..=79 => {
                    let mk = step % 7;
                    s.map.bind(be.state()).unwrap().put(&mk, &step).unwrap();
                    model.maps.entry(key).or_default().insert(mk, step);
                }
                80..=82 => {
                    let mk = step % 7;
                    s.map.bind(be.state()).unwrap().remove(&mk).unwrap();
                    if let Some(m) = model.maps.get_mut(&key) {
                        m.remove(&mk);
                        if m.is_empty() {
                            model.maps.remove(&key);
                        }
                    }
                }
                83 => {
                    let got: BTreeMap<u64, u64> =
                        s.map.bind(be.state()).unwrap().entries().unwrap().into_iter().collect();
                    assert_eq!(Some(&got).filter(|m| !m.is_empty()), model.maps.get(&key), "step {step}");
                }
                84..=89 => {
                    let ts = (step % 50) as i64;
                    be.register_timer(TimeDomain::EventTime, ts, &[]).unwrap();
                    model.timers.insert((ts, key));
                }
                90..=91 => {
                    let ts = (step % 50) as i64;
                    be.delete_timer(TimeDomain::EventTime, ts, &[]).unwrap();
                    model.timers.remove(&(ts, key));
                }
                92 => {
                    // Fire the earliest timers, as a watermark would.
                    let wm = model.timers.first().map_or(0, |t| t.0);
                    while let Some(t) = be.pop_due_timer(TimeDomain::EventTime, wm) {
                        let k = weir_state::codec::decode::<u64>(t.key_bytes()).unwrap();
                        assert!(model.timers.remove(&(t.ts, k)), "fired a timer the model lacks");
                    }
                }
                93 => {
                    let path = dir.path().join(format!("chk-{step}"));
                    taken.push((path.clone(), model.clone(), Some(be.begin_checkpoint(&path).unwrap())));
                }
                97 => be.flush_cache().unwrap(),
                _ => {
                    // Whoever stores checkpoints waits for them at its own pace.
                    if let Some(p) = taken.iter_mut().rev().find_map(|t| t.2.take()) {
                        p.wait().unwrap();
                    }
                }
            }
        }
        for (path, _, pending) in &mut taken {
            if let Some(p) = pending.take() {
                assert_eq!(&p.wait().unwrap(), path);
            }
        }
        assert!(taken.len() > 60, "the sequence takes many checkpoints");
        for (path, at_barrier, _) in &taken {
            let mut copy = open(path);
            assert_eq!(&read_all(&mut copy, &s), at_barrier, "limit {limit}: checkpoint {}", path.display());
        }
        assert_eq!(read_all(&mut be, &s), model, "limit {limit}: the live state");
        // Reading fired every timer.
        model.timers.clear();
        drop(be);
        assert_eq!(read_all(&mut open(&dir.path().join("db")), &s), model, "limit {limit}: reopened");
    }
}
