//! Runs the engine bench's `60B/2ports/unicast` path (or `1514B`) for a
//! fixed number of rounds, for counting instructions under callgrind:
//! only [`measured`] is meant to be collected (`--toggle-collect`).
//! Prints the frames the measured rounds forwarded.
//! `scripts/count-vm2vm.sh` runs it beside the VM-to-VM path, so the two
//! counts the ratio compares come from one script.
//!
//! `engine_count [LEN] [ROUNDS]`

use vale::testing::{bench_path, MemSource};
use vale::{PortId, Scratch, Switch};

/// The rounds callgrind counts: one forward of a full batch each, as the
/// bench's `iter_custom` loop.
#[inline(never)]
fn measured(
    sw: &Switch,
    p0: PortId,
    src: &mut MemSource,
    sc: &mut Scratch,
    rounds: usize,
) -> usize {
    let mut frames = 0;
    for _ in 0..rounds {
        frames += sw.forward(p0, src, sc, 1).frames;
    }
    frames
}

fn main() {
    let mut args = std::env::args().skip(1);
    let len: usize = args
        .next()
        .map_or(60, |l| l.parse().expect("LEN: a number"));
    let rounds: usize = args
        .next()
        .map_or(100, |r| r.parse().expect("ROUNDS: a number"));
    let (sw, p0, mut src) = bench_path(2, len, true);
    let mut sc = Scratch::default();
    measured(&sw, p0, &mut src, &mut sc, 10);
    println!("{}", measured(&sw, p0, &mut src, &mut sc, rounds));
}
