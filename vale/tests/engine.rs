//! The engine end to end with in-memory ports: learning, byte-exact
//! delivery, fragment chains, drop accounting, backpressure, malformed
//! input, header conversion, and several threads into one destination.

use netmap::abi::{NS_MOREFRAG, NS_NO_LEARN};
use vale::testing::{eth_frame, mac, MemFrame, MemSink, MemSource};
use vale::{DropReason, PortConfig, PortId, Scratch, Switch};

const BCAST: [u8; 6] = [0xff; 6];

struct Bed {
    sw: Switch,
    sinks: Vec<MemSink>,
    ids: Vec<PortId>,
    sc: Scratch,
}

fn bed(n: usize, slots: usize, cfgs: &[PortConfig]) -> Bed {
    let sw = Switch::new("vale0");
    let mut sinks = Vec::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let s = MemSink::new(slots, 2048);
        let cfg = cfgs.get(i).copied().unwrap_or_default();
        ids.push(
            sw.attach(&format!("p{i}"), cfg, Box::new(s.clone()))
                .unwrap(),
        );
        sinks.push(s);
    }
    Bed {
        sw,
        sinks,
        ids,
        sc: Scratch::default(),
    }
}

impl Bed {
    fn send(&mut self, port: usize, frames: Vec<MemFrame>, now: u32) -> vale::Forwarded {
        let mut src = MemSource::default();
        frames.into_iter().for_each(|f| src.push(f));
        self.sw.forward(self.ids[port], &mut src, &mut self.sc, now)
    }
    fn got(&self, port: usize) -> Vec<Vec<u8>> {
        self.sinks[port]
            .take()
            .iter()
            .map(MemFrame::bytes)
            .collect()
    }
}

#[test]
fn broadcast_reaches_all_then_unicast_only_its_port_then_ages() {
    let mut b = bed(4, 64, &[]);
    let f = eth_frame(BCAST, mac(0), 60, 1);
    b.send(0, vec![MemFrame::new(f.clone())], 0);
    assert!(b.got(0).is_empty(), "no hairpin");
    for p in 1..4 {
        assert_eq!(b.got(p), vec![f.clone()]);
    }
    // mac(0) is now known on port 0: unicast from port 2 reaches only it.
    let u = eth_frame(mac(0), mac(2), 100, 2);
    b.send(2, vec![MemFrame::new(u.clone())], 1);
    assert_eq!(b.got(0), vec![u]);
    assert!(b.got(1).is_empty() && b.got(3).is_empty());
    // Unknown unicast floods.
    let x = eth_frame(mac(77), mac(2), 60, 3);
    b.send(2, vec![MemFrame::new(x.clone())], 2);
    assert_eq!((b.got(0).len(), b.got(1).len(), b.got(3).len()), (1, 1, 1));
    // After 300 s without traffic from mac(0), it is forgotten: flood again.
    let u = eth_frame(mac(0), mac(2), 60, 4);
    b.send(2, vec![MemFrame::new(u)], 400);
    assert_eq!((b.got(0).len(), b.got(1).len(), b.got(3).len()), (1, 1, 1));
}

#[test]
fn every_length_is_delivered_byte_exact() {
    let mut b = bed(2, 2048, &[]);
    // Teach the bridge where mac(1) lives.
    b.send(1, vec![MemFrame::new(eth_frame(BCAST, mac(1), 60, 0))], 0);
    b.got(0);
    let frames: Vec<Vec<u8>> = (60..=1514)
        .map(|len| eth_frame(mac(1), mac(0), len, len as u64))
        .collect();
    for chunk in frames.chunks(500) {
        b.send(0, chunk.iter().cloned().map(MemFrame::new).collect(), 1);
    }
    assert_eq!(b.got(1), frames);
    let st = b.sw.stats(b.ids[0]).unwrap();
    assert_eq!(st.in_packets, 1455);
    assert_eq!(st.total_drops(), 0);
    let bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
    assert_eq!(b.sw.stats(b.ids[1]).unwrap().out_bytes, bytes);
}

