//! Unix `SOCK_SEQPACKET` sockets, which `std` does not offer: valed's control
//! socket keeps message boundaries (one message = one request or reply).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::cvt;

/// A new, unbound `AF_UNIX` `SOCK_SEQPACKET` socket (close-on-exec).
fn seqpacket_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() has no memory-safety preconditions.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd was just returned by socket() and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `sockaddr_un` for `path`, and the length to pass with it. Fails if the
/// path is empty, has a NUL byte, or does not fit with its terminating NUL.
fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    let bytes = OsStr::as_bytes(path.as_os_str());
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.contains(&0) || bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "bad unix socket path {:?} (empty, NUL byte, or over {} bytes)",
                path,
                addr.sun_path.len() - 1
            ),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = s as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// Connects a new `SOCK_SEQPACKET` socket to the listener at `path`.
pub fn seqpacket_connect(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket_socket()?;
    connect(&fd, path)?;
    Ok(fd)
}

/// connect(2) of socket `fd` to the Unix socket at `path`.
fn connect(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    let (addr, len) = sockaddr(path)?;
    // SAFETY: addr is a valid sockaddr_un of at least len bytes, alive
    // across the call.
    cvt(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    })?;
    Ok(())
}

/// Connects a `SOCK_STREAM` Unix socket to `path` without waiting: a
/// listener whose backlog is full (one that never accepts) gets
/// `WouldBlock` at once instead of a `connect` that blocks until it
/// accepts. The stream comes back non-blocking.
pub fn stream_connect_nonblocking(path: &Path) -> io::Result<std::os::unix::net::UnixStream> {
    // SAFETY: socket() has no memory-safety preconditions.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: fd was just returned by socket() and nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    connect(&fd, path)?;
    Ok(fd.into())
}

/// Binds a new `SOCK_SEQPACKET` socket to `path` and listens on it. The path
/// must not exist (remove a stale socket first).
pub fn seqpacket_listen(path: &Path, backlog: i32) -> io::Result<OwnedFd> {
    let fd = seqpacket_socket()?;
    bind_listen(&fd, path, backlog)?;
    Ok(fd)
}

/// bind(2) of socket `fd` to `path`, then listen(2).
fn bind_listen(fd: &OwnedFd, path: &Path, backlog: i32) -> io::Result<()> {
    let (addr, len) = sockaddr(path)?;
    // SAFETY: addr is a valid sockaddr_un of at least len bytes, alive
    // across the call.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    })?;
    // SAFETY: listen() has no memory-safety preconditions.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(())
}

/// Binds a new `SOCK_STREAM` Unix socket to `path` and listens on it, the
/// socket file made with `mode` (less the umask) from the start: Linux
/// gives the file the mode of the socket's inode, which `fchmod` sets
/// before `bind`, so no one the final mode leaves out can connect in the
/// moment between `bind` and a `chmod`. The path must not exist.
pub fn stream_listen(
    path: &Path,
    mode: u32,
    backlog: i32,
) -> io::Result<std::os::unix::net::UnixListener> {
    // SAFETY: socket() has no memory-safety preconditions.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd was just returned by socket() and nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fchmod on a descriptor we own; no memory is passed.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) })?;
    bind_listen(&fd, path, backlog)?;
    Ok(fd.into())
}

/// Accepts one connection on a listening socket (close-on-exec).
pub fn accept(listener: impl AsFd) -> io::Result<OwnedFd> {
    // SAFETY: null address and length pointers are allowed (peer address
    // not wanted).
    let fd = cvt(unsafe {
        libc::accept4(
            listener.as_fd().as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: fd was just returned by accept4() and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A connected pair of `SOCK_SEQPACKET` sockets (close-on-exec).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: fds is a writable array of two c_ints, as socketpair() needs.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both fds were just returned by socketpair() and are owned by
    // nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The credentials of the process at the other end of a connected Unix
/// socket (`SO_PEERCRED`, as of `connect`): `(pid, uid, gid)`.
pub fn peer_cred(sock: impl AsFd) -> io::Result<(i32, u32, u32)> {
    // SAFETY: ucred is plain data; all-zero is valid.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred is a writable ucred and len holds its size, as
    // getsockopt(SO_PEERCRED) needs.
    cvt(unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    if len as usize != size_of::<libc::ucred>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short SO_PEERCRED answer",
        ));
    }
    Ok((cred.pid, cred.uid, cred.gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_connect_accept_cred() {
        let dir = std::env::temp_dir().join(format!("netmap-seqpacket-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let l = seqpacket_listen(&path, 4).unwrap();
        let c = seqpacket_connect(&path).unwrap();
        let s = accept(&l).unwrap();
        let (pid, cuid, cgid) = peer_cred(&s).unwrap();
        assert_eq!(pid, std::process::id() as i32);
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        assert_eq!((cuid, cgid), (uid, gid));
        drop(c);
        std::fs::remove_file(&path).unwrap();
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn bad_paths() {
        assert!(seqpacket_connect(Path::new("")).is_err());
        let long = "x".repeat(200);
        assert!(seqpacket_connect(Path::new(&long)).is_err());
    }
}
