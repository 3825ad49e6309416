//! Test and benchmark helpers (feature `test-utils`): a loopback "switch"
//! that moves frames from an application's TX ring to its RX ring through the
//! real sync protocol, the application side of it, and a sequence-numbered
//! producer and checker. The two-process tests and benchmarks run the switch
//! and the application in different processes with these.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::abi::NetmapSlot;
use crate::csb::Csb;
use crate::region::{IfRings, PortLayout, Region, RegionConfig};
use crate::ring::{self, RingView};
use crate::sync::{poll_rings, AppRing, Dir, KringState, SyncError, Want};
use crate::sys::{poll, EventFd, PollFd, PollFlags, SharedMap};

/// Descriptors a client needs, in the order [`Loopback::fds`] gives them.
pub const LOOPBACK_FDS: usize = 6;

/// The switch side: one TX and one RX ring in a fresh region.
#[derive(Debug)]
pub struct Loopback {
    /// The region.
    pub region: Region,
    /// The CSB (ring 0 TX, ring 1 RX).
    pub csb: Csb,
    /// TX ring offset.
    pub tx_off: usize,
    /// RX ring offset.
    pub rx_off: usize,
    /// `netmap_if` offset.
    pub nifp: usize,
    /// Application → switch, TX ring.
    pub kick_tx: EventFd,
    /// Application → switch, RX ring.
    pub kick_rx: EventFd,
    /// Switch → application, TX ring.
    pub irq_tx: EventFd,
    /// Switch → application, RX ring.
    pub irq_rx: EventFd,
}

/// What the loopback moved.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoopStats {
    /// Slots moved TX → RX.
    pub slots: u64,
    /// Times the switch slept.
    pub sleeps: u64,
    /// Kicks sent to the application.
    pub kicks: u64,
    /// Ring resets for contract violations.
    pub resets: u64,
    /// Slots dropped for a bad buffer index or length.
    pub bad_slots: u64,
}

impl Loopback {
    /// A loopback with rings of `slots` slots and `buf_size` buffers.
    pub fn new(slots: u32, buf_size: u32) -> Result<Loopback, crate::region::RegionError> {
        let layout = PortLayout {
            tx_slots: slots,
            rx_slots: slots,
            buf_size,
            ..Default::default()
        };
        let cfg = RegionConfig {
            huge_pages: false,
            ..RegionConfig::for_ports(&layout, 1, 1)?
        };
        let mut region = Region::new(1, 0, &cfg)?;
        let tx_off = region.alloc_ring(Dir::Tx, 0, slots)?;
        let rx_off = region.alloc_ring(Dir::Rx, 0, slots)?;
        let rings = IfRings {
            tx: vec![Some(tx_off)],
            host_tx: vec![None],
            rx: vec![Some(rx_off)],
            host_rx: vec![None],
        };
        let nifp = region.alloc_if("vale0:lb", &rings, 0)?;
        let csb = Csb::create(2)?;
        // Publish the initial indexes so the client reads a sane tail.
        KringState::new(Dir::Tx, slots).publish(&csb.entry(0)?);
        KringState::new(Dir::Rx, slots).publish(&csb.entry(1)?);
        Ok(Loopback {
            region,
            csb,
            tx_off,
            rx_off,
            nifp,
            kick_tx: EventFd::new()?,
            kick_rx: EventFd::new()?,
            irq_tx: EventFd::new()?,
            irq_rx: EventFd::new()?,
        })
    }

    /// Region memfd, CSB memfd, kick_tx, kick_rx, irq_tx, irq_rx.
    pub fn fds(&self) -> io::Result<Vec<OwnedFd>> {
        Ok(vec![
            self.region.share_fd()?,
            self.csb.share_fd()?,
            self.kick_tx.try_clone_fd()?,
            self.kick_rx.try_clone_fd()?,
            self.irq_tx.try_clone_fd()?,
            self.irq_rx.try_clone_fd()?,
        ])
    }

    /// Moves frames TX → RX by copying, until `stop` is set or `peer` hangs
    /// up. Sleeps (with `idle` as the longest sleep) only after asking for a
    /// kick. A sleep that times out while the application has work pending
    /// is a lost wake-up and returns `TimedOut`.
    pub fn run(
        &self,
        stop: &AtomicBool,
        peer: Option<BorrowedFd<'_>>,
        idle: Duration,
    ) -> Result<LoopStats, SyncError> {
        self.forward(stop, peer, idle, true)
    }

