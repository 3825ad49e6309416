//! Fake guest: a vhost-user frontend driving a virtio-net device over a unix
//! socket, without a VM.
//!
//! Guest memory lives in memfds (one per memory region), mapped at guest
//! physical addresses starting at [`GUEST_MEM_BASE`] (so that address 0 is
//! outside guest memory). The split virtqueues are built by hand: every queue
//! gets its descriptor table, avail ring and used ring at fixed offsets at the
//! start of the first region; the rest of guest memory is a bump allocator of
//! buffers that are recycled once their chain comes back on the used ring.
//!
//! Queue numbering follows virtio-net: queue `2 * qp` is the RX queue of pair
//! `qp`, queue `2 * qp + 1` its TX queue.
//!
//! All accesses to guest memory go through vm-memory (volatile copies, atomic
//! loads and stores for the ring indexes), with the fences the virtio spec asks
//! for, since the backend is another thread (or process) touching the same
//! memory concurrently.
//!
//! Anything odd the device does (used ids that are not in flight, used
//! lengths larger than the buffers, a bad `num_buffers`) is recorded in
//! [`FakeGuest::violations`] rather than panicking, so tests can assert on it.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::{VIRTIO_F_IN_ORDER, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF};
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};
use vmm_sys_util::eventfd::EventFd;

pub mod mem_queue;
pub mod vm2vm;

/// Guest physical address of the first byte of guest memory.
pub const GUEST_MEM_BASE: u64 = 0x10_0000;
/// Size of `struct virtio_net_hdr_v1` (with `num_buffers`).
pub const VIRTIO_NET_HDR_LEN: usize = crate::VNET_HDR_LEN;
/// `VHOST_USER_F_PROTOCOL_FEATURES`.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u32 = 30;

const PAGE: u64 = 4096;
const ALLOC_ALIGN: u64 = 64;
const ALLOC_MIN: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest single wait on a call eventfd before looking at the used ring
/// again (for backends that do not signal).
const POLL_SLICE: Duration = Duration::from_millis(1);

/// How the fake guest is set up.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    /// Ack `VIRTIO_NET_F_MRG_RXBUF` if offered.
    pub mrg_rxbuf: bool,
    /// Ack `VIRTIO_RING_F_EVENT_IDX` if offered.
    pub event_idx: bool,
    /// Ack `VIRTIO_RING_F_INDIRECT_DESC` if offered, and then put every chain
    /// in an indirect table.
    pub indirect: bool,
    /// Size of every virtqueue (a power of two, at most 32768).
    pub queue_size: u16,
    /// Number of RX/TX queue pairs; `VIRTIO_NET_F_MQ` is acked when > 1.
    pub queue_pairs: u16,
    /// Total guest memory, split evenly over `regions`.
    pub mem_size: usize,
    /// Number of memory regions (separate memfd mappings).
    pub regions: usize,
    /// Gap, in bytes, between consecutive regions in guest physical space
    /// (0: adjacent regions). Rounded up to a page.
    pub region_gap: u64,
    /// More virtio feature bits to ack if offered (CSUM, GUEST_CSUM, TSO...).
    pub features_extra: u64,
    /// The order of the set-up messages.
    pub handshake: Handshake,
}

/// The order in which the fake guest sets the device up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Handshake {
    /// The `vhost` crate's frontend order: features first, then memory,
    /// then each queue, then SET_VRING_ENABLE.
    #[default]
    Crate,
    /// QEMU 7.2's order, as recorded in `shared/qemu-7.2-vhost-user-trace.txt`:
    /// SET_VRING_CALL/ERR and rounds of SET_VRING_ENABLE before
    /// SET_FEATURES; memory by ADD_MEM_REG, repeated (same region) for
    /// every queue pair; SET_FEATURES repeated per pair; kicks without any
    /// SET_VRING_ENABLE after them for one pair, a final enable round for
    /// several. Sent raw (the crate's frontend refuses that order); the
    /// frontend object is kept for later requests that need no features.
    Qemu72,
}

impl Default for GuestConfig {
    fn default() -> Self {
        GuestConfig {
            mrg_rxbuf: false,
            event_idx: false,
            indirect: false,
            queue_size: 256,
            queue_pairs: 1,
            mem_size: 16 << 20,
            regions: 1,
            region_gap: 0,
            features_extra: 0,
            handshake: Handshake::Crate,
        }
    }
}

/// A frame taken from an RX queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxFrame {
    /// The `virtio_net_hdr_v1` the device wrote (zero-padded if the device
    /// wrote fewer than 12 bytes).
    pub hdr: [u8; VIRTIO_NET_HDR_LEN],
    /// The frame after the header (reassembled over all merged buffers).
    pub frame: Vec<u8>,
    /// Number of used buffers the frame took (`num_buffers`, 1 without
    /// mergeable buffers).
    pub num_buffers: u16,
    /// Sum of the used lengths of all its buffers.
    pub used_len: u64,
}

/// Counters of one virtqueue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestQueueStats {
    /// The avail idx published by the guest.
    pub avail_idx: u16,
    /// The used idx as the device last wrote it.
    pub used_idx: u16,
    /// Used entries the guest has consumed.
    pub last_used: u16,
    /// Kicks written to the kick eventfd.
    pub kicks: u64,
    /// Kicks skipped because the device asked not to be notified
    /// (`VRING_USED_F_NO_NOTIFY`, or `avail_event` with EVENT_IDX).
    pub kicks_suppressed: u64,
    /// Calls (interrupts) read from the call eventfd.
    pub calls: u64,
    /// Chains made available and not yet returned.
    pub inflight: usize,
}

#[derive(Debug, Default)]
struct Chain {
    /// Main descriptor-table indexes this chain owns.
    descs: Vec<u16>,
    /// Buffers in chain order: (gpa, len).
    segs: Vec<(u64, u32)>,
    /// Allocations to give back: (gpa, size class).
    allocs: Vec<(u64, usize)>,
    /// Sum of the segment lengths.
    capacity: u64,
}

#[derive(Debug)]
struct Vq {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    kick: EventFd,
    call: EventFd,
    free: Vec<u16>,
    chains: Vec<Option<Chain>>,
    /// Shadow of avail->idx, including entries not yet published.
    avail_idx: u16,
    /// avail->idx as last stored in guest memory.
    published: u16,
    last_used: u16,
    kicks: u64,
    kicks_suppressed: u64,
    last_kick_needed: Option<bool>,
    calls: u64,
    reaped_pending: usize,
    last_tx_gpa: u64,
    suppress_calls: bool,
    /// Heads made available and not yet used, oldest first.
    order: std::collections::VecDeque<u16>,
}

impl Vq {
    fn new(size: u16, desc: u64, avail: u64, used: u64) -> io::Result<Vq> {
        Ok(Vq {
            size,
            desc,
            avail,
            used,
            kick: EventFd::new(libc::EFD_NONBLOCK)?,
            call: EventFd::new(libc::EFD_NONBLOCK)?,
            free: (0..size).rev().collect(),
            chains: (0..size).map(|_| None).collect(),
            avail_idx: 0,
            published: 0,
            last_used: 0,
            kicks: 0,
            kicks_suppressed: 0,
            last_kick_needed: None,
            calls: 0,
            reaped_pending: 0,
            last_tx_gpa: 0,
            suppress_calls: false,
            order: std::collections::VecDeque::new(),
        })
    }

    fn used_event_gpa(&self) -> u64 {
        self.avail + 4 + 2 * u64::from(self.size)
    }

    fn avail_event_gpa(&self) -> u64 {
        self.used + 4 + 8 * u64::from(self.size)
    }

    fn inflight(&self) -> usize {
        self.chains.iter().filter(|c| c.is_some()).count()
    }
}

#[derive(Debug)]
struct Arena {
    start: u64,
    end: u64,
    next: u64,
}

/// Bump allocator over the guest regions with per-size-class free lists.
#[derive(Debug, Default)]
struct Allocator {
    arenas: Vec<Arena>,
    free: Vec<(usize, Vec<u64>)>,
    force: Option<usize>,
}

impl Allocator {
    fn class(size: usize) -> usize {
        size.max(ALLOC_MIN).next_power_of_two()
    }

    fn alloc(&mut self, size: usize) -> Option<(u64, usize)> {
        let class = Self::class(size);
        let range = self
            .force
            .and_then(|i| self.arenas.get(i))
            .map(|a| (a.start, a.end));
        if let Some((_, list)) = self.free.iter_mut().find(|(c, _)| *c == class) {
            let pos = match range {
                None => list.len().checked_sub(1),
                Some((s, e)) => list.iter().rposition(|&g| g >= s && g < e),
            };
            if let Some(p) = pos {
                return Some((list.swap_remove(p), class));
            }
        }
        for (i, a) in self.arenas.iter_mut().enumerate() {
            if self.force.is_some_and(|f| f != i) {
                continue;
            }
            let at = align_up(a.next, ALLOC_ALIGN);
            if at.checked_add(class as u64).is_some_and(|e| e <= a.end) {
                a.next = at + class as u64;
                return Some((at, class));
            }
        }
        None
    }

    fn free(&mut self, gpa: u64, class: usize) {
        if !self.arenas.iter().any(|a| gpa >= a.start && gpa < a.end) {
            return; // its region was removed
        }
        match self.free.iter_mut().find(|(c, _)| *c == class) {
            Some((_, list)) => list.push(gpa),
            None => self.free.push((class, vec![gpa])),
        }
    }

    fn add_arena(&mut self, start: u64, end: u64) {
        self.arenas.push(Arena {
            start,
            end,
            next: start,
        });
        self.arenas.sort_by_key(|a| a.start);
    }

    fn remove_arena(&mut self, start: u64) {
        if let Some(pos) = self.arenas.iter().position(|a| a.start == start) {
            let a = self.arenas.remove(pos);
            for (_, list) in &mut self.free {
                list.retain(|&g| g < a.start || g >= a.end);
            }
        }
    }
}

#[derive(Debug)]
enum Mode {
    Connect(PathBuf),
    Accept(UnixListener),
}

/// A listening socket for a backend in "client" mode: bind first, start the
/// backend, then [`GuestListener::accept`].
#[derive(Debug)]
pub struct GuestListener {
    listener: UnixListener,
    path: PathBuf,
}

impl GuestListener {
    /// Binds `path` (removing a stale file there first).
    pub fn bind(path: &Path) -> io::Result<GuestListener> {
        let _ = std::fs::remove_file(path);
        Ok(GuestListener {
            listener: UnixListener::bind(path)?,
            path: path.to_path_buf(),
        })
    }

    /// The bound path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits (up to 10 s) for one backend connection, then sets the device
    /// up as [`FakeGuest::connect`] does.
    pub fn accept(self, cfg: GuestConfig) -> io::Result<FakeGuest> {
        let stream = accept_timeout(&self.listener, ACCEPT_TIMEOUT)?;
        let mut guest = FakeGuest::new(cfg, Mode::Accept(self.listener))?;
        guest.setup(stream, true)?;
        Ok(guest)
    }
}

/// A vhost-user frontend with hand-built split virtqueues over memfd memory.
pub struct FakeGuest {
    cfg: GuestConfig,
    mode: Mode,
    frontend: Option<Frontend>,
    mem: GuestMemoryMmap<()>,
    alloc: Allocator,
    queues: Vec<Vq>,
    offered_features: u64,
    acked_features: u64,
    offered_protocol: u64,
    acked_protocol: u64,
    mrg: bool,
    event_idx: bool,
    use_indirect: bool,
    in_order: bool,
    repost: bool,
    violations: Vec<String>,
}

