//! A guest's TX kick fd as the forwarding thread's own doorbell: the
//! session hands it over in the queue's configuration and, when the
//! device says the data path watches it, stops watching it itself (one
//! thread woken per kick, not two); the queue lends it only while it runs.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use backend::queue::TxQueue;
use backend::testing::mem_queue::{Dir, MemQueue};
use backend::testing::{session_on, wait_for, NullDevice};
use netmap::sys::EventFd;
use vale::Source;

const SET_VRING_KICK: u32 = 12;

fn set_vring_kick(a: &UnixStream, q: u64, fd: &EventFd) {
    let mut m = Vec::new();
    m.extend(SET_VRING_KICK.to_le_bytes());
    m.extend(1u32.to_le_bytes());
    m.extend(8u32.to_le_bytes());
    m.extend(q.to_le_bytes());
    let n = netmap::sys::send_with_fds(a, &m, &[fd.as_fd()]).unwrap();
    (&*a).write_all(&m[n..]).unwrap();
}

/// Kicks on queue 0 (RX) and 1 (TX) of a started session; how many the
/// device was told of.
fn kicks_seen(fwd_watches_tx_kicks: bool) -> u64 {
    let dev = NullDevice {
        fwd_watches_tx_kicks,
        ..Default::default()
    };
    let (a, b) = UnixStream::pair().unwrap();
    let mut s = session_on(&dev, b);
    let (rx, tx) = (EventFd::new().unwrap(), EventFd::new().unwrap());
    set_vring_kick(&a, 0, &rx);
    s.serve_one().unwrap();
    set_vring_kick(&a, 1, &tx);
    s.serve_one().unwrap();
    for q in [0, 1] {
        let c = s.vrings()[q].config();
        assert!(c.kick.is_some(), "queue {q}'s kick fd in its configuration");
    }
    let stop = EventFd::new().unwrap();
    std::thread::scope(|sc| {
        let h = sc.spawn(|| s.run(&stop));
        tx.kick().unwrap();
        rx.kick().unwrap();
        let want = if fwd_watches_tx_kicks { 1 } else { 2 };
        wait_for("the session's kicks", || {
            dev.kicks.load(Ordering::Relaxed) >= want
        });
        // Time for a kick the session should not have seen to show.
        std::thread::sleep(Duration::from_millis(50));
        stop.kick().unwrap();
        h.join().unwrap().unwrap();
    });
    drop(a);
    dev.kicks.load(Ordering::Relaxed)
}

#[test]
fn the_session_leaves_tx_kicks_to_the_data_path_when_told() {
    assert_eq!(kicks_seen(false), 2, "both kicks relayed");
    assert_eq!(kicks_seen(true), 1, "only the RX kick relayed");
}

#[test]
fn a_running_queue_lends_its_kick_fd_and_a_stopped_one_does_not() {
    let q = MemQueue::new(Dir::Tx, 64, 2048, true);
    let vring = q.binding().vring;
    let kick = Arc::new(EventFd::new().unwrap());
    vring.configure(|c| c.kick = Some(kick.clone()));
    let slot = q.slot();
    let mut tx = TxQueue::new(slot.clone(), Arc::default(), Arc::default());
    assert!(tx.arm(), "nothing posted: the forwarder may sleep");
    let bell = tx.doorbell().expect("a running queue's kick fd");
    assert!(Arc::ptr_eq(&bell, &kick));

    // The driver stopped the queue (GET_VRING_BASE): no fd of its VMM.
    vring.configure(|c| c.ready = false);
    assert!(tx.arm());
    assert!(tx.doorbell().is_none(), "stopped queue");
    vring.configure(|c| c.ready = true);
    assert!(tx.arm());
    assert!(tx.doorbell().is_some(), "started again");

    // A new kick fd (SET_VRING_KICK again) replaces the old.
    let kick2 = Arc::new(EventFd::new().unwrap());
    vring.configure(|c| c.kick = Some(kick2.clone()));
    assert!(tx.arm());
    assert!(Arc::ptr_eq(&tx.doorbell().unwrap(), &kick2));

    // The session went.
    slot.set(None);
    assert!(tx.arm());
    assert!(tx.doorbell().is_none(), "no session");
    drop(bell);
    assert_eq!(Arc::strong_count(&kick2), 2, "the queue keeps none");
}
