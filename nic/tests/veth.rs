//! The generic adapter against the kernel's stack: a veth pair whose far
//! end sits in a network namespace with an address. ARP and ping from the
//! adapter's TX ring must be answered on its RX ring. Needs root (skipped
//! otherwise) and `ip` from iproute2.

use std::time::{Duration, Instant};

use nic::testing::{
    arp_request, echo_request, is_arp_reply, is_echo_reply, root, stack_answers, tcp_reset_to,
    tcp_syn, Veth, OUR_MAC,
};
use nic::{GenericNic, VNET_HDR_LEN};
use vale::{Frag, Sink, Source};

fn send(nic: &mut GenericNic, frame: &[u8]) {
    let frags = [Frag::from_slice(frame, 0)];
    assert_eq!(nic.tx.push(&frags, 0, &[0; VNET_HDR_LEN]), vale::Push::Done);
    nic.tx.publish();
}

/// Receives until `want` matches a frame (vnet header stripped) or 3 s.
fn recv_until(nic: &mut GenericNic, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let t0 = Instant::now();
    let mut frags = Vec::new();
    while t0.elapsed() < Duration::from_secs(3) {
        frags.clear();
        let n = nic.rx.fetch(&mut frags, 64);
        let mut hit = None;
        let mut frame = Vec::new();
        for f in &frags {
            let mut buf = vec![0u8; f.len() as usize];
            f.read(0, &mut buf);
            frame.extend_from_slice(&buf);
            if f.flags() & netmap::abi::NS_MOREFRAG == 0 {
                let body = frame.split_off(VNET_HDR_LEN.min(frame.len()));
                if hit.is_none() && want(&body) {
                    hit = Some(body);
                }
                frame.clear();
            }
        }
        nic.rx.complete(n);
        if hit.is_some() {
            return hit;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

#[test]
fn arp_and_ping_through_the_generic_adapter() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let v = Veth::new("g");
    let mut nic = GenericNic::open(&v.here).unwrap();
    send(&mut nic, &arp_request(v.subnet));
    let reply = recv_until(&mut nic, |f| is_arp_reply(f, v.subnet))
        .expect("an ARP reply from the namespace");
    assert_eq!(&reply[0..6], &OUR_MAC, "the reply is to us");
    let their_mac: [u8; 6] = reply[6..12].try_into().unwrap();
    for seq in 1..=5u16 {
        send(&mut nic, &echo_request(their_mac, v.subnet, seq));
        let r = recv_until(&mut nic, |f| is_echo_reply(f, seq));
        assert!(r.is_some(), "echo reply {seq}");
    }
}

#[test]
fn a_missing_interface_is_named() {
    let e = GenericNic::open("vale-no-such-if").unwrap_err();
    assert_eq!(e.errno(), libc::ENXIO);
    assert!(e.to_string().contains("vale-no-such-if"), "{e}");
}

/// One owner per interface, across processes as with netmap's EBUSY (the
/// lock is per open file, so a second open in this process counts too);
/// the interface is free again once the first owner's rings are gone.
#[test]
fn an_interface_has_one_owner() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let v = Veth::new("b");
    let first = GenericNic::open(&v.here).unwrap();
    let e = GenericNic::open(&v.here).unwrap_err();
    assert_eq!(e.errno(), libc::EBUSY, "{e}");
    let GenericNic { rx, tx, .. } = first;
    drop(rx);
    assert_eq!(
        GenericNic::open(&v.here).unwrap_err().errno(),
        libc::EBUSY,
        "held while either ring lives"
    );
    drop(tx);
    GenericNic::open(&v.here).unwrap();
}

/// netmap-owned: while the adapter has the interface, what arrives on it
/// goes to the adapter only, not also up the host stack; closing the
/// adapter gives the stack its interface back.
#[test]
fn the_host_stack_is_cut_off_while_the_adapter_owns_the_interface() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let v = Veth::new("c");
    let host = format!("10.77.{}.3", v.subnet);
    let ok = std::process::Command::new("ip")
        .args(["addr", "add", &format!("{host}/24"), "dev", &v.here])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "address on the near end");
    assert!(stack_answers(&v.ns, &host), "the host stack answers before");
    let mut nic = GenericNic::open(&v.here).unwrap();
    assert!(nic.host_stack_cut, "the ingress drop is in place");
    assert!(
        !stack_answers(&v.ns, &host),
        "the host stack is cut off while the adapter has the interface"
    );
    // The adapter itself still receives: the namespace's ARP requests
    // for the host address arrived on its ring.
    let mut frags = Vec::new();
    let n = nic.rx.fetch(&mut frags, 256);
    assert!(n > 0, "the adapter received the namespace's frames");
    nic.rx.complete(n);
    drop(nic);
    assert!(stack_answers(&v.ns, &host), "the host stack answers after");
}

