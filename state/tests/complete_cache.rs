//! The write cache answers misses without reading RocksDB only while it holds every key the store
//! has; every way the store gets ahead of the cache must make reads go to the store again.

use weir_state::*;

fn open(dir: &std::path::Path) -> KeyedStateBackend {
    KeyedStateBackend::open(dir, KeyGroupRange::for_subtask(128, 1, 0), 128).unwrap()
}

fn put(b: &mut KeyedStateBackend, key: u64, v: u64) {
    let d = ValueStateDescriptor::<u64>::new("v");
    b.set_current_key(&key).unwrap();
    b.value_state(&d).unwrap().update(&v).unwrap();
}

fn get(b: &mut KeyedStateBackend, key: u64) -> Option<u64> {
    let d = ValueStateDescriptor::<u64>::new("v");
    b.set_current_key(&key).unwrap();
    b.value_state(&d).unwrap().value().unwrap()
}

#[test]
fn checkpoints_keep_a_fresh_cache_complete_and_a_drain_or_a_reopen_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(&dir.path().join("db"));
    for round in 0..4u64 {
        for k in 0..50 {
            put(&mut b, round * 50 + k, k);
            // Keys of earlier rounds went into the store at their checkpoints and stay readable.
            assert_eq!(get(&mut b, k), Some(k));
            assert_eq!(get(&mut b, 10_000 + k), None);
        }
        b.checkpoint_to(&dir.path().join(format!("chk-{round}"))).unwrap();
    }
    assert_eq!(b.store_reads(), 0, "every key the store has is cached: no read goes to RocksDB");

    b.flush_cache().unwrap();
    assert_eq!(get(&mut b, 7), Some(7), "drained keys are read back from the store");
    assert!(b.store_reads() > 0);

    let mut restored = open(&dir.path().join("chk-3"));
    assert_eq!(get(&mut restored, 160), Some(10), "a restored store is read");
    assert_eq!(restored.store_reads(), 1);
}

#[test]
fn a_list_append_that_reaches_the_store_directly_is_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(&dir.path().join("db"));
    let list = ListStateDescriptor::<u32>::new("l");
    b.set_current_key(&"a").unwrap();
    list.bind(b.state()).unwrap().add(&1).unwrap();
    list.bind(b.state()).unwrap().add(&2).unwrap();
    assert_eq!(list.bind(b.state()).unwrap().get().unwrap(), vec![1, 2]);
}

#[test]
fn imported_key_groups_are_read_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut old = open(&dir.path().join("old"));
    put(&mut old, 1, 11);
    old.checkpoint_to(&dir.path().join("chk")).unwrap();
    drop(old);
    let mut b = open(&dir.path().join("new"));
    b.import_key_groups(&[&dir.path().join("chk")]).unwrap();
    assert_eq!(get(&mut b, 1), Some(11));
}

#[test]
fn a_store_whose_states_are_all_empty_starts_complete() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = open(&dir.path().join("db"));
    put(&mut b, 1, 1);
    b.set_current_key(&1u64).unwrap();
    b.value_state(&ValueStateDescriptor::<u64>::new("v")).unwrap().clear().unwrap();
    b.checkpoint_to(&dir.path().join("chk")).unwrap();
    drop(b);
    // The state is declared, and holds nothing.
    let mut again = open(&dir.path().join("chk"));
    assert_eq!(get(&mut again, 1), None);
    assert_eq!(again.store_reads(), 0);
}
