//! Client rings as switch ports: frames a client writes into its TX ring go
//! through the engine into another client's RX ring, with the real CSB
//! protocol on both sides; hostile slots are refused and counted.

use std::sync::Arc;
use std::time::Duration;

use netmap::csb::Csb;
use netmap::sync::{poll_rings, AppRing, Want};
use netmap::sys::EventFd;
use netmap::testing::{recv_frames, send_frames, LoopClient, Loopback};
use vale::ring_port::{RingGeometry, RingSink, RingSource};
use vale::testing::{eth_frame, mac};
use vale::{DropReason, PortConfig, Scratch, Switch};

fn geometry(lb: &Loopback, off: usize) -> RingGeometry {
    let (num_slots, buf_base, buf_size, nbufs) = lb.region.ring_params(off).unwrap();
    RingGeometry {
        off,
        num_slots,
        buf_base,
        buf_size,
        nbufs,
    }
}

fn switch_side(lb: &Loopback) -> (RingSource, RingSink) {
    let map = lb.region.map_arc();
    let csb = Arc::new(Csb::from_fd(lb.csb.share_fd().unwrap(), 2).unwrap());
    let irq_tx = Arc::new(EventFd::from_fd(lb.irq_tx.try_clone_fd().unwrap()));
    let irq_rx = Arc::new(EventFd::from_fd(lb.irq_rx.try_clone_fd().unwrap()));
    let src =
        RingSource::new(map.clone(), geometry(lb, lb.tx_off), csb.clone(), 0, irq_tx).unwrap();
    let sink = RingSink::new(map, geometry(lb, lb.rx_off), csb, 1, irq_rx).unwrap();
    (src, sink)
}

fn client(lb: &Loopback) -> LoopClient {
    LoopClient::from_fds(lb.fds().unwrap(), lb.region.memsize(), lb.nifp).unwrap()
}

fn send(tx: &AppRing<'_>, frames: &[Vec<u8>]) -> usize {
    send_frames(tx, frames).unwrap()
}

fn recv(rx: &AppRing<'_>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    recv_frames(rx, &mut out).unwrap();
    out
}

#[test]
fn client_to_client_through_the_engine() {
    let a = Loopback::new(256, 2048).unwrap();
    let b = Loopback::new(256, 2048).unwrap();
    let (mut a_src, a_sink) = switch_side(&a);
    let (_b_src, b_sink) = switch_side(&b);
    let sw = Switch::new("vale0");
    let pa = sw
        .attach("a", PortConfig::default(), Box::new(a_sink))
        .unwrap();
    let _pb = sw
        .attach("b", PortConfig::default(), Box::new(b_sink))
        .unwrap();
    let (ca, cb) = (client(&a), client(&b));
    let (tx, rx) = (ca.tx().unwrap(), cb.rx().unwrap());
    let frames: Vec<Vec<u8>> = (60..=1514)
        .step_by(7)
        .map(|l| eth_frame([0xff; 6], mac(1), l, l as u64))
        .collect();
    let mut sc = Scratch::default();
    let mut got = Vec::new();
    let mut sent = 0;
    while got.len() < frames.len() {
        sent += send(&tx, &frames[sent..]);
        sw.forward(pa, &mut a_src, &mut sc, 0);
        if poll_rings(&[rx], Want::Ready, None, Some(Duration::from_secs(5))).is_ok() {
            got.extend(recv(&rx));
        }
    }
    assert_eq!(got, frames);
    // The sender's TX ring is free again: the switch advanced hwcur.
    tx.sync().unwrap();
    assert!(tx.drained());
}

#[test]
fn hostile_slots_are_refused_and_counted() {
    let a = Loopback::new(64, 2048).unwrap();
    let b = Loopback::new(64, 2048).unwrap();
    let (mut a_src, a_sink) = switch_side(&a);
    let (_b_src, b_sink) = switch_side(&b);
    let sw = Switch::new("vale0");
    let pa = sw
        .attach("a", PortConfig::default(), Box::new(a_sink))
        .unwrap();
    let pb = sw
        .attach("b", PortConfig::default(), Box::new(b_sink))
        .unwrap();
    let (ca, cb) = (client(&a), client(&b));
    let (tx, rx) = (ca.tx().unwrap(), cb.rx().unwrap());
    let f = eth_frame([0xff; 6], mac(1), 100, 0);
    send(&tx, &[f.clone(), f.clone(), f.clone(), f.clone()]);
    // Corrupt slots 1 (buffer index past the pool), 2 (len over the
    // buffer) and 3 (NS_INDIRECT from a client) after the txsync.
    let r = &tx.ring;
    let mut s = r.slot(1);
    s.buf_idx = u32::MAX;
    r.set_slot(1, s);
    let mut s = r.slot(2);
    s.len = 4000;
    r.set_slot(2, s);
    let mut s = r.slot(3);
    s.flags = netmap::abi::NS_INDIRECT;
    s.ptr = 0x1000;
    r.set_slot(3, s);
    // And the receiver points its first RX slot outside the pool.
    let mut s = rx.ring.slot(0);
    s.buf_idx = 1;
    rx.ring.set_slot(0, s);
    let mut sc = Scratch::default();
    sw.forward(pa, &mut a_src, &mut sc, 0);
    assert_eq!(sw.stats(pa).unwrap().drop(DropReason::BadSlot), 3);
    assert_eq!(
        sw.stats(pb).unwrap().drop(DropReason::BadSlot),
        1,
        "receiver's bad slot"
    );
    assert_eq!(a_src.stats().bad_slots, 3);
    assert!(recv(&rx).is_empty());
    // The next good frame gets through once the receiver fixes its slot.
    let mut s = rx.ring.slot(0);
    s.buf_idx = rx.ring.slot(1).buf_idx;
    rx.ring.set_slot(0, s);
    send(&tx, std::slice::from_ref(&f));
    sw.forward(pa, &mut a_src, &mut sc, 0);
    assert_eq!(recv(&rx), vec![f]);
}

#[test]
fn head_outside_the_window_resets_the_source_ring() {
    let a = Loopback::new(16, 2048).unwrap();
    let (mut a_src, _) = switch_side(&a);
    let sw = Switch::new("vale0");
    let pa = sw
        .attach(
            "a",
            PortConfig::default(),
            Box::new(vale::testing::NullSink::new(16, 2048)),
        )
        .unwrap();
    let ca = client(&a);
    let tx = ca.tx().unwrap();
    tx.ring.set_head(40);
    tx.ring.set_cur(40);
    // The library refuses to publish it; a hostile client writes the CSB.
    assert!(tx.sync().is_err());
    tx.csb.cur.store(40, std::sync::atomic::Ordering::Relaxed);
    tx.csb.head.store(40, std::sync::atomic::Ordering::Release);
    let fw = sw.forward(pa, &mut a_src, &mut Scratch::default(), 0);
    assert_eq!(fw.frames, 0);
    assert_eq!(a_src.stats().resets, 1);
    assert_eq!((tx.ring.head(), tx.ring.cur()), (0, 0));
}
