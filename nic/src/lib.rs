//! NIC ports for VALE: a Linux interface as the engine's [`vale::Source`]
//! (what it received) and [`vale::Sink`] (what to send on it).
//!
//! The native adapter ([`XdpNic`]) is AF_XDP on drivers with XDP. The
//! generic adapter (netmap's emulated mode, [`GenericNic`]) works on any
//! interface, through AF_PACKET: [`NicRx`] and [`NicTx`]. Its frames
//! carry a 10-byte virtio-net header both ways (`PACKET_VNET_HDR`), so the
//! port's header length on the switch is [`VNET_HDR_LEN`]: GSO and partial
//! checksums pass whole between the interface and ports that take them,
//! and the switch completes them for ports that do not.

pub mod baseline;
mod bpf;
mod rings;
mod rx;
mod sys;
mod tap;
mod tx;
mod xdp;

#[cfg(feature = "test-utils")]
pub mod testing;

pub use rings::{DevRx, NicRings};
pub use rx::NicRx;
pub use tap::{HostTap, TapRx, TapTx};
pub use tx::NicTx;
pub use xdp::{XdpNic, XdpRx, XdpTx, XDP_FRAME};

/// Most rings (and forwarding units) one interface gets: each receive ring
/// holds 4 MiB.
pub const MAX_QUEUES: usize = 16;

/// The virtio-net header in front of every frame (`struct virtio_net_hdr`,
/// no `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;

