//! The generic adapter's transmit side: a `TPACKET_V2` ring of 64 KiB
//! frames as the engine's `Sink`.
//!
//! Each frame slot holds one frame, virtio-net header first (the socket has
//! `PACKET_VNET_HDR`), so a TSO frame goes to the interface whole and the
//! kernel segments it. `push` fills the slot at the head and marks it
//! `TP_STATUS_SEND_REQUEST`; `publish` asks the kernel to send, without
//! waiting (`PACKET_QDISC_BYPASS`: straight to the driver).

use std::os::fd::OwnedFd;

use vale::port::FrameCursor;
use vale::{DstBuf, Frag, Push, Sink};

use crate::sys::{
    self, v2, RingMap, TP_STATUS_AVAILABLE, TP_STATUS_SEND_REQUEST, TP_STATUS_WRONG_FORMAT,
};

/// Frame slots: 64 KiB of frame plus the header and room for the
/// virtio-net header; one per block (a block is whole pages).
pub(crate) const TX_FRAME_SIZE: u32 = 69632;
pub(crate) const TX_FRAME_NR: u32 = 128;

/// The TX ring of one interface.
#[derive(Debug)]
pub struct NicTx {
    fd: OwnedFd,
    map: RingMap,
    head: u32,
    /// Frames pushed since the last publish.
    unsent: u32,
    /// Frames the kernel refused (`TP_STATUS_WRONG_FORMAT`), e.g. a frame
    /// longer than the interface's MTU without GSO.
    refused: u64,
    /// Errors from the send that kicks the ring.
    send_errors: u64,
    /// The interface's ownership, shared with the other ring.
    pub(crate) owned: Option<std::sync::Arc<crate::Owned>>,
}

impl NicTx {
    fn status_off(i: u32) -> usize {
        i as usize * TX_FRAME_SIZE as usize + v2::STATUS
    }

    /// Whether slot `i` is ours to fill (sent, or refused and counted).
    fn free(&mut self, i: u32) -> bool {
        let st = self.map.load_u32(Self::status_off(i));
        if st & TP_STATUS_WRONG_FORMAT != 0 {
            self.refused += 1;
            self.map.store_u32(Self::status_off(i), TP_STATUS_AVAILABLE);
            return true;
        }
        st == TP_STATUS_AVAILABLE
    }

    /// Frames the kernel refused to send.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Failed kicks of the ring (the interface went down, was deleted...).
    pub fn send_errors(&self) -> u64 {
        self.send_errors
    }
}

impl Sink for NicTx {
    fn room(&mut self) -> usize {
        let mut n = 0;
        let mut i = self.head;
        while n < TX_FRAME_NR as usize - 1 && self.free(i) {
            n += 1;
            i = (i + 1) % TX_FRAME_NR;
        }
        n
    }

    fn slots_for(&self, len: usize) -> usize {
        // Past a slot: more than `capacity`, so the engine drops it
        // (counted) instead of waiting for room that never comes.
        if len <= (TX_FRAME_SIZE as usize - v2::DATA) {
            1
        } else {
            2
        }
    }

    fn capacity(&self) -> usize {
        1
    }

    fn push(&mut self, frags: &[Frag], skip: usize, hdr: &[u8]) -> Push {
        let i = self.head;
        if !self.free(i) {
            return Push::Full;
        }
        let mut cur = FrameCursor::new(frags, skip, hdr);
        let cap = TX_FRAME_SIZE as usize - v2::DATA;
        if cur.remaining() > cap {
            return Push::Full;
        }
        let base = i as usize * TX_FRAME_SIZE as usize;
        let Some(ptr) = self.map.at(base + v2::DATA, cap) else {
            return Push::Full;
        };
        // SAFETY: the slot is ours (status AVAILABLE, read with acquire):
        // the kernel does not touch it until we hand it over below, and
        // nothing else in this process writes the ring.
        let mut dst = unsafe { DstBuf::new(ptr, cap) };
        let len = cur.fill(&mut dst);
        self.map.store_u32(base + v2::LEN, len as u32);
        self.map
            .store_u32(Self::status_off(i), TP_STATUS_SEND_REQUEST);
        self.head = (i + 1) % TX_FRAME_NR;
        self.unsent += 1;
        Push::Done
    }

    fn publish(&mut self) {
        if self.unsent == 0 {
            return;
        }
        self.unsent = 0;
        if let Err(e) = sys::kick_tx(&self.fd) {
            self.send_errors += 1;
            if self.send_errors.is_power_of_two() {
                tracing::warn!("NIC transmit: {e} ({} times)", self.send_errors);
            }
        }
    }

    fn offloads(&self) -> Option<u32> {
        // The kernel takes partial checksums and TSO through the header.
        Some(vale::port::OFFLOAD_CSUM | vale::port::OFFLOAD_TSO4 | vale::port::OFFLOAD_TSO6)
    }
}

/// Opens the TX socket on `ifindex` with its ring.
pub(crate) fn open(ifindex: u32) -> std::io::Result<NicTx> {
    let fd = sys::packet_socket()?;
    sys::set_packet_opt(&fd, sys::PACKET_VERSION, &sys::TPACKET_V2)?;
    sys::set_packet_opt(&fd, sys::PACKET_VNET_HDR, &1i32)?;
    sys::set_packet_opt(&fd, sys::PACKET_QDISC_BYPASS, &1i32)?;
    let req = sys::TpacketReq {
        block_size: TX_FRAME_SIZE,
        block_nr: TX_FRAME_NR,
        frame_size: TX_FRAME_SIZE,
        frame_nr: TX_FRAME_NR,
    };
    sys::set_packet_opt(&fd, sys::PACKET_TX_RING, &req)?;
    let map = RingMap::map(&fd, TX_FRAME_SIZE as usize * TX_FRAME_NR as usize)?;
    sys::bind(&fd, ifindex)?;
    Ok(NicTx {
        fd,
        map,
        head: 0,
        unsent: 0,
        refused: 0,
        send_errors: 0,
        owned: None,
    })
}
