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
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use netmap::sys::EventFd;
use vale::frag::{DstBuf, Frag};
use vale::{Arm, FrameCursor, Push, Sink, Source};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};

use crate::chain::{rx_bufs, tx_frags, ChainError};
use crate::vring::{HostMap, Ring};

/// Guest memory as the backend maps it.
pub type Mem = GuestMemoryMmap<()>;
/// The atomically swappable guest memory map.
pub type GuestMem = GuestMemoryAtomic<Mem>;

/// A virtqueue's state between batches: virtio-queue's `Queue` (size,
/// ring addresses, next_avail/next_used, EVENT_IDX), whether the driver
/// enabled it, and the eventfd that interrupts it. The session
/// ([`crate::vhost_user`]) configures it; the forwarding thread that owns
/// the queue reads it at a batch start and writes the indexes back at the
/// end. The kick eventfd is not here: the session's thread owns it.
#[derive(Debug)]
pub struct VringState {
    queue: Queue,
    enabled: bool,
    call: Option<Arc<EventFd>>,
}

impl VringState {
    /// The queue.
    pub fn get_queue(&self) -> &Queue {
        &self.queue
    }

    /// The queue, to change.
    pub fn get_queue_mut(&mut self) -> &mut Queue {
        &mut self.queue
    }

    /// Whether the driver enabled it (SET_VRING_ENABLE, or a kick
    /// without PROTOCOL_FEATURES).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Sets the enable bit.
    pub fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
    }

    /// Sets the call eventfd (None: the driver polls).
    pub fn set_call(&mut self, call: Option<Arc<EventFd>>) {
        self.call = call;
    }

    /// The call eventfd, to signal after the lock is let go: the write is
    /// to a VMM's fd and may take up to the watchdog's bound.
    pub fn call(&self) -> Option<Arc<EventFd>> {
        self.call.clone()
    }
}

/// Interrupts the driver. The eventfd is shared with the VMM, which may
/// have made it blocking: `kick_untrusted` writes only when poll says it
/// cannot block, and the watchdog interrupts a write the VMM raced into
/// blocking (that fd is then never written again, and it is logged once).
/// Called with no lock held.
pub fn signal(call: Option<Arc<EventFd>>) {
    let Some(c) = call else { return };
    if let Err(e) = c.kick_untrusted() {
        tracing::warn!("guest interrupts stop: call fd: {e}");
    }
}

/// A virtqueue, shared between the session and the forwarding thread
/// that owns it (a reconnecting VMM gets fresh ones).
#[derive(Clone, Debug)]
pub struct Vring(Arc<RwLock<VringState>>);

impl Vring {
    /// A queue of at most `max_size` entries, not ready, not enabled.
    pub fn new(max_size: u16) -> Vring {
        let queue = match Queue::new(max_size) {
            Ok(q) => q,
            // virtio-queue refuses sizes that are not powers of two; the
            // port's settings were checked, so this is a smaller default.
            Err(_) => Queue::new(256).unwrap_or_else(|_| unreachable!("256 is a power of two")),
        };
        Vring(Arc::new(RwLock::new(VringState {
            queue,
            enabled: false,
            call: None,
        })))
    }

    /// Reads the state.
    pub fn get_ref(&self) -> RwLockReadGuard<'_, VringState> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the state.
    pub fn get_mut(&self) -> RwLockWriteGuard<'_, VringState> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the queue ready or not.
    pub fn set_queue_ready(&self, ready: bool) {
        self.get_mut().queue.set_ready(ready);
    }

