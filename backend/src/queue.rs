//! A guest's virtqueues as VALE ports: the TX queue is a [`Source`] whose
//! frames point into guest memory, the RX queues are a [`Sink`].
//!
//! # The lifetime invariant
//! A [`TxQueue`] takes a guest memory guard in `fetch` and drops it in
//! `complete`, after every used entry of the batch went back: slots that
//! point into guest memory never outlive their batch, so SET_MEM_TABLE and
//! REM_MEM_REG (which swap the map under the crate's lock) can never unmap
//! memory the engine is reading. The vring lock is taken only briefly, to
//! pop and to return chains, never across the copy: `stop_vring` waits for
//! the `busy` flag instead (see [`QueueCtl`]).

use std::num::Wrapping;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netmap::sys::EventFd;
use vale::frag::{DstBuf, Frag};
use vale::{Arm, FrameCursor, Push, Sink, Source};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};

use crate::chain::{rx_chain_to_bufs, tx_chain_to_frags, ChainError};

/// Guest memory as the backend maps it.
pub type Mem = GuestMemoryMmap<()>;
/// The atomically swappable guest memory map.
pub type GuestMem = GuestMemoryAtomic<Mem>;
/// A virtqueue as vhost-user-backend keeps it.
pub type Vring = VringRwLock<GuestMem>;

/// Size of `virtio_net_hdr_v1`, in front of every frame (VERSION_1).
pub const VNET_HDR_LEN: usize = 12;

/// The handshake between the request thread (`stop_vring`) and the
/// forwarding thread that owns a queue: the forwarder sets `busy` before it
/// looks at the queue and clears it once the batch's chains are back, so
/// once the request thread marked the queue not ready (under the vring
/// lock) and saw `busy` clear, no chain of that queue is outstanding.
#[derive(Debug, Default)]
pub struct QueueCtl {
    busy: AtomicBool,
}

impl QueueCtl {
    /// Waits until the owner is between batches (at most `limit`).
    /// Returns false on timeout.
    pub fn quiesce(&self, limit: Duration) -> bool {
        let t0 = Instant::now();
        while self.busy.load(Ordering::SeqCst) {
            if t0.elapsed() > limit {
                return false;
            }
            std::thread::yield_now();
        }
        true
    }
}

/// Per-queue counters of what the guest got wrong.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Chains dropped for a descriptor outside guest memory.
    pub out_of_memory: AtomicU64,
    /// Chains that never end (loops, bad next, bad indirect table).
    pub unterminated: AtomicU64,
    /// Descriptors of the wrong direction.
    pub direction: AtomicU64,
    /// Zero-length descriptors.
    pub zero_length: AtomicU64,
    /// Chains of too many fragments or bytes.
    pub too_big: AtomicU64,
    /// Frames for this guest dropped because it had no RX buffer posted.
    pub no_rx_buffer: AtomicU64,
    /// Frames for this guest dropped because its buffers were too small
    /// (without mergeable RX buffers).
    pub rx_too_small: AtomicU64,
}

