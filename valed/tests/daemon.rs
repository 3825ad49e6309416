//! valed as a process: clients open VALE ports through its socket and
//! exchange frames; ports come and go with their clients; SIGTERM stops it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::start;
use netmap::abi::*;
use netmap::ctrl::{CtrlConn, Request, VALE_REQ_STATS};
use netmap::port::{NmPort, PortError};
use netmap::ring;
use netmap::sync::Dir;

fn frame(len: usize, seq: u32) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x00]);
    f.extend_from_slice(&seq.to_le_bytes());
    while f.len() < len {
        f.push((f.len() as u32 ^ seq) as u8);
    }
    f
}

fn send(p: &NmPort, frames: &[Vec<u8>]) -> usize {
    netmap::testing::send_frames(&p.tx_ring(0), frames).unwrap()
}

fn recv(p: &NmPort, out: &mut Vec<Vec<u8>>) {
    netmap::testing::recv_frames(&p.rx_ring(0), out).unwrap();
}

#[test]
fn two_clients_exchange_frames_byte_exact() {
    let v = start("xchg", &["--threads", "1"]);
    let a = v.open("vale0:a").unwrap();
    let b = v.open("vale0:b").unwrap();
    assert_eq!(
        a.register_info().nr_host_tx_rings,
        1,
        "VALE ports report a fake host ring"
    );
    let frames: Vec<Vec<u8>> = (0..3000)
        .map(|i| frame(60 + (i as usize * 13) % 1455, i))
        .collect();
    let mut got = Vec::new();
    let mut sent = 0;
    let t0 = Instant::now();
    while got.len() < frames.len() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "stalled at {} of {}",
            got.len(),
            frames.len()
        );
        if sent < frames.len() {
            sent += send(&a, &frames[sent..]);
        }
        match b.poll(false, true, Some(Duration::from_millis(100))) {
            Ok((Dir::Rx, _)) => recv(&b, &mut got),
            Ok(_) => {}
            Err(netmap::sync::SyncError::TimedOut(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got, frames);
    assert_eq!(v.list(), vec!["vale0:a".to_string(), "vale0:b".to_string()]);
    // Counters balance: all of a's frames reached b.
    let (e, r) = v.call(&Request::with_body(VALE_REQ_STATS, "vale0:b", Vec::new()).unwrap());
    assert_eq!(e, 0);
    let json = String::from_utf8(r.body).unwrap();
    assert!(json.contains("\"out_packets\":3000"), "{json}");
    drop(a);
    drop(b);
    // Ephemeral ports vanish with their clients.
    let t0 = Instant::now();
    while !v.list().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(v.stop().success());
}

#[test]
fn register_semantics() {
    let v = start("reg", &[]);
    let _a = v.open("vale1:a").unwrap();
    // A second registration of the same port: EBUSY, as netmap.
    let e = v.open("vale1:a").unwrap_err();
    assert!(e.to_string().contains("busy"), "{e}");
    // Rings of one port bound by different registrations, as pkt-gen -p
    // does; the same ring twice, or anything next to NR_EXCLUSIVE, is busy.
    let two = NmreqRegister {
        nr_tx_rings: 2,
        nr_rx_rings: 2,
        nr_mode: NR_REG_ONE_NIC,
        nr_ringid: 0,
        ..Default::default()
    };
    let r0 = NmPort::open_with(&v.sock, "vale1:mq", two).unwrap();
    let r1 = NmPort::open_with(
        &v.sock,
        "vale1:mq",
        NmreqRegister {
            nr_ringid: 1,
            ..two
        },
    )
    .unwrap();
    assert_eq!((r0.tx_rings(), r1.tx_rings()), (1, 1));
    assert!(NmPort::open_with(
        &v.sock,
        "vale1:mq",
        NmreqRegister {
            nr_ringid: 1,
            ..two
        }
    )
    .is_err());
    drop(r1);
    let ex = NmreqRegister {
        nr_flags: NR_EXCLUSIVE,
        nr_ringid: 1,
        ..two
    };
    assert!(
        NmPort::open_with(&v.sock, "vale1:mq", ex).is_err(),
        "another registration exists"
    );
    drop(r0);
    let t0 = Instant::now();
    while v.list().contains(&"vale1:mq".to_string()) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "port outlived its last registration"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // A failed registration leaves no port behind.
    let bad = NmreqRegister {
        nr_mode: NR_REG_ONE_NIC,
        nr_ringid: 5,
        ..Default::default()
    };
    assert!(NmPort::open_with(&v.sock, "vale1:ghost", bad).is_err());
    assert!(!v.list().contains(&"vale1:ghost".to_string()));
    // TX_RINGS_ONLY binds no RX ring.
    let txo = NmreqRegister {
        nr_flags: NR_TX_RINGS_ONLY,
        ..Default::default()
    };
    let p = NmPort::open_with(&v.sock, "vale1:txonly", txo).unwrap();
    assert_eq!((p.tx_rings(), p.rx_rings()), (1, 0));
    drop(p);
    // A NIC name without NIC ports: ENXIO.
    let e = v.open("netmap:nonexistent0").unwrap_err();
    assert!(matches!(e, PortError::Refused { .. }), "{e}");
    // A header length on a port needs NR_ACCEPT_VNET_HDR.
    assert_eq!(
        v.call(&Request::new(NETMAP_REQ_VALE_NEWIF, "pers1", &NmreqValeNewif::default()).unwrap())
            .0,
        0
    );
    let hdr = NmreqPortHdr {
        nr_hdr_len: 12,
        ..Default::default()
    };
    assert_eq!(
        v.call(
            &Request::new(
                NETMAP_REQ_VALE_ATTACH,
                "vale1:pers1",
                &NmreqValeAttach::default()
            )
            .unwrap()
        )
        .0,
        0
    );
    assert_eq!(
        v.call(&Request::new(NETMAP_REQ_PORT_HDR_SET, "vale1:pers1", &hdr).unwrap())
            .0,
        0
    );
    let e = v.open("vale1:pers1").unwrap_err();
    assert!(e.to_string().contains("Input/output error"), "{e}");
    let ok = NmPort::open_with(
        &v.sock,
        "vale1:pers1",
        NmreqRegister {
            nr_flags: NR_ACCEPT_VNET_HDR,
            ..Default::default()
        },
    );
    assert!(ok.is_ok());
    drop(ok);
    // PORT_INFO_GET and POOLS_INFO_GET describe the region exactly.
    let (e, r) = v.call(
        &Request::new(
            NETMAP_REQ_POOLS_INFO_GET,
            "vale1:a",
            &NmreqPoolsInfo::default(),
        )
        .unwrap(),
    );
    assert_eq!(e, 0);
    let p: NmreqPoolsInfo = r.body_as().unwrap();
    assert_eq!(p.nr_memsize, _a.register_info().nr_memsize);
    assert!(p.nr_buf_pool_objtotal >= 2 + 2 * 1024);
    // Unknown option: refused through nro_status.
    let mut req = Request::new(
        NETMAP_REQ_PORT_INFO_GET,
        "vale1:a",
        &NmreqPortInfoGet::default(),
    )
    .unwrap();
    req.options.push(netmap::ctrl::ReqOption::new(
        NETMAP_REQ_OPT_OFFSETS,
        vec![0; 32],
    ));
    let (e, r) = v.call(&req);
    assert_eq!(e, libc::EOPNOTSUPP);
    assert_eq!(r.options[0].status, libc::EOPNOTSUPP as u32);
}

#[test]
fn persistent_port_cycle_does_not_get_stuck() {
    let v = start("cycle", &[]);
    let rounds = 10_000;
    for i in 0..rounds {
        let call = |t: u16, name: &str, body: &dyn Fn(&str) -> Request| {
            let (e, _) = v.call(&body(name));
            assert_eq!(e, 0, "round {i}: request {t} on {name}");
        };
        call(NETMAP_REQ_VALE_NEWIF, "cyc0", &|n| {
            Request::new(NETMAP_REQ_VALE_NEWIF, n, &NmreqValeNewif::default()).unwrap()
        });
        call(NETMAP_REQ_VALE_ATTACH, "vale2:cyc0", &|n| {
            Request::new(NETMAP_REQ_VALE_ATTACH, n, &NmreqValeAttach::default()).unwrap()
        });
        let p = v.open("vale2:cyc0").unwrap();
        drop(p);
        // The port is free again once valed saw the close.
        let t0 = Instant::now();
        loop {
            let (e, _) = v.call(
                &Request::new(
                    NETMAP_REQ_VALE_DETACH,
                    "vale2:cyc0",
                    &NmreqValeDetach::default(),
                )
                .unwrap(),
            );
            if e == 0 {
                break;
            }
            assert_eq!(e, libc::EBUSY, "round {i}");
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "round {i}: detach stays busy"
            );
            std::thread::yield_now();
        }
        call(NETMAP_REQ_VALE_DELIF, "cyc0", &|n| {
            Request::with_body(NETMAP_REQ_VALE_DELIF, n, Vec::new()).unwrap()
        });
    }
    assert!(v.list().is_empty());
}

