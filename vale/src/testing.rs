//! In-memory ports for tests and benchmarks (feature `test-utils`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use netmap::abi::NS_MOREFRAG;

use crate::frag::{DstBuf, Frag};
use crate::port::{FrameCursor, Push, Sink, Source};

/// A frame as fragments, each with its slot flags.
#[derive(Debug, Clone, Default)]
pub struct MemFrame {
    /// Fragments and their flags (`NS_MOREFRAG` is set by the source).
    pub frags: Vec<(Vec<u8>, u16)>,
}

impl MemFrame {
    /// A one-fragment frame.
    pub fn new(data: Vec<u8>) -> MemFrame {
        MemFrame {
            frags: vec![(data, 0)],
        }
    }

    /// A frame cut in fragments of at most `frag` bytes.
    pub fn chunked(data: &[u8], frag: usize) -> MemFrame {
        MemFrame {
            frags: data.chunks(frag.max(1)).map(|c| (c.to_vec(), 0)).collect(),
        }
    }

    /// Sets flags on the first fragment.
    pub fn with_flags(mut self, flags: u16) -> MemFrame {
        if let Some(f) = self.frags.first_mut() {
            f.1 |= flags;
        }
        self
    }

    /// All bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.frags
            .iter()
            .flat_map(|f| f.0.iter().copied())
            .collect()
    }
}

/// A source of queued frames. Frames stay queued until completed, so a
/// backpressured batch is presented again.
#[derive(Debug, Default)]
pub struct MemSource {
    queue: VecDeque<MemFrame>,
    /// Frames completed so far.
    pub completed: u64,
    /// When set, every fetch re-presents the same frames forever (for
    /// benchmarks): completed frames go back to the end of the queue.
    pub recycle: bool,
}

impl MemSource {
    /// Queues a frame.
    pub fn push(&mut self, f: MemFrame) {
        self.queue.push_back(f);
    }
    /// Frames waiting.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }
}

impl Source for MemSource {
    fn fetch(&mut self, frags: &mut Vec<Frag>, max: usize) -> usize {
        let mut n = 0;
        for f in self.queue.iter().take(max) {
            let last = f.frags.len().saturating_sub(1);
            for (i, (data, flags)) in f.frags.iter().enumerate() {
                let more = if i < last { NS_MOREFRAG } else { 0 };
                let len = data.len().min(u16::MAX as usize) as u16;
                // SAFETY: the frame's Vec stays in the queue, unchanged,
                // until `complete` (it is only read meanwhile), as
                // `Frag::new` asks.
                frags.push(unsafe { Frag::new(data.as_ptr(), len, flags | more) });
            }
            n += 1;
        }
        n
    }

    fn complete(&mut self, frames: usize) {
        for _ in 0..frames.min(self.queue.len()) {
            if let Some(f) = self.queue.pop_front() {
                if self.recycle {
                    self.queue.push_back(f);
                }
            }
        }
        self.completed += frames as u64;
    }
}

#[derive(Debug)]
struct RingState {
    bufs: Vec<Vec<u8>>,
    /// (len, flags) of each slot.
    slots: Vec<(u16, u16)>,
    head: usize,
    used: usize,
    unpublished: usize,
    published: VecDeque<MemFrame>,
    publishes: u64,
}

/// A sink with `nslots` slots of `buf_size` bytes, like a netmap RX ring:
/// a frame longer than a buffer takes several slots chained with
/// `NS_MOREFRAG`. The test reads delivered frames through the handle.
#[derive(Debug, Clone)]
pub struct MemSink {
    st: Arc<Mutex<RingState>>,
    buf_size: usize,
}

impl MemSink {
    /// A sink of `nslots` slots of `buf_size` bytes.
    pub fn new(nslots: usize, buf_size: usize) -> MemSink {
        MemSink {
            st: Arc::new(Mutex::new(RingState {
                bufs: vec![vec![0; buf_size]; nslots],
                slots: vec![(0, 0); nslots],
                head: 0,
                used: 0,
                unpublished: 0,
                published: VecDeque::new(),
                publishes: 0,
            })),
            buf_size,
        }
    }

    /// Takes every published frame, freeing their slots.
    pub fn take(&self) -> Vec<MemFrame> {
        let mut st = self.st.lock().unwrap();
        let n: usize = st.published.iter().map(|f| f.frags.len()).sum();
        st.used -= n;
        st.published.drain(..).collect()
    }

    /// How many times the engine published.
    pub fn publishes(&self) -> u64 {
        self.st.lock().unwrap().publishes
    }
}

