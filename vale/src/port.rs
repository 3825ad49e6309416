//! Ports as the engine sees them: a [`Source`] of frames and a [`Sink`] for
//! frames, plus per-port options and counters.
//!
//! A shared-memory client ring, a virtqueue and a NIC ring each implement
//! both traits; the engine knows nothing else about them.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::frag::{DstBuf, Frag};

/// Index of a port on its switch.
pub type PortId = u16;

/// Where frames come from.
///
/// # Contract
/// Every [`Frag`] appended by `fetch` stays readable until the matching
/// `complete` returns. Frames are whole: every fragment but a frame's last
/// carries `NS_MOREFRAG`.
pub trait Source {
    /// Appends the fragments of up to `max` frames to `frags`; returns the
    /// number of frames appended.
    fn fetch(&mut self, frags: &mut Vec<Frag>, max: usize) -> usize;

    /// The first `frames` frames of the last fetch are done (copied or
    /// dropped) and their memory may be reused. Frames after them were held
    /// back by a backpressure destination and must be fetched again.
    fn complete(&mut self, frames: usize);

    /// The forwarder found nothing to do and is about to sleep: ask the
    /// writer to wake it when it adds work (netmap's need-kick handshake
    /// on a ring, notifications on a virtqueue). False if work arrived
    /// meanwhile: poll again rather than sleep. A source whose fd wakes
    /// the forwarder by itself (a socket) only says whether work waits.
    fn arm(&mut self) -> bool {
        true
    }

    /// The forwarder woke and polls again: the writer need not wake it.
    fn disarm(&mut self) {}

    /// The writer's own doorbell, asked after a successful
    /// [`arm`](Self::arm): an eventfd the forwarder may wait on directly, besides
    /// the one it was given for the source, edge-triggered and never
    /// read (the writer shares it and could make a read block). A guest's
    /// kick fd, so that a kick wakes the forwarder itself and not a
    /// thread that then wakes it. None: the given fd is the only one.
    fn doorbell(&self) -> Option<std::sync::Arc<netmap::sys::EventFd>> {
        None
    }

    /// The fused path: moves frames from the front of the source into one
    /// sink itself, with none of the engine's per-frame records. The
    /// source reads its next frame's first [`FUSE_HEAD`] bytes (a 12-byte
    /// virtio-net header, then the Ethernet header) and asks `fuser` where
    /// it goes; on an answer it moves that frame and those after it while
    /// each is one linear fragment with no slot flags, at least
    /// [`FUSE_HEAD`] bytes long, starts with the run's MACs, needs no
    /// offload the reader lacks, and fits the sink as the sink's own
    /// common case. The first frame that does not stays for the next
    /// fetch. The engine publishes the sink, then calls
    /// [`complete`](Self::complete) with the frames moved (0 too), as
    /// after a fetch. A source that cannot do this, or a sink it does not
    /// know, moves nothing.
    fn fuse(&mut self, _fuser: &mut dyn Fuser) -> Fused {
        Fused::default()
    }

    /// Whether [`fuse`](Self::fuse) can move anything: asked before each
    /// batch, so a source without a fused path costs the engine one call.
    fn fuses(&self) -> bool {
        false
    }
}

/// Bytes of a frame a fused run decides on: the virtio-net header and
/// the destination and source MACs, and the rest of the Ethernet header.
pub const FUSE_HEAD: usize = 32;

/// The engine's side of [`Source::fuse`].
pub trait Fuser {
    /// Where the frame that starts with `head` goes, if into one sink that
    /// can take a fused run: the run's rules and that sink. Asked once
    /// per call of `fuse`.
    fn decide(&mut self, head: &[u8; FUSE_HEAD]) -> Option<(FuseRun, &mut dyn Sink)>;
}

/// The rules of one fused run (see [`Source::fuse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuseRun {
    /// Destination and source MAC: frames that start otherwise end the run.
    pub macs: [u8; 12],
    /// The offloads the sink's reader takes (`OFFLOAD_*`).
    pub offloads: u32,
    /// Most frames the run may move.
    pub max: usize,
}

