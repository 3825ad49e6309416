//! NIC ports for VALE: a Linux interface as the engine's [`vale::Source`]
//! (what it received) and [`vale::Sink`] (what to send on it).
//!
//! The generic adapter (netmap's emulated mode) works on any interface,
//! through AF_PACKET memory-mapped rings: [`NicRx`] and [`NicTx`]. Frames
//! carry a 10-byte virtio-net header both ways (`PACKET_VNET_HDR`), so the
//! port's header length on the switch is [`VNET_HDR_LEN`]: GSO and partial
//! checksums pass whole between the interface and ports that take them,
//! and the switch completes them for ports that do not.

pub mod baseline;
mod bpf;
mod rx;
mod sys;
mod tap;
mod tx;

#[cfg(feature = "test-utils")]
pub mod testing;

pub use rx::NicRx;
pub use tap::{HostTap, TapRx, TapTx};
pub use tx::NicTx;

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
        let owned = std::sync::Arc::new(Owned::take(name, ifindex)?);
        let mut rx = rx::open(ifindex).map_err(err("receive ring"))?;
        let mut tx = tx::open(ifindex).map_err(err("transmit ring"))?;
        let cut = owned.ingress_drop.is_some();
        rx.owned = Some(owned.clone());
        tx.owned = Some(owned);
        tracing::info!(
            interface = name,
            ifindex,
            host_stack_cut = cut,
            "generic adapter: AF_PACKET TPACKET_V3 receive, TPACKET_V2 transmit, virtio-net headers"
        );
        Ok(GenericNic {
            rx,
            tx,
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
    pub(crate) fn take(name: &str, ifindex: u32) -> Result<Owned, NicError> {
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
        let ingress_drop = match bpf::ingress_drop(ifindex) {
            Ok(link) => Some(link),
            Err(e) => {
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
