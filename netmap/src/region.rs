//! Memory regions: a sealed memfd holding `netmap_if`s, rings and buffers in
//! netmap's layout, so that `PORT_INFO_GET` and `POOLS_INFO_GET` describe it
//! exactly and a C application can walk it with netmap_user.h's macros.
//!
//! ```text
//! 0                 if pool      if_objtotal  x if_objsize   (netmap_if, one per registration)
//! ring_pool_offset  ring pool    ring_objtotal x ring_objsize (netmap_ring + slots)
//! buf_pool_offset   buffer pool  buf_objtotal x buf_objsize  (buffers 0 and 1 reserved)
//! nr_memsize        end; CSBs live in their own memfds, outside the region
//! ```
//!
//! A region is an object with a `mem_id` and an owner uid: a port gets a
//! fresh one by default and only its owner may place other ports in it. The
//! memfd is sealed against shrink and grow before it is shared, so no client
//! can make the switch fault on it.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use thiserror::Error;
use tracing::info;

use crate::abi::{NetmapSlot, NmreqPoolsInfo, NETMAP_API, RING_HEADER_SIZE};
use crate::ring::{field, RingView};
use crate::sync::Dir;
use crate::sys::{HugePages, Memfd, SharedMap};

/// Fewest slots a ring may have (one always stays empty).
pub const MIN_SLOTS: u32 = 2;
/// Most slots a ring may have (netmap's `NM_BDG_MAXSLOTS`).
pub const MAX_SLOTS: u32 = 4096;
/// Smallest buffer.
pub const MIN_BUF_SIZE: u32 = 64;
/// Largest buffer (a slot's `len` is 16 bits).
pub const MAX_BUF_SIZE: u32 = 65536;
/// Most NIC rings per direction of a port.
pub const MAX_RINGS: u32 = 64;
/// Most host rings per direction of a port.
pub const MAX_HOST_RINGS: u32 = 64;
/// Most extra buffers one registration may ask for.
pub const MAX_EXTRA_BUFS: u32 = 1 << 20;
/// Size of the fixed part of `struct netmap_if`.
pub const NETMAP_IF_SIZE: usize = 56;
/// Objects in the pools are aligned to a cache line, as netmap does.
const LINE: usize = 64;

/// Errors building or using a region. Each names the number that was wrong.
#[derive(Debug, Error)]
pub enum RegionError {
    /// A size or count outside what netmap allows.
    #[error("{what} = {value}: must be {min}..={max}")]
    OutOfRange {
        /// Which parameter.
        what: &'static str,
        /// The value asked for.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// The whole region would not fit in memory.
    #[error("region of {total} bytes ({what}) is larger than memory allows ({limit} bytes)")]
    TooLarge {
        /// Bytes the configuration needs (saturated on overflow).
        total: u64,
        /// Which part overflowed or was too big.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// A pool ran out of objects.
    #[error("region {mem_id}: no free {pool} (pool of {total})")]
    Exhausted {
        /// Region id.
        mem_id: u16,
        /// Which pool.
        pool: &'static str,
        /// Pool size.
        total: u32,
    },
    /// An offset that is not an object of the pool.
    #[error("region {mem_id}: offset {offset} is not a {pool} of this region")]
    BadObject {
        /// Region id.
        mem_id: u16,
        /// Which pool.
        pool: &'static str,
        /// The offset given.
        offset: usize,
    },
    /// A port name longer than `ni_name` holds.
    #[error("port name {0:?} longer than 15 bytes")]
    NameTooLong(String),
    /// A system call failed.
    #[error("region: {0}")]
    Io(#[from] io::Error),
}

fn range(what: &'static str, value: u64, min: u64, max: u64) -> Result<(), RegionError> {
    if value < min || value > max {
        return Err(RegionError::OutOfRange {
            what,
            value,
            min,
            max,
        });
    }
    Ok(())
}

/// The rings and buffers a port needs; the defaults are netmap's VALE ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortLayout {
    /// NIC TX rings.
    pub tx_rings: u32,
    /// NIC RX rings.
    pub rx_rings: u32,
    /// Slots per TX ring.
    pub tx_slots: u32,
    /// Slots per RX ring.
    pub rx_slots: u32,
    /// Host TX rings reported in the `netmap_if` (VALE: fake, ≥ 1).
    pub host_tx_rings: u32,
    /// Host RX rings reported in the `netmap_if`.
    pub host_rx_rings: u32,
    /// Buffer size (rounded up to 64).
    pub buf_size: u32,
    /// Extra buffers per registration.
    pub extra_bufs: u32,
}

impl Default for PortLayout {
    fn default() -> Self {
        PortLayout {
            tx_rings: 1,
            rx_rings: 1,
            tx_slots: 1024,
            rx_slots: 1024,
            host_tx_rings: 1,
            host_rx_rings: 1,
            buf_size: 2048,
            extra_bufs: 0,
        }
    }
}

impl PortLayout {
    /// Checks every number against netmap's limits.
    pub fn validate(&self) -> Result<(), RegionError> {
        range("tx_rings", self.tx_rings.into(), 1, MAX_RINGS.into())?;
        range("rx_rings", self.rx_rings.into(), 1, MAX_RINGS.into())?;
        range(
            "tx_slots",
            self.tx_slots.into(),
            MIN_SLOTS.into(),
            MAX_SLOTS.into(),
        )?;
        range(
            "rx_slots",
            self.rx_slots.into(),
            MIN_SLOTS.into(),
            MAX_SLOTS.into(),
        )?;
        range(
            "host_tx_rings",
            self.host_tx_rings.into(),
            0,
            MAX_HOST_RINGS.into(),
        )?;
        range(
            "host_rx_rings",
            self.host_rx_rings.into(),
            0,
            MAX_HOST_RINGS.into(),
        )?;
        range(
            "buf_size",
            self.buf_size.into(),
            MIN_BUF_SIZE.into(),
            MAX_BUF_SIZE.into(),
        )?;
        range(
            "extra_bufs",
            self.extra_bufs.into(),
            0,
            MAX_EXTRA_BUFS.into(),
        )?;
        Ok(())
    }

    /// Rings with memory behind them (host rings of VALE ports are fake).
    pub fn real_rings(&self) -> u32 {
        self.tx_rings + self.rx_rings
    }

    /// Entries of `ring_ofs` in a `netmap_if` for this port.
    pub fn if_entries(&self) -> u32 {
        self.tx_rings + self.rx_rings + self.host_tx_rings + self.host_rx_rings
    }
}

/// Sizes of a region's three pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionConfig {
    /// `netmap_if` objects: registrations the region can serve at once.
    pub if_objtotal: u32,
    /// Bytes per `netmap_if`.
    pub if_objsize: u32,
    /// Rings.
    pub ring_objtotal: u32,
    /// Bytes per ring (header + slots).
    pub ring_objsize: u32,
    /// Buffers, including the two reserved ones.
    pub buf_objtotal: u32,
    /// Bytes per buffer.
    pub buf_objsize: u32,
    /// Try hugetlb pages first.
    pub huge_pages: bool,
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

impl RegionConfig {
    /// A region for `ports` ports of `layout`, each registered at most
    /// `regs_per_port` times at once.
    pub fn for_ports(
        layout: &PortLayout,
        ports: u32,
        regs_per_port: u32,
    ) -> Result<Self, RegionError> {
        layout.validate()?;
        range("ports", ports.into(), 1, 254)?;
        range("registrations per port", regs_per_port.into(), 1, 1024)?;
        let regs = ports as u64 * regs_per_port as u64;
        let too_large = |what| RegionError::TooLarge {
            total: u64::MAX,
            what,
            limit: memory_limit(),
        };
        let slots = layout.tx_rings as u64 * layout.tx_slots as u64
            + layout.rx_rings as u64 * layout.rx_slots as u64;
        let bufs = 2 + ports as u64 * slots + regs * layout.extra_bufs as u64;
        let cfg = RegionConfig {
            if_objtotal: u32::try_from(regs).map_err(|_| too_large("netmap_if count"))?,
            if_objsize: round_up(
                NETMAP_IF_SIZE as u64 + 8 * layout.if_entries() as u64,
                LINE as u64,
            ) as u32,
            ring_objtotal: ports * layout.real_rings(),
            ring_objsize: round_up(
                (RING_HEADER_SIZE
                    + size_of::<NetmapSlot>() * layout.tx_slots.max(layout.rx_slots) as usize)
                    as u64,
                LINE as u64,
            ) as u32,
            buf_objtotal: u32::try_from(bufs).map_err(|_| too_large("buffer count"))?,
            buf_objsize: round_up(layout.buf_size.into(), LINE as u64) as u32,
            huge_pages: true,
        };
        cfg.plan()?;
        Ok(cfg)
    }

    /// Offsets of the pools and the total size, checked against memory.
    pub fn plan(&self) -> Result<PoolLayout, RegionError> {
        range("if_objtotal", self.if_objtotal.into(), 1, 1 << 16)?;
        range("ring_objtotal", self.ring_objtotal.into(), 1, 1 << 16)?;
        range("buf_objtotal", self.buf_objtotal.into(), 3, u32::MAX.into())?;
        range(
            "if_objsize",
            self.if_objsize.into(),
            NETMAP_IF_SIZE as u64 + 16,
            1 << 16,
        )?;
        range(
            "ring_objsize",
            self.ring_objsize.into(),
            (RING_HEADER_SIZE + 2 * size_of::<NetmapSlot>()) as u64,
            (RING_HEADER_SIZE + MAX_SLOTS as usize * size_of::<NetmapSlot>()) as u64,
        )?;
        range(
            "buf_objsize",
            self.buf_objsize.into(),
            MIN_BUF_SIZE.into(),
            MAX_BUF_SIZE.into(),
        )?;
        let page = crate::sys::page_size() as u64;
        let limit = memory_limit();
        let if_len = self.if_objtotal as u64 * self.if_objsize as u64;
        let ring_off = round_up(if_len, page);
        let ring_len = self.ring_objtotal as u64 * self.ring_objsize as u64;
        let buf_off = round_up(ring_off + ring_len, page);
        let buf_len = self.buf_objtotal as u64 * self.buf_objsize as u64;
        let total = round_up(buf_off + buf_len, page);
        if total > limit {
            return Err(RegionError::TooLarge {
                total,
                what: "rings and buffers",
                limit,
            });
        }
        Ok(PoolLayout {
            if_pool_offset: 0,
            ring_pool_offset: ring_off as usize,
            buf_pool_offset: buf_off as usize,
            memsize: total as usize,
        })
    }
}

/// The most memory one region may take: physical memory, and never more
/// than 64 GiB.
pub fn memory_limit() -> u64 {
    crate::sys::physical_memory().min(64 << 30)
}

/// Where the pools lie in a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLayout {
    /// Offset of the `netmap_if` pool (0).
    pub if_pool_offset: usize,
    /// Offset of the ring pool.
    pub ring_pool_offset: usize,
    /// Offset of the buffer pool.
    pub buf_pool_offset: usize,
    /// `nr_memsize`.
    pub memsize: usize,
}

/// A free list over fixed-size objects.
#[derive(Debug)]
struct Pool {
    name: &'static str,
    offset: usize,
    objsize: usize,
    total: u32,
    free: Vec<u32>,
    used: Vec<bool>,
}

impl Pool {
    fn new(name: &'static str, offset: usize, objsize: u32, total: u32, reserved: u32) -> Pool {
        let mut used = vec![false; total as usize];
        used.iter_mut()
            .take(reserved as usize)
            .for_each(|u| *u = true);
        // Hand out low indexes first: pop from the end of a reversed list.
        let free = (reserved..total).rev().collect();
        Pool {
            name,
            offset,
            objsize: objsize as usize,
            total,
            free,
            used,
        }
    }

