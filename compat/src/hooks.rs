//! The exported functions that stand in for the C library's: each checks
//! whether its descriptor is a netmap file and otherwise calls the C
//! library's own function with the arguments unchanged.
//!
//! The variadic `open` and `ioctl` are declared with their third argument
//! fixed: on x86-64 (the System V ABI) a variadic call passes its integer
//! arguments in the same registers as a fixed one, so the value is read
//! exactly as the C library's own definition reads it.

use std::time::{Duration, Instant};

use libc::{c_char, c_int, c_ulong, c_void, mode_t, nfds_t, off_t, pollfd, size_t};
use netmap::abi::*;

use crate::files::{self, Errno, NmFile};
use crate::real;

/// The device netmap applications open.
const DEV_NETMAP: &[u8] = b"/dev/netmap";

fn set_errno(e: Errno) {
    // SAFETY: errno is this thread's int.
    unsafe { *libc::__errno_location() = e };
}

fn fail(e: Errno) -> c_int {
    set_errno(e);
    -1
}

/// Whether `path` is "/dev/netmap".
///
/// # Safety
/// `path` is null or a NUL-terminated string, as `open` requires.
unsafe fn is_dev_netmap(path: *const c_char) -> bool {
    if path.is_null() {
        return false;
    }
    // SAFETY: the caller passes open's path argument.
    let p = unsafe { std::ffi::CStr::from_ptr(path) };
    p.to_bytes() == DEV_NETMAP
}

/// A new netmap file: an eventfd standing for it.
pub(crate) fn open_netmap(flags: c_int) -> c_int {
    let cloexec = if flags & libc::O_CLOEXEC != 0 {
        libc::EFD_CLOEXEC
    } else {
        0
    };
    // SAFETY: eventfd takes two ints and returns a new descriptor.
    let fd = unsafe { libc::eventfd(0, cloexec) };
    if fd >= 0 {
        files::insert(fd);
    }
    fd
}

/// `open(2)`.
///
/// # Safety
/// As the C library's `open`.
#[no_mangle]
pub unsafe extern "C" fn open(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    // SAFETY: open's own contract.
    if unsafe { is_dev_netmap(path) } {
        return open_netmap(flags);
    }
    real::open(path, flags, mode)
}

/// `open64(2)`.
///
/// # Safety
/// As the C library's `open64`.
#[no_mangle]
pub unsafe extern "C" fn open64(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    // SAFETY: open's own contract.
    if unsafe { is_dev_netmap(path) } {
        return open_netmap(flags);
    }
    real::open64(path, flags, mode)
}

/// `openat(2)`; an absolute path ignores the directory.
///
/// # Safety
/// As the C library's `openat`.
#[no_mangle]
pub unsafe extern "C" fn openat(
    dir: c_int,
    path: *const c_char,
    flags: c_int,
    mode: mode_t,
) -> c_int {
    // SAFETY: open's own contract.
    if unsafe { is_dev_netmap(path) } {
        return open_netmap(flags);
    }
    real::openat(dir, path, flags, mode)
}

/// `openat64(2)`.
///
/// # Safety
/// As the C library's `openat64`.
#[no_mangle]
pub unsafe extern "C" fn openat64(
    dir: c_int,
    path: *const c_char,
    flags: c_int,
    mode: mode_t,
) -> c_int {
    // SAFETY: open's own contract.
    if unsafe { is_dev_netmap(path) } {
        return open_netmap(flags);
    }
    real::openat64(dir, path, flags, mode)
}

/// `close(2)`: a netmap file's registration closes with its last
/// descriptor.
#[no_mangle]
pub extern "C" fn close(fd: c_int) -> c_int {
    if files::any() {
        files::epoll_forget(fd);
        if let Some(e) = files::remove(fd) {
            // Drains TX, then closes the control connection.
            files::release(&e);
        }
    }
    real::close(fd)
}

