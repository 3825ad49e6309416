//! Doorbells: the eventfd (or pipe end) each side rings when the other
//! asked for it.
//!
//! `O_NONBLOCK` lives on the open file description, which `SCM_RIGHTS`
//! shares: a peer holding the same eventfd can make it blocking. So the
//! doorbells valed makes for its clients are pipes ([`EventFd::pipe`]),
//! whose two ends are two descriptions: the client may change its end's
//! flags, never valed's. A VMM's call eventfd is shared by protocol; it is
//! written with [`EventFd::kick_untrusted`], which the watchdog bounds.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{cvt, cvt_isize, watchdog};

/// A doorbell: an eventfd, or one end of a pipe used as one. Kicks write
/// an 8-byte 1 (an eventfd's unit, a pipe's atomic write); `drain` empties
/// either.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
    /// Whether the peer's doorbells are struck (see
    /// [`EventFd::kick_untrusted`]); shared by every doorbell of that peer
    /// ([`EventFd::from_fd_sharing_guard`]).
    guard: Arc<CallGuard>,
}

/// What one peer's doorbells share (a VM port's call fds, whichever its
/// VMMs send): once a write to any of them lasted until the watchdog
/// interrupted it, none is written again (the peer's guest loses its
/// interrupts). So a peer stalls the writer past the poll's race at most
/// once, however many descriptors it sends.
#[derive(Debug, Default)]
pub struct CallGuard {
    struck: AtomicBool,
}

impl CallGuard {
    /// Whether kicks are dropped for good.
    pub fn struck(&self) -> bool {
        self.struck.load(Ordering::Relaxed)
    }
}

