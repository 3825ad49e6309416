//! A split virtqueue: its state as the vhost-user session sets it
//! ([`Vring`]), and its rings as the data path touches them ([`Ring`]):
//! translated to host pointers once, descriptors read straight from
//! them, used entries written in bulk and the used index published once
//! per batch.
//!
//! # Who owns what
//! The session owns the configuration (size, ring addresses, EVENT_IDX,
//! ready, enabled, the call eventfd) and changes it under the lock,
//! bumping a generation number each time. The forwarding thread that
//! serves the queue owns the ring indexes (next_avail, next_used) while
//! the queue runs: it reads the configuration only when the generation
//! moved, keeps its indexes in its own memory, and stores them in
//! [`Vring`] at the end of each batch for the session, which reads them
//! only when the protocol needs them (GET_VRING_BASE), after the
//! forwarder stepped out of its batch (see `QueueCtl` in [`crate::queue`]).
//! The session writes them only while the queue is stopped
//! (SET_VRING_BASE, SET_VRING_ADDR).
//!
//! Every guest address is checked here: the rings when they are
//! translated (each must lie in one memory region), descriptors as they
//! are read, indirect tables as they are entered. The guest can change any
//! of these bytes at any time: each is read once and used as read.

use std::sync::atomic::{fence, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use netmap::sys::EventFd;
use virtio_bindings::virtio_ring;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::dirty::DirtyLog;
use crate::types::{ChainError, Mem};

/// `next` is valid.
pub const F_NEXT: u16 = virtio_ring::VRING_DESC_F_NEXT as u16;
/// Device-writable buffer.
pub const F_WRITE: u16 = virtio_ring::VRING_DESC_F_WRITE as u16;
/// The buffer is a table of descriptors.
pub const F_INDIRECT: u16 = virtio_ring::VRING_DESC_F_INDIRECT as u16;
/// avail.flags: the driver needs no interrupt (without EVENT_IDX).
const AVAIL_F_NO_INTERRUPT: u16 = virtio_ring::VRING_AVAIL_F_NO_INTERRUPT as u16;
/// used.flags: the device needs no kick (without EVENT_IDX).
const USED_F_NO_NOTIFY: u16 = virtio_ring::VRING_USED_F_NO_NOTIFY as u16;

/// Why the session refused a ring setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VringError {
    /// Size zero, not a power of two, or past the port's maximum.
    #[error("size {size}, must be a power of two up to {max}")]
    Size {
        /// Size asked for.
        size: u32,
        /// The port's maximum.
        max: u16,
    },
    /// A ring address not aligned as virtio requires (2.7: descriptor
    /// table 16, available ring 2, used ring 4).
    #[error("{what} at guest address {addr:#x} is not {align}-byte aligned")]
    Misaligned {
        /// Which ring.
        what: &'static str,
        /// Guest address.
        addr: u64,
        /// Alignment required.
        align: u64,
    },
}

/// A virtqueue's configuration, as the session sets it.
#[derive(Debug, Clone)]
pub struct VringConfig {
    /// Entries (SET_VRING_NUM; the port's maximum until then).
    pub size: u16,
    /// Guest address of the descriptor table.
    pub desc: u64,
    /// Guest address of the available ring.
    pub avail: u64,
    /// Guest address of the used ring.
    pub used: u64,
    /// `VIRTIO_RING_F_EVENT_IDX` acked.
    pub event_idx: bool,
    /// Started (its kick fd arrived) and not stopped since.
    pub ready: bool,
    /// Enabled by the driver (SET_VRING_ENABLE, or implied without
    /// PROTOCOL_FEATURES).
    pub enabled: bool,
    /// The eventfd that interrupts the driver (None: it polls).
    pub call: Option<Arc<EventFd>>,
    /// The driver's kick eventfd, for a forwarding thread that waits on
    /// it itself (see [`crate::device::NetConfig::fwd_watches_tx_kicks`]).
    /// Watched edge-triggered and never read: the VMM shares it and could
    /// make a read block.
    pub kick: Option<Arc<EventFd>>,
    /// The migration's dirty log, while the driver logs (`VHOST_F_LOG_ALL`
    /// acked and `SET_LOG_BASE` given).
    pub log: Option<Arc<DirtyLog>>,
    /// Where the used ring is logged (`VHOST_VRING_F_LOG`'s
    /// `log_guest_addr`; None: at the used ring's guest address).
    pub log_used: Option<u64>,
}

