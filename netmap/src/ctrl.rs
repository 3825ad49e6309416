//! The wire format of valed's control socket, and a small client.
//!
//! valed listens on a Unix `SOCK_SEQPACKET` socket ([`socket_path`]). One
//! message is one request or one reply, at most [`MAX_MSG_SIZE`] bytes;
//! descriptors (memfds, eventfds) travel beside it with `SCM_RIGHTS`. All
//! integers are in the host's byte order (both ends are on the same host).
//!
//! # Request
//!
//! ```text
//! nmreq_header              88 bytes, netmap's layout, except:
//!                             nr_options = NUMBER of options that follow
//!                             nr_body    = LENGTH of the body in bytes
//! body                      nr_body bytes
//! option 0:  nmreq_option   24 bytes: nro_next = 0, nro_reqtype, nro_status,
//!                             nro_size = 24 + length of its data (netmap's
//!                             "total size, header included")
//!            data           nro_size - 24 bytes (the C struct minus its
//!                             leading nmreq_option)
//! option 1 ...
//! ```
//!
//! Pointers mean nothing across processes, hence the count and the length in
//! place of netmap's `nr_options` / `nr_body` / `nro_next` pointers. In a
//! decoded [`Request`] both header fields are 0: the body and the options
//! are in [`Request::body`] and [`Request::options`], and [`Request::encode`]
//! writes the count and length from them.
//!
//! A request is at most [`MAX_REQUEST_SIZE`] (4088) bytes, so that its reply
//! (the same bytes plus an 8-byte prefix) fits in one message.
//!
//! # Reply
//!
//! ```text
//! error: i32                0 or a positive errno (netmap's answer)
//! nfds:  u32                number of descriptors attached with SCM_RIGHTS
//! request                   the same layout as above: header, body filled
//!                           in by valed, options with nro_status set
//! ```
//!
//! A reply with a non-zero `error` may carry a request that would not pass
//! [`Request::decode`] (valed answers undecodable requests with
//! [`Reply::failure`]): for those only the framing is checked (lengths,
//! option chain, trailing bytes, NUL in the name), not the version, request
//! type or body and option sizes.
//!
//! # Validation
//!
//! [`Request::decode`] parses hostile input from any local client: it never
//! panics, allocates at most the message size (plus a [`MAX_OPTIONS`]-entry
//! vector), and walks at most [`MAX_OPTIONS`] options. It checks the
//! version (14..=15), `nr_reserved == 0`, a NUL inside `nr_name`, the
//! request type (netmap's 1..=15, or the vale range `>= 0x8000`), the body
//! length (exactly [`ReqType::body_size`] for netmap types, anything for
//! vale types), each option's `nro_next == 0`, `nro_size >= 24` and within
//! the message, for netmap's option types (1..=5) the data size netmap
//! defines ([`nmreq_opt_body_size`]) and at most one option of each type
//! (netmap's `EINVAL` for duplicates), and that nothing follows the last
//! option. Unknown option types are accepted: the server answers them
//! through `nro_status` (`EOPNOTSUPP`), as netmap does.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::abi::{
    nmreq_opt_body_size, NameTooLong, NmreqHeader, NmreqOption, ReqType, NETMAP_API,
    NETMAP_MAX_API, NETMAP_MIN_API, NETMAP_REQ_OPT_MAX,
};
use crate::pod::Pod;
use crate::sys;

/// Largest message (request or reply) on the control socket, in bytes.
pub const MAX_MSG_SIZE: usize = 4096;
/// Size of the `{ error: i32, nfds: u32 }` prefix of a reply.
pub const REPLY_PREFIX_SIZE: usize = 8;
/// Largest request, so that its reply fits in [`MAX_MSG_SIZE`].
pub const MAX_REQUEST_SIZE: usize = MAX_MSG_SIZE - REPLY_PREFIX_SIZE;
/// Size of the `nmreq_header` that starts a request.
pub const HEADER_SIZE: usize = size_of::<NmreqHeader>();
/// Size of the `nmreq_option` header that starts each option.
pub const OPTION_HEADER_SIZE: usize = size_of::<NmreqOption>();
/// Most options one request may carry.
pub const MAX_OPTIONS: usize = 16;

/// First request type of the private vale range. Types from here up have a
/// variable-length body (any length that fits in the message).
pub const VALE_REQ_BASE: u16 = 0x8000;
/// vale request: switch and port statistics (variable-length body).
pub const VALE_REQ_STATS: u16 = 0x8000;

/// vale request: read or change a port's switch options. Body
/// [`ValePortConfig`]; the reply carries the options now in force.
pub const VALE_REQ_PORT_CONFIG: u16 = 0x8001;

/// [`ValePortConfig::flags`]: hold the sender instead of dropping when the
/// port's RX ring is full.
pub const VALE_PORT_BACKPRESSURE: u32 = 1 << 0;
/// [`ValePortConfig::flags`]: honour the destination in slot flags'
/// high byte (`NS_PORT_MASK`).
pub const VALE_PORT_MASK_OVERRIDE: u32 = 1 << 1;
/// [`ValePortConfig::set`]: apply `flags`.
pub const VALE_SET_FLAGS: u32 = 1 << 0;
/// [`ValePortConfig::set`]: apply `mac_limit`.
pub const VALE_SET_MAC_LIMIT: u32 = 1 << 1;

/// Body of [`VALE_REQ_PORT_CONFIG`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ValePortConfig {
    /// `VALE_PORT_*` bits.
    pub flags: u32,
    /// Most MACs the port may teach the bridge (0: the switch default, `vale::DEFAULT_PORT_MAC_LIMIT`).
    pub mac_limit: u32,
    /// Which fields to apply (`VALE_SET_*`); 0 only reads.
    pub set: u32,
    /// Zero.
    pub pad: u32,
}

/// vale request: the counters of the port named by `nr_name` as lines of
/// Prometheus' text exposition format (`family{labels} value`, no HELP or
/// TYPE lines: `valed --metrics` groups them). Variable-length reply body.
pub const VALE_REQ_METRICS: u16 = 0x8003;

/// vale request: read or change switch `nr_name`'s (`valeN`) sharing.
/// A switch belongs to the uid whose port made it; other uids' ports may
/// attach only if that uid is in its share list (root's switches take
/// everyone's). Body: [`ValeSwitchConfig`]; only the owner or root may set.
pub const VALE_REQ_SWITCH_CONFIG: u16 = 0x8004;

/// Most uids one switch may be shared with.
pub const VALE_SHARE_MAX: usize = 16;

/// [`ValeSwitchConfig::set`]: replace the share list with `share[..nshare]`.
pub const VALE_SET_SHARE: u32 = 1 << 0;

/// Body of [`VALE_REQ_SWITCH_CONFIG`]; the reply carries the switch's
/// owner and share list as they are after the request.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ValeSwitchConfig {
    /// (out) The uid the switch belongs to.
    pub owner: u32,
    /// Entries of `share` in use (at most [`VALE_SHARE_MAX`]).
    pub nshare: u32,
    /// Which fields to apply (`VALE_SET_*`); 0 only reads.
    pub set: u32,
    /// Zero.
    pub pad: u32,
    /// uids whose ports may attach besides the owner's and root's.
    pub share: [u32; VALE_SHARE_MAX],
}

