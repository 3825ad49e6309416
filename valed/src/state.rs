//! valed's registry of switches, ports, regions and registrations, and the
//! handlers of netmap's control requests. Pure bookkeeping: the socket loop
//! in `server.rs` feeds it requests and sends back what it answers.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use netmap::abi::*;
use netmap::csb::Csb;
use netmap::ctrl::{
    Request, ValePortConfig, ValeSwitchConfig, ValeVhostNewif, VALE_PORT_BACKPRESSURE,
    VALE_PORT_MASK_OVERRIDE, VALE_REQ_METRICS, VALE_REQ_PORT_CONFIG, VALE_REQ_STATS,
    VALE_REQ_SWITCH_CONFIG, VALE_REQ_VHOST_NEWIF, VALE_SET_FLAGS, VALE_SET_MAC_LIMIT,
    VALE_SET_SHARE, VALE_SHARE_MAX, VALE_VHOST_CLIENT,
};
use netmap::portname::{self, PipeEnd, PortKind};
use netmap::region::{IfRings, PortLayout, Region, RegionConfig, RegionError};
use netmap::sync::{Dir, KringState};
use netmap::sys::EventFd;
use serde::Serialize;
use tracing::info;
use vale::ring_port::{RingGeometry, RingSink, RingSinkSet, RingSource};
use vale::{DropReason, PortConfig, PortId, Push, Sink, Switch};

use crate::fwd::{Forwarder, Path, Unit, UnitSource};
use crate::vhost::{Relay, VhostPort, VhostSpec};

/// How `nr_name` is read: NIC names come without `netmap:` (the header
/// carries `eth0`, as netmap's does).
const NR_NAME: portname::ParseOptions = portname::ParseOptions {
    default_netmap_prefix: true,
    enable_offset: false,
};

/// Most switches (netmap: 8).
pub const MAX_SWITCHES: usize = 64;

/// Extra buffers (`nr_extra_bufs`) each registration of a persistent port
/// may ask for: its region is sized when the port is made, before anyone
/// asks (netmap draws them from a global pool), with this many for each
/// registration it can have at once (one per ring): 512 KiB per ring.
pub const PERSISTENT_EXTRA_BUFS: u32 = 256;

/// An errno to answer with.
pub type Errno = i32;

/// A port's RX side as the switch sees it: the RX rings its clients bound
/// (none: frames to a port nobody has open are dropped as `DstFull`).
type SinkSlot = Arc<Mutex<RingSinkSet>>;

struct SinkProxy(SinkSlot);

