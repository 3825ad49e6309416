//! netmap's user API, in user space.
//!
//! - [`abi`]: the byte-exact netmap ABI (API 14): slots, rings, `netmap_if`,
//!   control requests and options, constants.
//! - [`ring`]: ring arithmetic and a checked view of a ring in shared memory.
//! - [`region`]: memory regions (sealed memfds) laid out as netmap's.
//! - [`csb`], [`sync`]: the CSB sync protocol between an application and the
//!   switch.
//! - [`portname`]: netmap's port-name grammar.
//! - [`sys`]: the small unsafe layer over memfd, mmap, eventfd, poll.

pub mod abi;
pub mod csb;
pub mod ctrl;
pub mod pod;
pub mod port;
pub mod portname;
pub mod region;
pub mod ring;
pub mod sync;
pub mod sys;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
