//! The leaf of the crate: the types and constants every layer shares
//! (guest memory, virtio feature bits, the virtio-net header, why a
//! chain is refused). It imports nothing from the crate.

use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

/// Guest memory as the backend maps it.
pub type Mem = GuestMemoryMmap<()>;
/// The atomically swappable guest memory map.
pub type GuestMem = GuestMemoryAtomic<Mem>;

/// Size of `virtio_net_hdr_v1`, in front of every frame (VERSION_1): the
/// engine's header form ([`vale::offload::VnetHdr`]).
pub const VNET_HDR_LEN: usize = vale::offload::VnetHdr::LEN;
const _: () =
    assert!(VNET_HDR_LEN == std::mem::size_of::<virtio_bindings::virtio_net::virtio_net_hdr_v1>());

/// virtio-net and transport feature bits (virtio 1.2, 5.1.3).
pub mod features {
    use vhost::vhost_user::message::VhostUserVirtioFeatures;
    use virtio_bindings::virtio_net as net;
    use virtio_bindings::virtio_ring as ring;

    /// Device handles partial checksums (guest TX).
    pub const CSUM: u64 = 1 << net::VIRTIO_NET_F_CSUM;
    /// Guest handles partial checksums (guest RX).
    pub const GUEST_CSUM: u64 = 1 << net::VIRTIO_NET_F_GUEST_CSUM;
    /// Guest takes TSO over IPv4.
    pub const GUEST_TSO4: u64 = 1 << net::VIRTIO_NET_F_GUEST_TSO4;
    /// Guest takes TSO over IPv6.
    pub const GUEST_TSO6: u64 = 1 << net::VIRTIO_NET_F_GUEST_TSO6;
    /// Guest takes TSO with ECN.
    pub const GUEST_ECN: u64 = 1 << net::VIRTIO_NET_F_GUEST_ECN;
    /// Guest takes UFO.
    pub const GUEST_UFO: u64 = 1 << net::VIRTIO_NET_F_GUEST_UFO;
    /// Device takes TSO over IPv4.
    pub const HOST_TSO4: u64 = 1 << net::VIRTIO_NET_F_HOST_TSO4;
    /// Device takes TSO over IPv6.
    pub const HOST_TSO6: u64 = 1 << net::VIRTIO_NET_F_HOST_TSO6;
    /// Device takes TSO with ECN.
    pub const HOST_ECN: u64 = 1 << net::VIRTIO_NET_F_HOST_ECN;
    /// Mergeable RX buffers.
    pub const MRG_RXBUF: u64 = 1 << net::VIRTIO_NET_F_MRG_RXBUF;
    /// Multiqueue.
    pub const MQ: u64 = 1 << net::VIRTIO_NET_F_MQ;
    /// Indirect descriptors.
    pub const INDIRECT_DESC: u64 = 1 << ring::VIRTIO_RING_F_INDIRECT_DESC;
    /// used_event/avail_event notification suppression.
    pub const EVENT_IDX: u64 = 1 << ring::VIRTIO_RING_F_EVENT_IDX;
    /// vhost-user protocol features.
    pub const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    /// virtio 1.0.
    pub const VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    /// The device uses buffers in the order the driver made them
    /// available (virtio 1.2, 2.7.9/6): valed's TX and RX paths always
    /// did, so the driver may free and refill by count, without reading
    /// the used ring's ids.
    pub const IN_ORDER: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_IN_ORDER;

    /// The driver logs the device's writes to guest memory (a live
    /// migration; `VHOST_F_LOG_ALL`, a vhost bit the guest never sees).
    pub const LOG_ALL: u64 = VhostUserVirtioFeatures::LOG_ALL.bits();

    /// What the port offers.
    pub const OFFERED: u64 = VERSION_1
        | IN_ORDER
        | PROTOCOL_FEATURES
        | LOG_ALL
        | EVENT_IDX
        | INDIRECT_DESC
        | MRG_RXBUF
        | CSUM
        | GUEST_CSUM
        | HOST_TSO4
        | HOST_TSO6
        | HOST_ECN
        | GUEST_TSO4
        | GUEST_TSO6
        | GUEST_ECN
        | MQ;
}

/// The engine's `OFFLOAD_*` bits for a guest that acked `features`: what
/// it takes on RX without software segmentation or checksum.
pub fn rx_offloads(features: u64) -> u32 {
    let mut o = 0;
    if features & features::GUEST_CSUM != 0 {
        o |= vale::port::OFFLOAD_CSUM;
        // TSO needs partial checksums too (virtio 5.1.3.1).
        if features & features::GUEST_TSO4 != 0 {
            o |= vale::port::OFFLOAD_TSO4;
        }
        if features & features::GUEST_TSO6 != 0 {
            o |= vale::port::OFFLOAD_TSO6;
        }
        if features & features::GUEST_ECN != 0 {
            o |= vale::port::OFFLOAD_ECN;
        }
    }
    o
}

/// Most fragments one frame may take (the engine's limit).
pub const MAX_FRAGS: usize = vale::MAX_FRAGS;

/// Most bytes one guest frame may carry, header included: a 64 KiB GSO
/// frame plus its Ethernet and virtio-net headers, with room to spare.
pub const MAX_FRAME: usize = 65_536 + 1024;

/// Why a chain was refused. Each maps to one drop counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A descriptor points outside guest memory.
    #[error("descriptor at {addr:#x} len {len} is outside guest memory")]
    OutOfMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// The chain does not end: a loop, a next index out of the table, or a
    /// broken indirect table.
    #[error("descriptor chain does not end (loop or bad next index)")]
    Unterminated,
    /// A device-writable descriptor where the device must read (TX), or a
    /// device-readable one where it must write (RX).
    #[error("descriptor has the wrong direction (write-only on TX, read-only on RX)")]
    Direction,
    /// A descriptor of length 0.
    #[error("descriptor of length 0")]
    ZeroLength,
    /// More fragments than the engine takes.
    #[error("chain needs more than {MAX_FRAGS} fragments")]
    TooManyFrags,
    /// More bytes than a frame may have.
    #[error("chain carries more than {MAX_FRAME} bytes")]
    TooLong,
    /// Nothing in the chain.
    #[error("empty descriptor chain")]
    Empty,
}
