//! Multiqueue ports: frames from several TX queues spread over the
//! receiver's RX queues by flow, each exactly once, byte-exact, a flow on one
//! queue and in order; a guest that negotiates MQ but sets up one pair.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use backend::device::features as vf;
use backend::testing::{FakeGuest, GuestConfig, Rig};
use vale::testing::inet_checksum;

const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
const T: Duration = Duration::from_secs(5);
const PAIRS: u16 = 4;
const FLOWS: u32 = 24;

/// An Ethernet/IPv4/UDP frame of flow `flow` (addresses and ports vary with
/// it), numbered `seq` in its payload, `len` bytes long.
fn udp_frame(dst: [u8; 6], src: [u8; 6], flow: u32, seq: u32, len: usize) -> Vec<u8> {
    let len = len.max(14 + 20 + 8 + 8);
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (len - 14) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&(seq as u16).to_be_bytes());
    f.extend_from_slice(&[0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&[10, 1, (flow % 7) as u8, flow as u8]);
    f.extend_from_slice(&[10, 2, (flow % 5) as u8, (flow * 3) as u8]);
    let c = inet_checksum(&[&f[14..34]]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&(1000 + flow as u16 * 17).to_be_bytes());
    f.extend_from_slice(&(2000 + flow as u16 * 31).to_be_bytes());
    f.extend_from_slice(&(ip_len - 20).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&flow.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    let mut x = ((flow << 16) ^ seq).wrapping_mul(2_654_435_761) | 1;
    while f.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        f.push(x as u8);
    }
    f
}

/// (flow, seq) carried by a frame of [`udp_frame`].
fn ids(f: &[u8]) -> (u32, u32) {
    let at = 14 + 20 + 8;
    (
        u32::from_be_bytes(f[at..at + 4].try_into().unwrap()),
        u32::from_be_bytes(f[at + 4..at + 8].try_into().unwrap()),
    )
}

fn mq_cfg(pairs: u16) -> GuestConfig {
    GuestConfig {
        mrg_rxbuf: true,
        event_idx: true,
        queue_pairs: pairs,
        ..Default::default()
    }
}

/// Takes whatever arrived on every RX queue of `b` (waiting at most `wait`
/// on each empty one), checking each frame against `sent` and recording its
/// queue per flow.
struct Receiver {
    got: HashMap<(u32, u32), u16>,
    /// Per flow: the RX queue it arrived on and the last seq.
    flows: HashMap<u32, (u16, u32)>,
    per_queue: [usize; PAIRS as usize],
}

impl Receiver {
    fn new() -> Receiver {
        Receiver {
            got: HashMap::new(),
            flows: HashMap::new(),
            per_queue: [0; PAIRS as usize],
        }
    }

    fn drain(&mut self, b: &mut FakeGuest, sent: &HashMap<(u32, u32), Vec<u8>>, wait: Duration) {
        for q in 0..PAIRS {
            while let Some(fr) = b.recv_frame(q, wait) {
                let (flow, seq) = ids(&fr.frame);
                let want = sent
                    .get(&(flow, seq))
                    .unwrap_or_else(|| panic!("queue {q}: unknown frame {flow}/{seq}"));
                assert!(fr.frame == *want, "flow {flow} seq {seq} differs");
                assert_eq!(&fr.hdr[..10], &[0u8; 10]);
                assert!(
                    self.got.insert((flow, seq), q).is_none(),
                    "flow {flow} seq {seq} arrived twice"
                );
                self.per_queue[q as usize] += 1;
                match self.flows.get_mut(&flow) {
                    None => {
                        assert_eq!(seq, 0, "flow {flow}: first frame is {seq}");
                        self.flows.insert(flow, (q, seq));
                    }
                    Some((fq, last)) => {
                        assert_eq!(*fq, q, "flow {flow} moved from queue {fq} to {q}");
                        assert_eq!(seq, *last + 1, "flow {flow}: {seq} after {last}");
                        *last = seq;
                    }
                }
            }
        }
    }
}

