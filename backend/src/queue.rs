//! A guest's virtqueues as VALE ports: the TX queue is a [`Source`] whose
//! frames point into guest memory, the RX queues are a [`Sink`].
//!
//! # Ownership and the lifetime invariant
//! Each queue is served by one forwarding thread, which owns its ring
//! state (`Live`: the rings translated, next_avail, next_used) between
//! batches; the session's [`Vring`] is read only when its generation
//! moved, and told the indexes once per batch without a lock (see
//! `crate::vring`).
//!
//! A batch takes a guest memory guard when it starts (`fetch`, or the
//! first `push`) and drops it when it ends (`complete`, `publish`), after
//! every used entry of the batch went back: slots that point into guest
//! memory never outlive their batch, so SET_MEM_TABLE and REM_MEM_REG
//! (which swap the map) can never unmap memory the engine is reading.
//! No lock is held across the copy: `stop_vring` waits for the `busy`
//! flag instead (see [`QueueCtl`]).

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netmap::sys::EventFd;
use vale::frag::{DstBuf, Frag};
use vale::{
    reader_takes, Arm, FrameCursor, Fused, Fuser, Push, Sink, Source, FUSE_HEAD, MAX_BATCH,
};
use vm_memory::{GuestAddressSpace, GuestMemoryLoadGuard};

use crate::chain::{rx_bufs, rx_single, tx_frags, tx_single};
use crate::dirty::DirtyLog;
use crate::types::ChainError;
use crate::vring::{HostMap, Ring};

pub use crate::types::{GuestMem, Mem, VNET_HDR_LEN};
pub use crate::vring::{Vring, VringConfig};
pub use vale::flow::flow_hash;

/// Interrupts the driver. The eventfd is shared with the VMM, which may
/// have made it blocking: `kick_untrusted` writes only when poll says it
/// cannot block, and the watchdog interrupts a write the VMM raced into
/// blocking (the port's call fds, that one and any later, are then never
/// written again; logged once). Called with no lock held.
pub fn signal(call: Option<&EventFd>) {
    let Some(c) = call else { return };
    if let Err(e) = c.kick_untrusted() {
        tracing::warn!("guest interrupts stop for good on this port: call fd: {e}");
    }
}

/// The handshake between the request thread (`stop_vring`) and the
/// forwarding thread that owns a queue: the forwarder sets `busy` before it
/// looks at the queue and clears it once the batch's chains are back, so
/// once the request thread marked the queue not ready (under the vring
/// lock) and saw `busy` clear, no chain of that queue is outstanding.
///
/// Setting `busy` and then reading the vring's generation is a store then
/// a load on two locations, which only SeqCst on both sides orders (the
/// request thread bumps the generation, SeqCst, then reads `busy`).
/// Clearing `busy` needs only Release: the request thread reads it with
/// Acquire and then sees every index the batch stored. A SeqCst (locked)
/// clear would wait for the batch's stores into the guest's rings, lines
/// the guest's core holds, to drain.
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

/// The forwarding thread's own state of a queue, kept between batches:
/// what it last read of the session's configuration, the rings
/// translated, and the indexes, which only it moves while the queue runs.
#[derive(Debug)]
struct Live {
    /// Slot and vring generations this was made at (`u64::MAX`: never).
    slot_gen: u64,
    vring_gen: u64,
    /// The session's configuration says the queue runs.
    running: bool,
    /// The rings, when the queue runs and they lie in guest memory.
    ring: Option<Ring>,
    next_avail: u16,
    next_used: u16,
    size: u16,
    call: Option<Arc<EventFd>>,
    /// The driver's kick eventfd, if the forwarder waits on it itself.
    kick: Option<Arc<EventFd>>,
    /// The guest may kick: a new session starts so, and a sleeping
    /// forwarder asks for it. The next batch turns kicks off again.
    kicks_on: bool,
    /// The migration's dirty log, while the driver logs, and the guest
    /// address the used ring is logged at.
    log: Option<Arc<DirtyLog>>,
    log_used: u64,
}

impl Live {
    /// Marks bytes `off..off + len` of the used ring dirty, while logging.
    fn log_used(&self, off: u64, len: u64) {
        if let Some(l) = &self.log {
            l.mark(self.log_used.wrapping_add(off), len);
        }
    }

    /// Marks the fields `set_notify` writes (used.flags, avail_event).
    fn log_notify(&self) {
        if self.log.is_some() {
            self.log_used(0, 2);
            self.log_used(4 + 8 * u64::from(self.size), 2);
        }
    }
}

impl Default for Live {
    fn default() -> Self {
        Live {
            slot_gen: u64::MAX,
            vring_gen: u64::MAX,
            running: false,
            ring: None,
            next_avail: 0,
            next_used: 0,
            size: 256,
            call: None,
            kick: None,
            kicks_on: true,
            log: None,
            log_used: 0,
        }
    }
}

/// One queue as its forwarding thread holds it: where the session
/// publishes it, the live state, and the guest memory table.
struct Owner {
    slot: Arc<VringSlot>,
    cache: Option<(u64, Binding)>,
    ctl: Arc<QueueCtl>,
    map: HostMap,
    live: Live,
}

/// What an open batch holds: the guest memory guard, so the rings and
/// buffers stay mapped until it ends.
struct Batch {
    _guard: GuestMemoryLoadGuard<Mem>,
}

impl Owner {
    fn new(slot: Arc<VringSlot>, ctl: Arc<QueueCtl>) -> Owner {
        Owner {
            slot,
            cache: None,
            ctl,
            map: HostMap::default(),
            live: Live::default(),
        }
    }