impl Sink for SinkProxy {
    fn room(&mut self) -> usize {
        lock(&self.0).room()
    }
    fn slots_for(&self, len: usize) -> usize {
        lock(&self.0).slots_for(len)
    }
    fn capacity(&self) -> usize {
        lock(&self.0).capacity()
    }
    fn push(&mut self, frags: &[vale::Frag], skip: usize, hdr: &[u8]) -> Push {
        lock(&self.0).push(frags, skip, hdr)
    }
    fn publish(&mut self) {
        lock(&self.0).publish()
    }
    fn arm(&mut self) -> vale::Arm {
        lock(&self.0).arm()
    }
    fn disarm(&mut self) {
        lock(&self.0).disarm()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A VALE port: its memory and rings, and where it is attached.
struct Port {
    /// Name without the switch (`vm1`).
    name: String,
    owner: u32,
    persistent: bool,
    region: Region,
    layout: PortLayout,
    tx: Vec<usize>,
    rx: Vec<usize>,
    hdr_len: u16,
    /// (switch name, port index) when attached.
    attached: Option<(String, PortId)>,
    sink: SinkSlot,
    /// Registrations bound to the port's rings.
    regs: Vec<RegRec>,
}

/// Which rings one registration bound.
#[derive(Debug, Clone)]
struct RegRec {
    conn: u64,
    tx: Vec<u16>,
    rx: Vec<u16>,
    exclusive: bool,
}

/// What one connection registered.
#[derive(Debug)]
pub struct Registration {
    port_key: String,
    nifp: usize,
    fwd: usize,
    /// For a pipe end: which end (0 master, 1 slave).
    pipe_end: Option<usize>,
}

/// A registration's CSB, kick and irq eventfds, and the descriptors sent
/// to the client (region, CSB, kick, irq).
type Doorbells = (Arc<Csb>, Arc<EventFd>, Arc<EventFd>, Vec<OwnedFd>);

/// A registration's doorbells. Each is a pipe, so valed's ends and the
/// client's are separate open file descriptions: the client may make its
/// ends blocking, never valed's (an eventfd shared by `SCM_RIGHTS` would
/// let it).
struct Bells {
    /// Read end: the client kicks valed.
    kick: Arc<EventFd>,
    /// Write end: valed interrupts the client.
    irq: Arc<EventFd>,
    /// The client's ends: kick writer, irq reader.
    peer: [OwnedFd; 2],
}

impl Bells {
    fn new() -> std::io::Result<Bells> {
        let (kick_r, kick_w) = EventFd::pipe()?;
        let (irq_r, irq_w) = EventFd::pipe()?;
        Ok(Bells {
            kick: Arc::new(kick_r),
            irq: Arc::new(irq_w),
            peer: [kick_w.into_fd(), irq_r.into_fd()],
        })
    }
}

/// One end of a netmap pipe and its registration.
#[derive(Default)]
struct PipeSide {
    tx: Vec<usize>,
    rx: Vec<usize>,
    reg: Option<PipeReg>,
}

struct PipeReg {
    conn: u64,
    csb: Arc<Csb>,
    irq: Arc<EventFd>,
    kick: Arc<EventFd>,
}

/// A netmap pipe: two ends whose rings share one region, so frames cross
/// by swapping buffer indexes (zero copy), master TX to slave RX and back.
struct Pipe {
    owner: u32,
    region: Region,
    layout: PortLayout,
    ends: [PipeSide; 2],
    /// Id of the pipe's forwarding units (both directions).
    unit_id: u64,
    fwd: usize,
}

/// What one uid other than root may hold (`--quota-mem`, `--quota-vhost`):
/// one tenant cannot take the machine's memory or threads from the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Bytes of regions (ports' and pipes' shared memory, extra buffers
    /// included).
    pub mem_bytes: u64,
    /// VM ports (each one a thread and a mapping of guest memory).
    pub vhost_ports: usize,
    /// Ports of every kind (netmap, persistent and VM ports).
    pub ports: usize,
    /// Switches the uid made (each holds up to 254 ports and one of the
    /// 64 switch indexes).
    pub switches: usize,
}

impl Default for Quotas {
    /// 4 GiB, 16 VM ports, 64 ports and 8 switches per uid: a 24 GiB
    /// machine survives five tenants at their limit, and eight tenants
    /// cannot take all 64 switch indexes.
    fn default() -> Self {
        Quotas {
            mem_bytes: 4 << 30,
            vhost_ports: 16,
            ports: 64,
            switches: 8,
        }
    }
}

/// Per-connection state.
#[derive(Debug, Default)]
pub struct Conn {
    /// Connection id.
    pub id: u64,
    /// Peer uid.
    pub uid: u32,
    /// Its registration (one per connection, as one netmap fd).
    pub reg: Option<Registration>,
}

struct SwitchRec {
    sw: Arc<Switch>,
    idx: u16,
    /// The uid whose port created it (it goes when its last port does).
    /// Root's switches are shared; another uid's take only that uid's
    /// ports, root's, and those of the uids in `share`.
    owner: u32,
    /// uids the owner shares the switch with (`VALE_REQ_SWITCH_CONFIG`).
    share: Vec<u32>,
}

/// The daemon's state.
pub struct Registry {
    switches: BTreeMap<String, SwitchRec>,
    /// Ports by key: `valeX:Y` for ephemeral ones, `Y` for persistent ones.
    ports: BTreeMap<String, Port>,
    next_mem_id: u16,
    fwd: Vec<Forwarder>,
    next_fwd: usize,
    /// Default ring size for ports that do not ask.
    pub default_slots: u32,
    /// Back regions with hugetlb pages (`--hugepages`).
    pub huge_pages: bool,
    /// netmap pipes by parent name and id.
    pipes: BTreeMap<String, Pipe>,
    next_pipe: u64,
    /// Ephemeral port created by the REGISTER in progress.
    just_created: Option<String>,
    /// vhost-user ports by name.
    vhost: BTreeMap<String, VhostPort>,
    next_unit: u64,
    /// Where vhost-user ports are saved, to come back after a restart.
    pub state_file: Option<std::path::PathBuf>,
    /// Where tenants' vhost-user sockets live (`--vhost-dir`).
    pub vhost_dir: std::path::PathBuf,
    /// Limits on what one uid other than root may hold.
    pub quotas: Quotas,
    /// Forward VM ports' TX on the vhost-user worker threads
    /// (`--vhost-inline`) instead of relaying kicks to forwarding threads.
    pub vhost_inline: bool,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("ports", &self.ports.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// An answer: errno (0 for success), the request as filled in, descriptors.
pub type Answer = (Errno, Request, Vec<OwnedFd>);

fn err(req: &Request, e: Errno) -> Answer {
    (e, req.clone(), Vec::new())
}

fn region_errno(e: &RegionError) -> Errno {
    match e {
        RegionError::OutOfRange { .. } | RegionError::NameTooLong(_) => libc::EINVAL,
        RegionError::TooLarge { .. } | RegionError::Exhausted { .. } => libc::ENOMEM,
        _ => libc::EIO,
    }
}

impl Registry {
    /// A registry feeding `fwd` forwarding threads.
    pub fn new(fwd: Vec<Forwarder>) -> Registry {
        Registry {
            switches: BTreeMap::new(),
            ports: BTreeMap::new(),
            next_mem_id: 1,
            fwd,
            next_fwd: 0,
            default_slots: 1024,
            just_created: None,
            huge_pages: false,
            pipes: BTreeMap::new(),
            next_pipe: 0,
            vhost: BTreeMap::new(),
            next_unit: 1 << 62,
            state_file: None,
            vhost_dir: std::path::PathBuf::from("/run/vale/vhost"),
            quotas: Quotas::default(),
            vhost_inline: false,
        }
    }

    /// Stops the forwarding threads.
    pub fn shutdown(&mut self) {
        // The caller has set the stop flag: the forwarding threads end (and
        // complete the batches they hold) without taking commands, so they
        // are joined first, not asked to give units back one by one.
        for f in self.fwd.drain(..) {
            f.join();
        }
        for v in self.vhost.values() {
            v.port.clear_hook();
        }
        // Each port closes its VMM session and joins its threads.
        self.vhost.clear();
    }

    /// Switch `name` for a port of `uid`, made on first use and then
    /// `uid`'s. EPERM when it is another uid's (not root's, and `uid` is
    /// not root).
    fn switch(&mut self, name: &str, uid: u32) -> Result<Arc<Switch>, Errno> {
        if let Some(s) = self.switches.get(name) {
            if uid != 0 && s.owner != 0 && s.owner != uid && !s.share.contains(&uid) {
                tracing::warn!(
                    switch = name,
                    uid,
                    owner = s.owner,
                    "attach refused: the switch belongs to another uid"
                );
                return Err(libc::EPERM);
            }
            return Ok(s.sw.clone());
        }
        if self.switches.len() >= MAX_SWITCHES {
            return Err(libc::ENOMEM);
        }
        if uid != 0 {
            let have = self.switches.values().filter(|s| s.owner == uid).count();
            if have >= self.quotas.switches {
                tracing::warn!(
                    switch = name,
                    uid,
                    have,
                    quota = self.quotas.switches,
                    "switch quota (--quota-switches): switch not made"
                );
                return Err(libc::ENOSPC);
            }
        }
        let used: Vec<u16> = self.switches.values().map(|s| s.idx).collect();
        let idx = (0..).find(|i| !used.contains(i)).unwrap_or(0);
        let sw = Arc::new(Switch::new(name));
        info!(switch = name, idx, "switch created");
        self.switches.insert(
            name.to_string(),
            SwitchRec {
                sw: sw.clone(),
                idx,
                owner: uid,
                share: Vec::new(),
            },
        );
        Ok(sw)
    }

    /// Ports of every kind `uid` holds.
    fn ports_of(&self, uid: u32) -> usize {
        self.ports.values().filter(|p| p.owner == uid).count()
            + self.vhost.values().filter(|v| v.spec.owner == uid).count()
    }

    /// ENOSPC if `uid` (not root) already holds its quota of ports.
    fn check_port_quota(&self, uid: u32, name: &str) -> Result<(), Errno> {
        let have = self.ports_of(uid);
        if uid != 0 && have >= self.quotas.ports {
            tracing::warn!(
                port = name,
                uid,
                have,
                quota = self.quotas.ports,
                "port quota (--quota-ports): port not made"
            );
            return Err(libc::ENOSPC);
        }
        Ok(())
    }

    fn new_port(
        &mut self,
        name: &str,
        owner: u32,
        layout: PortLayout,
        persistent: bool,
    ) -> Result<Port, Errno> {
        self.check_port_quota(owner, name)?;
        // Each ring is bound by at most one registration at a time, so a
        // port has at most one registration per ring.
        let regs = layout.tx_rings + layout.rx_rings;
        let mut cfg = RegionConfig::for_ports(&layout, 1, regs).map_err(|e| region_errno(&e))?;
        // hugetlb only on request: a client can punch a hole in a hugetlb
        // memfd (seals do not stop fallocate), and if the pool is empty
        // valed's next touch of that page is a SIGBUS. Shared 4 KiB pages
        // just refault as zeroes.
        cfg.huge_pages = self.huge_pages;
        let mem_id = self.next_mem_id;
        self.next_mem_id = self.next_mem_id.checked_add(1).unwrap_or(1);
        let mut region = Region::new(mem_id, owner, &cfg).map_err(|e| region_errno(&e))?;
        self.check_mem_quota(owner, region.memsize() as u64)?;
        let mut tx = Vec::new();
        let mut rx = Vec::new();
        for i in 0..layout.tx_rings {
            tx.push(
                region
                    .alloc_ring(Dir::Tx, i as u16, layout.tx_slots)
                    .map_err(|e| region_errno(&e))?,
            );
        }
        for i in 0..layout.rx_rings {
            rx.push(
                region
                    .alloc_ring(Dir::Rx, i as u16, layout.rx_slots)
                    .map_err(|e| region_errno(&e))?,
            );
        }
        Ok(Port {
            name: name.to_string(),
            owner,
            persistent,
            region,
            layout,
            tx,
            rx,
            hdr_len: 0,
            attached: None,
            sink: SinkSlot::default(),
            regs: Vec::new(),
        })
    }

    /// Bytes of regions `uid` holds now.
    fn mem_of(&self, uid: u32) -> u64 {
        let ports = self
            .ports
            .values()
            .filter(|p| p.owner == uid)
            .map(|p| p.region.memsize() as u64);
        let pipes = self
            .pipes
            .values()
            .filter(|p| p.owner == uid)
            .map(|p| p.region.memsize() as u64);
        ports.chain(pipes).sum()
    }

    /// ENOMEM if `uid` (not root) would hold more than its quota with
    /// `more` bytes of region.
    fn check_mem_quota(&self, uid: u32, more: u64) -> Result<(), Errno> {
        if uid == 0 {
            return Ok(());
        }
        let have = self.mem_of(uid);
        if have.saturating_add(more) > self.quotas.mem_bytes {
            tracing::warn!(
                uid,
                have,
                asked = more,
                quota = self.quotas.mem_bytes,
                "memory quota: region refused"
            );
            return Err(libc::ENOMEM);
        }
        Ok(())
    }

    fn attach(&mut self, key: &str, switch: &str) -> Result<PortId, Errno> {
        let owner = self.ports.get(key).ok_or(libc::ENXIO)?.owner;
        let sw = self.switch(switch, owner)?;
        let port = self.ports.get_mut(key).ok_or(libc::ENXIO)?;
        if port.attached.is_some() {
            return Err(libc::EBUSY);
        }
        let full = format!("{switch}:{}", port.name);
        let cfg = PortConfig {
            vnet_hdr_len: port.hdr_len,
            // netmap passes frames untouched between ports with headers.
            offloads: if port.hdr_len > 0 {
                vale::port::OFFLOAD_ALL
            } else {
                0
            },
            ..Default::default()
        };
        let id = sw
            .attach(&full, cfg, Box::new(SinkProxy(port.sink.clone())))
            .map_err(|e| match e {
                vale::SwitchError::Full(_) => libc::ENOMEM,
                vale::SwitchError::Exists { .. } => libc::EEXIST,
                _ => libc::EINVAL,
            })?;
        port.attached = Some((switch.to_string(), id));
        Ok(id)
    }

    fn detach(&mut self, key: &str) -> Result<(), Errno> {
        let port = self.ports.get_mut(key).ok_or(libc::ENXIO)?;
        let (swname, id) = port.attached.take().ok_or(libc::EINVAL)?;
        if let Some(s) = self.switches.get(&swname) {
            let _ = s.sw.detach(id);
            if s.sw.ports().is_empty() {
                info!(switch = swname, "switch removed (no ports)");
                self.switches.remove(&swname);
            }
        }
        Ok(())
    }

    /// Finds the port a `valeX:Y` name refers to: the ephemeral port of that
    /// full name, or persistent port `Y` attached to `valeX`.
    fn lookup(&self, switch: &str, name: &str) -> Option<String> {
        let full = format!("{switch}:{name}");
        if self.ports.contains_key(&full) {
            return Some(full);
        }
        match self.ports.get(name) {
            Some(p) if p.persistent && p.attached.as_ref().is_some_and(|(s, _)| s == switch) => {
                Some(name.to_string())
            }
            _ => None,
        }
    }

    /// Handles one request from `conn`.
    pub fn handle(&mut self, conn: &mut Conn, req: &Request) -> Answer {
        if !req.options.is_empty() {
            // No option is supported yet: refuse each, as netmap does for
            // options it does not know.
            let mut r = req.clone();
            for o in r.options.iter_mut() {
                o.status = libc::EOPNOTSUPP as u32;
            }
            return (libc::EOPNOTSUPP, r, Vec::new());
        }
        let name = match req.hdr.name_str() {
            Ok(n) => n.to_string(),
            Err(_) => return err(req, libc::EINVAL),
        };
        match req.hdr.nr_reqtype {
            NETMAP_REQ_REGISTER => self.register(conn, req, &name),
            NETMAP_REQ_PORT_INFO_GET => self.port_info(req, &name),
            NETMAP_REQ_POOLS_INFO_GET => self.pools_info(req, &name),
            NETMAP_REQ_VALE_ATTACH => self.vale_attach(conn, req, &name),
            NETMAP_REQ_VALE_DETACH => self.vale_detach(conn, req, &name),
            NETMAP_REQ_VALE_LIST => self.vale_list(req, &name),
            NETMAP_REQ_VALE_NEWIF => self.vale_newif(conn, req, &name),
            NETMAP_REQ_VALE_DELIF => self.vale_delif(conn, req, &name),
            NETMAP_REQ_PORT_HDR_SET => self.hdr_set(conn, req, &name),
            NETMAP_REQ_PORT_HDR_GET => self.hdr_get(req, &name),
            VALE_REQ_STATS => self.stats(req, &name),
            VALE_REQ_METRICS => self.metrics(req, &name),
            VALE_REQ_PORT_CONFIG => self.port_config(conn, req, &name),
            VALE_REQ_VHOST_NEWIF => self.vale_vhost_newif(conn, req, &name),
            VALE_REQ_SWITCH_CONFIG => self.switch_config(conn, req, &name),
            _ => err(req, libc::EOPNOTSUPP),
        }
    }

    fn vale_name(name: &str) -> Result<(String, String), Errno> {
        let spec = portname::parse_with(name, NR_NAME).map_err(|_| libc::EINVAL)?;
        match spec.name.kind {
            PortKind::Vale { switch, port } if spec.name.pipe.is_none() => {
                Ok((format!("vale{switch}"), port))
            }
            _ => Err(libc::ENXIO),
        }
    }

    fn register(&mut self, conn: &mut Conn, req: &Request, name: &str) -> Answer {
        self.just_created = None;
        let ans = self.register_inner(conn, req, name);
        if let (Some(key), true) = (self.just_created.take(), ans.0 != 0) {
            // A port made for this registration must not outlive its failure.
            let _ = self.detach(&key);
            self.ports.remove(&key);
        }
        if ans.0 != 0 {
            // Nor a pipe made for it: a pipe lives while an end is open.
            self.pipes
                .retain(|_, p| p.ends.iter().any(|e| e.reg.is_some()));
        }
        ans
    }

    fn register_inner(&mut self, conn: &mut Conn, req: &Request, name: &str) -> Answer {
        if conn.reg.is_some() {
            return err(req, libc::EBUSY);
        }
        let Ok(mut body) = req.body_as::<NmreqRegister>() else {
            return err(req, libc::EINVAL);
        };
        let spec = match portname::parse_with(name, NR_NAME) {
            Ok(s) => s,
            Err(_) => return err(req, libc::EINVAL),
        };
        if let Some(pipe) = &spec.name.pipe {
            let end = usize::from(pipe.end != PipeEnd::Master);
            return self.register_pipe(
                conn,
                req,
                body,
                &spec.name.parent_nr_name(),
                &pipe.id,
                end,
                name,
            );
        }
        let (switch, pname) = match &spec.name.kind {
            PortKind::Vale { switch, port } => (format!("vale{switch}"), port.clone()),
            PortKind::Nic { .. } => return err(req, libc::ENXIO), // NIC ports: later issue
        };
        // The request's mode wins over the name's, as in netmap.
        let mode = if body.nr_mode != 0 {
            body.nr_mode
        } else {
            spec.nr_mode()
        };
        let ringid = if body.nr_mode != 0 {
            body.nr_ringid
        } else {
            spec.nr_ringid()
        };
        let flags = body.nr_flags | spec.nr_flags();
        if !matches!(mode, NR_REG_ALL_NIC | NR_REG_ONE_NIC) {
            return err(req, libc::EINVAL);
        }
        let key = match self.lookup(&switch, &pname) {
            Some(k) => k,
            None => {
                let d = self.default_slots;
                let pick = |v: u32| if v == 0 { d } else { v };
                let layout = PortLayout {
                    tx_rings: u32::from(body.nr_tx_rings.max(spec.conf.tx_rings)).max(1),
                    rx_rings: u32::from(body.nr_rx_rings.max(spec.conf.rx_rings)).max(1),
                    tx_slots: pick(body.nr_tx_slots.max(spec.conf.tx_slots)),
                    rx_slots: pick(body.nr_rx_slots.max(spec.conf.rx_slots)),
                    extra_bufs: body.nr_extra_bufs,
                    ..Default::default()
                };
                if layout.tx_rings > 16 || layout.rx_rings > 16 {
                    return err(req, libc::EINVAL);
                }
                let port = match self.new_port(&pname, conn.uid, layout, false) {
                    Ok(p) => p,
                    Err(e) => return err(req, e),
                };
                let key = format!("{switch}:{pname}");
                self.ports.insert(key.clone(), port);
                self.just_created = Some(key.clone());
                if let Err(e) = self.attach(&key, &switch) {
                    return err(req, e);
                }
                key
            }
        };
        let port = self.ports.get_mut(&key).expect("just found");
        if port.regs.iter().any(|r| r.exclusive)
            || (flags & NR_EXCLUSIVE != 0 && !port.regs.is_empty())
        {
            return err(req, libc::EBUSY);
        }
        if port.owner != conn.uid && conn.uid != 0 {
            return err(req, libc::EPERM);
        }
        if port.hdr_len > 0 && flags & NR_ACCEPT_VNET_HDR == 0 {
            return err(req, libc::EIO);
        }
        let n_tx = port.tx.len() as u16;
        let n_rx = port.rx.len() as u16;
        let (tx_sel, rx_sel): (Vec<u16>, Vec<u16>) = match mode {
            NR_REG_ONE_NIC => {
                if ringid >= n_tx.max(n_rx) {
                    return err(req, libc::EINVAL);
                }
                (
                    (ringid < n_tx).then_some(ringid).into_iter().collect(),
                    (ringid < n_rx).then_some(ringid).into_iter().collect(),
                )
            }
            _ => ((0..n_tx).collect(), (0..n_rx).collect()),
        };
        let tx_sel = if flags & NR_RX_RINGS_ONLY != 0 {
            Vec::new()
        } else {
            tx_sel
        };
        let rx_sel = if flags & NR_TX_RINGS_ONLY != 0 {
            Vec::new()
        } else {
            rx_sel
        };
        let nrings = (tx_sel.len() + rx_sel.len()) as u32;
        if nrings == 0 {
            return err(req, libc::EINVAL);
        }
        // A ring is bound by one registration at a time, as in netmap.
        let taken = port.regs.iter().any(|r| {
            r.tx.iter().any(|t| tx_sel.contains(t)) || r.rx.iter().any(|t| rx_sel.contains(t))
        });
        if taken {
            return err(req, libc::EBUSY);
        }
        let bound = |all: &[usize], sel: &[u16]| -> Vec<Option<usize>> {
            (0..all.len())
                .map(|i| sel.contains(&(i as u16)).then(|| all[i]))
                .collect()
        };
        let rings = IfRings {
            tx: bound(&port.tx, &tx_sel),
            host_tx: vec![None],
            rx: bound(&port.rx, &rx_sel),
            host_rx: vec![None],
        };
        let if_name: String = name.chars().take(15).collect();
        // From here on every early return drops `nif`, which frees the
        // netmap_if and its extra buffers: a failed registration leaks
        // nothing. It is kept only once nothing can fail.
        let nif = match port.region.pending_if(&if_name, &rings, body.nr_extra_bufs) {
            Ok(n) => n,
            Err(e) => return err(req, region_errno(&e)),
        };
        let setup = || -> std::io::Result<(Arc<Csb>, Bells)> {
            Ok((Arc::new(Csb::create(nrings)?), Bells::new()?))
        };
        let Ok((csb, Bells { kick, irq, peer })) = setup() else {
            return err(req, libc::ENOMEM);
        };
        let map = nif.map_arc();
        // CSB entries: the bound TX rings, then the bound RX rings.
        let bound: Vec<(Dir, usize)> = port
            .tx
            .iter()
            .enumerate()
            .filter(|(i, _)| tx_sel.contains(&(*i as u16)))
            .map(|(_, &off)| (Dir::Tx, off))
            .chain(
                port.rx
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| rx_sel.contains(&(*i as u16)))
                    .map(|(_, &off)| (Dir::Rx, off)),
            )
            .collect();
        let mut sources = Vec::new();
        let mut sinks = Vec::new();
        for (idx, (dir, off)) in bound.into_iter().enumerate() {
            let idx = idx as u32;
            // Fresh rings for a fresh registration, as netmap gives: every
            // slot on one of the ring's own buffers, whatever the previous
            // client swapped in.
            if nif.reinit_ring(off).is_err() {
                return err(req, libc::EIO);
            }
            let Ok((ns, base, bs, nb)) = nif.ring_params(off) else {
                return err(req, libc::EIO);
            };
            KringState::new(dir, ns).publish(&csb.entry(idx).expect("sized"));
            let geo = RingGeometry {
                off,
                num_slots: ns,
                buf_base: base,
                buf_size: bs,
                nbufs: nb,
            };
            let made = match dir {
                Dir::Tx => RingSource::new(map.clone(), geo, csb.clone(), idx, irq.clone())
                    .map(|s| sources.push((s, idx))),
                // Frames spread over the bound RX rings by flow.
                Dir::Rx => RingSink::new(map.clone(), geo, csb.clone(), idx, irq.clone())
                    .map(|s| sinks.push(s.with_kick(kick.clone()))),
            };
            if made.is_err() {
                return err(req, libc::EIO);
            }
        }
        let fds = match (|| -> std::io::Result<Vec<OwnedFd>> {
            let [kick, irq] = peer;
            Ok(vec![nif.share_fd()?, csb.share_fd()?, kick, irq])
        })() {
            Ok(f) => f,
            Err(_) => return err(req, libc::EMFILE),
        };
        let nifp = nif.keep();
        lock(&port.sink).add(conn.id, sinks);
        port.regs.push(RegRec {
            conn: conn.id,
            tx: tx_sel.clone(),
            rx: rx_sel.clone(),
            exclusive: flags & NR_EXCLUSIVE != 0,
        });
        let (swname, pid) = port
            .attached
            .clone()
            .expect("registered ports are attached");
        let sw = self
            .switches
            .get(&swname)
            .expect("attached switch")
            .sw
            .clone();
        let fwd = self.next_fwd % self.fwd.len().max(1);
        self.next_fwd += 1;
        for (source, csb_idx) in sources {
            if let Some(f) = self.fwd.get(fwd) {
                f.add(Unit {
                    reg: conn.id,
                    path: Path::Switch {
                        switch: sw.clone(),
                        port: pid,
                    },
                    source: UnitSource::Ring {
                        source,
                        csb: csb.clone(),
                        csb_idx,
                    },
                    kick: kick.clone(),
                });
            }
        }
        let port = self.ports.get(&key).expect("present");
        body.nr_offset = nifp as u64;
        body.nr_memsize = port.region.memsize() as u64;
        body.nr_tx_slots = port.layout.tx_slots;
        body.nr_rx_slots = port.layout.rx_slots;
        body.nr_tx_rings = port.tx.len() as u16;
        body.nr_rx_rings = port.rx.len() as u16;
        body.nr_host_tx_rings = 1;
        body.nr_host_rx_rings = 1;
        body.nr_mem_id = port.region.mem_id();
        body.nr_mode = mode;
        body.nr_ringid = ringid;
        body.nr_flags = flags;
        conn.reg = Some(Registration {
            port_key: key.clone(),
            nifp,
            fwd,
            pipe_end: None,
        });
        info!(port = key, conn = conn.id, uid = conn.uid, "registered");
        let mut r = req.clone();
        r.set_body(&body);
        (0, r, fds)
    }

    /// REGISTER of a pipe end (`x{N` master, `x}N` slave).
    #[allow(clippy::too_many_arguments)]
    fn register_pipe(
        &mut self,
        conn: &mut Conn,
        req: &Request,
        mut body: NmreqRegister,
        parent: &str,
        id: &str,
        end: usize,
        name: &str,
    ) -> Answer {
        let mode = if body.nr_mode != 0 {
            body.nr_mode
        } else {
            NR_REG_ALL_NIC
        };
        if mode != NR_REG_ALL_NIC || body.nr_flags & (NR_TX_RINGS_ONLY | NR_RX_RINGS_ONLY) != 0 {
            return err(req, libc::EINVAL);
        }
        let key = format!("{parent}#{id}");
        if !self.pipes.contains_key(&key) {
            let d = self.default_slots;
            let pick = |v: u32| if v == 0 { d } else { v };
            let rings = u32::from(body.nr_tx_rings.max(body.nr_rx_rings)).clamp(1, 16);
            let slots = pick(body.nr_tx_slots.max(body.nr_rx_slots));
            let layout = PortLayout {
                tx_rings: rings,
                rx_rings: rings,
                tx_slots: slots,
                rx_slots: slots,
                extra_bufs: body.nr_extra_bufs,
                ..Default::default()
            };
            let mut cfg = match RegionConfig::for_ports(&layout, 2, 1) {
                Ok(c) => c,
                Err(e) => return err(req, region_errno(&e)),
            };
            cfg.huge_pages = self.huge_pages;
            let mem_id = self.next_mem_id;
            self.next_mem_id = self.next_mem_id.checked_add(1).unwrap_or(1);
            let mut region = match Region::new(mem_id, conn.uid, &cfg) {
                Ok(r) => r,
                Err(e) => return err(req, region_errno(&e)),
            };
            if let Err(e) = self.check_mem_quota(conn.uid, region.memsize() as u64) {
                return err(req, e);
            }
            let mut ends: [PipeSide; 2] = Default::default();
            for e in ends.iter_mut() {
                for i in 0..rings {
                    match (
                        region.alloc_ring(Dir::Tx, i as u16, slots),
                        region.alloc_ring(Dir::Rx, i as u16, slots),
                    ) {
                        (Ok(t), Ok(r)) => {
                            e.tx.push(t);
                            e.rx.push(r);
                        }
                        (Err(x), _) | (_, Err(x)) => return err(req, region_errno(&x)),
                    }
                }
            }
            self.next_pipe += 1;
            let unit_id = (1 << 63) | self.next_pipe;
            let fwd = self.next_fwd % self.fwd.len().max(1);
            self.next_fwd += 1;
            self.pipes.insert(
                key.clone(),
                Pipe {
                    owner: conn.uid,
                    region,
                    layout,
                    ends,
                    unit_id,
                    fwd,
                },
            );
            info!(pipe = key, "pipe created");
        }
        let pipe = self.pipes.get_mut(&key).expect("present");
        if pipe.owner != conn.uid && conn.uid != 0 {
            return err(req, libc::EPERM);
        }
        if pipe.ends[end].reg.is_some() {
            return err(req, libc::EBUSY);
        }
        let me = &pipe.ends[end];
        let rings = IfRings {
            tx: me.tx.iter().map(|&o| Some(o)).collect(),
            host_tx: vec![None],
            rx: me.rx.iter().map(|&o| Some(o)).collect(),
            host_rx: vec![None],
        };
        let nrings = (me.tx.len() + me.rx.len()) as u32;
        let (tx, rx) = (me.tx.clone(), me.rx.clone());
        let if_name: String = name.chars().take(15).collect();
        // Every early return from here drops `nif`, which frees the
        // netmap_if and its extra buffers; kept once nothing can fail.
        let nif = match pipe.region.pending_if(&if_name, &rings, body.nr_extra_bufs) {
            Ok(n) => n,
            Err(e) => return err(req, region_errno(&e)),
        };
        let made = (|| -> std::io::Result<Doorbells> {
            let csb = Arc::new(Csb::create(nrings)?);
            let Bells { kick, irq, peer } = Bells::new()?;
            let [pk, pi] = peer;
            let fds = vec![nif.share_fd()?, csb.share_fd()?, pk, pi];
            Ok((csb, kick, irq, fds))
        })();
        let Ok((csb, kick, irq, fds)) = made else {
            return err(req, libc::ENOMEM);
        };
        let peer_open = pipe.ends[1 - end].reg.is_some();
        for (idx, (dir, off)) in tx
            .iter()
            .map(|&o| (Dir::Tx, o))
            .chain(rx.iter().map(|&o| (Dir::Rx, o)))
            .enumerate()
        {
            let ns = pipe.layout.tx_slots;
            // The pipe swaps buffers between its ends: while the other end
            // is open its rings may hold buffers these slots were given, so
            // only the pointers start over. Otherwise the rings are new.
            let fresh = if peer_open {
                nif.rewind_ring(off)
            } else {
                nif.reinit_ring(off)
            };
            if fresh.is_err() {
                return err(req, libc::EIO);
            }
            KringState::new(dir, ns).publish(&csb.entry(idx as u32).expect("sized"));
        }
        pipe.ends[end].reg = Some(PipeReg {
            conn: conn.id,
            csb,
            irq,
            kick,
        });
        // Both ends open: start both directions.
        if peer_open {
            match pipe_units(&nif, &pipe.ends, pipe.unit_id) {
                Ok(units) => {
                    if let Some(f) = self.fwd.get(pipe.fwd) {
                        units.into_iter().for_each(|u| f.add(u));
                    }
                }
                Err(_) => {
                    pipe.ends[end].reg = None;
                    return err(req, libc::EIO);
                }
            }
        }
        let nifp = nif.keep();
        body.nr_offset = nifp as u64;
        body.nr_memsize = pipe.region.memsize() as u64;
        body.nr_tx_slots = pipe.layout.tx_slots;
        body.nr_rx_slots = pipe.layout.rx_slots;
        body.nr_tx_rings = tx.len() as u16;
        body.nr_rx_rings = rx.len() as u16;
        body.nr_host_tx_rings = 1;
        body.nr_host_rx_rings = 1;
        body.nr_mem_id = pipe.region.mem_id();
        body.nr_mode = mode;
        conn.reg = Some(Registration {
            port_key: key.clone(),
            nifp,
            fwd: pipe.fwd,
            pipe_end: Some(end),
        });
        info!(pipe = key, end, conn = conn.id, "pipe end registered");
        let mut r = req.clone();
        r.set_body(&body);
        (0, r, fds)
    }

    fn unregister_pipe(&mut self, conn: u64, reg: &Registration, end: usize) {
        let Some(pipe) = self.pipes.get_mut(&reg.port_key) else {
            return;
        };
        if let Some(f) = self.fwd.get(pipe.fwd) {
            f.remove(pipe.unit_id);
        }
        if pipe.ends[end].reg.as_ref().is_some_and(|r| r.conn == conn) {
            pipe.ends[end].reg = None;
        }
        // The pipe swapped buffers between its ends: what this end hands
        // back is what its list names (see Region::free_if_swapped).
        let _ = pipe.region.free_if_swapped(reg.nifp);
        info!(pipe = reg.port_key, end, conn, "pipe end unregistered");
        if pipe.ends.iter().all(|e| e.reg.is_none()) {
            self.pipes.remove(&reg.port_key);
        }
    }

    /// Drops `conn`'s registration (its connection closed). The rings are
    /// taken back from the forwarding thread first; an ephemeral port goes
    /// away with its last client.
    pub fn unregister(&mut self, conn: &mut Conn) {
        let Some(reg) = conn.reg.take() else { return };
        if let Some(end) = reg.pipe_end {
            self.unregister_pipe(conn.id, &reg, end);
            return;
        }
        if let Some(f) = self.fwd.get(reg.fwd) {
            f.remove(conn.id);
        }
        let Some(port) = self.ports.get_mut(&reg.port_key) else {
            return;
        };
        lock(&port.sink).remove(conn.id);
        port.regs.retain(|r| r.conn != conn.id);
        let _ = port.region.free_if(reg.nifp);
        info!(port = reg.port_key, conn = conn.id, "unregistered");
        if !port.persistent && port.regs.is_empty() {
            let _ = self.detach(&reg.port_key);
            self.ports.remove(&reg.port_key);
        }
    }

    /// A port for an information request: as [`lookup`](Self::lookup),
    /// or a persistent port of that name even if it is not attached.
    fn find_any(&self, name: &str) -> Result<&Port, Errno> {
        let (switch, pname) = Self::vale_name(name)?;
        let key = self.lookup(&switch, &pname).unwrap_or(pname);
        match self.ports.get(&key) {
            Some(p) if p.persistent || key.contains(':') => Ok(p),
            _ => Err(libc::ENXIO),
        }
    }

    fn port_info(&mut self, req: &Request, name: &str) -> Answer {
        let p = match self.find_any(name) {
            Ok(p) => p,
            Err(e) => return err(req, e),
        };
        let body = NmreqPortInfoGet {
            nr_memsize: p.region.memsize() as u64,
            nr_tx_slots: p.layout.tx_slots,
            nr_rx_slots: p.layout.rx_slots,
            nr_tx_rings: p.tx.len() as u16,
            nr_rx_rings: p.rx.len() as u16,
            nr_host_tx_rings: 1,
            nr_host_rx_rings: 1,
            nr_mem_id: p.region.mem_id(),
            ..Default::default()
        };
        let mut r = req.clone();
        r.set_body(&body);
        (0, r, Vec::new())
    }

    fn pools_info(&mut self, req: &Request, name: &str) -> Answer {
        let p = match self.find_any(name) {
            Ok(p) => p,
            Err(e) => return err(req, e),
        };
        let body = p.region.pools_info();
        let mut r = req.clone();
        r.set_body(&body);
        (0, r, Vec::new())
    }

    fn owned(&self, conn: &Conn, key: &str) -> Result<(), Errno> {
        let p = self.ports.get(key).ok_or(libc::ENXIO)?;
        if p.owner != conn.uid && conn.uid != 0 {
            return Err(libc::EPERM);
        }
        Ok(())
    }

    fn vale_newif(&mut self, conn: &mut Conn, req: &Request, name: &str) -> Answer {
        let Ok(b) = req.body_as::<NmreqValeNewif>() else {
            return err(req, libc::EINVAL);
        };
        // netmap: not a name of an existing interface, not "vale…", ≤ 15 chars.
        let bad = name.is_empty()
            || name.len() > 15
            || name.starts_with("vale")
            || name.contains(|c: char| c == ':' || c == '/' || c.is_whitespace());
        if bad {
            return err(req, libc::EINVAL);
        }
        if self.ports.contains_key(name)
            || self.vhost.contains_key(name)
            || std::path::Path::new("/sys/class/net").join(name).exists()
        {
            return err(req, libc::EEXIST);
        }
        let d = self.default_slots;
        let pick = |v: u32| if v == 0 { d } else { v };
        let layout = PortLayout {
            tx_rings: u32::from(b.nr_tx_rings).max(1),
            rx_rings: u32::from(b.nr_rx_rings).max(1),
            tx_slots: pick(b.nr_tx_slots),
            rx_slots: pick(b.nr_rx_slots),
            extra_bufs: PERSISTENT_EXTRA_BUFS,
            ..Default::default()
        };
        if layout.tx_rings > 16 || layout.rx_rings > 16 {
            return err(req, libc::EINVAL);
        }
        if b.nr_mem_id != 0 {
            // Regions are sized for their port when created, so a port
            // cannot move into another's yet.
            return err(req, libc::EOPNOTSUPP);
        }
        match self.new_port(name, conn.uid, layout, true) {
            Ok(p) => {
                info!(port = name, "persistent port created");
                // Answer with what was chosen, as netmap does.
                let chosen = NmreqValeNewif {
                    nr_tx_slots: p.layout.tx_slots,
                    nr_rx_slots: p.layout.rx_slots,
                    nr_tx_rings: p.tx.len() as u16,
                    nr_rx_rings: p.rx.len() as u16,
                    nr_mem_id: p.region.mem_id(),
                    ..Default::default()
                };
                self.ports.insert(name.to_string(), p);
                let mut r = req.clone();
                r.set_body(&chosen);
                (0, r, Vec::new())
            }
            Err(e) => err(req, e),
        }
    }

    fn vale_delif(&mut self, conn: &mut Conn, req: &Request, name: &str) -> Answer {
        if let Some(v) = self.vhost.get(name) {
            if v.spec.owner != conn.uid && conn.uid != 0 {
                return err(req, libc::EPERM);
            }
            if v.attached.is_some() {
                return err(req, libc::EBUSY);
            }
            self.vhost.remove(name);
            self.save_state();
            info!(port = name, "vhost-user port removed");
            return (0, req.clone(), Vec::new());
        }
        match self.ports.get(name) {
            Some(p) if p.persistent => {
                if let Err(e) = self.owned(conn, name) {
                    return err(req, e);
                }
                if p.attached.is_some() || !p.regs.is_empty() {
                    return err(req, libc::EBUSY);
                }
                self.ports.remove(name);
                info!(port = name, "persistent port removed");
                (0, req.clone(), Vec::new())
            }
            _ => err(req, libc::ENXIO),
        }
    }

    fn vale_attach(&mut self, conn: &mut Conn, req: &Request, name: &str) -> Answer {
        let Ok(mut b) = req.body_as::<NmreqValeAttach>() else {
            return err(req, libc::EINVAL);
        };
        let (switch, pname) = match Self::vale_name(name) {
            Ok(v) => v,
            Err(e) => return err(req, e),
        };
        if b.reg.nr_mode == NR_REG_NIC_SW {
            // `vale-ctl -h`: host stack ports need NIC ports (a later issue).
            return err(req, libc::ENXIO);
        }
        if let Some(v) = self.vhost.get(&pname) {
            if v.spec.owner != conn.uid && conn.uid != 0 {
                return err(req, libc::EPERM);
            }
            return match self.vhost_attach(&pname, &switch) {
                Ok(id) => {
                    b.port_index = u32::from(id);
                    self.save_state();
                    let mut r = req.clone();
                    r.set_body(&b);
                    (0, r, Vec::new())
                }
                Err(e) => err(req, e),
            };
        }
        match self.ports.get(&pname) {
            Some(p) if p.persistent => {}
            _ => return err(req, libc::ENXIO),
        }
        if let Err(e) = self.owned(conn, &pname) {
            return err(req, e);
        }
        match self.attach(&pname, &switch) {
            Ok(id) => {
                b.port_index = u32::from(id);
                let mut r = req.clone();
                r.set_body(&b);
                (0, r, Vec::new())
            }
            Err(e) => err(req, e),
        }
    }

    fn vale_detach(&mut self, conn: &mut Conn, req: &Request, name: &str) -> Answer {
        let (switch, pname) = match Self::vale_name(name) {
            Ok(v) => v,
            Err(e) => return err(req, e),
        };
        if let Some(v) = self.vhost.get(&pname) {
            if v.attached.as_ref().map(|a| a.0.as_str()) != Some(switch.as_str()) {
                return err(req, libc::ENXIO);
            }
            if v.spec.owner != conn.uid && conn.uid != 0 {
                return err(req, libc::EPERM);
            }
            return match self.vhost_detach(&pname) {
                Ok(idx) => {
                    self.save_state();
                    let mut r = req.clone();
                    r.set_body(&NmreqValeDetach {
                        port_index: u32::from(idx),
                        ..Default::default()
                    });
                    (0, r, Vec::new())
                }
                Err(e) => err(req, e),
            };
        }
        let Some(key) = self.lookup(&switch, &pname) else {
            return err(req, libc::ENXIO);
        };
        let p = &self.ports[&key];
        if !p.persistent {
            return err(req, libc::EINVAL);
        }
        if !p.regs.is_empty() {
            return err(req, libc::EBUSY);
        }
        if let Err(e) = self.owned(conn, &key) {
            return err(req, e);
        }
        let idx = p.attached.as_ref().map_or(0, |a| a.1);
        match self.detach(&key) {
            Ok(()) => {
                let mut r = req.clone();
                r.set_body(&NmreqValeDetach {
                    port_index: u32::from(idx),
                    ..Default::default()
                });
                (0, r, Vec::new())
            }
            Err(e) => err(req, e),
        }
    }

    /// Creates a vhost-user port (and attaches it if the spec says so).
    pub fn vhost_create(&mut self, spec: VhostSpec) -> Result<(), (Errno, String)> {
        if self.ports.contains_key(&spec.name)
            || self.vhost.contains_key(&spec.name)
            || std::path::Path::new("/sys/class/net")
                .join(&spec.name)
                .exists()
        {
            return Err((libc::EEXIST, format!("port {} exists", spec.name)));
        }
        self.check_port_quota(spec.owner, &spec.name).map_err(|e| {
            (
                e,
                format!(
                    "uid {} holds its quota of ports (--quota-ports {})",
                    spec.owner, self.quotas.ports
                ),
            )
        })?;
        if spec.owner != 0 {
            let n = self
                .vhost
                .values()
                .filter(|v| v.spec.owner == spec.owner)
                .count();
            if n >= self.quotas.vhost_ports {
                return Err((
                    libc::ENOSPC,
                    format!(
                        "uid {} has {n} VM ports, its quota (--quota-vhost {})",
                        spec.owner, self.quotas.vhost_ports
                    ),
                ));
            }
        }
        let port =
            backend::NetPort::start(spec.net_config()).map_err(|e| (e.errno(), e.to_string()))?;
        let name = spec.name.clone();
        let attach = spec.attach.clone();
        let unit_id = self.next_unit;
        self.next_unit += 1;
        info!(port = name, socket = %spec.path.display(), client = spec.client, queues = spec.queues, "vhost-user port created");
        self.vhost.insert(
            name.clone(),
            VhostPort {
                spec: VhostSpec {
                    attach: None,
                    ..spec
                },
                port,
                attached: None,
                unit_id,
                fwd: Vec::new(),
            },
        );
        if let Some(sw) = attach {
            self.vhost_attach(&name, &sw)
                .map_err(|e| (e, format!("attaching {name} to {sw}")))?;
        }
        Ok(())
    }

    fn vhost_attach(&mut self, name: &str, switch: &str) -> Result<PortId, Errno> {
        let owner = self.vhost.get(name).ok_or(libc::ENXIO)?.spec.owner;
        let sw = self.switch(switch, owner)?;
        let nfwd = self.fwd.len().max(1);
        let v = self.vhost.get_mut(name).ok_or(libc::ENXIO)?;
        if v.attached.is_some() {
            return Err(libc::EBUSY);
        }
        let full = format!("{switch}:{name}");
        let cfg = PortConfig {
            vnet_hdr_len: backend::VNET_HDR_LEN as u16,
            ..Default::default()
        };
        let id = sw
            .attach(&full, cfg, Box::new(v.port.rx_sink()))
            .map_err(|e| match e {
                vale::SwitchError::Full(_) => libc::ENOMEM,
                vale::SwitchError::Exists { .. } => libc::EEXIST,
                _ => libc::EINVAL,
            })?;
        v.fwd.clear();
        if self.vhost_inline {
            let queues = (0..v.port.queue_pairs())
                .map(|p| Mutex::new((v.port.tx_queue(p), vale::Scratch::default())))
                .collect();
            v.port.set_hook(Arc::new(crate::vhost::Inline {
                switch: sw.clone(),
                port: id,
                queues,
                t0: std::time::Instant::now(),
            }));
            v.attached = Some((switch.to_string(), id));
            v.spec.attach = Some(switch.to_string());
            info!(
                port = name,
                switch,
                index = id,
                "vhost-user port attached (inline)"
            );
            return Ok(id);
        }
        let mut kicks = Vec::new();
        for pair in 0..v.port.queue_pairs() {
            let kick = match EventFd::new() {
                Ok(k) => Arc::new(k),
                Err(_) => {
                    let _ = sw.detach(id);
                    return Err(libc::EMFILE);
                }
            };
            // Queue pairs spread over the forwarding threads.
            let f = self.next_fwd % nfwd;
            self.next_fwd += 1;
            if let Some(fw) = self.fwd.get(f) {
                fw.add(Unit {
                    reg: v.unit_id,
                    path: Path::Switch {
                        switch: sw.clone(),
                        port: id,
                    },
                    source: UnitSource::Vhost(v.port.tx_queue(pair)),
                    kick: kick.clone(),
                });
            }
            v.fwd.push(f);
            kicks.push(kick);
        }
        v.port.set_hook(Arc::new(Relay(kicks)));
        v.attached = Some((switch.to_string(), id));
        v.spec.attach = Some(switch.to_string());
        info!(port = name, switch, index = id, "vhost-user port attached");
        Ok(id)
    }

    fn vhost_detach(&mut self, name: &str) -> Result<PortId, Errno> {
        let v = self.vhost.get_mut(name).ok_or(libc::ENXIO)?;
        let (swname, id) = v.attached.take().ok_or(libc::EINVAL)?;
        v.port.clear_hook();
        let mut seen = Vec::new();
        for &f in &v.fwd {
            if !seen.contains(&f) {
                seen.push(f);
                if let Some(fw) = self.fwd.get(f) {
                    fw.remove(v.unit_id);
                }
            }
        }
        v.fwd.clear();
        v.spec.attach = None;
        if let Some(s) = self.switches.get(&swname) {
            let _ = s.sw.detach(id);
            if s.sw.ports().is_empty() {
                info!(switch = swname, "switch removed (no ports)");
                self.switches.remove(&swname);
            }
        }
        info!(port = name, switch = swname, "vhost-user port detached");
        Ok(id)
    }

    /// Rewrites the state file with the vhost-user ports now present.
    pub fn save_state(&self) {
        let Some(path) = &self.state_file else {
            return;
        };
        let mut text =
            String::from("# vhost-user ports; valed rewrites this file on every change\n");
        for v in self.vhost.values() {
            text.push_str(&v.spec.to_line());
            text.push('\n');
        }
        let tmp = path.with_extension("tmp");
        let r = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = r {
            tracing::warn!(file = %path.display(), "cannot save vhost-user ports: {e}");
        }
    }

    /// Counters of vhost-user port `name`, for the stats request.
    fn vhost_stats(&self, name: &str) -> Option<VhostStatsDoc> {
        let s = self.vhost.get(name)?.port.stats();
        Some(VhostStatsDoc {
            state: s.state.as_str(),
            connected: s.connected,
            connections: s.connections,
            queues_running: s.queues_running,
            acked_features: s.acked_features,
            last_error: s.last_error,
            last_error_at: s.last_error_at,
            bad_chains: s.bad_chains,
            no_rx_buffer: s.no_rx_buffer,
            rx_too_small: s.rx_too_small,
            not_running: s.not_running,
        })
    }

    fn vale_vhost_newif(&mut self, conn: &mut Conn, req: &Request, name: &str) -> Answer {
        let Ok(b) = req.body_as::<ValeVhostNewif>() else {
            return err(req, libc::EINVAL);
        };
        let Some(path) = b.path_str() else {
            return err(req, libc::EINVAL);
        };
        if crate::vhost::bad_name(name) {
            return err(req, libc::EINVAL);
        }
        let client = b.flags & VALE_VHOST_CLIENT != 0;
        let path = match self.vhost_path(path, client, conn.uid) {
            Ok(p) => p,
            Err((e, msg)) => {
                tracing::warn!(
                    port = name,
                    uid = conn.uid,
                    "vhost-user port refused: {msg}"
                );
                return err(req, e);
            }
        };
        let spec = VhostSpec {
            name: name.to_string(),
            path,
            client,
            queues: if b.queue_pairs == 0 { 1 } else { b.queue_pairs },
            batch: backend::device::DEFAULT_BATCH,
            attach: None,
            owner: conn.uid,
        };
        if spec.queues > backend::device::MAX_QUEUE_PAIRS {
            return err(req, libc::EINVAL);
        }
        match self.vhost_create(spec) {
            Ok(()) => {
                self.save_state();
                (0, req.clone(), Vec::new())
            }
            Err((e, msg)) => {
                tracing::warn!(
                    port = name,
                    uid = conn.uid,
                    "vhost-user port not created: {msg}"
                );
                err(req, e)
            }
        }
    }

    /// The socket path a request from `uid` names, by valed's policy
    /// (valed.8, SECURITY): a plain file name is a socket in the vhost
    /// directory; root may name any absolute path; a tenant's listening
    /// socket must be in the vhost directory, and a tenant's client-mode
    /// port may only connect to a socket that tenant owns.
    fn vhost_path(
        &self,
        given: &str,
        client: bool,
        uid: u32,
    ) -> Result<std::path::PathBuf, (Errno, String)> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let p = std::path::Path::new(given);
        crate::vhost::check_path(p).map_err(|m| (libc::EINVAL, m))?;
        let path = if crate::vhost::plain_name(given) {
            self.vhost_dir.join(given)
        } else if p.is_absolute() {
            p.to_path_buf()
        } else {
            return Err((
                libc::EINVAL,
                format!("socket path {given:?}: want a plain file name or an absolute path"),
            ));
        };
        if uid == 0 {
            return Ok(path);
        }
        if client {
            // connect(2) follows symlinks; so does this check. The VMM's
            // credentials are checked again once connected.
            let md = std::fs::metadata(&path).map_err(|e| {
                (
                    libc::ENOENT,
                    format!("client socket {}: {e}", path.display()),
                )
            })?;
            if !md.file_type().is_socket() || md.uid() != uid {
                return Err((
                    libc::EPERM,
                    format!(
                        "client socket {}: not a socket of uid {uid} (owner {})",
                        path.display(),
                        md.uid()
                    ),
                ));
            }
            return Ok(path);
        }
        let inside = path.parent() == Some(self.vhost_dir.as_path())
            && path
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(crate::vhost::plain_name);
        if !inside {
            return Err((
                libc::EPERM,
                format!(
                    "socket path {given:?}: uid {uid} may only make sockets in {} (give a plain file name)",
                    self.vhost_dir.display()
                ),
            ));
        }
        Ok(path)
    }