#[test]
fn garbage_on_the_socket_gets_an_error_not_a_crash() {
    let v = start("junk", &[]);
    let fd = netmap::sys::seqpacket_connect(&v.sock).unwrap();
    for junk in [
        &b""[..],
        b"x",
        &[0u8; 88],
        &[0xffu8; 4096],
        &[14, 0, 1, 0, 0, 0, 0, 0],
    ] {
        if junk.is_empty() {
            continue;
        }
        netmap::sys::send_with_fds(&fd, junk, &[] as &[std::os::fd::OwnedFd]).unwrap();
        let mut buf = [0u8; 4096];
        let (n, _) = netmap::sys::recv_with_fds(&fd, &mut buf).unwrap();
        let reply = netmap::ctrl::Reply::decode(&buf[..n]).unwrap();
        assert_ne!(reply.error, 0);
    }
    // valed still serves others.
    assert!(v.open("vale3:ok").is_ok());
    let _ = Path::new("");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Child role: opens a port and sends until killed.
#[test]
fn child_sender() {
    let Ok(sock) = std::env::var("VALED_TEST_SOCK") else {
        return;
    };
    let p = NmPort::open_with(Path::new(&sock), "vale4:victim", NmreqRegister::default()).unwrap();
    println!("ready");
    let frames: Vec<Vec<u8>> = (0..64).map(|i| frame(60, i)).collect();
    loop {
        send(&p, &frames);
        let _ = p.poll(true, false, Some(Duration::from_millis(10)));
    }
}

#[test]
fn killed_client_is_reclaimed_and_others_keep_flowing() {
    use std::io::BufRead;
    let v = start("kill", &["--threads", "2"]);
    let x = v.open("vale4:x").unwrap();
    let y = v.open("vale4:y").unwrap();
    // Let valed close the connections start() and list() used.
    v.list();
    std::thread::sleep(Duration::from_millis(200));
    let base_fds = open_fds(v.child.id());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_sender", "--nocapture", "--test-threads=1"])
        .env("VALED_TEST_SOCK", &v.sock)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    while !line.contains("ready") {
        line.clear();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
    }
    assert!(v.list().contains(&"vale4:victim".to_string()));
    std::thread::sleep(Duration::from_millis(100));
    child.kill().unwrap();
    child.wait().unwrap();
    let t0 = Instant::now();
    while v.list().contains(&"vale4:victim".to_string()) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "killed client's port not reclaimed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // x and y still exchange frames (y also got the victim's broadcasts:
    // drain them first).
    let mut junk = Vec::new();
    recv(&y, &mut junk);
    let frames: Vec<Vec<u8>> = (0..500).map(|i| frame(100, 1_000_000 + i)).collect();
    let mut got = Vec::new();
    let mut sent = 0;
    let t0 = Instant::now();
    while got.len() < frames.len() {
        assert!(t0.elapsed() < Duration::from_secs(20));
        if sent < frames.len() {
            sent += send(&x, &frames[sent..]);
        }
        let _ = y.poll(false, true, Some(Duration::from_millis(50)));
        recv(&y, &mut got);
        got.retain(|f| u32::from_le_bytes(f[14..18].try_into().unwrap()) >= 1_000_000);
    }
    assert_eq!(got, frames);
    // No descriptor leaked in valed for the dead client.
    v.list();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(open_fds(v.child.id()), base_fds);
}

#[test]
fn many_clients_attach_and_leave() {
    let v = start("many", &["--threads", "2"]);
    std::thread::scope(|s| {
        for t in 0..4 {
            let v = &v;
            s.spawn(move || {
                for i in 0..25 {
                    let p = v.open(&format!("vale5:t{t}p{i}")).unwrap();
                    send(&p, &[frame(60, i)]);
                    drop(p);
                }
            });
        }
    });
    let t0 = Instant::now();
    while !v.list().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }
    // 8 switches x 254 ports are available: fill one switch completely.
    let ports: Vec<NmPort> = (0..254)
        .map(|i| {
            let req = NmreqRegister {
                nr_tx_slots: 64,
                nr_rx_slots: 64,
                ..Default::default()
            };
            NmPort::open_with(&v.sock, &format!("vale6:p{i}"), req).unwrap()
        })
        .collect();
    let req = NmreqRegister {
        nr_tx_slots: 64,
        nr_rx_slots: 64,
        ..Default::default()
    };
    let e = NmPort::open_with(&v.sock, "vale6:one_too_many", req).unwrap_err();
    assert!(matches!(e, PortError::Refused { .. }), "{e}");
    drop(ports);
}

