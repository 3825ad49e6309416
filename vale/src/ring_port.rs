//! A client's netmap rings as engine ports: its TX ring is a [`Source`], its
//! RX ring a [`Sink`]. These run in valed's forwarding threads, against
//! memory the client can rewrite at any moment, so:
//!
//! - ring geometry (slots, buffer pool) comes from the switch's own record,
//!   never from the ring header;
//! - `head`/`cur` are read once per sync from the CSB and checked against
//!   the window ([`KringState::prologue`]); a violation resets the ring;
//! - every slot is copied to a local before it is checked, and `buf_idx`
//!   and `len` are checked on RX slots too (the receiver decides where the
//!   switch writes);
//! - `NS_INDIRECT` from a client is refused: its `ptr` is an address in the
//!   client's process (the client library resolves it before txsync).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use netmap::abi::{NetmapSlot, NS_BUF_CHANGED, NS_INDIRECT, NS_MOREFRAG};
use netmap::csb::Csb;
use netmap::ring::{self, RingHandle, RingView};
use netmap::sync::{Dir, KringState};
use netmap::sys::{EventFd, SharedMap};

use crate::frag::{DstBuf, Frag};
use crate::port::{Arm, FrameCursor, Push, Sink, Source};
use crate::switch::MAX_FRAGS;

/// Where a ring lives and what the switch knows of it.
#[derive(Debug, Clone)]
pub struct RingGeometry {
    /// Offset of the `netmap_ring` in the region.
    pub off: usize,
    /// Slots.
    pub num_slots: u32,
    /// Offset of buffer 0 in the region.
    pub buf_base: usize,
    /// Buffer size.
    pub buf_size: u32,
    /// Buffers in the pool.
    pub nbufs: u32,
}

impl RingGeometry {
    /// The ring at `off` of `region`, from the region's own records (never
    /// the ring header a client can rewrite).
    pub fn of(
        region: &netmap::region::Region,
        off: usize,
    ) -> Result<Self, netmap::region::RegionError> {
        let (num_slots, buf_base, buf_size, nbufs) = region.ring_params(off)?;
        Ok(RingGeometry {
            off,
            num_slots,
            buf_base,
            buf_size,
            nbufs,
        })
    }
}

/// Counters a ring port keeps about its client's behaviour.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RingPortStats {
    /// Ring resets for `head`/`cur` outside the window.
    pub resets: u64,
    /// Slots refused (bad `buf_idx`, `len` or `NS_INDIRECT`).
    pub bad_slots: u64,
    /// Kicks sent to the client.
    pub kicks: u64,
}

struct RingPort {
    /// The ring, its geometry checked once, at creation.
    ring: RingHandle,
    geo: RingGeometry,
    csb: Arc<Csb>,
    csb_idx: u32,
    irq: Arc<EventFd>,
    kring: KringState,
    stats: RingPortStats,
}

impl std::fmt::Debug for RingPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingPort")
            .field("geo", &self.geo)
            .field("kring", &self.kring)
            .finish()
    }
}

impl RingPort {
    fn new(
        dir: Dir,
        map: Arc<SharedMap>,
        geo: RingGeometry,
        csb: Arc<Csb>,
        csb_idx: u32,
        irq: Arc<EventFd>,
    ) -> std::io::Result<RingPort> {
        // Validate the geometry once against the mapping.
        let ring = RingHandle::new(
            map,
            geo.off,
            geo.num_slots,
            geo.buf_base,
            geo.buf_size,
            geo.nbufs,
        )?;
        csb.entry(csb_idx)?;
        let kring = KringState::new(dir, geo.num_slots);
        Ok(RingPort {
            ring,
            geo,
            csb,
            csb_idx,
            irq,
            kring,
            stats: RingPortStats::default(),
        })
    }