    /// Every attached port as (bridge idx, port idx, full name), in order.
    fn listing(&self) -> Vec<(u16, u32, String)> {
        let mut v: Vec<(u16, u32, String)> = self
            .switches
            .values()
            .flat_map(|s| {
                s.sw.ports()
                    .into_iter()
                    .map(move |(p, full)| (s.idx, u32::from(p), full))
            })
            .collect();
        v.sort();
        v
    }

    fn vale_list(&mut self, req: &Request, name: &str) -> Answer {
        let Ok(mut b) = req.body_as::<NmreqValeList>() else {
            return err(req, libc::EINVAL);
        };
        let all = self.listing();
        let hit = if name.is_empty() {
            all.into_iter()
                .find(|(bi, pi, _)| (*bi, *pi) >= (b.nr_bridge_idx, b.nr_port_idx))
        } else {
            all.into_iter().find(|(_, _, n)| n == name)
        };
        match hit {
            Some((bi, pi, full)) => {
                b.nr_bridge_idx = bi;
                b.nr_port_idx = pi;
                let mut r = req.clone();
                r.set_body(&b);
                if r.hdr.set_name(&full).is_err() {
                    return err(req, libc::EINVAL);
                }
                (0, r, Vec::new())
            }
            None if name.is_empty() => err(req, libc::ENOENT),
            None => err(req, libc::ENXIO),
        }
    }

