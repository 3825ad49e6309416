//! Sending and receiving descriptors with `SCM_RIGHTS`, as valed's control
//! socket does with memfds and eventfds.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::cvt_isize;

/// Most descriptors one message may carry.
pub const MAX_FDS: usize = 64;

const fn cmsg_space(n: usize) -> usize {
    // SAFETY: CMSG_SPACE is a pure size computation.
    unsafe { libc::CMSG_SPACE((n * size_of::<RawFd>()) as u32) as usize }
}

/// Sends `data` and `fds` in one message on a connected socket.
pub fn send_with_fds(sock: impl AsFd, data: &[u8], fds: &[impl AsFd]) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many fds in one message",
        ));
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    let mut cbuf = vec![0u64; cmsg_space(MAX_FDS).div_ceil(8)];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_space(fds.len());
        // SAFETY: msg_control points at a buffer of at least
        // CMSG_SPACE(fds.len()) bytes, so the first header and its data fit.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN((fds.len() * size_of::<RawFd>()) as u32) as usize;
            let p = libc::CMSG_DATA(c).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                p.add(i).write_unaligned(fd.as_fd().as_raw_fd());
            }
        }
    }
    // SAFETY: msg references iov/cbuf, both alive across the call.
    let r = unsafe { libc::sendmsg(sock.as_fd().as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    cvt_isize(r)
}

/// Receives one message into `buf`; returns its length and the descriptors
/// that came with it. A message whose descriptors were cut short
/// (`MSG_CTRUNC`) is an error, with the ones that did arrive closed.
pub fn recv_with_fds(sock: impl AsFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let (n, fds, truncated) = recv_with_fds_cut(sock, buf)?;
    if truncated {
        drop(fds);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "descriptors truncated",
        ));
    }
    Ok((n, fds))
}

/// As [`recv_with_fds`], but the descriptors that arrived come back even
/// when more were cut off (the flag, `MSG_CTRUNC`): the caller decides
/// where they are closed (closing a file on a FUSE mount can wait on its
/// daemon for good).
pub fn recv_with_fds_cut(
    sock: impl AsFd,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<OwnedFd>, bool)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = vec![0u64; cmsg_space(MAX_FDS).div_ceil(8)];
    // SAFETY: all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = cbuf.len() * 8;
    // SAFETY: msg references iov/cbuf, alive across the call; MSG_CMSG_CLOEXEC
    // keeps received fds from leaking into children.
    let r = unsafe { libc::recvmsg(sock.as_fd().as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    let n = cvt_isize(r)?;
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control with well-formed cmsg headers up
    // to msg_controllen; CMSG_FIRSTHDR/NXTHDR walk them within that bound.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data_len = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                let p = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..data_len / size_of::<RawFd>() {
                    // Each fd is newly installed in this process and owned by us.
                    fds.push(OwnedFd::from_raw_fd(p.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n, fds, msg.msg_flags & libc::MSG_CTRUNC != 0))
}

/// Receives one message into `buf` with no room for descriptors: any the
/// peer attached are discarded by the kernel and never enter this process
/// (so closing them cannot block it, e.g. on a FUSE file's flush).
pub fn recv_discarding_fds(sock: impl AsFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is a live writable slice of buf.len() bytes.
    let r = unsafe {
        libc::recv(
            sock.as_fd().as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
        )
    };
    cvt_isize(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::EventFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn fds_sent_to_a_discarding_receiver_never_arrive() {
        let (a, b) = UnixStream::pair().unwrap();
        let e = EventFd::new().unwrap();
        send_with_fds(&a, b"hi", &[e.as_fd()]).unwrap();
        let before = std::fs::read_dir("/proc/self/fd").unwrap().count();
        let mut buf = [0u8; 8];
        assert_eq!(recv_discarding_fds(&b, &mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"hi");
        let after = std::fs::read_dir("/proc/self/fd").unwrap().count();
        assert_eq!(before, after, "no descriptor was installed");
    }

    #[test]
    fn fds_cross_a_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let e1 = EventFd::new().unwrap();
        let e2 = EventFd::new().unwrap();
        send_with_fds(&a, b"hi", &[&e1, &e2]).unwrap();
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(&b, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert_eq!(fds.len(), 2);
        let mut it = fds.into_iter();
        let r1 = EventFd::from_fd(it.next().unwrap());
        e1.kick().unwrap();
        assert_eq!(r1.drain().unwrap(), 1);
    }
}
