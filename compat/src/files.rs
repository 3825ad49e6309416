//! The netmap files this process opened: what each `/dev/netmap` descriptor
//! stands for, and the netmap operations on it, in safe Rust over the
//! client ([`NmPort`]).
//!
//! A netmap file is a real descriptor (an eventfd, so `close`, `dup` and
//! `fcntl` work on it as on any file) mapped here to its registration. The
//! table's lock is held only to look an entry up: operations hold the
//! entry's own lock, so the client's calls to `mmap`, `poll` and `close`,
//! which come back through the hooks, never wait on it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

use netmap::abi::*;
use netmap::ctrl::{body_size_for, socket_path, CtrlConn, Request};
use netmap::port::{NmPort, PortError};
use netmap::ring;
use netmap::sync::SyncError;

/// One netmap file: a registration once REGISTER succeeded.
#[derive(Debug)]
pub struct NmFile {
    /// The registration.
    /// (Shared: a `poll` sleeping on its descriptors holds it, so a
    /// concurrent `close` cannot free them, and their numbers be reused,
    /// under the sleeper.)
    pub port: Option<Arc<NmPort>>,
    /// The process that opened it: a forked child shares the parent's
    /// registration, and must not close it (drain, hang up valed's
    /// connection) when it closes its copy of the descriptor or exits.
    pid: u32,
}

impl Default for NmFile {
    fn default() -> Self {
        NmFile {
            port: None,
            pid: std::process::id(),
        }
    }
}

/// Closes a file's registration: drains what was published and hangs up,
/// in the process that opened it; in a forked child, only forgets it (the
/// parent's registration goes on).
pub fn release(e: &Entry) {
    let mut f = lock(e);
    let port = f.port.take();
    if f.pid == std::process::id() {
        drop(port);
    } else {
        std::mem::forget(port);
    }
}

/// A netmap file in the table.
pub type Entry = Arc<Mutex<NmFile>>;

fn table() -> &'static RwLock<HashMap<i32, Entry>> {
    static T: OnceLock<RwLock<HashMap<i32, Entry>>> = OnceLock::new();
    T.get_or_init(|| RwLock::new(HashMap::new()))
}

/// Bumped on every change of the table: a thread's cached lookup is good
/// while the generation it was made at is still current.
static GEN: AtomicU64 = AtomicU64::new(0);
/// Netmap files open: the hooks' test for "none", without a lock.
static OPEN: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's last lookup: (generation, fd, file).
    static LAST: RefCell<Option<(u64, i32, Entry)>> = const { RefCell::new(None) };
}

/// After a change of the table (under its write lock).
fn changed(t: &HashMap<i32, Entry>) {
    OPEN.store(t.len(), Ordering::Release);
    GEN.fetch_add(1, Ordering::AcqRel);
}

/// Records `fd` as a new netmap file.
pub fn insert(fd: i32) {
    static AT_EXIT: OnceLock<()> = OnceLock::new();
    AT_EXIT.get_or_init(|| {
        // SAFETY: registers a function with no arguments that only runs
        // safe code, once.
        unsafe { libc::atexit(close_all) };
    });
    let mut t = table().write().unwrap_or_else(|e| e.into_inner());
    t.insert(fd, Arc::new(Mutex::new(NmFile::default())));
    changed(&t);
}

/// At exit, every registration closes as netmap's files close: what the
/// program published is forwarded first (bounded), so a program that
/// exits right after its last txsync loses nothing, as on a VALE port in
/// the kernel, where txsync forwards before it returns.
extern "C" fn close_all() {
    let all: Vec<Entry> = {
        let mut t = table().write().unwrap_or_else(|e| e.into_inner());
        let all = t.drain().map(|(_, e)| e).collect();
        changed(&t);
        all
    };
    for e in all {
        release(&e);
    }
}

/// The netmap file `fd` stands for, if it is one. A thread asking again
/// for the same descriptor (a program's sync and poll loop) finds it in
/// its cache, with one atomic load.
pub fn get(fd: i32) -> Option<Entry> {
    if fd < 0 || !any() {
        return None;
    }
    let g = GEN.load(Ordering::Acquire);
    let hit = LAST.with(|l| match &*l.borrow() {
        Some((lg, lfd, e)) if *lg == g && *lfd == fd => Some(e.clone()),
        _ => None,
    });
    if hit.is_some() {
        return hit;
    }
    let t = table().read().unwrap_or_else(|e| e.into_inner());
    // Read under the lock: the generation of what we found.
    let g = GEN.load(Ordering::Acquire);
    let e = t.get(&fd).cloned();
    if let Some(e) = &e {
        LAST.with(|l| *l.borrow_mut() = Some((g, fd, e.clone())));
    }
    e
}

