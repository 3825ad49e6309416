//! The CSB sync protocol across threads: an application producer and
//! consumer around a loopback switch, every slot checked in order.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use netmap::sync::{drain_tx, poll_rings, SyncError, Want};
use netmap::testing::{consume, produce, LoopClient, Loopback};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Slots handed over in the long runs: tens of millions in release, fewer in
/// debug builds where each slot costs ~50x more (override with
/// `VALE_SYNC_SLOTS`).
fn long_run() -> u64 {
    std::env::var("VALE_SYNC_SLOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000_000)
}

fn client_of(lb: &Loopback) -> LoopClient {
    LoopClient::from_fds(lb.fds().unwrap(), lb.region.memsize(), lb.nifp).unwrap()
}

/// Runs switch, producer and consumer threads over `n` frames.
fn pipeline(slots: u32, n: u64, tx_batch: u32, rx_batch: u32) {
    let lb = Loopback::new(slots, 2048).unwrap();
    let cl = client_of(&lb);
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let sw = s.spawn(|| lb.run(&stop, None, TIMEOUT));
        let p = s.spawn(|| produce(&cl.tx().unwrap(), n, tx_batch, 1514, None, TIMEOUT));
        let c = consume(&cl.rx().unwrap(), n, rx_batch, 1514, None, TIMEOUT);
        // Stop the switch before any assertion, so a failure fails the test
        // instead of leaving the switch thread (and the scope) waiting.
        if c.is_err() {
            stop.store(true, Ordering::Relaxed);
            lb.kick_tx.kick().unwrap();
            lb.irq_tx.kick().unwrap();
        }
        let pr = p.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        lb.kick_tx.kick().unwrap();
        lb.kick_rx.kick().unwrap();
        let st = sw.join().unwrap().expect("switch");
        pr.expect("producer");
        c.expect("consumer");
        assert_eq!(st.slots, n);
        assert_eq!(st.resets, 0);
        assert_eq!(st.bad_slots, 0);
        eprintln!(
            "{n} slots, ring {slots}, batches {tx_batch}/{rx_batch}: {:.2} Mslots/s, {} switch sleeps, {} kicks",
            n as f64 / t0.elapsed().as_secs_f64() / 1e6,
            st.sleeps,
            st.kicks
        );
    });
}

#[test]
fn tens_of_millions_in_order() {
    pipeline(1024, long_run(), 512, 512);
}

#[test]
fn odd_ring_sizes_and_batches() {
    for (slots, tb, rb) in [
        (3, 1, 1),
        (7, 3, 5),
        (100, 32, 7),
        (1000, 999, 1),
        (4096, 64, 4096),
    ] {
        pipeline(slots, 200_000, tb, rb);
    }
}

/// Batches of one on a two-slot ring: every frame makes each side go to
/// sleep and be woken. If a fence were missing from either side of the
/// need-kick handshake, both would sometimes sleep at once and the 10 s
/// timeout turns that lost wake-up into a failure. Repeated many times.
#[test]
fn no_lost_wakeups() {
    let rounds = if cfg!(debug_assertions) { 10 } else { 40 };
    for _ in 0..rounds {
        pipeline(2, 20_000, 1, 1);
    }
}

#[test]
fn poll_returns_when_the_peer_dies() {
    let lb = Loopback::new(64, 2048).unwrap();
    let cl = client_of(&lb);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let rx = cl.rx().unwrap();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        s.spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(theirs);
        });
        let e = poll_rings(&[rx], Want::Ready, Some(ours.as_fd()), Some(TIMEOUT)).unwrap_err();
        assert!(matches!(e, SyncError::PeerGone), "{e}");
    });
    assert!(t0.elapsed() < TIMEOUT);
    // And a poll with nothing to wait for times out rather than hanging.
    let e = poll_rings(&[rx], Want::Ready, None, Some(Duration::from_millis(50))).unwrap_err();
    assert!(matches!(e, SyncError::TimedOut(_)), "{e}");
}

#[test]
fn close_drains_what_was_published() {
    let lb = Loopback::new(64, 2048).unwrap();
    let cl = client_of(&lb);
    let tx = cl.tx().unwrap();
    // 40 frames published while no switch runs: drain must time out...
    produce(&tx, 40, 40, 60, None, TIMEOUT).unwrap();
    let e = drain_tx(&[tx], None, Duration::from_millis(100)).unwrap_err();
    assert!(matches!(e, SyncError::TimedOut(_)), "{e}");
    // ...and complete once the switch starts, leaving hwcur at head.
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sw = s.spawn(|| lb.run(&stop, None, TIMEOUT));
        std::thread::sleep(Duration::from_millis(50));
        drain_tx(&[tx], None, TIMEOUT).unwrap();
        assert!(tx.drained());
        stop.store(true, Ordering::Relaxed);
        lb.kick_tx.kick().unwrap();
        lb.kick_rx.kick().unwrap();
        assert_eq!(sw.join().unwrap().unwrap().slots, 40);
    });
    consume(&cl.rx().unwrap(), 40, 64, 60, None, TIMEOUT).unwrap();
}

#[test]
fn head_outside_the_window_resets_the_ring() {
    let lb = Loopback::new(16, 2048).unwrap();
    let cl = client_of(&lb);
    let tx = cl.tx().unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sw = s.spawn(|| lb.run(&stop, None, TIMEOUT));
        // 20 frames on 16-slot rings with no reader: 15 fill RX, 5 stay
        // pending in TX, so the switch owns [hwcur 15, head 4).
        produce(&tx, 20, 20, 60, None, TIMEOUT).unwrap();
        // Wait until the switch has taken head 4 and sleeps waiting for RX room.
        let rx = cl.rx().unwrap();
        let t0 = Instant::now();
        while rx.csb.kern_need_kick.load(Ordering::Acquire) == 0 && t0.elapsed() < TIMEOUT {
            std::thread::sleep(Duration::from_millis(1));
        }
        // head moved backwards, cur behind head, indexes past the ring
        // (the last one written straight into the CSB: the client library
        // itself refuses to publish it).
        for (head, cur) in [(1, 1), (6, 5), (99, 99)] {
            tx.ring.set_head(head);
            tx.ring.set_cur(cur);
            if head < 16 {
                tx.sync().unwrap();
            } else {
                assert!(tx.sync().is_err(), "the library refuses head {head}");
                tx.csb.cur.store(cur, Ordering::Relaxed);
                tx.csb.head.store(head, Ordering::Release);
            }
            let t0 = Instant::now();
            while tx.ring.head() == head && t0.elapsed() < TIMEOUT {
                lb.kick_tx.kick().unwrap();
                lb.kick_rx.kick().unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!((tx.ring.head(), tx.ring.cur()), (15, 15), "reset to hwcur");
            assert_eq!(tx.ring.tail(), 14);
        }
        // What was delivered before the resets is intact.
        consume(&rx, 15, 16, 60, None, TIMEOUT).unwrap();
        stop.store(true, Ordering::Relaxed);
        lb.kick_tx.kick().unwrap();
        lb.kick_rx.kick().unwrap();
        let st = sw.join().unwrap().unwrap();
        assert_eq!(st.resets, 3);
        assert_eq!(st.slots, 15);
    });
}
