//! The backend side of the vhost-user protocol, ours: one [`Session`] per
//! VMM connection, dispatching each request and owning the session's
//! guest memory, queues and kick eventfds.
//!
//! # Why not the `vhost` crate's handler
//! Its `BackendReqHandler` enforces an order real frontends do not keep:
//! QEMU 7.2 sends `SET_VRING_ENABLE` before `SET_FEATURES` (at reset, when
//! the guest driver starts, on every reconnect), and one identical
//! `ADD_MEM_REG` per queue pair; the crate closes the connection on the
//! first and vhost-user-backend on the second. DPDK, SPDK and QEMU's
//! libvhost-user each own their dispatch and accept both; so do we. We
//! keep the crate's wire types. Owning the dispatch also lets the memory
//! table check each descriptor before mapping it ([`crate::memory`]), and
//! keeps the queue state where the forwarding threads read it between
//! batches ([`crate::queue::Vring`]).
//!
//! # Order tolerance
//! - `SET_VRING_ENABLE` is remembered per queue whenever it comes. A queue
//!   starts at its kick; once started it runs when enabled, where
//!   "enabled" is the remembered request if PROTOCOL_FEATURES was acked and
//!   always otherwise (the spec's rule), decided again when SET_FEATURES
//!   arrives later.
//! - A repeated identical `ADD_MEM_REG` is counted (see [`MemTable`]).
//! - Requests for features we do not offer are refused by name, with a
//!   failure ack when one was asked for, and the session goes on; only a
//!   broken stream or a `SET_FEATURES` acking what was never offered ends
//!   it.
//!
//! # Kicks
//! The session's thread waits on the socket and every queue's kick eventfd
//! in one edge-triggered epoll, and never reads a kick eventfd (it is
//! shared with the VMM, which could make it blocking): each write wakes
//! the edge again. Queues whose kicks the data path waits on itself
//! ([`Device::session_watches_kick`] false) are left out; their kick fd
//! reaches it in the queue's configuration.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use netmap::sys::{Epoll, EventFd, PollFd, PollFlags};
use vhost::vhost_user::message::{
    FrontendReq, VhostUserLog, VhostUserMemory, VhostUserMemoryRegion, VhostUserProtocolFeatures,
    VhostUserSingleMemoryRegion, VhostUserVringAddr, VhostUserVringState,
};
use vm_memory::Bytes;
use vm_memory::{GuestAddress, GuestAddressSpace};

use crate::conn::{Conn, ConnError, Request};
use crate::dirty::DirtyLog;
use crate::memory::{MemError, MemTable, RegionSpec, MAX_REGIONS};
use crate::types::GuestMem;
use crate::vring::Vring;

/// virtio feature bit: the device speaks vhost-user protocol features.
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// virtio feature bit: EVENT_IDX.
const F_EVENT_IDX: u64 = 1 << 29;
/// vhost feature bit: the driver logs the device's writes (migration).
const F_LOG_ALL: u64 = crate::types::features::LOG_ALL;
/// SET_VRING_ADDR flags: log the used ring at `log_guest_addr`.
const VRING_F_LOG: u32 = 1;
/// SET_VRING_KICK/CALL/ERR: no descriptor (the driver polls).
const VRING_NOFD: u64 = 0x100;
/// SET_VRING_KICK/CALL/ERR: the queue index bits.
const VRING_IDX: u64 = 0xff;