/// `close_range(2)`: netmap files in the range close as with `close`.
#[no_mangle]
pub extern "C" fn close_range(first: libc::c_uint, last: libc::c_uint, flags: c_int) -> c_int {
    if files::any() && flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 {
        for fd in files::fds_in(first, last) {
            files::epoll_forget(fd);
            if let Some(e) = files::remove(fd) {
                files::release(&e);
            }
        }
    }
    real::close_range(first, last, flags)
}

/// `closefrom(3)`.
#[no_mangle]
pub extern "C" fn closefrom(low: c_int) {
    if files::any() && low >= 0 {
        for fd in files::fds_in(low as libc::c_uint, libc::c_uint::MAX) {
            files::epoll_forget(fd);
            if let Some(e) = files::remove(fd) {
                files::release(&e);
            }
        }
    }
    real::closefrom(low)
}

/// After a dup onto `to` succeeded: `to` stands for what `fd` stands for
/// (or nothing, if `fd` is no netmap file and `to` was one, which the dup
/// closed).
fn dup_done(fd: c_int, to: c_int) -> c_int {
    if to >= 0 && files::any() {
        // Whatever `to` was in an epoll instance, the dup closed it.
        files::epoll_forget(to);
        if let Some(old) = files::alias(fd, to) {
            // `to` was the last descriptor of another netmap file, which
            // the dup closed: its registration closes now.
            files::release(&old);
        }
    }
    to
}

/// `fcntl(2)`: F_DUPFD and F_DUPFD_CLOEXEC of a netmap file give the same
/// file, as dup does; everything else is the C library's.
#[no_mangle]
pub extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    let r = real::fcntl(fd, cmd, arg);
    if r >= 0 && (cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC) && files::get(fd).is_some()
    {
        return dup_done(fd, r);
    }
    r
}

/// `fcntl64`, the same.
#[no_mangle]
pub extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    let r = real::fcntl64(fd, cmd, arg);
    if r >= 0 && (cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC) && files::get(fd).is_some()
    {
        return dup_done(fd, r);
    }
    r
}

/// `__open_2`, what `open` becomes under _FORTIFY_SOURCE when the flags
/// are not a constant.
///
/// # Safety
/// As the C library's `__open_2`.
#[no_mangle]
pub unsafe extern "C" fn __open_2(path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: open's own contract.
    if unsafe { is_dev_netmap(path) } {
        return open_netmap(flags);
    }
    real::open_2(path, flags)
}

/// `__open64_2`, the same for open64.
///
/// # Safety
/// As the C library's `__open64_2`.
#[no_mangle]
pub unsafe extern "C" fn __open64_2(path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: open's own contract.
    if unsafe { is_dev_netmap(path) } {
        return open_netmap(flags);
    }
    real::open64_2(path, flags)
}

/// `__poll_chk`, what `poll` becomes under _FORTIFY_SOURCE: the same,
/// after the C library's check of the array's size.
///
/// # Safety
/// As the C library's `__poll_chk`.
#[no_mangle]
pub unsafe extern "C" fn __poll_chk(
    fds: *mut pollfd,
    n: nfds_t,
    timeout: c_int,
    fdslen: size_t,
) -> c_int {
    if fdslen / std::mem::size_of::<pollfd>() < n as usize {
        // The C library aborts here (a buffer overflow): so does its check.
        return real::poll_chk(fds, n, timeout, fdslen);
    }
    // SAFETY: poll's own contract, the array checked.
    unsafe { poll(fds, n, timeout) }
}

/// `__ppoll_chk`, the same for ppoll.
///
/// # Safety
/// As the C library's `__ppoll_chk`.
#[no_mangle]
pub unsafe extern "C" fn __ppoll_chk(
    fds: *mut pollfd,
    n: nfds_t,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
    fdslen: size_t,
) -> c_int {
    if fdslen / std::mem::size_of::<pollfd>() < n as usize {
        return real::ppoll_chk(fds, n, ts, mask, fdslen);
    }
    // SAFETY: ppoll's own contract, the array checked.
    unsafe { ppoll(fds, n, ts, mask) }
}

/// `dup(2)`: the new descriptor is the same netmap file.
#[no_mangle]
pub extern "C" fn dup(fd: c_int) -> c_int {
    dup_done(fd, real::dup(fd))
}

