//! The native adapter: an AF_XDP socket on each queue of an interface
//! whose driver runs XDP programs, as the engine's `Source` ([`XdpRx`]) and
//! `Sink` ([`XdpTx`]).
//!
//! The socket has one UMEM of 2 KiB chunks: the first half is lent to the
//! kernel through the fill ring and comes back on the RX ring, the second
//! half carries frames out through the TX ring and comes back on the
//! completion ring. RX and TX each own their pair of rings, so the two
//! halves run on different threads without a lock. Zero-copy where the
//! driver has it, copy mode otherwise; the redirect program and the socket
//! go away with the port (BPF link, socket close).
//!
//! Frames carry no virtio-net header (AF_XDP has none): the switch
//! completes checksums and segments GSO frames for this port, and a frame
//! longer than a chunk cannot be received (the interface's MTU is capped
//! by its driver while an XDP program is attached).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use netmap::sys::{Memfd, SharedMap};
use vale::port::FrameCursor;
use vale::{DstBuf, Frag, Push, Sink, Source};

use crate::bpf::{XdpRedirect, XDP_FLAGS_DRV_MODE};
use crate::{NicError, Owned};

/// UMEM chunk: one frame, at most 2 KiB.
pub const XDP_FRAME: u32 = 2048;
/// Chunks for each direction, and each ring's size.
const FRAMES: u32 = 2048;

const SOL_XDP: libc::c_int = 283;
const XDP_MMAP_OFFSETS: libc::c_int = 1;
const XDP_RX_RING: libc::c_int = 2;
const XDP_TX_RING: libc::c_int = 3;
const XDP_UMEM_REG: libc::c_int = 4;
const XDP_UMEM_FILL_RING: libc::c_int = 5;
const XDP_UMEM_COMPLETION_RING: libc::c_int = 6;
const XDP_COPY: u16 = 1 << 1;
const XDP_ZEROCOPY: u16 = 1 << 2;
const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;
/// In a ring's flags word: the kernel waits for a system call to go on.
const XDP_RING_NEED_WAKEUP: u32 = 1;
const PGOFF_RX: u64 = 0;
const PGOFF_TX: u64 = 0x8000_0000;
const PGOFF_FILL: u64 = 0x1_0000_0000;
const PGOFF_COMPLETION: u64 = 0x1_8000_0000;

/// `struct xdp_umem_reg` (without the later `tx_metadata_len`).
#[repr(C)]
#[derive(Clone, Copy)]
struct UmemReg {
    addr: u64,
    len: u64,
    chunk_size: u32,
    headroom: u32,
    flags: u32,
    pad: u32,
}

/// `struct xdp_ring_offset`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct RingOffset {
    producer: u64,
    consumer: u64,
    desc: u64,
    flags: u64,
}

/// `struct xdp_mmap_offsets`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct MmapOffsets {
    rx: RingOffset,
    tx: RingOffset,
    fr: RingOffset,
    cr: RingOffset,
}

