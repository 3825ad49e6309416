//! Destination lookup: a trait returning `Port | Flood | Drop` (mSwitch's
//! idea), with the learning bridge as the default.
//!
//! The bridge is better than netmap's in the ways operators notice: entries
//! age out, a full table refuses new stations instead of silently
//! overwriting a neighbour's entry (netmap's fixed hash overwrites on
//! collision), `NS_NO_LEARN` is honoured, and each port can be capped in how
//! many MACs it may teach the table. Every refusal is counted.

use crate::PortId;

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// One port.
    Port(PortId),
    /// Every port but the source.
    Flood,
    /// Nowhere.
    Drop,
}

/// What a lookup sees of a frame.
#[derive(Debug, Clone, Copy)]
pub struct FrameInfo {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// Port the frame came from.
    pub src_port: PortId,
    /// netmap flags of its first slot.
    pub flags: u16,
    /// Whether the source may teach the table (clear for `NS_NO_LEARN`).
    pub learn: bool,
}

/// A forwarding decision function.
pub trait Lookup: Send {
    /// Decides where one frame goes; `now` is a coarse clock in seconds.
    fn lookup(&mut self, f: &FrameInfo, now: u32) -> Dest;
    /// As [`lookup`](Self::lookup) (the same answer, the same effects),
    /// and whether asking the same question again at the same `now`
    /// right after would get the same answer and change and count
    /// nothing. The engine then sends the frames right behind this one
    /// that ask it (a fused run) without asking, as if they had been
    /// asked back to back now. A lookup with per-frame state (counters,
    /// rate limits, round robin, sampling) says false. The default never
    /// says so.
    fn lookup_run(&mut self, f: &FrameInfo, now: u32) -> (Dest, bool) {
        (self.lookup(f, now), false)
    }
    /// A port left the switch: forget what it taught.
    fn port_removed(&mut self, port: PortId);
    /// Counters, for `vale-ctl --stats`.
    fn stats(&self) -> LookupStats {
        LookupStats::default()
    }
}

/// Counters of the learning bridge.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LookupStats {
    /// Stations learned.
    pub learned: u64,
    /// Stations seen moving from one port to another.
    pub moves: u64,
    /// Stations not learned: the table had no free entry near their hash.
    pub table_full: u64,
    /// Stations not learned: their port reached its MAC limit.
    pub port_limit: u64,
    /// Entries expired by aging.
    pub aged: u64,
    /// Live entries now.
    pub entries: u64,
}

/// Tunables of the learning bridge.
#[derive(Debug, Clone, Copy)]
pub struct BridgeConfig {
    /// Table entries (rounded up to a power of two).
    pub capacity: usize,
    /// Seconds an entry lives without being refreshed.
    pub max_age: u32,
    /// Most MACs one port may have in the table (0: no limit). Bounded by
    /// default, so one port cannot fill the table for the others: a VM
    /// has a few MACs; a port with a whole L2 segment behind it (a NIC)
    /// gets a higher limit of its own (`vale-ctl --config SW:PORT
    /// mac_limit=N`).
    pub port_mac_limit: u32,
}

/// The default [`BridgeConfig::port_mac_limit`]: an eighth of the default
/// table.
pub const DEFAULT_PORT_MAC_LIMIT: u32 = 1024;

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            capacity: 8192,
            max_age: 300,
            port_mac_limit: DEFAULT_PORT_MAC_LIMIT,
        }
    }
}

/// How far an insert probes before declaring the table full.
const PROBES: usize = 16;

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    /// MAC in the low 48 bits; bit 63 set when the entry is in use.
    key: u64,
    port: PortId,
    seen: u32,
}

const USED: u64 = 1 << 63;

/// The default lookup: a learning Ethernet bridge with aging.
#[derive(Debug)]
pub struct LearningBridge {
    table: Vec<Entry>,
    mask: usize,
    cfg: BridgeConfig,
    per_port: Vec<u32>,
    per_port_limit: Vec<u32>,
    st: LookupStats,
    /// The last frame's question and answer, while the table has not
    /// changed since: a batch is mostly one flow (same source port, same
    /// MACs), whose frames then skip the hashing and probing.
    last: Option<Last>,
}

/// A decision of [`LearningBridge::lookup`], and what it was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Last {
    src: u64,
    dst: u64,
    src_port: PortId,
    learn: bool,
    now: u32,
    dest: Dest,
}

#[inline]
fn mac_key(m: &[u8; 6]) -> u64 {
    u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], 0, 0])
}

#[inline]
fn hash(key: u64) -> usize {
    // A multiplicative hash: MACs of one vendor differ in the low bytes,
    // so mix every bit into the top, then take the top bits.
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize
}

