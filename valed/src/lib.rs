//! valed's modules, as a library for valed's binary, its tests and its
//! fuzz target. Not an API: see valed(8) for the daemon.
// The registry's types are not built for printing; they are public here
// only so the binary and the fuzz driver can reach them.
#![allow(missing_debug_implementations)]

pub mod fwd;
pub mod metrics;
pub mod server;
pub mod signal;
pub mod state;
pub mod vhost;

#[cfg(feature = "test-utils")]
pub mod fuzzing;
