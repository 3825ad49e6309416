//! The vring fuzz target's seed corpus (`fuzz/corpus/vring/` at the
//! workspace root): replayed through `backend::testing::fuzz_vring` so that
//! `cargo test` on stable checks every file without cargo-fuzz or nightly,
//! and the hand-written seeds checked to reach the paths they are named
//! for. `cargo test -p vale-backend --test fuzz_corpus -- --ignored` writes
//! the seeds again after a change of the input format.

use std::fs;
use std::path::PathBuf;

use backend::testing::{fuzz_vring, fuzz_vring_chains, VringChain};

/// Fewer files than this means the corpus is missing or was emptied by
/// mistake, which would make the replay pass vacuously.
const MIN_SEEDS: usize = 6;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/vring")
}

#[test]
fn vring_corpus_replays() {
    netmap::testing::replay_corpus(&corpus(), MIN_SEEDS, fuzz_vring);
}

const NEXT: u8 = 1;
const WRITE: u8 = 2;
const INDIRECT: u8 = 4;

/// Where a descriptor points (see `fuzz_vring`'s input layout).
#[derive(Clone, Copy)]
enum At {
    /// The data area, `GUEST_MEM_BASE + 0x2000 + offset`.
    Data(u32),
    /// The indirect area, `GUEST_MEM_BASE + 0x1000 + offset`.
    Table(u32),
    /// This very address.
    Abs(u32),
    /// `u64::MAX - offset`.
    Top(u32),
}

/// One descriptor record.
#[derive(Clone, Copy)]
struct Rec {
    flags: u8,
    next: u8,
    /// 18 bits.
    len: u32,
    /// Bits 16-31 of the length all set.
    giant: bool,
    at: At,
}

fn d(flags: u8, next: u8, len: u32, at: At) -> Rec {
    Rec {
        flags,
        next,
        len,
        giant: false,
        at,
    }
}

/// Layout byte: queue size index (0: 4, 1: 16, 2: 64, 3: 128) and an
/// optional second region of `pages` pages after a gap of `gap` pages.
fn layout(qsize: u8, second: Option<(u8, u8)>) -> u8 {
    let mut l = qsize << 5;
    if let Some((pages, gap)) = second {
        l |= 1 | ((pages - 1) << 1) | (gap << 3);
    }
    l
}

fn encode(layout: u8, main: &[Rec], ind: &[Rec], dirs: u8, heads: &[u8]) -> Vec<u8> {
    let mut v = vec![layout, main.len() as u8, ind.len() as u8, dirs];
    for r in main.iter().chain(ind) {
        let (mode, off) = match r.at {
            At::Data(o) => (0u8, o),
            At::Table(o) => (1, o),
            At::Abs(o) => (2, o),
            At::Top(o) => (3, o),
        };
        assert!(off < 1 << 24 && r.len < 1 << 18);
        let mode = (mode << 6) | if r.giant { 0x3c } else { 0 } | (r.len >> 16) as u8;
        v.extend_from_slice(&[r.flags, r.next]);
        v.extend_from_slice(&(r.len as u16).to_le_bytes());
        v.push(mode);
        v.extend_from_slice(&off.to_le_bytes()[..3]);
    }
    v.extend_from_slice(heads);
    v
}