    #[inline]
    fn view(&self) -> RingView<'_> {
        self.ring.view()
    }

    /// Reads head/cur; resets the ring on a contract violation.
    fn prologue(&mut self) {
        let csb = self.csb.entry(self.csb_idx).expect("checked at creation");
        if self.kring.prologue(&csb).is_err() {
            let view = self.ring.view();
            self.kring.reset(&csb, Some(&view));
            self.stats.resets += 1;
            // An application asleep in poll must learn of the reset.
            if self.kring.notify(&csb, &self.irq).unwrap_or(false) {
                self.stats.kicks += 1;
            }
        }
    }

    /// The need-kick handshake before the switch sleeps on this ring: true
    /// if it may sleep (see `KringState::prepare_sleep`).
    fn prepare_sleep(&self) -> bool {
        let csb = self.csb.entry(self.csb_idx).expect("checked at creation");
        self.kring.prepare_sleep(&csb)
    }

    /// The switch woke: the client need not kick.
    fn woken(&self) {
        let csb = self.csb.entry(self.csb_idx).expect("checked at creation");
        self.kring.woken(&csb);
    }

    fn publish_and_notify(&mut self) {
        let csb = self.csb.entry(self.csb_idx).expect("checked at creation");
        self.kring.publish(&csb);
        if self.kring.notify(&csb, &self.irq).unwrap_or(false) {
            self.stats.kicks += 1;
        }
    }

    /// Address of the buffer of `s` if the slot is valid for `len` bytes.
    fn buf_ptr(&self, s: &NetmapSlot, len: usize) -> Option<*mut u8> {
        if s.buf_idx < 2 || s.buf_idx >= self.geo.nbufs || len > self.geo.buf_size as usize {
            return None;
        }
        let off = self.geo.buf_base + s.buf_idx as usize * self.geo.buf_size as usize;
        let map = self.ring.map();
        map.check(off, len, 1).ok()?;
        // SAFETY: `off + len` was checked to lie inside the mapping; the
        // pointer is only formed here, dereferenced by Frag/DstBuf.
        Some(unsafe { map.as_ptr().add(off) })
    }
}

/// A client's TX ring as a source.
#[derive(Debug)]
pub struct RingSource {
    p: RingPort,
    /// Slots of each frame of the last fetch.
    frame_slots: Vec<u32>,
    /// Where a zero-copy monitor of this ring hooks in.
    zmon: Option<Arc<ZmonHook>>,
}

impl RingSource {
    /// The TX ring `geo` of a region mapped at `map`, synced through CSB
    /// entry `csb_idx`, waking the client through `irq`.
    pub fn new(
        map: Arc<SharedMap>,
        geo: RingGeometry,
        csb: Arc<Csb>,
        csb_idx: u32,
        irq: Arc<EventFd>,
    ) -> std::io::Result<RingSource> {
        Ok(RingSource {
            p: RingPort::new(Dir::Tx, map, geo, csb, csb_idx, irq)?,
            frame_slots: Vec::new(),
            zmon: None,
        })
    }

    /// Gives the slots this ring releases to the zero-copy monitor set on
    /// `hook`, if any (netmap's zero-copy TX monitor).
    pub fn with_zmon(mut self, hook: Arc<ZmonHook>) -> RingSource {
        self.zmon = Some(hook);
        self
    }

    /// What the client did wrong so far.
    pub fn stats(&self) -> RingPortStats {
        self.p.stats
    }

    /// The switch-side ring state.
    pub fn kring(&self) -> &KringState {
        &self.p.kring
    }
}

impl Source for RingSource {
    fn arm(&mut self) -> bool {
        self.p.prepare_sleep()
    }

    fn disarm(&mut self) {
        self.p.woken();
    }

    fn fetch(&mut self, frags: &mut Vec<Frag>, max: usize) -> usize {
        self.p.prologue();
        self.frame_slots.clear();
        let (start, pending) = self.p.kring.tx_pending();
        let view = self.p.view();
        let ns = self.p.geo.num_slots;
        let mut i = 0;
        let mut in_frame = 0u32;
        let mut bad = 0;
        while i < pending && self.frame_slots.len() < max {
            // One volatile copy of the slot; only the copy is looked at.
            let s = view.slot(ring::advance(start, i, ns));
            i += 1;
            in_frame += 1;
            let more = s.flags & NS_MOREFRAG != 0 && (in_frame as usize) < MAX_FRAGS;
            let flags = if more {
                s.flags
            } else {
                s.flags & !NS_MOREFRAG
            };
            let ptr = if s.flags & NS_INDIRECT != 0 {
                None
            } else {
                self.p.buf_ptr(&s, s.len as usize)
            };
            match ptr {
                // SAFETY: the buffer lies inside the mapping (checked by
                // buf_ptr) and the client gave the slot to the switch until
                // hwcur passes it, which happens only in `complete`.
                Some(p) => frags.push(unsafe { Frag::new(p, s.len, flags) }),
                None => {
                    bad += 1;
                    frags.push(Frag::bad(flags));
                }
            }
            if !more {
                self.frame_slots.push(in_frame);
                in_frame = 0;
            }
        }
        if in_frame > 0 {
            // A chain still open at the last published slot: wait for the
            // rest (netmap does the same); take it back from `frags`.
            frags.truncate(frags.len() - in_frame as usize);
        }
        self.p.stats.bad_slots += bad;
        self.frame_slots.len()
    }