    /// Starts a batch: marks the queue busy, takes the memory guard and
    /// brings the live state up to date (reading the session's
    /// configuration only if it changed). None, and not busy, if the queue
    /// is not running.
    fn begin(&mut self) -> Option<Batch> {
        self.ctl.busy.store(true, Ordering::SeqCst);
        let r = self.sync();
        if r.is_none() {
            self.ctl.busy.store(false, Ordering::Release);
        }
        r
    }

    fn sync(&mut self) -> Option<Batch> {
        let Some((sgen, b)) = bound(&self.slot, &mut self.cache) else {
            // The session went: keep nothing of its VMM's.
            self.live.running = false;
            self.live.kick = None;
            self.live.call = None;
            self.live.log = None;
            return None;
        };
        // After `busy` (SeqCst both): either the session sees us busy, or
        // we see its change (see `QueueCtl`).
        let vgen = b.vring.gen();
        let guard = b.mem.memory();
        let new_map = !self.map.is_for(&guard) && self.map.refresh(&guard.clone().into_inner());
        let l = &mut self.live;
        if sgen != l.slot_gen || vgen != l.vring_gen {
            let cfg = b.vring.config();
            l.slot_gen = sgen;
            l.vring_gen = vgen;
            l.next_avail = b.vring.next_avail();
            l.next_used = b.vring.next_used();
            l.size = cfg.size;
            l.call = cfg.call.clone();
            l.kick = cfg.kick.clone();
            l.kicks_on = true;
            l.log = cfg.log.clone();
            l.log_used = cfg.log_used.unwrap_or(cfg.used);
            l.running = cfg.running();
            l.ring = if l.running {
                // SAFETY: the ring is used only within batches, each
                // holding a guard of the map `self.map` was made from; a
                // new map remakes the ring below before any use.
                unsafe { Ring::new(&self.map, &cfg) }
            } else {
                None
            };
            if cfg.running() && l.ring.is_none() {
                tracing::debug!("virtqueue rings outside guest memory or misaligned");
            }
        } else if new_map && l.running {
            // Same queue, new memory table (hot-plug, or a region the
            // rings were missing from arrived): translate again.
            let cfg = b.vring.config();
            // SAFETY: as above, for the new map.
            l.ring = unsafe { Ring::new(&self.map, &cfg) };
        }
        let ring = l.ring.as_ref()?;
        if l.kicks_on {
            // The forwarder polls while it has work: no kicks until it
            // sleeps again.
            ring.set_notify(false, l.next_avail);
            l.log_notify();
            l.kicks_on = false;
        }
        Some(Batch { _guard: guard })
    }

    /// Ends a batch: the indexes go to the session, then the queue is not
    /// busy. Signals the driver if `notify`.
    fn finish(&mut self, batch: Batch, notify: bool) {
        if let Some((_, b)) = self.cache.as_ref() {
            b.vring
                .store_indexes(self.live.next_avail, self.live.next_used);
        }
        drop(batch);
        self.ctl.busy.store(false, Ordering::Release);
        if notify {
            signal(self.live.call.as_deref());
        }
    }

    /// Ends a batch that moved no index: no store to the session's
    /// vring, no interrupt.
    fn end(&mut self, batch: Batch) {
        drop(batch);
        self.ctl.busy.store(false, Ordering::Release);
    }

    /// Runs `f` on the rings inside a batch of its own (the rings are
    /// guest memory: touched only while busy and guarded).
    fn with_ring<R>(&mut self, f: impl FnOnce(&Ring, &mut Live) -> R) -> Option<R> {
        let batch = self.begin()?;
        let ring = self.live.ring?;
        let r = f(&ring, &mut self.live);
        drop(batch);
        self.ctl.busy.store(false, Ordering::Release);
        Some(r)
    }

    /// Whether the queue runs, as of the session's configuration now.
    fn running(&mut self) -> bool {
        let Some((sgen, b)) = bound(&self.slot, &mut self.cache) else {
            return false;
        };
        if sgen == self.live.slot_gen && b.vring.gen() == self.live.vring_gen {
            return self.live.running;
        }
        b.vring.config().running()
    }

    /// Returns used entries `(head, len)` from `next_used` on, and says
    /// whether the driver asked to be interrupted for them.
    fn put_used(&mut self, entries: impl Iterator<Item = (u16, u32)>) -> bool {
        let Some(ring) = self.live.ring.as_ref() else {
            return false;
        };
        let old = self.live.next_used;
        let mut new = old;
        for (head, len) in entries {
            // A head past the table cannot be returned: the guest broke
            // its own ring and the frame was dropped as a bad slot.
            if head < ring.size() {
                ring.put_used(new, head, len);
                new = new.wrapping_add(1);
            }
        }
        self.live.next_used = new;
        if new == old {
            return false;
        }
        let notify = ring.publish_used(old, new);
        if self.live.log.is_some() {
            // The entries written (wrapping at most once: a batch returns
            // at most a ring's worth), then the index.
            let size = u64::from(ring.size());
            let count = u64::from(new.wrapping_sub(old)).min(size);
            let first = u64::from(old) % size;
            let run = count.min(size - first);
            self.live.log_used(4 + 8 * first, 8 * run);
            self.live.log_used(4, 8 * (count - run));
            self.live.log_used(2, 2);
        }
        notify
    }

    /// Chains the driver made available past `from` (None: the avail
    /// index is more than a ring ahead, the guest broke its ring).
    fn pending(&self, from: u16) -> Option<u16> {
        let ring = self.live.ring.as_ref()?;
        let n = ring.avail_idx().wrapping_sub(from);
        (n <= ring.size()).then_some(n)
    }
}

/// Marks `len` bytes written at host address `host` (guest memory in
/// `map`) in the dirty log.
#[cold]
fn log_buf(log: &DirtyLog, map: &HostMap, host: usize, len: usize) {
    if let Some(gpa) = map.gpa_of(host) {
        log.mark(gpa, len as u64);
    }
}