/// `dup2(2)`.
#[no_mangle]
pub extern "C" fn dup2(fd: c_int, to: c_int) -> c_int {
    if fd == to {
        return real::dup2(fd, to);
    }
    dup_done(fd, real::dup2(fd, to))
}

/// `dup3(2)`.
#[no_mangle]
pub extern "C" fn dup3(fd: c_int, to: c_int, flags: c_int) -> c_int {
    dup_done(fd, real::dup3(fd, to, flags))
}

/// `ioctl(2)`: NIOCCTRL, NIOCTXSYNC, NIOCRXSYNC, NIOCREGIF and NIOCGINFO
/// on a netmap file.
///
/// # Safety
/// As the C library's `ioctl`: `arg` points to the request's structure.
#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, req: c_ulong, arg: *mut c_void) -> c_int {
    let Some(e) = files::get(fd) else {
        return real::ioctl(fd, req, arg);
    };
    let f = files::lock(&e);
    let r = match req as u32 {
        NIOCTXSYNC => f.txsync(),
        NIOCRXSYNC => f.rxsync(),
        // SAFETY: arg is the caller's struct nmreq_header.
        NIOCCTRL => unsafe { ctrl(f, arg) },
        // SAFETY: arg is the caller's struct nmreq.
        NIOCREGIF => unsafe { regif(f, arg) },
        // SAFETY: arg is the caller's struct nmreq.
        NIOCGINFO => unsafe { ginfo(arg) },
        _ => Err(libc::ENOTTY),
    };
    match r {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

/// NIOCCTRL.
///
/// # Safety
/// `arg` is null or points to a `struct nmreq_header` whose `nr_body` and
/// `nr_options` are null or point to memory of the sizes their types say.
unsafe fn ctrl(mut f: std::sync::MutexGuard<'_, NmFile>, arg: *mut c_void) -> Result<(), Errno> {
    if arg.is_null() {
        return Err(libc::EFAULT);
    }
    let hp = arg.cast::<NmreqHeader>();
    // SAFETY: the caller's header, read whole (it may be unaligned).
    let h = unsafe { hp.read_unaligned() };
    if !(NETMAP_MIN_API..=NETMAP_MAX_API).contains(&h.nr_version) {
        return Err(libc::EINVAL);
    }
    // Options: none is implemented here; each says so in nro_status, as
    // netmap answers an option it does not know.
    let mut o = h.nr_options;
    let mut opts = 0;
    while o != 0 && opts < 64 {
        let op = o as *mut NmreqOption;
        // SAFETY: the caller's option chain.
        let mut opt = unsafe { op.read_unaligned() };
        opt.nro_status = libc::EOPNOTSUPP as u32;
        // SAFETY: as above.
        unsafe { op.write_unaligned(opt) };
        o = opt.nro_next;
        opts += 1;
    }
    if opts > 0 {
        return Err(libc::EOPNOTSUPP);
    }
    if h.nr_body == 0 {
        return Err(libc::EINVAL);
    }
    if h.nr_reqtype == NETMAP_REQ_REGISTER {
        let bp = h.nr_body as *mut NmreqRegister;
        // SAFETY: the caller's register body.
        let mut body = unsafe { bp.read_unaligned() };
        f.register(&h.nr_name, &mut body)?;
        // SAFETY: as above.
        unsafe { bp.write_unaligned(body) };
        return Ok(());
    }
    drop(f);
    let size = files::body_size(h.nr_reqtype)?;
    let mut body = vec![0u8; size];
    if size > 0 {
        // SAFETY: the caller's body of the size its request type has.
        unsafe { std::ptr::copy_nonoverlapping(h.nr_body as *const u8, body.as_mut_ptr(), size) };
    }
    NmFile::forward(h.nr_reqtype, &h.nr_name, &mut body)?;
    if size > 0 {
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(body.as_ptr(), h.nr_body as *mut u8, size) };
    }
    Ok(())
}

