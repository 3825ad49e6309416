//! The netmap user ABI, API version 14, byte for byte.
//!
//! This module is the Rust rendering of netmap's `sys/net/netmap.h` (plus the pieces of
//! `netmap_legacy.h` and `netmap_user.h` that user programs still see). Every `#[repr(C)]`
//! struct here has exactly the size, alignment and field offsets of its C counterpart on
//! `x86_64` Linux; the tests at the bottom of the file pin all of them. Field names are the C
//! names. Where C has implicit padding, the Rust struct has explicit zero fields (`pad1`,
//! `pad2`), so no struct here contains padding bytes; the tests check that too. The doc
//! comments are meant to be read as the specification of the contract between an application
//! and netmap ("the kernel" below, even though vale implements it in user space).
//!
//! # The shared memory objects
//!
//! Binding a port to a file descriptor (`NETMAP_REQ_REGISTER`) makes netmap expose a memory
//! region that the application `mmap()`s. Everything in it is addressed by offsets or indices,
//! never by pointers, so that the kernel and each process can map it anywhere:
//!
//! ```text
//!  region base
//!   + nr_offset ──> struct netmap_if  (one per bound fd; read-only for the user)
//!                   ├─ fixed part (NetmapIf, 56 bytes)
//!                   └─ ring_ofs[]: i64 offsets, relative to the netmap_if, of
//!                        [NIC tx][host tx][NIC rx][host rx] rings
//!                              │
//!                              ▼
//!                   struct netmap_ring (one per ring)
//!                   ├─ header (NetmapRing, 256 bytes): head, cur, tail, buf_ofs, ...
//!                   └─ slot[num_slots]: NetmapSlot { buf_idx, len, flags, ptr }
//!                              │ buf_idx
//!                              ▼
//!                   buffer = (ring address) + buf_ofs + buf_idx * nr_buf_size
//! ```
//!
//! All NIC and host-stack rings of a physical port share one region, which is what makes
//! zero-copy forwarding between them possible (a slot can swap its `buf_idx` with another
//! slot's, see [`NS_BUF_CHANGED`]). VALE switch ports get their own regions.
//!
//! # The ring contract: `head`, `cur`, `tail`
//!
//! A ring is a circular array of `num_slots` slots. Three indices split it between the
//! application (user) and the kernel:
//!
//! * `head` (user-owned): the first slot the user has not yet given back. Everything in
//!   `[head, tail)` (modulo `num_slots`) belongs to the user: the slots, their buffers and
//!   the ring header fields marked `(u)`.
//! * `cur` (user-owned): the wakeup point. `poll()`/`select()` block until `tail` moves past
//!   `cur`. Normally `cur == head`; moving `cur` ahead of `head` (up to `tail`) asks to sleep
//!   until *more* slots are available without returning the ones already held.
//! * `tail` (kernel-owned, read-only for the user): the first slot that belongs to the kernel.
//!   Slots in `[tail, head)` are the kernel's and must not be touched by the user.
//!
//! On a **TX** ring `[head, tail)` are free slots: the user fills them with packets (buffer
//! contents, `len`, `flags`) and advances `head` (and `cur`) past them, then calls
//! [`NIOCTXSYNC`] (or `poll()`) to hand them to the kernel for transmission. The kernel moves
//! `tail` forward as transmissions complete and slots become free again.
//!
//! On an **RX** ring `[head, tail)` hold received packets: the user consumes them and advances
//! `head` (and `cur`) to give the slots back, then calls [`NIOCRXSYNC`] (or `poll()`); the
//! kernel releases the returned slots and moves `tail` forward over newly received packets.
//!
//! The kernel only reads `head`/`cur` and writes `tail` during a sync system call (or from the
//! sync-kloop thread in CSB mode, see [`NmCsbAtok`]). The user must keep `head` in the
//! range it owns and `cur` between `head` and `tail`; a sync that finds them out of range
//! treats the ring as corrupted and reinitializes it. One slot always stays with the
//! kernel, so a ring of `num_slots` slots holds at most `num_slots - 1` packets
//! ([`nm_ring_space`]).
//!
//! # The control path
//!
//! All new-style requests go through one ioctl, [`NIOCCTRL`], whose argument is an
//! [`NmreqHeader`]. The header names the port (`nr_name`), the request type (`nr_reqtype`, one
//! of [`ReqType`]), a pointer to a request-specific body (`nr_body`, e.g. an
//! [`NmreqRegister`]) and a linked list of options (`nr_options`, each starting with an
//! [`NmreqOption`]). The legacy [`Nmreq`] with [`NIOCREGIF`]/[`NIOCGINFO`] is kept for old
//! applications.

use std::mem::size_of;

// ---------------------------------------------------------------------------------------------
// Versions and general sizes
// ---------------------------------------------------------------------------------------------

/// Current netmap API version; applications put it in `nr_version`.
pub const NETMAP_API: u16 = 14;
/// Oldest API version accepted in `nr_version`.
pub const NETMAP_MIN_API: u16 = 14;
/// Newest API version accepted in `nr_version`.
pub const NETMAP_MAX_API: u16 = 15;

/// Cache-line estimate netmap uses to align contended fields (the ring's `sem`).
pub const NM_CACHE_ALIGN: usize = 128;

/// Size of an interface name (Linux `IFNAMSIZ`): the legacy names and `ni_name`.
pub const IFNAMSIZ: usize = 16;

/// Size of `nmreq_header.nr_name`, including the terminating NUL: names have at most 63 bytes.
pub const NETMAP_REQ_IFNAMSIZ: usize = 64;

/// Largest accepted request: the body plus all options, in bytes.
pub const NETMAP_REQ_MAXSIZE: usize = 4096;

/// Maximum number of slots (fragments) a single packet may span.
pub const NETMAP_MAX_FRAGS: usize = 64;

/// Path of the netmap control device (from `netmap_user.h`).
pub const NETMAP_DEVICE_NAME: &str = "/dev/netmap";

// ---------------------------------------------------------------------------------------------
// struct netmap_slot
// ---------------------------------------------------------------------------------------------

/// `struct netmap_slot`: one ring entry, describing one buffer (one packet or fragment).
///
/// C layout (`netmap.h`): `uint32_t buf_idx; uint16_t len; uint16_t flags; uint64_t ptr;`,
/// 16 bytes, 8-byte aligned.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetmapSlot {
    /// Index of the buffer in the region's buffer pool. The user may change it (to swap
    /// buffers between rings of the same region) but must then set [`NS_BUF_CHANGED`].
    pub buf_idx: u32,
    /// Length of the data in this slot (of this fragment if [`NS_MOREFRAG`] is set).
    pub len: u16,
    /// `NS_*` flags; the high byte has a port or fragment count (see [`NS_PORT_MASK`]).
    pub flags: u16,
    /// User buffer address for [`NS_INDIRECT`] slots. When the ring was registered with
    /// the [`NETMAP_REQ_OPT_OFFSETS`] option, the bits in the ring's `offset_mask` instead
    /// hold the offset of the packet start inside the buffer ([`nm_roffset`]).
    pub ptr: u64,
}

/// `buf_idx` was changed. The user must set it whenever it writes a new `buf_idx` (the kernel
/// may need to recompute the buffer's physical address or mapping). The kernel also sets it
/// when it swapped the buffer itself (e.g. on pipes), telling the user that a buffer it had
/// prepared earlier is no longer in this slot.
pub const NS_BUF_CHANGED: u16 = 0x0001;
/// Ask to be notified when this slot has actually been consumed (e.g. transmitted).
/// Completions are normally reported lazily; this forces a report, e.g. so that a sender
/// can know its last packet is gone before exiting.
pub const NS_REPORT: u16 = 0x0002;
/// Physical ports only, on RX rings with [`NR_FORWARD`] set: a slot released to the kernel
/// with this flag is passed on to the peer ring (host stack ⇄ NIC) instead of being dropped.
/// This lets a monitor or firewall let traffic through selectively.
pub const NS_FORWARD: u16 = 0x0004;
/// VALE switch: do not learn the source MAC address of this packet.
pub const NS_NO_LEARN: u16 = 0x0008;
/// VALE TX rings only: the data is not in the netmap buffer but in user memory at `ptr`.
pub const NS_INDIRECT: u16 = 0x0010;
/// The packet continues in the next slot. Set on all but the last slot of a multi-slot
/// packet; each slot's `len` covers only its own fragment. Supported by VALE ports, ptnetmap
/// ports and some NICs.
pub const NS_MOREFRAG: u16 = 0x0020;
/// Monitor ports only: this packet was seen on the monitored port's TX ring (not its RX ring).
pub const NS_TXMON: u16 = 0x0040;
/// Shift of the high byte of `flags`.
pub const NS_PORT_SHIFT: u16 = 8;
/// High byte of `flags`. On VALE TX rings a non-zero value names the destination port,
/// overriding the forwarding lookup; on VALE RX rings it is the number of fragments
/// ([`ns_rfrags`]).
pub const NS_PORT_MASK: u16 = 0xff << NS_PORT_SHIFT;

/// `NS_RFRAGS(slot)`: the high byte of a slot's `flags` (on VALE RX rings, the fragment count).
pub const fn ns_rfrags(flags: u16) -> u16 {
    (flags >> NS_PORT_SHIFT) & 0xff
}

impl NetmapSlot {
    /// The high byte of `flags`: destination port on VALE TX rings, fragment count on VALE RX
    /// rings (see [`NS_PORT_MASK`]).
    pub const fn port_byte(&self) -> u8 {
        ns_rfrags(self.flags) as u8
    }
}

/// `NETMAP_ROFFSET`: the packet offset stored in a slot's `ptr`, given the ring's `offset_mask`.
pub const fn nm_roffset(ptr: u64, offset_mask: u64) -> u64 {
    ptr & offset_mask
}

/// `NETMAP_WOFFSET`: `ptr` with its offset bits (those in `offset_mask`) replaced by `offset`.
pub const fn nm_woffset(ptr: u64, offset_mask: u64, offset: u64) -> u64 {
    (ptr & !offset_mask) | (offset & offset_mask)
}

// ---------------------------------------------------------------------------------------------
// struct netmap_ring
// ---------------------------------------------------------------------------------------------

/// `struct timeval` as on `x86_64` Linux (two `long`s), used for [`NetmapRing::ts`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeval {
    /// Seconds.
    pub tv_sec: i64,
    /// Microseconds.
    pub tv_usec: i64,
}

/// Size of the ring header: the slot array starts this many bytes after the ring.
pub const RING_HEADER_SIZE: usize = 256;

