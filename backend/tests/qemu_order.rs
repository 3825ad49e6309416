//! The set-up orders real frontends send, replayed over the socket without
//! a VM: QEMU 7.2's (SET_VRING_ENABLE before SET_FEATURES, one identical
//! ADD_MEM_REG per queue pair; `shared/qemu-7.2-vhost-user-trace.txt`),
//! then traffic through the switch. And what a session does with requests
//! it refuses: names them, keeps going, or ends with a reason an operator
//! can read.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use backend::testing::{one_way, wait_for, GuestConfig, Handshake, Rig};
use backend::PortState;

const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
const T: Duration = Duration::from_secs(5);

fn qemu(pairs: u16) -> GuestConfig {
    GuestConfig {
        mrg_rxbuf: true,
        event_idx: true,
        queue_pairs: pairs,
        handshake: Handshake::Qemu72,
        ..Default::default()
    }
}

#[test]
fn qemu_7_2_one_pair_runs_and_forwards() {
    let rig = Rig::new(2, 1);
    let mut a = rig.guest(0, qemu(1));
    let mut b = rig.guest(1, GuestConfig::default());
    a.post_rx_all();
    b.post_rx_all();
    // No SET_VRING_ENABLE came after the kicks: the ones sent before
    // SET_FEATURES must have been remembered.
    wait_for("A's queues to run", || {
        rig.ports[0].state() == PortState::Running
    });
    one_way(&mut a, &mut b, 0, (A, B), 20, 0);
    one_way(&mut b, &mut a, 0, (B, A), 20, 0);
    let st = rig.ports[0].stats();
    assert!(st.connected);
    assert_eq!(st.last_error, None, "nothing was refused");
    assert_eq!(st.acked_features, a.acked_features());
    assert!(a.violations().is_empty(), "{:?}", a.violations());
}

#[test]
fn qemu_7_2_two_pairs_duplicate_add_mem_reg() {
    let rig = Rig::new(2, 2);
    let mut a = rig.guest(0, qemu(2));
    let mut b = rig.guest(1, qemu(2));
    a.post_rx_all();
    b.post_rx_all();
    wait_for("all four queues of both ports to run", || {
        rig.ports.iter().all(|p| p.queues_running() == 4)
    });
    for qp in 0..2 {
        one_way(&mut a, &mut b, qp, (A, B), 16, 1000 * qp as u32);
        one_way(&mut b, &mut a, qp, (B, A), 16, 1000 * qp as u32);
    }
    for p in &rig.ports {
        assert_eq!(p.stats().last_error, None);
    }
}

#[test]
fn qemu_7_2_reconnect_resumes() {
    let rig = Rig::new(2, 1);
    let mut a = rig.guest(0, qemu(1));
    let mut b = rig.guest(1, qemu(1));
    a.post_rx_all();
    b.post_rx_all();
    // QEMU asks for no ack after ADD_MEM_REG: the guest may be done with
    // the handshake before the port is. Frames sent meanwhile are dropped
    // as `not_running` at the other end.
    wait_for("both ports to run", || {
        rig.ports.iter().all(|p| p.state() == PortState::Running)
    });
    one_way(&mut a, &mut b, 0, (A, B), 10, 0);
    a.reconnect().expect("reconnect in QEMU's order");
    wait_for("A to run again", || {
        rig.ports[0].state() == PortState::Running
    });
    assert_eq!(rig.ports[0].stats().connections, 2);
    one_way(&mut b, &mut a, 0, (B, A), 10, 0);
    one_way(&mut a, &mut b, 0, (A, B), 10, 0);
}

fn msg(code: u32, flags: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&code.to_le_bytes());
    m.extend_from_slice(&(1 | flags).to_le_bytes());
    m.extend_from_slice(&(body.len() as u32).to_le_bytes());
    m.extend_from_slice(body);
    m
}

fn reply(s: &mut UnixStream) -> (u32, u64) {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).unwrap();
    let code = u32::from_le_bytes(h[0..4].try_into().unwrap());
    assert_eq!(u32::from_le_bytes(h[8..12].try_into().unwrap()), 8);
    (code, u64::from_le_bytes(h[12..20].try_into().unwrap()))
}

fn state_body(idx: u32, num: u32) -> Vec<u8> {
    [idx.to_le_bytes(), num.to_le_bytes()].concat()
}