impl fmt::Debug for FakeGuest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeGuest")
            .field("cfg", &self.cfg)
            .field("mode", &self.mode)
            .field("connected", &self.frontend.is_some())
            .field("regions", &self.region_ranges())
            .field(
                "acked_features",
                &format_args!("{:#x}", self.acked_features),
            )
            .field(
                "acked_protocol",
                &format_args!("{:#x}", self.acked_protocol),
            )
            .field("queues", &self.queues)
            .field("violations", &self.violations)
            .finish_non_exhaustive()
    }
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

fn vhost_err(what: &str, e: vhost::Error) -> io::Error {
    io::Error::other(format!("vhost-user {what}: {e}"))
}

fn memfd_region(gpa: u64, size: usize) -> io::Result<GuestRegionMmap<()>> {
    // SAFETY: the name is a valid NUL-terminated string and memfd_create has
    // no other precondition; the result is checked below.
    let fd = unsafe { libc::memfd_create(c"vale-fake-guest".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created above and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size as u64)?;
    GuestRegionMmap::from_range(GuestAddress(gpa), size, Some(FileOffset::new(file, 0)))
        .map_err(io::Error::other)
}

fn connect_retry(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

fn accept_timeout(listener: &UnixListener, timeout: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    listener.set_nonblocking(true)?;
    let res = loop {
        match listener.accept() {
            Ok((s, _)) => break Ok(s),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    break Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no backend connected to the fake guest",
                    ));
                }
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    listener.set_nonblocking(false)?;
    let s = res?;
    s.set_nonblocking(false)?;
    Ok(s)
}

/// Waits up to `timeout` for `fd` to become readable.
fn poll_in(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(0, i32::MAX as u128) as i32;
    // SAFETY: `pfd` is a valid pollfd array of length 1 living across the call.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    r > 0 && pfd.revents & libc::POLLIN != 0
}

/// Header flag: the frontend wants an ack (REPLY_ACK).
const NEED_REPLY: u32 = 0x8;

/// vhost-user messages written by hand, for orders the `vhost` crate's
/// frontend will not send.
struct RawFrontend {
    sock: UnixStream,
}

impl RawFrontend {
    fn send(
        &mut self,
        req: vhost::vhost_user::message::FrontendReq,
        flags: u32,
        body: &[u8],
        fds: &[i32],
    ) -> io::Result<()> {
        let mut m = Vec::with_capacity(12 + body.len());
        m.extend_from_slice(&u32::from(req).to_le_bytes());
        m.extend_from_slice(&(1 | flags).to_le_bytes());
        m.extend_from_slice(&(body.len() as u32).to_le_bytes());
        m.extend_from_slice(body);
        // SAFETY: the fds are the fake guest's own, open for the call.
        let owned: Vec<_> = fds
            .iter()
            .map(|&fd| unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
            .collect();
        let n = netmap::sys::send_with_fds(&self.sock, &m, &owned)?;
        if n != m.len() {
            use std::io::Write;
            self.sock.write_all(&m[n..])?;
        }
        Ok(())
    }

    fn reply_u64(&mut self, req: vhost::vhost_user::message::FrontendReq) -> io::Result<u64> {
        use std::io::Read;
        let mut hdr = [0u8; 12];
        self.sock.read_exact(&mut hdr)?;
        let code = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
        if code != u32::from(req) || size != 8 {
            return Err(io::Error::other(format!(
                "reply to {req:?}: code {code} size {size}"
            )));
        }
        let mut v = [0u8; 8];
        self.sock.read_exact(&mut v)?;
        Ok(u64::from_le_bytes(v))
    }

    fn get_u64(&mut self, req: vhost::vhost_user::message::FrontendReq) -> io::Result<u64> {
        self.send(req, 0, &[], &[])?;
        self.reply_u64(req)
    }

    fn vring_state(
        &mut self,
        req: vhost::vhost_user::message::FrontendReq,
        q: usize,
        num: u32,
    ) -> io::Result<()> {
        let mut b = Vec::with_capacity(8);
        b.extend_from_slice(&(q as u32).to_le_bytes());
        b.extend_from_slice(&num.to_le_bytes());
        self.send(req, 0, &b, &[])
    }
}

/// `vring_need_event()` from the virtio spec.
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

impl FakeGuest {
    /// Connects to a backend listening on `path` (retrying for up to 5 s
    /// while the socket is missing or refuses), and sets the device up:
    /// features, protocol features, SET_OWNER, SET_MEM_TABLE, and for every
    /// queue SET_VRING_NUM/ADDR/BASE/CALL/KICK and SET_VRING_ENABLE 1.
    pub fn connect(path: &Path, cfg: GuestConfig) -> io::Result<FakeGuest> {
        let stream = connect_retry(path, CONNECT_TIMEOUT)?;
        let mut guest = FakeGuest::new(cfg, Mode::Connect(path.to_path_buf()))?;
        guest.setup(stream, true)?;
        Ok(guest)
    }

    /// Listens on `listener_path`, accepts one backend connection (waiting up
    /// to 10 s), then sets the device up as [`FakeGuest::connect`] does. When
    /// the backend is started after the socket must exist, use
    /// [`GuestListener::bind`] then [`GuestListener::accept`].
    pub fn accept(listener_path: &Path, cfg: GuestConfig) -> io::Result<FakeGuest> {
        GuestListener::bind(listener_path)?.accept(cfg)
    }

    fn new(cfg: GuestConfig, mode: Mode) -> io::Result<FakeGuest> {
        let inval = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_string());
        if !cfg.queue_size.is_power_of_two() || cfg.queue_size > 32768 {
            return Err(inval("queue_size must be a power of two <= 32768"));
        }
        if cfg.queue_pairs == 0 || cfg.regions == 0 {
            return Err(inval("queue_pairs and regions must be >= 1"));
        }
        let n = u64::from(cfg.queue_size);
        let nq = 2 * usize::from(cfg.queue_pairs);
        let region_size = align_up((cfg.mem_size / cfg.regions) as u64, PAGE);
        let gap = align_up(cfg.region_gap, PAGE);

        // Ring layout at the start of region 0.
        let mut queues = Vec::with_capacity(nq);
        let mut at = GUEST_MEM_BASE;
        for _ in 0..nq {
            let desc = at;
            let avail = desc + 16 * n;
            let used = align_up(avail + 6 + 2 * n, ALLOC_ALIGN);
            queues.push(Vq::new(cfg.queue_size, desc, avail, used)?);
            at = align_up(used + 6 + 8 * n, PAGE);
        }
        if at >= GUEST_MEM_BASE + region_size {
            return Err(inval("the rings do not fit in the first memory region"));
        }

        let mut regions = Vec::with_capacity(cfg.regions);
        let mut alloc = Allocator::default();
        for i in 0..cfg.regions as u64 {
            let start = GUEST_MEM_BASE + i * (region_size + gap);
            regions.push(memfd_region(start, region_size as usize)?);
            let first = if i == 0 { at } else { start };
            alloc.add_arena(first, start + region_size);
        }
        let mem = GuestMemoryMmap::from_regions(regions).map_err(io::Error::other)?;

        Ok(FakeGuest {
            cfg,
            mode,
            frontend: None,
            mem,
            alloc,
            queues,
            offered_features: 0,
            acked_features: 0,
            offered_protocol: 0,
            acked_protocol: 0,
            mrg: false,
            event_idx: false,
            use_indirect: false,
            in_order: false,
            repost: false,
            violations: Vec::new(),
        })
    }

    fn hva(&self, gpa: u64) -> io::Result<u64> {
        self.mem
            .get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(io::Error::other)
    }

    fn region_infos(&self) -> io::Result<Vec<VhostUserMemoryRegionInfo>> {
        self.mem
            .iter()
            .map(|r| {
                VhostUserMemoryRegionInfo::from_guest_region(r).map_err(|e| vhost_err("region", e))
            })
            .collect()
    }

    /// The handshake. `fresh`: vring bases are 0; otherwise (reconnection)
    /// each base is the used idx currently in guest memory.
    fn setup(&mut self, stream: UnixStream, fresh: bool) -> io::Result<()> {
        if self.cfg.handshake == Handshake::Qemu72 {
            return self.setup_qemu72(stream, fresh);
        }
        let nq = self.queues.len();
        let mut fe = Frontend::from_stream(stream, nq as u64);

        let offered = fe
            .get_features()
            .map_err(|e| vhost_err("GET_FEATURES", e))?;
        if offered & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "backend does not offer VIRTIO_F_VERSION_1",
            ));
        }
        let acked = self.want(offered);
        if self.cfg.queue_pairs > 1 && acked & (1 << VIRTIO_NET_F_MQ) == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "backend does not offer VIRTIO_NET_F_MQ",
            ));
        }

        let mut offered_proto = 0;
        let mut acked_proto = 0;
        if acked & (1 << VHOST_USER_F_PROTOCOL_FEATURES) != 0 {
            let proto = fe
                .get_protocol_features()
                .map_err(|e| vhost_err("GET_PROTOCOL_FEATURES", e))?;
            offered_proto = proto.bits();
            let ack = proto
                & (VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);
            fe.set_protocol_features(ack)
                .map_err(|e| vhost_err("SET_PROTOCOL_FEATURES", e))?;
            acked_proto = ack.bits();
            if ack.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if ack.contains(VhostUserProtocolFeatures::MQ) {
                let max = fe
                    .get_queue_num()
                    .map_err(|e| vhost_err("GET_QUEUE_NUM", e))?;
                if max < nq as u64 {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!("backend has {max} queues, the guest wants {nq}"),
                    ));
                }
            }
        }

        fe.set_owner().map_err(|e| vhost_err("SET_OWNER", e))?;
        fe.set_features(acked)
            .map_err(|e| vhost_err("SET_FEATURES", e))?;
        fe.set_mem_table(&self.region_infos()?)
            .map_err(|e| vhost_err("SET_MEM_TABLE", e))?;

        for (i, q) in self.queues.iter().enumerate() {
            let base = self.resume_base(i, fresh)?;
            let config = VringConfigData {
                queue_max_size: q.size,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: self.hva(q.desc)?,
                used_ring_addr: self.hva(q.used)?,
                avail_ring_addr: self.hva(q.avail)?,
                log_addr: None,
            };
            fe.set_vring_num(i, q.size)
                .map_err(|e| vhost_err("SET_VRING_NUM", e))?;
            fe.set_vring_addr(i, &config)
                .map_err(|e| vhost_err("SET_VRING_ADDR", e))?;
            fe.set_vring_base(i, base)
                .map_err(|e| vhost_err("SET_VRING_BASE", e))?;
            fe.set_vring_call(i, &q.call)
                .map_err(|e| vhost_err("SET_VRING_CALL", e))?;
            fe.set_vring_kick(i, &q.kick)
                .map_err(|e| vhost_err("SET_VRING_KICK", e))?;
        }
        if acked & (1 << VHOST_USER_F_PROTOCOL_FEATURES) != 0 {
            for i in 0..nq {
                fe.set_vring_enable(i, true)
                    .map_err(|e| vhost_err("SET_VRING_ENABLE", e))?;
            }
        }

        self.negotiated(offered, acked, offered_proto, acked_proto, fe);
        Ok(())
    }

    /// Records what the handshake settled and keeps the frontend.
    fn negotiated(&mut self, offered: u64, acked: u64, proto: u64, ack_proto: u64, fe: Frontend) {
        self.offered_features = offered;
        self.acked_features = acked;
        self.offered_protocol = proto;
        self.acked_protocol = ack_proto;
        self.mrg = acked & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        self.event_idx = acked & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        self.use_indirect = acked & (1 << VIRTIO_RING_F_INDIRECT_DESC) != 0;
        self.in_order = acked & (1 << VIRTIO_F_IN_ORDER) != 0;
        self.frontend = Some(fe);
    }

    /// Where queue `q` resumes: 0 on a fresh set-up, else the used index
    /// in guest memory (chains made available and not used are processed
    /// again, as QEMU does without inflight tracking).
    fn resume_base(&self, q: usize, fresh: bool) -> io::Result<u16> {
        if fresh {
            return Ok(0);
        }
        self.mem
            .load(GuestAddress(self.queues[q].used + 2), Ordering::Acquire)
            .map(u16::from_le)
            .map_err(io::Error::other)
    }

    /// The features this guest acks out of `offered`.
    fn want(&self, offered: u64) -> u64 {
        let mut want = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VHOST_USER_F_PROTOCOL_FEATURES)
            | self.cfg.features_extra;
        if self.cfg.mrg_rxbuf {
            want |= 1 << VIRTIO_NET_F_MRG_RXBUF;
        }
        if self.cfg.event_idx {
            want |= 1 << VIRTIO_RING_F_EVENT_IDX;
        }
        if self.cfg.indirect {
            want |= 1 << VIRTIO_RING_F_INDIRECT_DESC;
        }
        if self.cfg.queue_pairs > 1 {
            want |= 1 << VIRTIO_NET_F_MQ;
        }
        offered & want
    }

    /// [`Handshake::Qemu72`], message for message.
    fn setup_qemu72(&mut self, stream: UnixStream, fresh: bool) -> io::Result<()> {
        use vhost::vhost_user::message::FrontendReq as R;
        let mut raw = RawFrontend {
            sock: stream.try_clone()?,
        };
        let nq = self.queues.len();
        let pairs = nq / 2;
        let offered = raw.get_u64(R::GET_FEATURES)?;
        let proto = raw.get_u64(R::GET_PROTOCOL_FEATURES)?;
        let ack_proto = proto
            & (VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
                .bits();
        raw.send(R::SET_PROTOCOL_FEATURES, 0, &ack_proto.to_le_bytes(), &[])?;
        if pairs > 1 {
            let max = raw.get_u64(R::GET_QUEUE_NUM)?;
            if max < nq as u64 {
                return Err(io::Error::other(format!("backend has {max} queues")));
            }
        }
        raw.get_u64(R::GET_MAX_MEM_SLOTS)?;
        raw.send(R::SET_OWNER, 0, &[], &[])?;
        let acked = self.want(offered);
        let err_fd = EventFd::new(libc::EFD_NONBLOCK)?;
        for p in 0..pairs {
            if p > 0 {
                raw.get_u64(R::GET_FEATURES)?;
                raw.get_u64(R::GET_PROTOCOL_FEATURES)?;
                raw.send(R::SET_PROTOCOL_FEATURES, 0, &ack_proto.to_le_bytes(), &[])?;
                raw.get_u64(R::GET_MAX_MEM_SLOTS)?;
            }
            raw.get_u64(R::GET_FEATURES)?;
            for q in [2 * p, 2 * p + 1] {
                let idx = (q as u64).to_le_bytes();
                raw.send(
                    R::SET_VRING_CALL,
                    0,
                    &idx,
                    &[self.queues[q].call.as_raw_fd()],
                )?;
                raw.send(R::SET_VRING_ERR, 0, &idx, &[err_fd.as_raw_fd()])?;
            }
        }
        // Enable rounds before SET_FEATURES: pair 0 on, the others off.
        for _ in 0..5 {
            for q in 0..nq {
                raw.vring_state(R::SET_VRING_ENABLE, q, u32::from(q < 2))?;
            }
        }
        let regions = self.region_infos()?;
        for p in 0..pairs {
            raw.send(R::SET_FEATURES, 0, &acked.to_le_bytes(), &[])?;
            for r in &regions {
                let mut body = Vec::with_capacity(40);
                body.extend_from_slice(&0u64.to_le_bytes());
                for v in [
                    r.guest_phys_addr,
                    r.memory_size,
                    r.userspace_addr,
                    r.mmap_offset,
                ] {
                    body.extend_from_slice(&v.to_le_bytes());
                }
                raw.send(R::ADD_MEM_REG, NEED_REPLY, &body, &[r.mmap_handle])?;
                let ack = raw.reply_u64(R::ADD_MEM_REG)?;
                if ack != 0 {
                    return Err(io::Error::other(format!("ADD_MEM_REG refused ({ack})")));
                }
            }
            for q in [2 * p, 2 * p + 1] {
                let base = self.resume_base(q, fresh)?;
                let vq = &self.queues[q];
                raw.vring_state(R::SET_VRING_NUM, q, u32::from(vq.size))?;
                raw.vring_state(R::SET_VRING_BASE, q, u32::from(base))?;
                let mut addr = Vec::with_capacity(40);
                addr.extend_from_slice(&(q as u32).to_le_bytes());
                addr.extend_from_slice(&0u32.to_le_bytes());
                for v in [
                    self.hva(vq.desc)?,
                    self.hva(vq.used)?,
                    self.hva(vq.avail)?,
                    0,
                ] {
                    addr.extend_from_slice(&v.to_le_bytes());
                }
                raw.send(R::SET_VRING_ADDR, 0, &addr, &[])?;
                let idx = (q as u64).to_le_bytes();
                raw.send(R::SET_VRING_KICK, 0, &idx, &[vq.kick.as_raw_fd()])?;
                raw.send(R::SET_VRING_CALL, 0, &idx, &[vq.call.as_raw_fd()])?;
            }
        }
        if pairs > 1 {
            for on in [false, true] {
                for q in 0..nq {
                    raw.vring_state(R::SET_VRING_ENABLE, q, u32::from(on || q < 2))?;
                }
            }
        }
        self.negotiated(
            offered,
            acked,
            proto,
            ack_proto,
            Frontend::from_stream(stream, nq as u64),
        );
        Ok(())
    }

    /// Closes the vhost-user socket (guest memory and rings stay as they are).
    pub fn disconnect(&mut self) {
        self.frontend = None;
    }

    /// Whether the vhost-user socket is open.
    pub fn is_connected(&self) -> bool {
        self.frontend.is_some()
    }

    /// Closes the socket if open, then connects again (or, for a guest made by
    /// [`FakeGuest::accept`], accepts the next backend connection on the same
    /// listener) and redoes the set-up, with every vring base set to the used
    /// idx currently in guest memory (so chains made available but not yet
    /// used are processed again, as QEMU does without inflight tracking).
    pub fn reconnect(&mut self) -> io::Result<()> {
        self.frontend = None;
        let stream = match &self.mode {
            Mode::Connect(path) => connect_retry(path, CONNECT_TIMEOUT)?,
            Mode::Accept(listener) => accept_timeout(listener, ACCEPT_TIMEOUT)?,
        };
        self.setup(stream, false)
    }

    /// The vhost-user frontend, for tests that send messages of their own.
    ///
    /// # Panics
    /// If disconnected.
    pub fn frontend(&mut self) -> &mut Frontend {
        self.frontend.as_mut().expect("fake guest is disconnected")
    }

    fn fe(&mut self) -> io::Result<&mut Frontend> {
        self.frontend
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "fake guest disconnected"))
    }

    /// GET_VRING_BASE on queue `queue_index` (which stops that ring).
    pub fn get_vring_base(&mut self, queue_index: usize) -> io::Result<u32> {
        self.fe()?
            .get_vring_base(queue_index)
            .map_err(|e| vhost_err("GET_VRING_BASE", e))
    }

    /// SET_VRING_ENABLE on queue `queue_index`.
    pub fn set_vring_enable(&mut self, queue_index: usize, enable: bool) -> io::Result<()> {
        self.fe()?
            .set_vring_enable(queue_index, enable)
            .map_err(|e| vhost_err("SET_VRING_ENABLE", e))
    }

    /// The configuration the guest was made with.
    pub fn config(&self) -> &GuestConfig {
        &self.cfg
    }

    /// Virtio features the backend offered.
    pub fn offered_features(&self) -> u64 {
        self.offered_features
    }

    /// Virtio features acked.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// vhost-user protocol features the backend offered.
    pub fn offered_protocol_features(&self) -> u64 {
        self.offered_protocol
    }

    /// vhost-user protocol features acked.
    pub fn acked_protocol_features(&self) -> u64 {
        self.acked_protocol
    }

    /// Whether `VIRTIO_NET_F_MRG_RXBUF` was negotiated.
    pub fn mrg_rxbuf(&self) -> bool {
        self.mrg
    }

    /// Whether `VIRTIO_RING_F_EVENT_IDX` was negotiated.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Whether `VIRTIO_F_IN_ORDER` was negotiated: then every used entry
    /// that is not the oldest chain in flight is a violation.
    pub fn in_order(&self) -> bool {
        self.in_order
    }

    /// Whether chains are put in indirect tables.
    pub fn uses_indirect(&self) -> bool {
        self.use_indirect
    }

    /// Puts (or stops putting) chains in indirect tables, whatever was
    /// negotiated (true without INDIRECT_DESC negotiated is a hostile guest).
    pub fn set_use_indirect(&mut self, on: bool) {
        self.use_indirect = on;
    }

    /// Makes [`FakeGuest::recv`] post every consumed RX buffer again.
    pub fn set_repost(&mut self, on: bool) {
        self.repost = on;
    }

    /// Restricts buffer allocation to memory region `i` (in guest address
    /// order), or lifts the restriction with `None`.
    pub fn set_alloc_region(&mut self, i: Option<usize>) {
        self.alloc.force = i;
    }

    /// Protocol violations seen so far from the device.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap<()> {
        &self.mem
    }

    /// (guest physical address, size) of every memory region, in address
    /// order.
    pub fn region_ranges(&self) -> Vec<(u64, u64)> {
        self.mem
            .iter()
            .map(|r| (r.start_addr().0, r.len()))
            .collect()
    }

    /// Size of every virtqueue.
    pub fn queue_size(&self) -> u16 {
        self.cfg.queue_size
    }

    /// Number of virtqueues (2 per pair).
    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// Guest address of the descriptor table of queue `queue_index`.
    pub fn desc_table_gpa(&self, queue_index: usize) -> u64 {
        self.queues[queue_index].desc
    }

    /// Guest address of the avail ring of queue `queue_index`.
    pub fn avail_ring_gpa(&self, queue_index: usize) -> u64 {
        self.queues[queue_index].avail
    }

    /// Guest address of the used ring of queue `queue_index`.
    pub fn used_ring_gpa(&self, queue_index: usize) -> u64 {
        self.queues[queue_index].used
    }

    /// Allocates `size` bytes of guest memory (never given back), e.g. for a
    /// hand-made indirect table. `None` when memory is exhausted.
    pub fn alloc(&mut self, size: usize) -> Option<u64> {
        self.alloc.alloc(size).map(|(g, _)| g)
    }

    /// Writes `data` into guest memory at `gpa` (may span adjacent regions).
    ///
    /// # Panics
    /// If the range is not all guest memory.
    pub fn write_guest(&mut self, gpa: u64, data: &[u8]) {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .expect("write_guest outside guest memory");
    }

    /// Reads `len` bytes of guest memory at `gpa`.
    ///
    /// # Panics
    /// If the range is not all guest memory.
    pub fn read_guest(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem
            .read_slice(&mut v, GuestAddress(gpa))
            .expect("read_guest outside guest memory");
        v
    }

    /// Guest address of the header of the last frame sent on TX of pair `qp`.
    pub fn last_tx_gpa(&self, qp: u16) -> u64 {
        self.queues[tx(qp)].last_tx_gpa
    }

    fn ld16(&self, gpa: u64, order: Ordering) -> u16 {
        u16::from_le(
            self.mem
                .load(GuestAddress(gpa), order)
                .expect("ring outside guest memory"),
        )
    }

    fn st16(&self, gpa: u64, v: u16, order: Ordering) {
        self.mem
            .store(v.to_le(), GuestAddress(gpa), order)
            .expect("ring outside guest memory");
    }

    fn ld32(&self, gpa: u64, order: Ordering) -> u32 {
        u32::from_le(
            self.mem
                .load(GuestAddress(gpa), order)
                .expect("ring outside guest memory"),
        )
    }

    fn write_desc(&self, table: u64, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&d, GuestAddress(table + 16 * u64::from(idx)))
            .expect("descriptor outside guest memory");
    }

    /// The used idx of queue `queue_index` as the device last wrote it.
    pub fn used_idx(&self, queue_index: usize) -> u16 {
        self.ld16(self.queues[queue_index].used + 2, Ordering::Acquire)
    }

    /// The used idx of the RX queue of pair `qp`.
    pub fn rx_used_idx(&self, qp: u16) -> u16 {
        self.used_idx(rx(qp))
    }

    /// The used idx of the TX queue of pair `qp`.
    pub fn tx_used_idx(&self, qp: u16) -> u16 {
        self.used_idx(tx(qp))
    }

    /// Counters of queue `queue_index`.
    pub fn stats(&self, queue_index: usize) -> GuestQueueStats {
        let q = &self.queues[queue_index];
        GuestQueueStats {
            avail_idx: q.published,
            used_idx: self.used_idx(queue_index),
            last_used: q.last_used,
            kicks: q.kicks,
            kicks_suppressed: q.kicks_suppressed,
            calls: q.calls,
            inflight: q.inflight(),
        }
    }

    /// Kicks written so far on queue `queue_index`.
    pub fn kicks(&self, queue_index: usize) -> u64 {
        self.queues[queue_index].kicks
    }

    /// Calls (interrupts) seen so far on queue `queue_index` (drains its call
    /// eventfd first).
    pub fn calls(&mut self, queue_index: usize) -> u64 {
        self.drain_call(queue_index);
        self.queues[queue_index].calls
    }

    /// Whether the last publication on queue `queue_index` needed a kick
    /// (`None` before the first one).
    pub fn last_kick_needed(&self, queue_index: usize) -> Option<bool> {
        self.queues[queue_index].last_kick_needed
    }

    /// RX buffers currently posted on pair `qp`.
    pub fn rx_posted(&self, qp: u16) -> usize {
        self.queues[rx(qp)].inflight()
    }

    /// TX chains sent on pair `qp` and not yet reaped.
    pub fn tx_inflight(&self, qp: u16) -> usize {
        self.queues[tx(qp)].inflight()
    }

    fn drain_call(&mut self, qi: usize) -> u64 {
        let q = &mut self.queues[qi];
        match q.call.read() {
            Ok(v) => {
                q.calls += v;
                v
            }
            Err(_) => 0,
        }
    }

    /// Writes the kick eventfd of queue `queue_index`, whatever the device
    /// asked.
    pub fn kick(&mut self, queue_index: usize) {
        let q = &mut self.queues[queue_index];
        q.kick.write(1).expect("kick eventfd");
        q.kicks += 1;
    }

    /// Asks the device not to interrupt on queue `queue_index` (avail flag
    /// `VRING_AVAIL_F_NO_INTERRUPT`, or with EVENT_IDX a `used_event` far
    /// behind), or to interrupt again.
    pub fn suppress_calls(&mut self, queue_index: usize, suppress: bool) {
        self.queues[queue_index].suppress_calls = suppress;
        let q = &self.queues[queue_index];
        let flags = if suppress && !self.event_idx {
            VRING_AVAIL_F_NO_INTERRUPT as u16
        } else {
            0
        };
        self.st16(q.avail, flags, Ordering::Release);
        self.update_used_event(queue_index);
    }

    fn update_used_event(&self, qi: usize) {
        if !self.event_idx {
            return;
        }
        let q = &self.queues[qi];
        let ev = if q.suppress_calls {
            q.last_used.wrapping_sub(1)
        } else {
            q.last_used
        };
        self.st16(q.used_event_gpa(), ev, Ordering::Release);
        fence(Ordering::SeqCst);
    }

    /// Overwrites avail->idx of queue `queue_index` (hostile: the entries
    /// between the old and the new value are whatever is in the ring). Does
    /// not kick.
    pub fn set_avail_idx(&mut self, queue_index: usize, idx: u16) {
        let q = &mut self.queues[queue_index];
        q.avail_idx = idx;
        q.published = idx;
        let a = q.avail + 2;
        fence(Ordering::Release);
        self.st16(a, idx, Ordering::Release);
    }

    fn push_avail(&mut self, qi: usize, head: u16) {
        let q = &mut self.queues[qi];
        let slot = q.avail + 4 + 2 * u64::from(q.avail_idx % q.size);
        q.avail_idx = q.avail_idx.wrapping_add(1);
        q.order.push_back(head);
        self.st16(slot, head, Ordering::Relaxed);
    }

    /// Publishes the avail idx, then kicks if the device wants it.
    fn publish(&mut self, qi: usize) {
        let (old, new, avail, avail_event, used) = {
            let q = &self.queues[qi];
            (
                q.published,
                q.avail_idx,
                q.avail,
                q.avail_event_gpa(),
                q.used,
            )
        };
        if old == new {
            return;
        }
        // Descriptors and ring entries before the index.
        fence(Ordering::Release);
        self.st16(avail + 2, new, Ordering::Release);
        // The index before reading the device's suppression state.
        fence(Ordering::SeqCst);
        let needed = if self.event_idx {
            need_event(self.ld16(avail_event, Ordering::Acquire), new, old)
        } else {
            self.ld16(used, Ordering::Acquire) & VRING_USED_F_NO_NOTIFY as u16 == 0
        };
        let q = &mut self.queues[qi];
        q.published = new;
        q.last_kick_needed = Some(needed);
        if needed {
            q.kick.write(1).expect("kick eventfd");
            q.kicks += 1;
        } else {
            q.kicks_suppressed += 1;
        }
    }

    fn free_chain(&mut self, chain: Chain, qi: usize) {
        for (g, c) in chain.allocs {
            self.alloc.free(g, c);
        }
        self.queues[qi].free.extend(chain.descs);
    }

    /// Builds a chain of buffers of `lens` bytes (filled from `data` when
    /// given, device-writable otherwise), returns its head.
    fn build_chain(&mut self, qi: usize, lens: &[u32], data: Option<&[u8]>) -> Option<u16> {
        let k = lens.len();
        if k == 0 || k > usize::from(u16::MAX) {
            return None;
        }
        let indirect = self.use_indirect;
        let need = if indirect { 1 } else { k };
        if self.queues[qi].free.len() < need {
            return None;
        }
        let mut chain = Chain::default();
        let mut off = 0usize;
        for &len in lens {
            let Some((g, c)) = self.alloc.alloc(len as usize) else {
                self.free_chain(chain, qi);
                return None;
            };
            chain.allocs.push((g, c));
            chain.segs.push((g, len));
            chain.capacity += u64::from(len);
            if let Some(d) = data {
                let l = len as usize;
                self.mem
                    .write_slice(&d[off..off + l], GuestAddress(g))
                    .expect("buffer outside guest memory");
                off += l;
            }
        }
        let wflag = if data.is_none() {
            VRING_DESC_F_WRITE as u16
        } else {
            0
        };
        let next_flag = VRING_DESC_F_NEXT as u16;
        let head;
        if indirect {
            let Some((table, c)) = self.alloc.alloc(16 * k) else {
                self.free_chain(chain, qi);
                return None;
            };
            chain.allocs.push((table, c));
            for (i, &(g, len)) in chain.segs.iter().enumerate() {
                let last = i + 1 == k;
                let flags = wflag | if last { 0 } else { next_flag };
                let next = if last { 0 } else { (i + 1) as u16 };
                self.write_desc(table, i as u16, g, len, flags, next);
            }
            let q = &mut self.queues[qi];
            head = q.free.pop().expect("checked above");
            let desc = q.desc;
            chain.descs.push(head);
            self.write_desc(
                desc,
                head,
                table,
                (16 * k) as u32,
                VRING_DESC_F_INDIRECT as u16,
                0,
            );
        } else {
            let q = &mut self.queues[qi];
            let idxs: Vec<u16> = (0..k).map(|_| q.free.pop().expect("checked")).collect();
            let desc = q.desc;
            head = idxs[0];
            for (i, &(g, len)) in chain.segs.iter().enumerate() {
                let last = i + 1 == k;
                let flags = wflag | if last { 0 } else { next_flag };
                let next = if last { 0 } else { idxs[i + 1] };
                self.write_desc(desc, idxs[i], g, len, flags, next);
            }
            chain.descs = idxs;
        }
        self.queues[qi].chains[usize::from(head)] = Some(chain);
        Some(head)
    }

    /// Posts 64 RX chains of 2048 bytes on every queue pair and reposts
    /// each as it is used: a guest that always has room.
    pub fn post_rx_all(&mut self) {
        self.set_repost(true);
        for qp in 0..self.num_queues() as u16 / 2 {
            assert_eq!(self.post_rx(qp, 64, 2048), 64, "RX chains posted");
        }
    }

    /// Posts `n` RX buffers of `size` bytes each on pair `qp` (one
    /// device-writable descriptor each, inside an indirect table when
    /// indirect descriptors are used), then kicks. Returns how many were
    /// posted (fewer when the ring or guest memory is full).
    pub fn post_rx(&mut self, qp: u16, n: usize, size: u32) -> usize {
        self.post_rx_chains(qp, n, &[size])
    }

    /// Posts `n` RX chains on pair `qp`, each made of descriptors of the
    /// given lengths, then kicks. Returns how many were posted.
    pub fn post_rx_chains(&mut self, qp: u16, n: usize, lens: &[u32]) -> usize {
        let qi = rx(qp);
        let mut posted = 0;
        while posted < n {
            let Some(head) = self.build_chain(qi, lens, None) else {
                break;
            };
            self.push_avail(qi, head);
            posted += 1;
        }
        self.publish(qi);
        posted
    }

    /// Sends one frame on the TX queue of pair `qp`: `hdr` then `frame`,
    /// over descriptors of the lengths in `split` then one for the rest (so
    /// `&[12]` puts the header alone in the first descriptor, `&[]` gives a
    /// single descriptor). Every descriptor gets its own buffer. Kicks if the
    /// device wants it. Returns false (sending nothing) if the TX ring or
    /// guest memory is full, after reaping completed TX chains.
    pub fn send(
        &mut self,
        qp: u16,
        hdr: &[u8; VIRTIO_NET_HDR_LEN],
        frame: &[u8],
        split: &[usize],
    ) -> bool {
        let mut data = Vec::with_capacity(VIRTIO_NET_HDR_LEN + frame.len());
        data.extend_from_slice(hdr);
        data.extend_from_slice(frame);
        let mut lens = Vec::with_capacity(split.len() + 1);
        let mut left = data.len();
        for &s in split {
            let l = s.min(left);
            lens.push(l as u32);
            left -= l;
        }
        if left > 0 || lens.is_empty() {
            lens.push(left as u32);
        }
        self.send_segments(qp, &data, &lens)
    }

    /// Sends `data` (header included) on TX of pair `qp`, over descriptors of
    /// exactly `lens` bytes (which must add up to `data.len()`).
    pub fn send_segments(&mut self, qp: u16, data: &[u8], lens: &[u32]) -> bool {
        assert_eq!(
            lens.iter().map(|&l| l as usize).sum::<usize>(),
            data.len(),
            "segment lengths must add up to the data length"
        );
        let qi = tx(qp);
        let head = match self.build_chain(qi, lens, Some(data)) {
            Some(h) => h,
            None => {
                let n = self.reap_used(qi);
                self.queues[qi].reaped_pending += n;
                match self.build_chain(qi, lens, Some(data)) {
                    Some(h) => h,
                    None => return false,
                }
            }
        };
        let q = &mut self.queues[qi];
        q.last_tx_gpa = q.chains[usize::from(head)]
            .as_ref()
            .and_then(|c| c.segs.first())
            .map_or(0, |s| s.0);
        self.push_avail(qi, head);
        self.publish(qi);
        true
    }

    /// Sends a raw, possibly hostile, chain on TX of pair `qp`: every
    /// `(table index, addr, len, flags, next)` is written into the descriptor
    /// table, `head` is put on the avail ring, and the queue is kicked (if the
    /// device wants it). Free descriptor-table entries named here are
    /// reserved until a used entry with id `head` comes back.
    ///
    /// # Panics
    /// If a table index is not below the queue size.
    pub fn send_raw(&mut self, qp: u16, descs: &[(u16, u64, u32, u16, u16)], head: u16) {
        self.send_raw_on(tx(qp), descs, head);
    }

    /// [`FakeGuest::send_raw`] on any queue (e.g. an RX queue, to post
    /// hostile RX buffers).
    pub fn send_raw_on(
        &mut self,
        queue_index: usize,
        descs: &[(u16, u64, u32, u16, u16)],
        head: u16,
    ) {
        let size = self.queues[queue_index].size;
        let mut chain = Chain::default();
        for &(idx, addr, len, flags, next) in descs {
            assert!(idx < size, "descriptor table index {idx} >= queue size");
            let q = &mut self.queues[queue_index];
            if let Some(p) = q.free.iter().position(|&f| f == idx) {
                q.free.swap_remove(p);
                chain.descs.push(idx);
            }
            let table = q.desc;
            self.write_desc(table, idx, addr, len, flags, next);
        }
        // The buffers, for reading back what the device wrote: follow the
        // chain through the descriptors given here (indirect tables not
        // followed), at most once each.
        let mut at = head;
        for _ in 0..descs.len() {
            let Some(&(_, addr, len, flags, next)) = descs.iter().find(|d| d.0 == at) else {
                break;
            };
            if flags & VRING_DESC_F_INDIRECT as u16 == 0 {
                chain.segs.push((addr, len));
                chain.capacity += u64::from(len);
            }
            if flags & VRING_DESC_F_NEXT as u16 == 0 {
                break;
            }
            at = next;
        }
        if head < size {
            let q = &mut self.queues[queue_index];
            if q.free.contains(&head) {
                q.free.retain(|&f| f != head);
                chain.descs.push(head);
            }
            let slot = &mut q.chains[usize::from(head)];
            if slot.is_none() {
                *slot = Some(chain);
            }
        }
        self.push_avail(queue_index, head);
        self.publish(queue_index);
    }

    fn used_elem(&self, qi: usize, idx: u16) -> (u32, u32) {
        let q = &self.queues[qi];
        let e = q.used + 4 + 8 * u64::from(idx % q.size);
        (
            self.ld32(e, Ordering::Relaxed),
            self.ld32(e + 4, Ordering::Relaxed),
        )
    }

    /// With `VIRTIO_F_IN_ORDER` acked, checks that used `id` of queue
    /// `qi` is the oldest head in flight (a violation otherwise).
    fn used_in_order(&mut self, qi: usize, id: u16) {
        if !self.in_order {
            return;
        }
        let q = &mut self.queues[qi];
        match q.order.front() {
            Some(&f) if f == id => {
                q.order.pop_front();
            }
            oldest => {
                let v = format!(
                    "queue {qi}: used id {id} out of order, {oldest:?} was made available first"
                );
                q.order.retain(|&o| o != id);
                self.violations.push(v);
            }
        }
    }

    /// Takes back every used entry of queue `qi`, freeing the chains.
    fn reap_used(&mut self, qi: usize) -> usize {
        let used_idx = self.used_idx(qi);
        let mut n = 0;
        while self.queues[qi].last_used != used_idx {
            let last = self.queues[qi].last_used;
            let (id, _len) = self.used_elem(qi, last);
            let chain = self.queues[qi]
                .chains
                .get_mut(id as usize)
                .and_then(Option::take);
            match chain {
                Some(c) => {
                    self.used_in_order(qi, id as u16);
                    self.free_chain(c, qi)
                }
                None => self
                    .violations
                    .push(format!("queue {qi}: used id {id} at {last} not in flight")),
            }
            self.queues[qi].last_used = last.wrapping_add(1);
            n += 1;
        }
        self.update_used_event(qi);
        n
    }

    /// Reaps the TX used ring of pair `qp`; returns how many TX chains came
    /// back since the last call.
    pub fn reap_tx(&mut self, qp: u16) -> usize {
        let qi = tx(qp);
        self.drain_call(qi);
        let n = self.reap_used(qi) + self.queues[qi].reaped_pending;
        self.queues[qi].reaped_pending = 0;
        n
    }

    /// Reaps TX of pair `qp` until `n` chains came back or `timeout` passed;
    /// returns how many came back.
    pub fn wait_tx(&mut self, qp: u16, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut got = 0;
        loop {
            got += self.reap_tx(qp);
            let now = Instant::now();
            if got >= n || now >= deadline {
                return got;
            }
            let fd = self.queues[tx(qp)].call.as_raw_fd();
            poll_in(fd, (deadline - now).min(POLL_SLICE));
        }
    }

    fn read_chain(&self, chain: &Chain, len: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len as usize);
        let mut left = len;
        for &(g, l) in &chain.segs {
            if left == 0 {
                break;
            }
            let n = u64::from(l).min(left);
            let start = out.len();
            out.resize(start + n as usize, 0);
            if self
                .mem
                .read_slice(&mut out[start..], GuestAddress(g))
                .is_err()
            {
                out.truncate(start);
                break;
            }
            left -= n;
        }
        out
    }

    /// Takes the used entry at `last_used + k` of RX queue `qi` if it names a
    /// chain in flight: (head, data).
    fn rx_entry(&mut self, qi: usize, k: u16) -> Option<(u16, Vec<u8>, u64)> {
        let at = self.queues[qi].last_used.wrapping_add(k);
        let (id, len) = self.used_elem(qi, at);
        let Some(chain) = self.queues[qi]
            .chains
            .get(id as usize)
            .and_then(Option::as_ref)
        else {
            self.violations
                .push(format!("queue {qi}: used id {id} at {at} not in flight"));
            return None;
        };
        let mut len = u64::from(len);
        if len > chain.capacity {
            self.violations.push(format!(
                "queue {qi}: used len {len} of id {id} > buffer size {}",
                chain.capacity
            ));
            len = chain.capacity;
        }
        let data = self.read_chain(chain, len);
        Some((id as u16, data, len))
    }

    fn try_recv(&mut self, qi: usize) -> Option<RxFrame> {
        loop {
            let used_idx = self.used_idx(qi);
            let ready = used_idx.wrapping_sub(self.queues[qi].last_used);
            if ready == 0 {
                return None;
            }
            let Some((head, first, len)) = self.rx_entry(qi, 0) else {
                let q = &mut self.queues[qi];
                q.last_used = q.last_used.wrapping_add(1);
                continue;
            };
            let mut hdr = [0u8; VIRTIO_NET_HDR_LEN];
            let h = first.len().min(VIRTIO_NET_HDR_LEN);
            hdr[..h].copy_from_slice(&first[..h]);
            if h < VIRTIO_NET_HDR_LEN {
                self.violations.push(format!(
                    "queue {qi}: used len {len} shorter than the virtio-net header"
                ));
            }
            let nb = u16::from_le_bytes([hdr[10], hdr[11]]);
            let nb = if self.mrg {
                if nb == 0 {
                    self.violations
                        .push(format!("queue {qi}: num_buffers 0 with MRG_RXBUF"));
                    1
                } else {
                    nb
                }
            } else {
                if nb != 1 && h == VIRTIO_NET_HDR_LEN {
                    self.violations
                        .push(format!("queue {qi}: num_buffers {nb} without MRG_RXBUF"));
                }
                1
            };
            if nb > ready {
                // The rest of the frame is not there yet.
                return None;
            }
            let mut data = first;
            let mut used_len = len;
            let mut heads = vec![head];
            for k in 1..nb {
                if let Some((hd, d, l)) = self.rx_entry(qi, k) {
                    data.extend_from_slice(&d);
                    used_len += l;
                    heads.push(hd);
                }
            }
            let q = &mut self.queues[qi];
            q.last_used = q.last_used.wrapping_add(nb);
            let mut reposted = false;
            for hd in heads {
                self.used_in_order(qi, hd);
                if self.repost {
                    self.push_avail(qi, hd);
                    reposted = true;
                } else if let Some(c) = self.queues[qi].chains[usize::from(hd)].take() {
                    self.free_chain(c, qi);
                }
            }
            self.update_used_event(qi);
            if reposted {
                self.publish(qi);
            }
            let frame = data.split_off(h);
            return Some(RxFrame {
                hdr,
                frame,
                num_buffers: nb,
                used_len,
            });
        }
    }

    /// Receives one frame from the RX used ring of pair `qp`, waiting up to
    /// `timeout`: looks at the used idx, then waits on the call eventfd
    /// (in slices of at most 1 ms, so backends that do not signal work too).
    /// With mergeable buffers, reassembles `num_buffers` buffers. Returns
    /// (header bytes, frame bytes).
    pub fn recv(&mut self, qp: u16, timeout: Duration) -> Option<(Vec<u8>, Vec<u8>)> {
        self.recv_frame(qp, timeout)
            .map(|f| (f.hdr.to_vec(), f.frame))
    }

    /// [`FakeGuest::recv`] with the details.
    pub fn recv_frame(&mut self, qp: u16, timeout: Duration) -> Option<RxFrame> {
        let qi = rx(qp);
        let deadline = Instant::now() + timeout;
        loop {
            self.drain_call(qi);
            if let Some(f) = self.try_recv(qi) {
                return Some(f);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let fd = self.queues[qi].call.as_raw_fd();
            poll_in(fd, (deadline - now).min(POLL_SLICE));
        }
    }

    /// Adds a memory region of `size` bytes (rounded up to a page) after the
    /// last one (plus the configured gap) with VHOST_USER_ADD_MEM_REG, which
    /// needs CONFIGURE_MEM_SLOTS negotiated. Returns its index in
    /// [`FakeGuest::region_ranges`].
    pub fn add_region(&mut self, size: usize) -> io::Result<usize> {
        self.require_mem_slots()?;
        let size = align_up(size as u64, PAGE);
        let (last_start, last_len) = *self.region_ranges().last().expect("no regions");
        let start = last_start + last_len + align_up(self.cfg.region_gap, PAGE);
        let region = Arc::new(memfd_region(start, size as usize)?);
        let info = VhostUserMemoryRegionInfo::from_guest_region(&region)
            .map_err(|e| vhost_err("region", e))?;
        self.fe()?
            .add_mem_region(&info)
            .map_err(|e| vhost_err("ADD_MEM_REG", e))?;
        self.mem = self.mem.insert_region(region).map_err(io::Error::other)?;
        self.alloc.add_arena(start, start + size);
        Ok(self
            .region_ranges()
            .iter()
            .position(|r| r.0 == start)
            .expect("just added"))
    }

    /// Removes memory region `i` (not the first one, which holds the rings)
    /// with VHOST_USER_REM_MEM_REG. Buffers still in flight there are the
    /// caller's problem; free buffers there are forgotten.
    pub fn remove_region(&mut self, i: usize) -> io::Result<()> {
        self.require_mem_slots()?;
        if i == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "region 0 holds the rings",
            ));
        }
        let region = self
            .mem
            .iter()
            .nth(i)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no such region"))?;
        let (start, len) = (region.start_addr(), region.len());
        let info = VhostUserMemoryRegionInfo::from_guest_region(region)
            .map_err(|e| vhost_err("region", e))?;
        self.fe()?
            .remove_mem_region(&info)
            .map_err(|e| vhost_err("REM_MEM_REG", e))?;
        let (mem, _) = self
            .mem
            .remove_region(start, len)
            .map_err(io::Error::other)?;
        self.mem = mem;
        self.alloc.remove_arena(start.0);
        if self
            .alloc
            .force
            .is_some_and(|f| f >= self.alloc.arenas.len())
        {
            self.alloc.force = None;
        }
        Ok(())
    }

    fn require_mem_slots(&self) -> io::Result<()> {
        if self.acked_protocol & VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS.bits() == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "CONFIGURE_MEM_SLOTS not negotiated",
            ));
        }
        Ok(())
    }
}