/// `struct netmap_ring` without its trailing `slot[]`: the header of a TX or RX ring.
///
/// The ring object in shared memory is this 256-byte header immediately followed by
/// `num_slots` [`NetmapSlot`]s. Fields marked `(k)` are written by the kernel only, `(u)` by
/// the user only; the others are constant after registration. See the [module
/// documentation](self) for the `head`/`cur`/`tail` contract.
///
/// C layout (`netmap.h`): `int64_t buf_ofs; uint32_t num_slots, nr_buf_size; uint16_t ringid,
/// dir; uint32_t head, cur, tail, flags; struct timeval ts; uint64_t offset_mask, buf_align;
/// uint8_t sem[128] __attribute__((aligned(128))); struct netmap_slot slot[];`.
///
/// C leaves 4 bytes of padding before `ts`, which is 8-byte aligned; here they are the
/// explicit field `pad1`. The attribute on `sem` makes the whole struct 128-byte aligned and
/// leaves 56 bytes of padding before `sem`; here that padding is the explicit field `pad2` and
/// the struct is `align(128)` like in C. A `&NetmapRing` therefore needs a 128-byte aligned
/// address. Consecutive ring objects keep that alignment when `num_slots` is a multiple of 8
/// (netmap itself only rounds ring objects to 64 bytes; code that reads the header field by
/// field at its offset needs only 8-byte alignment).
#[repr(C, align(128))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetmapRing {
    /// Offset from the start of this ring to the start of the buffer pool (can be negative):
    /// buffer `i` is at `ring + buf_ofs + i * nr_buf_size`.
    pub buf_ofs: i64,
    /// Number of slots in the ring.
    pub num_slots: u32,
    /// Size of each buffer in bytes.
    pub nr_buf_size: u32,
    /// Index of this ring among the port's rings of the same direction.
    pub ringid: u16,
    /// Direction: 0 = TX, 1 = RX ([`NR_DIR_TX`], [`NR_DIR_RX`]).
    pub dir: u16,
    /// (u) First slot owned by the user: next to be filled (TX) or read (RX).
    pub head: u32,
    /// (u) Wakeup point: `poll()` unblocks when `tail` moves past `cur`.
    pub cur: u32,
    /// (k) First slot owned by the kernel; read-only for the user.
    pub tail: u32,
    /// Ring flags: [`NR_TIMESTAMP`], [`NR_FORWARD`].
    pub flags: u32,
    /// Padding before `ts` (implicit in C). Always zero.
    pub pad1: u32,
    /// (k) Time of the last sync, updated when [`NR_TIMESTAMP`] is set.
    pub ts: Timeval,
    /// Bits of each slot's `ptr` that hold a buffer offset; zero unless the port was
    /// registered with the [`NETMAP_REQ_OPT_OFFSETS`] option.
    pub offset_mask: u64,
    /// Required alignment, in bytes, of packet starts (buffer plus offset) in TX slots.
    pub buf_align: u64,
    /// Padding up to `sem` (implicit in C, where `sem` is 128-byte aligned). Always zero.
    pub pad2: [u8; 56],
    /// Opaque room for a lock or similar object, on its own cache line(s).
    pub sem: [u8; 128],
}

impl Default for NetmapRing {
    fn default() -> Self {
        Self {
            buf_ofs: 0,
            num_slots: 0,
            nr_buf_size: 0,
            ringid: 0,
            dir: 0,
            head: 0,
            cur: 0,
            tail: 0,
            flags: 0,
            pad1: 0,
            ts: Timeval::default(),
            offset_mask: 0,
            buf_align: 0,
            pad2: [0; 56],
            sem: [0; 128],
        }
    }
}

/// `NetmapRing::dir` of a transmit ring.
pub const NR_DIR_TX: u16 = 0;
/// `NetmapRing::dir` of a receive ring.
pub const NR_DIR_RX: u16 = 1;

/// Ring flag: update `ts` on every sync (cheaper than a separate `gettimeofday()`).
pub const NR_TIMESTAMP: u32 = 0x0002;
/// Ring flag: honour [`NS_FORWARD`] on the slots of this ring.
pub const NR_FORWARD: u32 = 0x0004;

/// `nm_ring_next()`: the slot index after `i` on a ring of `num_slots` slots.
pub const fn nm_ring_next(num_slots: u32, i: u32) -> u32 {
    let next = i.wrapping_add(1);
    if next == num_slots {
        0
    } else {
        next
    }
}

/// `nm_ring_empty()`: true when the user owns no slot (`head == tail`): nothing to read on an
/// RX ring, no free slot on a TX ring.
pub const fn nm_ring_empty(head: u32, tail: u32) -> bool {
    head == tail
}

/// `nm_ring_space()`: number of slots the user owns, `tail - head` modulo `num_slots`.
/// Indices are expected below `num_slots`; other values give a meaningless result but never
/// panic.
pub const fn nm_ring_space(head: u32, tail: u32, num_slots: u32) -> u32 {
    if tail >= head {
        tail - head
    } else {
        num_slots.wrapping_sub(head - tail)
    }
}

/// `nm_tx_pending()`: true while a TX ring still has slots queued for transmission. When all
/// are done the kernel owns exactly one slot, i.e. `head == tail + 1` (modulo `num_slots`).
pub const fn nm_tx_pending(head: u32, tail: u32, num_slots: u32) -> bool {
    nm_ring_next(num_slots, tail) != head
}

// ---------------------------------------------------------------------------------------------
// struct netmap_if
// ---------------------------------------------------------------------------------------------

/// Size of the fixed part of `struct netmap_if`; `ring_ofs[]` starts here.
pub const NETMAP_IF_HEADER_SIZE: usize = 56;

/// `struct netmap_if` without its trailing `ring_ofs[]`: the per-descriptor view of a port.
///
/// Written by the kernel on `NETMAP_REQ_REGISTER`; the user treats it as read-only (except
/// `ni_bufs_head`), and the kernel never reads it back.
///
/// Right after these 56 bytes comes `ssize_t ring_ofs[]` (`i64` on `x86_64`), the offsets of
/// the rings relative to the start of the `netmap_if`, in this order: `ni_tx_rings` NIC TX rings,
/// `ni_host_tx_rings` host TX rings, `ni_rx_rings` NIC RX rings, `ni_host_rx_rings` host RX
/// rings. So TX ring `i` is at `ring_ofs[i]` and RX ring `i` at
/// `ring_ofs[i + ni_tx_rings + ni_host_tx_rings]` ([`NetmapIf::rx_ring_ofs_index`]).
///
/// C layout (`netmap.h`): `char ni_name[IFNAMSIZ]; uint32_t ni_version, ni_flags, ni_tx_rings,
/// ni_rx_rings, ni_bufs_head, ni_host_tx_rings, ni_host_rx_rings, ni_spare1[3]; const ssize_t
/// ring_ofs[];`. The flexible `ssize_t` array makes the C struct 8-byte aligned, hence
/// `align(8)` here.
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetmapIf {
    /// Name of the port, NUL-terminated.
    pub ni_name: [u8; IFNAMSIZ],
    /// API version (currently unused).
    pub ni_version: u32,
    /// Properties: [`NI_PRIV_MEM`].
    pub ni_flags: u32,
    /// Number of NIC (hardware) TX rings.
    pub ni_tx_rings: u32,
    /// Number of NIC (hardware) RX rings.
    pub ni_rx_rings: u32,
    /// Head of the list of extra buffers obtained with `nr_extra_bufs`: the buffers are
    /// chained through the first `u32` of each, which holds the next buffer's index (0 ends
    /// the list). On close the kernel frees the buffers found on this list, so the user
    /// must leave any buffers it wants released here.
    pub ni_bufs_head: u32,
    /// Number of host-stack (software) TX rings.
    pub ni_host_tx_rings: u32,
    /// Number of host-stack (software) RX rings.
    pub ni_host_rx_rings: u32,
    /// Spare, zero.
    pub ni_spare1: [u32; 3],
}

/// `ni_flags`: the port uses a private memory region (not the global allocator).
pub const NI_PRIV_MEM: u32 = 0x1;

impl NetmapIf {
    /// The name up to its first NUL (all 16 bytes if there is none).
    pub fn name_bytes(&self) -> &[u8] {
        c_name(&self.ni_name)
    }

    /// Number of `ring_ofs[]` entries that follow the fixed part.
    pub const fn ring_ofs_len(&self) -> usize {
        self.ni_tx_rings as usize
            + self.ni_host_tx_rings as usize
            + self.ni_rx_rings as usize
            + self.ni_host_rx_rings as usize
    }

    /// Total size of this `netmap_if` object including `ring_ofs[]`.
    pub const fn total_size(&self) -> usize {
        NETMAP_IF_HEADER_SIZE + self.ring_ofs_len() * size_of::<i64>()
    }

    /// `ring_ofs[]` index of TX ring `i` (`NETMAP_TXRING`); host TX rings follow the NIC ones.
    pub const fn tx_ring_ofs_index(&self, i: u32) -> usize {
        i as usize
    }

    /// `ring_ofs[]` index of RX ring `i` (`NETMAP_RXRING`); host RX rings follow the NIC ones.
    pub const fn rx_ring_ofs_index(&self, i: u32) -> usize {
        i as usize + self.ni_tx_rings as usize + self.ni_host_tx_rings as usize
    }
}

// ---------------------------------------------------------------------------------------------
// ioctl numbers
// ---------------------------------------------------------------------------------------------

/// Linux `_IOC_NONE`: no data transfer.
pub const IOC_NONE: u32 = 0;
/// Linux `_IOC_WRITE`: user → kernel.
pub const IOC_WRITE: u32 = 1;
/// Linux `_IOC_READ`: kernel → user.
pub const IOC_READ: u32 = 2;

/// Linux `_IOC(dir, type, nr, size)` (generic layout used by x86 and arm: 2 direction bits,
/// 14 size bits, 8 type bits, 8 number bits).
///
/// # Panics
///
/// If `size` does not fit in 14 bits (at compile time when used in a `const`).
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    assert!(size < (1 << 14), "ioctl argument too large for _IOC");
    (dir << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

/// Linux `_IO(type, nr)`: no argument.
pub const fn io(ty: u8, nr: u8) -> u32 {
    ioc(IOC_NONE, ty, nr, 0)
}

/// Linux `_IOR(type, nr, T)` with `size = size_of::<T>()`.
pub const fn ior(ty: u8, nr: u8, size: usize) -> u32 {
    ioc(IOC_READ, ty, nr, size)
}

/// Linux `_IOW(type, nr, T)` with `size = size_of::<T>()`.
pub const fn iow(ty: u8, nr: u8, size: usize) -> u32 {
    ioc(IOC_WRITE, ty, nr, size)
}

/// Linux `_IOWR(type, nr, T)` with `size = size_of::<T>()`.
pub const fn iowr(ty: u8, nr: u8, size: usize) -> u32 {
    ioc(IOC_READ | IOC_WRITE, ty, nr, size)
}

/// `_IOWR('i', 151, struct nmreq_header)`: the single entry point of the new control API. The
/// argument is an [`NmreqHeader`]; the body and options are reached through its pointers.
pub const NIOCCTRL: u32 = iowr(b'i', 151, size_of::<NmreqHeader>());
/// `_IO('i', 148)`: sync the TX rings bound to the descriptor (non-blocking, no argument).
pub const NIOCTXSYNC: u32 = io(b'i', 148);
/// `_IO('i', 149)`: sync the RX rings bound to the descriptor (non-blocking, no argument).
pub const NIOCRXSYNC: u32 = io(b'i', 149);
/// Legacy `_IOWR('i', 145, struct nmreq)`: port information.
pub const NIOCGINFO: u32 = iowr(b'i', 145, size_of::<Nmreq>());
/// Legacy `_IOWR('i', 146, struct nmreq)`: register a port.
pub const NIOCREGIF: u32 = iowr(b'i', 146, size_of::<Nmreq>());
/// Legacy `_IOWR('i', 150, struct nm_ifreq)`: opaque configuration passed to an external
/// module owning a VALE port.
pub const NIOCCONFIG: u32 = iowr(b'i', 150, size_of::<NmIfreq>());

// ---------------------------------------------------------------------------------------------
// Control API: header, request types, options
// ---------------------------------------------------------------------------------------------

/// `struct nmreq_option`: the header that starts every option.
///
/// Options form a singly linked list starting at `nmreq_header.nr_options`. Each option type
/// may appear at most once. For each option the kernel sets `nro_status`: 0 if it was
/// recognized and applied, an errno value otherwise (`EOPNOTSUPP` for an option the request
/// does not understand, which also makes the whole request fail).
///
/// C layout (`netmap.h`): `uint64_t nro_next; uint32_t nro_reqtype; uint32_t nro_status;
/// uint64_t nro_size;`, 24 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmreqOption {
    /// Pointer to the next option, 0 at the end of the list.
    pub nro_next: u64,
    /// Option type, one of `NETMAP_REQ_OPT_*`.
    pub nro_reqtype: u32,
    /// (out) 0 if the option was processed, an errno value otherwise.
    pub nro_status: u32,
    /// Total size of a variable-size option (header included), e.g.
    /// [`NmreqOptSyncKloopEventfds`]; 0 for fixed-size options.
    pub nro_size: u64,
}

