//! The control socket: accepts clients, reads one request per message,
//! answers through the registry, and reclaims a client's port when its
//! connection closes (exit, crash or SIGKILL alike).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use netmap::ctrl::{recv_request_discarding_fds, send_reply, Reply};
use tracing::{debug, info, warn};

use crate::signal::StopSignals;
use crate::state::{Conn, Registry};

struct Client {
    fd: OwnedFd,
    conn: Conn,
}

/// How long the listener rests after accept ran out of descriptors: the
/// pending connection stays readable, so watching it again at once would
/// spin.
const ACCEPT_REST: Duration = Duration::from_millis(500);

/// How often the control thread looks after what no request announces
/// (interfaces that went away under a NIC port).
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Event data of the listener and of the stop signals; clients use the
/// numbers below.
const LISTENER: u32 = u32::MAX;
const SIGNALS: u32 = u32::MAX - 1;

/// What a client's socket is watched for.
const CLIENT_EVENTS: EventSet = EventSet::IN.union(EventSet::READ_HANG_UP);

/// A uid's control connections (`--quota-conns`).
#[derive(Default)]
struct UidConns {
    open: usize,
    /// The quota was logged since the count last went down.
    warned: bool,
}

/// The control plane as one event-manager subscriber: the listener, the
/// stop signals and every client, each client under its own event data.
struct ControlPlane<'r> {
    listener: OwnedFd,
    signals: &'r StopSignals,
    reg: &'r mut Registry,
    clients: HashMap<u32, Client>,
    /// Connections open per uid other than root.
    per_uid: HashMap<u32, UidConns>,
    next_key: u32,
    next_conn: u64,
    /// Since when the listener is out of the interest list (EMFILE).
    resting: Option<Instant>,
    stop: bool,
}

impl ControlPlane<'_> {
    fn listener_events(&self) -> Events {
        Events::with_data(&self.listener, LISTENER, EventSet::IN)
    }

    fn accept(&mut self, ops: &mut EventOps<'_>) {
        match netmap::sys::accept(&self.listener) {
            Ok(fd) if netmap::sys::set_nonblocking(&fd).is_err() => drop(fd),
            Ok(fd) => {
                let uid = netmap::sys::peer_cred(&fd).map(|c| c.1).unwrap_or(u32::MAX);
                if uid != 0 {
                    let c = self.per_uid.entry(uid).or_default();
                    if c.open >= self.reg.quotas.connections {
                        // Logged once per stay at the quota, not per attempt.
                        if !c.warned {
                            c.warned = true;
                            warn!(
                                uid,
                                quota = self.reg.quotas.connections,
                                "control connections of this uid at its quota (--quota-conns): more are closed at once"
                            );
                        }
                        return;
                    }
                    c.open += 1;
                }
                // A free key: they wrap after 2^32 - 2 connections.
                while self.clients.contains_key(&self.next_key) || self.next_key >= SIGNALS {
                    self.next_key = self.next_key.wrapping_add(1) % SIGNALS;
                }
                let key = self.next_key;
                self.next_key = self.next_key.wrapping_add(1);
                let id = self.next_conn;
                self.next_conn += 1;
                if let Err(e) = ops.add(Events::with_data(&fd, key, CLIENT_EVENTS)) {
                    warn!(conn = id, uid, "client not watched, dropped: {e:?}");
                    self.uid_conn_gone(uid);
                    return;
                }
                debug!(conn = id, uid, "client connected");
                self.clients.insert(
                    key,
                    Client {
                        fd,
                        conn: Conn { id, uid, reg: None },
                    },
                );
            }
            Err(e) => {
                if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                    let _ = ops.remove(self.listener_events());
                    self.resting = Some(Instant::now());
                }
                warn!("accept: {e}");
            }
        }
    }

    /// Serves one readable client; false if it is to be let go.
    fn serve_client(&mut self, key: u32) -> bool {
        let Some(c) = self.clients.get_mut(&key) else {
            return true;
        };
        match recv_request_discarding_fds(&c.fd) {
            Ok(Some(req)) => {
                let (error, answer, fds) = self.reg.handle(&mut c.conn, &req);
                let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
                if let Err(e) = send_reply(&c.fd, &Reply { error, req: answer }, &borrowed) {
                    // EAGAIN included: a client that does not read its
                    // replies is let go.
                    warn!(
                        conn = c.conn.id,
                        uid = c.conn.uid,
                        "reply not sent, client dropped: {e}"
                    );
                    return false;
                }
                true
            }
            Ok(None) => false,
            Err(netmap::ctrl::CtrlError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                true
            }
            Err(e) => {
                // Garbage: answer with the errno it maps to, then keep the
                // connection (it may send a good one next).
                debug!(conn = c.conn.id, "bad request: {e}");
                send_reply(&c.fd, &Reply::failure(e.errno()), &[]).is_ok()
            }
        }
    }

    /// One control connection of `uid` fewer.
    fn uid_conn_gone(&mut self, uid: u32) {
        if let Some(c) = self.per_uid.get_mut(&uid) {
            c.open = c.open.saturating_sub(1);
            c.warned = false;
            if c.open == 0 {
                self.per_uid.remove(&uid);
            }
        }
    }

    fn drop_client(&mut self, key: u32, ops: &mut EventOps<'_>) {
        if let Some(mut c) = self.clients.remove(&key) {
            self.uid_conn_gone(c.conn.uid);
            let _ = ops.remove(Events::with_data(&c.fd, key, CLIENT_EVENTS));
            debug!(conn = c.conn.id, fd = c.fd.as_raw_fd(), "client gone");
            self.reg.unregister(&mut c.conn);
        }
    }
}

