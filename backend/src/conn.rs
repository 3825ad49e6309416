//! vhost-user framing on the backend side: one request (12-byte header,
//! body of at most 4096 bytes, descriptors on the header's first byte) in,
//! replies out. The `vhost` crate keeps its connection type private, so
//! this is ours; its message bodies (`vhost::vhost_user::message`) are the
//! wire types we decode into.
//!
//! Everything here comes from the VMM and is checked before it is used:
//! sizes against the 4 KiB bound, the version bits, the descriptor count.

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vhost::vhost_user::message::FrontendReq;
use vm_memory::ByteValued;

/// Header size: request, flags, size (u32 each, little endian).
pub const HDR_LEN: usize = 12;
/// Largest body (vhost-user's MAX_MSG_SIZE).
pub const MAX_BODY: usize = 4096;
/// Most descriptors one request may carry (SET_MEM_TABLE's 8 regions
/// in QEMU; the spec allows up to 32).
pub const MAX_FDS: usize = 32;

/// Header flag bits.
pub mod flags {
    /// Protocol version 1, in the low two bits.
    pub const VERSION: u32 = 0x1;
    /// Mask of the version bits.
    pub const VERSION_MASK: u32 = 0x3;
    /// The message is a reply.
    pub const REPLY: u32 = 0x4;
    /// The frontend wants an ack (REPLY_ACK).
    pub const NEED_REPLY: u32 = 0x8;
}

/// Why a request could not be read. All of these end the session: after a
/// framing error the stream cannot be trusted to be at a message boundary.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The VMM closed the connection.
    #[error("the VMM closed the connection")]
    Closed,
    /// The connection broke mid-message.
    #[error("connection closed in the middle of a message ({got} of {want} bytes)")]
    Truncated {
        /// Bytes read.
        got: usize,
        /// Bytes expected.
        want: usize,
    },
    /// A header with a version other than 1.
    #[error("message header version {0:#x}, expected 1")]
    Version(u32),
    /// A body larger than vhost-user allows.
    #[error("request {name} announces a {size}-byte body (at most {MAX_BODY})")]
    TooLarge {
        /// The request's name.
        name: String,
        /// Announced size.
        size: u32,
    },
    /// Too many descriptors on one message.
    #[error("{0} descriptors on one message (at most {MAX_FDS})")]
    TooManyFds(usize),
    /// The VMM took longer than [`STALL`] to send a whole message once it
    /// began, or to take a whole reply.
    #[error("the VMM took over {}s over one message", STALL.as_secs())]
    Stalled,
    /// Descriptors of kinds valed does not use keep coming from a uid whose
    /// earlier ones are not closed yet (a FUSE daemon not answering their
    /// FLUSH, say).
    #[error("the VMM's uid has {} descriptors of kinds valed does not use waiting to be closed: more are discarded unread", crate::reaper::MAX_PENDING)]
    Foreign,
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

/// How long a VMM may take over one message once it began, or over
/// taking one reply, in all (not per read: a byte every second would
/// otherwise hold the port's thread for good). The port's thread waits on
/// the socket only once epoll said a message began, and must get back to
/// its kicks and to a port being removed.
pub const STALL: std::time::Duration = std::time::Duration::from_secs(2);

fn stall(e: io::Error) -> ConnError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ConnError::Stalled,
        _ => ConnError::Io(e),
    }
}

/// The name of request `code` as the vhost-user spec spells it
/// (`SET_VRING_ENABLE`), or `request 99` for codes we do not know.
pub fn request_name(code: u32) -> String {
    match FrontendReq::try_from(code) {
        Ok(r) => format!("{r:?}"),
        Err(_) => format!("request {code}"),
    }
}

/// One request from the VMM.
#[derive(Debug)]
pub struct Request {
    /// Request code (`FrontendReq` as a number: unknown codes are kept so
    /// they can be refused by name).
    pub code: u32,
    /// Header flags.
    pub flags: u32,
    /// The body, exactly as long as the header said.
    pub body: Vec<u8>,
    /// Descriptors that came with it, of the kinds valed uses (shared
    /// memory and eventfds).
    pub fds: Vec<OwnedFd>,
    /// What `/proc/self/fd` named the others that came with it: set aside
    /// unread, closed off this thread (`reaper`), the request refused.
    pub foreign: Vec<String>,
}

impl Request {
    /// The request, if it is one vhost-user defines.
    pub fn req(&self) -> Option<FrontendReq> {
        FrontendReq::try_from(self.code).ok()
    }

    /// Its name, for messages.
    pub fn name(&self) -> String {
        request_name(self.code)
    }

