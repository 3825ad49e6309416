//! The forwarding engine: take a batch from a source, look up every frame,
//! group by destination, then per destination copy and publish once. A
//! source that can (a guest's TX queue) is first offered a fused run: one
//! lookup, then it copies unicast frames into the destination itself
//! until one does not qualify ([`Source::fuse`]).

use std::cell::OnceCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard};
use std::time::Instant;

use netmap::abi::{NS_MOREFRAG, NS_NO_LEARN, NS_PORT_MASK, NS_PORT_SHIFT};
use smallvec::SmallVec;
use thiserror::Error;

use crate::frag::Frag;
use crate::lookup::{Dest, FrameInfo, LearningBridge, Lookup};
use crate::offload;
use crate::port::{
    reader_takes, Arm, DropReason, FuseRun, Fused, Fuser, PortConfig, PortCounters, PortId,
    PortStats, Push, Sink, Source, FUSE_HEAD,
};

/// Most frames taken from a source at once.
pub const MAX_BATCH: usize = 1024;
/// Most fragments in one frame.
pub const MAX_FRAGS: usize = 64;
/// Most ports on one switch (netmap: 254 including the host port).
pub const MAX_PORTS: usize = 254;
/// How long a backpressure port may hold its senders without making room.
/// Past it the port counts as stalled: senders stop waiting for it, and
/// frames for it are dropped (`DstFull`) until it has room again. This
/// bounds what a reader that never reads can do to a sender's traffic to
/// every other port (see `valed.8`, SECURITY).
pub const BACKPRESSURE_HOLD: std::time::Duration = std::time::Duration::from_millis(250);

const ETH_HLEN: usize = 14;
/// Offset of `virtio_net_hdr.gso_type` (values in [`offload`]).
const VNET_GSO_TYPE: usize = 1;

/// Errors of switch management.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SwitchError {
    /// Every port index is taken.
    #[error("switch {0}: all {MAX_PORTS} ports in use")]
    Full(String),
    /// A port of that name exists.
    #[error("switch {switch}: port {port} exists")]
    Exists {
        /// Switch name.
        switch: String,
        /// Port name.
        port: String,
    },
    /// No such port.
    #[error("switch {switch}: no port {port}")]
    NoPort {
        /// Switch name.
        switch: String,
        /// Port name or index.
        port: String,
    },
    /// A port has [`MAX_MONITORS`] monitors already.
    #[error("switch {switch}: port {port} has {MAX_MONITORS} monitors already")]
    TooManyMonitors {
        /// Switch name.
        switch: String,
        /// Port index.
        port: PortId,
    },
    /// A header length the engine cannot convert.
    #[error("port {port}: vnet header length {len} (0, 10 or 12)")]
    BadHdrLen {
        /// Port name.
        port: String,
        /// Length asked for.
        len: u16,
    },
}

/// One port as the switch holds it. Cloning shares its sink, counters
/// and hold clock: a reconfigured slot is the same port.
#[derive(Clone)]
struct PortSlot {
    name: String,
    cfg: PortConfig,
    sink: SharedSink,
    counters: Arc<PortCounters>,
    /// When a sender last found this backpressure port without room and
    /// it has not made room since (`hold_clock` + 1; 0: not holding).
    /// Shared across reconfigurations, like the counters.
    holding_since: Arc<AtomicU64>,
    /// Monitors of this port (netmap's `/r`, `/t`): usually none, and
    /// then the only cost to the port is testing this for emptiness once
    /// per batch.
    monitors: Vec<Monitor>,
}

/// Copy the frames a port sends (`NR_MONITOR_TX`, netmap's `/t`).
pub const MONITOR_TX: u8 = 1;
/// Copy the frames a port receives (`NR_MONITOR_RX`, netmap's `/r`).
pub const MONITOR_RX: u8 = 2;

/// Most monitors of one port: each copies every frame the port sends or
/// receives on the sender's forwarding thread, so their number is bounded.
pub const MAX_MONITORS: usize = 8;

/// Names one monitor among a switch's.
pub type MonitorId = u64;

/// A copy monitor: a sink that gets a copy of every frame crossing its
/// port in the chosen directions, as the port's rings hold it (its vnet
/// header included). It never holds the port: what does not fit is
/// dropped.
#[derive(Clone)]
struct Monitor {
    id: MonitorId,
    dirs: u8,
    sink: SharedSink,
}

/// Nanoseconds on a process-wide monotonic clock, read only on the path
/// where a backpressure port has no room.
fn hold_clock() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

impl PortSlot {
    /// A sender found no room: true if the port has held senders for
    /// longer than [`BACKPRESSURE_HOLD`] (it is then stalled, and not
    /// waited for).
    fn stalled(&self) -> bool {
        let now = hold_clock() + 1;
        match self.holding_since.load(Ordering::Relaxed) {
            0 => {
                self.holding_since.store(now, Ordering::Relaxed);
                false
            }
            t => now.saturating_sub(t) > BACKPRESSURE_HOLD.as_nanos() as u64,
        }
    }

