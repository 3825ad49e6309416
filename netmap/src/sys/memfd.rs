//! Sealed memfds: the backing of every region and CSB.
//!
//! A region is shared with clients that valed does not trust. A client that
//! could shrink the file would make valed's next access to the mapping raise
//! SIGBUS, so every memfd is sealed against shrink and grow (and against
//! removing the seals) before any client sees it.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use super::cvt;

/// Whether a memfd is backed by huge pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HugePages {
    /// 2 MiB pages from the hugetlb pool.
    Huge2M,
    /// Ordinary pages.
    None,
}

/// A sealed, fixed-size memfd.
#[derive(Debug)]
pub struct Memfd {
    file: File,
    size: usize,
    huge: HugePages,
}

const SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
const HUGE_2M: usize = 2 << 20;

impl Memfd {
    /// Creates a memfd of at least `size` bytes, sealed against resizing.
    ///
    /// With `try_huge`, hugetlb pages are used when the system has enough free
    /// 2 MiB pages; otherwise, and on any hugetlb failure, plain pages. The
    /// size is rounded up to the page size that was used.
    pub fn create_sealed(name: &str, size: usize, try_huge: bool) -> io::Result<Memfd> {
        if size == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "memfd size 0"));
        }
        if try_huge && free_huge_pages_2m() * HUGE_2M >= size {
            let rounded = size.div_ceil(HUGE_2M) * HUGE_2M;
            let flags = libc::MFD_CLOEXEC
                | libc::MFD_ALLOW_SEALING
                | libc::MFD_HUGETLB
                | libc::MFD_HUGE_2MB;
            if let Ok(m) = Self::create_with(name, rounded, flags, HugePages::Huge2M) {
                return Ok(m);
            }
        }
        let page = super::page_size();
        let rounded = size.div_ceil(page) * page;
        Self::create_with(
            name,
            rounded,
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            HugePages::None,
        )
    }

    fn create_with(
        name: &str,
        size: usize,
        flags: libc::c_uint,
        huge: HugePages,
    ) -> io::Result<Memfd> {
        let cname = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "memfd name has a NUL"))?;
        // SAFETY: cname is a valid NUL-terminated string for the duration of
        // the call; memfd_create does not retain the pointer.
        let fd = cvt(unsafe { libc::memfd_create(cname.as_ptr(), flags) })?;
        // SAFETY: fd was just returned by memfd_create and is owned by no one
        // else, so File may take ownership and close it.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size as u64)?;
        // SAFETY: fcntl(F_ADD_SEALS) takes an integer argument; the fd is
        // valid for the lifetime of `file`.
        cvt(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, SEALS) })?;
        Ok(Memfd { file, size, huge })
    }

    /// The file size, fixed by the seals.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Which pages back the file.
    pub fn huge_pages(&self) -> HugePages {
        self.huge
    }

    /// Duplicates the descriptor, e.g. to pass it to a client.
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.file.as_fd().try_clone_to_owned()
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl AsFd for Memfd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// The seals set on a file descriptor (`F_GET_SEALS`).
pub fn memfd_seals(fd: impl AsFd) -> io::Result<libc::c_int> {
    // SAFETY: F_GET_SEALS takes no argument; the fd is borrowed and valid.
    cvt(unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_GET_SEALS) })
}

/// Free 2 MiB huge pages, from /proc/meminfo (0 when unknown).
fn free_huge_pages_2m() -> usize {
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    let size_ok = info
        .lines()
        .any(|l| l.starts_with("Hugepagesize:") && l.contains("2048 kB"));
    if !size_ok {
        return 0;
    }
    info.lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_against_resize() {
        let m = Memfd::create_sealed("test", 10_000, false).unwrap();
        assert_eq!(m.size() % super::super::page_size(), 0);
        assert!(m.size() >= 10_000);
        let seals = memfd_seals(&m).unwrap();
        assert_eq!(seals & SEALS, SEALS);
        let err = m.file().set_len(1).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        let err = m.file().set_len(1 << 30).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn zero_size_rejected() {
        assert!(Memfd::create_sealed("z", 0, false).is_err());
    }
}