/// A MAC address the port is to announce (SEND_RARP), waiting for its
/// TX queue's next fetch.
/// Every TX fetch of pair 0 asks; the flag keeps that to one plain load
/// (no lock) unless an announcement waits.
#[derive(Debug, Default)]
pub struct Announcement {
    pending: AtomicBool,
    mac: std::sync::Mutex<Option<[u8; 6]>>,
}

impl Announcement {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<[u8; 6]>> {
        self.mac.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for `mac` to be announced (a later request replaces it).
    pub fn post(&self, mac: [u8; 6]) {
        *self.slot() = Some(mac);
        self.pending.store(true, Ordering::Release);
    }

    /// Whether an announcement waits (one plain load).
    fn waiting(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    fn take(&self) -> Option<[u8; 6]> {
        if !self.pending.load(Ordering::Acquire) {
            return None;
        }
        let mut slot = self.slot();
        self.pending.store(false, Ordering::Relaxed);
        slot.take()
    }

    /// Puts back an announcement a backpressure port held, unless a newer
    /// one came meanwhile.
    fn put_back(&self, mac: [u8; 6]) {
        self.slot().get_or_insert(mac);
        self.pending.store(true, Ordering::Release);
    }
}

/// A RARP request (RFC 903, op 3) from `mac` for itself, broadcast, behind
/// a zero virtio-net header: what a VMM asks the backend to send for a
/// guest that arrived by migration, so switches learn where it is now.
pub fn rarp_frame(mac: [u8; 6]) -> [u8; VNET_HDR_LEN + 60] {
    let mut f = [0u8; VNET_HDR_LEN + 60];
    let e = &mut f[VNET_HDR_LEN..];
    e[0..6].copy_from_slice(&[0xff; 6]);
    e[6..12].copy_from_slice(&mac);
    e[12..14].copy_from_slice(&0x8035u16.to_be_bytes());
    e[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    e[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    e[18] = 6;
    e[19] = 4;
    e[20..22].copy_from_slice(&3u16.to_be_bytes()); // reverse request
    e[22..28].copy_from_slice(&mac);
    e[32..38].copy_from_slice(&mac);
    f
}

/// A guest TX queue as a switch [`Source`].
pub struct TxQueue {
    own: Owner,
    stats: Arc<QueueStats>,
    batch: Option<Batch>,
    /// Head index of each chain of the batch, in order (one frame each).
    heads: Vec<u16>,
    /// The chains of the batch that were refused (index in `heads`, and
    /// why): counted when the chain is returned, not each time a held
    /// batch walks it again. Rare, so kept apart from `heads`.
    errs: Vec<(usize, ChainError)>,
    /// Most chains one fetch takes.
    max_batch: usize,
    /// Where SEND_RARP's announcements wait (pair 0's queue only).
    announce: Option<Arc<Announcement>>,
    /// The announcement frame of the open fetch, ahead of the guest's.
    rarp: Box<[u8; VNET_HDR_LEN + 60]>,
    /// The MAC it announces, if the open fetch has it.
    announcing: Option<[u8; 6]>,
}

impl std::fmt::Debug for TxQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxQueue")
            .field("in_batch", &self.heads.len())
            .finish_non_exhaustive()
    }
}

impl TxQueue {
    /// The source for the queue published in `slot`.
    pub fn new(slot: Arc<VringSlot>, ctl: Arc<QueueCtl>, stats: Arc<QueueStats>) -> Self {
        TxQueue {
            own: Owner::new(slot, ctl),
            stats,
            batch: None,
            heads: Vec::with_capacity(256),
            errs: Vec::new(),
            max_batch: vale::MAX_BATCH,
            announce: None,
            rarp: Box::new([0; VNET_HDR_LEN + 60]),
            announcing: None,
        }
    }

    /// Sends the announcements posted in `a` ahead of the guest's frames.
    pub fn with_announce(mut self, a: Arc<Announcement>) -> Self {
        self.announce = Some(a);
        self
    }

    /// Takes at most `n` chains (at least 1) per fetch.
    pub fn with_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Asks the guest to kick on new chains; returns true if chains arrived
    /// meanwhile (do not sleep).
    pub fn enable_notification(&mut self) -> bool {
        self.own
            .with_ring(|ring, live| {
                live.kicks_on = true;
                let more = ring.set_notify(true, live.next_avail);
                live.log_notify();
                more
            })
            .unwrap_or(false)
    }

    /// Tells the guest not to kick (the forwarder is polling).
    pub fn disable_notification(&mut self) {
        // Opening a batch turns kicks off.
        let _ = self.own.with_ring(|_, _| ());
    }

    /// Walks TX chain `head`, the `i`th of the batch, the long way
    /// (several descriptors, indirect, or broken): out of line, so the
    /// common chain's loop keeps its registers.
    #[inline(never)]
    fn walk_tx(&mut self, ring: &Ring, i: usize, head: u16, frags: &mut Vec<Frag>) {
        if let Err(e) = tx_frags(&self.own.map, ring, head, frags) {
            frags.push(Frag::bad(0));
            self.errs.push((i, e));
        }
    }
}

impl Source for TxQueue {
    fn fuses(&self) -> bool {
        true
    }

