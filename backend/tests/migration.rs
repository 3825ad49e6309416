//! Live migration on the port's side, in process: the dirty log marks
//! every guest page the data path writes (RX frames and headers, used
//! entries and index, notification fields) and nothing else; SET_LOG_BASE
//! takes only a log that covers the guest and cannot shrink, and answers
//! as QEMU waits for; SEND_RARP's announcement leaves through the switch
//! ahead of the guest's frames, and the switch learns the MAC there.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use backend::dirty::{test_log_fd, DirtyLog, LOG_PAGE};
use backend::queue::{rarp_frame, Announcement, RxQueue, RxSet, TxQueue};
use backend::testing::mem_queue::{Dir, MemQueue};
use backend::testing::NullDevice;
use backend::VNET_HDR_LEN;
use netmap::sys::EventFd;
use vale::testing::{eth_frame, mac, MemFrame, MemSink, MemSource};
use vale::{Lookup, PortConfig, Scratch, Switch};

const BUF: u32 = 2048;

fn pages(gpa: u64, len: u64) -> impl Iterator<Item = u64> {
    (gpa / LOG_PAGE)..=((gpa + len - 1) / LOG_PAGE)
}

fn dirty(log: &DirtyLog, end: u64) -> BTreeSet<u64> {
    (0..end.div_ceil(LOG_PAGE))
        .filter(|&p| log.is_dirty(p))
        .collect()
}

fn log_for(q: &MemQueue) -> Arc<DirtyLog> {
    let end = q.layout()[4];
    let bytes = end.div_ceil(LOG_PAGE * 8).next_multiple_of(8);
    Arc::new(DirtyLog::map(test_log_fd(bytes.next_multiple_of(4096), true), bytes, 0).unwrap())
}

fn rx_set(q: &MemQueue, mrg: bool) -> RxSet {
    let rq = RxQueue::new(
        q.slot(),
        Arc::default(),
        Arc::default(),
        Arc::new(AtomicBool::new(mrg)),
    );
    RxSet::new(
        vec![rq],
        Arc::new(EventFd::new().unwrap()),
        Arc::new(AtomicU64::new(0)),
    )
}

/// Frames into a guest's RX queue while it logs: the pages of the buffers
/// written (header and frame) and of the used ring are marked, and no
/// other — not the descriptor table, not the available ring, not the
/// buffers the guest posted and the port left alone.
#[test]
fn every_page_an_rx_batch_writes_is_marked_and_nothing_else() {
    for mrg in [false, true] {
        let sw = Switch::new("vale0");
        let hdr = PortConfig {
            vnet_hdr_len: VNET_HDR_LEN as u16,
            ..Default::default()
        };
        let a = sw
            .attach("a", PortConfig::default(), MemSink::new(64, 2048))
            .unwrap();
        let mut b_rx = MemQueue::new(Dir::Rx, 64, BUF, false);
        sw.attach("b", hdr, rx_set(&b_rx, mrg)).unwrap();
        b_rx.post_all();
        let log = log_for(&b_rx);
        let [desc, avail, used, data, end] = b_rx.layout();
        b_rx.set_log(Some(log.clone()), None);
        // Five frames; with mergeable buffers the fourth spans three.
        let lens = [60usize, 1000, 2000, if mrg { 5000 } else { 1500 }, 70];
        let mut src = MemSource::default();
        for (i, &l) in lens.iter().enumerate() {
            src.push(MemFrame::new(eth_frame([0xff; 6], mac(1), l, i as u64)));
        }
        let mut sc = Scratch::default();
        assert_eq!(sw.forward(a, &mut src, &mut sc, 0).frames, lens.len());
        // One used entry per buffer with mergeable buffers, per frame
        // without.
        let used_entries = if mrg { lens.len() + 2 } else { lens.len() };
        assert_eq!(b_rx.reap(), used_entries, "mrg {mrg}");
        let mut want = BTreeSet::new();
        let mut buf = 0u64;
        for &l in &lens {
            let mut left = (l + VNET_HDR_LEN) as u64;
            while left > 0 {
                let n = left.min(u64::from(BUF));
                want.extend(pages(data + buf * u64::from(BUF), n));
                left -= n;
                buf += 1;
            }
        }
        // Used flags, index and entries (the ring fits one page here).
        want.extend(pages(used, 4 + 8 * used_entries as u64));
        assert_eq!(dirty(&log, end), want, "mrg {mrg}");
        for p in pages(desc, 16 * 64).chain(pages(avail, 4 + 2 * 64)) {
            assert!(!want.contains(&p) && !log.is_dirty(p));
        }
        assert_eq!(log.outside(), 0);

        // Logging off: the next batch marks nothing.
        let before = dirty(&log, end);
        b_rx.set_log(None, None);
        b_rx.post_all();
        src.push(MemFrame::new(eth_frame([0xff; 6], mac(1), 60, 9)));
        assert_eq!(sw.forward(a, &mut src, &mut sc, 0).frames, 1);
        assert_eq!(dirty(&log, end), before);
    }
}

