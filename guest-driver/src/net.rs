//! virtio-net behind netmap rings: each queue pair is a lane, its TX and RX
//! virtqueues serving a netmap TX and RX ring in a private region. The
//! netmap buffers are the virtio buffers (zero copy both ways): txsync
//! posts the application's slots as TX chains and frees them when the
//! device has used them; rxsync hands filled RX chains to the application
//! as slots and posts the slots it released.
//!
//! The driver is the "kernel" of these rings, as valed is for its clients:
//! it keeps its own [`KringState`] and reads the application's `head` and
//! `cur` from the CSB once per sync. The application syncs with
//! [`AppRing::sync_with`], the driver's work running inside.
//!
//! Two layouts of a chain, chosen by the application's header length:
//! - **12** (`virtio_net_hdr_v1` in the frame, netmap's vnet-header mode):
//!   one descriptor per slot, the header at the start of the first slot of
//!   a frame. Mergeable RX buffers and the offloads are available: a frame
//!   spread over several buffers arrives as slots chained by `NS_MOREFRAG`.
//! - **0** (plain frames): the header in a descriptor of its own, one zero
//!   header shared by every TX chain, one header per RX slot that the
//!   device writes and nobody reads. Mergeable buffers are not negotiated
//!   (a second buffer of a frame would start in its header descriptor);
//!   every frame fits one netmap buffer.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use netmap::abi::{NetmapSlot, NS_MOREFRAG};
use netmap::csb::{Csb, CsbEntry};
use netmap::region::{PortLayout, Region, RegionConfig};
use netmap::ring::{self, RingHandle, RingView};
use netmap::sync::{AppRing, Dir, KringState, SyncError};
use netmap::sys::{EventFd, Memfd, PollFd, PollFlags, SharedMap};

use crate::virtq::{Buf, SplitQueue, Violations};
use crate::vqmem::{self, VqMem};
use crate::DriverError;

/// `struct virtio_net_hdr_v1`: VERSION_1 always has `num_buffers`.
pub const VNET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFF: usize = 10;
/// Slots one TX frame may span (a 64 KiB GSO frame in 2 KiB buffers, and
/// some).
pub const MAX_FRAME_SLOTS: usize = 64;
/// A huge page.
pub const HUGE_PAGE: usize = 2 << 20;
/// The largest virtqueue the driver asks for.
pub const MAX_QUEUE_SIZE: usize = 1024;
/// Bytes per RX header in the header area (12 used).
const HDR_STRIDE: u64 = 16;

/// What the application asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverConfig {
    /// Queue pairs (netmap ring pairs).
    pub queue_pairs: u16,
    /// Slots per netmap ring.
    pub slots: u32,
    /// 0: plain frames; 12: frames start with `virtio_net_hdr_v1`.
    pub hdr_len: u16,
    /// Negotiate VIRTIO_NET_F_MRG_RXBUF (only with `hdr_len` 12).
    pub mrg_rxbuf: bool,
    /// Negotiate VIRTIO_RING_F_EVENT_IDX.
    pub event_idx: bool,
    /// Negotiate checksum and TSO offloads (only with `hdr_len` 12: the
    /// application then reads and writes the headers that carry them).
    pub offloads: bool,
    /// The largest queue the device takes (a PCI device says; vhost-user
    /// backends take 1024, as QEMU's devices).
    pub queue_size_max: u16,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            queue_pairs: 1,
            slots: 1024,
            hdr_len: 0,
            mrg_rxbuf: true,
            event_idx: true,
            offloads: true,
            queue_size_max: MAX_QUEUE_SIZE as u16,
        }
    }
}

impl DriverConfig {
    /// Checks the combination; the header length must be one virtio 1.x
    /// frames can carry.
    pub fn validate(&self) -> Result<(), DriverError> {
        let bad = |m: String| Err(DriverError::Config(m));
        if self.hdr_len != 0 && usize::from(self.hdr_len) != VNET_HDR_LEN {
            return bad(format!(
                "virtio header length {}: a VERSION_1 device takes 0 or {VNET_HDR_LEN}",
                self.hdr_len
            ));
        }
        if self.queue_pairs == 0 || self.queue_pairs > 128 {
            return bad(format!("{} queue pairs: 1 to 128", self.queue_pairs));
        }
        if !(64..=16384).contains(&self.slots) {
            return bad(format!("{} slots: 64 to 16384", self.slots));
        }
        Ok(())
    }

    /// Whether the header travels in a descriptor of its own.
    fn separate_header(&self) -> bool {
        self.hdr_len == 0
    }