/// NIOCREGIF (legacy).
///
/// # Safety
/// `arg` is null or points to a `struct nmreq`.
unsafe fn regif(mut f: std::sync::MutexGuard<'_, NmFile>, arg: *mut c_void) -> Result<(), Errno> {
    if arg.is_null() {
        return Err(libc::EFAULT);
    }
    let lp = arg.cast::<Nmreq>();
    // SAFETY: the caller's legacy request.
    let mut l = unsafe { lp.read_unaligned() };
    // netmap: legacy requests below the API's version are refused.
    if l.nr_version < u32::from(NETMAP_MIN_API) {
        l.nr_version = u32::from(NETMAP_API);
        // SAFETY: as above.
        unsafe { lp.write_unaligned(l) };
        return Err(libc::EINVAL);
    }
    if l.nr_cmd != 0 {
        // The VALE commands of the old API: vale-ctl's requests now.
        return Err(libc::EOPNOTSUPP);
    }
    let mut r = files::register_from_legacy(&l);
    f.register(&l.nr_name, &mut r)?;
    files::legacy_from_register(&r, &mut l);
    // SAFETY: as above.
    unsafe { lp.write_unaligned(l) };
    Ok(())
}

/// NIOCGINFO (legacy).
///
/// # Safety
/// `arg` is null or points to a `struct nmreq`.
unsafe fn ginfo(arg: *mut c_void) -> Result<(), Errno> {
    if arg.is_null() {
        return Err(libc::EFAULT);
    }
    let lp = arg.cast::<Nmreq>();
    // SAFETY: the caller's legacy request.
    let mut l = unsafe { lp.read_unaligned() };
    let i = NmFile::info(&l.nr_name)?;
    l.nr_memsize = i.nr_memsize as u32;
    l.nr_tx_slots = i.nr_tx_slots;
    l.nr_rx_slots = i.nr_rx_slots;
    l.nr_tx_rings = i.nr_tx_rings;
    l.nr_rx_rings = i.nr_rx_rings;
    l.nr_arg2 = i.nr_mem_id;
    // SAFETY: as above.
    unsafe { lp.write_unaligned(l) };
    Ok(())
}

fn map_region(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> Option<*mut c_void> {
    let e = files::get(fd)?;
    let f = files::lock(&e);
    let Some(rfd) = f.region_fd() else {
        set_errno(libc::EINVAL);
        return Some(libc::MAP_FAILED);
    };
    // Past the region: refused, as the kernel's netmap mmap does.
    let end = u64::try_from(off)
        .ok()
        .and_then(|o| o.checked_add(len as u64));
    if end.is_none_or(|e| Some(e) > f.memsize()) {
        set_errno(libc::EINVAL);
        return Some(libc::MAP_FAILED);
    }
    Some(real::mmap(addr, len, prot, flags, rfd, off))
}

/// `mmap(2)` of a netmap file maps its region.
///
/// # Safety
/// As the C library's `mmap`.
#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    if fd >= 0 && files::any() {
        if let Some(p) = map_region(addr, len, prot, flags, fd, off) {
            return p;
        }
    }
    real::mmap(addr, len, prot, flags, fd, off)
}

/// `mmap64(2)`.
///
/// # Safety
/// As the C library's `mmap64`.
#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    if fd >= 0 && files::any() {
        if let Some(p) = map_region(addr, len, prot, flags, fd, off) {
            return p;
        }
    }
    real::mmap64(addr, len, prot, flags, fd, off)
}

/// Milliseconds of a timespec, rounded up (-1 for none).
fn ts_ms(ts: *const libc::timespec) -> c_int {
    if ts.is_null() {
        return -1;
    }
    // SAFETY: the caller's timespec.
    let t = unsafe { ts.read() };
    let ms = (t.tv_sec as i128) * 1000 + (t.tv_nsec as i128 + 999_999) / 1_000_000;
    ms.clamp(0, i32::MAX as i128) as c_int
}

