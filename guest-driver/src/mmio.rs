//! A PCI BAR mapped from sysfs (`resourceN`), read and written with
//! volatile accesses of the width the register has: the device's
//! registers, not memory. Every access is bounds-checked against the BAR
//! and naturally aligned.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

/// One memory BAR, mapped.
#[derive(Debug)]
pub struct Bar {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is device memory owned by this value; every access
// is a volatile read or write of one register, which the device serialises.
unsafe impl Send for Bar {}
// SAFETY: as Send; no reference into the mapping is ever handed out.
unsafe impl Sync for Bar {}

impl Bar {
    /// Maps the whole of `path` (a sysfs `resourceN` file of a memory BAR).
    pub fn map(path: &Path) -> io::Result<Bar> {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        let len = usize::try_from(f.metadata()?.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BAR size"))?;
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: empty BAR (an I/O BAR cannot be mapped)",
                    path.display()
                ),
            ));
        }
        // SAFETY: a fresh shared mapping of the BAR at an address the kernel
        // picks aliases no Rust object; the fd is valid for the call and
        // the mapping outlives closing it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned 0"))?;
        Ok(Bar { ptr, len })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the BAR is empty (never: `map` refuses that).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn at(&self, off: usize, width: usize) -> io::Result<*mut u8> {
        match off.checked_add(width) {
            Some(end) if end <= self.len && off % width == 0 => {
                // SAFETY: `off + width` is inside the mapping (checked).
                Ok(unsafe { self.ptr.as_ptr().add(off) })
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "register of {width} bytes at {off:#x} outside a BAR of {:#x}",
                    self.len
                ),
            )),
        }
    }

    /// Reads the 8-bit register at `off`.
    pub fn read8(&self, off: usize) -> io::Result<u8> {
        let p = self.at(off, 1)?;
        // SAFETY: `p` is inside the mapping; a volatile read of a register.
        Ok(unsafe { p.read_volatile() })
    }

    /// Reads the little-endian 16-bit register at `off`.
    pub fn read16(&self, off: usize) -> io::Result<u16> {
        let p = self.at(off, 2)?;
        // SAFETY: inside the mapping, 2-byte aligned (checked).
        Ok(u16::from_le(unsafe { p.cast::<u16>().read_volatile() }))
    }

    /// Reads the little-endian 32-bit register at `off`.
    pub fn read32(&self, off: usize) -> io::Result<u32> {
        let p = self.at(off, 4)?;
        // SAFETY: inside the mapping, 4-byte aligned (checked).
        Ok(u32::from_le(unsafe { p.cast::<u32>().read_volatile() }))
    }

    /// Writes the 8-bit register at `off`.
    pub fn write8(&self, off: usize, v: u8) -> io::Result<()> {
        let p = self.at(off, 1)?;
        // SAFETY: inside the mapping; a volatile write of a register.
        unsafe { p.write_volatile(v) };
        Ok(())
    }

    /// Writes the little-endian 16-bit register at `off`.
    pub fn write16(&self, off: usize, v: u16) -> io::Result<()> {
        let p = self.at(off, 2)?;
        // SAFETY: inside the mapping, 2-byte aligned (checked).
        unsafe { p.cast::<u16>().write_volatile(v.to_le()) };
        Ok(())
    }

    /// Writes the little-endian 32-bit register at `off`.
    pub fn write32(&self, off: usize, v: u32) -> io::Result<()> {
        let p = self.at(off, 4)?;
        // SAFETY: inside the mapping, 4-byte aligned (checked).
        unsafe { p.cast::<u32>().write_volatile(v.to_le()) };
        Ok(())
    }

    /// Writes a 64-bit register as two 32-bit halves, low first, as the
    /// virtio spec allows drivers to.
    pub fn write64(&self, off: usize, v: u64) -> io::Result<()> {
        self.write32(off, v as u32)?;
        self.write32(off + 4, (v >> 32) as u32)
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once; no reference
        // into it exists.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A queue's notify register: writing the queue index there kicks it.
#[derive(Debug, Clone)]
pub struct Notify {
    bar: Arc<Bar>,
    off: usize,
    queue: u16,
}

impl Notify {
    /// The register at `off` of `bar` for queue `queue`, checked.
    pub fn new(bar: Arc<Bar>, off: usize, queue: u16) -> io::Result<Notify> {
        bar.at(off, 2)?;
        Ok(Notify { bar, off, queue })
    }

    /// Kicks.
    pub fn ring(&self) {
        // Checked in `new`; the BAR does not change size.
        let _ = self.bar.write16(self.off, self.queue);
    }
}
