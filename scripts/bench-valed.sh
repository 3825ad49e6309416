#!/usr/bin/env bash
# tx -> valed -> rx at 60 B with pkt-gen, valed alone on one core and both
# pkt-gens on another (on a 2-core machine: valed on core 1, pkt-gens on
# core 0). Runs broadcast (pkt-gen's default) and unicast copying
# (-D MAC -o 4) interleaved, RUNS times each, SECS seconds per run, and
# prints one line per run plus the medians.
#   scripts/bench-valed.sh [RUNS] [SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
SECS=${2:-10}
VCPU=${VALED_CPU:-1}
PCPU=${PKTGEN_CPU:-0}
cargo build --release -q -p valed -p pkt-gen -p vale-ctl
R=target/release
D=$(mktemp -d)
S=$D/valed.sock
trap 'rm -rf "$D"' EXIT

one() { # $1 = bcast|ucast $2 = run
    local O=$D/$1-$2
    taskset -c "$VCPU" $R/valed --socket "$S" --log warn 2> "$O.valed" &
    local VP=$!
    for _ in $(seq 100); do [ -S "$S" ] && break; sleep 0.05; done
    $R/vale-ctl --socket "$S" -n mb > /dev/null
    $R/vale-ctl --socket "$S" -a vale0:mb > /dev/null
    local TXOPT=""
    if [ "$1" = ucast ]; then
        # Teach the bridge where the receiver's MAC lives (rx never sends).
        taskset -c "$PCPU" $R/pkt-gen -i vale0:mb -f tx -n 1 -S 02:00:00:00:00:02 --socket "$S" > /dev/null 2>&1
        TXOPT="-D 02:00:00:00:00:02 -o 4"
    fi
    taskset -c "$PCPU" $R/pkt-gen -i vale0:mb -f rx -W -S 02:00:00:00:00:02 --socket "$S" --json > "$O.rx" 2> /dev/null &
    local RP=$!
    sleep 0.5
    # shellcheck disable=SC2086
    taskset -c "$PCPU" timeout -s INT "$SECS" $R/pkt-gen -i vale0:a -f tx -S 02:00:00:00:00:01 $TXOPT \
        --socket "$S" --json > "$O.tx" 2> /dev/null || true
    wait $RP || true
    kill $VP; wait $VP 2> /dev/null || true
    local tx rx
    tx=$(grep -o '"pps":[0-9.]*' "$O.tx" | cut -d: -f2)
    rx=$(grep -o '"pps":[0-9.]*' "$O.rx" | cut -d: -f2)
    printf '%s run %s: tx %.3f Mpps rx %.3f Mpps\n' "$1" "$2" "$(echo "$tx/1000000" | bc -l)" "$(echo "$rx/1000000" | bc -l)"
    echo "$1 $rx" >> "$D/all"
}

for i in $(seq "$RUNS"); do
    one bcast "$i"
    one ucast "$i"
done
for m in bcast ucast; do
    grep "^$m " "$D/all" | awk '{print $2}' | sort -n | awk -v m="$m" \
        '{a[NR]=$1} END {printf "%s: median rx %.3f Mpps (min %.3f, max %.3f) over %d runs\n", m, a[int((NR+1)/2)]/1e6, a[1]/1e6, a[NR]/1e6, NR}'
done
