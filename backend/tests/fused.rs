//! Fused runs (`Source::fuse`: a guest's TX queue copying a run of
//! unicast frames straight into another guest's RX queue) forward exactly
//! as the general path does: the same bytes in the same buffers, the same
//! chains returned in the same order, the same counters. Each scenario is
//! run twice on fresh switches, fused runs on and off, and the two
//! outcomes are compared whole.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use backend::device::features;
use backend::queue::{QueueStats, RxQueue, RxSet, TxQueue};
use backend::testing::mem_queue::{Dir, MemQueue};
use backend::VNET_HDR_LEN;
use netmap::sys::EventFd;
use vale::offload::{F_NEEDS_CSUM, GSO_TCPV4};
use vale::testing::{eth_frame, mac};
use vale::{LookupStats, PortConfig, PortId, PortStats, Scratch, Switch};

/// A guest's RX side as valed attaches it: an `RxSet` over `queues`,
/// with `acked` features (which say the offloads it takes).
fn rx_set(queues: &[&MemQueue], mrg: bool, acked: u64, stats: &[Arc<QueueStats>]) -> RxSet {
    let qs = queues
        .iter()
        .zip(stats)
        .map(|(q, st)| {
            RxQueue::new(
                q.slot(),
                Arc::default(),
                st.clone(),
                Arc::new(AtomicBool::new(mrg)),
            )
        })
        .collect();
    RxSet::new(
        qs,
        Arc::new(EventFd::new().expect("eventfd")),
        Arc::new(AtomicU64::new(acked)),
    )
}

/// xorshift: the scenario, the same for both runs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Everything a run leaves that a guest, an operator or the bridge sees.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// Per RX queue (B's two, C's): each used entry and the bytes in it.
    rx: Vec<Vec<(u16, u32, Vec<u8>)>>,
    /// A's TX chains as they came back.
    tx_used: Vec<(u16, u32)>,
    ports: Vec<PortStats>,
    lookup: LookupStats,
    /// Per RX queue: frames dropped for no buffer, for buffers too small.
    rx_drops: Vec<(u64, u64)>,
    violations: u64,
    /// Used entries, on all four rings, not in the order their chains
    /// were made available (VIRTIO_F_IN_ORDER, which the ports offer).
    out_of_order: u64,
}

const A_MACS: [u16; 2] = [10, 11];
const B_MAC: u16 = 20;
const C_MAC: u16 = 30;

/// One frame A sends: to B, C, broadcast or nobody known, from one of
/// A's two MACs, of assorted lengths (a few runts), some with a partial
/// checksum or a GSO header that C's guest does not take.
fn a_frame(r: &mut Rng, k: u64) -> Vec<u8> {
    let dst = match r.below(10) {
        0..=5 => mac(B_MAC),
        6 | 7 => mac(C_MAC),
        8 => [0xff; 6],
        _ => mac(99),
    };
    let src = mac(A_MACS[(r.below(4) == 0) as usize]);
    let len = match r.below(20) {
        0 => 10 + r.below(10) as usize, // shorter than an Ethernet header
        1..=9 => 60,
        10..=15 => 60 + r.below(1455) as usize,
        _ => 1514,
    };
    let mut h = [0u8; VNET_HDR_LEN];
    match r.below(8) {
        0 => {
            h[0] = F_NEEDS_CSUM;
            h[6..8].copy_from_slice(&34u16.to_le_bytes());
            h[8..10].copy_from_slice(&16u16.to_le_bytes());
        }
        1 => {
            h[0] = F_NEEDS_CSUM;
            h[1] = GSO_TCPV4;
            h[2..4].copy_from_slice(&54u16.to_le_bytes());
            h[4..6].copy_from_slice(&1448u16.to_le_bytes());
            h[6..8].copy_from_slice(&34u16.to_le_bytes());
            h[8..10].copy_from_slice(&16u16.to_le_bytes());
        }
        _ => {}
    }
    let mut f = h.to_vec();
    let mut e = eth_frame(dst, src, len.max(14), k + 1);
    e.truncate(len);
    f.extend(e);
    f
}

