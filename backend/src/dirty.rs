//! The dirty log of a live migration (`VHOST_USER_PROTOCOL_F_LOG_SHMFD`,
//! `VHOST_F_LOG_ALL`): a bitmap the VMM shares by `SET_LOG_BASE`, one bit
//! per 4 KiB guest page, bit `p % 8` of byte `p / 8` for page `p`. While
//! the driver logs, every guest byte the port writes — RX frames and their
//! headers, used entries, the used index and the notification fields — has
//! its page's bit set, after the write, with an atomic OR (the VMM clears
//! bits concurrently with atomic exchanges as it copies pages).
//!
//! The bitmap's memory comes from the VMM and is checked as hostile: a
//! memfd sealed against shrinking (QEMU seals its log so), at least as
//! large as the area named, mapped once. A bit past the end is never
//! written: [`DirtyLog::mark`] says so and the caller counts it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Bytes of guest memory per bit.
pub const LOG_PAGE: u64 = 4096;

/// Largest log accepted: 1 GiB of bitmap covers 32 TiB of guest memory.
pub const MAX_LOG_BYTES: u64 = 1 << 30;

/// Why a log was refused.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Zero or past [`MAX_LOG_BYTES`], or the offset is not page aligned.
    #[error("log of {size} bytes at offset {offset:#x}: size must be 1..={MAX_LOG_BYTES} and the offset page aligned")]
    Geometry {
        /// mmap_size asked for.
        size: u64,
        /// mmap_offset asked for.
        offset: u64,
    },
    /// The descriptor could shrink under the mapping (not a memfd sealed
    /// with `F_SEAL_SHRINK`): a write past its end would be a SIGBUS in
    /// valed.
    #[error("log descriptor is not a memfd sealed against shrinking (F_SEAL_SHRINK)")]
    NotSealed,
    /// A hugetlbfs file: a hole punched in it (which seals do not stop)
    /// refaults only while the pool has pages, else valed's next mark is a
    /// SIGBUS.
    #[error("log descriptor is a hugetlbfs file (QEMU's log is an ordinary memfd)")]
    HugeTlb,
    /// The file is smaller than the area named.
    #[error("log file holds {file} bytes, the area ends at {end}")]
    Short {
        /// File size.
        file: u64,
        /// offset + size.
        end: u64,
    },
    /// An OS call failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A mapped dirty log.
#[derive(Debug)]
pub struct DirtyLog {
    base: NonNull<u8>,
    /// Bytes of bitmap (the VMM's mmap_size).
    len: usize,
    /// Bytes mapped (from the page-aligned offset).
    map_len: usize,
    /// Marks that fell past the bitmap's end (not written).
    outside: AtomicU64,
    _fd: OwnedFd,
}

// SAFETY: the mapping is shared memory accessed only through atomics; the
// pointer stays valid until Drop, whichever thread holds the log.
unsafe impl Send for DirtyLog {}
// SAFETY: as above; every access is an atomic read-modify-write.
unsafe impl Sync for DirtyLog {}

impl DirtyLog {
    /// Maps `size` bytes of bitmap at `offset` in `fd` (SET_LOG_BASE).
    pub fn map(fd: OwnedFd, size: u64, offset: u64) -> Result<DirtyLog, LogError> {
        if size == 0 || size > MAX_LOG_BYTES || offset % LOG_PAGE != 0 {
            return Err(LogError::Geometry { size, offset });
        }
        let raw = fd.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own; F_GET_SEALS takes no
        // argument and fails (EINVAL) on anything but a memfd.
        let seals = unsafe { libc::fcntl(raw, libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(LogError::NotSealed);
        }
        // SAFETY: fstatfs writes into the zeroed struct we pass; a valid fd.
        let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstatfs(raw, &mut sfs) } < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        if sfs.f_type == libc::HUGETLBFS_MAGIC {
            return Err(LogError::HugeTlb);
        }
        // SAFETY: fstat writes into the zeroed struct we pass.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above, a valid fd and a valid out pointer.
        if unsafe { libc::fstat(raw, &mut st) } < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let end = offset
            .checked_add(size)
            .ok_or(LogError::Geometry { size, offset })?;
        if (st.st_size as u64) < end {
            return Err(LogError::Short {
                file: st.st_size as u64,
                end,
            });
        }
        let map_len = size as usize;
        // SAFETY: a fresh shared mapping of `map_len` bytes of a file that
        // cannot shrink below `end` (sealed and checked above); nothing
        // else is mapped at the address the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                raw,
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(DirtyLog {
            base: NonNull::new(p as *mut u8).expect("mmap never returns null on success"),
            len: size as usize,
            map_len,
            outside: AtomicU64::new(0),
            _fd: fd,
        })
    }

    /// Bytes of guest memory the bitmap covers, from guest address 0.
    pub fn covers(&self) -> u64 {
        self.len as u64 * 8 * LOG_PAGE
    }

