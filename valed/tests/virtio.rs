//! pkt-gen's own virtio-net driver (`virtio:SOCK`, the guest-driver
//! crate's vhost-user transport) on valed's VM ports: txseq in one
//! driver -> VM port -> VALE -> VM port -> rxseq in another, exact through
//! a backpressure port, both directions, with and without the vnet header,
//! mergeable buffers and EVENT_IDX; and a 64 KiB TSO frame that crosses
//! whole.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{leak_flag, pktgen_cfg, spawn, start, Valed};
use guest_driver::{DriverConfig, VirtioName};
use netmap::abi::NS_MOREFRAG;
use netmap::ctrl::{
    CtrlConn, Request, ValePortConfig, VALE_PORT_BACKPRESSURE, VALE_REQ_PORT_CONFIG,
    VALE_REQ_STATS, VALE_SET_FLAGS,
};
use netmap::ring;

fn valed(tag: &str) -> Valed {
    let dir = std::env::temp_dir().join(format!("valed-test-{}-{tag}", std::process::id()));
    let p = |n: &str| format!("{n}={}/{n}.sock,attach=vale0", dir.display());
    start(
        tag,
        &[
            "--threads",
            "1",
            "--vhost-user",
            &p("p0"),
            "--vhost-user",
            &p("p1"),
        ],
    )
}

fn stat(v: &Valed, port: &str, key: &str) -> u64 {
    let c = CtrlConn::connect(&v.sock).unwrap();
    let (r, _) = c
        .call(&Request::with_body(VALE_REQ_STATS, port, Vec::new()).unwrap())
        .unwrap();
    assert_eq!(r.error, 0, "stats of {port}");
    common::field(&String::from_utf8(r.req.body).unwrap(), key)
}

fn backpressure(v: &Valed, port: &str) {
    let bp = ValePortConfig {
        flags: VALE_PORT_BACKPRESSURE,
        set: VALE_SET_FLAGS,
        ..Default::default()
    };
    let c = CtrlConn::connect(&v.sock).unwrap();
    let (r, _) = c
        .call(&Request::new(VALE_REQ_PORT_CONFIG, port, &bp).unwrap())
        .unwrap();
    assert_eq!(r.error, 0, "backpressure on {port}");
}

