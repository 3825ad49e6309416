//! The generic adapter against the kernel's stack: a veth pair whose far
//! end sits in a network namespace with an address. ARP and ping from the
//! adapter's TX ring must be answered on its RX ring. Needs root (skipped
//! otherwise) and `ip` from iproute2.

use std::process::Command;
use std::time::{Duration, Instant};

use nic::{GenericNic, VNET_HDR_LEN};
use vale::{Frag, Sink, Source};

const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0x77, 0, 1];

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
    pub ns: String,
    pub here: String,
    pub subnet: u8,
}

impl Veth {
    pub fn new(tag: &str) -> Veth {
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
            "link", "add", &here, "type", "veth", "peer", "name", &there, "netns", &ns,
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

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn arp_request(subnet: u8) -> Vec<u8> {
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

fn csum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn echo_request(dst_mac: [u8; 6], subnet: u8, seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34];
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

fn send(nic: &mut GenericNic, frame: &[u8]) {
    let frags = [Frag::from_slice(frame, 0)];
    assert_eq!(nic.tx.push(&frags, 0, &[0; VNET_HDR_LEN]), vale::Push::Done);
    nic.tx.publish();
}

/// Receives until `want` matches a frame (vnet header stripped) or 3 s.
fn recv_until(nic: &mut GenericNic, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let t0 = Instant::now();
    let mut frags = Vec::new();
    while t0.elapsed() < Duration::from_secs(3) {
        frags.clear();
        let n = nic.rx.fetch(&mut frags, 64);
        let mut hit = None;
        let mut frame = Vec::new();
        for f in &frags {
            let mut buf = vec![0u8; f.len() as usize];
            f.read(0, &mut buf);
            frame.extend_from_slice(&buf);
            if f.flags() & netmap::abi::NS_MOREFRAG == 0 {
                let body = frame.split_off(VNET_HDR_LEN.min(frame.len()));
                if hit.is_none() && want(&body) {
                    hit = Some(body);
                }
                frame.clear();
            }
        }
        nic.rx.complete(n);
        if hit.is_some() {
            return hit;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

#[test]
fn arp_and_ping_through_the_generic_adapter() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let v = Veth::new("g");
    let mut nic = GenericNic::open(&v.here).unwrap();
    send(&mut nic, &arp_request(v.subnet));
    let reply = recv_until(&mut nic, |f| {
        f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2]
    })
    .expect("an ARP reply from the namespace");
    assert_eq!(&reply[0..6], &OUR_MAC, "the reply is to us");
    assert_eq!(&reply[28..32], &[10, 77, v.subnet, 2]);
    let their_mac: [u8; 6] = reply[6..12].try_into().unwrap();
    for seq in 1..=5u16 {
        send(&mut nic, &echo_request(their_mac, v.subnet, seq));
        let r = recv_until(&mut nic, |f| {
            f.len() >= 42
                && f[12..14] == [0x08, 0x00]
                && f[34] == 0
                && f[40..42] == seq.to_be_bytes()
        });
        assert!(r.is_some(), "echo reply {seq}");
    }
}

#[test]
fn a_missing_interface_is_named() {
    let e = GenericNic::open("vale-no-such-if").unwrap_err();
    assert_eq!(e.errno(), libc::ENXIO);
    assert!(e.to_string().contains("vale-no-such-if"), "{e}");
}
