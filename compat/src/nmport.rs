//! libnetmap's `nmport_*` calls (`include/libnetmap.h`): a port opened by
//! name into a `struct nmport_d` the program reads. The netmap file under
//! it is one of the preload's (`files`), so `poll`, `ioctl` and `close` on
//! `d->fd` behave as on a `/dev/netmap` descriptor.

use std::ffi::CStr;

use libc::{c_char, c_int, c_void, size_t};
use netmap::abi::*;
use netmap::portname;
use netmap::ring;

use crate::files::{self, Errno};
use crate::{hooks, real};

/// `struct nmport_d`, as `libnetmap.h` lays it out.
#[repr(C)]
#[derive(Debug)]
pub struct NmportD {
    hdr: NmreqHeader,
    reg: NmreqRegister,
    fd: c_int,
    nifp: *mut c_void,
    mem: *mut c_void,
    memsize: u64,
    first_tx_ring: u16,
    last_tx_ring: u16,
    first_rx_ring: u16,
    last_rx_ring: u16,
    cur_tx_ring: u16,
    cur_rx_ring: u16,
    register_done: c_int,
    mmap_done: c_int,
}

/// One mapping of a region per process, as libnetmap keeps one per memory
/// id: two ports in one region (`vale0:a@N`, `vale0:b@N`) get the same
/// `mem`, which is how netmap's bridge and lb tell that they can swap
/// buffers between them.
struct RegionMap {
    /// The region memfd's (st_dev, st_ino).
    key: (u64, u64),
    addr: usize,
    size: u64,
    refs: usize,
}

static REGION_MAPS: std::sync::Mutex<Vec<RegionMap>> = std::sync::Mutex::new(Vec::new());

fn region_maps() -> std::sync::MutexGuard<'static, Vec<RegionMap>> {
    REGION_MAPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Maps the region `rfd` (`size` bytes), or takes another reference on
/// this process's mapping of it.
fn map_region(rfd: c_int, size: u64) -> Result<*mut c_void, Errno> {
    // SAFETY: an all-zero stat is a valid buffer for fstat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into our stat buffer only.
    if unsafe { libc::fstat(rfd, &mut st) } < 0 {
        // SAFETY: errno of the failed fstat.
        return Err(unsafe { *libc::__errno_location() });
    }
    let key = (st.st_dev, st.st_ino);
    let mut maps = region_maps();
    if let Some(m) = maps.iter_mut().find(|m| m.key == key && m.size == size) {
        m.refs += 1;
        return Ok(m.addr as *mut c_void);
    }
    let mem = real::mmap(
        std::ptr::null_mut(),
        size as size_t,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
        rfd,
        0,
    );
    if mem == libc::MAP_FAILED {
        // SAFETY: errno of the failed mmap.
        return Err(unsafe { *libc::__errno_location() });
    }
    maps.push(RegionMap {
        key,
        addr: mem as usize,
        size,
        refs: 1,
    });
    Ok(mem)
}

/// Drops a reference on the mapping at `mem`; the last one unmaps it.
fn unmap_region(mem: *mut c_void, size: u64) {
    let mut maps = region_maps();
    let Some(i) = maps.iter().position(|m| m.addr == mem as usize) else {
        // SAFETY: a mapping open_desc made, of that size, not in the
        // table (cannot happen; unmapping it is still right).
        unsafe { libc::munmap(mem, size as size_t) };
        return;
    };
    maps[i].refs -= 1;
    if maps[i].refs == 0 {
        let m = maps.swap_remove(i);
        // SAFETY: the mapping map_region made, of that size; no
        // descriptor refers to it any more.
        unsafe { libc::munmap(m.addr as *mut c_void, m.size as size_t) };
    }
}

fn set_errno(e: Errno) {
    // SAFETY: errno is this thread's int.
    unsafe { *libc::__errno_location() = e };
}

