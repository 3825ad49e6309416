//! The vhost-user-net device: what it offers, and the port's life:
//! listening or connecting, one fresh vhost-user `Session` per VMM
//! connection, the same port (and switch index) across reconnects, and
//! what an operator sees of it (state, last error, rate-limited logs).
//!
//! # Threads
//! Each port has one thread: it accepts (or connects), then serves the
//! session's requests and waits on its guest's kick eventfds. It does no
//! packet work: a kick is handed to the port's [`KickHook`] (valed relays
//! it to the forwarding thread that owns the queue). The data path is the
//! forwarding threads' alone.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use netmap::sys::EventFd;
use std::os::unix::net::UnixListener;
use vhost::vhost_user::message::VhostUserProtocolFeatures;

use crate::conn::Conn;
use crate::queue::{
    Announcement, Binding, QueueCtl, QueueStats, RxQueue, RxSet, TxQueue, VringSlot,
};
use crate::vhost_user::{Device, Session};

pub use crate::types::{features, rx_offloads};

/// Most queue pairs a port offers.
pub const MAX_QUEUE_PAIRS: u16 = 16;

/// Most frames a forwarding batch takes from one guest TX queue, unless
/// the port says otherwise. Taking everything the guest has posted (the
/// engine allows 1024) leaves the guest nothing to work on while the
/// switch copies: its completions all come back at once and the two sides
/// take turns instead of overlapping. Measured in docs/benchmarks.md
/// ("TX batch").
pub const DEFAULT_BATCH: u16 = 64;

/// Largest TX batch (the engine's).
pub const MAX_BATCH: usize = vale::MAX_BATCH;

