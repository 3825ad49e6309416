#!/usr/bin/env bash
# An unmodified netmap C program through libvale_netmap.so against our
# pkt-gen, sending the same 60 B frames through valed: valed alone on core
# 1, the sender and a pkt-gen receiver on core 0 (as scripts/bench-valed.sh).
# The C sender is compat/tests/c/nmapp.c (`nmapp tx`: NIOCCTRL register,
# frames written once per buffer, poll for room), compiled here with cc -O2
# against compat/include; pkt-gen sends with `-f tx -n N`. Interleaved,
# RUNS times each; prints each run's sender rate and the medians.
#   scripts/bench-preload.sh [RUNS] [FRAMES]      (default 5 runs of 20 M)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
N=${2:-20000000}
cargo build --release -q -p valed -p pkt-gen -p vale-ctl -p vale-compat
R=$PWD/target/release
D=$(mktemp -d)
S=$D/valed.sock
trap 'rm -rf "$D"' EXIT
cc -O2 -Wall -I compat/include -o "$D/nmapp" compat/tests/c/nmapp.c

one() { # $1 = pktgen|nmapp
    taskset -c 1 "$R/valed" --socket "$S" --log warn 2>"$D/valed.log" &
    local VP=$!
    for _ in $(seq 100); do [ -S "$S" ] && break; sleep 0.05; done
    "$R/vale-ctl" --socket "$S" -n mb >/dev/null
    "$R/vale-ctl" --socket "$S" -a vale0:mb >/dev/null
    taskset -c 0 "$R/pkt-gen" -i vale0:mb -f rx -W --socket "$S" >/dev/null 2>&1 &
    local RP=$!
    sleep 0.5
    local rate
    case $1 in
    pktgen)
        rate=$(taskset -c 0 "$R/pkt-gen" -i vale0:a -f tx -n "$N" --socket "$S" 2>&1 |
            awk '/^Speed:/ { v = $2; u = $3; print (u == "Mpps") ? v : (u == "Kpps") ? v / 1000 : v / 1e6 }')
        ;;
    nmapp)
        rate=$(LD_PRELOAD=$R/libvale_netmap.so VALE_SOCKET=$S taskset -c 0 "$D/nmapp" tx vale0:a "$N" |
            awk '/^sent/ { print $(NF - 1) }')
        ;;
    esac
    kill -INT $RP 2>/dev/null || true
    wait $RP 2>/dev/null || true
    kill $VP
    wait $VP 2>/dev/null || true
    rm -f "$S"
    echo "${rate:-nan}"
}

echo "60 B tx -> valed -> pkt-gen rx, $N frames per run, $(date -u '+%Y-%m-%d %H:%M UTC')"
printf '%-4s %12s %12s\n' run "pkt-gen Mpps" "C+preload"
P=() C=()
for r in $(seq "$RUNS"); do
    p=$(one pktgen)
    c=$(one nmapp)
    P+=("$p") C+=("$c")
    printf '%-4s %12s %12s\n' "$r" "$p" "$c"
done
med() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
echo "median: pkt-gen $(med "${P[@]}") Mpps, C program through the preload $(med "${C[@]}") Mpps"