/// Private request: create a vhost-user-net port named by `nr_name`
/// (persistent, like NEWIF; attach it with VALE_ATTACH). Body:
/// [`ValeVhostNewif`].
pub const VALE_REQ_VHOST_NEWIF: u16 = 0x8002;

/// [`ValeVhostNewif::flags`]: valed connects to the VMM's socket instead
/// of listening on it.
pub const VALE_VHOST_CLIENT: u32 = 1 << 0;

/// Body of [`VALE_REQ_VHOST_NEWIF`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValeVhostNewif {
    /// Socket path, NUL-terminated (a `sun_path` is 108 bytes).
    pub path: [u8; 108],
    /// `VALE_VHOST_*` bits.
    pub flags: u32,
    /// Queue pairs to offer (0: 1).
    pub queue_pairs: u16,
    /// Largest queue size (0: 1024).
    pub queue_size: u16,
}

impl Default for ValeVhostNewif {
    fn default() -> Self {
        ValeVhostNewif {
            path: [0; 108],
            flags: 0,
            queue_pairs: 0,
            queue_size: 0,
        }
    }
}

impl ValeVhostNewif {
    /// A body for `path`; None if the path does not fit.
    pub fn new(path: &str, client: bool, queue_pairs: u16) -> Option<ValeVhostNewif> {
        let b = path.as_bytes();
        if b.is_empty() || b.len() >= 108 || b.contains(&0) {
            return None;
        }
        let mut v = ValeVhostNewif {
            flags: if client { VALE_VHOST_CLIENT } else { 0 },
            queue_pairs,
            ..Default::default()
        };
        v.path[..b.len()].copy_from_slice(b);
        Some(v)
    }

    /// The path, if it is UTF-8 and NUL-terminated.
    pub fn path_str(&self) -> Option<&str> {
        let n = self.path.iter().position(|&c| c == 0)?;
        std::str::from_utf8(&self.path[..n])
            .ok()
            .filter(|s| !s.is_empty())
    }
}

/// Environment variable naming the control socket.
pub const SOCKET_ENV: &str = "VALE_SOCKET";
/// Control socket used when neither the command line nor [`SOCKET_ENV`]
/// names one.
pub const DEFAULT_SOCKET_PATH: &str = "/run/vale/valed.sock";

/// The control socket path: `cli` if given, else `$VALE_SOCKET` if set and
/// non-empty, else [`DEFAULT_SOCKET_PATH`].
pub fn socket_path(cli: Option<&Path>) -> PathBuf {
    if let Some(p) = cli {
        return p.to_path_buf();
    }
    match std::env::var_os(SOCKET_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_SOCKET_PATH),
    }
}

/// What was wrong with a control message or its exchange.
#[derive(Debug, thiserror::Error)]
pub enum CtrlError {
    /// A socket call failed.
    #[error("control socket: {0}")]
    Io(#[from] io::Error),
    /// Connecting to valed failed.
    #[error("cannot connect to valed at {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The peer closed the connection instead of replying.
    #[error("valed closed the control connection")]
    Closed,
    /// The message is shorter than its fixed part.
    #[error("message of {len} bytes is too short: at least {need} needed")]
    TooShort {
        /// Message length.
        len: usize,
        /// Minimum length.
        need: usize,
    },
    /// The message is longer than the protocol allows (a received message
    /// cut at the limit is reported with `len = max + 1`).
    #[error("message of {len} bytes is too large: at most {max} allowed")]
    TooLarge {
        /// Message length.
        len: usize,
        /// Maximum length.
        max: usize,
    },
    /// `nr_version` outside 14..=15.
    #[error("nr_version {0} not supported (expected {NETMAP_MIN_API}..={NETMAP_MAX_API})")]
    Version(u16),
    /// `nr_reserved` is not zero.
    #[error("nr_reserved is {0:#x}, must be 0")]
    Reserved(u32),
    /// `nr_name` has no NUL in its 64 bytes.
    #[error("nr_name is not NUL-terminated within 64 bytes")]
    NameNotTerminated,
    /// A name given to [`Request::new`] does not fit in `nr_name`.
    #[error("port name: {0}")]
    Name(#[from] NameTooLong),
    /// `nr_reqtype` is neither a netmap request nor in the vale range.
    #[error("unknown request type {0}")]
    UnknownReqType(u16),
    /// The body length is not the one the request type defines.
    #[error("request type {reqtype}: body of {len} bytes, expected {want}")]
    BodySize {
        /// Request type.
        reqtype: u16,
        /// Body length in the header.
        len: u64,
        /// Body size of this request type.
        want: usize,
    },
    /// The body runs past the end of the message.
    #[error("body of {len} bytes runs past the message ({left} bytes left)")]
    BodyTruncated {
        /// Body length in the header.
        len: u64,
        /// Bytes left after the header.
        left: usize,
    },
    /// More than [`MAX_OPTIONS`] options.
    #[error("{0} options, at most {MAX_OPTIONS} allowed")]
    TooManyOptions(u64),
    /// An option header runs past the end of the message.
    #[error("option {index}: header runs past the message ({left} bytes left)")]
    OptionTruncated {
        /// Option position, from 0.
        index: usize,
        /// Bytes left in the message.
        left: usize,
    },
    /// An option's `nro_next` is not 0.
    #[error("option {index}: nro_next is {next:#x}, must be 0 on the wire")]
    OptionNext {
        /// Option position, from 0.
        index: usize,
        /// The value found.
        next: u64,
    },
    /// An option's `nro_size` is smaller than its header.
    #[error(
        "option {index}: nro_size {size} is smaller than the {OPTION_HEADER_SIZE}-byte header"
    )]
    OptionTooSmall {
        /// Option position, from 0.
        index: usize,
        /// The value found.
        size: u64,
    },
    /// An option's data runs past the end of the message.
    #[error("option {index}: nro_size {size} runs past the message ({left} bytes left after its header)")]
    OptionOverrun {
        /// Option position, from 0.
        index: usize,
        /// The value found.
        size: u64,
        /// Bytes left after the option header.
        left: usize,
    },
    /// A netmap option whose data size is not the one netmap defines.
    #[error("option {index} (type {reqtype}): {len} bytes of data, expected {want}")]
    OptionBodySize {
        /// Option position, from 0.
        index: usize,
        /// Option type.
        reqtype: u32,
        /// Data length (`nro_size - 24`).
        len: usize,
        /// Data size of this option type.
        want: usize,
    },
    /// A netmap option type appears twice.
    #[error("option {index}: type {reqtype} appears more than once")]
    DuplicateOption {
        /// Option position, from 0, of the second occurrence.
        index: usize,
        /// Option type.
        reqtype: u32,
    },
    /// Bytes follow the last option.
    #[error("{0} trailing bytes after the last option")]
    Trailing(usize),
    /// A reply's error field is negative.
    #[error("reply error {0} is not 0 or a positive errno")]
    BadErrno(i32),
    /// A reply announced a different number of descriptors than arrived.
    #[error("reply announced {announced} descriptors, {received} arrived")]
    FdCount {
        /// `nfds` in the reply.
        announced: u32,
        /// Descriptors received.
        received: usize,
    },
    /// [`Request::body_as`] or [`ReqOption::to_struct`] with a type of the
    /// wrong size.
    #[error("{len} bytes cannot be read as a {want}-byte struct")]
    BodyType {
        /// Bytes available.
        len: usize,
        /// Size of the type asked for.
        want: usize,
    },
    /// valed refused the request ([`Reply::into_result`]).
    #[error("valed: {}", io::Error::from_raw_os_error(*.0))]
    Remote(i32),
}