/// Errors starting or running a port.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The socket could not be made.
    #[error("vhost-user socket {0}")]
    Listen(#[from] crate::socket::SocketError),
    /// A bad number of queue pairs.
    #[error("queue pairs {0}: must be 1..={MAX_QUEUE_PAIRS}")]
    QueuePairs(u16),
    /// A bad queue size.
    #[error("queue size {0}: must be a power of two in 64..=32768")]
    QueueSize(u16),
    /// A bad TX batch.
    #[error("batch {0}: must be 1..={MAX_BATCH}")]
    Batch(u16),
    /// An OS call failed.
    #[error("vhost-user port: {0}")]
    Io(#[from] std::io::Error),
}

impl BackendError {
    /// The errno a control request answers with.
    pub fn errno(&self) -> i32 {
        match self {
            BackendError::Listen(e) => e.errno(),
            BackendError::QueuePairs(_) | BackendError::QueueSize(_) | BackendError::Batch(_) => {
                libc::EINVAL
            }
            BackendError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// Who connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketMode {
    /// The port listens; the VMM connects (QEMU `-chardev socket,path=…`
    /// with `reconnect=1`).
    Server,
    /// The port connects to a VMM that listens (QEMU `server=on`, Cloud
    /// Hypervisor `vhost_mode=server`), retrying every second.
    Client,
}

/// A port's settings.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Port name (for logs).
    pub name: String,
    /// The vhost-user socket.
    pub socket: PathBuf,
    /// Listen or connect.
    pub mode: SocketMode,
    /// Queue pairs offered (MQ when more than 1).
    pub queue_pairs: u16,
    /// Largest queue size accepted.
    pub queue_size: u16,
    /// Most frames taken from a guest TX queue per forwarding batch.
    pub batch: u16,
    /// The uid the port belongs to, if not root: its socket is made theirs
    /// (mode 0600) and only a VMM of that uid is served.
    pub owner: Option<u32>,
    /// For root's listening socket (`owner` None): the group whose VMMs
    /// may connect (mode 0660); None makes it 0600, root's VMMs only.
    pub group: Option<u32>,
    /// The forwarding threads wait on the guest's TX kick eventfds
    /// themselves ([`TxQueue`]'s doorbell): the session's thread does not
    /// watch them, and a kick that finds the forwarder asleep wakes one
    /// thread, not the session's thread and then, through the
    /// [`KickHook`], the forwarder. False: every TX kick goes to the hook
    /// (valed's `--vhost-inline` forwards on the session's thread).
    pub fwd_watches_tx_kicks: bool,
}

impl NetConfig {
    /// Defaults: server mode, one queue pair, queues up to 1024, TX
    /// batches of [`DEFAULT_BATCH`].
    pub fn new(name: &str, socket: &Path) -> NetConfig {
        NetConfig {
            name: name.into(),
            socket: socket.into(),
            mode: SocketMode::Server,
            queue_pairs: 1,
            queue_size: 1024,
            batch: DEFAULT_BATCH,
            owner: None,
            group: None,
            fwd_watches_tx_kicks: false,
        }
    }
}

/// Called on a vhost-user worker thread when the guest kicks a queue.
pub trait KickHook: Send + Sync {
    /// The guest posted TX chains on queue pair `pair`. True if the hook
    /// stopped with chains left (it bounds its work per call, so that the
    /// session thread can still see its socket and its stop signal): it
    /// is called again once the session has looked at them.
    fn tx_kick(&self, pair: u16) -> bool;
    /// The guest posted RX buffers on queue pair `pair`.
    fn rx_kick(&self, pair: u16);
}

/// Kick hook that does nothing (the port is not attached yet).
#[derive(Debug)]
struct NoHook;

impl KickHook for NoHook {
    fn tx_kick(&self, _: u16) -> bool {
        false
    }
    fn rx_kick(&self, _: u16) {}
}

struct DevInner {
    cfg: NetConfig,
    acked: Arc<AtomicU64>,
    mrg: Arc<AtomicBool>,
    /// RX queue of pair p at 2p, TX at 2p+1 (virtio-net's order).
    slots: Vec<Arc<VringSlot>>,
    ctls: Vec<Arc<QueueCtl>>,
    stats: Arc<QueueStats>,
    hook: Mutex<Arc<dyn KickHook>>,
    /// Shared by every call fd a VMM gives this port, for the port's
    /// life: once one was raced into blocking, none is written again (see
    /// `netmap::sys::CallGuard`).
    call_guard: Arc<netmap::sys::CallGuard>,
    rx_wake: Arc<EventFd>,
    /// Rung when the hook changes: the session kicks its started queues
    /// once more (`Device::rekick`).
    rekick: EventFd,
    /// SEND_RARP's MAC, for pair 0's TX queue to send.
    announce: Arc<Announcement>,
    /// The last MAC announced and when (one log line per burst).
    last_announce: Mutex<Option<([u8; 6], std::time::Instant)>>,
    connected: AtomicBool,
    connections: AtomicU64,
    diag: Diag,
}

/// The device as a session sees it; cheap to clone.
#[derive(Clone)]
pub struct NetDevice(Arc<DevInner>);

impl std::fmt::Debug for NetDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetDevice")
            .field("name", &self.0.cfg.name)
            .finish_non_exhaustive()
    }
}

impl NetDevice {
    fn new(cfg: NetConfig) -> Result<NetDevice, BackendError> {
        if cfg.queue_pairs == 0 || cfg.queue_pairs > MAX_QUEUE_PAIRS {
            return Err(BackendError::QueuePairs(cfg.queue_pairs));
        }
        if !cfg.queue_size.is_power_of_two() || cfg.queue_size < 64 {
            return Err(BackendError::QueueSize(cfg.queue_size));
        }
        if cfg.batch == 0 || cfg.batch as usize > MAX_BATCH {
            return Err(BackendError::Batch(cfg.batch));
        }
        let nq = 2 * cfg.queue_pairs as usize;
        Ok(NetDevice(Arc::new(DevInner {
            acked: Arc::new(AtomicU64::new(0)),
            mrg: Arc::new(AtomicBool::new(false)),
            slots: (0..nq).map(|_| Arc::default()).collect(),
            ctls: (0..nq).map(|_| Arc::default()).collect(),
            stats: Arc::default(),
            hook: Mutex::new(Arc::new(NoHook)),
            call_guard: Arc::default(),
            rx_wake: Arc::new(EventFd::new()?),
            rekick: EventFd::new()?,
            announce: Arc::default(),
            last_announce: Mutex::new(None),
            connected: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            diag: Diag::default(),
            cfg,
        })))
    }