/// Whether any netmap file is open (the hooks' fast test).
pub fn any() -> bool {
    OPEN.load(Ordering::Acquire) > 0
}

/// Forgets `fd`. Returns its file if `fd` was the last descriptor of it
/// (the caller then closes the registration, draining TX as netmap's
/// close does).
pub fn remove(fd: i32) -> Option<Entry> {
    let mut t = table().write().unwrap_or_else(|e| e.into_inner());
    let e = t.remove(&fd)?;
    changed(&t);
    let last = !t.values().any(|o| Arc::ptr_eq(o, &e));
    last.then_some(e)
}

/// `to` is now a descriptor of `fd`'s netmap file too (dup): one file,
/// one registration, as the kernel's file behind both descriptors.
///
/// Returns `to`'s previous file if `to` was its last descriptor: the
/// caller closes that registration, outside the table's lock (its own
/// calls come back through the hooks).
pub fn alias(fd: i32, to: i32) -> Option<Entry> {
    let mut t = table().write().unwrap_or_else(|e| e.into_inner());
    let old = match t.get(&fd).cloned() {
        Some(e) => t.insert(to, e),
        None => t.remove(&to),
    };
    changed(&t);
    let old = old?;
    let last = !t.values().any(|o| Arc::ptr_eq(o, &old));
    last.then_some(old)
}

/// Locks an entry (a panic in another thread does not make it unusable).
pub fn lock(e: &Entry) -> MutexGuard<'_, NmFile> {
    e.lock().unwrap_or_else(|e| e.into_inner())
}

/// An errno.
pub type Errno = i32;

fn port_errno(e: &PortError) -> Errno {
    match e {
        PortError::Refused { source, .. } => source.raw_os_error().unwrap_or(libc::EINVAL),
        PortError::Name(_) => libc::EINVAL,
        PortError::Ctrl { source, .. } => match source.errno() {
            // valed not running or not reachable: as if the module were
            // missing.
            libc::ENOENT | libc::ECONNREFUSED => libc::ENXIO,
            e => e,
        },
        _ => libc::EIO,
    }
}

fn sync_errno(e: &SyncError) -> Errno {
    match e {
        SyncError::PeerGone => libc::ENXIO,
        SyncError::TimedOut(_) => libc::ETIMEDOUT,
        SyncError::BadIndex { .. } => libc::EINVAL,
        SyncError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
    }
}

/// The name in a request, up to its NUL.
fn name_of(raw: &[u8]) -> Result<String, Errno> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    std::str::from_utf8(&raw[..end])
        .map(str::to_string)
        .map_err(|_| libc::EINVAL)
}

impl NmFile {
    /// NETMAP_REQ_REGISTER: `body` in, the registration's answer out.
    pub fn register(&mut self, name: &[u8], body: &mut NmreqRegister) -> Result<(), Errno> {
        if self.port.is_some() {
            // netmap: one registration per file.
            return Err(libc::EBUSY);
        }
        let name = name_of(name)?;
        let port =
            NmPort::open_with(&socket_path(None), &name, *body).map_err(|e| port_errno(&e))?;
        *body = *port.register_info();
        self.port = Some(Arc::new(port));
        Ok(())
    }

    /// Any other request, passed to valed as it is: the body (of the size
    /// the request type has) in, valed's answer out.
    pub fn forward(reqtype: u16, name: &[u8], body: &mut [u8]) -> Result<(), Errno> {
        let name = name_of(name)?;
        let req = Request::with_body(reqtype, &name, body.to_vec()).map_err(|e| e.errno())?;
        let conn = CtrlConn::connect(&socket_path(None)).map_err(|_| libc::ENXIO)?;
        let (reply, _fds) = conn.call(&req).map_err(|e| e.errno())?;
        if reply.error != 0 {
            return Err(reply.error);
        }
        let out = &reply.req.body;
        let n = out.len().min(body.len());
        body[..n].copy_from_slice(&out[..n]);
        Ok(())
    }

    /// NIOCTXSYNC.
    pub fn txsync(&self) -> Result<(), Errno> {
        let p = self.port.as_ref().ok_or(libc::ENXIO)?;
        p.txsync().map_err(|e| sync_errno(&e))
    }

    /// NIOCRXSYNC.
    pub fn rxsync(&self) -> Result<(), Errno> {
        let p = self.port.as_ref().ok_or(libc::ENXIO)?;
        p.rxsync().map_err(|e| sync_errno(&e))
    }

