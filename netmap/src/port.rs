//! The client side: open a port served by valed (`vale0:vm1`), map its
//! region, and use its rings with txsync, rxsync and poll — what
//! `nmport_open()` and the netmap ioctls give a C application.
//!
//! One `NmPort` is one control connection is one registration, as one netmap
//! file descriptor is in the kernel. Dropping it drains the TX rings
//! (bounded), then closes the connection; valed then reclaims the port.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use thiserror::Error;

use crate::abi::{NetmapSlot, NmreqRegister, NETMAP_REQ_REGISTER, NS_INDIRECT};
use crate::csb::Csb;
use crate::ctrl::{socket_path, CtrlConn, CtrlError, Request};
use crate::portname::{self, PortNameError};
use crate::region::IfView;
use crate::ring::{self, RingView};
use crate::sync::{drain_tx, poll_rings, AppRing, Dir, SyncError, Want};
use crate::sys::{EventFd, SharedMap};

/// How long close waits for valed to take what was published.
pub const CLOSE_DRAIN: Duration = Duration::from_secs(1);

/// Errors opening or using a port.
#[derive(Debug, Error)]
pub enum PortError {
    /// The name does not parse.
    #[error(transparent)]
    Name(#[from] PortNameError),
    /// Talking to valed failed.
    #[error("{name}: {source}")]
    Ctrl {
        /// Port name.
        name: String,
        /// What failed.
        #[source]
        source: CtrlError,
    },
    /// valed refused the registration.
    #[error("{name}: {source}")]
    Refused {
        /// Port name.
        name: String,
        /// The errno valed answered.
        #[source]
        source: std::io::Error,
    },
    /// valed's answer did not describe usable memory.
    #[error("{name}: bad answer from valed: {what}")]
    BadAnswer {
        /// Port name.
        name: String,
        /// What was wrong.
        what: String,
    },
    /// The sync protocol failed.
    #[error(transparent)]
    Sync(#[from] SyncError),
}

/// An open port.
#[derive(Debug)]
pub struct NmPort {
    name: String,
    conn: CtrlConn,
    reg: NmreqRegister,
    map: SharedMap,
    /// The region's file, for mapping it again (the preload library maps
    /// it where the application asks).
    mem: OwnedFd,
    csb: Csb,
    kick: EventFd,
    irq: EventFd,
    nifp: usize,
    /// Bound TX ring offsets, in CSB order.
    tx: Vec<usize>,
    /// Bound RX ring offsets, in CSB order (after the TX ones).
    rx: Vec<usize>,
}

impl NmPort {
    /// Opens `name` through the default socket (`$VALE_SOCKET`, else
    /// `/run/vale/valed.sock`).
    pub fn open(name: &str) -> Result<NmPort, PortError> {
        Self::open_with(&socket_path(None), name, NmreqRegister::default())
    }

    /// Opens `name` through `socket`, with `req` as the register request
    /// (zero fields are filled in by valed, as netmap does).
    pub fn open_with(socket: &Path, name: &str, req: NmreqRegister) -> Result<NmPort, PortError> {
        let spec = portname::parse(name)?;
        let ctrl = |source| PortError::Ctrl {
            name: name.to_string(),
            source,
        };
        let bad = |what: &str| PortError::BadAnswer {
            name: name.to_string(),
            what: what.to_string(),
        };
        let conn = CtrlConn::connect(socket).map_err(ctrl)?;
        let mut body = req;
        if body.nr_mode == 0 {
            body.nr_mode = spec.nr_mode();
            body.nr_ringid = spec.nr_ringid();
        }
        body.nr_flags |= spec.nr_flags();
        if body.nr_mem_id == 0 {
            body.nr_mem_id = spec.mem_id.map_or(0, |m| m.get());
        }
        if body.nr_tx_rings == 0 {
            body.nr_tx_rings = spec.conf.tx_rings;
        }
        if body.nr_rx_rings == 0 {
            body.nr_rx_rings = spec.conf.rx_rings;
        }
        if body.nr_tx_slots == 0 {
            body.nr_tx_slots = spec.conf.tx_slots;
        }
        if body.nr_rx_slots == 0 {
            body.nr_rx_slots = spec.conf.rx_slots;
        }
        let r = Request::new(NETMAP_REQ_REGISTER, &spec.nr_name(), &body).map_err(ctrl)?;
        let (reply, fds) = conn.call(&r).map_err(ctrl)?;
        if reply.error != 0 {
            return Err(PortError::Refused {
                name: name.to_string(),
                source: std::io::Error::from_raw_os_error(reply.error),
            });
        }
        let reg: NmreqRegister = reply.req.body_as().map_err(ctrl)?;
        let [mem, csb, kick, irq]: [OwnedFd; 4] =
            fds.try_into().map_err(|_| bad("expected 4 descriptors"))?;
        let memsize = usize::try_from(reg.nr_memsize).map_err(|_| bad("nr_memsize"))?;
        let map = SharedMap::map(&mem, memsize).map_err(|e| bad(&format!("mapping: {e}")))?;
        let nifp = usize::try_from(reg.nr_offset).map_err(|_| bad("nr_offset"))?;
        let v = IfView::new(&map, nifp).map_err(|e| bad(&format!("netmap_if: {e}")))?;
        let tx: Vec<usize> = (0..v.tx_rings()).filter_map(|i| v.txring(i)).collect();
        let rx: Vec<usize> = (0..v.rx_rings()).filter_map(|i| v.rxring(i)).collect();
        let nrings = (tx.len() + rx.len()) as u32;
        for &off in tx.iter().chain(&rx) {
            RingView::open(&map, off).map_err(|e| bad(&format!("ring at {off}: {e}")))?;
        }
        let csb = Csb::from_fd(csb, nrings).map_err(|e| bad(&format!("CSB: {e}")))?;
        Ok(NmPort {
            name: name.to_string(),
            conn,
            reg,
            map,
            mem,
            csb,
            kick: EventFd::from_fd(kick),
            irq: EventFd::from_fd(irq),
            nifp,
            tx,
            rx,
        })
    }

    /// The region's file (`nr_memsize` bytes): what `mmap` of a netmap
    /// file descriptor maps.
    pub fn region_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.mem.as_fd()
    }

    /// The control connection, readable with EOF or hung up once valed
    /// goes away.
    pub fn conn_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.conn.as_fd()
    }