impl QueueStats {
    /// Counts a refused chain.
    pub fn count(&self, e: ChainError) {
        let c = match e {
            ChainError::OutOfMemory { .. } => &self.out_of_memory,
            ChainError::Unterminated | ChainError::Empty => &self.unterminated,
            ChainError::Direction => &self.direction,
            ChainError::ZeroLength => &self.zero_length,
            ChainError::TooManyFrags | ChainError::TooLong => &self.too_big,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Total of the guest-error counters (not the RX drops).
    pub fn bad_chains(&self) -> u64 {
        [
            &self.out_of_memory,
            &self.unterminated,
            &self.direction,
            &self.zero_length,
            &self.too_big,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// A virtqueue and the guest memory it lives in, as one connection of the
/// port has them (a reconnecting VMM gets fresh ones).
#[derive(Clone)]
#[allow(missing_debug_implementations)]
pub struct Binding {
    /// The queue.
    pub vring: Vring,
    /// The guest memory of that connection.
    pub mem: GuestMem,
}

/// Where a queue's current [`Binding`] is published: set by the request
/// side when a connection brings the queue up, read by the data path once
/// per batch through a generation number (no lock on the fast path).
#[derive(Default)]
pub struct VringSlot {
    gen: AtomicU64,
    cur: std::sync::Mutex<Option<Binding>>,
}

impl std::fmt::Debug for VringSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VringSlot")
            .field("gen", &self.gen.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl VringSlot {
    /// Publishes `b` (None: the connection went away).
    pub fn set(&self, b: Option<Binding>) {
        let mut cur = self.cur.lock().unwrap_or_else(|e| e.into_inner());
        *cur = b;
        self.gen.fetch_add(1, Ordering::Release);
    }

    /// The binding now, if any.
    pub fn get(&self) -> Option<Binding> {
        self.cur.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The slot's binding, refreshing `cache` when the slot changed.
fn bound<'a>(
    slot: &VringSlot,
    cache: &'a mut Option<(u64, Binding)>,
) -> Option<(u64, &'a Binding)> {
    let g = slot.gen.load(Ordering::Acquire);
    if cache.as_ref().map(|c| c.0) != Some(g) {
        *cache = slot.get().map(|b| (g, b));
    }
    cache.as_ref().map(|c| (c.0, &c.1))
}

/// A guest TX queue as a switch [`Source`].
pub struct TxQueue {
    slot: Arc<VringSlot>,
    cache: Option<(u64, Binding)>,
    ctl: Arc<QueueCtl>,
    stats: Arc<QueueStats>,
    guard: Option<GuestMemoryLoadGuard<Mem>>,
    /// Head index of each chain of the batch, in order (one frame each).
    heads: Vec<u16>,
    /// Binding generation whose kicks are off (the forwarder polls).
    quiet: u64,
}

impl std::fmt::Debug for TxQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxQueue")
            .field("in_batch", &self.heads.len())
            .finish_non_exhaustive()
    }
}

impl TxQueue {
    /// The source for `vring`.
    pub fn new(slot: Arc<VringSlot>, ctl: Arc<QueueCtl>, stats: Arc<QueueStats>) -> Self {
        TxQueue {
            slot,
            cache: None,
            ctl,
            stats,
            guard: None,
            heads: Vec::with_capacity(256),
            quiet: u64::MAX,
        }
    }

    /// Asks the guest to kick on new chains; returns true if chains arrived
    /// meanwhile (do not sleep).
    pub fn enable_notification(&mut self) -> bool {
        self.quiet = u64::MAX;
        let Some((_, b)) = bound(&self.slot, &mut self.cache) else {
            return false;
        };
        let mem = b.mem.memory();
        let mut st = b.vring.get_mut();
        if !st.get_queue().ready() {
            return false;
        }
        st.get_queue_mut()
            .enable_notification(&*mem)
            .unwrap_or(false)
    }

    /// Tells the guest not to kick (the forwarder is polling).
    pub fn disable_notification(&mut self) {
        let Some((gen, b)) = bound(&self.slot, &mut self.cache) else {
            return;
        };
        let mem = b.mem.memory();
        let mut st = b.vring.get_mut();
        if st.get_queue().ready() {
            let _ = st.get_queue_mut().disable_notification(&*mem);
            self.quiet = gen;
        }
    }
}

impl Source for TxQueue {
    fn fetch(&mut self, frags: &mut Vec<Frag>, max: usize) -> usize {
        self.heads.clear();
        self.ctl.busy.store(true, Ordering::SeqCst);
        let Some((gen, b)) = bound(&self.slot, &mut self.cache) else {
            self.ctl.busy.store(false, Ordering::SeqCst);
            return 0;
        };
        let mem = b.mem.memory();
        let mut st = b.vring.get_mut();
        if !st.get_queue().ready() || !st.is_enabled() {
            drop(st);
            self.ctl.busy.store(false, Ordering::SeqCst);
            return 0;
        }
        let q = st.get_queue_mut();
        if self.quiet != gen {
            // A new session starts with kicks on: the forwarder is polling
            // now, so tell the guest not to kick until it sleeps again.
            let _ = q.disable_notification(&*mem);
            self.quiet = gen;
        }
        // One read of the avail index for the whole batch.
        let it = match q.iter(&*mem) {
            Ok(it) => it,
            Err(e) => {
                tracing::debug!("guest TX queue unusable: {e}");
                drop(st);
                self.ctl.busy.store(false, Ordering::SeqCst);
                return 0;
            }
        };
        for chain in it.take(max) {
            let head = chain.head_index();
            if let Err(e) = tx_chain_to_frags(chain, &*mem, frags) {
                tracing::debug!(head, "guest TX chain dropped: {e}");
                self.stats.count(e);
                frags.push(Frag::bad(0));
            }
            self.heads.push(head);
        }
        drop(st);
        if self.heads.is_empty() {
            self.ctl.busy.store(false, Ordering::SeqCst);
            return 0;
        }
        self.guard = Some(mem);
        self.heads.len()
    }

    fn complete(&mut self, frames: usize) {
        if let (Some(mem), Some((_, b))) = (self.guard.take(), self.cache.as_ref()) {
            let mut st = b.vring.get_mut();
            let q = st.get_queue_mut();
            let frames = frames.min(self.heads.len());
            for &h in &self.heads[..frames] {
                // A head past the table cannot be returned; the guest broke
                // its own ring and the frame was dropped as a bad slot.
                let _ = q.add_used(&*mem, h, 0);
            }
            // Held back by a backpressure destination: un-pop, in order.
            for _ in frames..self.heads.len() {
                q.go_to_previous_position();
            }
            let notify = frames > 0 && q.needs_notification(&*mem).unwrap_or(true);
            if notify {
                let _ = st.signal_used_queue();
            }
            drop(st);
            drop(mem);
        }
        self.heads.clear();
        self.ctl.busy.store(false, Ordering::SeqCst);
    }
}

impl Drop for TxQueue {
    fn drop(&mut self) {
        // Chains popped and not returned would be lost descriptors.
        if self.guard.is_some() {
            self.complete(self.heads.len());
        }
    }
}

/// An RX chain popped for the batch: its head and its buffers.
#[derive(Debug, Clone, Copy)]
struct RxChain {
    head: u16,
    first: usize,
    nbufs: usize,
    cap: usize,
    /// The guest broke it: returned empty when its turn comes.
    bad: bool,
}

/// One guest RX queue.
///
/// Chains are popped in bunches and returned once per batch (at
/// `publish`): the vring lock and the memory guard are taken once per
/// batch, not per frame, since every locked instruction waits for the
/// frame copies' stores into guest memory to drain. Chains popped and not
/// used are un-popped at `publish`, in order; `busy` keeps `stop_vring`
/// waiting while any are out.
pub struct RxQueue {
    slot: Arc<VringSlot>,
    cache: Option<(u64, Binding)>,
    ctl: Arc<QueueCtl>,
    stats: Arc<QueueStats>,
    mrg: Arc<AtomicBool>,
    size: AtomicU16,
    guard: Option<GuestMemoryLoadGuard<Mem>>,
    bufs: Vec<DstBuf>,
    /// Chains popped in this batch, in avail order.
    chains: Vec<RxChain>,
    /// First chain not yet consumed.
    next: usize,
    /// (head, bytes written) to return at publish.
    used: Vec<(u16, u32)>,
    /// Bytes of the last chain seen, to guess slots per frame.
    buf_hint: usize,
    /// Binding generation whose RX kicks are off (only a held sender
    /// needs them).
    quiet: u64,
}

impl std::fmt::Debug for RxQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxQueue").finish_non_exhaustive()
    }
}

/// Chains popped per refill.
const RX_BUNCH: usize = 32;

impl RxQueue {
    /// The sink side of `slot`; `mrg` follows the acked `MRG_RXBUF`.
    pub fn new(
        slot: Arc<VringSlot>,
        ctl: Arc<QueueCtl>,
        stats: Arc<QueueStats>,
        mrg: Arc<AtomicBool>,
    ) -> Self {
        RxQueue {
            slot,
            cache: None,
            ctl,
            stats,
            mrg,
            size: AtomicU16::new(256),
            guard: None,
            bufs: Vec::with_capacity(RX_BUNCH * 2),
            chains: Vec::with_capacity(RX_BUNCH * 2),
            next: 0,
            used: Vec::with_capacity(RX_BUNCH * 2),
            buf_hint: 1518,
            quiet: u64::MAX,
        }
    }

    /// Whether the guest enabled the queue.
    pub fn ready(&mut self) -> bool {
        let Some((_, b)) = bound(&self.slot, &mut self.cache) else {
            return false;
        };
        let st = b.vring.get_ref();
        st.get_queue().ready() && st.is_enabled()
    }

    fn avail(&mut self) -> usize {
        let pending = self.chains.len() - self.next;
        let Some((_, b)) = bound(&self.slot, &mut self.cache) else {
            return 0;
        };
        let mem = b.mem.memory();
        let st = b.vring.get_ref();
        let q = st.get_queue();
        if !q.ready() || !st.is_enabled() {
            return 0;
        }
        self.size.store(q.size(), Ordering::Relaxed);
        match q.avail_idx(&*mem, Ordering::Acquire) {
            Ok(idx) => pending + ((idx - Wrapping(q.next_avail())).0).min(q.size()) as usize,
            Err(_) => pending,
        }
    }

    /// Arms the guest's RX kick (for backpressure); true if buffers are
    /// already there.
    fn arm(&mut self) -> bool {
        self.quiet = u64::MAX;
        let Some((_, b)) = bound(&self.slot, &mut self.cache) else {
            return false;
        };
        let mem = b.mem.memory();
        let mut st = b.vring.get_mut();
        st.get_queue().ready()
            && st.is_enabled()
            && st
                .get_queue_mut()
                .enable_notification(&*mem)
                .unwrap_or(false)
    }

    /// Pops up to `RX_BUNCH` more chains (at least what a frame of
    /// `need` bytes takes, with mergeable buffers). False if none came.
    fn refill(&mut self) -> bool {
        if self.guard.is_none() {
            self.ctl.busy.store(true, Ordering::SeqCst);
        }
        let Some((gen, b)) = bound(&self.slot, &mut self.cache) else {
            return false;
        };
        let mem = match &self.guard {
            Some(g) => g,
            None => self.guard.insert(b.mem.memory()),
        };
        let mut st = b.vring.get_mut();
        if !st.get_queue().ready() || !st.is_enabled() {
            return false;
        }
        let q = st.get_queue_mut();
        if self.quiet != gen {
            let _ = q.disable_notification(&**mem);
            self.quiet = gen;
        }
        let before = self.chains.len();
        let Ok(it) = q.iter(&**mem) else {
            return false;
        };
        for chain in it.take(RX_BUNCH) {
            let head = chain.head_index();
            let first = self.bufs.len();
            match rx_chain_to_bufs(chain, &**mem, &mut self.bufs) {
                Ok(cap) => {
                    self.buf_hint = cap;
                    self.chains.push(RxChain {
                        head,
                        first,
                        nbufs: self.bufs.len() - first,
                        cap,
                        bad: false,
                    });
                }
                Err(e) => {
                    tracing::debug!(head, "guest RX chain dropped: {e}");
                    self.stats.count(e);
                    self.chains.push(RxChain {
                        head,
                        first,
                        nbufs: 0,
                        cap: 0,
                        bad: true,
                    });
                }
            }
        }
        self.chains.len() > before
    }

    /// The next chain not consumed, skipping (and returning empty) chains
    /// the guest broke.
    fn take(&mut self) -> Option<RxChain> {
        loop {
            if self.next == self.chains.len() && !self.refill() {
                return None;
            }
            let c = self.chains[self.next];
            self.next += 1;
            if !c.bad {
                return Some(c);
            }
            // A used entry of length 0 is how a device says "nothing
            // here" without losing the descriptor.
            self.used.push((c.head, 0));
        }
    }
}

impl Sink for RxQueue {
    fn room(&mut self) -> usize {
        self.avail()
    }

    fn slots_for(&self, len: usize) -> usize {
        if self.mrg.load(Ordering::Relaxed) {
            (len + VNET_HDR_LEN).div_ceil(self.buf_hint.max(64))
        } else {
            1
        }
    }

    fn capacity(&self) -> usize {
        (self.size.load(Ordering::Relaxed) as usize)
            .saturating_sub(1)
            .max(1)
    }

    fn push(&mut self, frags: &[Frag], skip: usize, hdr: &[u8]) -> Push {
        let flen: usize = frags.iter().map(|f| f.len() as usize).sum();
        // The header this guest gets: the engine's copy (made once), with
        // num_buffers ours to fill.
        let mut h = [0u8; VNET_HDR_LEN];
        let n = hdr.len().min(VNET_HDR_LEN);
        h[..n].copy_from_slice(&hdr[..n]);
        let total = VNET_HDR_LEN + flen.saturating_sub(skip);
        let mrg = self.mrg.load(Ordering::Relaxed);
        let start_used = self.used.len();
        let start_next = self.next;
        let mut mine: [Option<RxChain>; 64] = [None; 64];
        let mut k = 0;
        let mut cap = 0usize;
        while cap < total {
            let Some(c) = self.take() else {
                // Un-take this frame's chains; they go back at publish if
                // no later frame fits them.
                self.next = start_next;
                self.used.truncate(start_used);
                self.stats.no_rx_buffer.fetch_add(1, Ordering::Relaxed);
                return Push::Full;
            };
            if (!mrg && c.cap < total) || k == mine.len() {
                // Without mergeable buffers a frame takes one chain.
                self.next = start_next;
                self.used.truncate(start_used);
                self.stats.rx_too_small.fetch_add(1, Ordering::Relaxed);
                return Push::Full;
            }
            cap += c.cap;
            mine[k] = Some(c);
            k += 1;
        }
        h[10..12].copy_from_slice(&(k as u16).to_le_bytes());
        let mut cur = FrameCursor::new(frags, skip, &h);
        for c in mine[..k].iter().flatten() {
            let mut written = 0usize;
            for b in &mut self.bufs[c.first..c.first + c.nbufs] {
                if cur.remaining() == 0 {
                    break;
                }
                written += cur.fill(b);
            }
            self.used.push((c.head, written as u32));
        }
        Push::Done
    }

    fn publish(&mut self) {
        let Some(mem) = self.guard.take() else {
            return;
        };
        if let Some((_, b)) = self.cache.as_ref() {
            let mut st = b.vring.get_mut();
            let q = st.get_queue_mut();
            for &(head, len) in &self.used {
                let _ = q.add_used(&*mem, head, len);
            }
            for _ in self.next..self.chains.len() {
                q.go_to_previous_position();
            }
            if !self.used.is_empty() && q.needs_notification(&*mem).unwrap_or(true) {
                let _ = st.signal_used_queue();
            }
        }
        self.used.clear();
        self.chains.clear();
        self.bufs.clear();
        self.next = 0;
        drop(mem);
        self.ctl.busy.store(false, Ordering::SeqCst);
    }
}

impl Drop for RxQueue {
    fn drop(&mut self) {
        self.publish();
    }
}

/// The RX queues of a guest as one sink: a frame goes to the queue its flow
/// hashes to, among the queues the guest enabled.
pub struct RxSet {
    queues: Vec<RxQueue>,
    wake: Arc<EventFd>,
    live: Vec<usize>,
}

impl std::fmt::Debug for RxSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxSet")
            .field("queues", &self.queues.len())
            .finish_non_exhaustive()
    }
}

impl RxSet {
    /// The sink over `queues`; `wake` is kicked when the guest posts RX
    /// buffers (for backpressure).
    pub fn new(queues: Vec<RxQueue>, wake: Arc<EventFd>) -> RxSet {
        RxSet {
            queues,
            wake,
            live: Vec::new(),
        }
    }

