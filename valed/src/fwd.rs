//! Forwarding threads. Each owns a set of sources (the TX rings of
//! registered clients) and runs `Switch::forward` on them in turn. When
//! nothing moved for the busy-poll budget, it asks every source's client for
//! a kick (the CSB need-kick handshake), re-checks, and sleeps in epoll on
//! the kick doorbells, edge-triggered, emptying only those that rang, and
//! on the sources' own doorbells (a guest's TX kick eventfd), never read.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netmap::sys::{Epoll, EventFd};
use tracing::{debug, warn};
use vale::ring_port::{pipe_forward, RingSink, RingSinkSet, RingSource, ZmonWatch};
use vale::{PortId, Scratch, Sink, Source, Switch};

/// One TX ring (or guest TX queue, or device) to forward from.
pub struct Unit {
    /// Registration it belongs to (removed together).
    pub reg: u64,
    /// Where the frames come from and go.
    pub path: Path,
    /// The client's kick eventfd (shared by the registration's rings), or
    /// the eventfd a vhost-user worker relays the guest's kicks to, or the
    /// device a NIC or host stack port receives on.
    pub kick: Arc<EventFd>,
    /// Whether `kick` is a doorbell to empty when it rang (false for a
    /// device: reading it would take a frame).
    pub drain: bool,
}

/// Where a unit's frames come from and go.
pub enum Path {
    /// From any source (a client's TX ring, a guest's TX virtqueue, what
    /// an interface or the host stack sent) into a switch, as port `port`.
    Switch {
        /// The switch.
        switch: Arc<Switch>,
        /// The port the source belongs to.
        port: PortId,
        /// The source.
        source: Box<dyn Source + Send>,
    },
    /// From one end of a netmap pipe straight into the other, zero copy.
    Pipe {
        /// This end's TX ring.
        source: RingSource,
        /// The other end's RX ring.
        dst: Box<RingSink>,
    },
    /// A zero-copy monitor's doorbell: when its client syncs, the
    /// monitored port's RX rings are swept for slots their client
    /// released, which then go to the monitor.
    Sweep {
        /// The monitor's RX rings (asked for kicks while the thread sleeps).
        watch: ZmonWatch,
        /// The monitored port's RX rings.
        sink: Arc<Mutex<RingSinkSet>>,
    },
}

impl Path {
    fn source(&mut self) -> &mut dyn Source {
        match self {
            Path::Switch { source, .. } => &mut **source,
            Path::Pipe { source, .. } => source,
            Path::Sweep { watch, .. } => watch,
        }
    }
}

impl std::fmt::Debug for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unit")
            .field("reg", &self.reg)
            .finish_non_exhaustive()
    }
}

/// A unit as its thread holds it: with the source's own doorbell as the
/// thread watches it while it sleeps (a guest's TX kick fd).
struct Held {
    unit: Unit,
    bell: Option<Arc<EventFd>>,
}

enum Cmd {
    Add(Box<Unit>),
    Remove(u64, std::sync::mpsc::Sender<()>),
}

struct Shared {
    cmds: Mutex<Vec<Cmd>>,
    /// `cmds` is not empty: the thread looks at it only then, not at every
    /// poll.
    pending: AtomicBool,
    wake: EventFd,
}

/// Handle to one forwarding thread.
pub struct Forwarder {
    shared: Arc<Shared>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

const WAKE_TOKEN: u64 = u64::MAX;

/// Polls between two readings of the clock (MAC ages, busy-poll budget).
const CLOCK_POLLS: u32 = 16;

impl Forwarder {
    /// Starts thread `id`, pinned to `cpu` if given, busy-polling for
    /// `busy` before sleeping.
    pub fn start(
        id: usize,
        cpu: Option<usize>,
        busy: Duration,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<Forwarder> {
        let shared = Arc::new(Shared {
            cmds: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
            wake: EventFd::new()?,
        });
        let s2 = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("vale-fwd{id}"))
            .spawn(move || {
                if let Some(c) = cpu {
                    pin_to(c);
                }
                if let Err(e) = run(&s2, busy, &stop) {
                    warn!(thread = id, "forwarding thread failed: {e}");
                }
            })?;
        Ok(Forwarder {
            shared,
            handle: Some(handle),
        })
    }

    /// Hands a ring to the thread.
    pub fn add(&self, u: Unit) {
        self.shared
            .cmds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Cmd::Add(Box::new(u)));
        self.shared.pending.store(true, Ordering::Release);
        let _ = self.shared.wake.kick();
    }