    fn fuse(&mut self, fuser: &mut dyn Fuser) -> Fused {
        let mut run = Fused::default();
        // An announcement goes first, the general way.
        if self.announce.as_ref().is_some_and(|a| a.waiting()) {
            run.rest = true;
            return run;
        }
        let Some(batch) = self.own.begin() else {
            // Not running: the general fetch would find nothing either.
            run.empty = true;
            return run;
        };
        let start = self.own.live.next_avail;
        let (Some(ring), Some(pending)) = (self.own.live.ring, self.own.pending(start)) else {
            // Broken: the general fetch says so.
            run.rest = true;
            self.own.finish(batch, false);
            return run;
        };
        let n = (pending as usize).min(self.max_batch).min(MAX_BATCH) as u16;
        if n == 0 {
            // The common poll: nothing posted, nothing to tell anyone.
            run.empty = true;
            self.own.end(batch);
            return run;
        }
        self.heads.clear();
        self.errs.clear();
        // Frame by frame: its chain, its header (copied once: the guest
        // may be rewriting it), its copy. Walking the whole batch and
        // reading every header before the first copy, as the general path
        // does, measured 0.79x this in the loopback at 64 B (the switch
        // core then idled a quarter of the time while the guests' side
        // ran slower; docs/benchmarks.md, "Stop 31").
        let mut h = [0u8; FUSE_HEAD];
        let mut hd = ring.avail_entry(start);
        let first = tx_single(&self.own.map, &ring, hd).filter(|f| f.read_prefix(&mut h));
        let decided = match first {
            Some(_) => fuser.decide(&h),
            None => None,
        };
        let (Some(mut f), Some((rules, set))) = (
            first,
            decided.and_then(|(rules, sink)| {
                let set = sink.as_any_mut()?.downcast_mut::<RxSet>()?;
                Some((rules, set))
            }),
        ) else {
            run.rest = true;
            self.own.finish(batch, false);
            return run;
        };
        let max = (n as usize).min(rules.max);
        ring.prefetch_used(self.own.live.next_used, max as u16);
        let mut k = 0;
        // Frames walked (descriptor read and checked, first lines
        // prefetched) TX_AHEAD ahead of their copy, so that their lines
        // travel while earlier ones are copied, and the descriptor after
        // them prefetched. With the driver on VIRTIO_F_IN_ORDER, two ahead
        // instead of one measured 1.03x the loopback rate at 64 B, four
        // 1.12x that, eight no more than four. Without IN_ORDER two ahead
        // measured 0.80x: the driver, slower there, then set the pace
        // (docs/benchmarks.md, "Stop 32"). Each frame is walked once: the
        // walks wait in `ahead`, frame j in slot j % TX_AHEAD.
        let walk = |j: usize| {
            let e = ring.avail_entry(start.wrapping_add(j as u16));
            tx_single(&self.own.map, &ring, e).map(|g| (e, g))
        };
        let mut ahead: [Option<(u16, Frag<'static>)>; TX_AHEAD] = [None; TX_AHEAD];
        for j in 1..TX_AHEAD.min(max) {
            ahead[j % TX_AHEAD] = walk(j);
        }
        if TX_AHEAD < max {
            ring.prefetch_desc(ring.avail_entry(start.wrapping_add(TX_AHEAD as u16)));
        }
        loop {
            let vh = h.first_chunk::<VNET_HDR_LEN>().copied().unwrap_or_default();
            if k + TX_AHEAD < max {
                // Into the slot frame k left.
                ahead[k % TX_AHEAD] = walk(k + TX_AHEAD);
                if k + TX_AHEAD + 1 < max {
                    ring.prefetch_desc(
                        ring.avail_entry(start.wrapping_add((k + TX_AHEAD + 1) as u16)),
                    );
                }
            }
            if !same_macs(&h, &rules.macs)
                || !reader_takes(vh[0], vh[1], rules.offloads)
                || !set.push_fused(&f, &vh)
            {
                break;
            }
            self.heads.push(hd);
            run.bytes += u64::from(f.len());
            k += 1;
            if k == max {
                break;
            }
            match ahead[k % TX_AHEAD].take() {
                Some((e, g)) if g.read_prefix(&mut h) => {
                    hd = e;
                    f = g;
                }
                _ => break,
            }
        }
        run.rest = k < n as usize && k < rules.max;
        run.frames = k;
        self.batch = Some(batch);
        run
    }

    fn arm(&mut self) -> bool {
        !self.enable_notification()
    }

    fn disarm(&mut self) {
        self.disable_notification();
    }

    fn doorbell(&self) -> Option<Arc<EventFd>> {
        // Only a running queue's: `arm` just brought `live` up to date;
        // a queue that stopped since (or whose session went) lends no fd
        // of its VMM to a sleeping forwarder.
        if self.own.live.running {
            self.own.live.kick.clone()
        } else {
            None
        }
    }

    fn fetch(&mut self, frags: &mut Vec<Frag>, max: usize) -> usize {
        self.heads.clear();
        self.errs.clear();
        let mut extra = 0;
        if let Some(mac) = self.announce.as_ref().and_then(|a| a.take()) {
            *self.rarp = rarp_frame(mac);
            // SAFETY: the frame is the queue's own heap buffer, left
            // unchanged until `complete` (the Source contract's span).
            frags.push(unsafe { Frag::new(self.rarp.as_ptr(), self.rarp.len() as u16, 0) });
            self.announcing = Some(mac);
            extra = 1;
        }
        let Some(batch) = self.own.begin() else {
            return extra;
        };
        let start = self.own.live.next_avail;
        let (Some(ring), Some(pending)) = (self.own.live.ring, self.own.pending(start)) else {
            tracing::debug!("guest TX avail index more than a ring ahead");
            self.own.finish(batch, false);
            return extra;
        };
        let n = (pending as usize)
            .min(max.saturating_sub(extra))
            .min(self.max_batch) as u16;
        if n == 0 {
            self.own.finish(batch, false);
            return extra;
        }
        // The used entries this batch will write (measured +2 % at 60 B
        // on huge pages, docs/benchmarks.md, "Stop 28").
        ring.prefetch_used(self.own.live.next_used, n);
        // Heads first, each head's descriptor flags read (a demand read,
        // so the batch's descriptor misses overlap here rather than
        // waiting in the walks one after the other) and an indirect
        // table's first lines prefetched; then the walks, which read each
        // descriptor again and check it (a head out of range is theirs to
        // refuse). A pass reading them, where the prefetch had been,
        // measured 1.04-1.07 at 60 B on huge pages, most when the cores
        // are far apart, and 1.01 at 1514 B in indirect chains; this
        // read in the heads loop is level with that pass and costs less
        // in process (docs/benchmarks.md, "Stop 29").
        for i in 0..n {
            let head = ring.avail_entry(start.wrapping_add(i));
            if head < ring.size() && ring.desc_flags(head) & crate::vring::F_INDIRECT != 0 {
                let d = ring.desc(head);
                if let Some((p, len)) = self.own.map.range(d.addr, u64::from(d.len)) {
                    let p = p as usize;
                    crate::vring::prefetch_lines(p, p + (len as usize).min(256));
                }
            }
            self.heads.push(head);
        }
        for i in 0..n as usize {
            let head = self.heads[i];
            if let Some(f) = tx_single(&self.own.map, &ring, head) {
                frags.push(f);
                continue;
            }
            self.walk_tx(&ring, i, head, frags);
        }
        self.batch = Some(batch);
        n as usize + extra
    }

    fn complete(&mut self, frames: usize) {
        let frames = match self.announcing.take() {
            Some(mac) if frames == 0 => {
                // Held by a backpressure port: announce at the next fetch.
                if let Some(a) = &self.announce {
                    a.put_back(mac);
                }
                0
            }
            Some(_) => frames - 1,
            None => frames,
        };
        if let Some(batch) = self.batch.take() {
            let frames = frames.min(self.heads.len());
            for &(i, e) in self.errs.iter().take_while(|e| e.0 < frames) {
                tracing::debug!(head = self.heads[i], "guest TX chain dropped: {e}");
                self.stats.count(e);
            }
            // Frames held back by a backpressure destination stay on the
            // avail ring: next_avail moves past the completed ones only.
            let notify = self
                .own
                .put_used(self.heads[..frames].iter().map(|&h| (h, 0)));
            self.own.live.next_avail = self.own.live.next_avail.wrapping_add(frames as u16);
            self.own.finish(batch, notify);
        }
        self.heads.clear();
        self.errs.clear();
    }
}

/// Whether the frame whose first bytes are `h` (behind its 12-byte
/// header) starts with `macs`: two integer compares, not a loop.
#[inline(always)]
fn same_macs(h: &[u8; FUSE_HEAD], macs: &[u8; 12]) -> bool {
    let word = |b: &[u8], at: usize| u64::from_ne_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
    let half = |b: &[u8], at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]));
    word(h, VNET_HDR_LEN) == word(macs, 0) && half(h, VNET_HDR_LEN + 8) == half(macs, 8)
}

impl Drop for TxQueue {
    fn drop(&mut self) {
        // Chains popped and not returned would be lost descriptors.
        if self.batch.is_some() || self.announcing.is_some() {
            // The announcement, if the fetch had one, counts as a frame.
            self.complete(self.heads.len() + usize::from(self.announcing.is_some()));
        }
    }
}

/// An RX chain popped for the batch: its head and its buffers.
#[derive(Debug, Clone, Copy)]
struct RxChain {
    head: u16,
    /// The guest broke it: returned empty when its turn comes, and
    /// counted then (why is in `RxQueue::errs`).
    bad: bool,
    /// Its buffers: the one at host address `one` if not 0 (the common
    /// chain, kept out of `bufs` so a frame reads one record), else
    /// `bufs[first..first + nbufs]`.
    nbufs: u16,
    first: u32,
    /// Bytes the buffers hold.
    cap: u32,
    one: usize,
}

impl RxChain {
    /// Its buffers, pointing into guest memory mapped while the batch
    /// lasts.
    fn bufs<'b>(&self, bufs: &'b mut [DstBuf<'static>]) -> ChainBufs<'b> {
        match self.one_buf() {
            Some(b) => ChainBufs::One(b),
            None => ChainBufs::Many(&mut bufs[self.first as usize..][..self.nbufs as usize]),
        }
    }

    /// Starts taking the lines of its one buffer's first `len` bytes for
    /// writing: a 60-byte frame's header and data are often two lines, as
    /// the buffer starts where the guest's header goes, not on a line
    /// boundary; a 1514-byte frame's are 24 or 25. Every line, not the
    /// first few: the copy's stores wait in the store buffer for their
    /// lines, the next frame's header (built on the stack, loaded back)
    /// waits behind them, and the core's own store prefetching covers too
    /// few lines to keep a long copy from stalling (measured,
    /// docs/benchmarks.md, "Stop 28").
    #[inline(always)]
    fn prefetch(&self, len: usize) {
        if self.one != 0 {
            prefetch_buf(self.one, self.cap as usize, len);
        }
    }

    /// Its one buffer, if it is a one-buffer chain.
    #[inline(always)]
    fn one_buf(&self) -> Option<DstBuf<'static>> {
        // SAFETY: `rx_single` found `cap` bytes at `one` in one mapped
        // region of guest memory, and the batch's guard keeps it mapped
        // until the chain is returned at publish.
        (self.one != 0).then(|| unsafe { DstBuf::new(self.one as *mut u8, self.cap as usize) })
    }
}

/// Starts taking for writing the lines of the first `len` bytes (at most
/// `cap`, at most [`RX_PREFETCH_MAX`]) of the RX buffer at host address
/// `addr`.
#[inline(always)]
fn prefetch_buf(addr: usize, cap: usize, len: usize) {
    let len = len.min(cap).min(RX_PREFETCH_MAX);
    crate::vring::prefetch_write_lines(addr, addr + len);
}

/// The buffers of one RX chain.
enum ChainBufs<'b> {
    One(DstBuf<'static>),
    Many(&'b mut [DstBuf<'static>]),
}