    /// Marks the pages of `len` bytes at guest address `gpa` dirty. False
    /// if some fell past the bitmap (those are not marked, and counted).
    pub fn mark(&self, gpa: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let first = gpa / LOG_PAGE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE;
        let mut ok = true;
        let mut page = first;
        while page <= last {
            let byte = page / 8;
            if byte >= self.len as u64 {
                self.outside.fetch_add(last - page + 1, Ordering::Relaxed);
                ok = false;
                break;
            }
            // Whole bytes at once where the range covers them.
            let bits = if page % 8 == 0 && last - page >= 7 {
                0xffu8
            } else {
                let hi = (last - byte * 8).min(7);
                let lo = page % 8;
                ((0xffu16 << lo) & (0xffu16 >> (7 - hi))) as u8
            };
            // SAFETY: byte < len <= map_len: inside the live mapping; the
            // VMM updates the same bytes with atomics too.
            let b = unsafe { AtomicU8::from_ptr(self.base.as_ptr().add(byte as usize)) };
            // Release: the page's bytes, written before, are visible to a
            // VMM that sees the bit.
            b.fetch_or(bits, Ordering::Release);
            page = (byte + 1) * 8;
        }
        ok
    }

    /// Pages asked to be marked past the bitmap's end, so far.
    pub fn outside(&self) -> u64 {
        self.outside.load(Ordering::Relaxed)
    }

    /// Whether page `p`'s bit is set (for tests and diagnostics).
    pub fn is_dirty(&self, p: u64) -> bool {
        if p / 8 >= self.len as u64 {
            return false;
        }
        // SAFETY: inside the mapping, as in `mark`.
        let b = unsafe { AtomicU8::from_ptr(self.base.as_ptr().add((p / 8) as usize)) };
        b.load(Ordering::Acquire) & (1 << (p % 8)) != 0
    }
}

impl Drop for DirtyLog {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no reference
        // into it outlives `self`.
        unsafe { libc::munmap(self.base.as_ptr() as *mut libc::c_void, self.map_len) };
    }
}

/// A memfd of `size` bytes sealed as QEMU seals its log, for tests.
#[cfg(any(test, feature = "test-utils"))]
pub fn test_log_fd(size: u64, seal: bool) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a static C string; the result is checked.
    let fd = unsafe { libc::memfd_create(c"vale-test-log".as_ptr(), libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: a fresh descriptor we own from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate/fcntl on our own descriptor.
    unsafe {
        assert_eq!(libc::ftruncate(fd.as_raw_fd(), size as libc::off_t), 0);
        if seal {
            let s = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
            assert_eq!(libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, s), 0);
        }
    }
    fd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirty(l: &DirtyLog, pages: u64) -> Vec<u64> {
        (0..pages).filter(|&p| l.is_dirty(p)).collect()
    }

    #[test]
    fn marks_exactly_the_pages_touched() {
        let l = DirtyLog::map(test_log_fd(4096, true), 64, 0).unwrap();
        assert_eq!(l.covers(), 64 * 8 * 4096);
        assert!(l.mark(4096 * 3 + 10, 1));
        assert_eq!(dirty(&l, 512), vec![3]);
        // Straddling pages 5..=7, then a run over whole bytes 8..=23.
        assert!(l.mark(4096 * 5 + 4000, 4096 * 2 + 100));
        assert!(l.mark(4096 * 8, 4096 * 16));
        let want: Vec<u64> = [3].into_iter().chain(5..=7).chain(8..24).collect();
        assert_eq!(dirty(&l, 512), want);
        assert!(l.mark(0, 0), "nothing written, nothing marked");
        assert_eq!(dirty(&l, 512), want);
        assert_eq!(l.outside(), 0);
    }

    #[test]
    fn a_mark_past_the_end_is_refused_not_written() {
        let l = DirtyLog::map(test_log_fd(8192, true), 2, 4096).unwrap();
        // 2 bytes: pages 0..16.
        assert!(l.mark(4096 * 15, 4096));
        assert!(!l.mark(4096 * 15, 4096 * 3));
        assert_eq!(l.outside(), 2);
        assert!(!l.mark(u64::MAX - 10, 100));
        assert_eq!(dirty(&l, 16), vec![15]);
    }

    #[test]
    fn hostile_descriptors_are_refused() {
        assert!(matches!(
            DirtyLog::map(test_log_fd(4096, false), 64, 0),
            Err(LogError::NotSealed)
        ));
        assert!(matches!(
            DirtyLog::map(test_log_fd(4096, true), 8192, 0),
            Err(LogError::Short { .. })
        ));
        assert!(matches!(
            DirtyLog::map(test_log_fd(4096, true), 0, 0),
            Err(LogError::Geometry { .. })
        ));
        assert!(matches!(
            DirtyLog::map(test_log_fd(8192, true), 64, 100),
            Err(LogError::Geometry { .. })
        ));
        assert!(matches!(
            DirtyLog::map(test_log_fd(8192, true), 8192, !4095),
            Err(LogError::Geometry { .. })
        ));
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(matches!(
            DirtyLog::map(f.into(), 64, 0),
            Err(LogError::NotSealed)
        ));
    }
}