    /// Like [`run`](Self::run), but discards what the application sends
    /// instead of copying it to RX: a TX sink for benchmarks.
    pub fn sink(
        &self,
        stop: &AtomicBool,
        peer: Option<BorrowedFd<'_>>,
        idle: Duration,
    ) -> Result<LoopStats, SyncError> {
        self.forward(stop, peer, idle, false)
    }

    fn forward(
        &self,
        stop: &AtomicBool,
        peer: Option<BorrowedFd<'_>>,
        idle: Duration,
        to_rx: bool,
    ) -> Result<LoopStats, SyncError> {
        let tx_csb = self.csb.entry(0)?;
        let rx_csb = self.csb.entry(1)?;
        let txr = self
            .region
            .ring_view(self.tx_off)
            .map_err(io::Error::other)?;
        let rxr = self
            .region
            .ring_view(self.rx_off)
            .map_err(io::Error::other)?;
        let mut tx = KringState::new(Dir::Tx, txr.num_slots());
        let mut rx = KringState::new(Dir::Rx, rxr.num_slots());
        let mut st = LoopStats::default();
        while !stop.load(Ordering::Relaxed) {
            if tx.prologue(&tx_csb).is_err() {
                tx.reset(&tx_csb, Some(&txr));
            }
            if rx.prologue(&rx_csb).is_err() {
                rx.reset(&rx_csb, Some(&rxr));
            }
            let (ts, ntx) = tx.tx_pending();
            let (rs, nrx) = rx.rx_space();
            let k = if to_rx { ntx.min(nrx) } else { ntx };
            for i in (0..k).filter(|_| to_rx) {
                let j = ring::advance(ts, i, txr.num_slots());
                let d = ring::advance(rs, i, rxr.num_slots());
                if !copy_slot(&txr, j, &rxr, d) {
                    st.bad_slots += 1;
                }
            }
            tx.tx_consumed(k);
            rx.rx_filled(k);
            st.slots += k as u64;
            if k > 0 {
                tx.publish(&tx_csb);
                rx.publish(&rx_csb);
                st.kicks += tx.notify(&tx_csb, &self.irq_tx)? as u64;
                st.kicks += rx.notify(&rx_csb, &self.irq_rx)? as u64;
                continue;
            }
            // Nothing moved: sleep on whichever side blocks us.
            let (kr, csb, fd) = if ntx == 0 {
                (&tx, &tx_csb, &self.kick_tx)
            } else {
                (&rx, &rx_csb, &self.kick_rx)
            };
            if !kr.prepare_sleep(csb) {
                continue;
            }
            st.sleeps += 1;
            let mut fds = vec![PollFd::new(fd.as_fd(), PollFlags::IN)];
            if let Some(p) = peer {
                fds.push(PollFd::new(p, PollFlags::RDHUP));
            }
            let n = poll(&mut fds, Some(idle));
            kr.woken(csb);
            let n = n?;
            fd.drain()?;
            if fds.len() > 1 && !fds[1].revents.is_empty() {
                return Err(SyncError::PeerGone);
            }
            if n == 0 && csb.head.load(Ordering::Acquire) != kr.rhead {
                return Err(SyncError::TimedOut(idle));
            }
        }
        st.resets = tx.resets + rx.resets;
        Ok(st)
    }
}

/// Copies one frame between rings, checking the TX slot as untrusted.
fn copy_slot(txr: &RingView<'_>, j: u32, rxr: &RingView<'_>, d: u32) -> bool {
    let s = txr.slot(j);
    let mut r = rxr.slot(d);
    let (Some(src), Some(dst)) = (txr.buf_offset(s.buf_idx), rxr.buf_offset(r.buf_idx)) else {
        return false;
    };
    if s.len as u32 > txr.buf_size() || s.len as u32 > rxr.buf_size() {
        return false;
    }
    if txr.map().copy_within(src, dst, s.len as usize).is_err() {
        return false;
    }
    r.len = s.len;
    r.flags = 0;
    rxr.set_slot(d, r);
    true
}

