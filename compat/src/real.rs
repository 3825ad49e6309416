//! The C library's own functions, found with `dlsym(RTLD_NEXT)`: what every
//! hook calls for a descriptor that is not a netmap file, and what the
//! netmap files themselves are made of.

use std::ffi::CStr;
use std::sync::OnceLock;

use libc::{c_char, c_int, c_ulong, c_void, mode_t, nfds_t, off_t, pollfd, size_t};

/// The next definition of `name` after this library, or None.
fn next(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name only looks
    // the symbol up.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

macro_rules! real {
    ($fn:ident, $sym:literal, ($($a:ident: $t:ty),*) -> $r:ty) => {
        /// The C library's function of that name.
        pub fn $fn($($a: $t),*) -> $r {
            type F = unsafe extern "C" fn($($t),*) -> $r;
            static P: OnceLock<usize> = OnceLock::new();
            let p = *P.get_or_init(|| next($sym).map_or(0, |p| p as usize));
            if p == 0 {
                // SAFETY: setting errno, a thread-local int.
                unsafe { *libc::__errno_location() = libc::ENOSYS };
                return -1 as _;
            }
            // SAFETY: `p` is the C library's definition of this very
            // function, whose prototype is the one declared here; the
            // caller's arguments are passed through unchanged.
            unsafe { std::mem::transmute::<usize, F>(p)($($a),*) }
        }
    };
}

real!(open, c"open", (path: *const c_char, flags: c_int, mode: mode_t) -> c_int);
real!(open64, c"open64", (path: *const c_char, flags: c_int, mode: mode_t) -> c_int);
real!(openat, c"openat", (dir: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int);
real!(openat64, c"openat64", (dir: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int);
real!(ioctl, c"ioctl", (fd: c_int, req: c_ulong, arg: *mut c_void) -> c_int);
real!(close, c"close", (fd: c_int) -> c_int);
real!(poll, c"poll", (fds: *mut pollfd, n: nfds_t, timeout: c_int) -> c_int);
real!(ppoll, c"ppoll", (fds: *mut pollfd, n: nfds_t, ts: *const libc::timespec, mask: *const libc::sigset_t) -> c_int);
real!(select, c"select", (n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, tv: *mut libc::timeval) -> c_int);
real!(pselect, c"pselect", (n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, ts: *const libc::timespec, mask: *const libc::sigset_t) -> c_int);
real!(dup, c"dup", (fd: c_int) -> c_int);
real!(dup2, c"dup2", (fd: c_int, to: c_int) -> c_int);
real!(dup3, c"dup3", (fd: c_int, to: c_int, flags: c_int) -> c_int);
real!(mmap, c"mmap", (addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: off_t) -> *mut c_void);
real!(mmap64, c"mmap64", (addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: off_t) -> *mut c_void);
real!(epoll_ctl, c"epoll_ctl", (epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int);
real!(epoll_wait, c"epoll_wait", (epfd: c_int, evs: *mut libc::epoll_event, max: c_int, timeout: c_int) -> c_int);
real!(epoll_pwait, c"epoll_pwait", (epfd: c_int, evs: *mut libc::epoll_event, max: c_int, timeout: c_int, mask: *const libc::sigset_t) -> c_int);
real!(fcntl, c"fcntl", (fd: c_int, cmd: c_int, arg: c_ulong) -> c_int);
real!(fcntl64, c"fcntl64", (fd: c_int, cmd: c_int, arg: c_ulong) -> c_int);
real!(open_2, c"__open_2", (path: *const c_char, flags: c_int) -> c_int);
real!(open64_2, c"__open64_2", (path: *const c_char, flags: c_int) -> c_int);
real!(poll_chk, c"__poll_chk", (fds: *mut pollfd, n: nfds_t, timeout: c_int, fdslen: size_t) -> c_int);
real!(ppoll_chk, c"__ppoll_chk", (fds: *mut pollfd, n: nfds_t, ts: *const libc::timespec, mask: *const libc::sigset_t, fdslen: size_t) -> c_int);
real!(close_range, c"close_range", (first: libc::c_uint, last: libc::c_uint, flags: c_int) -> c_int);

/// The C library's `closefrom` (it returns nothing).
pub fn closefrom(low: c_int) {
    type F = unsafe extern "C" fn(c_int);
    static P: OnceLock<usize> = OnceLock::new();
    let p = *P.get_or_init(|| next(c"closefrom").map_or(0, |p| p as usize));
    if p != 0 {
        // SAFETY: the C library's closefrom, of this prototype.
        unsafe { std::mem::transmute::<usize, F>(p)(low) }
    }
}