/// Index of the RX queue of pair `qp`.
pub fn rx(qp: u16) -> usize {
    2 * usize::from(qp)
}

/// Index of the TX queue of pair `qp`.
pub fn tx(qp: u16) -> usize {
    2 * usize::from(qp) + 1
}

/// A fresh temporary directory (for sockets), unique per process and call.
pub fn rig_dir(tag: &str) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vale-{tag}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("rig dir");
    dir
}

/// A switch with vhost-user ports and one forwarding thread, in-process:
/// what valed does for VM ports, without valed, for tests and fuzzing.
pub struct Rig {
    /// The switch.
    pub switch: Arc<vale::Switch>,
    /// The ports, in order.
    pub ports: Vec<crate::NetPort>,
    /// Their indexes on the switch.
    pub ids: Vec<vale::PortId>,
    dir: PathBuf,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl fmt::Debug for Rig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rig").field("ports", &self.ids).finish()
    }
}

impl Rig {
    /// `n` ports of `pairs` queue pairs on switch `vale0`, default options.
    pub fn new(n: usize, pairs: u16) -> Rig {
        Rig::with_config(n, pairs, vale::PortConfig::default())
    }

    /// As [`new`](Self::new), each port with options `cfg` (its header
    /// length is forced to 12).
    pub fn with_config(n: usize, pairs: u16, cfg: vale::PortConfig) -> Rig {
        let dir = rig_dir("rig");
        let cfgs = (0..n)
            .map(|i| {
                let mut c =
                    crate::NetConfig::new(&format!("p{i}"), &dir.join(format!("p{i}.sock")));
                c.queue_pairs = pairs;
                c
            })
            .collect();
        Rig::build(dir, cfgs, cfg)
    }

