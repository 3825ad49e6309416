//! An interface opened as netmap rings in the caller's own process, as
//! `nmport_open("netmap:eth0")` gives with netmap's kernel module: no
//! daemon. `eth0` binds the NIC's rings (one per receive queue), `eth0-N`
//! ring N only, `eth0^` the host stack's (a TAP device `eth0^`, as valed's
//! host ports), `eth0*` both (NIC rings, then the host ring: netmap's
//! order).
//!
//! Each ring pair is a lane: the application's rings in a private region,
//! and the device's rings, joined by a two-port switch whose lookup sends
//! every frame to the other port. txsync forwards what the application
//! published to the device; rxsync forwards what the device received into
//! the application's RX ring. The switch converts virtio-net headers and
//! completes offloads exactly as valed does, and both ports hold their
//! sender when full (backpressure), so nothing is dropped between the
//! application and the device: netmap's txsync and rxsync.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex};

use netmap::csb::Csb;
use netmap::portname::{PortKind, PortSpec, RingSel};
use netmap::region::{PortLayout, Region, RegionConfig};
use netmap::ring::RingView;
use netmap::sync::{AppRing, Dir, KringState};
use netmap::sys::EventFd;
use vale::lookup::{Dest, FrameInfo, Lookup};
use vale::ring_port::{RingGeometry, RingSink, RingSource};
use vale::switch::Scratch;
use vale::{PortConfig, PortId, Sink, Source, Switch};

use crate::{open, AdMode, NicError, NicRx, TapRx, XdpRx};

/// A point-to-point lookup: everything goes to the other port.
#[derive(Debug, Default)]
struct Wire;

impl Lookup for Wire {
    fn lookup(&mut self, _f: &FrameInfo, _now: u32) -> Dest {
        Dest::Flood
    }

    fn port_removed(&mut self, _port: PortId) {}
}

/// What a device received: the source side of a NIC or host port.
#[derive(Debug)]
pub enum DevRx {
    /// The generic adapter's TPACKET_V3 ring.
    Generic(NicRx),
    /// The native adapter's AF_XDP ring.
    Native(XdpRx),
    /// What the host stack sent out of its TAP.
    Host(TapRx),
}

impl Source for DevRx {
    fn fetch(&mut self, frags: &mut Vec<vale::Frag>, max: usize) -> usize {
        match self {
            DevRx::Generic(r) => r.fetch(frags, max),
            DevRx::Native(r) => r.fetch(frags, max),
            DevRx::Host(r) => r.fetch(frags, max),
        }
    }

    fn complete(&mut self, frames: usize) {
        match self {
            DevRx::Generic(r) => r.complete(frames),
            DevRx::Native(r) => r.complete(frames),
            DevRx::Host(r) => r.complete(frames),
        }
    }

    /// The kernel wakes the socket's fd when it hands a frame (or block)
    /// over: nothing to ask, only whether one is already there.
    fn arm(&mut self) -> bool {
        !self.pending()
    }
}

impl DevRx {
    /// Whether frames are waiting.
    pub fn pending(&self) -> bool {
        match self {
            DevRx::Generic(r) => r.pending(),
            DevRx::Native(r) => r.pending(),
            DevRx::Host(r) => r.pending(),
        }
    }
}

impl AsFd for DevRx {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DevRx::Generic(r) => r.as_fd(),
            DevRx::Native(r) => r.as_fd(),
            DevRx::Host(r) => r.as_fd(),
        }
    }
}

/// One ring pair and its device.
struct Lane {
    sw: Switch<Wire>,
    app: PortId,
    dev: PortId,
    tx: RingSource,
    rx: DevRx,
    sc: Scratch,
}

/// An interface's rings in this process.
pub struct NicRings {
    name: String,
    region: Region,
    csb: Arc<Csb>,
    kick: EventFd,
    irq: Arc<EventFd>,
    tx: Vec<usize>,
    rx: Vec<usize>,
    lanes: Vec<Mutex<Lane>>,
    /// Each lane's device fd, for poll without the lane's lock.
    fds: Vec<std::os::fd::OwnedFd>,
    kind: &'static str,
}

impl std::fmt::Debug for NicRings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NicRings")
            .field("name", &self.name)
            .field("rings", &self.lanes.len())
            .field("kind", &self.kind)
            .finish()
    }
}

fn inval(name: &str, why: String) -> NicError {
    NicError::BadName {
        name: name.into(),
        why,
    }
}

