//! Ring arithmetic with netmap's semantics, and a view of one `netmap_ring`
//! inside a shared mapping.
//!
//! A ring has `num_slots` slots (not necessarily a power of two). The user
//! owns `[head, tail)`, the switch owns `[tail, head)`; `cur` lies in
//! `[head, tail]` and tells the switch how far it may look before waking the
//! user. One slot always stays empty, so a ring of `n` slots carries at most
//! `n - 1` buffers.

use std::io;

use crate::abi::{NetmapSlot, RING_HEADER_SIZE};
use crate::sys::SharedMap;

/// The slot after `i` (netmap's `nm_ring_next`).
#[inline]
pub fn next(i: u32, num_slots: u32) -> u32 {
    let n = i + 1;
    if n == num_slots {
        0
    } else {
        n
    }
}

/// The slot before `i`.
#[inline]
pub fn prev(i: u32, num_slots: u32) -> u32 {
    if i == 0 {
        num_slots - 1
    } else {
        i - 1
    }
}

/// `i + k` modulo `num_slots`, for `k <= num_slots`.
#[inline]
pub fn advance(i: u32, k: u32, num_slots: u32) -> u32 {
    let n = i as u64 + k as u64;
    let ns = num_slots as u64;
    (if n >= ns { n - ns } else { n }) as u32
}

/// Slots from `from` forward to `to` (0 when equal).
#[inline]
pub fn distance(from: u32, to: u32, num_slots: u32) -> u32 {
    if to >= from {
        to - from
    } else {
        to + num_slots - from
    }
}

/// Slots the user may fill or read: `tail - cur` (netmap's `nm_ring_space`).
#[inline]
pub fn space(cur: u32, tail: u32, num_slots: u32) -> u32 {
    distance(cur, tail, num_slots)
}

/// Whether the user has nothing in the ring (`nm_ring_empty`).
#[inline]
pub fn empty(cur: u32, tail: u32) -> bool {
    cur == tail
}

/// Whether a TX ring still holds slots the switch has not taken
/// (`nm_tx_pending`).
#[inline]
pub fn tx_pending(head: u32, tail: u32, num_slots: u32) -> bool {
    next(tail, num_slots) != head
}

/// The switch-side prologue check of txsync and rxsync: a new `head` must lie
/// in `[rhead, rtail]` (the previous head and the tail last given to the
/// user) and `cur` in `[head, rtail]`, circularly. Anything else means the
/// user broke the ring contract and the ring is reset.
#[inline]
pub fn window_ok(rhead: u32, rtail: u32, head: u32, cur: u32, num_slots: u32) -> bool {
    if head >= num_slots || cur >= num_slots {
        return false;
    }
    let room = distance(rhead, rtail, num_slots);
    distance(rhead, head, num_slots) <= room
        && distance(head, cur, num_slots) <= distance(head, rtail, num_slots)
}

/// Offsets of the header fields of `struct netmap_ring`.
pub(crate) mod field {
    pub const BUF_OFS: usize = 0;
    pub const NUM_SLOTS: usize = 8;
    pub const NR_BUF_SIZE: usize = 12;
    pub const RINGID: usize = 16;
    pub const DIR: usize = 18;
    pub const HEAD: usize = 20;
    pub const CUR: usize = 24;
    pub const TAIL: usize = 28;
    pub const FLAGS: usize = 32;
    pub const TS_SEC: usize = 40;
    pub const TS_USEC: usize = 48;
}

/// A `netmap_ring` inside a mapping, validated once: its slot array and every
/// buffer it can name through `buf_ofs` lie inside the mapping.
///
/// Header fields and slots are read and written with volatile accesses; the
/// view gives no references into the mapping.
#[derive(Debug, Clone, Copy)]
pub struct RingView<'a> {
    map: &'a SharedMap,
    off: usize,
    num_slots: u32,
    buf_base: usize,
    buf_size: u32,
    nbufs: u32,
}

/// A ring whose geometry (the switch's own record of it) was checked
/// against its mapping once: views of it are made without checking again,
/// as the mapping never changes size. Every access through a view stays
/// bounds-checked by the mapping.
#[derive(Debug, Clone)]
pub struct RingHandle {
    map: std::sync::Arc<SharedMap>,
    off: usize,
    num_slots: u32,
    buf_base: usize,
    buf_size: u32,
    nbufs: u32,
}