/// Why an interface could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum NicError {
    /// No interface by that name.
    #[error("{name}: no such interface")]
    NoInterface {
        /// The name asked for.
        name: String,
    },
    /// Another process (or port) has the interface, as netmap's EBUSY.
    #[error("{name}: busy: another process has it (lock in {dir})")]
    Busy {
        /// The interface.
        name: String,
        /// Where the locks are.
        dir: &'static str,
    },
    /// Native mode was asked for and is not possible on this interface.
    #[error("{name}: no native (AF_XDP) mode: {why}")]
    NoNative {
        /// The interface.
        name: String,
        /// What failed, and why.
        why: String,
    },
    /// The port name asks for what the interface does not have (a ring
    /// past its last, a pipe...), as netmap's EINVAL.
    #[error("{name}: {why}")]
    BadName {
        /// The interface.
        name: String,
        /// What was wrong.
        why: String,
    },
    /// A socket call failed (EPERM without CAP_NET_RAW, ENOMEM for the
    /// rings, ENETDOWN...).
    #[error("{name}: {what}: {source}")]
    Socket {
        /// The interface.
        name: String,
        /// The step that failed.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

impl NicError {
    /// The errno for netmap's clients.
    pub fn errno(&self) -> i32 {
        match self {
            NicError::NoInterface { .. } => libc::ENXIO,
            NicError::Busy { .. } => libc::EBUSY,
            NicError::NoNative { .. } => libc::EOPNOTSUPP,
            NicError::BadName { .. } => libc::EINVAL,
            NicError::Socket { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// The index of interface `name` now (None: no such interface).
pub fn if_index(name: &str) -> Option<u32> {
    sys::if_index(name).ok()
}

/// The generic adapter on one interface: its receive and transmit rings.
#[derive(Debug)]
pub struct GenericNic {
    /// Frames the interface received.
    pub rx: NicRx,
    /// Frames to send on it.
    pub tx: NicTx,
    /// Queues 1 and up, in order: each a member of queue 0's fanout group
    /// and a transmit socket of its own.
    pub extra: Vec<(NicRx, NicTx)>,
    /// The interface's index when it was opened.
    pub ifindex: u32,
    /// Whether frames it receives no longer also reach the host stack
    /// (the tcx ingress drop is in place).
    pub host_stack_cut: bool,
}

impl GenericNic {
    /// Opens interface `name` (needs CAP_NET_RAW).
    pub fn open(name: &str) -> Result<GenericNic, NicError> {
        let ifindex =
            sys::if_index(name).map_err(|_| NicError::NoInterface { name: name.into() })?;
        let err = |what| {
            let name = name.to_string();
            move |source| NicError::Socket { name, what, source }
        };
        let owned = std::sync::Arc::new(Owned::take(name, ifindex, true)?);
        // One receive ring per queue, in a fanout group by queue, as
        // netmap's rings map to the NIC's; one transmit socket each.
        // At most MAX_QUEUES rings: fanout by queue spreads the other
        // queues' frames over them (member = queue % members).
        let queues = sys::rx_queues(name).min(MAX_QUEUES);
        let fanout = (queues > 1).then_some(None);
        let (mut rx, group) = rx::open(ifindex, fanout).map_err(err("receive ring"))?;
        let mut tx = tx::open(ifindex).map_err(err("transmit socket"))?;
        let cut = owned.ingress_drop.is_some();
        rx.owned = Some(owned.clone());
        tx.owned = Some(owned.clone());
        let mut extra = Vec::new();
        for _ in 1..queues {
            let (mut r, _) =
                rx::open(ifindex, Some(group)).map_err(err("receive ring (fanout)"))?;
            let mut t = tx::open(ifindex).map_err(err("transmit socket"))?;
            r.owned = Some(owned.clone());
            t.owned = Some(owned.clone());
            extra.push((r, t));
        }
        tracing::info!(
            interface = name,
            ifindex,
            host_stack_cut = cut,
            queues,
            "generic adapter: AF_PACKET TPACKET_V3 receive, sendmmsg transmit, virtio-net headers"
        );
        Ok(GenericNic {
            rx,
            tx,
            extra,
            ifindex,
            host_stack_cut: cut,
        })
    }
}

/// What makes an interface a port's while the port is open, as netmap's
/// kernel module owns a NIC in netmap mode: an exclusive lock across
/// processes, and a tcx ingress drop so that frames the port receives do
/// not also go up the host stack. Both go away with the last ring (or
/// the process), leaving the interface as it was.
#[derive(Debug)]
pub(crate) struct Owned {
    _lock: std::fs::File,
    ingress_drop: Option<std::os::fd::OwnedFd>,
}

impl Owned {
    /// `ingress_drop`: cut the host stack off with a tcx program (the
    /// native adapter's XDP redirect already takes the frames first).
    pub(crate) fn take(name: &str, ifindex: u32, ingress_drop: bool) -> Result<Owned, NicError> {
        let lock = sys::lock_interface(name).map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                NicError::Busy {
                    name: name.into(),
                    dir: sys::LOCK_DIR,
                }
            } else {
                NicError::Socket {
                    name: name.into(),
                    what: "ownership lock",
                    source: e,
                }
            }
        })?;
        let ingress_drop = match ingress_drop.then(|| bpf::ingress_drop(ifindex)) {
            None => None,
            Some(Ok(link)) => Some(link),
            Some(Err(e)) => {
                tracing::warn!(
                    interface = name,
                    "cannot install the tcx ingress drop ({e}): frames the port receives also reach the host stack, which may answer them too"
                );
                None
            }
        };
        Ok(Owned {
            _lock: lock,
            ingress_drop,
        })
    }
}

/// Which adapter [`open`] may use, as netmap's `admode` sysctl.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdMode {
    /// Native where the driver has XDP (veth excepted), else generic
    /// (netmap's 0).
    #[default]
    Best,
    /// Native or nothing (netmap's 1).
    Native,
    /// Generic only (netmap's 2).
    Generic,
}

impl std::str::FromStr for AdMode {
    type Err = String;
    fn from_str(s: &str) -> Result<AdMode, String> {
        match s {
            "best" | "0" => Ok(AdMode::Best),
            "native" | "1" => Ok(AdMode::Native),
            "generic" | "2" => Ok(AdMode::Generic),
            _ => Err(format!("{s}: adapter mode is best, native or generic")),
        }
    }
}

/// One queue of an interface: what it received, and where to send.
pub type Queue = (DevRx, Box<dyn vale::Sink>);

/// An interface opened as a port: native or generic.
#[derive(Debug)]
pub enum Nic {
    /// AF_XDP on an XDP driver.
    Native(XdpNic),
    /// AF_PACKET rings, any interface.
    Generic(GenericNic),
}

impl Nic {
    /// The interface's index when it was opened.
    pub fn ifindex(&self) -> u32 {
        match self {
            Nic::Native(n) => n.ifindex,
            Nic::Generic(g) => g.ifindex,
        }
    }

    /// The virtio-net header length its frames carry (0 native, 10 generic).
    pub fn vnet_hdr_len(&self) -> usize {
        match self {
            Nic::Native(_) => 0,
            Nic::Generic(_) => VNET_HDR_LEN,
        }
    }

    /// Its queues in order, each a receive side and a transmit side, and
    /// the port configuration a switch gives it (header length, offloads
    /// the interface takes).
    pub fn into_queues(self) -> (Vec<Queue>, vale::PortConfig) {
        let hdr = self.vnet_hdr_len();
        let cfg = vale::PortConfig {
            vnet_hdr_len: hdr as u16,
            offloads: if hdr > 0 {
                vale::port::OFFLOAD_CSUM | vale::port::OFFLOAD_TSO4 | vale::port::OFFLOAD_TSO6
            } else {
                0
            },
            ..Default::default()
        };
        let queues: Vec<Queue> = match self {
            Nic::Native(x) => std::iter::once((x.rx, x.tx))
                .chain(x.extra)
                .map(|(r, t)| (DevRx::Native(r), Box::new(t) as Box<dyn vale::Sink>))
                .collect(),
            Nic::Generic(g) => std::iter::once((g.rx, g.tx))
                .chain(g.extra)
                .map(|(r, t)| (DevRx::Generic(r), Box::new(t) as Box<dyn vale::Sink>))
                .collect(),
        };
        (queues, cfg)
    }

    /// "native", "native zero-copy" or "generic", for logs and stats.
    pub fn kind(&self) -> &'static str {
        match self {
            Nic::Native(n) if n.zero_copy => "native zero-copy",
            Nic::Native(_) => "native",
            Nic::Generic(_) => "generic",
        }
    }
}

/// Opens interface `name` with the adapter `mode` allows: native first
/// under [`AdMode::Best`], falling back to the generic adapter with a log
/// line saying why.
pub fn open(name: &str, mode: AdMode) -> Result<Nic, NicError> {
    if mode != AdMode::Generic {
        let ifindex =
            sys::if_index(name).map_err(|_| NicError::NoInterface { name: name.into() })?;
        // A veth hands XDP the frames its peer's stack sent with partial
        // checksums, which no one completes then: native mode there only
        // when asked for by name.
        let veth = sys::driver(name).is_ok_and(|d| d == "veth");
        let native = if veth && mode == AdMode::Best {
            Err(Ok(xdp::NoNative {
                what: "veth",
                source: std::io::Error::other(
                    "the peer's partial checksums reach XDP uncompleted (--admode native forces it)",
                ),
            }))
        } else {
            XdpNic::open(name, ifindex)
        };
        match native {
            Ok(n) => return Ok(Nic::Native(n)),
            Err(Err(e)) => return Err(e),
            Err(Ok(why)) if mode == AdMode::Native => {
                return Err(NicError::NoNative {
                    name: name.into(),
                    why: why.to_string(),
                })
            }
            Err(Ok(why)) => {
                tracing::info!(interface = name, "no native mode ({why}): generic adapter");
            }
        }
    }
    GenericNic::open(name).map(Nic::Generic)
}