    fn alloc(&mut self, mem_id: u16) -> Result<u32, RegionError> {
        let i = self.free.pop().ok_or(RegionError::Exhausted {
            mem_id,
            pool: self.name,
            total: self.total,
        })?;
        self.used[i as usize] = true;
        Ok(i)
    }

    /// Frees `i`; returns false (and changes nothing) if it was not in use,
    /// which is how a user's duplicate or bogus index is absorbed.
    fn free(&mut self, i: u32) -> bool {
        match self.used.get_mut(i as usize) {
            Some(u) if *u => {
                *u = false;
                self.free.push(i);
                true
            }
            _ => false,
        }
    }

    fn offset_of(&self, i: u32) -> usize {
        self.offset + i as usize * self.objsize
    }

    fn index_of(&self, off: usize, mem_id: u16) -> Result<u32, RegionError> {
        let i = off
            .checked_sub(self.offset)
            .filter(|rel| rel % self.objsize == 0 && rel / self.objsize < self.total as usize)
            .map(|rel| (rel / self.objsize) as u32)
            .filter(|i| self.used[*i as usize]);
        i.ok_or(RegionError::BadObject {
            mem_id,
            pool: self.name,
            offset: off,
        })
    }

    fn in_use(&self) -> usize {
        self.used.iter().filter(|u| **u).count()
    }
}

/// Who holds a buffer of the pool: the switch's record, never read back
/// from shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Holder {
    /// On the free list.
    Free,
    /// Buffers 0 and 1 (0 means "no buffer").
    Reserved,
    /// Ring `ri` of the ring pool: one of the buffers its slots were
    /// given.
    Ring(u16),
    /// `netmap_if` `ii` of the if pool: one of its extra buffers.
    If(u16),
    /// Lost by a client of a swap domain (see [`Region::free_if_swapped`]):
    /// out of use until the region goes.
    Stray,
}

/// The buffer pool, with a holder per buffer.
///
/// # Ownership
///
/// Every buffer has exactly one holder: free, reserved (0 and 1), ring `r`
/// (the buffers [`Region::alloc_ring`] put in its slots) or `netmap_if` `i`
/// (the extra buffers [`Region::alloc_if`] linked from its `ni_bufs_head`).
/// Holders change only in control-plane calls, never per frame, and never
/// because of what a client wrote: a client may move buffers among its
/// bound rings' slots and its extra-buffer list (netmap's zero copy), and
/// that does not change who holds them.
///
/// - [`Region::free_if`] frees exactly the buffers its `netmap_if` holds,
///   wherever the client left them, and nothing else; the client's list is
///   not read, so no list (another registration's buffer, a ring's buffer,
///   a loop, duplicates, nonsense) frees a buffer someone else holds.
/// - [`Region::free_ring`] frees exactly the buffers its ring holds.
/// - [`Region::reinit_ring`], run for every ring a new registration binds,
///   points every slot at the ring's own buffers again (distinct, with
///   netmap's initial `len` and `flags`), so a registration never sees the
///   buffers, nor the data, its predecessor swapped in. Until then an
///   unbound ring's slots may still name buffers freed with a `netmap_if`;
///   nothing reads an unbound ring.
/// - Where buffers move between rings of different holders (a netmap
///   pipe's two ends, ports in one shared region that a client bridges,
///   a zero-copy monitor), where a buffer is no longer says who holds it:
///   the region is one swap domain and [`Region::free_if_swapped`] and
///   [`Region::free_ring_swapped`] apply (where the client left the
///   buffers, checked, with an exchange that keeps every holder's count),
///   and [`Region::reinit_all_rings`] starts it afresh once nobody is
///   registered.
///
/// The data path checks a slot's `buf_idx` against the pool's size only, so
/// a client can still name any buffer of its region while it is
/// registered; a region is one port's (or one pipe's, or the ports' of a
/// shared region) and always one uid's.
#[derive(Debug)]
struct BufPool {
    offset: usize,
    objsize: usize,
    total: u32,
    free: Vec<u32>,
    holder: Vec<Holder>,
}

impl BufPool {
    fn new(offset: usize, objsize: u32, total: u32) -> BufPool {
        let mut holder = vec![Holder::Free; total as usize];
        holder
            .iter_mut()
            .take(2)
            .for_each(|h| *h = Holder::Reserved);
        BufPool {
            offset,
            objsize: objsize as usize,
            total,
            // Hand out low indexes first: pop from the end of a reversed list.
            free: (2..total).rev().collect(),
            holder,
        }
    }

    /// `n` buffers for `to`, or none at all.
    fn alloc_n(&mut self, mem_id: u16, n: u32, to: Holder) -> Result<Vec<u32>, RegionError> {
        let n = n as usize;
        if self.free.len() < n {
            return Err(RegionError::Exhausted {
                mem_id,
                pool: "buffer",
                total: self.total,
            });
        }
        let got: Vec<u32> = self.free.drain(self.free.len() - n..).rev().collect();
        for &b in &got {
            self.holder[b as usize] = to;
        }
        Ok(got)
    }

    /// Who holds `b` (`None` out of range).
    fn holder(&self, b: u32) -> Option<Holder> {
        self.holder.get(b as usize).copied()
    }

    /// Gives `b` back if `from` holds it; false (nothing changed) otherwise.
    fn release(&mut self, b: u32, from: Holder) -> bool {
        match self.holder.get_mut(b as usize) {
            Some(h) if *h == from && from != Holder::Free && from != Holder::Reserved => {
                *h = Holder::Free;
                self.free.push(b);
                true
            }
            _ => false,
        }
    }

    fn offset_of(&self, b: u32) -> usize {
        self.offset + b as usize * self.objsize
    }

    fn in_use(&self) -> usize {
        self.holder.iter().filter(|h| **h != Holder::Free).count()
    }
}

/// The switch's record of a ring.
#[derive(Debug, Clone)]
struct RingRec {
    num_slots: u32,
    dir: Dir,
    ringid: u16,
    /// The buffers the ring holds, one per slot, in the order its slots
    /// get them.
    bufs: Vec<u32>,
}

