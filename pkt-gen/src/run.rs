//! Opening ports and running tx, rx, ping, pong, txseq and rxseq, with
//! netmap pkt-gen's thread structure: `-p N` threads, one ring each, a main
//! thread printing the rate every `-T` milliseconds, and the final lines
//! once every thread is done.
//!
//! Ports: a name valed serves (VALE ports; pipes and NIC ports once valed
//! serves them) is opened with [`NmPort`]; `null` is a port inside pkt-gen
//! whose TX discards everything and whose RX never receives.
//!
//! With `-p N`, each thread registers its own ring (`NR_REG_ONE_NIC`,
//! ring i), as netmap's pkt-gen does. If valed refuses a second
//! registration of the port (EBUSY), the threads share one registration of
//! all rings instead, each using its own ring.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use netmap::abi::{
    NetmapSlot, NmreqPortHdr, NmreqRegister, NETMAP_REQ_PORT_HDR_GET, NETMAP_REQ_PORT_HDR_SET,
    NR_ACCEPT_VNET_HDR, NR_REG_ALL_NIC, NR_REG_DEFAULT, NR_REG_NIC_SW, NR_REG_ONE_NIC,
    NR_REG_ONE_SW, NR_REG_SW, NS_BUF_CHANGED, NS_INDIRECT, NS_MOREFRAG, NS_REPORT,
};
use netmap::ctrl::{socket_path, CtrlConn, Request};
use netmap::port::{NmPort, PortError};
use netmap::portname;
use netmap::region::{PortLayout, Region, RegionConfig};
use netmap::ring::{self, RingView};
use netmap::sync::{poll_rings, AppRing, Dir, SyncError, Want};

use crate::args::{opt, Config, DevKind, Func, Role};
use crate::d;
use crate::frame::{self, FrameError, FrameSpec, Rng, Template};
use crate::seq::{self, SeqChecker, SeqReport, Verdict};
use crate::stats::{self, Ctrs, Outcome, PpsWindow, RateLimit, RttAll, RttInterval, RttSummary};

/// Why a run could not start or went wrong.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Opening the port failed.
    #[error(transparent)]
    Open(#[from] PortError),
    /// The sync protocol failed (valed went away…).
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// The options do not work together, or setup failed.
    #[error("{0}")]
    Setup(String),
    /// `-P`.
    #[error(transparent)]
    Pcap(#[from] crate::pcap::PcapError),
    /// The frame could not be built.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A buffer index or length from the ring was out of range.
    #[error("buffer access: {0}")]
    Buf(#[from] std::io::Error),
}

fn setup<T>(msg: impl Into<String>) -> Result<T, RunError> {
    Err(RunError::Setup(msg.into()))
}

// ---------------------------------------------------------------------------
// Ports

/// The `null` port: rings in a private region; TX sync consumes every
/// slot, RX never fills one.
#[derive(Debug)]
pub struct NullPort {
    region: Region,
    tx: Vec<usize>,
    rx: Vec<usize>,
}

impl NullPort {
    /// A null port with these rings.
    pub fn new(tx_rings: u32, rx_rings: u32, slots: u32) -> Result<NullPort, RunError> {
        let layout = PortLayout {
            tx_rings,
            rx_rings,
            tx_slots: slots,
            rx_slots: slots,
            ..Default::default()
        };
        let err = |e: netmap::region::RegionError| RunError::Setup(format!("null: {e}"));
        let mut cfg = RegionConfig::for_ports(&layout, 1, 1).map_err(err)?;
        cfg.huge_pages = false;
        let mut region = Region::new(1, 0, &cfg).map_err(err)?;
        let mut tx = Vec::new();
        for i in 0..tx_rings {
            tx.push(region.alloc_ring(Dir::Tx, i as u16, slots).map_err(err)?);
        }
        let mut rx = Vec::new();
        for i in 0..rx_rings {
            rx.push(region.alloc_ring(Dir::Rx, i as u16, slots).map_err(err)?);
        }
        Ok(NullPort { region, tx, rx })
    }
}

/// A port a thread uses.
#[derive(Debug)]
pub enum Dev {
    /// Served by valed.
    Nm(Box<NmPort>),
    /// pkt-gen's own `null`.
    Null(Box<NullPort>),
    /// An interface opened in this process (`netmap:eth0`), no valed.
    Nic(Box<nic::NicRings>),
    /// A virtio-net device driven in this process (`virtio:SOCK`).
    Virtio(Box<guest_driver::VirtioRings>),
}

impl Dev {
    /// Bound TX rings.
    pub fn tx_rings(&self) -> usize {
        match self {
            Dev::Nm(p) => p.tx_rings(),
            Dev::Null(n) => n.tx.len(),
            Dev::Nic(n) => n.rings(),
            Dev::Virtio(v) => v.rings(),
        }
    }

    /// Bound RX rings.
    pub fn rx_rings(&self) -> usize {
        match self {
            Dev::Nm(p) => p.rx_rings(),
            Dev::Null(n) => n.rx.len(),
            Dev::Nic(n) => n.rings(),
            Dev::Virtio(v) => v.rings(),
        }
    }

    /// TX ring `i`.
    pub fn tx(&self, i: usize) -> Result<Ring<'_>, RunError> {
        Ok(match self {
            Dev::Nm(p) => Ring::Nm(p.tx_ring(i)),
            Dev::Nic(n) => Ring::Nic(n.tx_ring(i).ok_or_else(no_ring)?, n, i),
            Dev::Virtio(v) => Ring::Virtio(v.tx_ring(i).ok_or_else(no_ring)?, v, i),
            Dev::Null(n) => Ring::Null(
                n.region
                    .ring_view(n.tx[i])
                    .map_err(|e| RunError::Setup(e.to_string()))?,
                Dir::Tx,
            ),
        })
    }

    /// RX ring `i`.
    pub fn rx(&self, i: usize) -> Result<Ring<'_>, RunError> {
        Ok(match self {
            Dev::Nm(p) => Ring::Nm(p.rx_ring(i)),
            Dev::Nic(n) => Ring::Nic(n.rx_ring(i).ok_or_else(no_ring)?, n, i),
            Dev::Virtio(v) => Ring::Virtio(v.rx_ring(i).ok_or_else(no_ring)?, v, i),
            Dev::Null(n) => Ring::Null(
                n.region
                    .ring_view(n.rx[i])
                    .map_err(|e| RunError::Setup(e.to_string()))?,
                Dir::Rx,
            ),
        })
    }
}

fn no_ring() -> RunError {
    RunError::Setup("no such ring".into())
}

/// One ring of a thread.
#[derive(Debug, Clone, Copy)]
pub enum Ring<'a> {
    /// A ring synced with valed.
    Nm(AppRing<'a>),
    /// Ring `i` of an interface in this process.
    Nic(AppRing<'a>, &'a nic::NicRings, usize),
    /// Ring `i` of a virtio-net device in this process.
    Virtio(AppRing<'a>, &'a guest_driver::VirtioRings, usize),
    /// A ring of the null port.
    Null(RingView<'a>, Dir),
}

impl<'a> Ring<'a> {
    /// The `netmap_ring`.
    #[inline]
    pub fn view(&self) -> RingView<'a> {
        match self {
            Ring::Nm(r) | Ring::Nic(r, ..) | Ring::Virtio(r, ..) => r.ring,
            Ring::Null(v, _) => *v,
        }
    }

    /// txsync / rxsync.
    #[inline]
    pub fn sync(&self) -> Result<(), SyncError> {
        match self {
            Ring::Nm(r) => r.sync(),
            Ring::Nic(r, n, i) if r.dir == Dir::Tx => n.txsync(*i),
            Ring::Nic(_, n, i) => n.rxsync(*i),
            Ring::Virtio(r, v, i) if r.dir == Dir::Tx => v.txsync(*i),
            Ring::Virtio(_, v, i) => v.rxsync(*i),
            Ring::Null(v, Dir::Tx) => {
                // Everything published is consumed at once.
                v.set_tail(ring::prev(v.head(), v.num_slots()));
                Ok(())
            }
            Ring::Null(_, Dir::Rx) => Ok(()),
        }
    }

    /// Slots the user may use now (`nm_ring_space`).
    #[inline]
    pub fn space(&self) -> u32 {
        let v = self.view();
        ring::space(v.cur(), v.tail(), v.num_slots())
    }

    fn drained(&self) -> bool {
        match self {
            Ring::Nm(r) | Ring::Nic(r, ..) | Ring::Virtio(r, ..) => r.drained(),
            Ring::Null(..) => true,
        }
    }
}

