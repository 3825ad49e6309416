//! libnetmap's `nmreq_*` helpers (`include/libnetmap.h`): building and
//! decoding request headers and bodies from a port spec, the memory id of
//! a port, and the request's option list. The spec grammar is the netmap
//! crate's (`netmap::portname`), the same that `nmport_open` and valed use.
//!
//! The `struct nmctx *` argument is accepted for libnetmap's signatures
//! and not read (this library has one context: errors go to `errno`).
//! Every pointer the program passes is read here and nowhere else.

use std::ffi::CStr;

use libc::{c_char, c_int, c_void};
use netmap::abi::*;
use netmap::portname;

use crate::files::{Errno, NmFile};

/// The most options a walk follows: more than any request valed takes
/// (`netmap::ctrl::MAX_OPTIONS`), so a list that loops ends the walk.
const WALK_MAX: usize = 64;

/// libnetmap's opaque context, never dereferenced.
#[repr(C)]
#[derive(Debug)]
pub struct Nmctx {
    _private: [u8; 0],
}

fn set_errno(e: Errno) {
    // SAFETY: errno is this thread's int.
    unsafe { *libc::__errno_location() = e };
}

fn fail(e: Errno) -> c_int {
    set_errno(e);
    -1
}

/// The string `*pp` points at, if both pointers are non-null and it is
/// UTF-8.
///
/// # Safety
/// `pp` is null or points to a pointer that is null or to a NUL-terminated
/// string.
unsafe fn spec_at<'a>(pp: *const *const c_char) -> Option<(&'a str, *const c_char)> {
    if pp.is_null() {
        return None;
    }
    // SAFETY: the caller's pointer to a pointer.
    let p = unsafe { *pp };
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller's NUL-terminated string.
    let s = unsafe { CStr::from_ptr(p) }.to_str().ok()?;
    Some((s, p))
}

/// `nmreq_header_init`: version, request type and body; the rest zero.
///
/// # Safety
/// `hdr` is null or points to a writable `struct nmreq_header`.
#[no_mangle]
pub unsafe extern "C" fn nmreq_header_init(hdr: *mut NmreqHeader, reqtype: u16, body: *mut c_void) {
    // SAFETY: the caller's header, or nothing.
    let Some(h) = (unsafe { hdr.as_mut() }) else {
        return;
    };
    *h = NmreqHeader {
        nr_version: NETMAP_API,
        nr_reqtype: reqtype,
        nr_body: body as u64,
        ..Default::default()
    };
}

/// `nmreq_header_decode`: the port name at `*ppspec` into `hdr->nr_name`
/// (the other fields unchanged), `*ppspec` moved past it; -1 and `EINVAL`
/// for a bad name, with nothing changed.
///
/// # Safety
/// `ppspec` points to a pointer to a NUL-terminated string; `hdr` to a
/// writable `struct nmreq_header`.
#[no_mangle]
pub unsafe extern "C" fn nmreq_header_decode(
    ppspec: *mut *const c_char,
    hdr: *mut NmreqHeader,
    _ctx: *mut Nmctx,
) -> c_int {
    // SAFETY: as the function's contract.
    let Some((s, p)) = (unsafe { spec_at(ppspec) }) else {
        return fail(libc::EINVAL);
    };
    // SAFETY: the caller's header, or nothing.
    let Some(h) = (unsafe { hdr.as_mut() }) else {
        return fail(libc::EINVAL);
    };
    let Ok((name, len)) = portname::decode_header(s) else {
        return fail(libc::EINVAL);
    };
    let nr = name.nr_name();
    if nr.len() >= h.nr_name.len() {
        return fail(libc::EINVAL);
    }
    h.nr_name = [0; NETMAP_REQ_IFNAMSIZ];
    h.nr_name[..nr.len()].copy_from_slice(nr.as_bytes());
    // SAFETY: `len` bytes of the string were read, so `p + len` is inside
    // it or at its NUL.
    unsafe { *ppspec = p.add(len) };
    0
}

/// `nmreq_register_decode`: the opening mode at `*pmode` (`-1`, `^`, `*`,
/// `/flags`, `@N`) into `reg`'s `nr_mode`, `nr_ringid`, `nr_flags` and
/// `nr_mem_id` (the last only if given), `*pmode` moved past it, stopping
/// at an `@` that starts options; -1 and `EINVAL` with nothing changed.
///
/// # Safety
/// `pmode` points to a pointer to a NUL-terminated string; `reg` to a
/// writable `struct nmreq_register`.
#[no_mangle]
pub unsafe extern "C" fn nmreq_register_decode(
    pmode: *mut *const c_char,
    reg: *mut NmreqRegister,
    _ctx: *mut Nmctx,
) -> c_int {
    // SAFETY: as the function's contract.
    let Some((s, p)) = (unsafe { spec_at(pmode) }) else {
        return fail(libc::EINVAL);
    };
    // SAFETY: the caller's body, or nothing.
    let Some(r) = (unsafe { reg.as_mut() }) else {
        return fail(libc::EINVAL);
    };
    let Ok(m) = portname::decode_register(s, false) else {
        return fail(libc::EINVAL);
    };
    r.nr_mode = m.rings.nr_mode();
    r.nr_ringid = m.rings.nr_ringid();
    r.nr_flags = m.flags.bits();
    if let Some(id) = m.mem_id {
        r.nr_mem_id = id.get();
    }
    // SAFETY: `m.len` bytes of the string were read.
    unsafe { *pmode = p.add(m.len) };
    0
}

