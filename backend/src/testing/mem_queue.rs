//! A split virtqueue in process memory, driven by hand: the guest side of
//! one queue without a VMM, a socket or a thread, for benchmarks of the
//! data path ([`TxQueue`](crate::queue::TxQueue) and
//! [`RxQueue`](crate::queue::RxQueue) see a queue bound as a vhost-user
//! session binds it).
//!
//! Layout, from [`GUEST_MEM_BASE`]: the descriptor table, the avail ring
//! and the used ring, each on its own pages, then one buffer of `buf_len`
//! bytes per descriptor. Every chain is one descriptor, and descriptor `i`
//! always points at buffer `i`: the guest posts descriptor ids from a FIFO
//! free list and takes them back from the used ring, so a device that
//! returns chains in order sees the ids cycle through the table.
//!
//! Ring indexes are stored and loaded with the orderings the virtio spec
//! asks for; the avail entries of one post go in with one copy.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::GUEST_MEM_BASE;
use crate::queue::{Binding, GuestMem, Mem, Vring, VringSlot};

const PAGE: u64 = 4096;
const F_WRITE: u16 = 2;

/// Host address of guest `addr` in `mem` (inside it, by construction).
fn host(mem: &Mem, addr: u64) -> *mut u8 {
    mem.get_host_address(GuestAddress(addr))
        .expect("ring inside guest memory")
}

fn page_up(n: u64) -> u64 {
    n.div_ceil(PAGE) * PAGE
}

/// Which way the queue carries frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Guest TX: the device reads the buffers.
    Tx,
    /// Guest RX: the device writes the buffers.
    Rx,
}

/// One split virtqueue in its own guest memory, and the guest's view of it.
pub struct MemQueue {
    mem: Mem,
    gmem: GuestMem,
    vring: Vring,
    dir: Dir,
    size: u16,
    buf_len: u32,
    data: u64,
    /// The guest's avail index (next entry it writes).
    avail_idx: u16,
    /// Used entries already taken back.
    last_used: u16,
    /// Descriptor ids the guest owns, in the order it posts them.
    free: VecDeque<u16>,
    /// Which ids the device holds.
    in_flight: Vec<bool>,
    /// Used entries taken back by the last `reap`: (id, len).
    reaped: Vec<(u16, u32)>,
    /// Used entries that named an id not in flight or a length past its
    /// buffer.
    violations: u64,
    /// Ids in flight, in the order they were made available: a ring of
    /// `size` entries from `order_head` to `avail_idx` (a fixed array,
    /// not a deque: the bench's rounds pay for it too).
    order: Vec<u16>,
    order_head: u16,
    /// Whether `reap` checks the order (see [`MemQueue::without_order_check`]).
    check_order: bool,
    /// Used entries that were not the oldest id in flight, or not at the
    /// used position matching its avail position.
    out_of_order: u64,
    heads: Vec<u16>,
    /// Host addresses of the avail and used rings, written and read as a
    /// guest driver does: plain stores and loads, the indexes atomic.
    avail_host: *mut u8,
    used_host: *mut u8,
}

// SAFETY: the ring pointers point into `mem`, which the queue owns; which
// thread drives the guest side changes nothing.
unsafe impl Send for MemQueue {}

impl std::fmt::Debug for MemQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemQueue")
            .field("dir", &self.dir)
            .field("size", &self.size)
            .field("avail_idx", &self.avail_idx)
            .field("last_used", &self.last_used)
            .field("violations", &self.violations)
            .finish_non_exhaustive()
    }
}