    /// Virtqueue size: every slot's chain fits (two descriptors each with
    /// a separate header), a power of two as split queues require, at most
    /// 1024 as QEMU's devices and valed take. Slots beyond what the queue
    /// holds wait in the netmap ring.
    pub fn queue_size(&self) -> u16 {
        let per = if self.separate_header() { 2 } else { 1 };
        // A power of two at most what the device takes.
        let max = usize::from(self.queue_size_max).clamp(2, MAX_QUEUE_SIZE);
        let max = 1usize << max.ilog2();
        (self.slots as usize * per).next_power_of_two().min(max) as u16
    }
}

/// What the device and driver settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Negotiated {
    /// The virtio feature bits acked.
    pub features: u64,
    /// VIRTIO_NET_F_MRG_RXBUF.
    pub mrg_rxbuf: bool,
    /// VIRTIO_RING_F_EVENT_IDX.
    pub event_idx: bool,
}

/// How the device addresses the region's bytes: file offset to bus
/// address (guest physical address, or IOVA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusMap {
    /// Offset `o` is at bus address `base + o` (a vhost-user memory table
    /// entry maps the file contiguously).
    Linear(u64),
    /// Offset `o` lies in page `o >> shift`, at `pages[page] + (o & mask)`
    /// (huge pages, each physically contiguous, found in
    /// `/proc/self/pagemap`).
    Pages {
        /// log2 of the page size.
        shift: u32,
        /// Bus address of each page of the file.
        pages: Vec<u64>,
    },
}

impl BusMap {
    /// The bus address of file offset `off`, if mapped.
    #[inline]
    pub fn bus(&self, off: u64) -> Option<u64> {
        match self {
            BusMap::Linear(base) => base.checked_add(off),
            BusMap::Pages { shift, pages } => {
                let p = *pages.get(usize::try_from(off >> shift).ok()?)?;
                Some(p + (off & ((1u64 << shift) - 1)))
            }
        }
    }
}

/// Where the driver's memory is, for the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusLayout {
    /// Bus address of the queue area's byte 0 (the area is contiguous).
    pub queues: u64,
    /// The region file's offsets (the buffer pool's, at least).
    pub bufs: BusMap,
}

/// How the driver tells the device about new buffers in one queue.
#[derive(Debug)]
pub enum Kick {
    /// vhost-user: an eventfd the backend polls.
    EventFd(EventFd),
    /// PCI: a 16-bit write of the queue index at a notify address.
    Mmio(crate::mmio::Notify),
}

impl Kick {
    fn ring(&self) {
        match self {
            // A full eventfd counter means a kick is pending anyway.
            Kick::EventFd(e) => {
                let _ = e.kick();
            }
            Kick::Mmio(n) => n.ring(),
        }
    }
}

/// How the device is told (a kick) and tells (an interrupt) for one queue.
#[derive(Debug)]
pub struct QueueEvents {
    /// Rung to kick the device.
    pub kick: Kick,
    /// Readable when the device signals used entries; None when the
    /// transport has no per-queue interrupt the driver can wait on (waits
    /// then poll the used ring).
    pub call: Option<EventFd>,
}

/// Counters of one lane.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LaneStats {
    /// Frames posted to the TX queue.
    pub tx_frames: u64,
    /// TX frames the driver refused (a slot with a buffer index out of the
    /// pool or a length past the buffer, or an empty frame): their slots
    /// are returned unsent.
    pub tx_bad: u64,
    /// Frames (slots, with mergeable buffers) received.
    pub rx_slots: u64,
    /// RX slots the application handed back with a buffer index outside
    /// the pool: not posted again until corrected.
    pub rx_bad_slots: u64,
    /// Kicks sent (TX and RX).
    pub kicks: u64,
    /// The device's misbehaviour on TX and RX queues.
    pub tx_violations: Violations,
    /// The device's misbehaviour on the RX queue.
    pub rx_violations: Violations,
}

/// The region's buffer pool as the device sees it.
#[derive(Debug, Clone)]
struct Pool {
    /// File offset of buffer 0.
    base: u64,
    size: u32,
    n: u32,
    map: BusMap,
}

impl Pool {
    #[inline]
    fn bus(&self, idx: u32) -> Option<u64> {
        if idx >= self.n {
            return None;
        }
        self.map
            .bus(self.base + u64::from(idx) * u64::from(self.size))
    }
}

/// One queue pair and its two rings.
#[derive(Debug)]
struct Lane {
    tx_ring: RingHandle,
    rx_ring: RingHandle,
    st: LaneState,
}

