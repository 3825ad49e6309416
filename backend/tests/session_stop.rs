//! A VMM cannot keep its port's session thread from stopping: the thread
//! valed joins when the port is removed or valed shuts down, so a session
//! that never returns would hang the control plane for every tenant.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backend::testing::{session_on, wait_for, NullDevice};
use netmap::sys::EventFd;

const GET_FEATURES: u32 = 1;
const SET_VRING_KICK: u32 = 12;

/// Runs a session on its own thread (not a scoped one: a session that
/// never stops must fail the test, not hang it) until `stop` is kicked
/// once `ready` holds; panics if it has not returned 10 s later.
fn stops_in_time<E: std::fmt::Debug + Send + 'static>(
    run: impl FnOnce(&EventFd) -> Result<(), E> + Send + 'static,
    ready: impl Fn() -> bool,
) {
    let stop = std::sync::Arc::new(EventFd::new().unwrap());
    let st = stop.clone();
    let h = std::thread::spawn(move || run(&st));
    wait_for("the session under load", ready);
    stop.kick().unwrap();
    let t0 = Instant::now();
    while !h.is_finished() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the session did not stop"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    h.join().unwrap().unwrap();
}

#[test]
fn a_vmm_sending_without_pause_does_not_keep_its_session_running() {
    let dev: &'static NullDevice = Box::leak(Box::default());
    let (a, b) = UnixStream::pair().unwrap();
    let mut s = session_on(dev, b);
    // Requests as fast as the session answers them, replies read, so the
    // socket never runs dry. Threads of their own, so that a session that
    // does not stop fails the test instead of hanging it.
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let mut w = a.try_clone().unwrap();
    let done_w = done.clone();
    std::thread::spawn(move || {
        let mut m = Vec::new();
        m.extend(GET_FEATURES.to_le_bytes());
        m.extend(1u32.to_le_bytes());
        m.extend(0u32.to_le_bytes());
        let burst: Vec<u8> = m.iter().copied().cycle().take(m.len() * 64).collect();
        while !done_w.load(Ordering::Relaxed) {
            if w.write_all(&burst).is_err() {
                return;
            }
        }
    });
    let mut r = a.try_clone().unwrap();
    let done_r = done.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while !done_r.load(Ordering::Relaxed) {
            if matches!(r.read(&mut buf), Ok(0) | Err(_)) {
                return;
            }
        }
    });
    let t0 = Instant::now();
    stops_in_time(
        move |stop| s.run(stop),
        || t0.elapsed() > Duration::from_millis(200),
    );
    done.store(true, Ordering::Relaxed);
    let _ = a.shutdown(std::net::Shutdown::Both);
}

/// Sends SET_VRING_KICK for queue 1 (TX of pair 0), which starts it; the
/// kick eventfd.
fn set_tx_kick(a: &UnixStream) -> EventFd {
    let kick = EventFd::new().unwrap();
    let mut m = Vec::new();
    m.extend(SET_VRING_KICK.to_le_bytes());
    m.extend(1u32.to_le_bytes());
    m.extend(8u32.to_le_bytes());
    m.extend(1u64.to_le_bytes());
    let n = netmap::sys::send_with_fds(a, &m, &[kick.as_fd()]).unwrap();
    (&*a).write_all(&m[n..]).unwrap();
    kick
}

#[test]
fn a_device_that_always_has_work_is_kicked_again_and_still_stops() {
    let dev: &'static NullDevice = Box::leak(Box::new(NullDevice {
        always_more: true,
        ..Default::default()
    }));
    let (a, b) = UnixStream::pair().unwrap();
    let mut s = session_on(dev, b);
    let kick = set_tx_kick(&a);
    s.serve_one().unwrap();
    kick.kick().unwrap();
    // One guest kick; the device asks again and again.
    stops_in_time(
        move |stop| s.run(stop),
        || dev.kicks.load(Ordering::Relaxed) > 100,
    );
    drop(a);
}

/// A device whose kick handling changed (a port attached anew, with an
/// inline hook that may find work left with the guest's kicks off) rings
/// its rekick doorbell, and the session kicks every started queue once,
/// with no kick from the guest.
#[test]
fn the_rekick_doorbell_kicks_started_queues() {
    let dev: &'static NullDevice = Box::leak(Box::new(NullDevice {
        rekick: Some(EventFd::new().unwrap()),
        ..Default::default()
    }));
    let (a, b) = UnixStream::pair().unwrap();
    let mut s = session_on(dev, b);
    let _kick = set_tx_kick(&a);
    s.serve_one().unwrap();
    let before = dev.kicks.load(Ordering::Relaxed);
    dev.rekick.as_ref().unwrap().kick().unwrap();
    stops_in_time(
        move |stop| s.run(stop),
        || dev.kicks.load(Ordering::Relaxed) > before,
    );
    drop(a);
}