    /// Whether the frontend asked for an ack.
    pub fn need_reply(&self) -> bool {
        self.flags & flags::NEED_REPLY != 0
    }

    /// The body as `T`, which must be exactly the body's size.
    pub fn body_as<T: ByteValued + Default>(&self) -> Result<T, String> {
        self.prefix_as::<T>(true)
    }

    /// The first `size_of::<T>()` bytes of the body as `T`; with `exact`,
    /// nothing may follow.
    pub fn prefix_as<T: ByteValued + Default>(&self, exact: bool) -> Result<T, String> {
        let n = std::mem::size_of::<T>();
        if self.body.len() < n || (exact && self.body.len() != n) {
            return Err(format!(
                "{}: body of {} bytes, expected {n}",
                self.name(),
                self.body.len()
            ));
        }
        let mut v = T::default();
        v.as_mut_slice().copy_from_slice(&self.body[..n]);
        Ok(v)
    }
}

/// The backend end of a vhost-user connection.
#[derive(Debug)]
pub struct Conn {
    sock: UnixStream,
    /// The peer's uid, whose descriptors of kinds valed does not use are
    /// counted while they wait to be closed (`reaper`).
    peer_uid: u32,
}

impl Conn {
    /// Wraps a connected stream; reads and writes give up after
    /// [`STALL`].
    pub fn new(sock: UnixStream) -> Conn {
        let _ = sock.set_read_timeout(Some(STALL));
        let _ = sock.set_write_timeout(Some(STALL));
        let peer_uid = netmap::sys::peer_cred(&sock).map_or(u32::MAX, |c| c.1);
        Conn { sock, peer_uid }
    }

