//! The driver's side of a split virtqueue: free descriptors, chains in
//! flight, the avail index it publishes and the used entries it reaps, and
//! notification suppression both ways (virtio 1.x §2.7).
//!
//! The device is not trusted. What it writes (used ids, lengths, the used
//! index, `avail_event`) is checked against the driver's private record
//! before it means anything: a used id that is not the head of a chain in
//! flight, a used index more than a queue ahead, are counted in
//! [`Violations`] and skipped; they never index anything but that record.
//! The driver never reads its own descriptors back from shared memory.
//!
//! The caller picks the descriptors of each chain (a netmap slot always
//! uses the same ones), and the queue keeps a private copy of what it last
//! wrote to every descriptor and avail entry: a post writes only the
//! fields that change. Each such write takes the cache line from the
//! device's core, so a chain posted again with the same buffer costs the
//! avail index and nothing else; DPDK's split-ring paths do the same with
//! descriptors set up once.

use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};

use crate::vqmem::VqMem;

/// What a device did wrong, counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Violations {
    /// Used entries naming a descriptor that is not the head of a chain in
    /// flight (out of range, or returned twice).
    pub bad_id: u64,
    /// Used lengths larger than the chain's writable bytes.
    pub bad_len: u64,
    /// Used index moves past what was made available.
    pub bad_idx: u64,
}

/// One buffer of a chain: bus address, length, device-writable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    /// Address the device uses (guest physical, or IOVA).
    pub addr: u64,
    /// Bytes.
    pub len: u32,
    /// The device writes it (RX) rather than reads it (TX).
    pub write: bool,
}

/// A descriptor as the driver last wrote it (the queue memory starts
/// zeroed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// A chain in flight: who it belongs to and how many descriptors it holds.
#[derive(Debug, Clone, Copy, Default)]
struct Chain {
    token: u32,
    ndesc: u16,
    /// Bytes the device may write (used lengths above are refused).
    cap: u32,
    live: bool,
}

/// A used entry, checked: the chain's token and the length, at most the
/// chain's writable bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// What [`SplitQueue::post`] was given.
    pub token: u32,
    /// Bytes written (RX) as the device reported them, clamped to the chain.
    pub len: u32,
    /// Head descriptor of the chain.
    pub head: u16,
}

/// A split virtqueue, driver side.
#[derive(Debug)]
pub struct SplitQueue {
    mem: VqMem,
    size: u16,
    /// Descriptors in a chain in flight.
    busy: Vec<bool>,
    nfree: usize,
    /// What we last wrote to each descriptor: only changes are written,
    /// and freeing a chain follows our links, never the table the device
    /// could have rewritten.
    shadow: Vec<Desc>,
    /// What we last wrote to each avail ring entry.
    avail_shadow: Vec<u16>,
    chains: Vec<Chain>,
    avail_idx: u16,
    /// Chains in flight.
    live: u16,
    /// Avail index at the last publish (for `avail_event`).
    published: u16,
    last_used: u16,
    event_idx: bool,
    irq_on: bool,
    /// What the device did wrong.
    pub violations: Violations,
}

/// `vring_need_event()`: whether moving an index from `old` to `new`
/// passed `event`.
#[inline]
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

impl SplitQueue {
    /// A queue over `mem`, empty; `event_idx` as negotiated. Interrupts
    /// start off: the driver polls until it wants to sleep.
    pub fn new(mem: VqMem, event_idx: bool) -> SplitQueue {
        let size = mem.size();
        let n = usize::from(size);
        let mut q = SplitQueue {
            busy: vec![false; n],
            nfree: n,
            shadow: vec![Desc::default(); n],
            avail_shadow: vec![0; n],
            chains: vec![Chain::default(); n],
            mem,
            size,
            avail_idx: 0,
            live: 0,
            published: 0,
            last_used: 0,
            event_idx,
            irq_on: true,
            violations: Violations::default(),
        };
        q.mem.publish_avail(0);
        q.disable_irq();
        q
    }