    fn hook(&self) -> Arc<dyn KickHook> {
        self.0
            .hook
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Device for NetDevice {
    fn features(&self) -> u64 {
        if self.0.cfg.queue_pairs > 1 {
            features::OFFERED
        } else {
            features::OFFERED & !features::MQ
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let mut p = VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::LOG_SHMFD
            | VhostUserProtocolFeatures::RARP;
        if self.0.cfg.queue_pairs > 1 {
            p |= VhostUserProtocolFeatures::MQ;
        }
        p
    }

    fn num_queues(&self) -> usize {
        2 * self.0.cfg.queue_pairs as usize
    }

    fn max_queue_size(&self) -> u16 {
        self.0.cfg.queue_size
    }

    fn call_guard(&self) -> Arc<netmap::sys::CallGuard> {
        self.0.call_guard.clone()
    }

    fn set_acked_features(&self, f: u64) {
        self.0.acked.store(f, Ordering::Release);
        self.0
            .mrg
            .store(f & features::MRG_RXBUF != 0, Ordering::Release);
    }

    fn quiesce(&self, q: usize) -> bool {
        // Wait for the queue's forwarding thread to finish the batch it
        // may be in: the base GET_VRING_BASE reports counts every chain
        // as returned, and the next batch reads the new configuration.
        let Some(ctl) = self.0.ctls.get(q) else {
            return true;
        };
        if ctl.quiesce(Duration::from_secs(2)) {
            return true;
        }
        tracing::warn!(
            port = self.0.cfg.name,
            queue = q,
            "forwarding thread did not leave its batch in 2 s"
        );
        false
    }

    fn session_watches_kick(&self, q: usize) -> bool {
        q % 2 == 0 || !self.0.cfg.fwd_watches_tx_kicks
    }

    fn rekick(&self) -> Option<&EventFd> {
        Some(&self.0.rekick)
    }

    fn owner(&self) -> Option<u32> {
        self.0.cfg.owner
    }

    fn kick(&self, q: usize) -> bool {
        let pair = (q / 2) as u16;
        if q % 2 == 0 {
            let _ = self.0.rx_wake.kick();
            self.hook().rx_kick(pair);
            false
        } else {
            self.hook().tx_kick(pair)
        }
    }

    fn refused(&self, what: &str) {
        self.0.diag.error(&self.0.cfg.name, what);
    }

    fn announce(&self, mac: [u8; 6]) {
        // QEMU announces in rounds (several requests within a second):
        // one line per burst.
        let burst = {
            let mut last = self
                .0
                .last_announce
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let repeat =
                last.is_some_and(|(m, t)| m == mac && t.elapsed() < Duration::from_secs(5));
            *last = Some((mac, std::time::Instant::now()));
            repeat
        };
        if !burst {
            tracing::info!(
                port = self.0.cfg.name,
                mac = format_args!(
                    "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                    mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
                ),
                "announcing the guest (SEND_RARP)"
            );
        }
        self.0.announce.post(mac);
        self.hook().tx_kick(0);
    }
}

/// Where a port's connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortState {
    /// No VMM: listening (server mode) or connecting (client mode).
    #[default]
    Waiting,
    /// A VMM is connected; no queue runs yet (or the driver stopped them).
    Negotiating,
    /// At least one queue runs.
    Running,
}

impl PortState {
    /// As `vale-ctl --stats` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            PortState::Waiting => "waiting",
            PortState::Negotiating => "negotiating",
            PortState::Running => "running",
        }
    }
}

/// A port's last error, and the rate limit on logging them: a VMM that
/// reconnects every second into the same failure logs it once a minute
/// (with a count), not three lines a second.
#[derive(Debug, Default)]
struct Diag {
    inner: Mutex<DiagInner>,
}

#[derive(Debug, Default)]
struct DiagInner {
    last: Option<(String, SystemTime)>,
    logged: Option<(String, Instant)>,
    repeats: u64,
}

/// The same error is logged again at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

