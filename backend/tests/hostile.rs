//! Hostile guests against the real backend, through an in-process switch
//! (`backend::testing::Rig`): guest A sends broken TX chains (addresses
//! outside guest memory, loops, bad next indexes, zero lengths, too many
//! descriptors, the wrong direction, too many bytes, broken indirect
//! tables, bad heads, a runaway avail index), guest B posts broken RX
//! chains, and A's guest rewrites its headers while the frames are in
//! flight. After each case: the hostile chain came back on the used ring
//! (no descriptor lost), the right counter went up, nothing of it reached
//! the other guest, nothing panicked, and the port still forwards a normal
//! frame byte-exact.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::thread;
use std::time::{Duration, Instant};

use backend::testing::{frame, rx, tx, FakeGuest, GuestConfig, Rig, VIRTIO_NET_HDR_LEN};
use vale::DropReason;
use vm_memory::{Bytes, GuestAddress};

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;

const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
const C: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc];
const T: Duration = Duration::from_secs(5);
/// Most bytes a guest frame may carry.
const MAX_FRAME: u32 = backend::MAX_FRAME as u32;
/// First descriptor-table index the hand-made chains use: the fake guest
/// hands out table entries from 0 up, so these stay clear of its own
/// chains.
const RAW: u16 = 150;

type Desc = (u16, u64, u32, u16, u16);

/// Panics on the switch's and the backend's own threads (the forwarding
/// thread is unnamed; vhost-user threads are `vhost-pN`, `pN` and
/// `vring_worker`), which a test would otherwise only see as a timeout.
static BACKEND_PANICS: AtomicUsize = AtomicUsize::new(0);

fn watch_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let t = thread::current();
            let backend = match t.name() {
                None => true,
                Some(n) => {
                    n.starts_with("vhost-")
                        || n == "vring_worker"
                        || (n.len() > 1
                            && n.starts_with('p')
                            && n[1..].bytes().all(|b| b.is_ascii_digit()))
                }
            };
            if backend {
                BACKEND_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            prev(info);
        }));
    });
}

fn assert_no_backend_panic() {
    assert_eq!(
        BACKEND_PANICS.load(Ordering::SeqCst),
        0,
        "a switch or backend thread panicked"
    );
}

/// Waits (up to [`T`]) for `cond`.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Counters before a case.
#[derive(Debug, Clone, Copy)]
struct Snap {
    bad_chains: u64,
    bad_slot: u64,
    tx_used: u16,
    b_out: u64,
}

/// A switch with guest A (the hostile sender) on port 0 and guest B (a
/// normal receiver, RX buffers posted and reposted) on port 1.
struct Env {
    rig: Rig,
    a: FakeGuest,
    b: FakeGuest,
    seq: u32,
}

impl Env {
    fn new(ports: usize, a_cfg: GuestConfig) -> Env {
        watch_panics();
        let rig = Rig::new(ports, 1);
        let a = rig.guest(0, a_cfg);
        let mut b = rig.guest(1, GuestConfig::default());
        b.set_repost(true);
        assert_eq!(b.post_rx(0, 64, 2048), 64);
        Env { rig, a, b, seq: 0 }
    }

    /// End of A's guest memory (first address past it).
    fn a_mem_end(&self) -> u64 {
        let r = self.a.region_ranges();
        let (s, l) = r.last().expect("regions");
        s + l
    }

    fn snap(&self) -> Snap {
        Snap {
            bad_chains: self.rig.ports[0].stats().bad_chains,
            bad_slot: self.rig.stats(0).drop(DropReason::BadSlot),
            tx_used: self.a.tx_used_idx(0),
            b_out: self.rig.stats(1).out_packets,
        }
    }

    /// Writes a whole frame for B (virtio-net header + Ethernet frame, `len`
    /// bytes in all) into fresh guest memory of A; returns its address.
    fn stage(&mut self, len: usize) -> u64 {
        self.seq += 1;
        let mut data = vec![0u8; VIRTIO_NET_HDR_LEN];
        data.extend_from_slice(&frame(
            B,
            A,
            len.max(VIRTIO_NET_HDR_LEN + 14) - 12,
            self.seq,
        ));
        data.truncate(len.max(1));
        let g = self.a.alloc(data.len()).expect("guest memory");
        self.a.write_guest(g, &data);
        g
    }

    /// A normal frame from A must arrive at B byte-exact, as the next frame
    /// B gets, and come back on A's used ring.
    fn a_to_b_works(&mut self, what: &str) {
        self.seq += 1;
        let s0 = self.snap();
        let f = frame(B, A, 60 + (self.seq as usize * 37) % 1400, self.seq);
        assert!(
            self.a.send(0, &[0; 12], &f, &[12]),
            "{what}: A's TX ring full"
        );
        let (_, got) = self
            .b
            .recv(0, T)
            .unwrap_or_else(|| panic!("{what}: the normal frame after it did not arrive"));
        assert_eq!(got, f, "{what}: B got something else than the normal frame");
        assert_eq!(
            self.a.wait_tx(0, 1, T),
            1,
            "{what}: normal frame not returned"
        );
        wait_until("B's out_packets", || {
            self.rig.stats(1).out_packets > s0.b_out
        });
        assert_eq!(
            self.rig.stats(1).out_packets,
            s0.b_out + 1,
            "{what}: B got more"
        );
        assert!(
            self.a.violations().is_empty(),
            "{what}: {:?}",
            self.a.violations()
        );
        assert!(
            self.b.violations().is_empty(),
            "{what}: {:?}",
            self.b.violations()
        );
        assert_no_backend_panic();
    }

