//! Ping-pong latency through a switch between two fake guests: guest A
//! sends a 60-byte frame to B, B sends it back, A measures the round trip.
//! Both guests wait for frames on their call eventfds, as an
//! interrupt-driven guest driver does.
//!
//! usage: pingpong SOCKET_A SOCKET_B [ROUNDS] [GAP_US]
//!   GAP_US: pause between rounds (lets the switch go idle and sleep)

use std::path::PathBuf;
use std::time::{Duration, Instant};

use backend::testing::{frame, FakeGuest, GuestConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: pingpong SOCKET_A SOCKET_B [ROUNDS] [GAP_US]");
        std::process::exit(2);
    }
    let rounds: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let gap = Duration::from_micros(args.get(4).and_then(|s| s.parse().ok()).unwrap_or(0));
    let cfg = GuestConfig {
        event_idx: true,
        ..Default::default()
    };
    let mut a = FakeGuest::connect(&PathBuf::from(&args[1]), cfg.clone()).expect("guest A");
    let mut b = FakeGuest::connect(&PathBuf::from(&args[2]), cfg).expect("guest B");
    a.set_repost(true);
    b.set_repost(true);
    a.post_rx(0, 64, 2048);
    b.post_rx(0, 64, 2048);
    let ma = [2, 0, 0, 0, 0, 0xa];
    let mb = [2, 0, 0, 0, 0, 0xb];
    let hdr = [0u8; 12];
    let t = Duration::from_secs(5);
    let mut rtt = Vec::with_capacity(rounds);
    for i in 0..rounds + 1000 {
        let f = frame(mb, ma, 60, i as u32);
        let t0 = Instant::now();
        assert!(a.send(0, &hdr, &f, &[]));
        let (_, got) = b.recv(0, t).expect("ping lost");
        let back = frame(ma, mb, 60, got[14] as u32);
        assert!(b.send(0, &hdr, &back, &[]));
        a.recv(0, t).expect("pong lost");
        let dt = t0.elapsed();
        a.reap_tx(0);
        b.reap_tx(0);
        if i >= 1000 {
            rtt.push(dt.as_nanos() as f64 / 1000.0);
        }
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
    }
    rtt.sort_by(|x, y| x.total_cmp(y));
    let p = |q: f64| rtt[((rtt.len() as f64 - 1.0) * q) as usize];
    println!(
        "rounds {} gap {} us: rtt p50 {:.1} us p90 {:.1} us p99 {:.1} us max {:.1} us",
        rtt.len(),
        gap.as_micros(),
        p(0.5),
        p(0.9),
        p(0.99),
        rtt[rtt.len() - 1]
    );
}