    /// Takes back every ring of registration `reg`; returns once the thread
    /// no longer touches them (it acknowledges at a batch boundary).
    pub fn remove(&self, reg: u64) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.shared
            .cmds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Cmd::Remove(reg, tx));
        self.shared.pending.store(true, Ordering::Release);
        let _ = self.shared.wake.kick();
        let _ = rx.recv_timeout(Duration::from_secs(5));
    }

    /// Wakes the thread (e.g. to notice the stop flag).
    pub fn wake(&self) {
        let _ = self.shared.wake.kick();
    }

    /// Waits for the thread to end.
    pub fn join(mut self) {
        self.wake();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it for any cpu
    // below CPU_SETSIZE, which we check.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            warn!(
                cpu,
                "cannot pin forwarding thread: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// valed's clock for MAC ages, in seconds: one epoch for every thread
/// that forwards into a switch, since a bridge shared by threads whose
/// clocks disagreed would see entries another thread refreshed as aged.
pub fn now_secs() -> u32 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_secs() as u32
}

fn run(sh: &Shared, busy: Duration, stop: &AtomicBool) -> std::io::Result<()> {
    let ep = Epoll::new()?;
    ep.add(&sh.wake, WAKE_TOKEN)?;
    let mut units: Vec<Held> = Vec::new();
    let mut bell_warned = false;
    // Kick fds are shared by the rings of one registration: watch once.
    // (units using it, the fd, whether to empty it when it rang)
    let mut kick_refs: HashMap<i32, (usize, Arc<EventFd>, bool)> = HashMap::new();
    // Readers' kick fds watched for backpressure wake-ups.
    let mut dest_fds: HashMap<i32, Arc<EventFd>> = HashMap::new();
    let mut blocked: Vec<(Arc<Switch>, PortId)> = Vec::new();
    let mut sc = Scratch::default();
    // The clock is read once in CLOCK_POLLS polls, not at each: an idle
    // poll is a few hundred ns, of which reading the clock (twice) was a
    // sixth, and a guest waiting for a frame sleeps if it is not there
    // when it looks.
    let mut polls: u32 = 0;
    // A/B builds: where the last pass ended, for `vale::ab::poll`.
    let mut mark = vale::ab::stamp();
    let mut now = now_secs();
    let mut idle_polls: u32 = 0;
    let mut idle_since = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // Acquire: pairs with add/remove's Release after the push.
        let cmds: Vec<Cmd> = if sh.pending.swap(false, Ordering::Acquire) {
            std::mem::take(&mut *sh.cmds.lock().unwrap_or_else(|e| e.into_inner()))
        } else {
            Vec::new()
        };
        for c in cmds {
            match c {
                Cmd::Add(u) => {
                    let k = u.kick.as_fd().as_raw_fd();
                    if let Some(fd) = dest_fds.remove(&k) {
                        // Was watched as a reader: now a source fd.
                        let _ = ep.remove(&*fd);
                    }
                    let e = kick_refs
                        .entry(k)
                        .or_insert_with(|| (0, u.kick.clone(), u.drain));
                    if e.0 == 0 {
                        ep.add(&*u.kick, k as u64)?;
                    }
                    e.0 += 1;
                    debug!(reg = u.reg, "ring added");
                    units.push(Held {
                        unit: *u,
                        bell: None,
                    });
                }
                Cmd::Remove(reg, ack) => {
                    // A reader may be gone: forget every watched reader fd
                    // (re-added when a port blocks again).
                    for (_, fd) in dest_fds.drain() {
                        let _ = ep.remove(&*fd);
                    }
                    for u in units.iter().map(|h| &h.unit).filter(|u| u.reg == reg) {
                        let k = u.kick.as_fd().as_raw_fd();
                        if let Some(e) = kick_refs.get_mut(&k) {
                            e.0 -= 1;
                            if e.0 == 0 {
                                let _ = ep.remove(&*e.1);
                                kick_refs.remove(&k);
                            }
                        }
                    }
                    units.retain(|h| {
                        if h.unit.reg != reg {
                            return true;
                        }
                        if let Some(b) = &h.bell {
                            let _ = ep.remove(&**b);
                        }
                        false
                    });
                    let _ = ack.send(());
                }
            }
        }
        polls = polls.wrapping_add(1);
        if polls % CLOCK_POLLS == 0 {
            now = now_secs();
        }
        let mut moved = 0;
        blocked.clear();
        for u in units.iter_mut().map(|h| &mut h.unit) {
            match &mut u.path {
                Path::Switch {
                    switch,
                    port,
                    source,
                } => {
                    let fw = switch.forward(*port, &mut **source, &mut sc, now);
                    moved += fw.frames;
                    if let Some(p) = fw.blocked_on {
                        if !blocked
                            .iter()
                            .any(|(s, q)| Arc::ptr_eq(s, switch) && *q == p)
                        {
                            blocked.push((switch.clone(), p));
                        }
                    }
                }
                Path::Pipe { source, dst } => moved += pipe_forward(source, dst),
                Path::Sweep { sink, .. } => {
                    moved += sink.lock().unwrap_or_else(|e| e.into_inner()).sweep() as usize
                }
            }
        }
        mark = vale::ab::poll(moved > 0, mark);
        if moved > 0 {
            vale::ab::count(moved);
            idle_polls = 0;
            continue;
        }
        idle_polls = idle_polls.wrapping_add(1);
        let spin = if busy.is_zero() {
            false
        } else if idle_polls == 1 {
            idle_since = Instant::now();
            true
        } else {
            idle_polls % CLOCK_POLLS != 0 || idle_since.elapsed() < busy
        };
        if spin {
            std::hint::spin_loop();
            continue;
        }
        // Ask every client for a kick and re-check before sleeping: the
        // senders for new frames, and the readers of backpressure ports
        // that hold a sender for room.
        let mut may_sleep = true;
        for u in units.iter_mut().map(|h| &mut h.unit) {
            if !u.path.source().arm() {
                may_sleep = false;
                break;
            }
        }
        for u in units.iter_mut().map(|h| &mut h.unit) {
            if !may_sleep {
                break;
            }
            let Path::Pipe { source, dst } = &mut u.path else {
                continue;
            };
            if source.kring().tx_pending().1 == 0 {
                continue;
            }
            match dst.arm() {
                vale::Arm::Ready => may_sleep = false,
                vale::Arm::Wait(fd) => {
                    let k = fd.as_fd().as_raw_fd();
                    if !kick_refs.contains_key(&k) && !dest_fds.contains_key(&k) {
                        ep.add(&*fd, k as u64)?;
                        dest_fds.insert(k, fd);
                    }
                }
                vale::Arm::Never => {}
            }
        }
        for (sw, p) in &blocked {
            if !may_sleep {
                break;
            }
            match sw.arm_port(*p) {
                vale::Arm::Ready => may_sleep = false,
                vale::Arm::Wait(fd) => {
                    // Watched until the thread's rings change: re-adding an
                    // edge-triggered fd whose counter is set reports it at
                    // once, so it is added only once.
                    let k = fd.as_fd().as_raw_fd();
                    if !kick_refs.contains_key(&k) && !dest_fds.contains_key(&k) {
                        ep.add(&*fd, k as u64)?;
                        dest_fds.insert(k, fd);
                    }
                }
                vale::Arm::Never => {}
            }
        }
        // A doorbell that could not be watched: look again soon instead.
        let mut deaf = false;
        if may_sleep {
            // Wait on the sources' own doorbells too, so that a guest's
            // kick wakes this thread and not a vhost-user worker that then
            // wakes it. One that was set when added reports at once: no
            // kick since `arm` is lost.
            for Held { unit: u, bell } in units.iter_mut() {
                let now = u.path.source().doorbell();
                let same = match (&now, &*bell) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                };
                if same {
                    continue;
                }
                if let Some(old) = bell.take() {
                    let _ = ep.remove(&*old);
                }
                if let Some(fd) = now {
                    // Token: the fd, which is in neither map (never
                    // emptied when it rang).
                    let k = fd.as_fd().as_raw_fd();
                    match ep.add(&*fd, k as u64) {
                        Ok(()) => *bell = Some(fd),
                        Err(e) => {
                            if !std::mem::replace(&mut bell_warned, true) {
                                warn!(
                                    reg = u.reg,
                                    "cannot wait on a guest's kick fd ({e}): polling every 1 ms"
                                );
                            }
                            deaf = true;
                        }
                    }
                }
            }
            // Clients' doorbells are pipes: empty the ones that rang, so
            // the next kick is an edge again and a pipe never fills. (The
            // relays and vhost kicks are eventfds, never full; draining
            // them is one read.)
            // A held sender waits for its backpressure port no longer
            // than the engine's hold: then the port counts as stalled.
            let nap = if deaf {
                Duration::from_millis(1)
            } else if blocked.is_empty() {
                Duration::from_secs(1)
            } else {
                vale::BACKPRESSURE_HOLD
            };
            for k in ep.wait(64, Some(nap))? {
                let fd = i32::try_from(k).ok();
                let bell = fd.and_then(|k| match kick_refs.get(&k) {
                    Some((_, b, true)) => Some(b),
                    Some((_, _, false)) => None,
                    None => dest_fds.get(&k),
                });
                if let Some(b) = bell {
                    let _ = b.drain();
                }
            }
        }
        for u in units.iter_mut().map(|h| &mut h.unit) {
            u.path.source().disarm();
        }
        for (sw, p) in &blocked {
            sw.disarm_port(*p);
        }
        for u in units.iter_mut().map(|h| &mut h.unit) {
            if let Path::Pipe { dst, .. } = &mut u.path {
                dst.disarm();
            }
        }
        let _ = sh.wake.drain();
        idle_polls = 0;
        now = now_secs();
        // Asleep is neither busy nor idle polling.
        mark = vale::ab::stamp();
    }
    Ok(())
}