/// What a fused run moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fused {
    /// Frames moved.
    pub frames: usize,
    /// Their bytes, virtio-net headers included.
    pub bytes: u64,
    /// The run stopped at a frame it could not take (not at the end of
    /// what was posted, or at its `max`).
    pub rest: bool,
    /// The source had nothing posted: a general fetch would find nothing.
    pub empty: bool,
}

/// Whether a reader taking `offloads` (`OFFLOAD_*`) takes a frame whose
/// virtio-net header has these `flags` and `gso_type` as it is, with no
/// checksum completed or segment cut for it.
#[inline]
pub fn reader_takes(flags: u8, gso_type: u8, offloads: u32) -> bool {
    use crate::offload::{F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP};
    // The common frame (no partial checksum, no GSO) in one test.
    if flags & F_NEEDS_CSUM == 0 && gso_type == GSO_NONE {
        return true;
    }
    if flags & F_NEEDS_CSUM != 0 && offloads & OFFLOAD_CSUM == 0 {
        return false;
    }
    if gso_type & GSO_ECN != 0 && offloads & OFFLOAD_ECN == 0 {
        return false;
    }
    match gso_type & 0x7f {
        GSO_NONE => true,
        GSO_TCPV4 => offloads & OFFLOAD_TSO4 != 0,
        GSO_TCPV6 => offloads & OFFLOAD_TSO6 != 0,
        GSO_UDP => offloads & OFFLOAD_UFO != 0,
        _ => false,
    }
}

/// Where frames go.
pub trait Sink: Send {
    /// Free slots now. The switch asks only backpressure ports; for the
    /// others it calls `push` directly, so a sink whose room comes back
    /// asynchronously (a device's completions) must also take it back in
    /// `push` before answering `Full`.
    fn room(&mut self) -> usize;

    /// Slots a frame of `len` bytes needs.
    fn slots_for(&self, len: usize) -> usize;

    /// Most slots one frame may ever take here (the ring size less one,
    /// capped by the fragment limit). A backpressure port never holds a
    /// source for a frame bigger than this: it could never fit.
    fn capacity(&self) -> usize;

    /// Copies one frame: `hdr` first (a virtio-net header the engine built,
    /// possibly empty), then the bytes of `frags` from byte `skip` on.
    fn push(&mut self, frags: &[Frag], skip: usize, hdr: &[u8]) -> Push;

    /// Makes pushed frames visible to the reader (and wakes it if needed).
    fn publish(&mut self);

    /// A backpressure port held a sender: ask the reader to wake the
    /// switch when it frees room (the need-kick handshake on its RX rings).
    fn arm(&mut self) -> Arm {
        Arm::Never
    }

    /// Withdraws [`arm`](Self::arm) after waking.
    fn disarm(&mut self) {}

    /// Offloads the reader takes now (`OFFLOAD_*`), when the sink knows
    /// better than the port's configuration — a guest acks them when it
    /// connects. None: use [`PortConfig::offloads`].
    fn offloads(&self) -> Option<u32> {
        None
    }

    /// The sink as [`Any`](std::any::Any), so that a source of the same
    /// kind can recognise it for [`Source::fuse`]. None: no fused path.
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        None
    }
}

/// A boxed sink is a sink (a port whose kind is chosen at run time).
impl<S: Sink + ?Sized> Sink for Box<S> {
    fn room(&mut self) -> usize {
        (**self).room()
    }
    fn slots_for(&self, len: usize) -> usize {
        (**self).slots_for(len)
    }
    fn capacity(&self) -> usize {
        (**self).capacity()
    }
    fn push(&mut self, frags: &[Frag], skip: usize, hdr: &[u8]) -> Push {
        (**self).push(frags, skip, hdr)
    }
    fn publish(&mut self) {
        (**self).publish()
    }
    fn arm(&mut self) -> Arm {
        (**self).arm()
    }
    fn disarm(&mut self) {
        (**self).disarm()
    }
    fn offloads(&self) -> Option<u32> {
        (**self).offloads()
    }
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        (**self).as_any_mut()
    }
}

