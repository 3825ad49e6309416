//! The generic adapter's receive side: a `TPACKET_V3` ring as the engine's
//! `Source`.
//!
//! The kernel fills blocks of frames and hands a whole block over
//! (`block_status = TP_STATUS_USER`) when it is full or after the retire
//! timeout. `fetch` walks frames from the committed position without
//! moving it; `complete(n)` moves it by `n` frames and gives every block
//! it passed back to the kernel. Frames a backpressure destination held
//! are fetched again from the same memory.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use netmap::abi::NS_MOREFRAG;
use vale::{Frag, Source};

use crate::sys::{self, block, v3, RingMap, TP_STATUS_KERNEL, TP_STATUS_USER};
use crate::VNET_HDR_LEN;

/// Where the reader stands: block, frame index in it, frame offset.
#[derive(Debug, Clone, Copy, Default)]
struct Pos {
    blk: u32,
    idx: u32,
    off: usize,
}

/// The RX ring of one interface.
#[derive(Debug)]
pub struct NicRx {
    fd: OwnedFd,
    map: RingMap,
    block_size: usize,
    block_nr: u32,
    at: Pos,
    /// Frames the last fetch handed out, by position, for `complete`.
    fetched: Vec<Pos>,
    /// Frames whose offsets made no sense (never seen from a sane kernel).
    bad: u64,
    /// The interface's ownership, shared with the other ring.
    pub(crate) owned: Option<std::sync::Arc<crate::Owned>>,
}

impl NicRx {
    pub(crate) fn new(fd: OwnedFd, map: RingMap, block_size: usize, block_nr: u32) -> NicRx {
        NicRx {
            fd,
            map,
            block_size,
            block_nr,
            at: Pos::default(),
            fetched: Vec::new(),
            bad: 0,
            owned: None,
        }
    }

    fn block_off(&self, blk: u32) -> usize {
        blk as usize * self.block_size
    }

    fn ready(&self, blk: u32) -> bool {
        self.map.load_u32(self.block_off(blk) + block::STATUS) & TP_STATUS_USER != 0
    }

    /// Whether a block is waiting: the forwarding thread may not sleep.
    pub fn pending(&self) -> bool {
        self.ready(self.at.blk)
    }

    /// Frames seen with offsets outside their block (dropped).
    pub fn bad_frames(&self) -> u64 {
        self.bad
    }

    /// The frame at `p` (in a ready block): its bytes, vnet header first,
    /// as (offset in the mapping, length); None if the kernel's offsets do
    /// not fit the block.
    fn frame(&self, p: Pos) -> Option<(usize, usize)> {
        let b = self.block_off(p.blk);
        let hdr = b + p.off;
        let mac = self.map.load_u16(hdr + v3::MAC) as usize;
        let snap = self.map.load_u32(hdr + v3::SNAPLEN) as usize;
        let start = (p.off + mac).checked_sub(VNET_HDR_LEN)?;
        let len = snap + VNET_HDR_LEN;
        (start + len <= self.block_size && start >= p.off).then_some((b + start, len))
    }

    /// The position after `p`, and whether it is in the next block.
    fn next(&self, p: Pos) -> (Pos, bool) {
        let b = self.block_off(p.blk);
        let n = self.map.load_u32(b + block::NUM_PKTS);
        if p.idx + 1 < n {
            let step = self.map.load_u32(b + p.off + v3::NEXT_OFFSET) as usize;
            (
                Pos {
                    blk: p.blk,
                    idx: p.idx + 1,
                    off: p.off + step,
                },
                false,
            )
        } else {
            // Resolved when that block is ours (`resolve`).
            (
                Pos {
                    blk: (p.blk + 1) % self.block_nr,
                    idx: 0,
                    off: 0,
                },
                true,
            )
        }
    }

    /// The first frame of block `blk`.
    fn first(&self, blk: u32) -> Pos {
        let b = self.block_off(blk);
        Pos {
            blk,
            idx: 0,
            off: self.map.load_u32(b + block::OFFSET_TO_FIRST_PKT) as usize,
        }
    }

    /// Returns block `blk` to the kernel.
    fn release(&self, blk: u32) {
        self.map
            .store_u32(self.block_off(blk) + block::STATUS, TP_STATUS_KERNEL);
    }
}

impl NicRx {
    /// `p` with its offset read, if it is a block's first frame.
    fn resolve(&self, p: Pos) -> Pos {
        if p.idx == 0 {
            self.first(p.blk)
        } else {
            p
        }
    }