impl MemQueue {
    /// A ready, enabled queue of `size` entries (a power of two) with one
    /// `buf_len`-byte buffer per descriptor; `event_idx` as if
    /// `VIRTIO_RING_F_EVENT_IDX` were acked. Nothing is posted yet.
    pub fn new(dir: Dir, size: u16, buf_len: u32, event_idx: bool) -> MemQueue {
        assert!(size.is_power_of_two(), "queue size {size}");
        assert!(buf_len > 0, "empty buffers");
        let n = u64::from(size);
        let desc = GUEST_MEM_BASE;
        let avail = desc + page_up(16 * n);
        let used = avail + page_up(6 + 2 * n);
        let data = used + page_up(6 + 8 * n);
        let end = data + page_up(n * u64::from(buf_len));
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(
            GuestAddress(GUEST_MEM_BASE),
            (end - GUEST_MEM_BASE) as usize,
        )])
        .expect("guest memory");

        // Descriptor i is buffer i, for good.
        let flags = if dir == Dir::Rx { F_WRITE } else { 0 };
        let mut table = vec![0u8; 16 * size as usize];
        for (i, d) in table.chunks_exact_mut(16).enumerate() {
            d[0..8].copy_from_slice(&(data + i as u64 * u64::from(buf_len)).to_le_bytes());
            d[8..12].copy_from_slice(&buf_len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
        }
        mem.write_slice(&table, GuestAddress(desc))
            .expect("descriptor table");

        let vring = Vring::new(size);
        vring.set_size(u32::from(size)).expect("queue size");
        vring
            .set_addresses(desc, avail, used)
            .expect("ring addresses");
        vring.configure(|c| {
            c.event_idx = event_idx;
            c.ready = true;
            c.enabled = true;
        });
        MemQueue {
            gmem: GuestMem::new(mem.clone()),
            vring,
            dir,
            size,
            buf_len,
            data,
            avail_idx: 0,
            last_used: 0,
            free: (0..size).collect(),
            in_flight: vec![false; size as usize],
            reaped: Vec::with_capacity(size as usize),
            violations: 0,
            order: vec![0; size as usize],
            order_head: 0,
            check_order: true,
            out_of_order: 0,
            heads: Vec::with_capacity(size as usize),
            avail_host: host(&mem, avail),
            used_host: host(&mem, used),
            mem,
        }
    }

    /// The same queue without the order check in [`MemQueue::reap`]: the
    /// in-process bench charges the guests' work to each frame too, and
    /// the check is 48 of the guests' 230 instructions per 60 B frame.
    pub fn without_order_check(mut self) -> Self {
        self.check_order = false;
        self
    }

    /// The queue and its memory, as a session publishes them.
    pub fn binding(&self) -> Binding {
        Binding {
            vring: self.vring.clone(),
            mem: self.gmem.clone(),
        }
    }

    /// A slot with this queue bound in it.
    pub fn slot(&self) -> Arc<VringSlot> {
        let s = Arc::new(VringSlot::default());
        s.set(Some(self.binding()));
        s
    }

    /// Hands the queue a migration's dirty log (None: logging stops), the
    /// used ring logged at `log_used` (None: its own address), as
    /// SET_LOG_BASE, SET_FEATURES and SET_VRING_ADDR do.
    pub fn set_log(&self, log: Option<Arc<crate::dirty::DirtyLog>>, log_used: Option<u64>) {
        self.vring
            .configure(|c| (c.log, c.log_used) = (log, log_used));
    }

    /// Guest addresses of the descriptor table, the available ring, the
    /// used ring and the first buffer (buffer `i` is at `data + i *
    /// buf_len`), and the end of the queue's guest memory.
    pub fn layout(&self) -> [u64; 5] {
        let c = self.vring.config();
        let end = self.data + u64::from(self.size) * u64::from(self.buf_len);
        [c.desc, c.avail, c.used, self.data, end]
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Bytes of each buffer.
    pub fn buf_len(&self) -> u32 {
        self.buf_len
    }

    /// Descriptor ids the guest holds (not posted).
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Used entries that did not come in the order, or at the ring
    /// position, their ids were made available at (what
    /// `VIRTIO_F_IN_ORDER` forbids; see [`MemQueue::reap`]).
    pub fn used_out_of_order(&self) -> u64 {
        self.out_of_order
    }

    /// Used entries that were wrong (see [`MemQueue::reap`]).
    pub fn violations(&self) -> u64 {
        self.violations
    }

    fn buf_addr(&self, id: u16) -> GuestAddress {
        GuestAddress(self.data + u64::from(id) * u64::from(self.buf_len))
    }

    /// TX: makes every chain carry `frame(id)` (header included), so
    /// that later posts need not write any bytes.
    pub fn fill_tx(&mut self, mut frame: impl FnMut(u16) -> Vec<u8>) {
        assert_eq!(self.dir, Dir::Tx, "fill_tx on an RX queue");
        for id in 0..self.size {
            let f = frame(id);
            self.set_tx(id, &f);
        }
    }

    /// TX: descriptor `id` now carries `bytes`.
    pub fn set_tx(&mut self, id: u16, bytes: &[u8]) {
        assert_eq!(self.dir, Dir::Tx, "set_tx on an RX queue");
        assert!(id < self.size && !bytes.is_empty() && bytes.len() <= self.buf_len as usize);
        self.mem
            .write_slice(bytes, self.buf_addr(id))
            .expect("TX buffer");
        let d = GuestAddress(GUEST_MEM_BASE + 16 * u64::from(id) + 8);
        self.mem
            .write_obj(bytes.len() as u32, d)
            .expect("descriptor length");
    }

    /// The bytes chain `id` carries (TX) or the first `len` bytes the
    /// device wrote into it (RX).
    pub fn read(&self, id: u16, len: usize) -> Vec<u8> {
        let len = match self.dir {
            Dir::Rx => len,
            Dir::Tx => {
                let d = GuestAddress(GUEST_MEM_BASE + 16 * u64::from(id) + 8);
                self.mem.read_obj::<u32>(d).expect("descriptor length") as usize
            }
        };
        let mut out = vec![0u8; len.min(self.buf_len as usize)];
        self.mem
            .read_slice(&mut out, self.buf_addr(id))
            .expect("guest buffer");
        out
    }

    /// Makes up to `n` chains available (the oldest free ids first) and
    /// publishes the avail index once. Returns how many went.
    pub fn post(&mut self, n: usize) -> usize {
        let n = n.min(self.free.len());
        if n == 0 {
            return 0;
        }
        self.heads.clear();
        let mask = self.size - 1;
        for k in 0..n {
            let Some(id) = self.free.pop_front() else {
                break;
            };
            self.in_flight[id as usize] = true;
            self.heads.push(id);
            let slot = (self.avail_idx.wrapping_add(k as u16) & mask) as usize;
            if self.check_order {
                self.order[slot] = id;
            }
            // SAFETY: avail entry `slot < size` lies in the avail ring
            // (4 + 2 * size bytes from its 2-aligned start), inside `mem`,
            // which this queue owns; the device reads it only after the
            // index store below (release).
            unsafe { (self.avail_host.add(4 + 2 * slot) as *mut u16).write_volatile(id.to_le()) };
        }
        self.avail_idx = self.avail_idx.wrapping_add(n as u16);
        self.idx(self.avail_host)
            .store(self.avail_idx.to_le(), Ordering::Release);
        n
    }

    /// The index field of the ring at `ring` (avail or used).
    fn idx(&self, ring: *mut u8) -> &AtomicU16 {
        // SAFETY: offset 2 of a ring inside `mem` (owned, alive as long as
        // the borrow of self), 2-aligned; the device accesses it
        // concurrently, hence atomic.
        unsafe { &*(ring.add(2) as *const AtomicU16) }
    }

    /// The ids the next [`MemQueue::post`] of `n` would make available.
    pub fn next_free(&self, n: usize) -> Vec<u16> {
        self.free.iter().take(n).copied().collect()
    }

    /// The ids the last [`MemQueue::post`] made available, in order.
    pub fn last_posted(&self) -> Vec<u16> {
        self.heads.clone()
    }

    /// Makes every free chain available.
    pub fn post_all(&mut self) -> usize {
        self.post(self.free.len())
    }

    /// Takes back what the device put on the used ring since the last
    /// call; the entries are in [`MemQueue::reaped`] until the next call.
    /// An id not in flight, or a length past the buffer (RX) or non-zero
    /// (TX), counts a violation; an id other than the oldest in flight, or
    /// one out of place, counts one [`MemQueue::used_out_of_order`]
    /// (unless [`MemQueue::without_order_check`]). Returns how many came
    /// back.
    pub fn reap(&mut self) -> usize {
        self.reaped.clear();
        let idx = u16::from_le(self.idx(self.used_host).load(Ordering::Acquire));
        let n = idx.wrapping_sub(self.last_used) as usize;
        if n == 0 {
            return 0;
        }
        if n > self.size as usize {
            // The device broke its ring: nothing can be trusted.
            self.violations += 1;
            self.last_used = idx;
            return 0;
        }
        let mask = self.size - 1;
        for k in 0..n {
            let slot = (self.last_used.wrapping_add(k as u16) & mask) as usize;
            // SAFETY: used entry `slot < size` lies in the used ring (4 +
            // 8 * size bytes from its 4-aligned start) inside `mem`; the
            // device wrote it before its index store, read above with
            // acquire.
            let (id, len) = unsafe {
                let e = self.used_host.add(4 + 8 * slot) as *const u32;
                (
                    u32::from_le(e.read_volatile()),
                    u32::from_le(e.add(1).read_volatile()),
                )
            };
            let bad_len = match self.dir {
                Dir::Rx => len > self.buf_len,
                Dir::Tx => len != 0,
            };
            let ok = id < u32::from(self.size) && self.in_flight[id as usize];
            if !ok || bad_len {
                self.violations += 1;
            }
            if ok {
                let id = id as u16;
                if self.check_order {
                    self.used_in_order(id, self.last_used.wrapping_add(k as u16));
                }
                self.in_flight[id as usize] = false;
                self.free.push_back(id);
                self.reaped.push((id, len));
            }
        }
        self.last_used = idx;
        self.reaped.len()
    }

    /// Takes `id`, returned at used ring position `at`, out of the order
    /// it was made available in, counting it out of order unless it was
    /// the oldest and `at` is the avail position it was made available at
    /// (a driver on IN_ORDER finds buffers by position).
    #[inline(always)]
    fn used_in_order(&mut self, id: u16, at: u16) {
        let oldest = self
            .order
            .get(usize::from(self.order_head & (self.size - 1)));
        if self.order_head != self.avail_idx && oldest == Some(&id) && at == self.order_head {
            self.order_head = self.order_head.wrapping_add(1);
        } else {
            self.out_of_order(id);
        }
    }

    /// [`MemQueue::used_in_order`] for an id that was not the oldest:
    /// counted, and taken out where it stood (later ids move back one).
    #[cold]
    #[inline(never)]
    fn out_of_order(&mut self, id: u16) {
        self.out_of_order += 1;
        let mask = self.size - 1;
        let at = |i: u16| usize::from(i & mask);
        let n = self.avail_idx.wrapping_sub(self.order_head);
        if let Some(k) = (0..n).find(|&k| self.order[at(self.order_head.wrapping_add(k))] == id) {
            for j in (1..=k).rev() {
                let (to, from) = (
                    self.order_head.wrapping_add(j),
                    self.order_head.wrapping_add(j - 1),
                );
                self.order[at(to)] = self.order[at(from)];
            }
            self.order_head = self.order_head.wrapping_add(1);
        }
    }

    /// The entries the last [`MemQueue::reap`] took back: (id, len).
    pub fn reaped(&self) -> &[(u16, u32)] {
        &self.reaped
    }
}
