//! pkt-gen: netmap's traffic generator for valed's VALE ports.
//!
//! - [`args`]: the command line, netmap's options and meanings;
//! - [`frame`]: Ethernet/IPv4/UDP and IPv6/UDP frames with checksums;
//! - [`seq`]: `txseq`/`rxseq` numbering and the checker;
//! - [`stats`]: netmap's output lines and `--json`;
//! - [`run`]: opening ports and the tx/rx/ping/pong/txseq/rxseq loops;
//! - [`pcap`]: the frame of `-P`;
//! - [`os`]: CPU pinning and the stop signal.

pub mod args;
pub mod frame;
pub mod os;
pub mod pcap;
pub mod run;
pub mod seq;
pub mod stats;