    /// Starts the ports of `cfgs` on switch `vale0` as `vale0:NAME` with
    /// options `cfg` (header length 12), and one forwarding thread over
    /// every TX queue. `dir` is removed when the rig is dropped.
    fn build(dir: PathBuf, cfgs: Vec<crate::NetConfig>, cfg: vale::PortConfig) -> Rig {
        let switch = Arc::new(vale::Switch::new("vale0"));
        let mut ports = Vec::new();
        let mut ids = Vec::new();
        let mut txqs = Vec::new();
        for c in cfgs {
            let name = format!("vale0:{}", c.name);
            let p = crate::NetPort::start(c).expect("start port");
            let pc = vale::PortConfig {
                vnet_hdr_len: crate::VNET_HDR_LEN as u16,
                ..cfg
            };
            let id = switch
                .attach(&name, pc, Box::new(p.rx_sink()))
                .expect("attach");
            for q in 0..p.queue_pairs() {
                txqs.push((id, p.tx_queue(q)));
            }
            ports.push(p);
            ids.push(id);
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sw, st) = (switch.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut sc = vale::Scratch::default();
            let t0 = Instant::now();
            while !st.load(Ordering::Relaxed) {
                let now = t0.elapsed().as_secs() as u32;
                let mut moved = 0;
                for (id, q) in txqs.iter_mut() {
                    moved += sw.forward(*id, q, &mut sc, now).frames;
                }
                if moved == 0 {
                    thread::sleep(Duration::from_micros(20));
                }
            }
        });
        Rig {
            switch,
            ports,
            ids,
            dir,
            stop,
            thread: Some(thread),
        }
    }

    /// Socket of port `i`.
    pub fn socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("p{i}.sock"))
    }

    /// Connects a fake guest to port `i`.
    pub fn guest(&self, i: usize, cfg: GuestConfig) -> FakeGuest {
        FakeGuest::connect(&self.socket(i), cfg).expect("fake guest connects")
    }

    /// Switch counters of port `i`.
    pub fn stats(&self, i: usize) -> vale::PortStats {
        self.switch.stats(self.ids[i]).expect("port")
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.ports.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `n` frames from `a` (TX on pair `qp`) to `b` and checks each
/// arrives on one of `b`'s RX queues byte-exact, one at a time (5 s each),
/// then waits until `a` got every TX chain back. Frame `i` is
/// `frame(to, from, 60 + (i * 97) % 1400, seed + i)`, with a zeroed
/// 12-byte header.
pub fn one_way(
    a: &mut FakeGuest,
    b: &mut FakeGuest,
    qp: u16,
    (from, to): ([u8; 6], [u8; 6]),
    n: u32,
    seed: u32,
) {
    let pairs = b.num_queues() as u16 / 2;
    for i in 0..n {
        let f = frame(to, from, 60 + (i as usize * 97) % 1400, seed + i);
        assert!(
            a.send(qp, &[0; VIRTIO_NET_HDR_LEN], &f, &[12]),
            "TX full at {i}"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let got = loop {
            if let Some((_, g)) = (0..pairs).find_map(|q| b.recv(q, Duration::from_millis(1))) {
                break g;
            }
            assert!(
                Instant::now() < deadline,
                "frame {i} (seed {seed}) on pair {qp} did not arrive; sender {a:?}"
            );
        };
        assert!(got == f, "frame {i} (seed {seed}) on pair {qp} differs");
    }
    wait_for("TX chains back", || {
        a.reap_tx(qp);
        a.tx_inflight(qp) == 0
    });
}

/// An Ethernet frame of `len` bytes from `src` to `dst` whose payload is
/// a pattern seeded by `seed` (IPv4 ethertype, no valid IP header).
pub fn frame(dst: [u8; 6], src: [u8; 6], len: usize, seed: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    while f.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        f.push(x as u8);
    }
    f.truncate(len.max(14));
    f
}

impl Rig {
    /// A rig of ports started from `cfgs` (any name, socket, mode and number
    /// of queue pairs) on switch `vale0`, attached as `vale0:NAME` with
    /// default options (header length 12), one forwarding thread over every
    /// TX queue. Guests connect to (or, in client mode, accept on)
    /// `cfgs[i].socket`, as `rig.ports[i].config().socket` says:
    /// [`Rig::socket`] and [`Rig::guest`] assume [`Rig::new`]'s names.
    pub fn with_ports(cfgs: Vec<crate::NetConfig>) -> Rig {
        Rig::build(rig_dir("rig-ports"), cfgs, vale::PortConfig::default())
    }
}

/// What the vring fuzz target made of one chain popped from the avail ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringChain {
    /// Walked as an RX chain (`rx_bufs`), else as TX (`tx_frags`).
    pub rx: bool,
    /// Its head index, as the avail ring had it.
    pub head: u16,
    /// Descriptors virtio-queue's iterator yielded for it.
    pub descs: usize,
    /// What the backend said: bytes (TX) or capacity (RX), or why not.
    pub result: Result<usize, crate::ChainError>,
}

