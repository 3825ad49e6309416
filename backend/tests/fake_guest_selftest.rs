//! Self-test of the fake guest (`backend::testing`): it drives a tiny
//! in-test vhost-user-net loopback device (built on vhost-user-backend) that
//! copies every TX chain into RX buffers of the same queue pair, and checks
//! the frames come back byte-exact, with mergeable buffers, EVENT_IDX and
//! indirect descriptors on and off, several memory regions, several queue
//! pairs, the socket in either direction, memory hot-plug and reconnection.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use backend::testing::{rx, FakeGuest, GuestConfig, GuestListener, VIRTIO_NET_HDR_LEN};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF};
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard,
    GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::tempdir::TempDir;

const TIMEOUT: Duration = Duration::from_secs(2);
const PROTOCOL_FEATURES: u64 = 1 << 30;

type Mem = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// The loopback device.
struct Echo {
    mem: Mem,
    pairs: u16,
    mrg: bool,
}

fn other<E: std::fmt::Debug>(e: E) -> io::Error {
    io::Error::other(format!("{e:?}"))
}

impl Echo {
    /// Pops RX chains for `pkt` (several with mergeable buffers), writes it
    /// there with `num_buffers` set, and puts them on the used ring. Returns
    /// false (leaving the RX queue as it was) when there are not enough RX
    /// buffers.
    fn deliver(
        &self,
        rxq: &VringRwLock,
        mem: &GuestMemoryLoadGuard<GuestMemoryMmap<()>>,
        pkt: &mut [u8],
    ) -> io::Result<bool> {
        let mut state = rxq.get_mut();
        let mut chains = Vec::new();
        let mut cap = 0;
        while chains.is_empty() || (self.mrg && cap < pkt.len()) {
            match state.get_queue_mut().pop_descriptor_chain(mem.clone()) {
                Some(c) => {
                    cap += c.clone().writer(mem).map_err(other)?.available_bytes();
                    chains.push(c);
                }
                None => {
                    for _ in &chains {
                        state.get_queue_mut().go_to_previous_position();
                    }
                    return Ok(false);
                }
            }
        }
        if pkt.len() >= VIRTIO_NET_HDR_LEN {
            pkt[10..12].copy_from_slice(&(chains.len() as u16).to_le_bytes());
        }
        let mut off = 0;
        for c in chains {
            let head = c.head_index();
            let mut w = c.writer(mem).map_err(other)?;
            let n = w.available_bytes().min(pkt.len() - off);
            w.write_all(&pkt[off..off + n])?;
            off += n;
            state.add_used(head, n as u32).map_err(other)?;
        }
        Ok(true)
    }

    fn process_pair(&self, rxq: &VringRwLock, txq: &VringRwLock) -> io::Result<()> {
        let mem = self.mem.memory();
        loop {
            txq.disable_notification().map_err(other)?;
            rxq.disable_notification().map_err(other)?;
            let mut moved = false;
            let mut blocked = false;
            loop {
                let chain = txq
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone());
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let mut pkt = Vec::new();
                chain.reader(&mem).map_err(other)?.read_to_end(&mut pkt)?;
                if !self.deliver(rxq, &mem, &mut pkt)? {
                    txq.get_mut().get_queue_mut().go_to_previous_position();
                    blocked = true;
                    break;
                }
                txq.add_used(head, 0).map_err(other)?;
                moved = true;
            }
            if moved {
                if txq.needs_notification().map_err(other)? {
                    txq.signal_used_queue()?;
                }
                if rxq.needs_notification().map_err(other)? {
                    rxq.signal_used_queue()?;
                }
            }
            let more_tx = txq.enable_notification().map_err(other)?;
            rxq.enable_notification().map_err(other)?;
            if blocked {
                // Waiting for RX buffers: be kicked by the next one posted
                // (with EVENT_IDX, avail_event must be the current avail
                // idx, not the rolled-back next_avail), and look again in
                // case one came in meanwhile.
                let (avail_idx, avail_event) = {
                    let st = rxq.get_ref();
                    let q = st.get_queue();
                    let idx = q.avail_idx(&*mem, Ordering::Acquire).map_err(other)?;
                    (idx.0, q.used_ring() + 4 + 8 * u64::from(q.size()))
                };
                mem.store(
                    avail_idx.to_le(),
                    GuestAddress(avail_event),
                    Ordering::Release,
                )
                .map_err(other)?;
                fence(Ordering::SeqCst);
                let st = rxq.get_ref();
                let now = st
                    .get_queue()
                    .avail_idx(&*mem, Ordering::Acquire)
                    .map_err(other)?;
                if now.0 == avail_idx {
                    return Ok(());
                }
            } else if !more_tx {
                return Ok(());
            }
        }
    }
}