impl NmreqOption {
    /// An unlinked option header of type `nro_reqtype` with the given `nro_size`.
    pub const fn new(nro_reqtype: u32, nro_size: u64) -> Self {
        Self {
            nro_next: 0,
            nro_reqtype,
            nro_status: 0,
            nro_size,
        }
    }
}

/// `struct nmreq_header`: the argument of [`NIOCCTRL`], common to all requests.
///
/// * `nr_version` (in/out): must be accepted by the kernel
///   ([`NETMAP_MIN_API`]..=[`NETMAP_MAX_API`]); the kernel writes back its own version.
/// * `nr_reqtype` (in): a [`ReqType`]. It must stay the second field: the kernel reads it to
///   know how much of the body to copy.
/// * `nr_reserved`: must be 0.
/// * `nr_name` (in): the port, e.g. `em0`, `valeX:Y`, `eth0{pipe`. NUL-terminated, at most
///   63 bytes (the kernel forces the last byte to NUL).
/// * `nr_options` (in): pointer to the first [`NmreqOption`], or 0.
/// * `nr_body` (in): pointer to the request-specific struct ([`ReqType::body_size`]).
///
/// C layout (`netmap.h`): `uint16_t nr_version, nr_reqtype; uint32_t nr_reserved; char
/// nr_name[64]; uint64_t nr_options, nr_body;`, 88 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NmreqHeader {
    /// API version.
    pub nr_version: u16,
    /// Request type (`NETMAP_REQ_*`).
    pub nr_reqtype: u16,
    /// Must be zero.
    pub nr_reserved: u32,
    /// Port name, NUL-terminated.
    pub nr_name: [u8; NETMAP_REQ_IFNAMSIZ],
    /// Pointer to the first option, or 0.
    pub nr_options: u64,
    /// Pointer to the request body.
    pub nr_body: u64,
}

impl Default for NmreqHeader {
    fn default() -> Self {
        Self {
            nr_version: 0,
            nr_reqtype: 0,
            nr_reserved: 0,
            nr_name: [0; NETMAP_REQ_IFNAMSIZ],
            nr_options: 0,
            nr_body: 0,
        }
    }
}

impl NmreqHeader {
    /// A header for `reqtype` at the current [`NETMAP_API`], with empty name, no body and no
    /// options.
    pub fn new(reqtype: ReqType) -> Self {
        Self {
            nr_version: NETMAP_API,
            nr_reqtype: reqtype as u16,
            ..Self::default()
        }
    }

    /// The port name up to its first NUL (all 64 bytes if there is none).
    pub fn name_bytes(&self) -> &[u8] {
        c_name(&self.nr_name)
    }

    /// The port name as a `str`.
    ///
    /// # Errors
    ///
    /// If the name is not valid UTF-8.
    pub fn name_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(self.name_bytes())
    }

    /// Stores `name` NUL-terminated and zero-filled. Fails if it does not fit with its NUL
    /// (more than 63 bytes). Like in C, a reader stops at the first NUL, so a name with an
    /// embedded NUL reads back truncated.
    ///
    /// # Errors
    ///
    /// [`NameTooLong`] if `name` has more than 63 bytes; the header is then unchanged.
    pub fn set_name(&mut self, name: &str) -> Result<(), NameTooLong> {
        set_c_name(&mut self.nr_name, name)
    }
}

/// A name did not fit in its fixed-size, NUL-terminated C array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("name is {len} bytes long, at most {max} fit")]
pub struct NameTooLong {
    /// Length of the rejected name in bytes.
    pub len: usize,
    /// Longest name that fits (array size minus the NUL).
    pub max: usize,
}

/// The bytes of a NUL-terminated name stored in a fixed array.
fn c_name(src: &[u8]) -> &[u8] {
    let end = src.iter().position(|&b| b == 0).unwrap_or(src.len());
    &src[..end]
}

/// Stores `name` into `dst`, NUL-terminated and zero-filled.
fn set_c_name<const N: usize>(dst: &mut [u8; N], name: &str) -> Result<(), NameTooLong> {
    let bytes = name.as_bytes();
    if bytes.len() >= N {
        return Err(NameTooLong {
            len: bytes.len(),
            max: N - 1,
        });
    }
    *dst = [0; N];
    dst[..bytes.len()].copy_from_slice(bytes);
    Ok(())
}

/// Bind a port to the control device ([`NmreqRegister`]).
pub const NETMAP_REQ_REGISTER: u16 = 1;
/// Get a port's ring and memory geometry ([`NmreqPortInfoGet`]); the fd need not be bound.
pub const NETMAP_REQ_PORT_INFO_GET: u16 = 2;
/// Attach a port to a VALE switch ([`NmreqValeAttach`]).
pub const NETMAP_REQ_VALE_ATTACH: u16 = 3;
/// Detach a port from a VALE switch ([`NmreqValeDetach`]).
pub const NETMAP_REQ_VALE_DETACH: u16 = 4;
/// List the ports of VALE switches ([`NmreqValeList`]).
pub const NETMAP_REQ_VALE_LIST: u16 = 5;
/// Set a port's header length, formerly the virtio-net header length ([`NmreqPortHdr`]).
pub const NETMAP_REQ_PORT_HDR_SET: u16 = 6;
/// Get a port's header length ([`NmreqPortHdr`]).
pub const NETMAP_REQ_PORT_HDR_GET: u16 = 7;
/// Create a persistent VALE port ([`NmreqValeNewif`]).
pub const NETMAP_REQ_VALE_NEWIF: u16 = 8;
/// Delete a persistent VALE port (no body).
pub const NETMAP_REQ_VALE_DELIF: u16 = 9;
/// Start polling kernel threads on an attached VALE port ([`NmreqValePolling`]).
pub const NETMAP_REQ_VALE_POLLING_ENABLE: u16 = 10;
/// Stop polling kernel threads on a VALE port ([`NmreqValePolling`]).
pub const NETMAP_REQ_VALE_POLLING_DISABLE: u16 = 11;
/// Get the layout of a memory allocator's pools ([`NmreqPoolsInfo`]).
pub const NETMAP_REQ_POOLS_INFO_GET: u16 = 12;
/// Run the in-kernel sync loop in the calling thread until
/// [`NETMAP_REQ_SYNC_KLOOP_STOP`] ([`NmreqSyncKloopStart`]).
pub const NETMAP_REQ_SYNC_KLOOP_START: u16 = 13;
/// Make the thread running the sync loop return from its ioctl (no body).
pub const NETMAP_REQ_SYNC_KLOOP_STOP: u16 = 14;
/// Switch an already registered descriptor to CSB mode (no body; needs
/// [`NETMAP_REQ_OPT_CSB`]).
pub const NETMAP_REQ_CSB_ENABLE: u16 = 15;

/// `nmreq_header.nr_reqtype` values.
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReqType {
    /// [`NETMAP_REQ_REGISTER`].
    Register = NETMAP_REQ_REGISTER,
    /// [`NETMAP_REQ_PORT_INFO_GET`].
    PortInfoGet = NETMAP_REQ_PORT_INFO_GET,
    /// [`NETMAP_REQ_VALE_ATTACH`].
    ValeAttach = NETMAP_REQ_VALE_ATTACH,
    /// [`NETMAP_REQ_VALE_DETACH`].
    ValeDetach = NETMAP_REQ_VALE_DETACH,
    /// [`NETMAP_REQ_VALE_LIST`].
    ValeList = NETMAP_REQ_VALE_LIST,
    /// [`NETMAP_REQ_PORT_HDR_SET`].
    PortHdrSet = NETMAP_REQ_PORT_HDR_SET,
    /// [`NETMAP_REQ_PORT_HDR_GET`].
    PortHdrGet = NETMAP_REQ_PORT_HDR_GET,
    /// [`NETMAP_REQ_VALE_NEWIF`].
    ValeNewif = NETMAP_REQ_VALE_NEWIF,
    /// [`NETMAP_REQ_VALE_DELIF`].
    ValeDelif = NETMAP_REQ_VALE_DELIF,
    /// [`NETMAP_REQ_VALE_POLLING_ENABLE`].
    ValePollingEnable = NETMAP_REQ_VALE_POLLING_ENABLE,
    /// [`NETMAP_REQ_VALE_POLLING_DISABLE`].
    ValePollingDisable = NETMAP_REQ_VALE_POLLING_DISABLE,
    /// [`NETMAP_REQ_POOLS_INFO_GET`].
    PoolsInfoGet = NETMAP_REQ_POOLS_INFO_GET,
    /// [`NETMAP_REQ_SYNC_KLOOP_START`].
    SyncKloopStart = NETMAP_REQ_SYNC_KLOOP_START,
    /// [`NETMAP_REQ_SYNC_KLOOP_STOP`].
    SyncKloopStop = NETMAP_REQ_SYNC_KLOOP_STOP,
    /// [`NETMAP_REQ_CSB_ENABLE`].
    CsbEnable = NETMAP_REQ_CSB_ENABLE,
}

/// A `nr_reqtype` that names no request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown netmap request type {0}")]
pub struct InvalidReqType(pub u16);

impl TryFrom<u16> for ReqType {
    type Error = InvalidReqType;

    fn try_from(v: u16) -> Result<Self, Self::Error> {
        Ok(match v {
            NETMAP_REQ_REGISTER => Self::Register,
            NETMAP_REQ_PORT_INFO_GET => Self::PortInfoGet,
            NETMAP_REQ_VALE_ATTACH => Self::ValeAttach,
            NETMAP_REQ_VALE_DETACH => Self::ValeDetach,
            NETMAP_REQ_VALE_LIST => Self::ValeList,
            NETMAP_REQ_PORT_HDR_SET => Self::PortHdrSet,
            NETMAP_REQ_PORT_HDR_GET => Self::PortHdrGet,
            NETMAP_REQ_VALE_NEWIF => Self::ValeNewif,
            NETMAP_REQ_VALE_DELIF => Self::ValeDelif,
            NETMAP_REQ_VALE_POLLING_ENABLE => Self::ValePollingEnable,
            NETMAP_REQ_VALE_POLLING_DISABLE => Self::ValePollingDisable,
            NETMAP_REQ_POOLS_INFO_GET => Self::PoolsInfoGet,
            NETMAP_REQ_SYNC_KLOOP_START => Self::SyncKloopStart,
            NETMAP_REQ_SYNC_KLOOP_STOP => Self::SyncKloopStop,
            NETMAP_REQ_CSB_ENABLE => Self::CsbEnable,
            _ => return Err(InvalidReqType(v)),
        })
    }
}

