//! Offloads between fake guests through a VALE switch: a 64 KiB TSO frame
//! reaches a guest that acked GUEST_TSO* whole and unchanged, and a guest
//! that did not as wire-sized segments with valid checksums; a partial
//! checksum reaches a guest without GUEST_CSUM completed, one with it
//! untouched.

use std::time::{Duration, Instant};

use backend::device::features as vf;
use backend::testing::{frame, FakeGuest, GuestConfig, Rig, RxFrame};
use vale::offload::{VnetHdr, F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6};
use vale::testing::{inet_checksum, verify_segment};
use vale::DropReason;

const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
const C: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc];
const T: Duration = Duration::from_secs(5);
const MSS: u16 = 1448;
/// TCP header with the timestamp option, as Linux sends it.
const TCP_HLEN: usize = 32;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
const SEQ: u32 = 0xfff0_0000;
/// A guest's TSO frame: about 64 KiB on the wire.
const GSO_FRAME_LEN: usize = 65_000;

/// Sender: takes partial checksums and TSO from the guest, and gives them.
const SENDER: u64 =
    vf::CSUM | vf::HOST_TSO4 | vf::HOST_TSO6 | vf::GUEST_CSUM | vf::GUEST_TSO4 | vf::GUEST_TSO6;
/// A receiver that takes partial checksums and TSO.
const TSO_RX: u64 = vf::GUEST_CSUM | vf::GUEST_TSO4 | vf::GUEST_TSO6;

fn payload(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8
        })
        .collect()
}

/// A frame as a guest sends it with `F_NEEDS_CSUM`.
struct Built {
    hdr: VnetHdr,
    frame: Vec<u8>,
    l3: usize,
    l4: usize,
    /// Where the payload starts.
    body: usize,
}

impl Built {
    fn hdr_bytes(&self) -> [u8; 12] {
        self.hdr.to_bytes()
    }
}