/// Fuzz target body: descriptor chains → netmap fragments and RX buffers.
///
/// Builds a small guest memory at [`GUEST_MEM_BASE`] (one or two regions,
/// adjacent or with a gap), lays out a split virtqueue in it from `data`,
/// pops every chain with virtio-queue and walks it with the backend's own
/// `chain::tx_frags` or
/// `chain::rx_bufs`. Checks that every
/// fragment and buffer lies inside one guest memory region's host mapping,
/// at the host address of the guest range its descriptor names, that TX
/// fragments read exactly the guest bytes and RX buffers write where they
/// should, that the totals are the descriptor lengths, that a refused
/// chain leaves the output as it was and was refused for a reason it
/// really has, and that every well-formed chain is accepted.
///
/// Input layout (missing bytes read as 0):
/// - `data[0]`, layout: bit 0 a second region; bits 1-2 its size - 1 in
///   pages; bits 3-4 the gap before it in pages; bits 5-6 the queue size
///   (4, 16, 64, 128); bit 7 an avail idx more than a queue ahead.
/// - `data[1]`: descriptors in the main table (mod queue size + 1).
/// - `data[2]`: descriptors in the indirect area (mod 65).
/// - `data[3]`: direction of chain `i` is bit `i % 8` (1: RX).
/// - then 8-byte descriptor records, main table first, then the indirect
///   area ([`GUEST_MEM_BASE`] + 0x1000): `flags`, `next`, `len` (2 bytes
///   LE), `mode`, `offset` (3 bytes LE). `len` gets bits 16-17 from
///   `mode & 3`, and bits 16-31 all set when `mode & 0x3c == 0x3c`. The
///   address by `mode >> 6`: 0 the data area (from [`GUEST_MEM_BASE`] +
///   0x2000, on to a little past the end of memory), 1 the indirect area
///   plus `offset & 0xfff`, 2 `offset` itself, 3 `u64::MAX - offset`.
/// - then one byte per avail ring entry: the head, mod queue size + 2.
pub fn fuzz_vring(data: &[u8]) {
    let _ = fuzz_vring_chains(data);
}

