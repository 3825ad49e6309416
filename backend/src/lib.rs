//! vhost-user-net ports for the VALE switch.
//!
//! A VM's virtio-net device is served over a vhost-user socket and becomes
//! a VALE port: guest TX descriptor chains are handed to the engine as
//! netmap slots pointing into guest memory ([`chain`]), so a frame crosses
//! from one VM to another with one copy; frames for the guest are copied
//! into its RX buffers behind a `virtio_net_hdr_v1` ([`queue`]). The
//! vhost-user protocol is served by our own dispatch ([`vhost_user`], on
//! the framing of [`conn`] and the checked guest memory of [`memory`]);
//! [`device`] is the port's life around it.
//!
//! The protocol sits above the data path: `vhost_user` uses `conn`,
//! `memory` and `queue`; `device` uses `vhost_user`; nothing below imports
//! them.

pub mod chain;
pub mod conn;
pub mod device;
pub mod memory;
pub mod queue;
pub mod sigbus;
pub mod socket;
#[cfg(feature = "test-utils")]
pub mod testing;
pub mod types;
pub mod vhost_user;
pub mod vring;

pub use chain::ChainError;
pub use device::{BackendError, KickHook, NetConfig, NetPort, NetPortStats, PortState, SocketMode};
pub use queue::{QueueStats, RxSet, TxQueue, VNET_HDR_LEN};