/// The native adapter (AF_XDP, XDP in driver mode: veth has it, copy
/// mode) answers as the generic one does, frames without a header.
#[test]
fn arp_and_ping_through_the_native_adapter() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let v = Veth::new("x");
    let nic = nic::open(&v.here, nic::AdMode::Native).unwrap();
    assert_eq!(nic.kind(), "native", "veth: driver mode, copy");
    assert_eq!(nic.vnet_hdr_len(), 0);
    let nic::Nic::Native(mut nic) = nic else {
        unreachable!()
    };
    let t0 = Instant::now();
    let mut their_mac = None;
    let mut frags = Vec::new();
    // The namespace's first ARP reply may race the program's attachment.
    while their_mac.is_none() && t0.elapsed() < Duration::from_secs(5) {
        let req = arp_request(v.subnet);
        assert_eq!(
            nic.tx.push(&[Frag::from_slice(&req, 0)], 0, &[]),
            vale::Push::Done
        );
        nic.tx.publish();
        std::thread::sleep(Duration::from_millis(50));
        frags.clear();
        let n = nic.rx.fetch(&mut frags, 64);
        for f in &frags {
            let mut b = vec![0u8; f.len() as usize];
            f.read(0, &mut b);
            if is_arp_reply(&b, v.subnet) {
                their_mac = Some(<[u8; 6]>::try_from(&b[6..12]).unwrap());
            }
        }
        nic.rx.complete(n);
    }
    let their_mac = their_mac.expect("an ARP reply on the native adapter");
    for seq in 1..=5u16 {
        let req = echo_request(their_mac, v.subnet, seq);
        assert_eq!(
            nic.tx.push(&[Frag::from_slice(&req, 0)], 0, &[]),
            vale::Push::Done
        );
        nic.tx.publish();
        let mut got = false;
        let t0 = Instant::now();
        while !got && t0.elapsed() < Duration::from_secs(3) {
            frags.clear();
            let n = nic.rx.fetch(&mut frags, 64);
            for f in &frags {
                let mut b = vec![0u8; f.len() as usize];
                f.read(0, &mut b);
                got |= is_echo_reply(&b, seq);
            }
            nic.rx.complete(n);
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(got, "echo reply {seq}");
    }
    // Thousands of frames cycle both halves of the UMEM several times,
    // pushed as the engine pushes to a port without backpressure (no
    // `room` first), and every one is answered.
    let mut replies = 0;
    // Only echo replies count: the namespace's own IPv6 chatter (router
    // solicitations, MLD) arrives on the same ring.
    let count = |nic: &mut nic::XdpNic, frags: &mut Vec<Frag>| {
        frags.clear();
        let n = nic.rx.fetch(frags, 256);
        let replies = frags
            .iter()
            .filter(|f| {
                let mut b = vec![0u8; f.len() as usize];
                f.read(0, &mut b);
                b.len() >= 42 && b[12..14] == [0x08, 0x00] && b[34] == 0
            })
            .count();
        nic.rx.complete(n);
        replies
    };
    for seq in 0..6000u16 {
        let req = echo_request(their_mac, v.subnet, seq);
        let mut tries = 0;
        while nic.tx.push(&[Frag::from_slice(&req, 0)], 0, &[]) != vale::Push::Done {
            nic.tx.publish();
            replies += count(&mut nic, &mut frags);
            std::thread::sleep(Duration::from_millis(1));
            tries += 1;
            assert!(tries < 1000, "the transmit ring never frees (frame {seq})");
        }
        if seq % 32 == 31 {
            nic.tx.publish();
            replies += count(&mut nic, &mut frags);
        }
    }
    nic.tx.publish();
    let t0 = Instant::now();
    while replies < 6000 && t0.elapsed() < Duration::from_secs(5) {
        replies += count(&mut nic, &mut frags);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(replies, 6000, "every echo request answered");
    assert_eq!(nic.rx.bad_frames(), 0);
    assert_eq!(nic.tx.send_errors(), 0);
    drop(nic);
    // The interface is free again at once, in either mode (the kernel
    // releases a closed socket's queue a moment later).
    drop(nic::open(&v.here, nic::AdMode::Native).unwrap());
    drop(nic::open(&v.here, nic::AdMode::Native).unwrap());
    nic::open(&v.here, nic::AdMode::Generic).unwrap();
}

/// A frame the kernel refuses (a virtio-net header asking for TSO with a
/// segment size of 0) is counted and skipped; the frames around it in the
/// same batch still go out.
#[test]
fn a_refused_frame_does_not_take_its_batch_with_it() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let v = Veth::new("r");
    let mut nic = GenericNic::open(&v.here).unwrap();
    send(&mut nic, &arp_request(v.subnet));
    let reply = recv_until(&mut nic, |f| is_arp_reply(f, v.subnet)).expect("ARP reply");
    let their_mac: [u8; 6] = reply[6..12].try_into().unwrap();
    let mut bad_hdr = [0u8; VNET_HDR_LEN];
    bad_hdr[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4, gso_size 0
    for (seq, hdr) in [
        (1u16, [0; VNET_HDR_LEN]),
        (2, bad_hdr),
        (3, [0; VNET_HDR_LEN]),
    ] {
        let f = echo_request(their_mac, v.subnet, seq);
        assert_eq!(
            nic.tx.push(&[Frag::from_slice(&f, 0)], 0, &hdr),
            vale::Push::Done
        );
    }
    nic.tx.publish();
    assert_eq!(nic.tx.refused(), 1, "the bad frame is counted");
    assert_eq!(nic.tx.send_errors(), 0);
    // Both replies may come in one fetch: note each as it passes.
    let (one, three) = (std::cell::Cell::new(false), std::cell::Cell::new(false));
    let both = recv_until(&mut nic, |f| {
        one.set(one.get() || is_echo_reply(f, 1));
        three.set(three.get() || is_echo_reply(f, 3));
        one.get() && three.get()
    });
    assert!(
        both.is_some(),
        "echo 1 answered: {}, echo 3: {}",
        one.get(),
        three.get()
    );
}

/// An interface with two receive queues is opened with a ring per queue
/// (a fanout member each for generic, an AF_XDP socket each for native):
/// SYNs of many flows to a closed port are answered by a reset each,
/// which the namespace sends on the queue its flow hashes to; every reset
/// arrives once, on one ring, none lost, none seen twice, and both rings
/// get some.
#[test]
fn every_queue_has_its_ring() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    type Queues = Vec<nic::Queue>;
    for mode in [nic::AdMode::Generic, nic::AdMode::Native] {
        let v = Veth::with_queues(
            if mode == nic::AdMode::Native {
                "qn"
            } else {
                "qg"
            },
            2,
        );
        let (mut queues, cfg) = nic::open(&v.here, mode).unwrap().into_queues();
        assert_eq!(queues.len(), 2, "{mode:?}: a ring per queue");
        let hdr = vec![0u8; cfg.vnet_hdr_len as usize];
        let mut frags = Vec::new();
        // Every frame each queue received, header stripped.
        let mut drain = |queues: &mut Queues| {
            let mut got = vec![Vec::new(); queues.len()];
            for (q, (rx, _)) in queues.iter_mut().enumerate() {
                frags.clear();
                let n = rx.fetch(&mut frags, 256);
                for f in &frags {
                    let mut b = vec![0u8; f.len() as usize];
                    f.read(0, &mut b);
                    got[q].push(b.split_off(hdr.len().min(b.len())));
                }
                rx.complete(n);
            }
            got
        };
        let send = |queues: &mut Queues, f: &[u8]| {
            let tx = &mut queues[0].1;
            assert_eq!(
                tx.push(&[Frag::from_slice(f, 0)], 0, &hdr),
                vale::Push::Done
            );
            tx.publish();
        };
        let t0 = Instant::now();
        let mut their_mac = None;
        while their_mac.is_none() && t0.elapsed() < Duration::from_secs(5) {
            send(&mut queues, &arp_request(v.subnet));
            std::thread::sleep(Duration::from_millis(50));
            for f in drain(&mut queues).into_iter().flatten() {
                if is_arp_reply(&f, v.subnet) {
                    their_mac = Some(<[u8; 6]>::try_from(&f[6..12]).unwrap());
                }
            }
        }
        let their_mac = their_mac.expect("ARP reply");
        let n = 200u16;
        let base = 20000u16;
        for i in 0..n {
            send(&mut queues, &tcp_syn(their_mac, v.subnet, base + i));
        }
        let mut seen = vec![0u32; usize::from(n)];
        let mut per_queue = [0u32; 2];
        let t0 = Instant::now();
        loop {
            for (q, frames) in drain(&mut queues).into_iter().enumerate() {
                for f in frames {
                    let Some(port) = tcp_reset_to(&f) else {
                        continue;
                    };
                    if let Some(c) = port
                        .checked_sub(base)
                        .and_then(|i| seen.get_mut(usize::from(i)))
                    {
                        *c += 1;
                        per_queue[q] += 1;
                    }
                }
            }
            // Once all arrived, a last look for duplicates.
            if seen.iter().all(|&c| c > 0) && t0.elapsed() > Duration::from_millis(300) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(5) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            seen.iter().all(|&c| c == 1),
            "{mode:?}: each reset once (per queue {per_queue:?}, missing {}, twice {})",
            seen.iter().filter(|&&c| c == 0).count(),
            seen.iter().filter(|&&c| c > 1).count()
        );
        assert!(
            per_queue.iter().all(|&c| c > 0),
            "{mode:?}: both queues used {per_queue:?}"
        );
    }
}