impl Sink for MemSink {
    fn room(&mut self) -> usize {
        let st = self.st.lock().unwrap();
        st.bufs.len() - st.used
    }

    fn slots_for(&self, len: usize) -> usize {
        len.div_ceil(self.buf_size).max(1)
    }

    fn capacity(&self) -> usize {
        self.st.lock().unwrap().bufs.len()
    }

    fn push(&mut self, frags: &[Frag], skip: usize, hdr: &[u8]) -> Push {
        let mut st = self.st.lock().unwrap();
        let mut cur = FrameCursor::new(frags, skip, hdr);
        let need = self.slots_for(cur.remaining());
        let n = st.bufs.len();
        if n - st.used < need {
            return Push::Full;
        }
        let mut i = st.head;
        for k in 0..need {
            let len = {
                let mut d = DstBuf::from_slice(&mut st.bufs[i]);
                cur.fill(&mut d)
            };
            st.slots[i] = (len as u16, if k + 1 < need { NS_MOREFRAG } else { 0 });
            i = (i + 1) % n;
        }
        st.head = i;
        st.used += need;
        st.unpublished += need;
        Push::Done
    }

    fn publish(&mut self) {
        let mut st = self.st.lock().unwrap();
        let n = st.bufs.len();
        let mut i = (st.head + n - st.unpublished) % n;
        let mut frame = MemFrame::default();
        while st.unpublished > 0 {
            let (len, flags) = st.slots[i];
            frame
                .frags
                .push((st.bufs[i][..len as usize].to_vec(), flags));
            if flags & NS_MOREFRAG == 0 {
                st.published.push_back(std::mem::take(&mut frame));
            }
            i = (i + 1) % n;
            st.unpublished -= 1;
        }
        st.publishes += 1;
    }
}

/// A sink that copies every frame into a fixed set of buffers and forgets
/// it: the reader is infinitely fast. For engine benchmarks.
#[derive(Debug)]
pub struct NullSink {
    bufs: Vec<Vec<u8>>,
    next: usize,
    /// Frames pushed.
    pub frames: u64,
}

impl NullSink {
    /// `nslots` buffers of `buf_size` bytes.
    pub fn new(nslots: usize, buf_size: usize) -> NullSink {
        NullSink {
            bufs: vec![vec![0; buf_size]; nslots],
            next: 0,
            frames: 0,
        }
    }
}

impl Sink for NullSink {
    fn room(&mut self) -> usize {
        self.bufs.len()
    }
    fn slots_for(&self, len: usize) -> usize {
        len.div_ceil(self.bufs[0].len()).max(1)
    }
    fn capacity(&self) -> usize {
        usize::MAX
    }
    fn push(&mut self, frags: &[Frag], skip: usize, hdr: &[u8]) -> Push {
        let mut cur = FrameCursor::new(frags, skip, hdr);
        while cur.remaining() > 0 {
            let i = self.next;
            self.next = if i + 1 == self.bufs.len() { 0 } else { i + 1 };
            if cur.fill(&mut DstBuf::from_slice(&mut self.bufs[i])) == 0 {
                break;
            }
        }
        self.frames += 1;
        Push::Done
    }
    fn publish(&mut self) {}
}

/// An Ethernet frame of `len` bytes from `src` to `dst` whose payload is
/// `seed`-derived bytes.
pub fn eth_frame(dst: [u8; 6], src: [u8; 6], len: usize, seed: u64) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut x = seed | 1;
    while f.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.push(x as u8);
    }
    f.truncate(len);
    f
}

/// A locally administered MAC ending in `n`.
pub fn mac(n: u16) -> [u8; 6] {
    [0x02, 0, 0, 0, (n >> 8) as u8, n as u8]
}