#[inline]
fn is_multicast(m: &[u8; 6]) -> bool {
    m[0] & 1 != 0
}

impl LearningBridge {
    /// A bridge with `cfg`.
    pub fn new(cfg: BridgeConfig) -> LearningBridge {
        let cap = cfg.capacity.max(PROBES).next_power_of_two();
        LearningBridge {
            table: vec![Entry::default(); cap],
            mask: cap - 1,
            cfg,
            per_port: Vec::new(),
            per_port_limit: Vec::new(),
            st: LookupStats::default(),
            last: None,
        }
    }

    /// Caps how many MACs `port` may have in the table (0: the default).
    pub fn set_port_mac_limit(&mut self, port: PortId, limit: u32) {
        let i = port as usize;
        if self.per_port_limit.len() <= i {
            self.per_port_limit.resize(i + 1, 0);
        }
        self.per_port_limit[i] = limit;
        self.last = None;
    }

    fn limit_of(&self, port: PortId) -> u32 {
        match self.per_port_limit.get(port as usize) {
            Some(&l) if l > 0 => l,
            _ => self.cfg.port_mac_limit,
        }
    }

    fn count(&mut self, port: PortId) -> &mut u32 {
        let i = port as usize;
        if self.per_port.len() <= i {
            self.per_port.resize(i + 1, 0);
        }
        &mut self.per_port[i]
    }

    #[inline]
    fn live(&self, e: &Entry, now: u32) -> bool {
        // An entry seen "after" now (a thread whose clock read is a poll
        // behind another's) is live, not 2^32 seconds old.
        let age = now.wrapping_sub(e.seen);
        e.key & USED != 0 && (age as i32 <= 0 || age <= self.cfg.max_age)
    }

    fn expire(&mut self, i: usize) {
        self.last = None;
        let port = self.table[i].port;
        self.table[i].key = 0;
        let c = self.count(port);
        *c = c.saturating_sub(1);
        self.st.aged += 1;
        self.st.entries = self.st.entries.saturating_sub(1);
    }

    /// The port `mac` was learned on, if the entry is live.
    pub fn find(&self, mac: &[u8; 6], now: u32) -> Option<PortId> {
        let key = mac_key(mac) | USED;
        let h = hash(key);
        (0..PROBES)
            .map(|p| &self.table[(h + p) & self.mask])
            .find(|e| e.key == key && self.live(e, now))
            .map(|e| e.port)
    }

    /// Learns that `mac` is behind `port`; false if it could not (table
    /// full near its hash, or the port at its limit).
    fn learn(&mut self, mac: &[u8; 6], port: PortId, now: u32) -> bool {
        let key = mac_key(mac) | USED;
        let h = hash(key);
        let mut free = None;
        for p in 0..PROBES {
            let i = (h + p) & self.mask;
            let e = self.table[i];
            if e.key == key {
                if !self.live(&e, now) {
                    self.expire(i);
                    free = free.or(Some(i));
                    break;
                }
                if e.port != port {
                    // A station move: the old port loses the entry, unless
                    // the new one is at its limit (else a port could hold
                    // any number of MACs by taking them over).
                    let limit = self.limit_of(port);
                    if limit > 0 && *self.count(port) >= limit {
                        self.st.port_limit += 1;
                        return false;
                    }
                    self.last = None;
                    let c = self.count(e.port);
                    *c = c.saturating_sub(1);
                    *self.count(port) += 1;
                    self.st.moves += 1;
                }
                if self.table[i].seen != now {
                    // Another clock second: answers about aging may change.
                    self.last = None;
                }
                self.table[i].port = port;
                self.table[i].seen = now;
                return true;
            }
            if e.key & USED == 0 {
                free = free.or(Some(i));
            } else if !self.live(&e, now) {
                self.expire(i);
                free = free.or(Some(i));
            }
        }
        let Some(i) = free else {
            self.st.table_full += 1;
            return false;
        };
        let limit = self.limit_of(port);
        if limit > 0 && *self.count(port) >= limit {
            self.st.port_limit += 1;
            return false;
        }
        self.last = None;
        self.table[i] = Entry {
            key,
            port,
            seen: now,
        };
        *self.count(port) += 1;
        self.st.learned += 1;
        self.st.entries += 1;
        true
    }

    /// MACs currently attributed to `port`.
    pub fn port_entries(&self, port: PortId) -> u32 {
        self.per_port.get(port as usize).copied().unwrap_or(0)
    }
}

impl Default for LearningBridge {
    fn default() -> Self {
        LearningBridge::new(BridgeConfig::default())
    }
}

