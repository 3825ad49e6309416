//! epoll, edge-triggered: how valed waits for kicks without ever reading a
//! kick eventfd. A client shares the eventfd's open file description and
//! could clear `O_NONBLOCK` on it; a switch thread that never reads it can
//! never be made to block there.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::cvt;

/// An epoll instance.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    /// A new epoll instance (close-on-exec).
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes an integer flag.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd })
    }

    /// Watches `fd` for readability, edge-triggered, reporting `token`.
    pub fn add(&self, fd: impl AsFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: token,
        };
        // SAFETY: ev is a live epoll_event; both fds are valid for the call.
        cvt(unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_fd().as_raw_fd(),
                &mut ev,
            )
        })?;
        Ok(())
    }

    /// Stops watching `fd`.
    pub fn remove(&self, fd: impl AsFd) -> io::Result<()> {
        // SAFETY: EPOLL_CTL_DEL ignores the event pointer (null allowed).
        cvt(unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd.as_fd().as_raw_fd(),
                std::ptr::null_mut(),
            )
        })?;
        Ok(())
    }

    /// Waits up to `timeout` (None: forever) and returns the tokens that
    /// fired (at most `max`). EINTR returns an empty list.
    pub fn wait(&self, max: usize, timeout: Option<Duration>) -> io::Result<Vec<u64>> {
        let max = max.clamp(1, 1024);
        let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; max];
        let ms = match timeout {
            None => -1,
            Some(d) => d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32,
        };
        // SAFETY: evs has room for `max` events.
        let r = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), evs.as_mut_ptr(), max as i32, ms) };
        match cvt(r) {
            Ok(n) => Ok(evs[..n as usize].iter().map(|e| e.u64).collect()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::EventFd;

    #[test]
    fn edge_triggered_without_reading() {
        let ep = Epoll::new().unwrap();
        let e = EventFd::new().unwrap();
        ep.add(&e, 7).unwrap();
        assert!(ep.wait(4, Some(Duration::ZERO)).unwrap().is_empty());
        e.kick().unwrap();
        assert_eq!(ep.wait(4, Some(Duration::ZERO)).unwrap(), vec![7]);
        // Not read, but no new edge: nothing.
        assert!(ep.wait(4, Some(Duration::ZERO)).unwrap().is_empty());
        e.kick().unwrap();
        assert_eq!(ep.wait(4, Some(Duration::ZERO)).unwrap(), vec![7]);
        ep.remove(&e).unwrap();
    }
}