    fn hdr_set(&mut self, conn: &mut Conn, req: &Request, name: &str) -> Answer {
        let Ok(b) = req.body_as::<NmreqPortHdr>() else {
            return err(req, libc::EINVAL);
        };
        if ![0, 10, 12].contains(&b.nr_hdr_len) {
            return err(req, libc::EINVAL);
        }
        let (switch, pname) = match Self::vale_name(name) {
            Ok(v) => v,
            Err(e) => return err(req, e),
        };
        let Some(key) = self.lookup(&switch, &pname) else {
            return err(req, libc::ENXIO);
        };
        if let Err(e) = self.owned(conn, &key) {
            return err(req, e);
        }
        let p = self.ports.get_mut(&key).expect("found");
        if p.regs.iter().any(|r| r.conn != conn.id) {
            return err(req, libc::EBUSY);
        }
        p.hdr_len = b.nr_hdr_len as u16;
        if let Some((sw, id)) = p.attached.clone() {
            if let Some(s) = self.switches.get(&sw) {
                let mut cfg = s.sw.config(id).unwrap_or_default();
                cfg.vnet_hdr_len = b.nr_hdr_len as u16;
                cfg.offloads = if cfg.vnet_hdr_len > 0 {
                    vale::port::OFFLOAD_ALL
                } else {
                    0
                };
                if s.sw.reconfigure(id, cfg).is_err() {
                    return err(req, libc::EINVAL);
                }
            }
        }
        (0, req.clone(), Vec::new())
    }

