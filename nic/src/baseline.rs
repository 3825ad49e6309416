//! The plain socket the generic adapter is measured against: one
//! `AF_PACKET` `send` per frame, no ring (what a program that does not
//! use netmap does). For `examples/sendto.rs` and `scripts/bench-nic.sh`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::{sys, NicError};

/// A packet socket bound to one interface.
#[derive(Debug)]
pub struct PlainSocket {
    fd: OwnedFd,
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
        Ok(PlainSocket { fd })
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
