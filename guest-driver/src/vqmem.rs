//! The memory of one split virtqueue, seen from the driver: the descriptor
//! table and the avail ring it writes, the used ring the device writes.
//!
//! Every offset is checked against the mapping once, in [`VqMem::new`];
//! after that each access masks its index with the queue size, so no value
//! (ours or the device's) can reach outside the queue. The device is another
//! process that may write any byte of this memory at any time: nothing here
//! hands out a reference to plain data, values are copied with volatile
//! accesses and the indexes the two sides synchronise on are atomics.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use netmap::sys::SharedMap;

/// Bytes of one descriptor.
pub const DESC_SIZE: usize = 16;

/// Where the three parts of a queue of `size` entries lie, from `at`
/// (offsets in one mapping): descriptors (16-byte aligned), the avail ring
/// with `used_event` (2-byte aligned), the used ring with `avail_event`
/// (4-byte aligned; we give every part its own 64-byte line start so the
/// driver's and the device's writes do not share a cache line). Returns the
/// three offsets and the end.
pub fn layout(at: usize, size: u16) -> (usize, usize, usize, usize) {
    let n = usize::from(size);
    let line = |x: usize| x.next_multiple_of(64);
    let desc = line(at);
    let avail = line(desc + DESC_SIZE * n);
    let used = line(avail + 6 + 2 * n);
    let end = line(used + 6 + 8 * n);
    (desc, avail, used, end)
}

/// One queue's rings inside a shared mapping.
#[derive(Debug)]
pub struct VqMem {
    /// Keeps the mapping alive for the pointers below.
    _map: Arc<SharedMap>,
    desc: *mut u8,
    avail: *mut u8,
    used: *mut u8,
    mask: u16,
}

// SAFETY: the pointers stay valid while `_map` lives (it is owned here), and
// every access is volatile or atomic, as the device's concurrent accesses
// from another process already require.
unsafe impl Send for VqMem {}