/// Announces `m` from port `p` (a broadcast its TX queue sends), so the
/// bridge learns where it is.
fn announce(sw: &Switch, p: PortId, m: [u8; 6], sc: &mut Scratch) {
    let mut tx = MemQueue::new(Dir::Tx, 16, 2048, true);
    let mut hello = vec![0u8; VNET_HDR_LEN];
    hello.extend(eth_frame([0xff; 6], m, 60, 0));
    tx.set_tx(0, &hello);
    tx.post(1);
    let mut q = TxQueue::new(tx.slot(), Arc::default(), Arc::default());
    assert_eq!(sw.forward(p, &mut q, sc, 0).frames, 1);
    assert_eq!(tx.reap(), 1);
}

/// A sends `rounds` bursts to B (two RX queues, mergeable buffers, every
/// offload) and C (one queue, 1 KiB buffers without mergeable buffers,
/// no offload), whose guests post buffers now and then, fewer than they
/// get at times. Returns what happened and how many frames fused runs
/// moved.
fn run(seed: u64, rounds: usize, fused: bool) -> (Outcome, u64) {
    let mut r = Rng(seed | 1);
    let sw = Switch::new("vale0");
    sw.set_fused(fused);
    let port = PortConfig {
        vnet_hdr_len: VNET_HDR_LEN as u16,
        ..Default::default()
    };
    let mut b_rx = [
        MemQueue::new(Dir::Rx, 64, 2048, true),
        MemQueue::new(Dir::Rx, 64, 2048, false),
    ];
    let mut c_rx = MemQueue::new(Dir::Rx, 32, 1024, true);
    let stats: Vec<Arc<QueueStats>> = (0..3).map(|_| Arc::default()).collect();
    let b_acked = features::VERSION_1
        | features::MRG_RXBUF
        | features::GUEST_CSUM
        | features::GUEST_TSO4
        | features::GUEST_TSO6;
    // A may teach the bridge one MAC: frames from its second fail to
    // learn, each counted once (a fused run then takes one frame, and a
    // general batch after it must not ask the bridge again).
    let a = sw
        .attach("vale0:a", port, rx_set(&[], true, b_acked, &[]))
        .expect("attach a");
    sw.with_lookup_mut(|l| l.set_port_mac_limit(a, 1));
    let b = sw
        .attach(
            "vale0:b",
            port,
            rx_set(&[&b_rx[0], &b_rx[1]], true, b_acked, &stats[..2]),
        )
        .expect("attach b");
    let c = sw
        .attach(
            "vale0:c",
            port,
            rx_set(&[&c_rx], false, features::VERSION_1, &stats[2..]),
        )
        .expect("attach c");
    let mut sc = Scratch::default();
    announce(&sw, b, mac(B_MAC), &mut sc);
    announce(&sw, c, mac(C_MAC), &mut sc);

    let mut a_tx = MemQueue::new(Dir::Tx, 128, 2048, true);
    let mut a_txq = TxQueue::new(a_tx.slot(), Arc::default(), Arc::default());
    let mut out = Outcome {
        rx: vec![Vec::new(); 3],
        tx_used: Vec::new(),
        ports: Vec::new(),
        lookup: LookupStats::default(),
        rx_drops: Vec::new(),
        violations: 0,
        out_of_order: 0,
    };
    let mut k = 0u64;
    for _ in 0..rounds {
        // The guests' RX buffers: all, some or none of the free ones.
        for q in b_rx.iter_mut().chain(std::iter::once(&mut c_rx)) {
            match r.below(4) {
                0 => {}
                1 => {
                    q.post(r.below(8) as usize);
                }
                _ => {
                    q.post_all();
                }
            }
        }
        // A's burst: mostly runs of one flow, as a guest sends.
        let n = 1 + r.below(48) as usize;
        let ids = a_tx.next_free(n);
        let mut f = a_frame(&mut r, k);
        for &id in &ids {
            if r.below(6) == 0 {
                f = a_frame(&mut r, k);
            } else {
                // The same flow, other bytes after the MACs.
                let tail = eth_frame([0; 6], [0; 6], f.len().max(VNET_HDR_LEN + 14), k + 7);
                let at = VNET_HDR_LEN + 12;
                if f.len() > at {
                    let end = f.len();
                    f[at..].copy_from_slice(&tail[at - VNET_HDR_LEN..end - VNET_HDR_LEN]);
                }
            }
            k += 1;
            a_tx.set_tx(id, &f);
        }
        assert_eq!(a_tx.post(ids.len()), ids.len());
        // Forwarded until A's ring is empty (nothing holds: no port has
        // backpressure).
        let mut moved = 0;
        loop {
            let fw = sw.forward(a, &mut a_txq, &mut sc, 0);
            if fw.frames == 0 {
                break;
            }
            moved += fw.frames;
        }
        assert_eq!(moved, ids.len(), "every frame posted was taken");
        a_tx.reap();
        out.tx_used.extend_from_slice(a_tx.reaped());
        for (i, q) in b_rx
            .iter_mut()
            .chain(std::iter::once(&mut c_rx))
            .enumerate()
        {
            q.reap();
            for &(id, len) in q.reaped() {
                out.rx[i].push((id, len, q.read(id, len as usize)));
            }
        }
    }
    out.ports = [a, b, c]
        .iter()
        .map(|&p| sw.stats(p).expect("port"))
        .collect();
    out.lookup = sw.with_lookup_mut(|l| vale::Lookup::stats(l));
    out.rx_drops = stats
        .iter()
        .map(|s| {
            (
                s.no_rx_buffer.load(Ordering::Relaxed),
                s.rx_too_small.load(Ordering::Relaxed),
            )
        })
        .collect();
    out.violations =
        a_tx.violations() + b_rx.iter().map(MemQueue::violations).sum::<u64>() + c_rx.violations();
    out.out_of_order = a_tx.used_out_of_order()
        + b_rx.iter().map(MemQueue::used_out_of_order).sum::<u64>()
        + c_rx.used_out_of_order();
    (out, sw.fused_frames())
}