impl VringConfig {
    /// A queue started and enabled with these rings, no call fd (for
    /// tests that build rings by hand).
    #[cfg(any(test, feature = "test-utils"))]
    pub fn started(size: u16, desc: u64, avail: u64, used: u64) -> VringConfig {
        VringConfig {
            size,
            desc,
            avail,
            used,
            event_idx: false,
            ready: true,
            enabled: true,
            call: None,
            kick: None,
            log: None,
            log_used: None,
        }
    }

    /// Whether the data path may use the queue.
    pub fn running(&self) -> bool {
        self.ready && self.enabled
    }
}

#[derive(Debug)]
struct Shared {
    max_size: u16,
    cfg: RwLock<VringConfig>,
    /// Bumped after every change of `cfg` or of the indexes by the
    /// session.
    gen: AtomicU64,
    next_avail: AtomicU16,
    next_used: AtomicU16,
}

/// A virtqueue as the session and the forwarding thread share it (a
/// reconnecting VMM gets fresh ones).
#[derive(Clone, Debug)]
pub struct Vring(Arc<Shared>);

impl Vring {
    /// A queue of at most `max_size` entries (a power of two; a smaller
    /// default otherwise), not ready, not enabled.
    pub fn new(max_size: u16) -> Vring {
        let max_size = if max_size.is_power_of_two() {
            max_size
        } else {
            256
        };
        Vring(Arc::new(Shared {
            max_size,
            cfg: RwLock::new(VringConfig {
                size: max_size,
                desc: 0,
                avail: 0,
                used: 0,
                event_idx: false,
                ready: false,
                enabled: false,
                call: None,
                kick: None,
                log: None,
                log_used: None,
            }),
            gen: AtomicU64::new(0),
            next_avail: AtomicU16::new(0),
            next_used: AtomicU16::new(0),
        }))
    }

    /// The configuration now.
    pub fn config(&self) -> RwLockReadGuard<'_, VringConfig> {
        self.0.cfg.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the configuration; the forwarder picks it up at its next
    /// batch.
    pub fn configure<R>(&self, f: impl FnOnce(&mut VringConfig) -> R) -> R {
        let r = f(&mut self.0.cfg.write().unwrap_or_else(|e| e.into_inner()));
        // SeqCst: `QueueCtl`'s handshake pairs this with the forwarder's
        // `busy` store and generation load.
        self.0.gen.fetch_add(1, Ordering::SeqCst);
        r
    }

    /// SET_VRING_NUM.
    pub fn set_size(&self, size: u32) -> Result<(), VringError> {
        let max = self.0.max_size;
        if size == 0 || size > u32::from(max) || !size.is_power_of_two() {
            return Err(VringError::Size { size, max });
        }
        self.configure(|c| c.size = size as u16);
        Ok(())
    }

    /// SET_VRING_ADDR (guest addresses).
    pub fn set_addresses(&self, desc: u64, avail: u64, used: u64) -> Result<(), VringError> {
        for (what, addr, align) in [
            ("descriptor table", desc, 16),
            ("available ring", avail, 2),
            ("used ring", used, 4),
        ] {
            if addr % align != 0 {
                return Err(VringError::Misaligned { what, addr, align });
            }
        }
        self.configure(|c| (c.desc, c.avail, c.used) = (desc, avail, used));
        Ok(())
    }

    /// The generation of the configuration and indexes.
    #[inline]
    pub fn gen(&self) -> u64 {
        self.0.gen.load(Ordering::SeqCst)
    }

    /// Where the next batch would start taking chains (GET_VRING_BASE,
    /// once the forwarder is out of its batch).
    pub fn next_avail(&self) -> u16 {
        self.0.next_avail.load(Ordering::Acquire)
    }