/// Whether any of the first `n` descriptors of the three sets is a
/// netmap file.
///
/// # Safety
/// Each set is null or points to an fd_set.
unsafe fn sets_have_netmap(n: c_int, sets: [*mut libc::fd_set; 3]) -> bool {
    (0..n.clamp(0, libc::FD_SETSIZE as c_int)).any(|fd| {
        // SAFETY: the caller's sets, fd below FD_SETSIZE.
        sets.iter()
            .any(|s| !s.is_null() && unsafe { libc::FD_ISSET(fd, *s) })
            && files::get(fd).is_some()
    })
}

/// select over netmap files, as netmap's select: through poll.
///
/// # Safety
/// As select's arguments.
unsafe fn select_via_poll(
    n: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    x: *mut libc::fd_set,
    ms: c_int,
    mask: *const libc::sigset_t,
) -> c_int {
    if n > libc::FD_SETSIZE as c_int {
        // select cannot name such descriptors (glibc's fortified select
        // aborts); with a netmap file in the sets, refuse.
        return fail(libc::EINVAL);
    }
    let mut fds = Vec::new();
    for fd in 0..n.max(0) {
        let mut ev = 0;
        // SAFETY: the caller's sets.
        unsafe {
            if !r.is_null() && libc::FD_ISSET(fd, r) {
                ev |= libc::POLLIN;
            }
            if !w.is_null() && libc::FD_ISSET(fd, w) {
                ev |= libc::POLLOUT;
            }
            if !x.is_null() && libc::FD_ISSET(fd, x) {
                ev |= libc::POLLPRI;
            }
        }
        if ev != 0 {
            fds.push(pollfd {
                fd,
                events: ev,
                revents: 0,
            });
        }
    }
    // SAFETY: our own array; the caller's mask or none.
    let rc = unsafe { poll_masked(fds.as_mut_ptr(), fds.len() as nfds_t, ms, mask) };
    if rc < 0 {
        return rc;
    }
    let mut count = 0;
    // SAFETY: the caller's sets, cleared bit by bit below `n` (a set may
    // be allocated for `n` descriptors only, not a whole fd_set) and
    // refilled with what is ready.
    unsafe {
        for fd in 0..n.max(0) {
            for s in [r, w, x] {
                if !s.is_null() {
                    libc::FD_CLR(fd, s);
                }
            }
        }
        for p in &fds {
            let err = p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0;
            if !r.is_null()
                && p.events & libc::POLLIN != 0
                && (p.revents & libc::POLLIN != 0 || err)
            {
                libc::FD_SET(p.fd, r);
                count += 1;
            }
            if !w.is_null()
                && p.events & libc::POLLOUT != 0
                && (p.revents & libc::POLLOUT != 0 || err)
            {
                libc::FD_SET(p.fd, w);
                count += 1;
            }
            if !x.is_null() && p.revents & libc::POLLPRI != 0 {
                libc::FD_SET(p.fd, x);
                count += 1;
            }
        }
    }
    count
}

/// `select(2)`: with a netmap file among the sets, netmap's semantics
/// (through `poll`); else the C library's.
///
/// # Safety
/// As the C library's `select`.
#[no_mangle]
pub unsafe extern "C" fn select(
    n: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    x: *mut libc::fd_set,
    tv: *mut libc::timeval,
) -> c_int {
    // SAFETY: select's own contract.
    if !files::any() || !unsafe { sets_have_netmap(n, [r, w, x]) } {
        return real::select(n, r, w, x, tv);
    }
    let ms = if tv.is_null() {
        -1
    } else {
        // SAFETY: the caller's timeval.
        let t = unsafe { tv.read() };
        let ms = i128::from(t.tv_sec) * 1000 + (i128::from(t.tv_usec) + 999) / 1000;
        ms.clamp(0, i128::from(i32::MAX)) as c_int
    };
    // SAFETY: select's own contract.
    unsafe { select_via_poll(n, r, w, x, ms, std::ptr::null()) }
}