    fn hdr_get(&mut self, req: &Request, name: &str) -> Answer {
        let p = match self.find_any(name) {
            Ok(p) => p,
            Err(e) => return err(req, e),
        };
        let mut r = req.clone();
        r.set_body(&NmreqPortHdr {
            nr_hdr_len: u32::from(p.hdr_len),
            ..Default::default()
        });
        (0, r, Vec::new())
    }

    /// Reads or changes a port's switch options (backpressure, the
    /// NS_PORT_MASK override, its MAC limit).
    fn port_config(&mut self, conn: &mut Conn, req: &Request, name: &str) -> Answer {
        let Ok(b) = req.body_as::<ValePortConfig>() else {
            return err(req, libc::EINVAL);
        };
        let (switch, pname) = match Self::vale_name(name) {
            Ok(v) => v,
            Err(e) => return err(req, e),
        };
        let Some(key) = self.lookup(&switch, &pname) else {
            return err(req, libc::ENXIO);
        };
        if b.set != 0 {
            if let Err(e) = self.owned(conn, &key) {
                return err(req, e);
            }
        }
        let Some((swname, id)) = self.ports[&key].attached.clone() else {
            return err(req, libc::ENXIO);
        };
        let sw = self.switches[&swname].sw.clone();
        let mut cfg = sw.config(id).unwrap_or_default();
        if b.set & VALE_SET_FLAGS != 0 {
            if b.flags & !(VALE_PORT_BACKPRESSURE | VALE_PORT_MASK_OVERRIDE) != 0 {
                return err(req, libc::EINVAL);
            }
            cfg.backpressure = b.flags & VALE_PORT_BACKPRESSURE != 0;
            cfg.port_mask_override = b.flags & VALE_PORT_MASK_OVERRIDE != 0;
        }
        if b.set & VALE_SET_MAC_LIMIT != 0 {
            cfg.mac_limit = b.mac_limit;
            sw.with_lookup_mut(|l| l.set_port_mac_limit(id, b.mac_limit));
        }
        if b.set & !(VALE_SET_FLAGS | VALE_SET_MAC_LIMIT) != 0 || sw.reconfigure(id, cfg).is_err() {
            return err(req, libc::EINVAL);
        }
        let now = ValePortConfig {
            flags: if cfg.backpressure {
                VALE_PORT_BACKPRESSURE
            } else {
                0
            } | if cfg.port_mask_override {
                VALE_PORT_MASK_OVERRIDE
            } else {
                0
            },
            mac_limit: cfg.mac_limit,
            set: 0,
            pad: 0,
        };
        let mut r = req.clone();
        r.set_body(&now);
        (0, r, Vec::new())
    }

