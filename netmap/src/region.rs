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
    // SAFETY: sysinfo fills the struct we pass; all-zero is a valid start.
    let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: si is a live, writable sysinfo struct.
    let total = if unsafe { libc::sysinfo(&mut si) } == 0 {
        si.totalram as u64 * si.mem_unit.max(1) as u64
    } else {
        u64::MAX
    };
    total.min(64 << 30)
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
    /// num_slots of each ring, by ring pool index: the switch's own record.
    ring_slots: Vec<u32>,
    ifs: Pool,
    rings: Pool,
    bufs: Pool,
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
            ring_slots: vec![0; cfg.ring_objtotal as usize],
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
            bufs: Pool::new(
                "buffer",
                layout.buf_pool_offset,
                cfg.buf_objsize,
                cfg.buf_objtotal,
                2,
            ),
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
            self.ring_slots[ri as usize],
            self.layout.buf_pool_offset,
            self.cfg.buf_objsize,
            self.cfg.buf_objtotal,
        ))
    }

    /// Allocates a ring of `num_slots` with a buffer in every slot, and
    /// initialises it as netmap does: `head = cur = 0`, TX `tail =
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
        self.ring_slots[ri as usize] = num_slots;
        let off = self.rings.offset_of(ri);
        let m = &self.map;
        // Zero the whole object: stale slots past num_slots must not look
        // like buffers to anyone.
        m.fill(off, self.cfg.ring_objsize as usize, 0)?;
        m.write(
            off + field::BUF_OFS,
            self.layout.buf_pool_offset as i64 - off as i64,
        )?;
        m.write(off + field::NUM_SLOTS, num_slots)?;
        m.write(off + field::NR_BUF_SIZE, self.cfg.buf_objsize)?;
        m.write(off + field::RINGID, ringid)?;
        m.write(off + field::DIR, if dir == Dir::Tx { 0u16 } else { 1u16 })?;
        let tail = if dir == Dir::Tx { num_slots - 1 } else { 0 };
        m.write(off + field::TAIL, tail)?;
        for i in 0..num_slots as usize {
            let buf_idx = self.bufs.alloc(self.mem_id)?;
            let len = if dir == Dir::Tx {
                self.cfg.buf_objsize as u16
            } else {
                0
            };
            let slot = NetmapSlot {
                buf_idx,
                len,
                flags: 0,
                ptr: 0,
            };
            m.write(off + RING_HEADER_SIZE + i * size_of::<NetmapSlot>(), slot)?;
        }
        Ok(off)
    }

    /// Frees the ring at `off` and the buffers its slots hold now (the user
    /// may have swapped them; indexes out of range or already free are
    /// skipped, so a hostile ring can leak its own buffers but never free
    /// someone else's twice).
    pub fn free_ring(&mut self, off: usize) -> Result<(), RegionError> {
        let ri = self.rings.index_of(off, self.mem_id)?;
        for i in 0..self.ring_slots[ri as usize] as usize {
            let s: NetmapSlot = self
                .map
                .read(off + RING_HEADER_SIZE + i * size_of::<NetmapSlot>())?;
            if s.buf_idx >= 2 {
                self.bufs.free(s.buf_idx);
            }
        }
        self.rings.free(ri);
        Ok(())
    }

    /// Writes a `netmap_if` for one registration of port `name` binding
    /// `rings`, with `extra_bufs` extra buffers linked from `ni_bufs_head`.
    /// Returns its offset (`nr_offset`).
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
        let off = self.ifs.offset_of(ii);
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
        for _ in 0..extra_bufs {
            let b = self.bufs.alloc(self.mem_id)?;
            m.write(self.bufs.offset_of(b), head)?;
            head = b;
        }
        m.write(off + nif::BUFS_HEAD, head)?;
        Ok(off)
    }

    /// Frees the `netmap_if` at `off` and the extra buffers still on its list
    /// (walked with a bound, so a looped list cannot hang the switch).
    pub fn free_if(&mut self, off: usize) -> Result<(), RegionError> {
        let ii = self.ifs.index_of(off, self.mem_id)?;
        let mut b: u32 = self.map.read(off + nif::BUFS_HEAD)?;
        let mut budget = self.bufs.total;
        while b >= 2 && b < self.bufs.total && budget > 0 {
            let next: u32 = self.map.read(self.bufs.offset_of(b))?;
            if !self.bufs.free(b) {
                break;
            }
            b = next;
            budget -= 1;
        }
        self.ifs.free(ii);
        Ok(())
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
    fn hostile_buffer_indexes_do_not_double_free() {
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
        // Only buffer of slot 0 came back; the others leak inside the region.
        assert_eq!(r.bufs_in_use(), 2 + 63 + 64);
        r.free_ring(rx).unwrap();
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
}