impl VhostUserBackendMut for Echo {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2 * usize::from(self.pairs)
    }

    fn max_queue_size(&self) -> usize {
        1024
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_NET_F_MRG_RXBUF)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_NET_F_MQ)
            | PROTOCOL_FEATURES
    }

    fn acked_features(&mut self, features: u64) {
        self.mrg = features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&mut self, _enabled: bool) {}

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Lets the daemon's drop stop the vring worker.
        new_event_consumer_and_notifier(EventFlag::empty()).ok()
    }

    fn update_memory(&mut self, mem: Mem) -> io::Result<()> {
        self.mem = mem;
        Ok(())
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let qp = usize::from(device_event / 2);
        if qp >= usize::from(self.pairs) {
            return Ok(());
        }
        self.process_pair(&vrings[2 * qp], &vrings[2 * qp + 1])
    }
}

fn echo_daemon(pairs: u16) -> VhostUserDaemon<Arc<Mutex<Echo>>> {
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::<()>::new());
    let echo = Echo {
        mem: mem.clone(),
        pairs,
        mrg: false,
    };
    VhostUserDaemon::new("echo".to_string(), Arc::new(Mutex::new(echo)), mem).unwrap()
}

/// Binds `path` now, serves one connection in a thread.
fn spawn_echo(path: &Path, pairs: u16) -> thread::JoinHandle<()> {
    let mut listener = Listener::new(path, true).unwrap();
    thread::spawn(move || {
        let mut daemon = echo_daemon(pairs);
        daemon.start(&mut listener).unwrap();
        let _ = daemon.wait();
    })
}

fn sock_dir() -> (TempDir, PathBuf) {
    let dir = TempDir::new_with_prefix("/tmp/fake-guest-selftest-").unwrap();
    let path = dir.as_path().join("vhost.sock");
    (dir, path)
}

fn frame_of(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(7)) as u8)
        .collect()
}

fn hdr_of(seed: usize) -> [u8; VIRTIO_NET_HDR_LEN] {
    let s = seed as u8;
    [
        s,
        0x11,
        s ^ 0x22,
        0x33,
        0x44,
        0x55,
        0x66,
        0x77,
        0x88,
        0x99,
        0,
        0,
    ]
}

