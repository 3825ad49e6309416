//! Transport 1, VM-less: the driver is the vhost-user frontend on a unix
//! socket, as QEMU is for a guest and DPDK's virtio-user for a process.
//! Its memory is two memfds the backend maps: the queue area, and the
//! netmap region's buffer pool (never its rings, which stay private).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use netmap::sys::EventFd;
use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use crate::net::{
    BusLayout, BusMap, DriverConfig, Kick, Memory, Negotiated, QueueEvents, Transport, VirtioRings,
};
use crate::DriverError;

/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// Where the queue area and the buffer pool sit in the device's view.
/// Address 0 is left out, so a zeroed descriptor names no memory.
pub const QUEUES_GPA: u64 = 0x10_0000;
/// The buffer pool, above any queue area.
pub const BUFS_GPA: u64 = 1 << 32;

/// The frontend's connection, kept for as long as the rings live: closing
/// it stops the device.
struct UserTransport {
    /// Never used after set-up: dropping it closes the session.
    _fe: Frontend,
    /// Our duplicate of the socket, for noticing the backend go.
    sock: UnixStream,
}

impl std::fmt::Debug for UserTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserTransport")
            .field("sock", &self.sock)
            .finish()
    }
}

impl Transport for UserTransport {
    fn peer_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.sock.as_fd())
    }
}

fn vhost(what: &'static str) -> impl FnOnce(vhost::Error) -> DriverError {
    move |e| DriverError::Vhost {
        what,
        msg: e.to_string(),
    }
}

/// The features to ack out of `offered`.
pub fn wanted_features(cfg: &DriverConfig, offered: u64) -> u64 {
    let bit = |b: u32| 1u64 << b;
    let mut want = bit(VIRTIO_F_VERSION_1) | F_PROTOCOL_FEATURES;
    if cfg.event_idx {
        want |= bit(VIRTIO_RING_F_EVENT_IDX);
    }
    if cfg.queue_pairs > 1 {
        want |= bit(VIRTIO_NET_F_MQ);
    }
    if cfg.hdr_len != 0 {
        if cfg.mrg_rxbuf {
            want |= bit(VIRTIO_NET_F_MRG_RXBUF);
        }
        if cfg.offloads {
            want |= bit(VIRTIO_NET_F_CSUM)
                | bit(VIRTIO_NET_F_HOST_TSO4)
                | bit(VIRTIO_NET_F_HOST_TSO6)
                | bit(VIRTIO_NET_F_GUEST_CSUM);
            // Without mergeable buffers a GSO frame would need 64 KiB RX
            // chains; netmap buffers are 2 KiB.
            if cfg.mrg_rxbuf && offered & bit(VIRTIO_NET_F_MRG_RXBUF) != 0 {
                want |= bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO6);
            }
        }
    }
    offered & want
}

