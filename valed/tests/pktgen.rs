//! pkt-gen against a running valed: tx -> rx balances with valed's drop
//! counters, txseq -> rxseq is exact through a backpressure port, ping/pong
//! measures round trips, and rxseq catches an injected gap, duplicate,
//! reordering and corrupt byte.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::{leak_flag, spawn, Valed};

fn start(tag: &str) -> Valed {
    common::start(tag, &[])
}
use netmap::abi::{
    NmreqRegister, NmreqValeAttach, NmreqValeNewif, NETMAP_REQ_VALE_ATTACH, NETMAP_REQ_VALE_NEWIF,
};
use netmap::ctrl::{
    CtrlConn, Request, ValePortConfig, VALE_PORT_BACKPRESSURE, VALE_REQ_PORT_CONFIG,
    VALE_REQ_STATS, VALE_SET_FLAGS,
};
use netmap::port::NmPort;
use pkt_gen::args::Config;
use pkt_gen::frame::{Af, FrameSpec, IpRange, Template, BROADCAST};
use pkt_gen::seq::{self, ErrorKind, Gap};

trait PktGenExt {
    fn cfg(&self, args: &[&str]) -> Config;
    fn persistent(&self, switch: &str, name: &str, rings: u16, slots: u32) -> String;
    fn stat(&self, port: &str, key: &str) -> u64;
    fn drops(&self, port: &str) -> u64;
    fn backpressure(&self, port: &str);
}

impl PktGenExt for Valed {
    fn cfg(&self, args: &[&str]) -> Config {
        common::pktgen_cfg(&self.sock, args)
    }

    /// A persistent port (`vale-ctl -n NAME` then `-a SWITCH:NAME`): its
    /// counters outlive the pkt-gen that used it.
    fn persistent(&self, switch: &str, name: &str, rings: u16, slots: u32) -> String {
        let c = CtrlConn::connect(&self.sock).unwrap();
        let nif = NmreqValeNewif {
            nr_tx_slots: slots,
            nr_rx_slots: slots,
            nr_tx_rings: rings,
            nr_rx_rings: rings,
            ..Default::default()
        };
        let (r, _) = c
            .call(&Request::new(NETMAP_REQ_VALE_NEWIF, name, &nif).unwrap())
            .unwrap();
        assert_eq!(r.error, 0, "NEWIF {name}");
        let full = format!("{switch}:{name}");
        let (r, _) = c
            .call(
                &Request::new(NETMAP_REQ_VALE_ATTACH, &full, &NmreqValeAttach::default()).unwrap(),
            )
            .unwrap();
        assert_eq!(r.error, 0, "ATTACH {full}");
        full
    }

    /// Turns backpressure on for `port`: nothing sent to it is dropped.
    fn backpressure(&self, port: &str) {
        let bp = ValePortConfig {
            flags: VALE_PORT_BACKPRESSURE,
            set: VALE_SET_FLAGS,
            ..Default::default()
        };
        let c = CtrlConn::connect(&self.sock).unwrap();
        let (r, _) = c
            .call(&Request::new(VALE_REQ_PORT_CONFIG, port, &bp).unwrap())
            .unwrap();
        assert_eq!(r.error, 0, "backpressure on {port}");
    }