impl VqMem {
    /// The queue of `size` entries (a power of two) at the offsets
    /// [`layout`] gave, checked against `map`.
    pub fn new(
        map: Arc<SharedMap>,
        desc: usize,
        avail: usize,
        used: usize,
        size: u16,
    ) -> io::Result<VqMem> {
        if !size.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("queue size {size} is not a power of two"),
            ));
        }
        let n = usize::from(size);
        map.check(desc, DESC_SIZE * n, 16)?;
        // idx, flags, the ring and used_event.
        map.check(avail, 6 + 2 * n, 2)?;
        // idx, flags, the ring and avail_event.
        map.check(used, 6 + 8 * n, 4)?;
        let base = map.as_ptr();
        // SAFETY: the three ranges were checked inside the mapping just now.
        let (desc, avail, used) = unsafe { (base.add(desc), base.add(avail), base.add(used)) };
        Ok(VqMem {
            _map: map,
            desc,
            avail,
            used,
            mask: size - 1,
        })
    }

    /// Entries in the queue.
    pub fn size(&self) -> u16 {
        self.mask + 1
    }

    /// Writes descriptor `i` (taken modulo the size).
    #[inline]
    pub fn write_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let i = usize::from(i & self.mask);
        // SAFETY: `i` < size, and the table of `size` descriptors lies inside
        // the mapping (checked in `new`), 16-byte aligned.
        unsafe {
            let d = self.desc.add(DESC_SIZE * i);
            d.cast::<u64>().write_volatile(addr.to_le());
            d.add(8).cast::<u32>().write_volatile(len.to_le());
            d.add(12).cast::<u16>().write_volatile(flags.to_le());
            d.add(14).cast::<u16>().write_volatile(next.to_le());
        }
    }

    /// Rewrites only the flags and link of descriptor `i`.
    #[inline]
    pub fn write_desc_link(&self, i: u16, flags: u16, next: u16) {
        let i = usize::from(i & self.mask);
        // SAFETY: as in `write_desc`.
        unsafe {
            let d = self.desc.add(DESC_SIZE * i);
            d.add(12).cast::<u16>().write_volatile(flags.to_le());
            d.add(14).cast::<u16>().write_volatile(next.to_le());
        }
    }

    /// Rewrites only the address and length of descriptor `i`, for chains
    /// whose links and flags are set once.
    #[inline]
    pub fn write_desc_buf(&self, i: u16, addr: u64, len: u32) {
        let i = usize::from(i & self.mask);
        // SAFETY: as in `write_desc`.
        unsafe {
            let d = self.desc.add(DESC_SIZE * i);
            d.cast::<u64>().write_volatile(addr.to_le());
            d.add(8).cast::<u32>().write_volatile(len.to_le());
        }
    }

    fn avail_u16(&self, off: usize) -> &AtomicU16 {
        debug_assert!(off <= 4 + 2 * usize::from(self.mask + 1));
        // SAFETY: every caller passes an offset inside the avail ring checked
        // in `new` (flags 0, idx 2, ring 4.., used_event at the end), all
        // 2-byte aligned; AtomicU16 has u16's layout.
        unsafe { &*self.avail.add(off).cast::<AtomicU16>() }
    }

    fn used_u16(&self, off: usize) -> &AtomicU16 {
        debug_assert!(off <= 4 + 8 * usize::from(self.mask + 1));
        // SAFETY: as `avail_u16`, for the used ring (flags 0, idx 2,
        // avail_event at the end).
        unsafe { &*self.used.add(off).cast::<AtomicU16>() }
    }

    /// Puts chain `head` in avail ring entry `pos` (modulo the size); the
    /// device sees it once [`publish_avail`](Self::publish_avail) moves past.
    #[inline]
    pub fn set_avail(&self, pos: u16, head: u16) {
        let off = 4 + 2 * usize::from(pos & self.mask);
        self.avail_u16(off).store(head.to_le(), Ordering::Relaxed);
    }

    /// Stores the avail index with release: the entries and descriptors
    /// written before are visible to a device that reads it with acquire.
    #[inline]
    pub fn publish_avail(&self, idx: u16) {
        self.avail_u16(2).store(idx.to_le(), Ordering::Release);
    }

    /// The avail ring's flags (`VRING_AVAIL_F_NO_INTERRUPT`).
    #[inline]
    pub fn set_avail_flags(&self, flags: u16) {
        self.avail_u16(0).store(flags.to_le(), Ordering::Relaxed);
    }

    /// `used_event` (EVENT_IDX): interrupt when the used index passes it.
    #[inline]
    pub fn set_used_event(&self, v: u16) {
        let off = 4 + 2 * usize::from(self.mask + 1);
        self.avail_u16(off).store(v.to_le(), Ordering::Relaxed);
    }

    /// The device's used index, with acquire: the entries before it are
    /// written.
    #[inline]
    pub fn used_idx(&self) -> u16 {
        u16::from_le(self.used_u16(2).load(Ordering::Acquire))
    }

    /// The used ring's flags (`VRING_USED_F_NO_NOTIFY`).
    #[inline]
    pub fn used_flags(&self) -> u16 {
        u16::from_le(self.used_u16(0).load(Ordering::Relaxed))
    }

    /// `avail_event` (EVENT_IDX): the device wants a kick when the avail
    /// index passes it.
    #[inline]
    pub fn avail_event(&self) -> u16 {
        let off = 4 + 8 * usize::from(self.mask + 1);
        u16::from_le(self.used_u16(off).load(Ordering::Relaxed))
    }

    /// Used ring entry `pos` (modulo the size): the chain's head id and the
    /// bytes the device wrote, as the device wrote them (unchecked).
    #[inline]
    pub fn used_elem(&self, pos: u16) -> (u32, u32) {
        let i = usize::from(pos & self.mask);
        // SAFETY: entry `i` < size lies inside the used ring checked in
        // `new`; the ring starts 4-byte aligned and entries are 8 bytes.
        unsafe {
            let e = self.used.add(4 + 8 * i);
            (
                u32::from_le(e.cast::<u32>().read_volatile()),
                u32::from_le(e.add(4).cast::<u32>().read_volatile()),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmap::sys::Memfd;

    #[test]
    fn layout_is_aligned_and_checked() {
        let (d, a, u, end) = layout(10, 256);
        assert_eq!(d % 64, 0);
        assert!(a >= d + 16 * 256 && a % 64 == 0);
        assert!(u >= a + 6 + 2 * 256 && u % 64 == 0);
        assert!(end >= u + 6 + 8 * 256);
        let fd = Memfd::create_sealed("vq", 1 << 16, false).unwrap();
        let map = Arc::new(SharedMap::map(&fd, 1 << 16).unwrap());
        let q = VqMem::new(map.clone(), d, a, u, 256).unwrap();
        assert_eq!(q.size(), 256);
        // Not a power of two, or past the mapping: refused.
        assert!(VqMem::new(map.clone(), d, a, u, 255).is_err());
        assert!(VqMem::new(map, d, a, (1 << 16) - 100, 256).is_err());
    }

    #[test]
    fn indexes_wrap_inside_the_queue() {
        let (d, a, u, end) = layout(0, 8);
        let fd = Memfd::create_sealed("vq", end.next_multiple_of(4096), false).unwrap();
        let map = Arc::new(SharedMap::map(&fd, end.next_multiple_of(4096)).unwrap());
        let q = VqMem::new(map.clone(), d, a, u, 8).unwrap();
        q.write_desc(9, 0x1000, 60, 2, 3);
        assert_eq!(map.read::<u64>(d + 16).unwrap(), 0x1000);
        assert_eq!(map.read::<u32>(d + 24).unwrap(), 60);
        q.set_avail(10, 5);
        assert_eq!(map.read::<u16>(a + 4 + 4).unwrap(), 5);
        q.publish_avail(11);
        assert_eq!(map.read::<u16>(a + 2).unwrap(), 11);
        q.set_used_event(7);
        assert_eq!(map.read::<u16>(a + 4 + 16).unwrap(), 7);
        map.write::<u32>(u + 4 + 8 * 3, 4).unwrap();
        map.write::<u32>(u + 8 + 8 * 3, 1514).unwrap();
        assert_eq!(q.used_elem(11), (4, 1514));
        map.write::<u16>(u + 4 + 64, 42).unwrap();
        assert_eq!(q.avail_event(), 42);
    }
}