    /// netmap's poll on this file: txsync for POLLOUT, rxsync for POLLIN,
    /// then which of them are ready (a TX ring with room, an RX ring with
    /// frames). POLLERR once valed is gone.
    pub fn poll_ready(&self, events: i16) -> i16 {
        let Some(p) = self.port.as_ref() else {
            return libc::POLLERR;
        };
        let mut rev = 0;
        // netmap's poll syncs TX on POLLIN too, unless the port was
        // registered with NR_NO_TX_POLL.
        let tx_too = p.register_info().nr_flags & NR_NO_TX_POLL == 0;
        if (events & libc::POLLOUT != 0 || tx_too) && p.txsync().is_err() {
            return libc::POLLERR;
        }
        if events & libc::POLLOUT != 0 && (0..p.tx_rings()).any(|i| space(&p.tx_ring(i).ring) > 0) {
            rev |= libc::POLLOUT;
        }
        if events & libc::POLLIN != 0 {
            if p.rxsync().is_err() {
                return libc::POLLERR;
            }
            if (0..p.rx_rings()).any(|i| space(&p.rx_ring(i).ring) > 0) {
                rev |= libc::POLLIN;
            }
        }
        rev
    }

    /// Asks valed for a wake-up on every ring `events` asks about, and
    /// re-checks: `Ok(None)` if a ring became ready meanwhile (nothing
    /// armed), else the descriptors to sleep on: the wake-up eventfd and
    /// the control connection (which hangs up if valed dies).
    pub fn arm(&self, events: i16) -> Result<Option<(i32, i32, Arc<NmPort>)>, Errno> {
        use std::os::fd::AsRawFd;
        let p = self.port.as_ref().ok_or(libc::ENXIO)?;
        let mut rings = Vec::new();
        if events & libc::POLLOUT != 0 {
            rings.extend((0..p.tx_rings()).map(|i| p.tx_ring(i)));
        }
        if events & libc::POLLIN != 0 {
            rings.extend((0..p.rx_rings()).map(|i| p.rx_ring(i)));
        }
        for (k, r) in rings.iter().enumerate() {
            if !r.arm_ready().map_err(|e| sync_errno(&e))? {
                rings[..k].iter().for_each(|r| r.disarm());
                return Ok(None);
            }
        }
        Ok(Some((
            p.irq_fd().as_raw_fd(),
            p.conn_fd().as_raw_fd(),
            p.clone(),
        )))
    }

    /// Withdraws [`arm`](Self::arm)'s requests and empties the wake-up.
    pub fn disarm(&self) {
        if let Some(p) = self.port.as_ref() {
            for i in 0..p.tx_rings() {
                p.tx_ring(i).disarm();
            }
            for i in 0..p.rx_rings() {
                p.rx_ring(i).disarm();
            }
        }
    }

    /// NIOCGINFO (legacy): the port's geometry, through PORT_INFO_GET.
    pub fn info(name: &[u8]) -> Result<NmreqPortInfoGet, Errno> {
        let name = name_of(name)?;
        let req = Request::new(
            NETMAP_REQ_PORT_INFO_GET,
            &name,
            &NmreqPortInfoGet::default(),
        )
        .map_err(|e| e.errno())?;
        let conn = CtrlConn::connect(&socket_path(None)).map_err(|_| libc::ENXIO)?;
        let (reply, _fds) = conn.call(&req).map_err(|e| e.errno())?;
        if reply.error != 0 {
            return Err(reply.error);
        }
        reply.req.body_as().map_err(|e| e.errno())
    }

    /// The region's file, for `mmap`.
    pub fn region_fd(&self) -> Option<i32> {
        use std::os::fd::AsRawFd;
        self.port.as_ref().map(|p| p.region_fd().as_raw_fd())
    }

    /// The region's size.
    pub fn memsize(&self) -> Option<u64> {
        self.port.as_ref().map(|p| p.register_info().nr_memsize)
    }
}

fn space(r: &netmap::ring::RingView<'_>) -> u32 {
    ring::space(r.cur(), r.tail(), r.num_slots())
}

/// The body size of request type `reqtype`, if valed knows the type.
pub fn body_size(reqtype: u16) -> Result<usize, Errno> {
    match body_size_for(reqtype) {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Ok(0),
        Err(_) => Err(libc::EINVAL),
    }
}