    /// A counter of `port` from valed's statistics.
    fn stat(&self, port: &str, key: &str) -> u64 {
        let c = CtrlConn::connect(&self.sock).unwrap();
        let (r, _) = c
            .call(&Request::with_body(VALE_REQ_STATS, port, Vec::new()).unwrap())
            .unwrap();
        assert_eq!(r.error, 0, "stats of {port}");
        let json = String::from_utf8(r.req.body).unwrap();
        let pat = format!("\"{key}\":");
        let at = json
            .find(&pat)
            .unwrap_or_else(|| panic!("{key} not in {json}"))
            + pat.len();
        json[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    }

    fn drops(&self, port: &str) -> u64 {
        [
            "drop_dst_full",
            "drop_no_dst",
            "drop_runt",
            "drop_bad_chain",
            "drop_empty_frag",
            "drop_offload",
            "drop_bad_slot",
        ]
        .iter()
        .map(|k| self.stat(port, k))
        .sum()
    }
}

#[test]
fn tx_to_rx_balances_with_valeds_drop_counters() {
    let v = start("balance");
    let n = 300_000u64;
    let stop = leak_flag();
    let a = v.persistent("vale0", "pa", 1, 0);
    let b = v.persistent("vale0", "pb", 1, 0);
    let rx = spawn(v.cfg(&["-i", &b, "-f", "rx"]), stop);
    let tx = pkt_gen::run::run(
        &v.cfg(&[
            "-i",
            &a,
            "-f",
            "tx",
            "-n",
            &n.to_string(),
            "-S",
            "02:00:00:00:00:0a",
        ]),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(tx.ok(), "{tx:?}");
    assert_eq!(tx.ctrs.pkts, n);
    assert_eq!(tx.ctrs.bytes, n * 60);
    // Wait until valed accounts for every frame, then stop rx.
    let t0 = Instant::now();
    loop {
        let out = v.stat(&b, "out_packets");
        let dropped = v.stat(&b, "drop_dst_full");
        if out + dropped == n {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "valed accounts for {out} + {dropped} of {n}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let rx = rx.join().unwrap();
    assert!(rx.ok(), "{rx:?}");
    let in_a = v.stat(&a, "in_packets");
    let out_b = v.stat(&b, "out_packets");
    let full_b = v.stat(&b, "drop_dst_full");
    assert_eq!(in_a, n, "valed took every frame the sender published");
    assert_eq!(rx.ctrs.pkts, out_b, "rx counted what valed delivered");
    assert_eq!(rx.ctrs.pkts + full_b, n, "received + counted drops = sent");
    assert_eq!(v.drops(&b), full_b, "no other drop reason");
    assert_eq!(rx.ctrs.bytes, rx.ctrs.pkts * 60);
    eprintln!(
        "balance: sent {n}, received {}, dropped (destination full) {full_b}",
        rx.ctrs.pkts
    );
}

#[test]
fn txseq_to_rxseq_is_exact_through_a_backpressure_port() {
    let v = start("exact");
    // The receiver's rxsync wakes valed when it frees room (the need-kick
    // handshake on its RX ring), so a held sender resumes at once.
    let n = 50_000u64;
    let ns = n.to_string();
    let stop = leak_flag();
    let a = v.persistent("vale0", "ea", 1, 0);
    // A small RX ring on the receiver makes the switch hold the sender often.
    let b = v.persistent("vale0", "eb", 1, 256);
    v.backpressure(&b);
    let rx = spawn(v.cfg(&["-i", &b, "-f", "rxseq", "-n", &ns]), stop);
    // Mixed sizes, some over one buffer (NS_MOREFRAG chains).
    let tx = pkt_gen::run::run(
        &v.cfg(&[
            "-i",
            &a,
            "-f",
            "txseq",
            "-n",
            &ns,
            "-l",
            "3000",
            "-S",
            "02:00:00:00:00:0a",
        ]),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(tx.ok(), "{tx:?}");
    assert_eq!(tx.ctrs.pkts, n);
    let t0 = Instant::now();
    while !rx.is_finished() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "rxseq did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let rx = rx.join().unwrap();
    let s = rx.seq.clone().expect("rxseq report");
    assert!(rx.ok(), "{:?}", s.errors);
    assert_eq!(s.frames, n);
    assert_eq!((s.gaps, s.lost, s.error_count()), (0, 0, 0), "{s:?}");
    assert_eq!((s.first, s.last), (Some(0), Some((n - 1) as u32)));
    assert_eq!(rx.ctrs.pkts, n);
    assert_eq!(rx.ctrs.bytes, n * 3000);
    assert_eq!(v.drops(&b), 0);
    assert_eq!(v.stat(&b, "out_packets"), n);
    assert_eq!(v.stat(&a, "in_packets"), n);
}

#[test]
fn ping_pong_reports_round_trips() {
    let v = start("pingpong");
    let stop = leak_flag();
    let pong = spawn(
        v.cfg(&["-i", "vale0:pong", "-f", "pong", "-S", "02:00:00:00:00:02"]),
        stop,
    );
    let ping = pkt_gen::run::run(
        &v.cfg(&[
            "-i",
            "vale0:ping",
            "-f",
            "ping",
            "-n",
            "200",
            "-S",
            "02:00:00:00:00:01",
        ]),
        &AtomicBool::new(false),
    )
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let pong = pong.join().unwrap();
    assert!(ping.ok() && pong.ok());
    let r = ping.rtt.expect("round trips");
    assert_eq!(r.sent, 200);
    assert_eq!(r.received, 200, "{r:?}");
    assert!(r.min_ns > 0 && r.min_ns <= r.p50_ns && r.p50_ns <= r.p99_ns && r.p99_ns <= r.max_ns);
    assert!(r.avg_ns >= r.min_ns && r.avg_ns <= r.max_ns);
    assert_eq!(pong.ctrs.pkts, 200);
    eprintln!("{}  p50 {} ns p99 {} ns", r.line(), r.p50_ns, r.p99_ns);
}

/// Sends `frames` on `p`'s TX ring 0, waiting for room.
fn send_all(p: &NmPort, frames: &[Vec<u8>]) {
    let mut i = 0;
    let t0 = Instant::now();
    while i < frames.len() {
        assert!(t0.elapsed() < Duration::from_secs(20));
        i += netmap::testing::send_frames(&p.tx_ring(0), &frames[i..]).unwrap();
        let _ = p.poll(true, false, Some(Duration::from_millis(10)));
    }
    p.drain(Duration::from_secs(5)).unwrap();
}

#[test]
fn rxseq_catches_injected_gap_duplicate_reordering_and_corrupt_byte() {
    let v = start("inject");
    let stop = leak_flag();
    let r = v.persistent("vale0", "ir", 1, 0);
    let rx = spawn(v.cfg(&["-i", &r, "-f", "rxseq", "-n", "100"]), stop);
    let mut t = Template::new(&FrameSpec {
        af: Af::V4,
        src_mac: [2, 0, 0, 0, 0, 0x5e],
        dst_mac: BROADCAST,
        src: IpRange::parse("10.0.0.1", Af::V4).unwrap(),
        dst: IpRange::parse("10.1.0.1", Af::V4).unwrap(),
        size: 60,
        virt_header: 0,
        indirect_payload: false,
    })
    .unwrap();
    // 0..99 with: 10 missing (gap), 20 twice (duplicate), 41 before 40
    // (reordering), a flipped payload byte in 30 (corrupt).
    let mut order: Vec<u32> = Vec::new();
    for s in 0..100u32 {
        match s {
            10 => {}
            20 => order.extend([20, 20]),
            40 => order.extend([41, 40]),
            41 => {}
            s => order.push(s),
        }
    }
    let frames: Vec<Vec<u8>> = order
        .iter()
        .map(|&s| {
            assert!(seq::stamp(&mut t, s));
            let mut f = t.frame().to_vec();
            if s == 30 {
                f[50] ^= 0x04;
            }
            f
        })
        .collect();
    let p = NmPort::open_with(&v.sock, "vale0:s", NmreqRegister::default()).unwrap();
    send_all(&p, &frames);
    let t0 = Instant::now();
    while !rx.is_finished() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "rxseq did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let rx = rx.join().unwrap();
    assert!(!rx.ok(), "errors must make rxseq fail");
    let s = rx.seq.expect("report");
    assert_eq!(s.frames, order.len() as u64);
    // The gap at 10 is counted, not an error; 40's late arrival is an error
    // and not lost.
    assert_eq!(s.lost, 1, "{s:?}");
    assert_eq!(
        s.gap_list[0],
        Gap {
            first: 10,
            count: 1
        }
    );
    assert_eq!(
        (s.duplicates, s.reordered, s.corrupt),
        (1, 1, 1),
        "{:?}",
        s.errors
    );
    let find = |k: ErrorKind| s.errors.iter().find(|e| e.kind == k).unwrap();
    assert_eq!(find(ErrorKind::Duplicate).seq, Some(20));
    assert_eq!(find(ErrorKind::Reordered).seq, Some(40));
    let c = find(ErrorKind::Corrupt);
    assert_eq!(c.seq, Some(30));
    assert!(c.detail.contains("checksum"), "{}", c.detail);
    assert_eq!(v.drops(&r), 0);
}

#[test]
fn several_threads_one_ring_each_balance() {
    let v = start("threads");
    let n = 50_000u64;
    let stop = leak_flag();
    let m = v.persistent("vale0", "tm", 2, 0);
    let nn = v.persistent("vale0", "tn", 2, 0);
    let rx = spawn(
        v.cfg(&["-i", &nn, "-f", "rx", "-p", "2", "-a", "0", "-c", "0"]),
        stop,
    );
    let tx = pkt_gen::run::run(
        &v.cfg(&[
            "-i",
            &m,
            "-f",
            "tx",
            "-n",
            &n.to_string(),
            "-p",
            "2",
            "-a",
            "0",
            "-c",
            "0",
        ]),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(tx.ok(), "{tx:?}");
    assert_eq!(tx.ctrs.pkts, n, "each of 2 threads sends n/2");
    let t0 = Instant::now();
    while v.stat(&nn, "out_packets") + v.stat(&nn, "drop_dst_full") < n {
        assert!(t0.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let rx = rx.join().unwrap();
    assert!(rx.ok(), "{rx:?}");
    assert_eq!(v.stat(&m, "in_packets"), n);
    assert_eq!(rx.ctrs.pkts + v.stat(&nn, "drop_dst_full"), n);
}

#[test]
fn txseq_to_rxseq_over_a_pipe_is_exact() {
    let v = start("pipe");
    // A pipe never drops: the sender waits for the other end's room.
    let n = 50_000u64;
    let ns = n.to_string();
    let stop = leak_flag();
    let rx = spawn(v.cfg(&["-i", "vale0:pp}3", "-f", "rxseq", "-n", &ns]), stop);
    let tx = pkt_gen::run::run(
        &v.cfg(&["-i", "vale0:pp{3", "-f", "txseq", "-n", &ns, "-l", "1500"]),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(tx.ok(), "{tx:?}");
    let t0 = Instant::now();
    while !rx.is_finished() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "rxseq did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let rx = rx.join().unwrap();
    let s = rx.seq.clone().expect("rxseq report");
    assert!(rx.ok(), "{:?}", s.errors);
    assert_eq!(
        (s.frames, s.gaps, s.lost, s.error_count()),
        (n, 0, 0, 0),
        "{s:?}"
    );
}

/// Copy monitors (`/t`, `/r`, `/rt`) of two ports see exactly what the
/// ports send and receive, in order, chains included; the monitored ports
/// lose nothing; a monitor asks for its ring size like any registration.
#[test]
fn monitors_see_exactly_what_ports_send_and_receive() {
    let v = start("monitor");
    let n = 3000u64; // fits a 4096-slot monitor ring even if never read
    let ns = n.to_string();
    let stop = leak_flag();
    let a = v.persistent("vale0", "ma", 1, 0);
    let b = v.persistent("vale0", "mb", 1, 256);
    v.backpressure(&b);
    let rx = spawn(v.cfg(&["-i", &b, "-f", "rxseq", "-n", &ns]), stop);
    let mons: Vec<_> = [
        format!("{a}/t@conf:rx-slots=4096"),
        format!("{b}/r@conf:rx-slots=4096"),
        format!("{b}/rt@conf:rx-slots=4096"),
    ]
    .into_iter()
    .map(|m| spawn(v.cfg(&["-i", &m, "-f", "rxseq", "-n", &ns]), stop))
    .collect();
    // A monitor of what `a` receives sees nothing: nothing is sent to it.
    let quiet = v.open(&format!("{a}/r")).expect("monitor of a's RX");
    let tx = pkt_gen::run::run(
        &v.cfg(&[
            "-i",
            &a,
            "-f",
            "txseq",
            "-n",
            &ns,
            "-l",
            "3000",
            "-S",
            "02:00:00:00:00:0b",
        ]),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(tx.ok(), "{tx:?}");
    for (i, h) in std::iter::once(rx).chain(mons).enumerate() {
        let t0 = Instant::now();
        while !h.is_finished() {
            if t0.elapsed() > Duration::from_secs(60) {
                stop.store(true, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let r = h.join().unwrap();
        let s = r.seq.clone().expect("rxseq report");
        assert!(r.ok(), "reader {i}: {:?}", s.errors);
        assert_eq!(s.frames, n, "reader {i}");
        assert_eq!((s.gaps, s.lost, s.error_count()), (0, 0, 0), "{i}: {s:?}");
        assert_eq!(r.ctrs.bytes, n * 3000, "reader {i}");
    }
    quiet.rxsync().unwrap();
    let rx0 = quiet.rx_ring(0);
    assert_eq!(
        rx0.ring.tail(),
        rx0.ring.head(),
        "a/r got frames a never received"
    );
    assert_eq!(
        quiet.register_info().nr_rx_slots,
        1024,
        "the port's ring size by default"
    );
    assert_eq!(v.drops(&b), 0);
    assert_eq!(v.stat(&b, "out_packets"), n);
}

/// What a monitor may not be: of a port not on a switch (EINVAL, as
/// netmap's "not in netmap mode"), zero-copy of a port in a region of its
/// own (no room for the monitor's rings: ENOMEM), TX rings only.
#[test]
fn bad_monitor_registrations_are_refused() {
    let v = start("monitor-bad");
    let errno = |name: &str| match v.open(name) {
        Ok(_) => 0,
        Err(netmap::port::PortError::Refused { source, .. }) => source.raw_os_error().unwrap(),
        Err(e) => panic!("{name}: {e}"),
    };
    assert_eq!(errno("vale0:nobody/r"), libc::EINVAL);
    let _p = v.open("vale0:mp").unwrap();
    assert_eq!(errno("vale0:mp/rz"), libc::ENOMEM);
    assert_eq!(errno("vale0:mp/rT"), libc::EINVAL);
    assert_eq!(errno("vale0:mp-3/r"), libc::EINVAL);
    assert_eq!(errno("vale0:mp/t"), 0);
    // The monitor made no port.
    assert!(v.list().iter().all(|l| !l.contains('/')), "{:?}", v.list());
}

/// A persistent port detached and attached again keeps its monitors;
/// a port can have at most vale::MAX_MONITORS of them (EBUSY past it).
#[test]
fn a_monitor_follows_its_port_through_a_reattach() {
    let v = start("monitor-reattach");
    let p = v.persistent("vale0", "rs", 1, 0);
    let mon = v.open(&format!("{p}/t")).expect("monitor");
    let c = CtrlConn::connect(&v.sock).unwrap();
    let (r, _) = c
        .call(
            &Request::new(
                netmap::abi::NETMAP_REQ_VALE_DETACH,
                &p,
                &netmap::abi::NmreqValeDetach::default(),
            )
            .unwrap(),
        )
        .unwrap();
    assert_eq!(r.error, 0, "detach");
    let (r, _) = c
        .call(&Request::new(NETMAP_REQ_VALE_ATTACH, &p, &NmreqValeAttach::default()).unwrap())
        .unwrap();
    assert_eq!(r.error, 0, "attach");
    let tx = pkt_gen::run::run(
        &v.cfg(&["-i", &p, "-f", "tx", "-n", "10"]),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(tx.ok(), "{tx:?}");
    let mut got = Vec::new();
    let t0 = Instant::now();
    while got.len() < 10 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the monitor got {} of 10 frames after the re-attach",
            got.len()
        );
        mon.rxsync().unwrap();
        netmap::testing::recv_frames(&mon.rx_ring(0), &mut got).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    // Seven more fit, the ninth is refused.
    let more: Vec<NmPort> = (0..vale::MAX_MONITORS - 1)
        .map(|_| v.open(&format!("{p}/r")).expect("monitor"))
        .collect();
    match v.open(&format!("{p}/rt")) {
        Err(netmap::port::PortError::Refused { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EBUSY))
        }
        other => panic!("a ninth monitor: {:?}", other.map(|_| ())),
    }
    drop(more);
}