/// The application side of a [`Loopback`], mapped from its descriptors.
#[derive(Debug)]
pub struct LoopClient {
    map: SharedMap,
    csb: Csb,
    tx_off: usize,
    rx_off: usize,
    kick_tx: EventFd,
    kick_rx: EventFd,
    irq_tx: EventFd,
    irq_rx: EventFd,
}

impl LoopClient {
    /// Maps the region (`memsize` bytes) and CSB from `fds` (in
    /// [`Loopback::fds`] order) and finds the rings through the `netmap_if`
    /// at `nifp`, as a C client would.
    pub fn from_fds(fds: Vec<OwnedFd>, memsize: usize, nifp: usize) -> io::Result<LoopClient> {
        let [mem, csb, ktx, krx, itx, irx]: [OwnedFd; LOOPBACK_FDS] = fds
            .try_into()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "expected 6 fds"))?;
        let map = SharedMap::map(&mem, memsize)?;
        let v = crate::region::IfView::new(&map, nifp)?;
        let missing = || io::Error::new(io::ErrorKind::InvalidData, "ring not bound");
        let tx_off = v.txring(0).ok_or_else(missing)?;
        let rx_off = v.rxring(0).ok_or_else(missing)?;
        Ok(LoopClient {
            csb: Csb::from_fd(csb, 2)?,
            map,
            tx_off,
            rx_off,
            kick_tx: EventFd::from_fd(ktx),
            kick_rx: EventFd::from_fd(krx),
            irq_tx: EventFd::from_fd(itx),
            irq_rx: EventFd::from_fd(irx),
        })
    }

    /// The TX ring.
    pub fn tx(&self) -> io::Result<AppRing<'_>> {
        Ok(AppRing {
            ring: RingView::open(&self.map, self.tx_off)?,
            csb: self.csb.entry(0)?,
            kick: &self.kick_tx,
            irq: &self.irq_tx,
            dir: Dir::Tx,
            id: 0,
        })
    }

    /// The RX ring.
    pub fn rx(&self) -> io::Result<AppRing<'_>> {
        Ok(AppRing {
            ring: RingView::open(&self.map, self.rx_off)?,
            csb: self.csb.entry(1)?,
            kick: &self.kick_rx,
            irq: &self.irq_rx,
            dir: Dir::Rx,
            id: 1,
        })
    }
}

/// Length of frame `seq`: 60..=`max` bytes, varying so lengths are checked.
pub fn frame_len(seq: u64, max: u16) -> u16 {
    let span = (max.saturating_sub(60) as u64).max(1);
    60 + (seq.wrapping_mul(2654435761) % span) as u16
}

/// Sends frames `0..n` on `tx`, `batch` slots per txsync, each carrying its
/// sequence number in its first 8 bytes and its last byte.
pub fn produce(
    tx: &AppRing<'_>,
    n: u64,
    batch: u32,
    max_len: u16,
    peer: Option<BorrowedFd<'_>>,
    timeout: Duration,
) -> Result<(), SyncError> {
    let r = &tx.ring;
    let ns = r.num_slots();
    let mut seq = 0u64;
    while seq < n {
        if !tx.ready() {
            tx.sync()?;
            if !tx.ready() {
                poll_rings(std::slice::from_ref(tx), Want::Ready, peer, Some(timeout))?;
            }
        }
        let mut cur = r.cur();
        let room = ring::space(cur, r.tail(), ns).min(batch);
        for _ in 0..room {
            if seq == n {
                break;
            }
            let mut s: NetmapSlot = r.slot(cur);
            let len = frame_len(seq, max_len);
            r.write_buf(s.buf_idx, 0, &seq.to_le_bytes())?;
            r.write_buf(s.buf_idx, len as usize - 1, &[seq as u8])?;
            s.len = len;
            r.set_slot(cur, s);
            cur = ring::next(cur, ns);
            seq += 1;
        }
        r.set_cur(cur);
        r.set_head(cur);
        tx.sync()?;
    }
    Ok(())
}

/// A frame that did not match what [`produce`] sent.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Out of order, lost or duplicated.
    #[error("frame {got} where {want} was expected")]
    Sequence {
        /// Sequence number expected.
        want: u64,
        /// Sequence number found.
        got: u64,
    },
    /// Wrong length or last byte.
    #[error("frame {seq}: {what}")]
    Content {
        /// Sequence number.
        seq: u64,
        /// What differed.
        what: String,
    },
    /// The protocol failed.
    #[error(transparent)]
    Sync(#[from] SyncError),
}

