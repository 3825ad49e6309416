//! The whole VM-to-VM path in process, one thread, no socket: guest A's
//! TX virtqueue ([`TxQueue`], the engine's source) through
//! `Switch::forward` into guest B's RX virtqueue ([`RxSet`] over one
//! [`RxQueue`], the sink), as valed runs a VM port. The guests are
//! [`MemQueue`]s: split rings in anonymous guest memory, bound to the
//! queues as a vhost-user session binds them.
//!
//! Shared by the criterion bench (`benches/vm2vm.rs`, time per frame) and
//! the instruction counter (`examples/vm2vm_count.rs` under callgrind,
//! `scripts/count-vm2vm.sh`), so both measure the same code on the same
//! rings.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use netmap::sys::EventFd;
use vale::offload::{F_NEEDS_CSUM, GSO_TCPV4};
use vale::testing::{eth_frame, mac};
use vale::{DropReason, PortConfig, PortId, Scratch, Switch};

use super::mem_queue::{Dir, MemQueue};
use crate::device::{features, DEFAULT_BATCH};
use crate::queue::{RxQueue, RxSet, TxQueue, VringSlot, VNET_HDR_LEN};

/// Frames per round.
pub const BATCH: usize = 32;
/// Entries of every virtqueue.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes of each RX buffer (and of each TX buffer of ordinary frames).
pub const BUF_LEN: u32 = 2048;
/// Distinct frames A sends (its TX buffers cycle through them).
pub const FRAMES: usize = 64;
/// Bytes of a GSO frame (without the virtio-net header): 64 KiB of TCP
/// payload behind its headers, as a guest with TSO sends it.
pub const GSO_LEN: usize = 14 + 20 + 20 + 65_536 - 54;
/// MSS the GSO frames carry.
const GSO_MSS: u16 = 1448;

/// One configuration of the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cfg {
    /// Frame length, Ethernet header included, virtio-net header not.
    pub len: usize,
    /// `VIRTIO_NET_F_MRG_RXBUF` acked by B.
    pub mrg: bool,
    /// `VIRTIO_RING_F_EVENT_IDX` acked by both.
    pub event_idx: bool,
    /// A's frames are TCP/IPv4 GSO frames and B takes them whole
    /// (GUEST_CSUM and GUEST_TSO4 acked).
    pub gso: bool,
    /// Every frame the general way (`Switch::set_fused(false)`), for the
    /// per-stage split and the comparison with a fused run.
    pub general: bool,
    /// B's RX queue does not demote what it wrote
    /// (`RxQueue::with_demote(false)`): the guest reads on the switch's
    /// core, as here, rather than on its own as deployed.
    pub same_core: bool,
}

impl Cfg {
    /// Ordinary frames of `len` bytes.
    pub fn plain(len: usize, mrg: bool, event_idx: bool) -> Cfg {
        Cfg {
            len,
            mrg,
            event_idx,
            gso: false,
            general: false,
            same_core: false,
        }
    }

    /// 64 KiB GSO frames, mergeable buffers (B could not take them in
    /// 2 KiB buffers otherwise).
    pub fn gso(event_idx: bool) -> Cfg {
        Cfg {
            len: GSO_LEN,
            mrg: true,
            event_idx,
            gso: true,
            general: false,
            same_core: false,
        }
    }

    fn acked(self) -> u64 {
        let mut f = features::VERSION_1;
        if self.mrg {
            f |= features::MRG_RXBUF;
        }
        if self.event_idx {
            f |= features::EVENT_IDX;
        }
        if self.gso {
            f |= features::CSUM | features::GUEST_CSUM | features::HOST_TSO4 | features::GUEST_TSO4;
        }
        f
    }

    /// The same, every frame the general way.
    pub fn general(self) -> Cfg {
        Cfg {
            general: true,
            ..self
        }
    }

    /// The same, B's RX queue not demoting (see [`Cfg::same_core`]).
    pub fn same_core(self) -> Cfg {
        Cfg {
            same_core: true,
            ..self
        }
    }

    /// The benchmark id: `60B/mrg/event_idx`, `gso64K/mrg/no_event_idx`,
    /// `60B/mrg/event_idx/general`, `60B/mrg/event_idx/same_core`.
    pub fn name(self) -> String {
        let size = if self.gso {
            "gso64K".to_string()
        } else {
            format!("{}B", self.len)
        };
        format!(
            "{size}/{}/{}{}{}",
            if self.mrg { "mrg" } else { "nomrg" },
            if self.event_idx {
                "event_idx"
            } else {
                "no_event_idx"
            },
            if self.general { "/general" } else { "" },
            if self.same_core { "/same_core" } else { "" }
        )
    }

