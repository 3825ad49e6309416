//! A hostile device against the driver's rings, in process: the test
//! plays the device on the queue memory directly (no vhost-user), using
//! chains out of order, returning ids that are not in flight or twice,
//! claiming lengths past the buffers and `num_buffers` of any value, and
//! moving the used index anywhere. The driver must never panic, never give
//! the application a slot outside its ring or buffer pool, and count what
//! the device did.

use std::sync::Arc;

use guest_driver::net::{
    BusLayout, BusMap, DriverConfig, Kick, Memory, Negotiated, QueueEvents, Transport,
};
use guest_driver::VirtioRings;
use netmap::abi::NS_MOREFRAG;
use netmap::ring;
use netmap::sys::{EventFd, SharedMap};

const QUEUES: u64 = 0x10_0000;
const BUFS: u64 = 1 << 32;

#[derive(Debug)]
struct NoPeer;
impl Transport for NoPeer {
    fn peer_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
}

/// The device's view of one queue.
struct DevQueue {
    map: Arc<SharedMap>,
    d: usize,
    a: usize,
    u: usize,
    size: u16,
    next_avail: u16,
    used: u16,
}

impl DevQueue {
    fn avail_idx(&self) -> u16 {
        self.map.read::<u16>(self.a + 2).unwrap()
    }
    fn pop(&mut self) -> Option<u16> {
        if self.next_avail == self.avail_idx() {
            return None;
        }
        let i = usize::from(self.next_avail % self.size);
        self.next_avail = self.next_avail.wrapping_add(1);
        Some(self.map.read::<u16>(self.a + 4 + 2 * i).unwrap())
    }
    /// The last descriptor of chain `head` (the buffer), following NEXT.
    fn buffer_of(&self, head: u16) -> u64 {
        let mut i = head;
        for _ in 0..4 {
            let at = self.d + 16 * usize::from(i % self.size);
            let flags = self.map.read::<u16>(at + 12).unwrap();
            if flags & 1 == 0 {
                return self.map.read::<u64>(at).unwrap();
            }
            i = self.map.read::<u16>(at + 14).unwrap();
        }
        0
    }
    fn push_used(&mut self, id: u32, len: u32) {
        let i = usize::from(self.used % self.size);
        self.map.write::<u32>(self.u + 4 + 8 * i, id).unwrap();
        self.map.write::<u32>(self.u + 8 + 8 * i, len).unwrap();
        self.used = self.used.wrapping_add(1);
        self.map.write::<u16>(self.u + 2, self.used).unwrap();
    }
    fn set_used(&mut self, v: u16) {
        self.used = v;
        self.map.write::<u16>(self.u + 2, v).unwrap();
    }
}

/// A tiny deterministic generator (xorshift).
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

fn open(hdr_len: u16, mrg: bool) -> (VirtioRings, DevQueue, DevQueue, usize) {
    let cfg = DriverConfig {
        slots: 64,
        hdr_len,
        mrg_rxbuf: mrg,
        ..Default::default()
    };
    let mem = Memory::new(&cfg).unwrap();
    let map = mem.queue_map.clone();
    let l = mem.lanes[0];
    let size = mem.queue_size;
    let q = |(d, a, u): (usize, usize, usize)| DevQueue {
        map: map.clone(),
        d,
        a,
        u,
        size,
        next_avail: 0,
        used: 0,
    };
    let (rx, tx) = (q(l.rx), q(l.tx));
    let ev = || QueueEvents {
        kick: Kick::EventFd(EventFd::new().unwrap()),
        call: Some(EventFd::new().unwrap()),
    };
    let neg = Negotiated {
        features: 0,
        mrg_rxbuf: mrg,
        event_idx: true,
    };
    let bus = BusLayout {
        queues: QUEUES,
        bufs: BusMap::Linear(BUFS - mem.buf_window().0 as u64),
    };
    let buf_size = 2048;
    let v = VirtioRings::start(
        "hostile",
        cfg,
        neg,
        mem,
        bus,
        vec![(ev(), ev())],
        Box::new(NoPeer),
    )
    .unwrap();
    (v, rx, tx, buf_size)
}