    /// Entries in the queue.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Free descriptors.
    #[inline]
    pub fn free(&self) -> usize {
        self.nfree
    }

    /// The first `n` free descriptors, for callers without their own
    /// assignment (tests, the fuzz harness).
    pub fn free_ids(&self, n: usize) -> Option<Vec<u16>> {
        let ids: Vec<u16> = (0..self.size)
            .filter(|&i| !self.busy[usize::from(i)])
            .take(n)
            .collect();
        (ids.len() == n).then_some(ids)
    }

    /// Chains made available and not yet used.
    #[inline]
    pub fn in_flight(&self) -> u16 {
        self.live
    }

    /// Writes descriptor `id` as `d` where it differs from what was last
    /// written there (`id` in range: the caller checked).
    #[inline(always)]
    fn put_desc(&mut self, id: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let old = &mut self.shadow[usize::from(id)];
        if old.addr != addr || old.len != len {
            self.mem.write_desc_buf(id, addr, len);
            old.addr = addr;
            old.len = len;
        }
        if old.flags != flags || old.next != next {
            self.mem.write_desc_link(id, flags, next);
            old.flags = flags;
            old.next = next;
        }
    }

    /// Records chain `head` and makes it available.
    #[inline(always)]
    fn put_head(&mut self, head: u16, ndesc: u16, cap: u32, token: u32) -> u16 {
        self.nfree -= usize::from(ndesc);
        self.chains[usize::from(head)] = Chain {
            token,
            ndesc,
            cap,
            live: true,
        };
        let pos = usize::from(self.avail_idx & (self.size - 1));
        if self.avail_shadow[pos] != head {
            self.mem.set_avail(self.avail_idx, head);
            self.avail_shadow[pos] = head;
        }
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.live += 1;
        head
    }

    #[inline(always)]
    fn flags_of(b: &Buf, next: bool) -> u16 {
        let mut f = if next { VRING_DESC_F_NEXT as u16 } else { 0 };
        if b.write {
            f |= VRING_DESC_F_WRITE as u16;
        }
        f
    }

    /// [`post`](Self::post) of a one-descriptor chain.
    #[inline]
    pub fn post1(&mut self, id: u16, b: Buf, token: u32) -> Option<u16> {
        match self.busy.get_mut(usize::from(id)) {
            Some(x) if !*x => *x = true,
            _ => return None,
        }
        self.put_desc(id, b.addr, b.len, SplitQueue::flags_of(&b, false), 0);
        let cap = if b.write { b.len } else { 0 };
        Some(self.put_head(id, 1, cap, token))
    }

    /// [`post`](Self::post) of a two-descriptor chain (`h` then `d`).
    #[inline]
    pub fn post2(&mut self, h: u16, hb: Buf, d: u16, db: Buf, token: u32) -> Option<u16> {
        if h == d {
            return None;
        }
        match (self.busy.get(usize::from(h)), self.busy.get(usize::from(d))) {
            (Some(false), Some(false)) => {}
            _ => return None,
        }
        self.busy[usize::from(h)] = true;
        self.busy[usize::from(d)] = true;
        self.put_desc(h, hb.addr, hb.len, SplitQueue::flags_of(&hb, true), d);
        self.put_desc(d, db.addr, db.len, SplitQueue::flags_of(&db, false), 0);
        let cap = [hb, db]
            .iter()
            .filter(|b| b.write)
            .fold(0u32, |c, b| c.saturating_add(b.len));
        Some(self.put_head(h, 2, cap, token))
    }