/// A lane's queues and the driver's state of its rings.
#[derive(Debug)]
struct LaneState {
    txq: SplitQueue,
    rxq: SplitQueue,
    txk: KringState,
    rxk: KringState,
    tx_csb: u32,
    rx_csb: u32,
    /// TX: first slot not posted; slots used by the device, not yet
    /// passed by `nr_hwcur`; slots of the frame starting at each slot.
    tx_next: u32,
    tx_done: Vec<bool>,
    tx_span: Vec<u16>,
    /// RX: first slot not posted; slots the device filled that `nr_hwtail`
    /// has not passed; the buffer posted with each slot.
    rx_next: u32,
    rx_ready: Vec<bool>,
    rx_buf: Vec<u32>,
    /// Buffers still to come of the frame being received (mergeable).
    rx_merge: u16,
    pool: Pool,
    sep_hdr: bool,
    mrg: bool,
    /// Bus address of the shared zero TX header / of RX slot 0's header.
    tx_hdr: u64,
    rx_hdr: u64,
    tx_ev: QueueEvents,
    rx_ev: QueueEvents,
    scratch: Vec<Buf>,
    ids: Vec<u16>,
    /// Chains the queues hold at once: slot `s` always uses chain
    /// `s % pairs`'s descriptors (see [`LaneState::descs`]).
    pairs: u32,
    stats: LaneStats,
}

/// `i` lies in the ring window `[from, to]`.
#[inline]
fn within(from: u32, i: u32, to: u32, n: u32) -> bool {
    ring::distance(from, i, n) <= ring::distance(from, to, n)
}

impl Lane {
    fn txsync(&mut self, csb: &CsbEntry<'_>) {
        self.st.txsync(&self.tx_ring.view(), csb);
    }

    fn rxsync(&mut self, csb: &CsbEntry<'_>) {
        self.st.rxsync(&self.rx_ring.view(), csb);
    }
}

impl LaneState {
    /// The descriptors of slot `s`: with a separate header, chain
    /// `j = s % pairs` owns descriptors `2j` (header) and `2j + 1`
    /// (buffer); else descriptor `j`. A slot keeps its descriptors, so a
    /// buffer posted again in the same slot writes nothing but the avail
    /// index.
    #[inline]
    fn descs(&self, s: u32) -> (u16, u16) {
        // `pairs` is a power of two (the queue size, or half of it).
        let j = s & (self.pairs - 1);
        if self.sep_hdr {
            ((2 * j) as u16, (2 * j + 1) as u16)
        } else {
            (j as u16, j as u16)
        }
    }

    fn kick(ev: &QueueEvents, stats: &mut LaneStats) {
        ev.kick.ring();
        stats.kicks += 1;
    }

