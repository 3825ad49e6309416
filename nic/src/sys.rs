//! Packet sockets and their mapped rings: the system calls and the
//! kernel's ring layouts (`linux/if_packet.h`), written out here so the
//! rings' ABI is in one file.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const PACKET_RX_RING: libc::c_int = 5;
pub const PACKET_VERSION: libc::c_int = 10;
pub const PACKET_VNET_HDR: libc::c_int = 15;
pub const PACKET_QDISC_BYPASS: libc::c_int = 20;
pub const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
pub const PACKET_FANOUT: libc::c_int = 18;
/// Fanout by the frame's receive queue (`skb_get_rx_queue`).
pub const PACKET_FANOUT_QM: u32 = 5;
pub const PACKET_FANOUT_FLAG_UNIQUEID: u32 = 0x2000;
pub const TPACKET_V3: libc::c_int = 2;

/// `tp_status` / `block_status` bits.
pub const TP_STATUS_KERNEL: u32 = 0;
pub const TP_STATUS_USER: u32 = 1;

/// `struct tpacket_req3`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TpacketReq3 {
    pub block_size: u32,
    pub block_nr: u32,
    pub frame_size: u32,
    pub frame_nr: u32,
    pub retire_blk_tov: u32,
    pub sizeof_priv: u32,
    pub feature_req_word: u32,
}

/// Offsets in `struct tpacket_block_desc` (version, offset_to_priv, then
/// `struct tpacket_hdr_v1`).
pub mod block {
    pub const STATUS: usize = 8;
    pub const NUM_PKTS: usize = 12;
    pub const OFFSET_TO_FIRST_PKT: usize = 16;
}

/// Offsets in `struct tpacket3_hdr`.
pub mod v3 {
    pub const NEXT_OFFSET: usize = 0;
    pub const SNAPLEN: usize = 12;
    pub const MAC: usize = 24;
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The interface's index.
pub fn if_index(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is a NUL-terminated string alive across the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(i)
    }
}

/// A raw packet socket for every protocol, not yet bound.
pub fn packet_socket() -> io::Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
    // SAFETY: socket() has no memory-safety preconditions.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            proto,
        )
    })?;
    // SAFETY: fd was just returned by socket() and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// setsockopt(SOL_PACKET, opt) with a plain-data value.