#[test]
fn fused_runs_forward_as_the_general_path_does() {
    for seed in [1u64, 0x5eed, 0xdead_beef, 42, 7777] {
        let (general, none) = run(seed, 150, false);
        assert_eq!(none, 0, "fused runs while switched off");
        let (fused, moved) = run(seed, 150, true);
        let b_got = general.ports[1].out_packets;
        // A stopped run hands the rest of the burst to a general batch.
        assert!(
            moved > b_got / 20,
            "seed {seed}: fused runs moved {moved} of B's {b_got} frames"
        );
        assert_eq!(fused.violations, 0, "seed {seed}");
        assert_eq!(general.out_of_order, 0, "seed {seed}: general path");
        assert_eq!(fused.out_of_order, 0, "seed {seed}: fused runs");
        // What each side saw, compared piece by piece for a readable
        // failure, then whole.
        assert_eq!(fused.ports, general.ports, "seed {seed}: port counters");
        assert_eq!(fused.lookup, general.lookup, "seed {seed}: bridge counters");
        assert_eq!(fused.rx_drops, general.rx_drops, "seed {seed}: RX drops");
        assert_eq!(fused.tx_used, general.tx_used, "seed {seed}: A's chains");
        for (i, (f, g)) in fused.rx.iter().zip(&general.rx).enumerate() {
            assert_eq!(f.len(), g.len(), "seed {seed}: RX queue {i}: frames");
            for (j, (x, y)) in f.iter().zip(g).enumerate() {
                assert!(x == y, "seed {seed}: RX queue {i}, entry {j} differs");
            }
        }
        assert_eq!(fused, general, "seed {seed}");
        // The scenario reached the corners it is meant to.
        let (b, c) = (&general.ports[1], &general.ports[2]);
        assert!(b.out_packets > 0 && c.out_packets > 0, "{b:?} {c:?}");
        assert!(
            c.soft_offload > 0,
            "seed {seed}: no frame needed an offload at C"
        );
        assert!(
            general.rx_drops.iter().any(|d| d.0 > 0),
            "seed {seed}: RX never ran out"
        );
        assert!(
            general.rx_drops[2].1 > 0,
            "seed {seed}: C's buffers never too small"
        );
        assert!(
            general.ports[0].total_drops() > 0,
            "seed {seed}: no runt or flood drop"
        );
        assert!(
            general.lookup.port_limit > 0,
            "seed {seed}: A's MAC limit never hit"
        );
    }
}