    /// VALE_REQ_SWITCH_CONFIG: reads, or (owner or root) sets, whom switch
    /// `name` is shared with.
    fn switch_config(&mut self, conn: &mut Conn, req: &Request, name: &str) -> Answer {
        let Ok(b) = req.body_as::<ValeSwitchConfig>() else {
            return err(req, libc::EINVAL);
        };
        let Some(s) = self.switches.get_mut(name) else {
            return err(req, libc::ENXIO);
        };
        if b.set & !VALE_SET_SHARE != 0 || b.nshare as usize > VALE_SHARE_MAX {
            return err(req, libc::EINVAL);
        }
        if b.set & VALE_SET_SHARE != 0 {
            if conn.uid != 0 && conn.uid != s.owner {
                tracing::warn!(
                    switch = name,
                    uid = conn.uid,
                    owner = s.owner,
                    "share refused: the switch belongs to another uid"
                );
                return err(req, libc::EPERM);
            }
            let mut share: Vec<u32> = b.share[..b.nshare as usize].to_vec();
            share.sort_unstable();
            share.dedup();
            info!(switch = name, uid = conn.uid, ?share, "switch shared");
            s.share = share;
        }
        let mut now = ValeSwitchConfig {
            owner: s.owner,
            nshare: s.share.len() as u32,
            ..Default::default()
        };
        now.share[..s.share.len()].copy_from_slice(&s.share);
        let mut r = req.clone();
        r.set_body(&now);
        (0, r, Vec::new())
    }