    /// netmap's txsync: frees what the device used, posts what the
    /// application published.
    fn txsync(&mut self, view: &RingView<'_>, csb: &CsbEntry<'_>) {
        let head = match self.txk.prologue(csb) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("virtio TX ring: {e}");
                self.txk.reset(csb, Some(view));
                // netmap's reset gives the user everything from hwcur; the
                // slots posted and not yet used, [hwcur, tx_next), are
                // still the device's: the user's window starts after them.
                let n = self.txk.num_slots();
                if within(self.txk.nr_hwcur, self.tx_next, self.txk.nr_hwtail, n) {
                    self.txk.rhead = self.tx_next;
                    self.txk.rcur = self.tx_next;
                    csb.cur.store(self.tx_next, Ordering::Relaxed);
                    csb.head.store(self.tx_next, Ordering::Release);
                    view.set_head(self.tx_next);
                    view.set_cur(self.tx_next);
                }
                self.txk.rhead
            }
        };
        self.tx_reap();
        self.tx_post(view, head);
        if self.txq.publish() {
            LaneState::kick(&self.tx_ev, &mut self.stats);
        }
        self.txk.publish(csb);
    }

    fn tx_reap(&mut self) {
        let (done, span) = (&mut self.tx_done, &self.tx_span);
        let n = self.txk.num_slots();
        self.txq.reap(usize::MAX, |u| {
            let mut s = u.token;
            // Tokens are ours (slot numbers), never the device's.
            for _ in 0..span.get(u.token as usize).copied().unwrap_or(0) {
                done[s as usize] = true;
                s = ring::next(s, n);
            }
        });
        self.tx_complete();
    }

    /// Passes `nr_hwcur` over the slots done, in ring order.
    fn tx_complete(&mut self) {
        let n = self.txk.num_slots();
        let (mut c, mut k) = (self.txk.nr_hwcur, 0);
        while c != self.txk.rhead && self.tx_done[c as usize] {
            self.tx_done[c as usize] = false;
            c = ring::next(c, n);
            k += 1;
        }
        if k > 0 {
            self.txk.tx_consumed(k);
        }
    }

    fn tx_post(&mut self, view: &RingView<'_>, head: u32) {
        let n = self.txk.num_slots();
        if !within(self.txk.nr_hwcur, self.tx_next, head, n) {
            // A reset moved head behind what is in flight: wait for it.
            return;
        }
        let mut i = self.tx_next;
        let mut refused = false;
        while i != head {
            self.scratch.clear();
            self.ids.clear();
            if self.sep_hdr {
                self.scratch.push(Buf {
                    addr: self.tx_hdr,
                    len: VNET_HDR_LEN as u32,
                    write: false,
                });
                self.ids.push(self.descs(i).0);
            }
            let start = i;
            let (mut slots, mut bad, mut whole) = (0usize, false, false);
            loop {
                let s = view.slot(i);
                let at = i;
                i = ring::next(i, n);
                slots += 1;
                match self.pool.bus(s.buf_idx) {
                    Some(addr) if u32::from(s.len) <= self.pool.size => {
                        if s.len > 0 {
                            self.scratch.push(Buf {
                                addr,
                                len: u32::from(s.len),
                                write: false,
                            });
                            self.ids.push(self.descs(at).1);
                        }
                    }
                    _ => bad = true,
                }
                if s.flags & NS_MOREFRAG == 0 || slots == MAX_FRAME_SLOTS {
                    bad |= s.flags & NS_MOREFRAG != 0;
                    whole = true;
                    break;
                }
                if i == head {
                    break;
                }
            }
            if !whole {
                // The rest of the frame is not published yet.
                i = start;
                break;
            }
            // A frame needing more chains' descriptors than the queue has
            // could never be posted: refused, not waited for.
            bad |= slots as u32 > self.pairs;
            let payload = self.scratch.len() - usize::from(self.sep_hdr);
            if bad || payload == 0 {
                self.stats.tx_bad += 1;
                let mut s = start;
                for _ in 0..slots {
                    self.tx_done[s as usize] = true;
                    s = ring::next(s, n);
                }
                refused = true;
                continue;
            }
            let posted = match (self.ids.as_slice(), self.scratch.as_slice()) {
                (&[d], &[b]) => self.txq.post1(d, b, start),
                (&[h, d], &[hb, db]) => self.txq.post2(h, hb, d, db, start),
                (ids, bufs) => self.txq.post(ids, bufs, start),
            };
            if posted.is_none() {
                // Its descriptors are still in flight (a slot of the
                // previous lap, or the queue is smaller than the ring).
                i = start;
                break;
            }
            self.tx_span[start as usize] = slots as u16;
            self.stats.tx_frames += 1;
        }
        self.tx_next = i;
        if refused {
            self.tx_complete();
        }
    }

    /// netmap's rxsync: takes what the device filled, posts what the
    /// application released.
    fn rxsync(&mut self, view: &RingView<'_>, csb: &CsbEntry<'_>) {
        if let Err(e) = self.rxk.prologue(csb) {
            tracing::warn!("virtio RX ring: {e}");
            self.rxk.reset(csb, Some(view));
        }
        self.rx_reap(view);
        self.rx_post(view);
        if self.rxq.publish() {
            LaneState::kick(&self.rx_ev, &mut self.stats);
        }
        self.rxk.publish(csb);
    }

    fn rx_reap(&mut self, view: &RingView<'_>) {
        let LaneState {
            rxq,
            rx_ready,
            rx_buf,
            rx_merge,
            sep_hdr,
            mrg,
            stats,
            ..
        } = self;
        let (sep, mrg) = (*sep_hdr, *mrg);
        rxq.reap(usize::MAX, |u| {
            let s = u.token;
            let Some(&buf_idx) = rx_buf.get(s as usize) else {
                return;
            };
            let len = if sep {
                u.len.saturating_sub(VNET_HDR_LEN as u32)
            } else {
                u.len
            };
            let mut flags = 0;
            if mrg {
                if *rx_merge == 0 {
                    let mut nb = [0u8; 2];
                    let nb = view
                        .read_buf(buf_idx, NUM_BUFFERS_OFF, &mut nb)
                        .map(|()| u16::from_le_bytes(nb))
                        .unwrap_or(1);
                    *rx_merge = nb.max(1) - 1;
                } else {
                    *rx_merge -= 1;
                }
                if *rx_merge > 0 {
                    flags |= NS_MOREFRAG;
                }
            }
            view.set_slot(
                s,
                NetmapSlot {
                    buf_idx,
                    len: len.min(u32::from(u16::MAX)) as u16,
                    flags,
                    ptr: 0,
                },
            );
            rx_ready[s as usize] = true;
            stats.rx_slots += 1;
        });
        let n = self.rxk.num_slots();
        let last = ring::prev(self.rxk.nr_hwcur, n);
        let (mut t, mut k) = (self.rxk.nr_hwtail, 0);
        while t != last && self.rx_ready[t as usize] {
            self.rx_ready[t as usize] = false;
            t = ring::next(t, n);
            k += 1;
        }
        if k > 0 {
            self.rxk.rx_filled(k);
        }
    }

    fn rx_post(&mut self, view: &RingView<'_>) {
        let n = self.rxk.num_slots();
        let last = ring::prev(self.rxk.nr_hwcur, n);
        if !within(self.rxk.nr_hwtail, self.rx_next, last, n) {
            return;
        }
        while self.rx_next != last {
            let s = self.rx_next;
            let slot = view.slot(s);
            let Some(addr) = self.pool.bus(slot.buf_idx) else {
                // netmap resets a ring over a bad buffer index; the slot
                // waits here until the application fixes it.
                self.stats.rx_bad_slots += 1;
                break;
            };
            let (h, b) = self.descs(s);
            let buf = Buf {
                addr,
                len: self.pool.size,
                write: true,
            };
            let posted = if self.sep_hdr {
                let hdr = Buf {
                    addr: self.rx_hdr + HDR_STRIDE * u64::from(s & (self.pairs - 1)),
                    len: VNET_HDR_LEN as u32,
                    write: true,
                };
                self.rxq.post2(h, hdr, b, buf, s)
            } else {
                self.rxq.post1(b, buf, s)
            };
            if posted.is_none() {
                break;
            }
            self.rx_buf[s as usize] = slot.buf_idx;
            self.rx_next = ring::next(s, n);
        }
    }

    fn stats(&self) -> LaneStats {
        LaneStats {
            tx_violations: self.txq.violations,
            rx_violations: self.rxq.violations,
            ..self.stats
        }
    }
}