impl CtrlError {
    /// The errno netmap would answer (or the one the socket call failed
    /// with): `EINVAL` for malformed requests, `EMSGSIZE` for oversized
    /// ones, the remote errno for [`CtrlError::Remote`].
    pub fn errno(&self) -> i32 {
        match self {
            Self::Io(e) | Self::Connect { source: e, .. } => e.raw_os_error().unwrap_or(libc::EIO),
            Self::Closed => libc::ECONNRESET,
            Self::TooLarge { .. } => libc::EMSGSIZE,
            Self::BadErrno(_) | Self::FdCount { .. } => libc::EPROTO,
            Self::Remote(e) => *e,
            Self::TooShort { .. }
            | Self::Version(_)
            | Self::Reserved(_)
            | Self::NameNotTerminated
            | Self::Name(_)
            | Self::UnknownReqType(_)
            | Self::BodySize { .. }
            | Self::BodyTruncated { .. }
            | Self::TooManyOptions(_)
            | Self::OptionTruncated { .. }
            | Self::OptionNext { .. }
            | Self::OptionTooSmall { .. }
            | Self::OptionOverrun { .. }
            | Self::OptionBodySize { .. }
            | Self::DuplicateOption { .. }
            | Self::Trailing(_)
            | Self::BodyType { .. } => libc::EINVAL,
        }
    }
}

/// The bytes of a Pod value.
fn pod_bytes<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: T is Pod: no padding, so all size_of::<T>() bytes of *v are
    // initialized; the slice borrows *v and covers exactly it.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

/// A Pod value from exactly `size_of::<T>()` bytes.
fn pod_read<T: Pod>(b: &[u8]) -> Option<T> {
    if b.len() != size_of::<T>() {
        return None;
    }
    // SAFETY: b has exactly size_of::<T>() readable bytes; read_unaligned
    // needs no alignment; every bit pattern is a valid T (Pod).
    Some(unsafe { b.as_ptr().cast::<T>().read_unaligned() })
}

/// The body size request type `reqtype` requires: `Some(n)` for netmap's
/// types, `None` (any length) for the vale range (`>= 0x8000`).
///
/// # Errors
///
/// [`CtrlError::UnknownReqType`] for any other type.
pub fn body_size_for(reqtype: u16) -> Result<Option<usize>, CtrlError> {
    if reqtype >= VALE_REQ_BASE {
        return Ok(None);
    }
    match ReqType::try_from(reqtype) {
        Ok(t) => Ok(Some(t.body_size())),
        Err(_) => Err(CtrlError::UnknownReqType(reqtype)),
    }
}

/// One option of a [`Request`]: its `nmreq_option` fields and its data (the
/// C option struct without its leading 24-byte `nmreq_option`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReqOption {
    /// `nro_reqtype`: a `NETMAP_REQ_OPT_*` value.
    pub reqtype: u32,
    /// `nro_status`: 0 in a request; 0 or an errno in a reply.
    pub status: u32,
    /// The option's data (`nro_size - 24` bytes on the wire).
    pub body: Vec<u8>,
}

impl ReqOption {
    /// An option of type `reqtype` with data `body` and status 0.
    pub fn new(reqtype: u32, body: Vec<u8>) -> ReqOption {
        ReqOption {
            reqtype,
            status: 0,
            body,
        }
    }

    /// An option from a C option struct that starts with its `nmreq_option`
    /// (e.g. [`NmreqOptCsb`](crate::abi::NmreqOptCsb)): type and status from
    /// that header, data from the rest. `nro_next` and `nro_size` are
    /// ignored.
    ///
    /// # Errors
    ///
    /// [`CtrlError::BodyType`] if `T` is smaller than an option header.
    pub fn from_struct<T: Pod>(opt: &T) -> Result<ReqOption, CtrlError> {
        let b = pod_bytes(opt);
        let (Some(h), Some(rest)) = (
            b.get(..OPTION_HEADER_SIZE)
                .and_then(pod_read::<NmreqOption>),
            b.get(OPTION_HEADER_SIZE..),
        ) else {
            return Err(CtrlError::BodyType {
                len: b.len(),
                want: OPTION_HEADER_SIZE,
            });
        };
        Ok(ReqOption {
            reqtype: h.nro_reqtype,
            status: h.nro_status,
            body: rest.to_vec(),
        })
    }

    /// The C option struct `T` (which starts with its `nmreq_option`),
    /// with `nro_next = 0`, `nro_size = size_of::<T>()`, type and status from
    /// this option.
    ///
    /// # Errors
    ///
    /// [`CtrlError::BodyType`] unless `24 + body.len() == size_of::<T>()`.
    pub fn to_struct<T: Pod + Default>(&self) -> Result<T, CtrlError> {
        let want = size_of::<T>();
        let len = OPTION_HEADER_SIZE + self.body.len();
        if len != want {
            return Err(CtrlError::BodyType { len, want });
        }
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(pod_bytes(&self.wire_header()));
        b.extend_from_slice(&self.body);
        pod_read(&b).ok_or(CtrlError::BodyType { len, want })
    }

    /// The `nmreq_option` this option has on the wire.
    fn wire_header(&self) -> NmreqOption {
        NmreqOption {
            nro_next: 0,
            nro_reqtype: self.reqtype,
            nro_status: self.status,
            nro_size: (OPTION_HEADER_SIZE + self.body.len()) as u64,
        }
    }
}

/// A control request: netmap's `nmreq_header`, the body, the options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The header. `nr_options` and `nr_body` are 0 in decoded requests and
    /// ignored by [`Request::encode`], which writes the option count and the
    /// body length there.
    pub hdr: NmreqHeader,
    /// The body (e.g. the bytes of an [`NmreqRegister`](crate::abi::NmreqRegister)).
    pub body: Vec<u8>,
    /// The options, in order.
    pub options: Vec<ReqOption>,
}

impl Request {
    /// A request of type `reqtype` at [`NETMAP_API`] for port `name`, with
    /// `body` and no options. Neither the type nor the body size is checked
    /// here ([`Request::decode`] does that on the other end).
    ///
    /// # Errors
    ///
    /// [`CtrlError::Name`] if `name` has more than 63 bytes.
    pub fn new(reqtype: u16, name: &str, body: &impl Pod) -> Result<Request, CtrlError> {
        Self::with_body(reqtype, name, pod_bytes(body).to_vec())
    }