#[test]
fn morefrag_chains_past_9000_bytes() {
    let mut b = bed(2, 256, &[]);
    for (len, frag) in [(9000, 1000), (9014, 150), (65535, 4096), (20000, 333)] {
        let f = eth_frame(BCAST, mac(0), len, len as u64);
        b.send(0, vec![MemFrame::chunked(&f, frag)], 0);
        let got = b.sinks[1].take();
        assert_eq!(got.len(), 1, "{len}/{frag}: {:?}", b.sw.stats(b.ids[0]));
        assert_eq!(got[0].bytes(), f);
        // The sink's 2048-byte buffers hold it as a chain.
        assert_eq!(got[0].frags.len(), len.div_ceil(2048));
        assert!(got[0].frags[..got[0].frags.len() - 1]
            .iter()
            .all(|x| x.1 & NS_MOREFRAG != 0));
    }
}

#[test]
fn drops_balance_on_a_full_port() {
    let mut b = bed(2, 100, &[]);
    b.send(1, vec![MemFrame::new(eth_frame(BCAST, mac(1), 60, 0))], 0);
    b.got(0);
    let mut sent = 0u64;
    let mut received = 0u64;
    for round in 0..20 {
        let frames: Vec<MemFrame> = (0..300)
            .map(|i| MemFrame::new(eth_frame(mac(1), mac(0), 60 + i % 900, i as u64)))
            .collect();
        sent += frames.len() as u64;
        let fw = b.send(0, frames, 1);
        assert_eq!(fw.frames, 300);
        if round % 3 == 0 {
            received += b.got(1).len() as u64;
        }
    }
    received += b.got(1).len() as u64;
    let dst = b.sw.stats(b.ids[1]).unwrap();
    assert!(dst.drop(DropReason::DstFull) > 0);
    assert_eq!(sent, received + dst.drop(DropReason::DstFull));
    assert_eq!(dst.out_packets, received);
}

#[test]
fn backpressure_delivers_everything_in_order() {
    let bp = PortConfig {
        backpressure: true,
        ..Default::default()
    };
    let mut b = bed(2, 64, &[PortConfig::default(), bp]);
    b.send(1, vec![MemFrame::new(eth_frame(BCAST, mac(1), 60, 0))], 0);
    b.got(0);
    let frames: Vec<Vec<u8>> = (0..5000)
        .map(|i| eth_frame(mac(1), mac(0), 60 + (i * 7) % 3000, i as u64))
        .collect();
    let mut src = MemSource::default();
    frames
        .iter()
        .cloned()
        .for_each(|f| src.push(MemFrame::new(f)));
    let mut got = Vec::new();
    let mut held = 0;
    while src.pending() > 0 {
        let fw = b.sw.forward(b.ids[0], &mut src, &mut b.sc, 1);
        held += fw.held;
        got.extend(b.got(1));
    }
    assert!(held > 0, "the port must have pushed back");
    assert_eq!(got, frames);
    let st = b.sw.stats(b.ids[1]).unwrap();
    assert_eq!(st.total_drops(), 0);
    assert_eq!(b.sw.stats(b.ids[0]).unwrap().in_packets, 5000);
}