/// What the session needs from the port it serves.
pub trait Device {
    /// Virtio features offered.
    fn features(&self) -> u64;
    /// Protocol features offered.
    fn protocol_features(&self) -> VhostUserProtocolFeatures;
    /// Queues (two per pair).
    fn num_queues(&self) -> usize;
    /// Largest queue size accepted.
    fn max_queue_size(&self) -> u16;
    /// The driver acked `features` (SET_FEATURES).
    fn set_acked_features(&self, features: u64);
    /// Queue `q` was marked not ready, or its configuration changed: wait
    /// until its forwarding thread is between batches, so no chain of it
    /// is outstanding and the next batch reads the new configuration.
    /// False if it did not get there in time.
    fn quiesce(&self, q: usize) -> bool;
    /// The guest kicked queue `q` (or it just started). True if work is
    /// left that the call stopped short of, to let the session look at
    /// its socket and its stop signal in between: the session calls it
    /// again as soon as it has, without waiting for another kick.
    fn kick(&self, q: usize) -> bool;
    /// Whether the session's thread waits on queue `q`'s kick eventfd
    /// and calls [`kick`](Self::kick) when it rings. False where the data
    /// path waits on it itself, through [`VringConfig::kick`]
    /// (crate::vring::VringConfig::kick).
    fn session_watches_kick(&self, _q: usize) -> bool {
        true
    }
    /// An eventfd (the device's own) that rings when every started queue
    /// should be kicked once more: the device's kick handling changed
    /// (a port attached anew), and work a kick stopped short of may be
    /// waiting with the guest's notifications off.
    fn rekick(&self) -> Option<&EventFd> {
        None
    }
    /// The port's owner if not root: the guest memory its VMMs map counts
    /// against that user's budget (`memory::USER_MAX_REGIONS`, four times
    /// the machine's memory).
    fn owner(&self) -> Option<u32> {
        None
    }
    /// A request was refused and the session goes on: for diagnostics.
    fn refused(&self, what: &str);
    /// The VMM asks the port to announce `mac` (SEND_RARP: the guest just
    /// arrived by migration and cannot announce itself).
    fn announce(&self, mac: [u8; 6]);
    /// The guard every call fd of the port shares (see
    /// `netmap::sys::CallGuard`): a VMM that raced one into blocking gets
    /// no interrupt through any later one, so it stalls valed once per
    /// port, however many it sends. The default is one guard per call fd.
    fn call_guard(&self) -> Arc<netmap::sys::CallGuard> {
        Arc::default()
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The connection failed or the stream broke.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// SET_FEATURES acked features that were never offered.
    #[error("SET_FEATURES acks {names} ({bits:#x}), never offered")]
    Features {
        /// The bits.
        bits: u64,
        /// Their names.
        names: String,
    },
    /// The file behind a guest memory region shrank while mapped; the
    /// SIGBUS guard caught valed's access past its end.
    #[error(
        "guest memory region gpa {gpa:#x} size {size:#x}: its file shrank under the mapping \
         (truncated by the VMM); session dropped"
    )]
    MemoryShrank {
        /// Guest-physical start.
        gpa: u64,
        /// Size.
        size: u64,
    },
    /// An OS call of ours failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// SET_LOG_BASE gave a log valed cannot use. Going on would let a
    /// migration copy guest pages valed wrote to without knowing it: the
    /// session ends, and with it the migration.
    #[error("SET_LOG_BASE refused: {0}; session dropped (a migration without the log would corrupt the guest)")]
    Log(String),
}

impl SessionError {
    /// The VMM closed the connection (the normal end).
    pub fn is_closed(&self) -> bool {
        matches!(self, SessionError::Conn(ConnError::Closed))
    }
}

/// A request refused; the session goes on.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("{0}")]
    Msg(String),
    #[error(transparent)]
    Mem(#[from] MemError),
}

/// Names of the virtio-net and transport feature bits in `bits`
/// (virtio 1.2 §5.1.3, §6), e.g. `GUEST_UFO|bit 55`.
pub fn feature_names(bits: u64) -> String {
    const NAMES: &[(u32, &str)] = &[
        (0, "CSUM"),
        (1, "GUEST_CSUM"),
        (2, "CTRL_GUEST_OFFLOADS"),
        (3, "MTU"),
        (5, "MAC"),
        (6, "GSO"),
        (7, "GUEST_TSO4"),
        (8, "GUEST_TSO6"),
        (9, "GUEST_ECN"),
        (10, "GUEST_UFO"),
        (11, "HOST_TSO4"),
        (12, "HOST_TSO6"),
        (13, "HOST_ECN"),
        (14, "HOST_UFO"),
        (15, "MRG_RXBUF"),
        (16, "STATUS"),
        (17, "CTRL_VQ"),
        (18, "CTRL_RX"),
        (19, "CTRL_VLAN"),
        (20, "CTRL_RX_EXTRA"),
        (21, "GUEST_ANNOUNCE"),
        (22, "MQ"),
        (23, "CTRL_MAC_ADDR"),
        (24, "NOTIFY_ON_EMPTY"),
        (27, "ANY_LAYOUT"),
        (28, "RING_INDIRECT_DESC"),
        (29, "RING_EVENT_IDX"),
        (30, "PROTOCOL_FEATURES"),
        (32, "VERSION_1"),
        (33, "ACCESS_PLATFORM"),
        (34, "RING_PACKED"),
        (35, "IN_ORDER"),
        (36, "ORDER_PLATFORM"),
        (37, "SR_IOV"),
        (38, "NOTIFICATION_DATA"),
        (41, "RING_RESET"),
        (61, "RSC_EXT"),
        (62, "STANDBY"),
        (63, "SPEED_DUPLEX"),
    ];
    let mut out = Vec::new();
    for b in 0..64u32 {
        if bits & (1u64 << b) != 0 {
            match NAMES.iter().find(|(n, _)| *n == b) {
                Some((_, name)) => out.push((*name).to_string()),
                None => out.push(format!("bit {b}")),
            }
        }
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join("|")
    }
}

