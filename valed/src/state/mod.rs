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
use vale::ring_port::{
    RingGeometry, RingSink, RingSinkSet, RingSource, ZmonHook, ZmonRing, ZmonWatch,
};
use vale::{DropReason, PortConfig, PortId, Sink, Switch};

use crate::fwd::{Forwarder, Path, Unit};
use crate::vhost::{Relay, VhostPort, VhostSpec};

mod limits;
mod monitors;
mod nics;
mod pipes;
mod ports;
mod register;
mod stats;
mod switches;
mod vm_ports;

use register::{client_fds, if_name};

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

/// A port's RX side: the RX rings its clients bound (none: frames to a
/// port nobody has open are dropped as `DstFull`). The switch holds the
/// same lock (`vale::SharedSink`), taken once per batch; REGISTER and the
/// end of a registration change the set under it.
type SinkSlot = Arc<Mutex<RingSinkSet>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A region that holds ports' rings, and how many use it.
struct Mem {
    region: Region,
    /// Made for a memory id a client named (`vale0:a@N`, `vale-ctl -m N`),
    /// sized for several ports, which may join it. Such a region is one
    /// swap domain: the client may move buffers between all its rings
    /// (netmap's bridge does), so where a buffer sits is the truth
    /// ([`Region::free_ring_swapped`], [`Region::free_if_swapped`]). A
    /// port's own region (the default) is not shared and keeps the
    /// record-based books.
    shared: bool,
    /// Ports whose rings are in it.
    ports: u32,
    /// Registrations bound to rings in it.
    live: u32,
}

/// A port's handle on its region: shared by the ports in it, which the
/// control thread alone locks.
type MemRef = Arc<Mutex<Mem>>;

impl Mem {
    /// A region with its first port: the port's own, or `shared` (made for
    /// a named memory id).
    fn new(region: Region, shared: bool) -> MemRef {
        Arc::new(Mutex::new(Mem {
            region,
            shared,
            ports: 1,
            live: 0,
        }))
    }
}

/// A VALE port: its memory and rings, and where it is attached.
struct Port {
    /// Name without the switch (`vm1`).
    name: String,
    owner: u32,
    persistent: bool,
    mem: MemRef,
    /// Its region's id (`nr_mem_id`), without the lock.
    mem_id: u16,
    layout: PortLayout,
    tx: Vec<usize>,
    rx: Vec<usize>,
    hdr_len: u16,
    /// (switch name, port index) when attached.
    attached: Option<(String, PortId)>,
    sink: SinkSlot,
    /// Registrations bound to the port's rings.
    regs: Vec<RegRec>,
    /// Where a zero-copy monitor hooks into each TX and RX ring.
    zmon_tx: Vec<Arc<ZmonHook>>,
    zmon_rx: Vec<Arc<ZmonHook>>,
}

impl Drop for Port {
    /// A port leaving a shared region gives its rings back to it, so that
    /// others may join; a region of its own goes with it.
    fn drop(&mut self) {
        let mut m = lock(&self.mem);
        if !m.shared {
            return;
        }
        let live = m.live > 0;
        for &off in self.tx.iter().chain(&self.rx) {
            // While other ports' clients run, their slots may hold this
            // port's buffers: free where the slots point. Otherwise the
            // next first registration rewrites every ring anyway.
            let _ = if live {
                m.region.free_ring_swapped(off)
            } else {
                m.region.free_ring(off)
            };
        }
        m.ports = m.ports.saturating_sub(1);
    }
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
    /// A monitor (its record is in `Registry::monitors`).
    monitor: bool,
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
    /// Control connections open at once (each a descriptor of valed's:
    /// without a bound one user could take them all, and every other
    /// user's accept, memfd and eventfd would fail).
    pub connections: usize,
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
            connections: 256,
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
    /// Names of the switches root's ports made, kept after the switch
    /// goes: no other user may make a switch of such a name.
    root_switch_names: std::collections::BTreeSet<String>,
    /// Ports by key: `valeX:Y` for ephemeral ones, `Y` for persistent ones.
    ports: BTreeMap<String, Port>,
    /// Where the search for a free memory id starts.
    next_mem_id: u16,
    /// Ports a region made for a named memory id holds (`--mem-ports`).
    pub mem_ports: u32,
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
    /// NIC ports by interface name.
    nics: BTreeMap<String, nics::NicPort>,
    /// Monitor registrations by connection id.
    monitors: BTreeMap<u64, monitors::MonitorRec>,
    /// Zero-copy monitor registrations by connection id.
    zmons: BTreeMap<u64, monitors::ZmonRec>,
    next_unit: u64,
    /// Where vhost-user ports are saved, to come back after a restart.
    pub state_file: Option<std::path::PathBuf>,
    /// Where tenants' vhost-user sockets live (`--vhost-dir`).
    pub vhost_dir: std::path::PathBuf,
    /// The group that may connect to root's listening VM sockets
    /// (`--vm-socket-group`); None: root alone.
    pub vm_socket_group: Option<u32>,
    /// Limits on what one uid other than root may hold.
    pub quotas: Quotas,
    /// Which adapter a NIC gets (`--admode`, netmap's `admode` sysctl).
    pub admode: nic::AdMode,
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
            root_switch_names: Default::default(),
            ports: BTreeMap::new(),
            // Id 1 stays free, as netmap's global region: `@1` and
            // `vale-ctl -m 1` name a shared region, never a port's own.
            next_mem_id: 2,
            mem_ports: 4,
            fwd,
            next_fwd: 0,
            default_slots: 1024,
            just_created: None,
            huge_pages: false,
            pipes: BTreeMap::new(),
            next_pipe: 0,
            vhost: BTreeMap::new(),
            nics: BTreeMap::new(),
            monitors: BTreeMap::new(),
            zmons: BTreeMap::new(),
            next_unit: 1 << 62,
            state_file: None,
            vhost_dir: std::path::PathBuf::from("/run/vale/vhost"),
            vm_socket_group: None,
            quotas: Quotas::default(),
            admode: nic::AdMode::Best,
            vhost_inline: false,
        }
    }

    /// What the control thread does once a second besides requests.
    pub fn housekeeping(&mut self) {
        self.check_nics();
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
}