/// The parts of a transport the rings keep: the memory the device maps
/// and whatever must live as long as the device does.
pub trait Transport: Send + Sync + std::fmt::Debug {
    /// Readable (or hung up) when the device goes away, for waits.
    fn peer_fd(&self) -> Option<BorrowedFd<'_>>;
}

/// A virtio-net device's queue pairs as netmap rings in this process.
#[derive(Debug)]
pub struct VirtioRings {
    name: String,
    region: Arc<Region>,
    csb: Csb,
    app_kick: EventFd,
    app_irq: EventFd,
    tx: Vec<usize>,
    rx: Vec<usize>,
    lanes: Vec<Mutex<Lane>>,
    /// Each lane's RX and TX call fds, for waits without the lane's lock.
    calls: Vec<(Option<EventFd>, Option<EventFd>)>,
    neg: Negotiated,
    cfg: DriverConfig,
    transport: Option<Box<dyn Transport>>,
}

/// The driver's memory before the device knows it: the netmap region, the
/// queue area, and where each lane's queues are.
#[derive(Debug)]
pub struct Memory {
    /// The netmap rings and buffers (shared by the devices of a group, so
    /// an application may swap buffers between their rings).
    pub region: Arc<Region>,
    /// Queues, the shared zero TX header and RX headers.
    pub queues: Memfd,
    /// `queues`, mapped.
    pub queue_map: Arc<SharedMap>,
    /// Per lane: (RX queue offsets, TX queue offsets) in `queues`, each
    /// (desc, avail, used), and the RX header area's offset.
    pub lanes: Vec<LaneLayout>,
    /// Offset of the zero TX header in `queues`.
    pub tx_hdr: usize,
    /// Queue size of every queue.
    pub queue_size: u16,
    tx_rings: Vec<usize>,
    rx_rings: Vec<usize>,
}

/// Where one lane's queues are in the queue area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneLayout {
    /// RX queue: descriptors, avail, used.
    pub rx: (usize, usize, usize),
    /// TX queue.
    pub tx: (usize, usize, usize),
    /// RX headers, one per slot (`HDR_STRIDE` bytes apart).
    pub rx_hdr: usize,
}

impl Memory {
    /// Lays out and allocates the region and the queue area for `cfg`.
    pub fn new(cfg: &DriverConfig) -> Result<Memory, DriverError> {
        let mut g = Memory::group(cfg, 1)?;
        g.pop()
            .ok_or_else(|| DriverError::Config("no device".into()))
    }

    /// The memory of `ndev` devices configured alike, in one netmap region:
    /// one queue area each, the buffer pool shared, as netmap's ports of one
    /// memory region (zero-copy forwarding between them by swapping
    /// buffers, as netmap's `bridge` does).
    pub fn group(cfg: &DriverConfig, ndev: usize) -> Result<Vec<Memory>, DriverError> {
        Memory::group_with(cfg, ndev, false)
    }

