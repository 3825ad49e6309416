//! eventfd: the doorbell each side rings when the other asked for it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::{cvt, cvt_isize};

/// A non-blocking eventfd used as a doorbell.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new doorbell, non-blocking and close-on-exec.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes integer arguments only.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EventFd { fd })
    }

    /// Wraps a descriptor received from a peer. The caller vouches that it is
    /// an eventfd; a wrong kind of fd only makes `kick`/`drain` return errors.
    pub fn from_fd(fd: OwnedFd) -> EventFd {
        EventFd { fd }
    }

    /// Rings the doorbell. A full counter (EAGAIN) means a wake-up is already
    /// pending, which is all a kick needs.
    pub fn kick(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 on the stack.
        let r = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                size_of::<u64>(),
            )
        };
        match cvt_isize(r) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Rings the doorbell of a peer that shares this eventfd and may have
    /// cleared `O_NONBLOCK` on it (one open file description, shared flags):
    /// writes only if poll says a write cannot block. A counter so full that
    /// it would block already means a wake-up is pending.
    pub fn kick_untrusted(&self) -> io::Result<()> {
        let mut p = [super::PollFd::new(self.fd.as_fd(), super::PollFlags::OUT)];
        if super::poll(&mut p, Some(std::time::Duration::ZERO))? == 0 {
            return Ok(());
        }
        self.kick()
    }

    /// Clears pending kicks; returns how many were pending (0 if none).
    pub fn drain(&self) -> io::Result<u64> {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 on the stack.
        let r = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut v as *mut u64).cast(),
                size_of::<u64>(),
            )
        };
        match cvt_isize(r) {
            Ok(_) => Ok(v),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Duplicates the descriptor, e.g. to send it to the peer.
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kick_and_drain() {
        let e = EventFd::new().unwrap();
        assert_eq!(e.drain().unwrap(), 0);
        e.kick().unwrap();
        e.kick().unwrap();
        assert_eq!(e.drain().unwrap(), 2);
        assert_eq!(e.drain().unwrap(), 0);
    }
}