impl Diag {
    /// Records `msg`; logs it at WARN unless it is a repeat inside the
    /// window. Returns whether it was logged.
    fn error(&self, port: &str, msg: &str) -> bool {
        let mut d = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        d.last = Some((msg.to_string(), SystemTime::now()));
        let repeat = matches!(&d.logged, Some((m, t)) if m == msg && t.elapsed() < LOG_EVERY);
        if repeat {
            d.repeats += 1;
            tracing::debug!(port, "{msg}");
            return false;
        }
        if d.repeats > 0 {
            tracing::warn!(
                port,
                "{msg} (the same error {} more times since last logged)",
                d.repeats
            );
        } else {
            tracing::warn!(port, "{msg}");
        }
        d.logged = Some((msg.to_string(), Instant::now()));
        d.repeats = 0;
        true
    }

    /// Whether the last error logged is recent (to quieten the lines
    /// around a repeating failure).
    fn failing(&self) -> bool {
        let d = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        matches!(&d.logged, Some((_, t)) if t.elapsed() < LOG_EVERY)
    }

    fn last(&self) -> Option<(String, SystemTime)> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last
            .clone()
    }
}

/// Counters of a port, beyond the switch's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetPortStats {
    /// Whether a VMM is connected now.
    pub connected: bool,
    /// Where the connection stands.
    pub state: PortState,
    /// Queues (RX and TX) running.
    pub queues_running: usize,
    /// The last error: a refused request or why a session ended.
    pub last_error: Option<String>,
    /// When it happened (seconds since the epoch).
    pub last_error_at: Option<u64>,
    /// Frames for the guest dropped: no queue running (no VMM, or the
    /// driver has not started the device).
    pub not_running: u64,
    /// VMM connections so far.
    pub connections: u64,
    /// Acked virtio features.
    pub acked_features: u64,
    /// Guest chains refused (outside memory, loops, bad direction, zero
    /// length, too big).
    pub bad_chains: u64,
    /// Frames for the guest dropped: no RX buffer posted.
    pub no_rx_buffer: u64,
    /// Frames for the guest dropped: RX buffer too small.
    pub rx_too_small: u64,
}

/// A vhost-user-net port: its device and the thread that serves the
/// socket. Dropping it closes the connection and stops the thread.
pub struct NetPort {
    dev: NetDevice,
    stop: Arc<EventFd>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// (device, inode) of the socket it bound (server mode), to remove
    /// that socket and nothing else when the port is deleted.
    bound: Option<(u64, u64)>,
}

impl std::fmt::Debug for NetPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetPort")
            .field("name", &self.dev.0.cfg.name)
            .finish_non_exhaustive()
    }
}

impl NetPort {
    /// Starts the port: binds the socket now (server mode, so errors are
    /// reported here) and serves VMM connections one after the other on a
    /// thread of its own.
    pub fn start(cfg: NetConfig) -> Result<NetPort, BackendError> {
        let dev = NetDevice::new(cfg.clone())?;
        let stop = Arc::new(EventFd::new()?);
        let listener = match cfg.mode {
            SocketMode::Server => Some(crate::socket::bind(
                &cfg.socket,
                match cfg.owner {
                    Some(o) => crate::socket::Perm::Tenant(o),
                    None => crate::socket::Perm::Root { group: cfg.group },
                },
            )?),
            SocketMode::Client => None,
        };
        let bound = listener
            .as_ref()
            .and_then(|_| std::fs::symlink_metadata(&cfg.socket).ok())
            .map(|md| {
                use std::os::unix::fs::MetadataExt;
                (md.dev(), md.ino())
            });
        let (d2, s2) = (dev.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("vhost-{}", cfg.name))
            .spawn(move || serve(d2, listener, &s2))?;
        Ok(NetPort {
            dev,
            stop,
            thread: Some(thread),
            bound,
        })
    }

    /// Stops the port for good and removes the socket it bound, if the
    /// entry at its path is still that socket. Dropping a port leaves the
    /// socket, so that VMMs find the same path after valed restarts;
    /// deleting one must not leave its name taken, nor an inode behind
    /// for every port made and deleted.
    pub fn delete(mut self) {
        self.halt();
        if let Some(id) = self.bound {
            crate::socket::unlink_if(&self.dev.0.cfg.socket, id);
        }
    }

