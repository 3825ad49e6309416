//! The control plane under a stateful fuzzer: sequences of requests from
//! four connections of two uids (neither root), and connections closing
//! between them, against one registry. Run by `fuzz/fuzz_targets/control.rs`;
//! its corpus is replayed by `valed/tests/fuzz_control.rs`.
//!
//! Input: a sequence of operations. Byte `op`: connection `op & 3` (uid
//! 1000 for 0 and 2, 1001 for 1 and 3); `op >> 2` is 63 to close that
//! connection (and open a fresh one in its place), else a request type
//! (`REQUESTS`). Then one byte picks the name (`NAMES`), and the body is the
//! next `size` bytes of that type's body (zero-padded when the input ends),
//! so most bodies decode and the requests reach the registry's checks.
//!
//! Checked on every answer: an errno in range, the answer's type the
//! request's, descriptors only on success. Checked at the end: after every
//! connection closed and every port the fuzzer made deleted, the registry
//! holds no port of either uid.

use std::mem::size_of;
use std::time::Duration;

use netmap::abi::{
    NmreqPoolsInfo, NmreqPortHdr, NmreqPortInfoGet, NmreqRegister, NmreqValeAttach,
    NmreqValeDetach, NmreqValeList, NmreqValeNewif, NETMAP_REQ_POOLS_INFO_GET,
    NETMAP_REQ_PORT_HDR_GET, NETMAP_REQ_PORT_HDR_SET, NETMAP_REQ_PORT_INFO_GET,
    NETMAP_REQ_REGISTER, NETMAP_REQ_VALE_ATTACH, NETMAP_REQ_VALE_DELIF, NETMAP_REQ_VALE_DETACH,
    NETMAP_REQ_VALE_LIST, NETMAP_REQ_VALE_NEWIF,
};
use netmap::ctrl::{
    Request, ValePortConfig, ValeSwitchConfig, ValeVhostNewif, VALE_REQ_METRICS,
    VALE_REQ_PORT_CONFIG, VALE_REQ_STATS, VALE_REQ_SWITCH_CONFIG, VALE_REQ_VHOST_NEWIF,
};

use crate::fwd::Forwarder;
use crate::state::{Conn, Quotas, Registry};

/// Request types and their body sizes.
const REQUESTS: &[(u16, usize)] = &[
    (NETMAP_REQ_REGISTER, size_of::<NmreqRegister>()),
    (NETMAP_REQ_PORT_INFO_GET, size_of::<NmreqPortInfoGet>()),
    (NETMAP_REQ_VALE_ATTACH, size_of::<NmreqValeAttach>()),
    (NETMAP_REQ_VALE_DETACH, size_of::<NmreqValeDetach>()),
    (NETMAP_REQ_VALE_LIST, size_of::<NmreqValeList>()),
    (NETMAP_REQ_PORT_HDR_SET, size_of::<NmreqPortHdr>()),
    (NETMAP_REQ_PORT_HDR_GET, size_of::<NmreqPortHdr>()),
    (NETMAP_REQ_VALE_NEWIF, size_of::<NmreqValeNewif>()),
    (NETMAP_REQ_VALE_DELIF, 0),
    (NETMAP_REQ_POOLS_INFO_GET, size_of::<NmreqPoolsInfo>()),
    (VALE_REQ_STATS, 0),
    (VALE_REQ_METRICS, 0),
    (VALE_REQ_PORT_CONFIG, size_of::<ValePortConfig>()),
    (VALE_REQ_VHOST_NEWIF, size_of::<ValeVhostNewif>()),
    (VALE_REQ_SWITCH_CONFIG, size_of::<ValeSwitchConfig>()),
];

/// Names the requests use: ports of two switches, a persistent port by
/// itself and on a switch, pipe ends, VM port names, and malformed ones.
const NAMES: &[&str] = &[
    "vale0:a",
    "vale0:b",
    "vale1:a",
    "vale1:c",
    "p1",
    "vale0:p1",
    "vale1:p1",
    "p2",
    "vale0:p2",
    "vale0:a{1",
    "vale0:a}1",
    "p1{2",
    "p1}2",
    "vm1",
    "vale0:vm1",
    "vale1:vm1",
    "vale0:",
    "vale0:a/r",
    "bad name",
    "vale0:a@3",
    "",
    "vale0",
    "vale63:z",
    "vale0:a-1",
];