fn prepare(spec: &str) -> Result<NmportD, Errno> {
    let p = portname::parse(spec).map_err(|_| libc::EINVAL)?;
    let mut hdr = NmreqHeader {
        nr_version: NETMAP_API,
        nr_reqtype: NETMAP_REQ_REGISTER,
        ..Default::default()
    };
    let name = p.nr_name();
    if name.len() >= hdr.nr_name.len() {
        return Err(libc::EINVAL);
    }
    hdr.nr_name[..name.len()].copy_from_slice(name.as_bytes());
    let reg = NmreqRegister {
        nr_mode: p.nr_mode(),
        nr_ringid: p.nr_ringid(),
        nr_flags: p.nr_flags(),
        nr_tx_slots: p.conf.tx_slots,
        nr_rx_slots: p.conf.rx_slots,
        nr_tx_rings: p.conf.tx_rings,
        nr_rx_rings: p.conf.rx_rings,
        nr_host_tx_rings: p.conf.host_tx_rings,
        nr_host_rx_rings: p.conf.host_rx_rings,
        nr_mem_id: p.mem_id.map_or(0, |m| m.get()),
        ..Default::default()
    };
    Ok(NmportD {
        hdr,
        reg,
        fd: -1,
        nifp: std::ptr::null_mut(),
        mem: std::ptr::null_mut(),
        memsize: 0,
        first_tx_ring: 0,
        last_tx_ring: 0,
        first_rx_ring: 0,
        last_rx_ring: 0,
        cur_tx_ring: 0,
        cur_rx_ring: 0,
        register_done: 0,
        mmap_done: 0,
    })
}

/// `nmport_prepare`.
///
/// # Safety
/// `spec` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn nmport_prepare(spec: *const c_char) -> *mut NmportD {
    if spec.is_null() {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    // SAFETY: the caller's string.
    let s = unsafe { CStr::from_ptr(spec) }.to_string_lossy();
    match prepare(&s) {
        Ok(d) => Box::into_raw(Box::new(d)),
        Err(e) => {
            set_errno(e);
            std::ptr::null_mut()
        }
    }
}

/// `nmport_undo_prepare`.
///
/// # Safety
/// `d` is null or came from `nmport_prepare` and was not opened.
#[no_mangle]
pub unsafe extern "C" fn nmport_undo_prepare(d: *mut NmportD) {
    if !d.is_null() {
        // SAFETY: made by Box::into_raw in nmport_prepare.
        drop(unsafe { Box::from_raw(d) });
    }
}

fn open_desc(d: &mut NmportD) -> Result<(), Errno> {
    if d.register_done != 0 {
        return Err(libc::EBUSY);
    }
    let fd = hooks::open_netmap(libc::O_CLOEXEC);
    if fd < 0 {
        return Err(libc::ENOMEM);
    }
    let e = files::get(fd).ok_or(libc::EBADF)?;
    let fail = |err| {
        hooks::close(fd);
        err
    };
    let mut f = files::lock(&e);
    if let Err(err) = f.register(&d.hdr.nr_name, &mut d.reg) {
        drop(f);
        return Err(fail(err));
    }
    let (Some(rfd), Some(size)) = (f.region_fd(), f.memsize()) else {
        drop(f);
        return Err(fail(libc::EINVAL));
    };
    drop(f);
    let mem = map_region(rfd, size).map_err(fail)?;
    d.fd = fd;
    d.mem = mem;
    d.memsize = size;
    // SAFETY: nr_offset lies inside the region valed described (the
    // client checked the netmap_if there when it registered).
    d.nifp = unsafe { mem.cast::<u8>().add(d.reg.nr_offset as usize) }.cast();
    let (tx, rx) = (d.reg.nr_tx_rings, d.reg.nr_rx_rings);
    let (htx, hrx) = (d.reg.nr_host_tx_rings, d.reg.nr_host_rx_rings);
    let k = d.reg.nr_ringid;
    let range = |nic: u16, host: u16| -> (u16, u16) {
        match d.reg.nr_mode {
            NR_REG_ONE_NIC => (k, k),
            NR_REG_SW => (nic, (nic + host).saturating_sub(1)),
            NR_REG_ONE_SW => (nic + k, nic + k),
            NR_REG_NIC_SW => (0, (nic + host).saturating_sub(1)),
            _ => (0, nic.saturating_sub(1)),
        }
    };
    (d.first_tx_ring, d.last_tx_ring) = range(tx, htx);
    (d.first_rx_ring, d.last_rx_ring) = range(rx, hrx);
    d.cur_tx_ring = d.first_tx_ring;
    d.cur_rx_ring = d.first_rx_ring;
    d.register_done = 1;
    d.mmap_done = 1;
    Ok(())
}