    /// Sends the hostile chain `descs` (head `head`) from A and checks that
    /// it comes back (when `head` is a real table index), is counted once as
    /// a bad chain by the backend and once as a `BadSlot` drop on A's port,
    /// reaches nobody, and that the port still works.
    fn hostile_tx(&mut self, what: &str, descs: &[Desc], head: u16) {
        let s0 = self.snap();
        self.a.send_raw(0, descs, head);
        let valid_head = head < self.a.queue_size();
        if valid_head {
            assert_eq!(
                self.a.wait_tx(0, 1, T),
                1,
                "{what}: hostile chain not returned on the used ring"
            );
            assert_eq!(self.a.tx_used_idx(0), s0.tx_used.wrapping_add(1), "{what}");
        }
        wait_until(what, || {
            self.rig.ports[0].stats().bad_chains > s0.bad_chains
                && self.rig.stats(0).drop(DropReason::BadSlot) > s0.bad_slot
        });
        assert_eq!(
            self.rig.ports[0].stats().bad_chains,
            s0.bad_chains + 1,
            "{what}: bad_chains"
        );
        assert_eq!(
            self.rig.stats(0).drop(DropReason::BadSlot),
            s0.bad_slot + 1,
            "{what}: BadSlot drops"
        );
        if !valid_head {
            // Nothing to return: the used ring did not move.
            assert_eq!(self.a.tx_used_idx(0), s0.tx_used, "{what}");
        }
        self.a_to_b_works(what);
        assert_eq!(
            self.rig.ports[1].stats().bad_chains,
            0,
            "{what}: B's counters"
        );
    }

    /// A well-formed raw chain is forwarded byte-exact (a control for the
    /// hand-made encodings of the hostile cases).
    fn raw_ok(&mut self, what: &str, descs: &[Desc], head: u16, expect: &[u8]) {
        let s0 = self.snap();
        self.a.send_raw(0, descs, head);
        let (_, got) = self
            .b
            .recv(0, T)
            .unwrap_or_else(|| panic!("{what}: valid raw chain did not arrive"));
        assert_eq!(got, expect, "{what}");
        assert_eq!(self.a.wait_tx(0, 1, T), 1, "{what}: not returned");
        assert_eq!(
            self.rig.ports[0].stats().bad_chains,
            s0.bad_chains,
            "{what}"
        );
        assert_eq!(self.rig.stats(0).drop(DropReason::BadSlot), s0.bad_slot);
        self.a_to_b_works(what);
    }
}

fn two_regions_with_gap() -> GuestConfig {
    GuestConfig {
        regions: 2,
        region_gap: 4096,
        ..Default::default()
    }
}

#[test]
fn tx_outside_guest_memory() {
    let mut e = Env::new(2, two_regions_with_gap());
    let end = e.a_mem_end();
    let (r0, r0_len) = e.a.region_ranges()[0];
    let r0_end = r0 + r0_len;
    let buf = e.stage(74);
    e.a_to_b_works("warm-up");
    let cases: Vec<(&str, Vec<Desc>)> = vec![
        ("address 0", vec![(RAW, 0, 74, 0, 0)]),
        ("below guest memory", vec![(RAW, r0 - 74, 74, 0, 0)]),
        ("just past the end", vec![(RAW, end, 74, 0, 0)]),
        (
            "starts inside, ends outside",
            vec![(RAW, end - 10, 74, 0, 0)],
        ),
        (
            "ends one byte past the end",
            vec![(RAW, end - 73, 74, 0, 0)],
        ),
        (
            "addr+len overflows u64",
            vec![(RAW, u64::MAX - 10, 74, 0, 0)],
        ),
        ("addr u64::MAX", vec![(RAW, u64::MAX, 1, 0, 0)]),
        ("len u32::MAX", vec![(RAW, buf, u32::MAX, 0, 0)]),
        (
            "in the gap between regions",
            vec![(RAW, r0_end + 8, 74, 0, 0)],
        ),
        ("runs into the gap", vec![(RAW, r0_end - 30, 74, 0, 0)]),
        (
            "second descriptor outside",
            vec![(RAW, buf, 12, NEXT, RAW + 1), (RAW + 1, end - 4, 62, 0, 0)],
        ),
        (
            "last descriptor of a long chain outside",
            vec![
                (RAW, buf, 12, NEXT, RAW + 1),
                (RAW + 1, buf + 12, 20, NEXT, RAW + 2),
                (RAW + 2, buf + 32, 20, NEXT, RAW + 3),
                (RAW + 3, 0x1000, 22, 0, 0),
            ],
        ),
    ];
    for (what, descs) in &cases {
        e.hostile_tx(what, descs, RAW);
    }
    // Control: the same buffer, properly described, goes through, also
    // when it is cut over descriptors.
    let mut want = e.a.read_guest(buf, 74);
    want.drain(..12);
    e.raw_ok("control", &[(RAW, buf, 74, 0, 0)], RAW, &want);
    e.raw_ok(
        "control, 3 descriptors",
        &[
            (RAW, buf, 12, NEXT, RAW + 7),
            (RAW + 7, buf + 12, 30, NEXT, RAW + 3),
            (RAW + 3, buf + 42, 32, 0, 0),
        ],
        RAW,
        &want,
    );
}

