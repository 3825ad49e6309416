//! The plain socket the generic adapter is measured against: one
//! `AF_PACKET` `send` per frame, no ring (what a program that does not
//! use netmap does); and the same socket set up as the generic adapter's
//! transmit side (virtio-net header, `PACKET_QDISC_BYPASS`, a
//! `sendmmsg` per 64 frames) with nothing of netmap around it, which
//! tells the kernel's share of the adapter's cost from its own. For
//! `examples/sendto.rs` and `scripts/bench-nic.sh`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::{sys, NicError};

/// A packet socket bound to one interface.
#[derive(Debug)]
pub struct PlainSocket {
    fd: OwnedFd,
    /// Frames go behind a virtio-net header (`PACKET_VNET_HDR`).
    vnet_hdr: bool,
}

impl PlainSocket {
    /// Opens interface `name` (needs CAP_NET_RAW).
    pub fn open(name: &str) -> Result<PlainSocket, NicError> {
        let ifindex =
            sys::if_index(name).map_err(|_| NicError::NoInterface { name: name.into() })?;
        let err = |source| NicError::Socket {
            name: name.into(),
            what: "plain socket",
            source,
        };
        let fd = sys::packet_socket().map_err(err)?;
        sys::bind(&fd, ifindex).map_err(err)?;
        Ok(PlainSocket {
            fd,
            vnet_hdr: false,
        })
    }

    /// Opens interface `name` with the generic adapter's socket options:
    /// a virtio-net header before each frame and no qdisc.
    pub fn open_as_generic(name: &str) -> Result<PlainSocket, NicError> {
        let s = Self::open(name)?;
        let err = |source| NicError::Socket {
            name: name.into(),
            what: "plain socket",
            source,
        };
        sys::set_packet_opt(&s.fd, sys::PACKET_VNET_HDR, &1i32).map_err(err)?;
        sys::set_packet_opt(&s.fd, sys::PACKET_QDISC_BYPASS, &1i32).map_err(err)?;
        Ok(PlainSocket {
            fd: s.fd,
            vnet_hdr: true,
        })
    }

    /// Sends `frame` (behind an empty virtio-net header if the socket has
    /// one) in `sendmmsg` calls of 64, as the generic adapter sends a
    /// batch, for `secs`; the frames the kernel took.
    pub fn blast_batched(&self, frame: &[u8], secs: Duration) -> u64 {
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for _ in 0..64 {
            if self.vnet_hdr {
                buf.extend_from_slice(&[0u8; crate::VNET_HDR_LEN]);
            }
            buf.extend_from_slice(frame);
            ends.push(buf.len());
        }
        let t0 = Instant::now();
        let mut sent = 0u64;
        while t0.elapsed() < secs {
            if let Ok(n) = sys::send_batch(&self.fd, &buf, &ends, 0) {
                sent += n as u64;
            }
        }
        sent
    }

    /// Sends `frame` again and again for `secs`; the frames the kernel
    /// took (a full queue is retried, not counted).
    pub fn blast(&self, frame: &[u8], secs: Duration) -> u64 {
        let t0 = Instant::now();
        let mut sent = 0u64;
        while t0.elapsed() < secs {
            for _ in 0..256 {
                // SAFETY: sends frame.len() bytes from a live slice.
                let r = unsafe {
                    libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0)
                };
                if r > 0 {
                    sent += 1;
                }
            }
        }
        sent
    }
}