/// Three ports: a sender (0), a reader (1), and a backpressure port (2)
/// whose reader never reads. Port 2 may hold the sender for at most
/// `BACKPRESSURE_HOLD`; after that the sender's frames to port 1 flow, and
/// port 2's are dropped and counted until it reads again, when it holds
/// senders again.
#[test]
fn a_silent_backpressure_port_holds_other_traffic_only_for_a_bounded_time() {
    let bp = PortConfig {
        backpressure: true,
        ..Default::default()
    };
    let mut b = bed(3, 16, &[PortConfig::default(), PortConfig::default(), bp]);
    for p in 1..3 {
        b.send(
            p,
            vec![MemFrame::new(eth_frame(BCAST, mac(p as u16), 60, 0))],
            0,
        );
    }
    for p in 0..3 {
        b.got(p);
    }
    // 64 frames, alternately to port 2 and port 1: port 2 has room for 16.
    let frames: Vec<Vec<u8>> = (0..64)
        .map(|i| eth_frame(mac(1 + (i + 1) % 2), mac(0), 60, i as u64))
        .collect();
    let mut src = MemSource::default();
    frames
        .iter()
        .for_each(|f| src.push(MemFrame::new(f.clone())));
    let fw = b.sw.forward(b.ids[0], &mut src, &mut b.sc, 1);
    assert_eq!(fw.blocked_on, Some(b.ids[2]));
    assert_eq!(fw.frames, 32, "held at port 2's 17th frame");
    let to_1: Vec<Vec<u8>> = frames.iter().skip(1).step_by(2).cloned().collect();
    assert_eq!(b.got(1), to_1[..16]);
    // Within the hold, the sender stays held.
    let fw = b.sw.forward(b.ids[0], &mut src, &mut b.sc, 1);
    assert_eq!((fw.frames, fw.blocked_on), (0, Some(b.ids[2])));
    // Past it, port 2 is not waited for: port 1 gets the rest, port 2's
    // frames are dropped and counted.
    std::thread::sleep(vale::BACKPRESSURE_HOLD + std::time::Duration::from_millis(20));
    let fw = b.sw.forward(b.ids[0], &mut src, &mut b.sc, 1);
    assert_eq!((fw.frames, fw.held, fw.blocked_on), (32, 0, None));
    assert_eq!(b.got(1), to_1[16..]);
    let st = b.sw.stats(b.ids[2]).unwrap();
    assert_eq!(st.drop(DropReason::DstFull), 16);
    assert_eq!(st.out_packets, 1 + 16, "the learning broadcast and 16");
    // Port 2 reads: it holds senders again.
    assert_eq!(b.got(2).len(), 16);
    let fw = b.send(
        0,
        (0..40)
            .map(|i| MemFrame::new(eth_frame(mac(2), mac(0), 60, i)))
            .collect(),
        1,
    );
    assert_eq!((fw.frames, fw.blocked_on), (16, Some(b.ids[2])));
}

#[test]
fn malformed_frames_are_dropped_and_counted() {
    let mut b = bed(2, 256, &[]);
    let ok = eth_frame(BCAST, mac(0), 60, 0);
    let too_many = MemFrame::chunked(&eth_frame(BCAST, mac(0), 65 * 20, 1), 20);
    assert_eq!(too_many.frags.len(), 65);
    let empty_frag = MemFrame {
        frags: vec![(ok.clone(), 0), (vec![], 0)],
    };
    let runt = MemFrame::new(vec![0xff; 13]);
    let open_chain = MemFrame::new(ok.clone()).with_flags(NS_MOREFRAG);
    let frames = vec![
        MemFrame::new(ok.clone()),
        too_many,
        MemFrame::new(ok.clone()),
        empty_frag,
        runt,
        MemFrame::new(ok.clone()),
        open_chain,
    ];
    b.send(0, frames, 0);
    assert_eq!(b.got(1), vec![ok.clone(), ok.clone(), ok]);
    let st = b.sw.stats(b.ids[0]).unwrap();
    assert_eq!(st.drop(DropReason::BadChain), 2);
    assert_eq!(st.drop(DropReason::EmptyFrag), 1);
    assert_eq!(st.drop(DropReason::Runt), 1);
    assert_eq!(st.in_packets, 7);
}

#[test]
fn no_learn_is_honoured() {
    let mut b = bed(3, 64, &[]);
    b.send(
        0,
        vec![MemFrame::new(eth_frame(BCAST, mac(0), 60, 0)).with_flags(NS_NO_LEARN)],
        0,
    );
    b.got(1);
    b.got(2);
    // mac(0) was not learned: unicast to it still floods.
    b.send(1, vec![MemFrame::new(eth_frame(mac(0), mac(1), 60, 0))], 0);
    assert_eq!((b.got(0).len(), b.got(2).len()), (1, 1));
}