/// [`fuzz_vring`], returning what became of each chain (for checking that
/// seeds reach the paths they are meant for).
pub fn fuzz_vring_chains(data: &[u8]) -> Vec<VringChain> {
    vring_fuzz::run(data)
}

mod vring_fuzz {
    use super::{VringChain, GUEST_MEM_BASE};
    use crate::chain::{rx_bufs, tx_frags, MAX_FRAGS, MAX_FRAME};
    use crate::vring::{HostMap, Ring};
    use crate::ChainError;
    use netmap::abi::NS_MOREFRAG;
    use vale::frag::{DstBuf, Frag};
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{
        Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
        MemoryRegionAddress,
    };

    const PAGE: u64 = 4096;
    const REGION0: u64 = 4 * PAGE;
    const DESC: u64 = GUEST_MEM_BASE;
    const AVAIL: u64 = GUEST_MEM_BASE + 0x800;
    const USED: u64 = GUEST_MEM_BASE + 0xa00;
    const INDIRECT: u64 = GUEST_MEM_BASE + 0x1000;
    const DATA: u64 = GUEST_MEM_BASE + 0x2000;

    type Mem = GuestMemoryMmap<()>;

    fn byte(data: &[u8], i: usize) -> u8 {
        data.get(i).copied().unwrap_or(0)
    }