/// Everything the application can see is inside its ring and pool.
fn check_rx(v: &VirtioRings, consumed: &mut u64) {
    let r = v.rx_ring(0).unwrap().ring;
    let n = r.num_slots();
    assert!(r.tail() < n && r.head() < n && r.cur() < n);
    let mut cur = r.cur();
    while cur != r.tail() {
        let s = r.slot(cur);
        assert!(
            s.buf_idx < r.nbufs(),
            "slot {cur}: buffer {} outside the pool",
            s.buf_idx
        );
        assert!(
            u32::from(s.len) <= r.buf_size(),
            "slot {cur}: len {} past the buffer",
            s.len
        );
        assert_eq!(s.flags & !NS_MOREFRAG, 0);
        cur = ring::next(cur, n);
        *consumed += 1;
    }
    r.set_head(cur);
    r.set_cur(cur);
}

#[test]
fn hostile_used_entries_on_rx_never_escape_the_ring() {
    for (hdr, mrg) in [(12, true), (12, false), (0, false)] {
        let (v, mut rx, _, buf_size) = open(hdr, mrg);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(hdr) ^ u64::from(mrg));
        let mut heads: Vec<u16> = Vec::new();
        let mut consumed = 0;
        for _ in 0..5000 {
            while let Some(h) = rx.pop() {
                heads.push(h);
            }
            match rng.below(8) {
                // A chain used properly, but with any length, and any
                // num_buffers in its header.
                0..=3 if !heads.is_empty() => {
                    let k = rng.below(heads.len() as u64) as usize;
                    let h = heads.swap_remove(k);
                    let addr = rx.buffer_of(h);
                    if hdr == 12 && addr >= BUFS {
                        let idx = ((addr - BUFS) / buf_size as u64) as u32;
                        let nb = (rng.below(6) as u16).to_le_bytes();
                        let r = v.rx_ring(0).unwrap().ring;
                        let _ = r.write_buf(idx, 10, &nb);
                    }
                    rx.push_used(u32::from(h), rng.below(70_000) as u32);
                }
                // An id that is not a head in flight.
                4 => rx.push_used(rng.below(1 << 20) as u32, rng.below(3000) as u32),
                // A head again (maybe still in flight, maybe not).
                5 if !heads.is_empty() => {
                    let h = heads[rng.below(heads.len() as u64) as usize];
                    rx.push_used(u32::from(h), 64);
                    rx.push_used(u32::from(h), 64);
                }
                // The used index anywhere.
                6 => {
                    let v16 = rng.next() as u16;
                    rx.set_used(v16);
                }
                _ => {}
            }
            v.rxsync(0).unwrap();
            check_rx(&v, &mut consumed);
        }
        let st = v.stats(0);
        let vio = st.rx_violations;
        assert!(vio.bad_id > 0 && vio.bad_idx > 0, "-H {hdr}: {st:?}");
        assert!(consumed > 0, "-H {hdr}: the application received nothing");
    }
}