    /// The socket (to poll it).
    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// Reads one request. Blocks until it is whole, for at most
    /// [`STALL`] in all.
    pub fn recv(&mut self) -> Result<Request, ConnError> {
        let deadline = Instant::now() + STALL;
        let _ = self.sock.set_read_timeout(Some(STALL));
        let mut hdr = [0u8; HDR_LEN];
        // Descriptors ride on the header's bytes: read it with recvmsg,
        // then the rest of a short read plainly (a stream socket may split
        // it, and no descriptor comes after the first byte).
        if crate::reaper::full(self.peer_uid) {
            // Read with no room for descriptors: the kernel discards them
            // without installing them, so nothing is closed here.
            let _ = netmap::sys::recv_discarding_fds(&self.sock, &mut hdr);
            return Err(ConnError::Foreign);
        }
        let (n, fds, cut) = loop {
            match netmap::sys::recv_with_fds_cut(&self.sock, &mut hdr) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r.map_err(stall)?,
            }
        };
        // Sorted before anything else can drop them here.
        let (mut fds, foreign) = crate::reaper::screen(self.peer_uid, fds);
        if cut {
            return Err(ConnError::TooManyFds(netmap::sys::MAX_FDS + 1));
        }
        if n == 0 {
            return Err(ConnError::Closed);
        }
        self.read_rest(&mut hdr, n, deadline)?;
        let code = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let fl = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
        let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
        if fl & flags::VERSION_MASK != flags::VERSION {
            return Err(ConnError::Version(fl & flags::VERSION_MASK));
        }
        if size as usize > MAX_BODY {
            return Err(ConnError::TooLarge {
                name: request_name(code),
                size,
            });
        }
        if fds.len() > MAX_FDS {
            let k = fds.len();
            fds.clear();
            return Err(ConnError::TooManyFds(k));
        }
        let mut body = vec![0u8; size as usize];
        self.read_rest(&mut body, 0, deadline)?;
        Ok(Request {
            code,
            flags: fl,
            body,
            fds,
            foreign,
        })
    }

    fn read_rest(
        &mut self,
        buf: &mut [u8],
        mut got: usize,
        deadline: Instant,
    ) -> Result<(), ConnError> {
        while got < buf.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ConnError::Stalled);
            }
            let _ = self.sock.set_read_timeout(Some(left));
            match self.sock.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(ConnError::Truncated {
                        got,
                        want: buf.len(),
                    })
                }
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(stall(e)),
            }
        }
        Ok(())
    }

    /// Sends the reply to request `code` with `body`.
    pub fn reply(&mut self, code: u32, body: &[u8]) -> Result<(), ConnError> {
        let mut msg = Vec::with_capacity(HDR_LEN + body.len());
        msg.extend_from_slice(&code.to_le_bytes());
        msg.extend_from_slice(&(flags::VERSION | flags::REPLY).to_le_bytes());
        msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
        msg.extend_from_slice(body);
        let deadline = Instant::now() + STALL;
        let mut sent = 0;
        while sent < msg.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ConnError::Stalled);
            }
            let _ = self.sock.set_write_timeout(Some(left));
            match self.sock.write(&msg[sent..]) {
                Ok(0) => return Err(ConnError::Io(io::ErrorKind::WriteZero.into())),
                Ok(k) => sent += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(stall(e)),
            }
        }
        Ok(())
    }

    /// Replies with a u64.
    pub fn reply_u64(&mut self, code: u32, v: u64) -> Result<(), ConnError> {
        self.reply(code, &v.to_le_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vhost::vhost_user::message::VhostUserVringState;

    fn raw(code: u32, fl: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&code.to_le_bytes());
        m.extend_from_slice(&fl.to_le_bytes());
        m.extend_from_slice(&(body.len() as u32).to_le_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn request_split_across_writes() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(b);
        let m = raw(18, 1, &[0, 0, 0, 0, 1, 0, 0, 0]);
        a.write_all(&m[..5]).unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            a.write_all(&m[5..]).unwrap();
            a
        });
        let r = c.recv().unwrap();
        let _a = t.join().unwrap();
        assert_eq!(r.name(), "SET_VRING_ENABLE");
        let s: VhostUserVringState = r.body_as().unwrap();
        assert_eq!(({ s.index }, { s.num }), (0, 1));
        assert!(r.body_as::<u64>().is_ok());
        assert!(r.prefix_as::<[u8; 16]>(false).is_err());
    }

    #[test]
    fn bad_frames_are_named() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(b);
        a.write_all(&raw(1, 2, &[])).unwrap();
        assert!(matches!(c.recv(), Err(ConnError::Version(2))));
        let mut m = raw(5, 1, &[]);
        m[8..12].copy_from_slice(&5000u32.to_le_bytes());
        a.write_all(&m).unwrap();
        let e = c.recv().unwrap_err().to_string();
        assert!(e.contains("SET_MEM_TABLE") && e.contains("5000"), "{e}");
        a.write_all(&raw(8, 1, &[1, 2])[..14]).unwrap();
        drop(a);
        // The header says 2 bytes, both came; then EOF.
        assert!(c.recv().is_ok());
        assert!(matches!(c.recv(), Err(ConnError::Closed)));
    }

    #[test]
    fn truncated_body() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(b);
        let m = raw(8, 1, &[0; 8]);
        a.write_all(&m[..16]).unwrap();
        drop(a);
        assert!(matches!(
            c.recv(),
            Err(ConnError::Truncated { got: 4, want: 8 })
        ));
    }

    #[test]
    fn a_half_sent_message_times_out() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(b);
        a.write_all(&raw(8, 1, &[0; 8])[..6]).unwrap();
        let t0 = std::time::Instant::now();
        assert!(matches!(c.recv(), Err(ConnError::Stalled)));
        assert!(t0.elapsed() >= STALL);
    }

    /// A byte every half second is never a stall per read, but the
    /// message as a whole is one.
    #[test]
    fn a_message_sent_a_byte_at_a_time_times_out_as_a_whole() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(b);
        let m = raw(8, 1, &[0; 8]);
        a.write_all(&m[..1]).unwrap();
        let drip = std::thread::spawn(move || {
            for byte in &m[1..] {
                std::thread::sleep(std::time::Duration::from_millis(500));
                if a.write_all(&[*byte]).is_err() {
                    return;
                }
            }
        });
        let t0 = std::time::Instant::now();
        assert!(matches!(c.recv(), Err(ConnError::Stalled)));
        let took = t0.elapsed();
        assert!(took >= STALL && took < STALL * 3, "{took:?}");
        drop(c);
        drip.join().unwrap();
    }

    /// A uid with as many descriptors waiting to be closed as it may have
    /// gets its VMMs' next ones discarded unread, and the session ends.
    #[test]
    fn a_uid_at_its_pending_bound_gets_its_descriptors_discarded() {
        let uid = 4_000_000_004; // no other test's
        let (a, b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(b);
        c.peer_uid = uid;
        crate::reaper::add_pending(uid, crate::reaper::MAX_PENDING as isize);
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let m = raw(1, 1, &[]);
        let n = netmap::sys::send_with_fds(&a, &m, &[std::os::fd::AsFd::as_fd(&f)]).unwrap();
        assert_eq!(n, m.len());
        assert!(matches!(c.recv(), Err(ConnError::Foreign)));
        crate::reaper::add_pending(uid, -(crate::reaper::MAX_PENDING as isize));
        assert!(!crate::reaper::full(uid));
    }

    #[test]
    fn unknown_request_named_by_number() {
        assert_eq!(request_name(1), "GET_FEATURES");
        assert_eq!(request_name(999), "request 999");
    }
}
