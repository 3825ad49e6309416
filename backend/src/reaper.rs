//! Descriptors a VMM sends that are not of a kind valed uses, closed on a
//! thread of their own.
//!
//! `close(2)` of a file on a FUSE mount sends FLUSH to the mount's daemon
//! and waits for the answer without a timeout, uninterruptibly. Any user
//! can mount FUSE in a user namespace, so a VMM can send valed such a
//! descriptor; closing it on the port's session thread would hang that
//! thread, and the control thread that joins it when the port goes. So
//! every descriptor is sorted as it arrives, by calls that never reach a
//! file system's daemon (`F_GET_SEALS`, the `/proc/self/fd` link): shared
//! memory (memfd, tmpfs, hugetlbfs), anonymous inodes (eventfds), sockets
//! and pipes are kept; anything else is set aside here and its request
//! refused by name. Only the reaper's thread waits on such a close.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};

/// Descriptors set aside and not yet closed, at most: past it the reaper
/// is stuck (a daemon that never answers) and a VMM that sends more is
/// disconnected instead of served (`ConnError::Foreign`).
pub const MAX_PENDING: usize = 256;

static PENDING: AtomicUsize = AtomicUsize::new(0);
static REAPER: OnceLock<Mutex<Sender<OwnedFd>>> = OnceLock::new();

/// What a received descriptor is, as far as valed can tell without
/// touching its file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// memfd, tmpfs or hugetlbfs: guest memory, a dirty log.
    Shared,
    /// An anonymous inode (eventfd), a socket or a pipe.
    Anon,
    /// Anything else, with what `/proc/self/fd` names it.
    Foreign(String),
}

/// Sorts `fd` without a call that could wait on a file system's daemon.
pub fn kind(fd: BorrowedFd<'_>) -> Kind {
    if netmap::sys::memfd_seals(fd).is_ok() {
        return Kind::Shared;
    }
    match std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
        Ok(l) => {
            let l = l.to_string_lossy().into_owned();
            if l.starts_with("anon_inode:") || l.starts_with("socket:[") || l.starts_with("pipe:[")
            {
                Kind::Anon
            } else {
                Kind::Foreign(l)
            }
        }
        Err(e) => Kind::Foreign(format!("(unnamed: {e})")),
    }
}

/// Hands `fd` to the reaper's thread to close. False if too many are
/// waiting already ([`MAX_PENDING`]): the descriptor is then kept open
/// for good rather than closed here (logged).
pub fn close_later(fd: OwnedFd) -> bool {
    if PENDING.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING {
        PENDING.fetch_sub(1, Ordering::AcqRel);
        tracing::error!(
            fd = fd.as_fd().as_raw_fd(),
            "{MAX_PENDING} descriptors already wait to be closed: one more kept open"
        );
        std::mem::forget(fd);
        return false;
    }
    let tx = REAPER.get_or_init(|| {
        let (tx, rx) = channel::<OwnedFd>();
        let spawned = std::thread::Builder::new()
            .name("fd-reaper".into())
            .spawn(move || {
                for fd in rx {
                    drop(fd);
                    PENDING.fetch_sub(1, Ordering::AcqRel);
                }
            });
        if let Err(e) = spawned {
            tracing::error!("no descriptor reaper thread: {e}");
        }
        Mutex::new(tx)
    });
    let sent = tx.lock().unwrap_or_else(|e| e.into_inner()).send(fd);
    if let Err(std::sync::mpsc::SendError(fd)) = sent {
        // No thread: kept open rather than closed here.
        std::mem::forget(fd);
        return false;
    }
    true
}

/// Keeps the descriptors of the kinds valed uses and sets the others
/// aside (closed by the reaper); what `/proc/self/fd` names the others,
/// for the refusal. None if too many are set aside already: the VMM is to
/// be disconnected.
pub fn screen(fds: Vec<OwnedFd>) -> Option<(Vec<OwnedFd>, Vec<String>)> {
    let mut keep = Vec::with_capacity(fds.len());
    let mut foreign = Vec::new();
    let mut full = false;
    for fd in fds {
        match kind(fd.as_fd()) {
            Kind::Shared | Kind::Anon => keep.push(fd),
            Kind::Foreign(what) => {
                full |= !close_later(fd);
                foreign.push(what);
            }
        }
    }
    (!full).then_some((keep, foreign))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_sorted_without_touching_their_files() {
        let m = netmap::sys::Memfd::create_sealed("k", 4096, false).unwrap();
        assert_eq!(kind(m.file().as_fd()), Kind::Shared);
        let e = netmap::sys::EventFd::new().unwrap();
        assert_eq!(kind(e.as_fd()), Kind::Anon);
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(kind(a.as_fd()), Kind::Anon);
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert!(
            matches!(kind(f.as_fd()), Kind::Foreign(ref l) if l.contains("status")),
            "{:?}",
            kind(f.as_fd())
        );
    }

    #[test]
    fn foreign_descriptors_are_set_aside_and_closed_elsewhere() {
        let m = netmap::sys::Memfd::create_sealed("k", 4096, false).unwrap();
        let f = std::fs::File::open("/proc/self/cmdline").unwrap();
        let raw = f.as_raw_fd();
        let (keep, foreign) = screen(vec![m.try_clone_fd().unwrap(), f.into()]).unwrap();
        assert_eq!(keep.len(), 1);
        assert_eq!(foreign.len(), 1);
        // The reaper closes it soon; its number may be reused after.
        let t0 = std::time::Instant::now();
        while std::fs::read_link(format!("/proc/self/fd/{raw}"))
            .is_ok_and(|l| l.to_string_lossy().contains("cmdline"))
        {
            assert!(t0.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