    fn complete(&mut self, frames: usize) {
        let slots: u32 = self.frame_slots.iter().take(frames).sum();
        if slots > 0 {
            if let Some(h) = &self.zmon {
                // Before the client gets the slots back: they leave with
                // the monitor's buffers in them.
                h.give(&self.p, self.p.kring.nr_hwcur, slots);
            }
            self.p.kring.tx_consumed(slots);
            self.p.publish_and_notify();
        }
    }
}

/// A client's RX ring as a sink.
#[derive(Debug)]
pub struct RingSink {
    p: RingPort,
    /// Slots filled since the last publish.
    filled: u32,
    /// The client's kick eventfd, for backpressure wake-ups.
    kick: Option<Arc<EventFd>>,
    /// Where a zero-copy monitor of this ring hooks in.
    zmon: Option<Arc<ZmonHook>>,
}

impl RingSink {
    /// The RX ring `geo`, as [`RingSource::new`].
    pub fn new(
        map: Arc<SharedMap>,
        geo: RingGeometry,
        csb: Arc<Csb>,
        csb_idx: u32,
        irq: Arc<EventFd>,
    ) -> std::io::Result<RingSink> {
        Ok(RingSink {
            p: RingPort::new(Dir::Rx, map, geo, csb, csb_idx, irq)?,
            filled: 0,
            kick: None,
            zmon: None,
        })
    }

    /// Gives the slots the client releases to the zero-copy monitor set on
    /// `hook`, if any (netmap's zero-copy RX monitor): they are taken when
    /// the switch next delivers to this ring or [`sweep`](Self::sweep)s it.
    pub fn with_zmon(mut self, hook: Arc<ZmonHook>) -> RingSink {
        self.zmon = Some(hook);
        self
    }

    /// Reads the client's `head`; what it released since goes to the
    /// zero-copy monitor, before the switch refills those slots. Returns
    /// the slots released.
    fn take_released(&mut self) -> u32 {
        let before = self.p.kring.nr_hwcur;
        self.p.prologue();
        let n = ring::distance(before, self.p.kring.nr_hwcur, self.p.geo.num_slots);
        if let Some(h) = &self.zmon {
            if n > 0 {
                h.give(&self.p, before, n);
            }
        }
        n
    }

    /// For a ring with a zero-copy monitor: hands the monitor what the
    /// client released even when nothing is delivered to the ring (the
    /// last frames of a burst). Returns the slots released.
    pub fn sweep(&mut self) -> u32 {
        if self.filled != 0 || !self.zmon.as_ref().is_some_and(|h| h.is_set()) {
            return 0;
        }
        self.take_released()
    }

    /// The eventfd the client kicks when asked to (its registration's kick
    /// fd): lets a backpressure port wake the switch when room appears.
    pub fn with_kick(mut self, kick: Arc<EventFd>) -> RingSink {
        self.kick = Some(kick);
        self
    }

    /// What the client did wrong so far.
    pub fn stats(&self) -> RingPortStats {
        self.p.stats
    }
}

impl Sink for RingSink {
    fn room(&mut self) -> usize {
        if self.filled == 0 {
            self.take_released();
        }
        (self.p.kring.rx_space().1 - self.filled) as usize
    }

    fn slots_for(&self, len: usize) -> usize {
        len.div_ceil(self.p.geo.buf_size as usize).max(1)
    }

    fn capacity(&self) -> usize {
        (self.p.geo.num_slots as usize - 1).min(MAX_FRAGS)
    }