/// A and B on a fresh switch, B's MAC learned, each guest with its rings.
struct Pair {
    sw: Switch,
    a: PortId,
    b: PortId,
    a_tx: MemQueue,
    a_txq: TxQueue,
    b_rx: MemQueue,
    sc: Scratch,
}

impl Pair {
    fn new(announce_a: Option<Arc<backend::queue::Announcement>>) -> Pair {
        let sw = Switch::new("vale0");
        let port = PortConfig {
            vnet_hdr_len: VNET_HDR_LEN as u16,
            ..Default::default()
        };
        let acked = features::VERSION_1 | features::MRG_RXBUF;
        let a = sw
            .attach("vale0:a", port, rx_set(&[], true, acked, &[]))
            .expect("attach a");
        let mut b_rx = MemQueue::new(Dir::Rx, 64, 2048, true);
        let b = sw
            .attach(
                "vale0:b",
                port,
                rx_set(&[&b_rx], true, acked, &[Arc::default()]),
            )
            .expect("attach b");
        b_rx.post_all();
        let mut sc = Scratch::default();
        announce(&sw, b, mac(B_MAC), &mut sc);
        let a_tx = MemQueue::new(Dir::Tx, 64, 2048, true);
        let mut a_txq = TxQueue::new(a_tx.slot(), Arc::default(), Arc::default());
        if let Some(an) = announce_a {
            a_txq = a_txq.with_announce(an);
        }
        Pair {
            sw,
            a,
            b,
            a_tx,
            a_txq,
            b_rx,
            sc,
        }
    }

    /// A sends `n` frames to B in one burst; returns the frames B got.
    fn burst(&mut self, n: usize) -> usize {
        let ids = self.a_tx.next_free(n);
        for (i, &id) in ids.iter().enumerate() {
            let mut f = vec![0u8; VNET_HDR_LEN];
            f.extend(eth_frame(mac(B_MAC), mac(A_MACS[0]), 60, i as u64));
            self.a_tx.set_tx(id, &f);
        }
        self.a_tx.post(n);
        while self
            .sw
            .forward(self.a, &mut self.a_txq, &mut self.sc, 0)
            .frames
            > 0
        {}
        assert_eq!(self.a_tx.reap(), n, "A's chains came back");
        let got = self.b_rx.reap();
        self.b_rx.post_all();
        got
    }
}

#[test]
fn monitors_backpressure_and_announcements_take_the_general_path() {
    // The control: a plain unicast burst is one fused run.
    let mut p = Pair::new(None);
    assert_eq!(p.burst(20), 20);
    assert_eq!(p.sw.fused_frames(), 20);

    // A backpressure reader: the general path, which can hold A.
    let mut p = Pair::new(None);
    let mut cfg = p.sw.config(p.b).expect("b");
    cfg.backpressure = true;
    p.sw.reconfigure(p.b, cfg).expect("reconfigure");
    assert_eq!(p.burst(20), 20);
    assert_eq!(p.sw.fused_frames(), 0, "fused into a backpressure port");

    // A monitor on B's RX, then on A's TX: each gets its copies.
    for (dirs, on_a) in [(vale::MONITOR_RX, false), (vale::MONITOR_TX, true)] {
        let mut p = Pair::new(None);
        let mon = vale::testing::MemSink::new(64, 2048);
        let id = if on_a { p.a } else { p.b };
        p.sw.add_monitor(id, dirs, Arc::new(std::sync::Mutex::new(mon.clone())))
            .expect("monitor");
        assert_eq!(p.burst(20), 20);
        assert_eq!(p.sw.fused_frames(), 0, "fused past a monitor");
        assert_eq!(mon.take().len(), 20, "the monitor's copies");
    }

    // An announcement waiting on A's queue goes out first, the general
    // way, then the frames; the next burst is fused again.
    let an = Arc::new(backend::queue::Announcement::default());
    let mut p = Pair::new(Some(an.clone()));
    an.post(mac(A_MACS[0]));
    assert_eq!(p.burst(20), 21, "the RARP broadcast and the frames");
    assert_eq!(p.sw.fused_frames(), 0);
    assert_eq!(p.burst(20), 20);
    assert_eq!(p.sw.fused_frames(), 20);
}