impl RingHandle {
    /// Checks the geometry as [`RingView::from_parts`] does.
    pub fn new(
        map: std::sync::Arc<SharedMap>,
        off: usize,
        num_slots: u32,
        buf_base: usize,
        buf_size: u32,
        nbufs: u32,
    ) -> io::Result<RingHandle> {
        RingView::from_parts(&map, off, num_slots, buf_base, buf_size, nbufs)?;
        Ok(RingHandle {
            map,
            off,
            num_slots,
            buf_base,
            buf_size,
            nbufs,
        })
    }

    /// A view of the ring.
    #[inline]
    pub fn view(&self) -> RingView<'_> {
        RingView {
            map: &self.map,
            off: self.off,
            num_slots: self.num_slots,
            buf_base: self.buf_base,
            buf_size: self.buf_size,
            nbufs: self.nbufs,
        }
    }

    /// The mapping the ring lives in.
    pub fn map(&self) -> &std::sync::Arc<SharedMap> {
        &self.map
    }
}

impl<'a> RingView<'a> {
    /// Opens the ring at `off`, reading `num_slots`, `nr_buf_size` and
    /// `buf_ofs` once. `nbufs` is the number of buffers in the region's pool;
    /// buffer indexes at or past it are out of range.
    pub fn new(map: &'a SharedMap, off: usize, nbufs: u32) -> io::Result<RingView<'a>> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        map.check(off, RING_HEADER_SIZE, 8)?;
        let num_slots: u32 = map.read(off + field::NUM_SLOTS)?;
        let buf_size: u32 = map.read(off + field::NR_BUF_SIZE)?;
        let buf_ofs: i64 = map.read(off + field::BUF_OFS)?;
        let buf_base = (off as i64)
            .checked_add(buf_ofs)
            .filter(|b| *b >= 0)
            .ok_or_else(|| {
                bad(format!(
                    "ring at {off}: buf_ofs {buf_ofs} points before the region"
                ))
            })? as usize;
        // The geometry read from the header gets the same checks as the
        // switch's own record of it.
        Self::from_parts(map, off, num_slots, buf_base, buf_size, nbufs).map_err(|e| {
            bad(format!(
                "ring at {off}: {num_slots} slots, {nbufs} buffers of {buf_size} bytes at {buf_base}: {e}"
            ))
        })
    }