/// (frame length, descriptor split).
const CASES: &[(usize, &[usize])] = &[
    (60, &[]),
    (60, &[12]),
    (1514, &[12]),
    (0, &[]),
    (1000, &[6]),
    (1514, &[12, 20, 100]),
    (64, &[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
    (2036, &[]),
    (300, &[12, 288]),
];

/// Sends `count` frames on pair `qp` and checks each comes back intact.
fn exchange(g: &mut FakeGuest, qp: u16, count: usize, rx_buf: u32) {
    let mut sent = 0;
    for i in 0..count {
        let (len, split) = CASES[i % CASES.len()];
        let frame = frame_of(len, i + usize::from(qp) * 1000);
        let hdr = hdr_of(i);
        assert!(g.send(qp, &hdr, &frame, split), "TX ring full at {i}");
        sent += 1;
        let f = g
            .recv_frame(qp, TIMEOUT)
            .unwrap_or_else(|| panic!("frame {i} (len {len}, split {split:?}) not echoed"));
        assert_eq!(f.frame, frame, "frame {i} (len {len}, split {split:?})");
        assert_eq!(f.hdr[..10], hdr[..10], "header of frame {i}");
        let want_nb = if g.mrg_rxbuf() {
            (VIRTIO_NET_HDR_LEN + len).div_ceil(rx_buf as usize)
        } else {
            1
        };
        assert_eq!(
            usize::from(f.num_buffers),
            want_nb,
            "num_buffers of frame {i}"
        );
        assert_eq!(f.used_len as usize, VIRTIO_NET_HDR_LEN + len);
    }
    assert_eq!(g.wait_tx(qp, sent, TIMEOUT), sent);
    assert_eq!(g.tx_inflight(qp), 0);
}

fn roundtrip(cfg: GuestConfig, force_region: Option<usize>) {
    let (_dir, path) = sock_dir();
    let th = spawn_echo(&path, cfg.queue_pairs);
    let mut g = FakeGuest::connect(&path, cfg.clone()).unwrap();

    let acked = g.acked_features();
    assert_ne!(acked & (1 << VIRTIO_F_VERSION_1), 0);
    assert_ne!(acked & PROTOCOL_FEATURES, 0);
    assert_eq!(g.mrg_rxbuf(), cfg.mrg_rxbuf);
    assert_eq!(g.event_idx(), cfg.event_idx);
    assert_eq!(g.uses_indirect(), cfg.indirect);
    assert_eq!(acked & (1 << VIRTIO_NET_F_MQ) != 0, cfg.queue_pairs > 1);
    assert_eq!(g.region_ranges().len(), cfg.regions);

    g.set_alloc_region(force_region);
    g.set_repost(true);
    let rx_buf = if cfg.mrg_rxbuf { 256 } else { 2048 };
    let count = 3 * usize::from(cfg.queue_size) / 2;
    for qp in 0..cfg.queue_pairs {
        let n = usize::from(cfg.queue_size) / 2;
        assert_eq!(g.post_rx(qp, n, rx_buf), n);
        exchange(&mut g, qp, count, rx_buf);
        if let Some(r) = force_region {
            let (start, len) = g.region_ranges()[r];
            let gpa = g.last_tx_gpa(qp);
            assert!(
                gpa >= start && gpa < start + len,
                "TX buffer outside region {r}"
            );
        }
        let rx = g.stats(2 * usize::from(qp));
        let tx = g.stats(2 * usize::from(qp) + 1);
        assert_eq!(tx.used_idx as usize, count);
        assert!(tx.kicks >= 1 && tx.kicks + tx.kicks_suppressed == count as u64);
        assert!(rx.used_idx as usize >= count);
        // The echo signals (EVENT_IDX or not) as long as the guest wants.
        assert!(g.calls(2 * usize::from(qp)) >= 1);
    }
    assert!(g.violations().is_empty(), "{:?}", g.violations());
    drop(g);
    th.join().unwrap();
}

#[test]
fn roundtrip_feature_matrix() {
    for bits in 0..16u32 {
        let cfg = GuestConfig {
            mrg_rxbuf: bits & 1 != 0,
            event_idx: bits & 2 != 0,
            indirect: bits & 4 != 0,
            regions: if bits & 8 != 0 { 2 } else { 1 },
            region_gap: if bits & 9 == 9 { 1 << 20 } else { 0 },
            queue_size: 64,
            mem_size: 4 << 20,
            ..GuestConfig::default()
        };
        let force = (cfg.regions == 2 && bits & 2 != 0).then_some(1);
        roundtrip(cfg, force);
    }
}

#[test]
fn roundtrip_two_queue_pairs() {
    roundtrip(
        GuestConfig {
            queue_pairs: 2,
            mrg_rxbuf: true,
            event_idx: true,
            queue_size: 128,
            mem_size: 4 << 20,
            ..GuestConfig::default()
        },
        None,
    );
}

#[test]
fn default_config_and_no_repost() {
    let (_dir, path) = sock_dir();
    let th = spawn_echo(&path, 1);
    let mut g = FakeGuest::connect(&path, GuestConfig::default()).unwrap();
    assert_ne!(
        g.acked_protocol_features() & VhostUserProtocolFeatures::REPLY_ACK.bits(),
        0
    );
    // Without reposting, RX buffers run out: frames wait in TX until the
    // guest posts more.
    assert_eq!(g.post_rx(0, 2, 2048), 2);
    for i in 0..3 {
        assert!(g.send(0, &hdr_of(i), &frame_of(100, i), &[]));
    }
    for i in 0..2 {
        let (h, f) = g.recv(0, TIMEOUT).unwrap();
        assert_eq!(h[..10], hdr_of(i)[..10]);
        assert_eq!(f, frame_of(100, i));
    }
    assert_eq!(g.rx_posted(0), 0);
    assert!(g.recv(0, Duration::from_millis(20)).is_none());
    assert_eq!(g.post_rx(0, 1, 2048), 1);
    let (_, f) = g.recv(0, TIMEOUT).unwrap();
    assert_eq!(f, frame_of(100, 2));
    assert_eq!(g.wait_tx(0, 3, TIMEOUT), 3);
    assert!(g.violations().is_empty(), "{:?}", g.violations());
    drop(g);
    th.join().unwrap();
}

#[test]
fn raw_chain_is_echoed() {
    let (_dir, path) = sock_dir();
    let th = spawn_echo(&path, 1);
    let mut g = FakeGuest::connect(&path, GuestConfig::default()).unwrap();
    // A hand-made RX chain of two device-writable descriptors, the header
    // buffer too short for the header.
    let r1 = g.alloc(8).unwrap();
    let r2 = g.alloc(2048).unwrap();
    let w = VRING_DESC_F_WRITE as u16;
    g.send_raw_on(
        rx(0),
        &[
            (5, r1, 8, w | VRING_DESC_F_NEXT as u16, 9),
            (9, r2, 2048, w, 0),
        ],
        5,
    );
    assert_eq!(g.rx_posted(0), 1);
    // Header and frame in two hand-written descriptors, at the top of the
    // descriptor table, the frame crossing nothing special.
    let hdr = hdr_of(9);
    let frame = frame_of(200, 9);
    let a = g.alloc(VIRTIO_NET_HDR_LEN).unwrap();
    let b = g.alloc(frame.len()).unwrap();
    g.write_guest(a, &hdr);
    g.write_guest(b, &frame);
    let top = g.queue_size() - 1;
    g.send_raw(
        0,
        &[
            (
                top,
                a,
                VIRTIO_NET_HDR_LEN as u32,
                VRING_DESC_F_NEXT as u16,
                top - 1,
            ),
            (top - 1, b, frame.len() as u32, 0, 0),
        ],
        top,
    );
    let (h, f) = g.recv(0, TIMEOUT).unwrap();
    assert_eq!(h[..10], hdr[..10]);
    assert_eq!(f, frame);
    assert_eq!(g.wait_tx(0, 1, TIMEOUT), 1);
    assert_eq!(g.rx_posted(0), 0);
    assert_eq!(g.post_rx(0, 4, 2048), 4);
    // The reserved descriptors are free again: the whole ring can be used.
    g.set_repost(true);
    for i in 0..usize::from(g.queue_size()) {
        assert!(g.send(0, &hdr_of(i), &frame_of(10, i), &[]));
        assert!(g.recv(0, TIMEOUT).is_some());
    }
    assert!(g.violations().is_empty(), "{:?}", g.violations());
    drop(g);
    th.join().unwrap();
}

#[test]
fn guest_as_socket_server() {
    let (_dir, path) = sock_dir();
    let listener = GuestListener::bind(&path).unwrap();
    let p = path.to_str().unwrap().to_string();
    let th = thread::spawn(move || {
        let mut daemon = echo_daemon(1);
        daemon.start_client(&p).unwrap();
        let _ = daemon.wait();
    });
    let cfg = GuestConfig {
        mrg_rxbuf: true,
        indirect: true,
        queue_size: 32,
        mem_size: 2 << 20,
        ..GuestConfig::default()
    };
    let mut g = listener.accept(cfg).unwrap();
    g.set_repost(true);
    assert_eq!(g.post_rx(0, 16, 512), 16);
    exchange(&mut g, 0, 40, 512);
    drop(g);
    th.join().unwrap();
}

#[test]
fn memory_hotplug() {
    let (_dir, path) = sock_dir();
    let th = spawn_echo(&path, 1);
    let cfg = GuestConfig {
        queue_size: 64,
        mem_size: 2 << 20,
        ..GuestConfig::default()
    };
    let mut g = FakeGuest::connect(&path, cfg).unwrap();
    let r = g.add_region(1 << 20).unwrap();
    assert_eq!(r, 1);
    let (start, len) = g.region_ranges()[1];
    g.set_alloc_region(Some(1));
    assert_eq!(g.post_rx(0, 8, 2048), 8);
    for i in 0..8 {
        assert!(g.send(0, &hdr_of(i), &frame_of(700, i), &[12]));
        let gpa = g.last_tx_gpa(0);
        assert!(gpa >= start && gpa < start + len);
        let (_, f) = g.recv(0, TIMEOUT).unwrap();
        assert_eq!(f, frame_of(700, i));
    }
    assert_eq!(g.wait_tx(0, 8, TIMEOUT), 8);
    assert_eq!(g.rx_posted(0), 0);
    g.remove_region(1).unwrap();
    assert_eq!(g.region_ranges().len(), 1);
    g.set_alloc_region(None);
    assert_eq!(g.post_rx(0, 4, 2048), 4);
    assert!(g.send(0, &hdr_of(1), &frame_of(99, 1), &[]));
    assert_eq!(g.recv(0, TIMEOUT).unwrap().1, frame_of(99, 1));
    assert!(g.violations().is_empty(), "{:?}", g.violations());
    drop(g);
    th.join().unwrap();
}

#[test]
fn reconnect_to_a_new_backend() {
    let (_dir, path) = sock_dir();
    let th = spawn_echo(&path, 1);
    let cfg = GuestConfig {
        event_idx: true,
        queue_size: 32,
        mem_size: 2 << 20,
        ..GuestConfig::default()
    };
    let mut g = FakeGuest::connect(&path, cfg).unwrap();
    g.set_repost(true);
    assert_eq!(g.post_rx(0, 8, 2048), 8);
    exchange(&mut g, 0, 20, 2048);
    g.disconnect();
    th.join().unwrap();

    let th = spawn_echo(&path, 1);
    g.reconnect().unwrap();
    exchange(&mut g, 0, 20, 2048);
    assert!(g.violations().is_empty(), "{:?}", g.violations());
    drop(g);
    th.join().unwrap();
}

#[test]
fn fake_guest_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<FakeGuest>();
    assert_send::<GuestListener>();
}