#[test]
fn tx_broken_chains() {
    let mut e = Env::new(2, GuestConfig::default());
    let buf = e.stage(74);
    let end = e.a_mem_end();
    let qs = e.a.queue_size();
    e.a_to_b_works("warm-up");
    let cases: Vec<(&str, Vec<Desc>)> = vec![
        (
            "two-descriptor loop",
            vec![
                (RAW, buf, 12, NEXT, RAW + 1),
                (RAW + 1, buf + 12, 62, NEXT, RAW),
            ],
        ),
        ("self loop", vec![(RAW, buf, 74, NEXT, RAW)]),
        (
            "loop back to the middle",
            vec![
                (RAW, buf, 12, NEXT, RAW + 1),
                (RAW + 1, buf + 12, 20, NEXT, RAW + 2),
                (RAW + 2, buf + 32, 42, NEXT, RAW + 1),
            ],
        ),
        ("next = queue size", vec![(RAW, buf, 74, NEXT, qs)]),
        (
            "next = 0xffff",
            vec![
                (RAW, buf, 12, NEXT, RAW + 1),
                (RAW + 1, buf + 12, 62, NEXT, 0xffff),
            ],
        ),
        ("zero-length descriptor", vec![(RAW, buf, 0, 0, 0)]),
        (
            "zero-length descriptor in the middle",
            vec![
                (RAW, buf, 12, NEXT, RAW + 1),
                (RAW + 1, buf + 12, 0, NEXT, RAW + 2),
                (RAW + 2, buf + 12, 62, 0, 0),
            ],
        ),
        (
            "zero-length descriptor at address 0",
            vec![(RAW, 0, 0, 0, 0)],
        ),
        ("write-only descriptor", vec![(RAW, buf, 74, WRITE, 0)]),
        (
            "write-only descriptor after a readable one",
            vec![
                (RAW, buf, 12, NEXT, RAW + 1),
                (RAW + 1, buf + 12, 62, WRITE, 0),
            ],
        ),
        ("write-only, outside memory", vec![(RAW, end, 74, WRITE, 0)]),
    ];
    for (what, descs) in &cases {
        e.hostile_tx(what, descs, RAW);
    }
}

/// Chains of `n` descriptors over one staged frame: the header alone, then
/// the frame in `n - 1` pieces.
fn many(buf: u64, flen: u32, n: u16) -> Vec<Desc> {
    let per = flen / u32::from(n - 1);
    let mut v = vec![(RAW, buf, 12, NEXT, RAW + 1)];
    let mut at = 12u64;
    for i in 1..n {
        let idx = RAW + i;
        let last = i == n - 1;
        let len = if last {
            flen - per * u32::from(n - 2)
        } else {
            per
        };
        let (flags, next) = if last { (0, 0) } else { (NEXT, idx + 1) };
        v.push((idx, buf + at, len, flags, next));
        at += u64::from(len);
    }
    v
}

#[test]
fn tx_too_many_descriptors_and_bytes() {
    let mut e = Env::new(2, GuestConfig::default());
    e.a_to_b_works("warm-up");
    let flen = 64 * 4;
    let buf = e.stage(12 + flen as usize);
    let mut want = e.a.read_guest(buf, 12 + flen as usize);
    want.drain(..12);
    // 64 descriptors is the most a frame may take.
    e.raw_ok("64 descriptors", &many(buf, flen, 64), RAW, &want);
    e.hostile_tx("65 descriptors", &many(buf, flen, 65), RAW);
    e.hostile_tx("100 descriptors", &many(buf, flen, 100), RAW);

    let big = e.stage(2 * MAX_FRAME as usize);
    e.hostile_tx(
        "one descriptor of MAX_FRAME + 1 bytes",
        &[(RAW, big, MAX_FRAME + 1, 0, 0)],
        RAW,
    );
    e.hostile_tx(
        "two descriptors summing past MAX_FRAME",
        &[
            (RAW, big, 40_000, NEXT, RAW + 1),
            (RAW + 1, big + 40_000, MAX_FRAME + 1 - 40_000, 0, 0),
        ],
        RAW,
    );
    e.hostile_tx(
        "two descriptors of 2^31 bytes each (u32 sum overflows)",
        &[
            (RAW, big, 1 << 31, NEXT, RAW + 1),
            (RAW + 1, big, 1 << 31, 0, 0),
        ],
        RAW,
    );
    // Exactly MAX_FRAME bytes is not a bad chain; B's 2 KiB buffers cannot
    // take it, so it is dropped there (and counted there).
    let s0 = e.snap();
    let full0 = e.rig.stats(1).drop(DropReason::DstFull);
    e.a.send_raw(0, &[(RAW, big, MAX_FRAME, 0, 0)], RAW);
    assert_eq!(e.a.wait_tx(0, 1, T), 1);
    wait_until("the big frame dropped at B", || {
        e.rig.stats(1).drop(DropReason::DstFull) > full0
    });
    assert_eq!(e.rig.ports[0].stats().bad_chains, s0.bad_chains);
    assert_eq!(e.rig.stats(0).drop(DropReason::BadSlot), s0.bad_slot);
    assert!(e.rig.ports[1].stats().rx_too_small >= 1);
    e.a_to_b_works("after MAX_FRAME");
}

