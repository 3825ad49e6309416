//! Replays the cargo-fuzz seed corpora (`fuzz/corpus/<target>/` at the
//! workspace root) through the fuzz target bodies in `netmap::testing`, so
//! that `cargo test` on stable checks every seed without cargo-fuzz or
//! nightly. A new target adds one `#[test]` calling [`replay`].

use std::path::PathBuf;

/// Fewer files than this means the corpus is missing or was emptied by
/// mistake, which would make the replay pass vacuously.
const MIN_SEEDS: usize = 20;

/// Runs `f` on every file in `fuzz/corpus/<target>/`.
fn replay(target: &str, f: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    netmap::testing::replay_corpus(&dir, MIN_SEEDS, f);
}

#[test]
fn portname() {
    replay("portname", netmap::testing::fuzz_portname);
}

#[test]
fn ctrl() {
    replay("ctrl", netmap::testing::fuzz_ctrl);
}