    /// [`group`](Self::group), on 2 MiB huge pages when `huge` (for a
    /// device that addresses physical memory: each huge page is contiguous,
    /// and the queue area must fit one); an error if there are none.
    pub fn group_with(
        cfg: &DriverConfig,
        ndev: usize,
        huge: bool,
    ) -> Result<Vec<Memory>, DriverError> {
        cfg.validate()?;
        if ndev == 0 || ndev > 16 {
            return Err(DriverError::Config(format!(
                "{ndev} devices in a group: 1 to 16"
            )));
        }
        let n = u32::from(cfg.queue_pairs);
        let layout = PortLayout {
            tx_rings: n * ndev as u32,
            rx_rings: n * ndev as u32,
            tx_slots: cfg.slots,
            rx_slots: cfg.slots,
            ..Default::default()
        };
        let mut rcfg = RegionConfig::for_ports(&layout, 1, 1)?;
        rcfg.huge_pages = huge;
        let mut region = Region::new(1, 0, &rcfg)?;
        let no_huge = |what: &str| {
            DriverError::Config(format!(
                "{what}: no free 2 MiB huge pages (echo N > /proc/sys/vm/nr_hugepages)"
            ))
        };
        if huge && region.huge_pages() != netmap::sys::HugePages::Huge2M {
            return Err(no_huge("netmap region"));
        }
        let mut rings = Vec::new();
        for _ in 0..ndev {
            let mut tx_rings = Vec::new();
            let mut rx_rings = Vec::new();
            for i in 0..cfg.queue_pairs {
                tx_rings.push(region.alloc_ring(Dir::Tx, i, cfg.slots)?);
                rx_rings.push(region.alloc_ring(Dir::Rx, i, cfg.slots)?);
            }
            rings.push((tx_rings, rx_rings));
        }
        let region = Arc::new(region);
        let qs = cfg.queue_size();
        let io = |what| move |source| DriverError::Io { what, source };
        let mut out = Vec::new();
        for (tx_rings, rx_rings) in rings {
            let mut at = 0;
            let tx_hdr = at;
            at += 64;
            let mut lanes = Vec::new();
            for _ in 0..n {
                let (rd, ra, ru, end) = vqmem::layout(at, qs);
                let (td, ta, tu, end) = vqmem::layout(end, qs);
                let rx_hdr = end.next_multiple_of(64);
                at = rx_hdr + HDR_STRIDE as usize * cfg.slots as usize;
                lanes.push(LaneLayout {
                    rx: (rd, ra, ru),
                    tx: (td, ta, tu),
                    rx_hdr,
                });
            }
            let len = at.next_multiple_of(netmap::sys::page_size());
            if huge && len > HUGE_PAGE {
                return Err(DriverError::Config(format!(
                    "queue area of {len} bytes: more than one huge page (fewer queue pairs or slots)"
                )));
            }
            let queues =
                Memfd::create_sealed("virtio-queues", len, huge).map_err(io("queue memory"))?;
            if huge && queues.huge_pages() != netmap::sys::HugePages::Huge2M {
                return Err(no_huge("queue area"));
            }
            let len = queues.size();
            let queue_map =
                Arc::new(SharedMap::map(queues.file(), len).map_err(io("queue memory"))?);
            out.push(Memory {
                region: region.clone(),
                queues,
                queue_map,
                lanes,
                tx_hdr,
                queue_size: qs,
                tx_rings,
                rx_rings,
            });
        }
        Ok(out)
    }

    /// Offset of the buffer pool in the region's file, and its length:
    /// the part of the region the device maps (never the rings).
    pub fn buf_window(&self) -> (usize, usize) {
        let off = self.region.layout().buf_pool_offset;
        (off, self.region.memsize() - off)
    }
}

impl Drop for VirtioRings {
    /// The device stops (a PCI device is reset, a vhost-user session
    /// closed) before the memory it addresses is freed.
    fn drop(&mut self) {
        drop(self.transport.take());
    }
}