#[test]
fn tx_bad_indirect_tables() {
    let mut e = Env::new(
        2,
        GuestConfig {
            indirect: true,
            ..Default::default()
        },
    );
    assert!(e.a.uses_indirect());
    e.a_to_b_works("warm-up");
    let end = e.a_mem_end();
    let buf = e.stage(74);
    let mut want = e.a.read_guest(buf, 74);
    want.drain(..12);
    // A table of two good descriptors (header, frame).
    let table = |e: &mut Env, descs: &[(u64, u32, u16, u16)]| -> u64 {
        let t = e.a.alloc(16 * descs.len().max(1)).expect("memory");
        let mut bytes = Vec::new();
        for &(addr, len, flags, next) in descs {
            bytes.extend_from_slice(&addr.to_le_bytes());
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&flags.to_le_bytes());
            bytes.extend_from_slice(&next.to_le_bytes());
        }
        e.a.write_guest(t, &bytes);
        t
    };
    let good = table(&mut e, &[(buf, 12, NEXT, 1), (buf + 12, 62, 0, 0)]);
    e.raw_ok(
        "control: good table",
        &[(RAW, good, 32, INDIRECT, 0)],
        RAW,
        &want,
    );

    let nested = table(&mut e, &[(good, 32, INDIRECT, 0)]);
    let nested2 = table(&mut e, &[(buf, 12, NEXT, 1), (good, 32, INDIRECT, 0)]);
    let far = table(&mut e, &[(buf, 12, NEXT, 1), (end + 64, 62, 0, 0)]);
    let bad_next = table(&mut e, &[(buf, 12, NEXT, 5), (buf + 12, 62, 0, 0)]);
    let looped = table(&mut e, &[(buf, 12, NEXT, 1), (buf + 12, 62, NEXT, 0)]);
    let zero = table(&mut e, &[(buf, 12, NEXT, 1), (buf + 12, 0, 0, 0)]);
    let wr = table(&mut e, &[(buf, 12, NEXT, 1), (buf + 12, 62, WRITE, 0)]);
    // A table whose second entry straddles the end of guest memory.
    let straddle = end - 24;
    let mut first = Vec::new();
    first.extend_from_slice(&buf.to_le_bytes());
    first.extend_from_slice(&12u32.to_le_bytes());
    first.extend_from_slice(&NEXT.to_le_bytes());
    first.extend_from_slice(&1u16.to_le_bytes());
    e.a.write_guest(straddle, &first);
    let cases: Vec<(&str, Vec<Desc>)> = vec![
        ("length 17", vec![(RAW, good, 17, INDIRECT, 0)]),
        ("length 31", vec![(RAW, good, 31, INDIRECT, 0)]),
        ("length 0", vec![(RAW, good, 0, INDIRECT, 0)]),
        ("length 8", vec![(RAW, good, 8, INDIRECT, 0)]),
        ("nested indirect", vec![(RAW, nested, 16, INDIRECT, 0)]),
        (
            "nested indirect second",
            vec![(RAW, nested2, 32, INDIRECT, 0)],
        ),
        ("table at address 0", vec![(RAW, 0, 32, INDIRECT, 0)]),
        ("table past the end", vec![(RAW, end, 32, INDIRECT, 0)]),
        (
            "table straddling the end",
            vec![(RAW, straddle, 32, INDIRECT, 0)],
        ),
        (
            "table at u64::MAX - 15",
            vec![(RAW, u64::MAX - 15, 32, INDIRECT, 0)],
        ),
        (
            "huge table length",
            vec![(RAW, good, 0xffff_fff0, INDIRECT, 0)],
        ),
        ("entry outside memory", vec![(RAW, far, 32, INDIRECT, 0)]),
        (
            "entry next past the table",
            vec![(RAW, bad_next, 32, INDIRECT, 0)],
        ),
        (
            "table length cuts the chain",
            vec![(RAW, good, 16, INDIRECT, 0)],
        ),
        (
            "loop inside the table",
            vec![(RAW, looped, 32, INDIRECT, 0)],
        ),
        ("zero-length entry", vec![(RAW, zero, 32, INDIRECT, 0)]),
        ("write-only entry", vec![(RAW, wr, 32, INDIRECT, 0)]),
        (
            "indirect after a direct descriptor",
            vec![
                (RAW, buf, 12, NEXT, RAW + 1),
                (RAW + 1, nested, 16, INDIRECT, 0),
            ],
        ),
    ];
    for (what, descs) in &cases {
        e.hostile_tx(what, descs, RAW);
    }
}