impl Default for RingRec {
    fn default() -> Self {
        RingRec {
            num_slots: 0,
            dir: Dir::Tx,
            ringid: 0,
            bufs: Vec::new(),
        }
    }
}

/// A `netmap_if` whose registration is not complete yet, from
/// [`Region::pending_if`]: dropped without [`keep`](Self::keep) (an error
/// return, `?`, a panic) it is freed with its extra buffers, so no failed
/// registration can leak it. Reads the region through `Deref`.
#[must_use = "dropping it frees the netmap_if"]
#[derive(Debug)]
pub struct PendingIf<'a> {
    region: &'a mut Region,
    off: usize,
    kept: bool,
}

impl PendingIf<'_> {
    /// Its offset (`nr_offset`).
    pub fn offset(&self) -> usize {
        self.off
    }

    /// The registration is complete: the `netmap_if` stays. Returns its
    /// offset.
    pub fn keep(mut self) -> usize {
        self.kept = true;
        self.off
    }
}

impl std::ops::Deref for PendingIf<'_> {
    type Target = Region;
    fn deref(&self) -> &Region {
        self.region
    }
}

impl Drop for PendingIf<'_> {
    fn drop(&mut self) {
        if !self.kept {
            let _ = self.region.free_if(self.off);
        }
    }
}

/// The rings one registration binds, for its `netmap_if`. Each entry is the
/// ring's offset in the region, or `None` for a ring that exists on the port
/// but is not bound (netmap writes 0), and for fake host rings.
#[derive(Debug, Clone, Default)]
pub struct IfRings {
    /// NIC TX rings.
    pub tx: Vec<Option<usize>>,
    /// Host TX rings.
    pub host_tx: Vec<Option<usize>>,
    /// NIC RX rings.
    pub rx: Vec<Option<usize>>,
    /// Host RX rings.
    pub host_rx: Vec<Option<usize>>,
}

/// Offsets of the fields of `struct netmap_if`.
mod nif {
    pub const NAME: usize = 0;
    pub const VERSION: usize = 16;
    pub const FLAGS: usize = 20;
    pub const TX_RINGS: usize = 24;
    pub const RX_RINGS: usize = 28;
    pub const BUFS_HEAD: usize = 32;
    pub const HOST_TX_RINGS: usize = 36;
    pub const HOST_RX_RINGS: usize = 40;
    pub const RING_OFS: usize = 56;
}

/// A memory region.
#[derive(Debug)]
pub struct Region {
    mem_id: u16,
    owner: u32,
    cfg: RegionConfig,
    layout: PoolLayout,
    memfd: Memfd,
    map: Arc<SharedMap>,
    /// Each ring's geometry and buffers, by ring pool index: the switch's
    /// own record.
    ring_recs: Vec<RingRec>,
    /// Each `netmap_if`'s extra buffers, by if pool index.
    if_bufs: Vec<Vec<u32>>,
    ifs: Pool,
    rings: Pool,
    bufs: BufPool,
}

impl Region {
    /// Creates region `mem_id` owned by `owner` (a uid) with `cfg`'s pools.
    pub fn new(mem_id: u16, owner: u32, cfg: &RegionConfig) -> Result<Region, RegionError> {
        let layout = cfg.plan()?;
        let memfd =
            Memfd::create_sealed(&format!("vale-mem{mem_id}"), layout.memsize, cfg.huge_pages)?;
        match memfd.huge_pages() {
            HugePages::Huge2M => {
                info!(mem_id, bytes = layout.memsize, "region on 2 MiB huge pages")
            }
            HugePages::None => info!(
                mem_id,
                bytes = layout.memsize,
                "region on 4 KiB pages (hugetlb {})",
                if cfg.huge_pages {
                    "has too few free 2 MiB pages"
                } else {
                    "not requested"
                }
            ),
        }
        let map = Arc::new(SharedMap::map(&memfd, memfd.size())?);
        Ok(Region {
            ring_recs: vec![RingRec::default(); cfg.ring_objtotal as usize],
            if_bufs: vec![Vec::new(); cfg.if_objtotal as usize],
            mem_id,
            owner,
            cfg: *cfg,
            layout,
            ifs: Pool::new(
                "netmap_if",
                layout.if_pool_offset,
                cfg.if_objsize,
                cfg.if_objtotal,
                0,
            ),
            rings: Pool::new(
                "ring",
                layout.ring_pool_offset,
                cfg.ring_objsize,
                cfg.ring_objtotal,
                0,
            ),
            // Buffers 0 and 1 are reserved: 0 means "no buffer".
            bufs: BufPool::new(layout.buf_pool_offset, cfg.buf_objsize, cfg.buf_objtotal),
            memfd,
            map,
        })
    }

    /// The region's id (`nr_mem_id`).
    pub fn mem_id(&self) -> u16 {
        self.mem_id
    }
    /// The uid that owns the region.
    pub fn owner(&self) -> u32 {
        self.owner
    }
    /// `nr_memsize`: the bytes a client maps.
    pub fn memsize(&self) -> usize {
        self.layout.memsize
    }
    /// Pools' configuration.
    pub fn config(&self) -> &RegionConfig {
        &self.cfg
    }
    /// Pools' offsets.
    pub fn layout(&self) -> &PoolLayout {
        &self.layout
    }
    /// Whether huge pages back the region.
    pub fn huge_pages(&self) -> HugePages {
        self.memfd.huge_pages()
    }
    /// The switch's mapping.
    pub fn map(&self) -> &SharedMap {
        &self.map
    }
    /// The switch's mapping, shared with forwarding threads.
    pub fn map_arc(&self) -> Arc<SharedMap> {
        Arc::clone(&self.map)
    }
    /// A descriptor of the memfd to hand to a client.
    pub fn share_fd(&self) -> io::Result<OwnedFd> {
        self.memfd.as_fd().try_clone_to_owned()
    }
    /// Buffers in use, including the two reserved.
    pub fn bufs_in_use(&self) -> usize {
        self.bufs.in_use()
    }
    /// Rings in use.
    pub fn rings_in_use(&self) -> usize {
        self.rings.in_use()
    }
    /// `netmap_if`s in use.
    pub fn ifs_in_use(&self) -> usize {
        self.ifs.in_use()
    }

    /// The `POOLS_INFO_GET` answer.
    pub fn pools_info(&self) -> NmreqPoolsInfo {
        NmreqPoolsInfo {
            nr_memsize: self.layout.memsize as u64,
            nr_mem_id: self.mem_id,
            nr_if_pool_offset: self.layout.if_pool_offset as u64,
            nr_if_pool_objtotal: self.cfg.if_objtotal,
            nr_if_pool_objsize: self.cfg.if_objsize,
            nr_ring_pool_offset: self.layout.ring_pool_offset as u64,
            nr_ring_pool_objtotal: self.cfg.ring_objtotal,
            nr_ring_pool_objsize: self.cfg.ring_objsize,
            nr_buf_pool_offset: self.layout.buf_pool_offset as u64,
            nr_buf_pool_objtotal: self.cfg.buf_objtotal,
            nr_buf_pool_objsize: self.cfg.buf_objsize,
            ..Default::default()
        }
    }