/// The used ring is logged where SET_VRING_ADDR's `log_guest_addr` says,
/// and a guest TX queue's used entries are logged too (the frames, which
/// the port only reads, are not).
#[test]
fn tx_used_entries_are_logged_at_the_log_address() {
    let sw = Switch::new("vale0");
    let hdr = PortConfig {
        vnet_hdr_len: VNET_HDR_LEN as u16,
        ..Default::default()
    };
    let mut a_tx = MemQueue::new(Dir::Tx, 64, BUF, true);
    let a = sw.attach("a", hdr, MemSink::new(64, 2048)).unwrap();
    sw.attach("b", PortConfig::default(), MemSink::new(64, 2048))
        .unwrap();
    let log = log_for(&a_tx);
    let [_, _, used, data, end] = a_tx.layout();
    // Logged past the queue's memory: only that page is marked.
    let at = end.next_multiple_of(LOG_PAGE);
    assert!(log.covers() > at + LOG_PAGE);
    a_tx.set_log(Some(log.clone()), Some(at));
    a_tx.fill_tx(|i| {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend(eth_frame([0xff; 6], mac(2), 100, u64::from(i)));
        f
    });
    a_tx.post(10);
    let mut txq = TxQueue::new(a_tx.slot(), Arc::default(), Arc::default());
    let mut sc = Scratch::default();
    assert_eq!(sw.forward(a, &mut txq, &mut sc, 0).frames, 10);
    assert_eq!(a_tx.reap(), 10);
    let got = dirty(&log, at + LOG_PAGE);
    assert!(got.contains(&(at / LOG_PAGE)), "{got:?}");
    assert!(
        !got.contains(&(used / LOG_PAGE)),
        "logged at the ring, not the log address"
    );
    assert!(
        got.iter()
            .all(|&p| p == at / LOG_PAGE || p == (at + 4 + 8 * 64) / LOG_PAGE),
        "{got:?}: only the used ring's log address (entries, index, avail_event)"
    );
    assert!(!log.is_dirty(data / LOG_PAGE), "TX buffers are only read");
}

/// A SEND_RARP announcement leaves before the guest's frames, from the
/// port: the switch learns the MAC there (a station move if another port
/// had it), every other port gets a RARP request; held by backpressure,
/// it is sent at the next fetch, once.
#[test]
fn an_announcement_moves_the_station_and_reaches_every_port() {
    let sw = Switch::new("vale0");
    let hdr = PortConfig {
        vnet_hdr_len: VNET_HDR_LEN as u16,
        ..Default::default()
    };
    let old = MemSink::new(64, 2048);
    let other = MemSink::new(64, 2048);
    let src_port = sw
        .attach("src", PortConfig::default(), old.clone())
        .unwrap();
    let o = sw
        .attach("other", PortConfig::default(), other.clone())
        .unwrap();
    let dst = sw.attach("dst", hdr, MemSink::new(64, 2048)).unwrap();
    let m = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    // The guest's MAC is known at the source port.
    let mut s = MemSource::default();
    s.push(MemFrame::new(eth_frame([0xff; 6], m, 60, 0)));
    let mut sc = Scratch::default();
    sw.forward(src_port, &mut s, &mut sc, 0);
    other.take();
    assert_eq!(sw.with_lookup_mut(|l| l.find(&m, 0)), Some(src_port));

    // The destination's queue is not running yet: the announcement goes
    // anyway (the port is on the switch).
    let a_tx = MemQueue::new(Dir::Tx, 64, BUF, false);
    let ann = Arc::new(Announcement::default());
    let mut txq =
        TxQueue::new(a_tx.slot(), Arc::default(), Arc::default()).with_announce(ann.clone());
    ann.post(m);
    assert_eq!(sw.forward(dst, &mut txq, &mut sc, 1).frames, 1);
    assert_eq!(sw.with_lookup_mut(|l| l.find(&m, 1)), Some(dst));
    assert_eq!(sw.with_lookup_mut(|l| l.stats().moves), 1);
    let rarp = rarp_frame(m)[VNET_HDR_LEN..].to_vec();
    assert_eq!(
        other.take().iter().map(MemFrame::bytes).collect::<Vec<_>>(),
        vec![rarp.clone()]
    );
    assert_eq!(
        old.take().iter().map(MemFrame::bytes).collect::<Vec<_>>(),
        vec![rarp]
    );
    // Once.
    assert_eq!(sw.forward(dst, &mut txq, &mut sc, 1).frames, 0);
    let _ = o;
}

/// One vhost-user message: header (request, flags v1, size) and body.
fn msg(code: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend(code.to_le_bytes());
    m.extend(1u32.to_le_bytes());
    m.extend((body.len() as u32).to_le_bytes());
    m.extend(body);
    m
}

const SET_MEM_TABLE: u32 = 5;
const SET_LOG_BASE: u32 = 6;

