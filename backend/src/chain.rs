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
    if let Some((d, ptr)) = single(map, ring, head) {
        // One descriptor, in one region (how Linux and DPDK send a linear
        // frame with its header pushed in front): one fragment.
        if d.flags & crate::vring::F_WRITE != 0 {
            return Err(ChainError::Direction);
        }
        crate::vring::prefetch(ptr);
        // SAFETY: as in the walk below: `single` checked that the range
        // lies in one mapped region, alive for the caller's batch.
        out.push(unsafe { Frag::new(ptr, d.len as u16, 0) });
        return Ok(d.len as usize);
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

/// Walks RX chain `head` of `ring` and appends one [`DstBuf`] per
/// writable range to `out`; returns the chain's capacity. On error `out`
/// is left as it was.
pub fn rx_bufs(
    map: &crate::vring::HostMap,
    ring: &crate::vring::Ring,
    head: u16,
    out: &mut Vec<DstBuf>,
) -> Result<usize, ChainError> {
    if let Some((d, ptr)) = single(map, ring, head) {
        // One writable buffer (how Linux posts mergeable RX buffers).
        if d.flags & crate::vring::F_WRITE == 0 {
            return Err(ChainError::Direction);
        }
        crate::vring::prefetch(ptr);
        // SAFETY: `single` checked the range lies in one mapped region;
        // the caller holds the memory guard until the buffer is returned.
        out.push(unsafe { DstBuf::new(ptr, d.len as usize) });
        return Ok(d.len as usize);
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