#[test]
fn tx_bad_head_index() {
    let mut e = Env::new(2, GuestConfig::default());
    e.a_to_b_works("warm-up");
    let qs = e.a.queue_size();
    e.hostile_tx("head = queue size", &[], qs);
    e.hostile_tx("head = 0xffff", &[], 0xffff);
    e.hostile_tx("head = queue size + 1", &[], qs + 1);
    assert_eq!(e.a.tx_inflight(0), 0);
}

#[test]
fn tx_avail_idx_runaway() {
    let mut e = Env::new(3, GuestConfig::default());
    e.a.set_repost(true);
    assert_eq!(e.a.post_rx(0, 32, 2048), 32);
    e.a_to_b_works("warm-up");
    let q = tx(0);
    let qs = e.a.queue_size();
    let avail = e.a.stats(q).avail_idx;
    let used = e.a.tx_used_idx(0);
    // The guest claims more chains than the ring holds.
    e.a.set_avail_idx(q, avail.wrapping_add(qs + 1));
    e.a.kick(q);
    thread::sleep(Duration::from_millis(30));
    e.a.set_avail_idx(q, avail.wrapping_add(0x8000));
    e.a.kick(q);
    thread::sleep(Duration::from_millis(30));
    assert_no_backend_panic();
    // Nothing of the garbage was forwarded or returned.
    assert_eq!(e.a.tx_used_idx(0), used);
    assert!(e.b.recv(0, Duration::from_millis(20)).is_none());
    // The other direction of the same guest, and other guests, still work.
    let hdr = [0u8; 12];
    for i in 0..4 {
        let f = frame(A, B, 100 + i, 1000 + i as u32);
        assert!(e.b.send(0, &hdr, &f, &[]));
        let (_, got) = e.a.recv(0, T).expect("B to A after A broke its TX ring");
        assert_eq!(got, f);
        assert_eq!(e.b.wait_tx(0, 1, T), 1);
    }
    let mut c = e.rig.guest(2, GuestConfig::default());
    c.set_repost(true);
    assert_eq!(c.post_rx(0, 16, 2048), 16);
    for i in 0..4 {
        let f = frame(B, C, 200 + i, 2000 + i as u32);
        assert!(c.send(0, &hdr, &f, &[]));
        let (_, got) = e.b.recv(0, T).expect("C to B");
        assert_eq!(got, f);
        let g = frame(C, B, 300 + i, 3000 + i as u32);
        assert!(e.b.send(0, &hdr, &g, &[]));
        let (_, got) = c.recv(0, T).expect("B to C");
        assert_eq!(got, g);
    }
    // Once the guest puts its index back, its TX ring works again.
    e.a.set_avail_idx(q, avail);
    e.a_to_b_works("after the avail index was put back");
    assert!(c.violations().is_empty(), "{:?}", c.violations());
    assert_no_backend_panic();
}

