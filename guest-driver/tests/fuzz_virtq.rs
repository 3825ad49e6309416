//! The virtq fuzz target's seed corpus (`fuzz/corpus/virtq/`), replayed
//! through `guest_driver::testing::fuzz_used` so `cargo test` checks every
//! file on stable. `cargo test -p guest-driver --test fuzz_virtq --
//! --ignored` writes the seeds again after a change of the input format.

use std::fs;
use std::path::PathBuf;

use guest_driver::testing::fuzz_used;

const MIN_SEEDS: usize = 6;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/virtq")
}

#[test]
fn virtq_corpus_replays() {
    netmap::testing::replay_corpus(&corpus(), MIN_SEEDS, fuzz_used);
}

/// Operations as `fuzz_used` reads them.
fn post(n: u8, write: bool, len: u8) -> [u8; 7] {
    [0, n - 1, u8::from(write), len, 0, 0, 0]
}
fn used(pos: u16, id: u16, len: u16) -> [u8; 7] {
    let (p, i, l) = (pos.to_le_bytes(), id.to_le_bytes(), len.to_le_bytes());
    [1, p[0], p[1], i[0], i[1], l[0], l[1]]
}
fn used_idx(v: u16) -> [u8; 7] {
    let b = v.to_le_bytes();
    [2, b[0], b[1], 0, 0, 0, 0]
}
const PUBLISH: [u8; 7] = [3, 0, 0, 0, 0, 0, 0];
const REAP: [u8; 7] = [4, 255, 0, 0, 0, 0, 0];
const IRQ_ON: [u8; 7] = [5, 1, 0, 0, 0, 0, 0];

fn seed(size_sel: u8, event_idx: bool, ops: &[[u8; 7]]) -> Vec<u8> {
    let mut v = vec![size_sel, u8::from(event_idx)];
    ops.iter().for_each(|o| v.extend_from_slice(o));
    v
}

/// Heads come off the free stack from the top: on a fresh queue of 8 the
/// first one-buffer chain is descriptor 0, then 1, ...
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "in-order",
            seed(
                0,
                false,
                &[
                    post(1, true, 64),
                    post(1, true, 64),
                    PUBLISH,
                    used(0, 0, 60),
                    used(1, 1, 64),
                    used_idx(2),
                    REAP,
                ],
            ),
        ),
        (
            "id-out-of-range",
            seed(
                0,
                false,
                &[
                    post(1, true, 64),
                    PUBLISH,
                    used(0, 9000, 10),
                    used_idx(1),
                    REAP,
                ],
            ),
        ),
        (
            "same-id-twice",
            seed(
                0,
                true,
                &[
                    post(2, true, 64),
                    post(1, true, 64),
                    PUBLISH,
                    used(0, 0, 1),
                    used(1, 0, 1),
                    used_idx(2),
                    REAP,
                ],
            ),
        ),
        (
            "len-past-chain",
            seed(
                1,
                false,
                &[
                    post(4, true, 16),
                    PUBLISH,
                    used(0, 0, 60000),
                    used_idx(1),
                    REAP,
                ],
            ),
        ),
        (
            "index-far-ahead",
            seed(
                2,
                true,
                &[
                    post(1, false, 0),
                    PUBLISH,
                    used_idx(40000),
                    REAP,
                    IRQ_ON,
                    used_idx(1),
                    REAP,
                ],
            ),
        ),
        (
            "fill-and-refuse",
            seed(
                0,
                false,
                &[
                    post(4, true, 8),
                    post(4, true, 8),
                    post(1, true, 8),
                    PUBLISH,
                    used(0, 3, 0),
                    used_idx(1),
                    REAP,
                    post(4, false, 8),
                ],
            ),
        ),
        (
            "device-notify-fields",
            seed(
                3,
                true,
                &[
                    post(1, false, 1),
                    [6, 5, 0, 1, 0, 0, 0],
                    PUBLISH,
                    IRQ_ON,
                    [5, 0, 0, 0, 0, 0, 0],
                ],
            ),
        ),
    ]
}

#[test]
fn seeds_run_clean() {
    for (name, data) in seeds() {
        fuzz_used(&data);
        eprintln!("{name}: ok");
    }
}

#[test]
#[ignore = "writes the seed corpus"]
fn write_virtq_seeds() {
    let dir = corpus();
    fs::create_dir_all(&dir).unwrap();
    for (name, data) in seeds() {
        fs::write(dir.join(name), data).unwrap();
    }
}