/// One guest RX queue.
///
/// Chains are popped in bunches and returned once per batch (at
/// `publish`), since every locked instruction waits for the frame copies'
/// stores into guest memory to drain. Chains popped and not used are
/// un-popped at `publish`, in order; `busy` keeps `stop_vring` waiting
/// while any are out.
pub struct RxQueue {
    own: Owner,
    stats: Arc<QueueStats>,
    mrg: Arc<AtomicBool>,
    size: AtomicU16,
    batch: Option<Batch>,
    /// The batch's RX buffers (guest memory, kept mapped by the batch's
    /// guard).
    bufs: Vec<DstBuf<'static>>,
    /// Chains popped in this batch, in avail order.
    chains: Vec<RxChain>,
    /// Why the broken ones among them were refused (index in `chains`).
    errs: Vec<(usize, ChainError)>,
    /// First chain not yet consumed.
    next: usize,
    /// (head, bytes written) to return at publish.
    used: Vec<(u16, u32)>,
    /// The chains (indexes into `chains`) the frame being pushed takes.
    mine: Vec<usize>,
    /// Bytes of the last chain seen, to guess slots per frame.
    buf_hint: usize,
    /// Whether the lines a guest reads first are demoted after the copy
    /// (see `push_one`).
    demote: bool,
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

/// How many frames ahead of the one being copied a short frame's RX
/// buffer is prefetched for writing on huge pages (see `RxQueue::push`).
const RX_PREFETCH_AHEAD: usize = 3;

/// Bytes of a buffer prefetched at most, and of a frame in pieces read
/// ahead (`push_chains`): a DPDK mbuf's data room, more than a full-size
/// frame with its header (1526 B). The rest of a longer buffer or frame
/// (a GSO frame's) is left to the copy: prefetching a whole 64 KiB would
/// queue a thousand prefetches ahead of it.
const RX_PREFETCH_MAX: usize = 2048;

/// How many frames ahead of its copy a fused run walks a frame (reads
/// and checks its descriptor, prefetches its first lines).
const TX_AHEAD: usize = 4;

/// Frames of at most this many bytes (virtio-net header included) are
/// short: on huge pages their buffers are prefetched
/// [`RX_PREFETCH_AHEAD`] frames ahead. Longer frames, and every frame on
/// 4 KiB pages, prefetch the buffer they are about to be copied into.
/// On huge pages, 212 B with the header measured 13 % faster three ahead
/// and 520 B 4 % faster with the buffer about to be written
/// (docs/benchmarks.md, "Stop 28"); where between the two the line
/// belongs is not tuned.
const RX_PREFETCH_SHORT: usize = 256;

impl RxQueue {
    /// The sink side of the queue published in `slot`; `mrg` follows the
    /// acked `MRG_RXBUF`.
    pub fn new(
        slot: Arc<VringSlot>,
        ctl: Arc<QueueCtl>,
        stats: Arc<QueueStats>,
        mrg: Arc<AtomicBool>,
    ) -> Self {
        RxQueue {
            own: Owner::new(slot, ctl),
            stats,
            mrg,
            size: AtomicU16::new(256),
            batch: None,
            bufs: Vec::with_capacity(RX_BUNCH * 2),
            chains: Vec::with_capacity(RX_BUNCH * 2),
            errs: Vec::new(),
            next: 0,
            used: Vec::with_capacity(RX_BUNCH * 2),
            mine: Vec::with_capacity(MAX_RX_CHAINS),
            buf_hint: 1518,
            demote: true,
        }
    }