#[test]
fn tx_slots_come_back_only_when_their_chain_does_in_ring_order() {
    let (v, _, mut tx, _) = open(12, true);
    let t = v.tx_ring(0).unwrap();
    let r = t.ring;
    let n = r.num_slots();
    // Three frames: one slot, two slots (NS_MOREFRAG), one slot.
    for (i, flags) in [0, NS_MOREFRAG, 0, 0].into_iter().enumerate() {
        let mut s = r.slot(i as u32);
        s.len = 100;
        s.flags = flags;
        r.set_slot(i as u32, s);
    }
    r.set_head(4);
    r.set_cur(4);
    v.txsync(0).unwrap();
    let heads: Vec<u16> = std::iter::from_fn(|| tx.pop()).collect();
    assert_eq!(heads.len(), 3, "three chains for four slots");
    let free = |r: &netmap::ring::RingView<'_>| ring::space(r.cur(), r.tail(), n);
    let before = free(&r);
    assert_eq!(before, n - 5, "four slots in flight");

    // Garbage: ids no chain has, and a used index past what is in flight
    // over them. Nothing comes back.
    tx.push_used(5000, 0);
    tx.push_used(u32::MAX, 0);
    v.txsync(0).unwrap();
    assert_eq!(free(&r), before);
    // The two-slot frame first: done, but behind the first frame.
    tx.push_used(u32::from(heads[1]), 0);
    v.txsync(0).unwrap();
    assert_eq!(free(&r), before, "completion out of order holds");
    // Again: not in flight any more, ignored.
    tx.push_used(u32::from(heads[1]), 0);
    v.txsync(0).unwrap();
    assert_eq!(free(&r), before);
    // The first frame: both come back, three slots.
    tx.push_used(u32::from(heads[0]), 0);
    v.txsync(0).unwrap();
    assert_eq!(free(&r), before + 3);
    assert!(!t.drained());
    tx.push_used(u32::from(heads[2]), 0);
    v.txsync(0).unwrap();
    assert_eq!(free(&r), n - 1);
    assert!(t.drained());
    let st = v.stats(0);
    assert_eq!(st.tx_frames, 3);
    assert_eq!(st.tx_violations.bad_id, 3, "{st:?}");
}

#[test]
fn tx_slots_the_driver_refuses_come_back_unsent() {
    let (v, _, mut tx, _) = open(0, false);
    let t = v.tx_ring(0).unwrap();
    let r = t.ring;
    // A buffer index outside the pool, a length past the buffer, and a
    // frame still open at head (NS_MOREFRAG on its last published slot).
    let mut s = r.slot(0);
    s.buf_idx = u32::MAX;
    s.len = 60;
    r.set_slot(0, s);
    let mut s = r.slot(1);
    s.len = 4000;
    r.set_slot(1, s);
    let mut s = r.slot(2);
    s.len = 60;
    s.flags = NS_MOREFRAG;
    r.set_slot(2, s);
    r.set_head(3);
    r.set_cur(3);
    v.txsync(0).unwrap();
    assert!(tx.pop().is_none(), "nothing reaches the device");
    let st = v.stats(0);
    assert_eq!((st.tx_bad, st.tx_frames), (2, 0));
    // The two refused slots are free again; the open frame waits.
    assert_eq!(
        ring::space(r.cur(), r.tail(), r.num_slots()),
        r.num_slots() - 2
    );
}

/// A TX ring reset (the application moved head backwards) leaves the
/// slots in flight to the device: the application's window starts after
/// them, so it cannot refill a buffer the device is still reading.
#[test]
fn a_tx_ring_reset_keeps_the_slots_in_flight() {
    let (v, _, mut tx, _) = open(12, true);
    let t = v.tx_ring(0).unwrap();
    let r = t.ring;
    let n = r.num_slots();
    for i in 0..4 {
        let mut s = r.slot(i);
        s.len = 100;
        s.flags = 0;
        r.set_slot(i, s);
    }
    r.set_head(4);
    r.set_cur(4);
    v.txsync(0).unwrap();
    let heads: Vec<u16> = std::iter::from_fn(|| tx.pop()).collect();
    assert_eq!(heads.len(), 4);
    // Backwards, behind what was published: netmap resets the ring.
    r.set_head(2);
    r.set_cur(2);
    v.txsync(0).unwrap();
    assert_eq!(
        (r.head(), r.cur()),
        (4, 4),
        "the window starts after the slots in flight"
    );
    assert_eq!(ring::space(r.cur(), r.tail(), n), n - 5);
    // The device returns them: the slots come back, nothing was lost.
    for h in heads {
        tx.push_used(u32::from(h), 0);
    }
    v.txsync(0).unwrap();
    assert_eq!(ring::space(r.cur(), r.tail(), n), n - 1);
    assert!(t.drained());
}