/// Answer of [`Sink::arm`].
#[derive(Debug, Clone)]
pub enum Arm {
    /// Room appeared meanwhile: do not sleep.
    Ready,
    /// Sleep until this eventfd is kicked.
    Wait(std::sync::Arc<netmap::sys::EventFd>),
    /// This sink cannot wake anyone (retry on the next wake-up).
    Never,
}

/// Result of [`Sink::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Copied.
    Done,
    /// No room; nothing changed.
    Full,
    /// The reader's slot was invalid (its buffer index or address); the
    /// frame is dropped and the slot left for the reader.
    BadSlot,
}

/// Walks the bytes of `hdr ++ frags[skip..]` and fills destination buffers
/// with them: the copy loop every slot-based sink shares.
#[derive(Debug)]
pub struct FrameCursor<'a> {
    hdr: &'a [u8],
    hdr_pos: usize,
    frags: &'a [Frag<'a>],
    frag: usize,
    off: usize,
    left: usize,
}

impl<'a> FrameCursor<'a> {
    /// A cursor over the frame; `len` is the frame's total fragment length.
    pub fn new(frags: &'a [Frag<'a>], skip: usize, hdr: &'a [u8]) -> FrameCursor<'a> {
        let total: usize = frags.iter().map(|f| f.len() as usize).sum();
        let mut c = FrameCursor {
            hdr,
            hdr_pos: 0,
            frags,
            frag: 0,
            off: 0,
            left: hdr.len() + total.saturating_sub(skip),
        };
        c.skip(skip);
        c
    }

    fn skip(&mut self, mut n: usize) {
        while n > 0 && self.frag < self.frags.len() {
            let avail = self.frags[self.frag].len() as usize - self.off;
            if n < avail {
                self.off += n;
                return;
            }
            n -= avail;
            self.frag += 1;
            self.off = 0;
        }
    }

    /// Bytes still to copy.
    pub fn remaining(&self) -> usize {
        self.left
    }

    /// Copies up to `dst.cap()` bytes into `dst`; returns the bytes copied.
    pub fn fill(&mut self, dst: &mut DstBuf) -> usize {
        let mut at = 0;
        if self.hdr_pos < self.hdr.len() {
            let n = dst.write(0, &self.hdr[self.hdr_pos..]);
            self.hdr_pos += n;
            at = n;
        }
        while at < dst.cap() && self.frag < self.frags.len() {
            let f = &self.frags[self.frag];
            let n = dst.copy_from(at, f, self.off, dst.cap() - at);
            at += n;
            self.off += n;
            if self.off >= f.len() as usize {
                self.frag += 1;
                self.off = 0;
            }
        }
        self.left -= at.min(self.left);
        at
    }
}

/// Per-port options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortConfig {
    /// When the port's RX is full, hold the source instead of dropping
    /// (head-of-line blocking for everything that source sends).
    pub backpressure: bool,
    /// Honour the destination in the slot's high byte (`NS_PORT_MASK`):
    /// 1..=254 is port `v - 1`, 255 floods, 0 means "look up".
    pub port_mask_override: bool,
    /// Length of the virtio-net header in front of each frame (0, 10, 12).
    pub vnet_hdr_len: u16,
    /// Offloads the port's reader accepts (`OFFLOAD_*`).
    pub offloads: u32,
    /// Most MACs this port may teach the bridge (0: the bridge default).
    pub mac_limit: u32,
}