/// `pselect(2)`, with netmap files: as select, the signal mask applied
/// atomically for the wait (the C library's `ppoll` sleeps).
///
/// # Safety
/// As the C library's `pselect`.
#[no_mangle]
pub unsafe extern "C" fn pselect(
    n: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    x: *mut libc::fd_set,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: pselect's own contract.
    if !files::any() || !unsafe { sets_have_netmap(n, [r, w, x]) } {
        return real::pselect(n, r, w, x, ts, mask);
    }
    // SAFETY: pselect's own contract.
    unsafe { select_via_poll(n, r, w, x, ts_ms(ts), mask) }
}

/// `ppoll(2)`: with netmap files, as poll, the signal mask applied
/// atomically for the wait (the C library's `ppoll` sleeps): a signal the
/// mask unblocks, pending or arriving, ends the wait with `EINTR`.
///
/// # Safety
/// As the C library's `ppoll`.
#[no_mangle]
pub unsafe extern "C" fn ppoll(
    fds: *mut pollfd,
    n: nfds_t,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    if fds.is_null() || n == 0 || !files::any() {
        return real::ppoll(fds, n, ts, mask);
    }
    // SAFETY: the caller's array of n pollfds.
    let set = unsafe { std::slice::from_raw_parts(fds, n as usize) };
    if set.iter().all(|p| files::get(p.fd).is_none()) {
        return real::ppoll(fds, n, ts, mask);
    }
    // SAFETY: ppoll's own contract.
    unsafe { poll_masked(fds, n, ts_ms(ts), mask) }
}

/// `poll(2)`: on a netmap file, netmap's poll (txsync for POLLOUT, rxsync
/// for POLLIN, then readiness), other descriptors as the kernel polls them.
///
/// # Safety
/// As the C library's `poll`.
#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut pollfd, n: nfds_t, timeout: c_int) -> c_int {
    if fds.is_null() || n == 0 || !files::any() {
        return real::poll(fds, n, timeout);
    }
    // SAFETY: poll's own contract.
    unsafe { poll_masked(fds, n, timeout, std::ptr::null()) }
}