    fn halt(&mut self) {
        let _ = self.stop.kick();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// The port's name.
    pub fn name(&self) -> &str {
        &self.dev.0.cfg.name
    }

    /// Its settings.
    pub fn config(&self) -> &NetConfig {
        &self.dev.0.cfg
    }

    /// Sets what guest kicks are handed to.
    pub fn set_hook(&self, hook: Arc<dyn KickHook>) {
        *self.dev.0.hook.lock().unwrap_or_else(|e| e.into_inner()) = hook;
        // A hook that forwards inline may have stopped short with the
        // guest's kicks off, and the old hook took the session's kick
        // again: the new one gets a kick of every started queue.
        let _ = self.dev.0.rekick.kick();
    }

    /// Removes the hook (kicks are then ignored).
    pub fn clear_hook(&self) {
        self.set_hook(Arc::new(NoHook));
    }

    /// Queue pairs offered.
    pub fn queue_pairs(&self) -> u16 {
        self.dev.0.cfg.queue_pairs
    }

    /// The source for TX queue of pair `pair`. Only one forwarding thread
    /// may own it.
    pub fn tx_queue(&self, pair: u16) -> TxQueue {
        let q = 2 * pair as usize + 1;
        let t = TxQueue::new(
            self.dev.0.slots[q].clone(),
            self.dev.0.ctls[q].clone(),
            self.dev.0.stats.clone(),
        )
        .with_batch(self.dev.0.cfg.batch as usize);
        if pair == 0 {
            t.with_announce(self.dev.0.announce.clone())
        } else {
            t
        }
    }

    /// The sink over all RX queues.
    pub fn rx_sink(&self) -> RxSet {
        let qs = (0..self.queue_pairs())
            .map(|p| {
                RxQueue::new(
                    self.dev.0.slots[2 * p as usize].clone(),
                    self.dev.0.ctls[2 * p as usize].clone(),
                    self.dev.0.stats.clone(),
                    self.dev.0.mrg.clone(),
                )
            })
            .collect();
        RxSet::new(qs, self.dev.0.rx_wake.clone(), self.dev.0.acked.clone())
    }

    /// Offloads the guest takes on RX, as the engine's `OFFLOAD_*` bits.
    pub fn rx_offloads(&self) -> u32 {
        rx_offloads(self.dev.0.acked.load(Ordering::Acquire))
    }

    /// Counters.
    pub fn stats(&self) -> NetPortStats {
        let s = &self.dev.0.stats;
        let last = self.dev.0.diag.last();
        NetPortStats {
            connected: self.dev.0.connected.load(Ordering::Relaxed),
            state: self.state(),
            queues_running: self.queues_running(),
            last_error_at: last.as_ref().map(|(_, t)| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            }),
            last_error: last.map(|(m, _)| m),
            not_running: s.not_running.load(Ordering::Relaxed),
            connections: self.dev.0.connections.load(Ordering::Relaxed),
            acked_features: self.dev.0.acked.load(Ordering::Relaxed),
            bad_chains: s.bad_chains(),
            no_rx_buffer: s.no_rx_buffer.load(Ordering::Relaxed),
            rx_too_small: s.rx_too_small.load(Ordering::Relaxed),
        }
    }

    /// Whether a VMM is connected and the device is live.
    pub fn connected(&self) -> bool {
        self.dev.0.connected.load(Ordering::Acquire)
    }

    /// Where the connection stands.
    pub fn state(&self) -> PortState {
        if !self.connected() {
            PortState::Waiting
        } else if self.queues_running() > 0 {
            PortState::Running
        } else {
            PortState::Negotiating
        }
    }

    /// Queues (RX and TX) started and enabled now.
    pub fn queues_running(&self) -> usize {
        self.dev
            .0
            .slots
            .iter()
            .filter(|s| s.get().is_some_and(|b| b.vring.config().running()))
            .count()
    }
}

