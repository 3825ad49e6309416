//! `line-pull [CPU_A CPU_B [LINES [ROUNDS]]]`: how fast one core can take
//! cache lines that another core has just written, the bound on a switch
//! whose every frame is lines a guest's core wrote.
//!
//! Each round, a thread pinned to CPU_A writes LINES lines (each its own
//! 64 bytes, so they sit modified in A's caches), then a thread pinned to
//! CPU_B takes them all, one way per round:
//! - `read`: one load per line, in order, no software prefetch (the
//!   hardware prefetchers may still run ahead);
//! - `read+pf`: the same, with a prefetch 16 lines ahead;
//! - `write`: one store per line (a read for ownership each);
//! - `write+pfw`: the same, with a prefetch for writing 16 lines ahead;
//! - `frame`: per four lines, two loads and two stores, with both kinds
//!   prefetched 16 lines ahead: the share of remote lines a 60 B frame
//!   costs a switch (the TX frame's header and data lines, the RX
//!   buffer's two), less the rings.
//!
//! The lines are taken in a random order, so that no stride prefetcher
//! fetches what software did not ask for; the out-of-order core still
//! overlaps the misses of independent loads and stores, as it does a
//! switch's. Prints, per way, the median ns per line over ROUNDS rounds
//! (ways interleaved round by round), with the fastest and slowest round.
//! Read it beside `core-probe`'s round trip: the two together say whether
//! a switch core waits on how many lines it takes or on when it asks.

#[path = "../probe.rs"]
mod probe;
use probe::{arg, pin};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const LINE: usize = 64;
/// How far ahead the prefetching ways run, in lines.
const AHEAD: usize = 16;

const WAYS: [&str; 5] = ["read", "read+pf", "write", "write+pfw", "frame"];

/// A fixed permutation of 0..n (xorshift, Fisher-Yates): the same every run.
fn shuffled(n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

fn prefetch(p: *const u8, write: bool) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it does not fault and has no effect
    // on memory, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0, _MM_HINT_T0};
        if write {
            _mm_prefetch::<_MM_HINT_ET0>(p.cast());
        } else {
            _mm_prefetch::<_MM_HINT_T0>(p.cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, write);
}

/// The lines, as atomics so that both threads may touch them without a
/// data race; relaxed loads and stores compile to plain moves.
struct Lines {
    words: Vec<AtomicU64>,
    order: Vec<usize>,
}

impl Lines {
    fn new(lines: usize) -> Lines {
        let words = (0..lines * LINE / 8).map(|_| AtomicU64::new(0)).collect();
        Lines {
            words,
            order: shuffled(lines),
        }
    }

    fn word(&self, line: usize) -> &AtomicU64 {
        &self.words[line * LINE / 8]
    }

    /// A's turn: every line modified in A's caches.
    fn dirty(&self, stamp: u64) {
        for &l in &self.order {
            self.word(l).store(stamp, Ordering::Relaxed);
        }
    }

    /// B's turn, one way; returns a sum so the loads are not dropped.
    fn take(&self, way: &str, stamp: u64) -> u64 {
        let n = self.order.len();
        let at = |i: usize| self.word(self.order[i]);
        let mut sum = 0;
        for i in 0..n {
            let (pf, write) = match way {
                "read" => (false, false),
                "read+pf" => (true, false),
                "write" => (false, true),
                "write+pfw" => (true, true),
                _ => (true, i % 4 >= 2),
            };
            if pf && i + AHEAD < n {
                let ahead_write = way == "write+pfw" || (way == "frame" && (i + AHEAD) % 4 >= 2);
                prefetch(at(i + AHEAD).as_ptr().cast(), ahead_write);
            }
            if write {
                at(i).store(stamp + 1, Ordering::Relaxed);
            } else {
                sum += at(i).load(Ordering::Relaxed);
            }
        }
        sum
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let parsed = (|| {
        Ok::<_, String>((
            arg(&args, 1, 0)?,
            arg(&args, 2, 1)?,
            arg(&args, 3, 4096)?,
            arg(&args, 4, 200)?,
        ))
    })();
    let (a, b, lines, rounds) = match parsed {
        Ok(v)
            if args.len() != 2
                && args.len() <= 5
                && v.0 != v.1
                && v.2 > AHEAD as u64
                && v.3 >= 1 =>
        {
            v
        }
        _ => {
            eprintln!(
                "usage: line-pull [CPU_A CPU_B [LINES [ROUNDS]]] (two different CPUs, LINES > {AHEAD}, ROUNDS >= 1)"
            );
            std::process::exit(2);
        }
    };
    let buf = Lines::new(lines as usize);
    // A writes when turn is odd, B takes when it is even; 0 ends.
    let turn = AtomicU64::new(1);
    let res = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            pin(a as usize)?;
            let mut t = 1;
            loop {
                let now = loop {
                    let now = turn.load(Ordering::Acquire);
                    if now == t || now == 0 {
                        break now;
                    }
                    std::hint::spin_loop();
                };
                if now == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                buf.dirty(t);
                turn.store(t + 1, Ordering::Release);
                t += 2;
            }
        });
        if let Err(e) = pin(b as usize) {
            turn.store(0, Ordering::Release);
            let _ = writer.join();
            return Err(e);
        }
        let mut per_way: Vec<Vec<f64>> = vec![Vec::new(); WAYS.len()];
        let mut sink = 0;
        let mut t = 2;
        for r in 0..rounds * WAYS.len() as u64 {
            // Ways interleaved, so that a change of the host's state
            // falls on all of them alike.
            let w = (r % WAYS.len() as u64) as usize;
            while turn.load(Ordering::Acquire) != t {
                if writer.is_finished() {
                    break;
                }
                std::hint::spin_loop();
            }
            let t0 = Instant::now();
            sink += buf.take(WAYS[w], t);
            per_way[w].push(t0.elapsed().as_nanos() as f64 / lines as f64);
            turn.store(t + 1, Ordering::Release);
            t += 2;
        }
        turn.store(0, Ordering::Release);
        writer.join().expect("writer panicked")?;
        std::hint::black_box(sink);
        Ok(per_way)
    });
    match res {
        Ok(per_way) => {
            for (w, mut v) in per_way.into_iter().enumerate() {
                v.sort_by(f64::total_cmp);
                println!(
                    "{:<10} {:6.2} ns/line (min {:.2}, max {:.2})",
                    WAYS[w],
                    v[v.len() / 2],
                    v[0],
                    v[v.len() - 1]
                );
            }
        }
        Err(e) => {
            eprintln!("line-pull: cannot pin: {e}");
            std::process::exit(1);
        }
    }
}
