//! Thin, checked wrappers over the system calls netmap's user side needs:
//! sealed memfds, shared mappings, doorbells (eventfds and pipes), poll,
//! `SCM_RIGHTS`, the watchdog that bounds writes a peer can block, and
//! directories held open for name lookups no one can redirect.
//!
//! Every `unsafe` block of the crate that touches the OS lives under this
//! module; the types here check their arguments once so callers stay safe.

mod dir;
mod epoll;
mod eventfd;
mod memfd;
mod mmap;
mod poll;
mod scm;
mod seqpacket;
mod watchdog;

pub use dir::{euid, first_open_ancestor, Dir, SUN_PATH_MAX};
pub use epoll::Epoll;
pub use eventfd::{CallGuard, EventFd};
pub use memfd::{memfd_seals, HugePages, Memfd};
pub use mmap::SharedMap;
pub use poll::{poll, PollFd, PollFlags};
pub use scm::{recv_discarding_fds, recv_with_fds, recv_with_fds_cut, send_with_fds, MAX_FDS};
pub use seqpacket::{
    accept, peer_cred, seqpacket_connect, seqpacket_listen, seqpacket_pair,
    stream_connect_nonblocking, stream_listen,
};
pub use watchdog::{write_bounded, TICK as WATCHDOG_TICK};

use std::io;

/// Turns a libc return value into an `io::Result`, reading `errno` on -1.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Same as [`cvt`] for calls returning `ssize_t`.
pub(crate) fn cvt_isize(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// The gid of group `name` (through NSS, as `getgrnam(3)`), or `name`
/// itself if it is a number.
pub fn group_id(name: &str) -> io::Result<u32> {
    if let Ok(g) = name.parse() {
        return Ok(g);
    }
    let cname = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the group name"))?;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        // SAFETY: all-zero is a valid `group` to be filled in.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::group = std::ptr::null_mut();
        // SAFETY: cname is NUL-terminated; gr, buf and out are live and
        // writable for the call, buf.len() bytes of buf.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut gr,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut out,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 24 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if out.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no group {name:?}"),
            ));
        }
        return Ok(gr.gr_gid);
    }
}

/// The machine's physical memory in bytes (`u64::MAX` if the kernel does
/// not say).
pub fn physical_memory() -> u64 {
    // SAFETY: sysinfo fills the struct we pass; all-zero is a valid start.
    let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: si is a live, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut si) } == 0 {
        (si.totalram as u64).saturating_mul(si.mem_unit.max(1) as u64)
    } else {
        u64::MAX
    }
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let sz = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if sz <= 0 {
        4096
    } else {
        sz as usize
    }
}

/// Sets `O_NONBLOCK` on `fd`'s open file description. Only for
/// descriptions valed alone holds (an accepted socket, not a peer's
/// eventfd): a peer sharing the description could clear it again.
pub fn set_nonblocking(fd: impl std::os::fd::AsFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let raw = fd.as_fd().as_raw_fd();
    // SAFETY: fcntl(F_GETFL) on a descriptor the caller keeps open for
    // the call; no memory is passed.
    let fl = cvt(unsafe { libc::fcntl(raw, libc::F_GETFL) })?;
    // SAFETY: as above, F_SETFL with integer flags.
    cvt(unsafe { libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_name_or_number() {
        assert_eq!(group_id("root").unwrap(), 0);
        assert_eq!(group_id("65534").unwrap(), 65534);
        let e = group_id("no-such-group-vale").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(group_id("a\0b").is_err());
    }
}