fn send(a: &UnixStream, m: &[u8], fd: Option<std::os::fd::BorrowedFd<'_>>) {
    match fd {
        Some(fd) => {
            let n = netmap::sys::send_with_fds(a, m, &[fd]).unwrap();
            (&*a).write_all(&m[n..]).unwrap();
        }
        None => (&*a).write_all(m).unwrap(),
    }
}

fn log_body(size: u64, offset: u64) -> Vec<u8> {
    let mut b = size.to_le_bytes().to_vec();
    b.extend(offset.to_le_bytes());
    b
}

/// SET_LOG_BASE: a sealed log that covers the guest is mapped and
/// answered (QEMU waits for the reply even without REPLY_ACK); a log
/// that could shrink, or that is too small for the guest's memory, ends
/// the session with an error naming why (a migration without a usable log
/// would corrupt the guest), never a write past its end.
#[test]
fn set_log_base_takes_only_a_log_it_can_use() {
    use backend::testing::session_on;
    // 64 MiB of guest memory at 0: 2 KiB of log.
    let guest = test_log_fd(64 << 20, false);
    let mut table = 1u32.to_le_bytes().to_vec();
    table.extend(0u32.to_le_bytes());
    for v in [0u64, 64 << 20, 0x7f00_0000_0000, 0] {
        table.extend(v.to_le_bytes());
    }
    for (log_bytes, file, sealed, ok) in [
        (2048u64, 4096u64, true, Ok(())),
        (1024, 4096, true, Err("covers guest memory up to")),
        (2048, 4096, false, Err("sealed")),
        (8192, 4096, true, Err("4096 bytes")),
    ] {
        let (a, b) = UnixStream::pair().unwrap();
        let dev = NullDevice::default();
        let mut s = session_on(&dev, b);
        send(&a, &msg(SET_MEM_TABLE, &table), Some(guest.as_fd()));
        s.serve_one().unwrap();
        let log = test_log_fd(file, sealed);
        send(
            &a,
            &msg(SET_LOG_BASE, &log_body(log_bytes, 0)),
            Some(log.as_fd()),
        );
        match (s.serve_one(), ok) {
            (Ok(()), Ok(())) => {
                let mut r = [0u8; 12];
                (&a).read_exact(&mut r).unwrap();
                assert_eq!(
                    u32::from_le_bytes(r[0..4].try_into().unwrap()),
                    SET_LOG_BASE
                );
                assert_ne!(
                    u32::from_le_bytes(r[4..8].try_into().unwrap()) & 0x4,
                    0,
                    "a reply"
                );
                assert_eq!(u32::from_le_bytes(r[8..12].try_into().unwrap()), 0);
            }
            (Err(e), Err(why)) => {
                let t = e.to_string();
                assert!(t.contains(why) && t.contains("SET_LOG_BASE"), "{t}");
            }
            (r, want) => panic!("log {log_bytes}/{file} sealed {sealed}: {r:?}, wanted {want:?}"),
        }
        let _ = log.as_raw_fd();
    }
}

/// While the driver logs, guest memory that grows past what the log
/// covers ends the session (its pages would be written unlogged); QEMU
/// grows the log first.
#[test]
fn memory_past_the_log_ends_a_logging_session() {
    use backend::testing::session_on;
    const SET_FEATURES: u32 = 2;
    const ADD_MEM_REG: u32 = 37;
    let guest = test_log_fd(64 << 20, false);
    let mut table = 1u32.to_le_bytes().to_vec();
    table.extend(0u32.to_le_bytes());
    for v in [0u64, 64 << 20, 0x7f00_0000_0000, 0] {
        table.extend(v.to_le_bytes());
    }
    let (a, b) = UnixStream::pair().unwrap();
    let dev = NullDevice::default();
    let mut s = session_on(&dev, b);
    send(&a, &msg(SET_MEM_TABLE, &table), Some(guest.as_fd()));
    s.serve_one().unwrap();
    let log = test_log_fd(4096, true);
    send(
        &a,
        &msg(SET_LOG_BASE, &log_body(2048, 0)),
        Some(log.as_fd()),
    );
    s.serve_one().unwrap();
    let features = backend::device::features::LOG_ALL | backend::device::features::VERSION_1;
    send(&a, &msg(SET_FEATURES, &features.to_le_bytes()), None);
    s.serve_one().unwrap();
    // 64 MiB more at 64 MiB: past the 2 KiB log's 64 MiB.
    let more = test_log_fd(64 << 20, false);
    let mut reg = 0u64.to_le_bytes().to_vec();
    for v in [64u64 << 20, 64 << 20, 0x7f10_0000_0000, 0] {
        reg.extend(v.to_le_bytes());
    }
    send(&a, &msg(ADD_MEM_REG, &reg), Some(more.as_fd()));
    let e = s.serve_one().expect_err("the session ends");
    assert!(e.to_string().contains("past the"), "{e}");
}