#[test]
fn port_mask_override_is_opt_in() {
    let ovr = PortConfig {
        port_mask_override: true,
        ..Default::default()
    };
    let mut b = bed(4, 64, &[ovr]);
    let f = eth_frame(BCAST, mac(0), 60, 0);
    // Destination byte 3 = port index 2.
    b.send(0, vec![MemFrame::new(f.clone()).with_flags(3 << 8)], 0);
    assert_eq!((b.got(1).len(), b.got(2).len(), b.got(3).len()), (0, 1, 0));
    // Port 1 has no override: the same byte is ignored, broadcast floods.
    b.send(1, vec![MemFrame::new(f).with_flags(3 << 8)], 0);
    assert_eq!((b.got(0).len(), b.got(2).len(), b.got(3).len()), (1, 1, 1));
    // An override naming a missing port is a counted drop.
    b.send(
        0,
        vec![MemFrame::new(eth_frame(BCAST, mac(0), 60, 0)).with_flags(100 << 8)],
        0,
    );
    assert_eq!(b.sw.stats(b.ids[0]).unwrap().drop(DropReason::NoDst), 1);
}

#[test]
fn vnet_headers_are_converted_and_gso_needs_the_offload() {
    use vale::port::OFFLOAD_TSO4;
    let h12 = PortConfig {
        vnet_hdr_len: 12,
        offloads: OFFLOAD_TSO4,
        ..Default::default()
    };
    let h10 = PortConfig {
        vnet_hdr_len: 10,
        ..Default::default()
    };
    let mut b = bed(3, 64, &[h12, PortConfig::default(), h10]);
    let eth = eth_frame(BCAST, mac(0), 100, 0);
    let mut with_hdr = vec![0u8; 12];
    with_hdr[2] = 0x55; // hdr_len field, carried 12 -> 10
    with_hdr[10] = 9; // num_buffers belongs to the reader: not carried
    with_hdr.extend_from_slice(&eth);
    b.send(0, vec![MemFrame::new(with_hdr.clone())], 0);
    assert_eq!(b.got(1), vec![eth.clone()], "header stripped");
    let mut want10 = with_hdr[..10].to_vec();
    want10.extend_from_slice(&eth);
    assert_eq!(b.got(2), vec![want10]);
    // From a header-less port to the 12-byte port: a zero header is added.
    b.send(1, vec![MemFrame::new(eth_frame(BCAST, mac(1), 60, 1))], 0);
    let got = b.got(0);
    assert_eq!(&got[0][..12], &[0u8; 12]);
    assert_eq!(b.got(2)[0][..10], [0u8; 10]);
    // A TSO4 frame reaches neither the plain port nor the 10-byte port
    // without TSO4: counted as offload drops on each.
    let mut gso = with_hdr;
    gso[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
    b.send(0, vec![MemFrame::new(gso)], 0);
    assert!(b.got(1).is_empty() && b.got(2).is_empty());
    assert_eq!(b.sw.stats(b.ids[1]).unwrap().drop(DropReason::Offload), 1);
    assert_eq!(b.sw.stats(b.ids[2]).unwrap().drop(DropReason::Offload), 1);
}

#[test]
fn threads_fill_one_destination_at_once() {
    let sw = Switch::new("vale1");
    let sink = MemSink::new(1 << 16, 2048);
    let dst = sw
        .attach("dst", PortConfig::default(), Box::new(sink.clone()))
        .unwrap();
    let _ = dst;
    let srcs: Vec<PortId> = (0..4)
        .map(|i| {
            sw.attach(
                &format!("s{i}"),
                PortConfig::default(),
                Box::new(MemSink::new(8, 2048)),
            )
            .unwrap()
        })
        .collect();
    // The destination announces itself so traffic is unicast to it.
    let mut s = MemSource::default();
    s.push(MemFrame::new(eth_frame(BCAST, mac(999), 60, 0)));
    sw.forward(dst, &mut s, &mut Scratch::default(), 0);
    std::thread::scope(|t| {
        for (i, &p) in srcs.iter().enumerate() {
            let sw = &sw;
            t.spawn(move || {
                let mut sc = Scratch::default();
                for batch in 0..20u64 {
                    let mut src = MemSource::default();
                    for k in 0..500u64 {
                        let mut f = eth_frame(mac(999), mac(i as u16), 64, 0);
                        f[14..22].copy_from_slice(
                            &(((i as u64) << 32) | (batch * 500 + k)).to_le_bytes(),
                        );
                        src.push(MemFrame::new(f));
                    }
                    sw.forward(p, &mut src, &mut sc, 0);
                }
            });
        }
    });
    let got = sink.take();
    assert_eq!(got.len(), 4 * 20 * 500);
    // Per source, frames arrive in the order sent.
    let mut next = [0u64; 4];
    for f in got {
        let v = u64::from_le_bytes(f.bytes()[14..22].try_into().unwrap());
        let (i, seq) = ((v >> 32) as usize, v & 0xffff_ffff);
        assert_eq!(seq, next[i]);
        next[i] += 1;
    }
}

/// Replays the engine fuzz target's seed corpus (`fuzz/corpus/engine`).
#[test]
fn fuzz_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/engine");
    netmap::testing::replay_corpus(&dir, 20, vale::testing::fuzz_engine);
}