    fn push(&mut self, frags: &[Frag], skip: usize, hdr: &[u8]) -> Push {
        let mut cur = FrameCursor::new(frags, skip, hdr);
        let need = self.slots_for(cur.remaining());
        if need > MAX_FRAGS || self.room() < need {
            return Push::Full;
        }
        let (start, _) = self.p.kring.rx_space();
        let ns = self.p.geo.num_slots;
        let view = self.p.view();
        let first = ring::advance(start, self.filled, ns);
        // Check every destination slot before writing any.
        let mut slots = [NetmapSlot::default(); MAX_FRAGS];
        for (k, s) in slots.iter_mut().enumerate().take(need) {
            *s = view.slot(ring::advance(first, k as u32, ns));
            if self.p.buf_ptr(s, self.p.geo.buf_size as usize).is_none() {
                self.p.stats.bad_slots += 1;
                return Push::BadSlot;
            }
        }
        let count_byte = (need.min(255) as u16) << 8;
        for (k, s) in slots.iter_mut().enumerate().take(need) {
            let Some(p) = self.p.buf_ptr(s, self.p.geo.buf_size as usize) else {
                return Push::BadSlot;
            };
            // SAFETY: buf_ptr checked the buffer lies inside the mapping;
            // the slot is in [hwtail, hwcur - 1), owned by the switch until
            // publish, and the sink lock keeps other threads out of it.
            let mut d = unsafe { DstBuf::new(p, self.p.geo.buf_size as usize) };
            let len = cur.fill(&mut d);
            s.len = len as u16;
            s.flags = count_byte | if k + 1 < need { NS_MOREFRAG } else { 0 };
            s.ptr = 0;
            view.set_slot(ring::advance(first, k as u32, ns), *s);
        }
        self.filled += need as u32;
        Push::Done
    }

    fn publish(&mut self) {
        if self.filled > 0 {
            self.p.kring.rx_filled(self.filled);
            self.filled = 0;
            self.p.publish_and_notify();
        }
    }

    fn arm(&mut self) -> Arm {
        let Some(kick) = self.kick.clone() else {
            return Arm::Never;
        };
        if self.p.prepare_sleep() {
            Arm::Wait(kick)
        } else {
            Arm::Ready
        }
    }

    fn disarm(&mut self) {
        self.p.woken();
    }
}

/// The RX rings of one port as one sink, possibly bound by several
/// registrations (netmap lets each ring of a port be registered by a
/// different file descriptor). Each frame goes to the ring its flow hashes
/// to ([`crate::flow::flow_hash`]: MACs, IP addresses, L4 ports), so a
/// flow stays in order on one ring, as a multiqueue NIC spreads flows.
/// With no ring bound, the port is full.
#[derive(Debug, Default)]
pub struct RingSinkSet {
    /// (owner, ring): the owner is the registration that bound the ring.
    rings: Vec<(u64, RingSink)>,
}

impl RingSinkSet {
    /// An empty set.
    pub fn new() -> RingSinkSet {
        RingSinkSet::default()
    }

    /// [`RingSink::sweep`] on every ring.
    pub fn sweep(&mut self) -> u32 {
        self.rings.iter_mut().map(|(_, r)| r.sweep()).sum()
    }

    /// Adds the rings registration `owner` bound, keeping ring order by
    /// ring id stable for the hash.
    pub fn add(&mut self, owner: u64, rings: Vec<RingSink>) {
        self.rings.extend(rings.into_iter().map(|r| (owner, r)));
    }

    /// Removes the rings of registration `owner`.
    pub fn remove(&mut self, owner: u64) {
        self.rings.retain(|(o, _)| *o != owner);
    }

    /// Whether no ring is bound.
    pub fn is_empty(&self) -> bool {
        self.rings.is_empty()
    }

    fn pick(&self, frags: &[Frag], skip: usize) -> usize {
        if self.rings.len() == 1 {
            return 0;
        }
        crate::flow::flow_hash(frags, skip) % self.rings.len()
    }
}

impl Sink for RingSinkSet {
    fn room(&mut self) -> usize {
        // Conservative: a backpressure port holds its sources until every
        // ring has room, since any frame may hash to any ring.
        self.rings
            .iter_mut()
            .map(|(_, r)| r.room())
            .min()
            .unwrap_or(0)
    }

    fn slots_for(&self, len: usize) -> usize {
        self.rings.first().map_or(1, |(_, r)| r.slots_for(len))
    }

    fn capacity(&self) -> usize {
        self.rings
            .iter()
            .map(|(_, r)| r.capacity())
            .min()
            .unwrap_or(0)
    }

    fn push(&mut self, frags: &[Frag], skip: usize, hdr: &[u8]) -> Push {
        if self.rings.is_empty() {
            return Push::Full;
        }
        let i = self.pick(frags, skip);
        self.rings[i].1.push(frags, skip, hdr)
    }

    fn publish(&mut self) {
        self.rings.iter_mut().for_each(|(_, r)| r.publish());
    }