    /// Whether the header's lines are sent to the shared cache after each
    /// copy (on by default, for a guest on another core; see
    /// `docs/benchmarks.md`, "Stop 32"). Off only pays where the guest
    /// runs on the switch's own core, as in the in-process bench.
    pub fn with_demote(mut self, on: bool) -> Self {
        self.demote = on;
        self
    }

    /// Whether the guest enabled the queue.
    pub fn ready(&mut self) -> bool {
        self.own.running()
    }

    /// Chains the guest posted and the switch may fill.
    fn avail(&mut self) -> usize {
        let pending = self.chains.len() - self.next;
        if self.batch.is_some() {
            let from = self
                .own
                .live
                .next_avail
                .wrapping_add(self.chains.len() as u16);
            return pending + self.own.pending(from).unwrap_or(0) as usize;
        }
        let posted = self.own.with_ring(|ring, live| {
            let n = ring.avail_idx().wrapping_sub(live.next_avail);
            n.min(ring.size())
        });
        self.size.store(self.own.live.size, Ordering::Relaxed);
        posted.unwrap_or(0) as usize
    }

    /// Arms the guest's RX kick (for backpressure); true if buffers are
    /// already there.
    fn arm(&mut self) -> bool {
        if self.batch.is_some() {
            return true;
        }
        self.own
            .with_ring(|ring, live| {
                live.kicks_on = true;
                let more = ring.set_notify(true, live.next_avail);
                live.log_notify();
                more
            })
            .unwrap_or(false)
    }

