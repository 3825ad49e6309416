//! Guest memory as the VMM hands it over: regions announced by
//! SET_MEM_TABLE or ADD_MEM_REG, each with a descriptor, checked before it
//! is mapped and mapped at most once.
//!
//! Checks, because the VMM is untrusted (any uid can be one through a
//! client-mode port): the descriptor is a regular file (memfd, tmpfs and
//! hugetlbfs files are) at least as long as the offset plus the size it
//! announces, so the mapping is backed at the time it is made; sizes and
//! addresses do not wrap; regions do not overlap in guest-physical space.
//!
//! QEMU 7.2 sends the same region with ADD_MEM_REG once per queue pair
//! (its memory listener runs per vhost device, and a multiqueue net device
//! is one vhost device per pair). DPDK accepts that; so do we: an
//! identical region (same addresses, same file) is counted, not mapped
//! again, and unmapped with its last REM_MEM_REG.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserMemoryRegion;
use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryRegion, GuestRegionMmap};

use crate::types::{GuestMem, Mem};

/// Most regions a VMM may map (GET_MAX_MEM_SLOTS). QEMU needs one per
/// RAM block (a handful, more with DIMM hot-plug); each costs a mapping.
pub const MAX_REGIONS: usize = 64;

/// Regions start on this boundary in guest-physical space and in their
/// file (mmap needs the latter; the data path's atomic ring indexes need
/// the former).
const PAGE: u64 = 4096;

/// Most guest memory regions one user other than root may have mapped
/// in all its sessions: a sixteenth of the guard's table
/// (`sigbus::SLOTS`), 16 VM ports of 64 regions, so that a few users
/// cannot fill it for everyone.
pub const USER_MAX_REGIONS: usize = crate::sigbus::SLOTS / 16;

/// Slots of the guard users other than root together may not take, so
/// that root's VMs always find some.
pub const ROOT_RESERVE: usize = crate::sigbus::SLOTS / 4;

/// Guest memory mapped per user other than root, in all its sessions:
/// (bytes, regions).
static CHARGED: std::sync::Mutex<std::collections::BTreeMap<u32, (u64, usize)>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Why a region was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemError {
    /// Zero size, or an end past 2^64.
    #[error("region gpa {gpa:#x} size {size:#x}: empty or wraps")]
    Bounds {
        /// Guest-physical start.
        gpa: u64,
        /// Size.
        size: u64,
    },
    /// A guest address or file offset not on a page boundary: rings at
    /// aligned guest addresses would land at misaligned host addresses.
    #[error("region gpa {gpa:#x} offset {offset:#x}: not page-aligned")]
    Misaligned {
        /// Guest-physical start.
        gpa: u64,
        /// mmap offset.
        offset: u64,
    },
    /// The descriptor is not a regular file.
    #[error(
        "region gpa {gpa:#x}: the descriptor is not a regular file (memfd, tmpfs or hugetlbfs)"
    )]
    NotAFile {
        /// Guest-physical start.
        gpa: u64,
    },
    /// The file is shorter than the region needs.
    #[error("region gpa {gpa:#x}: file of {file_len} bytes, the region needs {need} (offset {offset:#x} + size {size:#x})")]
    Short {
        /// Guest-physical start.
        gpa: u64,
        /// The file's length.
        file_len: u64,
        /// offset + size.
        need: u64,
        /// mmap offset.
        offset: u64,
        /// Size.
        size: u64,
    },
    /// It overlaps a region already mapped.
    #[error("region gpa {gpa:#x}..{end:#x} (VMM address {uaddr:#x}) overlaps gpa {other_gpa:#x}..{other_end:#x} (VMM address {other_uaddr:#x})")]
    Overlap {
        /// New region's start.
        gpa: u64,
        /// Its end.
        end: u64,
        /// Its VMM address.
        uaddr: u64,
        /// The mapped region's start.
        other_gpa: u64,
        /// Its end.
        other_end: u64,
        /// Its VMM address.
        other_uaddr: u64,
    },
    /// More regions than GET_MAX_MEM_SLOTS said.
    #[error("more than {MAX_REGIONS} memory regions")]
    TooMany,
    /// The descriptor is not shared memory: `F_GET_SEALS` fails on
    /// anything but memfd, tmpfs and hugetlbfs files. Checked before any
    /// other call on it, since a file on a FUSE mount its sender serves
    /// could stall whichever valed thread touches it (fstat, a page fault
    /// in the data path).
    #[error("region gpa {gpa:#x}: not shared memory (guest memory must be a memfd, or a file on tmpfs or hugetlbfs)")]
    NotShmem {
        /// Guest-physical start.
        gpa: u64,
    },
    /// The regions would add up to more than twice the machine's memory.
    #[error("region gpa {gpa:#x}: guest memory would come to {total} bytes in all, more than twice this machine's memory ({max})")]
    TooLarge {
        /// Guest-physical start of the region that went over.
        gpa: u64,
        /// The session's regions with it, in bytes.
        total: u64,
        /// Twice the machine's physical memory.
        max: u64,
    },
    /// The user's sessions would map more than the user may, in bytes
    /// (four times the machine's memory) or in regions
    /// ([`USER_MAX_REGIONS`]).
    #[error("uid {uid}'s VMMs would map {have} {what} in all, more than the {max} a user may")]
    UserQuota {
        /// The port's owner.
        uid: u32,
        /// "bytes of guest memory" or "memory regions".
        what: &'static str,
        /// What it would come to.
        have: u64,
        /// The most.
        max: u64,
    },
    /// The SIGBUS guard cannot watch one more mapping, and an unwatched
    /// one whose file shrinks would kill valed.
    #[error("region gpa {gpa:#x}: the guard against shrinking files is full (too many regions mapped in valed)")]
    GuardFull {
        /// Guest-physical start.
        gpa: u64,
    },
    /// SET_MEM_TABLE's region and descriptor counts differ.
    #[error("{regions} regions but {fds} descriptors")]
    FdCount {
        /// Regions announced.
        regions: usize,
        /// Descriptors received.
        fds: usize,
    },
    /// REM_MEM_REG of a region that is not mapped.
    #[error("no region at gpa {gpa:#x} size {size:#x} to remove")]
    NotMapped {
        /// Guest-physical start.
        gpa: u64,
        /// Size.
        size: u64,
    },
    /// mmap or fstat failed.
    #[error("region gpa {gpa:#x}: {msg}")]
    Map {
        /// Guest-physical start.
        gpa: u64,
        /// What failed.
        msg: String,
    },
}