    /// Sets the enable bit.
    pub fn set_enabled(&self, on: bool) {
        self.get_mut().enabled = on;
    }
}

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
    /// Frames for this guest dropped because no RX queue was running (no
    /// VMM connected, or the driver had not started the device).
    pub not_running: AtomicU64,
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
    batch: Option<Batch>,
    map: HostMap,
    /// Head index of each chain of the batch, in order (one frame each).
    heads: Vec<u16>,
    /// Why each chain of the batch was refused, if it was: counted when
    /// the chain is returned, not each time a held batch walks it again.
    errs: Vec<Option<ChainError>>,
    /// Binding generation whose kicks are off (the forwarder polls).
    quiet: u64,
    /// Most chains one fetch takes.
    max_batch: usize,
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
            batch: None,
            map: HostMap::default(),
            heads: Vec::with_capacity(256),
            errs: Vec::with_capacity(256),
            quiet: u64::MAX,
            max_batch: vale::MAX_BATCH,
        }
    }

    /// Takes at most `n` chains (at least 1) per fetch.
    pub fn with_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
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

/// What a batch holds between `fetch`/first `push` and
/// `complete`/`publish`: the memory guard (so the rings and the buffers
/// stay mapped), the rings, and the queue's indexes at the batch start.
struct Batch {
    _guard: GuestMemoryLoadGuard<Mem>,
    mem: Arc<Mem>,
    ring: Ring,
    /// next_avail at the batch start.
    start: u16,
    /// next_used at the batch start.
    used: u16,
}

impl Batch {
    /// Reads the queue's state under the vring lock; None if the queue is
    /// not running or its rings are not in guest memory.
    fn open(b: &Binding, quiet: &mut u64, gen: u64) -> Option<Batch> {
        let guard = b.mem.memory();
        let mem = guard.clone().into_inner();
        let mut st = b.vring.get_mut();
        if !st.get_queue().ready() || !st.is_enabled() {
            return None;
        }
        let q = st.get_queue_mut();
        if *quiet != gen {
            // A new session starts with kicks on: the forwarder is polling
            // now, so tell the guest not to kick until it sleeps again.
            let _ = q.disable_notification(&*mem);
            *quiet = gen;
        }
        // SAFETY: the ring pointers are used only while this Batch, which
        // holds the memory guard, is alive.
        let ring = unsafe {
            Ring::new(
                &mem,
                q.size(),
                q.desc_table(),
                q.avail_ring(),
                q.used_ring(),
                q.event_idx_enabled(),
            )
        };
        let Some(ring) = ring else {
            tracing::debug!("virtqueue rings outside guest memory or misaligned");
            return None;
        };
        let (start, used) = (q.next_avail(), q.next_used());
        drop(st);
        Some(Batch {
            _guard: guard,
            mem,
            ring,
            start,
            used,
        })
    }

    /// Chains the driver made available past `from` (None: the avail index
    /// is more than a ring ahead, the guest broke its ring).
    fn pending(&self, from: u16) -> Option<u16> {
        let n = self.ring.avail_idx().wrapping_sub(from);
        (n <= self.ring.size()).then_some(n)
    }

    /// Returns `entries` (head, len) to the used ring, moves the queue's
    /// next_avail to `start + consumed` and signals the driver if it
    /// asked.
    fn close(self, b: &Binding, entries: impl Iterator<Item = (u16, u32)>, consumed: u16) {
        let mut new_used = self.used;
        for (head, len) in entries {
            // A head past the table cannot be returned: the guest broke
            // its own ring and the frame was dropped as a bad slot.
            if head < self.ring.size() {
                self.ring.put_used(new_used, head, len);
                new_used = new_used.wrapping_add(1);
            }
        }
        let notify = new_used != self.used && self.ring.publish_used(self.used, new_used);
        let call = {
            let mut st = b.vring.get_mut();
            let q = st.get_queue_mut();
            q.set_next_avail(self.start.wrapping_add(consumed));
            q.set_next_used(new_used);
            notify.then(|| st.call()).flatten()
        };
        signal(call);
    }
}