/// `struct sockaddr_xdp`.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockaddrXdp {
    family: u16,
    flags: u16,
    ifindex: u32,
    queue_id: u32,
    shared_umem_fd: u32,
}

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_opt<T: Copy>(fd: &OwnedFd, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: v points to size_of::<T>() readable bytes for the call; T is
    // one of the plain structs or integers above.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_XDP,
            opt,
            (v as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
}

/// A producer/consumer ring of the socket (descriptors of `D` bytes).
#[derive(Debug)]
struct XRing {
    map: SharedMap,
    off: RingOffset,
    /// Entries (a power of two).
    size: u32,
    /// Bytes per entry: 16 (`struct xdp_desc`) or 8 (an address).
    entry: usize,
}

impl XRing {
    fn map(fd: &OwnedFd, off: RingOffset, pgoff: u64, entry: usize) -> io::Result<XRing> {
        let len = off.desc as usize + FRAMES as usize * entry;
        Ok(XRing {
            map: SharedMap::map_at(fd, len, pgoff)?,
            off,
            size: FRAMES,
            entry,
        })
    }

    fn word(&self, off: u64) -> &AtomicU32 {
        // The offsets come from the kernel for this mapping's length.
        self.map
            .atomic_u32(off as usize)
            .expect("ring index words inside the ring mapping")
    }

    fn producer(&self) -> &AtomicU32 {
        self.word(self.off.producer)
    }

    fn consumer(&self) -> &AtomicU32 {
        self.word(self.off.consumer)
    }

    /// Whether the kernel asks for a system call before it goes on
    /// (`XDP_USE_NEED_WAKEUP`: a zero-copy driver sleeps instead of
    /// polling the ring; copy mode always asks on TX).
    fn needs_wakeup(&self) -> bool {
        self.word(self.off.flags).load(Ordering::Acquire) & XDP_RING_NEED_WAKEUP != 0
    }

    /// Byte offset of entry `i` (any index, masked).
    fn at(&self, i: u32) -> usize {
        self.off.desc as usize + (i & (self.size - 1)) as usize * self.entry
    }

    fn read_desc(&self, i: u32) -> (u64, u32) {
        let at = self.at(i);
        let addr = self.map.read::<u64>(at).unwrap_or(u64::MAX);
        let len = if self.entry == 16 {
            self.map.read::<u32>(at + 8).unwrap_or(0)
        } else {
            0
        };
        (addr, len)
    }

    fn write_desc(&self, i: u32, addr: u64, len: u32) {
        let at = self.at(i);
        let _ = self.map.write::<u64>(at, addr);
        if self.entry == 16 {
            let _ = self.map.write::<u64>(at + 8, u64::from(len));
        }
    }
}

/// What every queue's socket shares: the redirect program's link and map,
/// and the interface's ownership (dropped last).
#[derive(Debug)]
struct Program {
    _link: OwnedFd,
    _redirect: XdpRedirect,
    _owned: Owned,
}

/// What one queue's RX and TX share: the socket and its UMEM.
#[derive(Debug)]
struct Xsk {
    fd: OwnedFd,
    umem: SharedMap,
    _memfd: Memfd,
    _prog: Arc<Program>,
}

impl Xsk {
    /// Chunk `addr`'s first byte and room, if it lies in the UMEM.
    fn chunk(&self, addr: u64, len: usize) -> Option<*mut u8> {
        let addr = usize::try_from(addr).ok()?;
        self.umem.check(addr, len, 1).ok()?;
        Some(self.umem.as_ptr().wrapping_add(addr))
    }
}

/// The native adapter on one interface: a socket per receive queue.
#[derive(Debug)]
pub struct XdpNic {
    /// Frames queue 0 received.
    pub rx: XdpRx,
    /// Frames to send on queue 0.
    pub tx: XdpTx,
    /// Queues 1 and up, in order.
    pub extra: Vec<(XdpRx, XdpTx)>,
    /// The interface's index when it was opened.
    pub ifindex: u32,
    /// Whether the driver moves frames in and out of the UMEM itself.
    pub zero_copy: bool,
}

/// Why native mode is not possible on an interface (the caller falls
/// back to the generic adapter and says why).
#[derive(Debug)]
pub struct NoNative {
    /// What failed.
    pub what: &'static str,
    /// Why.
    pub source: io::Error,
}

impl std::fmt::Display for NoNative {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

/// One queue's socket, bound, before the program is attached.
struct Sock {
    fd: OwnedFd,
    umem: SharedMap,
    memfd: Memfd,
    rx: XRing,
    tx: XRing,
    fill: XRing,
    comp: XRing,
    zero_copy: bool,
}

fn no(what: &'static str) -> impl FnOnce(io::Error) -> NoNative {
    move |source| NoNative { what, source }
}

/// An AF_XDP socket with its own UMEM, bound to queue `queue`.
fn socket(ifindex: u32, queue: u32) -> Result<Sock, NoNative> {
    let umem_len = (2 * FRAMES * XDP_FRAME) as usize;
    let memfd =
        Memfd::create_sealed("vale-xdp-umem", umem_len, false).map_err(no("UMEM memory"))?;
    let umem = SharedMap::map(memfd.file(), umem_len).map_err(no("UMEM mapping"))?;
    // SAFETY: socket() has no memory-safety preconditions.
    let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(no("AF_XDP socket")(io::Error::last_os_error()));
    }
    // SAFETY: raw was just returned by socket() and nobody owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let reg = UmemReg {
        addr: umem.as_ptr() as u64,
        len: umem_len as u64,
        chunk_size: XDP_FRAME,
        headroom: 0,
        flags: 0,
        pad: 0,
    };
    set_opt(&fd, XDP_UMEM_REG, &reg).map_err(no("UMEM registration"))?;
    for opt in [
        XDP_UMEM_FILL_RING,
        XDP_UMEM_COMPLETION_RING,
        XDP_RX_RING,
        XDP_TX_RING,
    ] {
        set_opt(&fd, opt, &FRAMES).map_err(no("ring sizes"))?;
    }
    let mut off = MmapOffsets::default();
    let mut len = size_of::<MmapOffsets>() as libc::socklen_t;
    // SAFETY: off is writable for len bytes across the call.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_XDP,
            XDP_MMAP_OFFSETS,
            (&mut off as *mut MmapOffsets).cast(),
            &mut len,
        )
    })
    .map_err(no("ring offsets"))?;
    let rx = XRing::map(&fd, off.rx, PGOFF_RX, 16).map_err(no("RX ring mapping"))?;
    let tx = XRing::map(&fd, off.tx, PGOFF_TX, 16).map_err(no("TX ring mapping"))?;
    let fill = XRing::map(&fd, off.fr, PGOFF_FILL, 8).map_err(no("fill ring mapping"))?;
    let comp =
        XRing::map(&fd, off.cr, PGOFF_COMPLETION, 8).map_err(no("completion ring mapping"))?;
    let bind = |flags: u16| {
        let sa = SockaddrXdp {
            family: libc::AF_XDP as u16,
            flags,
            ifindex,
            queue_id: queue,
            shared_umem_fd: 0,
        };
        // SAFETY: sa is a valid sockaddr_xdp alive across the call.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const SockaddrXdp).cast(),
                size_of::<SockaddrXdp>() as libc::socklen_t,
            )
        })
    };
    // A socket closed a moment ago (by this or another process) leaves
    // its queue busy until the kernel's deferred release has run: wait for
    // that, briefly.
    let t0 = std::time::Instant::now();
    let zero_copy = loop {
        if bind(XDP_ZEROCOPY | XDP_USE_NEED_WAKEUP).is_ok() {
            break true;
        }
        match bind(XDP_COPY | XDP_USE_NEED_WAKEUP) {
            Ok(()) => break false,
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    && t0.elapsed() < std::time::Duration::from_secs(1) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => return Err(no("binding the socket to its queue")(e)),
        }
    };
    if t0.elapsed() > std::time::Duration::from_millis(5) {
        tracing::debug!(queue, waited = ?t0.elapsed(), "AF_XDP queue was still being released");
    }
    // The kernel gets the first half of the UMEM to receive into.
    for i in 0..FRAMES {
        fill.write_desc(i, u64::from(i * XDP_FRAME), 0);
    }
    fill.producer().store(FRAMES, Ordering::Release);
    Ok(Sock {
        fd,
        umem,
        memfd,
        rx,
        tx,
        fill,
        comp,
        zero_copy,
    })
}