    /// Same as [`Request::new`] with the body as bytes (for vale requests,
    /// whose bodies have variable length).
    ///
    /// # Errors
    ///
    /// [`CtrlError::Name`] if `name` has more than 63 bytes.
    pub fn with_body(reqtype: u16, name: &str, body: Vec<u8>) -> Result<Request, CtrlError> {
        let mut hdr = NmreqHeader {
            nr_version: NETMAP_API,
            nr_reqtype: reqtype,
            ..NmreqHeader::default()
        };
        hdr.set_name(name)?;
        Ok(Request {
            hdr,
            body,
            options: Vec::new(),
        })
    }

    /// `nr_reqtype`.
    pub fn reqtype(&self) -> u16 {
        self.hdr.nr_reqtype
    }

    /// The port name up to its NUL.
    pub fn name(&self) -> &[u8] {
        self.hdr.name_bytes()
    }

    /// The body as a `T`.
    ///
    /// # Errors
    ///
    /// [`CtrlError::BodyType`] unless the body has exactly `size_of::<T>()`
    /// bytes.
    pub fn body_as<T: Pod + Default>(&self) -> Result<T, CtrlError> {
        pod_read(&self.body).ok_or(CtrlError::BodyType {
            len: self.body.len(),
            want: size_of::<T>(),
        })
    }

    /// Replaces the body with the bytes of `body`.
    pub fn set_body<T: Pod>(&mut self, body: &T) {
        self.body.clear();
        self.body.extend_from_slice(pod_bytes(body));
    }

    /// The first option of type `reqtype`.
    pub fn option(&self, reqtype: u32) -> Option<&ReqOption> {
        self.options.iter().find(|o| o.reqtype == reqtype)
    }

    /// The first option of type `reqtype`, mutable (to set its status).
    pub fn option_mut(&mut self, reqtype: u32) -> Option<&mut ReqOption> {
        self.options.iter_mut().find(|o| o.reqtype == reqtype)
    }

    /// Length of the encoded request in bytes.
    pub fn encoded_len(&self) -> usize {
        HEADER_SIZE
            + self.body.len()
            + self
                .options
                .iter()
                .map(|o| OPTION_HEADER_SIZE + o.body.len())
                .sum::<usize>()
    }

    /// Appends the wire form to `out`, with a size check against `max`.
    fn encode_into(&self, out: &mut Vec<u8>, max: usize) -> Result<(), CtrlError> {
        if self.options.len() > MAX_OPTIONS {
            return Err(CtrlError::TooManyOptions(self.options.len() as u64));
        }
        let len = self.encoded_len();
        if len > max {
            return Err(CtrlError::TooLarge { len, max });
        }
        let mut hdr = self.hdr;
        hdr.nr_options = self.options.len() as u64;
        hdr.nr_body = self.body.len() as u64;
        out.reserve(len);
        out.extend_from_slice(pod_bytes(&hdr));
        out.extend_from_slice(&self.body);
        for o in &self.options {
            out.extend_from_slice(pod_bytes(&o.wire_header()));
            out.extend_from_slice(&o.body);
        }
        Ok(())
    }

    /// The wire form of this request. Only the framing is checked (at most
    /// [`MAX_OPTIONS`] options, at most [`MAX_REQUEST_SIZE`] bytes), so that
    /// tests can send requests the server must refuse.
    ///
    /// # Errors
    ///
    /// [`CtrlError::TooManyOptions`], [`CtrlError::TooLarge`].
    pub fn encode(&self) -> Result<Vec<u8>, CtrlError> {
        let mut out = Vec::new();
        self.encode_into(&mut out, MAX_REQUEST_SIZE)?;
        Ok(out)
    }

    /// Parses and validates a request message (see the [module
    /// documentation](self) for every check).
    ///
    /// # Errors
    ///
    /// The first problem found, as a [`CtrlError`] naming it.
    pub fn decode(buf: &[u8]) -> Result<Request, CtrlError> {
        if buf.len() > MAX_REQUEST_SIZE {
            return Err(CtrlError::TooLarge {
                len: buf.len(),
                max: MAX_REQUEST_SIZE,
            });
        }
        Self::decode_inner(buf, true)
    }

    /// Parses a request; `strict` adds the semantic checks (version, type,
    /// body and option sizes, duplicate options) to the framing checks.
    fn decode_inner(buf: &[u8], strict: bool) -> Result<Request, CtrlError> {
        let too_short = CtrlError::TooShort {
            len: buf.len(),
            need: HEADER_SIZE,
        };
        let Some((hb, mut rest)) = buf.split_at_checked(HEADER_SIZE) else {
            return Err(too_short);
        };
        let Some(mut hdr) = pod_read::<NmreqHeader>(hb) else {
            return Err(too_short);
        };
        if strict && !(NETMAP_MIN_API..=NETMAP_MAX_API).contains(&hdr.nr_version) {
            return Err(CtrlError::Version(hdr.nr_version));
        }
        if hdr.nr_reserved != 0 {
            return Err(CtrlError::Reserved(hdr.nr_reserved));
        }
        if !hdr.nr_name.contains(&0) {
            return Err(CtrlError::NameNotTerminated);
        }
        let want = if strict {
            body_size_for(hdr.nr_reqtype)?
        } else {
            None
        };
        let nopt = hdr.nr_options;
        if nopt > MAX_OPTIONS as u64 {
            return Err(CtrlError::TooManyOptions(nopt));
        }
        let blen = hdr.nr_body;
        if let Some(w) = want {
            if blen != w as u64 {
                return Err(CtrlError::BodySize {
                    reqtype: hdr.nr_reqtype,
                    len: blen,
                    want: w,
                });
            }
        }
        let Some((body, r)) = usize::try_from(blen)
            .ok()
            .and_then(|n| rest.split_at_checked(n))
        else {
            return Err(CtrlError::BodyTruncated {
                len: blen,
                left: rest.len(),
            });
        };
        rest = r;
        let nopt = nopt as usize; // <= MAX_OPTIONS
        let mut options = Vec::with_capacity(nopt);
        let mut seen = 0u64; // bit per netmap option type
        for index in 0..nopt {
            let Some((oh, r)) = rest.split_at_checked(OPTION_HEADER_SIZE) else {
                return Err(CtrlError::OptionTruncated {
                    index,
                    left: rest.len(),
                });
            };
            let Some(o) = pod_read::<NmreqOption>(oh) else {
                return Err(CtrlError::OptionTruncated {
                    index,
                    left: rest.len(),
                });
            };
            rest = r;
            if o.nro_next != 0 {
                return Err(CtrlError::OptionNext {
                    index,
                    next: o.nro_next,
                });
            }
            let Some(dlen) = o.nro_size.checked_sub(OPTION_HEADER_SIZE as u64) else {
                return Err(CtrlError::OptionTooSmall {
                    index,
                    size: o.nro_size,
                });
            };
            let Some((data, r)) = usize::try_from(dlen)
                .ok()
                .and_then(|n| rest.split_at_checked(n))
            else {
                return Err(CtrlError::OptionOverrun {
                    index,
                    size: o.nro_size,
                    left: rest.len(),
                });
            };
            rest = r;
            if strict && (1..NETMAP_REQ_OPT_MAX).contains(&o.nro_reqtype) {
                let want = nmreq_opt_body_size(o.nro_reqtype, o.nro_size);
                if data.len() != want {
                    return Err(CtrlError::OptionBodySize {
                        index,
                        reqtype: o.nro_reqtype,
                        len: data.len(),
                        want,
                    });
                }
                let bit = 1u64 << o.nro_reqtype;
                if seen & bit != 0 {
                    return Err(CtrlError::DuplicateOption {
                        index,
                        reqtype: o.nro_reqtype,
                    });
                }
                seen |= bit;
            }
            options.push(ReqOption {
                reqtype: o.nro_reqtype,
                status: o.nro_status,
                body: data.to_vec(),
            });
        }
        if !rest.is_empty() {
            return Err(CtrlError::Trailing(rest.len()));
        }
        hdr.nr_options = 0;
        hdr.nr_body = 0;
        Ok(Request {
            hdr,
            body: body.to_vec(),
            options,
        })
    }
}

