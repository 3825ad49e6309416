//! What a registration holds in its port's region, from outside: a
//! registration that fails late gives its `netmap_if` back, a persistent
//! port's next client gets rings on the ring's own buffers (none its
//! predecessor swapped in), and the stats document stays JSON whatever a
//! port is called.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use netmap::abi::*;
use netmap::ctrl::{CtrlConn, Request, VALE_REQ_STATS};
use netmap::port::{NmPort, PortError};

/// A persistent port `name` with `slots`-slot rings, attached to `vale0`.
fn persistent(v: &common::Valed, name: &str, slots: u32) {
    let newif = NmreqValeNewif {
        nr_tx_slots: slots,
        nr_rx_slots: slots,
        ..Default::default()
    };
    let (e, _) = v.call(&Request::new(NETMAP_REQ_VALE_NEWIF, name, &newif).unwrap());
    assert_eq!(e, 0, "NEWIF {name}");
    let (e, _) = v.call(
        &Request::new(
            NETMAP_REQ_VALE_ATTACH,
            &format!("vale0:{name}"),
            &NmreqValeAttach::default(),
        )
        .unwrap(),
    );
    assert_eq!(e, 0, "ATTACH {name}");
}

/// Opens `name` with `extra` extra buffers, retrying while valed has not
/// yet taken back the rings of a client that just closed (EBUSY).
fn open_when_free(v: &common::Valed, name: &str, extra: u32) -> Result<NmPort, PortError> {
    let t0 = Instant::now();
    loop {
        let req = NmreqRegister {
            nr_extra_bufs: extra,
            ..Default::default()
        };
        match NmPort::open_with(&v.sock, name, req) {
            Err(PortError::Refused { source, .. })
                if source.raw_os_error() == Some(libc::EBUSY)
                    && t0.elapsed() < Duration::from_secs(5) =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// Descriptors valed has open.
fn open_fds(pid: u32) -> BTreeSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// valed's hard limit on descriptors.
fn hard_nofile(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(4).unwrap().to_string()
}

/// Sets valed's soft limit on descriptors (the hard one stays).
fn soft_nofile(pid: u32, soft: &str) {
    let st = std::process::Command::new("prlimit")
        .args([&format!("--pid={pid}"), &format!("--nofile={soft}:")])
        .status()
        .expect("prlimit (util-linux)");
    assert!(st.success());
}

/// REGISTERs that fail after the `netmap_if` was allocated (valed out of
/// descriptors while it shares the region and CSB), more of them than the
/// port has `netmap_if`s (two: one TX and one RX ring), leave the port
/// registrable. Each descriptor count from none to enough is tried three
/// times, so every failure point of a registration is reached.
#[test]
fn failed_registrations_do_not_use_up_a_port() {
    let v = common::start("own-leak", &[]);
    persistent(&v, "pl", 64);
    let pid = v.child.id();
    let hard = hard_nofile(pid);
    let c = CtrlConn::connect(&v.sock).unwrap();
    // The connection is accepted (and its descriptor counted) before the
    // limit comes down.
    let list = Request::new(NETMAP_REQ_VALE_LIST, "", &NmreqValeList::default()).unwrap();
    c.call(&list).unwrap();
    let reg = Request::new(NETMAP_REQ_REGISTER, "vale0:pl", &NmreqRegister::default()).unwrap();
    let mut errors = Vec::new();
    'counts: for free in 0..16 {
        let open = open_fds(pid);
        // With the limit at the free-th unused number, exactly `free`
        // descriptors can be made.
        let limit = (0u64..).filter(|n| !open.contains(n)).nth(free).unwrap();
        soft_nofile(pid, &limit.to_string());
        for _ in 0..3 {
            let (r, fds) = c.call(&reg).unwrap();
            errors.push((free, r.error));
            if r.error == 0 {
                drop(fds);
                soft_nofile(pid, &hard);
                break 'counts;
            }
        }
        soft_nofile(pid, &hard);
    }
    drop(c);
    assert!(
        errors.iter().any(|(_, e)| *e == libc::EMFILE),
        "no registration failed while sharing descriptors: {errors:?}"
    );
    assert_eq!(errors.last().map(|e| e.1), Some(0), "{errors:?}");
    for _ in 0..3 {
        let p =
            open_when_free(&v, "vale0:pl", 0).unwrap_or_else(|e| panic!("after {errors:?}: {e}"));
        drop(p);
    }
}

const MARKER: &[u8] = b"client 1 was here";
/// Where in a buffer: past the link word an extra-buffer list keeps at 0.
const MARKER_AT: usize = 16;

/// Client 1 of a persistent port swaps extra buffers into its TX and RX
/// slots (zero copy, as netmap applications do), writes a marker in them
/// and exits; client 2 of the same port finds every slot on a distinct,
/// valid buffer, none of them holding the marker, and extra buffers of
/// its own that no slot names.
#[test]
fn a_persistent_ports_next_client_gets_fresh_slots() {
    let v = common::start("own-fresh", &[]);
    persistent(&v, "pp", 64);
    let c1 = open_when_free(&v, "vale0:pp", 16).unwrap();
    let (tx, rx) = (c1.tx_ring(0).ring, c1.rx_ring(0).ring);
    let nifp = c1.register_info().nr_offset as usize;
    let mut extra = Vec::new();
    let mut b = c1.nifp().bufs_head();
    while b != 0 {
        extra.push(b);
        b = c1.map().read(tx.buf_offset(b).unwrap()).unwrap();
    }
    assert_eq!(extra.len(), 16);
    // Half into TX slots, half into RX slots; what they held goes on the
    // list, as an honest application keeps it.
    let mut list = Vec::new();
    for (k, &e) in extra.iter().enumerate() {
        let (ring, i) = if k % 2 == 0 { (&tx, k) } else { (&rx, 20 + k) };
        let mut s = ring.slot(i as u32);
        list.push(s.buf_idx);
        s.buf_idx = e;
        s.flags |= NS_BUF_CHANGED;
        ring.set_slot(i as u32, s);
        ring.write_buf(e, MARKER_AT, MARKER).unwrap();
    }
    c1.map().write(nifp + 32, list[0]).unwrap();
    for (k, &x) in list.iter().enumerate() {
        let next = list.get(k + 1).copied().unwrap_or(0);
        c1.map().write(tx.buf_offset(x).unwrap(), next).unwrap();
    }
    drop(c1);

    let c2 = open_when_free(&v, "vale0:pp", 16).unwrap();
    let (tx, rx) = (c2.tx_ring(0).ring, c2.rx_ring(0).ring);
    let mut seen = HashSet::new();
    for ring in [&tx, &rx] {
        assert_eq!((ring.head(), ring.cur()), (0, 0));
        for i in 0..ring.num_slots() {
            let s = ring.slot(i);
            assert!(
                (2..ring.nbufs()).contains(&s.buf_idx),
                "slot {i}: buffer {}",
                s.buf_idx
            );
            assert!(seen.insert(s.buf_idx), "buffer {} in two slots", s.buf_idx);
            let mut head = vec![0; MARKER.len()];
            ring.read_buf(s.buf_idx, MARKER_AT, &mut head).unwrap();
            assert_ne!(
                head, MARKER,
                "slot {i} holds client 1's buffer {}",
                s.buf_idx
            );
        }
    }
    let mut b = c2.nifp().bufs_head();
    let mut n = 0;
    while b != 0 {
        assert!(seen.insert(b), "extra buffer {b} also in a slot or twice");
        b = c2.map().read(tx.buf_offset(b).unwrap()).unwrap();
        n += 1;
    }
    assert_eq!(n, 16);
}

/// Port names may hold `"` and `\`: the stats document is still JSON, and
/// gives the names back.
#[test]
fn stats_json_round_trips_hostile_names() {
    let v = common::start("own-json", &[]);
    let names = ["vale0:q\"uo\\te", "vale0:\\\"", "vale0:a'b\"]:,"];
    let ports: Vec<NmPort> = names
        .iter()
        .map(|n| open_when_free(&v, n, 0).unwrap_or_else(|e| panic!("{n}: {e}")))
        .collect();
    let (e, r) = v.call(&Request::with_body(VALE_REQ_STATS, "", Vec::new()).unwrap());
    assert_eq!(e, 0);
    let text = String::from_utf8(r.body).unwrap();
    let doc: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let got: Vec<&str> = doc["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["switch"], "vale0");
            assert!(p["in_packets"].is_u64() && p["drop_no_dst"].is_u64(), "{p}");
            p["name"].as_str().unwrap()
        })
        .collect();
    let mut want = names.to_vec();
    want.sort_unstable();
    let mut got_sorted = got.clone();
    got_sorted.sort_unstable();
    assert_eq!(got_sorted, want, "{text}");
    // One port by its name.
    let (e, r) = v.call(&Request::with_body(VALE_REQ_STATS, names[0], Vec::new()).unwrap());
    assert_eq!(e, 0);
    let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(doc["ports"][0]["name"], names[0]);
    drop(ports);
}
