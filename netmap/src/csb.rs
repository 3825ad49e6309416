//! Control/status blocks (CSB): the words a client and the switch exchange
//! for each ring, in netmap's `nm_csb_atok` / `nm_csb_ktoa` layout.
//!
//! A CSB lives in its own sealed memfd, outside the region's `nr_memsize`:
//! `N` `nm_csb_atok` entries (TX rings first, then RX rings) followed by `N`
//! `nm_csb_ktoa` entries, 64 bytes each so the two sides never write the same
//! cache line.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::AtomicU32;

use crate::sys::{memfd_seals, Memfd, SharedMap};

/// Size of one `nm_csb_atok` or `nm_csb_ktoa` entry.
pub const CSB_ENTRY_SIZE: usize = 64;

const ATOK_HEAD: usize = 0;
const ATOK_CUR: usize = 4;
const ATOK_APPL_NEED_KICK: usize = 8;
const ATOK_SYNC_FLAGS: usize = 12;
const KTOA_HWCUR: usize = 0;
const KTOA_HWTAIL: usize = 4;
const KTOA_KERN_NEED_KICK: usize = 8;

/// Most rings one CSB may describe.
pub const CSB_MAX_RINGS: u32 = 1024;

/// The CSB of one registration.
#[derive(Debug)]
pub struct Csb {
    memfd: Option<Memfd>,
    map: SharedMap,
    nrings: u32,
}

/// Bytes a CSB for `nrings` rings needs.
pub fn csb_size(nrings: u32) -> usize {
    2 * nrings as usize * CSB_ENTRY_SIZE
}

impl Csb {
    /// Creates a zeroed CSB for `nrings` rings in a fresh sealed memfd.
    pub fn create(nrings: u32) -> io::Result<Csb> {
        if nrings == 0 || nrings > CSB_MAX_RINGS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("CSB for {nrings} rings: must be 1..={CSB_MAX_RINGS}"),
            ));
        }
        let memfd = Memfd::create_sealed("vale-csb", csb_size(nrings), false)?;
        let map = SharedMap::map(&memfd, memfd.size())?;
        Ok(Csb {
            memfd: Some(memfd),
            map,
            nrings,
        })
    }

    /// Maps a CSB received from the peer. Refuses a file that is too small or
    /// not sealed against shrinking (the peer could otherwise make us fault).
    pub fn from_fd(fd: OwnedFd, nrings: u32) -> io::Result<Csb> {
        let need = csb_size(nrings);
        if nrings == 0 || nrings > CSB_MAX_RINGS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bad CSB ring count",
            ));
        }
        let seals = memfd_seals(&fd)?;
        if seals & libc::F_SEAL_SHRINK == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "CSB memfd is not sealed",
            ));
        }
        let len = std::fs::File::from(fd.try_clone()?).metadata()?.len() as usize;
        if len < need {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("CSB memfd of {len} bytes, {need} needed"),
            ));
        }
        let map = SharedMap::map(&fd, len)?;
        Ok(Csb {
            memfd: None,
            map,
            nrings,
        })
    }

    /// A descriptor for the peer (only on the side that created the CSB).
    pub fn share_fd(&self) -> io::Result<OwnedFd> {
        match &self.memfd {
            Some(m) => m.as_fd().try_clone_to_owned(),
            None => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "CSB was received, not created",
            )),
        }
    }

    /// Number of rings.
    pub fn nrings(&self) -> u32 {
        self.nrings
    }

    /// The entry pair of ring `i` (TX rings first, then RX rings).
    pub fn entry(&self, i: u32) -> io::Result<CsbEntry<'_>> {
        if i >= self.nrings {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("CSB ring {i} out of range ({} rings)", self.nrings),
            ));
        }
        let a = i as usize * CSB_ENTRY_SIZE;
        let k = (self.nrings + i) as usize * CSB_ENTRY_SIZE;
        let m = &self.map;
        Ok(CsbEntry {
            head: m.atomic_u32(a + ATOK_HEAD)?,
            cur: m.atomic_u32(a + ATOK_CUR)?,
            appl_need_kick: m.atomic_u32(a + ATOK_APPL_NEED_KICK)?,
            sync_flags: m.atomic_u32(a + ATOK_SYNC_FLAGS)?,
            hwcur: m.atomic_u32(k + KTOA_HWCUR)?,
            hwtail: m.atomic_u32(k + KTOA_HWTAIL)?,
            kern_need_kick: m.atomic_u32(k + KTOA_KERN_NEED_KICK)?,
        })
    }
}

/// The shared words of one ring. `head`, `cur`, `appl_need_kick` and
/// `sync_flags` are written by the application (atok); `hwcur`, `hwtail` and
/// `kern_need_kick` by the switch (ktoa). Each side treats what the other
/// writes as untrusted input.
#[derive(Debug, Clone, Copy)]
pub struct CsbEntry<'a> {
    /// atok: the application's `ring->head`.
    pub head: &'a AtomicU32,
    /// atok: the application's `ring->cur`.
    pub cur: &'a AtomicU32,
    /// atok: non-zero when the application sleeps and wants a kick.
    pub appl_need_kick: &'a AtomicU32,
    /// atok: flags of the application's last sync.
    pub sync_flags: &'a AtomicU32,
    /// ktoa: the switch's `hwcur`.
    pub hwcur: &'a AtomicU32,
    /// ktoa: the switch's `hwtail`.
    pub hwtail: &'a AtomicU32,
    /// ktoa: non-zero when the switch sleeps and wants a kick.
    pub kern_need_kick: &'a AtomicU32,
}