impl From<ReqType> for u16 {
    fn from(t: ReqType) -> u16 {
        t as u16
    }
}

impl ReqType {
    /// Size of the body `nr_body` points to (`nmreq_size_by_type()`); 0 for requests that
    /// take no body.
    pub const fn body_size(self) -> usize {
        match self {
            Self::Register => size_of::<NmreqRegister>(),
            Self::PortInfoGet => size_of::<NmreqPortInfoGet>(),
            Self::ValeAttach => size_of::<NmreqValeAttach>(),
            Self::ValeDetach => size_of::<NmreqValeDetach>(),
            Self::ValeList => size_of::<NmreqValeList>(),
            Self::PortHdrSet | Self::PortHdrGet => size_of::<NmreqPortHdr>(),
            Self::ValeNewif => size_of::<NmreqValeNewif>(),
            Self::ValeDelif | Self::SyncKloopStop | Self::CsbEnable => 0,
            Self::ValePollingEnable | Self::ValePollingDisable => size_of::<NmreqValePolling>(),
            Self::PoolsInfoGet => size_of::<NmreqPoolsInfo>(),
            Self::SyncKloopStart => size_of::<NmreqSyncKloopStart>(),
        }
    }
}

/// Option for `NETMAP_REQ_REGISTER`: build the port's memory region inside user-supplied
/// memory (e.g. hugepages) ([`NmreqOptExtmem`]).
pub const NETMAP_REQ_OPT_EXTMEM: u32 = 1;
/// Option for `NETMAP_REQ_SYNC_KLOOP_START`: wake the sync loop and the application through
/// eventfds instead of sleeping ([`NmreqOptSyncKloopEventfds`]).
pub const NETMAP_REQ_OPT_SYNC_KLOOP_EVENTFDS: u32 = 2;
/// Option for `NETMAP_REQ_REGISTER` / `NETMAP_REQ_CSB_ENABLE`: exchange the ring indices
/// through user-provided CSB arrays instead of the ring headers ([`NmreqOptCsb`]).
pub const NETMAP_REQ_OPT_CSB: u32 = 3;
/// Extension of the eventfds option: sync TX and/or RX directly in the notifier's context
/// ([`NmreqOptSyncKloopMode`]); requires valid `ioeventfd`s.
pub const NETMAP_REQ_OPT_SYNC_KLOOP_MODE: u32 = 4;
/// Option for `NETMAP_REQ_REGISTER`: use (part of) each slot's `ptr` as the offset of the
/// packet inside its buffer ([`NmreqOptOffsets`]).
pub const NETMAP_REQ_OPT_OFFSETS: u32 = 5;
/// One past the last option type (the number of option types plus one).
pub const NETMAP_REQ_OPT_MAX: u32 = 6;

/// Size of an option's data after its [`NmreqOption`] header, as the kernel copies it
/// (`nmreq_opt_size_by_type()`): fixed for most types, taken from `nro_size` for the eventfds
/// option (if at least a header), 0 for unknown types.
pub const fn nmreq_opt_body_size(nro_reqtype: u32, nro_size: u64) -> usize {
    let hdr = size_of::<NmreqOption>();
    let total = match nro_reqtype {
        NETMAP_REQ_OPT_EXTMEM => size_of::<NmreqOptExtmem>(),
        NETMAP_REQ_OPT_SYNC_KLOOP_EVENTFDS if nro_size >= hdr as u64 => nro_size as usize,
        NETMAP_REQ_OPT_CSB => size_of::<NmreqOptCsb>(),
        NETMAP_REQ_OPT_SYNC_KLOOP_MODE => size_of::<NmreqOptSyncKloopMode>(),
        NETMAP_REQ_OPT_OFFSETS => size_of::<NmreqOptOffsets>(),
        _ => hdr,
    };
    total - hdr
}

// ---------------------------------------------------------------------------------------------
// NETMAP_REQ_REGISTER
// ---------------------------------------------------------------------------------------------

/// `struct nmreq_register`: body of `NETMAP_REQ_REGISTER`, binding the port named in the
/// header to the control descriptor.
///
/// * Ring and slot counts (in/out): non-zero inputs ask to reconfigure the port (not
///   guaranteed); the values in use are returned.
/// * `nr_mode` (in): which rings to bind, an [`RegMode`]; `nr_ringid` (in) selects the ring
///   for [`NR_REG_ONE_NIC`] / [`NR_REG_ONE_SW`].
/// * `nr_flags` (in): `NR_*` flags below.
/// * `nr_mem_id` (in/out): memory allocator, 0 = let netmap choose; 1 is the global one
///   shared by physical ports. Ports with the same id can exchange buffers (zero-copy).
/// * `nr_extra_bufs` (in/out): extra buffers wanted; the number obtained is returned and the
///   list starts at `netmap_if.ni_bufs_head`.
/// * `nr_offset`, `nr_memsize` (out): where the `netmap_if` is in the region, region size.
///
/// C layout (`netmap.h`): `uint64_t nr_offset, nr_memsize; uint32_t nr_tx_slots, nr_rx_slots;
/// uint16_t nr_tx_rings, nr_rx_rings, nr_host_tx_rings, nr_host_rx_rings, nr_mem_id,
/// nr_ringid; uint32_t nr_mode, nr_extra_bufs; uint64_t nr_flags;`, 56 bytes. The 4 bytes of
/// implicit C padding before `nr_flags` are the explicit field `pad1` here.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmreqRegister {
    /// (out) Offset of the `netmap_if` in the shared region.
    pub nr_offset: u64,
    /// (out) Size of the shared region.
    pub nr_memsize: u64,
    /// Slots per TX ring.
    pub nr_tx_slots: u32,
    /// Slots per RX ring.
    pub nr_rx_slots: u32,
    /// Number of NIC TX rings.
    pub nr_tx_rings: u16,
    /// Number of NIC RX rings.
    pub nr_rx_rings: u16,
    /// Number of host TX rings.
    pub nr_host_tx_rings: u16,
    /// Number of host RX rings.
    pub nr_host_rx_rings: u16,
    /// Memory allocator id.
    pub nr_mem_id: u16,
    /// Ring index for the single-ring modes.
    pub nr_ringid: u16,
    /// `NR_REG_*` mode.
    pub nr_mode: u32,
    /// Number of extra buffers.
    pub nr_extra_bufs: u32,
    /// Padding (implicit in C), zero.
    pub pad1: u32,
    /// `NR_*` flags.
    pub nr_flags: u64,
}

/// Monitor the TX rings selected by `nr_mode`/`nr_ringid` of the named port.
pub const NR_MONITOR_TX: u64 = 0x100;
/// Monitor the RX rings selected by `nr_mode`/`nr_ringid` of the named port.
pub const NR_MONITOR_RX: u64 = 0x200;
/// Zero-copy monitor: the monitor swaps buffers with the monitored rings.
pub const NR_ZCOPY_MON: u64 = 0x400;
/// Ask for exclusive access to the selected rings (fails if someone else has them).
pub const NR_EXCLUSIVE: u64 = 0x800;
// 0x1000 is unused (it was NR_PTNETMAP_HOST before the ptnetmap host code was removed).
/// Bind only the RX rings of the selected set.
pub const NR_RX_RINGS_ONLY: u64 = 0x2000;
/// Bind only the TX rings of the selected set.
pub const NR_TX_RINGS_ONLY: u64 = 0x4000;
/// The application can send and receive frames that start with a virtio-net header. Without
/// it, registering a port that needs such headers fails; with it, `NETMAP_REQ_PORT_HDR_GET`
/// tells the header length.
pub const NR_ACCEPT_VNET_HDR: u64 = 0x8000;
/// `poll()` also syncs the RX rings when `POLLIN` was not requested (by default RX rings are
/// only touched on `POLLIN`).
pub const NR_DO_RX_POLL: u64 = 0x10000;
/// `poll()` syncs the TX rings only when `POLLOUT` was requested (by default every `poll()`
/// pushes out pending TX slots).
pub const NR_NO_TX_POLL: u64 = 0x20000;

/// Backward compatibility only. In the legacy [`Nmreq`] a zero mode means "decode the
/// deprecated `NETMAP_*_RING` bits of `nr_ringid`"; in `nmreq_register` netmap rejects it
/// with `EINVAL`, and so does [`RegMode`].
pub const NR_REG_DEFAULT: u32 = 0;
/// All NIC ring pairs.
pub const NR_REG_ALL_NIC: u32 = 1;
/// Host (software) ring pairs only; `netmap:foo^`.
pub const NR_REG_SW: u32 = 2;
/// All NIC and host ring pairs; `netmap:foo+` / `netmap:foo*`.
pub const NR_REG_NIC_SW: u32 = 3;
/// The single NIC ring pair `nr_ringid`; `netmap:foo-k`.
pub const NR_REG_ONE_NIC: u32 = 4;
/// Deprecated: pipe master end, now written `foo{k` in the port name. Rejected by
/// [`RegMode`].
pub const NR_REG_PIPE_MASTER: u32 = 5;
/// Deprecated: pipe slave end, now written `foo}k` in the port name. Rejected by
/// [`RegMode`].
pub const NR_REG_PIPE_SLAVE: u32 = 6;
/// Bind no rings at all (e.g. only to get the memory region).
pub const NR_REG_NULL: u32 = 7;
/// The single host ring pair `nr_ringid`; `netmap:foo^k`.
pub const NR_REG_ONE_SW: u32 = 8;

/// The `nmreq_register.nr_mode` values a registration accepts. Not included: the legacy
/// [`NR_REG_DEFAULT`] (0), which netmap rejects in `nmreq_register`, and the deprecated pipe
/// modes 5 and 6 (pipes are selected through the port name).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegMode {
    /// [`NR_REG_ALL_NIC`].
    AllNic = NR_REG_ALL_NIC,
    /// [`NR_REG_SW`].
    Sw = NR_REG_SW,
    /// [`NR_REG_NIC_SW`].
    NicSw = NR_REG_NIC_SW,
    /// [`NR_REG_ONE_NIC`].
    OneNic = NR_REG_ONE_NIC,
    /// [`NR_REG_NULL`].
    Null = NR_REG_NULL,
    /// [`NR_REG_ONE_SW`].
    OneSw = NR_REG_ONE_SW,
}

/// An `nr_mode` that is not a supported `NR_REG_*` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid or unsupported netmap register mode {0}")]
pub struct InvalidRegMode(pub u32);

impl TryFrom<u32> for RegMode {
    type Error = InvalidRegMode;