/// `nmport_open_desc`.
///
/// # Safety
/// `d` is null or came from `nmport_prepare`.
#[no_mangle]
pub unsafe extern "C" fn nmport_open_desc(d: *mut NmportD) -> c_int {
    // SAFETY: the caller's descriptor.
    let Some(d) = (unsafe { d.as_mut() }) else {
        set_errno(libc::EINVAL);
        return -1;
    };
    match open_desc(d) {
        Ok(()) => 0,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

/// `nmport_open`.
///
/// # Safety
/// `spec` is null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn nmport_open(spec: *const c_char) -> *mut NmportD {
    // SAFETY: as nmport_prepare.
    let d = unsafe { nmport_prepare(spec) };
    if d.is_null() {
        return d;
    }
    // SAFETY: just prepared.
    if unsafe { nmport_open_desc(d) } < 0 {
        // SAFETY: errno survives the free.
        let e = unsafe { *libc::__errno_location() };
        // SAFETY: prepared, not open.
        unsafe { nmport_undo_prepare(d) };
        set_errno(e);
        return std::ptr::null_mut();
    }
    d
}

/// `nmport_close`.
///
/// # Safety
/// `d` is null or came from `nmport_open` (or an opened `nmport_prepare`).
#[no_mangle]
pub unsafe extern "C" fn nmport_close(d: *mut NmportD) {
    if d.is_null() {
        return;
    }
    // SAFETY: made by Box::into_raw in nmport_prepare.
    let d = unsafe { Box::from_raw(d) };
    if d.mmap_done != 0 && !d.mem.is_null() {
        unmap_region(d.mem, d.memsize);
    }
    if d.fd >= 0 {
        hooks::close(d.fd);
    }
}

/// `nmport_inject`.
///
/// # Safety
/// `d` came from `nmport_open`; `buf` points to `size` bytes.
#[no_mangle]
pub unsafe extern "C" fn nmport_inject(d: *mut NmportD, buf: *const c_void, size: size_t) -> c_int {
    // SAFETY: the caller's descriptor.
    let Some(d) = (unsafe { d.as_mut() }) else {
        return 0;
    };
    if buf.is_null() || size == 0 {
        return 0;
    }
    // SAFETY: the caller's frame of `size` bytes.
    let frame = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), size) };
    let Some(e) = files::get(d.fd) else {
        return 0;
    };
    let f = files::lock(&e);
    let Some(p) = f.port.as_ref() else {
        return 0;
    };
    let n = p.tx_rings();
    if n == 0 || size > u16::MAX as usize {
        return 0;
    }
    // The client's rings are the bound ones, in order.
    let first = usize::from(d.cur_tx_ring.saturating_sub(d.first_tx_ring)) % n;
    for k in 0..n {
        let i = (first + k) % n;
        let r = p.tx_ring(i).ring;
        let cur = r.cur();
        if ring::space(cur, r.tail(), r.num_slots()) == 0 {
            continue;
        }
        let mut s = r.slot(cur);
        if r.write_buf(s.buf_idx, 0, frame).is_err() {
            return 0;
        }
        s.len = size as u16;
        s.flags = 0;
        r.set_slot(cur, s);
        let next = ring::next(cur, r.num_slots());
        r.set_head(next);
        r.set_cur(next);
        d.cur_tx_ring = d.first_tx_ring + i as u16;
        return size as c_int;
    }
    0
}