impl Sock {
    fn into_queue(self, prog: &Arc<Program>) -> (XdpRx, XdpTx) {
        let xsk = Arc::new(Xsk {
            fd: self.fd,
            umem: self.umem,
            _memfd: self.memfd,
            _prog: prog.clone(),
        });
        (
            XdpRx {
                xsk: xsk.clone(),
                ring: self.rx,
                fill: self.fill,
                cons: 0,
                fill_prod: FRAMES,
                fetched: 0,
                bad: 0,
            },
            XdpTx {
                xsk,
                ring: self.tx,
                comp: self.comp,
                prod: 0,
                comp_cons: 0,
                free: (FRAMES..2 * FRAMES)
                    .map(|i| u64::from(i * XDP_FRAME))
                    .collect(),
                unsent: 0,
                send_errors: 0,
            },
        )
    }
}

impl XdpNic {
    /// Opens `name` (index `ifindex`) in native mode, a socket on each of
    /// its receive queues. `Err(Ok(why))`: native mode is not possible
    /// here, the interface is untouched and free; `Err(Err(e))`: the
    /// interface cannot be opened at all (busy).
    pub(crate) fn open(name: &str, ifindex: u32) -> Result<XdpNic, Result<NoNative, NicError>> {
        let queues = crate::sys::rx_queues(name);
        if queues > crate::MAX_QUEUES {
            // Every queue needs its socket, or its frames bypass the port.
            return Err(Ok(NoNative {
                what: "queues",
                source: io::Error::other(format!(
                    "{queues} receive queues, more than {}",
                    crate::MAX_QUEUES
                )),
            }));
        }
        let queues = queues as u32;
        let owned = Owned::take(name, ifindex, false).map_err(Err)?;
        let redirect = XdpRedirect::new(queues)
            .map_err(no("loading the XDP redirect program"))
            .map_err(Ok)?;
        let mut socks = Vec::new();
        for q in 0..queues {
            let s = socket(ifindex, q).map_err(Ok)?;
            redirect
                .set(q, &s.fd)
                .map_err(no("socket map"))
                .map_err(Ok)?;
            socks.push(s);
        }
        // Driver mode only: skb-mode XDP is no faster than the generic
        // adapter and loses the virtio-net header.
        let link = redirect
            .attach(ifindex, XDP_FLAGS_DRV_MODE)
            .map_err(no("attaching XDP in driver mode"))
            .map_err(Ok)?;
        let zero_copy = socks.iter().all(|s| s.zero_copy);
        let prog = Arc::new(Program {
            _link: link,
            _redirect: redirect,
            _owned: owned,
        });
        let mut qs = socks.into_iter().map(|s| s.into_queue(&prog));
        let (rx, tx) = qs.next().expect("at least one queue");
        tracing::info!(
            interface = name,
            ifindex,
            zero_copy,
            queues,
            "native adapter: AF_XDP on every queue, XDP in driver mode"
        );
        Ok(XdpNic {
            rx,
            tx,
            extra: qs.collect(),
            ifindex,
            zero_copy,
        })
    }
}