impl Source for TxQueue {
    fn fetch(&mut self, frags: &mut Vec<Frag>, max: usize) -> usize {
        self.heads.clear();
        self.errs.clear();
        self.ctl.busy.store(true, Ordering::SeqCst);
        let Some((gen, b)) = bound(&self.slot, &mut self.cache) else {
            self.ctl.busy.store(false, Ordering::SeqCst);
            return 0;
        };
        let Some(batch) = Batch::open(b, &mut self.quiet, gen) else {
            self.ctl.busy.store(false, Ordering::SeqCst);
            return 0;
        };
        self.map.refresh(&batch.mem);
        let Some(pending) = batch.pending(batch.start) else {
            tracing::debug!("guest TX avail index more than a ring ahead");
            self.ctl.busy.store(false, Ordering::SeqCst);
            return 0;
        };
        let n = (pending as usize).min(max).min(self.max_batch) as u16;
        // Heads first, their descriptors prefetched, then the walks: the
        // batch's descriptor misses overlap.
        for i in 0..n {
            let head = batch.ring.avail_entry(batch.start.wrapping_add(i));
            batch.ring.prefetch_desc(head);
            self.heads.push(head);
        }
        for i in 0..n as usize {
            let head = self.heads[i];
            let r = tx_frags(&self.map, &batch.ring, head, frags);
            if r.is_err() {
                frags.push(Frag::bad(0));
            }
            self.errs.push(r.err());
        }
        if n == 0 {
            self.ctl.busy.store(false, Ordering::SeqCst);
            return 0;
        }
        self.batch = Some(batch);
        n as usize
    }

    fn complete(&mut self, frames: usize) {
        if let (Some(batch), Some((_, b))) = (self.batch.take(), self.cache.as_ref()) {
            let frames = frames.min(self.heads.len());
            for (e, h) in self.errs[..frames].iter().zip(&self.heads) {
                if let Some(e) = e {
                    tracing::debug!(head = h, "guest TX chain dropped: {e}");
                    self.stats.count(*e);
                }
            }
            // Frames held back by a backpressure destination stay on the
            // avail ring: next_avail moves past the completed ones only.
            batch.close(
                b,
                self.heads[..frames].iter().map(|&h| (h, 0)),
                frames as u16,
            );
        }
        self.heads.clear();
        self.errs.clear();
        self.ctl.busy.store(false, Ordering::SeqCst);
    }
}