    /// RX chains one frame takes in B (2 KiB buffers).
    pub fn chains_per_frame(self) -> usize {
        (VNET_HDR_LEN + self.len).div_ceil(BUF_LEN as usize)
    }

    /// TX buffer size A needs.
    fn tx_buf_len(self) -> u32 {
        ((VNET_HDR_LEN + self.len) as u32).max(BUF_LEN)
    }
}

/// The virtio-net header A puts in front of its frames.
pub fn tx_header(cfg: Cfg) -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    if cfg.gso {
        h[0] = F_NEEDS_CSUM;
        h[1] = GSO_TCPV4;
        h[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
        h[4..6].copy_from_slice(&GSO_MSS.to_le_bytes());
        h[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
        h[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
    }
    h
}

/// Frame `k` as A puts it on its TX ring: its virtio-net header, then
/// Ethernet to B (for GSO, IPv4 and TCP headers with a partial checksum).
pub fn tx_frame(k: usize, cfg: Cfg) -> Vec<u8> {
    let mut f = tx_header(cfg).to_vec();
    let mut e = eth_frame(mac(1), mac(0), cfg.len, k as u64 + 1);
    if cfg.gso {
        let ip_len = (cfg.len - 14) as u16;
        let ip = &mut e[14..34];
        ip.fill(0);
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let tcp = &mut e[34..54];
        tcp.fill(0);
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x18; // PSH, ACK
        tcp[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    }
    f.extend(e);
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
    )
    .with_demote(!cfg.same_core);
    RxSet::new(
        vec![q],
        Arc::new(EventFd::new().expect("eventfd")),
        Arc::new(AtomicU64::new(cfg.acked())),
    )
}

/// Two VM ports on one switch, B's MAC learned, A's TX ring filled.
pub struct Path {
    cfg: Cfg,
    sw: Switch,
    a: PortId,
    b: PortId,
    txq: TxQueue,
    sc: Scratch,
    a_tx: MemQueue,
    b_rx: MemQueue,
}

impl std::fmt::Debug for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Path").field("cfg", &self.cfg).finish()
    }
}

impl Path {
    /// The path for `cfg`, ready for [`Path::round`], its guests checking
    /// that every used entry comes back in order and in place
    /// (`MemQueue::used_out_of_order`).
    pub fn new(cfg: Cfg) -> Path {
        Self::build(cfg, true)
    }

    /// [`Path::new`] without the guests' order check, which would add its
    /// instructions to every round measured (the bench and the counter).
    pub fn for_bench(cfg: Cfg) -> Path {
        Self::build(cfg, false)
    }

    fn build(cfg: Cfg, check_order: bool) -> Path {
        let sw = Switch::new("vale0");
        sw.set_fused(!cfg.general);
        let port = PortConfig {
            vnet_hdr_len: VNET_HDR_LEN as u16,
            ..Default::default()
        };
        // A's RX queue is not bound: nothing is sent to A but B's
        // announcement, dropped there.
        let a = sw
            .attach("vale0:a", port, rx_sink(Arc::default(), cfg))
            .expect("attach a");
        let mut b_rx = MemQueue::new(Dir::Rx, QUEUE_SIZE, BUF_LEN, cfg.event_idx);
        if !check_order {
            b_rx = b_rx.without_order_check();
        }
        let b = sw
            .attach("vale0:b", port, rx_sink(b_rx.slot(), cfg))
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

        let mut a_tx = MemQueue::new(Dir::Tx, QUEUE_SIZE, cfg.tx_buf_len(), cfg.event_idx);
        if !check_order {
            a_tx = a_tx.without_order_check();
        }
        a_tx.fill_tx(|id| tx_frame(id as usize % FRAMES, cfg));
        let txq = TxQueue::new(a_tx.slot(), Arc::default(), Arc::default())
            .with_batch(DEFAULT_BATCH as usize);
        Path {
            cfg,
            sw,
            a,
            b,
            txq,
            sc,
            a_tx,
            b_rx,
        }
    }