    /// Makes a chain of `bufs` available (not yet published) in
    /// descriptors `ids` (`ids[0]` the head), remembered by `token`. None
    /// if a descriptor is out of range or in a chain in flight (or `bufs`
    /// is empty or `ids` of another length): nothing is written then.
    #[inline]
    pub fn post(&mut self, ids: &[u16], bufs: &[Buf], token: u32) -> Option<u16> {
        let n = bufs.len();
        if n == 0 || ids.len() != n || n > self.nfree {
            return None;
        }
        // Marking as we check also catches a descriptor named twice.
        for (k, &id) in ids.iter().enumerate() {
            match self.busy.get_mut(usize::from(id)) {
                Some(b) if !*b => *b = true,
                _ => {
                    for &d in &ids[..k] {
                        self.busy[usize::from(d)] = false;
                    }
                    return None;
                }
            }
        }
        let mut cap = 0u32;
        for (k, (b, &id)) in bufs.iter().zip(ids).enumerate() {
            let next = ids.get(k + 1).copied();
            if b.write {
                cap = cap.saturating_add(b.len);
            }
            let flags = SplitQueue::flags_of(b, next.is_some());
            self.put_desc(id, b.addr, b.len, flags, next.unwrap_or(0));
        }
        Some(self.put_head(ids[0], n as u16, cap, token))
    }

    /// Publishes the chains posted since the last call. Returns whether
    /// the device asked to be told (the caller then kicks): with EVENT_IDX
    /// when the index passed `avail_event`, else unless the device set
    /// `VRING_USED_F_NO_NOTIFY`.
    #[inline]
    pub fn publish(&mut self) -> bool {
        if self.avail_idx == self.published {
            return false;
        }
        let old = self.published;
        self.published = self.avail_idx;
        self.mem.publish_avail(self.avail_idx);
        // The index store must be visible before we read the device's
        // wish, or both sides may conclude the other will act.
        fence(Ordering::SeqCst);
        if self.event_idx {
            need_event(self.mem.avail_event(), self.avail_idx, old)
        } else {
            self.mem.used_flags() & VRING_USED_F_NO_NOTIFY as u16 == 0
        }
    }

    /// Whether the device has used entries we have not reaped.
    #[inline]
    pub fn has_used(&self) -> bool {
        self.mem.used_idx() != self.last_used
    }

    /// Reaps up to `max` used entries, in order, calling `f` with each
    /// checked entry; the chains' descriptors are free again. Returns how
    /// many entries were consumed (bad ones included).
    #[inline]
    pub fn reap(&mut self, max: usize, mut f: impl FnMut(Used)) -> usize {
        let used = self.mem.used_idx();
        let mut n = used.wrapping_sub(self.last_used);
        if n > self.live {
            // A device cannot use more chains than are in flight: take no
            // more entries than that. Entries it wasted on ids not in
            // flight count against it, not against the chains, which it
            // may still return later.
            self.violations.bad_idx += 1;
            n = self.live;
        }
        let n = usize::from(n).min(max);
        for _ in 0..n {
            let (id, len) = self.mem.used_elem(self.last_used);
            self.last_used = self.last_used.wrapping_add(1);
            let Some(c) = self.take(id) else {
                self.violations.bad_id += 1;
                continue;
            };
            let len = if len > c.cap {
                self.violations.bad_len += 1;
                c.cap
            } else {
                len
            };
            f(Used {
                token: c.token,
                len,
                head: id as u16,
            });
        }
        n
    }

    /// Takes chain `id` out of flight and frees its descriptors.
    fn take(&mut self, id: u32) -> Option<Chain> {
        let c = self.chains.get_mut(usize::try_from(id).ok()?)?;
        if !c.live {
            return None;
        }
        c.live = false;
        let c = *c;
        self.live -= 1;
        let mut d = usize::from(id as u16);
        for _ in 0..c.ndesc {
            self.busy[d] = false;
            d = usize::from(self.shadow[d].next & (self.size - 1));
        }
        self.nfree += usize::from(c.ndesc);
        Some(c)
    }

    /// Asks the device for an interrupt at the next used entry and
    /// re-checks. Returns `true` if the caller may sleep; `false` if used
    /// entries arrived meanwhile (interrupts stay on until
    /// [`disable_irq`](Self::disable_irq)).
    pub fn enable_irq(&mut self) -> bool {
        self.irq_on = true;
        if self.event_idx {
            self.mem.set_used_event(self.last_used);
        } else {
            self.mem.set_avail_flags(0);
        }
        fence(Ordering::SeqCst);
        !self.has_used()
    }