/// Ethernet + IPv4/IPv6 + (TCP with timestamps | UDP) + `pl`, lengths set
/// as Linux sets them, the L4 checksum field holding the pseudo-header sum
/// (folded, not complemented) as Linux leaves it for `NEEDS_CSUM`.
fn build(dst: [u8; 6], src: [u8; 6], v6: bool, tcp: bool, pl: &[u8], gso_type: u8) -> Built {
    let mut f = Vec::with_capacity(100 + pl.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&(if v6 { 0x86ddu16 } else { 0x0800 }).to_be_bytes());
    let l3 = f.len();
    let proto = if tcp { 6u8 } else { 17 };
    let l4_len = if tcp { TCP_HLEN } else { 8 } + pl.len();
    if v6 {
        f.extend_from_slice(&[0x60, 0x01, 0x23, 0x45]);
        f.extend_from_slice(&(l4_len as u16).to_be_bytes());
        f.extend_from_slice(&[proto, 64]);
        f.extend((0..16).map(|i| 0x20 + i as u8));
        f.extend((0..16).map(|i| 0xfe - i as u8));
    } else {
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
        f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        let c = inet_checksum(&[&f[l3..]]);
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    }
    let l4 = f.len();
    f.extend_from_slice(&40_000u16.to_be_bytes());
    f.extend_from_slice(&5201u16.to_be_bytes());
    let csum_offset = if tcp {
        f.extend_from_slice(&SEQ.to_be_bytes());
        f.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        f.extend_from_slice(&[((TCP_HLEN / 4) << 4) as u8, TCP_ACK | TCP_PSH]);
        f.extend_from_slice(&[0x01, 0xf5, 0, 0, 0, 0]);
        f.extend_from_slice(&[1, 1, 8, 10, 0, 0x12, 0x34, 0x56, 0, 0, 0x0a, 0xbc]);
        16
    } else {
        f.extend_from_slice(&(l4_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        6
    };
    let body = f.len();
    f.extend_from_slice(pl);
    let mut ph = if v6 {
        f[l3 + 8..l3 + 40].to_vec()
    } else {
        f[l3 + 12..l3 + 20].to_vec()
    };
    if v6 {
        ph.extend_from_slice(&(l4_len as u32).to_be_bytes());
        ph.extend_from_slice(&[0, 0, 0, proto]);
    } else {
        ph.extend_from_slice(&[0, proto]);
        ph.extend_from_slice(&(l4_len as u16).to_be_bytes());
    }
    let field = l4 + csum_offset as usize;
    f[field..field + 2].copy_from_slice(&(!inet_checksum(&[&ph])).to_be_bytes());
    Built {
        hdr: VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: body as u16,
            gso_size: if gso_type == GSO_NONE { 0 } else { MSS },
            csum_start: l4 as u16,
            csum_offset,
            num_buffers: 0,
        },
        frame: f,
        l3,
        l4,
        body,
    }
}

/// A 64 KiB TCP GSO frame.
fn tso_frame(dst: [u8; 6], src: [u8; 6], v6: bool, seed: u32) -> Built {
    let hlen = 14 + if v6 { 40 } else { 20 } + TCP_HLEN;
    let pl = payload(GSO_FRAME_LEN - hlen, seed);
    build(
        dst,
        src,
        v6,
        true,
        &pl,
        if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
    )
}

/// Descriptor lengths as Linux's virtio-net makes them for a TSO skb: the
/// header and the linear part (the protocol headers) in one, then one per
/// page frag.
fn linux_split(b: &Built) -> Vec<usize> {
    let mut split = vec![12 + b.body];
    let mut left = b.frame.len() - b.body;
    while left > 4096 {
        split.push(4096);
        left -= 4096;
    }
    split
}

fn guest_cfg(features: u64, mrg: bool) -> GuestConfig {
    GuestConfig {
        mrg_rxbuf: mrg,
        features_extra: features,
        ..Default::default()
    }
}

/// Waits until the switch counted `n` frames in from port `i`.
fn wait_in(rig: &Rig, i: usize, n: u64) {
    let deadline = Instant::now() + T;
    while rig.stats(i).in_packets < n {
        assert!(Instant::now() < deadline, "port {i}: {:?}", rig.stats(i));
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Three guests: A sends with every offload, B (port 1) takes partial
/// checksums and TSO in mergeable 4 KiB buffers, C (port 2) takes none in
/// plain 2 KiB buffers. B's and C's MACs are learned.
struct Three {
    rig: Rig,
    a: FakeGuest,
    b: FakeGuest,
    c: FakeGuest,
}

impl Three {
    fn new() -> Three {
        let rig = Rig::new(3, 1);
        let mut a = rig.guest(0, guest_cfg(SENDER, true));
        let mut b = rig.guest(1, guest_cfg(TSO_RX, true));
        let mut c = rig.guest(2, guest_cfg(0, false));
        assert_eq!(a.acked_features() & SENDER, SENDER);
        assert_eq!(b.acked_features() & TSO_RX, TSO_RX);
        assert_eq!(c.acked_features() & (TSO_RX | vf::CSUM), 0);
        for g in [&mut a, &mut b, &mut c] {
            g.set_repost(true);
        }
        a.post_rx(0, 64, 2048);
        b.post_rx(0, 128, 4096);
        c.post_rx(0, 128, 2048);
        // Teach the bridge where B and C are: A is unknown, so each frame
        // floods to the two others.
        let hdr = [0u8; 12];
        let fb = frame(A, B, 60, 1);
        assert!(b.send(0, &hdr, &fb, &[]));
        assert_eq!(a.recv(0, T).expect("B's frame at A").1, fb);
        assert_eq!(c.recv(0, T).expect("B's frame at C").1, fb);
        let fc = frame(A, C, 60, 2);
        assert!(c.send(0, &hdr, &fc, &[]));
        assert_eq!(a.recv(0, T).expect("C's frame at A").1, fc);
        assert_eq!(b.recv(0, T).expect("C's frame at B").1, fc);
        Three { rig, a, b, c }
    }

    /// No guest saw a protocol violation and no frame was dropped for an
    /// offload or a chain; the sender's chains all came back.
    fn check_clean(&mut self, sent: usize) {
        assert_eq!(self.a.wait_tx(0, sent, T), sent, "A's TX chains");
        wait_in(&self.rig, 0, sent as u64);
        for (n, g) in [("A", &self.a), ("B", &self.b), ("C", &self.c)] {
            assert!(g.violations().is_empty(), "{n}: {:?}", g.violations());
        }
        for i in 0..3 {
            let s = self.rig.stats(i);
            assert_eq!(s.drop(DropReason::Offload), 0, "port {i}: {s:?}");
            assert_eq!(s.total_drops(), 0, "port {i}: {s:?}");
            assert_eq!(self.rig.ports[i].stats().bad_chains, 0, "port {i}");
        }
    }
}

/// The frame arrived as sent, with the sender's header but `num_buffers`.
fn check_whole(got: &RxFrame, sent: &Built, what: &str) {
    assert_eq!(got.frame.len(), sent.frame.len(), "{what}: length");
    assert!(got.frame == sent.frame, "{what}: frame bytes differ");
    let h = VnetHdr::parse(&got.hdr);
    assert_eq!(
        VnetHdr {
            num_buffers: 0,
            ..h
        },
        sent.hdr,
        "{what}: header"
    );
    assert_eq!(h.num_buffers, got.num_buffers, "{what}: num_buffers");
}

/// Receives the segments `sent` becomes at `g` and checks them: every one a
/// valid wire frame, sequence numbers contiguous, payloads adding up to the
/// original's, PSH on the last only, plain headers.
fn check_segments(g: &mut FakeGuest, sent: &Built, v6: bool, what: &str) {
    let body = &sent.frame[sent.body..];
    let n = body.len().div_ceil(MSS as usize);
    assert_eq!(n, 45, "test frame");
    let mut joined = Vec::with_capacity(body.len());
    let mut seq = SEQ;
    for i in 0..n {
        let got = g
            .recv_frame(0, T)
            .unwrap_or_else(|| panic!("{what}: segment {i} of {n} did not arrive"));
        let s = &got.frame;
        verify_segment(s).unwrap_or_else(|e| panic!("{what}: segment {i}: {e}"));
        assert_eq!(&got.hdr[..10], &[0u8; 10], "{what}: segment {i} header");
        assert_eq!(s[..sent.l3], sent.frame[..sent.l3], "{what}: {i}: Ethernet");
        let l4 = sent.l4;
        assert_eq!(
            u32::from_be_bytes(s[l4 + 4..l4 + 8].try_into().unwrap()),
            seq,
            "{what}: segment {i} sequence number"
        );
        let flags = s[l4 + 13];
        let want = if i + 1 == n {
            TCP_ACK | TCP_PSH
        } else {
            TCP_ACK
        };
        assert_eq!(flags, want, "{what}: segment {i} TCP flags");
        // Options unchanged.
        assert_eq!(s[l4 + 20..sent.body], sent.frame[l4 + 20..sent.body]);
        if !v6 {
            let id = u16::from_be_bytes([s[sent.l3 + 4], s[sent.l3 + 5]]);
            assert_eq!(id, 0x1234u16.wrapping_add(i as u16), "{what}: {i}: IP id");
        }
        let seg_body = &s[sent.body..];
        let want_len = if i + 1 < n {
            MSS as usize
        } else {
            body.len() - (n - 1) * MSS as usize
        };
        assert_eq!(seg_body.len(), want_len, "{what}: segment {i} payload");
        seq = seq.wrapping_add(seg_body.len() as u32);
        joined.extend_from_slice(seg_body);
    }
    assert!(
        joined == body,
        "{what}: payloads do not add up to the original"
    );
    assert!(
        g.recv(0, Duration::from_millis(20)).is_none(),
        "{what}: more than {n} segments"
    );
}

fn tso_to_tso_guest(v6: bool) {
    let mut t = Three::new();
    let what = if v6 { "TSO6 to B" } else { "TSO4 to B" };
    for k in 0..3u32 {
        let f = tso_frame(B, A, v6, k);
        let split = linux_split(&f);
        assert_eq!(split.len() + 1, 17, "descriptors");
        assert!(t.a.send(0, &f.hdr_bytes(), &f.frame, &split));
        let got =
            t.b.recv_frame(0, T)
                .unwrap_or_else(|| panic!("{what}: frame {k} did not arrive"));
        check_whole(&got, &f, what);
        assert_eq!(got.num_buffers, 16, "{what}: 65012 bytes in 4 KiB buffers");
    }
    assert!(
        t.b.recv(0, Duration::from_millis(20)).is_none(),
        "{what}: extra"
    );
    assert!(
        t.c.recv(0, Duration::from_millis(1)).is_none(),
        "C got some"
    );
    t.check_clean(3);
    assert_eq!(
        t.rig.stats(1).soft_offload,
        0,
        "B takes TSO: nothing segmented"
    );
}

#[test]
fn tso4_to_guest_with_tso_arrives_whole() {
    tso_to_tso_guest(false);
}

#[test]
fn tso6_to_guest_with_tso_arrives_whole() {
    tso_to_tso_guest(true);
}

fn tso_to_plain_guest(v6: bool) {
    let mut t = Three::new();
    let what = if v6 { "TSO6 to C" } else { "TSO4 to C" };
    for k in 0..2u32 {
        let f = tso_frame(C, A, v6, 10 + k);
        assert!(t.a.send(0, &f.hdr_bytes(), &f.frame, &linux_split(&f)));
        check_segments(&mut t.c, &f, v6, what);
    }
    assert!(
        t.b.recv(0, Duration::from_millis(1)).is_none(),
        "B got some"
    );
    t.check_clean(2);
    let s = t.rig.stats(2);
    // B's learning frame, then 45 segments per TSO frame.
    assert_eq!(s.out_packets, 1 + 2 * 45, "C: {s:?}");
    assert_eq!(s.soft_offload, 2, "C: two frames segmented in software");
}

#[test]
fn tso4_to_guest_without_tso_is_segmented() {
    tso_to_plain_guest(false);
}

#[test]
fn tso6_to_guest_without_tso_is_segmented() {
    tso_to_plain_guest(true);
}

/// A flooded TSO frame: whole to B, segmented to C, from one send.
#[test]
fn tso_flooded_whole_and_segmented() {
    let mut t = Three::new();
    let f = tso_frame([0xff; 6], A, false, 20);
    assert!(t.a.send(0, &f.hdr_bytes(), &f.frame, &linux_split(&f)));
    let got = t.b.recv_frame(0, T).expect("broadcast TSO frame at B");
    check_whole(&got, &f, "broadcast to B");
    check_segments(&mut t.c, &f, false, "broadcast to C");
    t.check_clean(1);
}

/// A UDP frame with a partial checksum, no GSO.
fn udp_partial(dst: [u8; 6], seed: u32, v6: bool) -> Built {
    let pl = payload(1000 - 14 - 8 - if v6 { 40 } else { 20 }, seed);
    let b = build(dst, A, v6, false, &pl, GSO_NONE);
    assert_eq!(b.frame.len(), 1000);
    b
}

#[test]
fn partial_csum_completed_for_guest_without_guest_csum() {
    let mut t = Three::new();
    for (k, v6) in [(0u32, false), (1, true), (2, false)] {
        let f = udp_partial(C, 30 + k, v6);
        // Header and frame in one descriptor, and header alone.
        let split: &[usize] = if k == 2 { &[12] } else { &[] };
        assert!(t.a.send(0, &f.hdr_bytes(), &f.frame, split));
        let got = t.c.recv_frame(0, T).expect("UDP frame at C");
        assert_eq!(&got.hdr[..10], &[0u8; 10], "C gets a plain header");
        verify_segment(&got.frame).unwrap_or_else(|e| panic!("frame {k}: {e}"));
        // Only the checksum field changed.
        let field = f.l4 + 6;
        assert_eq!(got.frame.len(), f.frame.len());
        assert_eq!(got.frame[..field], f.frame[..field], "frame {k}");
        assert_eq!(got.frame[field + 2..], f.frame[field + 2..], "frame {k}");
    }
    t.check_clean(3);
}

#[test]
fn partial_csum_untouched_for_guest_with_guest_csum() {
    let mut t = Three::new();
    for k in 0..3u32 {
        let f = udp_partial(B, 40 + k, k == 1);
        assert!(t.a.send(0, &f.hdr_bytes(), &f.frame, &[12]));
        let got = t.b.recv_frame(0, T).expect("UDP frame at B");
        check_whole(&got, &f, "partial checksum to B");
        assert_ne!(got.hdr[0] & F_NEEDS_CSUM, 0);
        // Still partial: the field holds the pseudo-header sum, so the
        // frame does not verify yet.
        assert!(verify_segment(&got.frame).is_err());
    }
    t.check_clean(3);
}

/// The data path of a TSO frame that is not segmented, with the offloads
/// given by the port's configuration (what the guest's acked features should
/// give): 17 descriptors in, 16 mergeable buffers out, byte-exact, header
/// kept.
#[test]
fn tso_passthrough_with_port_offloads() {
    let rig = Rig::with_config(
        2,
        1,
        vale::PortConfig {
            offloads: vale::port::OFFLOAD_ALL,
            ..Default::default()
        },
    );
    let mut a = rig.guest(0, guest_cfg(SENDER, true));
    let mut b = rig.guest(1, guest_cfg(TSO_RX, true));
    b.set_repost(true);
    b.post_rx(0, 128, 4096);
    for (k, v6) in [(0u32, false), (1, true), (2, false)] {
        let f = tso_frame(B, A, v6, 50 + k);
        assert!(a.send(0, &f.hdr_bytes(), &f.frame, &linux_split(&f)));
        let got = b.recv_frame(0, T).expect("TSO frame at B");
        check_whole(&got, &f, "TSO with port offloads");
        assert_eq!(got.num_buffers, 16);
        let u = udp_partial(B, 60 + k, v6);
        assert!(a.send(0, &u.hdr_bytes(), &u.frame, &[12]));
        let got = b.recv_frame(0, T).expect("UDP frame at B");
        check_whole(&got, &u, "partial checksum with port offloads");
    }
    assert_eq!(a.wait_tx(0, 6, T), 6);
    wait_in(&rig, 0, 6);
    assert!(a.violations().is_empty() && b.violations().is_empty());
    assert_eq!(rig.stats(1).out_packets, 6);
    assert_eq!(rig.stats(1).total_drops(), 0);
}
