//! `core-probe [CPU_A CPU_B [ROUNDS]]`: how far apart two cores are, as the
//! round trip of one cache line between them (two threads, each pinned to
//! one core, take turns writing a counter the other waits for). Prints the
//! round trip in ns: the median of ten batches of ROUNDS/10, so that a
//! preemption in one batch does not move it.
//!
//! A switch loopback moves every frame's descriptors and buffers between
//! the VM side's core and the switch's, so its rate follows this figure.
//! On this project's build host (2 vCPUs of an AMD EPYC) the hypervisor
//! places the two vCPUs either on cores that share a cache (43–70 ns) or
//! on cores that do not (265–285 or 370–460 ns), and moves them every few tens of
//! seconds; `scripts/bench-switch.sh` runs this before and after each run
//! so that runs are compared with runs of the same placement.

#[path = "../probe.rs"]
mod probe;
use probe::{arg, pin};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Batches timed apart; the figure is their median.
const BATCHES: u64 = 10;

/// The bouncing line, alone in its cache line.
#[repr(align(128))]
struct Line(AtomicU64);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let parsed = (|| {
        Ok::<_, String>((
            arg(&args, 1, 0)?,
            arg(&args, 2, 1)?,
            arg(&args, 3, 200_000)?,
        ))
    })();
    let (a, b, rounds) = match parsed {
        Ok(v) if args.len() != 2 && args.len() <= 4 && v.2 >= 10 && v.0 != v.1 => v,
        Ok(_) => {
            eprintln!(
                "usage: core-probe [CPU_A CPU_B [ROUNDS]] (two different CPUs, ROUNDS >= 10)"
            );
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("core-probe: {e}\nusage: core-probe [CPU_A CPU_B [ROUNDS]]");
            std::process::exit(2);
        }
    };
    let line = Line(AtomicU64::new(0));
    // 1 once the peer is pinned, 2 if it could not be: then nobody answers.
    let ready = AtomicU64::new(0);
    let batch = rounds / BATCHES;
    let total = batch * BATCHES;
    let res = std::thread::scope(|s| {
        // The peer pins itself before this thread pins and spins: started
        // after, it would wait for a time slice on this thread's CPU.
        let peer = s.spawn(|| {
            if let Err(e) = pin(b as usize) {
                ready.store(2, Ordering::Release);
                return Err(e);
            }
            ready.store(1, Ordering::Release);
            for i in 0..total {
                while line.0.load(Ordering::Acquire) != 2 * i + 1 {
                    std::hint::spin_loop();
                }
                line.0.store(2 * i + 2, Ordering::Release);
            }
            Ok::<_, std::io::Error>(())
        });
        if let Err(e) = pin(a as usize) {
            // Ends the process, the waiting peer with it.
            eprintln!("core-probe: cannot pin to CPU {a}: {e}");
            std::process::exit(1);
        }
        while ready.load(Ordering::Acquire) == 0 {
            std::hint::spin_loop();
        }
        if ready.load(Ordering::Acquire) == 2 {
            return peer
                .join()
                .expect("probe thread panicked")
                .map(|()| Vec::new());
        }
        let mut per_batch = Vec::with_capacity(BATCHES as usize);
        for k in 0..BATCHES {
            let t0 = Instant::now();
            for i in k * batch..(k + 1) * batch {
                line.0.store(2 * i + 1, Ordering::Release);
                while line.0.load(Ordering::Acquire) != 2 * i + 2 {
                    std::hint::spin_loop();
                }
            }
            per_batch.push(t0.elapsed().as_nanos() as f64 / batch as f64);
        }
        peer.join().expect("probe thread panicked")?;
        Ok::<_, std::io::Error>(per_batch)
    });
    match res {
        Ok(mut v) => {
            v.sort_by(f64::total_cmp);
            println!("{:.1}", (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0);
        }
        Err(e) => {
            eprintln!("core-probe: cannot pin to CPU {b}: {e}");
            std::process::exit(1);
        }
    }
}