/// Replays the offload fuzz target's seed corpus (`fuzz/corpus/offload`).
#[test]
fn offload_fuzz_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/offload");
    netmap::testing::replay_corpus(&dir, 5, vale::testing::fuzz_offload);
}

fn monitor(b: &Bed, port: usize, dirs: u8, slots: usize) -> (MemSink, vale::MonitorId) {
    let m = MemSink::new(slots, 2048);
    let shared: vale::SharedSink = std::sync::Arc::new(std::sync::Mutex::new(m.clone()));
    let id = b.sw.add_monitor(b.ids[port], dirs, shared).unwrap();
    (m, id)
}

fn bytes(s: &MemSink) -> Vec<Vec<u8>> {
    s.take().iter().map(MemFrame::bytes).collect()
}

#[test]
fn monitors_copy_what_their_port_sends_and_receives_and_nothing_else() {
    let mut b = bed(3, 64, &[]);
    let (t, _) = monitor(&b, 1, vale::MONITOR_TX, 64);
    let (r, _) = monitor(&b, 1, vale::MONITOR_RX, 64);
    let (rt, rt_id) = monitor(&b, 1, vale::MONITOR_TX | vale::MONITOR_RX, 64);
    // Port 1 sends a broadcast (learned), port 0 answers it by unicast,
    // port 2 talks to port 0 (not port 1's traffic), port 0 floods.
    let from1 = eth_frame(BCAST, mac(1), 60, 1);
    let to1 = eth_frame(mac(1), mac(0), 200, 2);
    let other = eth_frame(mac(0), mac(2), 300, 3);
    let flood = eth_frame(BCAST, mac(0), 400, 4);
    b.send(1, vec![MemFrame::new(from1.clone())], 0);
    b.send(0, vec![MemFrame::new(to1.clone())], 0);
    b.send(2, vec![MemFrame::new(other.clone())], 0);
    b.send(0, vec![MemFrame::new(flood.clone())], 0);
    assert_eq!(bytes(&t), vec![from1.clone()]);
    assert_eq!(bytes(&r), vec![to1.clone(), flood.clone()]);
    assert_eq!(bytes(&rt), vec![from1, to1, flood]);
    // The monitored port got its frames as before.
    assert_eq!(b.got(1).len(), 2);
    // Removed: nothing more reaches it; the others still get theirs.
    b.sw.remove_monitor(b.ids[1], rt_id);
    let again = eth_frame(mac(1), mac(0), 90, 5);
    b.send(0, vec![MemFrame::new(again.clone())], 0);
    assert!(bytes(&rt).is_empty());
    assert_eq!(bytes(&r), vec![again]);
    // A monitor is not a port: no hairpin, no flood to it, the port list
    // is unchanged.
    assert_eq!(b.sw.ports().len(), 3);
}

