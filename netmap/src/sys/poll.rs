//! poll(2) over a handful of descriptors.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use super::cvt;

/// Events to wait for / events that happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PollFlags(pub i16);

impl PollFlags {
    /// Readable.
    pub const IN: PollFlags = PollFlags(libc::POLLIN);
    /// Writable.
    pub const OUT: PollFlags = PollFlags(libc::POLLOUT);
    /// Peer closed its end of a stream/seqpacket socket.
    pub const RDHUP: PollFlags = PollFlags(libc::POLLRDHUP);
    /// Hang-up.
    pub const HUP: PollFlags = PollFlags(libc::POLLHUP);
    /// Error condition.
    pub const ERR: PollFlags = PollFlags(libc::POLLERR);
    /// Not an open descriptor.
    pub const NVAL: PollFlags = PollFlags(libc::POLLNVAL);

    /// Whether no event is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether any bit of `other` is set.
    pub fn intersects(self, other: PollFlags) -> bool {
        self.0 & other.0 != 0
    }
}

impl std::ops::BitOr for PollFlags {
    type Output = PollFlags;
    fn bitor(self, rhs: PollFlags) -> PollFlags {
        PollFlags(self.0 | rhs.0)
    }
}

/// One entry of a poll set.
#[derive(Debug)]
pub struct PollFd<'a> {
    /// The descriptor.
    pub fd: BorrowedFd<'a>,
    /// What to wait for.
    pub events: PollFlags,
    /// What happened (filled by [`poll`]).
    pub revents: PollFlags,
}

impl<'a> PollFd<'a> {
    /// An entry waiting for `events` on `fd`.
    pub fn new(fd: BorrowedFd<'a>, events: PollFlags) -> Self {
        PollFd {
            fd,
            events,
            revents: PollFlags(0),
        }
    }
}

/// Waits until an entry is ready or `timeout` passes (`None`: forever).
/// Returns how many entries have events; EINTR is retried.
pub fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> io::Result<usize> {
    let mut raw: Vec<libc::pollfd> = fds
        .iter()
        .map(|p| libc::pollfd {
            fd: p.fd.as_raw_fd(),
            events: p.events.0,
            revents: 0,
        })
        .collect();
    let ms: libc::c_int = match timeout {
        None => -1,
        Some(d) => d
            .as_nanos()
            .div_ceil(1_000_000)
            .min(libc::c_int::MAX as u128) as libc::c_int,
    };
    let n = loop {
        // SAFETY: raw is a live array of raw.len() pollfd structs.
        match cvt(unsafe { libc::poll(raw.as_mut_ptr(), raw.len() as libc::nfds_t, ms) }) {
            Ok(n) => break n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    for (p, r) in fds.iter_mut().zip(&raw) {
        p.revents = PollFlags(r.revents);
    }
    Ok(n)
}
