//! vhost-user-net ports for the VALE switch.
//!
//! A VM's virtio-net device is served over a vhost-user socket and becomes
//! a VALE port: guest TX descriptor chains are handed to the engine as
//! netmap slots pointing into guest memory (`chain`), so a frame crosses
//! from one VM to another with one copy; frames for the guest are copied
//! into its RX buffers behind a `virtio_net_hdr_v1` ([`queue`]). The
//! vhost-user protocol is served by our own dispatch (`vhost_user`, on
//! the framing of `conn` and the checked guest memory of `memory`);
//! [`device`] is the port's life around it.
//!
//! Modules import downwards only, in this order from the leaf up:
//! `types` (guest memory, feature bits, errors) and [`dirty`] (a
//! migration's dirty log); `vring` (a queue's
//! shared state and its rings in guest memory); `chain` (descriptor
//! chains to fragments and buffers); [`queue`] (the queues as the
//! engine's Source and Sink); `memory`, `conn`, [`socket`],
//! `sigbus` (the protocol's leaves); `vhost_user` (the session,
//! above `vring` and `memory`); [`device`] (the port, above everything).

mod chain;
mod conn;
pub mod device;
pub mod dirty;
mod memory;
pub mod queue;
mod reaper;
mod sigbus;
pub mod socket;
#[cfg(feature = "test-utils")]
pub mod testing;
mod types;
mod vhost_user;
mod vring;

pub use device::{BackendError, KickHook, NetConfig, NetPort, NetPortStats, PortState, SocketMode};
pub use queue::{QueueStats, RxSet, TxQueue, VNET_HDR_LEN};
pub use types::{ChainError, MAX_FRAGS, MAX_FRAME};