#[test]
fn hostile_client_rings_are_counted_not_fatal() {
    let v = start("hostile", &[]);
    let a = v.open("vale7:a").unwrap();
    let b = v.open("vale7:b").unwrap();
    // buf_idx out of range and len over the buffer on TX.
    let tx = a.tx_ring(0);
    let r = &tx.ring;
    for (k, (idx, len)) in [(u32::MAX, 60u16), (3, 9000)].into_iter().enumerate() {
        let mut s = r.slot(k as u32);
        s.buf_idx = if idx == 3 { s.buf_idx } else { idx };
        s.len = len;
        r.set_slot(k as u32, s);
    }
    r.set_cur(2);
    r.set_head(2);
    tx.sync().unwrap();
    a.drain(Duration::from_secs(5)).unwrap();
    // head far outside the window: the ring is reset.
    // (Straight into the CSB: the client library refuses to publish it.)
    tx.csb.cur.store(5000, std::sync::atomic::Ordering::Relaxed);
    tx.csb
        .head
        .store(5000, std::sync::atomic::Ordering::Release);
    std::thread::sleep(Duration::from_millis(200));
    let (e, resp) = v.call(&Request::with_body(VALE_REQ_STATS, "vale7:a", Vec::new()).unwrap());
    assert_eq!(e, 0);
    let json = String::from_utf8(resp.body).unwrap();
    assert!(json.contains("\"drop_bad_slot\":2"), "{json}");
    // The memfd cannot be resized by a client that keeps it.
    let c = CtrlConn::connect(&v.sock).unwrap();
    let (reply, fds) = c
        .call(&Request::new(NETMAP_REQ_REGISTER, "vale7:c", &NmreqRegister::default()).unwrap())
        .unwrap();
    assert_eq!(reply.error, 0);
    let mem = std::fs::File::from(fds.into_iter().next().unwrap());
    assert_eq!(
        mem.set_len(4096).unwrap_err().raw_os_error(),
        Some(libc::EPERM)
    );
    // valed still forwards between good clients.
    let f = frame(60, 7);
    send(&b, std::slice::from_ref(&f));
    let _ = a.poll(false, true, Some(Duration::from_secs(2)));
    let mut got = Vec::new();
    recv(&a, &mut got);
    assert!(got.contains(&f));
}