/// txseq on `from` to rxseq on `to`, `n` frames of `len` bytes, every one
/// delivered in order.
fn exact(v: &Valed, from: &str, to: &str, opts: &str, hdr: &str, n: u64, len: usize) {
    let sock = |p: &str| format!("virtio:{}/{p}.sock{opts}", v.dir.0.display());
    let ns = n.to_string();
    let ls = len.to_string();
    let stop = leak_flag();
    let rx = spawn(
        pktgen_cfg(
            &v.sock,
            &["-i", &sock(to), "-f", "rxseq", "-n", &ns, "-H", hdr],
        ),
        stop,
    );
    let tx = pkt_gen::run::run(
        &pktgen_cfg(
            &v.sock,
            &[
                "-i",
                &sock(from),
                "-f",
                "txseq",
                "-n",
                &ns,
                "-l",
                &ls,
                "-H",
                hdr,
                "-S",
                "02:00:00:00:00:0a",
            ],
        ),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(tx.ok(), "{tx:?}");
    assert_eq!(tx.ctrs.pkts, n);
    let t0 = Instant::now();
    while !rx.is_finished() {
        if t0.elapsed() > Duration::from_secs(60) {
            stop.store(true, Ordering::Relaxed);
            panic!("rxseq did not finish: {:?}", rx.join().unwrap().seq);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rx = rx.join().unwrap();
    let s = rx.seq.clone().expect("rxseq report");
    assert!(rx.ok(), "{:?}", s.errors);
    assert_eq!(s.frames, n, "{from} -> {to} {opts} -H {hdr}: {s:?}");
    assert_eq!((s.gaps, s.lost, s.error_count()), (0, 0, 0), "{s:?}");
    // pkt-gen counts the bytes in the slots, the header included.
    let h: u64 = hdr.parse().unwrap();
    assert_eq!(rx.ctrs.bytes, n * (len as u64 + h));
}

/// Each combination of header, mergeable buffers and EVENT_IDX, both
/// directions, through VM ports with backpressure.
#[test]
fn txseq_to_rxseq_is_exact_between_two_virtio_drivers() {
    let v = valed("virtio-exact");
    backpressure(&v, "vale0:p0");
    backpressure(&v, "vale0:p1");
    let n = 20_000;
    // Plain frames fit one buffer; with the vnet header and mergeable
    // buffers a frame spans two slots (NS_MOREFRAG) both ways.
    for (opts, hdr, len) in [
        ("", "0", 1514),
        (",event_idx=0", "0", 60),
        (",mrg_rxbuf=1", "12", 3000),
        (",mrg_rxbuf=1,event_idx=0", "12", 3000),
        (",mrg_rxbuf=0", "12", 1500),
        (",mrg_rxbuf=0,event_idx=0", "12", 60),
    ] {
        let (in0, in1) = (
            stat(&v, "vale0:p0", "in_packets"),
            stat(&v, "vale0:p1", "in_packets"),
        );
        exact(&v, "p0", "p1", opts, hdr, n, len);
        exact(&v, "p1", "p0", opts, hdr, n, len);
        assert_eq!(
            stat(&v, "vale0:p0", "in_packets") - in0,
            n,
            "{opts} -H {hdr}"
        );
        assert_eq!(
            stat(&v, "vale0:p1", "in_packets") - in1,
            n,
            "{opts} -H {hdr}"
        );
    }
    for p in ["vale0:p0", "vale0:p1"] {
        assert_eq!(stat(&v, p, "drop_dst_full"), 0, "{p}");
        assert_eq!(stat(&v, p, "bad_chains"), 0, "{p}");
    }
}

/// A TCP/IPv4 frame of `len` bytes (headers included) from `src` to `dst`.
fn tcp_frame(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
    let tcp = &mut f[34..54];
    tcp[0..2].copy_from_slice(&1234u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18;
    for (i, b) in f[54..].iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    f
}

/// A 64 KiB TCP segment handed to the driver with a GSO header crosses
/// valed whole (both ends negotiate TSO and mergeable buffers) and arrives
/// byte for byte as one frame over several slots.
#[test]
fn a_64k_tso_frame_crosses_whole() {
    let v = valed("virtio-gso");
    backpressure(&v, "vale0:p1");
    let name = |p: &str| {
        VirtioName::parse(&format!("virtio:{}/{p}.sock", v.dir.0.display()))
            .unwrap()
            .unwrap()
    };
    let cfg = DriverConfig {
        hdr_len: 12,
        slots: 256,
        ..Default::default()
    };
    let a = guest_driver::open(&name("p0"), cfg).unwrap();
    let b = guest_driver::open(&name("p1"), cfg).unwrap();
    for d in [&a, &b] {
        let neg = d.negotiated();
        assert!(neg.mrg_rxbuf && neg.event_idx, "{neg:?}");
    }
    let (ma, mb) = ([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb]);
    let frame = tcp_frame(mb, ma, 65_000);
    // virtio_net_hdr_v1: NEEDS_CSUM, GSO_TCPV4, hdr_len 54, gso_size 1448,
    // csum_start 34, csum_offset 16.
    let mut hdr = [0u8; 12];
    hdr[0] = 1;
    hdr[1] = 1;
    hdr[2..4].copy_from_slice(&54u16.to_le_bytes());
    hdr[4..6].copy_from_slice(&1448u16.to_le_bytes());
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
    hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
    let mut bytes = hdr.to_vec();
    bytes.extend_from_slice(&frame);

    // A small frame from B first, so valed learns where B is.
    let hello = tcp_frame(ma, mb, 60);
    let mut h = [0u8; 12].to_vec();
    h.extend_from_slice(&hello);
    send(&b, &h);
    send(&a, &bytes);

    let t0 = Instant::now();
    let mut got: Vec<u8> = Vec::new();
    let rx = b.rx_ring(0).unwrap();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the frame did not arrive ({} bytes)",
            got.len()
        );
        b.rxsync(0).unwrap();
        let r = rx.ring;
        let mut cur = r.cur();
        let mut done = false;
        while cur != r.tail() {
            let s = r.slot(cur);
            let mut buf = vec![0u8; usize::from(s.len)];
            r.read_buf(s.buf_idx, 0, &mut buf).unwrap();
            got.extend_from_slice(&buf);
            cur = ring::next(cur, r.num_slots());
            if s.flags & NS_MOREFRAG == 0 {
                done = true;
                break;
            }
        }
        r.set_head(cur);
        r.set_cur(cur);
        if done {
            break;
        }
        b.wait(&[], &[0], Duration::from_millis(50)).unwrap();
    }
    assert_eq!(got.len(), bytes.len(), "one frame, header included");
    assert_eq!(got[12..], frame[..], "the payload arrives byte for byte");
    // GSO kept: the receiver is told it is a TCPv4 segment of 1448.
    assert_eq!(got[1], 1, "gso_type");
    assert_eq!(u16::from_le_bytes([got[4], got[5]]), 1448, "gso_size");
    let st = b.stats(0);
    assert!(st.rx_slots >= (bytes.len() as u64).div_ceil(2048), "{st:?}");
    assert_eq!(st.rx_violations, Default::default());
    assert_eq!(a.stats(0).tx_bad, 0);
}

/// Puts `bytes` in A's TX ring as one frame (NS_MOREFRAG across slots)
/// and syncs until the device has it.
fn send(d: &guest_driver::VirtioRings, bytes: &[u8]) {
    let tx = d.tx_ring(0).unwrap();
    let r = tx.ring;
    let size = r.buf_size() as usize;
    let mut cur = r.cur();
    let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
    assert!(ring::space(cur, r.tail(), r.num_slots()) as usize >= chunks.len());
    for (k, c) in chunks.iter().enumerate() {
        let mut s = r.slot(cur);
        r.write_buf(s.buf_idx, 0, c).unwrap();
        s.len = c.len() as u16;
        s.flags = if k + 1 < chunks.len() { NS_MOREFRAG } else { 0 };
        r.set_slot(cur, s);
        cur = ring::next(cur, r.num_slots());
    }
    r.set_head(cur);
    r.set_cur(cur);
    let t0 = Instant::now();
    loop {
        d.txsync(0).unwrap();
        if tx.drained() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "TX did not complete"
        );
        let _ = d.wait(&[0], &[], Duration::from_millis(20));
    }
}

/// DPDK's vhost library as the other end: testpmd with two `net_vhost`
/// ports in io forwarding is the switch, pkt-gen's virtio driver on both
/// sockets. txseq at a rate the receiver keeps up with (testpmd drops
/// when a ring is full, having no backpressure) arrives exact at rxseq, with plain
/// frames and with the vnet header and mergeable buffers.
#[test]
fn testpmd_net_vhost_as_the_other_end() {
    if std::process::Command::new("dpdk-testpmd")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_err()
    {
        panic!("dpdk-testpmd not found: scripts/setup-debian.sh installs dpdk-dev");
    }
    let dir = common::TempDir(
        std::env::temp_dir().join(format!("virtio-testpmd-{}", std::process::id())),
    );
    std::fs::create_dir_all(&dir.0).unwrap();
    // valed refuses socket directories others can write, whatever the umask.
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sock = |p: &str| dir.0.join(format!("{p}.sock"));
    let mut pmd = std::process::Command::new("timeout")
        .args([
            "-s",
            "INT",
            "120",
            "dpdk-testpmd",
            "--no-pci",
            "--no-huge",
            "-m",
            "1024",
        ])
        .args(["--file-prefix", &format!("virtio-{}", std::process::id())])
        .args(["--lcores", "0@0,1@1"])
        .arg("--vdev")
        .arg(format!("net_vhost0,iface={},queues=1", sock("a").display()))
        .arg("--vdev")
        .arg(format!("net_vhost1,iface={},queues=1", sock("b").display()))
        .args([
            "--",
            "--forward-mode=io",
            "--nb-cores=1",
            "-a",
            "--max-pkt-len=9000",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run testpmd");
    let t0 = Instant::now();
    while !(sock("a").exists() && sock("b").exists()) {
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "testpmd made no sockets"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The test build is unoptimised: rxseq checks every byte, slowly
    // enough that a faster sender would overrun its 512 RX chains. At
    // 2500 frames/s they also cover 200 ms of the receiver descheduled
    // (10000/s lost frames once with the 2-core machine busy, 5000/s
    // once in a CI rehearsal: a gap of 81 frames, testpmd dropping on a
    // full ring).
    let n = 5_000u64;
    let ns = n.to_string();
    for (opts, hdr, len) in [("", "0", 1514), (",mrg_rxbuf=1", "12", 1500), ("", "0", 60)] {
        let name = |p: &str| format!("virtio:{}{opts}", sock(p).display());
        let stop = leak_flag();
        // No valed here: the control socket is never used.
        let nowhere = dir.0.join("no-valed.sock");
        let rx = spawn(
            pktgen_cfg(
                &nowhere,
                &["-i", &name("b"), "-f", "rxseq", "-n", &ns, "-H", hdr],
            ),
            stop,
        );
        let tx = pkt_gen::run::run(
            &pktgen_cfg(
                &nowhere,
                &[
                    "-i",
                    &name("a"),
                    "-f",
                    "txseq",
                    "-n",
                    &ns,
                    "-l",
                    &len.to_string(),
                    "-H",
                    hdr,
                    "-R",
                    "2500",
                ],
            ),
            &AtomicBool::new(false),
        )
        .unwrap();
        assert!(tx.ok(), "{tx:?}");
        let t0 = Instant::now();
        while !rx.is_finished() {
            if t0.elapsed() > Duration::from_secs(30) {
                stop.store(true, Ordering::Relaxed);
                panic!(
                    "rxseq did not finish ({opts} -H {hdr}): {:?}",
                    rx.join().unwrap().seq
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let rx = rx.join().unwrap();
        let s = rx.seq.clone().expect("rxseq report");
        assert!(rx.ok(), "{:?}", s.errors);
        assert_eq!(
            (s.frames, s.gaps, s.error_count()),
            (n, 0, 0),
            "{opts} -H {hdr}: {s:?}"
        );
    }
    drop(pmd.stdin.take());
    let _ = std::process::Command::new("kill")
        .args(["-INT", &pmd.id().to_string()])
        .status();
    let _ = pmd.wait();
}