const CLOSE: u8 = 63;

fn uid_of(slot: usize) -> u32 {
    1000 + (slot % 2) as u32
}

/// Runs one input (see the module's documentation). Panics on a broken
/// invariant.
pub fn control_sequence(data: &[u8]) {
    control_trace(data);
}

/// [`control_sequence`], returning each request's type, name and errno
/// (for tests that check a seed reaches what it is named for).
pub fn control_trace(data: &[u8]) -> Vec<(u16, String, i32)> {
    let mut trace = Vec::new();
    let dir = std::env::temp_dir().join(format!("vale-fuzz-control-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(dir.join("vhost"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fwd = Forwarder::start(0, None, Duration::ZERO, stop.clone()).expect("a forwarding thread");
    let mut reg = Registry::new(vec![fwd]);
    reg.quotas = Quotas {
        mem_bytes: 64 << 20,
        vhost_ports: 2,
        ports: 8,
        switches: 2,
        connections: 8,
    };
    reg.default_slots = 64;
    reg.vhost_dir = dir.join("vhost");
    let mut next_id = 1u64;
    let mut conn = |slot: usize| {
        next_id += 1;
        Conn {
            id: next_id,
            uid: uid_of(slot),
            reg: None,
        }
    };
    let mut conns: Vec<Conn> = (0..4).map(&mut conn).collect();
    let mut made: Vec<String> = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let op = data[i];
        i += 1;
        let slot = (op & 3) as usize;
        let kind = op >> 2;
        if kind == CLOSE {
            reg.unregister(&mut conns[slot]);
            conns[slot] = conn(slot);
            continue;
        }
        let (reqtype, size) = REQUESTS[kind as usize % REQUESTS.len()];
        let name = NAMES[*data.get(i).unwrap_or(&0) as usize % NAMES.len()];
        i += 1;
        let mut body = vec![0u8; size];
        let rest = data.get(i..).unwrap_or(&[]);
        let take = size.min(rest.len());
        body[..take].copy_from_slice(&rest[..take]);
        i += take;
        let Ok(req) = Request::with_body(reqtype, name, body) else {
            continue;
        };
        let (errno, answer, fds) = reg.handle(&mut conns[slot], &req);
        assert!((0..4096).contains(&errno), "errno {errno} for {req:?}");
        assert_eq!(answer.hdr.nr_reqtype, reqtype, "the answer's type");
        assert!(
            errno == 0 || fds.is_empty(),
            "descriptors with errno {errno}"
        );
        trace.push((reqtype, name.to_string(), errno));
        if errno == 0 && matches!(reqtype, NETMAP_REQ_VALE_NEWIF | VALE_REQ_VHOST_NEWIF) {
            made.push(name.to_string());
        }
    }
    for c in conns.iter_mut() {
        reg.unregister(c);
    }
    // Every connection is closed: what is still on a switch must be a
    // port a NEWIF made (persistent), never one a registration made.
    let mut root = Conn {
        id: 0,
        uid: 0,
        reg: None,
    };
    let mut at = NmreqValeList::default();
    loop {
        let list = Request::new(NETMAP_REQ_VALE_LIST, "", &at).expect("a list request");
        let (errno, answer, _) = reg.handle(&mut root, &list);
        if errno != 0 {
            assert_eq!(errno, libc::ENOENT, "listing");
            break;
        }
        let full = String::from_utf8_lossy(answer.name()).into_owned();
        let short = full.split_once(':').map_or(full.as_str(), |(_, p)| p);
        assert!(
            made.iter().any(|m| m == short || m == &full),
            "{full} outlived every connection, and no NEWIF made it (made: {made:?})"
        );
        at = answer.body_as().expect("a list body");
        at.nr_port_idx += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reg.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    trace
}
