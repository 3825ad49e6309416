#!/usr/bin/env bash
# The project's test command: formatting, lints, the guest image, every test
# in debug (QEMU guests on valed included), the sync-protocol tests again in
# release, and a short live fuzz run when cargo-fuzz and a nightly toolchain
# are installed.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== pkt-gen, statically linked, for the guest image"
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -q -p pkt-gen \
    --target x86_64-unknown-linux-gnu --target-dir target/static
echo "== guest image (images/build.sh, cached)"
VALE_PKTGEN=$PWD/target/static/x86_64-unknown-linux-gnu/release/pkt-gen ./images/build.sh
echo "== QEMU from bookworm-backports for the live migration test (7.2 loses guest writes under TCG)"
VALE_MIGRATION_QEMU=$(./scripts/fetch-qemu-backports.sh)
export VALE_MIGRATION_QEMU
echo "== cargo test (debug)"
cargo test --workspace --all-features
echo "== vale::ab without its feature (--all-features above builds it in)"
cargo test -p vale --lib ab::
echo "== vm2vm bench once, as a test (its setup checks the frames it measures)"
cargo test --all-features -p vale-backend --bench vm2vm
echo "== cargo test (release): sync protocol"
cargo test --release -p netmap --test sync_threads --test two_process
echo "== loom: the CSB need-kick handshake, model-checked"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -p netmap --test loom_csb
if command -v cargo-fuzz >/dev/null 2>&1 && rustup toolchain list 2>/dev/null | grep -q nightly; then
    echo "== fuzz (${FUZZ_SECONDS:-30}s per target)"
    ./scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
else
    echo "== fuzz: skipped (cargo-fuzz or nightly missing; corpora were replayed by cargo test)"
fi
