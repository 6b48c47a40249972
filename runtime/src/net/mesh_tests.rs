//! Two meshes in one process, connected over loopback.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::*;
use crate::net::frame::{data_frame, DATA_AT};

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn config(index: usize, peers: &[String], fingerprint: u64, peer_timeout: Duration) -> MeshConfig {
    MeshConfig {
        job: "test".into(),
        index,
        peers: peers.to_vec(),
        listen: None,
        fingerprint,
        restore: None,
        peer_timeout,
        connect_timeout: Duration::from_secs(10),
    }
}

/// Connects process 0 (`a`) and process 1 (`b`) after `register` made their channels.
fn pair(register: impl FnOnce(&Mesh, &Mesh), timeout_of_a: Duration) -> (Mesh, Mesh) {
    let peers = vec![free_addr(), free_addr()];
    let a = Mesh::new(config(0, &peers, 7, timeout_of_a)).unwrap();
    let b = Mesh::new(config(1, &peers, 7, Duration::from_secs(10))).unwrap();
    register(&a, &b);
    std::thread::scope(|s| {
        let t = s.spawn(|| b.connect());
        a.connect().unwrap();
        t.join().unwrap().unwrap();
    });
    (a, b)
}

fn element(channel: u64, n: u32) -> Vec<u8> {
    let mut body = data_frame(channel, Vec::new());
    body.extend_from_slice(&n.to_le_bytes());
    body
}

fn number(body: &[u8]) -> u32 {
    u32::from_le_bytes(body[DATA_AT..DATA_AT + 4].try_into().unwrap())
}