/// A reply: netmap's errno and the request as valed filled it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// 0 on success, else a positive errno.
    pub error: i32,
    /// The request with its body and option statuses filled in.
    pub req: Request,
}

impl Reply {
    /// A reply with `error` (0 or an errno) carrying `req`.
    pub fn new(error: i32, req: Request) -> Reply {
        Reply { error, req }
    }

    /// A reply refusing a request that could not be decoded: `errno` and an
    /// empty request at [`NETMAP_API`] (type 0, no name, body or options).
    pub fn failure(errno: i32) -> Reply {
        Reply {
            error: errno,
            req: Request {
                hdr: NmreqHeader {
                    nr_version: NETMAP_API,
                    ..NmreqHeader::default()
                },
                body: Vec::new(),
                options: Vec::new(),
            },
        }
    }

    /// The request if `error` is 0, else [`CtrlError::Remote`].
    ///
    /// # Errors
    ///
    /// [`CtrlError::Remote`] with the reply's errno.
    pub fn into_result(self) -> Result<Request, CtrlError> {
        if self.error == 0 {
            Ok(self.req)
        } else {
            Err(CtrlError::Remote(self.error))
        }
    }

    /// The wire form, announcing no descriptors.
    ///
    /// # Errors
    ///
    /// As [`Reply::encode_with_nfds`].
    pub fn encode(&self) -> Result<Vec<u8>, CtrlError> {
        self.encode_with_nfds(0)
    }

    /// The wire form, announcing `nfds` descriptors.
    ///
    /// # Errors
    ///
    /// [`CtrlError::BadErrno`] if `error` is negative, and the framing
    /// errors of [`Request::encode`].
    pub fn encode_with_nfds(&self, nfds: u32) -> Result<Vec<u8>, CtrlError> {
        if self.error < 0 {
            return Err(CtrlError::BadErrno(self.error));
        }
        let mut out = Vec::with_capacity(REPLY_PREFIX_SIZE + self.req.encoded_len());
        out.extend_from_slice(&self.error.to_ne_bytes());
        out.extend_from_slice(&nfds.to_ne_bytes());
        self.req
            .encode_into(&mut out, MAX_MSG_SIZE - REPLY_PREFIX_SIZE)?;
        Ok(out)
    }

    /// Parses a reply message, dropping its descriptor count.
    ///
    /// # Errors
    ///
    /// As [`Reply::decode_nfds`].
    pub fn decode(buf: &[u8]) -> Result<Reply, CtrlError> {
        Self::decode_nfds(buf).map(|(r, _)| r)
    }

    /// Parses a reply message; returns it and its `nfds`. A reply with
    /// `error == 0` carries a request checked as [`Request::decode`] does;
    /// one with an error only gets the framing checks.
    ///
    /// # Errors
    ///
    /// [`CtrlError::TooLarge`], [`CtrlError::TooShort`],
    /// [`CtrlError::BadErrno`], or what the request part fails with.
    pub fn decode_nfds(buf: &[u8]) -> Result<(Reply, u32), CtrlError> {
        if buf.len() > MAX_MSG_SIZE {
            return Err(CtrlError::TooLarge {
                len: buf.len(),
                max: MAX_MSG_SIZE,
            });
        }
        let too_short = CtrlError::TooShort {
            len: buf.len(),
            need: REPLY_PREFIX_SIZE + HEADER_SIZE,
        };
        let (Some(e), Some(n), Some(rest)) = (
            buf.get(0..4).and_then(pod_read::<i32>),
            buf.get(4..8).and_then(pod_read::<u32>),
            buf.get(REPLY_PREFIX_SIZE..),
        ) else {
            return Err(too_short);
        };
        if e < 0 {
            return Err(CtrlError::BadErrno(e));
        }
        if rest.len() < HEADER_SIZE {
            return Err(too_short);
        }
        let req = Request::decode_inner(rest, e == 0)?;
        Ok((Reply { error: e, req }, n))
    }
}

