//! Test helpers: a veth pair into a network namespace, and the ARP and
//! ICMP frames that make the namespace's stack answer. For this crate's
//! tests and valed's.

use std::process::Command;

/// The MAC the test frames come from.
pub const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0x77, 0, 1];

fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip {args:?} failed");
}

/// A namespace with one end of a veth pair (address 10.77.N.2/24, up) and
/// the other end here (up, no address); removed on drop.
#[derive(Debug)]
pub struct Veth {
    /// The namespace.
    pub ns: String,
    /// The veth end in this namespace.
    pub here: String,
    /// N in 10.77.N.0/24.
    pub subnet: u8,
}

impl Veth {
    /// A new pair; `tag` keeps concurrent tests apart.
    pub fn new(tag: &str) -> Veth {
        Veth::with_queues(tag, 1)
    }

    /// A new pair whose ends have `queues` receive and transmit queues.
    pub fn with_queues(tag: &str, queues: u32) -> Veth {
        let q = queues.to_string();
        let id = std::process::id() % 100_000;
        let ns = format!("vale-{tag}-{id}");
        let here = format!("v{tag}{id}");
        let there = format!("w{tag}{id}");
        let subnet = (id % 200) as u8 + 20;
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["netns", "add", &ns]);
        ip(&[
            "link",
            "add",
            &here,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            &there,
            "netns",
            &ns,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("10.77.{subnet}.2/24"),
            "dev",
            &there,
        ]);
        ip(&["-n", &ns, "link", "set", &there, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["link", "set", &here, "up"]);
        Veth { ns, here, subnet }
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        for args in [["netns", "del", &self.ns], ["link", "del", &self.here]] {
            let _ = Command::new("ip")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Whether the tests run as root (the namespace tests need it).
pub fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// An ARP request from [`OUR_MAC`], 10.77.`subnet`.1, for 10.77.`subnet`.2.
pub fn arp_request(subnet: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&[10, 77, subnet, 1]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[10, 77, subnet, 2]);
    f.resize(60, 0);
    f
}

/// The Internet checksum of `b`.
pub fn csum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// An ICMP echo request from 10.77.`subnet`.1 to .2, sequence `seq`.
pub fn echo_request(dst_mac: [u8; 6], subnet: u8, seq: u16) -> Vec<u8> {
    echo_request_id(dst_mac, subnet, 0x1234, seq)
}

/// [`echo_request`] with identifier `id` (a flow of its own).
pub fn echo_request_id(dst_mac: [u8; 6], subnet: u8, id: u16, seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0];
    icmp.extend_from_slice(&[0, 0]);
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(b"vale generic adapter");
    let c = csum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ipv4 = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
    ipv4.extend_from_slice(&[10, 77, subnet, 1, 10, 77, subnet, 2]);
    let total = (20 + icmp.len()) as u16;
    ipv4[2..4].copy_from_slice(&total.to_be_bytes());
    let c = csum(&ipv4);
    ipv4[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ipv4);
    f.extend_from_slice(&icmp);
    f
}

/// Whether `f` (no vnet header) is an ARP reply from 10.77.`subnet`.2.
pub fn is_arp_reply(f: &[u8], subnet: u8) -> bool {
    f.len() >= 42
        && f[12..14] == [0x08, 0x06]
        && f[20..22] == [0, 2]
        && f[28..32] == [10, 77, subnet, 2]
}

/// Whether `f` (no vnet header) is the ICMP echo reply with sequence `seq`.
pub fn is_echo_reply(f: &[u8], seq: u16) -> bool {
    f.len() >= 42 && f[12..14] == [0x08, 0x00] && f[34] == 0 && f[40..42] == seq.to_be_bytes()
}

/// Whether the stack owning `addr` answers a TCP connect from namespace
/// `ns` (a reset counts: the SYN got there). False when nothing answers
/// within 2 s, e.g. its ARP replies never come because the interface's
/// frames are dropped before its stack.
pub fn stack_answers(ns: &str, addr: &str) -> bool {
    let path = format!("/run/netns/{ns}");
    let addr: std::net::IpAddr = addr.parse().expect("an IP address");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("the namespace");
        // SAFETY: setns on this thread only, with a namespace fd we opened.
        let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
        let to = std::net::SocketAddr::new(addr, 9);
        match std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(2)) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        }
    })
    .join()
    .expect("probe thread")
}

/// Drops what interface `name` receives in XDP while the returned link is
/// open (see `scripts/bench-nic.sh`: a receiver that costs the sender's
/// CPU as little as the interface allows).
pub fn xdp_drop(name: &str) -> std::io::Result<std::os::fd::OwnedFd> {
    let ifindex = crate::sys::if_index(name)?;
    crate::bpf::xdp_drop(ifindex)
}

/// A TCP SYN from 10.77.`subnet`.1:`sport` to .2 port 9 (closed: the
/// namespace answers with a reset), checksums complete. Each `sport` is a
/// flow of its own, which the sender's queue choice hashes.
pub fn tcp_syn(dst_mac: [u8; 6], subnet: u8, sport: u16) -> Vec<u8> {
    let mut ip = vec![
        0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 77, subnet, 1, 10, 77, subnet, 2,
    ];
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut t = Vec::with_capacity(20);
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&9u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    let mut sum = vec![10, 77, subnet, 1, 10, 77, subnet, 2, 0, 6, 0, 20];
    sum.extend_from_slice(&t);
    let c = csum(&sum);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&t);
    f
}

/// The port a TCP reset from the namespace (no vnet header) went to.
pub fn tcp_reset_to(f: &[u8]) -> Option<u16> {
    (f.len() >= 54 && f[12..14] == [0x08, 0x00] && f[23] == 6 && f[47] & 0x04 != 0)
        .then(|| u16::from_be_bytes([f[36], f[37]]))
}