pub fn set_packet_opt<T: Copy>(fd: &OwnedFd, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: v points to size_of::<T>() readable bytes for the call; T is
    // one of the plain structs or integers above.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            opt,
            (v as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Binds the socket to interface `ifindex`, every protocol.
pub fn bind(fd: &OwnedFd, ifindex: u32) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain data; all-zero is valid.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sa.sll_ifindex = ifindex as i32;
    // SAFETY: sa is a valid sockaddr_ll alive across the call.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Sends frames `from..` of a batch (frame i is `buf[ends[i-1]..ends[i]]`)
/// with `sendmmsg`, without waiting; the number the kernel took (it stops
/// at the first it refuses, which then is the error if it is the first).
pub fn send_batch(fd: &OwnedFd, buf: &[u8], ends: &[usize], from: usize) -> io::Result<usize> {
    const MAX: usize = 1024; // UIO_MAXIOV: sendmmsg's own limit
    let to = ends.len().min(from + MAX);
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(to - from);
    for i in from..to {
        let start = if i == 0 { 0 } else { ends[i - 1] };
        let frame = &buf[start..ends[i]];
        iov.push(libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        });
    }
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: mmsghdr is plain data; all-zero is valid.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: every message points to one iovec over a live slice of
    // `buf`, which the kernel only reads; `msgs` and `iov` outlive the call.
    let r = unsafe {
        libc::sendmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Wakes a socket's receive path (an AF_XDP socket whose driver waits for
/// fill-ring buffers): a non-blocking zero-length receive.
pub fn wake_rx(fd: &OwnedFd) {
    // SAFETY: a zero-length receive into no buffer; the result (EAGAIN as
    // a rule) is of no interest, only the wake-up.
    unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
}

/// Asks the kernel to send what the socket's TX ring holds, without
/// waiting.
pub fn kick_tx(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: a zero-length send with no buffer: the kernel walks the ring.
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            std::ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null(),
            0,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::WouldBlock {
            return Err(e);
        }
    }
    Ok(())
}

/// A ring mapped from a packet socket (netmap's shared mapping, which
/// checks every offset), with the accesses the ring layouts need.
#[derive(Debug)]
pub struct RingMap(netmap::sys::SharedMap);

impl RingMap {
    /// Maps `len` bytes of `fd`'s rings (RX first, then TX, as set).
    pub fn map(fd: &OwnedFd, len: usize) -> io::Result<RingMap> {
        netmap::sys::SharedMap::map(fd, len).map(RingMap)
    }

    /// Address of byte `off`; None past the end (for `len` bytes).
    pub fn at(&self, off: usize, len: usize) -> Option<*mut u8> {
        self.0.check(off, len, 1).ok()?;
        Some(self.0.as_ptr().wrapping_add(off))
    }

    /// The 32-bit word at `off` (a status, length or offset the kernel
    /// writes), read with acquire ordering; 0 past the end.
    pub fn load_u32(&self, off: usize) -> u32 {
        self.0
            .atomic_u32(off)
            .map_or(0, |a| a.load(std::sync::atomic::Ordering::Acquire))
    }

    /// The 16-bit word at `off` (the kernel wrote it before the status that
    /// made it ours); 0 past the end.
    pub fn load_u16(&self, off: usize) -> u16 {
        self.0.read::<u16>(off).unwrap_or(0)
    }

    /// Stores `v` at `off` with release ordering (a status handed back).
    pub fn store_u32(&self, off: usize, v: u32) {
        if let Ok(a) = self.0.atomic_u32(off) {
            a.store(v, std::sync::atomic::Ordering::Release);
        }
    }
}

/// Where the interfaces' ownership locks live (one file per interface).
pub const LOCK_DIR: &str = "/run/vale/nic";

/// Takes interface `name` of this thread's network namespace for this
/// process: an exclusive `flock` on `LOCK_DIR/<netns inode>-<name>.lock`
/// (names are per namespace), held while the returned file is open (the
/// kernel drops it when the process dies). `WouldBlock` if another holds
/// it.
pub fn lock_interface(name: &str) -> io::Result<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    std::fs::create_dir_all(LOCK_DIR)?;
    let netns = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::path::Path::new(LOCK_DIR).join(format!("{netns}-{name}.lock")))?;
    // SAFETY: flock on a descriptor we own, integer arguments only.
    cvt(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) })?;
    Ok(f)
}

/// The interface's driver name (`ETHTOOL_GDRVINFO`), e.g. "veth".
pub fn driver(name: &str) -> io::Result<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 3;
    // struct ethtool_drvinfo: cmd, then driver[32], version[32], ...
    let mut info = [0u8; 196];
    info[..4].copy_from_slice(&ETHTOOL_GDRVINFO.to_ne_bytes());
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= ifr.ifr_name.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = info.as_mut_ptr().cast();
    // SAFETY: a datagram socket for the ioctl, owned below.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd was just returned by socket() and nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifr names the interface and points to `info`, which is as
    // large as struct ethtool_drvinfo and outlives the call.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL, &mut ifr) })?;
    let drv = &info[4..36];
    let end = drv.iter().position(|&b| b == 0).unwrap_or(drv.len());
    Ok(String::from_utf8_lossy(&drv[..end]).into_owned())
}

/// Number of receive queues interface `name` has (1 if unknown).
pub fn rx_queues(name: &str) -> usize {
    std::fs::read_dir(format!("/sys/class/net/{name}/queues"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count()
        })
        .unwrap_or(1)
        .max(1)
}

/// Joins a bound packet socket to fanout group `id` by receive queue; with
/// `id` None, makes a new group with an id the kernel picks, and returns
/// it.
pub fn join_fanout(fd: &OwnedFd, id: Option<u16>) -> io::Result<u16> {
    let arg: u32 = match id {
        Some(id) => u32::from(id) | (PACKET_FANOUT_QM << 16),
        None => (PACKET_FANOUT_QM | PACKET_FANOUT_FLAG_UNIQUEID) << 16,
    };
    set_packet_opt(fd, PACKET_FANOUT, &arg)?;
    if let Some(id) = id {
        return Ok(id);
    }
    let mut got: u32 = 0;
    let mut len = size_of::<u32>() as libc::socklen_t;
    // SAFETY: got is writable for len bytes across the call.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_FANOUT,
            (&mut got as *mut u32).cast(),
            &mut len,
        )
    })?;
    Ok(got as u16)
}