#[test]
fn flows_spread_over_rx_queues_in_order() {
    let rig = Rig::new(2, PAIRS);
    let mut a = rig.guest(0, mq_cfg(PAIRS));
    let mut b = rig.guest(1, mq_cfg(PAIRS));
    assert_ne!(a.acked_features() & vf::MQ, 0);
    assert_ne!(b.acked_features() & vf::MQ, 0);
    b.set_repost(true);
    for q in 0..PAIRS {
        assert_eq!(b.post_rx(q, 128, 2048), 128);
    }
    let hdr = [0u8; 12];
    let per_flow = 40u32;
    let mut sent = HashMap::new();
    let mut rx = Receiver::new();
    // Bursts of one frame per flow; a flow always leaves by the same TX
    // queue, the flows by all of them.
    for seq in 0..per_flow {
        for flow in 0..FLOWS {
            let len = 60 + ((flow * 131 + seq * 17) as usize % 1400);
            let f = udp_frame(B, A, flow, seq, len);
            let txq = (flow % PAIRS as u32) as u16;
            assert!(a.send(txq, &hdr, &f, &[]), "TX {txq} full");
            sent.insert((flow, seq), f);
        }
        // Lockstep: without backpressure a burst bigger than the posted
        // buffers would be dropped, legitimately.
        let deadline = Instant::now() + T;
        while rx.got.len() < sent.len() && Instant::now() < deadline {
            rx.drain(&mut b, &sent, Duration::from_micros(100));
        }
        assert_eq!(rx.got.len(), sent.len(), "round {seq}: {:?}", rig.stats(1));
        for q in 0..PAIRS {
            a.reap_tx(q);
        }
    }
    let total = (FLOWS * per_flow) as usize;
    rx.drain(&mut b, &sent, Duration::from_millis(20));
    assert_eq!(rx.got.len(), total);
    let used = rx.per_queue.iter().filter(|&&n| n > 0).count();
    assert!(used > 1, "one RX queue took everything: {:?}", rx.per_queue);
    assert!(a.violations().is_empty(), "{:?}", a.violations());
    assert!(b.violations().is_empty(), "{:?}", b.violations());
    assert_eq!(rig.stats(1).total_drops(), 0, "{:?}", rig.stats(1));
    assert_eq!(rig.ports[1].stats().no_rx_buffer, 0);
    // And back: B answers every flow from the queue it arrived on.
    a.set_repost(true);
    for q in 0..PAIRS {
        assert_eq!(a.post_rx(q, 64, 2048), 64);
    }
    let mut back = HashMap::new();
    for (&flow, &(q, _)) in &rx.flows {
        let f = udp_frame(A, B, flow, 0, 200);
        assert!(b.send(q, &hdr, &f, &[12]));
        back.insert(flow, f);
    }
    let mut n = 0;
    let deadline = Instant::now() + T;
    while n < back.len() && Instant::now() < deadline {
        for q in 0..PAIRS {
            while let Some((_, f)) = a.recv(q, Duration::from_millis(1)) {
                let (flow, _) = ids(&f);
                assert!(back.get(&flow) == Some(&f), "reply of flow {flow}");
                n += 1;
            }
        }
    }
    assert_eq!(n, back.len(), "replies");
}

/// The port offers 4 pairs; the guest acks MQ but sets up (and enables)
/// only the first pair: everything goes through it.
#[test]
fn mq_negotiated_one_pair_enabled() {
    let rig = Rig::new(2, PAIRS);
    let one = GuestConfig {
        features_extra: vf::MQ,
        ..mq_cfg(1)
    };
    let mut a = rig.guest(0, one.clone());
    let mut b = rig.guest(1, one);
    assert_ne!(a.acked_features() & vf::MQ, 0, "MQ acked");
    assert_eq!(a.num_queues(), 2);
    a.set_repost(true);
    b.set_repost(true);
    a.post_rx(0, 128, 2048);
    b.post_rx(0, 128, 2048);
    let hdr = [0u8; 12];
    for seq in 0..200u32 {
        let flow = seq % FLOWS;
        let f = udp_frame(B, A, flow, seq, 64 + (seq as usize * 7) % 1400);
        assert!(a.send(0, &hdr, &f, &[]));
        let (_, got) = b.recv(0, T).unwrap_or_else(|| panic!("frame {seq}"));
        assert!(got == f, "frame {seq} differs");
        let g = udp_frame(A, B, flow, seq, 100);
        assert!(b.send(0, &hdr, &g, &[12]));
        let (_, got) = a.recv(0, T).unwrap_or_else(|| panic!("reply {seq}"));
        assert!(got == g, "reply {seq} differs");
        a.reap_tx(0);
        b.reap_tx(0);
    }
    assert!(a.violations().is_empty() && b.violations().is_empty());
    assert_eq!(rig.stats(0).total_drops(), 0, "{:?}", rig.stats(0));
    assert_eq!(rig.stats(1).total_drops(), 0, "{:?}", rig.stats(1));
}
