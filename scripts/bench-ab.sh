#!/usr/bin/env bash
# A change measured A/B inside one valed (vale::ab; docs/benchmarks.md,
# "Stop 27", "Measuring a change A/B in one process"): put the two variants behind
# `if vale::ab::on() { B } else { A }`, then run this. It builds valed with
# the `ab` feature (in target/ab, so target/release/valed stays a release
# build), runs the VM-less loopback (scripts/bench-switch.sh: testpmd's two
# virtio-user ports on core 0, valed on core 1) RUNS times, and prints the
# frames valed moved under each variant, run by run, and the median B/A.
# The variant flips every 50 ms, so both see the same host state; run it
# once with nothing asking vale::ab::on() (an A/A run) to see the noise.
# "switch core busy" is the share of valed's forwarding-loop cycles spent
# in passes that moved frames (the rest polled and found nothing): well
# under 100 % means the testpmd side, not valed, set the rate.
#
# usage: scripts/bench-ab.sh [RUNS] [SECS] [SIZE]
#   RUNS  loopback runs (default 6)
#   SECS  seconds each (default 8)
#   SIZE  frame size as testpmd sends it, without CRC (default 60)
# environment: HUGE=1 as for bench-switch.sh (testpmds on 2 MiB pages).
# Needs what bench-switch.sh needs (dpdk-testpmd, two cores, root for HUGE).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-6}
[ "$RUNS" -ge 1 ] || { echo "RUNS must be at least 1" >&2; exit 1; }
SECS=${2:-8}
SIZE=${3:-60}
cargo build --release -q -p valed --features ab --target-dir target/ab
BIN=$PWD/target/ab/release/valed
W=$(mktemp -d /tmp/bench-ab.XXXXXX)
trap 'rm -rf "$W"' EXIT
echo "A/B loopback: $RUNS runs x ${SECS}s, ${SIZE} B, HUGE=${HUGE:-0}, valed $(git describe --always --dirty 2>/dev/null || echo '?') with feature ab, $(date -u '+%F %H:%M') UTC"
for i in $(seq 1 "$RUNS"); do
    rm -f "$W/ab.txt"
    VALE_AB=$W/ab.txt VALED=$BIN SWITCHES=valed SIZES=$SIZE CSV=$W/run.csv SVG= \
        scripts/bench-switch.sh 1 "$SECS" 4 >"$W/run.log" 2>&1 ||
        { cat "$W/run.log" >&2; exit 1; }
    [ -s "$W/ab.txt" ] || { echo "valed wrote no A/B counts (not an ab build?)" >&2; exit 1; }
    { read -r a b; read -r busy_a busy_b || true; } <"$W/ab.txt"
    line=$(grep '^size .*Mpps' "$W/run.log" | head -1 || true)
    mpps=$(awk '{print $6}' <<<"$line")
    apart=$(grep -o 'cores [0-9.]*/[0-9.]* ns apart' <<<"$line" || echo '')
    ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.4f", (a > 0) ? b / a : 0 }')
    busy=$(awk -v a="${busy_a:-0}" -v b="${busy_b:-0}" 'BEGIN { printf "switch core busy A %.0f %%, B %.0f %%", 100 * a, 100 * b }')
    echo "run $i: $mpps Mpps per direction; frames A $a, B $b; B/A $ratio; $busy; $apart"
    echo "$ratio" >>"$W/ratios"
done
sort -n "$W/ratios" | awk '{ r[NR] = $1 } END {
    m = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2
    printf "B/A median %.4f (min %.4f, max %.4f) over %d runs\n", m, r[1], r[NR], NR
}'