    /// The byte guest memory holds at `gpa` before the tables are written:
    /// a hash, so that bytes read from the wrong place show.
    fn pattern(gpa: u64) -> u8 {
        (gpa.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
    }

    /// A raw descriptor from an 8-byte record.
    fn record(r: &[u8], span_end: u64) -> [u8; 16] {
        let flags = u16::from(r[0]);
        let next = u16::from(r[1]);
        let mode = r[4];
        let mut len = u32::from(u16::from_le_bytes([r[2], r[3]])) | (u32::from(mode & 3) << 16);
        if mode & 0x3c == 0x3c {
            len |= 0xffff_0000;
        }
        let off = u64::from(u32::from_le_bytes([r[5], r[6], r[7], 0]));
        let addr = match mode >> 6 {
            0 => DATA + off % (span_end - DATA + 0x200),
            1 => INDIRECT + (off & 0xfff),
            2 => off,
            _ => u64::MAX - off,
        };
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        d
    }

    /// Guest range `addr..addr+len` cut at region ends: (gpa, bytes) of
    /// each piece inside memory, and whether all of it is.
    fn pieces(mem: &Mem, addr: u64, len: u32) -> (Vec<(u64, u64)>, bool) {
        let mut out = Vec::new();
        let mut at = addr;
        let mut left = u64::from(len);
        while left > 0 {
            let Some((r, off)) = mem.to_region_addr(GuestAddress(at)) else {
                return (out, false);
            };
            let n = left.min(r.len() - off.0);
            out.push((at, n));
            left -= n;
            match at.checked_add(n) {
                Some(a) => at = a,
                None => return (out, left == 0),
            }
        }
        (out, true)
    }

    /// Fragments a guest range takes: one per region piece, and one per
    /// 65535 bytes of it.
    fn frag_count(p: &[(u64, u64)]) -> usize {
        p.iter()
            .map(|&(_, n)| n.div_ceil(u64::from(u16::MAX)) as usize)
            .sum()
    }

    /// Why a chain must be refused (empty: it is well formed).
    /// Faults of the indirect tables the main chain at `head` points to,
    /// which the reference iterator hides: a table must lie whole inside
    /// one memory region, and be a non-empty multiple of 16 bytes.
    fn table_faults(mem: &Mem, head: u16, qsize: u16) -> Vec<ChainError> {
        let mut f = Vec::new();
        let mut i = head;
        for _ in 0..qsize {
            if i >= qsize {
                break;
            }
            let Ok(d) = mem.read_obj::<Descriptor>(GuestAddress(DESC + 16 * u64::from(i))) else {
                break;
            };
            if d.refers_to_indirect_table() {
                let (a, n) = (d.addr().0, d.len());
                let whole = mem.to_region_addr(d.addr()).is_some_and(|(r, off)| {
                    off.0
                        .checked_add(u64::from(n))
                        .is_some_and(|e| e <= r.len())
                });
                if !whole {
                    f.push(ChainError::OutOfMemory { addr: a, len: n });
                }
                if n == 0 || n % 16 != 0 || d.has_next() {
                    f.push(ChainError::Unterminated);
                }
                break;
            }
            if !d.has_next() {
                break;
            }
            i = d.next();
        }
        f
    }

    fn faults(mem: &Mem, descs: &[Descriptor], rx: bool) -> Vec<ChainError> {
        let mut f = Vec::new();
        match descs.last() {
            None => f.push(ChainError::Empty),
            Some(d) if d.has_next() => f.push(ChainError::Unterminated),
            Some(_) => {}
        }
        let mut total = 0u64;
        let mut frags = 0usize;
        for d in descs {
            if d.is_write_only() != rx {
                f.push(ChainError::Direction);
            }
            if d.len() == 0 {
                f.push(ChainError::ZeroLength);
            }
            total += u64::from(d.len());
            let (p, inside) = pieces(mem, d.addr().0, d.len());
            frags += frag_count(&p);
            if !inside {
                f.push(ChainError::OutOfMemory {
                    addr: d.addr().0,
                    len: d.len(),
                });
            }
        }
        if frags > MAX_FRAGS {
            f.push(ChainError::TooManyFrags);
        }
        if !rx && total > MAX_FRAME as u64 {
            f.push(ChainError::TooLong);
        }
        f
    }

    /// The host address in a `Frag`'s or `DstBuf`'s `Debug` output (neither
    /// type gives its pointer otherwise).
    fn debug_ptr(dbg: &str) -> usize {
        let at = dbg
            .find("ptr: 0x")
            .unwrap_or_else(|| panic!("no pointer in {dbg}"))
            + "ptr: 0x".len();
        let hex: String = dbg[at..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .collect();
        usize::from_str_radix(&hex, 16).unwrap_or_else(|_| panic!("bad pointer in {dbg}"))
    }

    /// Checks that host range `ptr..ptr+len` is the mapping of guest range
    /// `gpa..gpa+len`, inside one region.
    fn check_host_range(mem: &Mem, ptr: usize, gpa: u64, len: usize) {
        let (r, off) = mem
            .to_region_addr(GuestAddress(gpa))
            .unwrap_or_else(|| panic!("fragment at {gpa:#x}: outside guest memory"));
        assert!(
            off.0 + len as u64 <= r.len(),
            "fragment {gpa:#x}+{len} crosses the end of its region"
        );
        let base = r
            .get_host_address(MemoryRegionAddress(0))
            .expect("region mapping") as usize;
        assert!(
            ptr >= base && ptr + len <= base + r.len() as usize,
            "fragment {ptr:#x}+{len} outside the host mapping {base:#x}+{:#x}",
            r.len()
        );
        let want = mem
            .get_host_address(GuestAddress(gpa))
            .expect("host address") as usize;
        assert_eq!(ptr, want, "fragment for {gpa:#x} points elsewhere");
    }

    /// Walks `descs` alongside the fragments of lengths `lens`: every
    /// fragment is the next piece of the current descriptor. Returns the
    /// guest address of each.
    fn frag_gpas(descs: &[Descriptor], lens: &[usize]) -> Vec<u64> {
        let mut out = Vec::with_capacity(lens.len());
        let (mut di, mut off) = (0usize, 0u64);
        for (k, &n) in lens.iter().enumerate() {
            assert!(n > 0, "fragment {k} is empty");
            let d = descs
                .get(di)
                .unwrap_or_else(|| panic!("fragment {k} past the last descriptor"));
            assert!(
                off + n as u64 <= u64::from(d.len()),
                "fragment {k} runs past descriptor {di}"
            );
            out.push(d.addr().0 + off);
            off += n as u64;
            if off == u64::from(d.len()) {
                di += 1;
                off = 0;
            }
        }
        assert_eq!(
            (di, off),
            (descs.len(), 0),
            "fragments do not cover the chain"
        );
        out
    }

    fn check_refusal(e: ChainError, faults: &[ChainError], descs: &[Descriptor]) {
        // The reference iterator gave nothing (a head past the table, an
        // indirect table that is broken or outside memory): any refusal
        // is right.
        // Likewise when it stopped early (its last descriptor says
        // "next"): the walker may have seen past that point and found
        // another fault first.
        let justified = descs.is_empty()
            || faults.contains(&ChainError::Unterminated)
            || match e {
                ChainError::OutOfMemory { .. } => faults.contains(&e),
                ChainError::Empty => descs.is_empty(),
                // The iterator stopping early leaves "next" set on the last
                // descriptor it gave.
                // The data path's walker reports a chain the reference iterator
                // found empty (a head past the table, a broken indirect table)
                // as not terminating.
                ChainError::Unterminated => {
                    faults.contains(&ChainError::Unterminated) || descs.is_empty()
                }
                _ => faults.contains(&e),
            };
        assert!(
            justified,
            "chain refused with {e:?}, but its faults are {faults:?}: {descs:?}"
        );
    }

    fn walk_tx(
        mem: &Mem,
        map: &HostMap,
        ring: &Ring,
        head: u16,
        descs: &[Descriptor],
    ) -> Result<usize, ChainError> {
        let mut faults = faults(mem, descs, false);
        faults.extend(table_faults(mem, head, ring.size()));
        static SENTINEL: [u8; 4] = *b"sent";
        let mut out = vec![Frag::from_slice(&SENTINEL, 0x1234)];
        let before = format!("{:?}", out[0]);
        let r = tx_frags(map, ring, head, &mut out);
        assert_eq!(format!("{:?}", out[0]), before, "earlier fragment changed");
        match r {
            Ok(total) => {
                assert!(
                    faults.is_empty(),
                    "accepted a chain with {faults:?}: {descs:?}"
                );
                let want: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
                assert_eq!(total as u64, want, "TX total");
                let frags = &out[1..];
                assert!(!frags.is_empty() && frags.len() <= MAX_FRAGS);
                for (k, f) in frags.iter().enumerate() {
                    assert!(!f.is_bad());
                    let more = f.flags() & NS_MOREFRAG != 0;
                    assert_eq!(more, k + 1 < frags.len(), "NS_MOREFRAG on fragment {k}");
                }
                let lens: Vec<usize> = frags.iter().map(|f| f.len() as usize).collect();
                let gpas = frag_gpas(descs, &lens);
                let mut got = Vec::new();
                let mut want = Vec::new();
                for (f, &g) in frags.iter().zip(&gpas) {
                    let n = f.len() as usize;
                    check_host_range(mem, debug_ptr(&format!("{f:?}")), g, n);
                    got.resize(n, 0);
                    assert_eq!(f.read(0, &mut got), n);
                    want.resize(n, 0);
                    mem.read_slice(&mut want, GuestAddress(g))
                        .expect("guest read");
                    assert_eq!(got, want, "fragment at {g:#x} reads other bytes");
                }
            }
            Err(e) => {
                assert_eq!(out.len(), 1, "refused chain left fragments behind");
                assert!(
                    !faults.is_empty(),
                    "refused a well-formed chain ({e:?}): {descs:?}"
                );
                check_refusal(e, &faults, descs);
            }
        }
        r
    }

    fn walk_rx(
        mem: &Mem,
        map: &HostMap,
        ring: &Ring,
        head: u16,
        descs: &[Descriptor],
    ) -> Result<usize, ChainError> {
        let mut faults = faults(mem, descs, true);
        faults.extend(table_faults(mem, head, ring.size()));
        let mut sentinel = [0u8; 4];
        let mut out = vec![DstBuf::from_slice(&mut sentinel)];
        let r = rx_bufs(map, ring, head, &mut out);
        match r {
            Ok(cap) => {
                assert!(
                    faults.is_empty(),
                    "accepted a chain with {faults:?}: {descs:?}"
                );
                let want: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
                assert_eq!(cap as u64, want, "RX capacity");
                let bufs = &mut out[1..];
                assert!(!bufs.is_empty() && bufs.len() <= MAX_FRAGS);
                let lens: Vec<usize> = bufs.iter().map(DstBuf::cap).collect();
                let gpas = frag_gpas(descs, &lens);
                let mut data = Vec::new();
                let mut back = Vec::new();
                let mut orig = Vec::new();
                for (k, (b, &g)) in bufs.iter_mut().zip(&gpas).enumerate() {
                    let n = b.cap();
                    check_host_range(mem, debug_ptr(&format!("{b:?}")), g, n);
                    // A hostile guest may point an RX buffer at its own
                    // rings: what the probe writes goes back as it was, or
                    // the later chains would not be the ones the input made.
                    orig.resize(n, 0);
                    mem.read_slice(&mut orig, GuestAddress(g))
                        .expect("guest read");
                    data.clear();
                    data.extend((0..n).map(|i| (i as u8) ^ (k as u8) ^ 0x5a));
                    assert_eq!(b.write(0, &data), n);
                    back.resize(n, 0);
                    mem.read_slice(&mut back, GuestAddress(g))
                        .expect("guest read");
                    assert_eq!(back, data, "RX buffer {k} wrote elsewhere than {g:#x}");
                    assert_eq!(b.write(0, &orig), n);
                }
            }
            Err(e) => {
                assert_eq!(out.len(), 1, "refused chain left buffers behind");
                assert!(
                    !faults.is_empty(),
                    "refused a well-formed chain ({e:?}): {descs:?}"
                );
                check_refusal(e, &faults, descs);
            }
        }
        r
    }

    pub(super) fn run(data: &[u8]) -> Vec<VringChain> {
        let layout = byte(data, 0);
        let qsize: u16 = [4, 16, 64, 128][usize::from((layout >> 5) & 3)];
        let mut ranges = vec![(GuestAddress(GUEST_MEM_BASE), REGION0 as usize)];
        if layout & 1 != 0 {
            let size = (1 + u64::from((layout >> 1) & 3)) * PAGE;
            let gap = u64::from((layout >> 3) & 3) * PAGE;
            ranges.push((GuestAddress(GUEST_MEM_BASE + REGION0 + gap), size as usize));
        }
        let mem = Mem::from_ranges(&ranges).expect("guest memory");
        let span_end = ranges
            .last()
            .map(|(a, l)| a.0 + *l as u64)
            .expect("a region");
        for &(a, l) in &ranges {
            let fill: Vec<u8> = (a.0..a.0 + l as u64).map(pattern).collect();
            mem.write_slice(&fill, a).expect("fill");
        }

        let nmain = usize::from(byte(data, 1)) % (usize::from(qsize) + 1);
        let nind = usize::from(byte(data, 2)) % 65;
        let dirs = byte(data, 3);
        let mut recs = data.get(4..).unwrap_or(&[]).chunks_exact(8);
        let mut table = vec![0u8; 16 * usize::from(qsize)];
        let mut used_recs = 0;
        for i in 0..nmain {
            let Some(r) = recs.next() else { break };
            table[16 * i..16 * i + 16].copy_from_slice(&record(r, span_end));
            used_recs += 1;
        }
        mem.write_slice(&table, GuestAddress(DESC))
            .expect("desc table");
        for i in 0..nind {
            let Some(r) = recs.next() else { break };
            let at = GuestAddress(INDIRECT + 16 * i as u64);
            mem.write_slice(&record(r, span_end), at).expect("indirect");
            used_recs += 1;
        }
        let heads: Vec<u16> = data
            .get(4 + 8 * used_recs..)
            .unwrap_or(&[])
            .iter()
            .take(usize::from(qsize))
            .map(|&b| u16::from(b) % (qsize + 2))
            .collect();
        let mut avail = vec![0u8; 4 + 2 * usize::from(qsize) + 2];
        for (i, h) in heads.iter().enumerate() {
            avail[4 + 2 * i..6 + 2 * i].copy_from_slice(&h.to_le_bytes());
        }
        let mut idx = heads.len() as u16;
        if layout & 0x80 != 0 {
            idx = idx.wrapping_add(qsize + 1);
        }
        avail[2..4].copy_from_slice(&idx.to_le_bytes());
        mem.write_slice(&avail, GuestAddress(AVAIL))
            .expect("avail ring");
        mem.write_slice(
            &vec![0u8; 4 + 8 * usize::from(qsize) + 2],
            GuestAddress(USED),
        )
        .expect("used ring");

        let mut q: Queue = QueueT::new(qsize).expect("queue");
        q.try_set_size(qsize).expect("size");
        q.try_set_desc_table_address(GuestAddress(DESC))
            .expect("desc");
        q.try_set_avail_ring_address(GuestAddress(AVAIL))
            .expect("avail");
        q.try_set_used_ring_address(GuestAddress(USED))
            .expect("used");
        q.set_ready(true);

        // The data path's view of the same rings (virtio-queue's iterator
        // is the reference for what each chain holds).
        let mut map = HostMap::default();
        let mem_arc = std::sync::Arc::new(mem.clone());
        map.refresh(&mem_arc);
        let cfg = crate::vring::VringConfig::started(qsize, DESC, AVAIL, USED);
        // SAFETY: `mem_arc` (the map `map` was made from) outlives every
        // use of `ring` in this function.
        let ring = unsafe { Ring::new(&map, &cfg) }.expect("ring");
        let mut out = Vec::new();
        while out.len() < heads.len() {
            let Some(chain) = q.pop_descriptor_chain(&mem) else {
                break;
            };
            let rx = dirs & (1 << (out.len() % 8)) != 0;
            let head = chain.head_index();
            let descs: Vec<Descriptor> = chain.clone().collect();
            let result = if rx {
                walk_rx(&mem, &map, &ring, head, &descs)
            } else {
                walk_tx(&mem, &map, &ring, head, &descs)
            };
            // A head past the table cannot be returned; nothing else fails.
            let used = q.add_used(&mem, head, 0);
            assert_eq!(used.is_ok(), head < qsize, "add_used of head {head}");
            out.push(VringChain {
                rx,
                head,
                descs: descs.len(),
                result,
            });
        }
        if layout & 0x80 == 0 {
            assert_eq!(out.len(), heads.len(), "chains lost between avail and pop");
        } else {
            assert!(out.is_empty(), "chains popped past a runaway avail idx");
        }
        out
    }
}

/// A `vhost_user::Device` that offers what a two-pair VM
/// port offers and does nothing else: for driving a
/// `vhost_user::Session` without a switch.
#[derive(Debug, Default)]
pub struct NullDevice {
    /// Requests refused so far.
    pub refused: std::sync::atomic::AtomicU64,
    /// Kicks seen.
    pub kicks: std::sync::atomic::AtomicU64,
    /// As [`NetConfig::fwd_watches_tx_kicks`](crate::device::NetConfig):
    /// the session leaves the TX queues' kick fds to the data path.
    pub fwd_watches_tx_kicks: bool,
    /// Every kick says work is left (`vhost_user::Device::kick`
    /// returns true): a device the guest keeps busy for good.
    pub always_more: bool,
    /// The device's `vhost_user::Device::rekick` doorbell.
    pub rekick: Option<netmap::sys::EventFd>,
}

impl crate::vhost_user::Device for NullDevice {
    fn features(&self) -> u64 {
        crate::device::features::OFFERED
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::LOG_SHMFD
            | VhostUserProtocolFeatures::RARP
    }
    fn num_queues(&self) -> usize {
        4
    }
    fn max_queue_size(&self) -> u16 {
        1024
    }
    fn set_acked_features(&self, _: u64) {}
    fn quiesce(&self, _: usize) -> bool {
        true
    }
    fn kick(&self, _: usize) -> bool {
        self.kicks.fetch_add(1, Ordering::Relaxed);
        self.always_more
    }
    fn session_watches_kick(&self, q: usize) -> bool {
        q % 2 == 0 || !self.fwd_watches_tx_kicks
    }
    fn rekick(&self) -> Option<&netmap::sys::EventFd> {
        self.rekick.as_ref()
    }
    fn refused(&self, _: &str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
    fn announce(&self, _: [u8; 6]) {}
}

/// A session serving `dev` on `stream`, for tests that speak the protocol
/// byte by byte (the VMM's end is the other end of the pair).
pub fn session_on(
    dev: &NullDevice,
    stream: UnixStream,
) -> crate::vhost_user::Session<'_, NullDevice> {
    crate::vhost_user::Session::new(dev, crate::conn::Conn::new(stream)).expect("session")
}

/// Fuzz target body: a hostile VMM's vhost-user requests, whatever their
/// order, sizes and descriptors, served by a `vhost_user::Session`.
/// Nothing may panic, hang or map memory that a file does not back; the
/// memory table never exceeds its bound; the session ends only on a broken
/// stream or a SET_FEATURES with bits never offered.
///
/// Input: a sequence of messages, each `fd` (1 byte: 0 none, 1 a 1 MiB
/// memfd, 2 an eventfd, 3 a 4 KiB memfd, 4 two memfds), then a 12-byte
/// header as the VMM sends it (the size field is taken as written, so
/// bodies may be short, long or split across messages), then the rest of
/// the message up to the size field's value or the input's end. Sent over
/// a real socket pair, the descriptors by SCM_RIGHTS.
pub fn fuzz_vhost_user(data: &[u8]) -> FuzzSession {
    use crate::conn::Conn;
    use crate::vhost_user::{Session, SessionError};
    use netmap::sys::{send_with_fds, EventFd as NmEventFd, Memfd};
    use std::io::Write;

    let mut out = FuzzSession::default();
    let (mut a, b) = match UnixStream::pair() {
        Ok(p) => p,
        Err(_) => return out,
    };
    let big = Memfd::create_sealed("fuzz-big", 1 << 20, false).ok();
    let small = Memfd::create_sealed("fuzz-small", 4096, false).ok();
    let ev = NmEventFd::new().ok();
    let (Some(big), Some(small), Some(ev)) = (big, small, ev) else {
        return out;
    };
    let mut at = 0;
    while at < data.len() {
        let sel = data[at];
        at += 1;
        let hdr_end = (at + 12).min(data.len());
        let size = if hdr_end - at == 12 {
            u32::from_le_bytes([data[at + 8], data[at + 9], data[at + 10], data[at + 11]]) as usize
        } else {
            0
        };
        let end = hdr_end.saturating_add(size.min(8192)).min(data.len());
        let msg = &data[at..end];
        at = end;
        let fds: Vec<std::os::fd::BorrowedFd<'_>> = match sel % 5 {
            1 => vec![big.file().as_fd()],
            2 => vec![ev.as_fd()],
            3 => vec![small.file().as_fd()],
            4 => vec![big.file().as_fd(), small.file().as_fd()],
            _ => vec![],
        };
        let sent = if fds.is_empty() || msg.is_empty() {
            a.write_all(msg).is_ok()
        } else {
            match send_with_fds(&a, msg, &fds) {
                Ok(n) => a.write_all(&msg[n..]).is_ok(),
                Err(_) => false,
            }
        };
        if !sent {
            break;
        }
    }
    let _ = a.shutdown(std::net::Shutdown::Write);
    // Replies pile up in `a`'s receive buffer; the input is small enough
    // that they never fill it.
    let dev = NullDevice::default();
    let Ok(mut s) = Session::new(&dev, Conn::new(b)) else {
        return out;
    };
    loop {
        match s.serve_one() {
            Ok(()) => out.served += 1,
            Err(SessionError::Conn(_)) => break,
            Err(SessionError::Features { .. }) => {
                out.features_refused = true;
                break;
            }
            // A log valed cannot use ends the session by design.
            Err(SessionError::Log(_)) => break,
            Err(e) => panic!("session error other than the stream or features: {e}"),
        }
        assert!(s.mem().specs().len() <= crate::memory::MAX_REGIONS);
    }
    out.regions = s.mem().specs().len();
    drop(s);
    drop(a);
    out.refused = dev.refused.load(Ordering::Relaxed);
    out.kicks = dev.kicks.load(Ordering::Relaxed);
    out
}

/// What a [`fuzz_vhost_user`] run did, for the seed tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FuzzSession {
    /// Requests served (accepted or refused).
    pub served: u64,
    /// Requests refused.
    pub refused: u64,
    /// Kicks the device saw (queues starting or enabled).
    pub kicks: u64,
    /// Regions mapped at the end.
    pub regions: usize,
    /// The session ended on a SET_FEATURES acking bits never offered.
    pub features_refused: bool,
}

/// Waits up to 5 s for `cond`, polling every millisecond; panics naming
/// `what` on timeout.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}
