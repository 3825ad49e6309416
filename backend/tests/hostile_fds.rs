//! A VMM's call and kick descriptors are hostile. Only eventfds are taken
//! (anything else is refused by name, the session goes on), and a call
//! eventfd the VMM made blocking and fills between valed's poll and write
//! never stops the forwarding thread: the other ports keep forwarding.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use backend::testing::{frame, one_way, rx, tx, wait_for, FakeGuest, GuestConfig, Rig};
use vhost::VhostBackend;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
const C: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc];
const D: [u8; 6] = [0x02, 0, 0, 0, 0, 0xd];
const MACS: [[u8; 6]; 4] = [A, B, C, D];

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) };
    assert_eq!(r, 0);
    // SAFETY: fresh descriptors the test owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn set_blocking(fd: i32) {
    // SAFETY: fcntl with integer arguments on a descriptor the test owns.
    unsafe { libc::fcntl(fd, libc::F_SETFL, 0) };
}

/// The vhost crate's frontend takes its own eventfd type; this one wraps
/// any descriptor, which is the point here.
fn as_event(fd: &OwnedFd) -> EventFd {
    // SAFETY: a duplicate the EventFd owns and closes.
    unsafe { EventFd::from_raw_fd(libc::dup(fd.as_raw_fd())) }
}

/// `n` frames from guest `i` (MAC `from`) to guest `j` (MAC `to`).
fn flow(
    g: &mut [FakeGuest],
    (i, from): (usize, [u8; 6]),
    (j, to): (usize, [u8; 6]),
    n: u32,
    seed: u32,
) {
    let (lo, hi) = g.split_at_mut(i.max(j));
    let (a, b) = if i < j {
        (&mut lo[i], &mut hi[0])
    } else {
        (&mut hi[0], &mut lo[j])
    };
    one_way(a, b, 0, (from, to), n, seed);
}

/// Guests on every port of `rig`, RX posted, their MACs (`MACS`) learnt
/// by the switch and the flooded frames that took drained.
fn guests(rig: &Rig) -> Vec<FakeGuest> {
    let mut g: Vec<FakeGuest> = (0..rig.ports.len())
        .map(|i| {
            let mut g = rig.guest(i, GuestConfig::default());
            g.post_rx_all();
            g
        })
        .collect();
    let n = g.len();
    for (i, guest) in g.iter_mut().enumerate() {
        assert!(guest.send(0, &[0; 12], &frame([0xff; 6], MACS[i], 60, 0), &[]));
    }
    for (i, guest) in g.iter_mut().enumerate() {
        let mut seen = 0;
        while seen < n - 1 {
            assert!(
                guest.recv(0, Duration::from_secs(5)).is_some(),
                "guest {i} got {seen} of the other guests' broadcasts"
            );
            seen += 1;
        }
        guest.reap_tx(0);
    }
    g
}

