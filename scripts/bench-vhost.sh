#!/usr/bin/env bash
# The "virtio-user loopback" benchmark (design brief §9): one testpmd with
# two virtio-user ports in io forwarding on core 0 is the pair of VMs; core
# 1 runs the switch under test:
#   A  valed, the two vhost-user ports on one VALE switch (one copy);
#   B  testpmd as the switch: two net_vhost ports, io forwarding (two copies).
# Runs A and B interleaved, RUNS times each, per frame size, and prints
# per-direction Mpps (frames the generator received per second per port).
#
# usage: scripts/bench-vhost.sh [RUNS] [SECS] [BURSTS] [SIZES]
#   RUNS    runs of each switch per size (default 5)
#   SECS    measured seconds per run (default 10)
#   BURSTS  bursts of 32 put in flight per port with `start tx_first N` (default 4)
#   SIZES   frame sizes (default "60 1514")
# Needs dpdk-testpmd (Debian package dpdk-dev) and two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
SECS=${2:-10}
BURSTS=${3:-4}
SIZES=${4:-60 1514}
WARM=2
command -v dpdk-testpmd >/dev/null || { echo "dpdk-testpmd not found: apt-get install dpdk-dev" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "needs 2 cores" >&2; exit 1; }
cargo build --release -q -p valed
VALED=$PWD/target/release/valed
W=$(mktemp -d /tmp/bench-vhost.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

# Starts the switch under test ($1: A or B) for frames of $2 bytes; sets SW.
start_switch() {
    rm -f "$W"/p0.sock "$W"/p1.sock
    if [ "$1" = A ]; then
        taskset -c 1 "$VALED" --socket "$W/ctl.sock" --threads 1 --cpus 1 \
            --vhost-user "p0=$W/p0.sock,attach=vale0" --vhost-user "p1=$W/p1.sock,attach=vale0" \
            --log warn >"$W/switch.log" 2>&1 &
    else
        taskset -c 1 dpdk-testpmd --no-pci --no-huge -m 1024 --file-prefix bvsw --lcores '0@1,1@1' \
            --vdev "net_vhost0,iface=$W/p0.sock,queues=1" --vdev "net_vhost1,iface=$W/p1.sock,queues=1" \
            -- --forward-mode=io --nb-cores=1 --max-pkt-len=1518 -a --stats-period 100 \
            >"$W/switch.log" 2>&1 &
    fi
    SW=$!
    PIDS+=("$SW")
    for _ in $(seq 100); do
        [ -S "$W/p0.sock" ] && [ -S "$W/p1.sock" ] && return 0
        sleep 0.1
    done
    echo "switch $1 did not create its sockets:" >&2
    cat "$W/switch.log" >&2
    return 1
}

# Runs the generator for frames of $1 bytes; prints "rx0 rx1" packets
# received per port in SECS seconds.
generate() {
    local size=$1 extra=()
    [ "$size" -gt 1500 ] && extra=(--max-pkt-len=1518)
    {
        # testpmd's vhost PMD takes seconds after the connection to start
        # forwarding; frames sent before that are lost (and the loop runs
        # with fewer in flight), so both switches get the same wait.
        sleep 5
        echo "start tx_first $BURSTS"
        sleep "$WARM"
        echo "clear port stats all"
        sleep "$SECS"
        echo "show port stats all"
        sleep 0.5
        echo "stop"
        echo "quit"
    } | taskset -c 0 dpdk-testpmd --no-pci --no-huge -m 1024 --file-prefix bvgen --lcores '0@0,1@0' \
        --vdev "net_virtio_user0,path=$W/p0.sock" --vdev "net_virtio_user1,path=$W/p1.sock" \
        -- -i --forward-mode=io --nb-cores=1 --txpkts="$size" "${extra[@]}" >"$W/gen.log" 2>&1 || true
    # The first "RX-packets:" lines after "clear" are the per-port stats.
    awk '/NIC statistics for port/ {p=$NF} /RX-packets:/ && p!="" {print $2; p=""}' "$W/gen.log" | head -2 | paste -sd' '
}

stop_switch() {
    kill "$SW" 2>/dev/null || true
    wait "$SW" 2>/dev/null || true
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "-"; exit} m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }
range() { sort -g | awk 'NR==1{lo=$1} {hi=$1} END {printf "%.3f-%.3f", lo, hi}'; }

echo "virtio-user loopback: $RUNS runs x ${SECS}s per switch and size, $BURSTS bursts of 32 in flight per port"
echo "core 0: testpmd, 2 x virtio-user, io fwd; core 1: switch under test"
for size in $SIZES; do
    : >"$W/A.$size"
    : >"$W/B.$size"
    for r in $(seq "$RUNS"); do
        for sw in A B; do
            start_switch "$sw" "$size"
            read -r rx0 rx1 < <(generate "$size") || true
            stop_switch
            if [ -z "${rx0:-}" ] || [ -z "${rx1:-}" ]; then
                echo "run $r switch $sw size $size: no result" >&2
                tail -5 "$W/gen.log" >&2
                continue
            fi
            mpps=$(echo "scale=6; ($rx0 + $rx1) / 2 / $SECS / 1000000" | bc)
            echo "$mpps" >>"$W/$sw.$size"
            printf 'size %4s run %d %s: %s Mpps per direction (rx %s / %s)\n' "$size" "$r" \
                "$([ $sw = A ] && echo valed || echo testpmd)" "$mpps" "$rx0" "$rx1"
        done
    done
done
echo
echo "| frame | valed (A) median | spread | testpmd (B) median | spread | A/B |"
echo "|---|---|---|---|---|---|"
for size in $SIZES; do
    a=$(median <"$W/A.$size")
    b=$(median <"$W/B.$size")
    ratio=$(echo "scale=2; $a / $b" | bc 2>/dev/null || echo -)
    gbit=$(echo "scale=2; $a * $size * 8 / 1000" | bc)
    echo "| $size B | $a Mpps ($gbit Gbit/s) | $(range <"$W/A.$size") | $b Mpps | $(range <"$W/B.$size") | $ratio |"
done
