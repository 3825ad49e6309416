//! The engine alone, in process, one thread: Mpps through `Switch::forward`
//! for 60 B and 1514 B frames, 2 and 8 ports, unicast and broadcast.
//! Sources re-present the same 1024 frames; sinks copy every frame into
//! their buffers and are never full.
//!
//! `cargo bench -p vale --bench engine`; criterion reports time per input
//! frame and frames per second. Broadcast to N ports makes N-1 copies of
//! each input frame.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use vale::testing::bench_path;
use vale::Scratch;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    for len in [60usize, 1514] {
        for ports in [2usize, 8] {
            for unicast in [true, false] {
                let (sw, p0, mut src) = bench_path(ports, len, unicast);
                let mut sc = Scratch::default();
                let name = format!(
                    "{len}B/{ports}ports/{}",
                    if unicast { "unicast" } else { "broadcast" }
                );
                g.bench_function(BenchmarkId::from_parameter(name), |b| {
                    b.iter_custom(|iters| {
                        let t0 = Instant::now();
                        let mut done = 0u64;
                        while done < iters {
                            done += sw.forward(p0, &mut src, &mut sc, 1).frames as u64;
                        }
                        t0.elapsed()
                    })
                });
            }
        }
    }
    // The same unicast path with a copy monitor on each end (the
    // sender's TX and the receiver's RX), which copies every frame twice
    // more: what a capture costs the ports it watches.
    for len in [60usize, 1514] {
        let (sw, p0, mut src) = bench_path(2, len, true);
        for (p, dirs) in [(p0, vale::MONITOR_TX), (p0 + 1, vale::MONITOR_RX)] {
            let m: vale::SharedSink = std::sync::Arc::new(std::sync::Mutex::new(
                vale::testing::NullSink::new(1024, 2048),
            ));
            sw.add_monitor(p, dirs, m).unwrap();
        }
        let mut sc = Scratch::default();
        g.bench_function(
            BenchmarkId::from_parameter(format!("{len}B/2ports/unicast/monitored")),
            |b| {
                b.iter_custom(|iters| {
                    let t0 = Instant::now();
                    let mut done = 0u64;
                    while done < iters {
                        done += sw.forward(p0, &mut src, &mut sc, 1).frames as u64;
                    }
                    t0.elapsed()
                })
            },
        );
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