impl Lookup for LearningBridge {
    // Always: the engine asks it for every frame of a general batch,
    // where a call measured twice the instructions of the inlined
    // shortcut (the fused path asks it too, which made the compiler stop
    // inlining it).
    #[inline(always)]
    fn lookup(&mut self, f: &FrameInfo, now: u32) -> Dest {
        let (src, dst) = (mac_key(&f.src), mac_key(&f.dst));
        if let Some(l) = self.last {
            // Same question, table unchanged since (every change clears
            // `last`): learning again would only refresh the entry with
            // the same port and time, and the answer is the same.
            if l.src == src
                && l.dst == dst
                && l.src_port == f.src_port
                && l.learn == f.learn
                && l.now == now
            {
                return l.dest;
            }
        }
        // Not remembered when learning failed: the next frame tries again
        // and counts again, as without the shortcut.
        let mut learned = true;
        if f.learn && !is_multicast(&f.src) {
            learned = self.learn(&f.src, f.src_port, now);
        }
        let dest = if is_multicast(&f.dst) {
            Dest::Flood
        } else {
            match self.find(&f.dst, now) {
                Some(p) if p == f.src_port => Dest::Drop,
                Some(p) => Dest::Port(p),
                None => Dest::Flood,
            }
        };
        self.last = learned.then_some(Last {
            src,
            dst,
            src_port: f.src_port,
            learn: f.learn,
            now,
            dest,
        });
        dest
    }

    #[inline]
    fn lookup_run(&mut self, f: &FrameInfo, now: u32) -> (Dest, bool) {
        let dest = self.lookup(f, now);
        // Remembered exactly when learning did not fail: the same
        // question is then answered from `last`, changing nothing.
        (dest, self.last.is_some())
    }

    fn port_removed(&mut self, port: PortId) {
        self.last = None;
        for e in self.table.iter_mut() {
            if e.key & USED != 0 && e.port == port {
                e.key = 0;
                self.st.entries = self.st.entries.saturating_sub(1);
            }
        }
        if let Some(c) = self.per_port.get_mut(port as usize) {
            *c = 0;
        }
    }

    fn stats(&self) -> LookupStats {
        self.st
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u16) -> [u8; 6] {
        [0x02, 0, 0, 0, (last >> 8) as u8, last as u8]
    }

    fn frame(src: [u8; 6], dst: [u8; 6], port: PortId) -> FrameInfo {
        FrameInfo {
            dst,
            src,
            src_port: port,
            flags: 0,
            learn: true,
        }
    }

    #[test]
    fn learns_floods_and_ages() {
        let mut b = LearningBridge::new(BridgeConfig {
            max_age: 10,
            ..Default::default()
        });
        assert_eq!(b.lookup(&frame(mac(1), mac(2), 0), 0), Dest::Flood);
        assert_eq!(b.lookup(&frame(mac(2), mac(1), 1), 1), Dest::Port(0));
        assert_eq!(b.lookup(&frame(mac(1), mac(2), 0), 2), Dest::Port(1));
        assert_eq!(b.lookup(&frame(mac(1), [0xff; 6], 0), 2), Dest::Flood);
        // Back to its own port: dropped, not reflected.
        assert_eq!(b.lookup(&frame(mac(3), mac(1), 0), 3), Dest::Drop);
        // mac(2) last seen at 1; at 12 it has aged out.
        assert_eq!(b.lookup(&frame(mac(1), mac(2), 0), 12), Dest::Flood);
        assert_eq!(b.find(&mac(2), 12), None);
    }

    #[test]
    fn no_learn_and_multicast_sources_teach_nothing() {
        let mut b = LearningBridge::default();
        let mut f = frame(mac(1), mac(2), 0);
        f.learn = false;
        b.lookup(&f, 0);
        assert_eq!(b.find(&mac(1), 0), None);
        let mut m = mac(5);
        m[0] |= 1;
        b.lookup(&frame(m, mac(2), 0), 0);
        assert_eq!(b.find(&m, 0), None);
        assert_eq!(b.stats().learned, 0);
    }

    #[test]
    fn station_moves_are_counted() {
        let mut b = LearningBridge::default();
        b.lookup(&frame(mac(1), mac(9), 0), 0);
        b.lookup(&frame(mac(1), mac(9), 3), 1);
        assert_eq!(b.find(&mac(1), 1), Some(3));
        assert_eq!(b.stats().moves, 1);
        assert_eq!((b.port_entries(0), b.port_entries(3)), (0, 1));
    }