/// Receives `n` frames on `rx`, releasing `batch` at a time, and checks that
/// they are `0..n` in order with the lengths and bytes [`produce`] wrote.
pub fn consume(
    rx: &AppRing<'_>,
    n: u64,
    batch: u32,
    max_len: u16,
    peer: Option<BorrowedFd<'_>>,
    timeout: Duration,
) -> Result<(), CheckError> {
    let r = &rx.ring;
    let ns = r.num_slots();
    let mut want = 0u64;
    while want < n {
        if !rx.ready() {
            rx.sync()?;
            if !rx.ready() {
                poll_rings(std::slice::from_ref(rx), Want::Ready, peer, Some(timeout))?;
            }
        }
        let mut cur = r.cur();
        let avail = ring::space(cur, r.tail(), ns).min(batch);
        for _ in 0..avail {
            let s = r.slot(cur);
            let mut b = [0u8; 8];
            r.read_buf(s.buf_idx, 0, &mut b).map_err(SyncError::from)?;
            let got = u64::from_le_bytes(b);
            if got != want {
                return Err(CheckError::Sequence { want, got });
            }
            let len = frame_len(got, max_len);
            if s.len != len {
                return Err(CheckError::Content {
                    seq: got,
                    what: format!("len {} != {len}", s.len),
                });
            }
            let mut last = [0u8];
            r.read_buf(s.buf_idx, len as usize - 1, &mut last)
                .map_err(SyncError::from)?;
            if last[0] != got as u8 {
                return Err(CheckError::Content {
                    seq: got,
                    what: "last byte".into(),
                });
            }
            cur = ring::next(cur, ns);
            want += 1;
        }
        r.set_cur(cur);
        r.set_head(cur);
        rx.sync()?;
    }
    Ok(())
}

/// Fuzz target body for the port-name parser (`fuzz/fuzz_targets/portname.rs`,
/// also replayed over the seed corpus by `tests/fuzz_corpus.rs`).
///
/// Takes `data` as a name (as is if it is UTF-8, and also through
/// [`String::from_utf8_lossy`] if it is not) and parses it with
/// [`parse`](crate::portname::parse) and with
/// [`parse_with`](crate::portname::parse_with) under every combination of
/// [`ParseOptions`](crate::portname::ParseOptions). Panics, so that the
/// fuzzer reports it, if:
///
/// - `parse` and `parse_with` with default options disagree;
/// - an accepted spec does not round-trip through its `Display` form under
///   the same options (`parse_with(&spec.to_string(), o) != Ok(spec)`), or
///   its `nr_name` is longer than
///   [`MAX_NR_NAME_LEN`](crate::portname::MAX_NR_NAME_LEN);
/// - an error does not echo the name, points past its end or inside a UTF-8
///   character, or fails to format.
pub fn fuzz_portname(data: &[u8]) {
    use crate::portname::{parse, parse_with, ParseOptions, MAX_NR_NAME_LEN};

    fn check(name: &str) {
        let plain = parse(name);
        assert_eq!(
            plain,
            parse_with(name, ParseOptions::default()),
            "{name:?}: parse and parse_with(default) disagree"
        );
        for default_netmap_prefix in [false, true] {
            for enable_offset in [false, true] {
                let opts = ParseOptions {
                    default_netmap_prefix,
                    enable_offset,
                };
                match parse_with(name, opts) {
                    Ok(spec) => {
                        let canon = spec.to_string();
                        let again = parse_with(&canon, opts);
                        assert!(
                            again.as_ref() == Ok(&spec),
                            "{name:?} with {opts:?}: accepted as {spec:?}, \
                             but its canonical form {canon:?} parses as {again:?}"
                        );
                        assert!(
                            spec.nr_name().len() <= MAX_NR_NAME_LEN,
                            "{name:?} with {opts:?}: nr_name {:?} too long",
                            spec.nr_name()
                        );
                    }
                    Err(e) => {
                        assert_eq!(e.name, name, "{name:?} with {opts:?}: wrong name in {e}");
                        assert!(
                            e.pos <= name.len() && name.is_char_boundary(e.pos),
                            "{name:?} with {opts:?}: bad position in {e}"
                        );
                        let _ = e.to_string();
                    }
                }
            }
        }
    }

    match std::str::from_utf8(data) {
        Ok(name) => check(name),
        Err(_) => check(&String::from_utf8_lossy(data)),
    }
}

