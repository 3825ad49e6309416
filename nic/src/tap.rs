//! The host stack port: a TAP device standing for the host's stack behind
//! an interface (netmap's `eth0^`). What the host stack sends out of the
//! TAP comes into the switch; what the switch forwards to the port goes up
//! the host stack as if it had arrived on the TAP.
//!
//! The TAP has `IFF_VNET_HDR` and takes checksum and TSO offloads
//! (`TUNSETOFFLOAD`), so a 64 KiB TCP frame crosses between the host stack
//! and the switch whole, with its 10-byte virtio-net header, as on the
//! generic adapter.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use vale::port::FrameCursor;
use vale::{DstBuf, Frag, Push, Sink, Source};

use crate::{NicError, VNET_HDR_LEN};

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;

/// The largest frame, virtio-net header included.
const FRAME_MAX: usize = 65536 + VNET_HDR_LEN;
/// Frames read per batch.
const BATCH: usize = 64;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A TAP device for the host stack; removed when the last of its two
/// halves is dropped (the kernel deletes a non-persistent TAP on close).
#[derive(Debug)]
pub struct HostTap {
    /// What the host stack sent.
    pub rx: TapRx,
    /// What goes up the host stack.
    pub tx: TapTx,
}

impl HostTap {
    /// Makes TAP device `name` (at most 15 bytes; `eth0^` is a valid
    /// name). Needs CAP_NET_ADMIN. The device starts down: the host's
    /// configuration (addresses, `ip link set up`) is the operator's.
    pub fn create(name: &str) -> Result<HostTap, NicError> {
        let err = |what: &'static str| {
            let name = name.to_string();
            move |source: std::io::Error| NicError::Socket { name, what, source }
        };
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(err("TAP name (1 to 15 bytes)")(
                std::io::Error::from_raw_os_error(libc::EINVAL),
            ));
        }
        let path = c"/dev/net/tun";
        // SAFETY: open() of a NUL-terminated path; no memory is passed.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        if fd < 0 {
            return Err(err("/dev/net/tun")(std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads an ifreq from a live struct of the size
        // the kernel expects (name, flags, padding to 40 bytes).
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            return Err(err("TUNSETIFF")(std::io::Error::last_os_error()));
        }
        let offloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
        // SAFETY: TUNSETOFFLOAD takes an integer argument.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, offloads as libc::c_ulong) } < 0 {
            return Err(err("TUNSETOFFLOAD")(std::io::Error::last_os_error()));
        }
        let dup = fd.try_clone().map_err(err("dup"))?;
        tracing::info!(
            tap = name,
            "host stack port: TAP with virtio-net headers and TSO"
        );
        Ok(HostTap {
            rx: TapRx {
                fd,
                bufs: vec![vec![0u8; FRAME_MAX]; BATCH],
                lens: Vec::with_capacity(BATCH),
            },
            tx: TapTx {
                fd: dup,
                buf: vec![0u8; FRAME_MAX],
                errors: 0,
            },
        })
    }
}

/// What the host stack sent out of the TAP, read into owned buffers.
#[derive(Debug)]
pub struct TapRx {
    fd: OwnedFd,
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
}

impl Source for TapRx {
    /// The TAP's fd wakes the forwarder by itself: only whether a frame
    /// is already there.
    fn arm(&mut self) -> bool {
        !self.pending()
    }

    fn fetch(&mut self, frags: &mut Vec<Frag>, max: usize) -> usize {
        // Frames held back by a backpressure port are still in `bufs`;
        // new ones are read only behind all of them.
        let held = self.lens.len();
        let mut n = held.min(max);
        while n == self.lens.len() && n < max.min(BATCH) {
            let buf = &mut self.bufs[n];
            // SAFETY: reads at most buf.len() bytes into a live buffer.
            let r = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if r <= 0 {
                break;
            }
            self.lens.push(r as usize);
            n += 1;
        }
        for (buf, &len) in self.bufs.iter().zip(&self.lens).take(n) {
            let mut done = 0;
            while done < len {
                let piece = (len - done).min(u16::MAX as usize);
                let more = if done + piece < len {
                    netmap::abi::NS_MOREFRAG
                } else {
                    0
                };
                // SAFETY: `bufs` keeps this frame, unchanged, until
                // `complete` drops it from `lens` (fetch reads new frames
                // only into buffers behind the held ones), as `Frag::new`
                // asks.
                frags.push(unsafe { Frag::new(buf[done..].as_ptr(), piece as u16, more) });
                done += piece;
            }
        }
        n
    }

    fn complete(&mut self, frames: usize) {
        // Held frames move to the front, in order.
        let frames = frames.min(self.lens.len());
        self.lens.drain(..frames);
        self.bufs.rotate_left(frames);
    }
}

impl TapRx {
    /// Whether frames wait: held from the last fetch, or queued in the
    /// device (the forwarding thread sleeps edge-triggered, so it must not
    /// sleep on frames that already arrived).
    pub fn pending(&self) -> bool {
        if !self.lens.is_empty() {
            return true;
        }
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one live pollfd without waiting.
        unsafe { libc::poll(&mut p, 1, 0) > 0 }
    }
}

impl AsFd for TapRx {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What goes up the host stack: one `write` per frame.
#[derive(Debug)]
pub struct TapTx {
    fd: OwnedFd,
    buf: Vec<u8>,
    errors: u64,
}

impl Sink for TapTx {
    fn room(&mut self) -> usize {
        BATCH
    }

    fn slots_for(&self, len: usize) -> usize {
        if len <= FRAME_MAX {
            1
        } else {
            2
        }
    }

    fn capacity(&self) -> usize {
        1
    }

    fn push(&mut self, frags: &[Frag], skip: usize, hdr: &[u8]) -> Push {
        let mut cur = FrameCursor::new(frags, skip, hdr);
        if cur.remaining() > self.buf.len() {
            return Push::Full;
        }
        let mut dst = DstBuf::from_slice(&mut self.buf);
        let len = cur.fill(&mut dst);
        // SAFETY: writes len bytes from a live buffer.
        let r = unsafe { libc::write(self.fd.as_raw_fd(), self.buf.as_ptr().cast(), len) };
        if r < 0 {
            self.errors += 1;
            if self.errors.is_power_of_two() {
                tracing::warn!(
                    "host stack port: {} ({} times)",
                    std::io::Error::last_os_error(),
                    self.errors
                );
            }
            return Push::Full;
        }
        Push::Done
    }

    fn publish(&mut self) {}

    fn offloads(&self) -> Option<u32> {
        Some(vale::port::OFFLOAD_CSUM | vale::port::OFFLOAD_TSO4 | vale::port::OFFLOAD_TSO6)
    }
}