    fn try_from(v: u32) -> Result<Self, Self::Error> {
        Ok(match v {
            NR_REG_ALL_NIC => Self::AllNic,
            NR_REG_SW => Self::Sw,
            NR_REG_NIC_SW => Self::NicSw,
            NR_REG_ONE_NIC => Self::OneNic,
            NR_REG_NULL => Self::Null,
            NR_REG_ONE_SW => Self::OneSw,
            _ => return Err(InvalidRegMode(v)),
        })
    }
}

impl From<RegMode> for u32 {
    fn from(m: RegMode) -> u32 {
        m as u32
    }
}

// ---------------------------------------------------------------------------------------------
// Other request bodies
// ---------------------------------------------------------------------------------------------

/// `struct nmreq_port_info_get`: body of `NETMAP_REQ_PORT_INFO_GET`. Same meaning as the
/// corresponding [`NmreqRegister`] fields; `nr_mem_id` is in/out.
///
/// C layout (`netmap.h`): `uint64_t nr_memsize; uint32_t nr_tx_slots, nr_rx_slots; uint16_t
/// nr_tx_rings, nr_rx_rings, nr_host_tx_rings, nr_host_rx_rings, nr_mem_id, pad[3];`,
/// 32 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmreqPortInfoGet {
    /// Size of the shared region.
    pub nr_memsize: u64,
    /// Slots per TX ring.
    pub nr_tx_slots: u32,
    /// Slots per RX ring.
    pub nr_rx_slots: u32,
    /// Number of NIC TX rings.
    pub nr_tx_rings: u16,
    /// Number of NIC RX rings.
    pub nr_rx_rings: u16,
    /// Number of host TX rings.
    pub nr_host_tx_rings: u16,
    /// Number of host RX rings.
    pub nr_host_rx_rings: u16,
    /// Memory allocator id (in/out).
    pub nr_mem_id: u16,
    /// Padding, zero.
    pub pad: [u16; 3],
}

/// Prefix of VALE switch port names: `valeX:Y` is port `Y` of switch `valeX`.
pub const NM_BDG_NAME: &str = "vale";

/// `struct nmreq_vale_attach`: body of `NETMAP_REQ_VALE_ATTACH`. `nr_name` in the header is
/// `valeX:ifname`; attaching may register `ifname`, hence the embedded register request.
/// `port_index` (out) is where the port landed on the switch.
///
/// C layout (`netmap.h`): `struct nmreq_register reg; uint32_t port_index, pad1;`, 64 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmreqValeAttach {
    /// Registration arguments for the attached port.
    pub reg: NmreqRegister,
    /// (out) Index of the port on the switch.
    pub port_index: u32,
    /// Padding, zero.
    pub pad1: u32,
}

/// `struct nmreq_vale_detach`: body of `NETMAP_REQ_VALE_DETACH`; `port_index` (out) is where
/// the port was.
///
/// C layout (`netmap.h`): `uint32_t port_index, pad1;`, 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmreqValeDetach {
    /// (out) Index the port had on the switch.
    pub port_index: u32,
    /// Padding, zero.
    pub pad1: u32,
}

/// `struct nmreq_vale_list`: body of `NETMAP_REQ_VALE_LIST`.
///
/// With a `valeX:Y` name in the header, returns that port's switch index and port index
/// (`nr_port_idx` = [`NM_BDG_NOPORT`] if the switch exists but the port is not on it; `ENOENT`
/// if the switch does not exist). With an empty name it enumerates: each call returns the
/// first existing port at or after (`nr_bridge_idx`, `nr_port_idx`), writing its name into
/// `nr_name`; the caller clears the name, increments `nr_port_idx` and repeats, starting from
/// `(0, 0)`, until the request fails with `ENOENT`.
///
/// C layout (`netmap.h`): `uint16_t nr_bridge_idx, pad1; uint32_t nr_port_idx;`, 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmreqValeList {
    /// Switch index (in/out).
    pub nr_bridge_idx: u16,
    /// Padding, zero.
    pub pad1: u16,
    /// Port index on the switch (in/out).
    pub nr_port_idx: u32,
}

/// `struct nmreq_port_hdr`: body of `NETMAP_REQ_PORT_HDR_SET` / `_GET`, the length of the
/// (virtio-net) header that precedes each frame on the port named in the header.
///
/// C layout (`netmap.h`): `uint32_t nr_hdr_len, pad1;`, 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmreqPortHdr {
    /// Header length in bytes.
    pub nr_hdr_len: u32,
    /// Padding, zero.
    pub pad1: u32,
}

/// `struct nmreq_vale_newif`: body of `NETMAP_REQ_VALE_NEWIF`, creating a persistent VALE
/// port named in the header. Zero counts mean defaults.
///
/// C layout (`netmap.h`): `uint32_t nr_tx_slots, nr_rx_slots; uint16_t nr_tx_rings,
/// nr_rx_rings, nr_mem_id, pad1;`, 16 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmreqValeNewif {
    /// Slots per TX ring.
    pub nr_tx_slots: u32,
    /// Slots per RX ring.
    pub nr_rx_slots: u32,
    /// Number of TX rings.
    pub nr_tx_rings: u16,
    /// Number of RX rings.
    pub nr_rx_rings: u16,
    /// Memory allocator id.
    pub nr_mem_id: u16,
    /// Padding, zero.
    pub pad1: u16,
}

/// `struct nmreq_vale_polling`: body of `NETMAP_REQ_VALE_POLLING_ENABLE` / `_DISABLE`.
///
/// C layout (`netmap.h`): `uint32_t nr_mode, nr_first_cpu_id, nr_num_polling_cpus, pad1;`,
/// 16 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmreqValePolling {
    /// [`NETMAP_POLLING_MODE_SINGLE_CPU`] or [`NETMAP_POLLING_MODE_MULTI_CPU`].
    pub nr_mode: u32,
    /// First CPU to run a polling thread on.
    pub nr_first_cpu_id: u32,
    /// Number of polling CPUs.
    pub nr_num_polling_cpus: u32,
    /// Padding, zero.
    pub pad1: u32,
}

/// Polling mode: one thread polls all the port's rings.
pub const NETMAP_POLLING_MODE_SINGLE_CPU: u32 = 1;
/// Polling mode: one thread per ring, each on its own CPU.
pub const NETMAP_POLLING_MODE_MULTI_CPU: u32 = 2;

/// `struct nmreq_pools_info`: body of `NETMAP_REQ_POOLS_INFO_GET`, also embedded in
/// [`NmreqOptExtmem`]. Describes the three pools of a memory region (interfaces, rings,
/// buffers): each pool's offset in the region, object count and object size.
///
/// C layout (`netmap.h`): `uint64_t nr_memsize; uint16_t nr_mem_id, pad1[3]; uint64_t
/// nr_if_pool_offset; uint32_t nr_if_pool_objtotal, nr_if_pool_objsize; uint64_t
/// nr_ring_pool_offset; uint32_t ..objtotal, ..objsize; uint64_t nr_buf_pool_offset;
/// uint32_t ..objtotal, ..objsize;`, 64 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmreqPoolsInfo {
    /// Size of the region.
    pub nr_memsize: u64,
    /// Memory allocator id (in/out).
    pub nr_mem_id: u16,
    /// Padding, zero.
    pub pad1: [u16; 3],
    /// Offset of the `netmap_if` pool.
    pub nr_if_pool_offset: u64,
    /// Number of `netmap_if` objects.
    pub nr_if_pool_objtotal: u32,
    /// Size of each `netmap_if` object.
    pub nr_if_pool_objsize: u32,
    /// Offset of the ring pool.
    pub nr_ring_pool_offset: u64,
    /// Number of rings.
    pub nr_ring_pool_objtotal: u32,
    /// Size of each ring object (header plus slots).
    pub nr_ring_pool_objsize: u32,
    /// Offset of the buffer pool.
    pub nr_buf_pool_offset: u64,
    /// Number of buffers.
    pub nr_buf_pool_objtotal: u32,
    /// Size of each buffer.
    pub nr_buf_pool_objsize: u32,
}

/// `struct nmreq_sync_kloop_start`: body of `NETMAP_REQ_SYNC_KLOOP_START`. The descriptor
/// must be registered in CSB mode. Without eventfds the loop sleeps `sleep_us` microseconds
/// whenever it finds no work.
///
/// C layout (`netmap.h`): `uint32_t sleep_us, pad1;`, 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmreqSyncKloopStart {
    /// Sleep between idle iterations, in microseconds.
    pub sleep_us: u32,
    /// Padding, zero.
    pub pad1: u32,
}

// ---------------------------------------------------------------------------------------------
// CSB (Communication Status Block) entries
// ---------------------------------------------------------------------------------------------

/// `struct nm_csb_atok`: one CSB entry in the application → kernel direction, one per bound
/// ring. In CSB mode the application publishes its `head`/`cur` here instead of in the ring
/// header, and the sync loop reads them.
///
/// Ordering (`nm_sync_kloop_appl_write`): the application stores `cur`, then a release
/// fence, then `head` (with a release fence before both so that the slot contents are
/// visible first). The kernel loads `head`, an acquire fence, then `cur`. Thus the kernel
/// never sees a `head` newer than `cur`, which would look like `head` ahead of `cur`.
///
/// C layout (`netmap.h`): `uint32_t head, cur, appl_need_kick, sync_flags, pad[12];`,
/// 64 bytes (one cache line).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmCsbAtok {
    /// The application ring's `head` (written by the application).
    pub head: u32,
    /// The application ring's `cur` (written by the application).
    pub cur: u32,
    /// Non-zero when the application wants to be notified (irqfd) by the kernel.
    pub appl_need_kick: u32,
    /// Flags of the application's sync request ([`NAF_FORCE_READ`], [`NAF_FORCE_RECLAIM`]).
    pub sync_flags: u32,
    /// Padding to 64 bytes.
    pub pad: [u32; 12],
}

/// `struct nm_csb_ktoa`: one CSB entry in the kernel → application direction, one per bound
/// ring: the kernel ring's `hwcur` and `hwtail` (the application's view of `tail`).
///
/// Ordering: the kernel stores `hwcur`, a release fence, then `hwtail`; the application
/// (`nm_sync_kloop_appl_read`) loads `hwtail`, an acquire fence, then `hwcur`, and another
/// acquire fence before touching the ring.
///
/// C layout (`netmap.h`): `uint32_t hwcur, hwtail, kern_need_kick, pad[13];`, 64 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmCsbKtoa {
    /// The kernel ring's `hwcur` (written by the kernel).
    pub hwcur: u32,
    /// The kernel ring's `hwtail` (written by the kernel).
    pub hwtail: u32,
    /// Non-zero when the kernel loop wants to be notified (ioeventfd) by the application.
    pub kern_need_kick: u32,
    /// Padding to 64 bytes.
    pub pad: [u32; 13],
}

/// `sync_flags` bit (from `netmap_kern.h`): look for new received packets even if the ring
/// has not changed.
pub const NAF_FORCE_READ: u32 = 1;
/// `sync_flags` bit (from `netmap_kern.h`): reclaim completed TX slots even if not needed.
pub const NAF_FORCE_RECLAIM: u32 = 2;
/// `sync_flags` bit (from `netmap_kern.h`): the RX sync may forward packets down
/// ([`NS_FORWARD`]).
pub const NAF_CAN_FORWARD_DOWN: u32 = 4;

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