impl Drop for TxQueue {
    fn drop(&mut self) {
        // Chains popped and not returned would be lost descriptors.
        if self.batch.is_some() {
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
    /// The guest broke it: returned empty when its turn comes, and
    /// counted then.
    bad: Option<ChainError>,
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
    batch: Option<Batch>,
    map: HostMap,
    bufs: Vec<DstBuf>,
    /// Chains popped in this batch, in avail order.
    chains: Vec<RxChain>,
    /// First chain not yet consumed.
    next: usize,
    /// (head, bytes written) to return at publish.
    used: Vec<(u16, u32)>,
    /// The chains (indexes into `chains`) the frame being pushed takes.
    mine: Vec<usize>,
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

/// Most RX chains one frame may take (mergeable buffers).
const MAX_RX_CHAINS: usize = 64;

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
            batch: None,
            map: HostMap::default(),
            bufs: Vec::with_capacity(RX_BUNCH * 2),
            chains: Vec::with_capacity(RX_BUNCH * 2),
            next: 0,
            used: Vec::with_capacity(RX_BUNCH * 2),
            mine: Vec::with_capacity(MAX_RX_CHAINS),
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
        if self.batch.is_none() {
            self.ctl.busy.store(true, Ordering::SeqCst);
            let opened = match bound(&self.slot, &mut self.cache) {
                Some((gen, b)) => Batch::open(b, &mut self.quiet, gen),
                None => None,
            };
            let Some(batch) = opened else {
                self.ctl.busy.store(false, Ordering::SeqCst);
                return false;
            };
            self.size.store(batch.ring.size(), Ordering::Relaxed);
            self.map.refresh(&batch.mem);
            self.batch = Some(batch);
        }
        let Some(batch) = self.batch.as_ref() else {
            return false;
        };
        // One batch takes at most a ring's worth of chains: a guest that
        // keeps advancing avail_idx over broken chains cannot keep one
        // push looping.
        let room = (batch.ring.size() as usize).saturating_sub(self.chains.len());
        if room == 0 {
            return false;
        }
        let from = batch.start.wrapping_add(self.chains.len() as u16);
        let Some(pending) = batch.pending(from) else {
            tracing::debug!("guest RX avail index more than a ring ahead");
            return false;
        };
        let before = self.chains.len();
        let n = pending.min(RX_BUNCH as u16).min(room as u16);
        let mut heads = [0u16; RX_BUNCH];
        for i in 0..n {
            let head = batch.ring.avail_entry(from.wrapping_add(i));
            batch.ring.prefetch_desc(head);
            heads[i as usize] = head;
        }
        for &head in &heads[..n as usize] {
            let first = self.bufs.len();
            match rx_bufs(&self.map, &batch.ring, head, &mut self.bufs) {
                Ok(cap) => {
                    self.buf_hint = cap;
                    self.chains.push(RxChain {
                        head,
                        first,
                        nbufs: self.bufs.len() - first,
                        cap,
                        bad: None,
                    });
                }
                Err(e) => {
                    self.chains.push(RxChain {
                        head,
                        first,
                        nbufs: 0,
                        cap: 0,
                        bad: Some(e),
                    });
                }
            }
        }
        self.chains.len() > before
    }

    /// Undoes the takes of a frame that did not fit, except broken chains
    /// taken before its first good one: those go back to the guest (empty)
    /// now rather than being walked again by every later frame.
    fn untake(&mut self, start_next: usize, start_used: usize) {
        let lead = self.chains[start_next..self.next]
            .iter()
            .take_while(|c| c.bad.is_some())
            .count();
        self.next = start_next + lead;
        self.used.truncate(start_used + lead);
    }

    /// The index of the next chain not consumed, skipping (and returning
    /// empty) chains the guest broke. An index, so a frame does not copy
    /// the chain records it takes.
    fn take(&mut self) -> Option<usize> {
        loop {
            if self.next == self.chains.len() && !self.refill() {
                return None;
            }
            let i = self.next;
            self.next += 1;
            let c = &self.chains[i];
            if c.bad.is_none() {
                return Some(i);
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
        let total = VNET_HDR_LEN + flen.saturating_sub(skip);
        // The common case first: the next chain is one buffer that holds
        // the whole frame (every frame with big buffers, mergeable or
        // not), copied straight in with no chain list or cursor.
        if self.next == self.chains.len() {
            self.refill();
        }
        if let Some(c) = self.chains.get(self.next) {
            if c.bad.is_none() && c.nbufs == 1 && c.cap >= total {
                let (head, first) = (c.head, c.first);
                self.next += 1;
                let mut h = [0u8; VNET_HDR_LEN];
                let n = hdr.len().min(VNET_HDR_LEN);
                h[..n].copy_from_slice(&hdr[..n]);
                h[10..12].copy_from_slice(&1u16.to_le_bytes());
                let b = &mut self.bufs[first];
                let mut at = b.write_prefix(&h);
                let mut skip = skip;
                for f in frags {
                    let fl = f.len() as usize;
                    if skip >= fl {
                        skip -= fl;
                        continue;
                    }
                    at += b.copy_from(at, f, skip, fl - skip);
                    skip = 0;
                }
                self.used.push((head, at as u32));
                return Push::Done;
            }
        }
        let mrg = self.mrg.load(Ordering::Relaxed);
        let start_used = self.used.len();
        let start_next = self.next;
        self.mine.clear();
        let mut cap = 0usize;
        while cap < total {
            let Some(i) = self.take() else {
                // Un-take this frame's chains; they go back at publish if
                // no later frame fits them.
                self.untake(start_next, start_used);
                self.stats.no_rx_buffer.fetch_add(1, Ordering::Relaxed);
                return Push::Full;
            };
            let ccap = self.chains[i].cap;
            if (!mrg && ccap < total) || self.mine.len() == MAX_RX_CHAINS {
                // Without mergeable buffers a frame takes one chain.
                self.untake(start_next, start_used);
                self.stats.rx_too_small.fetch_add(1, Ordering::Relaxed);
                return Push::Full;
            }
            cap += ccap;
            self.mine.push(i);
        }
        let mut h = [0u8; VNET_HDR_LEN];
        let n = hdr.len().min(VNET_HDR_LEN);
        h[..n].copy_from_slice(&hdr[..n]);
        h[10..12].copy_from_slice(&(self.mine.len() as u16).to_le_bytes());
        let mut cur = FrameCursor::new(frags, skip, &h);
        for &i in &self.mine {
            let c = &self.chains[i];
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
        let Some(batch) = self.batch.take() else {
            return;
        };
        for c in &self.chains[..self.next] {
            if let Some(e) = c.bad {
                tracing::debug!(head = c.head, "guest RX chain dropped: {e}");
                self.stats.count(e);
            }
        }
        if let Some((_, b)) = self.cache.as_ref() {
            // Chains popped and not used go back: next_avail moves past the
            // consumed ones only.
            batch.close(b, self.used.iter().copied(), self.next as u16);
        }
        self.used.clear();
        self.chains.clear();
        self.bufs.clear();
        self.next = 0;
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
    acked: Arc<AtomicU64>,
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
    pub fn new(queues: Vec<RxQueue>, wake: Arc<EventFd>, acked: Arc<AtomicU64>) -> RxSet {
        RxSet {
            queues,
            wake,
            acked,
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
    // FNV's low bits are a plain XOR of the inputs' low bits, and Linux
    // hands connect() even ephemeral ports: without a full avalanche,
    // every TCP flow between two hosts lands on the same queue of two.
    // murmur3's finalizer mixes every bit into every other.
    key ^= key >> 33;
    key = key.wrapping_mul(0xff51_afd7_ed55_8ccd);
    key ^= key >> 33;
    key = key.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    key ^= key >> 33;
    key as usize
}

impl Sink for RxSet {
    fn offloads(&self) -> Option<u32> {
        Some(crate::device::rx_offloads(
            self.acked.load(Ordering::Acquire),
        ))
    }

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
                // No queue is running: the VMM is not connected, or the
                // driver has not started (or has stopped) the device. Not
                // the same trouble as a guest slow to post buffers.
                if let Some(q) = self.queues.first() {
                    q.stats.not_running.fetch_add(1, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp4(sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 54];
        f[0..6].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 0xb]);
        f[6..12].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 0xa]);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[23] = 6;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    fn hash(f: &[u8]) -> usize {
        flow_hash(&[Frag::from_slice(f, 0)], 0)
    }

    /// Client ports as Linux hands them to connect() (even, in steps of
    /// two) and consecutive ones spread over 2 and 4 queues, and both
    /// directions of a flow hash alike.
    #[test]
    fn flows_spread_and_are_symmetric() {
        for (n, step) in [(2usize, 1u16), (2, 2), (4, 1), (4, 2), (4, 4)] {
            let mut per = vec![0usize; n];
            for p in 0..256u16 {
                per[hash(&tcp4(40_000 + step * p, 5201)) % n] += 1;
            }
            let fair = 256 / n;
            assert!(per.iter().all(|&c| c > fair / 2), "{n} queues: {per:?}");
        }
        let mut back = tcp4(5201, 40_000);
        back[0..6].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 0xa]);
        back[6..12].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 0xb]);
        back[26..30].copy_from_slice(&[10, 0, 0, 2]);
        back[30..34].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(hash(&tcp4(40_000, 5201)), hash(&back));
    }
}