/// Epoll tokens: the stop eventfd, the socket, then queue q's kick at
/// `TOK_KICK + q`.
const TOK_STOP: u64 = 0;
const TOK_SOCK: u64 = 1;
const TOK_FAULT: u64 = 2;
const TOK_REKICK: u64 = 3;
const TOK_KICK: u64 = 16;

/// One VMM connection.
pub struct Session<'d, D: Device> {
    dev: &'d D,
    conn: Conn,
    mem: MemTable,
    vrings: Vec<Vring>,
    /// Last SET_VRING_ENABLE per queue, whenever it came.
    enable_req: Vec<bool>,
    /// Started by a kick and not stopped by GET_VRING_BASE since.
    started: Vec<bool>,
    /// SET_FEATURES, once it came.
    acked: Option<u64>,
    /// The dirty log SET_LOG_BASE gave; in use while LOG_ALL is acked.
    log: Option<Arc<DirtyLog>>,
    /// Why the session must end after the request being handled (a
    /// logging guarantee valed could not keep).
    fatal: Option<String>,
    epoll: Epoll,
    /// Queues whose last kick stopped short ([`Device::kick`] said so), to
    /// kick again once the socket and the stop signal have been looked at.
    again: Vec<usize>,
}

impl<D: Device> std::fmt::Debug for Session<'_, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("acked", &self.acked)
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl<'d, D: Device> Session<'d, D> {
    /// A session on `conn`: no memory, queues stopped.
    pub fn new(dev: &'d D, conn: Conn) -> std::io::Result<Self> {
        let n = dev.num_queues();
        let epoll = Epoll::new()?;
        epoll.add(conn.socket(), TOK_SOCK)?;
        Ok(Session {
            dev,
            conn,
            mem: MemTable::for_owner(dev.owner()),
            vrings: (0..n).map(|_| Vring::new(dev.max_queue_size())).collect(),
            enable_req: vec![false; n],
            started: vec![false; n],
            acked: None,
            log: None,
            fatal: None,
            epoll,
            again: Vec::new(),
        })
    }

    /// The session's queues, in virtio-net order (RX of pair p at 2p, TX
    /// at 2p+1), to publish to the forwarding threads before the VMM says
    /// a word.
    pub fn vrings(&self) -> &[Vring] {
        &self.vrings
    }

    /// The session's guest memory.
    pub fn guest_mem(&self) -> &GuestMem {
        self.mem.guest_mem()
    }

    /// The memory table (for the fuzz harness).
    #[cfg(feature = "test-utils")]
    pub fn mem(&self) -> &MemTable {
        &self.mem
    }

    /// Serves requests and kicks until the VMM goes, a fatal error, or
    /// `stop` is kicked (Ok).
    pub fn run(&mut self, stop: &EventFd) -> Result<(), SessionError> {
        self.epoll.add(stop, TOK_STOP)?;
        if let Some(n) = crate::sigbus::notifier() {
            self.epoll.add(n, TOK_FAULT)?;
        }
        if let Some(r) = self.dev.rekick() {
            self.epoll.add(r, TOK_REKICK)?;
        }
        loop {
            let wait = if self.again.is_empty() {
                None
            } else {
                Some(Duration::ZERO)
            };
            let toks = self.epoll.wait(64, wait)?;
            // Kicks asked for again before this wait: the socket and stop
            // are looked at first, and a queue that stops short below
            // waits for the next pass.
            let again = std::mem::take(&mut self.again);
            for t in toks {
                match t {
                    TOK_STOP => return Ok(()),
                    TOK_SOCK if self.drain_requests(stop)? => return Ok(()),
                    // Some guest file shrank; ours?
                    TOK_FAULT => {
                        if let Some(r) = self.mem.faulted() {
                            return Err(SessionError::MemoryShrank {
                                gpa: r.gpa,
                                size: r.size,
                            });
                        }
                    }
                    TOK_REKICK => {
                        if let Some(r) = self.dev.rekick() {
                            let _ = r.drain();
                        }
                        for q in 0..self.started.len() {
                            if self.started[q] {
                                self.kick(q);
                            }
                        }
                    }
                    k if k >= TOK_KICK => {
                        let q = (k - TOK_KICK) as usize;
                        if self.started.get(q) == Some(&true) {
                            self.kick(q);
                        }
                    }
                    _ => {}
                }
            }
            for q in again {
                if self.started.get(q) == Some(&true) {
                    self.kick(q);
                }
            }
        }
    }

    /// Kicks queue `q`'s device side, and again later if it stopped short.
    fn kick(&mut self, q: usize) {
        if self.dev.kick(q) && !self.again.contains(&q) {
            self.again.push(q);
        }
    }

    /// Reads one request and handles it (blocks until it is whole).
    pub fn serve_one(&mut self) -> Result<(), SessionError> {
        let req = self.conn.recv()?;
        self.handle(req)
    }

    /// Handles requests while the socket has data (the epoll is
    /// edge-triggered), looking at `stop` between two: a VMM that sends
    /// without pause must not keep the session from stopping. True if
    /// `stop` was kicked.
    fn drain_requests(&mut self, stop: &EventFd) -> Result<bool, SessionError> {
        loop {
            self.serve_one()?;
            let mut p = [
                PollFd::new(self.conn.socket().as_fd(), PollFlags::IN),
                PollFd::new(stop.as_fd(), PollFlags::IN),
            ];
            netmap::sys::poll(&mut p, Some(Duration::ZERO))?;
            if !p[1].revents.is_empty() {
                return Ok(true);
            }
            if p[0].revents.is_empty() {
                return Ok(false);
            }
        }
    }

    /// Handles one request (public for the replay tests).
    pub fn handle(&mut self, req: Request) -> Result<(), SessionError> {
        let code = req.code;
        let need_reply = req.need_reply();
        let name = req.name();
        tracing::trace!(
            request = name,
            flags = req.flags,
            size = req.body.len(),
            "vhost-user"
        );
        let foreign = (!req.foreign.is_empty()).then(|| {
            format!(
                "descriptors that are neither shared memory nor an eventfd: {}",
                req.foreign.join(", ")
            )
        });
        if req.req() == Some(FrontendReq::SET_LOG_BASE) {
            if let Some(why) = foreign {
                return Err(SessionError::Log(why));
            }
            // QEMU waits for this reply whether or not it asked for an ack.
            self.set_log_base(req)?;
            return Ok(self.conn.reply(code, &[])?);
        }
        let r = match foreign {
            None => self.dispatch(req)?,
            Some(why) => Err(Refusal::Msg(why)),
        };
        if let Some(why) = self.fatal.take() {
            return Err(SessionError::Log(why));
        }
        match r {
            Ok(Some(body)) => self.conn.reply(code, &body)?,
            Ok(None) => {
                if need_reply {
                    self.conn.reply_u64(code, 0)?;
                }
            }
            Err(e) => {
                let what = format!("{name} refused: {e}");
                self.dev.refused(&what);
                if need_reply {
                    self.conn.reply_u64(code, 1)?;
                }
            }
        }
        Ok(())
    }

    fn queue_index(&self, i: u64) -> Result<usize, Refusal> {
        let n = self.vrings.len();
        if (i as usize) < n && i < u32::MAX as u64 {
            Ok(i as usize)
        } else {
            Err(Refusal::Msg(format!(
                "queue {i} does not exist (the port has {n})"
            )))
        }
    }

    /// Ok(Ok(Some(body))): reply with body; Ok(Ok(None)): ack if asked;
    /// Ok(Err(_)): refused, the session goes on; Err(_): the session ends.
    fn dispatch(&mut self, req: Request) -> Result<Result<Option<Vec<u8>>, Refusal>, SessionError> {
        let Some(r) = req.req() else {
            return Ok(Err(Refusal::Msg("unknown request".into())));
        };
        let m = |s: String| Refusal::Msg(s);
        let out = match r {
            FrontendReq::GET_FEATURES => Ok(Some(self.dev.features().to_le_bytes().to_vec())),
            FrontendReq::SET_FEATURES => {
                let f: u64 = match req.body_as() {
                    Ok(f) => f,
                    Err(e) => return Ok(Err(m(e))),
                };
                let extra = f & !self.dev.features();
                if extra != 0 {
                    return Err(SessionError::Features {
                        bits: extra,
                        names: feature_names(extra),
                    });
                }
                self.set_features(f);
                tracing::debug!(features = format_args!("{f:#x}"), "SET_FEATURES");
                Ok(None)
            }
            FrontendReq::GET_PROTOCOL_FEATURES => Ok(Some(
                self.dev.protocol_features().bits().to_le_bytes().to_vec(),
            )),
            FrontendReq::SET_PROTOCOL_FEATURES => req.body_as::<u64>().map_err(m).and_then(|p| {
                let extra = p & !self.dev.protocol_features().bits();
                if extra != 0 {
                    Err(Refusal::Msg(format!(
                        "acks protocol features {:?} ({extra:#x}), never offered",
                        VhostUserProtocolFeatures::from_bits_retain(extra)
                    )))
                } else {
                    Ok(None)
                }
            }),
            FrontendReq::SET_OWNER => Ok(None),
            FrontendReq::RESET_OWNER | FrontendReq::RESET_DEVICE => {
                self.reset();
                Ok(None)
            }
            FrontendReq::GET_QUEUE_NUM => {
                Ok(Some((self.vrings.len() as u64).to_le_bytes().to_vec()))
            }
            FrontendReq::GET_MAX_MEM_SLOTS => Ok(Some((MAX_REGIONS as u64).to_le_bytes().to_vec())),
            FrontendReq::SET_MEM_TABLE => {
                let r = self.set_mem_table(&req);
                self.check_log_covers();
                r
            }
            FrontendReq::ADD_MEM_REG => {
                let r = req.body_as::<VhostUserSingleMemoryRegion>().map_err(m);
                r.and_then(|reg| {
                    let mut fds = req.fds;
                    if fds.len() != 1 {
                        return Err(Refusal::Msg(format!(
                            "{} descriptors, expected 1",
                            fds.len()
                        )));
                    }
                    let fd = fds.swap_remove(0);
                    let region: &VhostUserMemoryRegion = &reg;
                    self.mem.add(&RegionSpec::from(region), fd)?;
                    self.check_log_covers();
                    Ok(None)
                })
            }
            FrontendReq::REM_MEM_REG => {
                let r = req.body_as::<VhostUserSingleMemoryRegion>().map_err(m);
                r.and_then(|reg| {
                    let region: &VhostUserMemoryRegion = &reg;
                    self.mem.remove(&RegionSpec::from(region))?;
                    Ok(None)
                })
            }
            FrontendReq::SET_VRING_NUM => {
                let r = req.body_as::<VhostUserVringState>().map_err(m);
                r.and_then(|s| self.set_vring_num(s.index as u64, s.num))
            }
            FrontendReq::SET_VRING_ADDR => {
                let r = req.body_as::<VhostUserVringAddr>().map_err(m);
                r.and_then(|a| self.set_vring_addr(&a))
            }
            FrontendReq::SET_VRING_BASE => {
                let r = req.body_as::<VhostUserVringState>().map_err(m);
                r.and_then(|s| {
                    let q = self.queue_index(s.index as u64)?;
                    if s.num > u16::MAX as u32 {
                        return Err(Refusal::Msg(format!(
                            "queue {q}: base {} past 65535 (split rings)",
                            { s.num }
                        )));
                    }
                    self.vrings[q].set_next_avail(s.num as u16);
                    tracing::debug!(queue = q, base = { s.num }, "SET_VRING_BASE");
                    Ok(None)
                })
            }
            FrontendReq::GET_VRING_BASE => {
                let r = req.body_as::<VhostUserVringState>().map_err(m);
                r.and_then(|s| {
                    let q = self.queue_index(s.index as u64)?;
                    let base = self.stop_queue(q);
                    tracing::debug!(
                        queue = q,
                        base,
                        used = self.vrings[q].next_used(),
                        "GET_VRING_BASE"
                    );
                    let reply = VhostUserVringState::new(q as u32, base as u32);
                    Ok(Some(vm_memory::ByteValued::as_slice(&reply).to_vec()))
                })
            }
            FrontendReq::SET_VRING_KICK => self.vring_fd(&req, FdKind::Kick),
            FrontendReq::SET_VRING_CALL => self.vring_fd(&req, FdKind::Call),
            FrontendReq::SET_VRING_ERR => self.vring_fd(&req, FdKind::Err),
            FrontendReq::SET_VRING_ENABLE => {
                let r = req.body_as::<VhostUserVringState>().map_err(m);
                r.and_then(|s| {
                    let q = self.queue_index(s.index as u64)?;
                    let on = match s.num {
                        0 => false,
                        1 => true,
                        n => {
                            return Err(Refusal::Msg(format!(
                                "queue {q}: enable {n}, expected 0 or 1"
                            )))
                        }
                    };
                    self.enable_req[q] = on;
                    self.apply_enable(q);
                    Ok(None)
                })
            }
            FrontendReq::SEND_RARP => req.body_as::<u64>().map_err(m).map(|v| {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&v.to_le_bytes()[..6]);
                self.dev.announce(mac);
                None
            }),
            other => Err(Refusal::Msg(format!(
                "{other:?} is not supported by this port (its feature was not offered)"
            ))),
        };
        Ok(out)
    }

    fn set_features(&mut self, f: u64) {
        let was = self.log_in_use();
        self.acked = Some(f);
        self.dev.set_acked_features(f);
        let log = self.log_in_use();
        for q in 0..self.vrings.len() {
            self.vrings[q].configure(|c| {
                c.event_idx = f & F_EVENT_IDX != 0;
                c.log = log.clone();
            });
            self.apply_enable(q);
        }
        if !same_log(&was, &log) {
            self.log_barrier();
        }
    }

    /// Waits until every queue's forwarding thread has left the batch it
    /// may be in: the next one reads the new log settings. The VMM gets
    /// its answer only then, so no write of a batch begun before logging
    /// started can land after it believes logging is on (its first pass
    /// over guest memory may already have copied that page).
    fn log_barrier(&mut self) {
        for q in 0..self.vrings.len() {
            if !self.dev.quiesce(q) {
                self.fatal = Some(format!(
                    "queue {q}'s forwarding thread did not leave its batch in time to start \
                     or stop logging"
                ));
            }
        }
    }

    /// While the driver logs, guest memory past what the log covers would
    /// be written unlogged: the session ends instead (QEMU grows its log
    /// before it grows the memory table).
    fn check_log_covers(&mut self) {
        if let Some(l) = self.log_in_use() {
            let end = self.mem.end();
            if end > l.covers() {
                self.fatal = Some(format!(
                    "guest memory now ends at {end:#x}, past the {:#x} the log covers",
                    l.covers()
                ));
            }
        }
    }

    /// The log the data path marks: the one given, while LOG_ALL is acked.
    fn log_in_use(&self) -> Option<Arc<DirtyLog>> {
        match self.acked {
            Some(f) if f & F_LOG_ALL != 0 => self.log.clone(),
            _ => None,
        }
    }

    /// SET_LOG_BASE: maps the log the VMM shares and hands it to the
    /// queues if the driver logs. A log that does not cover the guest's
    /// memory, or that could shrink under valed, ends the session.
    fn set_log_base(&mut self, req: Request) -> Result<(), SessionError> {
        let l: VhostUserLog = req.body_as().map_err(SessionError::Log)?;
        let mut fds = req.fds;
        if fds.len() != 1 {
            return Err(SessionError::Log(format!(
                "{} descriptors, expected the log's memfd (LOG_SHMFD)",
                fds.len()
            )));
        }
        let (size, offset) = (l.mmap_size, l.mmap_offset);
        let log = DirtyLog::map(fds.swap_remove(0), size, offset)
            .map_err(|e| SessionError::Log(e.to_string()))?;
        let end = self.mem.end();
        if log.covers() < end {
            return Err(SessionError::Log(format!(
                "a {size}-byte log covers guest memory up to {:#x}, the guest's ends at {end:#x}",
                log.covers()
            )));
        }
        tracing::info!(bytes = size, covers = log.covers(), "dirty log mapped");
        let was = self.log_in_use();
        self.log = Some(Arc::new(log));
        let log = self.log_in_use();
        for v in &self.vrings {
            v.configure(|c| c.log = log.clone());
        }
        if !same_log(&was, &log) {
            self.log_barrier();
        }
        if let Some(why) = self.fatal.take() {
            return Err(SessionError::Log(why));
        }
        Ok(())
    }

    /// Runs queue q if it started and the driver wants it.
    fn apply_enable(&mut self, q: usize) {
        if !self.started[q] {
            return;
        }
        let on = match self.acked {
            Some(f) if f & F_PROTOCOL_FEATURES == 0 => true,
            _ => self.enable_req[q],
        };
        let was = self.vrings[q].configure(|c| std::mem::replace(&mut c.enabled, on));
        if on && !was {
            self.kick(q);
        }
    }

    fn set_mem_table(&mut self, req: &Request) -> Result<Option<Vec<u8>>, Refusal> {
        let hdr: VhostUserMemory = req.prefix_as(false).map_err(Refusal::Msg)?;
        let n = hdr.num_regions as usize;
        let each = std::mem::size_of::<VhostUserMemoryRegion>();
        let hlen = std::mem::size_of::<VhostUserMemory>();
        if n == 0 || n > MAX_REGIONS || req.body.len() != hlen + n * each {
            return Err(Refusal::Msg(format!(
                "{n} regions in a {}-byte body",
                req.body.len()
            )));
        }
        let mut specs = Vec::with_capacity(n);
        for i in 0..n {
            let mut r = VhostUserMemoryRegion::default();
            let off = hlen + i * each;
            vm_memory::ByteValued::as_mut_slice(&mut r).copy_from_slice(&req.body[off..off + each]);
            specs.push(RegionSpec::from(&r));
        }
        let fds: Vec<OwnedFd> = req.fds.iter().filter_map(|f| f.try_clone().ok()).collect();
        self.mem.set_table(&specs, fds)?;
        Ok(None)
    }

    fn set_vring_num(&mut self, i: u64, num: u32) -> Result<Option<Vec<u8>>, Refusal> {
        let q = self.queue_index(i)?;
        self.vrings[q]
            .set_size(num)
            .map_err(|e| Refusal::Msg(format!("queue {q}: {e}")))?;
        Ok(None)
    }

    fn set_vring_addr(&mut self, a: &VhostUserVringAddr) -> Result<Option<Vec<u8>>, Refusal> {
        let q = self.queue_index(a.index as u64)?;
        let tr = |what: &str, va: u64| {
            self.mem.va_to_gpa(va).ok_or_else(|| {
                Refusal::Msg(format!(
                    "queue {q}: {what} at VMM address {va:#x} is in no memory region"
                ))
            })
        };
        let (d, av, u) = (
            tr("descriptor table", a.descriptor)?,
            tr("available ring", a.available)?,
            tr("used ring", a.used)?,
        );
        let log_used = (a.flags & VRING_F_LOG != 0).then_some(a.log);
        let v = &self.vrings[q];
        if self.started[q] {
            // A running queue gets SET_VRING_ADDR when the driver starts or
            // stops logging (a migration): only the log address changes.
            // The indexes are the forwarding thread's while the queue runs;
            // reading the used index here could race its next publish.
            let same = {
                let c = v.config();
                (c.desc, c.avail, c.used) == (d, av, u)
            };
            if !same {
                return Err(Refusal::Msg(format!(
                    "queue {q}: ring addresses changed while it runs (GET_VRING_BASE first)"
                )));
            }
            v.configure(|c| c.log_used = log_used);
            if !self.dev.quiesce(q) {
                self.fatal = Some(format!(
                    "queue {q}'s forwarding thread did not leave its batch in time to move the \
                     used ring's log address"
                ));
            }
            tracing::debug!(queue = q, ?log_used, "SET_VRING_ADDR on a running queue");
            return Ok(None);
        }
        v.configure(|c| c.log_used = log_used);
        v.set_addresses(d, av, u)
            .map_err(|e| Refusal::Msg(format!("queue {q}: {e}")))?;
        // The used index is the device's: after a reconnect or a driver
        // reload, continue from what is in the ring (SET_VRING_BASE only
        // carries the avail side).
        let mem = self.mem.guest_mem().memory();
        let used: u16 = (*mem)
            .load(
                GuestAddress(u.wrapping_add(2)),
                std::sync::atomic::Ordering::Acquire,
            )
            .map_err(|e| Refusal::Msg(format!("queue {q}: used ring index: {e}")))?;
        v.set_next_used(u16::from_le(used));
        tracing::debug!(
            queue = q,
            used = u16::from_le(used),
            ?log_used,
            "SET_VRING_ADDR"
        );
        Ok(None)
    }

    fn vring_fd(&mut self, req: &Request, kind: FdKind) -> Result<Option<Vec<u8>>, Refusal> {
        let v: u64 = req.body_as().map_err(Refusal::Msg)?;
        let q = self.queue_index(v & VRING_IDX)?;
        let nofd = v & VRING_NOFD != 0;
        let fd = match (nofd, req.fds.len()) {
            (true, 0) => None,
            (false, 1) => Some(
                req.fds[0]
                    .try_clone()
                    .map_err(|e| Refusal::Msg(format!("queue {q}: {e}")))?,
            ),
            (_, k) => {
                return Err(Refusal::Msg(format!(
                    "queue {q}: {k} descriptors with{} the no-fd flag",
                    if nofd { "" } else { "out" }
                )))
            }
        };
        // A call fd is written on the forwarding path and a kick fd
        // watched there: only an eventfd has the costs the watchdog bounds
        // (a FIFO, socket or FUSE file could block valed in other ways).
        if let Some(fd) = &fd {
            if kind != FdKind::Err && !EventFd::is_eventfd(fd.as_fd()) {
                return Err(Refusal::Msg(format!(
                    "queue {q}: {} fd is not an eventfd",
                    if kind == FdKind::Kick { "kick" } else { "call" }
                )));
            }
        }
        match kind {
            FdKind::Kick => {
                self.unwatch_kick(q);
                let ev = fd.map(|fd| Arc::new(EventFd::from_fd(fd)));
                if let Some(ev) = &ev {
                    if self.dev.session_watches_kick(q) {
                        self.epoll
                            .add(&**ev, TOK_KICK + q as u64)
                            .map_err(|e| Refusal::Msg(format!("queue {q}: kick fd: {e}")))?;
                    }
                }
                self.vrings[q].configure(|c| c.kick = ev);
                // The spec: a ring starts at its kick.
                self.start_queue(q);
                // A forwarder asleep on the old fd looks again, and then
                // waits on this one.
                if !self.dev.session_watches_kick(q) && self.vrings[q].config().running() {
                    self.kick(q);
                }
            }
            FdKind::Call => {
                let guard = self.dev.call_guard();
                let call = fd.map(|f| Arc::new(EventFd::from_fd_sharing_guard(f, guard)));
                self.vrings[q].configure(|c| c.call = call);
            }
            // We never report queue errors; the descriptor is dropped.
            FdKind::Err => {}
        }
        Ok(None)
    }

    /// Stops waiting on queue q's kick fd (the one its configuration
    /// holds; a no-op if the session did not watch it).
    fn unwatch_kick(&self, q: usize) {
        if let Some(old) = self.vrings[q].config().kick.clone() {
            let _ = self.epoll.remove(&*old);
        }
    }

    fn start_queue(&mut self, q: usize) {
        self.started[q] = true;
        let ev = self.acked.unwrap_or(0) & F_EVENT_IDX != 0;
        self.vrings[q].configure(|c| (c.event_idx, c.ready) = (ev, true));
        self.apply_enable(q);
    }

    /// GET_VRING_BASE: stops queue q and returns where the next batch
    /// would have started. Every chain popped went back first.
    fn stop_queue(&mut self, q: usize) -> u16 {
        self.started[q] = false;
        self.vrings[q].configure(|c| (c.ready, c.enabled) = (false, false));
        self.dev.quiesce(q);
        self.unwatch_kick(q);
        self.vrings[q].configure(|c| (c.call, c.kick) = (None, None));
        self.vrings[q].next_avail()
    }

    fn reset(&mut self) {
        for q in 0..self.vrings.len() {
            self.stop_queue(q);
            self.enable_req[q] = false;
        }
        self.acked = None;
    }

    /// Stops every queue (the VMM went away): the forwarding threads leave
    /// their batches before the memory goes. The guest's memory is
    /// unmapped now, not when an idle forwarding thread next looks at its
    /// queue: the map every clone of the session's `GuestMem` sees becomes
    /// empty, and the regions go with the last batch guard.
    pub fn shutdown(&mut self) {
        for q in 0..self.vrings.len() {
            self.stop_queue(q);
        }
        self.mem.clear();
    }
}

impl<D: Device> Drop for Session<'_, D> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn same_log(a: &Option<Arc<DirtyLog>>, b: &Option<Arc<DirtyLog>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FdKind {
    Kick,
    Call,
    Err,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_features() {
        assert_eq!(feature_names(1 << 30), "PROTOCOL_FEATURES");
        assert_eq!(feature_names((1 << 10) | (1 << 55)), "GUEST_UFO|bit 55");
        assert_eq!(feature_names(0), "none");
    }
}