impl MutEventSubscriber for ControlPlane<'_> {
    fn init(&mut self, ops: &mut EventOps<'_>) {
        let signals = Events::with_data(&self.signals.as_fd(), SIGNALS, EventSet::IN);
        if let Err(e) = ops.add(self.listener_events()).and(ops.add(signals)) {
            warn!("control socket not watched: {e:?}");
            self.stop = true;
        }
    }

    fn process(&mut self, ev: Events, ops: &mut EventOps<'_>) {
        match ev.data() {
            SIGNALS => {
                if let Some(sig) = self.signals.take() {
                    info!(signal = sig, "stopping");
                    self.stop = true;
                }
            }
            LISTENER => self.accept(ops),
            key => {
                let set = ev.event_set();
                let keep = if set.contains(EventSet::IN) {
                    self.serve_client(key)
                } else {
                    !set.intersects(EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR)
                };
                if !keep {
                    self.drop_client(key, ops);
                }
            }
        }
    }
}

/// Serves `listener` until SIGTERM/SIGINT.
///
/// The loop is rust-vmm's `event-manager` with one subscriber, the control
/// plane. It never waits on one client: client sockets are non-blocking
/// (valed alone holds their open file descriptions), a request is read
/// only when epoll says one is there, descriptors a client attaches are
/// discarded by the kernel (never installed, so never closed here), and a
/// client whose receive queue is full when its reply is sent (it sends
/// requests and does not read) is disconnected.
pub fn serve(listener: OwnedFd, reg: &mut Registry, signals: &StopSignals) -> std::io::Result<()> {
    let em_err = |e: event_manager::Error| std::io::Error::other(format!("{e:?}"));
    let mut em: EventManager<ControlPlane<'_>> = EventManager::new().map_err(em_err)?;
    let id = em.add_subscriber(ControlPlane {
        listener,
        signals,
        reg,
        clients: HashMap::new(),
        per_uid: HashMap::new(),
        next_key: 0,
        next_conn: 1,
        resting: None,
        stop: false,
    });
    let mut housekept = Instant::now();
    loop {
        let cp = em.subscriber_mut(id).map_err(em_err)?;
        if cp.stop {
            break;
        }
        if housekept.elapsed() >= HOUSEKEEPING {
            cp.reg.housekeeping();
            housekept = Instant::now();
        }
        let next = HOUSEKEEPING.saturating_sub(housekept.elapsed());
        let timeout = match cp.resting {
            Some(t) if t.elapsed() >= ACCEPT_REST => {
                cp.resting = None;
                let ev = cp.listener_events();
                em.event_ops(id).map_err(em_err)?.add(ev).map_err(em_err)?;
                next
            }
            Some(t) => (ACCEPT_REST - t.elapsed()).min(next),
            None => next,
        };
        em.run_with_timeout(timeout.as_millis() as i32 + 1)
            .map_err(em_err)?;
    }
    let cp = em.remove_subscriber(id).map_err(em_err)?;
    for (_, mut c) in cp.clients {
        cp.reg.unregister(&mut c.conn);
    }
    Ok(())
}

/// Prepares the socket path: creates its directory, refuses to take over a
/// socket another valed still answers on, removes a stale one.
pub fn prepare_path(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    if path.exists() {
        if netmap::ctrl::CtrlConn::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{}: another valed is running", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    Ok(())
}
