//! Descriptor chains to netmap slots and back.
//!
//! A guest TX chain becomes [`Frag`]s that point straight into guest memory
//! (netmap's `NS_INDIRECT` slots): one per descriptor, cut again where a
//! descriptor crosses a guest memory region or passes 65535 bytes, chained
//! with `NS_MOREFRAG`. A guest RX chain becomes [`DstBuf`]s the engine copies
//! into. Every address is checked against the guest memory map here, once;
//! nothing past this module sees a guest address.
//!
//! Guest memory is hostile and mutable: the descriptors are read once (by
//! [`crate::vring::walk_chain`]), lengths come only from that read, and the bytes
//! behind the pointers may change under us at any time, which the engine
//! tolerates (it copies headers once and never trusts a second read).

use netmap::abi::NS_MOREFRAG;
use vale::frag::{DstBuf, Frag};

pub use crate::types::{ChainError, MAX_FRAGS, MAX_FRAME};

/// Walks TX chain `head` of `ring` (the data path's walker, see
/// [`crate::vring`]) and appends its fragments to `out`. On error `out`
/// is left as it was.
pub fn tx_frags(
    map: &crate::vring::HostMap,
    ring: &crate::vring::Ring,
    head: u16,
    out: &mut Vec<Frag>,
) -> Result<usize, ChainError> {
    if let Some(f) = tx_single(map, ring, head) {
        let len = f.len() as usize;
        out.push(f);
        return Ok(len);
    }
    let start = out.len();
    let mut total = 0usize;
    let r = crate::vring::walk_chain(map, ring, head, |d| {
        if d.flags & crate::vring::F_WRITE != 0 {
            return Err(ChainError::Direction);
        }
        if d.len == 0 {
            return Err(ChainError::ZeroLength);
        }
        total += d.len as usize;
        if total > MAX_FRAME {
            return Err(ChainError::TooLong);
        }
        push_ranges(map, d.addr, d.len, |ptr, len| {
            if out.len() - start >= MAX_FRAGS {
                return Err(ChainError::TooManyFrags);
            }
            if out.len() - start < 2 {
                // The engine reads the vnet header and the Ethernet
                // header first: often two descriptors (a driver's header
                // area, then the packet).
                crate::vring::prefetch(ptr);
            }
            // SAFETY: the range lies in one mapped guest region (checked
            // by `push_ranges`) and the caller holds the memory guard for
            // the batch, so the mapping outlives the fragment, as
            // `Frag::new` requires. The guest may change the bytes: the
            // engine copies them once and trusts nothing it reads twice.
            out.push(unsafe { Frag::new(ptr, len, NS_MOREFRAG) });
            Ok(())
        })
    });
    match r {
        Ok(()) if out.len() > start => {
            if let Some(f) = out.last_mut() {
                *f = f.with_flags(f.flags() & !NS_MOREFRAG);
            }
            Ok(total)
        }
        Ok(()) => Err(ChainError::Empty),
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// TX chain `head` of `ring` when it is one readable descriptor in one
/// region (how Linux and DPDK send a linear frame with its header pushed
/// in front): its one fragment, prefetched for the engine. None sends the
/// caller to [`tx_frags`], which also reports every error.
#[inline(always)]
pub fn tx_single(
    map: &crate::vring::HostMap,
    ring: &crate::vring::Ring,
    head: u16,
) -> Option<Frag<'static>> {
    let (d, ptr) = single(map, ring, head)?;
    if d.flags & crate::vring::F_WRITE != 0 {
        return None;
    }
    // The header and the frame's own headers, which the engine reads
    // first: the driver pushes the 12-byte header in front of a frame that
    // often starts a line (DPDK's headroom, an skb's data), so two lines.
    crate::vring::prefetch_lines(ptr as usize, ptr as usize + (d.len as usize).min(64));
    // SAFETY: `single` checked that the range lies in one mapped region,
    // which the caller's batch keeps mapped while the fragment lives (the
    // guest may change the bytes: the engine copies them once and trusts
    // nothing it reads twice).
    Some(unsafe { Frag::new(ptr, d.len as u16, 0) })
}

/// Walks RX chain `head` of `ring` and appends one [`DstBuf`] per
/// writable range to `out`; returns the chain's capacity. On error `out`
/// is left as it was.
pub fn rx_bufs(
    map: &crate::vring::HostMap,
    ring: &crate::vring::Ring,
    head: u16,
    out: &mut Vec<DstBuf>,
) -> Result<usize, ChainError> {
    if let Some((ptr, len)) = rx_single(map, ring, head) {
        // SAFETY: `rx_single` checked the range lies in one mapped region;
        // the caller holds the memory guard until the buffer is returned.
        out.push(unsafe { DstBuf::new(ptr, len as usize) });
        return Ok(len as usize);
    }
    let start = out.len();
    let mut total = 0usize;
    let r = crate::vring::walk_chain(map, ring, head, |d| {
        if d.flags & crate::vring::F_WRITE == 0 {
            return Err(ChainError::Direction);
        }
        if d.len == 0 {
            return Err(ChainError::ZeroLength);
        }
        total = total.saturating_add(d.len as usize);
        push_ranges(map, d.addr, d.len, |ptr, len| {
            if out.len() - start >= MAX_FRAGS {
                return Err(ChainError::TooManyFrags);
            }
            if out.len() == start {
                crate::vring::prefetch(ptr);
            }
            // SAFETY: the range lies in one mapped guest region and the
            // caller holds the memory guard until the buffer is returned.
            out.push(unsafe { DstBuf::new(ptr, len as usize) });
            Ok(())
        })
    });
    match r {
        Ok(()) if out.len() > start => Ok(total),
        Ok(()) => Err(ChainError::Empty),
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// RX chain `head` when it is one writable buffer in one memory region
/// (how Linux posts RX buffers, mergeable or big): its host address and
/// its length. None sends the caller to [`rx_bufs`], which also reports
/// every error. Not prefetched here: the queue prefetches a few frames
/// ahead of the copy, and on 4 KiB pages only for frames that are not
/// short (`RxQueue::push`).
#[inline(always)]
pub fn rx_single(
    map: &crate::vring::HostMap,
    ring: &crate::vring::Ring,
    head: u16,
) -> Option<(*mut u8, u32)> {
    let (d, ptr) = single(map, ring, head)?;
    if d.flags & crate::vring::F_WRITE == 0 {
        return None;
    }
    Some((ptr, d.len))
}

/// The chain at `head` when it is a single direct descriptor of 1 to
/// 65535 bytes in one memory region, with its host address; None sends
/// the caller to the full walk (which also reports every error).
#[inline(always)]
fn single(
    map: &crate::vring::HostMap,
    ring: &crate::vring::Ring,
    head: u16,
) -> Option<(crate::vring::Desc, *mut u8)> {
    if head >= ring.size() {
        return None;
    }
    let d = ring.desc(head);
    if d.flags & (crate::vring::F_NEXT | crate::vring::F_INDIRECT) != 0
        || d.len == 0
        || d.len > u32::from(u16::MAX)
    {
        return None;
    }
    let (ptr, n) = map.range(d.addr, u64::from(d.len))?;
    (n == u64::from(d.len)).then_some((d, ptr))
}

/// Splits guest range `addr..addr+len` into host pointers, one per memory
/// region crossed and at most 65535 bytes each.
fn push_ranges(
    map: &crate::vring::HostMap,
    addr: u64,
    len: u32,
    mut f: impl FnMut(*mut u8, u16) -> Result<(), ChainError>,
) -> Result<(), ChainError> {
    let oom = ChainError::OutOfMemory { addr, len };
    let mut at = addr;
    let mut left = u64::from(len);
    while left > 0 {
        let (ptr, in_region) = map.range(at, left.min(u64::from(u16::MAX))).ok_or(oom)?;
        if in_region == 0 {
            return Err(oom);
        }
        f(ptr, in_region as u16)?;
        left -= in_region;
        at = at.checked_add(in_region).ok_or(oom)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::types::Mem;
    use crate::vring::{HostMap, Ring, VringConfig, F_INDIRECT, F_NEXT, F_WRITE};

    const BASE: u64 = 0x10_0000;
    const DESC: u64 = BASE;
    const AVAIL: u64 = BASE + 0x1000;
    const USED: u64 = BASE + 0x2000;
    const TABLE: u64 = BASE + 0x3000;
    const DATA: u64 = BASE + 0x4000;
    const SIZE: u16 = 16;

    /// A queue of 16 entries in 64 KiB of guest memory, its descriptors
    /// as given (addr, len, flags, next).
    struct Q {
        mem: Arc<Mem>,
        map: HostMap,
        ring: Ring,
    }

    fn queue(descs: &[(u64, u32, u16, u16)]) -> Q {
        let mem = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(BASE), 0x1_0000)]).unwrap(),
        );
        write_table(&mem, DESC, descs);
        let mut map = HostMap::default();
        map.refresh(&mem);
        let cfg = VringConfig::started(SIZE, DESC, AVAIL, USED);
        // SAFETY: `mem`, which `map` was made from, lives in `Q` beside
        // the ring and outlives every use of it.
        let ring = unsafe { Ring::new(&map, &cfg) }.unwrap();
        Q { mem, map, ring }
    }

    fn write_table(mem: &Mem, at: u64, descs: &[(u64, u32, u16, u16)]) {
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            mem.write_slice(&d, GuestAddress(at + 16 * i as u64))
                .unwrap();
        }
    }

    fn tx(q: &Q, head: u16) -> Result<Vec<(Vec<u8>, u16)>, ChainError> {
        let mut out = Vec::new();
        tx_frags(&q.map, &q.ring, head, &mut out)?;
        Ok(out
            .iter()
            .map(|f| {
                let mut b = vec![0u8; f.len() as usize];
                f.read(0, &mut b);
                (b, f.flags() & NS_MOREFRAG)
            })
            .collect())
    }

    #[test]
    fn tx_chains_become_fragments_in_order() {
        let q = queue(&[
            (DATA, 4, 0, 0),
            (DATA + 0x100, 2, F_NEXT, 2),
            (DATA + 0x200, 3, 0, 0),
            (TABLE, 32, F_INDIRECT, 0),
        ]);
        q.mem.write_slice(b"abcd", GuestAddress(DATA)).unwrap();
        q.mem
            .write_slice(b"xy", GuestAddress(DATA + 0x100))
            .unwrap();
        q.mem
            .write_slice(b"123", GuestAddress(DATA + 0x200))
            .unwrap();
        assert_eq!(tx(&q, 0).unwrap(), vec![(b"abcd".to_vec(), 0)]);
        assert_eq!(
            tx(&q, 1).unwrap(),
            vec![(b"xy".to_vec(), NS_MOREFRAG), (b"123".to_vec(), 0)]
        );
        // An indirect table of two: the same two buffers.
        write_table(
            &q.mem,
            TABLE,
            &[(DATA + 0x100, 2, F_NEXT, 1), (DATA + 0x200, 3, 0, 0)],
        );
        assert_eq!(tx(&q, 3).unwrap(), tx(&q, 1).unwrap());
    }

    #[test]
    fn broken_tx_chains_are_refused_by_name() {
        let q = queue(&[
            (DATA, 4, F_WRITE, 0),
            (DATA, 0, 0, 0),
            (DATA, 4, F_NEXT, 3),
            (DATA, 4, F_NEXT, 2),
            (BASE + 0x2_0000, 4, 0, 0),
            (DATA, 4, F_NEXT, SIZE),
        ]);
        assert_eq!(tx(&q, 0), Err(ChainError::Direction));
        assert_eq!(tx(&q, 1), Err(ChainError::ZeroLength));
        assert_eq!(tx(&q, 2), Err(ChainError::Unterminated), "a loop");
        assert!(matches!(tx(&q, 4), Err(ChainError::OutOfMemory { .. })));
        assert_eq!(
            tx(&q, 5),
            Err(ChainError::Unterminated),
            "next past the table"
        );
        assert_eq!(
            tx(&q, SIZE),
            Err(ChainError::Unterminated),
            "head past the table"
        );
        // A refused chain leaves what was there.
        let mut out = vec![Frag::bad(7)];
        assert!(tx_frags(&q.map, &q.ring, 2, &mut out).is_err());
        assert_eq!(out.len(), 1);
        assert!(out[0].is_bad());
    }

    #[test]
    fn rx_chains_become_buffers_with_their_capacity() {
        let q = queue(&[
            (DATA, 2048, F_WRITE, 0),
            (DATA, 100, F_WRITE | F_NEXT, 2),
            (DATA + 0x1000, 50, F_WRITE, 0),
            (DATA, 64, 0, 0),
        ]);
        let mut out = Vec::new();
        assert_eq!(rx_bufs(&q.map, &q.ring, 0, &mut out), Ok(2048));
        assert_eq!(rx_bufs(&q.map, &q.ring, 1, &mut out), Ok(150));
        assert_eq!(
            out.iter().map(DstBuf::cap).collect::<Vec<_>>(),
            vec![2048, 100, 50]
        );
        let mut b = [0u8; 3];
        out[2].write(0, b"rx!");
        q.mem
            .read_slice(&mut b, GuestAddress(DATA + 0x1000))
            .unwrap();
        assert_eq!(&b, b"rx!", "the buffer is the guest's");
        assert_eq!(
            rx_bufs(&q.map, &q.ring, 3, &mut out),
            Err(ChainError::Direction)
        );
        assert_eq!(out.len(), 3);
    }
}