/// netmap's ring suffixes on an interface opened in this process: `IF*`
/// binds the NIC's ring and the host stack's (the TAP `IF^` exists while
/// the rings are open), `IF-N` past the last queue and `IF^1` are refused
/// by name, and an ARP request written into the NIC's TX ring is answered
/// on its RX ring through txsync and rxsync.
#[test]
fn an_interface_opens_as_netmap_rings() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let v = Veth::new("n");
    let open = |name: &str| {
        let spec = netmap::portname::parse(name).unwrap();
        nic::NicRings::open(&spec, nic::AdMode::Generic, 0, 256)
    };
    for bad in [
        format!("netmap:{}-1", v.here),
        format!("netmap:{}^1", v.here),
    ] {
        let e = open(&bad).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "{bad}: {e}");
    }
    let tap = format!("/sys/class/net/{}^", v.here);
    // The failed opens above took the interface's lock and dropped it;
    // a child another test of this process is spawning (`ip`, `ping`)
    // can still hold a copy of that fd between its fork and its exec, so
    // the lock may read busy for that moment (seen once in a CI
    // rehearsal).
    let t0 = std::time::Instant::now();
    let rings = loop {
        match open(&format!("netmap:{}*", v.here)) {
            Err(nic::NicError::Busy { .. }) if t0.elapsed() < std::time::Duration::from_secs(2) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            r => break r.unwrap(),
        }
    };
    assert_eq!(rings.rings(), 2, "the NIC's ring, then the host's");
    assert!(std::path::Path::new(&tap).exists(), "{tap} while open");
    // ARP through ring 0: write the slot, txsync, rxsync until the reply.
    let tx = rings.tx_ring(0).unwrap();
    let req = arp_request(v.subnet);
    let v0 = tx.ring;
    let slot = v0.slot(v0.cur());
    v0.write_buf(slot.buf_idx, 0, &req).unwrap();
    let mut s = slot;
    s.len = req.len() as u16;
    v0.set_slot(v0.cur(), s);
    let next = netmap::ring::next(v0.cur(), v0.num_slots());
    v0.set_head(next);
    v0.set_cur(next);
    rings.txsync(0).unwrap();
    let rx = rings.rx_ring(0).unwrap();
    let t0 = Instant::now();
    let mut answered = false;
    while !answered && t0.elapsed() < Duration::from_secs(3) {
        rings.rxsync(0).unwrap();
        let r = rx.ring;
        while r.cur() != r.tail() {
            let s = r.slot(r.cur());
            let mut b = vec![0u8; usize::from(s.len)];
            r.read_buf(s.buf_idx, 0, &mut b).unwrap();
            answered |= is_arp_reply(&b, v.subnet);
            let n = netmap::ring::next(r.cur(), r.num_slots());
            r.set_cur(n);
            r.set_head(n);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(answered, "the namespace's ARP reply on the NIC's RX ring");
    drop(rings);
    // The kernel unregisters a closed TAP without waiting for its last
    // references (a frame just received may hold one): allow it a moment.
    let t0 = Instant::now();
    while std::path::Path::new(&tap).exists() && t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !std::path::Path::new(&tap).exists(),
        "{tap} gone with the rings"
    );
}