/// `nmreq_get_mem_id`: the memory id of the port named at `*portname`
/// (asked of valed with `NETMAP_REQ_PORT_INFO_GET`), `*portname` moved
/// past the name; -1 with valed's errno (`ENXIO` for no such port).
///
/// # Safety
/// `portname` points to a pointer to a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn nmreq_get_mem_id(portname: *mut *const c_char, _ctx: *mut Nmctx) -> i32 {
    // SAFETY: as the function's contract.
    let Some((s, p)) = (unsafe { spec_at(portname) }) else {
        return fail(libc::EINVAL);
    };
    let Ok((name, len)) = portname::decode_header(s) else {
        return fail(libc::EINVAL);
    };
    match NmFile::info(name.nr_name().as_bytes()) {
        Ok(info) => {
            // SAFETY: `len` bytes of the string were read.
            unsafe { *portname = p.add(len) };
            i32::from(info.nr_mem_id)
        }
        Err(e) => fail(e),
    }
}

/// `nmreq_push_option`: `opt` first in `hdr`'s option list.
///
/// # Safety
/// `hdr` and `opt` are null or point to writable structures; `opt` stays
/// valid while it is on the list.
#[no_mangle]
pub unsafe extern "C" fn nmreq_push_option(hdr: *mut NmreqHeader, opt: *mut NmreqOption) {
    // SAFETY: the caller's structures, or nothing.
    let (Some(h), Some(o)) = (unsafe { hdr.as_mut() }, unsafe { opt.as_mut() }) else {
        return;
    };
    o.nro_next = h.nr_options;
    h.nr_options = opt as u64;
}

/// `nmreq_remove_option`: unlinks `opt` from `hdr`'s list, if it is there.
///
/// # Safety
/// `hdr` is null or points to a header whose option list is made of valid,
/// writable `struct nmreq_option`s ending in 0.
#[no_mangle]
pub unsafe extern "C" fn nmreq_remove_option(hdr: *mut NmreqHeader, opt: *mut NmreqOption) {
    // SAFETY: the caller's header, or nothing.
    let Some(h) = (unsafe { hdr.as_mut() }) else {
        return;
    };
    let target = opt as u64;
    let mut link: *mut u64 = &mut h.nr_options;
    // SAFETY: each link is the header's or a listed option's `nro_next`,
    // valid by the caller's promise; the walk ends at 0 or the target.
    unsafe {
        for _ in 0..WALK_MAX {
            if *link == 0 {
                return;
            }
            if *link == target {
                *link = (*opt).nro_next;
                (*opt).nro_next = 0;
                return;
            }
            link = &mut (*(*link as *mut NmreqOption)).nro_next;
        }
    }
}

/// `nmreq_find_option`: the first option of type `reqtype` on `hdr`'s
/// list, or null.
///
/// # Safety
/// As [`nmreq_remove_option`].
#[no_mangle]
pub unsafe extern "C" fn nmreq_find_option(
    hdr: *mut NmreqHeader,
    reqtype: u32,
) -> *mut NmreqOption {
    // SAFETY: the caller's header, or nothing.
    let Some(h) = (unsafe { hdr.as_ref() }) else {
        return std::ptr::null_mut();
    };
    let mut o = h.nr_options as *mut NmreqOption;
    for _ in 0..WALK_MAX {
        // SAFETY: a listed option, valid by the caller's promise.
        let Some(opt) = (unsafe { o.as_ref() }) else {
            break;
        };
        if opt.nro_reqtype == reqtype {
            return o;
        }
        o = opt.nro_next as *mut NmreqOption;
    }
    std::ptr::null_mut()
}

/// `nmreq_free_options`: empties `hdr`'s list, freeing each option with
/// `free`, as libnetmap does (its options come from `malloc`); at most
/// 64 of them.
///
/// # Safety
/// As [`nmreq_remove_option`], and every listed option came from `malloc`.
#[no_mangle]
pub unsafe extern "C" fn nmreq_free_options(hdr: *mut NmreqHeader) {
    // SAFETY: the caller's header, or nothing.
    let Some(h) = (unsafe { hdr.as_mut() }) else {
        return;
    };
    let mut o = h.nr_options as *mut NmreqOption;
    h.nr_options = 0;
    for _ in 0..WALK_MAX {
        // SAFETY: each listed option is valid and malloc'd (the contract);
        // its next pointer is read before it is freed.
        let Some(opt) = (unsafe { o.as_ref() }) else {
            break;
        };
        let next = opt.nro_next as *mut NmreqOption;
        // SAFETY: malloc'd by the contract, off the list, freed once (a
        // list that loops back would free twice: the walk stops if the
        // next one is this one).
        unsafe { libc::free(o.cast()) };
        if next == o {
            break;
        }
        o = next;
    }
}

/// `nmreq_option_name`: the name libnetmap gives option type `reqtype`
/// (the `@name:` of a port spec), or "unknown".
#[no_mangle]
pub extern "C" fn nmreq_option_name(reqtype: u32) -> *const c_char {
    let name: &'static CStr = match reqtype {
        NETMAP_REQ_OPT_EXTMEM => c"extmem",
        NETMAP_REQ_OPT_SYNC_KLOOP_EVENTFDS => c"sync-kloop-eventfds",
        NETMAP_REQ_OPT_CSB => c"csb",
        NETMAP_REQ_OPT_SYNC_KLOOP_MODE => c"sync-kloop-mode",
        NETMAP_REQ_OPT_OFFSETS => c"offsets",
        _ => c"unknown",
    };
    name.as_ptr()
}
