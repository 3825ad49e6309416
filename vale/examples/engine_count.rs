//! Runs the engine bench's `60B/2ports/unicast` path (or `1514B`) for a
//! fixed number of rounds, for counting instructions under callgrind:
//! only [`measured`] is meant to be collected (`--toggle-collect`).
//! Prints the frames the measured rounds forwarded.
//! `scripts/count-vm2vm.sh` runs it beside the VM-to-VM path, so the two
//! counts the ratio compares come from one script.
//!
//! `engine_count [LEN] [ROUNDS]`

use vale::testing::{eth_frame, mac, MemFrame, MemSource, NullSink};
use vale::{PortConfig, PortId, Scratch, Switch, MAX_BATCH};

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
    // The bench's setup: two ports whose MACs the switch has learnt, and
    // a source that hands out the same batch of unicast frames again.
    let sw = Switch::new("vale0");
    let ids: Vec<PortId> = (0..2)
        .map(|i| {
            sw.attach(
                &format!("p{i}"),
                PortConfig::default(),
                Box::new(NullSink::new(1024, 2048)),
            )
            .expect("attach")
        })
        .collect();
    let mut sc = Scratch::default();
    for (i, &p) in ids.iter().enumerate() {
        let mut s = MemSource::default();
        s.push(MemFrame::new(eth_frame([0xff; 6], mac(i as u16), 60, 0)));
        sw.forward(p, &mut s, &mut sc, 0);
    }
    let mut src = MemSource::default();
    src.recycle = true;
    for k in 0..MAX_BATCH {
        src.push(MemFrame::new(eth_frame(mac(1), mac(0), len, k as u64)));
    }
    measured(&sw, ids[0], &mut src, &mut sc, 10);
    println!("{}", measured(&sw, ids[0], &mut src, &mut sc, rounds));
}