    fn refresh(&mut self) {
        self.live.clear();
        for (i, q) in self.queues.iter_mut().enumerate() {
            if q.ready() {
                self.live.push(i);
            }
        }
    }

    fn pick(&self, frags: &[Frag], skip: usize) -> Option<usize> {
        match self.live.len() {
            0 => None,
            1 => Some(self.live[0]),
            n => Some(self.live[flow_hash(frags, skip) % n]),
        }
    }
}

/// Hash of a frame's flow: the MAC pair and, for IPv4/IPv6, the address
/// pair and the L4 ports, read once into a local buffer.
pub fn flow_hash(frags: &[Frag], skip: usize) -> usize {
    let mut b = [0u8; 58];
    let mut at = 0;
    let mut off = skip;
    for f in frags {
        if at == b.len() {
            break;
        }
        let n = f.read(off, &mut b[at..]);
        off = off.saturating_sub(f.len() as usize);
        at += n;
    }
    let b = &b[..at];
    let mut key: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |s: &[u8]| {
        for &x in s {
            key = (key ^ x as u64).wrapping_mul(0x100_0000_01b3);
        }
    };
    let sym = |a: &[u8], c: &[u8], mix: &mut dyn FnMut(&[u8])| {
        // Symmetric: both directions of a flow hash alike.
        if a <= c {
            mix(a);
            mix(c);
        } else {
            mix(c);
            mix(a);
        }
    };
    if b.len() >= 14 {
        sym(&b[0..6], &b[6..12], &mut mix);
        let et = u16::from_be_bytes([b[12], b[13]]);
        if et == 0x0800 && b.len() >= 14 + 20 {
            let ihl = (b[14] & 0xf) as usize * 4;
            sym(&b[26..30], &b[30..34], &mut mix);
            if (b[14 + 9] == 6 || b[14 + 9] == 17) && b.len() >= 14 + ihl + 4 {
                sym(&b[14 + ihl..16 + ihl], &b[16 + ihl..18 + ihl], &mut mix);
            }
        } else if et == 0x86dd && b.len() >= 14 + 40 {
            sym(&b[22..38], &b[38..54], &mut mix);
        }
    }
    (key ^ (key >> 29)) as usize
}

impl Sink for RxSet {
    fn room(&mut self) -> usize {
        self.refresh();
        let live = std::mem::take(&mut self.live);
        let r = live
            .iter()
            .map(|&i| self.queues[i].room())
            .min()
            .unwrap_or(0);
        self.live = live;
        r
    }

    fn slots_for(&self, len: usize) -> usize {
        self.queues.first().map_or(1, |q| q.slots_for(len))
    }

    fn capacity(&self) -> usize {
        self.queues.first().map_or(1, |q| q.capacity())
    }

    fn push(&mut self, frags: &[Frag], skip: usize, hdr: &[u8]) -> Push {
        if self.live.is_empty() {
            self.refresh();
        }
        match self.pick(frags, skip) {
            Some(i) => self.queues[i].push(frags, skip, hdr),
            None => {
                if let Some(q) = self.queues.first() {
                    q.stats.no_rx_buffer.fetch_add(1, Ordering::Relaxed);
                }
                Push::Full
            }
        }
    }

    fn publish(&mut self) {
        self.queues.iter_mut().for_each(|q| q.publish());
        self.live.clear();
    }

    fn arm(&mut self) -> Arm {
        let mut ready = false;
        for q in &mut self.queues {
            ready |= q.arm();
        }
        if ready {
            Arm::Ready
        } else {
            Arm::Wait(self.wake.clone())
        }
    }
}