    /// Pops up to `RX_BUNCH` more chains. False if none came.
    fn refill(&mut self) -> bool {
        if self.batch.is_none() {
            let Some(batch) = self.own.begin() else {
                return false;
            };
            self.size.store(self.own.live.size, Ordering::Relaxed);
            self.batch = Some(batch);
        }
        let Some(ring) = self.own.live.ring else {
            return false;
        };
        // One batch takes at most a ring's worth of chains: a guest that
        // keeps advancing avail_idx over broken chains cannot keep one
        // push looping.
        let room = (ring.size() as usize).saturating_sub(self.chains.len());
        if room == 0 {
            return false;
        }
        let from = self
            .own
            .live
            .next_avail
            .wrapping_add(self.chains.len() as u16);
        let Some(pending) = self.own.pending(from) else {
            tracing::debug!("guest RX avail index more than a ring ahead");
            return false;
        };
        let before = self.chains.len();
        let n = pending.min(RX_BUNCH as u16).min(room as u16);
        // The used entries these chains will take, as for TX.
        ring.prefetch_used(self.own.live.next_used.wrapping_add(before as u16), n);
        let mut heads = [0u16; RX_BUNCH];
        for i in 0..n {
            let head = ring.avail_entry(from.wrapping_add(i));
            ring.prefetch_desc(head);
            heads[i as usize] = head;
        }
        for &head in &heads[..n as usize] {
            if let Some((one, cap)) = rx_single(&self.own.map, &ring, head) {
                self.buf_hint = cap as usize;
                self.chains.push(RxChain {
                    head,
                    bad: false,
                    nbufs: 1,
                    first: 0,
                    cap,
                    one: one as usize,
                });
                continue;
            }
            self.pop_walked(&ring, head);
        }
        self.chains.len() > before
    }

    /// Pops chain `head` the long way (several buffers, indirect, or
    /// broken): out of line, so the common chain's loop keeps its
    /// registers.
    #[inline(never)]
    fn pop_walked(&mut self, ring: &Ring, head: u16) {
        let first = self.bufs.len();
        let (cap, bad) = match rx_bufs(&self.own.map, ring, head, &mut self.bufs) {
            Ok(cap) => {
                self.buf_hint = cap;
                (cap, false)
            }
            Err(e) => {
                self.errs.push((self.chains.len(), e));
                (0, true)
            }
        };
        // A chain holds at most MAX_FRAGS buffers of at most 64 KiB.
        self.chains.push(RxChain {
            head,
            bad,
            nbufs: (self.bufs.len() - first) as u16,
            first: first as u32,
            cap: cap.min(u32::MAX as usize) as u32,
            one: 0,
        });
    }

    /// Undoes the takes of a frame that did not fit, except broken chains
    /// taken before its first good one: those go back to the guest (empty)
    /// now rather than being walked again by every later frame.
    fn untake(&mut self, start_next: usize, start_used: usize) {
        let lead = self.chains[start_next..self.next]
            .iter()
            .take_while(|c| c.bad)
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
            if !c.bad {
                return Some(i);
            }
            // A used entry of length 0 is how a device says "nothing
            // here" without losing the descriptor.
            self.used.push((c.head, 0));
        }
    }

    /// A frame that takes more than one buffer, or chains not yet
    /// walked: kept out of `push` so the common frame's call stays small.
    #[inline(never)]
    fn push_chains(&mut self, frags: &[Frag], skip: usize, hdr: &[u8], total: usize) -> Push {
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
            let ccap = self.chains[i].cap as usize;
            if (!mrg && ccap < total) || self.mine.len() == MAX_RX_CHAINS {
                // Without mergeable buffers a frame takes one chain.
                self.untake(start_next, start_used);
                self.stats.rx_too_small.fetch_add(1, Ordering::Relaxed);
                return Push::Full;
            }
            cap += ccap;
            self.mine.push(i);
        }
        let h = vnet_hdr(hdr, self.mine.len() as u16);
        // A frame that came in pieces (a DPDK mbuf chain, indirect
        // descriptors): its own lines too, up to RX_PREFETCH_MAX. In the
        // loopback such a frame was cold in this core's cache where a
        // frame in one piece was not, and the copy reads it a piece at a
        // time (1.04 at 1514 B in 396 B pieces; one piece measured 0.97
        // in stop 28; docs/benchmarks.md, "Stop 29").
        if frags.len() > 1 {
            let mut left = RX_PREFETCH_MAX;
            for f in frags {
                let n = (f.len() as usize).min(left);
                crate::vring::prefetch_lines(f.addr(), f.addr() + n);
                left -= n;
                if left == 0 {
                    break;
                }
            }
        }
        let mut cur = FrameCursor::new(frags, skip, &h);
        for &i in &self.mine {
            let c = self.chains[i];
            let mut written = 0usize;
            let mut fill = |b: &mut DstBuf<'static>| {
                if cur.remaining() == 0 {
                    return;
                }
                // Each buffer's lines for writing just before its copy,
                // as `push` does for one buffer: a frame spread over small
                // buffers otherwise takes them one read-for-ownership at a
                // time (1514 B into 396 B buffers: 7 % faster on 4 KiB
                // pages, 48 % on huge pages; docs/benchmarks.md, "Stop 29").
                prefetch_buf(b.addr(), b.cap(), cur.remaining());
                let n = cur.fill(b);
                if let Some(log) = &self.own.live.log {
                    log_buf(log, &self.own.map, b.addr(), n);
                }
                written += n;
            };
            match c.bufs(&mut self.bufs) {
                ChainBufs::One(mut b) => fill(&mut b),
                ChainBufs::Many(bufs) => bufs.iter_mut().for_each(fill),
            }
            self.used.push((c.head, written as u32));
        }
        Push::Done
    }

    /// The common frame: the next chain is one buffer that holds all
    /// `total` bytes (every frame with big buffers, mergeable or not),
    /// copied straight in with no chain list or cursor. False, with
    /// nothing taken, otherwise.
    #[inline(always)]
    fn push_one(&mut self, frags: &[Frag], skip: usize, hdr: &[u8], total: usize) -> bool {
        if self.next == self.chains.len() {
            self.refill();
        }
        if let Some(c) = self.chains.get(self.next) {
            if let (Some(mut b), true) = (c.one_buf(), c.cap as usize >= total) {
                let head = c.head;
                self.next += 1;
                // The buffer's lines for writing, each of them, so that
                // their reads-for-ownership go out together rather than one
                // by one as the copy's stores reach them. On huge pages a
                // short frame's lines are taken three frames ahead
                // instead (the frame being copied stands for the one the
                // buffer will take); on 4 KiB pages that cost a fifth of
                // the 60 B rate, and for long frames on either it measured
                // slower than the buffer about to be written
                // (docs/benchmarks.md, "Stop 28").
                let ahead = if total <= RX_PREFETCH_SHORT && self.own.map.huge_pages() {
                    RX_PREFETCH_AHEAD
                } else {
                    0
                };
                if let Some(c) = self.chains.get(self.next + ahead - 1) {
                    c.prefetch(total);
                }
                let mut at = b.write_prefix(&vnet_hdr(hdr, 1));
                if let [f] = frags {
                    // One fragment (every linear frame): no walk.
                    at += b.copy_from(at, f, skip, total - VNET_HDR_LEN);
                } else {
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
                }
                if let Some(log) = &self.own.live.log {
                    log_buf(log, &self.own.map, b.addr(), at);
                }
                // The header's lines and the frame's first, which the
                // driver reads next, sent to the shared cache: 1.22x the
                // loopback rate at 64 B (one line only: 0.95x that). Not
                // the rest of a long frame: a driver that never reads it
                // (DPDK forwarding) leaves those lines here for the next
                // frame this buffer takes, and demoting them all measured
                // 0.44x at 1514 B, these lines (two, or three where the
                // header starts late in its line) 1.03x. Where the reader
                // is this core (the in-process bench) it costs: the lines
                // come back from the shared cache, about 9 ns a frame at
                // 60 B (docs/benchmarks.md, "Stop 32").
                if self.demote {
                    crate::vring::demote_lines(b.addr(), b.addr() + at.min(VNET_HDR_LEN + 64));
                }
                self.used.push((head, at as u32));
                return true;
            }
        }
        false
    }
}