    /// A checked view of the ring at `off` (for the switch).
    pub fn ring_view(&self, off: usize) -> Result<RingView<'_>, RegionError> {
        let (num_slots, buf_base, buf_size, nbufs) = self.ring_params(off)?;
        Ok(RingView::from_parts(
            &self.map, off, num_slots, buf_base, buf_size, nbufs,
        )?)
    }

    /// The switch's record of the ring at `off`: (num_slots, offset of
    /// buffer 0, buffer size, buffers in the pool). Never read back from
    /// shared memory, which the client may have rewritten.
    pub fn ring_params(&self, off: usize) -> Result<(u32, usize, u32, u32), RegionError> {
        let ri = self.rings.index_of(off, self.mem_id)?;
        Ok((
            self.ring_recs[ri as usize].num_slots,
            self.layout.buf_pool_offset,
            self.cfg.buf_objsize,
            self.cfg.buf_objtotal,
        ))
    }

    /// Allocates a ring of `num_slots` with a buffer of its own in every
    /// slot, and initialises it as netmap does: `head = cur = 0`, TX `tail =
    /// num_slots - 1` (all free), RX `tail = 0` (empty). Returns its offset.
    pub fn alloc_ring(
        &mut self,
        dir: Dir,
        ringid: u16,
        num_slots: u32,
    ) -> Result<usize, RegionError> {
        let max = (self.cfg.ring_objsize as usize - RING_HEADER_SIZE) / size_of::<NetmapSlot>();
        range("num_slots", num_slots.into(), MIN_SLOTS.into(), max as u64)?;
        if self.bufs.free.len() < num_slots as usize {
            return Err(RegionError::Exhausted {
                mem_id: self.mem_id,
                pool: "buffer",
                total: self.bufs.total,
            });
        }
        let ri = self.rings.alloc(self.mem_id)?;
        // plan() bounds the ring pool to 2^16 objects: the index fits.
        let bufs = match self
            .bufs
            .alloc_n(self.mem_id, num_slots, Holder::Ring(ri as u16))
        {
            Ok(b) => b,
            Err(e) => {
                self.rings.free(ri);
                return Err(e);
            }
        };
        self.ring_recs[ri as usize] = RingRec {
            num_slots,
            dir,
            ringid,
            bufs,
        };
        let off = self.rings.offset_of(ri);
        if let Err(e) = self.write_ring(ri) {
            let _ = self.free_ring(off);
            return Err(e);
        }
        Ok(off)
    }

    /// Writes ring `ri` as new from the switch's record: header, pointers,
    /// and each slot on the ring's own buffer.
    fn write_ring(&self, ri: u32) -> Result<(), RegionError> {
        let rec = &self.ring_recs[ri as usize];
        let off = self.rings.offset_of(ri);
        let m = &self.map;
        // Zero the whole object: stale slots past num_slots must not look
        // like buffers to anyone.
        m.fill(off, self.cfg.ring_objsize as usize, 0)?;
        m.write(
            off + field::BUF_OFS,
            self.layout.buf_pool_offset as i64 - off as i64,
        )?;
        m.write(off + field::NUM_SLOTS, rec.num_slots)?;
        m.write(off + field::NR_BUF_SIZE, self.cfg.buf_objsize)?;
        m.write(off + field::RINGID, rec.ringid)?;
        m.write(
            off + field::DIR,
            if rec.dir == Dir::Tx { 0u16 } else { 1u16 },
        )?;
        self.write_pointers(off, rec)?;
        let len = if rec.dir == Dir::Tx {
            self.cfg.buf_objsize as u16
        } else {
            0
        };
        for (i, &buf_idx) in rec.bufs.iter().enumerate() {
            let slot = NetmapSlot {
                buf_idx,
                len,
                flags: 0,
                ptr: 0,
            };
            m.write(off + RING_HEADER_SIZE + i * size_of::<NetmapSlot>(), slot)?;
        }
        Ok(())
    }

    fn write_pointers(&self, off: usize, rec: &RingRec) -> Result<(), RegionError> {
        let m = &self.map;
        m.write(off + field::HEAD, 0u32)?;
        m.write(off + field::CUR, 0u32)?;
        let tail = if rec.dir == Dir::Tx {
            rec.num_slots - 1
        } else {
            0
        };
        m.write(off + field::TAIL, tail)?;
        Ok(())
    }

    /// The ring at `off` as [`alloc_ring`](Self::alloc_ring) made it: header
    /// and pointers rewritten, every slot on one of the ring's own buffers
    /// (distinct), `len` and `flags` as new. For a new registration of a
    /// ring another one had bound: whatever buffers the previous client
    /// swapped into the slots are not handed on.
    pub fn reinit_ring(&self, off: usize) -> Result<(), RegionError> {
        let ri = self.rings.index_of(off, self.mem_id)?;
        self.write_ring(ri)
    }

    /// Puts only the pointers of the ring at `off` back to netmap's initial
    /// state (`head = cur = 0`, `tail` all free or empty), leaving the
    /// slots: for a ring of a swap domain, whose slots may hold buffers the
    /// other side still counts on (a pipe end bound again while the other
    /// end is open).
    pub fn rewind_ring(&self, off: usize) -> Result<(), RegionError> {
        let ri = self.rings.index_of(off, self.mem_id)?;
        self.write_pointers(off, &self.ring_recs[ri as usize])
    }

    /// Frees the ring at `off` and the buffers it holds, whatever its slots
    /// say now.
    pub fn free_ring(&mut self, off: usize) -> Result<(), RegionError> {
        let ri = self.rings.index_of(off, self.mem_id)?;
        let rec = std::mem::take(&mut self.ring_recs[ri as usize]);
        for b in rec.bufs {
            self.bufs.release(b, Holder::Ring(ri as u16));
        }
        self.rings.free(ri);
        Ok(())
    }

    /// Writes a `netmap_if` for one registration of port `name` binding
    /// `rings`, with `extra_bufs` extra buffers of its own linked from
    /// `ni_bufs_head`. Returns its offset (`nr_offset`).
    pub fn alloc_if(
        &mut self,
        name: &str,
        rings: &IfRings,
        extra_bufs: u32,
    ) -> Result<usize, RegionError> {
        if name.len() > 15 {
            return Err(RegionError::NameTooLong(name.into()));
        }
        range("extra_bufs", extra_bufs.into(), 0, MAX_EXTRA_BUFS.into())?;
        let entries = rings.tx.len() + rings.host_tx.len() + rings.rx.len() + rings.host_rx.len();
        let room = (self.cfg.if_objsize as usize - NETMAP_IF_SIZE) / 8;
        range("netmap_if rings", entries as u64, 0, room as u64)?;
        for off in [&rings.tx, &rings.host_tx, &rings.rx, &rings.host_rx]
            .into_iter()
            .flatten()
            .flatten()
        {
            self.rings.index_of(*off, self.mem_id)?;
        }
        if self.bufs.free.len() < extra_bufs as usize {
            return Err(RegionError::Exhausted {
                mem_id: self.mem_id,
                pool: "buffer",
                total: self.bufs.total,
            });
        }
        let ii = self.ifs.alloc(self.mem_id)?;
        // plan() bounds the if pool to 2^16 objects: the index fits.
        match self
            .bufs
            .alloc_n(self.mem_id, extra_bufs, Holder::If(ii as u16))
        {
            Ok(b) => self.if_bufs[ii as usize] = b,
            Err(e) => {
                self.ifs.free(ii);
                return Err(e);
            }
        }
        let off = self.ifs.offset_of(ii);
        if let Err(e) = self.write_if(off, ii, name, rings) {
            let _ = self.free_if(off);
            return Err(e);
        }
        Ok(off)
    }

    fn write_if(
        &self,
        off: usize,
        ii: u32,
        name: &str,
        rings: &IfRings,
    ) -> Result<(), RegionError> {
        let m = &self.map;
        m.fill(off, self.cfg.if_objsize as usize, 0)?;
        m.copy_in(off + nif::NAME, name.as_bytes())?;
        m.write(off + nif::VERSION, u32::from(NETMAP_API))?;
        m.write(off + nif::FLAGS, 0u32)?;
        m.write(off + nif::TX_RINGS, rings.tx.len() as u32)?;
        m.write(off + nif::RX_RINGS, rings.rx.len() as u32)?;
        m.write(off + nif::HOST_TX_RINGS, rings.host_tx.len() as u32)?;
        m.write(off + nif::HOST_RX_RINGS, rings.host_rx.len() as u32)?;
        let order = [&rings.tx, &rings.host_tx, &rings.rx, &rings.host_rx];
        for (k, r) in order.into_iter().flatten().enumerate() {
            let rel = r.map_or(0, |ro| ro as i64 - off as i64);
            m.write(off + nif::RING_OFS + 8 * k, rel)?;
        }
        // Extra buffers: a list linked through each buffer's first u32.
        let mut head = 0u32;
        for &b in &self.if_bufs[ii as usize] {
            m.write(self.bufs.offset_of(b), head)?;
            head = b;
        }
        m.write(off + nif::BUFS_HEAD, head)?;
        Ok(())
    }

    /// As [`alloc_if`](Self::alloc_if), held by a guard that frees it unless
    /// the registration completes ([`PendingIf::keep`]).
    pub fn pending_if(
        &mut self,
        name: &str,
        rings: &IfRings,
        extra_bufs: u32,
    ) -> Result<PendingIf<'_>, RegionError> {
        let off = self.alloc_if(name, rings, extra_bufs)?;
        Ok(PendingIf {
            region: self,
            off,
            kept: false,
        })
    }

    /// Frees the `netmap_if` at `off` and exactly the extra buffers it
    /// holds, wherever the client moved them; `ni_bufs_head` is not read.
    pub fn free_if(&mut self, off: usize) -> Result<(), RegionError> {
        let ii = self.ifs.index_of(off, self.mem_id)?;
        for b in std::mem::take(&mut self.if_bufs[ii as usize]) {
            self.bufs.release(b, Holder::If(ii as u16));
        }
        self.ifs.free(ii);
        Ok(())
    }

    /// Frees the `netmap_if` at `off` in a region that is one swap domain
    /// (a netmap pipe's: its forwarding exchanges buffers between the two
    /// ends' rings, so the buffers a client has in hand are not those it
    /// was given). Location is then the only truth: the client's list is
    /// walked (at most as many entries as the `netmap_if` holds buffers,
    /// each buffer once, stopping at the first index out of range, free or
    /// reserved), and each buffer named there that a ring or a `netmap_if`
    /// of the region holds is freed. Every other holder that lost a buffer
    /// this way is given one of this `netmap_if`'s buffers instead, so each
    /// ring keeps one per slot and nothing is freed twice; this
    /// `netmap_if`'s buffers the list did not account for (a client that
    /// lost track of them; they may sit in the other end's rings) become
    /// stray, out of use until the region goes.
    pub fn free_if_swapped(&mut self, off: usize) -> Result<(), RegionError> {
        let ii = self.ifs.index_of(off, self.mem_id)?;
        let me = Holder::If(ii as u16);
        let mut b: u32 = self.map.read(off + nif::BUFS_HEAD)?;
        let mine = std::mem::take(&mut self.if_bufs[ii as usize]);
        let mut located = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..mine.len() {
            let Some(h) = self.bufs.holder(b) else { break };
            if matches!(h, Holder::Free | Holder::Reserved | Holder::Stray) || !seen.insert(b) {
                break;
            }
            located.push(b);
            // In range (it has a holder), so inside the mapping.
            b = self.map.read(self.bufs.offset_of(b)).unwrap_or(0);
        }
        self.release_located(me, mine, &located);
        self.ifs.free(ii);
        Ok(())
    }

    /// Frees the ring at `off` in a region that is one swap domain (ports
    /// in one region whose client swaps buffers between their rings, as
    /// netmap's bridge does): the buffers its slots name now are freed, as
    /// netmap frees a ring's buffers where its slots point, with the same
    /// exchange as [`free_if_swapped`](Self::free_if_swapped), so the rings
    /// that stay keep one buffer per slot and no buffer they name goes
    /// free. Each slot is read once; a slot naming a buffer out of range,
    /// free, reserved or already named is skipped.
    pub fn free_ring_swapped(&mut self, off: usize) -> Result<(), RegionError> {
        let ri = self.rings.index_of(off, self.mem_id)?;
        let num_slots = self.ring_recs[ri as usize].num_slots as usize;
        let mut located = Vec::with_capacity(num_slots);
        for i in 0..num_slots {
            let slot: NetmapSlot = self
                .map
                .read(off + RING_HEADER_SIZE + i * size_of::<NetmapSlot>())?;
            located.push(slot.buf_idx);
        }
        let rec = std::mem::take(&mut self.ring_recs[ri as usize]);
        self.release_located(Holder::Ring(ri as u16), rec.bufs, &located);
        self.rings.free(ri);
        Ok(())
    }

    /// Rewrites every ring of the region from the switch's records (see
    /// [`reinit_ring`](Self::reinit_ring)) and frees the stray buffers:
    /// for a swap domain that nobody has registered, so that its first
    /// registration finds every slot on a distinct buffer again, whatever
    /// earlier clients swapped, and what they lost track of is not lost for
    /// good.
    pub fn reinit_all_rings(&mut self) -> Result<(), RegionError> {
        // Nobody holds a stray buffer any more: back to the free list.
        for b in 0..self.bufs.total {
            if self.bufs.holder[b as usize] == Holder::Stray {
                self.bufs.holder[b as usize] = Holder::Free;
                self.bufs.free.push(b);
            }
        }
        for ri in 0..self.rings.total {
            if self.rings.used[ri as usize] {
                self.write_ring(ri)?;
            }
        }
        Ok(())
    }

    /// The end of holder `me` in a swap domain: `mine` are the buffers it
    /// held, `located` those its client left in its hands (checked, each at
    /// most once). Each buffer named there that a ring or a `netmap_if` of
    /// the region holds is freed; every other holder that lost a buffer
    /// this way is given one of `mine` instead, so each ring keeps one per
    /// slot and nothing is freed twice; the rest of `mine` that nothing
    /// accounted for (a client that lost track of them; they may sit in
    /// another holder's slots) become stray, out of use until the region
    /// goes.
    fn release_located(&mut self, me: Holder, mine: Vec<u32>, located: &[u32]) {
        let mut owed = Vec::new();
        for &b in located {
            let Some(h) = self.bufs.holder(b) else {
                continue;
            };
            if matches!(h, Holder::Free | Holder::Reserved | Holder::Stray) {
                continue;
            }
            self.bufs.release(b, h);
            if h != me {
                owed.push(h);
            }
        }
        // The records of the holders that lost buffers, once each.
        let mut losers = owed.clone();
        losers.sort_unstable();
        losers.dedup();
        for h in losers {
            let bufs = match h {
                Holder::Ring(r) => &mut self.ring_recs[r as usize].bufs,
                Holder::If(i) => &mut self.if_bufs[i as usize],
                _ => continue,
            };
            let holders = &self.bufs.holder;
            bufs.retain(|x| holders[*x as usize] == h);
        }
        // Every buffer still held by `me` pays a debt, or strays.
        let left: Vec<u32> = mine
            .into_iter()
            .filter(|&x| self.bufs.holder(x) == Some(me))
            .collect();
        let mut owed = owed.into_iter();
        for x in left {
            let to = owed.next().unwrap_or(Holder::Stray);
            self.bufs.holder[x as usize] = to;
            match to {
                Holder::Ring(r) => self.ring_recs[r as usize].bufs.push(x),
                Holder::If(i) => self.if_bufs[i as usize].push(x),
                _ => {}
            }
        }
    }
}