/// The receive side: the RX ring and the fill ring.
#[derive(Debug)]
pub struct XdpRx {
    xsk: Arc<Xsk>,
    ring: XRing,
    fill: XRing,
    /// Next RX entry to read (the ring's consumer once completed).
    cons: u32,
    fill_prod: u32,
    /// Frames the last fetch handed out.
    fetched: u32,
    bad: u64,
}

impl XdpRx {
    /// Whether frames are waiting: the forwarding thread may not sleep.
    pub fn pending(&self) -> bool {
        self.ring.producer().load(Ordering::Acquire) != self.cons
    }

    /// Descriptors pointing outside the UMEM (dropped).
    pub fn bad_frames(&self) -> u64 {
        self.bad
    }
}

impl Source for XdpRx {
    fn fetch(&mut self, frags: &mut Vec<Frag>, max: usize) -> usize {
        let prod = self.ring.producer().load(Ordering::Acquire);
        let n = prod.wrapping_sub(self.cons).min(max as u32).min(FRAMES);
        for i in 0..n {
            let (addr, len) = self.ring.read_desc(self.cons.wrapping_add(i));
            let len = len.min(XDP_FRAME) as usize;
            match self.xsk.chunk(addr, len) {
                // SAFETY: the chunk is in the UMEM, and the kernel gave it to
                // us on the RX ring; it gets it back through the fill ring
                // only in `complete`, after the engine is done with it.
                Some(p) => frags.push(unsafe { Frag::new(p, len as u16, 0) }),
                None => {
                    self.bad += 1;
                    frags.push(Frag::bad(0));
                }
            }
        }
        self.fetched = n;
        n as usize
    }

    fn complete(&mut self, frames: usize) {
        let n = (frames as u32).min(self.fetched);
        for i in 0..n {
            let (addr, _) = self.ring.read_desc(self.cons.wrapping_add(i));
            // Back to the kernel by its chunk (a bad address becomes chunk
            // 0's neighbour of itself: masked into the RX half).
            let chunk = (addr % u64::from(FRAMES * XDP_FRAME)) & !u64::from(XDP_FRAME - 1);
            self.fill
                .write_desc(self.fill_prod.wrapping_add(i), chunk, 0);
        }
        self.fill_prod = self.fill_prod.wrapping_add(n);
        self.cons = self.cons.wrapping_add(n);
        self.fill
            .producer()
            .store(self.fill_prod, Ordering::Release);
        self.ring.consumer().store(self.cons, Ordering::Release);
        self.fetched = 0;
        if n > 0 && self.fill.needs_wakeup() {
            // The driver stopped for want of buffers: tell it there are.
            crate::sys::wake_rx(&self.xsk.fd);
        }
    }
}