#[test]
fn flows_spread_over_rx_rings_in_order() {
    let v = start("mq", &[]);
    let req = NmreqRegister {
        nr_rx_rings: 4,
        nr_tx_rings: 1,
        ..Default::default()
    };
    let m = NmPort::open_with(&v.sock, "vale8:m", req).unwrap();
    assert_eq!(m.rx_rings(), 4);
    let s = v.open("vale8:s").unwrap();
    // 8 flows (source MACs), 50 frames each, interleaved. Not IP (the
    // local experimental EtherType): a flow is its MAC pair.
    let frames: Vec<Vec<u8>> = (0..400u32)
        .map(|i| {
            let mut f = frame(64, i);
            f[11] = (i % 8) as u8;
            f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
            f
        })
        .collect();
    let mut per_ring: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 4];
    let mut sent = 0;
    let t0 = Instant::now();
    while per_ring.iter().map(Vec::len).sum::<usize>() < frames.len() {
        assert!(t0.elapsed() < Duration::from_secs(20));
        if sent < frames.len() {
            sent += send(&s, &frames[sent..]);
        }
        let _ = m.poll(false, true, Some(Duration::from_millis(50)));
        for (i, out) in per_ring.iter_mut().enumerate() {
            let rx = m.rx_ring(i);
            rx.sync().unwrap();
            let r = &rx.ring;
            let mut cur = r.cur();
            while cur != r.tail() {
                let sl = r.slot(cur);
                let mut b = vec![0u8; sl.len as usize];
                r.read_buf(sl.buf_idx, 0, &mut b).unwrap();
                out.push(b);
                cur = ring::next(cur, r.num_slots());
            }
            r.set_cur(cur);
            r.set_head(cur);
            rx.sync().unwrap();
        }
    }
    // Each flow lives on one ring, in order; more than one ring is used.
    let mut flow_ring = [usize::MAX; 8];
    for (i, out) in per_ring.iter().enumerate() {
        let mut last = [None::<u32>; 8];
        for f in out {
            let flow = f[11] as usize;
            assert!(
                flow_ring[flow] == usize::MAX || flow_ring[flow] == i,
                "flow {flow} on two rings"
            );
            flow_ring[flow] = i;
            let seq = u32::from_le_bytes(f[14..18].try_into().unwrap());
            assert!(last[flow].is_none_or(|l| l < seq), "flow {flow} reordered");
            last[flow] = Some(seq);
        }
    }
    let used: std::collections::HashSet<usize> = flow_ring.iter().copied().collect();
    assert!(used.len() > 1, "all flows on one ring: {flow_ring:?}");
}

/// valed with clients `vale9:<name>` on small rings (256 TX, 64 RX slots),
/// those in `bp` with backpressure on.
fn backpressure_bed(tag: &str, names: &[&str], bp: &[&str]) -> (common::Valed, Vec<NmPort>) {
    use netmap::ctrl::{
        ValePortConfig, VALE_PORT_BACKPRESSURE, VALE_REQ_PORT_CONFIG, VALE_SET_FLAGS,
    };
    let v = start(tag, &[]);
    let small = NmreqRegister {
        nr_tx_slots: 256,
        nr_rx_slots: 64,
        ..Default::default()
    };
    let ports = names
        .iter()
        .map(|n| NmPort::open_with(&v.sock, &format!("vale9:{n}"), small).unwrap())
        .collect();
    let cfg = ValePortConfig {
        flags: VALE_PORT_BACKPRESSURE,
        set: VALE_SET_FLAGS,
        ..Default::default()
    };
    for n in bp {
        let req = Request::new(VALE_REQ_PORT_CONFIG, &format!("vale9:{n}"), &cfg).unwrap();
        let (e, r) = v.call(&req);
        assert_eq!(e, 0);
        assert_eq!(
            r.body_as::<ValePortConfig>().unwrap().flags,
            VALE_PORT_BACKPRESSURE
        );
    }
    (v, ports)
}