impl NicRings {
    /// Opens the rings `spec` names (`netmap:eth0`, `eth0^`, `eth0*`,
    /// `eth0-0`) with `slots` slots each; the application's frames carry a
    /// virtio-net header of `hdr_len` bytes (0, 10 or 12).
    pub fn open(
        spec: &PortSpec,
        mode: AdMode,
        hdr_len: u16,
        slots: u32,
    ) -> Result<NicRings, NicError> {
        let PortKind::Nic { ifname } = &spec.name.kind else {
            return Err(inval(&spec.nr_name(), "not an interface".into()));
        };
        if spec.name.pipe.is_some() {
            return Err(inval(
                ifname,
                "pipes of an interface are not supported".into(),
            ));
        }
        // Which NIC queues (None: all), and whether the host ring.
        let (nic, one, host) = match spec.rings {
            RingSel::AllNic => (true, None, false),
            RingSel::OneNic(k) => (true, Some(usize::from(k)), false),
            RingSel::Sw | RingSel::OneSw(0) => (false, None, true),
            RingSel::NicSw => (true, None, true),
            RingSel::OneSw(n) => return Err(inval(ifname, format!("host ring {n}: there is one"))),
        };
        // Each device with the ring id the application sees.
        let mut devs: Vec<(u16, DevRx, Box<dyn Sink>, PortConfig)> = Vec::new();
        let mut kind = "host";
        if nic {
            let n = open(ifname, mode)?;
            kind = n.kind();
            let (queues, mut cfg) = n.into_queues();
            cfg.backpressure = true;
            let have = queues.len();
            if one.is_some_and(|k| k >= have) {
                return Err(inval(
                    ifname,
                    format!("ring {}: the interface has {have}", one.unwrap_or(0)),
                ));
            }
            for (k, (rx, tx)) in queues.into_iter().enumerate() {
                if one.is_none_or(|o| o == k) {
                    devs.push((k as u16, rx, tx, cfg));
                }
            }
        }
        if host {
            let t = crate::HostTap::create(&format!("{ifname}^"))?;
            let cfg = PortConfig {
                backpressure: true,
                vnet_hdr_len: crate::VNET_HDR_LEN as u16,
                offloads: vale::port::OFFLOAD_CSUM
                    | vale::port::OFFLOAD_TSO4
                    | vale::port::OFFLOAD_TSO6,
                ..Default::default()
            };
            let id = devs.len() as u16;
            devs.push((id, DevRx::Host(t.rx), Box::new(t.tx), cfg));
        }
        let n = devs.len() as u32;
        let layout = PortLayout {
            tx_rings: n,
            rx_rings: n,
            tx_slots: slots,
            rx_slots: slots,
            ..Default::default()
        };
        let err = |e: netmap::region::RegionError| inval(ifname, e.to_string());
        let mut rcfg = RegionConfig::for_ports(&layout, 1, 1).map_err(err)?;
        rcfg.huge_pages = false;
        let mut region = Region::new(1, 0, &rcfg).map_err(err)?;
        let io = |what: &'static str| {
            let name = ifname.clone();
            move |source| NicError::Socket { name, what, source }
        };
        let csb = Arc::new(Csb::create(2 * n).map_err(io("control block"))?);
        let kick = EventFd::new().map_err(io("eventfd"))?;
        let irq = Arc::new(EventFd::new().map_err(io("eventfd"))?);
        let mut tx = Vec::new();
        let mut rx = Vec::new();
        let mut lanes = Vec::new();
        let mut fds = Vec::new();
        let app_cfg = PortConfig {
            backpressure: true,
            vnet_hdr_len: hdr_len,
            offloads: if hdr_len > 0 {
                vale::port::OFFLOAD_ALL
            } else {
                0
            },
            ..Default::default()
        };
        for (i, (id, dev_rx, dev_tx, dev_cfg)) in devs.into_iter().enumerate() {
            let t = region.alloc_ring(Dir::Tx, id, slots).map_err(err)?;
            let r = region.alloc_ring(Dir::Rx, id, slots).map_err(err)?;
            let geo = |off| RingGeometry::of(&region, off).map_err(err);
            // The CSB starts as the rings do: TX all free, RX empty.
            for (dir, idx) in [(Dir::Tx, i as u32), (Dir::Rx, n + i as u32)] {
                KringState::new(dir, slots).publish(&csb.entry(idx).map_err(io("control block"))?);
            }
            let src = RingSource::new(
                region.map_arc(),
                geo(t)?,
                csb.clone(),
                i as u32,
                irq.clone(),
            )
            .map_err(io("TX ring"))?;
            let sink = RingSink::new(
                region.map_arc(),
                geo(r)?,
                csb.clone(),
                n + i as u32,
                irq.clone(),
            )
            .map_err(io("RX ring"))?;
            let sw = Switch::with_lookup(&format!("{ifname}-{i}"), Wire);
            let attach = |name: &str, cfg, s: Box<dyn Sink>| {
                sw.attach(name, cfg, s)
                    .map_err(|e| inval(ifname, e.to_string()))
            };
            let app = attach("app", app_cfg, Box::new(sink))?;
            let dev = attach("dev", dev_cfg, dev_tx)?;
            let fd = dev_rx
                .as_fd()
                .try_clone_to_owned()
                .map_err(io("device fd"))?;
            tx.push(t);
            rx.push(r);
            lanes.push(Mutex::new(Lane {
                sw,
                app,
                dev,
                tx: src,
                rx: dev_rx,
                sc: Scratch::default(),
            }));
            fds.push(fd);
        }
        Ok(NicRings {
            name: spec.to_string(),
            region,
            csb,
            kick,
            irq,
            tx,
            rx,
            lanes,
            fds,
            kind,
        })
    }

    /// "native", "native zero-copy", "generic" or "host".
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Ring pairs bound.
    pub fn rings(&self) -> usize {
        self.lanes.len()
    }

    /// The application's side of TX ring `i` (`i` < [`rings`](Self::rings)).
    pub fn tx_ring(&self, i: usize) -> Option<AppRing<'_>> {
        self.app_ring(Dir::Tx, i)
    }

    /// The application's side of RX ring `i`.
    pub fn rx_ring(&self, i: usize) -> Option<AppRing<'_>> {
        self.app_ring(Dir::Rx, i)
    }

    fn app_ring(&self, dir: Dir, i: usize) -> Option<AppRing<'_>> {
        let (off, id) = match dir {
            Dir::Tx => (*self.tx.get(i)?, i as u32),
            Dir::Rx => (*self.rx.get(i)?, (self.lanes.len() + i) as u32),
        };
        Some(AppRing {
            ring: self.region.ring_view(off).ok()?,
            csb: self.csb.entry(id).ok()?,
            kick: &self.kick,
            irq: &self.irq,
            dir,
            id,
        })
    }

    /// The ring view at region offset `off`.
    pub fn ring_view(&self, off: usize) -> Option<RingView<'_>> {
        self.region.ring_view(off).ok()
    }

    fn lane(&self, i: usize) -> std::sync::MutexGuard<'_, Lane> {
        self.lanes[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// netmap's txsync on ring `i`: everything the application published
    /// goes to the device, as far as the device has room.
    pub fn txsync(&self, i: usize) -> Result<(), netmap::sync::SyncError> {
        self.sync(Dir::Tx, i)
    }

    /// netmap's rxsync on ring `i`: the application's released slots go
    /// back, and what the device received fills the ring.
    pub fn rxsync(&self, i: usize) -> Result<(), netmap::sync::SyncError> {
        self.sync(Dir::Rx, i)
    }

    /// One sync of ring `i` in direction `dir`: the switch forwards from
    /// the application's TX ring (TX) or the device (RX) until the source
    /// is empty or the destination holds it back (bounded, so a device
    /// that takes nothing ends the loop).
    fn sync(&self, dir: Dir, i: usize) -> Result<(), netmap::sync::SyncError> {
        let Some(ring) = self.app_ring(dir, i) else {
            return Ok(());
        };
        ring.sync_with(|| {
            let mut l = self.lane(i);
            let l = &mut *l;
            let (port, source): (PortId, &mut dyn Source) = match dir {
                Dir::Tx => (l.app, &mut l.tx),
                Dir::Rx => (l.dev, &mut l.rx),
            };
            for _ in 0..64 {
                let f = l.sw.forward(port, source, &mut l.sc, 0);
                if f.frames == 0 || f.held > 0 {
                    break;
                }
            }
        })
    }

    /// Whether ring `i`'s device has frames waiting (rxsync would bring
    /// some).
    pub fn rx_pending(&self, i: usize) -> bool {
        self.lane(i).rx.pending()
    }

    /// Waits until a device of `rings` has frames, or `timeout`.
    pub fn wait_rx(&self, rings: &[usize], timeout: std::time::Duration) -> std::io::Result<()> {
        if rings.iter().any(|&i| self.rx_pending(i)) {
            return Ok(());
        }
        let mut fds: Vec<_> = rings
            .iter()
            .filter_map(|&i| self.fds.get(i))
            .map(|fd| netmap::sys::PollFd::new(fd.as_fd(), netmap::sys::PollFlags::IN))
            .collect();
        netmap::sys::poll(&mut fds, Some(timeout)).map(|_| ())
    }
}