/// What a chain must come to: `Ok(bytes)` or the name of the error.
#[derive(Debug)]
enum Want {
    Ok(usize),
    Err(&'static str),
}

struct Seed {
    name: &'static str,
    data: Vec<u8>,
    want: Vec<(bool, Want)>,
}

fn seeds() -> Vec<Seed> {
    use Want::{Err as E, Ok as K};
    let data_end = 0x2000; // end of region 0, as a data-area offset
    vec![
        Seed {
            name: "tx-single",
            data: encode(layout(1, None), &[d(0, 0, 100, At::Data(0))], &[], 0, &[0]),
            want: vec![(false, K(100))],
        },
        Seed {
            name: "tx-rx-multi",
            data: encode(
                layout(1, None),
                &[
                    d(NEXT, 1, 12, At::Data(0)),
                    d(NEXT, 2, 50, At::Data(12)),
                    d(0, 0, 200, At::Data(62)),
                    d(WRITE, 0, 2048, At::Data(0x1000)),
                ],
                &[],
                0b10,
                &[0, 3],
            ),
            want: vec![(false, K(262)), (true, K(2048))],
        },
        Seed {
            name: "indirect",
            data: encode(
                layout(1, None),
                &[
                    d(INDIRECT, 0, 48, At::Table(0)),
                    d(INDIRECT, 0, 32, At::Table(48)),
                ],
                &[
                    d(NEXT, 1, 12, At::Data(0)),
                    d(NEXT, 2, 64, At::Data(100)),
                    d(0, 0, 500, At::Data(200)),
                    d(WRITE | NEXT, 1, 1000, At::Data(0x800)),
                    d(WRITE, 0, 1000, At::Data(0xc00)),
                ],
                0b10,
                &[0, 1],
            ),
            want: vec![(false, K(576)), (true, K(2000))],
        },
        Seed {
            name: "loop-too-many-frags",
            data: encode(
                layout(3, None),
                &[
                    d(NEXT, 1, 12, At::Data(0)),
                    d(NEXT, 0, 50, At::Data(12)),
                    d(WRITE | NEXT, 3, 100, At::Data(0x1000)),
                    d(WRITE | NEXT, 2, 100, At::Data(0x1100)),
                ],
                &[],
                0b10,
                &[0, 2],
            ),
            want: vec![(false, E("TooManyFrags")), (true, E("TooManyFrags"))],
        },
        Seed {
            name: "loop-unterminated",
            data: encode(
                layout(1, None),
                &[d(NEXT, 0, 74, At::Data(0)), d(NEXT, 200, 74, At::Data(0))],
                &[],
                0,
                &[0, 1],
            ),
            want: vec![(false, E("Unterminated")), (false, E("Unterminated"))],
        },
        Seed {
            name: "out-of-memory",
            data: encode(
                layout(1, None),
                &[
                    d(0, 0, 74, At::Abs(0)),
                    d(0, 0, 100, At::Top(5)),
                    d(0, 0, 300, At::Data(data_end - 100)),
                    d(WRITE, 0, 64, At::Abs(0x0f_fff0)),
                ],
                &[],
                0b1000,
                &[0, 1, 2, 3],
            ),
            want: vec![
                (false, E("OutOfMemory")),
                (false, E("OutOfMemory")),
                (false, E("OutOfMemory")),
                (true, E("OutOfMemory")),
            ],
        },
        Seed {
            name: "cross-region",
            data: encode(
                layout(1, Some((2, 0))),
                &[
                    d(0, 0, 300, At::Data(data_end - 100)),
                    d(WRITE, 0, 5000, At::Data(data_end - 256)),
                ],
                &[],
                0b10,
                &[0, 1],
            ),
            want: vec![(false, K(300)), (true, K(5000))],
        },
        Seed {
            name: "region-gap",
            data: encode(
                layout(1, Some((1, 1))),
                &[
                    d(0, 0, 300, At::Data(data_end - 100)),
                    d(0, 0, 100, At::Data(data_end + 0x1010)),
                    d(WRITE, 0, 64, At::Data(data_end + 0x20)),
                ],
                &[],
                0b100,
                &[0, 1, 2],
            ),
            want: vec![
                (false, E("OutOfMemory")),
                (false, K(100)),
                (true, E("OutOfMemory")),
            ],
        },
        Seed {
            name: "bad-indirect",
            data: encode(
                layout(1, None),
                &[
                    d(INDIRECT, 0, 17, At::Table(0)),
                    d(INDIRECT, 0, 0, At::Table(0)),
                    d(INDIRECT, 0, 16, At::Table(16)),
                    d(INDIRECT, 0, 32, At::Abs(0)),
                ],
                &[d(0, 0, 74, At::Data(0)), d(INDIRECT, 0, 16, At::Table(0))],
                0,
                &[0, 1, 2, 3],
            ),
            want: vec![
                (false, E("Unterminated")),
                (false, E("Unterminated")),
                (false, E("Unterminated")),
                (false, E("OutOfMemory")),
            ],
        },
        Seed {
            name: "malformed",
            data: encode(
                layout(1, None),
                &[
                    d(0, 0, 0, At::Data(0)),
                    d(WRITE, 0, 74, At::Data(0)),
                    d(0, 0, 74, At::Data(0)),
                    Rec {
                        giant: true,
                        ..d(0, 0, 0x1234, At::Data(0))
                    },
                ],
                &[],
                0b100,
                &[0, 1, 2, 3, 16, 17],
            ),
            want: vec![
                (false, E("ZeroLength")),
                (false, E("Direction")),
                (true, E("Direction")),
                (false, E("TooLong")),
                (false, E("Unterminated")),
                (false, E("Unterminated")),
            ],
        },
    ]
}

fn matches(got: &VringChain, rx: bool, want: &Want) -> bool {
    got.rx == rx
        && match (want, &got.result) {
            (Want::Ok(n), Ok(m)) => n == m,
            (Want::Err(name), Err(e)) => format!("{e:?}").starts_with(name),
            _ => false,
        }
}

#[test]
fn vring_seeds_reach_their_paths() {
    for s in seeds() {
        let got = fuzz_vring_chains(&s.data);
        assert_eq!(got.len(), s.want.len(), "{}: {got:?}", s.name);
        for (k, (g, (rx, w))) in got.iter().zip(&s.want).enumerate() {
            assert!(
                matches(g, *rx, w),
                "{} chain {k}: got {g:?}, want {w:?}",
                s.name
            );
        }
        let path = corpus().join(s.name);
        let on_disk = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            on_disk,
            s.data,
            "{} is stale: run this file's ignored test to write the seeds",
            path.display()
        );
    }
}

/// A runaway avail index: nothing is popped.
#[test]
fn vring_runaway_avail_idx() {
    let data = encode(
        layout(1, None) | 0x80,
        &[d(0, 0, 100, At::Data(0))],
        &[],
        0,
        &[0],
    );
    assert!(fuzz_vring_chains(&data).is_empty());
}

#[test]
#[ignore = "writes the seed corpus"]
fn write_vring_seeds() {
    let dir = corpus();
    fs::create_dir_all(&dir).unwrap();
    for s in seeds() {
        fs::write(dir.join(s.name), &s.data).unwrap();
    }
}