/// A region as announced: where it is for the guest, for the VMM, and in
/// its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionSpec {
    /// Guest-physical start.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Start in the VMM's address space (vring addresses are given there).
    pub uaddr: u64,
    /// Offset in the file.
    pub offset: u64,
}

impl From<&VhostUserMemoryRegion> for RegionSpec {
    fn from(r: &VhostUserMemoryRegion) -> Self {
        RegionSpec {
            gpa: r.guest_phys_addr,
            size: r.memory_size,
            uaddr: r.user_addr,
            offset: r.mmap_offset,
        }
    }
}

struct Mapped {
    spec: RegionSpec,
    /// (device, inode) of the file, to tell a repeat from a replacement.
    file_id: (u64, u64),
    /// ADD_MEM_REGs of this same region not yet removed.
    refs: u32,
    region: Arc<GuestRegionMmap<()>>,
    listed: crate::sigbus::Listed,
}

/// The guest memory of one vhost-user session.
pub struct MemTable {
    regions: Vec<Mapped>,
    /// The port's owner (None: root), whose budget the regions count in.
    owner: Option<u32>,
    /// What this table counts in it now: (bytes, regions).
    charged: (u64, usize),
    /// What the data path reads (through load guards that keep an old
    /// map alive until its batch ends).
    mem: GuestMem,
}