fn connect_retry(path: &Path, timeout: Duration) -> Result<UnixStream, DriverError> {
    let t0 = Instant::now();
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e)
                if t0.elapsed() < timeout
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(DriverError::Connect {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Connects to the vhost-user backend at `path` (waiting up to `wait`
/// for the socket to appear), negotiates, shares the memory and starts
/// every queue: the device's queue pairs as netmap rings.
pub fn open(path: &Path, cfg: DriverConfig, wait: Duration) -> Result<VirtioRings, DriverError> {
    let mut g = open_group(&[path], cfg, wait)?;
    g.pop()
        .ok_or_else(|| DriverError::Config("no device".into()))
}

/// [`open`] for several backends whose rings share one netmap region
/// (see [`Memory::group`]).
pub fn open_group(
    paths: &[&Path],
    cfg: DriverConfig,
    wait: Duration,
) -> Result<Vec<VirtioRings>, DriverError> {
    cfg.validate()?;
    let mut sessions = Vec::new();
    for p in paths {
        sessions.push(negotiate(p, &cfg, wait)?);
    }
    let mems = Memory::group(&cfg, paths.len())?;
    let mut out = Vec::new();
    for ((path, (fe, sock, neg)), mem) in paths.iter().zip(sessions).zip(mems) {
        let mut fe = fe;
        let events = share(&mut fe, &mem, neg)?;
        let (buf_off, _) = mem.buf_window();
        let bus = BusLayout {
            queues: QUEUES_GPA,
            // The memory table maps the file from the pool's offset at
            // BUFS_GPA.
            bufs: BusMap::Linear(BUFS_GPA - buf_off as u64),
        };
        let name = format!("virtio:{}", path.display());
        out.push(VirtioRings::start(
            &name,
            cfg,
            neg,
            mem,
            bus,
            events,
            Box::new(UserTransport { _fe: fe, sock }),
        )?);
    }
    Ok(out)
}

/// Connects and settles features and protocol features, up to SET_FEATURES.
fn negotiate(
    path: &Path,
    cfg: &DriverConfig,
    wait: Duration,
) -> Result<(Frontend, UnixStream, Negotiated), DriverError> {
    let stream = connect_retry(path, wait)?;
    let sock = stream.try_clone().map_err(|source| DriverError::Io {
        what: "socket",
        source,
    })?;
    let nq = 2 * usize::from(cfg.queue_pairs);
    let mut fe = Frontend::from_stream(stream, nq as u64);
    let offered = fe.get_features().map_err(vhost("GET_FEATURES"))?;
    if offered & (1 << VIRTIO_F_VERSION_1) == 0 {
        return Err(DriverError::Missing("VIRTIO_F_VERSION_1"));
    }
    if cfg.queue_pairs > 1 && offered & (1 << VIRTIO_NET_F_MQ) == 0 {
        return Err(DriverError::Missing("VIRTIO_NET_F_MQ"));
    }
    let acked = wanted_features(cfg, offered);
    if acked & F_PROTOCOL_FEATURES != 0 {
        let proto = fe
            .get_protocol_features()
            .map_err(vhost("GET_PROTOCOL_FEATURES"))?;
        let ack = proto & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK);
        fe.set_protocol_features(ack)
            .map_err(vhost("SET_PROTOCOL_FEATURES"))?;
        if ack.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if cfg.queue_pairs > 1 {
            if !ack.contains(VhostUserProtocolFeatures::MQ) {
                return Err(DriverError::Missing("VHOST_USER_PROTOCOL_F_MQ"));
            }
            let max = fe.get_queue_num().map_err(vhost("GET_QUEUE_NUM"))?;
            if max < nq as u64 {
                return Err(DriverError::Config(format!(
                    "the backend has {max} queues, {} queue pairs need {nq}",
                    cfg.queue_pairs
                )));
            }
        }
    } else if cfg.queue_pairs > 1 {
        return Err(DriverError::Missing("VHOST_USER_F_PROTOCOL_FEATURES"));
    }
    fe.set_owner().map_err(vhost("SET_OWNER"))?;
    fe.set_features(acked).map_err(vhost("SET_FEATURES"))?;
    let neg = Negotiated {
        features: acked,
        mrg_rxbuf: acked & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
        event_idx: acked & (1 << VIRTIO_RING_F_EVENT_IDX) != 0,
    };
    Ok((fe, sock, neg))
}

/// Shares `mem` with the backend (the queue area and the buffer pool,
/// never the netmap rings) and sets every queue up; returns each lane's
/// (RX, TX) eventfds.
fn share(
    fe: &mut Frontend,
    mem: &Memory,
    neg: Negotiated,
) -> Result<Vec<(QueueEvents, QueueEvents)>, DriverError> {
    let io = |what| move |source| DriverError::Io { what, source };
    let region_fd = mem.region.share_fd().map_err(io("region"))?;
    let (buf_off, buf_len) = mem.buf_window();
    let qbase = mem.queue_map.as_ptr() as u64;
    let rbase = mem.region.map().as_ptr() as u64;
    let regions = [
        VhostUserMemoryRegionInfo {
            guest_phys_addr: QUEUES_GPA,
            memory_size: mem.queue_map.len() as u64,
            userspace_addr: qbase,
            mmap_offset: 0,
            mmap_handle: mem.queues.file().as_raw_fd(),
        },
        VhostUserMemoryRegionInfo {
            guest_phys_addr: BUFS_GPA,
            memory_size: buf_len as u64,
            userspace_addr: rbase + buf_off as u64,
            mmap_offset: buf_off as u64,
            mmap_handle: region_fd.as_raw_fd(),
        },
    ];
    fe.set_mem_table(&regions).map_err(vhost("SET_MEM_TABLE"))?;
    let nq = 2 * mem.lanes.len();
    let mut events = Vec::new();
    for (p, l) in mem.lanes.iter().enumerate() {
        let mut pair = Vec::new();
        for (q, (d, a, u)) in [(2 * p, l.rx), (2 * p + 1, l.tx)] {
            let kick = EventFd::new().map_err(io("eventfd"))?;
            let call = EventFd::new().map_err(io("eventfd"))?;
            let config = VringConfigData {
                queue_max_size: mem.queue_size,
                queue_size: mem.queue_size,
                flags: 0,
                desc_table_addr: qbase + d as u64,
                used_ring_addr: qbase + u as u64,
                avail_ring_addr: qbase + a as u64,
                log_addr: None,
            };
            fe.set_vring_num(q, mem.queue_size)
                .map_err(vhost("SET_VRING_NUM"))?;
            fe.set_vring_addr(q, &config)
                .map_err(vhost("SET_VRING_ADDR"))?;
            fe.set_vring_base(q, 0).map_err(vhost("SET_VRING_BASE"))?;
            fe.set_vring_call(q, &vmm_eventfd(&call)?)
                .map_err(vhost("SET_VRING_CALL"))?;
            fe.set_vring_kick(q, &vmm_eventfd(&kick)?)
                .map_err(vhost("SET_VRING_KICK"))?;
            pair.push(QueueEvents {
                kick: Kick::EventFd(kick),
                call: Some(call),
            });
        }
        let tx = pair.pop();
        let rx = pair.pop();
        if let (Some(rx), Some(tx)) = (rx, tx) {
            events.push((rx, tx));
        }
    }
    if neg.features & F_PROTOCOL_FEATURES != 0 {
        for q in 0..nq {
            fe.set_vring_enable(q, true)
                .map_err(vhost("SET_VRING_ENABLE"))?;
        }
    }
    Ok(events)
}

/// The vhost crate's eventfd type for one of ours (a duplicate: the
/// message carries the fd, the backend keeps its own).
fn vmm_eventfd(e: &EventFd) -> Result<vmm_sys_util::eventfd::EventFd, DriverError> {
    let fd = e.try_clone_fd().map_err(|source| DriverError::Io {
        what: "eventfd",
        source,
    })?;
    // SAFETY: `fd` is a fresh duplicate of an eventfd, owned by nobody
    // else; the vhost type takes ownership and closes it.
    Ok(unsafe { vmm_sys_util::eventfd::EventFd::from_raw_fd(fd.into_raw_fd()) })
}
