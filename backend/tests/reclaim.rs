//! A VMM that goes away takes its guest memory mapping with it. In a test
//! binary of its own: it counts this process's mappings of the fake
//! guests' memfds, which other tests running alongside would change.

use std::time::{Duration, Instant};

use backend::testing::{frame, wait_for, FakeGuest, GuestConfig, Handshake, Rig};
use backend::PortState;

const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
const T: Duration = Duration::from_secs(5);
const HDR: [u8; 12] = [0; 12];

fn post(g: &mut FakeGuest) {
    g.set_repost(true);
    assert_eq!(g.post_rx(0, 64, 2048), 64);
}

/// Mappings of the fake guests' memfds in this process (the guests' own
/// and the backend's).
fn guest_maps() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:vale-fake-guest"))
        .count()
}

/// A VMM that goes away takes its memory mapping and descriptors with it
/// within a second, even with the forwarding thread idle.
#[test]
fn disconnect_releases_guest_memory() {
    let rig = Rig::new(2, 1);
    let base = guest_maps();
    let cfg = GuestConfig {
        handshake: Handshake::Qemu72,
        ..Default::default()
    };
    let mut a = rig.guest(0, cfg.clone());
    let mut b = rig.guest(1, cfg);
    post(&mut a);
    post(&mut b);
    wait_for("both ports to run", || {
        rig.ports.iter().all(|p| p.state() == PortState::Running)
    });
    for i in 0..5 {
        let f = frame(B, A, 100, i);
        assert!(a.send(0, &HDR, &f, &[12]));
        assert_eq!(b.recv(0, T).expect("frame arrives").1, f);
    }
    // Each guest maps its memfd, and so does the backend.
    assert_eq!(guest_maps(), base + 4);
    a.disconnect();
    let t0 = Instant::now();
    wait_for("A's mapping to go", || guest_maps() == base + 3);
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    drop(b);
    wait_for("B's mappings to go", || guest_maps() == base + 1);
}
