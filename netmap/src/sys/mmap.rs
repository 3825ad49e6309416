//! A `MAP_SHARED` mapping of a memfd, with bounds-checked access.
//!
//! The memory is shared with another process that may write it at any time
//! (and, on valed's side, may be hostile). So the mapping never hands out
//! Rust references to plain data inside it: values are copied in and out
//! with volatile accesses, and the words two processes synchronise on are
//! reached only as atomics.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::pod::Pod;

/// A shared mapping of a whole file.
#[derive(Debug)]
pub struct SharedMap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; every access goes
// through volatile or atomic operations, so sharing it between threads is no
// different from sharing it with the other process.
unsafe impl Send for SharedMap {}
// SAFETY: see `Send`; no method hands out `&mut` to the memory.
unsafe impl Sync for SharedMap {}

/// Error for an access outside the mapping or misaligned.
fn oob(off: usize, len: usize, map: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "access of {len} bytes at offset {off} outside mapping of {map} bytes or misaligned"
        ),
    )
}

impl SharedMap {
    /// Maps `len` bytes of `fd` from offset 0, readable and writable, shared.
    pub fn map(fd: impl AsFd, len: usize) -> io::Result<SharedMap> {
        SharedMap::map_at(fd, len, 0)
    }

    /// Maps `len` bytes of `fd` from `offset` (a page multiple; sockets
    /// such as AF_XDP's name their rings by offset).
    pub fn map_at(fd: impl AsFd, len: usize, offset: u64) -> io::Result<SharedMap> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mapping offset"))?;
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "mapping of 0 bytes",
            ));
        }
        // SAFETY: a fresh mapping at an address chosen by the kernel cannot
        // alias any Rust object; the fd is valid for the call.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_fd().as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned 0"))?;
        Ok(SharedMap { ptr, len })
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never true: mappings have a length).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Base address, for computing netmap's relative offsets or handing the
    /// address to code that does its own bounds checks.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Checks that `[off, off+len)` lies inside the mapping and that `off` is
    /// aligned to `align`.
    #[inline]
    pub fn check(&self, off: usize, len: usize, align: usize) -> io::Result<()> {
        match off.checked_add(len) {
            Some(end) if end <= self.len && off % align == 0 => Ok(()),
            _ => Err(oob(off, len, self.len)),
        }
    }

    /// Reads a `T` at `off` with one volatile access per field width.
    #[inline]
    pub fn read<T: Pod>(&self, off: usize) -> io::Result<T> {
        self.check(off, size_of::<T>(), align_of::<T>())?;
        // SAFETY: bounds and alignment checked above; T is Pod, so any bytes
        // another process left there are a valid T.
        Ok(unsafe { self.ptr.as_ptr().add(off).cast::<T>().read_volatile() })
    }

    /// Writes a `T` at `off`.
    #[inline]
    pub fn write<T: Pod>(&self, off: usize, val: T) -> io::Result<()> {
        self.check(off, size_of::<T>(), align_of::<T>())?;
        // SAFETY: bounds and alignment checked; no Rust reference into the
        // mapping exists, so this write aliases nothing.
        unsafe { self.ptr.as_ptr().add(off).cast::<T>().write_volatile(val) };
        Ok(())
    }

    /// The `u32` at `off` as an atomic, for words both sides synchronise on.
    #[inline]
    pub fn atomic_u32(&self, off: usize) -> io::Result<&AtomicU32> {
        self.check(off, 4, 4)?;
        // SAFETY: in bounds and 4-aligned; AtomicU32 has the layout of u32 and
        // only allows atomic access, which is sound on shared memory. The
        // reference lives no longer than the mapping (`&self`).
        Ok(unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(off).cast()) })
    }

    /// The `u64` at `off` as an atomic.
    #[inline]
    pub fn atomic_u64(&self, off: usize) -> io::Result<&AtomicU64> {
        self.check(off, 8, 8)?;
        // SAFETY: as for atomic_u32, with 8-byte size and alignment.
        Ok(unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(off).cast()) })
    }

    /// Copies `dst.len()` bytes from the mapping at `off` into `dst`.
    #[inline]
    pub fn copy_out(&self, off: usize, dst: &mut [u8]) -> io::Result<()> {
        self.check(off, dst.len(), 1)?;
        // SAFETY: source range checked; dst is a distinct Rust buffer (it
        // cannot point into the mapping, for which we never make slices).
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), dst.as_mut_ptr(), dst.len())
        };
        Ok(())
    }

    /// Copies `src` into the mapping at `off`.
    #[inline]
    pub fn copy_in(&self, off: usize, src: &[u8]) -> io::Result<()> {
        self.check(off, src.len(), 1)?;
        // SAFETY: destination range checked; src is outside the mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(off), src.len())
        };
        Ok(())
    }

    /// Copies `len` bytes inside the mapping from `src` to `dst`; the ranges
    /// may overlap.
    #[inline]
    pub fn copy_within(&self, src: usize, dst: usize, len: usize) -> io::Result<()> {
        self.check(src, len, 1)?;
        self.check(dst, len, 1)?;
        // SAFETY: both ranges checked to be inside the mapping; `copy`
        // allows overlap.
        unsafe { std::ptr::copy(self.ptr.as_ptr().add(src), self.ptr.as_ptr().add(dst), len) };
        Ok(())
    }

    /// Fills `len` bytes at `off` with `byte`.
    pub fn fill(&self, off: usize, len: usize, byte: u8) -> io::Result<()> {
        self.check(off, len, 1)?;
        // SAFETY: range checked.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(off), byte, len) };
        Ok(())
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe a mapping this value created and owns; no
        // reference into it outlives `self` (accessors borrow `&self`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::Memfd;

    #[test]
    fn bounds_and_alignment() {
        let m = Memfd::create_sealed("t", 4096, false).unwrap();
        let map = SharedMap::map(&m, m.size()).unwrap();
        map.write::<u32>(4092, 7).unwrap();
        assert_eq!(map.read::<u32>(4092).unwrap(), 7);
        assert!(map.read::<u32>(4093).is_err());
        assert!(map.read::<u32>(4096).is_err());
        assert!(map.read::<u64>(usize::MAX - 3).is_err());
        assert!(map.copy_in(4000, &[0u8; 97]).is_err());
        assert!(map.atomic_u32(2).is_err());
        map.copy_in(10, b"hello").unwrap();
        map.copy_within(10, 12, 5).unwrap();
        let mut out = [0u8; 7];
        map.copy_out(10, &mut out).unwrap();
        assert_eq!(&out, b"hehello");
    }

    #[test]
    fn two_mappings_see_the_same_bytes() {
        let m = Memfd::create_sealed("t", 8192, false).unwrap();
        let a = SharedMap::map(&m, m.size()).unwrap();
        let b = SharedMap::map(&m, m.size()).unwrap();
        a.atomic_u32(4096)
            .unwrap()
            .store(0xdead_beef, std::sync::atomic::Ordering::Release);
        assert_eq!(b.read::<u32>(4096).unwrap(), 0xdead_beef);
    }
}