    /// Frames per round: [`BATCH`], or as many GSO frames as B's ring
    /// holds at once.
    pub fn batch(&self) -> usize {
        BATCH.min((QUEUE_SIZE as usize - 1) / self.cfg.chains_per_frame())
    }

    /// One batch through, both guests recycling; frames forwarded.
    #[inline]
    pub fn round(&mut self) -> usize {
        self.a_tx.post(self.batch());
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
    pub fn check(&mut self) {
        let cfg = self.cfg;
        let batch = self.batch();
        let per = cfg.chains_per_frame();
        let before = self.sw.stats(self.b).expect("port b");
        assert_eq!(self.a_tx.post(batch), batch);
        let sent = self.a_tx.last_posted();
        let f = self.sw.forward(self.a, &mut self.txq, &mut self.sc, 0);
        assert_eq!((f.frames, f.held, f.copies), (batch, 0, batch), "{f:?}");
        assert_eq!(self.b_rx.reap(), batch * per, "B got other than the batch");
        assert_eq!(self.a_tx.reap(), batch, "A's chains did not all come back");
        assert_eq!(
            self.a_tx.reaped().iter().map(|e| e.0).collect::<Vec<_>>(),
            sent
        );
        let got: Vec<(u16, u32)> = self.b_rx.reaped().to_vec();
        for (chains, &tx_id) in got.chunks(per).zip(&sent) {
            let mut frame = Vec::new();
            for &(id, len) in chains {
                frame.extend(self.b_rx.read(id, len as usize));
            }
            assert_eq!(frame.len(), VNET_HDR_LEN + cfg.len, "bytes B got");
            let want = self.a_tx.read(tx_id, 0);
            let mut hdr = tx_header(cfg);
            hdr[10..12].copy_from_slice(&(per as u16).to_le_bytes());
            assert_eq!(frame[..VNET_HDR_LEN], hdr, "header B got");
            assert!(
                frame[VNET_HDR_LEN..] == want[VNET_HDR_LEN..],
                "frame from A's chain {tx_id} damaged in B's buffers"
            );
        }
        self.b_rx.post_all();
        let after = self.sw.stats(self.b).expect("port b");
        assert_eq!(after.out_packets - before.out_packets, batch as u64);
        assert_eq!(after.total_drops(), 0);
        assert_eq!(after.soft_offload, before.soft_offload, "B takes GSO whole");
        assert_eq!(self.a_tx.violations() + self.b_rx.violations(), 0);
    }

    /// Nothing lost since setup, no ring misused.
    pub fn check_clean(&self) {
        let a = self.sw.stats(self.a).expect("port a");
        let b = self.sw.stats(self.b).expect("port b");
        // B's announcement was dropped at A, whose RX queue is not bound.
        assert_eq!(a.total_drops(), a.drop(DropReason::DstFull), "{a:?}");
        assert_eq!(b.total_drops(), 0, "B's drops: {b:?}");
        assert_eq!(b.out_packets, a.in_packets, "{a:?} {b:?}");
        assert_eq!(self.a_tx.violations() + self.b_rx.violations(), 0);
        assert_eq!(
            self.a_tx.used_out_of_order() + self.b_rx.used_out_of_order(),
            0,
            "used entries out of order or out of place"
        );
        assert_eq!(self.a_tx.free(), QUEUE_SIZE as usize);
    }
}

/// Every configuration the bench and the counter run, in order.
pub fn configs() -> Vec<Cfg> {
    let mut v = Vec::new();
    for len in [60usize, 512, 1514] {
        for mrg in [true, false] {
            for event_idx in [true, false] {
                v.push(Cfg::plain(len, mrg, event_idx));
            }
        }
        // The general path beside the fused one, as valed ran every
        // frame before fused runs.
        v.push(Cfg::plain(len, true, true).general());
        // Without the demotion that pays across cores and costs in one
        // thread.
        v.push(Cfg::plain(len, true, true).same_core());
        v.push(Cfg::plain(len, true, true).general().same_core());
    }
    for event_idx in [true, false] {
        v.push(Cfg::gso(event_idx));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_configuration_delivers_its_frames_intact() {
        for cfg in configs() {
            let mut p = Path::new(cfg);
            p.check();
            for _ in 0..20 {
                assert_eq!(p.round(), p.batch(), "{}", cfg.name());
            }
            p.check();
            p.check_clean();
        }
    }
}