/// Sends one message, retrying on `EINTR`.
fn send_msg(fd: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), CtrlError> {
    loop {
        match sys::send_with_fds(fd, data, fds) {
            Ok(n) if n == data.len() => return Ok(()),
            Ok(n) => {
                return Err(CtrlError::Io(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("sent {n} of {} bytes", data.len()),
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message of at most [`MAX_MSG_SIZE`] bytes, retrying on
/// `EINTR`. Returns its bytes (empty on EOF) and descriptors; a longer
/// message is [`CtrlError::TooLarge`] with `len = max + 1`.
fn recv_msg(fd: BorrowedFd<'_>, max: usize) -> Result<(Vec<u8>, Vec<OwnedFd>), CtrlError> {
    // One byte more than allowed, to tell a full message from a cut one.
    let mut buf = vec![0u8; max + 1];
    loop {
        match sys::recv_with_fds(fd, &mut buf) {
            Ok((n, _)) if n > max => {
                return Err(CtrlError::TooLarge { len: n, max });
            }
            Ok((n, fds)) => {
                buf.truncate(n);
                return Ok((buf, fds));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A client connection to valed's control socket. One connection is one
/// netmap file descriptor: a REGISTER on it binds it, closing it unbinds.
#[derive(Debug)]
pub struct CtrlConn {
    fd: OwnedFd,
}

impl CtrlConn {
    /// Connects to the control socket at `path` (see [`socket_path`]).
    ///
    /// # Errors
    ///
    /// [`CtrlError::Connect`] naming the path.
    pub fn connect(path: &Path) -> Result<CtrlConn, CtrlError> {
        sys::seqpacket_connect(path)
            .map(|fd| CtrlConn { fd })
            .map_err(|source| CtrlError::Connect {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Wraps an already connected `SOCK_SEQPACKET` socket.
    pub fn from_fd(fd: OwnedFd) -> CtrlConn {
        CtrlConn { fd }
    }

    /// Sends `req` and waits for the reply and its descriptors. A reply with
    /// a non-zero `error` is returned as `Ok` (see [`Reply::into_result`]).
    ///
    /// # Errors
    ///
    /// Encoding errors, socket errors, [`CtrlError::Closed`] if valed hung
    /// up, decoding errors of the reply, [`CtrlError::FdCount`].
    pub fn call(&self, req: &Request) -> Result<(Reply, Vec<OwnedFd>), CtrlError> {
        self.call_with_fds(req, &[])
    }

    /// Same as [`CtrlConn::call`], passing `fds` with the request.
    ///
    /// # Errors
    ///
    /// As [`CtrlConn::call`].
    pub fn call_with_fds(
        &self,
        req: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Reply, Vec<OwnedFd>), CtrlError> {
        let msg = req.encode()?;
        send_msg(self.fd.as_fd(), &msg, fds)?;
        let (buf, fds) = recv_msg(self.fd.as_fd(), MAX_MSG_SIZE)?;
        if buf.is_empty() {
            return Err(CtrlError::Closed);
        }
        let (reply, nfds) = Reply::decode_nfds(&buf)?;
        if nfds as usize != fds.len() {
            return Err(CtrlError::FdCount {
                announced: nfds,
                received: fds.len(),
            });
        }
        Ok((reply, fds))
    }

    /// The socket, e.g. to poll it for a hang-up.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for CtrlConn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Server side: sends `reply` with `fds` attached (its `nfds` is
/// `fds.len()`).
///
/// # Errors
///
/// Encoding errors of [`Reply::encode_with_nfds`] and socket errors.
pub fn send_reply(fd: impl AsFd, reply: &Reply, fds: &[BorrowedFd<'_>]) -> Result<(), CtrlError> {
    let n = u32::try_from(fds.len()).unwrap_or(u32::MAX);
    let msg = reply.encode_with_nfds(n)?;
    send_msg(fd.as_fd(), &msg, fds)
}

/// Server side: receives and decodes one request with the descriptors that
/// came with it. `Ok(None)` when the peer closed the connection (a
/// zero-length message reads the same).
///
/// # Errors
///
/// Socket errors, [`CtrlError::TooLarge`] for a message over
/// [`MAX_REQUEST_SIZE`] (the descriptors are closed; the connection stays
/// usable), and every error of [`Request::decode`]. Answer a decode error
/// with [`Reply::failure`]`(e.errno())`.
pub fn recv_request(fd: impl AsFd) -> Result<Option<(Request, Vec<OwnedFd>)>, CtrlError> {
    let (buf, fds) = recv_msg(fd.as_fd(), MAX_REQUEST_SIZE)?;
    if buf.is_empty() {
        return Ok(None);
    }
    Ok(Some((Request::decode(&buf)?, fds)))
}

/// Receives one request as the server does: descriptors the client
/// attached are discarded by the kernel, never installed in the server
/// (no request carries one; closing a hostile one could block). `None` at
/// end of stream.
pub fn recv_request_discarding_fds(fd: impl AsFd) -> Result<Option<Request>, CtrlError> {
    let mut buf = vec![0u8; MAX_REQUEST_SIZE + 1];
    let n = loop {
        match sys::recv_discarding_fds(fd.as_fd(), &mut buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if n > MAX_REQUEST_SIZE {
        return Err(CtrlError::TooLarge {
            len: n,
            max: MAX_REQUEST_SIZE,
        });
    }
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(Request::decode(&buf[..n])?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::*;
    use crate::sys::{seqpacket_pair, EventFd};

    fn register_req() -> Request {
        let reg = NmreqRegister {
            nr_mode: NR_REG_ALL_NIC,
            nr_tx_slots: 1024,
            nr_extra_bufs: 7,
            ..NmreqRegister::default()
        };
        let mut r = Request::new(NETMAP_REQ_REGISTER, "vale0:a", &reg).unwrap();
        let csb = NmreqOptCsb {
            nro_opt: NmreqOption::new(NETMAP_REQ_OPT_CSB, 0),
            csb_atok: 0x1000,
            csb_ktoa: 0x2000,
        };
        r.options.push(ReqOption::from_struct(&csb).unwrap());
        let off = NmreqOptOffsets {
            nro_opt: NmreqOption::new(NETMAP_REQ_OPT_OFFSETS, 0),
            nro_max_offset: 64,
            ..NmreqOptOffsets::default()
        };
        r.options.push(ReqOption::from_struct(&off).unwrap());
        let pairs = [
            NmreqEventfdPair {
                ioeventfd: 3,
                irqfd: 4,
            },
            NmreqEventfdPair {
                ioeventfd: 5,
                irqfd: 6,
            },
        ];
        let mut ev = Vec::new();
        for p in &pairs {
            ev.extend_from_slice(pod_bytes(p));
        }
        r.options
            .push(ReqOption::new(NETMAP_REQ_OPT_SYNC_KLOOP_EVENTFDS, ev));
        // Unknown option types pass with any length.
        r.options.push(ReqOption::new(99, vec![1, 2, 3, 4, 5]));
        r
    }

    #[test]
    fn register_round_trip() {
        let r = register_req();
        let b = r.encode().unwrap();
        assert_eq!(b.len(), r.encoded_len());
        assert_eq!(
            b.len(),
            88 + 56 + (24 + 16) + (24 + 32) + (24 + 16) + (24 + 5)
        );
        // Header: version, type, count and body length in place of pointers.
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), NETMAP_API);
        assert_eq!(u16::from_ne_bytes([b[2], b[3]]), NETMAP_REQ_REGISTER);
        assert_eq!(&b[8..16], b"vale0:a\0");
        assert_eq!(u64::from_ne_bytes(b[72..80].try_into().unwrap()), 4);
        assert_eq!(u64::from_ne_bytes(b[80..88].try_into().unwrap()), 56);
        // First option: next 0, type, status, total size with header.
        let o = 88 + 56;
        assert_eq!(u64::from_ne_bytes(b[o..o + 8].try_into().unwrap()), 0);
        assert_eq!(
            u32::from_ne_bytes(b[o + 8..o + 12].try_into().unwrap()),
            NETMAP_REQ_OPT_CSB
        );
        assert_eq!(
            u64::from_ne_bytes(b[o + 16..o + 24].try_into().unwrap()),
            40
        );
        let d = Request::decode(&b).unwrap();
        assert_eq!(d, r);
        assert_eq!(d.name(), b"vale0:a");
        assert_eq!(d.reqtype(), NETMAP_REQ_REGISTER);
        let reg: NmreqRegister = d.body_as().unwrap();
        assert_eq!(
            (reg.nr_mode, reg.nr_tx_slots, reg.nr_extra_bufs),
            (NR_REG_ALL_NIC, 1024, 7)
        );
        let csb: NmreqOptCsb = d.option(NETMAP_REQ_OPT_CSB).unwrap().to_struct().unwrap();
        assert_eq!((csb.csb_atok, csb.csb_ktoa), (0x1000, 0x2000));
        assert_eq!(csb.nro_opt.nro_size, 40);
        assert!(d
            .option(NETMAP_REQ_OPT_CSB)
            .unwrap()
            .to_struct::<NmreqOptOffsets>()
            .is_err());
        assert!(d.body_as::<NmreqPortHdr>().is_err());

        // A reply with statuses and an fd count.
        let mut rep = d.clone();
        rep.option_mut(99).unwrap().status = libc::EOPNOTSUPP as u32;
        let reply = Reply::new(0, rep);
        let rb = reply.encode_with_nfds(3).unwrap();
        assert_eq!(rb.len(), 8 + b.len());
        let (back, nfds) = Reply::decode_nfds(&rb).unwrap();
        assert_eq!((back.clone(), nfds), (reply, 3));
        assert!(back.into_result().is_ok());
    }

    #[test]
    fn every_request_type_round_trips() {
        let mut types: Vec<u16> = (1..=15).collect();
        types.push(VALE_REQ_STATS);
        types.push(0xffff);
        for t in types {
            let len = body_size_for(t).unwrap().unwrap_or(13);
            let mut r = Request::with_body(t, "x", vec![0xa5; len]).unwrap();
            r.hdr.nr_version = NETMAP_MAX_API;
            let d = Request::decode(&r.encode().unwrap()).unwrap();
            assert_eq!(d, r, "type {t}");
        }
        // Vale bodies may be empty or fill the message.
        let big = MAX_REQUEST_SIZE - HEADER_SIZE;
        for len in [0, big] {
            let r = Request::with_body(VALE_REQ_STATS, "", vec![1; len]).unwrap();
            assert_eq!(Request::decode(&r.encode().unwrap()).unwrap(), r);
        }
        let r = Request::with_body(VALE_REQ_STATS, "", vec![1; big + 1]).unwrap();
        assert!(matches!(r.encode(), Err(CtrlError::TooLarge { .. })));
        assert!(Request::with_body(1, &"n".repeat(64), vec![]).is_err());
    }

    fn put_u16(b: &mut [u8], at: usize, v: u16) {
        b[at..at + 2].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }

    #[test]
    fn rejections() {
        let good = register_req().encode().unwrap();
        let opt0 = 88 + 56; // CSB option
        let opt1 = opt0 + 40; // OFFSETS option
        let m = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            b
        };
        type Check = fn(&CtrlError) -> bool;
        let vale = Request::with_body(VALE_REQ_STATS, "v", vec![])
            .unwrap()
            .encode()
            .unwrap();
        let table: Vec<(&str, Vec<u8>, Check)> = vec![
            ("empty", vec![], |e| {
                matches!(e, CtrlError::TooShort { len: 0, need: 88 })
            }),
            ("87 bytes", good[..87].to_vec(), |e| {
                matches!(e, CtrlError::TooShort { len: 87, .. })
            }),
            ("too large", vec![0; MAX_REQUEST_SIZE + 1], |e| {
                matches!(e, CtrlError::TooLarge { .. })
            }),
            ("version 13", m(&|b| put_u16(b, 0, 13)), |e| {
                matches!(e, CtrlError::Version(13))
            }),
            ("version 16", m(&|b| put_u16(b, 0, 16)), |e| {
                matches!(e, CtrlError::Version(16))
            }),
            ("reserved", m(&|b| put_u32(b, 4, 1)), |e| {
                matches!(e, CtrlError::Reserved(1))
            }),
            ("name unterminated", m(&|b| b[8..72].fill(b'a')), |e| {
                matches!(e, CtrlError::NameNotTerminated)
            }),
            ("type 0", m(&|b| put_u16(b, 2, 0)), |e| {
                matches!(e, CtrlError::UnknownReqType(0))
            }),
            ("type 16", m(&|b| put_u16(b, 2, 16)), |e| {
                matches!(e, CtrlError::UnknownReqType(16))
            }),
            ("type 0x7fff", m(&|b| put_u16(b, 2, 0x7fff)), |e| {
                matches!(e, CtrlError::UnknownReqType(0x7fff))
            }),
            (
                "body 55",
                m(&|b| {
                    put_u64(b, 80, 55);
                    b.remove(88);
                }),
                |e| {
                    matches!(
                        e,
                        CtrlError::BodySize {
                            reqtype: 1,
                            len: 55,
                            want: 56
                        }
                    )
                },
            ),
            (
                "body as PORT_HDR_GET",
                m(&|b| put_u16(b, 2, NETMAP_REQ_PORT_HDR_GET)),
                |e| matches!(e, CtrlError::BodySize { want: 8, .. }),
            ),
            (
                "vale body past end",
                {
                    let mut b = vale.clone();
                    put_u64(&mut b, 80, 1);
                    b
                },
                |e| matches!(e, CtrlError::BodyTruncated { len: 1, left: 0 }),
            ),
            (
                "vale body u64::MAX",
                {
                    let mut b = vale.clone();
                    put_u64(&mut b, 80, u64::MAX);
                    b
                },
                |e| matches!(e, CtrlError::BodyTruncated { .. }),
            ),
            ("17 options", m(&|b| put_u64(b, 72, 17)), |e| {
                matches!(e, CtrlError::TooManyOptions(17))
            }),
            ("u64::MAX options", m(&|b| put_u64(b, 72, u64::MAX)), |e| {
                matches!(e, CtrlError::TooManyOptions(u64::MAX))
            }),
            ("missing option", m(&|b| put_u64(b, 72, 5)), |e| {
                matches!(e, CtrlError::OptionTruncated { index: 4, left: 0 })
            }),
            (
                "short option header",
                m(&|b| {
                    put_u64(b, 72, 5);
                    b.extend_from_slice(&[0; 23]);
                }),
                |e| matches!(e, CtrlError::OptionTruncated { index: 4, left: 23 }),
            ),
            ("nro_next", m(&|b| put_u64(b, opt0, 0x1234)), |e| {
                matches!(
                    e,
                    CtrlError::OptionNext {
                        index: 0,
                        next: 0x1234
                    }
                )
            }),
            ("nro_size 0", m(&|b| put_u64(b, opt1 + 16, 0)), |e| {
                matches!(e, CtrlError::OptionTooSmall { index: 1, size: 0 })
            }),
            ("nro_size 23", m(&|b| put_u64(b, opt1 + 16, 23)), |e| {
                matches!(e, CtrlError::OptionTooSmall { index: 1, size: 23 })
            }),
            (
                "nro_size past end",
                m(&|b| {
                    let last = b.len() - 29;
                    put_u64(b, last + 16, 30);
                }),
                |e| {
                    matches!(
                        e,
                        CtrlError::OptionOverrun {
                            index: 3,
                            size: 30,
                            left: 5
                        }
                    )
                },
            ),
            (
                "nro_size u64::MAX",
                m(&|b| put_u64(b, opt1 + 16, u64::MAX)),
                |e| matches!(e, CtrlError::OptionOverrun { index: 1, .. }),
            ),
            (
                "CSB option too long",
                m(&|b| {
                    put_u64(b, opt0 + 16, 48);
                    for _ in 0..8 {
                        b.insert(opt0 + 24, 0);
                    }
                }),
                |e| {
                    matches!(
                        e,
                        CtrlError::OptionBodySize {
                            index: 0,
                            reqtype: NETMAP_REQ_OPT_CSB,
                            len: 24,
                            want: 16
                        }
                    )
                },
            ),
            (
                "duplicate CSB",
                m(&|b| {
                    let csb = b[opt0..opt0 + 40].to_vec();
                    b.extend_from_slice(&csb);
                    put_u64(b, 72, 5);
                }),
                |e| {
                    matches!(
                        e,
                        CtrlError::DuplicateOption {
                            index: 4,
                            reqtype: NETMAP_REQ_OPT_CSB
                        }
                    )
                },
            ),
            ("trailing byte", m(&|b| b.push(0)), |e| {
                matches!(e, CtrlError::Trailing(1))
            }),
            ("trailing option", m(&|b| put_u64(b, 72, 3)), |e| {
                matches!(e, CtrlError::Trailing(29))
            }),
        ];
        for (what, bytes, check) in &table {
            let e = Request::decode(bytes).expect_err(what);
            assert!(check(&e), "{what}: got {e:?}");
            assert!(e.errno() > 0, "{what}");
            assert!(!e.to_string().is_empty());
            let want = if matches!(e, CtrlError::TooLarge { .. }) {
                libc::EMSGSIZE
            } else {
                libc::EINVAL
            };
            assert_eq!(e.errno(), want, "{what}");
            // The same request part is refused inside a successful reply.
            if bytes.len() <= MAX_REQUEST_SIZE {
                let mut r = vec![0u8; 8];
                r.extend_from_slice(bytes);
                assert!(Reply::decode(&r).is_err(), "{what} in a reply");
            }
        }
        Request::decode(&good).unwrap();
    }

    #[test]
    fn reply_rejections() {
        let req = register_req();
        let ok = Reply::new(0, req.clone()).encode().unwrap();
        assert!(matches!(
            Reply::decode(&ok[..7]),
            Err(CtrlError::TooShort { len: 7, need: 96 })
        ));
        assert!(matches!(
            Reply::decode(&ok[..95]),
            Err(CtrlError::TooShort { .. })
        ));
        let mut neg = ok.clone();
        neg[..4].copy_from_slice(&(-1i32).to_ne_bytes());
        assert!(matches!(Reply::decode(&neg), Err(CtrlError::BadErrno(-1))));
        assert!(matches!(
            Reply::new(-5, req.clone()).encode(),
            Err(CtrlError::BadErrno(-5))
        ));
        assert!(matches!(
            Reply::decode(&vec![0; MAX_MSG_SIZE + 1]),
            Err(CtrlError::TooLarge { .. })
        ));
        // An error reply gets framing checks only.
        let f = Reply::failure(libc::EINVAL);
        let fb = f.encode().unwrap();
        assert_eq!(fb.len(), 8 + 88);
        let back = Reply::decode(&fb).unwrap();
        assert_eq!(back, f);
        let e = back.into_result().unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(matches!(
            Reply::decode(&Reply::failure(0).encode().unwrap()),
            Err(CtrlError::UnknownReqType(0))
        ));
        let mut bad = fb.clone();
        bad.push(1);
        assert!(matches!(Reply::decode(&bad), Err(CtrlError::Trailing(1))));
    }

    #[test]
    fn socket_round_trip_with_fd() {
        let (a, b) = seqpacket_pair().unwrap();
        let client = CtrlConn::from_fd(a);
        let server = std::thread::spawn(move || {
            let (req, fds) = recv_request(&b).unwrap().unwrap();
            assert!(fds.is_empty());
            let mut reg: NmreqRegister = req.body_as().unwrap();
            reg.nr_memsize = 1 << 20;
            let mut out = req.clone();
            out.set_body(&reg);
            for o in &mut out.options {
                o.status = if o.reqtype == 99 {
                    libc::EOPNOTSUPP as u32
                } else {
                    0
                };
            }
            let ev = EventFd::new().unwrap();
            send_reply(&b, &Reply::new(0, out), &[ev.as_fd()]).unwrap();
            // An oversized message is refused, the connection survives.
            assert!(matches!(recv_request(&b), Err(CtrlError::TooLarge { .. })));
            // A request that does not decode gets a failure reply.
            let e = recv_request(&b).unwrap_err();
            send_reply(&b, &Reply::failure(e.errno()), &[]).unwrap();
            assert!(recv_request(&b).unwrap().is_none());
            ev
        });
        let (reply, fds) = client.call(&register_req()).unwrap();
        assert_eq!(reply.error, 0);
        let reg: NmreqRegister = reply.req.body_as().unwrap();
        assert_eq!(reg.nr_memsize, 1 << 20);
        assert_eq!(
            reply.req.option(99).unwrap().status,
            libc::EOPNOTSUPP as u32
        );
        assert_eq!(fds.len(), 1);
        let got = EventFd::from_fd(fds.into_iter().next().unwrap());

        send_msg(client.as_fd(), &vec![0u8; MAX_MSG_SIZE + 100], &[]).unwrap();
        let mut bad = register_req();
        bad.hdr.nr_version = 99;
        let (reply, fds) = client.call(&bad).unwrap();
        assert!(fds.is_empty());
        assert_eq!(reply.into_result().unwrap_err().errno(), libc::EINVAL);
        drop(client);
        let ev = server.join().unwrap();
        ev.kick().unwrap();
        assert_eq!(got.drain().unwrap(), 1);
    }

    #[test]
    fn connect_by_path() {
        let dir = std::env::temp_dir().join(format!("netmap-ctrl-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        let path = dir.join("valed.sock");
        let _ = std::fs::remove_file(&path);
        let l = sys::seqpacket_listen(&path, 1).unwrap();
        let server = std::thread::spawn(move || {
            let s = sys::accept(&l).unwrap();
            let (req, _) = recv_request(&s).unwrap().unwrap();
            send_reply(&s, &Reply::new(libc::ENXIO, req), &[]).unwrap();
            assert!(recv_request(&s).unwrap().is_none());
        });
        let c = CtrlConn::connect(&path).unwrap();
        let req = Request::new(
            NETMAP_REQ_PORT_INFO_GET,
            "vale0:b",
            &NmreqPortInfoGet::default(),
        )
        .unwrap();
        let (reply, _) = c.call(&req).unwrap();
        assert_eq!(reply.error, libc::ENXIO);
        assert_eq!(reply.req, req);
        drop(c);
        server.join().unwrap();
        std::fs::remove_file(&path).unwrap();
        let e = CtrlConn::connect(&path).unwrap_err();
        assert!(matches!(e, CtrlError::Connect { .. }));
        assert_eq!(e.errno(), libc::ENOENT);
        assert!(e.to_string().contains("valed.sock"));
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn closed_peer() {
        let (a, b) = seqpacket_pair().unwrap();
        drop(b);
        let c = CtrlConn::from_fd(a);
        let e = c
            .call(&Request::with_body(VALE_REQ_STATS, "", vec![]).unwrap())
            .unwrap_err();
        assert!(matches!(e, CtrlError::Io(_) | CtrlError::Closed), "{e:?}");
    }

    #[test]
    fn socket_path_precedence() {
        let p = Path::new("/tmp/x.sock");
        assert_eq!(socket_path(Some(p)), p);
        let want = match std::env::var_os(SOCKET_ENV) {
            Some(v) if !v.is_empty() => PathBuf::from(v),
            _ => PathBuf::from(DEFAULT_SOCKET_PATH),
        };
        assert_eq!(socket_path(None), want);
    }
}
