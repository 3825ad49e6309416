//! The whole VM-to-VM path, in process, one thread, no socket: guest A's
//! TX virtqueue through `Switch::forward` into guest B's RX virtqueue, as
//! valed runs a VM port (the path is `backend::testing::vm2vm`, shared
//! with the instruction counter `scripts/count-vm2vm.sh`).
//!
//! One iteration is one round: A posts a batch (the frames were written
//! into its TX buffers once, at setup: the guest's own writes are not
//! measured), the switch forwards it, B takes its used RX buffers back and
//! posts them again, A takes its TX chains back. Criterion reports the
//! time per round and frames per second (`Throughput::Elements`, the
//! round's frames). B's MAC is learned before the measurement, so the
//! frames go unicast to B. Before and after each configuration is
//! measured, one round is checked byte for byte in B's buffers.
//!
//! Configurations: frame size (60, 512, 1514 B without the 12-byte
//! virtio-net header, and 64 KiB TCP GSO frames that B takes whole),
//! mergeable RX buffers on or off, EVENT_IDX on or off; `copy` is the
//! reference: the same bytes copied with `memcpy` into buffers laid out
//! as B's.
//!
//! `cargo bench -p vale-backend --bench vm2vm`

use std::hint::black_box;
use std::time::Duration;

use backend::testing::vm2vm::{configs, tx_frame, Cfg, Path, BATCH, BUF_LEN, FRAMES, QUEUE_SIZE};
use criterion::{BenchmarkId, Criterion, Throughput};

/// The reference: the same bytes, header and frame, copied into buffers
/// laid out as B's, `BATCH` at a time.
fn bench_copy(c: &mut Criterion, len: usize) {
    let mut g = c.benchmark_group("vm2vm");
    g.throughput(Throughput::Elements(BATCH as u64));
    let cfg = Cfg::plain(len, true, true);
    let src: Vec<Vec<u8>> = (0..FRAMES).map(|k| tx_frame(k, cfg)).collect();
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
    g.finish();
}

fn bench(c: &mut Criterion) {
    let all = configs();
    for (i, &cfg) in all.iter().enumerate() {
        let mut p = Path::for_bench(cfg);
        p.check();
        let batch = p.batch();
        let mut g = c.benchmark_group("vm2vm");
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(BenchmarkId::from_parameter(cfg.name()), |b| {
            b.iter(|| assert_eq!(p.round(), batch))
        });
        g.finish();
        p.check();
        p.check_clean();
        // The copy reference after the last configuration of each size.
        if !cfg.gso && all.get(i + 1).map(|n| n.len) != Some(cfg.len) {
            bench_copy(c, cfg.len);
        }
    }
}

fn main() {
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
