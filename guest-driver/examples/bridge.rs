//! netmap's `bridge` over two virtio devices of pkt-gen's driver, in one
//! thread: what one port receives the other transmits, by swapping
//! buffers (zero copy: both devices' rings are in one netmap region). With
//! `-f N` it first sends N bursts of 32 frames on each port (testpmd's
//! `start tx_first N`), so frames go round through the switch between the
//! ports: the VM side of the virtio-user loopback (design brief §9) with
//! this driver in place of DPDK's.
//!
//!   bridge virtio:A virtio:B [-f BURSTS] [-l SIZE] [-b BATCH] [-t SECS] [-H 0|12] [-c]
//!
//! `-c` copies each frame instead of swapping buffers (netmap's bridge
//! does that between ports of different memory regions). `-H 12` (the
//! default) forwards frames with their virtio-net header in the buffer,
//! one descriptor per frame as DPDK's and Linux's drivers post them;
//! `-H 0` puts the header in a descriptor of its own.
//!
//! Prints, every second, the frames each port received, in Mpps.

use std::time::{Duration, Instant};

use guest_driver::{DriverConfig, VirtioName, VirtioRings};
use netmap::abi::NS_BUF_CHANGED;
use netmap::ring;

const MAC: [[u8; 6]; 2] = [[2, 0, 0, 0, 0, 0x10], [2, 0, 0, 0, 0, 0x11]];

fn usage() -> ! {
    eprintln!(
        "usage: bridge virtio:A virtio:B [-f BURSTS] [-l SIZE] [-b BATCH] [-t SECS] [-H 0|12]"
    );
    std::process::exit(2)
}

/// A UDP/IPv4 frame of `len` bytes from port `from` to the other.
fn frame(from: usize, len: usize, hdr: usize) -> Vec<u8> {
    let mut f = vec![0u8; hdr + len];
    let e = &mut f[hdr..];
    e[0..6].copy_from_slice(&MAC[1 - from]);
    e[6..12].copy_from_slice(&MAC[from]);
    e[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    e[14] = 0x45;
    e[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    e[22] = 64;
    e[23] = 17;
    e[26..30].copy_from_slice(&[10, 0, 0, 1 + from as u8]);
    e[30..34].copy_from_slice(&[10, 0, 0, 2 - from as u8]);
    f
}

/// Puts `n` copies of `f` in port `d`'s TX ring and sends them.
fn tx_first(d: &VirtioRings, f: &[u8], n: u32) {
    let r = d.tx_ring(0).expect("TX ring").ring;
    let ns = r.num_slots();
    let mut cur = r.cur();
    let n = n.min(ring::space(cur, r.tail(), ns));
    for _ in 0..n {
        let mut s = r.slot(cur);
        r.write_buf(s.buf_idx, 0, f).expect("frame fits a buffer");
        s.len = f.len() as u16;
        s.flags = 0;
        r.set_slot(cur, s);
        cur = ring::next(cur, ns);
    }
    r.set_head(cur);
    r.set_cur(cur);
    d.txsync(0).expect("txsync");
}

/// Moves up to `batch` frames from `src`'s RX ring to `dst`'s TX ring by
/// swapping buffers (or copying them, `copy`); returns how many.
fn forward(src: &VirtioRings, dst: &VirtioRings, batch: u32, copy: bool) -> u32 {
    let (rx, tx) = (
        src.rx_ring(0).expect("RX").ring,
        dst.tx_ring(0).expect("TX").ring,
    );
    let (nr, nt) = (rx.num_slots(), tx.num_slots());
    let (mut i, mut j) = (rx.cur(), tx.cur());
    let n = ring::space(i, rx.tail(), nr)
        .min(ring::space(j, tx.tail(), nt))
        .min(batch);
    for _ in 0..n {
        let mut a = rx.slot(i);
        let mut b = tx.slot(j);
        if copy {
            let mut f = [0u8; 2048];
            let f = &mut f[..usize::from(a.len)];
            let _ = rx.read_buf(a.buf_idx, 0, f);
            let _ = tx.write_buf(b.buf_idx, 0, f);
            b.flags = a.flags & netmap::abi::NS_MOREFRAG;
            a.flags = 0;
        } else {
            std::mem::swap(&mut a.buf_idx, &mut b.buf_idx);
            b.flags = (a.flags & netmap::abi::NS_MOREFRAG) | NS_BUF_CHANGED;
            a.flags = NS_BUF_CHANGED;
        }
        b.len = a.len;
        rx.set_slot(i, a);
        tx.set_slot(j, b);
        i = ring::next(i, nr);
        j = ring::next(j, nt);
    }
    rx.set_head(i);
    rx.set_cur(i);
    tx.set_head(j);
    tx.set_cur(j);
    n
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut names, mut bursts, mut size, mut batch, mut secs, mut hdr) =
        (Vec::new(), 0u32, 60usize, 512u32, 10u64, 12u16);
    let mut copy = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = || -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage())
        };
        match a.as_str() {
            "-f" => bursts = num() as u32,
            "-l" => size = num() as usize,
            "-b" => batch = num() as u32,
            "-t" => secs = num(),
            "-H" => hdr = num() as u16,
            "-c" => copy = true,
            s if s.starts_with("virtio:") => names.push(match VirtioName::parse(s) {
                Some(Ok(n)) => n,
                Some(Err(e)) => {
                    eprintln!("{e}");
                    std::process::exit(2)
                }
                None => usage(),
            }),
            _ => usage(),
        }
    }
    if names.len() != 2 || !(60..=2048).contains(&size) {
        usage();
    }
    let cfg = DriverConfig {
        hdr_len: hdr,
        ..Default::default()
    };
    let devs = guest_driver::open_group(&names, cfg).unwrap_or_else(|e| {
        eprintln!("bridge: {e}");
        std::process::exit(1)
    });
    let (a, b) = (&devs[0], &devs[1]);
    eprintln!(
        "bridge: {} <-> {}, {} in flight per port, {size} B, batch {batch}",
        a.name(),
        b.name(),
        bursts * 32
    );
    if bursts > 0 {
        tx_first(a, &frame(0, size, hdr.into()), bursts * 32);
        tx_first(b, &frame(1, size, hdr.into()), bursts * 32);
    }
    let t0 = Instant::now();
    let mut tick = t0 + Duration::from_secs(1);
    let (mut ca, mut cb) = (0u64, 0u64);
    while t0.elapsed() < Duration::from_secs(secs) {
        a.rxsync(0).expect("rxsync");
        b.rxsync(0).expect("rxsync");
        // What B received goes out of A, and the other way round.
        cb += u64::from(forward(b, a, batch, copy));
        ca += u64::from(forward(a, b, batch, copy));
        a.txsync(0).expect("txsync");
        b.txsync(0).expect("txsync");
        let now = Instant::now();
        if now >= tick {
            println!("rx {:.3} {:.3} Mpps", ca as f64 / 1e6, cb as f64 / 1e6);
            (ca, cb) = (0, 0);
            tick += Duration::from_secs(1);
        }
    }
}
