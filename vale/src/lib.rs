//! The VALE switch engine, without sockets or threads.
//!
//! Ports are a [`Source`] of frames and a [`Sink`] for frames; the engine
//! ([`Switch::forward`]) takes a batch of up to [`MAX_BATCH`] frames from a
//! source, looks each one up ([`Lookup`], by default the [`LearningBridge`]),
//! groups them by destination and, per destination, copies them in and
//! publishes once. Drops are counted per port and per [`DropReason`].
//!
//! Several threads may forward at once: each destination is locked for the
//! batch (in port order, so threads never deadlock), the lookup once per
//! batch.
//!
//! [`ab`] is for measuring, not forwarding: two variants of a change in
//! one build (feature `ab`), for `scripts/bench-ab.sh`.

pub mod ab;
pub mod flow;
pub mod frag;
pub mod lookup;
pub mod offload;
pub mod port;
pub mod ring_port;
pub mod switch;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;

pub use frag::{DstBuf, Frag};
pub use lookup::{
    BridgeConfig, Dest, FrameInfo, LearningBridge, Lookup, LookupStats, DEFAULT_PORT_MAC_LIMIT,
};
pub use port::{
    reader_takes, Arm, DropReason, FrameCursor, FuseRun, Fused, Fuser, PortConfig, PortCounters,
    PortId, PortStats, Push, Sink, Source, DROP_REASONS, FUSE_HEAD,
};
pub use switch::{
    Forwarded, MonitorId, Scratch, SharedSink, Switch, SwitchError, BACKPRESSURE_HOLD, MAX_BATCH,
    MAX_FRAGS, MAX_MONITORS, MAX_PORTS, MONITOR_RX, MONITOR_TX,
};