/// One entry of [`NmreqOptSyncKloopEventfds`] (an anonymous struct in C): the notifiers of
/// one ring, in the same order as the CSB arrays.
///
/// C layout: `int32_t ioeventfd, irqfd;`, 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmreqEventfdPair {
    /// Eventfd the application signals to wake the kernel loop. If any is negative, the
    /// loop falls back to sleeping and never asks for kicks (`kern_need_kick` stays 0).
    pub ioeventfd: i32,
    /// Eventfd the kernel loop signals to wake the application; negative means never.
    pub irqfd: i32,
}

/// `struct nmreq_opt_sync_kloop_eventfds` without its trailing `eventfds[]`: option
/// [`NETMAP_REQ_OPT_SYNC_KLOOP_EVENTFDS`]. The header is followed by one
/// [`NmreqEventfdPair`] per bound ring; `nro_opt.nro_size` must be the total size
/// ([`NmreqOptSyncKloopEventfds::size_for`]).
///
/// C layout (`netmap.h`): `struct nmreq_option nro_opt; struct { int32_t ioeventfd, irqfd; }
/// eventfds[];`, 24 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmreqOptSyncKloopEventfds {
    /// Common option header.
    pub nro_opt: NmreqOption,
}

impl NmreqOptSyncKloopEventfds {
    /// Total option size (the value for `nro_size`) with `n` eventfd pairs.
    pub const fn size_for(n: usize) -> usize {
        size_of::<Self>() + n * size_of::<NmreqEventfdPair>()
    }
}

/// Sync-kloop mode: sync TX rings directly in the context of the ioeventfd notification.
pub const NM_OPT_SYNC_KLOOP_DIRECT_TX: u32 = 1 << 0;
/// Sync-kloop mode: sync RX rings directly in the context of the notification.
pub const NM_OPT_SYNC_KLOOP_DIRECT_RX: u32 = 1 << 1;

/// `struct nmreq_opt_sync_kloop_mode`: option [`NETMAP_REQ_OPT_SYNC_KLOOP_MODE`].
///
/// C layout (`netmap.h`): `struct nmreq_option nro_opt; uint32_t mode;`, 32 bytes. The 4 bytes
/// of implicit C tail padding are the explicit field `pad1` here.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmreqOptSyncKloopMode {
    /// Common option header.
    pub nro_opt: NmreqOption,
    /// `NM_OPT_SYNC_KLOOP_DIRECT_*` bits.
    pub mode: u32,
    /// Padding (implicit in C), zero.
    pub pad1: u32,
}

/// `struct nmreq_opt_extmem`: option [`NETMAP_REQ_OPT_EXTMEM`]. The user provides the memory
/// at `nro_usrptr` and describes the pools it wants in `nro_info`; netmap returns the layout
/// it actually used.
///
/// C layout (`netmap.h`): `struct nmreq_option nro_opt; uint64_t nro_usrptr; struct
/// nmreq_pools_info nro_info;`, 96 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmreqOptExtmem {
    /// Common option header.
    pub nro_opt: NmreqOption,
    /// (in) Address of the user memory.
    pub nro_usrptr: u64,
    /// (in/out) Pool layout.
    pub nro_info: NmreqPoolsInfo,
}

/// `struct nmreq_opt_csb`: option [`NETMAP_REQ_OPT_CSB`], giving the two CSB arrays, each
/// with one entry per bound ring (the bound TX rings first, then the RX ones). CSB mode
/// requires [`NR_EXCLUSIVE`], and each array must be aligned to its entry size (64 bytes).
/// On setup netmap initializes both arrays from the current ring state.
///
/// C layout (`netmap.h`): `struct nmreq_option nro_opt; uint64_t csb_atok, csb_ktoa;`,
/// 40 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmreqOptCsb {
    /// Common option header.
    pub nro_opt: NmreqOption,
    /// Address of the [`NmCsbAtok`] array.
    pub csb_atok: u64,
    /// Address of the [`NmCsbKtoa`] array.
    pub csb_ktoa: u64,
}

/// `struct nmreq_opt_offsets`: option [`NETMAP_REQ_OPT_OFFSETS`], turning the low bits of
/// each slot's `ptr` into a packet offset inside the buffer (see `offset_mask`).
///
/// C layout (`netmap.h`): `struct nmreq_option nro_opt; uint64_t nro_max_offset,
/// nro_initial_offset; uint32_t nro_offset_bits, nro_tx_align; uint64_t nro_min_gap;`,
/// 56 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmreqOptOffsets {
    /// Common option header.
    pub nro_opt: NmreqOption,
    /// (in/out) Largest offset the user will use; larger offsets are cropped. The effective
    /// (possibly larger) value is returned.
    pub nro_max_offset: u64,
    /// (in) Offset initially written in all slots.
    pub nro_initial_offset: u64,
    /// (in/out) Number of low bits of `ptr` used for the offset, 0 = all of them; the
    /// effective (possibly larger) number is returned.
    pub nro_offset_bits: u32,
    /// (in) Required alignment of packet starts in TX slots.
    pub nro_tx_align: u32,
    /// Reserved, must be zero.
    pub nro_min_gap: u64,
}

// ---------------------------------------------------------------------------------------------
// Legacy API (netmap_legacy.h)
// ---------------------------------------------------------------------------------------------

/// Legacy `struct nmreq`, argument of [`NIOCREGIF`] and [`NIOCGINFO`]. Its start overlays a
/// `struct ifreq` (just the name). New code uses [`NIOCCTRL`].
///
/// `nr_flags` carries the `NR_REG_*` mode in its low bits ([`NR_REG_MASK`]); `nr_ringid`
/// carries the ring number ([`NETMAP_RING_MASK`]) and the deprecated `NETMAP_*_RING` /
/// poll bits. `nr_cmd` selects a VALE command (`NETMAP_BDG_*`), with `nr_arg1..3` as its
/// arguments; for a plain register `nr_arg2` is the memory id and `nr_arg3` the number of
/// extra buffers.
///
/// C layout (`netmap_legacy.h`): `char nr_name[IFNAMSIZ]; uint32_t nr_version, nr_offset,
/// nr_memsize, nr_tx_slots, nr_rx_slots; uint16_t nr_tx_rings, nr_rx_rings, nr_ringid,
/// nr_cmd, nr_arg1, nr_arg2; uint32_t nr_arg3, nr_flags, spare2[1];`, 60 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Nmreq {
    /// Port name, NUL-terminated (at most 15 bytes).
    pub nr_name: [u8; IFNAMSIZ],
    /// API version (in/out).
    pub nr_version: u32,
    /// (out) Offset of the `netmap_if` in the region.
    pub nr_offset: u32,
    /// (out) Size of the region.
    pub nr_memsize: u32,
    /// Slots per TX ring.
    pub nr_tx_slots: u32,
    /// Slots per RX ring.
    pub nr_rx_slots: u32,
    /// Number of TX rings.
    pub nr_tx_rings: u16,
    /// Number of RX rings.
    pub nr_rx_rings: u16,
    /// Ring number and `NETMAP_*` ring bits.
    pub nr_ringid: u16,
    /// `NETMAP_BDG_*` command, 0 for a plain register.
    pub nr_cmd: u16,
    /// Command argument (e.g. [`NETMAP_BDG_HOST`]).
    pub nr_arg1: u16,
    /// Memory allocator id (in/out).
    pub nr_arg2: u16,
    /// Extra buffers (in/out).
    pub nr_arg3: u32,
    /// `NR_REG_*` mode and flags.
    pub nr_flags: u32,
    /// Spare, zero.
    pub spare2: [u32; 1],
}

impl Nmreq {
    /// The port name up to its first NUL.
    pub fn name_bytes(&self) -> &[u8] {
        c_name(&self.nr_name)
    }

    /// Stores `name` NUL-terminated and zero-filled.
    ///
    /// # Errors
    ///
    /// [`NameTooLong`] if `name` has more than 15 bytes; the request is then unchanged.
    pub fn set_name(&mut self, name: &str) -> Result<(), NameTooLong> {
        set_c_name(&mut self.nr_name, name)
    }
}

/// Legacy `nr_ringid` bit: bind the single NIC ring pair in the low bits.
pub const NETMAP_HW_RING: u16 = 0x4000;
/// Legacy `nr_ringid` bit: bind only the host ring pair.
pub const NETMAP_SW_RING: u16 = 0x2000;
/// Legacy `nr_ringid` mask of the ring number.
pub const NETMAP_RING_MASK: u16 = 0x0fff;
/// Legacy `nr_ringid` bit, same meaning as [`NR_NO_TX_POLL`].
pub const NETMAP_NO_TX_POLL: u16 = 0x1000;
/// Legacy `nr_ringid` bit, same meaning as [`NR_DO_RX_POLL`].
pub const NETMAP_DO_RX_POLL: u16 = 0x8000;
/// Legacy: mask extracting the `NR_REG_*` mode from `nmreq.nr_flags`.
pub const NR_REG_MASK: u32 = 0xf;

/// Legacy `nr_cmd`: attach the NIC named `valeX:ifname` to the switch.
pub const NETMAP_BDG_ATTACH: u16 = 1;
/// Legacy `nr_cmd`: detach a NIC from its switch.
pub const NETMAP_BDG_DETACH: u16 = 2;
/// Legacy `nr_cmd`: register switch callbacks (kernel modules only).
pub const NETMAP_BDG_REGOPS: u16 = 3;
/// Legacy `nr_cmd`: list the switches' ports.
pub const NETMAP_BDG_LIST: u16 = 4;
/// Legacy `nr_cmd`: set the port's virtio-net header length.
pub const NETMAP_BDG_VNET_HDR: u16 = 5;
/// Legacy `nr_cmd`: create a persistent VALE port.
pub const NETMAP_BDG_NEWIF: u16 = 6;
/// Legacy `nr_cmd`: delete a persistent VALE port.
pub const NETMAP_BDG_DELIF: u16 = 7;
/// Legacy `nr_cmd`: create ptnetmap kernel threads (gone from the kernel).
pub const NETMAP_PT_HOST_CREATE: u16 = 8;
/// Legacy `nr_cmd`: delete ptnetmap kernel threads (gone from the kernel).
pub const NETMAP_PT_HOST_DELETE: u16 = 9;
/// Legacy `nr_cmd`: start polling threads on a VALE port.
pub const NETMAP_BDG_POLLING_ON: u16 = 10;
/// Legacy `nr_cmd`: stop polling threads on a VALE port.
pub const NETMAP_BDG_POLLING_OFF: u16 = 11;
/// Legacy `nr_cmd`: get the port's virtio-net header length.
pub const NETMAP_VNET_HDR_GET: u16 = 12;
/// Legacy `nr_arg1` for [`NETMAP_BDG_ATTACH`]: attach the NIC's host-stack port too
/// (`vale-ctl -h`).
pub const NETMAP_BDG_HOST: u16 = 1;

/// Size of `nm_ifreq.data`.
pub const NM_IFRDATA_LEN: usize = 256;

