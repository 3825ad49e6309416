//! The few eBPF programs a NIC port needs, loaded and attached through the
//! `bpf(2)` system call directly (libxdp's dispatcher is refused on some
//! hosts, and a loader crate would be more code than the programs).
//!
//! Every attachment is a BPF link: it goes away when its fd closes, also
//! when valed dies, so an interface is left as it was found.
//!
//! - [`ingress_drop`]: a tcx ingress program returning `TC_ACT_SHOT`. Packet
//!   sockets see a frame before tcx ingress runs, so the switch still gets
//!   it while the host stack does not: the NIC is netmap-owned.
//! - [`XdpRedirect`]: `bpf_redirect_map(&xsks, rx_queue_index, XDP_PASS)`,
//!   the smallest program that gives frames to AF_XDP sockets.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;

const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;

/// `enum bpf_attach_type`.
const BPF_XDP: u32 = 37;
const BPF_TCX_INGRESS: u32 = 46;

/// `XDP_FLAGS_*` for a BPF_XDP link.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

const TC_ACT_SHOT: i32 = 2;
#[cfg(feature = "test-utils")]
const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
/// `offsetof(struct xdp_md, rx_queue_index)`.
const XDP_MD_RX_QUEUE_INDEX: i16 = 16;

/// One `struct bpf_insn`, as its 8 bytes.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let o = off.to_le_bytes();
    let i = imm.to_le_bytes();
    [code, dst | (src << 4), o[0], o[1], i[0], i[1], i[2], i[3]]
}

const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const LD_DW_IMM: u8 = 0x18; // BPF_LD | BPF_IMM | BPF_DW (two slots)
const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
const PSEUDO_MAP_FD: u8 = 1;

fn sys_bpf(cmd: libc::c_long, attr: &mut [u64]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` image as long as
    // its size argument says; the kernel reads (and for some commands
    // writes) only that many bytes. Pointers inside it point to live
    // buffers of the caller for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd_of(r: libc::c_long) -> OwnedFd {
    // SAFETY: the bpf commands used here return a new fd on success,
    // owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(r as i32) }
}

/// Loads a program; the verifier's log is in the error when it refuses.
fn prog_load(prog_type: u32, insns: &[[u8; 8]]) -> io::Result<OwnedFd> {
    let code: Vec<u8> = insns.iter().flatten().copied().collect();
    let license = b"GPL\0";
    let mut log = vec![0u8; 4096];
    let mut attr = [0u64; 16];
    attr[0] = u64::from(prog_type) | ((insns.len() as u64) << 32);
    attr[1] = code.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[3] = 1 | ((log.len() as u64) << 32); // log_level, log_size
    attr[4] = log.as_mut_ptr() as u64;
    // prog_name "vale" (after kern_version and prog_flags).
    attr[6] = u64::from_le_bytes(*b"vale\0\0\0\0");
    match sys_bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(fd_of(fd)),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]).trim().to_string();
            if text.is_empty() {
                Err(e)
            } else {
                Err(io::Error::new(e.kind(), format!("{e}; verifier: {text}")))
            }
        }
    }
}

fn link_create(prog: &OwnedFd, ifindex: u32, attach_type: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 8];
    attr[0] = prog.as_raw_fd() as u64 | (u64::from(ifindex) << 32);
    attr[1] = u64::from(attach_type) | (u64::from(flags) << 32);
    sys_bpf(BPF_LINK_CREATE, &mut attr).map(fd_of)
}

/// Drops every frame at tcx ingress of `ifindex` while the returned link
/// is open (packet sockets have seen the frames by then).
pub fn ingress_drop(ifindex: u32) -> io::Result<OwnedFd> {
    let prog = prog_load(
        BPF_PROG_TYPE_SCHED_CLS,
        &[
            insn(MOV64_IMM, 0, 0, 0, TC_ACT_SHOT),
            insn(EXIT, 0, 0, 0, 0),
        ],
    )?;
    link_create(&prog, ifindex, BPF_TCX_INGRESS, 0)
}

#[cfg(feature = "test-utils")]
/// Drops every frame `ifindex` receives in XDP (driver mode), before any
/// skb exists, while the returned link is open: the cheapest receiver an
/// interface can have, for benchmarks that measure a sender.
pub fn xdp_drop(ifindex: u32) -> io::Result<OwnedFd> {
    let prog = prog_load(
        BPF_PROG_TYPE_XDP,
        &[insn(MOV64_IMM, 0, 0, 0, XDP_DROP), insn(EXIT, 0, 0, 0, 0)],
    )?;
    link_create(&prog, ifindex, BPF_XDP, XDP_FLAGS_DRV_MODE)
}

/// An XSKMAP and the XDP program redirecting queue i's frames to the
/// socket at key i (frames of queues without one go to the stack).
#[derive(Debug)]
pub struct XdpRedirect {
    map: OwnedFd,
    prog: OwnedFd,
}

impl XdpRedirect {
    /// The map (for `queues` queues) and the program, not yet attached.
    pub fn new(queues: u32) -> io::Result<XdpRedirect> {
        let mut attr = [0u64; 8];
        attr[0] = u64::from(BPF_MAP_TYPE_XSKMAP) | (4u64 << 32); // key_size 4
        attr[1] = 4 | (u64::from(queues.max(1)) << 32); // value_size 4, max_entries
        let map = fd_of(sys_bpf(BPF_MAP_CREATE, &mut attr)?);
        let fd = map.as_raw_fd();
        let prog = prog_load(
            BPF_PROG_TYPE_XDP,
            &[
                insn(LDX_W, 2, 1, XDP_MD_RX_QUEUE_INDEX, 0),
                insn(LD_DW_IMM, 1, PSEUDO_MAP_FD, 0, fd),
                insn(0, 0, 0, 0, 0),
                insn(MOV64_IMM, 3, 0, 0, XDP_PASS),
                insn(CALL, 0, 0, 0, BPF_FUNC_REDIRECT_MAP),
                insn(EXIT, 0, 0, 0, 0),
            ],
        )?;
        Ok(XdpRedirect { map, prog })
    }

    /// Frames of queue `queue` go to AF_XDP socket `xsk`.
    pub fn set(&self, queue: u32, xsk: &OwnedFd) -> io::Result<()> {
        let key = queue;
        let value = xsk.as_raw_fd() as u32;
        let mut attr = [0u64; 4];
        attr[0] = self.map.as_raw_fd() as u64;
        attr[1] = &key as *const u32 as u64;
        attr[2] = &value as *const u32 as u64;
        sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
    }

    /// Attaches the program to `ifindex` (`flags`: driver or skb mode); it
    /// stays while the link is open.
    pub fn attach(&self, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
        link_create(&self.prog, ifindex, BPF_XDP, flags)
    }
}