impl VirtioRings {
    /// The rings over `mem`, once the device knows the memory at `bus` and
    /// its queues: posts every RX slot and kicks. `events` has one entry
    /// per lane: (RX queue, TX queue).
    pub fn start(
        name: &str,
        cfg: DriverConfig,
        neg: Negotiated,
        mem: Memory,
        bus: BusLayout,
        events: Vec<(QueueEvents, QueueEvents)>,
        transport: Box<dyn Transport>,
    ) -> Result<VirtioRings, DriverError> {
        let io = |what| move |source| DriverError::Io { what, source };
        let n = cfg.queue_pairs as u32;
        let csb = Csb::create(2 * n).map_err(io("control block"))?;
        let map = mem.region.map_arc();
        let mut lanes = Vec::new();
        let mut calls = Vec::new();
        let handle = |off: usize| -> Result<RingHandle, DriverError> {
            let (num_slots, buf_base, buf_size, nbufs) = mem.region.ring_params(off)?;
            RingHandle::new(map.clone(), off, num_slots, buf_base, buf_size, nbufs)
                .map_err(io("ring"))
        };
        let (_, _, buf_size, nbufs) = mem.region.ring_params(mem.tx_rings[0])?;
        let pool = Pool {
            base: mem.region.layout().buf_pool_offset as u64,
            size: buf_size,
            n: nbufs,
            map: bus.bufs.clone(),
        };
        let slots = cfg.slots as usize;
        for (i, (l, (rx_ev, tx_ev))) in mem.lanes.iter().zip(events).enumerate() {
            let vq = |(d, a, u): (usize, usize, usize)| {
                VqMem::new(mem.queue_map.clone(), d, a, u, mem.queue_size)
                    .map(|m| SplitQueue::new(m, neg.event_idx))
                    .map_err(io("virtqueue"))
            };
            let (tx_csb, rx_csb) = (i as u32, n + i as u32);
            for (dir, idx) in [(Dir::Tx, tx_csb), (Dir::Rx, rx_csb)] {
                KringState::new(dir, cfg.slots)
                    .publish(&csb.entry(idx).map_err(io("control block"))?);
            }
            let dup = |e: &Option<EventFd>| -> Result<Option<EventFd>, DriverError> {
                e.as_ref()
                    .map(|e| {
                        e.try_clone_fd()
                            .map(EventFd::from_fd)
                            .map_err(io("eventfd"))
                    })
                    .transpose()
            };
            calls.push((dup(&rx_ev.call)?, dup(&tx_ev.call)?));
            let mut st = LaneState {
                txq: vq(l.tx)?,
                rxq: vq(l.rx)?,
                txk: KringState::new(Dir::Tx, cfg.slots),
                rxk: KringState::new(Dir::Rx, cfg.slots),
                tx_csb,
                rx_csb,
                tx_next: 0,
                tx_done: vec![false; slots],
                tx_span: vec![1; slots],
                rx_next: 0,
                rx_ready: vec![false; slots],
                rx_buf: vec![0; slots],
                rx_merge: 0,
                pool: pool.clone(),
                sep_hdr: cfg.separate_header(),
                mrg: neg.mrg_rxbuf,
                tx_hdr: bus.queues + mem.tx_hdr as u64,
                rx_hdr: bus.queues + l.rx_hdr as u64,
                tx_ev,
                rx_ev,
                scratch: Vec::with_capacity(MAX_FRAME_SLOTS + 1),
                ids: Vec::with_capacity(MAX_FRAME_SLOTS + 1),
                pairs: u32::from(mem.queue_size) / (1 + u32::from(cfg.separate_header())),
                stats: LaneStats::default(),
            };
            let (tx_ring, rx_ring) = (handle(mem.tx_rings[i])?, handle(mem.rx_rings[i])?);
            st.rx_post(&rx_ring.view());
            if st.rxq.publish() {
                LaneState::kick(&st.rx_ev, &mut st.stats);
            }
            lanes.push(Mutex::new(Lane {
                tx_ring,
                rx_ring,
                st,
            }));
        }
        Ok(VirtioRings {
            name: name.to_string(),
            region: mem.region,
            csb,
            app_kick: EventFd::new().map_err(io("eventfd"))?,
            app_irq: EventFd::new().map_err(io("eventfd"))?,
            tx: mem.tx_rings,
            rx: mem.rx_rings,
            lanes,
            calls,
            neg,
            cfg,
            transport: Some(transport),
        })
    }

    /// The port name it was opened with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What was negotiated with the device.
    pub fn negotiated(&self) -> Negotiated {
        self.neg
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &DriverConfig {
        &self.cfg
    }

    /// Ring pairs (queue pairs).
    pub fn rings(&self) -> usize {
        self.lanes.len()
    }

    /// The application's side of TX ring `i`.
    pub fn tx_ring(&self, i: usize) -> Option<AppRing<'_>> {
        self.app_ring(Dir::Tx, i)
    }

