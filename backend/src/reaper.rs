//! Descriptors a VMM sends that are not of a kind valed uses, closed on a
//! thread of their own.
//!
//! `close(2)` of a file on a FUSE mount sends FLUSH to the mount's daemon
//! and waits for the answer without a timeout, uninterruptibly. Any user
//! can mount FUSE in a user namespace, so a VMM can send valed such a
//! descriptor; closing it on the port's session thread would hang that
//! thread, and the control thread that joins it when the port goes.
//! Sockets can linger on close too. So every descriptor is sorted as it
//! arrives, by calls that never reach a file system's daemon
//! (`F_GET_SEALS`, the `/proc/self/fd` link): shared memory (memfd, tmpfs,
//! hugetlbfs) and eventfds, all valed uses, are kept; anything else is set
//! aside here and its request refused by name. Only the reaper's thread
//! waits on such a close.
//!
//! Each sender's uid may have [`MAX_PENDING`] set aside and not yet
//! closed (a reaper stuck on a daemon that never answers); past it the
//! session reads its VMM's messages with no room for descriptors, so the
//! kernel discards them without installing them (no close, no FLUSH), and
//! ends the session. valed holds at most that many per uid, plus one
//! message's worth.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};

/// Descriptors of one uid set aside and not yet closed, at most.
pub const MAX_PENDING: usize = 64;

/// Per sender uid, the descriptors waiting for the reaper.
static PENDING: Mutex<BTreeMap<u32, usize>> = Mutex::new(BTreeMap::new());
/// The reaper's queue; None if its thread could not be started.
static REAPER: OnceLock<Option<Queue>> = OnceLock::new();

/// The reaper's end for senders: (sender's uid, descriptor).
type Queue = Mutex<Sender<(u32, OwnedFd)>>;

/// What a received descriptor is, as far as valed can tell without
/// touching its file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// memfd, tmpfs or hugetlbfs: guest memory, a dirty log.
    Shared,
    /// An eventfd: a kick, a call.
    EventFd,
    /// Anything else, with what `/proc/self/fd` names it.
    Foreign(String),
}

/// Sorts `fd` without a call that could wait on a file system's daemon.
pub fn kind(fd: BorrowedFd<'_>) -> Kind {
    if netmap::sys::memfd_seals(fd).is_ok() {
        return Kind::Shared;
    }
    if netmap::sys::EventFd::is_eventfd(fd) {
        return Kind::EventFd;
    }
    match std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
        Ok(l) => Kind::Foreign(l.to_string_lossy().into_owned()),
        Err(e) => Kind::Foreign(format!("(unnamed: {e})")),
    }
}

fn pending_of(uid: u32) -> usize {
    let p = PENDING.lock().unwrap_or_else(|e| e.into_inner());
    p.get(&uid).copied().unwrap_or(0)
}

pub(crate) fn add_pending(uid: u32, d: isize) {
    let mut p = PENDING.lock().unwrap_or_else(|e| e.into_inner());
    let n = p.entry(uid).or_default();
    *n = n.saturating_add_signed(d);
    if *n == 0 {
        p.remove(&uid);
    }
}

/// Whether `uid` has [`MAX_PENDING`] descriptors waiting already: its
/// VMMs' next descriptors are to be discarded unread.
pub fn full(uid: u32) -> bool {
    pending_of(uid) >= MAX_PENDING
}

/// Hands `fd`, from a sender of `uid`, to the reaper's thread to close.
/// Without that thread (it could not be started), closes it here.
pub fn close_later(uid: u32, fd: OwnedFd) {
    let reaper = REAPER.get_or_init(|| {
        let (tx, rx) = channel::<(u32, OwnedFd)>();
        let spawned = std::thread::Builder::new()
            .name("fd-reaper".into())
            .spawn(move || {
                for (uid, fd) in rx {
                    drop(fd);
                    add_pending(uid, -1);
                }
            });
        match spawned {
            Ok(_) => Some(Mutex::new(tx)),
            Err(e) => {
                tracing::error!("no descriptor reaper thread ({e}): foreign descriptors are closed where they arrive");
                None
            }
        }
    });
    let Some(tx) = reaper else {
        drop(fd);
        return;
    };
    add_pending(uid, 1);
    let sent = tx.lock().unwrap_or_else(|e| e.into_inner()).send((uid, fd));
    if let Err(std::sync::mpsc::SendError((uid, fd))) = sent {
        add_pending(uid, -1);
        drop(fd);
    }
}

/// Keeps the descriptors of the kinds valed uses and sets the others,
/// from a sender of `uid`, aside (closed by the reaper); returns the kept
/// ones and what `/proc/self/fd` named the others, for the refusal.
pub fn screen(uid: u32, fds: Vec<OwnedFd>) -> (Vec<OwnedFd>, Vec<String>) {
    let mut keep = Vec::with_capacity(fds.len());
    let mut foreign = Vec::new();
    for fd in fds {
        match kind(fd.as_fd()) {
            Kind::Shared | Kind::EventFd => keep.push(fd),
            Kind::Foreign(what) => {
                close_later(uid, fd);
                foreign.push(what);
            }
        }
    }
    (keep, foreign)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_sorted_without_touching_their_files() {
        let m = netmap::sys::Memfd::create_sealed("k", 4096, false).unwrap();
        assert_eq!(kind(m.file().as_fd()), Kind::Shared);
        let e = netmap::sys::EventFd::new().unwrap();
        assert_eq!(kind(e.as_fd()), Kind::EventFd);
        // Sockets are not kept: closing one can linger.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(matches!(kind(a.as_fd()), Kind::Foreign(ref l) if l.starts_with("socket:")));
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert!(
            matches!(kind(f.as_fd()), Kind::Foreign(ref l) if l.contains("status")),
            "{:?}",
            kind(f.as_fd())
        );
    }

    #[test]
    fn foreign_descriptors_are_set_aside_and_closed_elsewhere() {
        let uid = 4_000_000_003; // no other test's
        let m = netmap::sys::Memfd::create_sealed("k", 4096, false).unwrap();
        let f = std::fs::File::open("/proc/self/cmdline").unwrap();
        let (keep, foreign) = screen(uid, vec![m.try_clone_fd().unwrap(), f.into()]);
        assert_eq!(keep.len(), 1);
        assert_eq!(foreign.len(), 1);
        // The reaper closes it soon, and the uid's count goes back down.
        let t0 = std::time::Instant::now();
        while pending_of(uid) > 0 {
            assert!(t0.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!full(uid));
    }
}
