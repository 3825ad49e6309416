//! The whole VM-to-VM path, in process, one thread, no socket: guest A's
//! TX virtqueue ([`TxQueue`], the engine's source) through
//! `Switch::forward` into guest B's RX virtqueue ([`RxSet`] over one
//! [`RxQueue`], the sink), as valed runs a VM port. The guests are
//! [`MemQueue`]s: split rings in anonymous guest memory, bound to the
//! queues as a vhost-user session binds them.
//!
//! One iteration is one batch of `BATCH` frames: A posts them (the frames
//! were written into its TX buffers once, at setup: the guest's own
//! writes are not measured), the switch forwards them, B takes its used
//! RX buffers back and posts them again, A takes its TX chains back.
//! Criterion reports the time per batch and frames per second
//! (`Throughput::Elements(BATCH)`). B's MAC is learned before the
//! measurement, so the frames go unicast to B. Before each configuration
//! is measured, one batch is checked byte for byte in B's buffers.
//!
//! Configurations: frame size (60, 512, 1514 B, without the 12-byte
//! virtio-net header), mergeable RX buffers on or off, EVENT_IDX on or
//! off; `copy` is the reference: the same bytes copied with `memcpy` into
//! buffers laid out as B's.
//!
//! `cargo bench -p vale-backend --bench vm2vm`

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use backend::device::{features, DEFAULT_BATCH};
use backend::queue::{RxQueue, RxSet, TxQueue, VringSlot, VNET_HDR_LEN};
use backend::testing::mem_queue::{Dir, MemQueue};
use criterion::{BenchmarkId, Criterion, Throughput};
use netmap::sys::EventFd;
use vale::testing::{eth_frame, mac};
use vale::{DropReason, PortConfig, PortId, Scratch, Switch};

/// Frames per iteration.
const BATCH: usize = 32;
/// Entries of every virtqueue.
const QUEUE_SIZE: u16 = 256;
/// Bytes of each RX buffer (and TX buffer).
const BUF_LEN: u32 = 2048;
/// Distinct frames A sends (its TX buffers cycle through them).
const FRAMES: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Cfg {
    len: usize,
    mrg: bool,
    event_idx: bool,
}

impl Cfg {
    fn acked(self) -> u64 {
        let mut f = features::VERSION_1;
        if self.mrg {
            f |= features::MRG_RXBUF;
        }
        if self.event_idx {
            f |= features::EVENT_IDX;
        }
        f
    }

    fn name(self) -> String {
        format!(
            "{}B/{}/{}",
            self.len,
            if self.mrg { "mrg" } else { "nomrg" },
            if self.event_idx {
                "event_idx"
            } else {
                "no_event_idx"
            }
        )
    }
}

/// A frame as guest A puts it on its TX ring: a zeroed virtio-net header
/// (no offload), then Ethernet to B.
fn tx_frame(k: usize, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend(eth_frame(mac(1), mac(0), len, k as u64 + 1));
    f
}

/// A VM port's sink as valed attaches it: an [`RxSet`] over one RX queue
/// bound in `slot` (unbound: the guest is not there).
fn rx_sink(slot: Arc<VringSlot>, cfg: Cfg) -> RxSet {
    let q = RxQueue::new(
        slot,
        Arc::default(),
        Arc::default(),
        Arc::new(AtomicBool::new(cfg.mrg)),
    );
    RxSet::new(
        vec![q],
        Arc::new(EventFd::new().expect("eventfd")),
        Arc::new(AtomicU64::new(cfg.acked())),
    )
}

/// Two VM ports on one switch, B's MAC learned, A's TX ring filled.
struct Path {
    sw: Switch,
    a: PortId,
    b: PortId,
    txq: TxQueue,
    sc: Scratch,
    a_tx: MemQueue,
    b_rx: MemQueue,
}

impl Path {
    fn new(cfg: Cfg) -> Path {
        let sw = Switch::new("vale0");
        let port = PortConfig {
            vnet_hdr_len: VNET_HDR_LEN as u16,
            ..Default::default()
        };
        // A's RX queue is not bound: nothing is sent to A but B's
        // announcement, dropped there.
        let a = sw
            .attach("vale0:a", port, Box::new(rx_sink(Arc::default(), cfg)))
            .expect("attach a");
        let mut b_rx = MemQueue::new(Dir::Rx, QUEUE_SIZE, BUF_LEN, cfg.event_idx);
        let b = sw
            .attach("vale0:b", port, Box::new(rx_sink(b_rx.slot(), cfg)))
            .expect("attach b");
        b_rx.post_all();

        // B announces its MAC.
        let mut sc = Scratch::default();
        let mut b_tx = MemQueue::new(Dir::Tx, 16, BUF_LEN, cfg.event_idx);
        let mut hello = vec![0u8; VNET_HDR_LEN];
        hello.extend(eth_frame([0xff; 6], mac(1), 60, 0));
        b_tx.set_tx(0, &hello);
        b_tx.post(1);
        let mut b_txq = TxQueue::new(b_tx.slot(), Arc::default(), Arc::default());
        assert_eq!(sw.forward(b, &mut b_txq, &mut sc, 0).frames, 1);
        assert_eq!(b_tx.reap(), 1);
        assert_eq!(
            sw.with_lookup_mut(|l| l.find(&mac(1), 0)),
            Some(b),
            "B's MAC not learned"
        );

        let mut a_tx = MemQueue::new(Dir::Tx, QUEUE_SIZE, BUF_LEN, cfg.event_idx);
        a_tx.fill_tx(|id| tx_frame(id as usize % FRAMES, cfg.len));
        let txq = TxQueue::new(a_tx.slot(), Arc::default(), Arc::default())
            .with_batch(DEFAULT_BATCH as usize);
        Path {
            sw,
            a,
            b,
            txq,
            sc,
            a_tx,
            b_rx,
        }
    }

