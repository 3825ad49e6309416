//! Runs the VM-to-VM path of `benches/vm2vm.rs` for a fixed number of
//! rounds, for counting instructions under callgrind: only
//! [`measured`] is meant to be collected (`--toggle-collect`), so the
//! setup and the byte-for-byte checks are left out. Prints the frames the
//! measured rounds forwarded. `scripts/count-vm2vm.sh` runs it.
//!
//! `vm2vm_count CONFIG [ROUNDS]`, CONFIG a bench id such as
//! `60B/mrg/event_idx` or `gso64K/mrg/no_event_idx`.

use backend::testing::vm2vm::{configs, Path};

/// The rounds callgrind counts.
#[inline(never)]
fn measured(p: &mut Path, rounds: usize) -> usize {
    let mut frames = 0;
    for _ in 0..rounds {
        frames += p.round();
    }
    frames
}

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "60B/mrg/event_idx".into());
    let rounds: usize = args
        .next()
        .map(|r| r.parse().expect("ROUNDS: a number"))
        .unwrap_or(200);
    let Some(cfg) = configs().into_iter().find(|c| c.name() == name) else {
        let names: Vec<String> = configs().iter().map(|c| c.name()).collect();
        eprintln!("vm2vm_count: no configuration {name:?}; one of {names:?}");
        std::process::exit(2);
    };
    let mut p = Path::for_bench(cfg);
    p.check();
    // Warm: every TX buffer and RX buffer touched once, the lookup table
    // hot, as in the bench after its warm-up.
    for _ in 0..20 {
        p.round();
    }
    let frames = measured(&mut p, rounds);
    p.check();
    p.check_clean();
    println!("{frames}");
}