/// A client's view of a `netmap_if` in a mapped region.
#[derive(Debug, Clone, Copy)]
pub struct IfView<'a> {
    map: &'a SharedMap,
    off: usize,
}

impl<'a> IfView<'a> {
    /// The `netmap_if` at `nr_offset`.
    pub fn new(map: &'a SharedMap, off: usize) -> io::Result<IfView<'a>> {
        map.check(off, NETMAP_IF_SIZE, 8)?;
        Ok(IfView { map, off })
    }
    fn u32_at(&self, f: usize) -> u32 {
        self.map.read(self.off + f).unwrap_or(0)
    }
    /// `ni_name`.
    pub fn name(&self) -> String {
        let mut b = [0u8; 16];
        let _ = self.map.copy_out(self.off + nif::NAME, &mut b);
        let end = b.iter().position(|c| *c == 0).unwrap_or(16);
        String::from_utf8_lossy(&b[..end]).into_owned()
    }
    /// `ni_version`.
    pub fn version(&self) -> u32 {
        self.u32_at(nif::VERSION)
    }
    /// `ni_tx_rings`.
    pub fn tx_rings(&self) -> u32 {
        self.u32_at(nif::TX_RINGS)
    }
    /// `ni_rx_rings`.
    pub fn rx_rings(&self) -> u32 {
        self.u32_at(nif::RX_RINGS)
    }
    /// `ni_host_tx_rings`.
    pub fn host_tx_rings(&self) -> u32 {
        self.u32_at(nif::HOST_TX_RINGS)
    }
    /// `ni_host_rx_rings`.
    pub fn host_rx_rings(&self) -> u32 {
        self.u32_at(nif::HOST_RX_RINGS)
    }
    /// `ni_bufs_head`.
    pub fn bufs_head(&self) -> u32 {
        self.u32_at(nif::BUFS_HEAD)
    }
    /// `ni_flags`.
    pub fn flags(&self) -> u32 {
        self.u32_at(nif::FLAGS)
    }

    /// Region offset of `ring_ofs[k]` (indexes as netmap: NIC TX, host TX,
    /// NIC RX, host RX), or `None` for an unbound ring.
    pub fn ring_offset(&self, k: u32) -> Option<usize> {
        let total = self.tx_rings() as u64
            + self.host_tx_rings() as u64
            + self.rx_rings() as u64
            + self.host_rx_rings() as u64;
        if k as u64 >= total {
            return None;
        }
        let rel: i64 = self
            .map
            .read(self.off + nif::RING_OFS + 8 * k as usize)
            .ok()?;
        if rel == 0 {
            return None;
        }
        usize::try_from(self.off as i64 + rel).ok()
    }

    /// `NETMAP_TXRING(nifp, i)`.
    pub fn txring(&self, i: u32) -> Option<usize> {
        self.ring_offset(i)
    }

    /// `NETMAP_RXRING(nifp, i)`: indexes past the TX rings and host TX rings.
    pub fn rxring(&self, i: u32) -> Option<usize> {
        self.ring_offset(self.tx_rings() + self.host_tx_rings() + i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> PortLayout {
        PortLayout {
            tx_slots: 64,
            rx_slots: 64,
            ..Default::default()
        }
    }

    #[test]
    fn impossible_sizes_name_the_number() {
        let cases: &[(PortLayout, &str)] = &[
            (
                PortLayout {
                    tx_slots: 0,
                    ..small()
                },
                "tx_slots = 0",
            ),
            (
                PortLayout {
                    rx_slots: 4097,
                    ..small()
                },
                "rx_slots = 4097",
            ),
            (
                PortLayout {
                    buf_size: 63,
                    ..small()
                },
                "buf_size = 63",
            ),
            (
                PortLayout {
                    buf_size: 65537,
                    ..small()
                },
                "buf_size = 65537",
            ),
            (
                PortLayout {
                    tx_rings: 0,
                    ..small()
                },
                "tx_rings = 0",
            ),
            (
                PortLayout {
                    rx_rings: 65,
                    ..small()
                },
                "rx_rings = 65",
            ),
            (
                PortLayout {
                    extra_bufs: u32::MAX,
                    ..small()
                },
                "extra_bufs = 4294967295",
            ),
        ];
        for (l, want) in cases {
            let e = RegionConfig::for_ports(l, 1, 1).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should name {want:?}");
        }
        let huge = PortLayout {
            tx_rings: 64,
            rx_rings: 64,
            tx_slots: 4096,
            rx_slots: 4096,
            buf_size: 65536,
            extra_bufs: 1 << 20,
            ..small()
        };
        let e = RegionConfig::for_ports(&huge, 254, 1024).unwrap_err();
        assert!(matches!(e, RegionError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("larger than memory allows"), "{e}");
    }

    #[test]
    fn rings_and_if_in_netmap_layout() {
        let l = PortLayout {
            extra_bufs: 5,
            ..small()
        };
        let cfg = RegionConfig {
            huge_pages: false,
            ..RegionConfig::for_ports(&l, 1, 2).unwrap()
        };
        let mut r = Region::new(3, 1000, &cfg).unwrap();
        let tx = r.alloc_ring(Dir::Tx, 0, 64).unwrap();
        let rx = r.alloc_ring(Dir::Rx, 0, 64).unwrap();
        let rings = IfRings {
            tx: vec![Some(tx)],
            host_tx: vec![None],
            rx: vec![Some(rx)],
            host_rx: vec![None],
        };
        let nifp = r.alloc_if("vale0:a", &rings, 5).unwrap();
        let v = IfView::new(r.map(), nifp).unwrap();
        assert_eq!(v.name(), "vale0:a");
        assert_eq!(v.version(), u32::from(NETMAP_API));
        assert_eq!(
            (
                v.tx_rings(),
                v.rx_rings(),
                v.host_tx_rings(),
                v.host_rx_rings()
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(v.txring(0), Some(tx));
        assert_eq!(v.ring_offset(1), None, "fake host TX ring has ring_ofs 0");
        assert_eq!(v.rxring(0), Some(rx));
        assert_eq!(v.rxring(1), None);
        assert_eq!(v.rxring(7), None);
        let ring = r.ring_view(tx).unwrap();
        assert_eq!((ring.head(), ring.cur(), ring.tail()), (0, 0, 63));
        let mut seen = std::collections::HashSet::new();
        for i in 0..64 {
            let s = ring.slot(i);
            assert!(s.buf_idx >= 2 && s.buf_idx < cfg.buf_objtotal);
            assert!(seen.insert(s.buf_idx), "buffer {} in two slots", s.buf_idx);
        }
        let rxv = r.ring_view(rx).unwrap();
        assert_eq!((rxv.head(), rxv.cur(), rxv.tail()), (0, 0, 0));
        // The extra-buffer list: 5 distinct buffers, 0-terminated.
        let mut b = v.bufs_head();
        let mut n = 0;
        while b != 0 {
            assert!(seen.insert(b));
            b = r
                .map()
                .read(r.layout().buf_pool_offset + b as usize * cfg.buf_objsize as usize)
                .unwrap();
            n += 1;
        }
        assert_eq!(n, 5);
        assert_eq!(r.bufs_in_use(), 2 + 128 + 5);
        r.free_if(nifp).unwrap();
        r.free_ring(tx).unwrap();
        r.free_ring(rx).unwrap();
        assert_eq!(r.bufs_in_use(), 2);
        assert_eq!(r.rings_in_use(), 0);
        assert!(r.free_ring(tx).is_err(), "double free of a ring is refused");
    }

    #[test]
    fn a_ring_frees_its_own_buffers_whatever_its_slots_say() {
        let cfg = RegionConfig {
            huge_pages: false,
            ..RegionConfig::for_ports(&small(), 1, 1).unwrap()
        };
        let mut r = Region::new(1, 0, &cfg).unwrap();
        let tx = r.alloc_ring(Dir::Tx, 0, 64).unwrap();
        let rx = r.alloc_ring(Dir::Rx, 0, 64).unwrap();
        let v = r.ring_view(tx).unwrap();
        let dup = v.slot(0);
        for i in 1..64 {
            v.set_slot(
                i,
                if i % 2 == 0 {
                    dup
                } else {
                    NetmapSlot {
                        buf_idx: u32::MAX,
                        ..dup
                    }
                },
            );
        }
        r.free_ring(tx).unwrap();
        // Every buffer the ring was given came back, none of the RX ring's.
        assert_eq!(r.bufs_in_use(), 2 + 64);
        check_books(&r);
        r.free_ring(rx).unwrap();
        assert_eq!(r.bufs_in_use(), 2);
    }

    #[test]
    fn pools_info_matches_layout() {
        let cfg = RegionConfig {
            huge_pages: false,
            ..RegionConfig::for_ports(&small(), 2, 1).unwrap()
        };
        let r = Region::new(9, 0, &cfg).unwrap();
        let p = r.pools_info();
        assert_eq!(p.nr_mem_id, 9);
        assert_eq!(p.nr_memsize as usize, r.memsize());
        assert_eq!(p.nr_if_pool_offset, 0);
        assert!(p.nr_ring_pool_offset >= (p.nr_if_pool_objtotal * p.nr_if_pool_objsize) as u64);
        assert!(
            p.nr_buf_pool_offset
                >= p.nr_ring_pool_offset
                    + (p.nr_ring_pool_objtotal * p.nr_ring_pool_objsize) as u64
        );
        assert!(
            p.nr_buf_pool_offset + p.nr_buf_pool_objtotal as u64 * p.nr_buf_pool_objsize as u64
                <= p.nr_memsize
        );
        assert_eq!(p.nr_buf_pool_objtotal, 2 + 2 * 128);
    }

    /// A region for `ports` ports of one TX and one RX ring of 64 slots,
    /// `regs` registrations each with `extra` extra buffers.
    fn region_for(ports: u32, regs: u32, extra: u32) -> Region {
        let l = PortLayout {
            extra_bufs: extra,
            ..small()
        };
        let cfg = RegionConfig {
            huge_pages: false,
            ..RegionConfig::for_ports(&l, ports, regs).unwrap()
        };
        Region::new(1, 0, &cfg).unwrap()
    }

    fn if_rings(tx: usize, rx: usize) -> IfRings {
        IfRings {
            tx: vec![Some(tx)],
            host_tx: vec![None],
            rx: vec![Some(rx)],
            host_rx: vec![None],
        }
    }

    /// The buffers a ring's slots name now.
    fn slots(r: &Region, off: usize) -> Vec<u32> {
        let v = r.ring_view(off).unwrap();
        (0..v.num_slots()).map(|i| v.slot(i).buf_idx).collect()
    }

    /// Swaps slot `i` of the ring at `off` with buffer `b`; returns the
    /// buffer the slot had.
    fn swap_in(r: &Region, off: usize, i: u32, b: u32) -> u32 {
        let v = r.ring_view(off).unwrap();
        let mut s = v.slot(i);
        let old = s.buf_idx;
        s.buf_idx = b;
        s.flags |= crate::abi::NS_BUF_CHANGED;
        v.set_slot(i, s);
        old
    }

    /// The client's extra-buffer list of `nifp`, as it links it (bounded).
    fn list(r: &Region, nifp: usize) -> Vec<u32> {
        let mut b = IfView::new(r.map(), nifp).unwrap().bufs_head();
        let mut out = Vec::new();
        while b != 0 && out.len() < 100 {
            out.push(b);
            b = r.map().read(r.bufs.offset_of(b)).unwrap_or(0);
        }
        out
    }

    /// Writes `links` as the client's list of `nifp`: head first, each
    /// buffer pointing at the next, the last at `end` (0, or anything).
    fn set_list(r: &Region, nifp: usize, links: &[u32], end: u32) {
        let head = links.first().copied().unwrap_or(end);
        r.map().write(nifp + nif::BUFS_HEAD, head).unwrap();
        for (k, &b) in links.iter().enumerate() {
            if (2..r.bufs.total).contains(&b) {
                let next = links.get(k + 1).copied().unwrap_or(end);
                r.map().write(r.bufs.offset_of(b), next).unwrap();
            }
        }
    }

    /// The region's books balance: each ring holds one buffer per slot,
    /// each record names only buffers its holder holds, each held buffer
    /// is in exactly one record.
    fn check_books(r: &Region) {
        let mut seen = std::collections::HashSet::new();
        for (ri, rec) in r.ring_recs.iter().enumerate() {
            if !r.rings.used[ri] {
                assert!(rec.bufs.is_empty(), "free ring {ri} holds buffers");
                continue;
            }
            assert_eq!(rec.bufs.len(), rec.num_slots as usize, "ring {ri}");
            for &b in &rec.bufs {
                assert_eq!(r.bufs.holder(b), Some(Holder::Ring(ri as u16)));
                assert!(seen.insert(b), "buffer {b} in two records");
            }
        }
        for (ii, bufs) in r.if_bufs.iter().enumerate() {
            for &b in bufs {
                assert_eq!(r.bufs.holder(b), Some(Holder::If(ii as u16)));
                assert!(seen.insert(b), "buffer {b} in two records");
            }
        }
        let stray = r.bufs.holder.iter().filter(|h| **h == Holder::Stray);
        assert_eq!(seen.len() + 2 + stray.count(), r.bufs_in_use());
        let free: std::collections::HashSet<u32> = r.bufs.free.iter().copied().collect();
        assert_eq!(
            free.len(),
            r.bufs.free.len(),
            "a buffer twice on the free list"
        );
        for b in 0..r.bufs.total {
            let held = r.bufs.holder(b) != Some(Holder::Free);
            assert_eq!(held, !free.contains(&b), "buffer {b}");
        }
    }

    /// Registration A and B of one port (A on its TX and RX rings, B with
    /// no ring of its own, as a second registration of other rings would
    /// be), 4 extra buffers each.
    fn two_registrations() -> (Region, usize, usize, usize, usize) {
        // Room for a third, so that some buffers are free.
        let mut r = region_for(1, 3, 4);
        let tx = r.alloc_ring(Dir::Tx, 0, 64).unwrap();
        let rx = r.alloc_ring(Dir::Rx, 0, 64).unwrap();
        let a = r.alloc_if("vale0:a", &if_rings(tx, rx), 4).unwrap();
        let b = r.alloc_if("vale0:b", &IfRings::default(), 4).unwrap();
        (r, tx, rx, a, b)
    }

    #[test]
    fn free_if_frees_its_own_buffers_whatever_the_list_says() {
        type Hostile = fn(&Region, usize, usize, usize, usize);
        let cases: &[(&str, Hostile)] = &[
            ("another registration's buffers", |r, _, _, a, b| {
                set_list(r, a, &list(r, b), 0)
            }),
            ("ring buffers", |r, tx, rx, a, _| {
                set_list(r, a, &[slots(r, tx)[0], slots(r, rx)[3]], 0)
            }),
            ("a loop", |r, _, _, a, _| {
                let l = list(r, a);
                set_list(r, a, &[l[0], l[1]], l[0])
            }),
            ("duplicates", |r, _, _, a, _| {
                let l = list(r, a);
                set_list(r, a, &[l[2], l[2], l[2]], 0);
                r.map().write(r.bufs.offset_of(l[2]), l[2]).unwrap();
            }),
            ("out of range and reserved", |r, _, _, a, _| {
                set_list(r, a, &[1, u32::MAX, 0], 0);
            }),
            ("a free buffer", |r, _, _, a, _| {
                let free = *r.bufs.free.last().unwrap();
                set_list(r, a, &[free], 0);
            }),
        ];
        for (what, hostile) in cases {
            let (mut r, tx, rx, a, b) = two_registrations();
            let a_bufs = list(&r, a);
            let b_bufs = list(&r, b);
            let (tx_bufs, rx_bufs) = (slots(&r, tx), slots(&r, rx));
            hostile(&r, tx, rx, a, b);
            r.free_if(a).unwrap();
            check_books(&r);
            assert_eq!(r.bufs_in_use(), 2 + 128 + 4, "{what}");
            for x in &a_bufs {
                assert_eq!(r.bufs.holder(*x), Some(Holder::Free), "{what}");
            }
            for x in &b_bufs {
                let ii = r.ifs.index_of(b, 1).unwrap() as u16;
                assert_eq!(r.bufs.holder(*x), Some(Holder::If(ii)), "{what}");
            }
            assert_eq!(slots(&r, tx), tx_bufs, "{what}");
            assert_eq!(slots(&r, rx), rx_bufs, "{what}");
            // A new registration gets exactly A's buffers back, never B's
            // or a ring's.
            let c = r.alloc_if("vale0:c", &IfRings::default(), 4).unwrap();
            let mut got = list(&r, c);
            got.sort_unstable();
            let mut want = a_bufs.clone();
            want.sort_unstable();
            assert_eq!(got, want, "{what}");
            r.free_if(c).unwrap();
            r.free_if(b).unwrap();
            assert!(r.free_if(a).is_err(), "{what}: a second free is refused");
            assert_eq!(r.bufs_in_use(), 2 + 128, "{what}");
            check_books(&r);
        }
    }

    #[test]
    fn swapped_buffers_come_back_and_a_new_registration_gets_fresh_slots() {
        let (mut r, tx, rx, a, b) = two_registrations();
        let (tx_bufs, rx_bufs) = (slots(&r, tx), slots(&r, rx));
        let extra = list(&r, a);
        // Zero copy, as netmap applications do: extra buffers into slots
        // (with data), the slots' buffers onto the list.
        let out0 = swap_in(&r, tx, 0, extra[0]);
        let out1 = swap_in(&r, tx, 7, extra[1]);
        let out2 = swap_in(&r, rx, 5, extra[2]);
        for &e in &extra[..3] {
            r.map().copy_in(r.bufs.offset_of(e), b"client A").unwrap();
        }
        set_list(&r, a, &[out0, out1, out2, extra[3]], 0);
        // And a hostile touch: an RX ring's buffer in a TX slot too, and
        // the header rewritten.
        swap_in(&r, tx, 9, rx_bufs[10]);
        r.map().write(tx + field::NUM_SLOTS, 9999u32).unwrap();
        let v = r.ring_view(tx).unwrap();
        v.set_head(17);
        r.free_if(a).unwrap();
        check_books(&r);
        assert_eq!(r.bufs_in_use(), 2 + 128 + 4);
        for &e in &extra {
            assert_eq!(r.bufs.holder(e), Some(Holder::Free));
        }
        // The next registration of these rings.
        r.reinit_ring(tx).unwrap();
        r.reinit_ring(rx).unwrap();
        assert_eq!(slots(&r, tx), tx_bufs);
        assert_eq!(slots(&r, rx), rx_bufs);
        let (t, x) = (r.ring_view(tx).unwrap(), r.ring_view(rx).unwrap());
        assert_eq!((t.head(), t.cur(), t.tail()), (0, 0, 63));
        assert_eq!((x.head(), x.cur(), x.tail()), (0, 0, 0));
        let full = r.config().buf_objsize as u16;
        for i in 0..64 {
            assert_eq!((t.slot(i).len, t.slot(i).flags), (full, 0));
            assert_eq!((x.slot(i).len, x.slot(i).flags), (0, 0));
        }
        let opened = crate::ring::RingView::open(r.map(), tx).unwrap();
        assert_eq!(opened.num_slots(), 64, "header rewritten");
        let a2 = r.alloc_if("vale0:a", &if_rings(tx, rx), 4).unwrap();
        r.free_if(a2).unwrap();
        r.free_if(b).unwrap();
        r.free_ring(tx).unwrap();
        r.free_ring(rx).unwrap();
        assert_eq!(r.bufs_in_use(), 2);
        check_books(&r);
    }

    #[test]
    fn a_pending_if_is_freed_unless_kept() {
        let (mut r, tx, rx, a, b) = two_registrations();
        r.free_if(a).unwrap();
        r.free_if(b).unwrap();
        let rings = if_rings(tx, rx);
        // Far more failed registrations than the pool has netmap_ifs.
        for _ in 0..50 {
            let p = r.pending_if("vale0:a", &rings, 4).unwrap();
            assert_eq!(p.ifs_in_use(), 1);
            drop(p);
            assert_eq!((r.ifs_in_use(), r.bufs_in_use()), (0, 2 + 128));
        }
        let failed: Result<(), RegionError> = (|| {
            let _p = r.pending_if("vale0:a", &rings, 4)?;
            Err(RegionError::NameTooLong("a late failure".into()))
        })();
        assert!(failed.is_err());
        assert_eq!(r.ifs_in_use(), 0);
        let p = r.pending_if("vale0:a", &rings, 4).unwrap();
        let off = p.offset();
        assert_eq!(p.keep(), off);
        assert_eq!((r.ifs_in_use(), r.bufs_in_use()), (1, 2 + 128 + 4));
        check_books(&r);
    }

    /// A pipe: two ends in one region, frames crossing by swapping slots
    /// between one end's TX ring and the other's RX ring.
    struct Pipe {
        r: Region,
        /// (tx, rx, netmap_if) of each end.
        ends: [(usize, usize, usize); 2],
    }

    fn pipe() -> Pipe {
        // valed sizes a pipe's region for one registration per end; two
        // here leave some buffers free.
        let mut r = region_for(2, 2, 4);
        let mut ends = [(0, 0, 0); 2];
        for e in &mut ends {
            let tx = r.alloc_ring(Dir::Tx, 0, 64).unwrap();
            let rx = r.alloc_ring(Dir::Rx, 0, 64).unwrap();
            let nif = r.alloc_if("p{0", &if_rings(tx, rx), 4).unwrap();
            *e = (tx, rx, nif);
        }
        Pipe { r, ends }
    }

    impl Pipe {
        /// The pipe forwards TX slot `i` of `from` into RX slot `i` of the
        /// other end.
        fn cross(&self, from: usize, i: u32) {
            let (tx, rx) = (self.ends[from].0, self.ends[1 - from].1);
            let b = slots(&self.r, tx)[i as usize];
            let back = swap_in(&self.r, rx, i, b);
            swap_in(&self.r, tx, i, back);
        }
        /// Buffers where the end `e` has them: its slots and its list.
        fn in_hand(&self, e: usize) -> Vec<u32> {
            let (tx, rx, nif) = self.ends[e];
            let mut all = slots(&self.r, tx);
            all.extend(slots(&self.r, rx));
            all.extend(list(&self.r, nif));
            all
        }
    }

    #[test]
    fn a_swap_domain_keeps_every_holders_count() {
        let mut p = pipe();
        let ((atx, arx, a), (btx, brx, b)) = (p.ends[0], p.ends[1]);
        let (ea, eb) = (list(&p.r, a), list(&p.r, b));
        // A sends its extra ea[0] through the pipe; B keeps it on its list
        // and puts its own eb[0] in the RX slot.
        let t0 = swap_in(&p.r, atx, 0, ea[0]);
        p.cross(0, 0);
        let got = swap_in(&p.r, brx, 0, eb[0]);
        assert_eq!(got, ea[0]);
        // B sends eb[1] to A, which keeps it and gives the slot ea[1].
        let u0 = swap_in(&p.r, btx, 3, eb[1]);
        p.cross(1, 3);
        let got_a = swap_in(&p.r, arx, 3, ea[1]);
        assert_eq!(got_a, eb[1]);
        set_list(&p.r, a, &[t0, eb[1], ea[2], ea[3]], 0);
        set_list(&p.r, b, &[ea[0], u0, eb[2], eb[3]], 0);
        // A closes: B's rings and list keep every buffer they name.
        p.r.free_if_swapped(a).unwrap();
        check_books(&p.r);
        assert_eq!(p.r.bufs_in_use(), 2 + 4 * 64 + 4);
        let mut b_hand = p.in_hand(1);
        b_hand.sort_unstable();
        b_hand.dedup();
        assert_eq!(b_hand.len(), 128 + 4);
        for x in &b_hand {
            assert_ne!(p.r.bufs.holder(*x), Some(Holder::Free), "B's {x} freed");
        }
        // A's rings stay whole for A's next registration.
        let mut a_rings = slots(&p.r, atx);
        a_rings.extend(slots(&p.r, arx));
        for x in &a_rings {
            assert_ne!(p.r.bufs.holder(*x), Some(Holder::Free), "A's slot on {x}");
            assert!(!b_hand.contains(x), "{x} on both ends");
        }
        // Rings and B's list together name exactly the held buffers.
        let mut all = a_rings;
        all.extend(b_hand);
        all.sort_unstable();
        let held: Vec<u32> = (2..p.r.bufs.total)
            .filter(|x| p.r.bufs.holder(*x) != Some(Holder::Free))
            .collect();
        assert_eq!(all, held);
        p.r.free_if_swapped(b).unwrap();
        check_books(&p.r);
        assert_eq!(p.r.bufs_in_use(), 2 + 4 * 64);
        let _ = (btx, arx);
    }

    /// Two ports in one region (netmap's `@N`), a bridge between them
    /// swapping A's RX buffers into B's TX slots: A's rings leave while B
    /// stays, and B keeps every buffer its slots name; a port that joins
    /// then gets none of them; hostile slots (duplicates, 0, out of range)
    /// change nothing.
    #[test]
    fn a_port_leaves_a_shared_region_without_taking_anothers_buffers() {
        let mut r = region_for(3, 2, 0);
        let (atx, arx) = (
            r.alloc_ring(Dir::Tx, 0, 64).unwrap(),
            r.alloc_ring(Dir::Rx, 0, 64).unwrap(),
        );
        let (btx, brx) = (
            r.alloc_ring(Dir::Tx, 0, 64).unwrap(),
            r.alloc_ring(Dir::Rx, 0, 64).unwrap(),
        );
        // bridge.c's rings_move: A's RX slot and B's TX slot trade buffers.
        for i in 0..40 {
            let a_buf = slots(&r, arx)[i as usize];
            let b_buf = swap_in(&r, btx, i, a_buf);
            swap_in(&r, arx, i, b_buf);
        }
        // Nonsense in A's TX slots: one of its buffers twice, 0, out of
        // range (it loses those buffers; nobody else does).
        let a_tx0 = slots(&r, atx)[0];
        swap_in(&r, atx, 1, a_tx0);
        swap_in(&r, atx, 2, 0);
        swap_in(&r, atx, 3, u32::MAX);
        r.free_ring_swapped(arx).unwrap();
        r.free_ring_swapped(atx).unwrap();
        check_books(&r);
        let mut b_hand = slots(&r, btx);
        b_hand.extend(slots(&r, brx));
        for x in &b_hand {
            assert!(
                !matches!(r.bufs.holder(*x), Some(Holder::Free) | None),
                "B's {x} freed"
            );
        }
        // A port joining now gets none of B's buffers.
        let ctx = r.alloc_ring(Dir::Tx, 0, 64).unwrap();
        let crx = r.alloc_ring(Dir::Rx, 0, 64).unwrap();
        for x in slots(&r, ctx).into_iter().chain(slots(&r, crx)) {
            assert!(
                !b_hand.contains(&x),
                "{x} given to C while B's slot names it"
            );
        }
        check_books(&r);
        // With nobody registered, every ring back on its own buffers:
        // distinct across the region.
        r.reinit_all_rings().unwrap();
        let mut all: Vec<u32> = [btx, brx, ctx, crx]
            .iter()
            .flat_map(|&o| slots(&r, o))
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
        // A client that names another ring's buffer in its own slots (one
        // buffer in two places: its own memory corrupted, as in netmap)
        // still leaves the books whole: nothing freed twice, nothing lost.
        let b_rx0 = slots(&r, brx)[0];
        swap_in(&r, ctx, 0, b_rx0);
        swap_in(&r, ctx, 1, b_rx0);
        r.free_ring_swapped(ctx).unwrap();
        r.free_ring_swapped(crx).unwrap();
        check_books(&r);
        r.free_ring_swapped(btx).unwrap();
        r.free_ring_swapped(brx).unwrap();
        check_books(&r);
        assert_eq!(r.rings_in_use(), 0);
        // With nobody registered, what went stray is free again.
        r.reinit_all_rings().unwrap();
        check_books(&r);
        assert_eq!(r.bufs_in_use(), 2);
    }

    #[test]
    fn a_swap_domain_survives_hostile_lists() {
        type Hostile = fn(&Pipe);
        let cases: &[(&str, Hostile)] = &[
            ("a loop", |p| {
                let l = list(&p.r, p.ends[0].2);
                set_list(&p.r, p.ends[0].2, &[l[0], l[1]], l[0]);
            }),
            ("duplicates", |p| {
                let l = list(&p.r, p.ends[0].2);
                set_list(&p.r, p.ends[0].2, &[l[1], l[1], l[1], l[1]], 0);
            }),
            ("out of range, reserved, free", |p| {
                let free = *p.r.bufs.free.last().unwrap();
                set_list(&p.r, p.ends[0].2, &[free, 1, u32::MAX], 0);
            }),
            ("the other end's buffers", |p| {
                let l = list(&p.r, p.ends[1].2);
                let s = slots(&p.r, p.ends[1].0);
                set_list(&p.r, p.ends[0].2, &[l[0], s[0], s[1], l[1]], 0);
            }),
            ("more than it holds", |p| {
                let s = slots(&p.r, p.ends[0].1);
                set_list(&p.r, p.ends[0].2, &s[..10], 0);
            }),
        ];
        for (what, hostile) in cases {
            let mut p = pipe();
            hostile(&p);
            p.r.free_if_swapped(p.ends[0].2).unwrap();
            check_books(&p.r);
            // At most its 4 buffers were freed; each ring still has a
            // buffer per slot in its books.
            let in_use = p.r.bufs_in_use();
            assert!(
                (2 + 4 * 64 + 4..=2 + 4 * 64 + 8).contains(&in_use),
                "{what}: {in_use}"
            );
            p.r.free_if_swapped(p.ends[1].2).unwrap();
            check_books(&p.r);
            for (tx, rx, _) in p.ends {
                p.r.free_ring(tx).unwrap();
                p.r.free_ring(rx).unwrap();
            }
            check_books(&p.r);
            // Only stray buffers (lost by the hostile end) stay out.
            let stray = p.r.bufs.holder.iter().filter(|h| **h == Holder::Stray);
            assert_eq!(p.r.bufs_in_use(), 2 + stray.count(), "{what}");
        }
    }
}