/// The engine bench's path (`benches/engine.rs`, and `examples/engine_count`
/// which counts its instructions): `ports` ports on one switch, each with a
/// [`NullSink`] and its MAC learned, and a source for port 0 that hands out
/// the same [`MAX_BATCH`](crate::MAX_BATCH) frames of `len` bytes again and
/// again, to one MAC after another (`unicast`) or to broadcast.
pub fn bench_path(
    ports: usize,
    len: usize,
    unicast: bool,
) -> (crate::Switch, crate::PortId, MemSource) {
    let sw = crate::Switch::new("vale0");
    let ids: Vec<crate::PortId> = (0..ports)
        .map(|i| {
            sw.attach(
                &format!("p{i}"),
                crate::PortConfig::default(),
                Box::new(NullSink::new(1024, 2048)),
            )
            .expect("attach")
        })
        .collect();
    let mut sc = crate::Scratch::default();
    for (i, &p) in ids.iter().enumerate() {
        let mut s = MemSource::default();
        s.push(MemFrame::new(eth_frame([0xff; 6], mac(i as u16), 60, 0)));
        sw.forward(p, &mut s, &mut sc, 0);
    }
    let mut src = MemSource {
        recycle: true,
        ..Default::default()
    };
    for k in 0..crate::MAX_BATCH {
        let dst = if unicast {
            mac(1 + (k % (ports - 1)) as u16)
        } else {
            [0xff; 6]
        };
        src.push(MemFrame::new(eth_frame(dst, mac(0), len, k as u64)));
    }
    (sw, ids[0], src)
}

/// Fuzz target body: frames built from `data` (any bytes: lengths, flags,
/// fragment chains, vnet headers, port-byte overrides) forwarded between up
/// to five ports with mixed options. Checks that nothing panics, that every
/// source drains, and that each port's `out_packets` counts exactly the
/// frames its reader got.
pub fn fuzz_engine(data: &[u8]) {
    use crate::port::{PortConfig, OFFLOAD_TSO4};
    use crate::switch::{Scratch, Switch};
    let Some((&cfg, mut rest)) = data.split_first() else {
        return;
    };
    let nports = 2 + (cfg & 3) as usize;
    let sw = Switch::new("vale0");
    let mut sinks = Vec::new();
    let mut ids = Vec::new();
    for i in 0..nports {
        let bits = cfg.rotate_left(i as u32);
        let pc = PortConfig {
            backpressure: bits & 0x10 != 0,
            port_mask_override: bits & 0x20 != 0,
            vnet_hdr_len: [0, 10, 12, 0][(bits >> 6) as usize],
            offloads: if bits & 0x04 != 0 { OFFLOAD_TSO4 } else { 0 },
            mac_limit: 0,
        };
        let s = MemSink::new(8 + 8 * i, 64 + 700 * i);
        ids.push(
            sw.attach(&format!("p{i}"), pc, Box::new(s.clone()))
                .expect("attach"),
        );
        sinks.push(s);
    }
    let mut sources: Vec<MemSource> = (0..nports).map(|_| MemSource::default()).collect();
    // Frame records: port, flags (2), length (2), fragment size, bytes.
    while rest.len() >= 6 {
        let port = rest[0] as usize % nports;
        let flags = u16::from_le_bytes([rest[1], rest[2]]);
        let len = (u16::from_le_bytes([rest[3], rest[4]]) as usize) % 3000;
        let frag = rest[5] as usize + 1;
        rest = &rest[6..];
        let body: Vec<u8> = (0..len)
            .map(|k| rest.get(k % rest.len().max(1)).copied().unwrap_or(0))
            .collect();
        let mut f = if frag >= 200 {
            MemFrame::new(body)
        } else {
            MemFrame::chunked(&body, frag)
        };
        if f.frags.is_empty() {
            f.frags.push((Vec::new(), 0));
        }
        sources[port].push(f.with_flags(flags));
        rest = &rest[len.min(rest.len()) / 4..];
    }
    let mut sc = Scratch::default();
    let mut got = vec![0u64; nports];
    for _round in 0..10_000 {
        let mut busy = false;
        for (i, s) in sources.iter_mut().enumerate() {
            if s.pending() > 0 {
                busy = true;
                sw.forward(ids[i], s, &mut sc, 0);
            }
        }
        for (i, s) in sinks.iter().enumerate() {
            got[i] += s.take().len() as u64;
        }
        if !busy {
            break;
        }
    }
    assert!(
        sources.iter().all(|s| s.pending() == 0),
        "a source never drained"
    );
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(sw.stats(id).expect("port").out_packets, got[i], "port {i}");
    }
}

/// The Internet checksum of the concatenation of `parts`, computed the slow
/// way (16 bits at a time), independently of [`crate::offload`]: the value a
/// checksum field should hold, or 0 over a region whose checksum is right.
pub fn inet_checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut sum: u32 = 0;
    for w in bytes.chunks(2) {
        let v = u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)]);
        sum += v as u32;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Checks an Ethernet (optionally one VLAN tag) + IPv4/IPv6 + TCP/UDP frame