    /// Back to polling: the device need not signal used entries.
    pub fn disable_irq(&mut self) {
        if !self.irq_on {
            return;
        }
        self.irq_on = false;
        if self.event_idx {
            // Half a ring of indexes away: the device signals only if that
            // many entries go unreaped, which a polling driver never lets
            // happen; a late signal is harmless.
            self.mem.set_used_event(self.last_used.wrapping_add(0x8000));
        } else {
            self.mem.set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT as u16);
        }
    }

    /// The avail index as published (for GET_VRING_BASE checks).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// The used index reaped so far.
    pub fn last_used(&self) -> u16 {
        self.last_used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vqmem::layout;
    use netmap::sys::{Memfd, SharedMap};
    use std::sync::Arc;

    fn queue(size: u16, event_idx: bool) -> (SplitQueue, Arc<SharedMap>, (usize, usize, usize)) {
        let (d, a, u, end) = layout(0, size);
        let len = end.next_multiple_of(4096);
        let fd = Memfd::create_sealed("vq", len, false).unwrap();
        let map = Arc::new(SharedMap::map(&fd, len).unwrap());
        let mem = VqMem::new(map.clone(), d, a, u, size).unwrap();
        (SplitQueue::new(mem, event_idx), map, (d, a, u))
    }

    /// What a device does: puts `id, len` in used entry `pos`.
    fn device_use(map: &SharedMap, u: usize, size: u16, pos: u16, id: u32, len: u32) {
        let i = usize::from(pos % size);
        map.write::<u32>(u + 4 + 8 * i, id).unwrap();
        map.write::<u32>(u + 8 + 8 * i, len).unwrap();
    }

    fn set_used_idx(map: &SharedMap, u: usize, idx: u16) {
        map.write::<u16>(u + 2, idx).unwrap();
    }

    #[test]
    fn chains_are_written_linked_and_freed() {
        let (mut q, map, (d, a, u)) = queue(8, false);
        let bufs = [
            Buf {
                addr: 0x1000,
                len: 12,
                write: true,
            },
            Buf {
                addr: 0x2000,
                len: 2048,
                write: true,
            },
        ];
        let head = q.post(&[0, 5], &bufs, 7).unwrap();
        assert_eq!(head, 0);
        assert_eq!(q.free(), 6);
        // The head descriptor links to the second, which ends the chain.
        let hd = d + 16 * usize::from(head);
        assert_eq!(map.read::<u64>(hd).unwrap(), 0x1000);
        let flags = map.read::<u16>(hd + 12).unwrap();
        assert_eq!(flags, (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16);
        let next = map.read::<u16>(hd + 14).unwrap();
        assert_eq!(map.read::<u64>(d + 16 * usize::from(next)).unwrap(), 0x2000);
        assert_eq!(
            map.read::<u16>(d + 16 * usize::from(next) + 12).unwrap(),
            VRING_DESC_F_WRITE as u16
        );
        // Not visible until published; the device did not say NO_NOTIFY.
        assert_eq!(map.read::<u16>(a + 2).unwrap(), 0);
        assert!(q.publish());
        assert_eq!(map.read::<u16>(a + 2).unwrap(), 1);
        assert_eq!(map.read::<u16>(a + 4).unwrap(), head);
        // Nothing new: no kick.
        assert!(!q.publish());

        device_use(&map, u, 8, 0, u32::from(head), 1000);
        set_used_idx(&map, u, 1);
        let mut got = Vec::new();
        assert_eq!(q.reap(64, |e| got.push(e)), 1);
        assert_eq!(
            got,
            [Used {
                token: 7,
                len: 1000,
                head
            }]
        );
        assert_eq!(q.free(), 8);
        assert_eq!(q.violations, Violations::default());
    }

    #[test]
    fn a_hostile_device_is_counted_never_followed() {
        let (mut q, map, (_, _, u)) = queue(8, false);
        let b = [Buf {
            addr: 0x1000,
            len: 100,
            write: true,
        }];
        let h0 = q.post(&[0], &b, 0).unwrap();
        let h1 = q.post(&[1], &b, 1).unwrap();
        let h2 = q.post(&[2], &b, 2).unwrap();
        q.publish();
        // An id out of range, a length past the buffer, the same id twice
        // (the second time it is not in flight), and a used index one
        // past the chains in flight.
        device_use(&map, u, 8, 0, 4000, 10);
        device_use(&map, u, 8, 1, u32::from(h0), 500);
        device_use(&map, u, 8, 2, u32::from(h0), 10);
        device_use(&map, u, 8, 3, u32::from(h1), 10);
        set_used_idx(&map, u, 4);
        let mut got = Vec::new();
        assert_eq!(q.reap(64, |e| got.push(e)), 3, "no more than are in flight");
        assert_eq!(
            got,
            [Used {
                token: 0,
                len: 100,
                head: h0
            }]
        );
        assert_eq!(
            q.violations,
            Violations {
                bad_id: 2,
                bad_len: 1,
                bad_idx: 1
            }
        );
        // h1 and h2 are still in flight and may still come back, but no
        // index jump takes more entries than that.
        assert_eq!(q.in_flight(), 2);
        device_use(&map, u, 8, 4, u32::from(h2), 7);
        set_used_idx(&map, u, 300);
        let mut got = Vec::new();
        assert_eq!(q.reap(64, |e| got.push(e)), 2);
        assert_eq!(
            got,
            [
                Used {
                    token: 1,
                    len: 10,
                    head: h1
                },
                Used {
                    token: 2,
                    len: 7,
                    head: h2
                }
            ]
        );
        assert_eq!(q.violations.bad_idx, 2);
        assert_eq!(q.free(), 8);
        assert_eq!(q.reap(64, |_| panic!("nothing is in flight")), 0);
    }

    #[test]
    fn kicks_follow_the_device_wishes() {
        let (mut q, map, (_, a, u)) = queue(8, true);
        let b = [Buf {
            addr: 0x1000,
            len: 60,
            write: false,
        }];
        // avail_event 0: the first publish (0 -> 1) passes it.
        q.post(&[0], &b, 0).unwrap();
        assert!(q.publish());
        // The device wants a kick only after index 3.
        map.write::<u16>(u + 4 + 8 * 8, 3).unwrap();
        q.post(&[1], &b, 1).unwrap();
        assert!(!q.publish()); // 1 -> 2
        q.post(&[2], &b, 2).unwrap();
        q.post(&[3], &b, 3).unwrap();
        assert!(q.publish()); // 2 -> 4 passes 3
                              // Interrupts: off while polling (used_event far ahead), on to sleep.
        let ue = map.read::<u16>(a + 4 + 2 * 8).unwrap();
        assert_eq!(ue, 0x8000);
        assert!(q.enable_irq());
        assert_eq!(map.read::<u16>(a + 4 + 2 * 8).unwrap(), 0);
        device_use(&map, u, 8, 0, 7, 0);
        set_used_idx(&map, u, 1);
        assert!(!q.enable_irq(), "a used entry arrived: do not sleep");

        let (mut q, map, (_, a, u)) = queue(8, false);
        q.post(&[0], &b, 0).unwrap();
        map.write::<u16>(u, VRING_USED_F_NO_NOTIFY as u16).unwrap();
        assert!(!q.publish());
        assert_eq!(
            map.read::<u16>(a).unwrap(),
            VRING_AVAIL_F_NO_INTERRUPT as u16
        );
        q.enable_irq();
        assert_eq!(map.read::<u16>(a).unwrap(), 0);
        q.disable_irq();
        assert_eq!(
            map.read::<u16>(a).unwrap(),
            VRING_AVAIL_F_NO_INTERRUPT as u16
        );
    }

    #[test]
    fn a_full_queue_refuses_and_recovers() {
        let (mut q, map, (_, _, u)) = queue(4, false);
        let b2 = [
            Buf {
                addr: 1,
                len: 1,
                write: false,
            },
            Buf {
                addr: 2,
                len: 1,
                write: false,
            },
        ];
        let h0 = q.post(&[0, 1], &b2, 0).unwrap();
        let h1 = q.post(&[2, 3], &b2, 1).unwrap();
        assert!(q.post(&[0, 3], &b2, 2).is_none(), "in flight");
        assert!(q.post(&[], &[], 2).is_none());
        assert!(q.post(&[4, 5], &b2, 2).is_none(), "out of range");
        q.publish();
        device_use(&map, u, 4, 0, u32::from(h1), 0);
        device_use(&map, u, 4, 1, u32::from(h0), 0);
        set_used_idx(&map, u, 2);
        let mut order = Vec::new();
        q.reap(64, |e| order.push(e.token));
        assert_eq!(order, [1, 0]);
        assert_eq!(q.free(), 4);
        assert!(
            q.post(&[1, 1], &b2, 3).is_none(),
            "the same descriptor twice"
        );
        assert!(q.post(&[3, 0], &b2, 3).is_some());
    }

    #[test]
    fn post1_and_post2_are_post() {
        let (mut q, map, (d, _, _)) = queue(8, false);
        let (mut r, map2, (d2, _, _)) = queue(8, false);
        let h = Buf {
            addr: 0x100,
            len: 12,
            write: true,
        };
        let b = Buf {
            addr: 0x2000,
            len: 2048,
            write: true,
        };
        assert_eq!(q.post2(4, h, 5, b, 9), r.post(&[4, 5], &[h, b], 9));
        assert_eq!(q.post1(1, b, 3), r.post(&[1], &[b], 3));
        let (mut x, mut y) = ([0u8; 128], [0u8; 128]);
        map.copy_out(d, &mut x).unwrap();
        map2.copy_out(d2, &mut y).unwrap();
        assert_eq!(x, y);
        assert_eq!(q.free(), r.free());
        // Busy, the same twice, out of range: refused alike.
        assert!(q.post1(5, b, 0).is_none() && q.post2(2, h, 2, b, 0).is_none());
        assert!(q.post1(8, b, 0).is_none() && q.post2(2, h, 9, b, 0).is_none());
        assert_eq!(q.free(), 5);
    }

    #[test]
    fn a_chain_posted_again_alike_writes_only_the_avail_index() {
        let (mut q, map, (d, a, u)) = queue(4, false);
        let b = [Buf {
            addr: 0x1000,
            len: 2048,
            write: true,
        }];
        q.post(&[2], &b, 0).unwrap();
        q.publish();
        device_use(&map, u, 4, 0, 2, 60);
        set_used_idx(&map, u, 1);
        q.reap(8, |_| {});
        // The device scribbles on the descriptor and the avail entry: a
        // post of the same chain does not write them again.
        map.write::<u64>(d + 32, 0xdead).unwrap();
        map.write::<u16>(a + 4, 3).unwrap();
        for k in 1..4u16 {
            // Entries 1..3 are new: written.
            q.post(&[2], &b, u32::from(k)).unwrap();
            q.publish();
            device_use(&map, u, 4, k, 2, 60);
            set_used_idx(&map, u, k + 1);
            q.reap(8, |_| {});
        }
        assert_eq!(map.read::<u16>(a + 4 + 2).unwrap(), 2);
        q.post(&[2], &b, 4).unwrap(); // entry 0 again, unchanged
        assert_eq!(
            map.read::<u64>(d + 32).unwrap(),
            0xdead,
            "descriptor untouched"
        );
        assert_eq!(map.read::<u16>(a + 4).unwrap(), 3, "avail entry untouched");
        // A different buffer is written.
        q.publish();
        device_use(&map, u, 4, 4, 2, 60);
        set_used_idx(&map, u, 5);
        q.reap(8, |_| {});
        let b2 = [Buf {
            addr: 0x3000,
            len: 2048,
            write: true,
        }];
        q.post(&[2], &b2, 5).unwrap();
        assert_eq!(map.read::<u64>(d + 32).unwrap(), 0x3000);
    }
}