/// The legacy register (NIOCREGIF, `struct nmreq`) as a new-style one, as
/// netmap's `nmreq_register_from_legacy` converts it.
pub fn register_from_legacy(l: &Nmreq) -> NmreqRegister {
    let mut r = NmreqRegister {
        nr_offset: u64::from(l.nr_offset),
        nr_memsize: u64::from(l.nr_memsize),
        nr_tx_slots: l.nr_tx_slots,
        nr_rx_slots: l.nr_rx_slots,
        nr_tx_rings: l.nr_tx_rings,
        nr_rx_rings: l.nr_rx_rings,
        nr_mem_id: l.nr_arg2,
        nr_ringid: l.nr_ringid & NETMAP_RING_MASK,
        nr_extra_bufs: l.nr_arg3,
        ..Default::default()
    };
    let mode = l.nr_flags & NR_REG_MASK;
    r.nr_mode = if mode == NR_REG_DEFAULT {
        // The original API: the mode is in nr_ringid's high bits.
        if l.nr_ringid & NETMAP_SW_RING != 0 {
            NR_REG_SW
        } else if l.nr_ringid & NETMAP_HW_RING != 0 {
            NR_REG_ONE_NIC
        } else {
            NR_REG_ALL_NIC
        }
    } else {
        mode
    };
    r.nr_flags = u64::from(l.nr_flags & !NR_REG_MASK);
    if l.nr_ringid & NETMAP_NO_TX_POLL != 0 {
        r.nr_flags |= NR_NO_TX_POLL;
    }
    if l.nr_ringid & NETMAP_DO_RX_POLL != 0 {
        r.nr_flags |= NR_DO_RX_POLL;
    }
    r
}

/// The answer of a new-style register written back into a legacy request.
pub fn legacy_from_register(r: &NmreqRegister, l: &mut Nmreq) {
    l.nr_offset = r.nr_offset as u32;
    l.nr_memsize = r.nr_memsize as u32;
    l.nr_tx_slots = r.nr_tx_slots;
    l.nr_rx_slots = r.nr_rx_slots;
    l.nr_tx_rings = r.nr_tx_rings;
    l.nr_rx_rings = r.nr_rx_rings;
    l.nr_arg2 = r.nr_mem_id;
    l.nr_arg3 = r.nr_extra_bufs;
}

/// The netmap files in each epoll instance: (descriptor, the events and
/// data the program gave `epoll_ctl`). The kernel's epoll holds the other
/// descriptors; netmap files are polled here, as netmap's poll.
/// A netmap file in an epoll instance: descriptor, events, data.
pub type EpollMember = (i32, u32, u64);
type Epolls = Mutex<HashMap<i32, Vec<EpollMember>>>;

fn epolls() -> &'static Epolls {
    static T: OnceLock<Epolls> = OnceLock::new();
    T.get_or_init(|| Mutex::new(HashMap::new()))
}

/// `epoll_ctl` on a netmap file: records (ADD, MOD) or forgets (DEL) it.
pub fn epoll_set(epfd: i32, op: i32, fd: i32, events: u32, data: u64) -> Result<(), Errno> {
    let mut t = epolls().lock().unwrap_or_else(|e| e.into_inner());
    let v = t.entry(epfd).or_default();
    let at = v.iter().position(|&(f, _, _)| f == fd);
    match (op, at) {
        (libc::EPOLL_CTL_ADD, None) => v.push((fd, events, data)),
        (libc::EPOLL_CTL_ADD, Some(_)) => return Err(libc::EEXIST),
        (libc::EPOLL_CTL_MOD, Some(i)) => v[i] = (fd, events, data),
        (libc::EPOLL_CTL_DEL, Some(i)) => {
            v.remove(i);
        }
        (libc::EPOLL_CTL_MOD | libc::EPOLL_CTL_DEL, None) => return Err(libc::ENOENT),
        _ => return Err(libc::EINVAL),
    }
    Ok(())
}

/// The netmap files of epoll instance `epfd`.
pub fn epoll_members(epfd: i32) -> Vec<EpollMember> {
    let t = epolls().lock().unwrap_or_else(|e| e.into_inner());
    t.get(&epfd).cloned().unwrap_or_default()
}

/// Forgets `fd` as an epoll instance and as a member of any (on close).
pub fn epoll_forget(fd: i32) {
    let mut t = epolls().lock().unwrap_or_else(|e| e.into_inner());
    t.remove(&fd);
    for v in t.values_mut() {
        v.retain(|&(f, _, _)| f != fd);
    }
}

/// The netmap files among descriptors `first..=last`.
pub fn fds_in(first: u32, last: u32) -> Vec<i32> {
    let t = table().read().unwrap_or_else(|e| e.into_inner());
    t.keys()
        .copied()
        .filter(|&fd| fd >= 0 && (first..=last).contains(&(fd as u32)))
        .collect()
}