/// Fuzz target body for the control-socket codec (`fuzz/fuzz_targets/ctrl.rs`,
/// also replayed over the seed corpus by `tests/fuzz_corpus.rs`).
///
/// Decodes `data` as a [`Request`](crate::ctrl::Request) and as a
/// [`Reply`](crate::ctrl::Reply). Panics, so that the fuzzer reports it, if:
///
/// - an accepted message does not encode back to exactly `data` (the wire
///   format has one encoding per value), or its encoding does not decode to
///   the same value;
/// - an error has errno 0 or fails to format.
pub fn fuzz_ctrl(data: &[u8]) {
    use crate::ctrl::{Reply, Request};

    match Request::decode(data) {
        Ok(req) => {
            let enc = req.encode().expect("accepted request fails to encode");
            assert_eq!(enc, data, "request re-encodes differently: {req:?}");
            let again = Request::decode(&enc).expect("re-encoded request rejected");
            assert_eq!(again, req);
        }
        Err(e) => {
            assert!(e.errno() > 0, "{e:?}: errno 0");
            let _ = e.to_string();
        }
    }
    match Reply::decode_nfds(data) {
        Ok((rep, nfds)) => {
            let enc = rep
                .encode_with_nfds(nfds)
                .expect("accepted reply fails to encode");
            assert_eq!(enc, data, "reply re-encodes differently: {rep:?}");
            let again = Reply::decode_nfds(&enc).expect("re-encoded reply rejected");
            assert_eq!(again, (rep, nfds));
        }
        Err(e) => {
            assert!(e.errno() > 0, "{e:?}: errno 0");
            let _ = e.to_string();
        }
    }
}

/// Copies as many of `frames` as fit into `tx`, one slot each, publishes
/// them and txsyncs. Returns how many went.
pub fn send_frames(tx: &AppRing<'_>, frames: &[Vec<u8>]) -> Result<usize, SyncError> {
    let r = &tx.ring;
    let ns = r.num_slots();
    tx.sync()?;
    let mut cur = r.cur();
    let n = frames.len().min(ring::space(cur, r.tail(), ns) as usize);
    for f in &frames[..n] {
        let mut s = r.slot(cur);
        r.write_buf(s.buf_idx, 0, f)?;
        s.len = f.len() as u16;
        s.flags = 0;
        r.set_slot(cur, s);
        cur = ring::next(cur, ns);
    }
    r.set_cur(cur);
    r.set_head(cur);
    tx.sync()?;
    Ok(n)
}

/// Takes every frame waiting in `rx` (one slot each) into `out`, releases
/// the slots and rxsyncs. Returns how many were taken.
pub fn recv_frames(rx: &AppRing<'_>, out: &mut Vec<Vec<u8>>) -> Result<usize, SyncError> {
    rx.sync()?;
    let r = &rx.ring;
    let ns = r.num_slots();
    let mut cur = r.cur();
    let mut n = 0;
    while cur != r.tail() {
        let s = r.slot(cur);
        let mut b = vec![0u8; s.len as usize];
        r.read_buf(s.buf_idx, 0, &mut b)?;
        out.push(b);
        cur = ring::next(cur, ns);
        n += 1;
    }
    r.set_cur(cur);
    r.set_head(cur);
    rx.sync()?;
    Ok(n)
}

/// Runs `f` on every file of the fuzz corpus directory `dir` (sorted) and
/// checks there were at least `min_seeds` of them, so a missing or emptied
/// corpus cannot make a replay pass vacuously. A panic in `f` names the
/// file. Returns the number of files replayed.
pub fn replay_corpus(dir: &std::path::Path, min_seeds: usize, f: impl Fn(&[u8])) -> usize {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Vec<std::path::PathBuf> = entries
        .map(|e| {
            e.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= min_seeds,
        "{}: {} files, expected at least {min_seeds}",
        dir.display(),
        files.len()
    );
    for path in &files {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&data))) {
            eprintln!("corpus file {} ({data:02x?}) failed", path.display());
            std::panic::resume_unwind(panic);
        }
    }
    eprintln!("{}: replayed {} corpus files", dir.display(), files.len());
    files.len()
}