/// The reader accepts partial checksums (`VIRTIO_NET_F_GUEST_CSUM`).
pub const OFFLOAD_CSUM: u32 = 1 << 0;
/// The reader accepts TSO over IPv4 (`GUEST_TSO4`).
pub const OFFLOAD_TSO4: u32 = 1 << 1;
/// The reader accepts TSO over IPv6 (`GUEST_TSO6`).
pub const OFFLOAD_TSO6: u32 = 1 << 2;
/// The reader accepts ECN with TSO (`GUEST_ECN`).
pub const OFFLOAD_ECN: u32 = 1 << 3;
/// The reader accepts UFO (`GUEST_UFO`).
pub const OFFLOAD_UFO: u32 = 1 << 4;
/// Everything: a netmap client with a virtio-net header gets frames as
/// they came (netmap's VALE passes headers untouched between such ports).
pub const OFFLOAD_ALL: u32 = OFFLOAD_CSUM | OFFLOAD_TSO4 | OFFLOAD_TSO6 | OFFLOAD_ECN | OFFLOAD_UFO;

/// Why frames were dropped; one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// The destination had no room (counted on the destination).
    DstFull,
    /// The lookup said drop (unknown port, or back to the source).
    NoDst,
    /// Shorter than an Ethernet header.
    Runt,
    /// More than 64 fragments, or a chain cut at the end of the batch.
    BadChain,
    /// A fragment of length 0.
    EmptyFrag,
    /// The frame needs an offload (GSO) its destination lacks.
    Offload,
    /// A slot with an invalid buffer index, length or address, on the
    /// sending side or the receiving side (counted where it was).
    BadSlot,
}

/// Number of [`DropReason`]s.
pub const DROP_REASONS: usize = 7;

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; DROP_REASONS] = [
        DropReason::DstFull,
        DropReason::NoDst,
        DropReason::Runt,
        DropReason::BadChain,
        DropReason::EmptyFrag,
        DropReason::Offload,
        DropReason::BadSlot,
    ];

    /// The name `vale-ctl --stats` prints.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::DstFull => "drop_dst_full",
            DropReason::NoDst => "drop_no_dst",
            DropReason::Runt => "drop_runt",
            DropReason::BadChain => "drop_bad_chain",
            DropReason::EmptyFrag => "drop_empty_frag",
            DropReason::Offload => "drop_offload",
            DropReason::BadSlot => "drop_bad_slot",
        }
    }
}

/// Counters of one port, updated by any forwarding thread.
#[derive(Debug, Default)]
pub struct PortCounters {
    /// Frames the port sent into the switch.
    pub in_packets: AtomicU64,
    /// Bytes the port sent into the switch.
    pub in_bytes: AtomicU64,
    /// Frames delivered to the port.
    pub out_packets: AtomicU64,
    /// Bytes delivered to the port.
    pub out_bytes: AtomicU64,
    /// Frames for the port that needed software segmentation or checksum
    /// (it lacks the offload the frame asked for), counted once per
    /// frame before segmentation.
    pub soft_offload: AtomicU64,
    /// Drops, by [`DropReason`].
    pub drops: [AtomicU64; DROP_REASONS],
}

/// A snapshot of [`PortCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PortStats {
    /// Frames the port sent into the switch.
    pub in_packets: u64,
    /// Bytes the port sent into the switch.
    pub in_bytes: u64,
    /// Frames delivered to the port.
    pub out_packets: u64,
    /// Bytes delivered to the port.
    pub out_bytes: u64,
    /// Frames for the port segmented or checksummed in software.
    pub soft_offload: u64,
    /// Drops, by [`DropReason`].
    pub drops: [u64; DROP_REASONS],
}

impl PortStats {
    /// Drops of one reason.
    pub fn drop(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }
    /// All drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}

impl PortCounters {
    #[inline]
    pub(crate) fn add(c: &AtomicU64, v: u64) {
        if v > 0 {
            c.fetch_add(v, Ordering::Relaxed);
        }
    }

    #[inline]
    pub(crate) fn count_drop(&self, r: DropReason, n: u64) {
        Self::add(&self.drops[r as usize], n);
    }

    /// A snapshot.
    pub fn snapshot(&self) -> PortStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PortStats {
            in_packets: l(&self.in_packets),
            in_bytes: l(&self.in_bytes),
            out_packets: l(&self.out_packets),
            out_bytes: l(&self.out_bytes),
            soft_offload: l(&self.soft_offload),
            drops: std::array::from_fn(|i| l(&self.drops[i])),
        }
    }
}
