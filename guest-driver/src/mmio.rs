//! A PCI BAR mapped from sysfs (`resourceN`), read and written with
//! volatile accesses of the width the register has: the device's
//! registers, not memory. Every access is bounds-checked against the BAR
//! and naturally aligned (netmap's `SharedMap` does both).

use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::sync::Arc;

use netmap::sys::SharedMap;

/// One memory BAR, mapped: netmap's shared mapping, whose reads and writes
/// of a `u8`, `u16` or `u32` are single volatile accesses of that width,
/// bounds- and alignment-checked, as registers need.
#[derive(Debug)]
pub struct Bar(SharedMap);

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
        SharedMap::map(&f, len).map(Bar)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the BAR is empty (never: `map` refuses that).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reads the 8-bit register at `off`.
    pub fn read8(&self, off: usize) -> io::Result<u8> {
        self.0.read::<u8>(off)
    }

    /// Reads the little-endian 16-bit register at `off`.
    pub fn read16(&self, off: usize) -> io::Result<u16> {
        self.0.read::<u16>(off).map(u16::from_le)
    }

    /// Reads the little-endian 32-bit register at `off`.
    pub fn read32(&self, off: usize) -> io::Result<u32> {
        self.0.read::<u32>(off).map(u32::from_le)
    }

    /// Writes the 8-bit register at `off`.
    pub fn write8(&self, off: usize, v: u8) -> io::Result<()> {
        self.0.write(off, v)
    }

    /// Writes the little-endian 16-bit register at `off`.
    pub fn write16(&self, off: usize, v: u16) -> io::Result<()> {
        self.0.write(off, v.to_le())
    }

    /// Writes the little-endian 32-bit register at `off`.
    pub fn write32(&self, off: usize, v: u32) -> io::Result<()> {
        self.0.write(off, v.to_le())
    }

    /// Writes a 64-bit register as two 32-bit halves, low first, as the
    /// virtio spec allows drivers to.
    pub fn write64(&self, off: usize, v: u64) -> io::Result<()> {
        self.write32(off, v as u32)?;
        self.write32(off + 4, (v >> 32) as u32)
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
        bar.0.check(off, 2, 2)?;
        Ok(Notify { bar, off, queue })
    }

    /// Kicks.
    pub fn ring(&self) {
        // Checked in `new`; the BAR does not change size.
        let _ = self.bar.write16(self.off, self.queue);
    }
}
