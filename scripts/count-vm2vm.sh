#!/usr/bin/env bash
# Instructions per frame of the in-process VM-to-VM path, per stage,
# counted by valgrind's callgrind: deterministic where the host's timing is
# not (no hardware counters here, and a 2x swing between minutes). The path
# is the one `cargo bench -p vale-backend --bench vm2vm` times
# (backend::testing::vm2vm), built with the bench profile; only the
# measured rounds are counted (--toggle-collect), not setup or checks.
#
#   scripts/count-vm2vm.sh [CONFIG...]     (default: 60 B, 1514 B, 64 KiB GSO)
#   ROUNDS=200 scripts/count-vm2vm.sh 60B/nomrg/no_event_idx
#
# Stages (inclusive counts of the functions named; a `/general` config
# runs every frame the general way, the others take fused runs):
#   guests     the two in-memory guests posting and reaping (MemQueue)
#   fused run  TxQueue::fuse less the copy: avail entries, descriptors,
#              headers, the RX chains and headers (a fused run only)
#   tx walk    TxQueue::fetch: avail entries, descriptors, fragments
#   switch     Switch::forward less the port calls: headers, lookup,
#              grouping by destination, locks, counters (in a fused run:
#              the lookup, locks, counters)
#   rx walk    the sink's push (RxSet) less the copy: RX chains, header,
#              bookkeeping
#   copy       libc memcpy/memmove called by RxSet::push (the frame bytes)
#   rx used    the sink's publish: used entries, used index, interrupt check
#   tx used    TxQueue::complete: the same for A's TX chains
#
# Then the engine bench's own path (vale/examples/engine_count, the
# engine bench's 2ports/unicast at 60 and 1514 B), the denominator of
# the issue's in-process ratio, counted the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
ROUNDS=${ROUNDS:-200}
if [ $# -eq 0 ]; then
    set -- 60B/mrg/event_idx 60B/mrg/event_idx/general 1514B/mrg/event_idx \
        1514B/mrg/event_idx/general gso64K/mrg/event_idx
fi
cargo build --quiet --profile bench -p vale-backend --all-features --example vm2vm_count
cargo build --quiet --profile bench -p vale --example engine_count
BIN=$PWD/target/release/examples/vm2vm_count
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# Instructions counted while inside functions matching $2 (callgrind
# toggles collection on entry and off on return, callees included), for
# $3 rounds of configuration $1. Leaves the annotated profile in
# $TMP/annotated.$3 and the frames forwarded in $TMP/frames.
run() {
    local out=$TMP/cg.$3
    (cd "$TMP" && valgrind --tool=callgrind --callgrind-out-file="$out" \
        --toggle-collect="$2" "$BIN" "$1" "$3" >"$TMP/frames.$3" 2>/dev/null)
    callgrind_annotate "$out" 2>/dev/null >"$TMP/annotated.$3"
}

total_of() {
    # callgrind_annotate writes "." for zero.
    awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 + 0 }' "$1"
}

# Instructions of libc's memcpy/memmove in a profile.
copy_of() {
    awk '$1 ~ /^[0-9,]+$/ && /:__mem(cpy|move)_/ { gsub(",", "", $1); n += $1 } END { print n + 0 }' "$1"
}

# The stage's count for the measured rounds alone: the functions also run
# in setup, warm-up and the checks, so a run of 0 rounds is subtracted
# (both runs are deterministic). Sets COUNT and COPY.
count() {
    run "$1" "$2" "$ROUNDS"
    run "$1" "$2" 0
    COUNT=$(( $(total_of "$TMP/annotated.$ROUNDS") - $(total_of "$TMP/annotated.0") ))
    COPY=$(( $(copy_of "$TMP/annotated.$ROUNDS") - $(copy_of "$TMP/annotated.0") ))
}

printf '| %-32s | %6s | %6s | %9s | %7s | %6s | %7s | %6s | %7s | %7s |\n' \
    config total guests "fused run" "tx walk" switch "rx walk" copy "rx used" "tx used"
echo "|----------------------------------|-------:|-------:|----------:|--------:|-------:|--------:|-------:|--------:|--------:|"
for cfg in "$@"; do
    count "$cfg" '*vm2vm_count::measured*'; total=$COUNT
    frames=$(cat "$TMP/frames.$ROUNDS")
    count "$cfg" '*MemQueue::post'; guests=$COUNT
    count "$cfg" '*MemQueue::reap'; guests=$((guests + COUNT))
    count "$cfg" '<backend::queue::TxQueue as vale::port::Source>::fetch'; txw=$COUNT
    count "$cfg" '<backend::queue::TxQueue as vale::port::Source>::complete'; txu=$COUNT
    count "$cfg" '<backend::queue::RxSet as vale::port::Sink>::publish'; rxu=$COUNT
    if [ "$txw" -eq 0 ]; then
        # A fused run: the TX walk, the headers, the RX chains and the
        # copies are one function (TxQueue::fuse, RX pushes inlined).
        count "$cfg" '<backend::queue::TxQueue as vale::port::Source>::fuse'; run=$COUNT; copy=$COPY
        rxw=0
        [ "$run" -gt 0 ] || { echo "$cfg: neither fetch nor fuse ran (renamed or inlined?)" >&2; exit 1; }
    else
        run=0
        # The switch calls the port's sink, an RxSet, through its vtable;
        # RxQueue's own Sink methods are inlined there or called inside.
        count "$cfg" '<backend::queue::RxSet as vale::port::Sink>::push'; rxw=$COUNT; copy=$COPY
        [ "$rxw" -gt 0 ] || { echo "$cfg: RxSet::push not found (renamed or inlined?)" >&2; exit 1; }
    fi
    awk -v cfg="$cfg" -v f="$frames" -v t="$total" -v g="$guests" -v tw="$txw" \
        -v tu="$txu" -v rw="$rxw" -v ru="$rxu" -v c="$copy" -v r="$run" 'BEGIN {
        cell = "-"
        if (r > 0) {
            printf "| %-32s | %6.0f | %6.0f | %9.0f | %7s | %6.0f | %7s | %6.0f | %7.0f | %7.0f |\n",
                cfg, t / f, g / f, (r - c) / f, cell, (t - g - r - tu - ru) / f, cell,
                c / f, ru / f, tu / f
        } else {
            printf "| %-32s | %6.0f | %6.0f | %9s | %7.0f | %6.0f | %7.0f | %6.0f | %7.0f | %7.0f |\n",
                cfg, t / f, g / f, cell, tw / f, (t - g - tw - tu - rw - ru) / f, (rw - c) / f,
                c / f, ru / f, tu / f
        }
    }'
done
echo "(instructions per frame; $ROUNDS rounds per configuration, $(valgrind --version))"
ENGINE=$PWD/target/release/examples/engine_count
for len in 60 1514; do
    for r in 0 20; do
        (cd "$TMP" && valgrind --tool=callgrind --callgrind-out-file="$TMP/e.$r" \
            --toggle-collect='*engine_count::measured*' \
            "$ENGINE" "$len" "$r" >"$TMP/eframes.$r" 2>/dev/null)
        callgrind_annotate "$TMP/e.$r" 2>/dev/null >"$TMP/eann.$r"
    done
    awk -v len="$len" -v f="$(cat "$TMP/eframes.20")" \
        -v a="$(total_of "$TMP/eann.20")" -v b="$(total_of "$TMP/eann.0")" \
        'BEGIN { printf "engine alone, %s B, 2 ports unicast: %.0f instructions per frame\n", len, (a - b) / f }'
done