#[test]
fn rx_hostile_chains() {
    watch_panics();
    let rig = Rig::new(2, 1);
    let mut a = rig.guest(0, GuestConfig::default());
    let mut b = rig.guest(1, GuestConfig::default());
    let (r0, len0) = b.region_ranges()[0];
    let end = r0 + len0;
    let q = rx(0);
    let b1 = b.alloc(2048).unwrap();
    let b2 = b.alloc(2048).unwrap();
    let b3 = b.alloc(2048).unwrap();
    let canary: Vec<u8> = (0..2048u32).map(|i| (i * 7 + 3) as u8).collect();
    for g in [b1, b2, b3] {
        b.write_guest(g, &canary);
    }
    // (head, descriptors): every chain broken in its own way.
    let hostile: Vec<(u16, Vec<Desc>)> = vec![
        (200, vec![(200, b1, 2048, 0, 0)]),
        (201, vec![(201, 0, 2048, WRITE, 0)]),
        (202, vec![(202, b2, 0, WRITE, 0)]),
        (
            203,
            vec![
                (203, b3, 100, WRITE | NEXT, 204),
                (204, b3 + 100, 100, WRITE | NEXT, 203),
            ],
        ),
        (205, vec![(205, end - 100, 2048, WRITE, 0)]),
        (
            206,
            vec![
                (206, b1, 1024, WRITE | NEXT, 207),
                (207, b1 + 1024, 1024, 0, 0),
            ],
        ),
        (208, vec![(208, u64::MAX - 10, 2048, WRITE, 0)]),
        (209, vec![(209, b2, 2048, WRITE | NEXT, 999)]),
        (210, vec![(210, b3, 2048, WRITE | INDIRECT, 0)]),
    ];
    for (head, descs) in &hostile {
        b.send_raw_on(q, descs, *head);
    }
    // A head past the descriptor table.
    b.send_raw_on(q, &[], 300);
    let nbad = hostile.len() as u64 + 1;

    // A frame for B with only broken RX chains posted: dropped, counted.
    let hdr = [0u8; 12];
    let f1 = frame(B, A, 200, 1);
    assert!(a.send(0, &hdr, &f1, &[]));
    assert_eq!(a.wait_tx(0, 1, T), 1);
    wait_until("drop counters", || {
        rig.ports[1].stats().no_rx_buffer >= 1
            && rig.stats(1).drop(DropReason::DstFull) >= 1
            && rig.ports[1].stats().bad_chains >= nbad
    });
    assert_eq!(rig.stats(1).out_packets, 0);
    assert_no_backend_panic();

    // Good buffers after them: the broken chains come back empty (used len
    // 0) in order, then the frame lands in the first good buffer.
    assert_eq!(b.post_rx(0, 8, 2048), 8);
    let f2 = frame(B, A, 300, 2);
    assert!(a.send(0, &hdr, &f2, &[]));
    assert_eq!(a.wait_tx(0, 1, T), 1);
    let mut empties = Vec::new();
    let got = loop {
        let fr = b.recv_frame(0, T).expect("a frame after good RX buffers");
        if fr.used_len == 0 {
            empties.push(fr);
            continue;
        }
        break fr;
    };
    assert_eq!(got.frame, f2);
    assert_eq!(empties.len(), hostile.len(), "{empties:?}");
    assert!(empties.iter().all(|f| f.frame.is_empty()));
    // The used ring: ids of the broken chains in avail order, length 0.
    let used = b.used_ring_gpa(q);
    for (k, (head, _)) in hostile.iter().enumerate() {
        let e = b.read_guest(used + 4 + 8 * k as u64, 8);
        let id = u32::from_le_bytes(e[0..4].try_into().unwrap());
        let len = u32::from_le_bytes(e[4..8].try_into().unwrap());
        assert_eq!((id, len), (u32::from(*head), 0), "used entry {k}");
    }
    // The fake guest flags a used length shorter than the header, and
    // nothing else.
    assert_eq!(b.violations().len(), hostile.len(), "{:?}", b.violations());
    assert!(b
        .violations()
        .iter()
        .all(|v| v.contains("shorter than the virtio-net header")));
    // Nothing was written through the broken chains.
    for g in [b1, b2, b3] {
        assert_eq!(b.read_guest(g, 2048), canary, "RX buffer at {g:#x} written");
    }
    // Good buffers keep working.
    for i in 0..6 {
        let f = frame(B, A, 60 + 200 * i, 10 + i as u32);
        assert!(a.send(0, &hdr, &f, &[12]));
        let (_, got) = b.recv(0, T).expect("frame after the broken RX chains");
        assert_eq!(got, f);
        assert_eq!(a.wait_tx(0, 1, T), 1);
    }
    assert!(a.violations().is_empty(), "{:?}", a.violations());
    assert_eq!(rig.ports[0].stats().bad_chains, 0);
    assert_no_backend_panic();
}

/// Each broken RX chain is one guest error: counted once, however many
/// frames found it at the head of the ring.
#[test]
fn rx_hostile_chain_counted_once() {
    watch_panics();
    let rig = Rig::new(2, 1);
    let mut a = rig.guest(0, GuestConfig::default());
    let mut b = rig.guest(1, GuestConfig::default());
    let q = rx(0);
    b.send_raw_on(q, &[(200, 0, 2048, WRITE, 0)], 200);
    let hdr = [0u8; 12];
    for i in 0..5 {
        assert!(a.send(0, &hdr, &frame(B, A, 100, i), &[]));
        assert_eq!(a.wait_tx(0, 1, T), 1);
    }
    wait_until("drops", || rig.ports[1].stats().no_rx_buffer >= 5);
    assert_eq!(b.post_rx(0, 4, 2048), 4);
    let f = frame(B, A, 100, 99);
    assert!(a.send(0, &hdr, &f, &[]));
    assert_eq!(b.recv_frame(0, T).expect("the empty entry").used_len, 0);
    assert_eq!(b.recv(0, T).expect("the frame").1, f);
    assert_eq!(rig.ports[1].stats().bad_chains, 1);
    assert_no_backend_panic();
}