    /// The eventfd valed rings to wake this registration (after a
    /// [`AppRing`]'s need-kick request).
    pub fn irq_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.irq.as_fd()
    }

    /// The name it was opened with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// valed's answer to the register request (`nr_memsize`, slots, rings…).
    pub fn register_info(&self) -> &NmreqRegister {
        &self.reg
    }

    /// The `netmap_if` of this registration.
    pub fn nifp(&self) -> IfView<'_> {
        IfView::new(&self.map, self.nifp).expect("checked at open")
    }

    /// The mapped region.
    pub fn map(&self) -> &SharedMap {
        &self.map
    }

    /// Bound TX rings.
    pub fn tx_rings(&self) -> usize {
        self.tx.len()
    }

    /// Bound RX rings.
    pub fn rx_rings(&self) -> usize {
        self.rx.len()
    }

    fn app_ring(&self, off: usize, id: u32, dir: Dir) -> AppRing<'_> {
        AppRing {
            ring: RingView::open(&self.map, off).expect("checked at open"),
            csb: self.csb.entry(id).expect("sized at open"),
            kick: &self.kick,
            irq: &self.irq,
            dir,
            id,
        }
    }

    /// Bound TX ring `i`.
    pub fn tx_ring(&self, i: usize) -> AppRing<'_> {
        self.app_ring(self.tx[i], i as u32, Dir::Tx)
    }

    /// Bound RX ring `i`.
    pub fn rx_ring(&self, i: usize) -> AppRing<'_> {
        self.app_ring(self.rx[i], (self.tx.len() + i) as u32, Dir::Rx)
    }

    /// `ioctl(NIOCTXSYNC)`: syncs every bound TX ring.
    pub fn txsync(&self) -> Result<(), SyncError> {
        (0..self.tx.len()).try_for_each(|i| self.tx_ring(i).sync())
    }

    /// `ioctl(NIOCRXSYNC)`: syncs every bound RX ring.
    pub fn rxsync(&self) -> Result<(), SyncError> {
        (0..self.rx.len()).try_for_each(|i| self.rx_ring(i).sync())
    }

    /// Like [`txsync`](Self::txsync), first copying the data of every
    /// `NS_INDIRECT` slot being published into the slot's own buffer (valed
    /// cannot read the client's memory), as netmap's semantics require.
    ///
    /// # Safety
    /// Every slot in `[head of the last sync, head)` with `NS_INDIRECT` set
    /// must have `ptr` pointing to `len` readable bytes of this process.
    pub unsafe fn txsync_indirect(&self, last_head: &mut [u32]) -> Result<(), SyncError> {
        for (i, lh) in last_head.iter_mut().enumerate().take(self.tx.len()) {
            let r = self.tx_ring(i);
            let v = r.ring;
            let ns = v.num_slots();
            let head = v.head();
            let mut j = *lh % ns;
            while j != head % ns {
                let mut s: NetmapSlot = v.slot(j);
                if s.flags & NS_INDIRECT != 0 {
                    let len = (s.len as usize).min(v.buf_size() as usize);
                    // SAFETY: the caller promises `ptr` points to `len`
                    // readable bytes; the copy goes into a Vec first.
                    let data =
                        unsafe { std::slice::from_raw_parts(s.ptr as usize as *const u8, len) }
                            .to_vec();
                    v.write_buf(s.buf_idx, 0, &data)?;
                    s.flags &= !NS_INDIRECT;
                    s.len = len as u16;
                    v.set_slot(j, s);
                }
                j = ring::next(j, ns);
            }
            *lh = head;
            r.sync()?;
        }
        Ok(())
    }

    /// netmap's `poll()`: blocks until a TX ring has room (`tx`) or an RX
    /// ring has frames (`rx`), valed dies, or `timeout` passes. Returns the
    /// direction and index of a ready ring.
    pub fn poll(
        &self,
        tx: bool,
        rx: bool,
        timeout: Option<Duration>,
    ) -> Result<(Dir, usize), SyncError> {
        let mut rings = Vec::new();
        if tx {
            rings.extend((0..self.tx.len()).map(|i| self.tx_ring(i)));
        }
        if rx {
            rings.extend((0..self.rx.len()).map(|i| self.rx_ring(i)));
        }
        let k = poll_rings(&rings, Want::Ready, Some(self.conn.as_fd()), timeout)?;
        let ntx = if tx { self.tx.len() } else { 0 };
        Ok(if k < ntx {
            (Dir::Tx, k)
        } else {
            (Dir::Rx, k - ntx)
        })
    }

    /// Waits until valed has taken every published TX slot.
    pub fn drain(&self, timeout: Duration) -> Result<(), SyncError> {
        let rings: Vec<AppRing<'_>> = (0..self.tx.len()).map(|i| self.tx_ring(i)).collect();
        drain_tx(&rings, Some(self.conn.as_fd()), timeout)
    }
}

impl Drop for NmPort {
    fn drop(&mut self) {
        // Close drains: what the application published before closing is
        // forwarded, as with netmap's close. Bounded, and skipped if valed
        // is gone.
        let _ = self.drain(CLOSE_DRAIN);
    }
}