/// poll, ppoll and pselect over netmap files: `mask` (null: none) is the
/// signal mask of the one blocking wait, set by the kernel.
///
/// # Safety
/// `fds` points to `n` pollfds; `mask` is null or a valid sigset.
unsafe fn poll_masked(
    fds: *mut pollfd,
    n: nfds_t,
    timeout: c_int,
    mask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: the caller's array of n pollfds.
    let set = unsafe { std::slice::from_raw_parts_mut(fds, n as usize) };
    // The common case, one netmap file ready at once: no allocation.
    if let [p] = set {
        if let Some(e) = files::get(p.fd) {
            p.revents = files::lock(&e).poll_ready(p.events);
            if p.revents != 0 || timeout == 0 {
                return c_int::from(p.revents != 0);
            }
        }
    }
    let nm: Vec<Option<files::Entry>> = set.iter().map(|p| files::get(p.fd)).collect();
    if nm.iter().all(Option::is_none) {
        if mask.is_null() {
            return real::poll(fds, n, timeout);
        }
        let ts = (timeout >= 0).then(|| libc::timespec {
            tv_sec: libc::time_t::from(timeout / 1000),
            tv_nsec: libc::c_long::from(timeout % 1000) * 1_000_000,
        });
        let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        return real::ppoll(fds, n, tsp, mask);
    }
    let deadline = (timeout >= 0).then(|| Instant::now() + Duration::from_millis(timeout as u64));
    loop {
        let mut ready = 0;
        for (p, e) in set.iter_mut().zip(&nm) {
            if let Some(e) = e {
                p.revents = files::lock(e).poll_ready(p.events);
                if p.revents != 0 {
                    ready += 1;
                }
            }
        }
        // The other descriptors, without waiting.
        let mut others: Vec<pollfd> = set
            .iter()
            .zip(&nm)
            .filter(|(_, e)| e.is_none())
            .map(|(p, _)| *p)
            .collect();
        if !others.is_empty() {
            let r = real::poll(others.as_mut_ptr(), others.len() as nfds_t, 0);
            if r < 0 {
                return r;
            }
            let mut it = others.iter();
            for (p, e) in set.iter_mut().zip(&nm) {
                if e.is_none() {
                    p.revents = it.next().map_or(0, |o| o.revents);
                    if p.revents != 0 {
                        ready += 1;
                    }
                }
            }
        }
        if ready > 0 || timeout == 0 {
            return ready as c_int;
        }
        let left = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return 0;
                }
                Some(d - now)
            }
            None => None,
        };
        // Sleep on every netmap file's wake-up (after asking valed for
        // one, netmap's need-kick handshake) and the other descriptors,
        // in one poll of the C library.
        let mut sleep: Vec<pollfd> = others.clone();
        let mut armed: Vec<&files::Entry> = Vec::new();
        // The ports slept on, held until the sleep is over.
        let mut held = Vec::new();
        let mut now_ready = false;
        for (p, e) in set.iter().zip(&nm) {
            let Some(e) = e else { continue };
            match files::lock(e).arm(p.events) {
                Ok(Some((irq, conn, port))) => {
                    armed.push(e);
                    held.push(port);
                    sleep.push(pollfd {
                        fd: irq,
                        events: libc::POLLIN,
                        revents: 0,
                    });
                    sleep.push(pollfd {
                        fd: conn,
                        events: libc::POLLRDHUP,
                        revents: 0,
                    });
                }
                Ok(None) => {
                    now_ready = true;
                    break;
                }
                Err(err) => {
                    armed.iter().for_each(|e| files::lock(e).disarm());
                    return fail(err);
                }
            }
        }
        if !now_ready {
            let r = if mask.is_null() {
                let ms = left.map_or(-1, |l| l.as_millis().clamp(1, i32::MAX as u128) as c_int);
                real::poll(sleep.as_mut_ptr(), sleep.len() as nfds_t, ms)
            } else {
                let ts = left.map(|l| libc::timespec {
                    tv_sec: l.as_secs() as libc::time_t,
                    tv_nsec: libc::c_long::from(l.subsec_nanos()),
                });
                let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
                real::ppoll(sleep.as_mut_ptr(), sleep.len() as nfds_t, tsp, mask)
            };
            if r < 0 {
                // SAFETY: errno is this thread's int.
                let errno = unsafe { *libc::__errno_location() };
                armed.iter().for_each(|e| files::lock(e).disarm());
                return fail(errno);
            }
            // Empty the wake-ups that fired (non-blocking eventfds).
            for p in sleep[others.len()..].iter().step_by(2) {
                if p.revents & libc::POLLIN != 0 {
                    let mut b = [0u8; 8];
                    // SAFETY: reads 8 bytes into a local buffer.
                    unsafe { libc::read(p.fd, b.as_mut_ptr().cast(), 8) };
                }
            }
        }
        armed.iter().for_each(|e| files::lock(e).disarm());
    }
}