impl Drop for NetPort {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Waits until `fd` is readable or `stop` is kicked; true on stop.
fn wait_readable(fd: Option<BorrowedFd<'_>>, stop: &EventFd, timeout: Option<Duration>) -> bool {
    use netmap::sys::{PollFd, PollFlags};
    let mut fds = vec![PollFd::new(stop.as_fd(), PollFlags::IN)];
    if let Some(fd) = fd {
        fds.push(PollFd::new(fd, PollFlags::IN));
    }
    let _ = netmap::sys::poll(&mut fds, timeout);
    !fds[0].revents.is_empty()
}

fn serve(dev: NetDevice, listener: Option<UnixListener>, stop: &EventFd) {
    let name = dev.0.cfg.name.clone();
    loop {
        let stream = match &listener {
            Some(l) => {
                if wait_readable(Some(l.as_fd()), stop, None) {
                    break;
                }
                match l.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => {
                        dev.0.diag.error(&name, &format!("accept: {e}"));
                        if wait_readable(None, stop, Some(Duration::from_secs(1))) {
                            break;
                        }
                        continue;
                    }
                }
            }
            // Never a blocking connect: a VMM whose listener never
            // accepts (backlog full) would hold this thread, and with it
            // the port's removal.
            None => match crate::socket::connect(&dev.0.cfg.socket, dev.0.cfg.owner) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(port = name, "connecting to {:?}: {e}", dev.0.cfg.socket);
                    if wait_readable(None, stop, Some(Duration::from_secs(1))) {
                        break;
                    }
                    continue;
                }
            },
        };
        if let Err(e) = crate::socket::check_peer(&stream, dev.0.cfg.owner) {
            dev.0.diag.error(&name, &e);
            drop(stream);
            if listener.is_none() && wait_readable(None, stop, Some(Duration::from_secs(1))) {
                break;
            }
            continue;
        }
        // The listener is non-blocking (nothing may block the port's
        // thread); the session's socket is blocking with timeouts.
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        if session(&dev, stream, stop) {
            break;
        }
    }
    disconnect(&dev);
}

/// Serves one VMM connection; true if the port is being stopped.
fn session(dev: &NetDevice, stream: UnixStream, stop: &EventFd) -> bool {
    let name = &dev.0.cfg.name;
    // A fresh session per connection: a VMM that reconnects starts the
    // protocol from the top.
    let mut s = match Session::new(dev, Conn::new(stream)) {
        Ok(s) => s,
        Err(e) => {
            dev.0
                .diag
                .error(name, &format!("cannot start a vhost-user session: {e}"));
            return wait_readable(None, stop, Some(Duration::from_secs(1)));
        }
    };
    // The session's queues are known now, before the VMM says a word:
    // publish them so frames sent right after the queues are enabled find
    // them.
    for (q, v) in s.vrings().iter().enumerate() {
        if let Some(slot) = dev.0.slots.get(q) {
            slot.set(Some(Binding {
                vring: v.clone(),
                mem: s.guest_mem().clone(),
            }));
        }
    }
    let quiet = dev.0.diag.failing();
    dev.0.connected.store(true, Ordering::Release);
    dev.0.connections.fetch_add(1, Ordering::Relaxed);
    if quiet {
        tracing::debug!(port = name, "VMM connected");
    } else {
        tracing::info!(port = name, "VMM connected");
    }
    let r = s.run(stop);
    let stopping = r.is_ok();
    match r {
        Ok(()) => {}
        Err(e) if e.is_closed() => {
            if dev.0.diag.failing() {
                tracing::debug!(port = name, "VMM disconnected");
            } else {
                tracing::info!(port = name, "VMM disconnected");
            }
        }
        Err(e) => {
            dev.0
                .diag
                .error(name, &format!("vhost-user session ended: {e}"));
        }
    }
    // Dropping the session stops every queue and waits for the forwarding
    // threads to leave their batches before its memory goes.
    drop(s);
    disconnect(dev);
    stopping
}

/// The VMM went away: stop every queue, wait for the forwarding threads to
/// leave their batches (every popped chain goes back first), then forget
/// the session's queues.
fn disconnect(dev: &NetDevice) {
    dev.0.connected.store(false, Ordering::Release);
    for (q, slot) in dev.0.slots.iter().enumerate() {
        if let Some(b) = slot.get() {
            b.vring.configure(|c| (c.ready, c.enabled) = (false, false));
        }
        let _ = dev.0.ctls[q].quiesce(Duration::from_secs(2));
        slot.set(None);
    }
}
