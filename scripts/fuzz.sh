#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/fuzz_targets/ for SECONDS each
# (default 30), failing on the first crash. Needs a nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz --locked`).
#
# The seeds in fuzz/corpus/<target>/ are only read: libFuzzer writes the new
# inputs it finds to fuzz/target/corpus/<target>/ (ignored by git, kept
# between runs so later runs start from them). To promote an input to a seed,
# copy it into fuzz/corpus/<target>/ by hand. Crashes go to
# fuzz/artifacts/<target>/ (ignored by git); reproduce one with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/crash-...
# or add it to the corpus so `cargo test -p netmap --test fuzz_corpus`
# replays it.
set -euo pipefail

secs=${1:-30}
case $secs in
'' | *[!0-9]*)
    echo "usage: $0 [SECONDS]" >&2
    exit 2
    ;;
esac

cd "$(dirname "$0")/../fuzz"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "$0: needs a nightly toolchain and cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
    exit 2
fi

shopt -s nullglob
targets=(fuzz_targets/*.rs)
if [ ${#targets[@]} -eq 0 ]; then
    echo "$0: no targets in fuzz/fuzz_targets" >&2
    exit 2
fi

for t in "${targets[@]}"; do
    t=$(basename "$t" .rs)
    echo "==> fuzzing $t for ${secs}s"
    # A crash makes libFuzzer (and so cargo fuzz) exit non-zero; set -e stops here.
    # The first corpus directory is where libFuzzer writes new inputs.
    mkdir -p "target/corpus/$t"
    cargo +nightly fuzz run "$t" "target/corpus/$t" "corpus/$t" -- -max_total_time="$secs"
done
echo "==> no crashes in ${#targets[@]} target(s)"