impl std::fmt::Debug for MemTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemTable")
            .field(
                "regions",
                &self.regions.iter().map(|m| m.spec).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Drop for MemTable {
    fn drop(&mut self) {
        self.settle(0, 0);
    }
}

impl Default for MemTable {
    fn default() -> Self {
        MemTable::new()
    }
}

fn check(spec: &RegionSpec, file: &File) -> Result<(u64, u64), MemError> {
    let gpa = spec.gpa;
    if spec.size == 0
        || spec.gpa.checked_add(spec.size).is_none()
        || spec.uaddr.checked_add(spec.size).is_none()
        || spec.size > usize::MAX as u64
    {
        return Err(MemError::Bounds {
            gpa,
            size: spec.size,
        });
    }
    if spec.gpa % PAGE != 0 || spec.offset % PAGE != 0 {
        return Err(MemError::Misaligned {
            gpa,
            offset: spec.offset,
        });
    }
    if netmap::sys::memfd_seals(file).is_err() {
        return Err(MemError::NotShmem { gpa });
    }
    let md = file.metadata().map_err(|e| MemError::Map {
        gpa,
        msg: format!("fstat: {e}"),
    })?;
    if !md.file_type().is_file() {
        return Err(MemError::NotAFile { gpa });
    }
    let need = spec.offset.checked_add(spec.size).ok_or(MemError::Bounds {
        gpa,
        size: spec.size,
    })?;
    if md.len() < need {
        return Err(MemError::Short {
            gpa,
            file_len: md.len(),
            need,
            offset: spec.offset,
            size: spec.size,
        });
    }
    Ok((md.dev(), md.ino()))
}

/// Refuses a table whose regions come to more than twice the machine's
/// memory (`total`, with `spec`): mapped shared and without reserve, a
/// sparse file of any length maps, and one VMM could take valed's whole
/// address space, and every other port's next mapping with it. Twice,
/// because a VMM may show the same memory at two guest addresses.
fn within_memory(spec: &RegionSpec, total: u64) -> Result<(), MemError> {
    static MAX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let max = *MAX.get_or_init(|| netmap::sys::physical_memory().saturating_mul(2));
    if total > max {
        return Err(MemError::TooLarge {
            gpa: spec.gpa,
            total,
            max,
        });
    }
    Ok(())
}

/// Guest-physical overlap. The same VMM memory may appear at two guest
/// addresses (QEMU aliases), so VMM addresses may repeat.
fn overlaps(a: &RegionSpec, b: &RegionSpec) -> bool {
    a.gpa < b.gpa + b.size && b.gpa < a.gpa + a.size
}

/// A mapped region and its entry in the SIGBUS guard's table.
type MappedRegion = (Arc<GuestRegionMmap<()>>, crate::sigbus::Listed);

fn map(spec: &RegionSpec, file: File) -> Result<MappedRegion, MemError> {
    let gpa = spec.gpa;
    let m = MmapRegion::<()>::from_file(FileOffset::new(file, spec.offset), spec.size as usize)
        .map_err(|e| MemError::Map {
            gpa,
            msg: format!("mmap: {e}"),
        })?;
    let region = GuestRegionMmap::new(m, GuestAddress(gpa))
        .map(Arc::new)
        .ok_or(MemError::Bounds {
            gpa,
            size: spec.size,
        })?;
    // The file may shrink later: a fault in this mapping is caught
    // (sigbus.rs) for as long as the mapping lives.
    let listed = crate::sigbus::list_arc(region.as_ptr() as usize, spec.size as usize, &region)
        .ok_or(MemError::GuardFull { gpa })?;
    Ok((region, listed))
}

impl MemTable {
    /// No memory yet, root's (counted against no user).
    pub fn new() -> MemTable {
        MemTable::for_owner(None)
    }

    /// No memory yet, for a port of `owner` (None: root's): its regions
    /// count against that user's budget.
    pub fn for_owner(owner: Option<u32>) -> MemTable {
        MemTable {
            owner,
            charged: (0, 0),
            regions: Vec::new(),
            mem: GuestMem::new(Mem::new()),
        }
    }

    /// Counts (`bytes`, `regions`) for this table in its owner's budget,
    /// in place of what it counted: refused, and nothing changed, if that
    /// would take the owner past a bound it is not already past, or all
    /// users together past what the guard keeps for them (root's share,
    /// [`ROOT_RESERVE`], stays free). Root's tables count in no budget.
    fn recharge(&mut self, bytes: u64, regions: usize) -> Result<(), MemError> {
        self.charge(bytes, regions, true)
    }

    /// Counts (`bytes`, `regions`) for this table whatever the bounds: to
    /// put back what a refused change took, and when a table shrinks.
    fn settle(&mut self, bytes: u64, regions: usize) {
        let _ = self.charge(bytes, regions, false);
    }

    fn charge(&mut self, bytes: u64, regions: usize, check: bool) -> Result<(), MemError> {
        let Some(uid) = self.owner else {
            self.charged = (bytes, regions);
            return Ok(());
        };
        let mut all = CHARGED.lock().unwrap_or_else(|e| e.into_inner());
        let have = all.get(&uid).copied().unwrap_or((0, 0));
        let new_bytes = have.0.saturating_sub(self.charged.0).saturating_add(bytes);
        let new_regions = have.1.saturating_sub(self.charged.1) + regions;
        let max_bytes = netmap::sys::physical_memory().saturating_mul(4);
        if check && bytes > self.charged.0 && new_bytes > max_bytes {
            return Err(MemError::UserQuota {
                uid,
                what: "bytes of guest memory",
                have: new_bytes,
                max: max_bytes,
            });
        }
        if check && regions > self.charged.1 {
            if new_regions > USER_MAX_REGIONS {
                return Err(MemError::UserQuota {
                    uid,
                    what: "memory regions",
                    have: new_regions as u64,
                    max: USER_MAX_REGIONS as u64,
                });
            }
            let users: usize = all.values().map(|c| c.1).sum::<usize>() + regions - self.charged.1;
            if users > crate::sigbus::SLOTS - ROOT_RESERVE {
                return Err(MemError::UserQuota {
                    uid,
                    what: "memory regions (all users but root together)",
                    have: users as u64,
                    max: (crate::sigbus::SLOTS - ROOT_RESERVE) as u64,
                });
            }
        }
        Self::store(&mut all, uid, new_bytes, new_regions);
        self.charged = (bytes, regions);
        Ok(())
    }

    fn store(all: &mut std::collections::BTreeMap<u32, (u64, usize)>, uid: u32, b: u64, r: usize) {
        if b == 0 && r == 0 {
            all.remove(&uid);
        } else {
            all.insert(uid, (b, r));
        }
    }

    /// What the table's regions come to: (bytes, regions).
    fn totals(&self) -> (u64, usize) {
        let bytes = self
            .regions
            .iter()
            .fold(0u64, |t, m| t.saturating_add(m.spec.size));
        (bytes, self.regions.len())
    }

    /// The map the data path reads.
    pub fn guest_mem(&self) -> &GuestMem {
        &self.mem
    }

    /// The end of the highest region (guest address; 0 with none): what
    /// a dirty log must cover.
    pub fn end(&self) -> u64 {
        self.regions
            .iter()
            .map(|m| m.spec.gpa.saturating_add(m.spec.size))
            .max()
            .unwrap_or(0)
    }

    /// Regions mapped, in the order they came (for the fuzz harness).
    #[cfg(feature = "test-utils")]
    pub fn specs(&self) -> Vec<RegionSpec> {
        self.regions.iter().map(|m| m.spec).collect()
    }

    /// A region whose file shrank under its mapping (an access past the
    /// file's new end was caught by the SIGBUS guard): the VMM broke its
    /// memory and the session ends.
    pub fn faulted(&self) -> Option<RegionSpec> {
        self.regions
            .iter()
            .find(|m| m.listed.faulted())
            .map(|m| m.spec)
    }

    /// How many ADD_MEM_REGs the region at guest address `gpa` has
    /// outstanding.
    #[cfg(test)]
    pub fn refs(&self, gpa: u64) -> Option<u32> {
        self.regions
            .iter()
            .find(|m| m.spec.gpa == gpa)
            .map(|m| m.refs)
    }

    fn publish(&mut self) -> Result<(), MemError> {
        let mut rs: Vec<_> = self.regions.iter().map(|m| m.region.clone()).collect();
        rs.sort_by_key(|r| r.start_addr());
        let mem = if rs.is_empty() {
            Mem::new()
        } else {
            Mem::from_arc_regions(rs).map_err(|e| MemError::Map {
                gpa: 0,
                msg: e.to_string(),
            })?
        };
        // Batches in flight hold the old map through their load guard.
        self.mem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(mem);
        Ok(())
    }

    /// SET_MEM_TABLE: replaces every region. All are checked before any
    /// is mapped; on error the old table stays.
    pub fn set_table(&mut self, specs: &[RegionSpec], fds: Vec<OwnedFd>) -> Result<(), MemError> {
        if specs.len() != fds.len() {
            return Err(MemError::FdCount {
                regions: specs.len(),
                fds: fds.len(),
            });
        }
        if specs.len() > MAX_REGIONS {
            return Err(MemError::TooMany);
        }
        let mut total = 0u64;
        for spec in specs {
            total = total.saturating_add(spec.size);
            within_memory(spec, total)?;
        }
        let old_totals = self.totals();
        self.recharge(total, specs.len())?;
        let r = self.map_table(specs, fds);
        if r.is_err() {
            self.settle(old_totals.0, old_totals.1);
        }
        r
    }

    /// SET_MEM_TABLE's checks and mappings, once the budget allows it.
    fn map_table(&mut self, specs: &[RegionSpec], fds: Vec<OwnedFd>) -> Result<(), MemError> {
        let mut new = Vec::with_capacity(specs.len());
        for (spec, fd) in specs.iter().zip(fds) {
            let file = File::from(fd);
            let id = check(spec, &file)?;
            if let Some(o) = new.iter().find(|m: &&Mapped| overlaps(&m.spec, spec)) {
                return Err(overlap_err(spec, &o.spec));
            }
            let (region, listed) = map(spec, file)?;
            new.push(Mapped {
                spec: *spec,
                file_id: id,
                refs: 1,
                region,
                listed,
            });
        }
        let old = std::mem::replace(&mut self.regions, new);
        if let Err(e) = self.publish() {
            self.regions = old;
            return Err(e);
        }
        Ok(())
    }

    /// ADD_MEM_REG.
    pub fn add(&mut self, spec: &RegionSpec, fd: OwnedFd) -> Result<(), MemError> {
        let file = File::from(fd);
        let id = check(spec, &file)?;
        if let Some(m) = self.regions.iter_mut().find(|m| m.spec == *spec) {
            if m.file_id == id {
                m.refs = m.refs.saturating_add(1);
                return Ok(());
            }
        }
        if let Some(o) = self.regions.iter().find(|m| overlaps(&m.spec, spec)) {
            return Err(overlap_err(spec, &o.spec));
        }
        if self.regions.len() >= MAX_REGIONS {
            return Err(MemError::TooMany);
        }
        let total = self
            .regions
            .iter()
            .fold(spec.size, |t, m| t.saturating_add(m.spec.size));
        within_memory(spec, total)?;
        let n = self.regions.len();
        self.recharge(total, n + 1)?;
        let mapped = map(spec, file);
        let (region, listed) = match mapped {
            Ok(m) => m,
            Err(e) => {
                let (b, r) = self.totals();
                self.settle(b, r);
                return Err(e);
            }
        };
        self.regions.push(Mapped {
            spec: *spec,
            file_id: id,
            refs: 1,
            region,
            listed,
        });
        if let Err(e) = self.publish() {
            self.regions.pop();
            let (b, r) = self.totals();
            self.settle(b, r);
            return Err(e);
        }
        Ok(())
    }

    /// REM_MEM_REG: the region goes when its last ADD_MEM_REG is removed.
    /// QEMU leaves the user address and offset of a removal as they were
    /// announced, but matching by guest range is what the spec asks.
    pub fn remove(&mut self, spec: &RegionSpec) -> Result<(), MemError> {
        let i = self
            .regions
            .iter()
            .position(|m| m.spec.gpa == spec.gpa && m.spec.size == spec.size)
            .ok_or(MemError::NotMapped {
                gpa: spec.gpa,
                size: spec.size,
            })?;
        self.regions[i].refs -= 1;
        if self.regions[i].refs == 0 {
            let m = self.regions.remove(i);
            if let Err(e) = self.publish() {
                self.regions.insert(i, m);
                return Err(e);
            }
            let (b, r) = self.totals();
            self.settle(b, r);
        }
        Ok(())
    }

    /// Forgets every region (RESET_OWNER).
    pub fn clear(&mut self) {
        self.regions.clear();
        let _ = self.publish();
        self.settle(0, 0);
    }

    /// The guest-physical address of VMM address `va` (vring addresses
    /// come in the VMM's address space).
    pub fn va_to_gpa(&self, va: u64) -> Option<u64> {
        self.regions
            .iter()
            .find(|m| va >= m.spec.uaddr && va - m.spec.uaddr < m.spec.size)
            .map(|m| va - m.spec.uaddr + m.spec.gpa)
    }

    /// Whether a load of the current map sees `n` regions (for tests).
    #[cfg(test)]
    pub fn mapped_regions(&self) -> usize {
        use vm_memory::{GuestAddressSpace, GuestMemoryBackend};
        self.mem.memory().num_regions()
    }
}

fn overlap_err(a: &RegionSpec, b: &RegionSpec) -> MemError {
    MemError::Overlap {
        gpa: a.gpa,
        end: a.gpa.wrapping_add(a.size),
        uaddr: a.uaddr,
        other_gpa: b.gpa,
        other_end: b.gpa + b.size,
        other_uaddr: b.uaddr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmap::sys::Memfd;

    fn fd_of(len: usize) -> (Memfd, OwnedFd) {
        let m = Memfd::create_sealed("t", len, false).unwrap();
        let fd = m.try_clone_fd().unwrap();
        (m, fd)
    }

    fn spec(gpa: u64, size: u64, uaddr: u64) -> RegionSpec {
        RegionSpec {
            gpa,
            size,
            uaddr,
            offset: 0,
        }
    }

    #[test]
    fn duplicate_add_is_counted_and_removed_with_the_last() {
        let (m, fd) = fd_of(1 << 20);
        let mut t = MemTable::new();
        let s = spec(0, 1 << 20, 0x7f00_0000_0000);
        t.add(&s, fd).unwrap();
        t.add(&s, m.try_clone_fd().unwrap()).unwrap();
        assert_eq!(t.refs(0), Some(2));
        assert_eq!(t.mapped_regions(), 1);
        t.remove(&s).unwrap();
        assert_eq!(t.mapped_regions(), 1);
        t.remove(&s).unwrap();
        assert_eq!(t.mapped_regions(), 0);
        assert_eq!(
            t.remove(&s),
            Err(MemError::NotMapped {
                gpa: 0,
                size: 1 << 20
            })
        );
    }

    #[test]
    fn same_addresses_other_file_is_an_overlap() {
        let (_m1, fd1) = fd_of(1 << 20);
        let (_m2, fd2) = fd_of(1 << 20);
        let mut t = MemTable::new();
        let s = spec(0, 1 << 20, 0x1000_0000);
        t.add(&s, fd1).unwrap();
        assert!(matches!(t.add(&s, fd2), Err(MemError::Overlap { .. })));
    }

    #[test]
    fn guest_physical_overlaps_are_refused() {
        let (m, fd) = fd_of(4 << 20);
        let mut t = MemTable::new();
        t.add(&spec(0, 1 << 20, 0x1000_0000), fd).unwrap();
        let e = t
            .add(
                &spec(0x8_0000, 1 << 20, 0x2000_0000),
                m.try_clone_fd().unwrap(),
            )
            .unwrap_err();
        assert!(e.to_string().contains("overlaps gpa 0x0..0x100000"), "{e}");
        t.add(
            &spec(1 << 20, 1 << 20, 0x1010_0000),
            m.try_clone_fd().unwrap(),
        )
        .unwrap();
        assert_eq!(t.va_to_gpa(0x1010_0010), Some((1 << 20) + 0x10));
        assert_eq!(t.va_to_gpa(0x1020_0000), None);
    }

    #[test]
    fn short_file_and_non_file_refused_before_mapping() {
        let (_m, fd) = fd_of(4096);
        let mut t = MemTable::new();
        let e = t.add(&spec(0, 1 << 30, 0), fd).unwrap_err();
        assert_eq!(
            e,
            MemError::Short {
                gpa: 0,
                file_len: 4096,
                need: 1 << 30,
                offset: 0,
                size: 1 << 30
            }
        );
        let ev = netmap::sys::EventFd::new().unwrap();
        let e = t
            .add(&spec(0, 4096, 0), ev.try_clone_fd().unwrap())
            .unwrap_err();
        assert_eq!(e, MemError::NotShmem { gpa: 0 });
        // A regular file, but not shared memory (procfs here; a file on a
        // FUSE mount is refused the same way, before any call that could
        // reach its server).
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let e = t.add(&spec(0, 4096, 0), f.into()).unwrap_err();
        assert_eq!(e, MemError::NotShmem { gpa: 0 });
        let (_m, fd) = fd_of(4096);
        let e = t.add(&spec(u64::MAX - 4095, 8192, 0), fd).unwrap_err();
        assert!(matches!(e, MemError::Bounds { .. }));
        let (m, fd) = fd_of(8192);
        let e = t.add(&spec(1, 4096, 0), fd).unwrap_err();
        assert_eq!(e, MemError::Misaligned { gpa: 1, offset: 0 });
        let odd = RegionSpec {
            offset: 2,
            ..spec(0, 4096, 0)
        };
        let e = t.add(&odd, m.try_clone_fd().unwrap()).unwrap_err();
        assert_eq!(e, MemError::Misaligned { gpa: 0, offset: 2 });
        assert_eq!(t.mapped_regions(), 0);
    }

    /// A sparse memfd maps at any length; the table is bounded by the
    /// machine's memory instead, before anything is mapped.
    #[test]
    fn more_guest_memory_than_the_machine_has_is_refused() {
        let max = netmap::sys::physical_memory().saturating_mul(2);
        let Some(len) = max.checked_add(1 << 30).filter(|&l| l < 1 << 46) else {
            return;
        };
        let (_m, fd) = fd_of(len as usize);
        let mut t = MemTable::new();
        let e = t.add(&spec(0, len, 0), fd).unwrap_err();
        assert_eq!(
            e,
            MemError::TooLarge {
                gpa: 0,
                total: len,
                max
            }
        );
        // Split in two: the second goes over.
        let (m, _) = fd_of(len as usize);
        let half = (len / 2) & !4095;
        t.add(&spec(0, half, 0), m.try_clone_fd().unwrap()).unwrap();
        let e = t
            .add(&spec(half, len - half, half), m.try_clone_fd().unwrap())
            .unwrap_err();
        assert!(matches!(e, MemError::TooLarge { .. }), "{e}");
        let e = t
            .set_table(
                &[spec(0, half, 0), spec(half, len - half, half)],
                vec![m.try_clone_fd().unwrap(), m.try_clone_fd().unwrap()],
            )
            .unwrap_err();
        assert!(matches!(e, MemError::TooLarge { .. }), "{e}");
        assert_eq!(t.mapped_regions(), 1);
    }

    /// A user's sessions together map at most four times the machine's
    /// memory; a table dropped gives its share back; root's count in no
    /// budget.
    #[test]
    fn a_users_sessions_share_one_budget() {
        let uid = 4_000_000_001; // no other test's
        let half = netmap::sys::physical_memory().saturating_mul(2);
        if half >= 1 << 45 {
            return;
        }
        let (m, _) = fd_of(half as usize);
        let whole = |t: &mut MemTable| t.add(&spec(0, half, 0), m.try_clone_fd().unwrap());
        let mut a = MemTable::for_owner(Some(uid));
        let mut b = MemTable::for_owner(Some(uid));
        // Under an address-space limit (ulimit -v) this much does not map.
        match whole(&mut a) {
            Ok(()) => {}
            Err(MemError::Map { .. }) => return,
            Err(e) => panic!("{e}"),
        }
        whole(&mut b).unwrap();
        let mut c = MemTable::for_owner(Some(uid));
        let e = c
            .add(&spec(0, 1 << 20, 0), m.try_clone_fd().unwrap())
            .unwrap_err();
        assert!(
            matches!(e, MemError::UserQuota { uid: u, .. } if u == uid),
            "{e}"
        );
        // Root's are not counted; another user's neither.
        let mut r = MemTable::new();
        whole(&mut r).unwrap();
        let mut o = MemTable::for_owner(Some(uid + 1));
        whole(&mut o).unwrap();
        drop(a);
        c.add(&spec(0, 1 << 20, 0), m.try_clone_fd().unwrap())
            .unwrap();
        // A table replaced by SET_MEM_TABLE counts once, not twice.
        b.set_table(&[spec(0, half, 0)], vec![m.try_clone_fd().unwrap()])
            .unwrap();
        b.clear();
        drop((b, c));
        assert_eq!(CHARGED.lock().unwrap().get(&uid), None);
    }

    #[test]
    fn set_table_replaces_and_checks_all_first() {
        let (m, _) = fd_of(2 << 20);
        let mut t = MemTable::new();
        t.set_table(
            &[
                spec(0, 1 << 20, 0x1000_0000),
                spec(1 << 20, 1 << 20, 0x2000_0000),
            ],
            vec![m.try_clone_fd().unwrap(), m.try_clone_fd().unwrap()],
        )
        .unwrap();
        assert_eq!(t.mapped_regions(), 2);
        // A bad second region leaves the old table in place.
        let (s, _) = fd_of(4096);
        let e = t
            .set_table(
                &[spec(0, 4096, 0x3000_0000), spec(4096, 1 << 20, 0x4000_0000)],
                vec![s.try_clone_fd().unwrap(), s.try_clone_fd().unwrap()],
            )
            .unwrap_err();
        assert!(matches!(e, MemError::Short { .. }));
        assert_eq!(t.mapped_regions(), 2);
        assert!(matches!(
            t.set_table(&[spec(0, 4096, 0)], vec![]),
            Err(MemError::FdCount { regions: 1, fds: 0 })
        ));
    }
}