/// as a receiver would: IP length fields match the frame, the IPv4 header
/// checksum and the TCP/UDP checksum verify, UDP length matches and its
/// checksum is not 0. Says what is wrong.
pub fn verify_segment(f: &[u8]) -> Result<(), String> {
    let be = |at: usize| -> Result<u16, String> {
        match f.get(at..at + 2) {
            Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
            None => Err(format!("truncated at {at} (length {})", f.len())),
        }
    };
    let mut et = be(12)?;
    let mut l3 = 14;
    if et == 0x8100 || et == 0x88a8 {
        et = be(16)?;
        l3 = 18;
    }
    let (l4, proto, pseudo) = match et {
        0x0800 => {
            let ihl = (f.get(l3).ok_or("no IPv4 header")? & 0xf) as usize * 4;
            let ip = f.get(l3..l3 + ihl).ok_or("truncated IPv4 header")?;
            if ihl < 20 {
                return Err(format!("IHL {ihl}"));
            }
            if inet_checksum(&[ip]) != 0 {
                return Err("IPv4 header checksum".into());
            }
            if be(l3 + 2)? as usize != f.len() - l3 {
                return Err(format!(
                    "IPv4 total length {} for {}",
                    be(l3 + 2)?,
                    f.len() - l3
                ));
            }
            let l4_len = (f.len() - l3 - ihl) as u16;
            let mut ph = ip[12..20].to_vec();
            ph.extend_from_slice(&[0, ip[9]]);
            ph.extend_from_slice(&l4_len.to_be_bytes());
            (l3 + ihl, ip[9], ph)
        }
        0x86dd => {
            let ip = f.get(l3..l3 + 40).ok_or("truncated IPv6 header")?;
            if be(l3 + 4)? as usize != f.len() - l3 - 40 {
                return Err(format!(
                    "IPv6 payload length {} for {}",
                    be(l3 + 4)?,
                    f.len() - l3 - 40
                ));
            }
            let mut ph = ip[8..40].to_vec();
            ph.extend_from_slice(&((f.len() - l3 - 40) as u32).to_be_bytes());
            ph.extend_from_slice(&[0, 0, 0, ip[6]]);
            (l3 + 40, ip[6], ph)
        }
        _ => return Err(format!("ethertype {et:#06x}")),
    };
    let l4h = &f[l4..];
    match proto {
        6 => {
            if l4h.len() < 20 {
                return Err("truncated TCP header".into());
            }
        }
        17 => {
            if be(l4 + 4)? as usize != l4h.len() {
                return Err(format!("UDP length {} for {}", be(l4 + 4)?, l4h.len()));
            }
            if be(l4 + 6)? == 0 {
                return Err("UDP checksum 0".into());
            }
        }
        p => return Err(format!("protocol {p}")),
    }
    if inet_checksum(&[&pseudo, l4h]) != 0 {
        return Err(format!("protocol {proto} checksum"));
    }
    Ok(())
}

/// Fuzz target body: the first 12 bytes of `data` are a vnet header, the
/// rest a frame; runs [`crate::offload::complete_csum`] and
/// [`crate::offload::segment`] on them. Checks that nothing panics, that a
/// failed or unneeded checksum completion leaves the frame alone, that
/// `segment` emits exactly the segments it counts (none on error, at most
/// `MAX_SEGMENTS`) and that every GSO segment verifies
/// ([`verify_segment`]).
pub fn fuzz_offload(data: &[u8]) {
    use crate::offload::{complete_csum, segment, VnetHdr, GSO_NONE, MAX_SEGMENTS};
    let (h, frame) = data.split_at(data.len().min(VnetHdr::LEN));
    let hdr = VnetHdr::parse(h);
    let mut copy = frame.to_vec();
    let r = complete_csum(&hdr, &mut copy);
    if r.is_err() || !hdr.needs_csum() {
        assert_eq!(copy, frame, "frame changed by {r:?}");
    } else {
        assert_eq!(copy.len(), frame.len());
    }
    let mut scratch = Vec::new();
    let mut n = 0;
    let mut bad = None;
    let r = segment(&hdr, frame, &mut scratch, |seg| {
        n += 1;
        if hdr.gso() != GSO_NONE {
            if let Err(e) = verify_segment(seg) {
                bad.get_or_insert(format!("segment {n}: {e}"));
            }
        }
    });
    if let Some(e) = bad {
        panic!("{hdr:?}: {e}");
    }
    match r {
        Ok(k) => assert!(k == n && (1..=MAX_SEGMENTS).contains(&k), "{k} vs {n}"),
        Err(e) => assert_eq!(n, 0, "emitted before {e}"),
    }
}