/// The register request for thread `ringid` (None: the name's rings).
fn register_req(cfg: &Config, ringid: Option<u16>) -> Result<NmreqRegister, RunError> {
    let mut req = NmreqRegister {
        nr_flags: NR_ACCEPT_VNET_HDR,
        ..Default::default()
    };
    if let Some(c) = cfg.nmr_config {
        req.nr_tx_slots = c.tx_slots;
        req.nr_rx_slots = c.rx_slots;
        req.nr_tx_rings = c.tx_rings;
        req.nr_rx_rings = c.rx_rings;
    }
    if let Some(i) = ringid {
        let spec = portname::parse(&cfg.ifname).map_err(PortError::from)?;
        req.nr_mode = match spec.nr_mode() {
            NR_REG_ALL_NIC | NR_REG_NIC_SW | NR_REG_DEFAULT => NR_REG_ONE_NIC,
            NR_REG_SW => NR_REG_ONE_SW,
            m => m,
        };
        req.nr_ringid = i;
    }
    Ok(req)
}

/// How the threads' ports were opened.
#[derive(Debug)]
pub enum Opened {
    /// One registration per thread (its rings).
    PerThread(Vec<Dev>),
    /// One registration of all rings; thread i uses ring i.
    Shared(Box<Dev>),
}

impl Opened {
    fn first(&self) -> &Dev {
        match self {
            Opened::PerThread(v) => &v[0],
            Opened::Shared(d) => d,
        }
    }
}

fn is_errno(e: &PortError, errno: i32) -> bool {
    matches!(e, PortError::Refused { source, .. } if source.raw_os_error() == Some(errno))
}