impl AsFd for XdpRx {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.xsk.fd.as_fd()
    }
}

/// The transmit side: the TX ring and the completion ring.
#[derive(Debug)]
pub struct XdpTx {
    xsk: Arc<Xsk>,
    ring: XRing,
    comp: XRing,
    prod: u32,
    comp_cons: u32,
    /// Chunks of the TX half not in flight.
    free: Vec<u64>,
    unsent: u32,
    send_errors: u64,
}

impl XdpTx {
    /// Takes back the chunks the kernel has sent.
    fn reclaim(&mut self) {
        let prod = self.comp.producer().load(Ordering::Acquire);
        let mut n = 0;
        while self.comp_cons != prod && n < FRAMES {
            let (addr, _) = self.comp.read_desc(self.comp_cons);
            // Only chunks of the TX half go back on the free list.
            if addr >= u64::from(FRAMES * XDP_FRAME)
                && addr < u64::from(2 * FRAMES * XDP_FRAME)
                && self.free.len() < FRAMES as usize
            {
                self.free.push(addr & !u64::from(XDP_FRAME - 1));
            }
            self.comp_cons = self.comp_cons.wrapping_add(1);
            n += 1;
        }
        self.comp
            .consumer()
            .store(self.comp_cons, Ordering::Release);
    }

    /// Failed kicks of the ring.
    pub fn send_errors(&self) -> u64 {
        self.send_errors
    }
}

impl Sink for XdpTx {
    fn room(&mut self) -> usize {
        self.reclaim();
        let used = self
            .prod
            .wrapping_sub(self.ring.consumer().load(Ordering::Acquire));
        (FRAMES.saturating_sub(used) as usize).min(self.free.len())
    }

    fn slots_for(&self, len: usize) -> usize {
        // Past a chunk: more than `capacity`, so the engine drops it.
        if len <= XDP_FRAME as usize {
            1
        } else {
            2
        }
    }

    fn capacity(&self) -> usize {
        1
    }

    fn push(&mut self, frags: &[Frag], skip: usize, hdr: &[u8]) -> Push {
        let used = self
            .prod
            .wrapping_sub(self.ring.consumer().load(Ordering::Acquire));
        if used >= FRAMES {
            return Push::Full;
        }
        // The engine calls `room` only for backpressure ports: take back
        // what the kernel sent here too.
        if self.free.is_empty() {
            self.reclaim();
        }
        let Some(&addr) = self.free.last() else {
            return Push::Full;
        };
        let mut cur = FrameCursor::new(frags, skip, hdr);
        let cap = XDP_FRAME as usize;
        if cur.remaining() > cap {
            return Push::Full;
        }
        let Some(ptr) = self.xsk.chunk(addr, cap) else {
            return Push::Full;
        };
        // SAFETY: the chunk is on our free list: the kernel gave it back on
        // the completion ring (or never had it) and gets it only through
        // the TX ring entry written below.
        let mut dst = unsafe { DstBuf::new(ptr, cap) };
        let len = cur.fill(&mut dst);
        self.free.pop();
        self.ring.write_desc(self.prod, addr, len as u32);
        self.prod = self.prod.wrapping_add(1);
        self.unsent += 1;
        Push::Done
    }

    fn publish(&mut self) {
        if self.unsent == 0 {
            return;
        }
        self.ring.producer().store(self.prod, Ordering::Release);
        // Copy mode sends a bounded batch per call (32 frames): kick until
        // the kernel has taken everything or says it is busy. A zero-copy
        // driver that polls the ring needs no call at all.
        let calls = self.unsent / 16 + 2;
        self.unsent = 0;
        for _ in 0..calls {
            if !self.ring.needs_wakeup() {
                break;
            }
            if let Err(e) = crate::sys::kick_tx(&self.xsk.fd) {
                if e.raw_os_error() != Some(libc::EBUSY) && e.raw_os_error() != Some(libc::ENOBUFS)
                {
                    self.send_errors += 1;
                    if self.send_errors.is_power_of_two() {
                        tracing::warn!("native transmit: {e} ({} times)", self.send_errors);
                    }
                }
                break;
            }
            if self.ring.consumer().load(Ordering::Acquire) == self.prod {
                break;
            }
        }
    }

    fn offloads(&self) -> Option<u32> {
        // No virtio-net header: the switch completes and segments.
        Some(0)
    }
}
