//! Unmodified netmap applications on valed: `libvale_netmap.so`, preloaded
//! (`LD_PRELOAD`), emulates `/dev/netmap` for a dynamically linked program.
//!
//! `open("/dev/netmap")` gives a descriptor that stands for one netmap
//! file; its `ioctl`s (NIOCCTRL, NIOCTXSYNC, NIOCRXSYNC and the legacy
//! NIOCREGIF, NIOCGINFO) become requests to valed and syncs of the rings
//! over the shared control block; `mmap` of it maps the port's region;
//! `poll` on it does netmap's implicit txsync and rxsync and sleeps on
//! valed's wake-ups; `close` drains and closes the registration. Every
//! other call, and every other descriptor, goes to the C library
//! untouched. The C headers are in `include/`.
//!
//! The same library is netmap's libnetmap for programs that link it
//! (`include/libnetmap.h`, `nmport_open` and friends, in `nmport`; the
//! `nmreq_*` helpers in `nmreq`; `libnetmap.pc.in` for pkg-config).
//!
//! `real` finds the C library's functions, `files` keeps the netmap files
//! (safe Rust over the netmap crate's client), `hooks` holds the exported
//! functions and `nmport` libnetmap's: the only code that reads the
//! application's pointers.

mod files;
mod hooks;
pub mod nmport;
pub mod nmreq;
mod real;