/// The virtio-net header a guest gets: the engine's (`hdr`, made once per
/// frame) with `num_buffers` filled in.
#[inline(always)]
fn vnet_hdr(hdr: &[u8], num_buffers: u16) -> [u8; VNET_HDR_LEN] {
    // The engine gives a VM port a header of its own length: a fixed
    // 10-byte copy (register moves), the odd length out of line, or the
    // compiler makes both one libc call of a length it cannot see.
    #[cold]
    #[inline(never)]
    fn short(hdr: &[u8]) -> [u8; 10] {
        let mut h = [0u8; 10];
        let n = hdr.len().min(10);
        h[..n].copy_from_slice(&hdr[..n]);
        h
    }
    let head = match hdr.first_chunk::<10>() {
        Some(head) => *head,
        None => short(hdr),
    };
    let mut h = [0u8; VNET_HDR_LEN];
    h[..10].copy_from_slice(&head);
    h[10..12].copy_from_slice(&num_buffers.to_le_bytes());
    h
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

    #[inline]
    fn push(&mut self, frags: &[Frag], skip: usize, hdr: &[u8]) -> Push {
        // One fragment (every linear frame) without the summing loop.
        let flen: usize = match frags {
            [f] => f.len() as usize,
            _ => frags.iter().map(|f| f.len() as usize).sum(),
        };
        // The header this guest gets: the engine's copy (made once), with
        // num_buffers ours to fill.
        let total = VNET_HDR_LEN + flen.saturating_sub(skip);
        if self.push_one(frags, skip, hdr, total) {
            return Push::Done;
        }
        self.push_chains(frags, skip, hdr, total)
    }

    fn publish(&mut self) {
        let Some(batch) = self.batch.take() else {
            return;
        };
        for &(i, e) in self.errs.iter().take_while(|e| e.0 < self.next) {
            tracing::debug!(head = self.chains[i].head, "guest RX chain dropped: {e}");
            self.stats.count(e);
        }
        self.errs.clear();
        // Chains popped and not used go back: next_avail moves past the
        // consumed ones only.
        let notify = self.own.put_used(self.used.iter().copied());
        self.own.live.next_avail = self.own.live.next_avail.wrapping_add(self.next as u16);
        self.own.finish(batch, notify);
        self.used.clear();
        self.chains.clear();
        self.bufs.clear();
        self.next = 0;
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

    /// Takes one frame of a fused run: `f`, a whole frame behind a
    /// 12-byte header, whose header the guest gets as `vh` (the copy the
    /// run checked). False, with nothing taken, if the frame is not the
    /// common case of the queue its flow goes to.
    #[inline(always)]
    fn push_fused(&mut self, f: &Frag, vh: &[u8; VNET_HDR_LEN]) -> bool {
        if self.live.is_empty() {
            self.refresh();
        }
        let frags = std::slice::from_ref(f);
        let Some(i) = self.pick(frags, VNET_HDR_LEN) else {
            return false;
        };
        self.queues[i].push_one(frags, VNET_HDR_LEN, vh, f.len() as usize)
    }

    fn pick(&self, frags: &[Frag], skip: usize) -> Option<usize> {
        match self.live.len() {
            0 => None,
            1 => Some(self.live[0]),
            n => Some(self.live[flow_hash(frags, skip) % n]),
        }
    }
}

impl Sink for RxSet {
    fn offloads(&self) -> Option<u32> {
        Some(crate::types::rx_offloads(
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

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
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

    #[test]
    fn the_guest_header_is_the_engines_with_num_buffers() {
        let engine: Vec<u8> = (1..=12).collect();
        let h = vnet_hdr(&engine, 3);
        assert_eq!(h[..10], engine[..10], "flags, GSO fields, csum offsets");
        assert_eq!(h[10..], 3u16.to_le_bytes(), "num_buffers is the sink's");
        // A shorter header (none, or the kernel's 10 bytes) is padded
        // with zeros, not read past.
        assert_eq!(vnet_hdr(&[], 1), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(
            vnet_hdr(&[1, 2, 3], 0x102),
            [1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 2, 1]
        );
    }
}
