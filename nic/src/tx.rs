//! The generic adapter's transmit side as the engine's `Sink`: frames are
//! copied into a batch, virtio-net header first (the socket has
//! `PACKET_VNET_HDR`, so a TSO frame goes to the interface whole and the
//! kernel segments it), and `publish` hands the batch to the kernel in one
//! `sendmmsg` (`PACKET_QDISC_BYPASS`: straight to the driver).
//!
//! Not a `PACKET_TX_RING`: on veth the ring's `tpacket_snd` (page-fragment
//! skbs, a destructor per frame to give the slot back) moved 0.41 Mpps of
//! 60 B frames where one plain `send` per frame moved 0.86
//! (`scripts/bench-nic.sh`); a linear skb per frame is cheaper, and one
//! system call per batch is what the ring was for.

use std::os::fd::OwnedFd;

use vale::port::FrameCursor;
use vale::{DstBuf, Frag, Push, Sink};

use crate::sys;

/// Frames one batch holds; a full batch is sent from `push`.
pub(crate) const TX_BATCH: usize = 1024;
/// Bytes one batch holds (about 64 TSO frames); a batch past it is sent.
const TX_BYTES: usize = 4 << 20;
/// The largest frame: 64 KiB plus the virtio-net header.
const TX_FRAME_MAX: usize = 65536 + crate::VNET_HDR_LEN;

/// The TX side of one interface.
#[derive(Debug)]
pub struct NicTx {
    fd: OwnedFd,
    /// Frames waiting, back to back.
    buf: Vec<u8>,
    /// Where each waiting frame ends in `buf`.
    ends: Vec<usize>,
    /// Frames the kernel refused (e.g. longer than the interface's MTU
    /// without GSO, a malformed header).
    refused: u64,
    /// Frames dropped because the interface would not take them now.
    send_errors: u64,
    /// The interface's ownership, shared with the other ring.
    pub(crate) owned: Option<std::sync::Arc<crate::Owned>>,
}

impl NicTx {
    /// Frames the kernel refused to send.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Frames the interface did not take (its queue full, it went down or
    /// away...).
    pub fn send_errors(&self) -> u64 {
        self.send_errors
    }

    /// Sends every waiting frame. A frame the kernel refuses is counted
    /// and skipped; when the interface takes nothing more (a full queue,
    /// the interface down), the rest is counted and dropped, as a NIC
    /// port without backpressure drops.
    fn flush(&mut self) {
        let mut done = 0;
        while done < self.ends.len() {
            match sys::send_batch(&self.fd, &self.buf, &self.ends, done) {
                Ok(n) => done += n.max(1),
                Err(e) => {
                    let errno = e.raw_os_error().unwrap_or(0);
                    if [libc::EINVAL, libc::EMSGSIZE, libc::EFAULT].contains(&errno) {
                        // This frame only.
                        self.refused += 1;
                        done += 1;
                        continue;
                    }
                    let lost = (self.ends.len() - done) as u64;
                    self.send_errors += lost;
                    if self.send_errors.is_power_of_two() || lost > 1 {
                        tracing::warn!(
                            "NIC transmit: {e}: {lost} frames dropped ({} so far)",
                            self.send_errors
                        );
                    }
                    break;
                }
            }
        }
        self.buf.clear();
        self.ends.clear();
    }
}

impl Sink for NicTx {
    fn room(&mut self) -> usize {
        TX_BATCH - self.ends.len()
    }

    fn slots_for(&self, len: usize) -> usize {
        // Past the largest frame: more than `capacity`, so the engine
        // drops it (counted) instead of waiting for room that never comes.
        if len <= TX_FRAME_MAX {
            1
        } else {
            2
        }
    }

    fn capacity(&self) -> usize {
        1
    }

    fn push(&mut self, frags: &[Frag], skip: usize, hdr: &[u8]) -> Push {
        let mut cur = FrameCursor::new(frags, skip, hdr);
        let len = cur.remaining();
        if len > TX_FRAME_MAX {
            return Push::Full;
        }
        if self.ends.len() == TX_BATCH || self.buf.len() + len > TX_BYTES {
            self.flush();
        }
        let at = self.buf.len();
        self.buf.resize(at + len, 0);
        let mut dst = DstBuf::from_slice(&mut self.buf[at..]);
        let n = cur.fill(&mut dst);
        self.buf.truncate(at + n);
        self.ends.push(at + n);
        Push::Done
    }

    fn publish(&mut self) {
        if !self.ends.is_empty() {
            self.flush();
        }
    }

    fn offloads(&self) -> Option<u32> {
        // The kernel takes partial checksums and TSO through the header.
        Some(vale::port::OFFLOAD_CSUM | vale::port::OFFLOAD_TSO4 | vale::port::OFFLOAD_TSO6)
    }
}

/// Opens the TX socket on `ifindex`.
pub(crate) fn open(ifindex: u32) -> std::io::Result<NicTx> {
    let fd = sys::packet_socket()?;
    sys::set_packet_opt(&fd, sys::PACKET_VNET_HDR, &1i32)?;
    sys::set_packet_opt(&fd, sys::PACKET_QDISC_BYPASS, &1i32)?;
    sys::bind(&fd, ifindex)?;
    Ok(NicTx {
        fd,
        buf: Vec::with_capacity(256 << 10),
        ends: Vec::with_capacity(TX_BATCH),
        refused: 0,
        send_errors: 0,
        owned: None,
    })
}