fn take(rx: &RemoteRx, within: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(b) = rx.try_take() {
            return Some(b);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

#[test]
fn a_stalled_channel_stalls_only_its_own_sender() {
    let mut ends = None;
    let (a, b) = pair(
        |a, b| {
            let stalled_tx = b.sender(0, 1, 4, Default::default()).unwrap();
            let busy_tx = b.sender(0, 2, 4, Default::default()).unwrap();
            let stalled_rx = a.receiver(1, 1, 4, Default::default()).unwrap();
            let busy_rx = a.receiver(1, 2, 4, Default::default()).unwrap();
            ends = Some((stalled_tx, busy_tx, stalled_rx, busy_rx));
        },
        Duration::from_secs(10),
    );
    let (stalled_tx, busy_tx, stalled_rx, busy_rx) = ends.unwrap();
    let never = AtomicBool::new(false);
    for n in 0..4 {
        assert!(!stalled_tx.send(element(1, n), &never).unwrap(), "credits cover the queue");
    }
    // The fifth element of the stalled channel waits for a credit that does not come...
    let cancel = AtomicBool::new(false);
    std::thread::scope(|s| {
        let blocked = s.spawn(|| stalled_tx.send(element(1, 4), &cancel));
        // ...while 2,000 elements pass on the other channel of the same connection, in order.
        let sender = s.spawn(|| {
            for n in 0..2_000 {
                busy_tx.send(element(2, n), &never).unwrap();
            }
        });
        for n in 0..2_000 {
            let body = take(&busy_rx, Duration::from_secs(10)).expect("the busy channel flows");
            assert_eq!(number(&body), n);
        }
        sender.join().unwrap();
        assert!(!blocked.is_finished(), "the stalled sender must still wait");
        assert_eq!(stalled_rx.queued(), 4, "the receiver never holds more than its credits");
        cancel.store(true, Ordering::Relaxed);
        let r = blocked.join().unwrap();
        assert!(r.is_err_and(|e| crate::error::is_cancelled(&e)), "a cancelled send gives up");
    });
    // Taking an element returns its credit: the sender may send one more.
    assert_eq!(number(&take(&stalled_rx, Duration::from_secs(1)).unwrap()), 0);
    assert!(stalled_tx.credits.take(Duration::from_secs(5)), "the credit came back to the sender");
    assert!(a.failures().try_recv().is_err() && b.failures().try_recv().is_err());
}

#[test]
fn control_messages_arrive_and_a_goodbye_ends_cleanly() {
    let (a, b) = pair(|_, _| {}, Duration::from_secs(10));
    b.send_control(0, b"hi".to_vec()).unwrap();
    let (from, msg) = a.control().recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((from, msg.as_slice()), (1, &b"hi"[..]));
    b.close();
    drop(b);
    std::thread::sleep(Duration::from_millis(300));
    assert!(a.failures().try_recv().is_err(), "a peer that said goodbye is no failure");
}

#[test]
fn a_peer_gone_without_goodbye_fails_at_once() {
    let (a, b) = pair(|_, _| {}, Duration::from_secs(10));
    let started = Instant::now();
    drop(b); // the runtime goes, its sockets close: what a killed process's kernel does
    let e = a.failures().recv_timeout(Duration::from_secs(5)).expect("the loss is reported");
    assert!(started.elapsed() < Duration::from_secs(2));
    let msg = format!("{e:#}");
    assert!(msg.contains("lost the connection to process 1") && msg.contains("without a goodbye"), "{msg}");
}

#[test]
fn a_silent_peer_fails_after_the_peer_timeout() {
    // Heartbeats come every second; a 300 ms timeout cannot be met.
    let (a, _b) = pair(|_, _| {}, Duration::from_millis(300));
    let e = a.failures().recv_timeout(Duration::from_secs(5)).expect("silence is a failure");
    assert!(format!("{e:#}").contains("no word from it"), "{e:#}");
}

#[test]
fn processes_of_different_plans_refuse_each_other() {
    let peers = vec![free_addr(), free_addr()];
    let a = Mesh::new(MeshConfig {
        connect_timeout: Duration::from_secs(3),
        ..config(0, &peers, 1, Duration::from_secs(9))
    })
    .unwrap();
    let b = Mesh::new(MeshConfig {
        connect_timeout: Duration::from_secs(3),
        ..config(1, &peers, 2, Duration::from_secs(9))
    })
    .unwrap();
    let (ra, rb) = std::thread::scope(|s| {
        let t = s.spawn(|| b.connect());
        (a.connect(), t.join().unwrap())
    });
    let e = rb.expect_err("b is refused");
    assert!(format!("{e:#}").contains("another plan or other flags"), "{e:#}");
    assert!(ra.is_err(), "a waits in vain for a matching peer");
}

#[test]
fn credits_come_back_a_quarter_of_the_capacity_at_a_time() {
    let mut ends = None;
    let (_a, _b) = pair(
        |a, b| {
            ends =
                Some((b.sender(0, 1, 8, Default::default()).unwrap(), a.receiver(1, 1, 8, Default::default()).unwrap()))
        },
        Duration::from_secs(10),
    );
    let (tx, rx) = ends.unwrap();
    let never = AtomicBool::new(false);
    for n in 0..8 {
        tx.send(element(1, n), &never).unwrap();
    }
    assert_eq!(number(&take(&rx, Duration::from_secs(5)).unwrap()), 0);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(tx.credits.available(), 0, "one element taken: its credit waits for a second one");
    assert_eq!(number(&take(&rx, Duration::from_secs(5)).unwrap()), 1);
    assert!(tx.credits.take(Duration::from_secs(5)), "two taken: two credits come back");
    assert!(tx.credits.take(Duration::from_secs(1)));
    // All eight taken: every credit is back.
    for n in 2..8 {
        assert_eq!(number(&take(&rx, Duration::from_secs(5)).unwrap()), n);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while tx.credits.available() < 6 {
        assert!(Instant::now() < deadline, "credits back: {}", tx.credits.available());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_peer_that_dies_while_others_still_connect_fails_the_start_at_once() {
    // Process 2 never comes; process 1 says hello to process 0 and dies (its socket closes).
    let peers = vec![free_addr(), free_addr(), free_addr()];
    let a = Mesh::new(config(0, &peers, 7, Duration::from_secs(10))).unwrap();
    let addr = peers[0].clone();
    let one = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut s = loop {
                match TcpStream::connect(&addr).await {
                    Ok(s) => break s,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            let hello = Hello { job: "test".into(), process: 1, processes: 3, fingerprint: 7, restore: None };
            handshake(&mut s, &hello).await.unwrap();
        })
    });
    let started = Instant::now();
    let e = a.connect().expect_err("process 1 is gone and process 2 never came");
    one.join().unwrap();
    let msg = format!("{e:#}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}: {msg}", started.elapsed());
    assert!(msg.contains("while the processes were connecting") && msg.contains("process 1"), "{msg}");
}