    #[test]
    fn full_table_refuses_instead_of_overwriting() {
        let mut b = LearningBridge::new(BridgeConfig {
            capacity: 16,
            ..Default::default()
        });
        for i in 0..200 {
            b.lookup(&frame(mac(i), [0xff; 6], (i % 4) as PortId), 0);
        }
        let st = b.stats();
        assert_eq!(st.learned, 16);
        assert_eq!(st.table_full, 184);
        // Every learned station still maps to the port that taught it.
        let found = (0..200)
            .filter(|i| b.find(&mac(*i), 0) == Some((*i % 4) as PortId))
            .count();
        assert_eq!(found, 16);
    }

    #[test]
    fn per_port_limit() {
        let mut b = LearningBridge::default();
        b.set_port_mac_limit(1, 3);
        for i in 0..10 {
            b.lookup(&frame(mac(i), [0xff; 6], 1), 0);
        }
        assert_eq!(b.port_entries(1), 3);
        assert_eq!(b.stats().port_limit, 7);
        b.port_removed(1);
        assert_eq!(b.port_entries(1), 0);
        assert_eq!(b.find(&mac(0), 0), None);
    }

    /// A port at its limit cannot take more MACs over from other ports by
    /// sending as them (station moves count against the limit too).
    #[test]
    fn station_moves_respect_the_limit() {
        let mut b = LearningBridge::default();
        b.set_port_mac_limit(2, 2);
        for i in 0..6 {
            b.lookup(&frame(mac(i), [0xff; 6], 1), 0);
        }
        for i in 0..6 {
            b.lookup(&frame(mac(i), [0xff; 6], 2), 0);
        }
        assert_eq!((b.port_entries(1), b.port_entries(2)), (4, 2));
        assert_eq!(b.stats().moves, 2);
        assert_eq!(b.find(&mac(5), 0), Some(1));
    }

    #[test]
    fn ports_are_limited_by_default() {
        let mut b = LearningBridge::default();
        for i in 0..(DEFAULT_PORT_MAC_LIMIT as u16 + 100) {
            b.lookup(&frame(mac(i), [0xff; 6], 1), 0);
        }
        assert_eq!(b.port_entries(1), DEFAULT_PORT_MAC_LIMIT);
        assert_eq!(b.stats().port_limit, 100);
    }

    /// Threads forwarding into one bridge read the clock at different
    /// polls: an entry one refreshed a second "ahead" of another's clock
    /// is live for the other, not 2^32 seconds old.
    #[test]
    fn an_entry_seen_ahead_of_now_is_live() {
        let mut b = LearningBridge::default();
        let _ = b.lookup(&frame(mac(1), mac(2), 3), 101);
        assert_eq!(b.find(&mac(1), 100), Some(3));
        assert_eq!(b.lookup(&frame(mac(2), mac(1), 4), 100), Dest::Port(3));
        assert_eq!(b.stats().aged, 0);
    }

    /// The remembered last decision changes nothing: runs of repeated
    /// frames among others, station moves, aging, a full table, port
    /// limits and ports leaving give the same answers and counters as a
    /// bridge that decides every frame afresh.
    #[test]
    fn the_last_decision_shortcut_answers_as_a_fresh_lookup() {
        let cfg = BridgeConfig {
            capacity: 16,
            max_age: 3,
            port_mac_limit: 3,
        };
        let (mut fast, mut slow) = (LearningBridge::new(cfg), LearningBridge::new(cfg));
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let (mut now, mut f) = (0u32, frame(mac(0), mac(1), 0));
        let mut shortcuts = 0;
        for step in 0..20_000 {
            match rnd(100) {
                // Mostly the same frame again, as in a batch of one flow.
                0..=59 => {}
                60..=89 => {
                    let m = |r: u64| if r == 0 { [0xff; 6] } else { mac(r as u16) };
                    f = frame(m(rnd(24)), m(rnd(24)), rnd(5) as PortId);
                    f.learn = rnd(10) != 0;
                }
                90..=96 => now += rnd(3) as u32,
                _ => {
                    let p = rnd(5) as PortId;
                    fast.port_removed(p);
                    slow.port_removed(p);
                }
            }
            let hit = fast.last.is_some_and(|l| {
                (l.src, l.dst, l.src_port, l.learn, l.now)
                    == (mac_key(&f.src), mac_key(&f.dst), f.src_port, f.learn, now)
            });
            shortcuts += usize::from(hit);
            slow.last = None;
            assert_eq!(fast.lookup(&f, now), slow.lookup(&f, now), "step {step}");
            assert_eq!(fast.stats(), slow.stats(), "step {step}");
        }
        assert!(
            shortcuts > 5_000,
            "the shortcut was taken {shortcuts} times"
        );
        let st = fast.stats();
        assert!(st.moves > 0 && st.aged > 0 && st.port_limit > 0, "{st:?}");
    }
}