    /// The application's side of RX ring `i`.
    pub fn rx_ring(&self, i: usize) -> Option<AppRing<'_>> {
        self.app_ring(Dir::Rx, i)
    }

    fn app_ring(&self, dir: Dir, i: usize) -> Option<AppRing<'_>> {
        let (off, id) = match dir {
            Dir::Tx => (*self.tx.get(i)?, i as u32),
            Dir::Rx => (*self.rx.get(i)?, (self.lanes.len() + i) as u32),
        };
        Some(AppRing {
            ring: self.region.ring_view(off).ok()?,
            csb: self.csb.entry(id).ok()?,
            kick: &self.app_kick,
            irq: &self.app_irq,
            dir,
            id,
        })
    }

    fn lane(&self, i: usize) -> MutexGuard<'_, Lane> {
        self.lanes[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// netmap's txsync on ring `i`.
    pub fn txsync(&self, i: usize) -> Result<(), SyncError> {
        let Some(r) = self.tx_ring(i) else {
            return Ok(());
        };
        r.sync_with(|| {
            let mut l = self.lane(i);
            let id = l.st.tx_csb;
            if let Ok(c) = self.csb.entry(id) {
                l.txsync(&c);
            }
        })
    }

    /// netmap's rxsync on ring `i`.
    pub fn rxsync(&self, i: usize) -> Result<(), SyncError> {
        let Some(r) = self.rx_ring(i) else {
            return Ok(());
        };
        r.sync_with(|| {
            let mut l = self.lane(i);
            let id = l.st.rx_csb;
            if let Ok(c) = self.csb.entry(id) {
                l.rxsync(&c);
            }
        })
    }

    /// Counters of lane `i`.
    pub fn stats(&self, i: usize) -> LaneStats {
        self.lane(i).st.stats()
    }

    /// Blocks until the device signals used entries on the TX queues of
    /// `tx` or the RX queues of `rx`, or `timeout`. Interrupts are asked
    /// for only here, and re-checked before sleeping, so a signal cannot
    /// fall between the check and the sleep; polling costs the device
    /// nothing. Returns `Ok(true)` when there is something to sync.
    pub fn wait(&self, tx: &[usize], rx: &[usize], timeout: Duration) -> Result<bool, SyncError> {
        let mut ready = false;
        let arm = |q: &mut SplitQueue| q.enable_irq();
        for &i in tx.iter().filter(|&&i| i < self.lanes.len()) {
            ready |= !arm(&mut self.lane(i).st.txq);
        }
        for &i in rx.iter().filter(|&&i| i < self.lanes.len()) {
            ready |= !arm(&mut self.lane(i).st.rxq);
        }
        let mut gone = false;
        if !ready {
            let mut evs: Vec<&EventFd> = Vec::new();
            let mut polled = false;
            for &i in tx {
                match self.calls.get(i).map(|c| &c.1) {
                    Some(Some(e)) => evs.push(e),
                    Some(None) => polled = true,
                    None => {}
                }
            }
            for &i in rx {
                match self.calls.get(i).map(|c| &c.0) {
                    Some(Some(e)) => evs.push(e),
                    Some(None) => polled = true,
                    None => {}
                }
            }
            if polled {
                // No interrupt to wait on: look at the used rings every
                // 50 us, sleeping between looks.
                ready = self.poll_used(tx, rx, timeout);
            } else {
                let mut fds: Vec<PollFd<'_>> = evs
                    .iter()
                    .map(|e| PollFd::new(e.as_fd(), PollFlags::IN))
                    .collect();
                let peer = self.transport.as_ref().and_then(|t| t.peer_fd());
                if let Some(p) = peer {
                    fds.push(PollFd::new(p, PollFlags::RDHUP));
                }
                let n = netmap::sys::poll(&mut fds, Some(timeout))?;
                ready = n > 0;
                if peer.is_some() {
                    gone = fds.pop().is_some_and(|p| {
                        p.revents
                            .intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR)
                    });
                }
                for (e, p) in evs.iter().zip(&fds) {
                    if p.revents.intersects(PollFlags::IN) {
                        // Non-blocking: a racing waiter may have emptied it.
                        let _ = e.drain();
                    }
                }
            }
        }
        for &i in tx.iter().filter(|&&i| i < self.lanes.len()) {
            self.lane(i).st.txq.disable_irq();
        }
        for &i in rx.iter().filter(|&&i| i < self.lanes.len()) {
            self.lane(i).st.rxq.disable_irq();
        }
        if gone {
            return Err(SyncError::PeerGone);
        }
        Ok(ready)
    }

    /// Waits for used entries on the queues named, by looking.
    fn poll_used(&self, tx: &[usize], rx: &[usize], timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let any = tx
                .iter()
                .filter(|&&i| i < self.lanes.len())
                .any(|&i| self.lane(i).st.txq.has_used())
                || rx
                    .iter()
                    .filter(|&&i| i < self.lanes.len())
                    .any(|&i| self.lane(i).st.rxq.has_used());
            if any {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            std::thread::sleep((deadline - now).min(Duration::from_micros(50)));
        }
    }
}