#[test]
fn call_and_kick_fds_that_are_not_eventfds_are_refused() {
    let rig = Rig::new(3, 1);
    let mut g = guests(&rig);
    // A call fd that is a full pipe made blocking. A pipe is set aside as
    // it arrives (only shared memory and eventfds are kept), closed off
    // the session's thread, and the request refused naming it.
    let (cr, w) = pipe();
    // SAFETY: writes from a live buffer; stops at EAGAIN (pipe full).
    while unsafe { libc::write(w.as_raw_fd(), [0u8; 512].as_ptr().cast(), 512) } > 0 {}
    set_blocking(w.as_raw_fd());
    let _ = g[2].frontend().set_vring_call(rx(0), &as_event(&w));
    wait_for("the call fd refusal", || {
        rig.ports[2]
            .stats()
            .last_error
            .is_some_and(|e| e.contains("neither shared memory nor an eventfd: pipe:"))
    });
    // A kick fd that is a pipe holding one byte.
    let (kr, kw) = pipe();
    // SAFETY: writes one byte from a live buffer.
    let r = unsafe { libc::write(kw.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    assert_eq!(r, 1);
    set_blocking(kr.as_raw_fd());
    let _ = g[2].frontend().set_vring_kick(tx(0), &as_event(&kr));
    wait_for("the kick fd refusal", || {
        rig.ports[2]
            .stats()
            .last_error
            .is_some_and(|e| e.contains("SET_VRING_KICK") && e.contains("nor an eventfd: pipe:"))
    });
    assert!(rig.ports[2].connected(), "a refusal keeps the session");
    // Every port still forwards, the refusing one included (it keeps its
    // previous eventfds).
    flow(&mut g, (0, A), (1, B), 20, 100);
    flow(&mut g, (0, A), (2, C), 20, 200);
    flow(&mut g, (2, C), (1, B), 20, 300);
    drop((cr, kw));
}

/// What a VMM that races its call eventfd does when it wins: between
/// valed's poll (writable) and valed's write, it fills the counter. Done
/// here at that very point, so the race is won every time, on the fd the
/// VMM made blocking (the other guests' fds keep `O_NONBLOCK`).
fn fill_if_blocking(fd: BorrowedFd<'_>) {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl, an 8-byte read and an 8-byte write with live
    // buffers, on a descriptor valid for the call.
    unsafe {
        let fl = libc::fcntl(raw, libc::F_GETFL);
        if fl & libc::O_NONBLOCK != 0 {
            return;
        }
        libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK);
        libc::read(raw, [0u8; 8].as_mut_ptr().cast(), 8);
        libc::write(raw, (u64::MAX - 1).to_ne_bytes().as_ptr().cast(), 8);
        libc::fcntl(raw, libc::F_SETFL, fl);
    }
}

/// Guest C's VMM shares its RX call eventfd with valed, clears O_NONBLOCK
/// on it and fills it between valed's poll and write (`fill_if_blocking`),
/// and never reads it again. A sends to C (each batch interrupts C) and B
/// to D on the same forwarding thread: B to D must keep flowing, frame for
/// frame, and so must A to C (C's interrupts stop: it polls).
#[test]
fn a_call_fd_raced_into_blocking_does_not_stop_other_ports() {
    netmap::sys::EventFd::set_race(fill_if_blocking);
    // A forwarding thread stuck for good would hang the rig's drop: bound
    // the whole test instead.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rig = Rig::new(4, 1);
        let mut g = guests(&rig);
        let hostile = EventFd::new(0).unwrap();
        g[2].frontend().set_vring_call(rx(0), &hostile).unwrap();
        set_blocking(hostile.as_raw_fd());
        let t0 = Instant::now();
        let mut seed = 1000;
        while t0.elapsed() < Duration::from_secs(2) {
            flow(&mut g, (0, A), (2, C), 4, seed);
            flow(&mut g, (1, B), (3, D), 4, seed + 4);
            seed += 8;
        }
        // The counter is still full: valed's write was interrupted and no
        // other was made.
        let mut v = [0u8; 8];
        // SAFETY: fcntl and an 8-byte read into a live buffer, on our fd.
        unsafe {
            libc::fcntl(hostile.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
            assert_eq!(libc::read(hostile.as_raw_fd(), v.as_mut_ptr().cast(), 8), 8);
        }
        assert_eq!(u64::from_ne_bytes(v), u64::MAX - 1);
        // The VMM sends a fresh call fd for the queue: the port's strike
        // holds, so valed never writes it either (one stall per port, not
        // one per SET_VRING_CALL), and traffic keeps flowing.
        let fresh = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        g[2].frontend().set_vring_call(rx(0), &fresh).unwrap();
        for _ in 0..20 {
            flow(&mut g, (0, A), (2, C), 4, seed);
            flow(&mut g, (1, B), (3, D), 4, seed + 4);
            seed += 8;
        }
        assert!(
            fresh.read().is_err(),
            "a later call fd of the struck port was written"
        );
        let _ = done.send(seed);
    });
    let frames = finished
        .recv_timeout(Duration::from_secs(60))
        .expect("the forwarding thread stalled on a VMM's call eventfd");
    assert!(frames > 1000 + 8, "traffic flowed");
}

/// Guest C's VMM truncates its memory file while A sends to C and B:
/// valed's next access to C's memory would be SIGBUS. It is caught; C's
/// session is dropped with an error naming the region, and A to B keeps
/// flowing, frame for frame.
#[test]
fn a_guest_memory_file_truncated_mid_traffic_drops_only_that_vmm() {
    let rig = Rig::new(3, 1);
    let mut g = guests(&rig);
    flow(&mut g, (0, A), (2, C), 10, 0);
    let c = g.pop().expect("guest C");
    for r in c.memory().iter() {
        let f = r.file_offset().expect("memfd-backed").file();
        f.set_len(0).unwrap();
    }
    // C's own mapping now faults too: the test never touches it again.
    for i in 0..64 {
        assert!(g[0].send(0, &[0; 12], &frame(C, A, 60, i), &[]));
    }
    wait_for("C's session to be dropped", || !rig.ports[2].connected());
    let e = rig.ports[2].stats().last_error.expect("a last error");
    assert!(e.contains("shrank") && e.contains("gpa"), "{e}");
    flow(&mut g, (0, A), (1, B), 50, 100);
    flow(&mut g, (1, B), (0, A), 50, 200);
    std::mem::forget(c);
}

/// A VMM's listener whose backlog is full and that never accepts: a
/// client-mode port keeps trying without its thread blocking in
/// `connect`, so removing the port is prompt; and a server-mode port
/// asked to bind over that live socket refuses at once (EADDRINUSE).
#[test]
fn a_listener_that_never_accepts_blocks_nothing() {
    let dir = backend::testing::rig_dir("never-accepts");
    let vm = dir.join("vm.sock");
    let l = std::os::unix::net::UnixListener::bind(&vm).unwrap();
    // SAFETY: listen() on our socket, integer arguments only.
    unsafe { libc::listen(l.as_raw_fd(), 0) };
    let mut queued = Vec::new();
    while let Ok(s) = netmap::sys::stream_connect_nonblocking(&vm) {
        queued.push(s);
        assert!(queued.len() < 1000, "the backlog never fills");
    }
    let mut cfg = backend::NetConfig::new("vm", &vm);
    cfg.mode = backend::SocketMode::Client;
    let port = backend::NetPort::start(cfg).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!port.connected());
    // A port thread stuck in connect would hold the drop for good: drop
    // it on a thread of its own and wait a bounded time.
    let (done, dropped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(port);
        let _ = done.send(());
    });
    dropped
        .recv_timeout(Duration::from_secs(5))
        .expect("the port's removal is held by a connect that never completes");
    let t0 = Instant::now();
    let e = backend::NetPort::start(backend::NetConfig::new("vm2", &vm)).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert!(e.to_string().contains("in use"), "{e}");
    drop((l, queued));
    let _ = std::fs::remove_dir_all(dir);
}
