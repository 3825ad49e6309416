//! A port's life: reconnection, disconnection mid-transfer, memory
//! hot-plug, GET_VRING_BASE while traffic runs, client mode.

use std::time::{Duration, Instant};

use backend::testing::{frame, one_way, rig_dir, FakeGuest, GuestConfig, GuestListener, Rig};
use backend::{NetConfig, SocketMode};
use vale::DropReason;
use vhost::vhost_user::message::VhostUserProtocolFeatures;

const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
const T: Duration = Duration::from_secs(5);
const HDR: [u8; 12] = [0; 12];

fn cfg() -> GuestConfig {
    GuestConfig {
        mrg_rxbuf: true,
        event_idx: true,
        ..Default::default()
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn both_ways(a: &mut FakeGuest, b: &mut FakeGuest, n: u32, seed: u32) {
    one_way(a, b, 0, (A, B), n, seed);
    one_way(b, a, 0, (B, A), n, seed + 1000);
}

/// Two guests with RX buffers posted, reposted as they are consumed.
fn pair(rig: &Rig) -> (FakeGuest, FakeGuest) {
    let mut a = rig.guest(0, cfg());
    let mut b = rig.guest(1, cfg());
    for g in [&mut a, &mut b] {
        g.set_repost(true);
        assert_eq!(g.post_rx(0, 128, 2048), 128);
    }
    (a, b)
}

fn no_violations(gs: &[&FakeGuest]) {
    for g in gs {
        assert!(g.violations().is_empty(), "{:?}", g.violations());
    }
}

#[test]
fn reconnect_same_port_traffic_resumes() {
    let rig = Rig::new(2, 1);
    let (mut a, mut b) = pair(&rig);
    both_ways(&mut a, &mut b, 20, 0);
    let id = rig.switch.port_id("vale0:p0").expect("port");
    a.disconnect();
    wait_for("A's port to see the disconnection", || {
        !rig.ports[0].connected()
    });
    // B keeps sending to A: counted drops, B gets its buffers back.
    let before = rig.stats(0).drop(DropReason::DstFull);
    for i in 0..20 {
        assert!(b.send(0, &HDR, &frame(A, B, 100, 500 + i), &[]));
    }
    assert_eq!(b.wait_tx(0, 20, T), 20);
    wait_for("the drops to be counted", || {
        rig.stats(0).drop(DropReason::DstFull) >= before + 20
    });
    a.reconnect().expect("reconnect");
    wait_for("A's port to see the reconnection", || {
        rig.ports[0].connected()
    });
    assert_eq!(rig.ports[0].stats().connections, 2);
    assert_eq!(rig.switch.port_id("vale0:p0"), Some(id));
    assert_eq!(rig.ids[0], id);
    // B first: A's RX queue is served again without A kicking.
    one_way(&mut b, &mut a, 0, (B, A), 20, 2000);
    one_way(&mut a, &mut b, 0, (A, B), 20, 3000);
    assert!(
        a.recv(0, Duration::from_millis(20)).is_none(),
        "stale frames"
    );
    no_violations(&[&a, &b]);
}

/// Without EVENT_IDX (kicks and interrupts by ring flags): A dropped, and a
/// fresh guest (new memory, rings from index 0) connected in its place.
#[test]
fn new_guest_replaces_dropped_one() {
    let rig = Rig::new(2, 1);
    let plain = GuestConfig {
        event_idx: false,
        ..cfg()
    };
    let mut a = rig.guest(0, plain.clone());
    let mut b = rig.guest(1, plain.clone());
    for g in [&mut a, &mut b] {
        g.set_repost(true);
        g.post_rx(0, 128, 2048);
    }
    both_ways(&mut a, &mut b, 10, 0);
    drop(a);
    wait_for("the disconnection", || !rig.ports[0].connected());
    let mut a = rig.guest(0, plain);
    a.set_repost(true);
    a.post_rx(0, 128, 2048);
    wait_for("the connection", || rig.ports[0].connected());
    both_ways(&mut a, &mut b, 10, 100);
    assert_eq!(rig.ports[0].stats().connections, 2);
    no_violations(&[&a, &b]);
}

#[test]
fn disconnect_mid_burst() {
    let rig = Rig::new(2, 1);
    let mut a = rig.guest(0, cfg());
    let mut b = rig.guest(1, cfg());
    b.set_repost(true);
    assert_eq!(b.post_rx(0, 250, 2048), 250);
    let sent: Vec<Vec<u8>> = (0..200u32)
        .map(|i| frame(B, A, 60 + (i as usize * 37) % 1450, i))
        .collect();
    for (i, f) in sent.iter().enumerate() {
        assert!(a.send(0, &HDR, f, &[]), "TX full at {i}");
    }
    drop(a);
    wait_for("the disconnection", || !rig.ports[0].connected());
    // A prefix, each frame whole.
    let mut n = 0;
    while let Some((_, got)) = b.recv(0, Duration::from_millis(100)) {
        assert!(n < sent.len(), "more frames than sent");
        assert!(got == sent[n], "frame {n} differs");
        n += 1;
    }
    // Every frame the switch took from A reached B.
    assert_eq!(rig.stats(0).in_packets, n as u64);
    assert_eq!(rig.stats(1).total_drops(), 0, "{:?}", rig.stats(1));
    let mut a = rig.guest(0, cfg());
    a.set_repost(true);
    a.post_rx(0, 128, 2048);
    both_ways(&mut a, &mut b, 20, 1000);
    assert_eq!(rig.ports[0].stats().connections, 2);
    assert_eq!(rig.ports[0].stats().bad_chains, 0);
    no_violations(&[&a, &b]);
}

#[test]
fn memory_hotplug_under_traffic() {
    let rig = Rig::new(2, 1);
    let (mut a, mut b) = pair(&rig);
    let slots = VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS.bits();
    assert_ne!(
        a.acked_protocol_features() & slots,
        0,
        "CONFIGURE_MEM_SLOTS"
    );
    both_ways(&mut a, &mut b, 5, 0);
    let in_region = |g: &FakeGuest, r: usize, gpa: u64| {
        let (start, len) = g.region_ranges()[r];
        gpa >= start && gpa < start + len
    };
    // Frames in flight from region 0 while the region is added.
    let mut sent = Vec::new();
    for i in 0..20u32 {
        let f = frame(B, A, 100 + i as usize * 50, 100 + i);
        assert!(a.send(0, &HDR, &f, &[12]));
        assert!(in_region(&a, 0, a.last_tx_gpa(0)));
        sent.push(f);
    }
    let r = a.add_region(4 << 20).expect("ADD_MEM_REG");
    assert_eq!(r, 1);
    a.set_alloc_region(Some(r));
    for i in 0..50u32 {
        let f = frame(B, A, 60 + (i as usize * 97) % 1450, 200 + i);
        assert!(a.send(0, &HDR, &f, &[12, 30]));
        assert!(
            in_region(&a, r, a.last_tx_gpa(0)),
            "frame {i} not in the new region"
        );
        sent.push(f);
    }
    for (i, f) in sent.iter().enumerate() {
        let (_, got) = b.recv(0, T).unwrap_or_else(|| panic!("frame {i}"));
        assert!(got == *f, "frame {i} differs");
    }
    assert_eq!(a.wait_tx(0, sent.len(), T), sent.len());
    // The other way meanwhile, into A's RX buffers of region 0.
    one_way(&mut b, &mut a, 0, (B, A), 10, 300);
    // Every TX buffer of the region is back: remove it.
    assert_eq!(a.tx_inflight(0), 0);
    a.set_alloc_region(Some(0));
    a.remove_region(r).expect("REM_MEM_REG");
    assert_eq!(a.region_ranges().len(), 1);
    for i in 0..30u32 {
        let f = frame(B, A, 60 + (i as usize * 113) % 1450, 400 + i);
        assert!(a.send(0, &HDR, &f, &[12]));
        assert!(in_region(&a, 0, a.last_tx_gpa(0)));
        let (_, got) = b
            .recv(0, T)
            .unwrap_or_else(|| panic!("frame {i} after removal"));
        assert!(got == f, "frame {i} after removal differs");
    }
    one_way(&mut b, &mut a, 0, (B, A), 10, 500);
    assert_eq!(rig.ports[0].stats().bad_chains, 0);
    assert_eq!(rig.stats(0).total_drops(), 0);
    assert_eq!(rig.stats(1).total_drops(), 0);
    no_violations(&[&a, &b]);
}

/// GET_VRING_BASE on A's TX queue while the forwarding thread is inside a
/// batch of it (held there by the test holding the switch's lookup): the
/// base counts exactly the chains the device took, all of them are on the
/// used ring, B got exactly those frames; after a reconnection from that
/// base the rest go through, each once.
#[test]
fn get_vring_base_mid_batch_loses_nothing() {
    let rig = Rig::new(2, 1);
    let (mut a, mut b) = pair(&rig);
    both_ways(&mut a, &mut b, 3, 0);
    let sent: Vec<Vec<u8>> = (0..100u32)
        .map(|i| frame(B, A, 60 + (i as usize * 89) % 1450, 10 + i))
        .collect();
    // Hold the lookup: the forwarder's next batch stops in its pass 1.
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let sw = rig.switch.clone();
    let holder = std::thread::spawn(move || {
        sw.with_lookup_mut(|_| {
            held_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(150));
        })
    });
    held_rx.recv().unwrap();
    for f in &sent[..60] {
        assert!(a.send(0, &HDR, f, &[]));
    }
    // Let the forwarder take some of them into its (stuck) batch.
    std::thread::sleep(Duration::from_millis(20));
    for f in &sent[60..] {
        assert!(a.send(0, &HDR, f, &[]));
    }
    let t0 = Instant::now();
    let base = a.get_vring_base(1).expect("GET_VRING_BASE") as u16;
    let waited = t0.elapsed();
    holder.join().unwrap();
    let used = a.tx_used_idx(0);
    let first = 3; // frames A sent before
    assert_eq!(used, base, "used idx vs base (waited {waited:?})");
    let took = usize::from(base) - first;
    assert!(took <= sent.len());
    assert!(took > 0, "the forwarder took nothing into its batch");
    assert!(took < sent.len(), "the forwarder took everything");
    assert_eq!(rig.stats(0).in_packets as usize, first + took);
    for (i, f) in sent[..took].iter().enumerate() {
        let (_, got) = b
            .recv(0, T)
            .unwrap_or_else(|| panic!("frame {i} of {took}"));
        assert!(got == *f, "frame {i} differs");
    }
    assert!(
        b.recv(0, Duration::from_millis(30)).is_none(),
        "past the base"
    );
    // Start again from the base: the rest, once each.
    a.reconnect().expect("reconnect");
    for (i, f) in sent[took..].iter().enumerate() {
        let (_, got) = b
            .recv(0, T)
            .unwrap_or_else(|| panic!("frame {} after restart", took + i));
        assert!(got == *f, "frame {} differs", took + i);
    }
    assert!(b.recv(0, Duration::from_millis(30)).is_none(), "duplicates");
    assert_eq!(a.wait_tx(0, sent.len(), T), sent.len());
    assert_eq!(a.tx_inflight(0), 0);
    assert_eq!(a.tx_used_idx(0), (first + sent.len()) as u16);
    both_ways(&mut a, &mut b, 5, 1000);
    no_violations(&[&a, &b]);
}

#[test]
fn client_mode_connects_and_reconnects() {
    let dir = rig_dir("lifecycle-client");
    let vm = dir.join("vm.sock");
    let listener = GuestListener::bind(&vm).expect("bind");
    let mut client = NetConfig::new("vm", &vm);
    client.mode = SocketMode::Client;
    let rig = Rig::with_ports(vec![client, NetConfig::new("peer", &dir.join("peer.sock"))]);
    let ready = |g: &mut FakeGuest| {
        g.set_repost(true);
        g.post_rx(0, 128, 2048);
    };
    let mut a = listener.accept(cfg()).expect("the port connects");
    ready(&mut a);
    let mut b = FakeGuest::connect(&rig.ports[1].config().socket, cfg()).expect("peer");
    ready(&mut b);
    wait_for("the client port to connect", || rig.ports[0].connected());
    both_ways(&mut a, &mut b, 10, 0);
    // The VMM goes away, listener and all, and comes back.
    drop(a);
    wait_for("the disconnection", || !rig.ports[0].connected());
    let t0 = Instant::now();
    let listener = GuestListener::bind(&vm).expect("bind again");
    let mut a = listener.accept(cfg()).expect("the port reconnects");
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "reconnected after {took:?}"
    );
    ready(&mut a);
    wait_for("the client port to reconnect", || rig.ports[0].connected());
    assert_eq!(rig.ports[0].stats().connections, 2);
    both_ways(&mut a, &mut b, 10, 100);
    no_violations(&[&a, &b]);
    drop(rig);
    let _ = std::fs::remove_dir_all(&dir);
}