    /// One batch through, both guests recycling; frames forwarded.
    #[inline]
    fn round(&mut self) -> usize {
        self.a_tx.post(BATCH);
        let n = self
            .sw
            .forward(self.a, &mut self.txq, &mut self.sc, 0)
            .frames;
        self.b_rx.reap();
        self.b_rx.post_all();
        self.a_tx.reap();
        n
    }

    /// One batch, checked: every frame in B's buffers, whole, behind the
    /// header B should get, in the order A sent them.
    fn check(&mut self, cfg: Cfg) {
        let before = self.sw.stats(self.b).expect("port b");
        assert_eq!(self.a_tx.post(BATCH), BATCH);
        let sent = self.a_tx.last_posted();
        let f = self.sw.forward(self.a, &mut self.txq, &mut self.sc, 0);
        assert_eq!((f.frames, f.held, f.copies), (BATCH, 0, BATCH), "{f:?}");
        assert_eq!(self.b_rx.reap(), BATCH, "B got other than the batch");
        assert_eq!(self.a_tx.reap(), BATCH, "A's chains did not all come back");
        assert_eq!(
            self.a_tx.reaped().iter().map(|e| e.0).collect::<Vec<_>>(),
            sent
        );
        for (&(id, len), &tx_id) in self.b_rx.reaped().iter().zip(&sent) {
            assert_eq!(len as usize, VNET_HDR_LEN + cfg.len, "used length");
            let got = self.b_rx.read(id, len as usize);
            let want = self.a_tx.read(tx_id, 0);
            let mut hdr = [0u8; VNET_HDR_LEN];
            // num_buffers: one buffer each (frames fit in 2048 bytes).
            hdr[10] = 1;
            assert_eq!(got[..VNET_HDR_LEN], hdr, "header B got");
            assert!(
                got[VNET_HDR_LEN..] == want[VNET_HDR_LEN..],
                "frame from A's chain {tx_id} damaged in B's buffer {id}"
            );
        }
        self.b_rx.post_all();
        let after = self.sw.stats(self.b).expect("port b");
        assert_eq!(after.out_packets - before.out_packets, BATCH as u64);
        assert_eq!(after.total_drops(), 0);
        assert_eq!(self.a_tx.violations() + self.b_rx.violations(), 0);
    }

    /// Nothing lost since setup, no ring misused.
    fn check_clean(&self) {
        let a = self.sw.stats(self.a).expect("port a");
        let b = self.sw.stats(self.b).expect("port b");
        // B's announcement was dropped at A, whose RX queue is not bound.
        assert_eq!(a.total_drops(), a.drop(DropReason::DstFull), "{a:?}");
        assert_eq!(b.total_drops(), 0, "B's drops: {b:?}");
        assert_eq!(b.out_packets, a.in_packets, "{a:?} {b:?}");
        assert_eq!(self.a_tx.violations() + self.b_rx.violations(), 0);
        assert_eq!(self.a_tx.free(), QUEUE_SIZE as usize);
    }
}

/// The reference: the same bytes, header and frame, copied into buffers
/// laid out as B's, `BATCH` at a time.
fn bench_copy(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, len: usize) {
    let src: Vec<Vec<u8>> = (0..FRAMES).map(|k| tx_frame(k, len)).collect();
    let mut dst = vec![0u8; QUEUE_SIZE as usize * BUF_LEN as usize];
    let mut at = 0usize;
    g.bench_function(BenchmarkId::from_parameter(format!("{len}B/copy")), |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                let f = &src[at % FRAMES];
                let slot = at % QUEUE_SIZE as usize * BUF_LEN as usize;
                dst[slot..slot + f.len()].copy_from_slice(black_box(f));
                at += 1;
            }
            black_box(&mut dst);
        })
    });
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("vm2vm");
    g.throughput(Throughput::Elements(BATCH as u64));
    for len in [60usize, 512, 1514] {
        for mrg in [true, false] {
            for event_idx in [true, false] {
                let cfg = Cfg {
                    len,
                    mrg,
                    event_idx,
                };
                let mut p = Path::new(cfg);
                p.check(cfg);
                g.bench_function(BenchmarkId::from_parameter(cfg.name()), |b| {
                    b.iter(|| assert_eq!(p.round(), BATCH))
                });
                p.check(cfg);
                p.check_clean();
            }
        }
        bench_copy(&mut g, len);
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
