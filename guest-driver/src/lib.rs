//! A user-space virtio-net driver behind netmap rings.
//!
//! The driver core ([`net`]) keeps split virtqueues ([`virtq`]) behind
//! netmap TX and RX rings, zero copy: the netmap buffers are the virtio
//! buffers. A process opens a device and uses the rings as it would any
//! netmap port (txsync, rxsync, `NS_MOREFRAG`, the vnet header with
//! `hdr_len` 12). Transports:
//!
//! - [`user`]: the vhost-user frontend on a unix socket, VM-less, as DPDK's
//!   virtio-user: `virtio:/path/to.sock`.
//! - [`pci`]: a virtio 1.0 PCI function inside a guest, through
//!   uio_pci_generic, memory in huge pages: `virtio:0000:00:02.0`.
//!
//! Port names are parsed by [`name`].
//!
//! Modules import downwards: `name`, `vqmem` and `mmio` are leaves, `virtq`
//! sits on `vqmem`, `net` on `virtq` (and `mmio` for PCI doorbells),
//! transports on `net`.

pub mod mmio;
pub mod name;
pub mod net;
pub mod pci;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod user;
pub mod virtq;
pub mod vqmem;

use std::io;
use std::path::PathBuf;

use thiserror::Error;

pub use name::{VirtioName, VirtioTarget};
pub use net::{DriverConfig, LaneStats, Negotiated, VirtioRings};

/// Errors of opening and driving a device.
#[derive(Debug, Error)]
pub enum DriverError {
    /// The socket could not be reached.
    #[error("{path}: connect: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A vhost-user request failed or the backend refused it.
    #[error("vhost-user {what}: {msg}")]
    Vhost {
        /// The request.
        what: &'static str,
        /// The crate's error.
        msg: String,
    },
    /// The device lacks a feature the configuration needs.
    #[error("the device does not offer {0}")]
    Missing(&'static str),
    /// The configuration or the port name is wrong.
    #[error("{0}")]
    Config(String),
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: io::Error,
    },
    /// The netmap region could not be laid out.
    #[error("netmap region: {0}")]
    Region(#[from] netmap::region::RegionError),
}

/// Opens the devices `names` name, configured alike, with their rings in
/// one netmap region (buffers may be swapped between them).
pub fn open_group(
    names: &[VirtioName],
    cfg: DriverConfig,
) -> Result<Vec<VirtioRings>, DriverError> {
    let mut paths = Vec::new();
    let mut c = cfg;
    for n in names {
        n.apply(&mut c);
        match &n.target {
            VirtioTarget::Socket(p) => paths.push(p.as_path()),
            VirtioTarget::Pci(addr) => {
                return Err(DriverError::Config(format!(
                    "virtio:{addr}: a group is of vhost-user sockets"
                )))
            }
        }
    }
    user::open_group(&paths, c, std::time::Duration::from_secs(5))
}

/// Opens the device `name` names (`virtio:PATH[,key=value...]`) with
/// `cfg`, the name's options applied over it.
pub fn open(name: &VirtioName, mut cfg: DriverConfig) -> Result<VirtioRings, DriverError> {
    name.apply(&mut cfg);
    match &name.target {
        VirtioTarget::Socket(path) => user::open(path, cfg, std::time::Duration::from_secs(5)),
        VirtioTarget::Pci(addr) => pci::open(*addr, cfg),
    }
}