#[test]
fn a_full_monitor_drops_without_touching_its_port() {
    let bp = PortConfig {
        backpressure: true,
        ..Default::default()
    };
    let mut b = bed(2, 64, &[PortConfig::default(), bp]);
    b.send(1, vec![MemFrame::new(eth_frame(BCAST, mac(1), 60, 0))], 0);
    b.got(0);
    // A 4-slot monitor of the backpressure port, never read.
    let (r, _) = monitor(&b, 1, vale::MONITOR_RX, 4);
    let (t, _) = monitor(&b, 0, vale::MONITOR_TX, 4096);
    let frames: Vec<Vec<u8>> = (0..500)
        .map(|i| eth_frame(mac(1), mac(0), 60 + i % 900, i as u64))
        .collect();
    let mut src = MemSource::default();
    frames
        .iter()
        .cloned()
        .for_each(|f| src.push(MemFrame::new(f)));
    let mut got = Vec::new();
    let mut held = 0;
    while src.pending() > 0 {
        let fw = b.sw.forward(b.ids[0], &mut src, &mut b.sc, 1);
        held += fw.held;
        got.extend(b.got(1));
    }
    assert!(held > 0, "the port must have pushed back");
    assert_eq!(got, frames, "the port misses nothing");
    assert_eq!(b.sw.stats(b.ids[1]).unwrap().total_drops(), 0);
    // The monitor kept what fit; a sender's held frames are copied to its
    // TX monitor once, when they finally leave.
    assert_eq!(bytes(&r), frames[..4].to_vec());
    assert_eq!(bytes(&t), frames);
}

#[test]
fn monitors_see_the_ports_own_vnet_headers() {
    let h12 = PortConfig {
        vnet_hdr_len: 12,
        ..Default::default()
    };
    let mut b = bed(2, 64, &[h12, PortConfig::default()]);
    let (t0, _) = monitor(&b, 0, vale::MONITOR_TX, 64);
    let (r0, _) = monitor(&b, 0, vale::MONITOR_RX, 64);
    let (r1, _) = monitor(&b, 1, vale::MONITOR_RX, 64);
    let eth = eth_frame(BCAST, mac(0), 100, 0);
    let mut with_hdr = vec![0u8; 12];
    with_hdr[2] = 0x55;
    with_hdr.extend_from_slice(&eth);
    b.send(0, vec![MemFrame::new(with_hdr.clone())], 0);
    assert_eq!(bytes(&t0), vec![with_hdr], "as the sender's slots hold it");
    assert_eq!(bytes(&r1), vec![eth.clone()], "as the reader gets it");
    let back = eth_frame(mac(0), mac(1), 80, 1);
    b.send(1, vec![MemFrame::new(back.clone())], 0);
    let mut want = vec![0u8; 12];
    want.extend_from_slice(&back);
    assert_eq!(bytes(&r0), vec![want]);
}

#[test]
fn a_monitor_of_a_missing_port_is_refused() {
    let b = bed(1, 8, &[]);
    let m: vale::SharedSink = std::sync::Arc::new(std::sync::Mutex::new(MemSink::new(8, 2048)));
    assert!(b.sw.add_monitor(7, vale::MONITOR_RX, m).is_err());
}

#[test]
fn a_port_takes_at_most_max_monitors() {
    let b = bed(2, 8, &[]);
    let mut ids = Vec::new();
    for _ in 0..vale::MAX_MONITORS {
        ids.push(monitor(&b, 1, vale::MONITOR_RX, 8).1);
    }
    let m: vale::SharedSink = std::sync::Arc::new(std::sync::Mutex::new(MemSink::new(8, 2048)));
    assert!(matches!(
        b.sw.add_monitor(b.ids[1], vale::MONITOR_RX, m.clone()),
        Err(vale::SwitchError::TooManyMonitors { .. })
    ));
    b.sw.remove_monitor(b.ids[1], ids[0]);
    assert!(b.sw.add_monitor(b.ids[1], vale::MONITOR_RX, m).is_ok());
}