    /// The port took a frame: it reads again.
    fn made_room(&self) {
        if self.holding_since.load(Ordering::Relaxed) != 0 {
            self.holding_since.store(0, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for PortSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortSlot")
            .field("name", &self.name)
            .field("cfg", &self.cfg)
            .finish()
    }
}

/// A destination locked for the batch.
type LockedDst<'a> = (PortId, &'a PortSlot, MutexGuard<'a, dyn Sink + 'static>);

/// A port's sink as the switch holds it: the switch locks it once per
/// batch. Its owner may keep a clone, to change the sink between batches
/// under the same lock (a client binding or unbinding RX rings).
pub type SharedSink = Arc<Mutex<dyn Sink>>;

/// Per-frame state of a batch.
#[derive(Debug, Clone, Copy)]
struct Frame {
    first: u32,
    nfrags: u16,
    /// GSO type from the frame's virtio-net header (0: none).
    gso: u8,
    /// The frame's virtio-net header, copied once (zeros without one).
    vh: [u8; 12],
    len: u32,
    dest: Dest,
    drop: Option<DropReason>,
}

impl Frame {
    /// Frame of fragments `first..first + nfrags`, `len` bytes, before
    /// pass 1 has read its headers; `bad` marks a broken chain.
    #[inline(always)]
    fn split(first: usize, nfrags: usize, len: u32, bad: bool) -> Frame {
        Frame {
            first: first as u32,
            nfrags: nfrags as u16,
            gso: offload::GSO_NONE,
            vh: [0; 12],
            len,
            dest: Dest::Drop,
            drop: bad.then_some(DropReason::BadChain),
        }
    }
}

/// Reusable per-thread buffers, so a batch allocates nothing.
#[derive(Debug)]
pub struct Scratch {
    frags: Vec<Frag<'static>>,
    frames: Vec<Frame>,
    /// Frame indexes per destination port.
    lists: Vec<Vec<u32>>,
    touched: Vec<PortId>,
    /// Ports a flood reaches in this batch.
    active: Vec<PortId>,
    hdr: [u8; 64],
    /// A whole frame, for software segmentation and checksum.
    soft: Vec<u8>,
    soft_scratch: Vec<u8>,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            frags: Vec::with_capacity(MAX_BATCH * 2),
            frames: Vec::with_capacity(MAX_BATCH),
            lists: (0..MAX_PORTS).map(|_| Vec::new()).collect(),
            touched: Vec::with_capacity(MAX_PORTS),
            active: Vec::with_capacity(MAX_PORTS),
            hdr: [0; 64],
            soft: Vec::new(),
            soft_scratch: Vec::new(),
        }
    }
}

/// What one call to [`Switch::forward`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded {
    /// Frames taken from the source and completed.
    pub frames: usize,
    /// Frames held back by a backpressure destination.
    pub held: usize,
    /// Copies made (a flooded frame counts once per destination).
    pub copies: usize,
    /// The backpressure port that held the rest of the batch, if any.
    pub blocked_on: Option<PortId>,
}

/// A VALE switch: up to [`MAX_PORTS`] ports and a lookup.
pub struct Switch<L: Lookup = LearningBridge> {
    name: String,
    ports: RwLock<Vec<Option<Arc<PortSlot>>>>,
    lookup: Mutex<L>,
    next_monitor: AtomicU64,
    /// Sources that can are asked for fused runs (see [`Source::fuse`]).
    fused: AtomicBool,
    /// Frames fused runs moved.
    fused_frames: AtomicU64,
}

impl<L: Lookup> std::fmt::Debug for Switch<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switch")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another forwarding thread leaves plain data behind; keep
    // forwarding rather than cascading the panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Switch<LearningBridge> {
    /// A switch named `name` (e.g. `vale0`) with the default learning bridge.
    pub fn new(name: &str) -> Self {
        Switch::with_lookup(name, LearningBridge::default())
    }
}

impl<L: Lookup> Switch<L> {
    /// A switch with a custom lookup.
    pub fn with_lookup(name: &str, lookup: L) -> Self {
        Switch {
            name: name.to_string(),
            ports: RwLock::new(vec![None; MAX_PORTS]),
            lookup: Mutex::new(lookup),
            next_monitor: AtomicU64::new(1),
            fused: AtomicBool::new(true),
            fused_frames: AtomicU64::new(0),
        }
    }

    /// Frames moved by fused runs since the switch was made (each also
    /// counted in its ports' counters).
    pub fn fused_frames(&self) -> u64 {
        self.fused_frames.load(Ordering::Relaxed)
    }

    /// Whether sources that can move a run of frames into their
    /// destination themselves are asked to ([`Source::fuse`]; on by
    /// default). Off, every frame takes the general path: for tests and
    /// comparisons, as the two must forward alike.
    pub fn set_fused(&self, on: bool) {
        self.fused.store(on, Ordering::Relaxed);
    }

