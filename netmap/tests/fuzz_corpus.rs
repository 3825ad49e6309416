//! Replays the cargo-fuzz seed corpora (`fuzz/corpus/<target>/` at the
//! workspace root) through the fuzz target bodies in `netmap::testing`, so
//! that `cargo test` on stable checks every seed without cargo-fuzz or
//! nightly. A new target adds one `#[test]` calling [`replay`].

use std::fs;
use std::path::PathBuf;

/// Fewer files than this means the corpus is missing or was emptied by
/// mistake, which would make the replay pass vacuously.
const MIN_SEEDS: usize = 20;

/// Runs `f` on every file in `fuzz/corpus/<target>/` and checks that there
/// were at least [`MIN_SEEDS`] of them. A panic in `f` names the file.
fn replay(target: &str, f: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| {
            e.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= MIN_SEEDS,
        "{}: {} files, expected at least {MIN_SEEDS}",
        dir.display(),
        files.len()
    );
    for path in &files {
        let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Err(panic) = std::panic::catch_unwind(|| f(&data)) {
            eprintln!(
                "corpus file {} ({:?}) failed",
                path.display(),
                String::from_utf8_lossy(&data)
            );
            std::panic::resume_unwind(panic);
        }
    }
    eprintln!("{target}: replayed {} corpus files", files.len());
}

#[test]
fn portname() {
    replay("portname", netmap::testing::fuzz_portname);
}

#[test]
fn ctrl() {
    replay("ctrl", netmap::testing::fuzz_ctrl);
}