/// `struct nm_ifreq`: argument of [`NIOCCONFIG`], opaque data for the external module that
/// owns a VALE port.
///
/// C layout (`netmap_legacy.h`): `char nifr_name[IFNAMSIZ]; char data[256];`, 272 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NmIfreq {
    /// Port name, NUL-terminated.
    pub nifr_name: [u8; IFNAMSIZ],
    /// Module-defined data.
    pub data: [u8; NM_IFRDATA_LEN],
}

impl Default for NmIfreq {
    fn default() -> Self {
        Self {
            nifr_name: [0; IFNAMSIZ],
            data: [0; NM_IFRDATA_LEN],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// VALE switch parameters (kernel side: netmap_bdg.h, netmap_vale.c)
// ---------------------------------------------------------------------------------------------

/// Maximum number of VALE switches.
pub const NM_BRIDGES: usize = 8;
/// Maximum number of ports per VALE switch.
pub const NM_BDG_MAXPORTS: usize = 254;
/// Forwarding destination meaning "all ports".
pub const NM_BDG_BROADCAST: usize = NM_BDG_MAXPORTS;
/// Forwarding destination meaning "drop".
pub const NM_BDG_NOPORT: usize = NM_BDG_MAXPORTS + 1;
/// Maximum rings per direction on a VALE port (a power of 2).
pub const NM_BDG_MAXRINGS: usize = 16;
/// Maximum slots per ring on a VALE port.
pub const NM_BDG_MAXSLOTS: usize = 4096;
/// Default slots per ring on a VALE port.
pub const NM_BRIDGE_RINGSIZE: usize = 1024;
/// Slots a switch forwards per batch.
pub const NM_BDG_BATCH: usize = 1024;
/// Size of the forwarding tables: a batch plus room for one maximally fragmented packet.
pub const NM_BDG_BATCH_MAX: usize = NM_BDG_BATCH + NETMAP_MAX_FRAGS;
/// Entries in a switch's MAC learning table.
pub const NM_BDG_HASH: usize = 1024;
/// Default maximum frame size on a VALE port.
pub const NM_BDG_MFS_DEFAULT: usize = 1514;
/// Size of a switch name buffer.
pub const NM_BDG_IFNAMSIZ: usize = IFNAMSIZ;

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of};

    /// Size of the field that `get` projects to.
    fn field_size<T, F>(_get: fn(&T) -> &F) -> usize {
        size_of::<F>()
    }

    /// Asserts size, alignment and every field offset of a struct, and that the listed fields
    /// tile the struct exactly: no padding anywhere and no field left out of the list.
    macro_rules! layout {
        ($t:ty, size $size:expr, align $align:expr, { $($f:ident @ $off:expr),* $(,)? }) => {{
            let name = stringify!($t);
            assert_eq!(size_of::<$t>(), $size, "size_of {name}");
            assert_eq!(align_of::<$t>(), $align, "align_of {name}");
            let fields: &[(&str, usize, usize, usize)] = &[$((
                stringify!($f),
                offset_of!($t, $f),
                $off,
                field_size(|s: &$t| &s.$f),
            )),*];
            let mut end = 0;
            for &(field, got, want, len) in fields {
                assert_eq!(got, want, "offset_of {name}.{field}");
                assert_eq!(got, end, "padding or missing field before {name}.{field}");
                end = got + len;
            }
            assert_eq!(end, $size, "tail padding or missing field at the end of {name}");
        }};
    }

    #[test]
    fn slot_layout() {
        layout!(NetmapSlot, size 16, align 8, { buf_idx @ 0, len @ 4, flags @ 6, ptr @ 8 });
    }

    #[test]
    fn ring_layout() {
        layout!(Timeval, size 16, align 8, { tv_sec @ 0, tv_usec @ 8 });
        layout!(NetmapRing, size 256, align 128, {
            buf_ofs @ 0,
            num_slots @ 8,
            nr_buf_size @ 12,
            ringid @ 16,
            dir @ 18,
            head @ 20,
            cur @ 24,
            tail @ 28,
            flags @ 32,
            pad1 @ 36,
            ts @ 40,
            offset_mask @ 56,
            buf_align @ 64,
            pad2 @ 72,
            sem @ 128,
        });
        assert_eq!(size_of::<NetmapRing>(), RING_HEADER_SIZE);
        assert_eq!(NM_CACHE_ALIGN, align_of::<NetmapRing>());
    }

    #[test]
    fn netmap_if_layout() {
        layout!(NetmapIf, size 56, align 8, {
            ni_name @ 0,
            ni_version @ 16,
            ni_flags @ 20,
            ni_tx_rings @ 24,
            ni_rx_rings @ 28,
            ni_bufs_head @ 32,
            ni_host_tx_rings @ 36,
            ni_host_rx_rings @ 40,
            ni_spare1 @ 44,
        });
        assert_eq!(size_of::<NetmapIf>(), NETMAP_IF_HEADER_SIZE);
    }

    #[test]
    fn request_layouts() {
        layout!(NmreqOption, size 24, align 8, {
            nro_next @ 0,
            nro_reqtype @ 8,
            nro_status @ 12,
            nro_size @ 16,
        });
        layout!(NmreqHeader, size 88, align 8, {
            nr_version @ 0,
            nr_reqtype @ 2,
            nr_reserved @ 4,
            nr_name @ 8,
            nr_options @ 72,
            nr_body @ 80,
        });
        layout!(NmreqRegister, size 56, align 8, {
            nr_offset @ 0,
            nr_memsize @ 8,
            nr_tx_slots @ 16,
            nr_rx_slots @ 20,
            nr_tx_rings @ 24,
            nr_rx_rings @ 26,
            nr_host_tx_rings @ 28,
            nr_host_rx_rings @ 30,
            nr_mem_id @ 32,
            nr_ringid @ 34,
            nr_mode @ 36,
            nr_extra_bufs @ 40,
            pad1 @ 44,
            nr_flags @ 48,
        });
        layout!(NmreqPortInfoGet, size 32, align 8, {
            nr_memsize @ 0,
            nr_tx_slots @ 8,
            nr_rx_slots @ 12,
            nr_tx_rings @ 16,
            nr_rx_rings @ 18,
            nr_host_tx_rings @ 20,
            nr_host_rx_rings @ 22,
            nr_mem_id @ 24,
            pad @ 26,
        });
        layout!(NmreqValeAttach, size 64, align 8, { reg @ 0, port_index @ 56, pad1 @ 60 });
        layout!(NmreqValeDetach, size 8, align 4, { port_index @ 0, pad1 @ 4 });
        layout!(NmreqValeList, size 8, align 4, {
            nr_bridge_idx @ 0,
            pad1 @ 2,
            nr_port_idx @ 4,
        });
        layout!(NmreqPortHdr, size 8, align 4, { nr_hdr_len @ 0, pad1 @ 4 });
        layout!(NmreqValeNewif, size 16, align 4, {
            nr_tx_slots @ 0,
            nr_rx_slots @ 4,
            nr_tx_rings @ 8,
            nr_rx_rings @ 10,
            nr_mem_id @ 12,
            pad1 @ 14,
        });
        layout!(NmreqValePolling, size 16, align 4, {
            nr_mode @ 0,
            nr_first_cpu_id @ 4,
            nr_num_polling_cpus @ 8,
            pad1 @ 12,
        });
        layout!(NmreqPoolsInfo, size 64, align 8, {
            nr_memsize @ 0,
            nr_mem_id @ 8,
            pad1 @ 10,
            nr_if_pool_offset @ 16,
            nr_if_pool_objtotal @ 24,
            nr_if_pool_objsize @ 28,
            nr_ring_pool_offset @ 32,
            nr_ring_pool_objtotal @ 40,
            nr_ring_pool_objsize @ 44,
            nr_buf_pool_offset @ 48,
            nr_buf_pool_objtotal @ 56,
            nr_buf_pool_objsize @ 60,
        });
        layout!(NmreqSyncKloopStart, size 8, align 4, { sleep_us @ 0, pad1 @ 4 });
    }

    #[test]
    fn csb_layouts() {
        layout!(NmCsbAtok, size 64, align 4, {
            head @ 0,
            cur @ 4,
            appl_need_kick @ 8,
            sync_flags @ 12,
            pad @ 16,
        });
        layout!(NmCsbKtoa, size 64, align 4, {
            hwcur @ 0,
            hwtail @ 4,
            kern_need_kick @ 8,
            pad @ 12,
        });
    }

    #[test]
    fn option_layouts() {
        layout!(NmreqEventfdPair, size 8, align 4, { ioeventfd @ 0, irqfd @ 4 });
        layout!(NmreqOptSyncKloopEventfds, size 24, align 8, { nro_opt @ 0 });
        assert_eq!(NmreqOptSyncKloopEventfds::size_for(0), 24);
        assert_eq!(NmreqOptSyncKloopEventfds::size_for(3), 48);
        layout!(NmreqOptSyncKloopMode, size 32, align 8, { nro_opt @ 0, mode @ 24, pad1 @ 28 });
        layout!(NmreqOptExtmem, size 96, align 8, {
            nro_opt @ 0,
            nro_usrptr @ 24,
            nro_info @ 32,
        });
        layout!(NmreqOptCsb, size 40, align 8, { nro_opt @ 0, csb_atok @ 24, csb_ktoa @ 32 });
        layout!(NmreqOptOffsets, size 56, align 8, {
            nro_opt @ 0,
            nro_max_offset @ 24,
            nro_initial_offset @ 32,
            nro_offset_bits @ 40,
            nro_tx_align @ 44,
            nro_min_gap @ 48,
        });
    }

    #[test]
    fn legacy_layouts() {
        layout!(Nmreq, size 60, align 4, {
            nr_name @ 0,
            nr_version @ 16,
            nr_offset @ 20,
            nr_memsize @ 24,
            nr_tx_slots @ 28,
            nr_rx_slots @ 32,
            nr_tx_rings @ 36,
            nr_rx_rings @ 38,
            nr_ringid @ 40,
            nr_cmd @ 42,
            nr_arg1 @ 44,
            nr_arg2 @ 46,
            nr_arg3 @ 48,
            nr_flags @ 52,
            spare2 @ 56,
        });
        layout!(NmIfreq, size 272, align 1, { nifr_name @ 0, data @ 16 });
    }

    #[test]
    fn ioctl_numbers() {
        assert_eq!(NIOCCTRL, 0xC058_6997);
        assert_eq!(NIOCREGIF, 0xC03C_6992);
        assert_eq!(NIOCGINFO, 0xC03C_6991);
        assert_eq!(NIOCTXSYNC, 0x6994);
        assert_eq!(NIOCRXSYNC, 0x6995);
        assert_eq!(NIOCCONFIG, 0xC110_6996);
        // Cross-check the encoder against the libc crate's own Linux macros.
        assert_eq!(
            u64::from(NIOCCTRL),
            libc::_IOWR::<NmreqHeader>(b'i'.into(), 151) as u64
        );
        assert_eq!(u64::from(NIOCTXSYNC), libc::_IO(b'i'.into(), 148) as u64);
        assert_eq!(ior(b'x', 1, 8), 0x8008_7801);
        assert_eq!(iow(b'x', 1, 8), 0x4008_7801);
    }

    #[test]
    fn constants() {
        // Every numeric constant against the value in the C headers.
        macro_rules! check {
            ($($c:ident => $v:expr),* $(,)?) => {
                $(assert_eq!($c as u64, $v, stringify!($c));)*
            };
        }
        check! {
            NETMAP_API => 14,
            NETMAP_MIN_API => 14,
            NETMAP_MAX_API => 15,
            NM_CACHE_ALIGN => 128,
            IFNAMSIZ => 16,
            NETMAP_REQ_IFNAMSIZ => 64,
            NETMAP_REQ_MAXSIZE => 4096,
            NETMAP_MAX_FRAGS => 64,
            NS_BUF_CHANGED => 0x1,
            NS_REPORT => 0x2,
            NS_FORWARD => 0x4,
            NS_NO_LEARN => 0x8,
            NS_INDIRECT => 0x10,
            NS_MOREFRAG => 0x20,
            NS_TXMON => 0x40,
            NS_PORT_SHIFT => 8,
            NS_PORT_MASK => 0xff00,
            NR_DIR_TX => 0,
            NR_DIR_RX => 1,
            NR_TIMESTAMP => 0x2,
            NR_FORWARD => 0x4,
            NI_PRIV_MEM => 0x1,
            RING_HEADER_SIZE => 256,
            NETMAP_IF_HEADER_SIZE => 56,
            NETMAP_REQ_REGISTER => 1,
            NETMAP_REQ_PORT_INFO_GET => 2,
            NETMAP_REQ_VALE_ATTACH => 3,
            NETMAP_REQ_VALE_DETACH => 4,
            NETMAP_REQ_VALE_LIST => 5,
            NETMAP_REQ_PORT_HDR_SET => 6,
            NETMAP_REQ_PORT_HDR_GET => 7,
            NETMAP_REQ_VALE_NEWIF => 8,
            NETMAP_REQ_VALE_DELIF => 9,
            NETMAP_REQ_VALE_POLLING_ENABLE => 10,
            NETMAP_REQ_VALE_POLLING_DISABLE => 11,
            NETMAP_REQ_POOLS_INFO_GET => 12,
            NETMAP_REQ_SYNC_KLOOP_START => 13,
            NETMAP_REQ_SYNC_KLOOP_STOP => 14,
            NETMAP_REQ_CSB_ENABLE => 15,
            NETMAP_REQ_OPT_EXTMEM => 1,
            NETMAP_REQ_OPT_SYNC_KLOOP_EVENTFDS => 2,
            NETMAP_REQ_OPT_CSB => 3,
            NETMAP_REQ_OPT_SYNC_KLOOP_MODE => 4,
            NETMAP_REQ_OPT_OFFSETS => 5,
            NETMAP_REQ_OPT_MAX => 6,
            NR_MONITOR_TX => 0x100,
            NR_MONITOR_RX => 0x200,
            NR_ZCOPY_MON => 0x400,
            NR_EXCLUSIVE => 0x800,
            NR_RX_RINGS_ONLY => 0x2000,
            NR_TX_RINGS_ONLY => 0x4000,
            NR_ACCEPT_VNET_HDR => 0x8000,
            NR_DO_RX_POLL => 0x10000,
            NR_NO_TX_POLL => 0x20000,
            NR_REG_DEFAULT => 0,
            NR_REG_ALL_NIC => 1,
            NR_REG_SW => 2,
            NR_REG_NIC_SW => 3,
            NR_REG_ONE_NIC => 4,
            NR_REG_PIPE_MASTER => 5,
            NR_REG_PIPE_SLAVE => 6,
            NR_REG_NULL => 7,
            NR_REG_ONE_SW => 8,
            NETMAP_POLLING_MODE_SINGLE_CPU => 1,
            NETMAP_POLLING_MODE_MULTI_CPU => 2,
            NM_OPT_SYNC_KLOOP_DIRECT_TX => 1,
            NM_OPT_SYNC_KLOOP_DIRECT_RX => 2,
            NAF_FORCE_READ => 1,
            NAF_FORCE_RECLAIM => 2,
            NAF_CAN_FORWARD_DOWN => 4,
            NETMAP_HW_RING => 0x4000,
            NETMAP_SW_RING => 0x2000,
            NETMAP_RING_MASK => 0x0fff,
            NETMAP_NO_TX_POLL => 0x1000,
            NETMAP_DO_RX_POLL => 0x8000,
            NR_REG_MASK => 0xf,
            NETMAP_BDG_ATTACH => 1,
            NETMAP_BDG_DETACH => 2,
            NETMAP_BDG_REGOPS => 3,
            NETMAP_BDG_LIST => 4,
            NETMAP_BDG_VNET_HDR => 5,
            NETMAP_BDG_NEWIF => 6,
            NETMAP_BDG_DELIF => 7,
            NETMAP_PT_HOST_CREATE => 8,
            NETMAP_PT_HOST_DELETE => 9,
            NETMAP_BDG_POLLING_ON => 10,
            NETMAP_BDG_POLLING_OFF => 11,
            NETMAP_VNET_HDR_GET => 12,
            NETMAP_BDG_HOST => 1,
            NM_IFRDATA_LEN => 256,
            NM_BRIDGES => 8,
            NM_BDG_MAXPORTS => 254,
            NM_BDG_BROADCAST => 254,
            NM_BDG_NOPORT => 255,
            NM_BDG_MAXRINGS => 16,
            NM_BDG_MAXSLOTS => 4096,
            NM_BRIDGE_RINGSIZE => 1024,
            NM_BDG_BATCH => 1024,
            NM_BDG_BATCH_MAX => 1088,
            NM_BDG_HASH => 1024,
            NM_BDG_MFS_DEFAULT => 1514,
            NM_BDG_IFNAMSIZ => 16,
        }
        assert_eq!(NM_BDG_NAME, "vale");
        assert_eq!(NETMAP_DEVICE_NAME, "/dev/netmap");
    }

    #[test]
    fn req_type_round_trip() {
        for v in 1..=15u16 {
            let t = ReqType::try_from(v).unwrap();
            assert_eq!(u16::from(t), v);
        }
        assert_eq!(ReqType::try_from(0), Err(InvalidReqType(0)));
        assert_eq!(ReqType::try_from(16), Err(InvalidReqType(16)));
        assert_eq!(ReqType::Register.body_size(), 56);
        assert_eq!(ReqType::ValeAttach.body_size(), 64);
        assert_eq!(ReqType::PoolsInfoGet.body_size(), 64);
        assert_eq!(ReqType::ValeDelif.body_size(), 0);
        assert_eq!(ReqType::CsbEnable.body_size(), 0);
    }

    #[test]
    fn reg_mode_round_trip() {
        for v in [1u32, 2, 3, 4, 7, 8] {
            let m = RegMode::try_from(v).unwrap();
            assert_eq!(u32::from(m), v);
        }
        for v in [0u32, 5, 6, 9, 15, u32::MAX] {
            assert_eq!(RegMode::try_from(v), Err(InvalidRegMode(v)));
        }
        assert_eq!(RegMode::try_from(NR_REG_ONE_SW), Ok(RegMode::OneSw));
    }

    #[test]
    fn option_body_sizes() {
        assert_eq!(nmreq_opt_body_size(NETMAP_REQ_OPT_EXTMEM, 0), 72);
        assert_eq!(nmreq_opt_body_size(NETMAP_REQ_OPT_CSB, 0), 16);
        assert_eq!(nmreq_opt_body_size(NETMAP_REQ_OPT_SYNC_KLOOP_MODE, 0), 8);
        assert_eq!(nmreq_opt_body_size(NETMAP_REQ_OPT_OFFSETS, 0), 32);
        assert_eq!(
            nmreq_opt_body_size(NETMAP_REQ_OPT_SYNC_KLOOP_EVENTFDS, 40),
            16
        );
        assert_eq!(
            nmreq_opt_body_size(NETMAP_REQ_OPT_SYNC_KLOOP_EVENTFDS, 8),
            0
        );
        assert_eq!(nmreq_opt_body_size(99, 1000), 0);
    }

    #[test]
    fn header_names() {
        let mut h = NmreqHeader::new(ReqType::Register);
        assert_eq!(h.nr_version, NETMAP_API);
        assert_eq!(h.nr_reqtype, NETMAP_REQ_REGISTER);
        h.set_name("vale0:p1").unwrap();
        assert_eq!(h.name_str(), Ok("vale0:p1"));
        h.set_name("x").unwrap();
        assert_eq!(h.name_bytes(), b"x");
        assert!(h.nr_name[1..].iter().all(|&b| b == 0));
        let max = "a".repeat(63);
        h.set_name(&max).unwrap();
        assert_eq!(h.name_str(), Ok(max.as_str()));
        assert_eq!(
            h.set_name(&"a".repeat(64)),
            Err(NameTooLong { len: 64, max: 63 })
        );

        let mut r = Nmreq::default();
        r.set_name("eth0").unwrap();
        assert_eq!(r.name_bytes(), b"eth0");
        assert!(r.set_name("0123456789abcdef").is_err());

        let mut nifp = NetmapIf::default();
        nifp.ni_name[..4].copy_from_slice(b"vale");
        assert_eq!(nifp.name_bytes(), b"vale");
    }

    #[test]
    fn ring_index_helpers() {
        assert_eq!(nm_ring_next(8, 6), 7);
        assert_eq!(nm_ring_next(8, 7), 0);
        assert_eq!(nm_ring_space(2, 5, 8), 3);
        assert_eq!(nm_ring_space(6, 1, 8), 3);
        assert_eq!(nm_ring_space(4, 4, 8), 0);
        assert!(nm_ring_empty(3, 3));
        assert!(!nm_tx_pending(0, 7, 8));
        assert!(nm_tx_pending(3, 7, 8));
        assert_eq!(nm_ring_next(u32::MAX, u32::MAX - 1), 0);
        assert_eq!(nm_ring_next(8, u32::MAX), 0);
        assert_eq!(nm_roffset(0xabcd, 0xff), 0xcd);
        assert_eq!(nm_woffset(0xabcd, 0xff, 0x112), 0xab12);
        let slot = NetmapSlot {
            flags: (3 << NS_PORT_SHIFT) | NS_MOREFRAG,
            ..Default::default()
        };
        assert_eq!(slot.port_byte(), 3);
        assert_eq!(ns_rfrags(slot.flags), 3);
    }

    #[test]
    fn netmap_if_helpers() {
        let nifp = NetmapIf {
            ni_tx_rings: 2,
            ni_rx_rings: 3,
            ni_host_tx_rings: 1,
            ni_host_rx_rings: 1,
            ..Default::default()
        };
        assert_eq!(nifp.ring_ofs_len(), 7);
        assert_eq!(nifp.total_size(), 56 + 7 * 8);
        assert_eq!(nifp.tx_ring_ofs_index(2), 2);
        assert_eq!(nifp.rx_ring_ofs_index(0), 3);
        assert_eq!(nifp.rx_ring_ofs_index(3), 6);
    }

    #[test]
    fn defaults_are_zero() {
        let ring = NetmapRing::default();
        assert!(ring.sem.iter().chain(ring.pad2.iter()).all(|&b| b == 0));
        assert_eq!(NmreqHeader::default().name_bytes(), b"");
        assert_eq!(NmIfreq::default().data, [0; NM_IFRDATA_LEN]);
    }
}