    fn arm(&mut self) -> Arm {
        let mut wait = Arm::Never;
        for (_, r) in self.rings.iter_mut() {
            match r.arm() {
                Arm::Ready => {
                    self.disarm();
                    return Arm::Ready;
                }
                w @ Arm::Wait(_) => wait = w,
                Arm::Never => {}
            }
        }
        wait
    }

    fn disarm(&mut self) {
        self.rings.iter_mut().for_each(|(_, r)| r.disarm());
    }
}

/// netmap pipes: moves what one end published on its TX ring into the
/// other end's RX ring by swapping buffer indexes — both rings live in the
/// same region, so no byte is copied. Invalid slots on either side are
/// skipped and counted, never followed. Returns the slots moved.
pub fn pipe_forward(src: &mut RingSource, dst: &mut RingSink) -> usize {
    src.p.prologue();
    if dst.filled == 0 {
        dst.p.prologue();
    }
    let (s0, pending) = src.p.kring.tx_pending();
    let (d0, space) = dst.p.kring.rx_space();
    let space = space - dst.filled;
    let k = pending.min(space);
    if k == 0 {
        return 0;
    }
    let sns = src.p.geo.num_slots;
    let dns = dst.p.geo.num_slots;
    let d0 = ring::advance(d0, dst.filled, dns);
    let (sv, dv) = (src.p.view(), dst.p.view());
    let buf_size = src.p.geo.buf_size.min(dst.p.geo.buf_size) as usize;
    let mut bad = 0u64;
    let mut moved = 0u32;
    for i in 0..k {
        let si = ring::advance(s0, i, sns);
        let mut s = sv.slot(si);
        let di = ring::advance(d0, moved, dns);
        let mut d = dv.slot(di);
        let ok = s.flags & NS_INDIRECT == 0
            && src.p.buf_ptr(&s, s.len as usize).is_some()
            && dst.p.buf_ptr(&d, buf_size).is_some()
            && (s.len as usize) <= buf_size;
        if !ok {
            bad += 1;
            continue;
        }
        let (sb, db) = (s.buf_idx, d.buf_idx);
        d.buf_idx = sb;
        d.len = s.len;
        d.flags = NS_BUF_CHANGED | (s.flags & NS_MOREFRAG);
        d.ptr = 0;
        s.buf_idx = db;
        s.flags = NS_BUF_CHANGED;
        dv.set_slot(di, d);
        sv.set_slot(si, s);
        moved += 1;
    }
    src.p.stats.bad_slots += bad;
    src.p.kring.tx_consumed(k);
    src.p.publish_and_notify();
    if moved > 0 {
        dst.p.kring.rx_filled(dst.filled + moved);
        dst.filled = 0;
        dst.p.publish_and_notify();
    }
    moved as usize
}

/// A zero-copy monitor's RX ring (netmap's `/z`): it lives in the
/// monitored port's region, and the slots the port is done with — TX slots
/// the switch has sent, RX slots the client has released — trade buffers
/// with its free slots, so the monitor sees those frames without a copy
/// and the port's slots come back holding the monitor's buffers
/// (`NS_BUF_CHANGED`). When the monitor has no room the oldest of them are
/// not given to it (netmap drops them the same way), which may cut a
/// fragment chain; the port never waits.
#[derive(Debug)]
pub struct ZmonRing {
    p: RingPort,
}

impl ZmonRing {
    /// The monitor's RX ring `geo`, in the region mapped at `map` (the
    /// monitored port's), synced through CSB entry `csb_idx`.
    pub fn new(
        map: Arc<SharedMap>,
        geo: RingGeometry,
        csb: Arc<Csb>,
        csb_idx: u32,
        irq: Arc<EventFd>,
    ) -> std::io::Result<ZmonRing> {
        Ok(ZmonRing {
            p: RingPort::new(Dir::Rx, map, geo, csb, csb_idx, irq)?,
        })
    }