/// Sends `frames` from `a` while `b` reads (polling 20 ms at a time) until
/// `b` has them all; panics after `limit` naming `why`.
fn pump(a: &NmPort, b: &NmPort, frames: &[Vec<u8>], limit: Duration, why: &str) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut sent = 0;
    let t0 = Instant::now();
    while got.len() < frames.len() {
        assert!(
            t0.elapsed() < limit,
            "{why}: stalled at {} of {}",
            got.len(),
            frames.len()
        );
        if sent < frames.len() {
            sent += send(a, &frames[sent..]);
        }
        let _ = b.poll(false, true, Some(Duration::from_millis(20)));
        recv(b, &mut got);
    }
    got
}

fn port_stats(v: &common::Valed, port: &str) -> String {
    let (_, r) = v.call(&Request::with_body(VALE_REQ_STATS, port, Vec::new()).unwrap());
    String::from_utf8(r.body).unwrap()
}

#[test]
fn backpressure_port_gets_everything_exactly() {
    let (v, p) = backpressure_bed("bp", &["a", "b"], &["b"]);
    let frames: Vec<Vec<u8>> = (0..20_000)
        .map(|i| frame(60 + (i as usize % 7) * 100, i))
        .collect();
    // A slow reader: a few frames at a time.
    let got = pump(&p[0], &p[1], &frames, Duration::from_secs(60), "b");
    assert_eq!(got, frames);
    let json = port_stats(&v, "vale9:b");
    assert!(json.contains("\"drop_dst_full\":0"), "{json}");
    assert!(json.contains("\"out_packets\":20000"), "{json}");
}

/// Three clients: `a` floods frames, `b` reads them, `c` never reads; `b`
/// and `c` have backpressure on (so `b` must get every frame). Once `c`
/// has held `a` for the engine's hold without making room, `a`'s frames
/// reach `b` anyway: all of them, in order, and `c`'s share is dropped and
/// counted. Without the bound, `a` would stay held for good once `c`'s
/// ring filled.
#[test]
fn a_silent_backpressure_port_stops_no_one_for_long() {
    let (v, p) = backpressure_bed("bp-silent", &["a", "b", "c"], &["b", "c"]);
    let frames: Vec<Vec<u8>> = (0..2000).map(|i| frame(60, i)).collect();
    let got = pump(
        &p[0],
        &p[1],
        &frames,
        Duration::from_secs(30),
        "b, held by c",
    );
    assert_eq!(got, frames);
    let json = port_stats(&v, "vale9:c");
    assert!(
        json.contains("\"out_packets\":63") || json.contains("\"out_packets\":64"),
        "{json}"
    );
    assert!(!json.contains("\"drop_dst_full\":0,"), "{json}");
}

#[test]
fn pipe_ends_exchange_frames_zero_copy() {
    let v = start("pipe", &[]);
    let m = v.open("vale0:p{1").unwrap();
    assert!(
        v.open("vale0:p{1").is_err(),
        "one registration per pipe end"
    );
    let s = v.open("vale0:p}1").unwrap();
    assert_eq!(
        m.register_info().nr_mem_id,
        s.register_info().nr_mem_id,
        "pipe ends share their region"
    );
    for (a, b, base) in [(&m, &s, 0u32), (&s, &m, 100_000)] {
        let frames: Vec<Vec<u8>> = (0..2000)
            .map(|i| frame(20 + (i as usize % 1500), base + i))
            .collect();
        let mut got = Vec::new();
        let mut sent = 0;
        let sent_bufs: Vec<u32> = (0..4).map(|i| a.tx_ring(0).ring.slot(i).buf_idx).collect();
        let mut checked = base != 0;
        let t0 = Instant::now();
        while got.len() < frames.len() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "stalled at {}",
                got.len()
            );
            if sent < frames.len() {
                sent += send(a, &frames[sent..]);
            }
            let _ = b.poll(false, true, Some(Duration::from_millis(50)));
            if got.is_empty() && base == 0 {
                // Zero copy: the first frames arrive in the sender's buffers.
                let rx = b.rx_ring(0);
                rx.sync().unwrap();
                if rx.ring.tail() >= 4 {
                    let recv_bufs: Vec<u32> = (0..4).map(|i| rx.ring.slot(i).buf_idx).collect();
                    assert_eq!(recv_bufs, sent_bufs);
                    checked = true;
                }
            }
            recv(b, &mut got);
        }
        // Frames shorter than an Ethernet header cross a pipe too.
        assert_eq!(got, frames);
        assert!(checked, "zero copy was not observed");
    }
    drop(m);
    drop(s);
    // Both ends closed: the pipe is gone and can be made again.
    std::thread::sleep(Duration::from_millis(100));
    let m2 = v.open("vale0:p{1").unwrap();
    drop(m2);
}

/// Backpressure on `ports`: nothing sent to them is dropped, the sender
/// waits.
fn backpressure(v: &common::Valed, ports: &[&str]) {
    use netmap::ctrl::{
        ValePortConfig, VALE_PORT_BACKPRESSURE, VALE_REQ_PORT_CONFIG, VALE_SET_FLAGS,
    };
    let cfg = ValePortConfig {
        flags: VALE_PORT_BACKPRESSURE,
        set: VALE_SET_FLAGS,
        ..Default::default()
    };
    for p in ports {
        let (e, _) = v.call(&Request::new(VALE_REQ_PORT_CONFIG, p, &cfg).unwrap());
        assert_eq!(e, 0, "backpressure on {p}");
    }
}

