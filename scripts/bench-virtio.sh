#!/usr/bin/env bash
# The VM-side driver on the same switch: pkt-gen's own virtio-net driver
# (`virtio:SOCK`, guest-driver's vhost-user transport) against DPDK's
# virtio-user PMD (testpmd txonly / rxonly), each as sender on one port
# and receiver on the other, both on core 0; the switch on core 1: valed
# (two VM ports on vale0) or testpmd (two net_vhost ports, io forwarding).
# One direction, p0 -> switch -> p1; the figure is what the receiver
# counts per second (median of the seconds after the warm-up). Runs are
# interleaved: every driver and switch once, then again, RUNS times.
#
#   scripts/bench-virtio.sh [RUNS [SECS]]        (default 5 runs of 8 s)
#   SIZES="60 1514" DRIVERS="pktgen testpmd" SWITCHES="valed testpmd"
#   HDR=12        pkt-gen's frames carry the vnet header (default 0)
#
# Needs root (none: only unix sockets), dpdk-testpmd, valed and pkt-gen
# built with --release (done here).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
SECS=${2:-8}
WARM=2
SIZES=${SIZES:-60 1514}
DRIVERS=${DRIVERS:-pktgen testpmd}
SWITCHES=${SWITCHES:-valed testpmd}
HDR=${HDR:-0}
cargo build --release -q -p valed -p pkt-gen
VALED=$PWD/target/release/valed
PKTGEN=$PWD/target/release/pkt-gen
W=$(mktemp -d /tmp/bench-virtio.XXXXXX)
PFX=bv$$
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

start_switch() {
    rm -f "$W"/p0.sock "$W"/p1.sock
    case $1 in
    valed)
        taskset -c 1 "$VALED" --socket "$W/ctl.sock" --threads 1 --cpus 1 \
            --vhost-user "p0=$W/p0.sock,attach=vale0" --vhost-user "p1=$W/p1.sock,attach=vale0" \
            --log warn >"$W/switch.log" 2>&1 &
        ;;
    testpmd)
        taskset -c 1 dpdk-testpmd --no-pci --no-huge -m 1024 --file-prefix "${PFX}sw" --lcores '0@1,1@1' \
            --vdev "net_vhost0,iface=$W/p0.sock,queues=1" --vdev "net_vhost1,iface=$W/p1.sock,queues=1" \
            -- --forward-mode=io --nb-cores=1 --max-pkt-len=1518 -a --stats-period 100 \
            >"$W/switch.log" 2>&1 &
        ;;
    esac
    SW=$!
    PIDS+=("$SW")
    for _ in $(seq 100); do
        [ -S "$W/p0.sock" ] && [ -S "$W/p1.sock" ] && return 0
        sleep 0.1
    done
    echo "switch $1 made no sockets" >&2
    cat "$W/switch.log" >&2
    return 1
}

# Receiver then sender for driver $1, frames of $2 bytes; both on core 0.
run_driver() {
    local size=$2 extra=()
    [ "$size" -gt 1500 ] && extra=(--max-pkt-len=1518)
    case $1 in
    pktgen)
        taskset -c 0 "$PKTGEN" -i "virtio:$W/p1.sock" -f rx -H "$HDR" -T 1000 >"$W/rx.log" 2>&1 &
        RX=$!
        sleep 0.3
        taskset -c 0 "$PKTGEN" -i "virtio:$W/p0.sock" -f tx -l "$size" -H "$HDR" >"$W/tx.log" 2>&1 &
        TX=$!
        ;;
    testpmd)
        taskset -c 0 dpdk-testpmd --no-pci --no-huge -m 1024 --file-prefix "${PFX}rx" --lcores '0@0,1@0' \
            --vdev "net_virtio_user1,path=$W/p1.sock" -- --forward-mode=rxonly --nb-cores=1 "${extra[@]}" \
            -a --stats-period 1 >"$W/rx.log" 2>&1 &
        RX=$!
        sleep 0.3
        taskset -c 0 dpdk-testpmd --no-pci --no-huge -m 1024 --file-prefix "${PFX}tx" --lcores '0@0,1@0' \
            --vdev "net_virtio_user0,path=$W/p0.sock" -- --forward-mode=txonly --nb-cores=1 "${extra[@]}" \
            --txpkts="$size" -a --stats-period 100 >"$W/tx.log" 2>&1 &
        TX=$!
        ;;
    esac
    PIDS+=("$RX" "$TX")
    sleep $((WARM + SECS))
    kill -INT "$TX" 2>/dev/null || true
    wait "$TX" 2>/dev/null || true
    kill -INT "$RX" 2>/dev/null || true
    wait "$RX" 2>/dev/null || true
}

# The receiver's per-second rates in Mpps, the warm-up and the last
# second dropped; prints the median.
rate() {
    case $1 in
    pktgen)
        awk '/main_thread/ && /pps/ {
            for (i = 1; i <= NF; i++) if ($i ~ /^[KM]?pps$/) {
                v = $(i - 1); u = $i
                r[n++] = (u == "Mpps") ? v : (u == "Kpps") ? v / 1000 : v / 1e6
            } }
            END { print_median(r, n) }
            function print_median(a, n,   m, i, j, t, b) {
                m = 0; for (i = 2; i < n - 1; i++) b[m++] = a[i]
                for (i = 0; i < m; i++) for (j = i + 1; j < m; j++) if (b[j] < b[i]) { t = b[i]; b[i] = b[j]; b[j] = t }
                if (m == 0) print "nan"; else printf "%.3f\n", b[int(m / 2)]
            }' "$W/rx.log"
        ;;
    testpmd)
        awk '/Rx-pps:/ { r[n++] = $2 / 1e6 }
            END { m = 0; for (i = 2; i < n - 1; i++) b[m++] = r[i]
                for (i = 0; i < m; i++) for (j = i + 1; j < m; j++) if (b[j] < b[i]) { t = b[i]; b[i] = b[j]; b[j] = t }
                if (m == 0) print "nan"; else printf "%.3f\n", b[int(m / 2)] }' "$W/rx.log"
        ;;
    esac
}

echo "virtio drivers: $RUNS runs x ${SECS}s, $(date -u '+%Y-%m-%d %H:%M UTC'), pkt-gen -H $HDR"
echo "core 0: sender and receiver (pkt-gen virtio:SOCK, or testpmd virtio-user txonly/rxonly); core 1: the switch"
printf '%-4s %-6s %-8s %-8s %10s\n' run size driver switch Mpps
for r in $(seq "$RUNS"); do
    for size in $SIZES; do
        for sw in $SWITCHES; do
            for drv in $DRIVERS; do
                start_switch "$sw"
                run_driver "$drv" "$size"
                kill -INT "$SW" 2>/dev/null || true
                wait "$SW" 2>/dev/null || true
                printf '%-4s %-6s %-8s %-8s %10s\n' "$r" "$size" "$drv" "$sw" "$(rate "$drv")"
            done
        done
    done
done