/// Opens the port for `cfg.nthreads` threads.
pub fn open(cfg: &Config, sock: &Path) -> Result<Opened, RunError> {
    let n = cfg.nthreads;
    if cfg.dev == DevKind::Null {
        let c = cfg.nmr_config.unwrap_or_default();
        let slots = match c.tx_slots {
            0 => 1024,
            s => s,
        };
        let rings = |r: u16| u32::from(r).max(1);
        if n == 1 {
            return Ok(Opened::PerThread(vec![Dev::Null(Box::new(NullPort::new(
                rings(c.tx_rings),
                rings(c.rx_rings),
                slots,
            )?))]));
        }
        let devs = (0..n)
            .map(|_| NullPort::new(1, 1, slots).map(|n| Dev::Null(Box::new(n))))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Opened::PerThread(devs));
    }
    if cfg.dev == DevKind::Virtio {
        let rings = open_virtio(cfg)?;
        if n > 1 && n > rings.rings() {
            return setup(format!("bad nthreads {n}, have {} queues", rings.rings()));
        }
        let dev = Dev::Virtio(Box::new(rings));
        return Ok(if n == 1 {
            Opened::PerThread(vec![dev])
        } else {
            Opened::Shared(Box::new(dev))
        });
    }
    if let Some(rings) = open_nic(cfg)? {
        if n > 1 && n > rings.rings() {
            return setup(format!("bad nthreads {n}, have {} queues", rings.rings()));
        }
        let dev = Dev::Nic(Box::new(rings));
        return Ok(if n == 1 {
            Opened::PerThread(vec![dev])
        } else {
            Opened::Shared(Box::new(dev))
        });
    }
    let open1 = |ringid: Option<u16>| -> Result<NmPort, RunError> {
        Ok(NmPort::open_with(
            sock,
            &cfg.ifname,
            register_req(cfg, ringid)?,
        )?)
    };
    if n == 1 {
        return Ok(Opened::PerThread(vec![Dev::Nm(Box::new(open1(None)?))]));
    }
    let mut devs: Vec<Dev> = Vec::new();
    for i in 0..n {
        match open1(Some(i as u16)) {
            Ok(p) => devs.push(Dev::Nm(Box::new(p))),
            Err(RunError::Open(e)) if i > 0 && is_errno(&e, libc::EBUSY) => {
                d!(
                    "start_threads",
                    "{}: valed refuses a second registration of the port (EBUSY): the {} threads share one registration of all rings",
                    cfg.ifname,
                    n
                );
                drop(devs);
                // valed reclaims the closed registrations asynchronously.
                let t0 = Instant::now();
                loop {
                    match open1(None) {
                        Ok(p) => return Ok(Opened::Shared(Box::new(Dev::Nm(Box::new(p))))),
                        Err(RunError::Open(e))
                            if is_errno(&e, libc::EBUSY)
                                && t0.elapsed() < Duration::from_secs(5) =>
                        {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(RunError::Open(e)) if i > 0 && is_errno(&e, libc::EINVAL) => {
                let have = match cfg.func.role() {
                    Role::Sender => devs[0].tx_rings_total(),
                    _ => devs[0].rx_rings_total(),
                };
                return setup(format!("bad nthreads {n}, have {have} queues"));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Opened::PerThread(devs))
}

/// `netmap:IF` names an interface of this host: open it here, as
/// netmap's kernel module would, without valed. None for other names.
fn open_nic(cfg: &Config) -> Result<Option<nic::NicRings>, RunError> {
    let spec = portname::parse(&cfg.ifname).map_err(PortError::from)?;
    let portname::PortKind::Nic { ifname } = &spec.name.kind else {
        return Ok(None);
    };
    if nic::if_index(ifname).is_none() {
        return Ok(None);
    }
    let mode = cfg.admode;
    let slots = match cfg.nmr_config.map_or(0, |c| c.tx_slots) {
        0 => 1024,
        s => s,
    };
    let rings = nic::NicRings::open(&spec, mode, cfg.virt_header as u16, slots)
        .map_err(|e| RunError::Setup(format!("{}: {e}", cfg.ifname)))?;
    d!(
        "nm_open",
        "{}: {} adapter, {} ring pair(s) in this process",
        cfg.ifname,
        rings.kind(),
        rings.rings()
    );
    Ok(Some(rings))
}

/// `virtio:SOCK[,options]`: pkt-gen's own virtio-net driver, the
/// vhost-user frontend on SOCK. Queue pairs: the name's `queues=`, else
/// one per thread (or `-C`'s ring count); slots: `-C`'s, else the name's
/// or 1024.
fn open_virtio(cfg: &Config) -> Result<guest_driver::VirtioRings, RunError> {
    let name = match guest_driver::VirtioName::parse(&cfg.ifname) {
        Some(Ok(n)) => n,
        Some(Err(e)) => return Err(RunError::Setup(e.to_string())),
        None => return setup(format!("{}: not a virtio: name", cfg.ifname)),
    };
    let c = cfg.nmr_config.unwrap_or_default();
    let mut dc = guest_driver::DriverConfig {
        queue_pairs: (cfg.nthreads as u16).max(c.tx_rings).max(c.rx_rings).max(1),
        hdr_len: cfg.virt_header as u16,
        ..Default::default()
    };
    if c.tx_slots != 0 {
        dc.slots = c.tx_slots;
    }
    let rings = guest_driver::open(&name, dc)
        .map_err(|e| RunError::Setup(format!("{}: {e}", cfg.ifname)))?;
    let neg = rings.negotiated();
    d!(
        "nm_open",
        "{}: virtio-net, {} queue pair(s), mergeable {}, event_idx {}",
        cfg.ifname,
        rings.rings(),
        neg.mrg_rxbuf,
        neg.event_idx
    );
    Ok(rings)
}

impl Dev {
    fn register_info(&self) -> Option<&NmreqRegister> {
        match self {
            Dev::Nm(p) => Some(p.register_info()),
            Dev::Null(_) | Dev::Nic(_) | Dev::Virtio(_) => None,
        }
    }

    fn tx_rings_total(&self) -> usize {
        self.register_info()
            .map_or(self.tx_rings(), |r| usize::from(r.nr_tx_rings))
    }

    fn rx_rings_total(&self) -> usize {
        self.register_info()
            .map_or(self.rx_rings(), |r| usize::from(r.nr_rx_rings))
    }
}

/// netmap's `get_vnet_hdr_len` / `set_vnet_hdr_len`: the virtio-net header
/// length frames carry on this port.
fn vnet_header(cfg: &Config, sock: &Path, dev: &Dev) -> usize {
    if cfg.dev == DevKind::Null || matches!(dev, Dev::Nic(_) | Dev::Virtio(_)) {
        return cfg.virt_header;
    }
    let Ok(spec) = portname::parse(&cfg.ifname) else {
        return cfg.virt_header;
    };
    let name = spec.nr_name();
    let call = |reqtype: u16, len: u32| -> Option<u32> {
        let body = NmreqPortHdr {
            nr_hdr_len: len,
            pad1: 0,
        };
        let req = Request::new(reqtype, &name, &body).ok()?;
        let conn = CtrlConn::connect(sock).ok()?;
        let (reply, _) = conn.call(&req).ok()?;
        if reply.error != 0 {
            return None;
        }
        reply
            .req
            .body_as::<NmreqPortHdr>()
            .ok()
            .map(|b| b.nr_hdr_len)
    };
    if cfg.virt_header != 0 {
        if call(NETMAP_REQ_PORT_HDR_SET, cfg.virt_header as u32).is_none() {
            d!(
                "set_vnet_hdr_len",
                "Unable to set virtio-net header length {}",
                cfg.virt_header
            );
        }
        return cfg.virt_header;
    }
    match call(NETMAP_REQ_PORT_HDR_GET, 0) {
        Some(0) => 0,
        Some(l) => {
            d!(
                "get_vnet_hdr_len",
                "Port requires virtio-net header, length = {}",
                l
            );
            l as usize
        }
        None => {
            d!("get_vnet_hdr_len", "Unable to get virtio-net header length");
            0
        }
    }
}

// ---------------------------------------------------------------------------
// Threads

/// What a thread publishes for the main thread while it runs.
#[derive(Debug)]
struct ThreadCtr {
    pkts: AtomicU64,
    bytes: AtomicU64,
    events: AtomicU64,
    min_space: AtomicU64,
    done: AtomicBool,
}

impl ThreadCtr {
    fn new() -> ThreadCtr {
        ThreadCtr {
            pkts: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            events: AtomicU64::new(0),
            min_space: AtomicU64::new(99999),
            done: AtomicBool::new(false),
        }
    }

    #[inline]
    fn set(&self, c: &Ctrs) {
        self.pkts.store(c.pkts, Ordering::Relaxed);
        self.bytes.store(c.bytes, Ordering::Relaxed);
        self.events.store(c.events, Ordering::Relaxed);
    }

    fn get(&self) -> Ctrs {
        Ctrs {
            pkts: self.pkts.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
        }
    }
}

/// What a thread hands back when it ends.
#[derive(Debug, Default)]
struct ThreadEnd {
    tic: Option<Instant>,
    toc: Option<Instant>,
    ctrs: Ctrs,
    seq: Option<SeqReport>,
    rtt: Option<RttSummary>,
}

/// One thread's view of the world.
struct Worker<'a> {
    cfg: &'a Config,
    me: usize,
    dev: &'a Dev,
    /// The thread owns its registration: port-wide poll, drain and
    /// indirect sync are its own.
    whole: bool,
    tx: Vec<Ring<'a>>,
    rx: Vec<Ring<'a>>,
    ctr: &'a ThreadCtr,
    stop: &'a AtomicBool,
    tmpl: Template,
    rng: Rng,
    vh: usize,
    indirect: bool,
    last_heads: Vec<u32>,
}

fn realtime() -> (u32, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as u32, d.subsec_nanos())
}

/// netmap's `-R` start: two seconds from now, on a whole second.
fn rate_start() -> Instant {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let to_second = Duration::from_secs(1) - Duration::from_nanos(u64::from(d.subsec_nanos()));
    Instant::now() + Duration::from_secs(1) + to_second
}

/// netmap's `wait_time`: sleeps when more than a millisecond away, then
/// spins.
fn wait_until(t: Instant, stop: &AtomicBool) {
    loop {
        let now = Instant::now();
        if now >= t || stop.load(Ordering::Relaxed) {
            return;
        }
        let left = t - now;
        if left > Duration::from_millis(1) {
            std::thread::sleep(Duration::from_millis(1));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// How a frame of `total` bytes is cut into slots: (fragments, fragment
/// size), netmap's rule (`-F` fragments of `-M` bytes at most, never more
/// than a buffer), with every fragment fitting its buffer.
pub fn frag_plan(total: usize, frags: u32, max_frag: u32, buf_size: u32) -> (usize, usize) {
    let limit = (max_frag.max(1).min(buf_size)) as usize;
    let frags = (frags.max(1) as usize).min(total.max(1));
    let fsz = total / frags;
    let last = total - (frags - 1) * fsz;
    if fsz > limit || last > limit {
        (total.div_ceil(limit), limit)
    } else {
        (frags, fsz.max(1))
    }
}

impl<'a> Worker<'a> {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// netmap's `poll()` on this thread's rings: true when ready, false
    /// after `timeout` (or a stop request).
    fn wait(&self, tx: bool, rx: bool, timeout: Duration) -> Result<bool, RunError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stopped() {
                return Ok(false);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            // Short slices notice a stop request; threads sharing one
            // registration also share its wake-up eventfd, and one of them
            // may consume a wake-up meant for another: poll them briefly.
            let slice = (deadline - now).min(if self.whole {
                Duration::from_millis(100)
            } else {
                Duration::from_millis(2)
            });
            let r = match self.dev {
                Dev::Nm(p) if self.whole => p.poll(tx, rx, Some(slice)).map(|_| ()),
                Dev::Nm(_) => {
                    let mut rings: Vec<AppRing<'_>> = Vec::new();
                    let pick = |r: &Ring<'a>| match r {
                        Ring::Nm(a) => Some(*a),
                        Ring::Null(..) | Ring::Nic(..) | Ring::Virtio(..) => None,
                    };
                    if tx {
                        rings.extend(self.tx.iter().filter_map(pick));
                    }
                    if rx {
                        rings.extend(self.rx.iter().filter_map(pick));
                    }
                    poll_rings(&rings, Want::Ready, None, Some(slice)).map(|_| ())
                }
                Dev::Nic(n) => {
                    if tx {
                        for r in &self.tx {
                            r.sync()?;
                        }
                        if self.tx.iter().any(|r| r.space() > 0) {
                            return Ok(true);
                        }
                    }
                    if rx {
                        let mine: Vec<usize> = self
                            .rx
                            .iter()
                            .filter_map(|r| match r {
                                Ring::Nic(_, _, i) => Some(*i),
                                _ => None,
                            })
                            .collect();
                        // Frames already in the ring count as ready.
                        if self.rx.iter().any(|r| r.space() > 0) {
                            return Ok(true);
                        }
                        n.wait_rx(&mine, slice).map_err(RunError::Buf)?;
                        for r in &self.rx {
                            r.sync()?;
                        }
                        if self.rx.iter().any(|r| r.space() > 0) {
                            return Ok(true);
                        }
                    } else {
                        // The device's TX ring drains by itself.
                        std::thread::sleep(slice.min(Duration::from_micros(100)));
                    }
                    Err(SyncError::TimedOut(slice))
                }
                Dev::Virtio(v) => {
                    let mine = |rs: &[Ring<'a>]| -> Vec<usize> {
                        rs.iter()
                            .filter_map(|r| match r {
                                Ring::Virtio(_, _, i) => Some(*i),
                                _ => None,
                            })
                            .collect()
                    };
                    let (mut t, mut r) = (Vec::new(), Vec::new());
                    if tx {
                        for r in &self.tx {
                            r.sync()?;
                        }
                        if self.tx.iter().any(|r| r.space() > 0) {
                            return Ok(true);
                        }
                        t = mine(&self.tx);
                    }
                    if rx {
                        for r in &self.rx {
                            r.sync()?;
                        }
                        if self.rx.iter().any(|r| r.space() > 0) {
                            return Ok(true);
                        }
                        r = mine(&self.rx);
                    }
                    match v.wait(&t, &r, slice) {
                        Ok(true) => {
                            for r in self.tx.iter().chain(&self.rx) {
                                r.sync()?;
                            }
                            if self.tx.iter().chain(&self.rx).any(|r| r.space() > 0) {
                                return Ok(true);
                            }
                            Err(SyncError::TimedOut(slice))
                        }
                        Ok(false) => Err(SyncError::TimedOut(slice)),
                        Err(e) => Err(e),
                    }
                }
                Dev::Null(_) => {
                    if tx {
                        for r in &self.tx {
                            r.sync()?;
                        }
                        if self.tx.iter().any(|r| r.space() > 0) {
                            return Ok(true);
                        }
                    }
                    std::thread::sleep(slice);
                    Err(SyncError::TimedOut(slice))
                }
            };
            match r {
                Ok(()) => return Ok(true),
                Err(SyncError::TimedOut(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Publishes the TX rings (resolving `-I` slots first).
    fn txsync(&mut self) -> Result<(), RunError> {
        if self.indirect {
            if let Dev::Nm(p) = self.dev {
                // SAFETY: every slot this thread published with NS_INDIRECT
                // since the last call has `ptr` = the start of
                // `self.tmpl`'s buffer and `len` = `self.tmpl.len()`; that
                // buffer is never resized and outlives the call (the
                // template lives as long as the worker, and nothing
                // mutates it between filling and syncing in indirect mode).
                unsafe { p.txsync_indirect(&mut self.last_heads)? };
                return Ok(());
            }
        }
        for r in &self.tx {
            r.sync()?;
        }
        Ok(())
    }

    /// Syncs the RX rings; whether any holds frames.
    fn rx_ready(&self) -> Result<bool, RunError> {
        let mut any = false;
        for r in &self.rx {
            r.sync()?;
            any |= r.space() > 0;
        }
        Ok(any)
    }

    /// Waits until valed has taken everything published (or stop).
    fn drain(&mut self) -> Result<(), RunError> {
        match self.dev {
            Dev::Nm(p) if self.whole => loop {
                if self.stopped() {
                    return Ok(());
                }
                match p.drain(Duration::from_millis(200)) {
                    Ok(()) => return Ok(()),
                    Err(SyncError::TimedOut(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            },
            _ => {
                for r in &self.tx {
                    loop {
                        r.sync()?;
                        if r.drained() || self.stopped() {
                            break;
                        }
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
                Ok(())
            }
        }
    }

    fn dump(&self, v: &RingView<'_>, at: u32, s: &NetmapSlot) {
        let len = (s.len as usize).min(v.buf_size() as usize);
        let mut b = vec![0u8; len];
        if v.read_buf(s.buf_idx, 0, &mut b).is_ok() {
            print!(
                "{}",
                stats::dump_payload(v.offset(), at, s.buf_idx, s.flags, &b)
            );
        }
    }

    fn vary(&self) -> bool {
        self.cfg.src_ip.is_range()
            || self.cfg.dst_ip.is_range()
            || self.cfg.has(opt::RANDOM_SRC | opt::RANDOM_DST)
    }

    fn next_addresses(&mut self) {
        let (rs, rd) = (self.cfg.has(opt::RANDOM_SRC), self.cfg.has(opt::RANDOM_DST));
        self.tmpl.next_addresses(&mut self.rng, rs, rd);
    }

    /// netmap's `send_packets`: fills up to `count` frames from `head`.
    /// Returns (frames, bytes).
    fn send_packets(&mut self, r: Ring<'a>, count: u64) -> Result<(u64, u64), RunError> {
        let v = r.view();
        let ns = v.num_slots();
        let bufsz = v.buf_size();
        let cfg = self.cfg;
        let rubbish = cfg.has(opt::RUBBISH);
        let random_size = cfg.pkt_min_size > 0;
        let copy = cfg.has(opt::COPY | opt::MEMCPY) || random_size;
        let vary = copy && self.vary();
        let dump = cfg.has(opt::DUMP);
        let mut head = v.head();
        let mut avail = ring::space(head, v.tail(), ns) as usize;
        let mut sent = 0u64;
        let mut bytes = 0u64;
        let mut last = None;
        while sent < count {
            if random_size {
                let span = (cfg.pkt_size - cfg.pkt_min_size) as u32;
                let size = cfg.pkt_min_size + (self.rng.next_u32() % span) as usize;
                self.tmpl.set_size(size);
            }
            let total = self.tmpl.len();
            let (nfr, fsz) = if self.indirect || rubbish {
                (1, total)
            } else {
                frag_plan(total, cfg.frags, cfg.frag_size, bufsz)
            };
            if avail < nfr {
                break;
            }
            let mut slot = v.slot(head);
            let changed = slot.flags & NS_BUF_CHANGED != 0;
            slot.flags = 0;
            let mut tosend = total;
            if rubbish {
                tosend = total.min(bufsz as usize);
            } else if self.indirect {
                slot.flags = NS_INDIRECT;
                slot.ptr = self.tmpl.bytes().as_ptr() as u64;
            } else if nfr > 1 {
                let data = self.tmpl.bytes();
                for f in 0..nfr - 1 {
                    v.write_buf(slot.buf_idx, 0, &data[f * fsz..(f + 1) * fsz])?;
                    slot.len = fsz as u16;
                    slot.flags = NS_MOREFRAG;
                    v.set_slot(head, slot);
                    if dump {
                        self.dump(&v, head, &slot);
                    }
                    head = ring::next(head, ns);
                    slot = v.slot(head);
                }
                let rest = &data[(nfr - 1) * fsz..];
                v.write_buf(slot.buf_idx, 0, rest)?;
                tosend = rest.len();
                slot.flags = 0;
                avail -= nfr - 1;
                if vary {
                    self.next_addresses();
                }
            } else if copy || changed {
                v.write_buf(slot.buf_idx, 0, self.tmpl.bytes())?;
                if vary {
                    self.next_addresses();
                }
            }
            slot.len = tosend as u16;
            v.set_slot(head, slot);
            if dump {
                self.dump(&v, head, &slot);
            }
            last = Some(head);
            head = ring::next(head, ns);
            avail -= 1;
            sent += 1;
            bytes += total as u64;
        }
        if let Some(l) = last {
            let mut s = v.slot(l);
            s.flags |= NS_REPORT;
            v.set_slot(l, s);
            v.set_head(head);
            v.set_cur(head);
        }
        if sent < count {
            // Tell the switch we need more room before waking us.
            v.set_cur(v.tail());
        }
        Ok((sent, bytes))
    }

    fn sender(&mut self) -> Result<ThreadEnd, RunError> {
        let cfg = self.cfg;
        let n = cfg.npackets / cfg.nthreads as u64;
        if self.tx.is_empty() {
            return setup(format!("thread {}: no TX ring", self.me));
        }
        let bufsz = self.tx[0].view().buf_size();
        let (nfr, fsz) = frag_plan(self.tmpl.len(), cfg.frags, cfg.frag_size, bufsz);
        d!("sender_body", "frags {} frag_size {}", nfr, fsz);
        if self.indirect && nfr > 1 {
            return setup(format!(
                "-I: a {}-byte frame does not fit a {}-byte buffer",
                self.tmpl.len(),
                bufsz
            ));
        }
        // Every buffer gets the frame the first time it is used.
        for r in &self.tx {
            let v = r.view();
            for j in 0..v.num_slots() {
                let mut s = v.slot(j);
                s.flags = NS_BUF_CHANGED;
                v.set_slot(j, s);
            }
        }
        let rate = cfg.rate_plan();
        let mut end = ThreadEnd::default();
        let mut tic = Instant::now();
        let mut next = tic;
        if rate.is_some() {
            tic = rate_start();
            wait_until(tic, self.stop);
            next = tic;
        }
        end.tic = Some(tic);
        let mut tosend: i64 = 0;
        let mut c = Ctrs::default();
        while !self.stopped() && (n == 0 || c.pkts < n) {
            if let Some((b, period)) = rate {
                if tosend <= 0 {
                    tosend = i64::from(b);
                    next += period;
                    wait_until(next, self.stop);
                }
            }
            self.txsync()?;
            if !self.tx.iter().any(|r| r.space() > 0) {
                if !self.wait(true, false, Duration::from_secs(2))? && !self.stopped() {
                    d!("sender_body", "poll error on queue {}: timeout", self.me);
                }
                continue;
            }
            for k in 0..self.tx.len() {
                if n > 0 && c.pkts == n {
                    break;
                }
                let mut limit = match rate {
                    Some(_) => tosend.max(0) as u64,
                    None => u64::from(cfg.burst),
                };
                if n > 0 && n - c.pkts < limit {
                    limit = n - c.pkts;
                }
                let r = self.tx[k];
                if r.space() == 0 {
                    continue;
                }
                let (m, b) = self.send_packets(r, limit)?;
                c.pkts += m;
                c.bytes += b;
                if m > 0 {
                    c.events += 1;
                }
                self.ctr.set(&c);
                if rate.is_some() {
                    tosend -= m as i64;
                    if tosend <= 0 {
                        break;
                    }
                }
            }
        }
        self.txsync()?;
        let v = self.tx[0].view();
        d!(
            "sender_body",
            "flush tail {} head {} on thread {}",
            v.tail(),
            v.head(),
            self.me
        );
        self.drain()?;
        end.toc = Some(Instant::now());
        end.ctrs = c;
        self.ctr.set(&c);
        Ok(end)
    }

    /// Waits, without limit, for the first frame. False if stopped.
    fn first_frame(&self, func: &str) -> Result<bool, RunError> {
        let mut rl = RateLimit::default();
        loop {
            if self.stopped() {
                return Ok(false);
            }
            if self.rx_ready()? || self.wait(false, true, Duration::from_secs(1))? {
                return Ok(true);
            }
            if rl.allow(1) && !self.stopped() {
                d!(func, "waiting for initial packets, poll returns 0 0");
            }
        }
    }

    fn receiver(&mut self) -> Result<ThreadEnd, RunError> {
        let cfg = self.cfg;
        let n = cfg.npackets / cfg.nthreads as u64;
        let mut end = ThreadEnd::default();
        if self.rx.is_empty() {
            return setup(format!("thread {}: no RX ring", self.me));
        }
        d!("receiver_body", "reading from {}", cfg.ifname);
        if !self.first_frame("receiver_body")? {
            return Ok(end);
        }
        end.tic = Some(Instant::now());
        let dump = cfg.has(opt::DUMP);
        let mut c = Ctrs::default();
        while !self.stopped() && (n == 0 || c.pkts < n) {
            if !self.rx_ready()? && !self.wait(false, true, Duration::from_secs(1))? {
                if self.stopped() {
                    break;
                }
                if !cfg.forever {
                    end.toc = Some(Instant::now() - Duration::from_secs(1));
                    end.ctrs = c;
                    return Ok(end);
                }
                continue;
            }
            let mut cur_space = 0u64;
            for r in &self.rx {
                let v = r.view();
                let ns = v.num_slots();
                cur_space += u64::from(ring::distance(v.tail(), v.head(), ns));
                let avail = ring::space(v.head(), v.tail(), ns).min(cfg.burst);
                if avail == 0 {
                    continue;
                }
                let mut head = v.head();
                let mut complete = 0;
                for _ in 0..avail {
                    let s = v.slot(head);
                    c.bytes += u64::from(s.len);
                    if dump {
                        self.dump(&v, head, &s);
                    }
                    if s.flags & NS_MOREFRAG == 0 {
                        complete += 1;
                    }
                    head = ring::next(head, ns);
                }
                v.set_head(head);
                v.set_cur(head);
                c.pkts += complete;
                if complete > 0 {
                    c.events += 1;
                }
            }
            self.ctr.set(&c);
            self.ctr.min_space.fetch_min(cur_space, Ordering::Relaxed);
        }
        // Give the last slots back.
        for r in &self.rx {
            r.sync()?;
        }
        end.toc = Some(Instant::now());
        end.ctrs = c;
        Ok(end)
    }

    fn ping(&mut self) -> Result<ThreadEnd, RunError> {
        let cfg = self.cfg;
        let Some(body) = self.tmpl.body_offset() else {
            return setup("ping needs a frame pkt-gen builds (not -P)");
        };
        if self.tmpl.size() < body + 12 {
            return setup(format!(
                "ping needs 12 payload bytes: -l {} at least",
                body + 12
            ));
        }
        if self.tx.is_empty() || self.rx.is_empty() {
            return setup("ping needs a TX and an RX ring");
        }
        let ts_at = self.vh + body;
        let size = self.tmpl.len();
        let n = cfg.npackets;
        let rate = cfg.rate_plan();
        let mut next = Instant::now();
        if rate.is_some() {
            next = rate_start();
            wait_until(next, self.stop);
        }
        let mut end = ThreadEnd {
            tic: Some(Instant::now()),
            ..Default::default()
        };
        let mut tosend: i64 = 0;
        let (mut sent, mut events) = (0u64, 0u64);
        let mut interval = RttInterval::default();
        let mut all = RttAll::default();
        let mut last_print = Instant::now();
        let tx = self.tx[0];
        let v = tx.view();
        let ns = v.num_slots();
        while !self.stopped() && (n == 0 || sent < n) {
            if let Some((b, period)) = rate {
                if tosend <= 0 {
                    tosend = i64::from(b);
                    next += period;
                    wait_until(next, self.stop);
                }
            }
            let mut limit = match rate {
                Some(_) => tosend.max(0) as u64,
                None => u64::from(cfg.burst),
            };
            if n > 0 && n - sent < limit {
                limit = n - sent;
            }
            tx.sync()?;
            let mut m = 0u64;
            for _ in 0..limit {
                if ring::space(v.cur(), v.tail(), ns) == 0 {
                    d!("ping_body", "-- ouch, cannot send");
                    break;
                }
                let (sec, nsec) = realtime();
                let mut pl = [0u8; 12];
                pl[0..4].copy_from_slice(&(sent as u32).to_le_bytes());
                pl[4..8].copy_from_slice(&sec.to_le_bytes());
                pl[8..12].copy_from_slice(&nsec.to_le_bytes());
                self.tmpl.write_payload(0, &pl);
                let head = v.head();
                let mut s = v.slot(head);
                v.write_buf(s.buf_idx, 0, self.tmpl.bytes())?;
                s.len = size as u16;
                s.flags = 0;
                v.set_slot(head, s);
                let nh = ring::next(head, ns);
                v.set_head(nh);
                v.set_cur(nh);
                sent += 1;
                m += 1;
            }
            if m > 0 {
                events += 1;
            }
            self.ctr.set(&Ctrs {
                pkts: sent,
                bytes: sent * size as u64,
                events,
            });
            tosend -= m as i64;
            tx.sync()?;
            if !self.wait(false, true, Duration::from_secs(3))? {
                if !self.stopped() {
                    d!("ping_body", "poll error on queue {}: timeout", self.me);
                }
                continue;
            }
            for r in &self.rx {
                r.sync()?;
                let rv = r.view();
                let rns = rv.num_slots();
                let mut head = rv.head();
                let tail = rv.tail();
                while head != tail {
                    let s = rv.slot(head);
                    let mut ts = [0u8; 12];
                    if usize::from(s.len) >= ts_at + 12
                        && rv.read_buf(s.buf_idx, ts_at, &mut ts).is_ok()
                    {
                        let (now_s, now_ns) = realtime();
                        let sec = u32::from_le_bytes(ts[4..8].try_into().expect("4"));
                        let nsec = u32::from_le_bytes(ts[8..12].try_into().expect("4"));
                        let rtt = i64::from(now_s.wrapping_sub(sec) as i32) * 1_000_000_000
                            + i64::from(now_ns)
                            - i64::from(nsec);
                        let rtt = rtt.max(0) as u64;
                        interval.add(rtt);
                        all.add(rtt);
                    }
                    head = ring::next(head, rns);
                }
                rv.set_head(head);
                rv.set_cur(head);
            }
            if last_print.elapsed() >= Duration::from_secs(1) {
                d!("ping_body", "{}", interval.count_line());
                if let Some(h) = interval.histogram_line() {
                    d!("ping_body", "{}", h);
                }
                interval = RttInterval::default();
                last_print = Instant::now();
            }
        }
        for r in &self.rx {
            r.sync()?;
        }
        end.toc = Some(Instant::now());
        end.ctrs = Ctrs {
            pkts: sent,
            bytes: sent * size as u64,
            events,
        };
        if sent > 0 {
            let s = all.summary(sent);
            d!("ping_body", "{}", s.line());
            end.rtt = Some(s);
        }
        Ok(end)
    }

    fn pong(&mut self) -> Result<ThreadEnd, RunError> {
        let cfg = self.cfg;
        if self.tx.is_empty() || self.rx.is_empty() {
            return setup("pong needs a TX and an RX ring");
        }
        let n = cfg.npackets;
        let tx = self.tx[0];
        let tv = tx.view();
        let tns = tv.num_slots();
        let bufsz = tv.buf_size() as usize;
        let mut scratch = vec![0u8; bufsz];
        let mut first_of_frame = true;
        let mut end = ThreadEnd {
            tic: Some(Instant::now()),
            ..Default::default()
        };
        let mut c = Ctrs::default();
        while !self.stopped() && (n == 0 || c.pkts < n) {
            if !self.rx_ready()? {
                if !self.wait(false, true, Duration::from_secs(1))? && !self.stopped() {
                    d!("pong_body", "poll error on queue {}: timeout", self.me);
                }
                continue;
            }
            tx.sync()?;
            let mut txhead = tv.head();
            let mut txavail = ring::space(txhead, tv.tail(), tns);
            let mut moved = 0u64;
            for r in &self.rx {
                let v = r.view();
                let ns = v.num_slots();
                let mut head = v.head();
                let tail = v.tail();
                while head != tail {
                    let s = v.slot(head);
                    head = ring::next(head, ns);
                    if txavail == 0 {
                        continue;
                    }
                    let len = (s.len as usize).min(bufsz);
                    v.read_buf(s.buf_idx, 0, &mut scratch[..len])?;
                    if first_of_frame && len > self.vh {
                        frame::swap_addresses(&mut scratch[self.vh..len]);
                    }
                    let more = s.flags & NS_MOREFRAG != 0;
                    first_of_frame = !more;
                    let mut ts = tv.slot(txhead);
                    tv.write_buf(ts.buf_idx, 0, &scratch[..len])?;
                    ts.len = len as u16;
                    ts.flags = s.flags & NS_MOREFRAG;
                    tv.set_slot(txhead, ts);
                    txhead = ring::next(txhead, tns);
                    txavail -= 1;
                    c.bytes += len as u64;
                    if !more {
                        c.pkts += 1;
                        moved += 1;
                    }
                }
                v.set_head(head);
                v.set_cur(head);
            }
            tv.set_head(txhead);
            tv.set_cur(txhead);
            tx.sync()?;
            if moved > 0 {
                c.events += 1;
            }
            self.ctr.set(&c);
        }
        self.drain()?;
        end.toc = Some(Instant::now());
        end.ctrs = c;
        Ok(end)
    }

    fn txseq(&mut self) -> Result<ThreadEnd, RunError> {
        let cfg = self.cfg;
        match self.tmpl.body_offset() {
            None => return setup("txseq needs a frame pkt-gen builds (not -P)"),
            Some(b) if self.tmpl.size() < b + seq::SEQ_LEN => {
                return setup(format!(
                    "txseq needs {} payload bytes: -l {} at least",
                    seq::SEQ_LEN,
                    b + seq::SEQ_LEN
                ))
            }
            Some(_) => {}
        }
        if self.tx.is_empty() {
            return setup("txseq needs a TX ring");
        }
        let n = cfg.npackets;
        let tx = self.tx[0];
        let v = tx.view();
        let ns = v.num_slots();
        let (nfr, fsz) = frag_plan(self.tmpl.len(), cfg.frags, cfg.frag_size, v.buf_size());
        d!("txseq_body", "start, frags {} frag_size {}", nfr, fsz);
        let vary = self.vary();
        let dump = cfg.has(opt::DUMP);
        let rate = cfg.rate_plan();
        let mut tic = Instant::now();
        let mut next = tic;
        if rate.is_some() {
            tic = rate_start();
            wait_until(tic, self.stop);
            next = tic;
        }
        let mut end = ThreadEnd {
            tic: Some(tic),
            ..Default::default()
        };
        let mut budget: i64 = 0;
        let mut sequence = 0u32;
        let mut c = Ctrs::default();
        while !self.stopped() && (n == 0 || c.pkts < n) {
            match rate {
                None => budget = i64::from(cfg.burst),
                Some((b, period)) if budget <= 0 => {
                    budget = i64::from(b);
                    next += period;
                    wait_until(next, self.stop);
                }
                Some(_) => {}
            }
            self.txsync()?;
            let space = ring::space(v.head(), v.tail(), ns) as u64;
            let mut frames = (budget.max(0) as u64).min(space) / nfr as u64;
            if n > 0 {
                frames = frames.min(n - c.pkts);
            }
            if frames == 0 {
                v.set_cur(v.tail());
                if !self.wait(true, false, Duration::from_secs(2))? && !self.stopped() {
                    d!("txseq_body", "poll error on queue {}: timeout", self.me);
                }
                continue;
            }
            let mut head = v.head();
            let mut last = head;
            for _ in 0..frames {
                seq::stamp(&mut self.tmpl, sequence);
                let data = self.tmpl.bytes();
                for f in 0..nfr {
                    let a = f * fsz;
                    let b = if f + 1 == nfr { data.len() } else { a + fsz };
                    let mut s = v.slot(head);
                    v.write_buf(s.buf_idx, 0, &data[a..b])?;
                    s.len = (b - a) as u16;
                    s.flags = if f + 1 < nfr { NS_MOREFRAG } else { 0 };
                    v.set_slot(head, s);
                    if dump {
                        self.dump(&v, head, &s);
                    }
                    last = head;
                    head = ring::next(head, ns);
                }
                c.bytes += data.len() as u64;
                if vary {
                    self.next_addresses();
                }
                sequence = sequence.wrapping_add(1);
                c.pkts += 1;
                if rate.is_some() {
                    budget -= 1;
                }
            }
            let mut s = v.slot(last);
            s.flags |= NS_REPORT;
            v.set_slot(last, s);
            v.set_head(head);
            v.set_cur(head);
            c.events += 1;
            self.ctr.set(&c);
        }
        self.txsync()?;
        d!(
            "txseq_body",
            "flush tail {} head {} on thread {}",
            v.tail(),
            v.head(),
            self.me
        );
        self.drain()?;
        end.toc = Some(Instant::now());
        end.ctrs = c;
        Ok(end)
    }

    fn rxseq(&mut self) -> Result<ThreadEnd, RunError> {
        let cfg = self.cfg;
        if self.rx.is_empty() {
            return setup(format!("thread {}: no RX ring", self.me));
        }
        let n = cfg.npackets;
        let last_seq = (n > 0).then(|| (n - 1) as u32);
        let start = last_seq.map(|_| 0);
        let mut checkers: Vec<SeqChecker> =
            self.rx.iter().map(|_| SeqChecker::new(start)).collect();
        let mut partial: Vec<Vec<u8>> = self.rx.iter().map(|_| Vec::new()).collect();
        let dump = cfg.has(opt::DUMP);
        let mut end = ThreadEnd::default();
        d!("rxseq_body", "reading from {}", cfg.ifname);
        let started = self.first_frame("rxseq_body")?;
        end.tic = Some(Instant::now());
        let mut gap_rl = RateLimit::default();
        let mut printed = 0u32;
        let mut c = Ctrs::default();
        while started && !self.stopped() {
            if !self.rx_ready()? && !self.wait(false, true, Duration::from_secs(1))? {
                if self.stopped() {
                    break;
                }
                if !cfg.forever || n > 0 {
                    end.toc = Some(Instant::now() - Duration::from_secs(1));
                    break;
                }
                continue;
            }
            for (j, r) in self.rx.iter().enumerate() {
                let v = r.view();
                let ns = v.num_slots();
                let bufsz = v.buf_size() as usize;
                let avail = ring::space(v.head(), v.tail(), ns).min(cfg.burst);
                if avail == 0 {
                    continue;
                }
                let mut head = v.head();
                for _ in 0..avail {
                    let s = v.slot(head);
                    if dump {
                        self.dump(&v, head, &s);
                    }
                    let len = (s.len as usize).min(bufsz);
                    let buf = &mut partial[j];
                    let at = buf.len();
                    buf.resize(at + len, 0);
                    v.read_buf(s.buf_idx, 0, &mut buf[at..])?;
                    c.bytes += u64::from(s.len);
                    if s.flags & NS_MOREFRAG == 0 {
                        let f = buf.get(self.vh..).unwrap_or(&[]);
                        match checkers[j].check(f) {
                            Verdict::InOrder(_) => {}
                            Verdict::Gap {
                                expected, found, ..
                            } => {
                                if gap_rl.allow(2) {
                                    d!(
                                        "rxseq_body",
                                        "Sequence GAP: exp {} found {}",
                                        expected,
                                        found
                                    );
                                }
                            }
                            Verdict::Error(e) => {
                                if printed < 100 {
                                    d!("rxseq_body", "ring {}: {}", j, e);
                                } else if printed == 100 {
                                    d!("rxseq_body", "more errors: counted, not printed");
                                }
                                printed += 1;
                            }
                        }
                        buf.clear();
                        c.pkts += 1;
                    }
                    head = ring::next(head, ns);
                }
                v.set_head(head);
                v.set_cur(head);
                c.events += 1;
            }
            self.ctr.set(&c);
            if let Some(l) = last_seq {
                if checkers.iter().any(|k| k.reached(l)) {
                    break;
                }
            }
        }
        for r in &self.rx {
            r.sync()?;
        }
        if end.toc.is_none() {
            end.toc = Some(Instant::now());
        }
        if last_seq.is_some() {
            let mut any = false;
            for k in checkers.iter_mut().filter(|k| k.report().frames > 0) {
                k.finish(last_seq);
                any = true;
            }
            if !any {
                if let Some(k) = checkers.first_mut() {
                    k.finish(last_seq);
                }
            }
        }
        let mut rep = SeqReport::default();
        for k in &checkers {
            rep.merge(k.report());
        }
        end.seq = Some(rep);
        end.ctrs = c;
        Ok(end)
    }
}

// ---------------------------------------------------------------------------
// Main thread

fn main_thread(cfg: &Config, ctrs: &[ThreadCtr]) {
    let interval = Duration::from_millis(cfg.report_ms);
    let mut prev = Ctrs::default();
    let mut prev_t = Instant::now();
    let mut win = PpsWindow::default();
    loop {
        let target = prev_t + interval;
        let all_done = loop {
            let done = ctrs.iter().all(|c| c.done.load(Ordering::Acquire));
            let now = Instant::now();
            if done || now >= target {
                break done;
            }
            std::thread::sleep((target - now).min(Duration::from_millis(10)));
        };
        let now = Instant::now();
        let usec = (now - prev_t).as_micros() as u64;
        if usec < 10_000 {
            if all_done {
                break;
            }
            continue;
        }
        let mut cur = Ctrs::default();
        let mut min_space = 0u64;
        for c in ctrs {
            let x = c.get();
            cur.pkts += x.pkts;
            cur.bytes += x.bytes;
            cur.events += x.events;
            min_space += c.min_space.swap(99999, Ordering::Relaxed);
        }
        let x = Ctrs {
            pkts: cur.pkts.saturating_sub(prev.pkts),
            bytes: cur.bytes.saturating_sub(prev.bytes),
            events: cur.events.saturating_sub(prev.events),
        };
        let w = cfg.has(opt::PPS_STATS).then_some(&mut win);
        d!(
            "main_thread",
            "{}",
            stats::periodic_line(&x, usec, min_space, cfg.framing, cfg.normalize, w)
        );
        prev = cur;
        prev_t = now;
        if all_done {
            break;
        }
    }
}

fn pin(cfg: &Config, me: usize) {
    if let Some(a) = cfg.affinity {
        let cpu = (a + me) % cfg.cpus.max(1);
        if let Err(e) = crate::os::pin_to_cpu(cpu) {
            d!("setaffinity", "Unable to set affinity: {}", e);
        }
    }
}

fn frame_spec(cfg: &Config, vh: usize) -> FrameSpec {
    FrameSpec {
        af: cfg.af,
        src_mac: cfg.src_mac,
        dst_mac: cfg.dst_mac,
        src: cfg.src_ip.clone(),
        dst: cfg.dst_ip.clone(),
        size: cfg.pkt_size,
        virt_header: vh,
        indirect_payload: cfg.has(opt::INDIRECT),
    }
}

/// Runs `cfg` until done or until `stop` is raised; prints what netmap's
/// pkt-gen prints while running (the final lines are the caller's:
/// [`print_final`]).
pub fn run(cfg: &Config, stop: &AtomicBool) -> Result<Outcome, RunError> {
    run_with(cfg, stop, None)
}

/// [`run`], raising `opened` once the port is open (registered with
/// valed), before any frame moves: what a caller running a receiver and a
/// sender side by side waits for.
pub fn run_with(
    cfg: &Config,
    stop: &AtomicBool,
    opened: Option<&AtomicBool>,
) -> Result<Outcome, RunError> {
    for note in &cfg.notes {
        d!("main", "{}", note);
    }
    if cfg.nthreads > 1 {
        match cfg.func {
            Func::Ping => return setup("can only ping with 1 thread"),
            Func::Pong => return setup("can only reply ping with 1 thread"),
            Func::TxSeq => return setup("can only txseq ping with 1 thread"),
            _ => {}
        }
    }
    if cfg.func == Func::RxSeq && cfg.npackets > 1 << 32 {
        return setup("rxseq: -n above 2^32 wraps the sequence numbers");
    }
    let raw = match &cfg.packet_file {
        Some(p) => Some(crate::pcap::first_packet(p)?),
        None => None,
    };
    let sock: PathBuf = socket_path(cfg.socket.as_deref());
    let ports = open(cfg, &sock)?;
    if let Some(f) = opened {
        f.store(true, Ordering::Release);
    }
    let opened = ports;
    let vh = vnet_header(cfg, &sock, opened.first());
    let shared = matches!(opened, Opened::Shared(_));
    let first = opened.first();
    if cfg.has(opt::INDIRECT) && (shared || cfg.dev == DevKind::Null) {
        if shared {
            return setup("-I with -p needs one registration per thread, which valed refuses");
        }
        d!("main", "-I on null: the slots are discarded unread");
    }
    if cfg.has(opt::INDIRECT) && matches!(first, Dev::Nic(_)) {
        return setup("-I: an interface takes no indirect buffers (VALE ports do)");
    }
    if cfg.has(opt::INDIRECT) && matches!(first, Dev::Virtio(_)) {
        return setup("-I: a virtio device reads only the driver's own buffers");
    }
    let role = cfg.func.role();
    if shared {
        let have = match role {
            Role::Sender => first.tx_rings(),
            Role::Receiver => first.rx_rings(),
            Role::Other => first.tx_rings().min(first.rx_rings()),
        };
        if cfg.nthreads > have {
            return setup(format!("bad nthreads {}, have {have} queues", cfg.nthreads));
        }
    }
    let devqueues = match (first.register_info(), role) {
        (Some(r), Role::Sender) => usize::from(r.nr_tx_rings) + usize::from(r.nr_host_tx_rings),
        (Some(r), _) => usize::from(r.nr_rx_rings) + usize::from(r.nr_host_rx_rings),
        (None, Role::Sender) => first.tx_rings(),
        (None, _) => first.rx_rings(),
    };
    let mut head = format!(
        "{} {}: {} queues, {} threads and {} cpus.",
        match role {
            Role::Sender => "Sending on",
            Role::Receiver => "Receiving from",
            Role::Other => "Working on",
        },
        cfg.ifname,
        devqueues,
        cfg.nthreads,
        cfg.cpus
    );
    if role == Role::Sender {
        head.push_str(&format!(
            "\n{} -> {} ({} -> {})",
            cfg.src_ip_name, cfg.dst_ip_name, cfg.src_mac_name, cfg.dst_mac_name
        ));
    }
    if cfg.json {
        eprintln!("{head}");
    } else {
        println!("{head}");
    }
    if cfg.options != 0 {
        let o = |b: u32, s: &'static str| if cfg.has(b) { s } else { "" };
        d!(
            "main",
            "--- SPECIAL OPTIONS:{}{}{}{}{}{}\n",
            o(opt::PREFETCH, " prefetch"),
            o(opt::ACCESS, " access"),
            o(opt::MEMCPY, " memcpy"),
            o(opt::INDIRECT, " indirect"),
            o(opt::COPY, " copy"),
            o(opt::RUBBISH, " rubbish ")
        );
    }
    if role == Role::Sender {
        let (b, p) = cfg.rate_plan().unwrap_or((cfg.burst, Duration::ZERO));
        d!(
            "main",
            "Sending {} packets every  {}.{:09} s",
            b,
            p.as_secs(),
            p.subsec_nanos()
        );
    }
    let tmpl = match &raw {
        Some(f) => Template::raw(f, vh),
        None => Template::new(&frame_spec(cfg, vh))?,
    };
    if cfg.src_ip.is_range() || cfg.dst_ip.is_range() {
        d!(
            "main",
            "range is {} (src) and {} (dst)",
            cfg.src_ip,
            cfg.dst_ip
        );
    }
    d!("start_threads", "Wait {} secs for phy reset", cfg.wait_link);
    wait_until(Instant::now() + Duration::from_secs(cfg.wait_link), stop);
    d!("start_threads", "Ready...");
    let ctrs: Vec<ThreadCtr> = (0..cfg.nthreads).map(|_| ThreadCtr::new()).collect();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let results: Vec<Result<ThreadEnd, RunError>> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for t in 0..cfg.nthreads {
            let (dev, whole) = match &opened {
                Opened::PerThread(v) => (&v[t], true),
                Opened::Shared(d) => (&**d, false),
            };
            let ctr = &ctrs[t];
            let tmpl = tmpl.clone();
            let h = std::thread::Builder::new()
                .name(format!("pkt-gen-{t}"))
                .spawn_scoped(s, move || {
                    pin(cfg, t);
                    let r = (|| {
                        let (txi, rxi): (Vec<usize>, Vec<usize>) = if whole {
                            ((0..dev.tx_rings()).collect(), (0..dev.rx_rings()).collect())
                        } else {
                            (
                                (t < dev.tx_rings()).then_some(t).into_iter().collect(),
                                (t < dev.rx_rings()).then_some(t).into_iter().collect(),
                            )
                        };
                        let tx = txi
                            .iter()
                            .map(|&i| dev.tx(i))
                            .collect::<Result<Vec<_>, _>>()?;
                        let rx = rxi
                            .iter()
                            .map(|&i| dev.rx(i))
                            .collect::<Result<Vec<_>, _>>()?;
                        let mut w = Worker {
                            cfg,
                            me: t,
                            dev,
                            whole,
                            last_heads: tx.iter().map(|r| r.view().head()).collect(),
                            tx,
                            rx,
                            ctr,
                            stop,
                            tmpl,
                            rng: Rng::new(seed.wrapping_add(t as u64)),
                            vh,
                            indirect: cfg.has(opt::INDIRECT),
                        };
                        match cfg.func {
                            Func::Tx => w.sender(),
                            Func::Rx => w.receiver(),
                            Func::Ping => w.ping(),
                            Func::Pong => w.pong(),
                            Func::TxSeq => w.txseq(),
                            Func::RxSeq => w.rxseq(),
                        }
                    })();
                    ctr.done.store(true, Ordering::Release);
                    r
                });
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    ctr.done.store(true, Ordering::Release);
                    d!("start_threads", "Unable to create thread {}: {}", t, e);
                }
            }
        }
        main_thread(cfg, &ctrs);
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| setup("thread panicked")))
            .collect()
    });
    let mut out = Outcome {
        function: cfg.func.name().to_string(),
        interface: cfg.ifname.clone(),
        threads: cfg.nthreads,
        message: match role {
            Role::Sender => Some("Sent"),
            Role::Receiver => Some("Received"),
            Role::Other => None,
        },
        ..Default::default()
    };
    let (mut tic, mut toc): (Option<Instant>, Option<Instant>) = (None, None);
    for (t, r) in results.into_iter().enumerate() {
        match r {
            Ok(e) => {
                out.ctrs.pkts += e.ctrs.pkts;
                out.ctrs.bytes += e.ctrs.bytes;
                out.ctrs.events += e.ctrs.events;
                tic = tic.max(e.tic);
                toc = toc.max(e.toc);
                if let Some(s) = e.seq {
                    out.seq.get_or_insert_with(SeqReport::default).merge(&s);
                }
                if e.rtt.is_some() {
                    out.rtt = e.rtt;
                }
            }
            Err(e) => {
                d!("main_thread", "ouch, thread {} exited with error: {}", t, e);
                let c = ctrs[t].get();
                out.ctrs.pkts += c.pkts;
                out.ctrs.bytes += c.bytes;
                out.ctrs.events += c.events;
                out.errors.push(format!("thread {t}: {e}"));
            }
        }
    }
    out.seconds = match (tic, toc) {
        (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
        _ => 0.0,
    };
    Ok(out)
}

/// Prints the end of a run: netmap's `Sent|Received …` and `Speed: …`
/// lines (and rxseq's summary), or the JSON object with `--json`.
pub fn print_final(cfg: &Config, o: &Outcome) {
    if cfg.json {
        println!("{}", stats::json(o, cfg.framing));
        return;
    }
    if let Some(msg) = o.message {
        println!(
            "{}",
            stats::final_lines(msg, &o.ctrs, o.seconds, cfg.framing, cfg.normalize)
        );
    }
    if let Some(s) = &o.seq {
        println!("{}", s.summary());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frag_plans() {
        // No -F: one slot when the frame fits a buffer.
        assert_eq!(frag_plan(60, 1, u32::MAX, 2048), (1, 60));
        assert_eq!(frag_plan(2048, 1, u32::MAX, 2048), (1, 2048));
        // Larger than a buffer: cut at the buffer size.
        assert_eq!(frag_plan(9000, 1, u32::MAX, 2048), (5, 2048));
        // -F 4 on 1000 bytes: 250 each.
        assert_eq!(frag_plan(1000, 4, u32::MAX, 2048), (4, 250));
        // -F 2 -M 100 on 1000 bytes: fragments of 100.
        assert_eq!(frag_plan(1000, 2, 100, 2048), (10, 100));
        // The last fragment must fit too.
        let (n, s) = frag_plan(4097, 2, u32::MAX, 2048);
        assert!(4097 - (n - 1) * s <= 2048);
        // Never more fragments than bytes.
        assert_eq!(frag_plan(42, 63, u32::MAX, 2048), (42, 1));
    }

    #[test]
    fn null_port_discards_and_never_receives() {
        let p = Dev::Null(Box::new(NullPort::new(1, 1, 64).unwrap()));
        let tx = p.tx(0).unwrap();
        let rx = p.rx(0).unwrap();
        let v = tx.view();
        assert_eq!(tx.space(), 63);
        v.set_head(40);
        v.set_cur(40);
        tx.sync().unwrap();
        assert_eq!(tx.space(), 63);
        assert!(tx.drained());
        rx.sync().unwrap();
        assert_eq!(rx.space(), 0);
    }
}