/// `epoll_ctl(2)`: a netmap file is kept here, not in the kernel's epoll
/// (its descriptor never becomes readable by itself).
///
/// # Safety
/// As the C library's `epoll_ctl`.
#[no_mangle]
pub unsafe extern "C" fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    ev: *mut libc::epoll_event,
) -> c_int {
    if files::get(fd).is_none() {
        return real::epoll_ctl(epfd, op, fd, ev);
    }
    let (events, data) = if ev.is_null() {
        (0, 0)
    } else {
        // SAFETY: the caller's event (packed on x86-64: read unaligned).
        let e = unsafe { ev.read_unaligned() };
        (e.events, e.u64)
    };
    if op != libc::EPOLL_CTL_DEL && ev.is_null() {
        return fail(libc::EFAULT);
    }
    match files::epoll_set(epfd, op, fd, events, data) {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

/// `epoll_wait(2)`: the kernel's ready descriptors and the netmap files
/// of the instance that netmap's poll finds ready (level-triggered, as
/// netmap's poll; EPOLLET is not honoured for them).
///
/// # Safety
/// As the C library's `epoll_wait`.
#[no_mangle]
pub unsafe extern "C" fn epoll_wait(
    epfd: c_int,
    evs: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
) -> c_int {
    // SAFETY: epoll_wait's own contract.
    unsafe { epoll_wait_nm(epfd, evs, max, timeout, std::ptr::null()) }
}

/// `epoll_pwait(2)`, as `epoll_wait` with the signal mask applied.
///
/// # Safety
/// As the C library's `epoll_pwait`.
#[no_mangle]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    evs: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: epoll_pwait's own contract.
    unsafe { epoll_wait_nm(epfd, evs, max, timeout, mask) }
}

/// # Safety
/// `evs` has room for `max` events; `mask` is null or a sigset.
unsafe fn epoll_wait_nm(
    epfd: c_int,
    evs: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const libc::sigset_t,
) -> c_int {
    let members = if files::any() {
        files::epoll_members(epfd)
    } else {
        Vec::new()
    };
    if members.is_empty() || evs.is_null() || max <= 0 {
        return real::epoll_pwait(epfd, evs, max, timeout, mask);
    }
    // One poll over the netmap files and the epoll descriptor itself
    // (readable when a kernel descriptor in it is ready).
    let mut pfds: Vec<pollfd> = members
        .iter()
        .map(|&(fd, ev, _)| {
            let mut e = 0;
            if ev & libc::EPOLLIN as u32 != 0 {
                e |= libc::POLLIN;
            }
            if ev & libc::EPOLLOUT as u32 != 0 {
                e |= libc::POLLOUT;
            }
            pollfd {
                fd,
                events: e,
                revents: 0,
            }
        })
        .collect();
    pfds.push(pollfd {
        fd: epfd,
        events: libc::POLLIN,
        revents: 0,
    });
    let deadline = (timeout >= 0).then(|| Instant::now() + Duration::from_millis(timeout as u64));
    loop {
        let left = match deadline {
            None => -1,
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as c_int,
        };
        // SAFETY: as this function's contract.
        let n = unsafe { epoll_round(epfd, evs, max, &members, &mut pfds, left, mask) };
        // The epoll descriptor woke the poll but another thread took its
        // events: not a timeout yet.
        if n != 0 || left == 0 {
            return n;
        }
    }
}

/// One wait of `epoll_wait_nm`: 0 if nothing was ready.
///
/// # Safety
/// As `epoll_wait_nm`.
unsafe fn epoll_round(
    epfd: c_int,
    evs: *mut libc::epoll_event,
    max: c_int,
    members: &[files::EpollMember],
    pfds: &mut [pollfd],
    timeout: c_int,
    mask: *const libc::sigset_t,
) -> c_int {
    for p in pfds.iter_mut() {
        p.revents = 0;
    }
    // SAFETY: our own array; the mask is the caller's (epoll_pwait's,
    // applied atomically for the wait).
    let r = unsafe { poll_masked(pfds.as_mut_ptr(), pfds.len() as nfds_t, timeout, mask) };
    if r <= 0 {
        return r;
    }
    let mut out: Vec<libc::epoll_event> = Vec::new();
    for (p, &(_, _, data)) in pfds.iter().zip(members) {
        let mut e = 0u32;
        if p.revents & libc::POLLIN != 0 {
            e |= libc::EPOLLIN as u32;
        }
        if p.revents & libc::POLLOUT != 0 {
            e |= libc::EPOLLOUT as u32;
        }
        if p.revents & libc::POLLERR != 0 {
            e |= libc::EPOLLERR as u32;
        }
        if e != 0 && (out.len() as c_int) < max {
            out.push(libc::epoll_event {
                events: e,
                u64: data,
            });
        }
    }
    let room = max - out.len() as c_int;
    let mut n = out.len();
    // SAFETY: the caller's array of `max` events; ours go first.
    unsafe {
        for (i, e) in out.iter().enumerate() {
            evs.add(i).write_unaligned(*e);
        }
    }
    if room > 0 && pfds.last().is_some_and(|p| p.revents & libc::POLLIN != 0) {
        // SAFETY: the rest of the caller's array.
        let k = real::epoll_wait(epfd, unsafe { evs.add(n) }, room, 0);
        if k > 0 {
            n += k as usize;
        }
    }
    n as c_int
}