/// The errno of a refused open.
fn refused(r: Result<NmPort, PortError>) -> i32 {
    match r {
        Err(PortError::Refused { source, .. }) => source.raw_os_error().unwrap_or(0),
        Err(e) => panic!("not a refusal: {e}"),
        Ok(p) => panic!("{} opened", p.name()),
    }
}

/// Moves what `a` received into `b`'s TX ring by swapping buffers, as
/// netmap's bridge does between two ports in one region; the number moved.
fn bridge_swap(a: &NmPort, b: &NmPort, seen: &mut Vec<u32>) -> usize {
    let (rx, tx) = (a.rx_ring(0), b.tx_ring(0));
    rx.sync().unwrap();
    tx.sync().unwrap();
    let (r, t) = (&rx.ring, &tx.ring);
    let (mut i, mut j) = (r.cur(), t.cur());
    let mut moved = 0;
    while i != r.tail() && j != t.tail() {
        let (mut rs, mut ts) = (r.slot(i), t.slot(j));
        seen.push(rs.buf_idx);
        std::mem::swap(&mut rs.buf_idx, &mut ts.buf_idx);
        ts.len = rs.len;
        ts.flags = NS_BUF_CHANGED;
        rs.flags = NS_BUF_CHANGED;
        r.set_slot(i, rs);
        t.set_slot(j, ts);
        i = ring::next(i, r.num_slots());
        j = ring::next(j, t.num_slots());
        moved += 1;
    }
    r.set_head(i);
    r.set_cur(i);
    t.set_head(j);
    t.set_cur(j);
    tx.sync().unwrap();
    rx.sync().unwrap();
    moved
}

/// Ports in another port's memory (netmap's `@N`, `nr_mem_id`): `a@100`
/// on vale1 and `b@100` on vale2 share region 100, so a bridge between
/// them swaps buffers instead of copying (netmap's bridge checks that the
/// two ports have one memory), and frames from s on vale1 reach r on vale2
/// intact, in the buffers they arrived in. The region holds
/// `--mem-ports` ports; the errors are netmap's.
#[test]
fn ports_share_a_region_by_memory_id() {
    let v = start("mem-id", &["--mem-ports", "2"]);
    let s = v.open("vale1:s").unwrap();
    let a = v.open("vale1:a@100").unwrap();
    let b = v.open("vale2:b@100").unwrap();
    let r = v.open("vale2:r").unwrap();
    let (ia, ib) = (a.register_info(), b.register_info());
    assert_eq!((ia.nr_mem_id, ib.nr_mem_id), (100, 100));
    assert_eq!(ia.nr_memsize, ib.nr_memsize);
    let own = s.register_info().nr_mem_id;
    assert!(own >= 2 && own != 100, "s's own region: {own}");
    assert_ne!(r.register_info().nr_mem_id, own);
    backpressure(&v, &["vale1:a", "vale2:r"]);

    let frames: Vec<Vec<u8>> = (0..3000)
        .map(|i| frame(60 + (i as usize * 7) % 1400, i))
        .collect();
    let (mut got, mut sent, mut seen) = (Vec::new(), 0, Vec::new());
    let t0 = Instant::now();
    while got.len() < frames.len() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "stalled at {} of {}",
            got.len(),
            frames.len()
        );
        if sent < frames.len() {
            sent += send(&s, &frames[sent..]);
        }
        let _ = a.poll(false, true, Some(Duration::from_millis(5)));
        bridge_swap(&a, &b, &mut seen);
        let _ = r.poll(false, true, Some(Duration::from_millis(5)));
        recv(&r, &mut got);
    }
    assert_eq!(got, frames);
    // The buffers a received in went out of b's TX ring: they are the
    // region's, not copies.
    assert!(seen.len() >= frames.len());
    let nbufs = a.rx_ring(0).ring.nbufs();
    assert!(seen.iter().all(|&x| x >= 2 && x < nbufs));

    // An existing port: an id that names no region is EINVAL (netmap
    // looks the id up first); another that exists is ignored.
    let asked = |id: u16| NmreqRegister {
        nr_mem_id: id,
        ..Default::default()
    };
    assert_eq!(
        refused(NmPort::open_with(&v.sock, "vale1:s", asked(999))),
        libc::EINVAL
    );
    // A port's own region has no room for another (a full allocator).
    assert_eq!(
        refused(NmPort::open_with(&v.sock, "vale1:x", asked(own))),
        libc::ENOMEM
    );
    // Region 100 holds --mem-ports 2 ports.
    assert_eq!(refused(v.open("vale1:c@100")), libc::ENOMEM);
    // ATTACH with an id (`vale-ctl -a vale1:pp -m N`): none such is
    // EINVAL, another region than the port's EOPNOTSUPP, its own 0.
    let (e, r) =
        v.call(&Request::new(NETMAP_REQ_VALE_NEWIF, "pp", &NmreqValeNewif::default()).unwrap());
    assert_eq!(e, 0);
    let pp_mem = r.body_as::<NmreqValeNewif>().unwrap().nr_mem_id;
    let attach = |id: u16| {
        let mut b = NmreqValeAttach::default();
        b.reg.nr_mem_id = id;
        v.call(&Request::new(NETMAP_REQ_VALE_ATTACH, "vale1:pp", &b).unwrap())
            .0
    };
    assert_eq!(attach(999), libc::EINVAL);
    assert_eq!(attach(100), libc::EOPNOTSUPP);
    assert_eq!(attach(pp_mem), 0);
    // A pipe's region is not a port's.
    let pipe = v.open("vale1:p{1").unwrap();
    let pid = pipe.register_info().nr_mem_id;
    assert_eq!(
        refused(NmPort::open_with(&v.sock, "vale1:y", asked(pid))),
        libc::EINVAL
    );
    drop(pipe);
    // When a leaves, c fits, and gets none of the buffers b's ring holds.
    drop(a);
    let t0 = Instant::now();
    let c = loop {
        match v.open("vale1:c@100") {
            Ok(c) => break c,
            Err(_) if t0.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("c after a left: {e}"),
        }
    };
    assert_eq!(c.register_info().nr_mem_id, 100);
    let ring_bufs = |p: &NmPort| -> Vec<u32> {
        let (t, x) = (p.tx_ring(0), p.rx_ring(0));
        (0..t.ring.num_slots())
            .map(|i| t.ring.slot(i).buf_idx)
            .chain((0..x.ring.num_slots()).map(|i| x.ring.slot(i).buf_idx))
            .collect()
    };
    let b_bufs = ring_bufs(&b);
    for x in ring_bufs(&c) {
        assert!(!b_bufs.contains(&x), "buffer {x} in both b's and c's rings");
    }
    // Rings larger than the region's ring objects do not fit, though the
    // region has room for a port: ENOMEM.
    let q = v.open("vale1:q@300").unwrap();
    let big = NmreqRegister {
        nr_mem_id: 300,
        nr_tx_slots: 4096,
        ..Default::default()
    };
    assert_eq!(
        refused(NmPort::open_with(&v.sock, "vale1:d", big)),
        libc::ENOMEM
    );
    assert!(v.open("vale1:d@300").is_ok(), "a port of q's shape fits");
    drop(q);
    // The region goes with its last port; the id then makes a new one,
    // shaped by its new first port.
    let size100 = b.register_info().nr_memsize;
    drop(c);
    drop(b);
    let t0 = Instant::now();
    while v
        .list()
        .iter()
        .any(|l| l.contains("vale2:b") || l.contains("vale1:c"))
    {
        assert!(t0.elapsed() < Duration::from_secs(5), "b and c stay");
        std::thread::sleep(Duration::from_millis(20));
    }
    let wide = NmreqRegister {
        nr_mem_id: 100,
        nr_tx_rings: 2,
        nr_rx_rings: 2,
        ..Default::default()
    };
    let again = NmPort::open_with(&v.sock, "vale1:e", wide).unwrap();
    assert_eq!(again.register_info().nr_mem_id, 100);
    assert_ne!(again.register_info().nr_memsize, size100, "a new region");
}