    /// Per-port counters as JSON, for `vale-ctl --stats`.
    fn stats(&mut self, req: &Request, name: &str) -> Answer {
        let mut doc = StatsDoc { ports: Vec::new() };
        for (swname, s) in &self.switches {
            for (pid, full) in s.sw.ports() {
                if !name.is_empty() && name != full {
                    continue;
                }
                let Some(st) = s.sw.stats(pid) else { continue };
                let short = full.split_once(':').map_or("", |x| x.1);
                let vhost_user = self.vhost_stats(short);
                doc.ports.push(PortStatsDoc {
                    switch: swname,
                    port_idx: pid,
                    in_packets: st.in_packets,
                    in_bytes: st.in_bytes,
                    out_packets: st.out_packets,
                    out_bytes: st.out_bytes,
                    soft_offload: st.soft_offload,
                    drops: Drops(st),
                    vhost_user,
                    name: full,
                });
            }
        }
        if !name.is_empty() && doc.ports.is_empty() {
            return err(req, libc::ENXIO);
        }
        let Ok(out) = serde_json::to_vec(&doc) else {
            return err(req, libc::EIO);
        };
        let mut r = req.clone();
        r.body = out;
        (0, r, Vec::new())
    }
}

/// `vale-ctl --stats --json`: `{"ports":[...]}`.
#[derive(Debug, Serialize)]
struct StatsDoc<'a> {
    ports: Vec<PortStatsDoc<'a>>,
}