#[test]
fn headers_rewritten_in_flight() {
    let mut e = Env::new(2, GuestConfig::default());
    e.b.post_rx(0, 64, 2048);
    e.a_to_b_works("warm-up");
    const SLOTS: usize = 16;
    // (gpa << 16 | len) of A's last frames; the writer scribbles over them.
    let inflight: Arc<Vec<AtomicU64>> = Arc::new((0..SLOTS).map(|_| AtomicU64::new(0)).collect());
    // 0: junk that keeps the frame's length (no GSO), 1: any junk, 2: stop.
    let phase = Arc::new(AtomicU8::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let mem = e.a.memory().clone();
        let (inflight, phase, writes) = (inflight.clone(), phase.clone(), writes.clone());
        thread::Builder::new()
            .name("rewriter".into())
            .spawn(move || {
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
                let mut rnd = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                let mut junk = vec![0u8; 2048];
                loop {
                    let ph = phase.load(Ordering::Relaxed);
                    if ph >= 2 {
                        break;
                    }
                    for s in inflight.iter() {
                        let v = s.load(Ordering::Relaxed);
                        if v == 0 {
                            continue;
                        }
                        let (gpa, len) = (v >> 16, (v & 0xffff) as usize);
                        for c in junk[..len].chunks_mut(8) {
                            let r = rnd().to_le_bytes();
                            c.copy_from_slice(&r[..c.len()]);
                        }
                        if ph == 0 {
                            // GSO type none (ECN bit or not): no segmentation.
                            junk[1] &= 0x80;
                            if junk[2] & 1 == 0 {
                                // Half the time a header the switch passes
                                // through as it is (no checksum to finish).
                                junk[0] &= !1;
                                junk[1] = 0;
                            }
                        }
                        // Destination multicast (always flooded to B), source
                        // never one of the guests' MACs.
                        junk[12] |= 1;
                        junk[18] = 0x06;
                        let _ = mem.write_slice(&junk[..len], GuestAddress(gpa));
                        writes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .expect("spawn")
    };

    let hdr = [0u8; 12];
    let t0 = Instant::now();
    let mut burst = 0u32;
    let mut sent = 0u64;
    let mut received = 0u64;
    while t0.elapsed() < Duration::from_millis(500) {
        if t0.elapsed() > Duration::from_millis(300) {
            phase.store(1, Ordering::Relaxed);
        }
        let ph = phase.load(Ordering::Relaxed);
        burst += 1;
        let len = 60 + (burst as usize * 53) % 1400;
        let out0 = e.rig.stats(1).out_packets;
        for i in 0..SLOTS {
            let f = frame(B, A, len, burst * 100 + i as u32);
            assert!(e.a.send(0, &hdr, &f, &[]), "A's TX ring full");
            let gpa = e.a.last_tx_gpa(0);
            inflight[i].store(gpa << 16 | (12 + len) as u64, Ordering::Relaxed);
        }
        assert_eq!(
            e.a.wait_tx(0, SLOTS, T),
            SLOTS,
            "TX chains not returned while rewritten"
        );
        sent += SLOTS as u64;
        // The batch's frames are published before A's chains come back.
        let n = e.rig.stats(1).out_packets - out0;
        for k in 0..n {
            let (_, got) = e
                .b
                .recv(0, T)
                .unwrap_or_else(|| panic!("burst {burst}: frame {k} of {n} counted, not there"));
            if ph == 0 {
                assert_eq!(got.len(), len, "burst {burst}: frame length changed");
            }
            received += 1;
        }
        assert!(
            e.b.recv(0, Duration::ZERO).is_none(),
            "burst {burst}: more than counted"
        );
        assert_no_backend_panic();
    }
    phase.store(2, Ordering::Relaxed);
    writer.join().expect("rewriter");
    let writes = writes.load(Ordering::Relaxed);
    eprintln!("{burst} bursts: {sent} frames sent, {received} received, {writes} rewrites");
    eprintln!("A: {:?}\nB: {:?}", e.rig.stats(0), e.rig.stats(1));
    assert!(writes > 0);
    assert!(received > 0 && sent > 0);
    for s in inflight.iter() {
        s.store(0, Ordering::Relaxed);
    }
    assert!(e.b.violations().is_empty(), "{:?}", e.b.violations());
    e.a_to_b_works("after the rewriting stopped");
}

/// Mergeable RX buffers with broken chains between the good ones: a frame
/// spread over several buffers skips the broken ones, which come back
/// empty, and its own buffers stay together on the used ring.
#[test]
fn rx_hostile_chains_between_mergeable_buffers() {
    watch_panics();
    let rig = Rig::new(2, 1);
    let mut a = rig.guest(0, GuestConfig::default());
    let mut b = rig.guest(
        1,
        GuestConfig {
            mrg_rxbuf: true,
            ..Default::default()
        },
    );
    assert!(b.mrg_rxbuf());
    let q = rx(0);
    // good, bad, good, bad, good... 256-byte buffers.
    let mut bad = 0;
    for i in 0..12u16 {
        if i % 2 == 0 {
            assert_eq!(b.post_rx(0, 1, 256), 1);
        } else {
            b.send_raw_on(q, &[(RAW + i, 0, 256, WRITE, 0)], RAW + i);
            bad += 1;
        }
    }
    let f = frame(B, A, 700, 7);
    assert!(a.send(0, &[0; 12], &f, &[]));
    let mut empties = 0;
    let got = loop {
        let fr = b.recv_frame(0, T).expect("the frame");
        if fr.used_len == 0 {
            empties += 1;
            continue;
        }
        break fr;
    };
    assert_eq!(got.frame, f);
    assert_eq!(got.num_buffers, 3);
    assert!(empties >= 2, "{empties} empty entries");
    assert!(empties <= bad);
    // Only complaints about the empty entries.
    assert!(
        b.violations().iter().all(
            |v| v.contains("shorter than the virtio-net header") || v.contains("num_buffers 0")
        ),
        "{:?}",
        b.violations()
    );
    assert_eq!(a.wait_tx(0, 1, T), 1);
    assert_no_backend_panic();
}

/// The RX avail index runs away: frames for that guest are dropped and
/// counted, nothing panics, and once the index is put back the queue works.
#[test]
fn rx_avail_idx_runaway() {
    watch_panics();
    let rig = Rig::new(2, 1);
    let mut a = rig.guest(0, GuestConfig::default());
    let mut b = rig.guest(1, GuestConfig::default());
    b.set_repost(true);
    let q = rx(0);
    let avail = b.stats(q).avail_idx;
    b.set_avail_idx(q, avail.wrapping_add(b.queue_size() + 1));
    b.kick(q);
    let hdr = [0u8; 12];
    for i in 0..4 {
        assert!(a.send(0, &hdr, &frame(B, A, 100, i), &[]));
    }
    assert_eq!(a.wait_tx(0, 4, T), 4);
    wait_until("drops", || rig.stats(1).drop(DropReason::DstFull) >= 4);
    assert_eq!(b.rx_used_idx(0), 0);
    assert_no_backend_panic();
    // Put back, then real buffers.
    b.set_avail_idx(q, avail);
    assert_eq!(b.post_rx(0, 8, 2048), 8);
    let f = frame(B, A, 300, 99);
    assert!(a.send(0, &hdr, &f, &[]));
    assert_eq!(b.recv(0, T).expect("after the index was put back").1, f);
    assert!(b.violations().is_empty(), "{:?}", b.violations());
    assert_no_backend_panic();
}

/// RX buffers over the guest's own rings: the device writes frames where
/// the guest told it to, which wrecks that guest's queues; nothing panics
/// and the other guests do not notice.
#[test]
fn rx_buffers_over_own_rings() {
    watch_panics();
    let rig = Rig::new(3, 1);
    let mut a = rig.guest(0, GuestConfig::default());
    let mut b = rig.guest(1, GuestConfig::default());
    let mut c = rig.guest(2, GuestConfig::default());
    c.set_repost(true);
    assert_eq!(c.post_rx(0, 16, 2048), 16);
    let q = rx(0);
    let (desc, avail, used) = (b.desc_table_gpa(q), b.avail_ring_gpa(q), b.used_ring_gpa(q));
    b.send_raw_on(q, &[(200, used, 2048, WRITE, 0)], 200);
    b.send_raw_on(q, &[(201, avail, 2048, WRITE, 0)], 201);
    b.send_raw_on(q, &[(202, desc, 4096, WRITE, 0)], 202);
    let tx_desc = b.desc_table_gpa(tx(0));
    b.send_raw_on(q, &[(203, tx_desc, 4096, WRITE, 0)], 203);
    let hdr = [0u8; 12];
    for i in 0..8 {
        // Not broadcast: a guest MAC nobody has, flooded to B and C.
        let mut f = frame([0x02, 0, 0, 0, 0, 0xee], A, 1500, i);
        f[14..].fill(0xff);
        assert!(a.send(0, &hdr, &f, &[]));
        assert_eq!(a.wait_tx(0, 1, T), 1, "A's frame {i} not returned");
        let (_, got) = c.recv(0, T).expect("C still gets the flood");
        assert_eq!(got, f);
    }
    // B also sends, over the TX table it had the device overwrite:
    // whatever that makes of it, C gets it whole or not at all.
    let fb = frame(C, B, 100, 1);
    let _ = b.send(0, &hdr, &fb, &[]);
    thread::sleep(Duration::from_millis(20));
    while let Some((_, got)) = c.recv(0, Duration::from_millis(20)) {
        assert_eq!(got, fb, "C got something from B it did not send");
    }
    for i in 0..4 {
        let f = frame(C, A, 80, 100 + i);
        assert!(a.send(0, &hdr, &f, &[]));
        assert_eq!(c.recv(0, T).expect("A to C").1, f);
        assert_eq!(a.wait_tx(0, 1, T), 1);
    }
    assert!(a.violations().is_empty(), "{:?}", a.violations());
    assert!(c.violations().is_empty(), "{:?}", c.violations());
    assert_no_backend_panic();
}

/// A TX chain behind a frame held by a backpressure destination is fetched
/// again on every poll until the destination has room; it is one guest
/// error and should be counted once.
#[test]
fn tx_hostile_chain_held_by_backpressure_counted_once() {
    watch_panics();
    let rig = Rig::with_config(
        2,
        1,
        vale::PortConfig {
            backpressure: true,
            ..Default::default()
        },
    );
    let mut a = rig.guest(0, GuestConfig::default());
    let mut b = rig.guest(1, GuestConfig::default());
    let hdr = [0u8; 12];
    let f = frame(B, A, 100, 1);
    assert!(a.send(0, &hdr, &f, &[]));
    a.send_raw(0, &[(RAW, 0, 74, 0, 0)], RAW);
    // B has no buffers: the batch is held, both chains stay with A's ring.
    thread::sleep(Duration::from_millis(50));
    assert_eq!(a.reap_tx(0), 0);
    assert_eq!(b.post_rx(0, 4, 2048), 4);
    assert_eq!(b.recv(0, T).expect("held frame").1, f);
    assert_eq!(a.wait_tx(0, 2, T), 2);
    wait_until("BadSlot", || rig.stats(0).drop(DropReason::BadSlot) >= 1);
    assert_eq!(rig.stats(0).drop(DropReason::BadSlot), 1);
    assert_eq!(rig.ports[0].stats().bad_chains, 1);
    assert_no_backend_panic();
}