    /// Trades the buffers of `n` slots of `src` from `start` with free
    /// slots of this ring, in order; what does not fit, from the oldest,
    /// stays with the port.
    fn take(&mut self, src: &RingPort, start: u32, n: u32) {
        self.p.prologue();
        let (m0, room) = self.p.kring.rx_space();
        let skip = n.saturating_sub(room);
        let (sv, mv) = (src.view(), self.p.view());
        let (sns, mns) = (src.geo.num_slots, self.p.geo.num_slots);
        let size = src.geo.buf_size as usize;
        let room = room.min(n);
        let mut filled = 0u32;
        for i in skip..n {
            if filled == room {
                break;
            }
            let si = ring::advance(start, i, sns);
            let mut s = sv.slot(si);
            // Only the pool's buffers move (the two rings share the pool),
            // never an indirect slot's.
            if s.flags & NS_INDIRECT != 0 || src.buf_ptr(&s, size).is_none() {
                continue;
            }
            let mi = ring::advance(m0, filled, mns);
            let mut m = mv.slot(mi);
            if self.p.buf_ptr(&m, size).is_none() {
                // The monitor's client broke its own slot: handed back
                // empty, so that one bad slot does not stop the monitor.
                m.len = 0;
                m.flags = 0;
                mv.set_slot(mi, m);
                filled += 1;
                continue;
            }
            std::mem::swap(&mut s.buf_idx, &mut m.buf_idx);
            m.len = s.len.min(src.geo.buf_size.min(u32::from(u16::MAX)) as u16);
            m.flags = NS_BUF_CHANGED | (s.flags & NS_MOREFRAG);
            m.ptr = 0;
            s.flags |= NS_BUF_CHANGED;
            mv.set_slot(mi, m);
            sv.set_slot(si, s);
            filled += 1;
        }
        if filled > 0 {
            self.p.kring.rx_filled(filled);
            self.p.publish_and_notify();
        }
    }
}

/// Where a zero-copy monitor hooks into one ring of a port. A port with no
/// such monitor pays one relaxed load per batch; with one, its ring's
/// released slots go to the monitor under the hook's lock and then the
/// monitor ring's (taken after the port's sink lock on the RX side, after
/// no other lock of the ring's on the TX side, always in that order, and
/// never held while waiting for anything else).
#[derive(Debug, Default)]
pub struct ZmonHook {
    on: AtomicBool,
    ring: Mutex<Option<Arc<Mutex<ZmonRing>>>>,
}

impl ZmonHook {
    /// A hook with no monitor.
    pub fn new() -> Arc<ZmonHook> {
        Arc::new(ZmonHook::default())
    }

    /// Sets the monitor ring, or none. Returns the previous one, which no
    /// forwarding thread touches once this returns (a trade in progress
    /// holds the hook's lock, so this waits for it: microseconds).
    pub fn set(&self, ring: Option<Arc<Mutex<ZmonRing>>>) -> Option<Arc<Mutex<ZmonRing>>> {
        let mut g = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        self.on.store(ring.is_some(), Ordering::Relaxed);
        std::mem::replace(&mut *g, ring)
    }

    /// Whether a monitor is set.
    pub fn is_set(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    fn give(&self, src: &RingPort, start: u32, n: u32) {
        if !self.on.load(Ordering::Relaxed) {
            return;
        }
        // The hook's lock is held through the trade (see `set`); the
        // ring's own lock orders the port's TX and RX hooks of one ring.
        let g = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = &*g {
            r.lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(src, start, n);
        }
    }
}

/// A zero-copy monitor's doorbell as a forwarding unit's source: it has no
/// frames, but while the forwarder sleeps it asks the monitor's client to
/// kick on its next sync (`arm`), so that a monitor waiting for frames
/// wakes the forwarder, which then sweeps the monitored port's RX rings
/// ([`RingSinkSet::sweep`]) for slots its client released.
#[derive(Debug)]
pub struct ZmonWatch {
    rings: Vec<Arc<Mutex<ZmonRing>>>,
}

impl ZmonWatch {
    /// Watches the monitor's RX rings.
    pub fn new(rings: Vec<Arc<Mutex<ZmonRing>>>) -> ZmonWatch {
        ZmonWatch { rings }
    }
}

impl Source for ZmonWatch {
    fn fetch(&mut self, _frags: &mut Vec<Frag>, _max: usize) -> usize {
        0
    }

    fn complete(&mut self, _frames: usize) {}

    fn arm(&mut self) -> bool {
        // Ask every ring, even once one says the client moved: then the
        // forwarder polls again and disarms them all.
        let mut all = true;
        for r in &self.rings {
            let mut z = r.lock().unwrap_or_else(|e| e.into_inner());
            // What the client released so far is seen, so only a newer
            // sync counts as movement.
            z.p.prologue();
            all &= z.p.prepare_sleep();
        }
        all
    }

    fn disarm(&mut self) {
        for r in &self.rings {
            r.lock().unwrap_or_else(|e| e.into_inner()).p.woken();
        }
    }
}