/// Tests' stand-in for a peer that wins the race between
/// `kick_untrusted`'s poll and its write (see [`EventFd::set_race`]).
#[cfg(feature = "test-utils")]
static RACE: std::sync::OnceLock<fn(BorrowedFd<'_>)> = std::sync::OnceLock::new();

/// Bytes a pipe doorbell holds (the kernel's minimum, one page): a client
/// that stops draining fills it and only loses its own wake-ups.
const PIPE_BYTES: libc::c_int = 4096;

impl EventFd {
    /// A new doorbell, non-blocking and close-on-exec.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes integer arguments only.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EventFd::from_fd(fd))
    }

    /// A doorbell whose two ends are separate open file descriptions:
    /// `(reader, writer)`, both non-blocking and close-on-exec. Keep one
    /// end and send the other; the peer cannot make the kept end block.
    pub fn pipe() -> io::Result<(EventFd, EventFd)> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into the live array.
        cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
        // SAFETY: both are fresh descriptors nobody else owns.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor we own, integer argument. A failure
        // leaves the default 64 KiB, which works the same.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
        Ok((EventFd::from_fd(r), EventFd::from_fd(w)))
    }

    /// Wraps a descriptor received from a peer. The caller vouches that it is
    /// an eventfd or a pipe end; a wrong kind of fd only makes `kick`/`drain`
    /// return errors.
    pub fn from_fd(fd: OwnedFd) -> EventFd {
        EventFd::from_fd_sharing_guard(fd, Arc::default())
    }

    /// As [`from_fd`](Self::from_fd), with the peer's [`CallGuard`]
    /// shared: a VM port gives every call fd its VMM sends the port's
    /// guard, so a VMM that raced one into blocking stalls valed once per
    /// port, not once per descriptor.
    pub fn from_fd_sharing_guard(fd: OwnedFd, guard: Arc<CallGuard>) -> EventFd {
        EventFd { fd, guard }
    }

    /// Whether the descriptor is an eventfd (a VMM's call and kick fds
    /// must be: anything else could block or cost valed in ways the
    /// watchdog does not bound).
    pub fn is_eventfd(fd: BorrowedFd<'_>) -> bool {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .is_ok_and(|l| l.as_os_str() == "anon_inode:[eventfd]")
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
    /// cleared `O_NONBLOCK` on it (one open file description, shared
    /// flags). Writes only if a zero-timeout poll says the write cannot
    /// block (a counter that full already means a wake-up is pending). The
    /// peer can still fill it between the poll and the write: then the
    /// watchdog interrupts the write within two of its ticks, the guard is
    /// struck, and no doorbell sharing it is written again
    /// (`Err(TimedOut)` that once, `Ok` after).
    ///
    /// The poll costs about 0.2 us here (measured after a spin, as a
    /// forwarding thread makes it). Dropping it was tried: ping-pong p50
    /// fell from 11 to 3 us, a threshold effect of the fake guests' wait
    /// loop rather than the poll's cost, and timing the writes instead to
    /// catch a peer that fills and drains its counter under the watchdog's
    /// bound could not tell a write that slept from a preempted one on
    /// this host (docs/vhost-user.md).
    pub fn kick_untrusted(&self) -> io::Result<()> {
        if self.guard.struck() {
            return Ok(());
        }
        let mut p = [super::PollFd::new(self.fd.as_fd(), super::PollFlags::OUT)];
        if super::poll(&mut p, Some(Duration::ZERO))? == 0 {
            return Ok(());
        }
        #[cfg(feature = "test-utils")]
        if let Some(race) = RACE.get() {
            race(self.fd.as_fd());
        }
        let one = 1u64.to_ne_bytes();
        match watchdog::write_bounded(self.fd.as_fd(), &one) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                self.guard.struck.store(true, Ordering::Relaxed);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer made its eventfd block until the watchdog interrupted the \
                     write: no more kicks through its descriptors",
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// Tests: runs `race` in every `kick_untrusted` of the process between
    /// its poll and its write, where a hostile peer would fill the counter.
    /// Set once per process.
    #[cfg(feature = "test-utils")]
    pub fn set_race(race: fn(BorrowedFd<'_>)) {
        let _ = RACE.set(race);
    }

    /// The guard its kicks go through (see `kick_untrusted`).
    pub fn guard(&self) -> &CallGuard {
        &self.guard
    }

    /// Clears pending kicks; returns how many were pending (0 if none).
    /// For an eventfd that is its counter; for a pipe, the 8-byte kicks
    /// read (a partial one counts as one).
    pub fn drain(&self) -> io::Result<u64> {
        let mut buf = [0u8; 512];
        let mut kicks = 0u64;
        loop {
            // SAFETY: reads at most buf.len() bytes into a live stack array.
            let r = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            match cvt_isize(r) {
                Ok(0) => return Ok(kicks),
                // An eventfd read is always 8 bytes, the counter (now zero);
                // a pipe holding one kick reads the same bytes, a 1.
                Ok(8) if kicks == 0 => {
                    let mut v = [0u8; 8];
                    v.copy_from_slice(&buf[..8]);
                    return Ok(u64::from_ne_bytes(v));
                }
                Ok(n) => {
                    kicks += (n as u64).div_ceil(8);
                    if n < buf.len() {
                        return Ok(kicks);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(kicks),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The descriptor, e.g. to send the peer's end of a pipe.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
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

    #[test]
    fn pipe_kick_and_drain() {
        let (r, w) = EventFd::pipe().unwrap();
        assert_eq!(r.drain().unwrap(), 0);
        for _ in 0..200 {
            w.kick().unwrap();
        }
        assert_eq!(r.drain().unwrap(), 200);
        assert_eq!(r.drain().unwrap(), 0);
        // A full pipe: kicks are dropped, never block, one drain empties it.
        for _ in 0..10_000 {
            w.kick().unwrap();
        }
        assert!(r.drain().unwrap() >= 512);
        assert_eq!(r.drain().unwrap(), 0);
    }

    #[test]
    fn pipe_ends_keep_their_own_flags() {
        // valed keeps the irq writer and the kick reader; the client gets
        // the other ends and makes them blocking.
        let (irq_r, irq_w) = EventFd::pipe().unwrap();
        let (kick_r, kick_w) = EventFd::pipe().unwrap();
        for theirs in [irq_r.as_fd(), kick_w.as_fd()] {
            // SAFETY: fcntl on a descriptor the test owns.
            unsafe { libc::fcntl(theirs.as_raw_fd(), libc::F_SETFL, 0) };
        }
        // Neither of valed's ends blocks: a full irq pipe and an empty
        // kick pipe both answer at once.
        for _ in 0..10_000 {
            irq_w.kick().unwrap();
        }
        assert_eq!(kick_r.drain().unwrap(), 0);
        for e in [&irq_w, &kick_r] {
            // SAFETY: as above.
            let fl = unsafe { libc::fcntl(e.as_fd().as_raw_fd(), libc::F_GETFL) };
            assert_ne!(fl & libc::O_NONBLOCK, 0);
        }
    }

    #[test]
    fn eventfd_is_told_from_a_pipe() {
        let e = EventFd::new().unwrap();
        let (r, _w) = EventFd::pipe().unwrap();
        assert!(EventFd::is_eventfd(e.as_fd()));
        assert!(!EventFd::is_eventfd(r.as_fd()));
    }

    /// A peer that shares the eventfd, clears O_NONBLOCK and fills the
    /// counter between our poll and our write: modelled by writing with
    /// the guard directly. The watchdog must interrupt the write.
    #[test]
    fn blocked_write_is_interrupted() {
        let e = EventFd::new().unwrap();
        // SAFETY: fcntl on a descriptor the test owns.
        unsafe { libc::fcntl(e.as_fd().as_raw_fd(), libc::F_SETFL, 0) };
        let full = (u64::MAX - 1).to_ne_bytes();
        // SAFETY: writes 8 bytes from a live array.
        let r = unsafe { libc::write(e.as_fd().as_raw_fd(), full.as_ptr().cast(), 8) };
        assert_eq!(r, 8);
        let t = std::time::Instant::now();
        let got = watchdog::write_bounded(e.as_fd(), &1u64.to_ne_bytes());
        assert_eq!(got.unwrap_err().kind(), io::ErrorKind::Interrupted);
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        // The counter is untouched; a later write through the same guard
        // on a drained fd goes through.
        assert_eq!(e.drain().unwrap(), u64::MAX - 1);
        watchdog::write_bounded(e.as_fd(), &1u64.to_ne_bytes()).unwrap();
        assert_eq!(e.drain().unwrap(), 1);
    }

    /// The peer's side of a shared eventfd: raw reads and writes of the
    /// counter through the one open file description (blocking or not, as
    /// the peer set it).
    fn peer_rw(fd: i32, write: Option<u64>) -> u64 {
        let mut v = write.unwrap_or(0).to_ne_bytes();
        // SAFETY: an 8-byte read into, or write from, a live array.
        let r = unsafe {
            match write {
                Some(_) => libc::write(fd, v.as_ptr().cast(), 8),
                None => libc::read(fd, v.as_mut_ptr().cast(), 8),
            }
        };
        assert_eq!(r, 8);
        u64::from_ne_bytes(v)
    }

    fn set_blocking(fd: i32, blocking: bool) {
        let fl = if blocking { 0 } else { libc::O_NONBLOCK };
        // SAFETY: fcntl on a descriptor the test owns.
        unsafe { libc::fcntl(fd, libc::F_SETFL, fl) };
    }

    /// A peer that made the eventfd blocking and holds its counter full:
    /// kicks are skipped (a write would block until the watchdog struck
    /// the guard), and one after a drain gets through.
    #[test]
    fn a_full_counter_is_not_written() {
        let e = EventFd::new().unwrap();
        let fd = e.as_fd().as_raw_fd();
        set_blocking(fd, true);
        peer_rw(fd, Some(u64::MAX - 1));
        for _ in 0..100 {
            e.kick_untrusted().expect("a kick blocked");
        }
        assert!(!e.guard().struck());
        assert_eq!(peer_rw(fd, None), u64::MAX - 1);
        e.kick_untrusted().unwrap();
        assert_eq!(peer_rw(fd, None), 1);
    }

    /// Several doorbells sharing one guard (a VM port's call fds): what
    /// one's peer did is held against the others.
    #[test]
    fn doorbells_sharing_a_guard_share_its_strike() {
        let guard = Arc::new(CallGuard::default());
        let a = EventFd::from_fd_sharing_guard(EventFd::new().unwrap().fd, guard.clone());
        let b = EventFd::from_fd_sharing_guard(EventFd::new().unwrap().fd, guard.clone());
        guard.struck.store(true, Ordering::Relaxed);
        a.kick_untrusted().unwrap();
        b.kick_untrusted().unwrap();
        assert_eq!(
            a.drain().unwrap() + b.drain().unwrap(),
            0,
            "a struck guard's doorbell was written"
        );
        let c = EventFd::from_fd_sharing_guard(EventFd::new().unwrap().fd, Arc::default());
        c.kick_untrusted().unwrap();
        assert_eq!(c.drain().unwrap(), 1);
    }
}