#[test]
fn refused_requests_are_named_and_the_session_goes_on() {
    let rig = Rig::new(1, 1);
    let mut s = UnixStream::connect(rig.socket(0)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    // SET_VRING_ENABLE of a queue the port lacks, asking for an ack.
    s.write_all(&msg(18, 0x8, &state_body(7, 1))).unwrap();
    assert_eq!(reply(&mut s), (18, 1));
    // An unknown request, then a request whose feature was never offered
    // (NET_SET_MTU): both refused, neither ends the session.
    s.write_all(&msg(200, 0x8, &[])).unwrap();
    assert_eq!(reply(&mut s), (200, 1));
    s.write_all(&msg(20, 0x8, &[0; 8])).unwrap();
    assert_eq!(reply(&mut s), (20, 1));
    // A body of the wrong size.
    s.write_all(&msg(8, 0x8, &[0; 3])).unwrap();
    assert_eq!(reply(&mut s), (8, 1));
    // Still serving.
    s.write_all(&msg(1, 0, &[])).unwrap();
    let (code, feats) = reply(&mut s);
    assert_eq!(code, 1);
    assert_ne!(feats & (1 << 32), 0, "VERSION_1 offered");
    let st = rig.ports[0].stats();
    let e = st.last_error.expect("a last error");
    assert!(
        e.contains("SET_VRING_ENABLE") || e.contains("SET_VRING_NUM"),
        "{e}"
    );
    assert!(st.last_error_at.is_some());
    assert!(rig.ports[0].connected());
}

#[test]
fn features_never_offered_end_the_session_by_name() {
    let rig = Rig::new(1, 1);
    let mut s = UnixStream::connect(rig.socket(0)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    // GUEST_UFO (bit 10) is not offered.
    s.write_all(&msg(2, 0, &((1u64 << 32) | (1 << 10)).to_le_bytes()))
        .unwrap();
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap(), 0, "the session is closed");
    wait_for("the port to see it", || !rig.ports[0].connected());
    let e = rig.ports[0].stats().last_error.expect("a last error");
    assert!(e.contains("SET_FEATURES") && e.contains("GUEST_UFO"), "{e}");
    // The port serves the next VMM.
    let mut g = rig.guest(0, qemu(1));
    g.post_rx_all();
    wait_for("the new session to run", || {
        rig.ports[0].state() == PortState::Running
    });
}

#[test]
fn bad_memory_is_refused_before_mapping() {
    let rig = Rig::new(1, 1);
    let mut s = UnixStream::connect(rig.socket(0)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(&msg(16, 0, &(0x8u64 | 0x8000).to_le_bytes()))
        .unwrap();
    // ADD_MEM_REG of 1 GiB backed by a 4 KiB memfd: refused, named.
    let m = netmap::sys::Memfd::create_sealed("small", 4096, false).unwrap();
    let mut body = vec![0u8; 8];
    for v in [0u64, 1 << 30, 0x7f00_0000_0000, 0] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    netmap::sys::send_with_fds(&s, &msg(37, 0x8, &body), &[m.file()]).unwrap();
    assert_eq!(reply(&mut s), (37, 1));
    let e = rig.ports[0].stats().last_error.expect("a last error");
    assert!(e.contains("ADD_MEM_REG") && e.contains("4096"), "{e}");
    assert!(rig.ports[0].connected());
}

/// A VMM that stops in the middle of a message neither holds its port's
/// thread nor the removal of the port.
#[test]
fn a_vmm_stalled_mid_message_is_dropped() {
    let rig = Rig::new(1, 1);
    let mut s = UnixStream::connect(rig.socket(0)).unwrap();
    wait_for("the connection", || rig.ports[0].connected());
    s.write_all(&msg(8, 0, &state_body(0, 256))[..7]).unwrap();
    wait_for("the stall to end the session", || !rig.ports[0].connected());
    let e = rig.ports[0].stats().last_error.expect("a last error");
    assert!(e.contains("took over"), "{e}");
    // Again, and remove the port while the VMM is mid-message.
    let mut s2 = UnixStream::connect(rig.socket(0)).unwrap();
    wait_for("the connection", || rig.ports[0].connected());
    s2.write_all(&msg(8, 0, &state_body(0, 256))[..7]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    drop(rig);
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    drop((s, s2));
}