    /// Gives back ready blocks that hold no frame (the kernel does not
    /// retire empty blocks, but a block is only ours to walk if it has one).
    fn skip_empty(&mut self) {
        let mut guard = self.block_nr;
        while guard > 0
            && self.ready(self.at.blk)
            && self
                .map
                .load_u32(self.block_off(self.at.blk) + block::NUM_PKTS)
                == 0
        {
            self.release(self.at.blk);
            self.at = Pos {
                blk: (self.at.blk + 1) % self.block_nr,
                idx: 0,
                off: 0,
            };
            guard -= 1;
        }
    }
}

impl Source for NicRx {
    fn fetch(&mut self, frags: &mut Vec<Frag>, max: usize) -> usize {
        self.skip_empty();
        self.fetched.clear();
        let mut p = self.at;
        let mut n = 0;
        while n < max && self.ready(p.blk) {
            if self.map.load_u32(self.block_off(p.blk) + block::NUM_PKTS) == 0 {
                break;
            }
            p = self.resolve(p);
            match self
                .frame(p)
                .and_then(|(off, len)| Some((self.map.at(off, len)?, len)))
            {
                Some((ptr, len)) => {
                    // A frame longer than a fragment (a 64 KiB GRO frame)
                    // goes as a chain.
                    let mut done = 0;
                    while done < len {
                        let piece = (len - done).min(u16::MAX as usize);
                        let more = if done + piece < len { NS_MOREFRAG } else { 0 };
                        // SAFETY: [ptr, ptr + len) lies in a block the kernel
                        // handed to us (TP_STATUS_USER) and gets back only in
                        // `complete`, after the engine is done with it.
                        frags.push(unsafe { Frag::new(ptr.add(done), piece as u16, more) });
                        done += piece;
                    }
                }
                None => {
                    self.bad += 1;
                    frags.push(Frag::bad(0));
                }
            }
            self.fetched.push(p);
            n += 1;
            p = self.next(p).0;
        }
        n
    }

    fn complete(&mut self, frames: usize) {
        let frames = frames.min(self.fetched.len());
        let mut p = self.at;
        for _ in 0..frames {
            let (q, crossed) = self.next(self.resolve(p));
            if crossed {
                self.release(p.blk);
            }
            p = q;
        }
        self.at = p;
        self.fetched.clear();
    }
}

impl AsFd for NicRx {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Ring geometry for receive: 16 blocks of 256 KiB (a 64 KiB GRO frame
/// fits a block many times over), retired after 1 ms at the latest.
pub(crate) const RX_BLOCK_SIZE: u32 = 256 << 10;
pub(crate) const RX_BLOCK_NR: u32 = 16;
pub(crate) const RX_FRAME_SIZE: u32 = 2048;
pub(crate) const RX_RETIRE_MS: u32 = 1;

/// Opens the RX socket on `ifindex` with its ring; with `fanout`, as a
/// member of a fanout group by receive queue (`Some(None)`: a new group).
/// Returns the group's id too.
pub(crate) fn open(
    ifindex: u32,
    fanout: Option<Option<u16>>,
) -> std::io::Result<(NicRx, Option<u16>)> {
    let fd = sys::packet_socket()?;
    sys::set_packet_opt(&fd, sys::PACKET_VERSION, &sys::TPACKET_V3)?;
    sys::set_packet_opt(&fd, sys::PACKET_VNET_HDR, &1i32)?;
    // Our own transmissions are not received back (Linux 4.20+).
    sys::set_packet_opt(&fd, sys::PACKET_IGNORE_OUTGOING, &1i32)?;
    let req = sys::TpacketReq3 {
        block_size: RX_BLOCK_SIZE,
        block_nr: RX_BLOCK_NR,
        frame_size: RX_FRAME_SIZE,
        frame_nr: RX_BLOCK_SIZE / RX_FRAME_SIZE * RX_BLOCK_NR,
        retire_blk_tov: RX_RETIRE_MS,
        sizeof_priv: 0,
        feature_req_word: 0,
    };
    sys::set_packet_opt(&fd, sys::PACKET_RX_RING, &req)?;
    let map = RingMap::map(&fd, RX_BLOCK_SIZE as usize * RX_BLOCK_NR as usize)?;
    sys::bind(&fd, ifindex)?;
    let group = match fanout {
        Some(id) => Some(sys::join_fanout(&fd, id)?),
        None => None,
    };
    Ok((
        NicRx::new(fd, map, RX_BLOCK_SIZE as usize, RX_BLOCK_NR),
        group,
    ))
}