/// As `recv`, with the buffer index each frame arrived in.
fn recv_bufs(p: &NmPort, out: &mut Vec<(u32, Vec<u8>)>) {
    let rx = p.rx_ring(0);
    rx.sync().unwrap();
    let r = &rx.ring;
    let mut cur = r.cur();
    while cur != r.tail() {
        let s = r.slot(cur);
        let mut b = vec![0u8; s.len as usize];
        r.read_buf(s.buf_idx, 0, &mut b).unwrap();
        out.push((s.buf_idx, b));
        cur = ring::next(cur, r.num_slots());
    }
    r.set_cur(cur);
    r.set_head(cur);
    rx.sync().unwrap();
}

/// Zero-copy monitors (netmap's `/z`, both directions): their rings are
/// in the monitored port's region, and the slots the port is done with
/// trade buffers with them. The monitor gets every frame a sends, in the
/// very buffer a wrote it in, and what a received once a released it
/// (seen when the switch next delivers to a); a's traffic is exact
/// throughout. A port in a region of its own has no room (ENOMEM); a ring
/// takes one zero-copy monitor (EBUSY).
#[test]
fn zero_copy_monitors_get_the_ports_own_buffers() {
    let v = start("zmon", &[]);
    let a = v.open("vale1:a@100").unwrap();
    let r = v.open("vale1:r").unwrap();
    backpressure(&v, &["vale1:a", "vale1:r"]);
    assert_eq!(refused(v.open("vale1:r/tz")), libc::ENOMEM);
    assert_eq!(refused(v.open("vale1:nosuch/tz")), libc::EINVAL);
    // `/z` watches both directions, as netmap's; one per ring.
    let zt = v.open("vale1:a/z").unwrap();
    assert_eq!(zt.register_info().nr_mem_id, 100);
    assert_eq!(refused(v.open("vale1:a/tz")), libc::EBUSY);
    assert_eq!(refused(v.open("vale1:a/rz")), libc::EBUSY);
    let zr = &zt;

    // TX: a -> r, every frame to the monitor in a's own buffer.
    let n = 3000usize;
    let frames: Vec<Vec<u8>> = (0..n as u32)
        .map(|i| frame(60 + (i as usize * 13) % 1400, i))
        .collect();
    let (mut sent, mut sent_bufs, mut got, mut mon) = (0, Vec::new(), Vec::new(), Vec::new());
    let t0 = Instant::now();
    while got.len() < n || mon.len() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "stalled: r {} monitor {} of {n}",
            got.len(),
            mon.len()
        );
        recv_bufs(&zt, &mut mon);
        recv(&r, &mut got);
        // At most half a monitor ring in flight: a monitor that is full
        // drops, by design, and this test counts every frame.
        if sent < n && sent.saturating_sub(mon.len()) < 512 {
            // The buffers of the slots the frames go into, read while the
            // slots are still ours (once sent, they trade with the monitor).
            let tx = a.tx_ring(0);
            tx.sync().unwrap();
            let (c, ns) = (tx.ring.cur(), tx.ring.num_slots());
            let free = ring::space(c, tx.ring.tail(), ns);
            let bufs: Vec<u32> = (0..free)
                .map(|j| tx.ring.slot(ring::advance(c, j, ns)).buf_idx)
                .collect();
            let k = send(&a, &frames[sent..]);
            sent_bufs.extend_from_slice(&bufs[..k]);
            sent += k;
        }
        let _ = zt.poll(false, true, Some(Duration::from_millis(2)));
    }
    assert!(got == frames, "r's frames differ");
    let (mon_bufs, mon_frames): (Vec<u32>, Vec<Vec<u8>>) = mon.into_iter().unzip();
    assert!(mon_frames == frames, "the TX monitor's frames differ");
    let first_diff = mon_bufs.iter().zip(&sent_bufs).position(|(m, s)| m != s);
    assert!(
        mon_bufs.len() == sent_bufs.len() && first_diff.is_none(),
        "the TX monitor did not get a's own buffers: first difference at {first_diff:?}"
    );

    // RX: r -> a; the monitor gets each frame once a has released it.
    let back: Vec<Vec<u8>> = (0..n as u32).map(|i| frame(200, 50_000 + i)).collect();
    let (mut sent, mut a_got, mut mon) = (0, Vec::new(), Vec::new());
    let t0 = Instant::now();
    while a_got.len() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "stalled at {}",
            a_got.len()
        );
        if sent < n && sent.saturating_sub(mon.len()) < 512 {
            let k = (n - sent).min((512 + mon.len()).saturating_sub(sent));
            sent += send(&r, &back[sent..sent + k]);
        }
        let _ = a.poll(false, true, Some(Duration::from_millis(2)));
        recv_bufs(&a, &mut a_got);
        recv_bufs(zr, &mut mon);
    }
    // With no more traffic, the monitor's own syncs make valed sweep a's
    // ring for the slots a released last.
    let t0 = Instant::now();
    while mon.len() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "monitor has {}",
            mon.len()
        );
        let _ = zr.poll(false, true, Some(Duration::from_millis(20)));
        recv_bufs(zr, &mut mon);
    }
    assert_eq!(mon.len(), n, "the monitor got more than a received");
    assert!(
        a_got.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>() == back,
        "a's frames differ"
    );
    let first_diff = mon[..n].iter().zip(&a_got).position(|(m, g)| m != g);
    assert!(
        first_diff.is_none(),
        "the RX monitor did not get a's frames in a's buffers: first difference at {first_diff:?}"
    );

    // The monitors go; a's rings keep working, on whatever buffers they
    // hold now.
    drop(zt);
    std::thread::sleep(Duration::from_millis(100));
    let more: Vec<Vec<u8>> = (0..500).map(|i| frame(100, 70_000 + i)).collect();
    let mut got = Vec::new();
    let mut sent = 0;
    let t0 = Instant::now();
    while got.len() < more.len() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "stalled at {}",
            got.len()
        );
        if sent < more.len() {
            sent += send(&a, &more[sent..]);
        }
        let _ = r.poll(false, true, Some(Duration::from_millis(5)));
        recv(&r, &mut got);
    }
    assert!(got == more, "a's frames after the monitors left differ");
    // The monitor's ring can be taken again.
    let z2 = v.open("vale1:a/z").unwrap();
    // The port goes; its monitor keeps region 100, which a port of that
    // id joins again (the monitor watched the old port, and sees nothing
    // more), and which counts while it lives.
    drop(a);
    let t0 = Instant::now();
    while v.list().iter().any(|l| l.contains("vale1:a")) {
        assert!(t0.elapsed() < Duration::from_secs(5), "a stays");
        std::thread::sleep(Duration::from_millis(20));
    }
    let a2 = v.open("vale1:a@100").unwrap();
    assert_eq!(a2.register_info().nr_memsize, z2.register_info().nr_memsize);
}