    /// The switch's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Attaches a port; returns its index (the lowest free one, as netmap).
    pub fn attach<S: Sink + 'static>(
        &self,
        name: &str,
        cfg: PortConfig,
        sink: S,
    ) -> Result<PortId, SwitchError> {
        self.attach_shared(name, cfg, Arc::new(Mutex::new(sink)))
    }

    /// Attaches a port whose sink its owner shares (see [`SharedSink`]).
    pub fn attach_shared(
        &self,
        name: &str,
        cfg: PortConfig,
        sink: SharedSink,
    ) -> Result<PortId, SwitchError> {
        if ![0, 10, 12].contains(&cfg.vnet_hdr_len) {
            return Err(SwitchError::BadHdrLen {
                port: name.into(),
                len: cfg.vnet_hdr_len,
            });
        }
        let mut ports = self.ports.write().unwrap_or_else(|e| e.into_inner());
        if ports.iter().flatten().any(|p| p.name == name) {
            return Err(SwitchError::Exists {
                switch: self.name.clone(),
                port: name.into(),
            });
        }
        let i = ports
            .iter()
            .position(Option::is_none)
            .ok_or_else(|| SwitchError::Full(self.name.clone()))?;
        ports[i] = Some(Arc::new(PortSlot {
            name: name.into(),
            cfg,
            sink,
            counters: Arc::default(),
            holding_since: Arc::default(),
            monitors: Vec::new(),
        }));
        Ok(i as PortId)
    }

    /// Changes port `id`'s options (e.g. its vnet header length), keeping
    /// its sink, counters and index. Batches already running finish with
    /// the old options.
    pub fn reconfigure(&self, id: PortId, cfg: PortConfig) -> Result<(), SwitchError> {
        if ![0, 10, 12].contains(&cfg.vnet_hdr_len) {
            return Err(SwitchError::BadHdrLen {
                port: id.to_string(),
                len: cfg.vnet_hdr_len,
            });
        }
        self.replace_slot(id, |old| Ok(PortSlot { cfg, ..old.clone() }))
    }

    /// Replaces port `id`'s slot by `f` of it: batches already running
    /// finish with the old one.
    fn replace_slot(
        &self,
        id: PortId,
        f: impl FnOnce(&PortSlot) -> Result<PortSlot, SwitchError>,
    ) -> Result<(), SwitchError> {
        let mut ports = self.ports.write().unwrap_or_else(|e| e.into_inner());
        let Some(Some(old)) = ports.get(id as usize) else {
            return Err(SwitchError::NoPort {
                switch: self.name.clone(),
                port: id.to_string(),
            });
        };
        let new = f(old)?;
        ports[id as usize] = Some(Arc::new(new));
        Ok(())
    }

    /// Adds a copy monitor of port `id` for `dirs` ([`MONITOR_TX`],
    /// [`MONITOR_RX`] or both): from the next batch on, `sink` gets a copy
    /// of every frame the port sends (as fetched from it) or receives (as
    /// pushed to it), dropped where the monitor has no room. The monitor
    /// goes with [`remove_monitor`](Self::remove_monitor) or the port.
    pub fn add_monitor(
        &self,
        id: PortId,
        dirs: u8,
        sink: SharedSink,
    ) -> Result<MonitorId, SwitchError> {
        let mid = self.next_monitor.fetch_add(1, Ordering::Relaxed);
        self.replace_slot(id, |old| {
            if old.monitors.len() >= MAX_MONITORS {
                return Err(SwitchError::TooManyMonitors {
                    switch: self.name.clone(),
                    port: id,
                });
            }
            let mut new = old.clone();
            new.monitors.push(Monitor {
                id: mid,
                dirs: dirs & (MONITOR_TX | MONITOR_RX),
                sink,
            });
            Ok(new)
        })?;
        Ok(mid)
    }

    /// Removes monitor `mid` of port `id` (nothing if either is gone).
    /// Batches already running may still copy into it.
    pub fn remove_monitor(&self, id: PortId, mid: MonitorId) {
        let _ = self.replace_slot(id, |old| {
            let mut new = old.clone();
            new.monitors.retain(|m| m.id != mid);
            Ok(new)
        });
    }

    /// Asks port `id`'s reader for a wake-up when it frees room (see
    /// [`Sink::arm`]).
    pub fn arm_port(&self, id: PortId) -> Arm {
        let ports = self.ports.read().unwrap_or_else(|e| e.into_inner());
        match ports.get(id as usize) {
            Some(Some(p)) => lock(&p.sink).arm(),
            _ => Arm::Never,
        }
    }

    /// Withdraws [`arm_port`](Self::arm_port).
    pub fn disarm_port(&self, id: PortId) {
        let ports = self.ports.read().unwrap_or_else(|e| e.into_inner());
        if let Some(Some(p)) = ports.get(id as usize) {
            lock(&p.sink).disarm();
        }
    }

    /// Options of port `id`.
    pub fn config(&self, id: PortId) -> Option<PortConfig> {
        let ports = self.ports.read().unwrap_or_else(|e| e.into_inner());
        ports.get(id as usize)?.as_ref().map(|p| p.cfg)
    }

    /// Detaches port `id`; its MACs are forgotten.
    pub fn detach(&self, id: PortId) -> Result<(), SwitchError> {
        let mut ports = self.ports.write().unwrap_or_else(|e| e.into_inner());
        match ports.get_mut(id as usize) {
            Some(p @ Some(_)) => *p = None,
            _ => {
                return Err(SwitchError::NoPort {
                    switch: self.name.clone(),
                    port: id.to_string(),
                })
            }
        }
        drop(ports);
        lock(&self.lookup).port_removed(id);
        Ok(())
    }

    /// Index of the port named `name`.
    pub fn port_id(&self, name: &str) -> Option<PortId> {
        let ports = self.ports.read().unwrap_or_else(|e| e.into_inner());
        ports
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.name == name))
            .map(|i| i as PortId)
    }

    /// (index, name) of every port.
    pub fn ports(&self) -> Vec<(PortId, String)> {
        let ports = self.ports.read().unwrap_or_else(|e| e.into_inner());
        ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i as PortId, p.name.clone())))
            .collect()
    }

    /// Counters of port `id`.
    pub fn stats(&self, id: PortId) -> Option<PortStats> {
        let ports = self.ports.read().unwrap_or_else(|e| e.into_inner());
        ports
            .get(id as usize)?
            .as_ref()
            .map(|p| p.counters.snapshot())
    }

    /// Runs `f` on the lookup (configuration, counters).
    pub fn with_lookup_mut<R>(&self, f: impl FnOnce(&mut L) -> R) -> R {
        f(&mut lock(&self.lookup))
    }

    /// Forwards one batch from port `src`'s `source`. `now` is a coarse
    /// clock in seconds for MAC aging. Returns what was done; the source has
    /// been completed for `frames` frames.
    pub fn forward(
        &self,
        src: PortId,
        source: &mut dyn Source,
        sc: &mut Scratch,
        now: u32,
    ) -> Forwarded {
        if !source.fuses() || !self.fused.load(Ordering::Relaxed) {
            return self.forward_batch(src, source, sc, now, None);
        }
        let (run, first) = self.forward_fused(src, source, now);
        if run.empty || (run.frames > 0 && !run.rest) {
            return Forwarded {
                frames: run.frames,
                copies: run.frames,
                ..Default::default()
            };
        }
        // The run stopped at a frame it could not take (or never
        // started): a batch the general way, reusing the decision made
        // for its first frame if the run made one and did not take it.
        let mut f = self.forward_batch(src, source, sc, now, first);
        f.frames += run.frames;
        f.copies += run.frames;
        f
    }

    /// A fused run from `src`, if its source offers one: the run, and the
    /// decision made for the frame it stopped at if that is the frame the
    /// run started at (MACs and answer).
    fn forward_fused(
        &self,
        src: PortId,
        source: &mut dyn Source,
        now: u32,
    ) -> (Fused, Option<Decided>) {
        // The port table is read only once the source has a frame: a poll
        // that finds nothing costs no locked instruction here.
        let ports = OnceCell::new();
        let mut fuser = EngineFuser {
            table: &self.ports,
            ports: &ports,
            lookup: &self.lookup,
            src,
            now,
            first: None,
            dst: None,
        };
        let run = source.fuse(&mut fuser);
        if let Some((slot, mut sink)) = fuser.dst.take() {
            // Also with nothing moved: the sink may hold buffers it took
            // for the run until it publishes.
            sink.publish();
            PortCounters::add(&slot.counters.out_packets, run.frames as u64);
            PortCounters::add(&slot.counters.out_bytes, run.bytes);
        }
        // The sender's chains go back once the reader has its frames:
        // the reader waits on them, the sender does not.
        source.complete(run.frames);
        if run.frames > 0 {
            PortCounters::add(&self.fused_frames, run.frames as u64);
            if let Some(sp) = ports.get().and_then(|p| p.get(src as usize)?.as_deref()) {
                PortCounters::add(&sp.counters.in_packets, run.frames as u64);
                PortCounters::add(&sp.counters.in_bytes, run.bytes);
            }
        }
        (run, if run.frames == 0 { fuser.first } else { None })
    }

    /// Forwards one batch the general way; `first`, a decision already
    /// made for the frame at the source's front, is used for the batch's
    /// first frame if it starts with those MACs.
    fn forward_batch(
        &self,
        src: PortId,
        source: &mut dyn Source,
        sc: &mut Scratch,
        now: u32,
        first: Option<Decided>,
    ) -> Forwarded {
        sc.frags.clear();
        source.fetch(&mut sc.frags, MAX_BATCH);
        let nframes = split_frames(&sc.frags, &mut sc.frames);
        if nframes == 0 {
            source.complete(0);
            return Forwarded::default();
        }
        let ports = self.ports.read().unwrap_or_else(|e| e.into_inner());
        let Some(sp) = ports.get(src as usize).and_then(|p| p.clone()) else {
            // The port left between fetch and forward: the batch goes nowhere.
            source.complete(nframes);
            return Forwarded {
                frames: nframes,
                ..Default::default()
            };
        };
        let src_hdr = sp.cfg.vnet_hdr_len as usize;

        // Pass 1: check and look up every frame, under one lock per batch.
        {
            let mut lk = lock(&self.lookup);
            for (fi, fr) in sc.frames.iter_mut().enumerate() {
                if fr.drop.is_some() {
                    continue;
                }
                let frags = &sc.frags[fr.first as usize..fr.first as usize + fr.nfrags as usize];
                // One fragment (every linear frame) without the loops.
                let (bad, empty) = match frags {
                    [f] => (f.is_bad(), f.is_empty()),
                    _ => (
                        frags.iter().any(Frag::is_bad),
                        frags.iter().any(Frag::is_empty),
                    ),
                };
                if bad {
                    fr.drop = Some(DropReason::BadSlot);
                    continue;
                }
                if empty {
                    fr.drop = Some(DropReason::EmptyFrag);
                    continue;
                }
                let need = src_hdr + ETH_HLEN;
                if (fr.len as usize) < need {
                    fr.drop = Some(DropReason::Runt);
                    continue;
                }
                // Copy the headers once; never re-read them from the source.
                gather_head(frags, &mut sc.hdr, need);
                if let (12, Some(vh)) = (src_hdr, sc.hdr.first_chunk::<12>()) {
                    // A VM port's: one fixed-size move, not a libc call
                    // of a length the compiler cannot see.
                    fr.vh = *vh;
                } else {
                    fr.vh[..src_hdr].copy_from_slice(&sc.hdr[..src_hdr]);
                }
                fr.gso = if src_hdr > 0 {
                    sc.hdr[VNET_GSO_TYPE]
                } else {
                    offload::GSO_NONE
                };
                let eth = &sc.hdr[src_hdr..need];
                let flags = frags[0].flags();
                let port_byte = ((flags & NS_PORT_MASK) >> NS_PORT_SHIFT) as u8;
                fr.dest = if sp.cfg.port_mask_override && port_byte != 0 {
                    match port_byte {
                        0xff => Dest::Flood,
                        b => Dest::Port(b as PortId - 1),
                    }
                } else {
                    let mut info = FrameInfo {
                        dst: [0; 6],
                        src: [0; 6],
                        src_port: src,
                        flags,
                        learn: flags & NS_NO_LEARN == 0,
                    };
                    info.dst.copy_from_slice(&eth[0..6]);
                    info.src.copy_from_slice(&eth[6..12]);
                    match first {
                        // Asked once already (a fused run that did not
                        // take the frame): not asked, or counted, twice,
                        // if it is that frame and the port it named is
                        // still the one it was.
                        Some(d) if fi == 0 && eth[..12] == d.macs && same_port(&ports, &d) => {
                            d.dest
                        }
                        _ => lk.lookup(&info, now),
                    }
                };
            }
        }

        // Group frame indexes by destination, in source order. Flooding
        // walks only the ports that exist, not all MAX_PORTS indexes; the
        // list of those is made at the batch's first flood (a unicast
        // batch never scans the port table).
        sc.active.clear();
        let mut have_active = false;
        for &p in &sc.touched {
            sc.lists[p as usize].clear();
        }
        sc.touched.clear();
        for (fi, fr) in sc.frames.iter_mut().enumerate() {
            if fr.drop.is_some() {
                continue;
            }
            match fr.dest {
                Dest::Drop => fr.drop = Some(DropReason::NoDst),
                Dest::Port(p) => {
                    if (p as usize) < MAX_PORTS && p != src && ports[p as usize].is_some() {
                        push_list(&mut sc.lists, &mut sc.touched, p, fi as u32);
                    } else {
                        fr.drop = Some(DropReason::NoDst);
                    }
                }
                Dest::Flood => {
                    if !have_active {
                        have_active = true;
                        sc.active.extend(
                            ports
                                .iter()
                                .enumerate()
                                .filter(|(p, s)| s.is_some() && *p != src as usize)
                                .map(|(p, _)| p as PortId),
                        );
                    }
                    if sc.active.is_empty() {
                        fr.drop = Some(DropReason::NoDst);
                    }
                    for &p in &sc.active {
                        push_list(&mut sc.lists, &mut sc.touched, p, fi as u32);
                    }
                }
            }
        }
        sc.touched.sort_unstable();

        // Lock every destination in ascending order (threads never deadlock),
        // then let backpressure destinations cut the batch short.
        // Inline for the common few destinations: no heap allocation per
        // batch (the guards borrow this batch's port table, so no buffer
        // can be kept in `Scratch` across batches).
        let mut guards: SmallVec<[LockedDst<'_>; 4]> = sc
            .touched
            .iter()
            .filter_map(|&p| {
                ports[p as usize]
                    .as_deref()
                    .map(|slot| (p, slot, lock(&slot.sink)))
            })
            .collect();
        // A port that has held senders past BACKPRESSURE_HOLD without
        // making room is not waited for: its frames are dropped instead.
        let mut limit = nframes;
        let mut blocked_on = None;
        for (p, slot, sink) in guards.iter_mut() {
            if !slot.cfg.backpressure {
                continue;
            }
            let dst_hdr = slot.cfg.vnet_hdr_len as usize;
            let mut room = sink.room();
            let mut fit = 0;
            for &fi in sc.lists[*p as usize]
                .iter()
                .take_while(|&&fi| (fi as usize) < limit)
            {
                let need = sink.slots_for(sc.frames[fi as usize].len as usize - src_hdr + dst_hdr);
                if need > sink.capacity() {
                    continue; // can never fit: dropped as DstFull, not held
                }
                if need > room {
                    if fit > 0 {
                        slot.made_room();
                    }
                    if !slot.stalled() {
                        limit = fi as usize;
                        blocked_on = Some(*p);
                    }
                    break;
                }
                room -= need;
                fit += 1;
            }
            if fit > 0 && blocked_on != Some(*p) {
                slot.made_room();
            }
        }

        // Pass 2: copy into each destination, then publish once.
        let mut copies = 0;
        for (p, slot, sink) in guards.iter_mut() {
            let dst_hdr = slot.cfg.vnet_hdr_len as usize;
            let dst_off = if dst_hdr > 0 {
                sink.offloads().unwrap_or(slot.cfg.offloads)
            } else {
                0
            };
            let (mut out, mut out_bytes, mut full, mut offload, mut bad, mut soft) =
                (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
            // RX monitors get what the port got, as its rings hold it.
            let mut mons = rx_monitors(&slot.monitors);
            for &fi in sc.lists[*p as usize]
                .iter()
                .take_while(|&&fi| (fi as usize) < limit)
            {
                let fr = sc.frames[fi as usize];
                let frags = &sc.frags[fr.first as usize..fr.first as usize + fr.nfrags as usize];
                let csum = if src_hdr > 0 { fr.vh[0] } else { 0 };
                if !reader_takes(csum, fr.gso, dst_off) {
                    // The reader lacks what the frame needs: segment and
                    // checksum it here, from one copy of the frame.
                    soft += 1;
                    match soft_offload(
                        &mut **sink,
                        frags,
                        src_hdr,
                        dst_hdr,
                        &fr.vh,
                        &mut sc.soft,
                        &mut sc.soft_scratch,
                        &mut mons,
                    ) {
                        Ok(r) => {
                            out += r.done;
                            out_bytes += r.bytes;
                            full += r.full;
                            bad += r.bad;
                        }
                        Err(_) => offload += 1,
                    }
                    continue;
                }
                // The header goes out from the copy made in pass 1 (10 <->
                // 12 bytes: num_buffers is the reader's), never re-read
                // from the source, whose owner may be rewriting it.
                let (skip, hdr): (usize, &[u8]) = (src_hdr, &fr.vh[..dst_hdr]);
                match sink.push(frags, skip, hdr) {
                    Push::Done => {
                        out += 1;
                        out_bytes += (fr.len as usize - skip + hdr.len()) as u64;
                        if !mons.is_empty() {
                            tap(&mut mons, frags, skip, hdr);
                        }
                    }
                    Push::Full => full += 1,
                    Push::BadSlot => bad += 1,
                }
            }
            if out + full + bad > 0 {
                // Also after failures: a sink may hold what it reserved
                // for the batch until it publishes.
                sink.publish();
            }
            if out > 0 {
                for m in mons.iter_mut() {
                    m.publish();
                }
            }
            copies += out as usize;
            PortCounters::add(&slot.counters.out_packets, out);
            PortCounters::add(&slot.counters.out_bytes, out_bytes);
            PortCounters::add(&slot.counters.soft_offload, soft);
            slot.counters.count_drop(DropReason::DstFull, full);
            slot.counters.count_drop(DropReason::Offload, offload);
            slot.counters.count_drop(DropReason::BadSlot, bad);
        }
        drop(guards);

        // Source-side counters, for the frames actually consumed.
        let done = &sc.frames[..limit];
        PortCounters::add(&sp.counters.in_packets, limit as u64);
        PortCounters::add(
            &sp.counters.in_bytes,
            done.iter().map(|f| f.len as u64).sum(),
        );
        for f in done {
            if let Some(r) = f.drop {
                sp.counters.count_drop(r, 1);
            }
        }
        if !sp.monitors.is_empty() {
            tap_sent(&sp.monitors, done, &sc.frags);
        }
        source.complete(limit);
        Forwarded {
            frames: limit,
            held: nframes - limit,
            copies,
            blocked_on,
        }
    }
}

/// Locks the RX monitors among `mons`, for one batch.
fn rx_monitors(mons: &[Monitor]) -> Vec<MutexGuard<'_, dyn Sink + 'static>> {
    mons.iter()
        .filter(|m| m.dirs & MONITOR_RX != 0)
        .map(|m| lock(&m.sink))
        .collect()
}

/// Copies one frame into monitors; what does not fit is dropped. Out of
/// line, so the loop of a port without monitors keeps only the test.
#[cold]
#[inline(never)]
fn tap(mons: &mut [MutexGuard<'_, dyn Sink + 'static>], frags: &[Frag], skip: usize, hdr: &[u8]) {
    for m in mons.iter_mut() {
        let _ = m.push(frags, skip, hdr);
    }
}

/// Copies the frames a port sent (the batch's first `frames`, as fetched
/// from it) into its TX monitors. Frames whose slots were unreadable are
/// not copied: there is nothing to copy.
fn tap_sent(mons: &[Monitor], frames: &[Frame], frags: &[Frag]) {
    for m in mons.iter().filter(|m| m.dirs & MONITOR_TX != 0) {
        let mut sink = lock(&m.sink);
        let mut pushed = false;
        for fr in frames {
            if matches!(
                fr.drop,
                Some(DropReason::BadSlot | DropReason::BadChain | DropReason::EmptyFrag)
            ) {
                continue;
            }
            let f = &frags[fr.first as usize..fr.first as usize + fr.nfrags as usize];
            pushed |= sink.push(f, 0, &[]) == Push::Done;
        }
        if pushed {
            sink.publish();
        }
    }
}

fn push_list(lists: &mut [Vec<u32>], touched: &mut Vec<PortId>, p: PortId, fi: u32) {
    let l = &mut lists[p as usize];
    if l.is_empty() {
        touched.push(p);
    }
    l.push(fi);
}

/// What software offload pushed.
#[derive(Debug, Default)]
struct SoftResult {
    done: u64,
    bytes: u64,
    full: u64,
    bad: u64,
}

/// Copies the frame out once, completes its checksum or cuts it into
/// wire-sized segments, and pushes the result with a plain header.
#[allow(clippy::too_many_arguments)]
fn soft_offload(
    sink: &mut dyn Sink,
    frags: &[Frag],
    src_hdr: usize,
    dst_hdr: usize,
    vh: &[u8; 12],
    buf: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    mons: &mut [MutexGuard<'_, dyn Sink + 'static>],
) -> Result<SoftResult, offload::OffloadError> {
    let total: usize = frags.iter().map(|f| f.len() as usize).sum();
    buf.clear();
    buf.resize(total, 0);
    gather(frags, buf);
    buf.drain(..src_hdr.min(total));
    let h = offload::VnetHdr::parse(&vh[..src_hdr]);
    // Segments and completed frames carry valid checksums: the reader gets
    // a zero header (no GSO, no partial checksum).
    let zero = [0u8; 12];
    let out_hdr = &zero[..dst_hdr];
    let mut r = SoftResult::default();
    let mut push = |sink: &mut dyn Sink, data: &[u8], r: &mut SoftResult| {
        let mut parts = [Frag::bad(0); 2];
        let n = data.len().div_ceil(u16::MAX as usize).clamp(1, 2);
        for (i, c) in data.chunks(u16::MAX as usize).take(2).enumerate() {
            let more = if i + 1 < n { NS_MOREFRAG } else { 0 };
            parts[i] = Frag::from_slice(c, more);
        }
        match sink.push(&parts[..n], 0, out_hdr) {
            Push::Done => {
                r.done += 1;
                r.bytes += (data.len() + dst_hdr) as u64;
                for m in mons.iter_mut() {
                    let _ = m.push(&parts[..n], 0, out_hdr);
                }
            }
            Push::Full => r.full += 1,
            Push::BadSlot => r.bad += 1,
        }
    };
    if h.gso() == offload::GSO_NONE {
        offload::complete_csum(&h, buf)?;
        push(sink, buf, &mut r);
    } else {
        offload::segment(&h, buf, scratch, |seg| push(sink, seg, &mut r))?;
    }
    Ok(r)
}

/// A decision a fused run made for the frame at the source's front and
/// did not act on: the frame's MACs, the answer, and the port slot a
/// `Dest::Port` answer named (its address: the port may have been
/// replaced before the general batch that uses the answer).
#[derive(Debug, Clone, Copy)]
struct Decided {
    macs: [u8; 12],
    dest: Dest,
    slot: usize,
}

/// The engine's answers to a source's fused run: one lookup, and the
/// destination's sink locked for the run.
struct EngineFuser<'c, 'a, L> {
    table: &'a RwLock<Vec<Option<Arc<PortSlot>>>>,
    /// The port table, read-locked at the first decision.
    ports: &'c OnceCell<RwLockReadGuard<'a, Vec<Option<Arc<PortSlot>>>>>,
    lookup: &'a Mutex<L>,
    src: PortId,
    now: u32,
    /// The decision made, if asked.
    first: Option<Decided>,
    /// The destination and its sink, locked.
    dst: Option<(&'c PortSlot, MutexGuard<'c, dyn Sink + 'static>)>,
}

impl<'c, L: Lookup> Fuser for EngineFuser<'c, '_, L> {
    fn decide(&mut self, head: &[u8; FUSE_HEAD]) -> Option<(FuseRun, &mut dyn Sink)> {
        if self.first.is_some() {
            // Once per run: a second sink locked while holding the first
            // could deadlock against another thread.
            return None;
        }
        let table = self.table;
        let ports: &'c [Option<Arc<PortSlot>>] = self
            .ports
            .get_or_init(|| table.read().unwrap_or_else(|e| e.into_inner()));
        // A fused run copies each frame once, header and all, into one
        // sink: both ends carry the 12-byte header, and no monitor wants
        // its own copy. (A source port that left: the general path says.)
        let sp = ports.get(self.src as usize)?.as_deref()?;
        if sp.cfg.vnet_hdr_len != 12 || !sp.monitors.is_empty() {
            return None;
        }
        let mut macs = [0u8; 12];
        macs.copy_from_slice(&head[12..24]);
        let mut info = FrameInfo {
            dst: [0; 6],
            src: [0; 6],
            src_port: self.src,
            flags: 0,
            learn: true,
        };
        info.dst.copy_from_slice(&macs[..6]);
        info.src.copy_from_slice(&macs[6..]);
        let (dest, repeats) = lock(self.lookup).lookup_run(&info, self.now);
        let port = match dest {
            Dest::Port(p) => ports.get(p as usize).and_then(|s| s.as_deref()),
            _ => None,
        };
        self.first = Some(Decided {
            macs,
            dest,
            slot: port.map_or(0, |s| s as *const PortSlot as usize),
        });
        // A lookup that would count or change something if asked again:
        // this frame and the rest go the general way, which uses the
        // answer for this one.
        if !repeats {
            return None;
        }
        // One destination, a port that copies frames as they come (no
        // backpressure to hold the run, no monitor, the same header).
        let Dest::Port(p) = dest else { return None };
        if p == self.src {
            return None;
        }
        let slot = port?;
        if slot.cfg.backpressure || slot.cfg.vnet_hdr_len != 12 || !slot.monitors.is_empty() {
            return None;
        }
        let sink = lock(&slot.sink);
        let offloads = sink.offloads().unwrap_or(slot.cfg.offloads);
        let (_, sink) = self.dst.insert((slot, sink));
        let run = FuseRun {
            macs,
            offloads,
            max: MAX_BATCH,
        };
        Some((run, &mut **sink))
    }
}

/// Whether a `Dest::Port` decision's port is still the slot it named.
fn same_port(ports: &[Option<Arc<PortSlot>>], d: &Decided) -> bool {
    match d.dest {
        Dest::Port(p) => ports
            .get(p as usize)
            .and_then(|s| s.as_deref())
            .is_some_and(|s| s as *const PortSlot as usize == d.slot),
        _ => true,
    }
}

/// Copies a frame's first `need` bytes (its headers, at most 32) into
/// `out`; bytes of `out` past them are left undefined.
#[inline]
fn gather_head(frags: &[Frag], out: &mut [u8; 64], need: usize) {
    // The headers in the first fragment: one fixed copy instead of a
    // `memcpy` call of a length known only at run time.
    if let Some(head) = out.first_chunk_mut::<32>() {
        if need <= 32 && frags.first().is_some_and(|f| f.read_prefix(head)) {
            return;
        }
    }
    gather(frags, &mut out[..need]);
}

/// Copies the first `out.len()` bytes of a frame, across fragments.
fn gather(frags: &[Frag], out: &mut [u8]) {
    let mut at = 0;
    for f in frags {
        if at == out.len() {
            break;
        }
        at += f.read(0, &mut out[at..]);
    }
}

/// Splits fragments into frames by `NS_MOREFRAG`. Chains over
/// [`MAX_FRAGS`] and a chain still open at the end of the batch become
/// frames marked `BadChain`.
fn split_frames(frags: &[Frag], frames: &mut Vec<Frame>) -> usize {
    frames.clear();
    let mut i = 0;
    while i < frags.len() {
        // A one-fragment frame (every linear frame) without the chain loop.
        if frags[i].flags() & NS_MOREFRAG == 0 {
            frames.push(Frame::split(i, 1, frags[i].len() as u32, false));
            i += 1;
            continue;
        }
        let first = i;
        let mut len = 0u32;
        let mut bad = false;
        loop {
            let f = &frags[i];
            len += f.len() as u32;
            i += 1;
            if f.flags() & NS_MOREFRAG == 0 {
                break;
            }
            if i == frags.len() || i - first >= MAX_FRAGS {
                // Open chain at the end, or too long: swallow the rest of
                // this chain so the next frame starts clean.
                while i < frags.len() && frags[i - 1].flags() & NS_MOREFRAG != 0 {
                    i += 1;
                }
                bad = true;
                break;
            }
        }
        frames.push(Frame::split(first, i - first, len, bad));
    }
    frames.len()
}