    /// The next used entry the device writes.
    pub fn next_used(&self) -> u16 {
        self.0.next_used.load(Ordering::Acquire)
    }

    /// SET_VRING_BASE: the next avail entry to take.
    pub fn set_next_avail(&self, v: u16) {
        self.0.next_avail.store(v, Ordering::Release);
        self.0.gen.fetch_add(1, Ordering::SeqCst);
    }

    /// The next used entry to write (the used index in the ring, after
    /// SET_VRING_ADDR).
    pub fn set_next_used(&self, v: u16) {
        self.0.next_used.store(v, Ordering::Release);
        self.0.gen.fetch_add(1, Ordering::SeqCst);
    }

    /// The forwarder's indexes after a batch (no generation bump: it
    /// already has them).
    pub(crate) fn store_indexes(&self, next_avail: u16, next_used: u16) {
        self.0.next_avail.store(next_avail, Ordering::Relaxed);
        self.0.next_used.store(next_used, Ordering::Relaxed);
    }
}

/// Starts loading the cache line at `p` (a guest buffer the batch will
/// touch): the frames of a batch then miss in parallel instead of one by
/// one when the engine reaches them.
#[inline(always)]
pub fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults and reads nothing into
    // the program, whatever the address (SSE is baseline on x86_64).
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Starts taking the cache line at `p` (a guest RX buffer the batch will
/// write) for writing. The guest's driver wrote that line last (DPDK's
/// virtio PMD pushes its TX header into the same headroom), so a read
/// prefetch would bring it shared and the store would then wait for a
/// second trip to the other core; write intent makes it one trip.
#[inline(always)]
pub fn prefetch_write(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHW is a hint: it never faults, whatever the address,
    // and changes no register or memory the program sees. CPUs without it
    // (Intel before Broadwell) execute it as a no-op.
    unsafe {
        std::arch::asm!("prefetchw [{0}]", in(reg) p, options(nostack, preserves_flags, readonly));
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Pushes the cache line at `p`, which this core just wrote for the other
/// side to read (a guest RX buffer), out of this core's caches to the
/// shared last level, so that the driver's read finds it there instead of
/// snooping this core, and this core's next write takes it from there.
#[inline(always)]
pub fn demote(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: CLDEMOTE is a hint: it never faults, whatever the address,
    // and changes no register or memory the program sees; CPUs without it
    // execute its encoding (0F 1C /0, a reserved NOP) as a no-op.
    unsafe {
        std::arch::asm!("cldemote [{0}]", in(reg) p, options(nostack, preserves_flags, readonly));
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// [`demote`] of every cache line holding a byte of `start..end`.
#[inline(always)]
pub fn demote_lines(start: usize, end: usize) {
    each_line(start, end, demote);
}

/// `hint` on every cache line holding a byte of `start..end` (addresses
/// as numbers: nothing is dereferenced).
#[inline(always)]
fn each_line(start: usize, end: usize, hint: impl Fn(*const u8)) {
    let mut line = start & !63;
    while line < end {
        hint(line as *const u8);
        line += 64;
    }
}

/// [`prefetch_write`] of every cache line holding a byte of `start..end`.
#[inline(always)]
pub fn prefetch_write_lines(start: usize, end: usize) {
    each_line(start, end, prefetch_write);
}

/// [`prefetch`] of every cache line holding a byte of `start..end`.
#[inline(always)]
pub fn prefetch_lines(start: usize, end: usize) {
    each_line(start, end, prefetch);
}

/// One descriptor, as read (once) from guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// `F_*` bits.
    pub flags: u16,
    /// Next index when `F_NEXT`.
    pub next: u16,
}

/// Guest memory regions as (guest start, length, host address), for the
/// data path's lookups: a linear scan of a few entries with the last hit
/// first, instead of vm-memory's search and slice checks per buffer.
/// Valid while the map it was made from is (the batch's guard).
#[derive(Debug, Clone, Default)]
pub struct HostMap {
    regions: Vec<(u64, u64, usize)>,
    last: std::cell::Cell<usize>,
    /// The map it was made from, by a weak reference: its address (the
    /// identity compared) cannot be reused while this is held, yet the
    /// mappings go as soon as the last batch guard does (a VMM that
    /// disconnects gets its memory unmapped even if this table is never
    /// looked at again). The batch that uses the table holds the map.
    mem: Option<std::sync::Weak<Mem>>,
    /// Every region lies on hugetlbfs pages (see [`HostMap::huge_pages`]).
    huge: bool,
}

/// Whether `file` lives on hugetlbfs (a VMM's `memory-backend-file` on
/// /dev/hugepages, a `memfd` made with `MFD_HUGETLB`, DPDK's hugepages).
fn on_hugetlbfs(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: statfs is plain integers, for which all zeros is a value.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd (borrowed from the open file) and a valid out
    // pointer.
    let r = unsafe { libc::fstatfs(file.as_raw_fd(), &mut sfs) };
    r == 0 && sfs.f_type == libc::HUGETLBFS_MAGIC
}

impl HostMap {
    /// Whether the table was made from `mem` (compared by address; the
    /// weak reference keeps that address from being reused).
    #[inline]
    pub fn is_for(&self, mem: &Mem) -> bool {
        self.mem
            .as_ref()
            .is_some_and(|m| std::ptr::eq(m.as_ptr(), mem))
    }

    /// Makes (or keeps, if `mem` is the map it was made from) the lookup
    /// table for `mem`. True if it was made anew.
    pub fn refresh(&mut self, mem: &std::sync::Arc<Mem>) -> bool {
        if self.is_for(mem) {
            return false;
        }
        self.regions.clear();
        let mut huge = true;
        for r in mem.iter() {
            if let Ok(h) = r.get_host_address(vm_memory::MemoryRegionAddress(0)) {
                self.regions.push((r.start_addr().0, r.len(), h as usize));
                huge = huge && r.file_offset().is_some_and(|f| on_hugetlbfs(f.file()));
            }
        }
        self.huge = huge && !self.regions.is_empty();
        self.mem = Some(std::sync::Arc::downgrade(mem));
        self.last.set(0);
        true
    }

    /// Whether all of guest memory is on huge pages (hugetlbfs). On huge
    /// pages the RX side prefetches a short frame's buffer a few frames
    /// ahead; on 4 KiB pages that cost more than it hid, and only the
    /// buffer about to be written is prefetched (docs/benchmarks.md,
    /// "Stop 27" and "Stop 28" under "VM ports: virtio-user loopback").
    #[inline]
    pub fn huge_pages(&self) -> bool {
        self.huge
    }

    /// Guest address of host address `host`, if it lies in guest memory.
    /// A scan of every region: for the dirty log, not the common path.
    pub fn gpa_of(&self, host: usize) -> Option<u64> {
        self.regions.iter().find_map(|&(start, size, h)| {
            let off = host.checked_sub(h)? as u64;
            (off < size).then_some(start + off)
        })
    }

    /// Host address of `len` bytes at guest `addr`, if they lie in one
    /// region.
    pub fn whole(&self, addr: u64, len: u64) -> Option<*mut u8> {
        let (p, n) = self.range(addr, len)?;
        (n == len).then_some(p)
    }

    /// Host address of guest `addr` and how many bytes from there (up to
    /// `len`) lie in the same region; None outside guest memory.
    #[inline]
    pub fn range(&self, addr: u64, len: u64) -> Option<(*mut u8, u64)> {
        let hit = |&(start, size, host): &(u64, u64, usize)| {
            let off = addr.checked_sub(start)?;
            (off < size).then(|| ((host + off as usize) as *mut u8, len.min(size - off)))
        };
        let last = self.last.get();
        if let Some(r) = self.regions.get(last).and_then(hit) {
            return Some(r);
        }
        for (i, reg) in self.regions.iter().enumerate() {
            if let Some(r) = hit(reg) {
                self.last.set(i);
                return Some(r);
            }
        }
        None
    }
}

/// A queue's rings in host memory, valid while the memory guard they were
/// made under is held (the caller's promise, see [`Ring::new`]).
#[derive(Debug, Clone, Copy)]
pub struct Ring {
    size: u16,
    desc: *const u8,
    avail: *const u8,
    used: *mut u8,
    event_idx: bool,
}

// SAFETY: a Ring is a set of pointers into guest memory that its owner
// keeps mapped (the memory guard travels with it); which thread uses them
// changes nothing.
unsafe impl Send for Ring {}

impl Ring {
    /// Translates the rings of a queue configured as `cfg` through `map`.
    ///
    /// # Safety
    /// The pointers are valid only while the guest memory map `map` was
    /// made from is alive: the caller keeps its load guard for as long as
    /// it uses the ring.
    pub unsafe fn new(map: &HostMap, cfg: &VringConfig) -> Option<Ring> {
        let size = cfg.size;
        if size == 0 || !size.is_power_of_two() {
            return None;
        }
        // Alignment as virtio requires, so the index fields can be read
        // atomically (the session checked it too).
        if cfg.desc % 16 != 0 || cfg.avail % 2 != 0 || cfg.used % 4 != 0 {
            return None;
        }
        let n = u64::from(size);
        Some(Ring {
            size,
            desc: map.whole(cfg.desc, 16 * n)?,
            avail: map.whole(cfg.avail, 6 + 2 * n)?,
            used: map.whole(cfg.used, 6 + 8 * n)?,
            event_idx: cfg.event_idx,
        })
    }

    /// Entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    fn idx_atomic(&self, p: *const u8) -> &AtomicU16 {
        // SAFETY: `p` is 2-aligned (checked in `new`, offsets are even) and
        // inside a ring checked in `new`, alive while the owner's guard is;
        // the guest writes it concurrently, hence atomic access.
        unsafe { &*(p as *const AtomicU16) }
    }

    /// The driver's avail index.
    pub fn avail_idx(&self) -> u16 {
        // SAFETY: offset 2 of the avail ring, inside the checked range.
        u16::from_le(
            self.idx_atomic(unsafe { self.avail.add(2) })
                .load(Ordering::Acquire),
        )
    }

    fn avail_flags(&self) -> u16 {
        u16::from_le(self.idx_atomic(self.avail).load(Ordering::Relaxed))
    }

    /// Head index in avail slot `i` (mod size).
    pub fn avail_entry(&self, i: u16) -> u16 {
        let off = 4 + 2 * (i & (self.size - 1)) as usize;
        // SAFETY: off + 2 <= 4 + 2 * size, inside the checked range.
        u16::from_le(
            self.idx_atomic(unsafe { self.avail.add(off) })
                .load(Ordering::Relaxed),
        )
    }

    fn used_event(&self) -> u16 {
        let off = 4 + 2 * self.size as usize;
        // SAFETY: the used_event field at the end of the avail ring
        // (6 + 2 * size bytes were checked).
        u16::from_le(
            self.idx_atomic(unsafe { self.avail.add(off) })
                .load(Ordering::Relaxed),
        )
    }

    /// Starts loading descriptor `i` (a head the batch will walk).
    pub fn prefetch_desc(&self, i: u16) {
        let i = i & (self.size - 1);
        // SAFETY: entry i < size of the checked table; the pointer is only
        // formed for a prefetch hint.
        prefetch(unsafe { self.desc.add(16 * i as usize) });
    }

    /// Starts taking the lines of used entries `from..from + n` (mod
    /// size) for writing: the driver reads them, so its core holds them,
    /// and the batch will write them at its end, where the fence that
    /// follows the used index waits for every queued store.
    pub fn prefetch_used(&self, from: u16, n: u16) {
        let n = n.min(self.size);
        let first = from & (self.size - 1);
        // At most two runs of slots: up to the ring's end, then from its
        // start. Lines by address: virtio aligns the used ring to 4 only.
        let run1 = n.min(self.size - first);
        for (a, b) in [(first, first + run1), (0, n - run1)] {
            if a < b {
                // Entries a..b are bytes 4 + 8a .. 4 + 8b of the checked
                // used ring (6 + 8 * size bytes); only numbers are formed
                // here, a pointer only for the prefetch hint.
                let base = self.used as usize;
                prefetch_write_lines(base + 4 + 8 * a as usize, base + 4 + 8 * b as usize);
            }
        }
    }

    /// Descriptor `i` of the main table (`i < size`).
    #[inline]
    pub fn desc(&self, i: u16) -> Desc {
        debug_assert!(i < self.size);
        let i = i & (self.size - 1);
        // SAFETY: entry i < size of a table of 16 * size checked bytes.
        unsafe { read_desc(self.desc.add(16 * i as usize)) }
    }

    /// The flags of descriptor `i` (mod size) of the main table: one
    /// 2-byte read, where [`desc`](Self::desc) reads all 16 bytes.
    #[inline]
    pub fn desc_flags(&self, i: u16) -> u16 {
        let i = i & (self.size - 1);
        // SAFETY: entry i < size of a table of 16 * size checked bytes, at
        // a 16-aligned guest address (checked in `new`) in a page-aligned
        // region (memory.rs), so its flags at offset 12 are a readable,
        // 2-aligned u16; volatile as the guest owns the bytes.
        u16::from_le(unsafe {
            std::ptr::read_volatile(self.desc.add(16 * i as usize + 12) as *const u16)
        })
    }

    /// Writes used entry `slot` (mod size).
    #[inline]
    pub fn put_used(&self, slot: u16, id: u16, len: u32) {
        let off = 4 + 8 * (slot & (self.size - 1)) as usize;
        // SAFETY: off + 8 <= 4 + 8 * size, inside the checked used ring,
        // which is 4-aligned (checked in `new`), as are both fields; the
        // guest reads them only after the index store (release) in
        // `publish_used`. Two word stores, not eight byte stores.
        unsafe {
            let e = self.used.add(off) as *mut u32;
            std::ptr::write_volatile(e, u32::from(id).to_le());
            std::ptr::write_volatile(e.add(1), len.to_le());
        }
    }

    /// Tells the driver whether to kick on new avail entries: the
    /// NO_NOTIFY flag, or with EVENT_IDX the avail_event field (kick once
    /// the avail index passes `next_avail`). When enabling, returns true
    /// if entries past `next_avail` are already there (do not sleep).
    pub fn set_notify(&self, on: bool, next_avail: u16) -> bool {
        if self.event_idx {
            if on {
                let off = 4 + 8 * self.size as usize;
                // SAFETY: avail_event, the 2 bytes after the used entries
                // (6 + 8 * size bytes were checked), 2-aligned.
                self.idx_atomic(unsafe { self.used.add(off) })
                    .store(next_avail.to_le(), Ordering::Relaxed);
            }
            // Disabling with EVENT_IDX writes nothing: the driver kicks at
            // most once more, when it passes the stale avail_event.
        } else {
            let flags = if on { 0 } else { USED_F_NO_NOTIFY };
            // SAFETY: used.flags, offset 0 of the checked used ring.
            self.idx_atomic(self.used)
                .store(flags.to_le(), Ordering::Relaxed);
        }
        if !on {
            return false;
        }
        // The store must be visible before the avail index is read again
        // (virtio 2.7.10), or a kick can be lost.
        fence(Ordering::SeqCst);
        self.avail_idx() != next_avail
    }

    /// Publishes the used index `new` (after `put_used` of every entry
    /// before it) and says whether the driver wants an interrupt for the
    /// entries from `old` on.
    pub fn publish_used(&self, old: u16, new: u16) -> bool {
        // SAFETY: offset 2 of the used ring, inside the checked range.
        self.idx_atomic(unsafe { self.used.add(2) })
            .store(new.to_le(), Ordering::Release);
        // The index store must be visible before the driver's suppression
        // fields are read (virtio 2.7.10), or an interrupt can be lost.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let ev = self.used_event();
            new.wrapping_sub(ev).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.avail_flags() & AVAIL_F_NO_INTERRUPT == 0
        }
    }
}

/// Reads a descriptor at `p`.
///
/// # Safety
/// `p..p + 16` must be readable.
#[inline(always)]
unsafe fn read_desc(p: *const u8) -> Desc {
    let (lo, hi) = if p as usize % 8 == 0 {
        // SAFETY: the caller's promise, and `p` is 8-aligned (every table
        // in the ring is, being 16-aligned in 4 KiB-aligned regions; an
        // indirect table may not be). Two word loads instead of sixteen
        // byte loads; volatile because the guest owns the bytes and may
        // change them at any time: each word is read once.
        unsafe {
            (
                std::ptr::read_volatile(p as *const u64),
                std::ptr::read_volatile(p.add(8) as *const u64),
            )
        }
    } else {
        // SAFETY: the caller's promise; byte-wise, as `p` is unaligned.
        let b: [u8; 16] = unsafe { std::ptr::read_volatile(p as *const [u8; 16]) };
        (
            u64::from_ne_bytes(b[0..8].try_into().unwrap_or_default()),
            u64::from_ne_bytes(b[8..16].try_into().unwrap_or_default()),
        )
    };
    let hi = u64::from_le(hi);
    Desc {
        addr: u64::from_le(lo),
        len: hi as u32,
        flags: (hi >> 32) as u16,
        next: (hi >> 48) as u16,
    }
}

/// Calls `f` for every buffer descriptor of the chain at `head`, following
/// one level of indirect table. Loops, next indexes past the table, nested
/// or malformed indirect tables and tables outside guest memory are
/// errors; nothing past an error is visited.
pub fn walk_chain(
    map: &HostMap,
    ring: &Ring,
    head: u16,
    mut f: impl FnMut(Desc) -> Result<(), ChainError>,
) -> Result<(), ChainError> {
    if head >= ring.size {
        return Err(ChainError::Unterminated);
    }
    let mut d = ring.desc(head);
    // A chain visits each table entry at most once.
    let mut budget = ring.size;
    loop {
        if d.flags & F_INDIRECT != 0 {
            // An indirect descriptor ends the main chain (virtio 2.7.5.3.1:
            // INDIRECT and NEXT together are not allowed).
            if d.flags & F_NEXT != 0 || d.len == 0 || d.len % 16 != 0 {
                return Err(ChainError::Unterminated);
            }
            let n = d.len / 16;
            if n > u32::from(u16::MAX) + 1 {
                return Err(ChainError::Unterminated);
            }
            let oom = ChainError::OutOfMemory {
                addr: d.addr,
                len: d.len,
            };
            let (table, n_in) = map.range(d.addr, u64::from(d.len)).ok_or(oom)?;
            if n_in < u64::from(d.len) {
                return Err(oom);
            }
            return walk_indirect(table, n, f);
        }
        f(d)?;
        if d.flags & F_NEXT == 0 {
            return Ok(());
        }
        budget -= 1;
        if budget == 0 || d.next >= ring.size {
            return Err(ChainError::Unterminated);
        }
        d = ring.desc(d.next);
    }
}

fn walk_indirect(
    table: *const u8,
    n: u32,
    mut f: impl FnMut(Desc) -> Result<(), ChainError>,
) -> Result<(), ChainError> {
    let mut i = 0u32;
    let mut budget = n;
    loop {
        // SAFETY: i < n and the table's n * 16 bytes were checked to lie in
        // one mapped region, alive while the caller's guard is.
        let d = unsafe { read_desc(table.add(16 * i as usize)) };
        if d.flags & F_INDIRECT != 0 {
            return Err(ChainError::Unterminated);
        }
        f(d)?;
        if d.flags & F_NEXT == 0 {
            return Ok(());
        }
        budget -= 1;
        if budget == 0 || u32::from(d.next) >= n {
            return Err(ChainError::Unterminated);
        }
        i = u32::from(d.next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(flags: libc::c_uint) -> std::io::Result<std::fs::File> {
        use std::os::fd::FromRawFd;
        // SAFETY: a valid NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"vale-test".as_ptr(), libc::MFD_CLOEXEC | flags) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        Ok(unsafe { std::fs::File::from_raw_fd(fd) })
    }

    /// Huge pages are told by the memory's file system: hugetlbfs (a
    /// `MFD_HUGETLB` memfd, a file on /dev/hugepages), not tmpfs.
    #[test]
    fn hugetlbfs_is_told_from_tmpfs() {
        assert!(
            !on_hugetlbfs(&memfd(0).unwrap()),
            "a plain memfd is on tmpfs"
        );
        match memfd(libc::MFD_HUGETLB) {
            Ok(f) => assert!(on_hugetlbfs(&f), "an MFD_HUGETLB memfd"),
            // A kernel without hugetlbfs: nothing to tell apart.
            Err(e) => eprintln!("no MFD_HUGETLB memfd here ({e}): half of the test skipped"),
        }
    }

    /// A map of 4 KiB-page memory (memfd, or no file at all) says so.
    #[test]
    fn a_map_of_small_pages_is_not_huge() {
        use vm_memory::{FileOffset, GuestAddress, GuestRegionMmap};
        let f = memfd(0).unwrap();
        f.set_len(1 << 20).unwrap();
        let with_file =
            GuestRegionMmap::from_range(GuestAddress(0), 1 << 20, Some(FileOffset::new(f, 0)))
                .unwrap();
        let anon = GuestRegionMmap::from_range(GuestAddress(1 << 20), 1 << 20, None).unwrap();
        let mem = std::sync::Arc::new(Mem::from_regions(vec![with_file, anon]).unwrap());
        let mut map = HostMap::default();
        assert!(!map.huge_pages(), "an empty map");
        assert!(map.refresh(&mem));
        assert!(!map.huge_pages());
        assert!(map.whole(0x1000, 64).is_some(), "the map works");
    }

    fn desc_bytes(d: Desc) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&d.addr.to_le_bytes());
        b[8..12].copy_from_slice(&d.len.to_le_bytes());
        b[12..14].copy_from_slice(&d.flags.to_le_bytes());
        b[14..16].copy_from_slice(&d.next.to_le_bytes());
        b
    }

    /// SET_VRING_NUM and SET_VRING_ADDR values are checked, and a refused
    /// one changes nothing (not even the generation the forwarder watches).
    #[test]
    fn ring_settings_are_checked() {
        let v = Vring::new(256);
        assert_eq!(v.set_size(0), Err(VringError::Size { size: 0, max: 256 }));
        assert!(v.set_size(300).is_err(), "not a power of two");
        assert!(v.set_size(512).is_err(), "past the maximum");
        let g = v.gen();
        assert!(matches!(
            v.set_addresses(0x1008, 0x2000, 0x3000),
            Err(VringError::Misaligned {
                what: "descriptor table",
                ..
            })
        ));
        assert!(v.set_addresses(0x1000, 0x2001, 0x3000).is_err());
        assert!(v.set_addresses(0x1000, 0x2000, 0x3002).is_err());
        assert_eq!(v.gen(), g);
        v.set_size(128).unwrap();
        v.set_addresses(0x1000, 0x2002, 0x3004).unwrap();
        assert!(v.gen() > g);
        let c = v.config().clone();
        assert_eq!(
            (c.size, c.desc, c.avail, c.used),
            (128, 0x1000, 0x2002, 0x3004)
        );
    }

    #[test]
    fn descriptors_read_alike_aligned_or_not() {
        let d = Desc {
            addr: 0x0123_4567_89ab_cdef,
            len: 0xfedc_ba98,
            flags: F_NEXT | F_WRITE,
            next: 0xbeef,
        };
        // An indirect table may sit at any guest address: every offset
        // of a 16-byte descriptor in an 8-aligned buffer reads the same.
        let mut buf = [0u64; 6];
        for off in 0..16 {
            let bytes = buf.as_mut_ptr() as *mut u8;
            // SAFETY: off + 16 <= 48 bytes of `buf`.
            let got = unsafe {
                std::ptr::copy_nonoverlapping(desc_bytes(d).as_ptr(), bytes.add(off), 16);
                read_desc(bytes.add(off))
            };
            assert_eq!(got, d, "offset {off}");
        }
    }
}