/// One port's counters; the drop counters by reason follow
/// `soft_offload`, a VM port's counters come last as `vhost_user`.
#[derive(Debug, Serialize)]
struct PortStatsDoc<'a> {
    name: String,
    switch: &'a str,
    port_idx: PortId,
    in_packets: u64,
    in_bytes: u64,
    out_packets: u64,
    out_bytes: u64,
    soft_offload: u64,
    #[serde(flatten)]
    drops: Drops,
    #[serde(skip_serializing_if = "Option::is_none")]
    vhost_user: Option<VhostStatsDoc>,
}

/// A port's drops as `"drop_<reason>": n`, in [`DropReason::ALL`] order.
#[derive(Debug)]
struct Drops(vale::PortStats);

impl Serialize for Drops {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = ser.serialize_map(Some(DropReason::ALL.len()))?;
        for r in DropReason::ALL {
            m.serialize_entry(r.name(), &self.0.drop(r))?;
        }
        m.end()
    }
}

/// A VM port's vhost-user counters (`null` for no error yet).
#[derive(Debug, Serialize)]
struct VhostStatsDoc {
    state: &'static str,
    connected: bool,
    connections: u64,
    queues_running: usize,
    acked_features: u64,
    last_error: Option<String>,
    last_error_at: Option<u64>,
    bad_chains: u64,
    no_rx_buffer: u64,
    rx_too_small: u64,
    not_running: u64,
}

impl Registry {
    /// The counters of port `name` (`valeX:Y`) as Prometheus samples, for
    /// `valed --metrics`.
    fn metrics(&mut self, req: &Request, name: &str) -> Answer {
        let mut out = String::new();
        for (swname, s) in &self.switches {
            for (pid, full) in s.sw.ports() {
                if name != full {
                    continue;
                }
                let Some(st) = s.sw.stats(pid) else { continue };
                let short = full.split_once(':').map_or("", |x| x.1);
                let l = format!("switch=\"{}\",port=\"{}\"", label(swname), label(short));
                for (f, v) in [
                    ("vale_port_in_packets_total", st.in_packets),
                    ("vale_port_in_bytes_total", st.in_bytes),
                    ("vale_port_out_packets_total", st.out_packets),
                    ("vale_port_out_bytes_total", st.out_bytes),
                    ("vale_port_soft_offload_total", st.soft_offload),
                ] {
                    out.push_str(&format!("{f}{{{l}}} {v}\n"));
                }
                for r in DropReason::ALL {
                    let reason = r.name().trim_start_matches("drop_");
                    out.push_str(&format!(
                        "vale_port_drops_total{{{l},reason=\"{reason}\"}} {}\n",
                        st.drop(r)
                    ));
                }
                if let Some(v) = self.vhost.get(short) {
                    let p = v.port.stats();
                    for (f, v) in [
                        ("vale_vhost_connected", u64::from(p.connected)),
                        (
                            "vale_vhost_running",
                            u64::from(p.state == backend::PortState::Running),
                        ),
                        ("vale_vhost_queues_running", p.queues_running as u64),
                        ("vale_vhost_connections_total", p.connections),
                        ("vale_vhost_bad_chains_total", p.bad_chains),
                        (
                            "vale_vhost_last_error_timestamp_seconds",
                            p.last_error_at.unwrap_or(0),
                        ),
                    ] {
                        out.push_str(&format!("{f}{{{l}}} {v}\n"));
                    }
                    for (reason, v) in [
                        ("no_rx_buffer", p.no_rx_buffer),
                        ("rx_too_small", p.rx_too_small),
                        ("not_running", p.not_running),
                    ] {
                        out.push_str(&format!(
                            "vale_vhost_rx_drops_total{{{l},reason=\"{reason}\"}} {v}\n"
                        ));
                    }
                }
            }
        }
        if out.is_empty() {
            return err(req, libc::ENXIO);
        }
        let mut r = req.clone();
        r.body = out.into_bytes();
        (0, r, Vec::new())
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The two forwarding units of an open pipe: each end's TX ring i into the
/// other end's RX ring i.
fn pipe_units(region: &Region, ends: &[PipeSide; 2], unit_id: u64) -> std::io::Result<Vec<Unit>> {
    let map = region.map_arc();
    let mut units = Vec::new();
    for from in 0..2 {
        let (a, b) = (&ends[from], &ends[1 - from]);
        let (Some(ra), Some(rb)) = (&a.reg, &b.reg) else {
            continue;
        };
        for i in 0..a.tx.len() {
            let geo = |off: usize| {
                let (ns, base, bs, nb) = region.ring_params(off).map_err(std::io::Error::other)?;
                Ok::<_, std::io::Error>(RingGeometry {
                    off,
                    num_slots: ns,
                    buf_base: base,
                    buf_size: bs,
                    nbufs: nb,
                })
            };
            let src = RingSource::new(
                map.clone(),
                geo(a.tx[i])?,
                ra.csb.clone(),
                i as u32,
                ra.irq.clone(),
            )?;
            let rx_idx = (b.tx.len() + i) as u32;
            let dst = RingSink::new(
                map.clone(),
                geo(b.rx[i])?,
                rb.csb.clone(),
                rx_idx,
                rb.irq.clone(),
            )?
            .with_kick(rb.kick.clone());
            units.push(Unit {
                reg: unit_id,
                path: Path::Pipe { dst: Box::new(dst) },
                source: UnitSource::Ring {
                    source: src,
                    csb: ra.csb.clone(),
                    csb_idx: i as u32,
                },
                kick: ra.kick.clone(),
            });
        }
    }
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stats document as serde writes it: the fields in the order
    /// `vale-ctl` and the tests know, and any name or error text (quotes,
    /// backslashes, control characters) back unchanged through a parser.
    #[test]
    fn stats_document_keeps_its_shape_and_escapes_everything() {
        let mut st = vale::PortStats {
            in_packets: 7,
            ..Default::default()
        };
        st.drops[DropReason::NoDst as usize] = 2;
        let name = "vale0:a\"b\\c\u{1}\u{1f}";
        let error = "SET_FEATURES \"x\"\\\n\t\u{7}";
        let doc = StatsDoc {
            ports: vec![PortStatsDoc {
                name: name.into(),
                switch: "vale0",
                port_idx: 3,
                in_packets: st.in_packets,
                in_bytes: 0,
                out_packets: 0,
                out_bytes: 0,
                soft_offload: 0,
                drops: Drops(st),
                vhost_user: Some(VhostStatsDoc {
                    state: "waiting",
                    connected: false,
                    connections: 1,
                    queues_running: 0,
                    acked_features: 0,
                    last_error: Some(error.into()),
                    last_error_at: None,
                    bad_chains: 0,
                    no_rx_buffer: 0,
                    rx_too_small: 0,
                    not_running: 0,
                }),
            }],
        };
        let text = serde_json::to_string(&doc).unwrap();
        assert!(!text.contains('\n') && !text.contains('\u{1}'), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let p = &v["ports"][0];
        assert_eq!(p["name"], name);
        assert_eq!(p["vhost_user"]["last_error"], error);
        assert_eq!(p["vhost_user"]["last_error_at"], serde_json::Value::Null);
        assert_eq!(
            (p["port_idx"].as_u64(), p["in_packets"].as_u64()),
            (Some(3), Some(7))
        );
        assert_eq!(p["drop_no_dst"].as_u64(), Some(2));
        let mut keys = vec!["name", "switch", "port_idx", "in_packets", "in_bytes"];
        keys.extend(["out_packets", "out_bytes", "soft_offload"]);
        keys.extend(DropReason::ALL.map(|r| r.name()));
        keys.push("vhost_user");
        let at: Vec<usize> = keys
            .iter()
            .map(|k| text.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
        // No VM port: no vhost_user key.
        let doc = StatsDoc {
            ports: vec![PortStatsDoc {
                vhost_user: None,
                ..doc.ports.into_iter().next().unwrap()
            }],
        };
        let text = serde_json::to_string(&doc).unwrap();
        assert!(!text.contains("vhost_user"), "{text}");
    }
}