    /// A view from values the caller trusts (the switch's own record of the
    /// ring), ignoring what the header in shared memory now says: a client
    /// may rewrite `num_slots` or `buf_ofs`, the switch never re-reads them.
    pub fn from_parts(
        map: &'a SharedMap,
        off: usize,
        num_slots: u32,
        buf_base: usize,
        buf_size: u32,
        nbufs: u32,
    ) -> io::Result<RingView<'a>> {
        map.check(off, RING_HEADER_SIZE, 8)?;
        map.check(
            off + RING_HEADER_SIZE,
            num_slots as usize * size_of::<NetmapSlot>(),
            8,
        )?;
        map.check(buf_base, nbufs as usize * buf_size as usize, 1)?;
        if num_slots < 2 || buf_size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ring of < 2 slots or 0-byte buffers",
            ));
        }
        Ok(RingView {
            map,
            off,
            num_slots,
            buf_base,
            buf_size,
            nbufs,
        })
    }

    /// Opens the ring at `off` on the client side, where the pool size is
    /// not known: every buffer index whose buffer lies inside the mapping is
    /// accepted.
    pub fn open(map: &'a SharedMap, off: usize) -> io::Result<RingView<'a>> {
        map.check(off, RING_HEADER_SIZE, 8)?;
        let buf_size: u32 = map.read(off + field::NR_BUF_SIZE)?;
        let buf_ofs: i64 = map.read(off + field::BUF_OFS)?;
        let base = (off as i64).saturating_add(buf_ofs);
        let nbufs = match (usize::try_from(base), buf_size) {
            (Ok(b), s) if s > 0 && b < map.len() => ((map.len() - b) / s as usize) as u32,
            _ => 0,
        };
        Self::new(map, off, nbufs)
    }

    /// Offset of the ring in the mapping.
    pub fn offset(&self) -> usize {
        self.off
    }
    /// Number of slots.
    pub fn num_slots(&self) -> u32 {
        self.num_slots
    }
    /// Size of each buffer.
    pub fn buf_size(&self) -> u32 {
        self.buf_size
    }
    /// Buffers in the pool this ring draws from.
    pub fn nbufs(&self) -> u32 {
        self.nbufs
    }
    /// The mapping this ring lives in.
    pub fn map(&self) -> &'a SharedMap {
        self.map
    }

    fn get(&self, field: usize) -> u32 {
        // In bounds: checked in `new` (the header is inside the mapping).
        self.map.read(self.off + field).unwrap_or(0)
    }
    fn set(&self, field: usize, v: u32) {
        let _ = self.map.write(self.off + field, v);
    }

    /// `ring->head`.
    pub fn head(&self) -> u32 {
        self.get(field::HEAD)
    }
    /// `ring->cur`.
    pub fn cur(&self) -> u32 {
        self.get(field::CUR)
    }
    /// `ring->tail`.
    pub fn tail(&self) -> u32 {
        self.get(field::TAIL)
    }
    /// Sets `ring->head`.
    pub fn set_head(&self, v: u32) {
        self.set(field::HEAD, v)
    }
    /// Sets `ring->cur`.
    pub fn set_cur(&self, v: u32) {
        self.set(field::CUR, v)
    }
    /// Sets `ring->tail` (the sync code does this; users never do).
    pub fn set_tail(&self, v: u32) {
        self.set(field::TAIL, v)
    }
    /// `ring->flags`.
    pub fn flags(&self) -> u32 {
        self.get(field::FLAGS)
    }
    /// Sets `ring->ts`.
    pub fn set_ts(&self, sec: i64, usec: i64) {
        let _ = self.map.write(self.off + field::TS_SEC, sec);
        let _ = self.map.write(self.off + field::TS_USEC, usec);
    }
    /// Reads `ring->ts` as (seconds, microseconds).
    pub fn ts(&self) -> (i64, i64) {
        (
            self.map.read(self.off + field::TS_SEC).unwrap_or(0),
            self.map.read(self.off + field::TS_USEC).unwrap_or(0),
        )
    }

    #[inline]
    fn slot_off(&self, i: u32) -> usize {
        // Indexes are nearly always in range: no division for those.
        let i = if i < self.num_slots {
            i
        } else {
            i % self.num_slots
        };
        self.off + RING_HEADER_SIZE + i as usize * size_of::<NetmapSlot>()
    }

    /// A copy of slot `i` (taken modulo `num_slots`).
    #[inline]
    pub fn slot(&self, i: u32) -> NetmapSlot {
        self.map.read(self.slot_off(i)).unwrap_or_default()
    }

    /// Overwrites slot `i`.
    #[inline]
    pub fn set_slot(&self, i: u32, s: NetmapSlot) {
        let _ = self.map.write(self.slot_off(i), s);
    }

    /// Offset in the mapping of buffer `buf_idx`, if the index is in range.
    #[inline]
    pub fn buf_offset(&self, buf_idx: u32) -> Option<usize> {
        (buf_idx < self.nbufs).then(|| self.buf_base + buf_idx as usize * self.buf_size as usize)
    }

    /// Copies `data` into buffer `buf_idx` at byte `at`. Fails if the index is
    /// out of range or the data does not fit.
    #[inline]
    pub fn write_buf(&self, buf_idx: u32, at: usize, data: &[u8]) -> io::Result<()> {
        let off = self.checked_buf(buf_idx, at, data.len())?;
        self.map.copy_in(off, data)
    }

    /// Copies from buffer `buf_idx` at byte `at` into `out`.
    #[inline]
    pub fn read_buf(&self, buf_idx: u32, at: usize, out: &mut [u8]) -> io::Result<()> {
        let off = self.checked_buf(buf_idx, at, out.len())?;
        self.map.copy_out(off, out)
    }

    fn checked_buf(&self, buf_idx: u32, at: usize, len: usize) -> io::Result<usize> {
        let base = self.buf_offset(buf_idx).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("buf_idx {buf_idx} out of range (pool has {})", self.nbufs),
            )
        })?;
        match at.checked_add(len) {
            Some(end) if end <= self.buf_size as usize => Ok(base + at),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{len} bytes at {at} exceed buffer size {}", self.buf_size),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_handle_checks_once_and_views_alike() {
        let fd = crate::sys::Memfd::create_sealed("ring-handle", 1 << 16, false).unwrap();
        let map = std::sync::Arc::new(SharedMap::map(&fd, 1 << 16).unwrap());
        // 64 slots at 0, 16 buffers of 2 KiB at 8 KiB.
        let h = RingHandle::new(map.clone(), 0, 64, 8192, 2048, 16).unwrap();
        let v = RingView::from_parts(&map, 0, 64, 8192, 2048, 16).unwrap();
        assert_eq!(h.view().num_slots(), v.num_slots());
        assert_eq!(h.view().buf_offset(15), v.buf_offset(15));
        assert_eq!(h.view().buf_offset(16), None);
        // Buffers past the mapping, or a ring of one slot: refused.
        assert!(RingHandle::new(map.clone(), 0, 64, 8192, 2048, 64).is_err());
        assert!(RingHandle::new(map, 0, 1, 8192, 2048, 16).is_err());
    }

    #[test]
    fn next_prev_wrap() {
        assert_eq!(next(0, 3), 1);
        assert_eq!(next(2, 3), 0);
        assert_eq!(prev(0, 3), 2);
        assert_eq!(advance(2, 3, 3), 2);
        assert_eq!(advance(1, 1, 3), 2);
        assert_eq!(distance(2, 1, 3), 2);
        assert_eq!(space(0, 0, 5), 0);
        assert!(empty(4, 4));
        assert!(!tx_pending(1, 0, 5));
        assert!(tx_pending(0, 0, 5));
    }

    #[test]
    fn window() {
        // rhead 2, rtail 6 on 8 slots: head in 2..=6, cur in head..=6.
        assert!(window_ok(2, 6, 2, 2, 8));
        assert!(window_ok(2, 6, 6, 6, 8));
        assert!(window_ok(2, 6, 3, 5, 8));
        assert!(!window_ok(2, 6, 1, 1, 8));
        assert!(!window_ok(2, 6, 7, 7, 8));
        assert!(!window_ok(2, 6, 4, 3, 8));
        assert!(!window_ok(2, 6, 4, 7, 8));
        // Wrapped: rhead 6, rtail 2: head in {6,7,0,1,2}.
        assert!(window_ok(6, 2, 0, 1, 8));
        assert!(window_ok(6, 2, 7, 0, 8));
        assert!(!window_ok(6, 2, 3, 3, 8));
        assert!(!window_ok(6, 2, 0, 7, 8));
        assert!(!window_ok(6, 2, 8, 8, 8));
        assert!(!window_ok(6, 2, 0, u32::MAX, 8));
    }

    proptest! {
        #[test]
        fn distance_inverts_advance(n in 2u32..5000, i in 0u32..5000, k in 0u32..5000) {
            let i = i % n;
            let k = k % n;
            let j = advance(i, k, n);
            prop_assert!(j < n);
            prop_assert_eq!(distance(i, j, n), k);
        }

        #[test]
        fn window_matches_walk(n in 2u32..64, rh in 0u32..64, len in 0u32..64, h in 0u32..70, c in 0u32..70) {
            let rh = rh % n;
            let rt = advance(rh, len % n, n);
            // Walk the window explicitly: head must be reached walking from
            // rhead without passing rtail; cur likewise from head.
            let mut ok_head = false;
            let mut i = rh;
            loop {
                if i == h { ok_head = true; break; }
                if i == rt { break; }
                i = next(i, n);
            }
            let mut ok_cur = false;
            if ok_head {
                let mut i = h;
                loop {
                    if i == c { ok_cur = true; break; }
                    if i == rt { break; }
                    i = next(i, n);
                }
            }
            prop_assert_eq!(window_ok(rh, rt, h, c, n), ok_head && ok_cur);
        }
    }
}
